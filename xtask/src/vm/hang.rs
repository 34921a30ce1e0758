//! Where a silent guest is stuck: each vCPU's instruction pointer from QEMU's monitor, named
//! with the guest's own /proc/kallsyms, which its init copies to the scratch disk at boot
//! (KASLR moves the kernel on every boot, so only that boot's table is right).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::Duration,
};

/// One vCPU seen at one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub cpu: usize,
    pub rip: u64,
    pub interrupts_on: bool,
}

/// A few samples of every vCPU, so a spinning vCPU shows the loop it is in. Empty when the
/// monitor does not answer.
pub fn vcpu_places(monitor: &Path) -> Vec<Place> {
    let mut places = BTreeSet::new();
    for _ in 0..3 {
        if let Some(text) = ask(monitor, "info registers -a") {
            places.extend(parse_registers(&text));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    places.into_iter().collect()
}

/// One line per place, named from the guest's kallsyms when the scratch disk has them.
pub fn symbolize(places: &[Place], scratch_disk: &Path) -> String {
    if places.is_empty() {
        return "  (QEMU's monitor did not answer)".into();
    }
    let symbols = guest_kallsyms(scratch_disk)
        .map(|text| parse_kallsyms(&text))
        .unwrap_or_default();
    places
        .iter()
        .map(|p| {
            format!(
                "  CPU#{} {:#x} {} (interrupts {})",
                p.cpu,
                p.rip,
                name(p.rip, &symbols),
                if p.interrupts_on { "on" } else { "off" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ask(monitor: &Path, command: &str) -> Option<String> {
    let mut stream = UnixStream::connect(monitor).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let _ = read_until_quiet(&mut stream); // the greeting
    stream.write_all(format!("{command}\n").as_bytes()).ok()?;
    Some(read_until_quiet(&mut stream))
}

fn read_until_quiet(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// From `info registers -a`: "CPU#1" headers, then "RIP=ffffffff811f1c42 RFL=00000002 ...".
fn parse_registers(text: &str) -> Vec<Place> {
    let mut places = Vec::new();
    let mut cpu = None;
    for line in text.lines() {
        if let Some(n) = line.trim().strip_prefix("CPU#") {
            cpu = n.trim().parse().ok();
            continue;
        }
        let Some(rest) = line.trim().strip_prefix("RIP=") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let rip = words.next().and_then(|r| u64::from_str_radix(r, 16).ok());
        let flags = words
            .next()
            .and_then(|f| f.strip_prefix("RFL="))
            .and_then(|f| u64::from_str_radix(f, 16).ok());
        if let (Some(cpu), Some(rip), Some(flags)) = (cpu, rip, flags) {
            places.push(Place {
                cpu,
                rip,
                // IF, bit 9 of RFLAGS.
                interrupts_on: flags & 0x200 != 0,
            });
        }
    }
    places
}

fn guest_kallsyms(scratch_disk: &Path) -> Option<String> {
    let out = tempfile_path();
    let status = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /kallsyms {}", out.display()))
        .arg(scratch_disk)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = status
        .success()
        .then(|| std::fs::read_to_string(&out).ok())
        .flatten();
    let _ = std::fs::remove_file(&out);
    text.filter(|t| !t.is_empty())
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("collector-vm-kallsyms-{}", std::process::id()))
}

/// Code symbols (t/T), sorted by address.
fn parse_kallsyms(text: &str) -> Vec<(u64, String)> {
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let addr = u64::from_str_radix(words.next()?, 16).ok()?;
            let kind = words.next()?;
            let name = words.next()?;
            matches!(kind, "t" | "T").then(|| (addr, name.to_owned()))
        })
        .collect();
    symbols.sort_unstable();
    symbols
}

fn name(rip: u64, symbols: &[(u64, String)]) -> String {
    match symbols.partition_point(|(addr, _)| *addr <= rip) {
        0 => "?".into(),
        i => format!("{}+{:#x}", symbols[i - 1].1, rip - symbols[i - 1].0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_give_each_vcpu_and_its_interrupt_flag() {
        let text = "info registers -a\r\n\r\nCPU#0\r\nRAX=0000000000000001 RBX=ff11\r\n\
                    RIP=ffffffff81a5a170 RFL=00000002 [-------] CPL=0 II=0\r\n\r\nCPU#1\r\n\
                    RIP=ffffffff811f1c42 RFL=00000246 [---Z-P-] CPL=0\r\n";
        assert_eq!(
            parse_registers(text),
            [
                Place {
                    cpu: 0,
                    rip: 0xffffffff81a5a170,
                    interrupts_on: false
                },
                Place {
                    cpu: 1,
                    rip: 0xffffffff811f1c42,
                    interrupts_on: true
                },
            ]
        );
    }

    #[test]
    fn addresses_are_named_by_the_symbol_below_them() {
        let symbols = parse_kallsyms(
            "ffffffff811f1c00 T bpf_trace_run4\nffffffff811f1b40 T bpf_trace_run3\n\
             ffffffff82000000 D some_data\nffffffffc0000000 t helper\t[ext4]\n",
        );
        assert_eq!(name(0xffffffff811f1c42, &symbols), "bpf_trace_run4+0x42");
        assert_eq!(name(0xffffffff811f1b40, &symbols), "bpf_trace_run3+0x0");
        assert_eq!(name(0xffffffff81000000, &symbols), "?");
        assert_eq!(name(0xffffffffc0000010, &symbols), "helper+0x10");
    }
}
