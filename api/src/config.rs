//! The API's settings: every one an environment variable and a `--flag` (SPEC.md §2).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use sluice_common::config::{bad_config, parse_duration, DbArgs, LogArgs};

use crate::auth::Tokens;

/// Command line and environment of `sluice-api`.
#[derive(Debug, Parser)]
#[command(name = "sluice-api", version, about = "The Sluice HTTP API")]
pub struct Config {
    /// Where the jobs live.
    #[command(flatten)]
    pub db: DbArgs,

    /// How logs are written.
    #[command(flatten)]
    pub log: LogArgs,

    /// The public listener (jobs API and `/health/*`).
    #[arg(
        long = "api-addr",
        env = "SLUICE_API_ADDR",
        value_name = "SLUICE_API_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub api_addr: SocketAddr,

    /// `/metrics` lives on its own port so it is never behind the public Service.
    #[arg(
        long = "metrics-addr",
        env = "SLUICE_METRICS_ADDR",
        value_name = "SLUICE_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: SocketAddr,

    /// `scope:token` or `scope:name:token`, comma-separated; scope `read`, `enqueue` or `admin`.
    #[arg(long = "api-tokens", env = "SLUICE_API_TOKENS", value_name = "SLUICE_API_TOKENS",
          hide_env_values = true, value_parser = Tokens::parse)]
    pub tokens: Option<Tokens>,

    /// Serve without authentication; only for local development.
    #[arg(
        long = "insecure-no-auth",
        env = "SLUICE_INSECURE_NO_AUTH",
        value_name = "SLUICE_INSECURE_NO_AUTH"
    )]
    pub insecure_no_auth: bool,

    /// How long the API keeps serving after readiness flips to 503, so load balancers
    /// stop routing to it before it stops accepting.
    #[arg(long = "drain-delay", env = "SLUICE_DRAIN_DELAY", value_name = "SLUICE_DRAIN_DELAY",
          default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Budget for in-flight requests once the API stops accepting; past it, exit 1.
    #[arg(long = "shutdown-timeout", env = "SLUICE_SHUTDOWN_TIMEOUT", value_name = "SLUICE_SHUTDOWN_TIMEOUT",
          default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest request body accepted (`1MiB`, `512KiB`, or bytes).
    #[arg(long = "body-limit", env = "SLUICE_API_BODY_LIMIT", value_name = "SLUICE_API_BODY_LIMIT",
          default_value = "1MiB", value_parser = parse_size)]
    pub body_limit: usize,

    /// Longest any request may take; above the longest long-poll so those end by themselves.
    #[arg(long = "request-timeout", env = "SLUICE_API_REQUEST_TIMEOUT", value_name = "SLUICE_API_REQUEST_TIMEOUT",
          default_value = "90s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest `?wait=` honoured on `GET /v1/jobs/{id}`; longer waits are shortened to it.
    #[arg(long = "max-wait", env = "SLUICE_API_MAX_WAIT", value_name = "SLUICE_API_MAX_WAIT",
          default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// The operator web UI's settings.
    #[command(flatten)]
    pub ui: crate::ui::UiConfig,
}

/// What the router needs from the configuration (tests build it directly).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` only with `--insecure-no-auth`.
    pub tokens: Option<Tokens>,
    /// Bodies above this get 413.
    pub body_limit: usize,
    /// Requests running longer get 408.
    pub request_timeout: Duration,
    /// Cap on `?wait=`, so a long-poll cannot outlive the request timeout.
    pub max_wait: Duration,
    /// The operator web UI.
    pub ui: crate::ui::UiSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tokens: None,
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(90),
            max_wait: Duration::from_secs(60),
            ui: crate::ui::UiSettings::default(),
        }
    }
}

impl Config {
    /// The router settings, or exit 2 when auth is neither configured nor waived.
    pub fn settings(&self) -> Settings {
        if self.tokens.is_none() && !self.insecure_no_auth {
            bad_config("SLUICE_API_TOKENS is not set; set it (e.g. admin:<token>) or pass --insecure-no-auth");
        }
        Settings {
            tokens: self.tokens.clone(),
            body_limit: self.body_limit,
            request_timeout: self.request_timeout,
            max_wait: self.max_wait.min(self.request_timeout),
            ui: self.ui.settings(),
        }
    }
}

/// Parses `1MiB`, `512KiB`, `1MB`, `2048` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{t:?} is not a size; write e.g. 1MiB, 512KiB or 65536"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "KB" | "kB" => 1000,
        "MiB" => 1024 * 1024,
        "MB" => 1_000_000,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB or MiB")),
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{t:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1GiB").is_err());
    }
}
