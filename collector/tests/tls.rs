//! TLS and mutual TLS on a real loopback collector, with certificates made by the test: a client
//! without the CA fails, with it succeeds; mTLS rejects a client without a certificate; a
//! rotated certificate is picked up; plaintext on a non-loopback address is refused.

mod common;

use std::{fs, path::Path};

use collector::{
    app::{self, Running, ServeConfig},
    net::{
        client::{self, ClientTls},
        tls::{ServerTlsFiles, TlsReloader},
    },
    proto::{GetSummaryRequest, collector_client::CollectorClient},
};
use common::certs::{ca, leaf, write};
use rcgen::ExtendedKeyUsagePurpose;

async fn start_tls(mount: &Path, tls: ServerTlsFiles) -> Running {
    app::start(ServeConfig {
        tls: Some(tls),
        ..common::cgroupfs_only(mount)
    })
    .await
    .unwrap()
}

async fn summary(addr: &str, tls: &ClientTls) -> anyhow::Result<u64> {
    let channel = client::connect(addr, tls).await?;
    let summary = CollectorClient::new(channel)
        .get_summary(GetSummaryRequest::default())
        .await?
        .into_inner();
    Ok(summary.timestamp_unix_nano)
}

fn tree(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("cg");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("cpu.stat"), "usage_usec 1\n").unwrap();
    root
}

#[tokio::test]
async fn tls_needs_the_right_ca_and_mtls_needs_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let stranger_ca = ca("someone else");
    let (cert, key) = leaf(
        &server_ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let files = ServerTlsFiles {
        cert: write(dir.path(), "server.pem", &cert),
        key: write(dir.path(), "server.key", &key),
        client_ca: None,
        front_proxy_ca: None,
    };
    let server_ca_file = write(dir.path(), "server-ca.pem", &server_ca.pem);
    let stranger_file = write(dir.path(), "stranger-ca.pem", &stranger_ca.pem);

    // Plain TLS.
    let running = start_tls(&root, files.clone()).await;
    let addr = running.addr.to_string();
    let with_ca = ClientTls {
        ca: Some(server_ca_file.clone()),
        ..ClientTls::default()
    };
    assert!(
        summary(&addr, &with_ca).await.unwrap() > 0,
        "the right CA succeeds"
    );
    let wrong_ca = ClientTls {
        ca: Some(stranger_file.clone()),
        ..ClientTls::default()
    };
    let err = summary(&addr, &wrong_ca).await.unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate")
            || format!("{err:#}").contains("transport"),
        "{err:#}"
    );
    assert!(
        summary(&addr, &ClientTls::default()).await.is_err(),
        "plaintext against a TLS server fails"
    );
    // Also checked by name: "localhost" is in the certificate, "other.example" is not.
    let wrong_name = ClientTls {
        ca: Some(server_ca_file.clone()),
        domain: Some("other.example".into()),
        ..ClientTls::default()
    };
    assert!(
        summary(&addr, &wrong_name).await.is_err(),
        "name mismatch accepted"
    );
    running.stop().await.unwrap();

    // Mutual TLS.
    let running = start_tls(
        &root,
        ServerTlsFiles {
            client_ca: Some(write(dir.path(), "client-ca.pem", &client_ca.pem)),
            ..files
        },
    )
    .await;
    let addr = running.addr.to_string();
    assert!(
        summary(&addr, &with_ca).await.is_err(),
        "mTLS accepted a client without a certificate"
    );
    let (ccert, ckey) = leaf(
        &client_ca,
        &["aggregator"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (scert, skey) = leaf(
        &stranger_ca,
        &["intruder"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let with_cert = ClientTls {
        cert: Some(write(dir.path(), "client.pem", &ccert)),
        key: Some(write(dir.path(), "client.key", &ckey)),
        ..with_ca.clone()
    };
    assert!(
        summary(&addr, &with_cert).await.unwrap() > 0,
        "a signed client certificate succeeds"
    );
    let with_stranger_cert = ClientTls {
        cert: Some(write(dir.path(), "intruder.pem", &scert)),
        key: Some(write(dir.path(), "intruder.key", &skey)),
        ..with_ca
    };
    assert!(
        summary(&addr, &with_stranger_cert).await.is_err(),
        "a certificate from another CA was accepted"
    );
    running.stop().await.unwrap();
}

#[test]
fn a_rotated_certificate_is_used_and_a_broken_rotation_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = ca("first");
    let (cert, key) = leaf(
        &first_ca,
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let files = ServerTlsFiles {
        cert: write(dir.path(), "tls.crt", &cert),
        key: write(dir.path(), "tls.key", &key),
        client_ca: None,
        front_proxy_ca: None,
    };
    let reloader = TlsReloader::load(files.clone()).unwrap();
    let before = reloader.config();
    assert!(
        !reloader.reload_if_changed().unwrap(),
        "nothing changed yet"
    );

    // A rotation as a Secret update does it: new files swapped in.
    let second_ca = ca("second");
    let (cert2, key2) = leaf(
        &second_ca,
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let tmp_cert = write(dir.path(), "new.crt", &cert2);
    let tmp_key = write(dir.path(), "new.key", &key2);
    fs::rename(tmp_cert, &files.cert).unwrap();
    fs::rename(tmp_key, &files.key).unwrap();
    assert!(
        reloader.reload_if_changed().unwrap(),
        "rotation not noticed"
    );
    assert!(!std::sync::Arc::ptr_eq(&before, &reloader.config()));

    // A broken file: an error, and the last good configuration stays.
    let good = reloader.config();
    let tmp = write(dir.path(), "broken", "not a certificate");
    fs::rename(tmp, &files.cert).unwrap();
    let err = reloader.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert!(std::sync::Arc::ptr_eq(&good, &reloader.config()));

    // Missing files stop startup with the path in the message.
    let err = TlsReloader::load(ServerTlsFiles {
        cert: dir.path().join("absent.crt"),
        ..files
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("absent.crt"), "{err}");
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let config = ServeConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..common::cgroupfs_only(&root)
    };
    let err = app::start(config.clone()).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("--allow-insecure-listen"),
        "{err:#}"
    );
    let running = app::start(ServeConfig {
        allow_insecure_listen: true,
        ..config
    })
    .await
    .unwrap();
    running.stop().await.unwrap();
}
