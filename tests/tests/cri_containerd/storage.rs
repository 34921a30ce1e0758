//! Root: a pod whose sandbox lives in a network namespace the test builds (a veth pair from the
//! harness's CNI plugin), with a container that fills part of its writable layer and writes a
//! log line, and a kubelet root dir holding an emptyDir volume and etc-hosts as kubelet lays
//! them out. The collector's Summary must agree with the runtime's own answers (CreatedAt,
//! ListContainerStats, ImageFsInfo), with du and statfs of the same paths, with the namespace's
//! own /proc/net/dev after known traffic each way, and count the pod's processes as its
//! containers' cgroup.procs, the sandbox's included.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use collector::{
    app::ServeConfig,
    cri::{
        CriSetting,
        endpoint::Connection,
        proto::{
            ContainerStatusRequest, FilesystemUsage, ImageFsInfoRequest, ListContainerStatsRequest,
            NamespaceMode, PodSandboxStatusRequest,
        },
    },
    hostfs::statfs,
    proto::{FsStats, PodStats},
};
use collector_integration_tests::{
    can_run, cgroup2_mount,
    containerd::{Containerd, Veth},
    cri::{self, PodCgroups, PodSpec, http_get, stop_pod, wait_for},
    skip,
    watch::{start_local, unix_ns},
};

const TEST: &str = "containerd_pod_storage_network_and_times_match_the_runtime_and_the_kernel";
const CONTAINER: &str = "writer";
/// Bytes the host sends to the pod, and the pod back.
const TO_POD: usize = 1_000_000;
const FROM_POD: usize = 500_000;
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pod_storage_network_and_times_match_the_runtime_and_the_kernel() {
    if !can_run(TEST) {
        return;
    }
    let _turn = cri::ONE_CONTAINERD_AT_A_TIME.lock().await;
    let veth = Veth::for_this_process();
    let containerd = match Containerd::start_with(Some(&veth)) {
        Ok(c) => c,
        Err(why) => return skip(TEST, &format!("containerd cannot start: {why}")),
    };
    containerd
        .import_test_image()
        .unwrap_or_else(|e| panic!("importing the test image: {e:#}\n{}", containerd.log_tail()));
    let dirs = tempfile::tempdir().unwrap();
    let kubelet_root = dirs.path().join("kubelet");
    let pod_logs = dirs.path().join("pods");
    fs::create_dir_all(&pod_logs).unwrap();

    let spec = PodSpec::new(
        "storage",
        "collector-test",
        NamespaceMode::Pod,
        Some(&pod_logs),
    );
    // What kubelet would have made for the pod: an emptyDir with data, and etc-hosts.
    let pod_dir = kubelet_root.join("pods").join(&spec.uid);
    let scratch = pod_dir.join("volumes/kubernetes.io~empty-dir/scratch");
    fs::create_dir_all(scratch.join("sub")).unwrap();
    fs::write(scratch.join("a.bin"), vec![1u8; 100 << 10]).unwrap();
    fs::write(scratch.join("sub/b.bin"), vec![2u8; 10 << 10]).unwrap();
    fs::write(pod_dir.join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();

    let (running, mut collector) = start_local(ServeConfig {
        cri: CriSetting::Socket(containerd.socket.clone()),
        cri_refresh: Duration::from_secs(3600),
        cri_stats_interval: Duration::from_secs(1),
        kubelet_root_dir: Some(kubelet_root.clone()),
        pod_logs_dir: Some(pod_logs.clone()),
        volume_stats_interval: Duration::from_secs(1),
        base_period: Duration::from_millis(500),
        cgroupfs_interval: Duration::ZERO,
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeConfig::default()
    })
    .await;
    let http = running.http_addr.expect("HTTP on");

    let _cgroups = PodCgroups(spec.cgroup_parent());
    let mut cri = cri::connect(&containerd.socket).await;
    let sandbox_id = spec
        .run(&mut cri.runtime)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log_tail()));
    // ~100 KB into the writable layer, one line into the log, then nothing moves.
    let writer = [
        "/bin/sh",
        "-c",
        "i=0; while [ $i -lt 2000 ]; do echo line-$i-0123456789abcdef0123456789abcdef; \
         i=$((i+1)); done > /data.txt; echo written-once; exec sleep 3600",
    ];
    let container_id = spec
        .start_container(&mut cri.runtime, &sandbox_id, CONTAINER, &writer)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log_tail()));
    let uid = spec.uid.clone();
    let ours = |p: &PodStats| p.pod_ref.as_ref().is_some_and(|r| r.uid == uid);

    let pod = wait_for(&mut collector, PATIENCE, |p| {
        ours(p)
            && p.network.is_some()
            && p.containers.iter().any(|c| {
                c.name == CONTAINER
                    && c.rootfs.is_some()
                    && c.logs.is_some_and(|l| l.used_bytes.is_some())
            })
    })
    .await
    .unwrap_or_else(|last| panic!("pod {uid} never complete; last: {last:#?}"));

    // startTime: the runtime's CreatedAt, for the pod (its sandbox) and the container.
    let sandbox_created = cri
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .created_at;
    let container_created = cri
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: container_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .created_at;
    assert_eq!(pod.start_time_unix_nano, sandbox_created as u64);
    let writer_stats = pod.containers.iter().find(|c| c.name == CONTAINER).unwrap();
    assert_eq!(writer_stats.start_time_unix_nano, container_created as u64);

    // Processes: the containers' cgroup.procs, the sandbox's included.
    let procs = |id: &str| {
        let path = cgroup2_mount()
            .unwrap()
            .join(spec.cgroup_parent().trim_start_matches('/'))
            .join(id)
            .join("cgroup.procs");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().filter(|l| !l.trim().is_empty()).count() as u64
    };
    let expected = procs(&sandbox_id) + procs(&container_id);
    assert!(expected >= 2, "sandbox and container each run something");
    assert_eq!(
        pod.process_stats.unwrap().process_count,
        Some(expected),
        "kubelet's pod process count"
    );

    rootfs_and_image_fs(&mut cri, &mut collector, &uid, &container_id).await;
    let logs = logs_volumes_and_ephemeral(&mut collector, &spec, &kubelet_root, &scratch).await;
    network(&containerd, &veth, &mut collector, &uid).await;

    // The same pod over HTTP, in kubelet's names.
    let body = http_get(http, "/stats/summary").await;
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let summary: serde_json::Value = serde_json::from_str(json).unwrap();
    let pod = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["uid"] == uid.as_str())
        .unwrap();
    assert_eq!(pod["podRef"]["name"], "storage");
    assert_eq!(pod["network"]["name"], "eth0");
    assert!(pod["network"]["rxBytes"].as_u64().unwrap() >= TO_POD as u64);
    let container = &pod["containers"][0];
    assert!(container["rootfs"]["usedBytes"].is_u64(), "{container}");
    assert_eq!(container["logs"]["inodesUsed"], logs.inodes_used.unwrap());
    assert!(pod["ephemeral-storage"]["usedBytes"].is_u64());
    assert_eq!(pod["volume"][0]["name"], "scratch");
    let veth_listed = summary["node"]["network"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["name"] == veth.host_if.as_str());
    assert!(
        !veth_listed,
        "kubelet leaves veth* out of the node's network"
    );

    stop_pod(&mut cri.runtime, &sandbox_id).await;
    running.stop().await.unwrap();
}

