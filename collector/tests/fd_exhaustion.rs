//! Out of file descriptors, the collector fails its passes instead of publishing what it could
//! not read: no cgroup is announced removed and no record loses its counters, the failures are
//! counted, and sampling resumes when descriptors come back. One test in its own binary: it
//! takes every descriptor of the process.

mod common;

use std::{fs, time::Duration};

use collector::proto::GetSummaryRequest;
use collector::proto::collector_client::CollectorClient;

const CGROUPS: usize = 30;

/// Every free descriptor, taken by opening /dev/null; closed on drop.
struct Exhausted {
    fds: Vec<i32>,
    old_limit: libc::rlimit,
}

impl Exhausted {
    fn take_all_but(keep: usize) -> Self {
        let mut old_limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit/open/close with valid arguments.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old_limit), 0);
            // A low soft limit keeps the filling short whatever the runtime's limit is.
            let highest = fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            let low = libc::rlimit {
                rlim_cur: (highest + 256).min(old_limit.rlim_cur),
                rlim_max: old_limit.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
            let mut fds = Vec::new();
            loop {
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    let err = std::io::Error::last_os_error();
                    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
                    break;
                }
                fds.push(fd);
                assert!(fds.len() < 100_000, "no EMFILE after 100,000 descriptors");
            }
            for _ in 0..keep {
                if let Some(fd) = fds.pop() {
                    libc::close(fd);
                }
            }
            Self { fds, old_limit }
        }
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        // SAFETY: closing descriptors we opened, restoring the limit we read.
        unsafe {
            for fd in self.fds.drain(..) {
                libc::close(fd);
            }
            libc::setrlimit(libc::RLIMIT_NOFILE, &self.old_limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_fails_passes_and_announces_no_removal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("cpu.stat"), "usage_usec 1000\n").unwrap();
    for i in 0..CGROUPS {
        let c = root.join(format!("c{i}"));
        fs::create_dir(&c).unwrap();
        fs::write(c.join("cpu.stat"), format!("usage_usec {}\n", 100 + i)).unwrap();
    }
    let (running, mut stream) = common::start_watching(common::cgroupfs_only(root), 100).await;
    let snapshot = stream.message().await.unwrap().unwrap();
    assert_eq!(snapshot.cgroups.len(), CGROUPS + 1);
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }

    // One descriptor left: the walk lists each directory with it, then opening a cgroup's
    // directory takes it and opening its files fails with EMFILE.
    let exhausted = Exhausted::take_all_but(1);
    let mut during = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(until, stream.message()).await {
        during.push(msg);
    }
    drop(exhausted);

    // Back to normal: passes resume.
    let mut after = Vec::new();
    for _ in 0..5 {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("sampling resumes once descriptors are back")
            .unwrap()
            .unwrap();
        after.push(msg);
    }
    for msg in during.iter().chain(&after) {
        assert!(
            msg.removed_cgroup_ids.is_empty(),
            "a removal was announced: {:?}",
            msg.removed_cgroup_ids
        );
        for c in &msg.cgroups {
            assert!(
                c.cgroupfs_cpu
                    .and_then(|f| f.usage_core_nano_seconds)
                    .is_some(),
                "{} was published without its CPU counter",
                c.path
            );
        }
    }
    let summary = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap()
        .get_summary(GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.cgroups.len(), CGROUPS + 1);
    let stats = summary.collector.unwrap();
    assert!(stats.failed_passes > 0, "failed passes counted: {stats:?}");
    running.stop().await.unwrap();
}
