//! Enqueue coalescing: concurrent `POST /v1/jobs` share one INSERT and one commit.
//!
//! One commit per request cannot reach 10,000 enqueues a second on two cores with fsync
//! on. The batcher takes whatever requests are waiting (no fixed delay), writes up to
//! [`MAX_BATCH`] of them in one transaction, and answers each caller only after the
//! commit, so every `201` is durable. While batches are being written, new requests queue
//! for the next one.
//!
//! A coalesced batch must never let one caller's trouble fail another's request:
//! - rows are written sorted by `(kind, idempotency_key)` ([`storage::insert_jobs`]), so
//!   two batches with overlapping keys wait for each other instead of deadlocking;
//! - a lost race (serialization failure, deadlock) is retried a few times as a batch;
//! - a batch that still fails for any reason but a lost connection is written again row by
//!   row, each job in its own statement, so only the caller whose row is refused hears
//!   of it (and with that row's own answer: 422, 503 or 500).

use std::sync::Arc;

use sluice_common::{
    error::Failure, model::Enqueued, storage, storage::MAX_BATCH, Error as CommonError, NewJob,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::problem::ApiError;

/// Batches written at once: two keep Postgres busy while the next batch fills (one is
/// committing while the other is inserting). More writers make smaller batches, and a
/// batch's fixed cost (its statement triggers, its commit) dominates: with 64 clients on
/// two cores, four writers cost Postgres about a third more CPU per job than two.
const CONCURRENT_BATCHES: usize = 2;
/// Times a batch that lost a race (serialization failure, deadlock) is written again
/// before falling back to row by row.
pub const CONFLICT_RETRIES: usize = 3;

type Reply = oneshot::Sender<Result<Enqueued, ApiError>>;

/// Handle for submitting jobs.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// Queue of validated jobs with their callers' reply channels.
    tx: mpsc::Sender<(NewJob, Reply)>,
}

impl Batcher {
    /// Starts the batching task; it ends when every handle is dropped.
    pub fn start(pool: PgPool) -> Batcher {
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        tokio::spawn(run(pool, rx));
        Batcher { tx }
    }

    /// Enqueues one validated job; resolves after its batch committed.
    pub async fn submit(&self, job: NewJob) -> Result<Enqueued, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .await
            .map_err(|_| ApiError::Unavailable)?;
        answer.await.map_err(|_| ApiError::Unavailable)?
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<(NewJob, Reply)>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    let mut buf = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for a free writer first, so requests arriving meanwhile join this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut buf, MAX_BATCH).await == 0 {
            return;
        }
        let batch = std::mem::replace(&mut buf, Vec::with_capacity(MAX_BATCH));
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(permit);
        });
    }
}

async fn write(pool: &PgPool, batch: Vec<(NewJob, Reply)>) {
    let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = batch.into_iter().unzip();
    let mut tries = 0;
    let err = loop {
        match write_batch(pool, &jobs).await {
            Ok(out) => {
                for (reply, enqueued) in replies.into_iter().zip(out) {
                    let _ = reply.send(Ok(enqueued));
                }
                return;
            }
            Err(err) if err.failure() == Failure::Conflict && tries < CONFLICT_RETRIES => {
                tries += 1;
                tracing::info!(error = %err, jobs = jobs.len(), tries, "enqueue batch lost a race; writing it again");
            }
            Err(err) => break err,
        }
    };
    if jobs.len() == 1 || err.failure() == Failure::ConnectionLost {
        // Nothing to single out: one caller, or a connection that every row would lose.
        let failure = err.failure();
        let mut answer = Some(ApiError::from(err));
        for reply in replies {
            let e = answer.take().unwrap_or(ApiError::Database(failure));
            let _ = reply.send(Err(e));
        }
        return;
    }
    tracing::warn!(error = %err, jobs = jobs.len(), "enqueue batch failed; writing its rows one by one");
    for (job, reply) in jobs.iter().zip(replies) {
        let _ = reply.send(write_one(pool, job).await);
    }
}

/// One INSERT and one commit for the whole batch.
///
/// Without idempotency keys the INSERT is the whole write, so it runs as a statement of
/// its own (its own transaction, committed when it returns): one round trip instead of
/// `BEGIN`, `INSERT`, `COMMIT`. With a key the rows that won an earlier enqueue are read
/// by a second statement, and both run in one transaction so that a failure between them
/// cannot leave a created job answered with an error.
async fn write_batch(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<Enqueued>, CommonError> {
    if jobs.iter().all(|j| j.idempotency_key.is_none()) {
        let mut conn = pool.acquire().await?;
        return storage::insert_jobs(&mut conn, jobs).await;
    }
    let mut tx = pool.begin().await?;
    let out = storage::insert_jobs(&mut tx, jobs).await?;
    tx.commit().await?;
    Ok(out)
}

/// One job on its own, retrying lost races like a batch: its caller's answer alone.
async fn write_one(pool: &PgPool, job: &NewJob) -> Result<Enqueued, ApiError> {
    let mut tries = 0;
    loop {
        let result = async {
            let mut conn = pool.acquire().await?;
            storage::insert_job(&mut conn, job).await
        }
        .await;
        match result {
            Err(err) if err.failure() == Failure::Conflict && tries < CONFLICT_RETRIES => {
                tries += 1;
            }
            other => return other.map_err(ApiError::from),
        }
    }
}
