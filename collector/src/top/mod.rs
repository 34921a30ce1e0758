//! `collector top nodes | pods | cgroups`: tables like `kubectl top`, against a collector (fed by
//! its Watch stream) or an aggregator (its cluster API), refreshing or once.

pub mod cgroups;
pub mod workloads;

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::net::client::{self, ClientTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum View {
    Nodes,
    Pods,
    #[default]
    Cgroups,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortBy {
    #[default]
    Cpu,
    Memory,
    Name,
}

#[derive(Debug, Clone)]
pub struct TopConfig {
    pub endpoint: String,
    pub tls: ClientTls,
    pub view: View,
    pub interval: Duration,
    pub rows: usize,
    pub sort: SortBy,
    pub namespace: Option<String>,
    /// cgroups view: only cgroups under this path.
    pub cgroup_prefix: Option<String>,
    /// Print one table (once rates are present) and exit.
    pub once: bool,
}

/// Which kind of server answers at the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Collector,
    Aggregator,
}

pub const AGGREGATOR_SERVICE: &str = "collector.v1.Aggregator";

/// Asks the standard health service whether the aggregator service is served there.
pub async fn server_kind(channel: Channel) -> anyhow::Result<ServerKind> {
    let mut health = HealthClient::new(channel);
    let answer = health
        .check(HealthCheckRequest {
            service: AGGREGATOR_SERVICE.into(),
        })
        .await;
    Ok(match answer {
        Ok(r) if r.get_ref().status() == ServingStatus::Serving => ServerKind::Aggregator,
        Ok(_) => ServerKind::Collector,
        Err(status) if status.code() == tonic::Code::NotFound => ServerKind::Collector,
        Err(status) => return Err(status).context("grpc.health.v1 check"),
    })
}

pub async fn run(config: TopConfig) -> anyhow::Result<()> {
    let channel = client::connect(&config.endpoint, &config.tls).await?;
    let kind = server_kind(channel.clone()).await?;
    match (kind, config.view) {
        (ServerKind::Collector, View::Cgroups) => cgroups::run(channel, &config).await,
        (ServerKind::Collector, _) => workloads::run_collector(channel, &config).await,
        (ServerKind::Aggregator, View::Cgroups) => anyhow::bail!(
            "{} is an aggregator, which keeps nodes and pods only; point `top cgroups` at a collector",
            config.endpoint
        ),
        (ServerKind::Aggregator, _) => workloads::run_aggregator(channel, &config).await,
    }
}

fn interval_ms(config: &TopConfig) -> u32 {
    u32::try_from(config.interval.as_millis()).unwrap_or(u32::MAX)
}

/// Prints a table (redrawing the screen unless `--once`); true when the caller should stop.
fn show(config: &TopConfig, table: &str) -> bool {
    if config.once {
        print!("{table}");
        true
    } else {
        // Clear the screen and home the cursor, then redraw.
        print!("\x1b[2J\x1b[H{table}");
        false
    }
}
