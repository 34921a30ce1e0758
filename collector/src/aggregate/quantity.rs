//! Kubernetes wire formats: resource quantities in canonical form and Go durations, as
//! metrics-server writes them (RFC 3339 times are in [`crate::unix_time`]).

use std::time::Duration;

/// CPU in nanocores as a canonical DecimalSI quantity: the largest exact suffix ("2", "250m",
/// "1500u", "123456789n"), as resource.NewScaledQuantity(n, resource.Nano) prints.
pub fn cpu(nano_cores: u64) -> String {
    if nano_cores == 0 {
        return "0".into();
    }
    const SUFFIXES: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
    let mut value = nano_cores;
    let mut i = 0;
    while value.is_multiple_of(1000) && i + 1 < SUFFIXES.len() {
        value /= 1000;
        i += 1;
    }
    format!("{value}{}", SUFFIXES[i])
}

/// Memory in bytes as a canonical BinarySI quantity: "64Mi" when exact, else plain bytes
/// ("1536"), as resource.NewQuantity(b, resource.BinarySI) prints.
pub fn memory(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut value = bytes;
    let mut i = 0;
    while value.is_multiple_of(1024) && i + 1 < SUFFIXES.len() {
        value /= 1024;
        i += 1;
    }
    format!("{value}{}", SUFFIXES[i])
}

/// A duration as Go's time.Duration.String() writes it ("10.5s", "1m0.25s", "500ms", "0s").
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns, 1_000_000));
    }
    let total_secs = ns / 1_000_000_000;
    let (h, m) = (total_secs / 3600, (total_secs / 60) % 60);
    let secs = trim_fraction(ns % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, _) => format!("{m}m{secs}s"),
        _ => format!("{h}h{m}m{secs}s"),
    }
}

/// `value / unit` with the fraction's trailing zeros removed.
fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_are_canonical() {
        assert_eq!(cpu(0), "0");
        assert_eq!(cpu(123_456_789), "123456789n");
        assert_eq!(cpu(250_000_000), "250m");
        assert_eq!(cpu(1_500_000), "1500u");
        assert_eq!(cpu(2_000_000_000), "2");
        assert_eq!(cpu(1_500_000_000), "1500m");
    }

    #[test]
    fn memory_quantities_are_canonical() {
        assert_eq!(memory(0), "0");
        assert_eq!(memory(1536), "1536");
        assert_eq!(memory(2048), "2Ki");
        assert_eq!(memory(64 << 20), "64Mi");
        assert_eq!(memory((3 << 30) + 4096), "3145732Ki");
    }

    #[test]
    fn durations_print_like_go() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(500)), "500ms");
        assert_eq!(go_duration(ms(10_500)), "10.5s");
        assert_eq!(go_duration(ms(60_250)), "1m0.25s");
        assert_eq!(go_duration(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(
            go_duration(Duration::from_nanos(10_000_000_001)),
            "10.000000001s"
        );
    }
}
