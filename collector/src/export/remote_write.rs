//! Prometheus remote-write 1.0: a batch as `prometheus.WriteRequest`s (protobuf, then snappy's
//! block format), under the names `/metrics/resource` and `/metrics` serve, with a `node` label.
//!
//! The spec's rules this follows: labels sorted by name, `__name__` first; each series' samples
//! in time order; the stale marker is the NaN with bits 0x7ff0000000000002; timestamps in ms.

use prost::Message as _;

use super::{
    series::{Batch, Entity, Level, Metric, Series, Value},
    wire::prompb,
};
use crate::{
    http::{
        own::{self, runq_buckets},
        resource,
    },
    rate::runq,
};

/// Prometheus' staleness marker (value/value.go `StaleNaN`).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Headers every remote-write 1.0 request carries.
pub const HEADERS: [(&str, &str); 3] = [
    ("content-encoding", "snappy"),
    ("content-type", "application/x-protobuf"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

/// Series per request: Prometheus' own queue manager sends at most 2,000 samples at once;
/// most series here carry one or two samples per batch.
pub const MAX_SERIES_PER_REQUEST: usize = 2_000;

/// How the run-queue histogram is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Histograms {
    /// `_bucket{le}`, `_sum`, `_count` in seconds, as `/metrics` serves them.
    #[default]
    Classic,
    /// Native histograms, schema 0 in nanoseconds: exactly the kernel's log2 buckets.
    Native,
}

/// One encoded request: the snappy-compressed body and what it carries.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub samples: usize,
}

/// A batch as requests of at most [`MAX_SERIES_PER_REQUEST`] series each, in batch order.
pub fn encode(batch: &Batch, node: &str, histograms: Histograms) -> Vec<Encoded> {
    let mut out = Vec::new();
    let mut request = prompb::WriteRequest::default();
    let mut samples = 0;
    for series in &batch.series {
        let before = request.timeseries.len();
        append(&mut request.timeseries, series, node, histograms);
        samples += request.timeseries[before..]
            .iter()
            .map(|t| t.samples.len() + t.histograms.len())
            .sum::<usize>();
        if request.timeseries.len() >= MAX_SERIES_PER_REQUEST {
            out.push(compress(&std::mem::take(&mut request), samples));
            samples = 0;
        }
    }
    if !request.timeseries.is_empty() {
        out.push(compress(&request, samples));
    }
    out
}

fn compress(request: &prompb::WriteRequest, samples: usize) -> Encoded {
    let raw = request.encode_to_vec();
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input below 2^32 bytes");
    Encoded { body, samples }
}

/// The family name of `metric` at `level` (None: not sent at that level).
pub fn family(level: Level, metric: Metric) -> Option<&'static str> {
    let ebpf = match level {
        Level::Node => own::NODE,
        Level::Pod => own::POD,
        Level::Container => own::CONTAINER,
    };
    Some(match (level, metric) {
        (Level::Node, Metric::Cpu) => resource::NODE_CPU,
        (Level::Node, Metric::WorkingSet) => resource::NODE_MEMORY,
        (Level::Node, Metric::Swap) => resource::NODE_SWAP,
        (Level::Pod, Metric::Cpu) => resource::POD_CPU,
        (Level::Pod, Metric::WorkingSet) => resource::POD_MEMORY,
        (Level::Pod, Metric::Swap) => resource::POD_SWAP,
        (Level::Container, Metric::Cpu) => resource::CONTAINER_CPU,
        (Level::Container, Metric::WorkingSet) => resource::CONTAINER_MEMORY,
        (Level::Container, Metric::Swap) => resource::CONTAINER_SWAP,
        (Level::Container, Metric::StartTime) => resource::CONTAINER_START,
        (_, Metric::StartTime) => return None,
        (_, Metric::EbpfCpu) => ebpf.cpu,
        (_, Metric::EbpfMinorFaults | Metric::EbpfMajorFaults) => ebpf.faults,
        (_, Metric::EbpfOomKills) => ebpf.oom?,
        (_, Metric::RunqWait) => ebpf.runq,
        (_, Metric::EbpfRxBytes | Metric::EbpfTxBytes) => ebpf.network_bytes,
        (_, Metric::EbpfRxPackets | Metric::EbpfTxPackets) => ebpf.network_packets,
    })
}

/// The native histogram's name: the classic one's, in the unit it keeps.
fn native_name(classic: &str) -> String {
    match classic.strip_suffix("_seconds") {
        Some(stem) => format!("{stem}_nanoseconds"),
        None => classic.to_owned(),
    }
}

