//! Printing: colour only on a terminal, durations for humans, JSON for scripts.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::error::CliError;

/// ANSI colours for text output, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// True only when stdout is a terminal, `NO_COLOR` is unset, and `--json` is off, so
    /// pipes, logs and scripts never see escape codes.
    enabled: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
    pub fn for_stdout(json: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            enabled: !json && !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Headings.
    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Good news (drained, done).
    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Attention (paused, processing).
    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    /// Trouble (expired lease, failed).
    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }
}

/// Writes `value` as pretty JSON and a newline on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Writes text lines on stdout (an error if stdout is closed, instead of a panic).
pub fn print_lines(lines: &[String]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// `850ms`, `42s`, `3m05s`, `2h07m`: short enough for a table column.
pub fn human_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let body = if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    };
    format!("{sign}{body}")
}

/// Pads `text` to `width` characters (colour codes would break `{:<w}` on painted text).
pub fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len >= width {
        text.to_string()
    } else {
        format!("{text}{}", " ".repeat(width - len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short_and_readable() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(42_000), "42s");
        assert_eq!(human_ms(185_000), "3m05s");
        assert_eq!(human_ms(7_620_000), "2h07m");
        assert_eq!(human_ms(-3_000), "-3s");
    }
}
