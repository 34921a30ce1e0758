//! Logs as a cluster reads them: one line per event on stderr, plain text (colour only on a
//! terminal, so `kubectl logs` shows no escape sequences) or one JSON object per line for log
//! pipelines (`--log-format json`).

use std::io::{self, IsTerminal as _, Write as _};

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// The environment variable that sets the log format (also `--log-format`).
pub const LOG_FORMAT_ENV: &str = "COLLECTOR_LOG_FORMAT";
/// The level filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00.000000Z  INFO target: message key=value`; colour only when stderr
    /// is a terminal.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":…},"target":…}`, one per line.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(OneLineStderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            // The message beside the other fields, as log pipelines expect one object per event
            // with no span bookkeeping.
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Writes each event to stderr as exactly one line: the formatter's output is collected per
/// event and a line break inside it (a multi-line error, a verifier log) is written as `\n`, so
/// a line-based reader (the CRI log file, `kubectl logs`, a pipeline) never splits an event.
struct OneLineStderr;

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine(Vec::with_capacity(256))
    }
}

/// One event's bytes, written on drop.
struct EventLine(Vec<u8>);

impl io::Write for EventLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = one_line(&self.0);
        // Nowhere to report a failed write to stderr.
        let _ = io::stderr().lock().write_all(&line);
    }
}

/// `bytes` with every line break but a final one escaped as `\n` (and `\r` as `\r`), ending in
/// exactly one line break.
fn one_line(bytes: &[u8]) -> Vec<u8> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut out = Vec::with_capacity(body.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_line_breaks_are_escaped_and_one_remains() {
        assert_eq!(one_line(b"a\nb\r\nc\n"), b"a\\nb\\r\\nc\n");
        assert_eq!(one_line(b"no break"), b"no break\n");
        assert_eq!(one_line(b"\n"), b"\n");
    }
}
