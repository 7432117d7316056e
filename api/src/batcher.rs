//! Enqueue coalescing: concurrent `POST /v1/jobs` share one INSERT and one commit.
//!
//! One commit per request cannot reach 10,000 enqueues a second on two cores with fsync
//! on. The batcher takes whatever requests are waiting (no fixed delay), writes up to
//! [`MAX_BATCH`] of them in one transaction, and answers each caller only after the
//! commit, so every `201` is durable. While batches are being written, new requests queue
//! for the next one.

use std::sync::Arc;

use sluice_common::{model::Enqueued, storage, storage::MAX_BATCH, NewJob};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::problem::ApiError;

/// Batches written at once: enough to keep Postgres busy while the next batch fills.
const CONCURRENT_BATCHES: usize = 4;

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
    let result = async {
        let mut tx = pool.begin().await?;
        let out = storage::insert_jobs(&mut tx, &jobs).await?;
        tx.commit().await?;
        Ok::<_, sluice_common::Error>(out)
    }
    .await;
    match result {
        Ok(out) => {
            for (reply, enqueued) in replies.into_iter().zip(out) {
                let _ = reply.send(Ok(enqueued));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, jobs = jobs.len(), "enqueue batch failed");
            for reply in replies {
                let _ = reply.send(Err(ApiError::Unavailable));
            }
        }
    }
}
