//! OTLP metrics: a batch as `ExportMetricsServiceRequest`s, one `ResourceMetrics` per node, pod
//! and container with the Kubernetes resource attributes of the semantic conventions
//! (`k8s.node.name`, `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`,
//! `k8s.container.name`, `container.id`), as the OpenTelemetry Collector's kubeletstats
//! receiver sends them.
//!
//! Counters are cumulative sums with their start time (container start, node boot, or when the
//! probes attached); the working set is a gauge; the run-queue histogram is an exponential
//! histogram of scale 0 in ns, which has exactly the kernel's log2 buckets. A series that ended
//! gets a point flagged "no recorded value", which receivers turn into a stale marker.

use prost::Message as _;

use super::{
    series::{Batch, Entity, Level, Metric, Series, Value},
    wire::{otlp, otlp_common, otlp_resource, otlp_service},
};
use crate::rate::runq;

/// Resources per request: keeps a request of 1,000 containers well under the 4 MiB that gRPC
/// receivers accept by default.
pub const MAX_RESOURCES_PER_REQUEST: usize = 500;

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK`.
const NO_RECORDED_VALUE: u32 = 1;

/// The instrumentation scope every metric is sent under.
const SCOPE: &str = "collector";

/// One request, protobuf-encoded, and the data points it carries.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub points: usize,
}

/// Name, unit and description of `metric` at `level` (None: not sent at that level).
pub fn describe(level: Level, metric: Metric) -> Option<(String, &'static str, &'static str)> {
    let prefix = match level {
        Level::Node => "k8s.node",
        Level::Pod => "k8s.pod",
        Level::Container => "container",
    };
    let (suffix, unit, description) = match metric {
        Metric::Cpu => (
            "cpu.time",
            "s",
            "Total CPU time consumed (cgroupfs usage_usec).",
        ),
        Metric::WorkingSet => (
            "memory.working_set",
            "By",
            "Memory usage minus inactive file pages (kubelet's working set).",
        ),
        // Carried as the start time of every cumulative sum; swap has no semantic convention.
        Metric::StartTime | Metric::Swap => return None,
        Metric::EbpfCpu => (
            "ebpf.cpu.time",
            "s",
            "On-CPU time seen by the sched_switch probe since it attached.",
        ),
        Metric::EbpfMinorFaults | Metric::EbpfMajorFaults => (
            "ebpf.page_faults",
            "{fault}",
            "Page faults seen by the sched_switch probe since it attached, by type.",
        ),
        Metric::EbpfOomKills if level == Level::Node => return None,
        Metric::EbpfOomKills => (
            "ebpf.oom_kills",
            "{kill}",
            "OOM kills of the cgroup's own tasks seen by the mark_victim probe.",
        ),
        Metric::EbpfRxBytes | Metric::EbpfTxBytes => (
            "ebpf.network.io",
            "By",
            "L3 bytes (IP header included) of the cgroup's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        Metric::EbpfRxPackets | Metric::EbpfTxPackets => (
            "ebpf.network.packet.count",
            "{packet}",
            "Packets of the cgroup's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        Metric::RunqWait => (
            "runqueue.wait",
            "ns",
            "Time runnable tasks waited for a CPU, since the probes attached.",
        ),
    };
    Some((format!("{prefix}.{suffix}"), unit, description))
}

fn string(key: &str, value: &str) -> otlp_common::KeyValue {
    otlp_common::KeyValue {
        key: key.to_owned(),
        value: Some(otlp_common::AnyValue {
            value: Some(otlp_common::any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// The resource attributes of `entity` on `node`.
pub fn resource(entity: &Entity, node: &str) -> otlp_resource::Resource {
    let mut attributes = vec![string("k8s.node.name", node)];
    if entity.level != Level::Node {
        if !entity.namespace.is_empty() {
            attributes.push(string("k8s.namespace.name", &entity.namespace));
        }
        attributes.push(string("k8s.pod.name", &entity.pod));
        attributes.push(string("k8s.pod.uid", &entity.pod_uid));
    }
    if entity.level == Level::Container {
        attributes.push(string("k8s.container.name", &entity.container));
        attributes.push(string("container.id", &entity.container_id));
    }
    otlp_resource::Resource {
        attributes,
        ..Default::default()
    }
}

/// A batch as requests of at most [`MAX_RESOURCES_PER_REQUEST`] resources each.
pub fn encode(batch: &Batch, node: &str) -> Vec<Encoded> {
    let mut out = Vec::new();
    let mut request = otlp_service::ExportMetricsServiceRequest::default();
    let mut points = 0;
    let mut series = batch.series.iter().peekable();
    while let Some(first) = series.next() {
        // The batch keeps an entity's series together.
        let mut metrics: Vec<otlp::Metric> = Vec::new();
        points += add(&mut metrics, first);
        while let Some(next) = series.next_if(|s| std::sync::Arc::ptr_eq(&s.entity, &first.entity))
        {
            points += add(&mut metrics, next);
        }
        if metrics.is_empty() {
            continue;
        }
        request.resource_metrics.push(otlp::ResourceMetrics {
            resource: Some(resource(&first.entity, node)),
            scope_metrics: vec![otlp::ScopeMetrics {
                scope: Some(otlp_common::InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        });
        if request.resource_metrics.len() >= MAX_RESOURCES_PER_REQUEST {
            out.push(finish(std::mem::take(&mut request), points));
            points = 0;
        }
    }
    if !request.resource_metrics.is_empty() {
        out.push(finish(request, points));
    }
    out
}

fn finish(request: otlp_service::ExportMetricsServiceRequest, points: usize) -> Encoded {
    Encoded {
        body: request.encode_to_vec(),
        points,
    }
}

/// Adds the points of `s` to its metric (created on first use); returns how many.
fn add(metrics: &mut Vec<otlp::Metric>, s: &Series) -> usize {
    let Some((name, unit, description)) = describe(s.entity.level, s.metric) else {
        return 0;
    };
    let i = match metrics.iter().position(|m| m.name == name) {
        Some(i) => i,
        None => {
            metrics.push(otlp::Metric {
                data: Some(empty_data(s.metric)),
                name,
                unit: unit.to_owned(),
                description: description.to_owned(),
                ..Default::default()
            });
            metrics.len() - 1
        }
    };
    let attributes = match (s.metric, s.metric.direction()) {
        (Metric::EbpfMinorFaults, _) => vec![string("type", "minor")],
        (Metric::EbpfMajorFaults, _) => vec![string("type", "major")],
        // The semantic conventions' attribute for k8s.pod.network.io and its kin.
        (_, Some(direction)) => vec![string("network.io.direction", direction)],
        _ => Vec::new(),
    };
    let start = s.start_ns;
    match metrics[i].data.as_mut() {
        Some(otlp::metric::Data::Sum(otlp::Sum { data_points, .. }))
        | Some(otlp::metric::Data::Gauge(otlp::Gauge { data_points, .. })) => {
            let counter = s.metric.is_counter();
            data_points.extend(s.points.iter().map(|p| {
                let (value, flags) = match p.value {
                    Value::Number(v) => (Some(otlp::number_data_point::Value::AsDouble(v)), 0),
                    Value::Stale | Value::Runq(_) => (None, NO_RECORDED_VALUE),
                };
                otlp::NumberDataPoint {
                    attributes: attributes.clone(),
                    start_time_unix_nano: if counter { start } else { 0 },
                    time_unix_nano: p.time_ns,
                    flags,
                    value,
                    ..Default::default()
                }
            }));
        }
        Some(otlp::metric::Data::ExponentialHistogram(h)) => {
            h.data_points.extend(
                s.points
                    .iter()
                    .map(|p| exponential(&p.value, start, p.time_ns)),
            );
        }
        _ => return 0,
    }
    s.points.len()
}

fn empty_data(metric: Metric) -> otlp::metric::Data {
    let cumulative = otlp::AggregationTemporality::Cumulative as i32;
    if metric == Metric::RunqWait {
        otlp::metric::Data::ExponentialHistogram(otlp::ExponentialHistogram {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
        })
    } else if metric.is_counter() {
        otlp::metric::Data::Sum(otlp::Sum {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        })
    } else {
        otlp::metric::Data::Gauge(otlp::Gauge {
            data_points: Vec::new(),
        })
    }
}

/// Scale 0: bucket index k covers (2^k, 2^(k+1)], the kernel's bucket k is [2^k, 2^(k+1)) ns —
/// the same edges, no re-bucketing (a wait of exactly 2^k ns is counted one bucket lower).
fn exponential(value: &Value, start_ns: u64, time_ns: u64) -> otlp::ExponentialHistogramDataPoint {
    let Value::Runq(h) = value else {
        return otlp::ExponentialHistogramDataPoint {
            start_time_unix_nano: start_ns,
            time_unix_nano: time_ns,
            flags: NO_RECORDED_VALUE,
            ..Default::default()
        };
    };
    let (waits, total_ns) = runq::histogram_totals(h);
    let buckets = &h[..collector_common::RUNQ_BUCKETS];
    let positive = match (
        buckets.iter().position(|&n| n > 0),
        buckets.iter().rposition(|&n| n > 0),
    ) {
        (Some(first), Some(last)) => Some(otlp::exponential_histogram_data_point::Buckets {
            offset: first as i32,
            bucket_counts: buckets[first..=last].to_vec(),
        }),
        _ => None,
    };
    otlp::ExponentialHistogramDataPoint {
        start_time_unix_nano: start_ns,
        time_unix_nano: time_ns,
        count: waits,
        sum: Some(total_ns as f64),
        scale: 0,
        zero_count: 0,
        positive,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{export::series::Point, probes::RUNQ_VALUES};

    fn attributes(r: &otlp::ResourceMetrics) -> Vec<(String, String)> {
        r.resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| {
                let Some(otlp_common::any_value::Value::StringValue(v)) =
                    kv.value.as_ref().and_then(|v| v.value.clone())
                else {
                    panic!("string attribute")
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    #[test]
    fn resources_sums_gauges_and_the_exponential_histogram() {
        let e = Arc::new(Entity {
            level: Level::Container,
            namespace: "ns".into(),
            pod: "web".into(),
            pod_uid: "uid".into(),
            container: "app".into(),
            container_id: "c1".into(),
        });
        let mut h = [0u64; RUNQ_VALUES];
        h[10] = 5;
        h[12] = 3;
        h[collector_common::RUNQ_BUCKETS] = 30_000;
        h[collector_common::RUNQ_BUCKETS + 1] = 8;
        let point = |ns, value| Point { time_ns: ns, value };
        let batch = Batch {
            series: vec![
                Series {
                    entity: e.clone(),
                    metric: Metric::Cpu,
                    start_ns: 5,
                    points: vec![point(100, Value::Number(1.5)), point(200, Value::Stale)],
                },
                Series {
                    entity: e.clone(),
                    metric: Metric::WorkingSet,
                    start_ns: 5,
                    points: vec![point(100, Value::Number(4096.0))],
                },
                Series {
                    entity: e.clone(),
                    metric: Metric::EbpfMinorFaults,
                    start_ns: 7,
                    points: vec![point(100, Value::Number(3.0))],
                },
                Series {
                    entity: e.clone(),
                    metric: Metric::EbpfMajorFaults,
                    start_ns: 7,
                    points: vec![point(100, Value::Number(1.0))],
                },
                Series {
                    entity: e,
                    metric: Metric::RunqWait,
                    start_ns: 7,
                    points: vec![point(100, Value::Runq(Arc::new(h)))],
                },
            ],
        };
        let encoded = encode(&batch, "node-1");
        assert_eq!(encoded.len(), 1);
        assert_eq!(encoded[0].points, 6);
        let request =
            otlp_service::ExportMetricsServiceRequest::decode(encoded[0].body.as_slice()).unwrap();
        let [r] = request.resource_metrics.as_slice() else {
            panic!("one resource")
        };
        assert_eq!(
            attributes(r),
            [
                ("k8s.node.name", "node-1"),
                ("k8s.namespace.name", "ns"),
                ("k8s.pod.name", "web"),
                ("k8s.pod.uid", "uid"),
                ("k8s.container.name", "app"),
                ("container.id", "c1"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let metrics = &r.scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "container.cpu.time",
                "container.memory.working_set",
                "container.ebpf.page_faults",
                "container.runqueue.wait"
            ]
        );
        let Some(otlp::metric::Data::Sum(cpu)) = &metrics[0].data else {
            panic!("a sum")
        };
        assert!(cpu.is_monotonic);
        assert_eq!(
            cpu.aggregation_temporality,
            otlp::AggregationTemporality::Cumulative as i32
        );
        assert_eq!(cpu.data_points[0].start_time_unix_nano, 5);
        assert_eq!(cpu.data_points[0].time_unix_nano, 100);
        assert_eq!(
            cpu.data_points[0].value,
            Some(otlp::number_data_point::Value::AsDouble(1.5))
        );
        assert_eq!(cpu.data_points[1].flags, NO_RECORDED_VALUE);
        assert_eq!(cpu.data_points[1].value, None);
        assert!(matches!(
            metrics[1].data,
            Some(otlp::metric::Data::Gauge(_))
        ));
        let Some(otlp::metric::Data::Sum(faults)) = &metrics[2].data else {
            panic!("a sum")
        };
        assert_eq!(faults.data_points.len(), 2, "minor and major in one metric");
        assert_eq!(faults.data_points[1].attributes[0].key, "type");
        let Some(otlp::metric::Data::ExponentialHistogram(runq)) = &metrics[3].data else {
            panic!("an exponential histogram")
        };
        let p = &runq.data_points[0];
        assert_eq!((p.scale, p.count, p.sum), (0, 8, Some(30_000.0)));
        let buckets = p.positive.as_ref().unwrap();
        assert_eq!(buckets.offset, 10, "index k covers (2^k, 2^(k+1)]");
        assert_eq!(buckets.bucket_counts, [5, 0, 3]);
        assert_eq!(metrics[3].unit, "ns");
    }
}
