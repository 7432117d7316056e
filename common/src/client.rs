//! [`JobClient`]: the job operations over a pool, for code that does not manage its own
//! connections or transactions. To enqueue inside your own transaction, call
//! [`crate::storage::insert_job`] with it instead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::Result;
use crate::model::{
    Actor, AuditEntry, Enqueued, FailOutcome, Failure, Job, JobState, KindInfo, KindLease, Lease,
    LeasedJob, NewJob, Rescued, StateCount,
};
use crate::storage;

/// A cheap-to-clone handle on the job table.
#[derive(Debug, Clone)]
pub struct JobClient {
    /// Shared by every clone; sized by the binary from its own concurrency.
    pool: PgPool,
}

impl JobClient {
    pub fn new(pool: PgPool) -> Self {
        JobClient { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued> {
        let mut conn = self.pool.acquire().await?;
        storage::insert_job(&mut conn, job).await
    }

    /// All or nothing: one transaction, one INSERT statement.
    pub async fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        let mut tx = self.pool.begin().await?;
        let out = storage::insert_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn lease(
        &self,
        worker: &str,
        kinds: &[KindLease],
        limit: usize,
    ) -> Result<Vec<LeasedJob>> {
        storage::lease_jobs(&self.pool, worker, kinds, limit).await
    }

    pub async fn complete(&self, leases: &[Lease]) -> Result<Vec<i64>> {
        let mut conn = self.pool.acquire().await?;
        storage::complete_jobs(&mut conn, leases).await
    }

    pub async fn fail(&self, failures: &[Failure]) -> Result<Vec<FailOutcome>> {
        let mut conn = self.pool.acquire().await?;
        storage::fail_jobs(&mut conn, failures).await
    }

    pub async fn interrupt(&self, leases: &[Lease], reason: &str) -> Result<Vec<i64>> {
        storage::interrupt_jobs(&self.pool, leases, reason).await
    }

    pub async fn heartbeat(&self, leases: &[(Lease, Duration)]) -> Result<Vec<i64>> {
        storage::extend_leases(&self.pool, leases).await
    }

    pub async fn rescue_expired(&self, limit: usize) -> Result<Vec<Rescued>> {
        storage::rescue_expired_leases(&self.pool, limit).await
    }

    pub async fn find(&self, id: i64) -> Result<Option<Job>> {
        storage::find_job(&self.pool, id).await
    }

    pub async fn list(
        &self,
        state: Option<JobState>,
        kind: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        storage::list_jobs(&self.pool, state, kind, before_id, limit).await
    }

    pub async fn stats(&self) -> Result<Vec<StateCount>> {
        storage::count_jobs_by_kind_and_state(&self.pool).await
    }

    pub async fn processing(&self, kind: Option<&str>) -> Result<Vec<Job>> {
        storage::find_processing_jobs(&self.pool, kind).await
    }

    pub async fn kinds(&self) -> Result<Vec<KindInfo>> {
        storage::list_kinds(&self.pool).await
    }

    pub async fn register_kinds(&self, kinds: &[&str]) -> Result<()> {
        storage::register_kinds(&self.pool, kinds).await
    }

    pub async fn pause_kind(&self, kind: &str, actor: &Actor<'_>) -> Result<u64> {
        storage::pause_kind(&self.pool, kind, actor).await
    }

    pub async fn resume_kind(&self, kind: &str, actor: &Actor<'_>) -> Result<u64> {
        storage::resume_kind(&self.pool, kind, actor).await
    }

    pub async fn release(&self, id: i64, actor: &Actor<'_>) -> Result<Job> {
        storage::release_job(&self.pool, id, actor).await
    }

    pub async fn cancel(&self, id: i64, actor: &Actor<'_>) -> Result<Job> {
        storage::cancel_job(&self.pool, id, actor).await
    }

    pub async fn retry(&self, id: i64, actor: &Actor<'_>) -> Result<Job> {
        storage::retry_job(&self.pool, id, actor).await
    }

    pub async fn audit_log(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        storage::list_audit_log(&self.pool, since, limit).await
    }
}
