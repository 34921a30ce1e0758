//! Small parsers shared by the cgroup file readers. None allocates; malformed input yields
//! `None` for that value and is counted by the caller, never a panic.

/// Calls `f(key, value)` for each `key value` line; lines without a space are skipped.
pub fn for_each_pair<'a>(text: &'a str, mut f: impl FnMut(&'a str, &'a str)) {
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(' ') {
            f(key, value.trim());
        }
    }
}

/// Parses `value` into `field`, counting a failure in `malformed` (the field stays as it was).
pub fn set_u64(field: &mut Option<u64>, value: &str, malformed: &mut u32) {
    match value.parse() {
        Ok(v) => *field = Some(v),
        Err(_) => *malformed += 1,
    }
}

/// A single-number file such as `memory.current` or `cpuacct.usage`.
pub fn single_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: `max` (v2) means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

impl Limit {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "max" => Some(Self::Max),
            v => v.parse().ok().map(Self::Value),
        }
    }

    /// `None` when unlimited. Like kubelet, values above 2^62 count as unlimited: v1 reports
    /// "no limit" as a huge page-rounded number rather than `max`.
    pub fn bytes(self) -> Option<u64> {
        const UNLIMITED_ABOVE: u64 = 1 << 62;
        match self {
            Self::Max => None,
            Self::Value(v) if v > UNLIMITED_ABOVE => None,
            Self::Value(v) => Some(v),
        }
    }
}

/// `cpu.max`: `$QUOTA $PERIOD`, quota `max` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Microseconds per period; `None` = unlimited.
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl CpuMax {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let quota = words.next()?;
        let period_us = words.next()?.parse().ok()?;
        let quota_us = match quota {
            "max" => None,
            q => Some(q.parse().ok()?),
        };
        Some(Self {
            quota_us,
            period_us,
        })
    }
}

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PsiData {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time, microseconds.
    pub total_us: u64,
}

/// `cpu.pressure`, `memory.pressure`, `io.pressure`. `full` is absent for cpu on older kernels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Psi {
    pub some: Option<PsiData>,
    pub full: Option<PsiData>,
}

impl Psi {
    pub fn parse(text: &str) -> Self {
        let mut psi = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let slot = match words.next() {
                Some("some") => &mut psi.some,
                Some("full") => &mut psi.full,
                _ => continue,
            };
            *slot = PsiData::parse(words);
        }
        psi
    }
}

impl PsiData {
    fn parse<'a>(words: impl Iterator<Item = &'a str>) -> Option<Self> {
        let (mut avg10, mut avg60, mut avg300, mut total_us) = (None, None, None, None);
        for word in words {
            let (key, value) = word.split_once('=')?;
            match key {
                "avg10" => avg10 = value.parse().ok(),
                "avg60" => avg60 = value.parse().ok(),
                "avg300" => avg300 = value.parse().ok(),
                "total" => total_us = value.parse().ok(),
                _ => {}
            }
        }
        let finite = |v: Option<f64>| v.filter(|f: &f64| f.is_finite() && *f >= 0.0);
        Some(Self {
            avg10: finite(avg10)?,
            avg60: finite(avg60)?,
            avg300: finite(avg300)?,
            total_us: total_us?,
        })
    }
}

/// Block I/O summed over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Io {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

impl Io {
    /// v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` per device.
    pub fn parse_v2(text: &str, malformed: &mut u32) -> Self {
        let mut io = Self::default();
        for line in text.lines() {
            for word in line.split_whitespace().skip(1) {
                let Some((key, value)) = word.split_once('=') else {
                    continue;
                };
                let field = match key {
                    "rbytes" => &mut io.read_bytes,
                    "wbytes" => &mut io.write_bytes,
                    "rios" => &mut io.read_ops,
                    "wios" => &mut io.write_ops,
                    _ => continue,
                };
                match value.parse::<u64>() {
                    Ok(v) => *field = field.saturating_add(v),
                    Err(_) => *malformed += 1,
                }
            }
        }
        io
    }

