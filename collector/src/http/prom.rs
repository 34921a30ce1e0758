//! Prometheus text exposition (format 0.0.4), written the way the Go client renders it: families
//! sorted by name, each with HELP and TYPE, labels sorted by name, values in Go's shortest float
//! form, optional millisecond timestamps.

use std::{collections::BTreeMap, fmt::Write as _};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    /// (series key: labels without `le`, rendered line). Sorted by key when written, stably, so
    /// a histogram's buckets stay in ascending order followed by its _sum and _count, as the Go
    /// client writes them.
    samples: Vec<(String, String)>,
}

/// Collects families and renders them sorted, as the Go client's registry does.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

/// Label pairs of one sample; sorted by name when rendered.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Declares a family; declaring it again keeps the first HELP and TYPE.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Self {
        self.families.entry(name).or_insert(Family {
            help,
            kind,
            samples: Vec::new(),
        });
        self
    }

    /// One sample of family `family` (declared first); `suffix` is "" or a histogram's
    /// `_bucket` / `_sum` / `_count`.
    pub fn sample(
        &mut self,
        family: &'static str,
        suffix: &str,
        labels: Labels<'_>,
        value: f64,
        timestamp_ms: Option<i64>,
    ) {
        let Some(f) = self.families.get_mut(family) else {
            debug_assert!(false, "family {family} not declared");
            return;
        };
        let mut line = format!("{family}{suffix}");
        let mut sorted: Vec<&(&str, &str)> = labels.iter().collect();
        sorted.sort_by_key(|(name, _)| *name);
        let mut key = String::new();
        if !sorted.is_empty() {
            line.push('{');
            for (i, (name, value)) in sorted.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let pair = format!("{name}=\"{}\"", escape_label(value));
                if *name != "le" {
                    key.push_str(&pair);
                    key.push(',');
                }
                line.push_str(&pair);
            }
            line.push('}');
        }
        let _ = write!(line, " {}", format_value(value));
        if let Some(ms) = timestamp_ms {
            let _ = write!(line, " {ms}");
        }
        f.samples.push((key, line));
    }

    /// The text body. Families without samples are left out, as the Go client does.
    pub fn render(mut self) -> String {
        let mut out = String::new();
        for (name, family) in &mut self.families {
            if family.samples.is_empty() {
                continue;
            }
            family.samples.sort_by(|a, b| a.0.cmp(&b.0));
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (_, sample) in &family.samples {
                out.push_str(sample);
                out.push('\n');
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` for the values we emit: shortest round-trip
/// digits, exponent form from 1e21, and Prometheus' spellings of the special values.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v != 0.0 && (v.abs() >= 1e21 || v.abs() < 1e-4) {
        let s = format!("{v:e}"); // e.g. 1.024e-6
        match s.split_once('e') {
            Some((m, e)) if e.starts_with('-') => format!("{m}e-{:0>2}", &e[1..]),
            Some((m, e)) => format!("{m}e+{e:0>2}"),
            None => s,
        }
    } else {
        format!("{v}")
    }
}

/// Unix ns to a sample timestamp in ms; `None` for 0 (unknown).
pub fn millis(unix_nano: u64) -> Option<i64> {
    (unix_nano > 0).then(|| i64::try_from(unix_nano / 1_000_000).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_families_labels_and_escapes() {
        let mut e = Exposition::default();
        e.family("b_total", Kind::Counter, "B things.\nSecond line");
        e.family("a_bytes", Kind::Gauge, "A.");
        e.family("unused", Kind::Gauge, "never sampled");
        e.sample(
            "b_total",
            "",
            &[("pod", "p"), ("container", "c\"1\\")],
            1.5,
            Some(1234),
        );
        e.sample("a_bytes", "", &[], 1024.0, None);
        assert_eq!(
            e.render(),
            "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes 1024\n\
             # HELP b_total B things.\\nSecond line\n# TYPE b_total counter\n\
             b_total{container=\"c\\\"1\\\\\",pod=\"p\"} 1.5 1234\n"
        );
    }

    #[test]
    fn histogram_buckets_keep_their_order_within_each_series() {
        let mut e = Exposition::default();
        e.family("h_seconds", Kind::Histogram, "H.");
        for pod in ["b", "a"] {
            for (le, n) in [("1e-06", 1.0), ("0.5", 2.0), ("+Inf", 3.0)] {
                e.sample("h_seconds", "_bucket", &[("pod", pod), ("le", le)], n, None);
            }
            e.sample("h_seconds", "_sum", &[("pod", pod)], 0.7, None);
            e.sample("h_seconds", "_count", &[("pod", pod)], 3.0, None);
        }
        let body = e.render();
        let lines: Vec<&str> = body.lines().skip(2).collect();
        assert_eq!(
            lines[..5],
            [
                "h_seconds_bucket{le=\"1e-06\",pod=\"a\"} 1",
                "h_seconds_bucket{le=\"0.5\",pod=\"a\"} 2",
                "h_seconds_bucket{le=\"+Inf\",pod=\"a\"} 3",
                "h_seconds_sum{pod=\"a\"} 0.7",
                "h_seconds_count{pod=\"a\"} 3",
            ]
        );
        assert!(lines[5].contains("pod=\"b\""));
    }

    #[test]
    fn values_match_go_formatting() {
        assert_eq!(format_value(17.534470745), "17.534470745");
        assert_eq!(format_value(1.695207880011e9), "1695207880.011");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(1.024e-6), "1.024e-06");
        assert_eq!(format_value(2e21), "2e+21");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(millis(1_695_207_880_011_999_999), Some(1_695_207_880_011));
        assert_eq!(millis(0), None);
    }
}
