//! `cargo xtask bench --baseline REV`: the bench programs of another commit, built beside this
//! tree, so that old and new are measured in one run on one machine (each section runs the
//! baseline's program, then this tree's, back to back under the same conditions).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd;

/// Where baselines live: a detached worktree per commit and one shared target directory.
const ROOT: &str = "target/bench-baseline";

/// The examples directory of `rev`'s release build, building it when needed.
pub fn build(rev: &str) -> anyhow::Result<(String, PathBuf)> {
    let sha = cmd::output(
        "git",
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .map(|s| s.trim().to_owned())
    .with_context(|| format!("{rev} is not a commit of this repository"))?;
    let short = sha[..12.min(sha.len())].to_owned();
    let root = std::fs::canonicalize(".")?.join(ROOT);
    let tree = root.join(format!("src-{short}"));
    if !tree.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&root)?;
        cmd::run(
            Command::new("git")
                .args(["worktree", "add", "--detach", "--force"])
                .arg(&tree)
                .arg(&sha),
        )?;
    }
    let target = root.join("target");
    cmd::timed(
        &format!("build the bench programs of {short} (release)"),
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--package",
                "collector",
                "--bins",
                "--examples",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&tree),
    )?;
    Ok((short, target.join("release/examples")))
}

/// This tree's examples directory.
pub fn current() -> PathBuf {
    Path::new("target/release/examples").to_path_buf()
}
