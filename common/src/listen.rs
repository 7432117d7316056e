//! LISTEN with reconnects.
//!
//! sqlx's `PgListener` reconnects by itself, but notifications sent while it was
//! disconnected are gone. [`Wakeups`] turns that into an explicit event
//! ([`Wakeup::Reconnected`]) so a caller re-checks the table instead of trusting that it
//! missed nothing.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

/// What woke the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// A notification on one of the channels.
    Notified { channel: String, payload: String },
    /// The connection dropped and came back; anything may have been missed.
    Reconnected,
}

/// A LISTEN connection that survives Postgres restarts.
#[derive(Debug)]
pub struct Wakeups {
    /// A pool of its own, of one connection, made with the caller's connect options: the
    /// LISTEN connection is held for the life of the process, so taking it from the
    /// caller's pool would leave a pool of one with nothing to serve requests.
    pool: PgPool,
    channels: Vec<String>,
    listener: Option<PgListener>,
    /// Whether the next successful connection follows a lost one (and must be reported).
    lost: bool,
}

impl Wakeups {
    /// Listens on `channels` using connections made like `pool`'s (outside its limit: a
    /// LISTEN connection is held for the life of the process).
    pub fn new(pool: PgPool, channels: &[&str]) -> Self {
        let options = pool.connect_options().as_ref().clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(pool.options().get_acquire_timeout())
            .test_before_acquire(true)
            .connect_lazy_with(options);
        Wakeups {
            pool: own,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            listener: None,
            lost: false,
        }
    }

    async fn connect(&mut self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // We handle reconnects ourselves so we can report them.
        listener.ignore_pool_close_event(true);
        let channels: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        listener.listen_all(channels).await?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Connects and subscribes now; lets a caller know LISTEN is in place before it
    /// checks the table for the first time (no window for a missed wakeup).
    pub async fn start(&mut self) -> Result<(), sqlx::Error> {
        self.connect().await
    }

    /// Waits for the next wakeup. Connection failures are retried with capped backoff
    /// forever; cancel by dropping the future.
    pub async fn recv(&mut self) -> Wakeup {
        let mut delay = Duration::from_millis(50);
        loop {
            if self.listener.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        if std::mem::take(&mut self.lost) {
                            return Wakeup::Reconnected;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "LISTEN connection failed");
                        self.lost = true;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let Some(listener) = self.listener.as_mut() else {
                continue;
            };
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    return Wakeup::Notified {
                        channel: n.channel().to_string(),
                        payload: n.payload().to_string(),
                    };
                }
                Ok(None) | Err(_) => {
                    // `None`: the connection dropped. Reconnect on our own terms.
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    self.listener = None;
                    self.lost = true;
                }
            }
        }
    }
}

/// A parsed `sluice_jobs` payload: `<kind>` or `<kind>@<epoch ms>`.
pub fn parse_jobs_payload(payload: &str) -> (&str, Option<chrono::DateTime<chrono::Utc>>) {
    match payload.rsplit_once('@') {
        Some((kind, ms)) => match ms
            .parse::<i64>()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
        {
            Some(at) => (kind, Some(at)),
            None => (payload, None),
        },
        None => (payload, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_a_kind_and_maybe_a_time() {
        assert_eq!(parse_jobs_payload("email.send"), ("email.send", None));
        let (kind, at) = parse_jobs_payload("a.b@1700000000000");
        assert_eq!(kind, "a.b");
        assert_eq!(at.map(|t| t.timestamp()), Some(1_700_000_000));
    }
}