/// The container's rootfs and the node's image filesystem are what the runtime reports, at the
/// same timestamp, with the capacity of its filesystem.
async fn rootfs_and_image_fs(
    cri: &mut Connection,
    collector: &mut collector::proto::collector_client::CollectorClient<tonic::transport::Channel>,
    uid: &str,
    container_id: &str,
) {
    let deadline = Instant::now() + PATIENCE;
    let (layer, image_fs, ours, node) = loop {
        let stats = cri
            .runtime
            .list_container_stats(ListContainerStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stats;
        let layer = stats
            .iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == container_id))
            .and_then(|s| s.writable_layer.clone())
            .expect("the runtime reports the writable layer");
        let image_fs = cri
            .images
            .image_fs_info(ImageFsInfoRequest::default())
            .await
            .unwrap()
            .into_inner()
            .image_filesystems
            .remove(0);
        let summary = collector
            .get_summary(collector::proto::GetSummaryRequest::default())
            .await
            .unwrap()
            .into_inner();
        let node = summary.node_stats.unwrap();
        let ours = summary
            .pods
            .iter()
            .find(|p| p.pod_ref.as_ref().is_some_and(|r| r.uid == uid))
            .and_then(|p| p.containers.iter().find(|c| c.container_id == container_id))
            .and_then(|c| c.rootfs);
        let same_time = |a: Option<&FsStats>, b: &FilesystemUsage| {
            a.is_some_and(|a| a.time_unix_nano == b.timestamp as u64)
        };
        let image_ours = node.runtime.as_ref().and_then(|r| r.image_fs.as_ref());
        if same_time(ours.as_ref(), &layer) && same_time(image_ours, &image_fs) {
            break (layer, image_fs, ours.unwrap(), node);
        }
        assert!(
            Instant::now() < deadline,
            "never the runtime's reading: ours {ours:?} / {image_ours:?}, runtime's {layer:?} / {image_fs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ours.used_bytes, layer.used_bytes.map(|v| v.value));
    assert_eq!(ours.inodes_used, layer.inodes_used.map(|v| v.value));
    let mountpoint = layer.fs_id.as_ref().unwrap().mountpoint.clone();
    let fs = statfs::statfs(Path::new(&mountpoint)).unwrap();
    assert_eq!(
        ours.capacity_bytes,
        Some(fs.capacity_bytes),
        "statfs of {mountpoint}"
    );
    assert_eq!(ours.inodes, Some(fs.inodes));
    let image = node.runtime.unwrap().image_fs.unwrap();
    assert_eq!(image.used_bytes, image_fs.used_bytes.map(|v| v.value));
    assert_eq!(image.inodes_used, image_fs.inodes_used.map(|v| v.value));
    assert_eq!(image.capacity_bytes, Some(fs.capacity_bytes));
    assert!(
        image.used_bytes.unwrap() > 0,
        "the imported image takes room"
    );
    eprintln!(
        "rootfs {:?} B / {:?} inodes and imageFs {:?} B / {:?} inodes, as the runtime said at \
         {}; capacity {} B (statfs of {mountpoint})",
        ours.used_bytes,
        ours.inodes_used,
        image.used_bytes,
        image.inodes_used,
        layer.timestamp,
        fs.capacity_bytes
    );
}

/// du the way kubelet measures: every entry's blocks × 512 and one inode each.
fn du(path: &Path) -> (u64, u64) {
    let meta = fs::symlink_metadata(path).unwrap();
    let mut total = (meta.blocks() * 512, 1);
    if meta.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            let (bytes, inodes) = du(&entry.unwrap().path());
            total.0 += bytes;
            total.1 += inodes;
        }
    }
    total
}

