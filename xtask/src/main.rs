//! `cargo xtask`: the project's own build tool.
//!
//! - `prereqs`: check and install what the build needs (idempotent, quiet when present)
//! - `build`:   build everything, eBPF programs included
//! - `run`:     build and run the collector locally as root with working defaults
//! - `test`:    the layer check, fmt + clippy and every test, root/BPF integration tests included
//! - `engines`: fetch the export tests' Prometheus and VictoriaMetrics (Debian trixie), rotel (PyPI)
//! - `layers`:  check that the collector's imports follow its layer table
//! - `fuzz`:    run the parser fuzzers (cargo-fuzz) for a while each
//! - `image`:   the collector built statically in an OCI image archive (reproducible)
//! - `soak`:    cgroup churn against the release binary for N minutes, with a report
//! - `bench`:   measure collection cost, probe overhead, streaming and aggregation; write a
//!   markdown + JSON report and a plot

mod bench;
mod cmd;
mod debian;
mod fuzz;
mod image;
mod layers;
mod prereqs;
mod pypi;
mod soak;
mod vm;

use std::{os::unix::process::CommandExt as _, process::Command, time::Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test the collector")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install build prerequisites (nightly + rust-src, bpf-linker).
    Prereqs,
    /// Build the collector (debug unless --release), eBPF programs included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and run the collector; arguments after `--` go to `collector serve`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format and lint checks, every test on this host (root/BPF tests included), then the
    /// root/BPF suite again in a QEMU guest on another kernel with pure cgroup v2.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only the host's tests, no VM.
        #[arg(long, conflicts_with = "vm")]
        host: bool,
        /// Only the VM suite, no host tests.
        #[arg(long)]
        vm: bool,
        /// Guest kernels: Debian series whose newest generic amd64 image is used (repeat the
        /// flag for several; default 5.10, 6.1 and 6.12).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Arguments after `--` go to every test binary, host and guest (a name filter,
        /// `--nocapture`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Fetch the engines the export tests push into (Debian trixie's Prometheus and
    /// VictoriaMetrics, unpacked into ~/.cache/collector-debian; rotel from PyPI into
    /// ~/.cache/collector-pypi); `test` does this itself.
    Engines,
    /// Build the collector statically into an OCI image archive (target/image/), reproducibly.
    Image {
        /// Build it a second time and fail unless both are byte for byte the same.
        #[arg(long)]
        check_reproducible: bool,
        /// Also write the image's files to this directory (deploy/Dockerfile copies them).
        #[arg(long)]
        rootfs: Option<std::path::PathBuf>,
    },
    /// Soak (root): the static release collector under 1,000 cgroups a minute of churn, with a
    /// Watch subscriber, an aggregator and a remote-write receiver, killed and restarted
    /// halfway; writes soak.md, soak.json and soak.svg to --out and fails unless it held.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value = "target/soak")]
        out: std::path::PathBuf,
    },
    /// Check that the collector's modules import only earlier layers (the table in
    /// collector/src/lib.rs); `test` runs it first.
    Layers,
    /// Fuzz the parsers of kernel text (all targets unless named), each for --seconds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        targets: Vec<String>,
    },
    /// Measure collection cost, probe overhead, Watch fan-out and aggregation; writes bench.md,
    /// bench.json and cost.svg to --out.
    Bench {
        /// About a minute instead of the full run.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        /// Also measure this commit's bench programs (built in target/bench-baseline), section
        /// by section beside this tree's, and report old against new.
        #[arg(long)]
        baseline: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Paths below are relative to the workspace root.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))?;
    prereqs::ensure()?;
    match cli.command {
        Task::Prereqs => {
            eprintln!("prerequisites present");
            Ok(())
        }
        Task::Build { release } => build(release),
        Task::Run { args } => run(args),
        Task::Test {
            no_lint,
            host,
            vm,
            kernels,
            test_args,
        } => test(
            no_lint,
            Suites {
                host: !vm,
                vm: !host,
            },
            &kernels,
            &test_args,
        ),
        Task::Engines => {
            let dir = debian::ensure_engines()?;
            eprintln!("engines in {}", dir.display());
            eprintln!("rotel: {}", pypi::ensure_rotel()?.display());
            Ok(())
        }
        Task::Image {
            check_reproducible,
            rootfs,
        } => {
            if check_reproducible {
                image::build_checked()?;
            } else {
                image::build()?;
            }
            match rootfs {
                Some(dir) => image::write_rootfs(&dir),
                None => Ok(()),
            }
        }
        Task::Soak { minutes, out } => soak::run(minutes, &out),
        Task::Layers => layers::check(),
        Task::Fuzz { seconds, targets } => fuzz::run(targets, seconds),
        Task::Bench {
            quick,
            out,
            baseline,
        } => bench::run(quick, out, baseline),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["build", "--package", "collector"]);
    if release {
        c.arg("--release");
    }
    cmd::timed("build collector (user space + eBPF)", &mut c)
}

