//! Backends from AWS Cloud Map, through the real binary against moto's
//! server on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::moto::{CloudMapService, Moto};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REFRESH_MS: u64 = 500;

/// A proxy discovering `svc` every 500 ms, no static backends; raw TCP
/// clients.
async fn proxy_for(moto: &Moto, svc: &CloudMapService, extra: &str, fallback_port: u16) -> Proxy {
    Proxy::start_with_env(
        &format!(
            "{RAW_TCP}  health_check:\n    interval: 60s\n  backends:\n    cloud_map:\n      namespace: {}\n      service: {}\n      \
             region: us-east-1\n      endpoint: {}\n      port: {fallback_port}\n      refresh: {REFRESH_MS}ms\n      \
             max_connections: 0\n{extra}",
            svc.namespace,
            svc.service,
            moto.endpoint()
        ),
        &moto.child_env(),
    )
    .await
}

fn ip_port(addr: SocketAddr) -> [(&'static str, String); 2] {
    [
        ("AWS_INSTANCE_IPV4", addr.ip().to_string()),
        ("AWS_INSTANCE_PORT", addr.port().to_string()),
    ]
}

async fn register(svc: &CloudMapService, id: &str, attrs: &[(&'static str, String)]) {
    let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    svc.register(id, &attrs).await;
}

/// Tags of `n` short sequential clients.
async fn tags(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (_s, tag) = tag_of_new_client(proxy).await;
        out.push(tag.unwrap_or_else(|| "<closed>".into()));
    }
    out
}

/// Waits (bounded by `limit`) until `/backends` satisfies `cond`.
async fn wait_backends(
    proxy: &Proxy,
    limit: Duration,
    cond: impl Fn(&[serde_json::Value]) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if cond(&proxy.backends().await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn present(list: &[serde_json::Value], addr: SocketAddr) -> bool {
    list.iter()
        .any(|b| b["addr"] == addr.to_string() && b["present"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_come_and_go_while_live_streams_run_on() {
    let moto = Moto::start();
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let c = Backend::start("c", Mode::TaggedEcho).await;
    register(&svc, "task-a", &ip_port(a.addr)).await;
    // No AWS_INSTANCE_PORT: the configured fallback port applies.
    register(&svc, "task-b", &[("AWS_INSTANCE_IPV4", "127.0.0.1".into())]).await;
    let proxy = proxy_for(&moto, &svc, "", b.addr.port()).await;

    // 1. Both instances receive traffic.
    let ok = wait_backends(&proxy, Duration::from_secs(5), |l| {
        present(l, a.addr) && present(l, b.addr)
    })
    .await;
    assert!(ok, "{:?}\n{}", proxy.backends().await, proxy.log_text());
    let seen = tags(&proxy, 6).await;
    assert!(
        seen.contains(&"a".into()) && seen.contains(&"b".into()),
        "{seen:?}"
    );
    let list = proxy.backends().await;
    let sources: Vec<&str> = list.iter().filter_map(|b| b["source"].as_str()).collect();
    assert!(
        sources.contains(&"task-a") && sources.contains(&"task-b"),
        "{list:?}"
    );
    assert!(
        list.iter()
            .all(|b| b["refreshed_at"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{list:?}"
    );

    // 2. A third instance serves new clients within refresh + 1 s.
    register(&svc, "task-c", &ip_port(c.addr)).await;
    let limit = Duration::from_millis(REFRESH_MS) + Duration::from_secs(1);
    assert!(
        wait_backends(&proxy, limit, |l| present(l, c.addr)).await,
        "task-c not discovered in time"
    );
    assert!(tags(&proxy, 6).await.contains(&"c".into()));

    // A deregistered instance with a live connection: the connection keeps
    // flowing, new clients avoid the instance.
    let mut live = loop {
        let (s, tag) = tag_of_new_client(&proxy).await;
        if tag.as_deref() == Some("a") {
            break s;
        }
    };
    svc.deregister("task-a").await;
    assert!(
        wait_backends(&proxy, limit, |l| !present(l, a.addr)).await,
        "task-a still present"
    );
    let entry = proxy
        .backends()
        .await
        .into_iter()
        .find(|b| b["addr"] == a.addr.to_string());
    assert_eq!(
        entry.map(|e| e["active"].clone()),
        Some(1.into()),
        "the live stream keeps its slot"
    );
    assert!(!tags(&proxy, 10).await.contains(&"a".into()));
    live.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    live.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"still here");
    drop(live);
    assert!(
        wait_backends(&proxy, Duration::from_secs(5), |l| !l
            .iter()
            .any(|b| b["addr"] == a.addr.to_string()))
        .await,
        "a removed backend is forgotten once its last connection ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unhealthy_instances_are_dropped_with_a_healthy_filter() {
    let moto = Moto::start();
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    register(&svc, "task-a", &ip_port(a.addr)).await;
    register(&svc, "task-b", &ip_port(b.addr)).await;
    let proxy = proxy_for(&moto, &svc, "      health_status: HEALTHY\n", 1935).await;
    assert!(
        wait_backends(&proxy, Duration::from_secs(5), |l| present(l, a.addr)
            && present(l, b.addr))
        .await
    );

    svc.set_health("task-b", false).await;
    let limit = Duration::from_millis(REFRESH_MS) + Duration::from_secs(1);
    assert!(
        wait_backends(&proxy, limit, |l| !present(l, b.addr)).await,
        "unhealthy task-b still used"
    );
    assert!(tags(&proxy, 8).await.iter().all(|t| t == "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_api_keeps_the_fleet_and_recovers() {
    let mut moto = Moto::start();
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    register(&svc, "task-a", &ip_port(a.addr)).await;
    let proxy = proxy_for(&moto, &svc, "", 1935).await;
    assert!(wait_backends(&proxy, Duration::from_secs(5), |l| present(l, a.addr)).await);

    moto.stop();
    // Several refreshes without an API: same backends, same traffic.
    tokio::time::sleep(Duration::from_millis(REFRESH_MS * 5)).await;
    let list = proxy.backends().await;
    assert!(present(&list, a.addr), "{list:?}");
    let stale = list[0]["refreshed_at"].clone();
    assert!(tags(&proxy, 4).await.iter().all(|t| t == "a"));
    let log = proxy.log_text();
    assert_eq!(
        log.matches("Cloud Map discovery failing").count(),
        1,
        "logged once:\n{log}"
    );

    // The API comes back (empty, as moto restarts blank): refreshes resume.
    let moto = Moto::start_on(moto.port()).expect("restart moto");
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    register(&svc, "task-a", &ip_port(a.addr)).await;
    register(&svc, "task-b", &ip_port(b.addr)).await;
    // Backoff after five failures may hold the next call back for a while.
    assert!(
        wait_backends(&proxy, Duration::from_secs(15), |l| present(l, b.addr)).await,
        "refreshes did not resume:\n{}",
        proxy.log_text()
    );
    assert_ne!(proxy.backends().await[0]["refreshed_at"], stale);
    assert!(proxy.log_text().contains("Cloud Map discovery recovered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_and_fifty_instances_are_all_used() {
    let moto = Moto::start();
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    for i in 0..150u16 {
        let attrs = [
            ("AWS_INSTANCE_IPV4", "127.0.0.1".to_string()),
            ("AWS_INSTANCE_PORT", (20000 + i).to_string()),
        ];
        register(&svc, &format!("task-{i}"), &attrs).await;
    }
    // One bad instance is skipped with a warning naming it.
    register(
        &svc,
        "task-bad",
        &[("AWS_INSTANCE_IPV4", "300.1.2.3".into())],
    )
    .await;
    let proxy = proxy_for(&moto, &svc, "", 1935).await;
    assert!(
        wait_backends(&proxy, Duration::from_secs(10), |l| l.len() == 150).await,
        "{} backends",
        proxy.backends().await.len()
    );
    let log = proxy.log_text();
    assert!(
        log.contains("instance \"task-bad\": attribute AWS_INSTANCE_IPV4"),
        "{log}"
    );
}