/// The container's log files, the emptyDir and etc-hosts as du sees them, and the pod's
/// ephemeral storage as kubelet sums them. Returns the logs block.
async fn logs_volumes_and_ephemeral(
    collector: &mut collector::proto::collector_client::CollectorClient<tonic::transport::Channel>,
    spec: &PodSpec,
    kubelet_root: &Path,
    scratch: &Path,
) -> FsStats {
    let log_dir: PathBuf = spec.log_directory.join(CONTAINER);
    let deadline = Instant::now() + PATIENCE;
    while !fs::read_to_string(log_dir.join("0.log")).is_ok_and(|l| l.contains("written-once")) {
        assert!(
            Instant::now() < deadline,
            "no log line in {}",
            log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut files = (0, 0);
    for entry in fs::read_dir(&log_dir).unwrap() {
        let (bytes, inodes) = du(&entry.unwrap().path());
        files = (files.0 + bytes, files.1 + inodes);
    }
    let measured_at = unix_ns(SystemTime::now());
    // A round of the walks that started after du's: the same files, unchanged since.
    let pod = wait_for(collector, PATIENCE, |p| {
        p.pod_ref.as_ref().is_some_and(|r| r.uid == spec.uid)
            && p.containers
                .iter()
                .any(|c| c.logs.is_some_and(|l| l.time_unix_nano > measured_at))
            && p.volume
                .iter()
                .any(|v| v.fs.is_some_and(|f| f.time_unix_nano > measured_at))
    })
    .await
    .unwrap_or_else(|last| panic!("no walk after {measured_at}: {last:#?}"));
    let container = pod.containers.iter().find(|c| c.name == CONTAINER).unwrap();
    let logs = container.logs.unwrap();
    assert_eq!(
        (logs.used_bytes, logs.inodes_used),
        (Some(files.0), Some(files.1))
    );
    let node_fs = statfs::statfs(kubelet_root).unwrap();
    assert_eq!(
        logs.capacity_bytes,
        Some(node_fs.capacity_bytes),
        "on the node fs"
    );

    let volume = pod.volume.iter().find(|v| v.name == "scratch").unwrap();
    let fs_stats = volume.fs.unwrap();
    let (bytes, inodes) = du(scratch);
    assert_eq!(
        (fs_stats.used_bytes, fs_stats.inodes_used),
        (Some(bytes), Some(inodes))
    );
    assert!(
        bytes >= 110 << 10 && inodes == 4,
        "{bytes} bytes in {inodes} inodes"
    );
    assert!(volume.local_ephemeral && volume.plugin == "kubernetes.io~empty-dir");

    // kubelet's sum: rootfs, its logs, the emptyDir, the pod's own log files (none here) and
    // etc-hosts.
    let (hosts_bytes, hosts_inodes) =
        du(&kubelet_root.join("pods").join(&spec.uid).join("etc-hosts"));
    let rootfs = container.rootfs.unwrap();
    let eph = pod.ephemeral_storage.unwrap();
    assert_eq!(
        eph.used_bytes,
        Some(rootfs.used_bytes.unwrap() + files.0 + bytes + hosts_bytes)
    );
    assert_eq!(
        eph.inodes_used,
        Some(rootfs.inodes_used.unwrap() + files.1 + inodes + hosts_inodes)
    );
    assert_eq!(eph.capacity_bytes, Some(node_fs.capacity_bytes));
    eprintln!(
        "logs {files:?} (B, inodes) = du; emptyDir {bytes} B / {inodes} inodes = du; \
         ephemeral-storage {:?} B / {:?} inodes = rootfs + logs + emptyDir + etc-hosts",
        eph.used_bytes, eph.inodes_used
    );
    logs
}

/// eth0's counters in `netns`, read by a thread that joined it.
fn eth0_in(netns: &Path) -> [u64; 4] {
    in_netns(netns, || {
        let text = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let line = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .expect("eth0 in the pod's namespace");
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        // rx bytes, rx errors, tx bytes, tx errors
        [f[0], f[2], f[8], f[10]]
    })
}

fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(netns).unwrap();
            // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Known bytes each way over the veth, then the pod's eth0 as we report it must lie between two
/// reads of the namespace's own counters taken around our reading.
async fn network(
    containerd: &Containerd,
    veth: &Veth,
    collector: &mut collector::proto::collector_client::CollectorClient<tonic::transport::Channel>,
    uid: &str,
) {
    let netns = containerd.netns().expect("the CNI plugin ran");
    let start = eth0_in(&netns);
    let pod_ip = veth.pod_ip.clone();
    let listener = in_netns(&netns, || TcpListener::bind((pod_ip.as_str(), 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = vec![0u8; TO_POD];
        s.read_exact(&mut got).unwrap();
        s.write_all(&vec![9u8; FROM_POD]).unwrap();
    });
    let mut client = TcpStream::connect((veth.pod_ip.as_str(), port)).unwrap();
    client.write_all(&vec![7u8; TO_POD]).unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    server.join().unwrap();
    assert_eq!(back.len(), FROM_POD);

    let before = eth0_in(&netns);
    assert!(
        before[0] - start[0] >= TO_POD as u64,
        "{start:?} → {before:?}"
    );
    assert!(
        before[2] - start[2] >= FROM_POD as u64,
        "{start:?} → {before:?}"
    );
    let read_at = unix_ns(SystemTime::now());
    let pod = wait_for(collector, PATIENCE, |p| {
        p.pod_ref.as_ref().is_some_and(|r| r.uid == uid)
            && p.network
                .as_ref()
                .is_some_and(|n| n.time_unix_nano > read_at)
    })
    .await
    .unwrap_or_else(|last| panic!("no network reading after the traffic: {last:#?}"));
    let after = eth0_in(&netns);
    let eth0 = pod
        .network
        .unwrap()
        .default_interface
        .expect("eth0, the default");
    let ours = [
        eth0.rx_bytes.unwrap(),
        eth0.rx_errors.unwrap(),
        eth0.tx_bytes.unwrap(),
        eth0.tx_errors.unwrap(),
    ];
    for i in 0..4 {
        assert!(
            before[i] <= ours[i] && ours[i] <= after[i],
            "counter {i}: ours {ours:?}, the namespace's {before:?} then {after:?}"
        );
    }
    eprintln!(
        "eth0 (rx B, rx errors, tx B, tx errors): ours {ours:?}, the namespace's {before:?} \
         before and {after:?} after; {TO_POD} B sent to the pod, {FROM_POD} B back"
    );
}