/// The collector and the measurement programs, optimized.
fn build_release_with_examples() -> anyhow::Result<()> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--package",
        "collector",
        "--bins",
        "--examples",
    ]);
    cmd::timed("build collector and bench programs (release)", &mut c)
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    build(true)?;
    let binary = std::fs::canonicalize("target/release/collector")?;
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map_or("127.0.0.1:50051", |w| w[1].as_str())
        .to_owned();
    eprintln!(
        "\nStarting the collector (gRPC on {listen}). Watch it from another terminal:\n  \
         {bin} top --endpoint {listen}\n  grpcurl -plaintext {listen} \
         collector.v1.Collector/GetSummary\nCtrl-C stops it.\n",
        bin = binary.display()
    );
    let mut command = if cmd::is_root() {
        Command::new(&binary)
    } else if cmd::find("sudo").is_some() {
        eprintln!("(not root: using sudo so the eBPF probes can load)");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&binary);
        c
    } else {
        eprintln!("(not root and no sudo: the collector will run in cgroupfs-only mode)");
        Command::new(&binary)
    };
    command.arg("serve").args(&args);
    // Replace this process so Ctrl-C and exit codes go straight to the collector.
    Err(command.exec()).context("starting the collector")
}

/// The soak's length in `cargo xtask test` (CI).
const CI_SOAK_MINUTES: u64 = 2;

/// Which suites `cargo xtask test` runs: both unless told otherwise.
struct Suites {
    host: bool,
    vm: bool,
}

fn test(
    no_lint: bool,
    suites: Suites,
    kernels: &[String],
    test_args: &[String],
) -> anyhow::Result<()> {
    let start = Instant::now();
    if !no_lint {
        lint()?;
    }
    prereqs::ensure_test_tools(suites.vm)?;
    let cached_tools = prereqs::cached_test_tools()?;
    let mut host = None;
    if suites.host {
        if std::env::var("COLLECTOR_REQUIRE_BPF").is_ok_and(|v| v == "1") {
            eprintln!("COLLECTOR_REQUIRE_BPF=1: root/BPF tests must run, skipping fails");
        } else if !cmd::is_root() {
            eprintln!("note: not root, so root/BPF integration tests will skip (with a message)");
        }
        // Prometheus 2.53 and VictoriaMetrics 1.112 for the export tests, from Debian trixie.
        let engines = debian::ensure_engines()?;
        // rotel (PyPI), a third-party OTLP receiver for the gRPC path.
        let rotel = pypi::ensure_rotel()?;
        // The OCI image (built twice: reproducible), which the container test runs.
        let step = Instant::now();
        let image = image::build_checked()?;
        eprintln!("    image: {:.0} s", step.elapsed().as_secs_f64());
        host = Some(cmd::cargo_test(
            cargo()
                .envs(cached_tools.iter().map(|(k, v)| (*k, v)))
                .env("COLLECTOR_ENGINE_DIR", engines)
                .env("COLLECTOR_ROTEL", rotel)
                .env("COLLECTOR_IMAGE_ARCHIVE", &image.archive)
                .args(["test", "--no-fail-fast", "--"])
                .args(test_args),
        )?);
        // The churn soak with a restart, short (the README has the 10-minute figures); not
        // when the tests were narrowed by a filter.
        if !test_args.is_empty() {
            eprintln!("note: test arguments given, so the soak does not run");
        } else if cmd::is_root() {
            let step = Instant::now();
            soak::run(CI_SOAK_MINUTES, std::path::Path::new("target/soak-ci"))?;
            eprintln!("    soak: {:.0} s", step.elapsed().as_secs_f64());
        } else {
            anyhow::ensure!(
                !std::env::var("COLLECTOR_REQUIRE_BPF").is_ok_and(|v| v == "1"),
                "the soak needs root and COLLECTOR_REQUIRE_BPF=1 forbids skipping it"
            );
            eprintln!("note: not root, so the soak does not run");
        }
    }
    let guests = if suites.vm {
        let kernels: Vec<String> = if kernels.is_empty() {
            vm::DEFAULT_KERNELS
                .iter()
                .map(|k| (*k).to_owned())
                .collect()
        } else {
            kernels.to_vec()
        };
        vm::run(&kernels, test_args)?
    } else {
        Vec::new()
    };
    eprintln!(
        "all checks and tests passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    // The closing lines: totals over every host test binary (cargo prints one line per
    // binary), and the VM's.
    if let Some(totals) = host {
        println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    }
    for g in guests {
        println!(
            "vm tests ({}): {} test binary runs passed; boot {:.1} s, suite {:.0} s",
            g.kernel,
            g.passed,
            g.boot.as_secs_f64(),
            g.total.as_secs_f64()
        );
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    layers::check()?;
    cmd::timed(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    cmd::timed(
        "clippy (host crates)",
        cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    cmd::timed(
        "clippy (eBPF crate, bpfel-unknown-none)",
        Command::new("rustup").args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "collector-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]),
    )
}
