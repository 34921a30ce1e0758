//! A network namespace's interface counters from `/proc/<pid>/net/dev`, read and filtered as
//! kubelet's cAdvisor does (`container/libcontainer/handler.go` `scanInterfaceStats`): the two
//! header lines skipped, every other line must have 17 fields once the `:` is dropped (one bad
//! line and the whole file is distrusted), and interfaces named `lo*`, `veth*`, `docker*` or
//! `nerdctl*` (any case) left out. Kubelet's Summary then names `eth0` its default interface.

use std::path::Path;

/// Interfaces cAdvisor leaves out: loopback, the host ends of container veths, and the bridges
/// of Docker and nerdctl.
pub const IGNORED_PREFIXES: [&str; 4] = ["lo", "veth", "docker", "nerdctl"];

/// The interface kubelet reports inline (`helper.go` `defaultNetworkInterfaceName`).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// One interface's cumulative counters (the kernel's `rtnl_link_stats64`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetDevError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid interface stats line {0:?}: want a name and 16 counters")]
    Malformed(String),
}

/// The interfaces of one `net/dev` text, in the kernel's order, ignored ones left out. Nothing
/// is allocated but the kept interfaces' names: this runs for every pod on every full pass.
pub fn parse(text: &str) -> Result<Vec<Interface>, NetDevError> {
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        // "  eth0: 123 ..." (cAdvisor drops every ':' and splits on whitespace: the same fields).
        let (name, rest) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim();
        if name.is_empty() && rest.trim().is_empty() {
            continue;
        }
        let malformed = || NetDevError::Malformed(line.to_owned());
        let mut counters = [0u64; 16];
        let mut fields = rest
            .split(|c: char| c.is_whitespace() || c == ':')
            .filter(|f| !f.is_empty());
        for slot in &mut counters {
            *slot = fields
                .next()
                .ok_or_else(malformed)?
                .parse()
                .map_err(|_| malformed())?;
        }
        if name.is_empty() || name.contains(char::is_whitespace) || fields.next().is_some() {
            return Err(malformed());
        }
        if is_ignored(name) {
            continue;
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes
        // packets errs drop fifo colls carrier compressed.
        interfaces.push(Interface {
            name: name.to_owned(),
            rx_bytes: counters[0],
            rx_packets: counters[1],
            rx_errors: counters[2],
            rx_dropped: counters[3],
            tx_bytes: counters[8],
            tx_packets: counters[9],
            tx_errors: counters[10],
            tx_dropped: counters[11],
        });
    }
    Ok(interfaces)
}

pub fn is_ignored(name: &str) -> bool {
    IGNORED_PREFIXES.iter().any(|p| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// The interfaces of the network namespace `pid` lives in (`<proc_root>/<pid>/net/dev`; the
/// kernel needs no ptrace access for it). `buf` is reused between calls.
pub fn read(proc_root: &Path, pid: u32, buf: &mut Vec<u8>) -> Result<Vec<Interface>, NetDevError> {
    let path = proc_root.join(pid.to_string()).join("net/dev");
    super::read_small(&path, buf).map_err(|source| NetDevError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = std::str::from_utf8(buf).map_err(|_| NetDevError::Malformed("not UTF-8".into()))?;
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's namespace as the kernel prints it (6.x), with the ignored kinds mixed in.
    const POD: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
  eth0: 9876543   12345    1    2    0     0          0         0  1234567    2345    3    4    0     0       0          0
vethab12: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0
Docker0:    7       1    0    0    0     0          0         0        7       1    0    0    0     0       0          0
nerdctl0:   7       1    0    0    0     0          0         0        7       1    0    0    0     0       0          0
  net1:      10       1    0    0    0     0          0         0       20       2    0    0    0     0       0          0
";

    #[test]
    fn keeps_what_cadvisor_keeps() {
        let ifaces = parse(POD).unwrap();
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "net1"]);
        assert_eq!(
            ifaces[0],
            Interface {
                name: "eth0".into(),
                rx_bytes: 9_876_543,
                rx_packets: 12_345,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 1_234_567,
                tx_packets: 2345,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
        assert_eq!((ifaces[1].rx_bytes, ifaces[1].tx_bytes), (10, 20));
        // Counters wide enough to touch the colon, as older kernels print them.
        let tight = POD.replace("  eth0: 9876543", "  eth0:9876543");
        assert_eq!(parse(&tight).unwrap(), ifaces);
    }

    #[test]
    fn one_bad_line_distrusts_the_file() {
        let truncated = POD.replace("net1:      10       1", "net1: 10");
        assert!(matches!(
            parse(&truncated),
            Err(NetDevError::Malformed(l)) if l.contains("net1")
        ));
        let garbled = POD.replace("9876543", "98x6543");
        assert!(parse(&garbled).is_err());
        // Only the headers (a namespace with no interfaces at all): empty, not an error.
        let headers: String = POD.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse(&headers).unwrap(), []);
    }

    #[test]
    fn reads_this_process_namespace() {
        let mut buf = Vec::new();
        let pid = std::process::id();
        let ifaces = read(Path::new("/proc"), pid, &mut buf).unwrap();
        assert!(ifaces.iter().all(|i| !is_ignored(&i.name)));
        let err = read(Path::new("/nonexistent"), pid, &mut buf).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
