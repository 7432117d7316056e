//! The API's settings: every one an environment variable and a `--flag` (SPEC.md §2).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use sluice_common::{
    config::{bad_config, parse_duration, DbArgs, LogArgs},
    db::{self, TlsSettings},
};

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
    ///
    /// Kept as text and parsed in [`Config::settings`], not by a clap value parser: clap's
    /// error for a rejected value quotes the value, and this one is a secret.
    #[arg(
        long = "api-tokens",
        env = "SLUICE_API_TOKENS",
        value_name = "SLUICE_API_TOKENS",
        hide_env_values = true
    )]
    pub tokens: Option<String>,

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
    /// `sslmode` / `sslrootcert` of `DATABASE_URL`, named in readiness reasons and logs
    /// when a connection fails.
    pub database_tls: TlsSettings,
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
            database_tls: TlsSettings::default(),
            ui: crate::ui::UiSettings::default(),
        }
    }
}

impl Config {
    /// The router settings, or exit 2 when auth is neither configured nor waived, or a
    /// token is malformed, empty or a placeholder (the message never quotes a token). A
    /// token shorter than [`MIN_TOKEN_LEN`] is accepted with a warning on stderr.
    pub fn settings(&self) -> Settings {
        let tokens = match &self.tokens {
            None if self.insecure_no_auth => None,
            None => bad_config(
                "SLUICE_API_TOKENS is not set; set it (e.g. admin:<token>) or pass --insecure-no-auth",
            ),
            Some(text) => match parse_tokens(text) {
                Ok(tokens) => {
                    for warning in weak_token_warnings(text) {
                        eprintln!("warning: SLUICE_API_TOKENS: {warning}");
                    }
                    Some(tokens)
                }
                Err(reason) => bad_config(format!("SLUICE_API_TOKENS: {reason}")),
            },
        };
        Settings {
            tokens,
            body_limit: self.body_limit,
            request_timeout: self.request_timeout,
            max_wait: self.max_wait.min(self.request_timeout),
            database_tls: db::connect_options(&self.db)
                .map(|(_, tls)| tls)
                .unwrap_or_else(|reason| bad_config(reason)),
            ui: self.ui.settings(),
        }
    }
}

/// Shortest token accepted without a warning: 16 characters. A token is a bearer secret guessed
/// online at the API's request rate; 16 random characters from `openssl rand -hex 16`
/// (32 hex digits) or a password manager are far out of reach, while the words people type
/// when they mean "fill in later" (`secret`, `test`, `changeme`) are all shorter.
pub const MIN_TOKEN_LEN: usize = 16;

/// Parts of values that mark a template nobody filled in (compared case-insensitively,
/// ignoring `_` and `-`): the k8s Secret ships `REPLACE_ME_…`, the systemd example
/// `CHANGE_ME`.
const PLACEHOLDER_MARKERS: [&str; 6] = [
    "replaceme",
    "changeme",
    "placeholder",
    "yourtoken",
    "tokenhere",
    "xxxxxxxx",
];

/// Parses `SLUICE_API_TOKENS` and refuses tokens that cannot be real secrets. Errors name
/// the entry (by position and name) and never contain the token itself.
pub fn parse_tokens(text: &str) -> Result<Tokens, String> {
    for (i, entry) in text.split(',').map(str::trim).enumerate() {
        let secret = match entry.splitn(3, ':').collect::<Vec<_>>().as_slice() {
            [_, secret] | [_, _, secret] => *secret,
            // Malformed entries are reported by `Tokens::parse` below.
            _ => continue,
        };
        check_token_secret(secret).map_err(|why| format!("entry {}: {why}", i + 1))?;
    }
    // `Tokens::parse` errors name the entry and its scope field, never the secret field.
    Tokens::parse(text)
}

/// Why `secret` cannot be a real token, if it cannot.
fn check_token_secret(secret: &str) -> Result<(), String> {
    const HOW: &str = "generate one with `openssl rand -hex 32`";
    if secret.trim().is_empty() {
        return Err(format!("the token is empty; {HOW}"));
    }
    let folded: String = secret
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    if PLACEHOLDER_MARKERS.iter().any(|m| folded.contains(m)) {
        return Err(format!(
            "the token is a placeholder (REPLACE_ME, changeme, …), not a secret; {HOW}"
        ));
    }
    Ok(())
}

/// Entries whose token is shorter than [`MIN_TOKEN_LEN`]: allowed (test rigs and local
/// setups use short ones), but said at start so nobody ships one unknowingly. Never quotes
/// the token.
pub fn weak_token_warnings(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .enumerate()
        .filter_map(|(i, entry)| {
            let secret = entry.rsplit(':').next().unwrap_or_default();
            (secret.chars().count() < MIN_TOKEN_LEN).then(|| {
                format!(
                    "entry {}: the token is shorter than {MIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 32`",
                    i + 1
                )
            })
        })
        .collect()
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
    fn placeholder_and_empty_tokens_are_refused_without_quoting_them() {
        for (text, why) in [
            ("admin:REPLACE_ME_ADMIN_TOKEN", "placeholder"),
            ("enqueue:CHANGE_ME", "placeholder"),
            ("admin:ops:changeme-changeme-changeme", "placeholder"),
            ("admin:", "empty"),
            ("admin:ops:   ", "empty"),
            (
                "enqueue:0123456789abcdef0123,admin:your-token-here",
                "entry 2",
            ),
        ] {
            let err = parse_tokens(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
            let secret = text.rsplit(':').next().unwrap_or_default().trim();
            if !secret.is_empty() {
                assert!(!err.contains(secret), "{err} quotes the token");
            }
        }
    }

    #[test]
    fn long_random_tokens_are_accepted() {
        assert!(
            parse_tokens("enqueue:3f9a1c0b7d2e4f6a8b9c,admin:ops:Zq8uX2vN5mL0pR7tY4wK").is_ok()
        );
        assert_eq!(MIN_TOKEN_LEN, "0123456789abcdef".len());
        assert!(parse_tokens("admin:0123456789abcdef").is_ok());
        assert!(weak_token_warnings("admin:0123456789abcdef").is_empty());
    }

    #[test]
    fn short_tokens_are_accepted_with_a_warning_that_does_not_quote_them() {
        assert!(parse_tokens("enqueue:0123456789abcdef0123,admin:hunter2").is_ok());
        let warnings = weak_token_warnings("enqueue:0123456789abcdef0123,admin:hunter2");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("entry 2") && warnings[0].contains("shorter than 16"));
        assert!(!warnings[0].contains("hunter2"));
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1GiB").is_err());
    }
}