    /// v1 `blkio.throttle.io_service_bytes[_recursive]` or `…io_serviced[_recursive]`:
    /// `MAJ:MIN Read N` lines per device and operation, then a grand `Total N`.
    /// Returns (read, write).
    pub fn parse_v1_pairs(text: &str, malformed: &mut u32) -> (u64, u64) {
        let (mut read, mut write) = (0u64, 0u64);
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(_device), Some(op), Some(value)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let field = match op {
                "Read" => &mut read,
                "Write" => &mut write,
                _ => continue,
            };
            match value.parse::<u64>() {
                Ok(v) => *field = field.saturating_add(v),
                Err(_) => *malformed += 1,
            }
        }
        (read, write)
    }
}

/// Lines in `cgroup.procs`: the number of processes directly in the cgroup.
pub fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Limit::parse("max\n"), Some(Limit::Max));
        assert_eq!(
            Limit::parse("67108864\n").unwrap().bytes(),
            Some(67_108_864)
        );
        // v1's "unlimited" (page-rounded i64::MAX) is unlimited, like kubelet's 2^62 rule.
        assert_eq!(Limit::parse("9223372036854771712").unwrap().bytes(), None);
        assert_eq!(Limit::parse("max").unwrap().bytes(), None);
        assert_eq!(Limit::parse(""), None);
        assert_eq!(Limit::parse("-1"), None);
    }

    #[test]
    fn cpu_max() {
        assert_eq!(
            CpuMax::parse("max 100000\n"),
            Some(CpuMax {
                quota_us: None,
                period_us: 100_000
            })
        );
        assert_eq!(
            CpuMax::parse("50000 100000"),
            Some(CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000
            })
        );
        assert_eq!(CpuMax::parse("50000"), None);
        assert_eq!(CpuMax::parse("x 100000"), None);
        assert_eq!(CpuMax::parse(""), None);
    }

    #[test]
    fn pressure() {
        let psi = Psi::parse(
            "some avg10=4.15 avg60=0.88 avg300=0.18 total=578879\n\
             full avg10=4.15 avg60=0.88 avg300=0.18 total=577898\n",
        );
        let some = psi.some.unwrap();
        assert_eq!((some.avg10, some.total_us), (4.15, 578_879));
        assert_eq!(psi.full.unwrap().total_us, 577_898);
        // cpu.pressure on older kernels has no `full` line.
        let cpu = Psi::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        assert!(cpu.some.is_some() && cpu.full.is_none());
        // Garbage and non-finite values give absent lines.
        let bad = Psi::parse("some avg10=NaN avg60=0 avg300=0 total=1\nfull total=x\nnoise\n");
        assert_eq!(bad, Psi::default());
        assert_eq!(Psi::parse(""), Psi::default());
    }

    #[test]
    fn io_v2_sums_devices() {
        let mut malformed = 0;
        let io = Io::parse_v2(
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
             8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n\
             253:0 rbytes=x\n",
            &mut malformed,
        );
        assert_eq!(io.read_bytes, 1_459_200 + 90_430_464);
        assert_eq!(io.write_ops, 353 + 1252);
        assert_eq!(malformed, 1);
    }

    #[test]
    fn io_v1_pairs_skip_total() {
        let mut malformed = 0;
        let text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n\
                    8:0 Total 12288\n8:16 Read 1\nTotal 12289\n";
        assert_eq!(Io::parse_v1_pairs(text, &mut malformed), (4097, 8192));
        assert_eq!(Io::parse_v1_pairs("Total 0\n", &mut malformed), (0, 0));
        assert_eq!(malformed, 0);
    }

    #[test]
    fn procs() {
        assert_eq!(count_lines("1\n22\n333\n"), 3);
        assert_eq!(count_lines(""), 0);
    }
}
