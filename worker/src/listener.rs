//! The listener: the worker's one LISTEN connection, kept for the whole life of the
//! process (through the drain, so a job cancelled while the worker drains still stops).
//!
//! - `sluice_jobs`: a job of one of our kinds became runnable (`<kind>`) or was scheduled
//!   (`<kind>@<ms>`): folded into [`crate::state::PendingWake`] for the producer. The time
//!   in the payload is not used: the producer asks the database how long to wait, on the
//!   database's clock (and leases first, in case the time has already come).
//! - `sluice_cancel`: `<id>:<lease token>` of a processing job that was cancelled
//!   (migration 2): its handler's signal fires at once; see [`Shared::revoke`].
//! - A reconnect: anything may have been missed; the producer looks again, and the
//!   heartbeat checks every running lease (a cancellation sent meanwhile shows there).

use std::{collections::HashSet, sync::Arc};

use sluice_common::{
    listen::{parse_jobs_payload, Wakeup, Wakeups},
    storage,
};
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Parses a `sluice_cancel` payload: `<id>:<token>`; an empty token (the job had none)
/// matches any lease of the job.
pub fn parse_cancel_payload(payload: &str) -> Option<(i64, Option<i64>)> {
    let (id, token) = payload.split_once(':').unwrap_or((payload, ""));
    let id = id.parse().ok()?;
    let token = match token {
        "" => None,
        t => Some(t.parse().ok()?),
    };
    Some((id, token))
}

/// Forwards notifications until `stop` fires. `wakeups` is already listening on
/// [`storage::JOBS_CHANNEL`] and [`storage::CANCEL_CHANNEL`].
pub async fn run(shared: Arc<Shared>, mut wakeups: Wakeups, stop: CancellationToken) {
    let my_kinds: HashSet<String> = shared.registry.names().map(str::to_string).collect();
    loop {
        let w = tokio::select! {
            _ = stop.cancelled() => return,
            w = wakeups.recv() => w,
        };
        match w {
            Wakeup::Notified { channel, payload } if channel == storage::CANCEL_CHANNEL => {
                match parse_cancel_payload(&payload) {
                    Some((id, token)) => {
                        if shared.revoke(id, token) {
                            tracing::info!(
                                job.id = id,
                                "job cancelled while running; stopping its handler"
                            );
                        }
                    }
                    None => tracing::warn!(payload, "unreadable sluice_cancel payload"),
                }
            }
            Wakeup::Notified { payload, .. } => {
                let (kind, at) = parse_jobs_payload(&payload);
                if my_kinds.contains(kind) {
                    // A scheduled job may already be due by the time the producer asks
                    // (a short retry backoff): look as well as reschedule.
                    shared.note_wake(true, at.is_some());
                }
            }
            Wakeup::Reconnected => {
                tracing::info!("LISTEN reconnected; looking for jobs and cancellations that may have been missed");
                shared.note_wake(true, true);
                shared.check_leases.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_payloads_name_a_job_and_maybe_its_lease() {
        assert_eq!(parse_cancel_payload("42:-7"), Some((42, Some(-7))));
        assert_eq!(parse_cancel_payload("42:"), Some((42, None)));
        assert_eq!(parse_cancel_payload("42"), Some((42, None)));
        assert_eq!(parse_cancel_payload("x:1"), None);
        assert_eq!(parse_cancel_payload("1:y"), None);
    }
}