/// Sorted label pairs of a series of `entity` (without `__name__` and `le`).
fn identity<'a>(entity: &'a Entity, node: &'a str, metric: Metric) -> Vec<(&'static str, &'a str)> {
    let mut labels = Vec::with_capacity(5);
    if entity.level == Level::Container {
        labels.push(("container", entity.container.as_str()));
    }
    if entity.level != Level::Node {
        labels.push(("namespace", entity.namespace.as_str()));
    }
    labels.push(("node", node));
    if entity.level != Level::Node {
        labels.push(("pod", entity.pod.as_str()));
    }
    match metric {
        Metric::EbpfMinorFaults => labels.push(("type", "minor")),
        Metric::EbpfMajorFaults => labels.push(("type", "major")),
        _ => {}
    }
    if let Some(direction) = metric.direction() {
        // After "container", before the rest: keep the order the spec asks for.
        let at = labels.partition_point(|&(name, _)| name < "direction");
        labels.insert(at, ("direction", direction));
    }
    labels
}

fn labels(name: &str, identity: &[(&str, &str)], le: Option<&str>) -> Vec<prompb::Label> {
    let label = |n: &str, v: &str| prompb::Label {
        name: n.to_owned(),
        value: v.to_owned(),
    };
    let mut out = Vec::with_capacity(identity.len() + 2);
    out.push(label("__name__", name));
    let mut le = le;
    // An empty value is no label at all (a pod without a namespace from the runtime).
    for (n, v) in identity.iter().filter(|(_, v)| !v.is_empty()) {
        // `le` sorts between `container` and `namespace`.
        if let Some(bound) = le.filter(|_| *n > "le") {
            out.push(label("le", bound));
            le = None;
        }
        out.push(label(n, v));
    }
    if let Some(bound) = le {
        out.push(label("le", bound));
    }
    out
}

