//! Flow control: snoozing a leased job (run again later without using an attempt), and
//! the claim statement of kinds with a global concurrency or rate limit.

use std::time::Duration;

use sqlx::PgConnection;

use crate::error::Result;
use crate::model::Lease;

use super::{DONE_IDS_PER_STATEMENT, REQUEUE_STATE};

/// Puts leased jobs back to `queued` (or `paused`, if their kind is) to run again after
/// their delay, without using up the attempt: the handler asked to be run later (a result
/// variant of a built-in handler, `Sluice-Snooze` on an HTTP target's 2xx), which says
/// nothing about the job failing. `run_at` moves to now + delay on the database clock.
/// Fenced on each lease like every answer; returns the ids it applied to.
pub async fn snooze_jobs(
    conn: &mut PgConnection,
    snoozes: &[(Lease, Duration)],
) -> Result<Vec<i64>> {
    let mut applied = Vec::with_capacity(snoozes.len());
    for chunk in snoozes.chunks(DONE_IDS_PER_STATEMENT) {
        let ids: Vec<i64> = chunk.iter().map(|(l, _)| l.job_id).collect();
        let tokens: Vec<i64> = chunk.iter().map(|(l, _)| l.token).collect();
        let delays: Vec<i64> = chunk.iter().map(|(_, d)| d.as_millis() as i64).collect();
        // Fenced like `complete_jobs` (`IS TRUE`: the batch is found by primary key).
        let sql = format!(
            "UPDATE jobs j
                SET state = {REQUEUE_STATE},
                    attempts = greatest(j.attempts - 1, 0),
                    run_at = now() + l.delay_ms * interval '1 millisecond',
                    leased_by = NULL, leased_at = NULL, lease_expires_at = NULL, lease_token = NULL,
                    updated_at = now()
               FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS l(id, token, delay_ms)
              WHERE j.id = l.id AND j.lease_token = l.token AND (j.state = 'processing') IS TRUE
             RETURNING j.id"
        );
        let rows: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(&ids)
            .bind(&tokens)
            .bind(&delays)
            .fetch_all(&mut *conn)
            .await?;
        applied.extend(rows);
    }
    Ok(applied)
}
