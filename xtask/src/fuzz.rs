//! `cargo xtask fuzz`: runs the cargo-fuzz targets of collector/fuzz, each for a fixed time,
//! seeded from the committed seeds/ and growing a local corpus/ (git-ignored).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, find};

const FUZZ_DIR: &str = "collector/fuzz";

pub fn run(targets: Vec<String>, seconds: u64) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let all = list_targets()?;
    let chosen = if targets.is_empty() {
        all.clone()
    } else {
        targets
    };
    if let Some(unknown) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown:?}; targets: {}", all.join(", "));
    }
    let mut report = Vec::new();
    for target in &chosen {
        let corpus = format!("corpus/{target}");
        fs::create_dir_all(Path::new(FUZZ_DIR).join(&corpus))?;
        eprintln!("==> fuzzing {target} for {seconds} s");
        let artifacts = Path::new(FUZZ_DIR).join("artifacts").join(target);
        let saved_before = count_files(&artifacts);
        let output = Command::new("cargo")
            .current_dir("collector")
            // The fuzzers test parsers only; the eBPF object is not needed.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run", target])
            .args([format!("fuzz/{corpus}"), format!("fuzz/seeds/{target}")])
            .args(["--", &format!("-max_total_time={seconds}")])
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            eprintln!("{log}");
            // A new file there is this run's failing input (old ones are earlier runs').
            if count_files(&artifacts) > saved_before {
                bail!(
                    "fuzz target {target} found a failing input, saved under {}",
                    artifacts.display()
                );
            }
            bail!("fuzz target {target} did not run (build or setup failed, see above)");
        }
        let runs = log
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("Done ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let line = format!("{target}: {runs} runs in {seconds} s, no crash");
        eprintln!("    {line}");
        report.push(line);
    }
    eprintln!("==> all fuzz targets clean");
    for line in report {
        eprintln!("    {line}");
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

fn list_targets() -> anyhow::Result<Vec<String>> {
    let mut targets: Vec<String> = fs::read_dir(Path::new(FUZZ_DIR).join("fuzz_targets"))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".rs")?.to_owned())
        })
        .collect();
    targets.sort();
    Ok(targets)
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if find("cargo-fuzz").is_some() {
        return Ok(());
    }
    eprintln!("==> installing cargo-fuzz (once; about a minute and a half)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
