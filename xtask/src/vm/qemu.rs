//! Boots the guest under TCG and follows its serial console: every line is shown as it comes,
//! and the run fails on a kernel panic, an oops, a soft lockup, the failure marker, a missing
//! result, a silent guest (a hang with interrupts off prints nothing; its vCPUs' places are
//! reported) or the timeout.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::hang;

/// Lines that end the run as a failure whatever the tests say.
const KERNEL_TROUBLE: &[&str] = &[
    "Kernel panic",
    "soft lockup",
    "hard LOCKUP",
    "BUG: ",
    "Oops: ",
    "general protection fault",
];
const RESULT: &str = "COLLECTOR-VM-RESULT:";
/// No console line for this long means a hung guest: the longest test binary takes about 15 s
/// in the guest, and a soft lockup is reported within about 45 s.
const SILENCE: Duration = Duration::from_secs(5 * 60);

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub scratch_disk: &'a Path,
    /// QEMU's human monitor, for a report of where a silent guest's vCPUs are.
    pub monitor: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
}

pub struct Outcome {
    pub passed: u32,
    pub failed: u32,
    /// From qemu's start to the first line the init printed.
    pub boot: Duration,
    pub total: Duration,
}

pub fn run(boot: &Boot) -> anyhow::Result<Outcome> {
    let mut child = Command::new("qemu-system-x86_64")
        // KVM guests hang at boot on our hosts; TCG is slower but works everywhere.
        .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-m", &boot.memory_mib.to_string()])
        .args(["-smp", &boot.cpus.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor"])
        .arg(format!("unix:{},server,nowait", boot.monitor.display()))
        .args(["-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            boot.scratch_disk.display()
        ))
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 oops=panic softlockup_panic=1 \
             softlockup_all_cpu_backtrace=1 loglevel=4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian: apt-get install qemu-system-x86)")?;
    let started = Instant::now();
    let stdout = child.stdout.take().context("qemu stdout")?;
    // A reader thread, so the timeout holds even while the guest prints nothing.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut boot_time = None;
    let mut result = None;
    let mut trouble = None;
    let mut last_line = Instant::now();
    loop {
        let left = boot
            .timeout
            .saturating_sub(started.elapsed())
            .min(SILENCE.saturating_sub(last_line.elapsed()));
        match rx.recv_timeout(left) {
            Ok(line) => {
                last_line = Instant::now();
                println!("vm| {line}");
                if boot_time.is_none() && line.starts_with("COLLECTOR-VM") {
                    boot_time = Some(started.elapsed());
                }
                if let Some(rest) = line.strip_prefix(RESULT) {
                    result = Some(parse_result(rest)?);
                }
                if trouble.is_none()
                    && let Some(t) = KERNEL_TROUBLE.iter().find(|t| line.contains(*t))
                {
                    trouble = Some(format!("the guest kernel reported {t:?}: {line}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if last_line.elapsed() >= SILENCE => {
                let places = hang::vcpu_places(boot.monitor);
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest printed nothing for {SILENCE:?}: hung. Its vCPUs were at:\n{}",
                    hang::symbolize(&places, boot.scratch_disk)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the VM did not finish within {:?} (COLLECTOR_VM_TIMEOUT_SECS to change)",
                    boot.timeout
                );
            }
        }
    }
    let status = child.wait()?;
    if let Some(t) = trouble {
        bail!(t);
    }
    let Some((passed, failed)) = result else {
        bail!("qemu exited ({status}) without a {RESULT} line: the guest's init did not finish");
    };
    Ok(Outcome {
        passed,
        failed,
        boot: boot_time.unwrap_or_default(),
        total: started.elapsed(),
    })
}

/// " passed=5 failed=0 uptime=123.45"
fn parse_result(rest: &str) -> anyhow::Result<(u32, u32)> {
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse::<u32>().ok())
            .with_context(|| format!("no {key} in {RESULT}{rest}"))
    };
    Ok((field("passed=")?, field("failed=")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line() {
        assert_eq!(
            parse_result(" passed=5 failed=1 uptime=9.1").unwrap(),
            (5, 1)
        );
        assert!(parse_result(" passed=x").is_err());
    }
}
