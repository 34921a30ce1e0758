//! cgroup path -> Kubernetes identity: never panics; what it returns is well formed, and
//! repeated or trailing slashes do not change the answer.
#![no_main]

use collector::k8s::identity::{Identity, identify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let Some(identity) = identify(path) else {
        return;
    };
    let (Identity::Pod(pod) | Identity::PodInternal(pod) | Identity::Container(pod, _)) =
        &identity;
    assert!(!pod.uid.is_empty() && !pod.uid.contains('_'));
    if let Identity::Container(_, container) = &identity {
        assert!((12..=64).contains(&container.id.len()));
        assert!(container.id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    assert_eq!(identify(&path.replace('/', "//")), Some(identity.clone()));
    assert_eq!(identify(&format!("{path}/")), Some(identity));
});
