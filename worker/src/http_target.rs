//! HTTP-target kinds: a job is a POST of its payload to a URL (SPEC.md §5).
//!
//! The receiver gets `Idempotency-Key: <job id>` (stable across retries, so it can drop a
//! duplicate delivery after a crash) and the job's `traceparent`. 2xx completes the job;
//! 4xx other than 408/429 fails it for good (retrying a bad request cannot help); 5xx,
//! 408, 429, timeouts and connection errors retry, after `Retry-After` when given. A 2xx
//! with `Sluice-Snooze: 30s` snoozes the job: it runs again after that long, and the
//! attempt does not count.

use std::{collections::BTreeMap, time::Duration};

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::registry::{Handler, JobContext, JobError};

/// One configured target.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// Shared connection pool: keep-alive to the target across jobs.
    client: reqwest::Client,
    url: reqwest::Url,
    /// From the handlers file (e.g. `Authorization`); sent on every delivery.
    headers: HeaderMap,
    /// Per attempt.
    timeout: Duration,
}

impl HttpTarget {
    pub fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("url {url} must be http:// or https://"));
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header name {k:?} is not valid"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("header {k:?} has an invalid value"))?;
            map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpTarget {
            client,
            url,
            headers: map,
            timeout,
        })
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(24 * 3600)))
}

/// Longest snooze a target may ask for.
const MAX_SNOOZE: Duration = Duration::from_secs(366 * 86400);

/// `Sluice-Snooze` on a 2xx: run the job again after this long, without using an attempt
/// (`30s`, `5m`, `1h30m`, the durations of the configuration; a bare number is seconds).
/// A value that cannot be read is an error, not a silent completion.
fn snooze(headers: &HeaderMap) -> Option<Result<Duration, String>> {
    let value = headers.get("sluice-snooze")?;
    let text = match value.to_str() {
        Ok(t) => t.trim(),
        Err(_) => return Some(Err("not text".into())),
    };
    let parsed = match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => sluice_common::config::parse_duration(text),
    };
    Some(parsed.map(|d| d.min(MAX_SNOOZE)))
}

impl Handler for HttpTarget {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut req = this
                .client
                .post(this.url.clone())
                .headers(this.headers.clone())
                .header("Idempotency-Key", ctx.id.to_string())
                .header("Sluice-Job-Kind", ctx.kind.as_str())
                .header("Sluice-Job-Attempt", ctx.attempt.to_string())
                .json(&ctx.payload);
            if let Some(tp) = ctx.traceparent.as_deref() {
                req = req.header("traceparent", tp);
            }
            let resp = tokio::select! {
                r = req.send() => r,
                _ = ctx.shutdown.cancelled() => {
                    return Err(JobError::Interrupted("shutdown signal during HTTP delivery".into()));
                }
            };
            match resp {
                Err(e) if e.is_timeout() => Err(JobError::retryable(format!(
                    "POST {} timed out after {:?}",
                    this.url, this.timeout
                ))),
                Err(e) => Err(JobError::retryable(format!("POST {}: {e}", this.url))),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return match snooze(resp.headers()) {
                            Some(Ok(after)) => Err(JobError::Snooze(after)),
                            // The target wants another run but said it unreadably: retry
                            // (using an attempt) and say why, rather than completing.
                            Some(Err(e)) => Err(JobError::retryable(format!(
                                "POST {} answered {status} with an unreadable Sluice-Snooze header: {e}",
                                this.url
                            ))),
                            None => Ok(()),
                        };
                    }
                    let after = retry_after(resp.headers());
                    let body: String = resp
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    let message = format!("POST {} answered {status}: {body}", this.url);
                    let code = status.as_u16();
                    if status.is_client_error() && code != 408 && code != 429 {
                        Err(JobError::Permanent(message))
                    } else {
                        Err(JobError::Retryable {
                            message,
                            retry_after: after,
                        })
                    }
                }
            }
        })
    }
}
