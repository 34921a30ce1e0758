//! Real time-series engines on loopback for the export tests: Prometheus 2.53 and
//! VictoriaMetrics 1.112 from Debian trixie, fetched (never installed) by `cargo xtask test`
//! into `COLLECTOR_ENGINE_DIR` (default `~/.cache/collector-debian/trixie`). Each runs in a
//! temporary directory and is stopped on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use super::{eventually, try_http_get};

/// The engine's binary, or `None` (after saying why) when it was not fetched; with
/// `COLLECTOR_REQUIRE_BPF=1` (CI) a missing engine fails the test instead.
pub fn binary(package: &str, program: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("COLLECTOR_ENGINE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("collector-debian/trixie"))
        })?;
    let path = dir.join(package).join("usr/bin").join(program);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} missing: `cargo xtask test` fetches Debian trixie's {package} there",
        path.display()
    );
    assert!(
        std::env::var("COLLECTOR_REQUIRE_BPF").as_deref() != Ok("1"),
        "{why} (COLLECTOR_REQUIRE_BPF=1: a missing engine fails)"
    );
    eprintln!("SKIP: {why}");
    None
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running engine; stopped (SIGTERM, so it flushes, then SIGKILL) on drop.
pub struct Engine {
    child: Option<Child>,
    pub addr: SocketAddr,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Engine {
    fn spawn(binary: &Path, args: Vec<String>, addr: SocketAddr, log: PathBuf) -> Self {
        let mut e = Self {
            child: None,
            addr,
            binary: binary.to_owned(),
            args,
            log,
        };
        e.start();
        e
    }

    /// Starts it again (same port, same data) after [`Engine::stop`].
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(&self.binary)
                .args(&self.args)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display())),
        );
    }

    /// Stops it gracefully (it answers what it received and flushes its data).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill only sends a signal to our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `path` to answer 200.
    pub async fn ready(&self, path: &str) {
        let addr = self.addr;
        eventually(
            Duration::from_secs(60),
            "the engine to be ready",
            || async move { matches!(try_http_get(addr, path).await, Ok((200, _))).then_some(()) },
        )
        .await;
    }

    pub async fn get_json(&self, path_and_query: &str) -> Value {
        let (status, body) = get_unchunked(self.addr, path_and_query).await;
        assert_eq!(status, 200, "GET {path_and_query}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prometheus with its remote-write receiver (and native histograms), no scrape targets.
pub async fn prometheus(dir: &Path) -> Option<Engine> {
    let binary = binary("prometheus", "prometheus")?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global: {}\n").unwrap();
    let addr = free_port();
    let e = Engine::spawn(
        &binary,
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address={addr}"),
            "--web.enable-remote-write-receiver".into(),
            "--enable-feature=native-histograms".into(),
        ],
        addr,
        dir.join("prometheus.log"),
    );
    e.ready("/-/ready").await;
    Some(e)
}

/// VictoriaMetrics single-node (remote-write at /api/v1/write, OTLP at
/// /opentelemetry/v1/metrics).
pub async fn victoria_metrics(dir: &Path) -> Option<Engine> {
    let binary = binary("victoria-metrics", "victoria-metrics")?;
    let addr = free_port();
    let e = Engine::spawn(
        &binary,
        vec![
            format!("-storageDataPath={}", dir.join("vm").display()),
            format!("-httpListenAddr={addr}"),
            "-retentionPeriod=1d".into(),
        ],
        addr,
        dir.join("victoria-metrics.log"),
    );
    e.ready("/health").await;
    Some(e)
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every raw sample VictoriaMetrics holds for `selector`, per series in time order, duplicates
/// kept: (labels, values, timestamps ms).
pub async fn vm_export(vm: &Engine, selector: &str) -> Vec<(Value, Vec<f64>, Vec<i64>)> {
    let (status, _) = try_http_get(vm.addr, "/internal/force_flush")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = get_unchunked(
        vm.addr,
        &format!("/api/v1/export?match[]={}", encode(selector)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A series may come in several lines (one per stored block): merged here, in time order.
    let mut merged: std::collections::BTreeMap<String, (Value, Vec<(i64, f64)>)> =
        Default::default();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let values = v["values"].as_array().unwrap();
        let timestamps = v["timestamps"].as_array().unwrap();
        let entry = merged
            .entry(v["metric"].to_string())
            .or_insert_with(|| (v["metric"].clone(), Vec::new()));
        for (t, x) in timestamps.iter().zip(values) {
            entry
                .1
                .push((t.as_i64().unwrap(), x.as_f64().unwrap_or(f64::NAN)));
        }
    }
    merged
        .into_values()
        .map(|(metric, mut points)| {
            points.sort_by_key(|p| p.0);
            let (timestamps, values) = points.into_iter().unzip();
            (metric, values, timestamps)
        })
        .collect()
}

/// A GET in HTTP/1.0, so a long or streamed answer (VictoriaMetrics' export, a range of
/// histograms) comes unchunked.
async fn get_unchunked(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A Prometheus instant query's result vector.
pub async fn prom_query(p: &Engine, query: &str) -> Vec<Value> {
    let v = p
        .get_json(&format!("/api/v1/query?query={}", encode(query)))
        .await;
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// rotel's `rotel-agent` (PyPI, installed by `cargo xtask test` into `COLLECTOR_ROTEL`'s
/// place, default `~/.cache/collector-pypi/rotel-0.0.1a15/rotel/rotel-agent`), or `None`
/// after saying why; a failure under `COLLECTOR_REQUIRE_BPF=1`.
pub fn rotel() -> Option<PathBuf> {
    let path = std::env::var_os("COLLECTOR_ROTEL")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("collector-pypi/rotel-0.0.1a15/rotel/rotel-agent"))
        })?;
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} missing: `cargo xtask test` installs rotel from PyPI there",
        path.display()
    );
    assert!(
        std::env::var("COLLECTOR_REQUIRE_BPF").as_deref() != Ok("1"),
        "{why} (COLLECTOR_REQUIRE_BPF=1: a missing receiver fails)"
    );
    eprintln!("SKIP: {why}");
    None
}

/// rotel receiving OTLP over gRPC and HTTP and printing every point it decoded to its log.
pub async fn rotel_agent(dir: &Path) -> Option<(Engine, SocketAddr)> {
    let binary = rotel()?;
    let (grpc, http) = (free_port(), free_port());
    let e = Engine::spawn(
        &binary,
        vec![
            "start".into(),
            format!("--otlp-grpc-endpoint={grpc}"),
            format!("--otlp-http-endpoint={http}"),
            "--exporter=blackhole".into(),
            "--debug-log=metrics".into(),
            "--debug-log-verbosity=detailed".into(),
        ],
        grpc,
        dir.join("rotel.log"),
    );
    eventually(Duration::from_secs(30), "rotel to listen", || async move {
        tokio::net::TcpStream::connect(grpc).await.ok().map(|_| ())
    })
    .await;
    Some((e, http))
}