fn sample(value: f64, time_ns: u64) -> prompb::Sample {
    prompb::Sample {
        value,
        timestamp: i64::try_from(time_ns / 1_000_000).unwrap_or(i64::MAX),
    }
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// The time series of one [`Series`]: one, or a classic histogram's buckets, sum and count.
fn append(out: &mut Vec<prompb::TimeSeries>, s: &Series, node: &str, histograms: Histograms) {
    let Some(name) = family(s.entity.level, s.metric) else {
        return;
    };
    let identity = identity(&s.entity, node, s.metric);
    if s.metric != Metric::RunqWait {
        let samples = s
            .points
            .iter()
            .map(|p| match &p.value {
                Value::Number(v) => sample(*v, p.time_ns),
                Value::Stale | Value::Runq(_) => sample(stale(), p.time_ns),
            })
            .collect();
        out.push(prompb::TimeSeries {
            labels: labels(name, &identity, None),
            samples,
            ..Default::default()
        });
        return;
    }
    match histograms {
        Histograms::Classic => classic(out, s, name, &identity),
        Histograms::Native => out.push(prompb::TimeSeries {
            labels: labels(&native_name(name), &identity, None),
            histograms: s
                .points
                .iter()
                .map(|p| native(&p.value, p.time_ns))
                .collect(),
            ..Default::default()
        }),
    }
}

/// `_bucket` series per edge, `_sum` and `_count`, each with every point of the batch.
fn classic(out: &mut Vec<prompb::TimeSeries>, s: &Series, name: &str, identity: &[(&str, &str)]) {
    let bucket = format!("{name}_bucket");
    let first = out.len();
    for (i, p) in s.points.iter().enumerate() {
        let mut values: Vec<(Option<&str>, &str, f64)> = Vec::new();
        match &p.value {
            Value::Runq(h) => {
                let (waits, total_ns) = runq::histogram_totals(h);
                for (le, n) in runq_buckets(h) {
                    values.push((Some(le), "bucket", n as f64));
                }
                values.push((None, "sum", total_ns as f64 / 1e9));
                values.push((None, "count", waits as f64));
            }
            // The same series, each marked stale.
            Value::Stale | Value::Number(_) => {
                for (le, _) in runq_buckets(&[0; crate::probes::RUNQ_VALUES]) {
                    values.push((Some(le), "bucket", stale()));
                }
                values.push((None, "sum", stale()));
                values.push((None, "count", stale()));
            }
        }
        for (j, (le, part, v)) in values.into_iter().enumerate() {
            if i == 0 {
                let series_name = match part {
                    "bucket" => bucket.clone(),
                    other => format!("{name}_{other}"),
                };
                out.push(prompb::TimeSeries {
                    labels: labels(&series_name, identity, le),
                    ..Default::default()
                });
            }
            out[first + j].samples.push(sample(v, p.time_ns));
        }
    }
}

/// A native histogram of schema 0 in ns: kernel bucket k, [2^k, 2^(k+1)) ns, is Prometheus
/// bucket k+1, (2^k, 2^(k+1)] — the same edges (a wait of exactly 2^k ns lands one lower).
fn native(value: &Value, time_ns: u64) -> prompb::Histogram {
    let timestamp = i64::try_from(time_ns / 1_000_000).unwrap_or(i64::MAX);
    let Value::Runq(h) = value else {
        return prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(0)),
            sum: stale(),
            timestamp,
            ..Default::default()
        };
    };
    let (waits, total_ns) = runq::histogram_totals(h);
    let buckets = &h[..collector_common::RUNQ_BUCKETS];
    let first = buckets.iter().position(|&n| n > 0);
    let last = buckets.iter().rposition(|&n| n > 0);
    let (mut spans, mut deltas) = (Vec::new(), Vec::new());
    if let (Some(first), Some(last)) = (first, last) {
        spans.push(prompb::BucketSpan {
            offset: first as i32 + 1,
            length: (last - first + 1) as u32,
        });
        let mut previous = 0i64;
        for &n in &buckets[first..=last] {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            deltas.push(n - previous);
            previous = n;
        }
    }
    prompb::Histogram {
        count: Some(prompb::histogram::Count::CountInt(waits)),
        sum: total_ns as f64,
        schema: 0,
        zero_threshold: 0.0,
        zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(0)),
        positive_spans: spans,
        positive_deltas: deltas,
        // Cumulative since the probes attached.
        reset_hint: prompb::histogram::ResetHint::No as i32,
        timestamp,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{export::series::Point, probes::RUNQ_VALUES};

    fn container() -> Arc<Entity> {
        Arc::new(Entity {
            level: Level::Container,
            namespace: "ns".into(),
            pod: "web".into(),
            pod_uid: "uid".into(),
            container: "app".into(),
            container_id: "c1".into(),
        })
    }

    fn point(ms: u64, value: Value) -> Point {
        Point {
            time_ns: ms * 1_000_000 + 999_999,
            value,
        }
    }

    fn decode(e: &Encoded) -> prompb::WriteRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(&e.body).unwrap();
        prompb::WriteRequest::decode(raw.as_slice()).unwrap()
    }

    fn names(ts: &prompb::TimeSeries) -> Vec<(&str, &str)> {
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    fn histogram() -> Arc<[u64; RUNQ_VALUES]> {
        let mut h = [0u64; RUNQ_VALUES];
        h[10] = 5; // [1024, 2048) ns
        h[12] = 3; // [4096, 8192) ns
        h[collector_common::RUNQ_BUCKETS] = 30_000; // total ns
        // The wait counter read one behind the buckets (the kernel updates them in two maps):
        // the histogram's count is its buckets' 8, or Prometheus refuses it.
        h[collector_common::RUNQ_BUCKETS + 1] = 7;
        Arc::new(h)
    }

    #[test]
    fn samples_are_snappy_protobuf_with_sorted_labels_and_ms_timestamps() {
        let e = container();
        let batch = Batch {
            series: vec![
                Series {
                    entity: e.clone(),
                    metric: Metric::Cpu,
                    start_ns: 0,
                    points: vec![point(1000, Value::Number(0.5)), point(2000, Value::Stale)],
                },
                Series {
                    entity: e,
                    metric: Metric::EbpfMajorFaults,
                    start_ns: 0,
                    points: vec![point(1000, Value::Number(4.0))],
                },
            ],
        };
        let encoded = encode(&batch, "node-1", Histograms::Classic);
        assert_eq!(encoded.len(), 1);
        assert_eq!(encoded[0].samples, 3);
        let request = decode(&encoded[0]);
        let cpu = &request.timeseries[0];
        assert_eq!(
            names(cpu),
            [
                ("__name__", "container_cpu_usage_seconds_total"),
                ("container", "app"),
                ("namespace", "ns"),
                ("node", "node-1"),
                ("pod", "web"),
            ]
        );
        assert_eq!(cpu.samples[0].timestamp, 1000, "ms, truncated");
        assert_eq!(cpu.samples[0].value, 0.5);
        assert_eq!(cpu.samples[1].value.to_bits(), STALE_NAN_BITS);
        let faults = &request.timeseries[1];
        assert_eq!(names(faults)[0].1, "container_ebpf_page_faults_total");
        assert_eq!(names(faults).last(), Some(&("type", "major")));
    }

    #[test]
    fn socket_traffic_is_labelled_by_direction_in_label_order() {
        let series = |metric| Series {
            entity: container(),
            metric,
            start_ns: 0,
            points: vec![point(1000, Value::Number(2_056.0))],
        };
        let batch = Batch {
            series: vec![series(Metric::EbpfTxBytes), series(Metric::EbpfRxPackets)],
        };
        let request = decode(&encode(&batch, "node-1", Histograms::Classic)[0]);
        assert_eq!(
            names(&request.timeseries[0]),
            [
                ("__name__", "container_ebpf_network_bytes_total"),
                ("container", "app"),
                ("direction", "transmit"),
                ("namespace", "ns"),
                ("node", "node-1"),
                ("pod", "web"),
            ]
        );
        assert_eq!(
            names(&request.timeseries[1])[..3],
            [
                ("__name__", "container_ebpf_network_packets_total"),
                ("container", "app"),
                ("direction", "receive"),
            ]
        );
    }

    #[test]
    fn run_queue_histograms_classic_and_native() {
        let series = Series {
            entity: container(),
            metric: Metric::RunqWait,
            start_ns: 0,
            points: vec![
                point(1000, Value::Runq(histogram())),
                point(2000, Value::Stale),
            ],
        };
        let batch = Batch {
            series: vec![series],
        };
        let request = decode(&encode(&batch, "n", Histograms::Classic)[0]);
        // 11 edges + +Inf, _sum, _count; each with both points.
        assert_eq!(request.timeseries.len(), 14);
        let le = |ts: &prompb::TimeSeries| {
            names(ts)
                .iter()
                .find(|(n, _)| *n == "le")
                .map(|(_, v)| v.to_string())
        };
        let first = &request.timeseries[0];
        assert_eq!(names(first)[1], ("container", "app"));
        assert_eq!(names(first)[2].0, "le", "le sorts after container");
        assert_eq!(le(first).as_deref(), Some("1.024e-06"));
        // 2^11 ns edge: the 5 waits of [1024, 2048).
        assert_eq!(request.timeseries[1].samples[0].value, 5.0);
        let inf = &request.timeseries[11];
        assert_eq!(le(inf).as_deref(), Some("+Inf"));
        assert_eq!(inf.samples[0].value, 8.0);
        assert_eq!(request.timeseries[13].samples[0].value, 8.0, "_count");
        assert_eq!(
            names(&request.timeseries[12])[0].1,
            "container_runqueue_wait_seconds_sum"
        );
        assert_eq!(request.timeseries[12].samples[0].value, 30e-6);
        assert!(
            request
                .timeseries
                .iter()
                .all(|t| t.samples.len() == 2 && t.samples[1].value.to_bits() == STALE_NAN_BITS)
        );

        let request = decode(&encode(&batch, "n", Histograms::Native)[0]);
        assert_eq!(request.timeseries.len(), 1);
        let ts = &request.timeseries[0];
        assert_eq!(names(ts)[0].1, "container_runqueue_wait_nanoseconds");
        let h = &ts.histograms[0];
        assert_eq!(h.schema, 0);
        // Kernel bucket 10 is Prometheus bucket 11, (1024, 2048]; then 0 and 3.
        assert_eq!(
            h.positive_spans,
            [prompb::BucketSpan {
                offset: 11,
                length: 3
            }]
        );
        assert_eq!(h.positive_deltas, [5, -5, 3]);
        assert_eq!(h.count, Some(prompb::histogram::Count::CountInt(8)));
        assert_eq!(h.sum, 30_000.0);
        assert_eq!(ts.histograms[1].sum.to_bits(), STALE_NAN_BITS);
    }

    #[test]
    fn big_batches_are_split_in_order() {
        let series: Vec<Series> = (0..MAX_SERIES_PER_REQUEST + 10)
            .map(|i| Series {
                entity: Arc::new(Entity {
                    container: format!("c{i}"),
                    ..(*container()).clone()
                }),
                metric: Metric::WorkingSet,
                start_ns: 0,
                points: vec![point(1000, Value::Number(i as f64))],
            })
            .collect();
        let encoded = encode(&Batch { series }, "n", Histograms::Classic);
        assert_eq!(encoded.len(), 2);
        assert_eq!(encoded[0].samples, MAX_SERIES_PER_REQUEST);
        assert_eq!(encoded[1].samples, 10);
        assert_eq!(
            decode(&encoded[1]).timeseries[0].samples[0].value,
            MAX_SERIES_PER_REQUEST as f64
        );
    }
}
