//! Configuration shared by every binary: the database, logging, durations, and the one way
//! a bad setting is reported (one line naming the variable, exit code 2).
//!
//! Every setting is an environment variable and also a `--flag` (SPEC.md §2). The clap
//! `value_name` of each argument is its environment variable, so clap's own messages name
//! the variable an operator actually set.

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Parses a duration written as a number and a unit: `500ms`, `30s`, `5m`, `1h`, `1.5s`.
///
/// A bare number is refused: `30` could mean seconds or milliseconds, and guessing wrong
/// on a shutdown budget is the kind of mistake that only shows up during an incident.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 500ms, 30s or 5m".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{t:?} has no unit; write e.g. 500ms, 30s or 5m"))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{t:?} does not start with a number; write e.g. 500ms, 30s or 5m"))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {t:?}; use ms, s, m, h or d"
            ))
        }
    };
    let secs = value * seconds_per_unit;
    if !secs.is_finite() || secs > 365.0 * 24.0 * 3600.0 {
        return Err(format!("{t:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Database settings, flattened into each binary's command line.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres connection string.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most connections this process opens. Unset: sized by the binary from its own load.
    #[arg(long = "db-max-connections", env = "SLUICE_DB_MAX_CONNECTIONS", value_name = "SLUICE_DB_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_connections: Option<u32>,

    /// How long a caller waits for a free connection before giving up, so an exhausted
    /// pool turns into a fast error instead of a hung request.
    #[arg(long = "db-acquire-timeout", env = "SLUICE_DB_ACQUIRE_TIMEOUT", value_name = "SLUICE_DB_ACQUIRE_TIMEOUT",
          default_value = "5s", value_parser = parse_duration)]
    pub acquire_timeout: Duration,

    /// Server-side `statement_timeout` on every connection: no query may outlive a drain.
    #[arg(long = "db-statement-timeout", env = "SLUICE_DB_STATEMENT_TIMEOUT", value_name = "SLUICE_DB_STATEMENT_TIMEOUT",
          default_value = "30s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
}

/// How logs are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Logging settings, flattened into each binary's command line.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// `json` or `pretty`; unset: `json` unless stdout is a terminal. Filter with `RUST_LOG`.
    #[arg(
        long = "log-format",
        env = "SLUICE_LOG_FORMAT",
        value_name = "SLUICE_LOG_FORMAT",
        value_enum
    )]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// The format to use, resolving "unset" by looking at stdout.
    pub fn format(&self) -> LogFormat {
        use std::io::IsTerminal;
        self.log_format
            .unwrap_or(if std::io::stdout().is_terminal() {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            })
    }
}

/// Exit code for bad configuration (SPEC.md §2).
pub const EXIT_BAD_CONFIG: i32 = 2;

/// Parses the command line and environment, or prints one line naming the problem and
/// exits with code 2. `--help` and `--version` print as usual and exit 0.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(err) => exit_with_clap_error(err),
    }
}

/// Same as [`parse_or_exit`] over explicit arguments (used by tests and `sluicectl`).
pub fn exit_with_clap_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            std::process::exit(
                if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    EXIT_BAD_CONFIG
                } else {
                    0
                },
            );
        }
        _ => {
            eprintln!("error: {}", one_line(&err));
            std::process::exit(EXIT_BAD_CONFIG);
        }
    }
}

/// clap renders several lines (usage, hints); operators reading a crash-looping pod's log
/// want the one that names the variable.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exits with code 2 after printing `error: <message>`; for checks clap cannot express.
pub fn bad_config(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(EXIT_BAD_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_documented_unit_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused_with_a_reason() {
        for bad in ["", "30", "5x", "s", "-1s", "1.2.3s", "10 years"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn formatted_durations_read_back_the_same() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(300),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn a_bad_value_is_reported_on_one_line_naming_the_variable() {
        let err = Probe::try_parse_from([
            "x",
            "--database-url",
            "postgres://x",
            "--db-acquire-timeout",
            "5parsecs",
        ])
        .expect_err("must fail");
        let line = one_line(&err);
        assert!(line.contains("SLUICE_DB_ACQUIRE_TIMEOUT"), "{line}");
        assert!(!line.contains('\n'));
        // Only meaningful where the test run itself has no DATABASE_URL to fall back on.
        if std::env::var_os("DATABASE_URL").is_none() {
            let err = Probe::try_parse_from(["x"]).expect_err("must fail");
            assert!(
                one_line(&err).contains("DATABASE_URL"),
                "{}",
                one_line(&err)
            );
        }
    }
}
