//! Running commands with clear errors.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Runs `cmd`, streaming its output, and fails with the command line when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and prints how long it took.
pub fn timed(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let start = Instant::now();
    let result = run(cmd);
    eprintln!("    {what}: {:.1} s", start.elapsed().as_secs_f64());
    result
}

/// Captures stdout; `None` when the program is missing or fails.
pub fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stdout of `program args`, as bytes; an error with its stderr when it fails.
pub fn output_bytes(program: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Finds `program` on PATH or in ~/.cargo/bin (where `cargo install` puts it).
pub fn find(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Passed/failed counts summed over every `test result:` line of a cargo test run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
}

impl TestTotals {
    /// Adds one `test result: ok. 4 passed; 0 failed; …` line; other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, echoing its output, and returns the totals; fails when cargo fails.
pub fn cargo_test(cmd: &mut Command) -> anyhow::Result<TestTotals> {
    eprintln!("==> cargo test");
    let start = Instant::now();
    let line = describe(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut out = std::io::stdout().lock();
    for text in BufReader::new(stdout).lines() {
        let text = text?;
        totals.add_line(&text);
        writeln!(out, "{text}")?;
    }
    drop(out);
    let status = child.wait()?;
    eprintln!("    cargo test: {:.1} s", start.elapsed().as_secs_f64());
    if !status.success() {
        println!("tests: {} passed, {} failed", totals.passed, totals.failed);
        bail!("`{line}` failed ({status})");
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_result_lines() {
        let mut t = TestTotals::default();
        for line in [
            "test result: ok. 33 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s",
            "running 4 tests",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            TestTotals {
                passed: 35,
                failed: 1
            }
        );
    }
}
