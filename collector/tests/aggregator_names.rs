//! Node names belong to the collector that reported them: two collectors claiming one name do
//! not overwrite each other, and the name moves only when its holder goes stale. (Its own
//! binary: the fixture clocks of the three-collector test must not share the machine with it.)

mod common;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use collector::{aggregate::cluster::Freshness, proto::aggregator_client::AggregatorClient};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_claiming_one_node_name_do_not_overwrite_each_other() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let trees: Vec<PathBuf> = dirs.iter().map(|d| node_tree(d.path())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = spawn_clock(trees.clone(), stop.clone());
    // Staleness well above the 200 ms pace: a loaded machine must not pass the name around.
    let freshness = Freshness {
        stale_after: Duration::from_secs(4),
        forget_after: Duration::from_secs(60),
    };
    let first = start_collector(&trees[0], "twin", "127.0.0.1:0".parse().unwrap()).await;
    let aggregator = start_aggregator_with(&[first.addr], freshness).await;
    let client = AggregatorClient::connect(format!("http://{}", aggregator.grpc_addr))
        .await
        .unwrap();
    until_node(
        &client,
        "twin",
        Duration::from_secs(10),
        "twin listed",
        |_| true,
    )
    .await;
    // A second collector under the same name joins the targets (the aggregator's static
    // list cannot change, so it is a second aggregator target set: restart with both).
    aggregator.stop().await.unwrap();
    let second = start_collector(&trees[1], "twin", "127.0.0.1:0".parse().unwrap()).await;
    let aggregator = start_aggregator_with(&[first.addr, second.addr], freshness).await;
    let client = AggregatorClient::connect(format!("http://{}", aggregator.grpc_addr))
        .await
        .unwrap();
    let holder = eventually(Duration::from_secs(10), "one twin, one refusal", || {
        let client = client.clone();
        async move {
            let list = node_list(client).await;
            let refused = list
                .collectors
                .iter()
                .any(|c| c.last_error.contains("already reported"));
            (list.nodes.len() == 1 && refused).then(|| list.nodes[0].collector_address.clone())
        }
    })
    .await;
    // For as long as the holder is fresh, the name stays with it: no flapping between the two.
    for _ in 0..20 {
        let list = node_list(client.clone()).await;
        assert_eq!(list.nodes.len(), 1, "{:?}", list.nodes);
        assert_eq!(list.nodes[0].collector_address, holder);
        let other = list
            .collectors
            .iter()
            .find(|c| c.address != holder)
            .unwrap();
        assert!(other.last_error.contains("twin"), "{other:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The holder goes away: once it is stale the other may take the name over.
    let (gone, stays) = if holder == first.addr.to_string() {
        (first, second)
    } else {
        (second, first)
    };
    let stays_at = stays.addr.to_string();
    gone.stop().await.unwrap();
    eventually(Duration::from_secs(20), "the name taken over", || {
        let client = client.clone();
        let stays_at = stays_at.clone();
        async move {
            let list = node_list(client).await;
            list.nodes
                .iter()
                .any(|n| n.name == "twin" && n.collector_address == stays_at && !n.stale)
                .then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    clock.join().unwrap();
    aggregator.stop().await.unwrap();
    stays.stop().await.unwrap();
}
