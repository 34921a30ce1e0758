//! The log as a cluster reads it: the real binary with stderr a pipe (as under a container
//! runtime) writes plain text without escape sequences, or one JSON object per line with
//! `--log-format json`, for serve, aggregate and top, up to its last word (an error included).

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long the collector may take to say it listens.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Runs `collector serve` over a fixture tree until it says it listens, stops it with
/// SIGTERM, and returns every line of its stderr.
fn serve_log(format: Option<&str>, root: &Path) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
    command
        .args([
            "serve",
            "--no-ebpf",
            "--ignore-cgroup1",
            "--cri-socket",
            "off",
        ])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--cgroup2-mount")
        .arg(root)
        .env_remove("RUST_LOG")
        .env_remove("COLLECTOR_LOG_FORMAT")
        .stderr(Stdio::piped());
    if let Some(format) = format {
        command.args(["--log-format", format]);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let listening = line.contains("collector listening");
        log.push(line);
        if listening {
            break;
        }
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    log.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success(), "serve failed: {log:#?}");
    log
}

fn run_to_end(args: &[&str]) -> (bool, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("COLLECTOR_LOG_FORMAT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (
        out.status.success(),
        stderr.lines().map(str::to_owned).collect(),
    )
}

fn json_events(log: &[String]) -> Vec<serde_json::Value> {
    log.iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
            for key in ["timestamp", "level", "target"] {
                assert!(event[key].is_string(), "no {key} in {line}");
            }
            assert!(
                event["fields"]["message"].is_string(),
                "no message in {line}"
            );
            event
        })
        .collect()
}

#[test]
fn text_log_on_a_pipe_has_no_colour_and_one_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::node_tree(dir.path());
    let log = serve_log(None, &root);
    assert!(
        log.iter().any(|l| l.contains("collector listening")),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:#?}");
    for line in &log {
        assert!(!line.contains('\u{1b}'), "escape sequence in {line:?}");
        // `2025-01-01T00:00:00.000000Z  INFO target: message`: every line is an event.
        let mut words = line.split_whitespace();
        let time = words.next().unwrap_or_default();
        assert!(
            time.len() > 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "line without its own timestamp: {line:?}"
        );
        let level = words.next().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "line without a level: {line:?}"
        );
    }
}

#[test]
fn json_log_is_one_object_per_line_from_start_to_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::node_tree(dir.path());
    let events = json_events(&serve_log(Some("json"), &root));
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["fields"]["message"].as_str().unwrap())
        .collect();
    let listening = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("collector listening")
        })
        .unwrap_or_else(|| panic!("{messages:#?}"));
    // Structured: the addresses are fields a pipeline can index.
    let grpc: std::net::SocketAddr = listening["fields"]["grpc"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(grpc.ip().is_loopback());
    assert!(messages.contains(&"shutting down"), "{messages:#?}");
}

#[test]
fn errors_end_the_log_as_one_event_in_either_format() {
    // A bad flag value found after the log starts: the error is the last event, one line.
    let args = ["serve", "--no-ebpf", "--http-listen", "not-an-address"];
    let (ok, log) = run_to_end(&[&args[..], &["--log-format", "json"]].concat());
    assert!(!ok);
    let events = json_events(&log);
    let last = events.last().expect("an error event");
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("--http-listen \"not-an-address\""),
        "{last}"
    );

    let (ok, log) = run_to_end(&args);
    assert!(!ok);
    let last = log.last().expect("an error line");
    assert!(
        last.contains(" ERROR ") && !last.contains('\u{1b}'),
        "{log:#?}"
    );

    // The aggregator and top log the same way (the env var stands for the flag).
    for args in [
        &[
            "aggregate",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ][..],
        &["top", "--once", "--endpoint", "127.0.0.1:1"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_collector"))
            .args(args)
            .env("COLLECTOR_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail here");
        let log: Vec<String> = String::from_utf8(out.stderr)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let events = json_events(&log);
        assert_eq!(
            events.last().unwrap()["level"],
            "ERROR",
            "{args:?}: {log:#?}"
        );
    }
}

#[test]
fn an_unknown_log_format_is_refused_clearly() {
    let (ok, log) = run_to_end(&["serve", "--log-format", "yaml"]);
    assert!(!ok);
    let text = log.join("\n");
    assert!(
        text.contains("invalid value 'yaml'") && text.contains("text") && text.contains("json"),
        "{text}"
    );
}
