//! Several proxies, one slot table in Redis: through the real binaries and a
//! real `redis-server` on loopback.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;

fn config(redis: &Redis, backends: &[&Backend], extra: &str) -> String {
    let lines: Vec<String> = backends.iter().map(|b| b.yaml(10, 1)).collect();
    // RAW_TCP: these clients send no RTMP.
    format!(
        "{RAW_TCP}  queue_timeout: 30s\n  health_check:\n    interval: 60s\n    timeout: 10s\n  slots:\n    store: redis\n    url: \"{}\"\n    lease: 3s\n{extra}  backends:\n    static:\n{}",
        redis.url(),
        lines.concat()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_never_share_a_one_stream_server() {
    let redis = Redis::start();
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let p1 = Proxy::start(&config(&redis, &[&a, &b], "")).await;
    let p2 = Proxy::start(&config(&redis, &[&a, &b], "")).await;

    // Two clients on each proxy, one after the other.
    let mut clients = Vec::new();
    for proxy in [&p1, &p2, &p1, &p2] {
        let mut s = proxy.connect().await;
        let tag = read_tag(&mut s, Duration::from_millis(1500)).await;
        clients.push((s, tag));
    }
    let served: Vec<usize> = (0..4).filter(|&i| clients[i].1.is_some()).collect();
    assert_eq!(
        served.len(),
        2,
        "{:?}",
        clients.iter().map(|c| &c.1).collect::<Vec<_>>()
    );
    assert_eq!((a.peak(), b.peak()), (1, 1));

    // One served client leaves: exactly one queued client, from either
    // proxy, takes its place.
    let freed = clients.remove(served[0]).1;
    let (mut waiting, _held): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, t)| t.is_none());
    let got = futures::future::join_all(
        waiting
            .iter_mut()
            .map(|(s, _)| read_tag(s, Duration::from_secs(3))),
    )
    .await;
    let newly: Vec<&Option<String>> = got.iter().filter(|t| t.is_some()).collect();
    assert_eq!(newly.len(), 1, "{got:?}");
    assert_eq!(newly[0], &freed);
    assert_eq!(
        (a.peak(), b.peak()),
        (1, 1),
        "a backend saw two streams at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_proxys_slot_frees_after_its_lease() {
    let redis = Redis::start();
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let p1 = Proxy::start(&config(&redis, &[&a], "")).await;
    let p2 = Proxy::start(&config(&redis, &[&a], "")).await;
    let (_held, tag) = tag_of_new_client(&p1).await;
    assert!(tag.is_some());
    let mut queued = p2.connect().await;
    assert_eq!(
        read_tag(&mut queued, Duration::from_millis(800)).await,
        None
    );

    p1.signal("KILL");
    let killed = Instant::now();
    let tag = read_tag(&mut queued, Duration::from_secs(10)).await;
    let took = killed.elapsed();
    eprintln!("queued client served {took:?} after the kill (lease 3s)");
    assert_eq!(tag.as_deref(), Some("a"), "{}", p2.log_text());
    assert!(
        took <= Duration::from_millis(4500),
        "slot freed only after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_proxies_serve_on_local_counts_and_reconcile_after() {
    let mut redis = Redis::start();
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let p1 = Proxy::start(&config(&redis, &[&a, &b], "  connect_timeout: 1s\n")).await;
    let p2 = Proxy::start(&config(&redis, &[&a, &b], "  connect_timeout: 1s\n")).await;
    let (_s1, t1) = tag_of_new_client(&p1).await;
    assert!(t1.is_some());

    redis.stop();
    // Both still serve new clients, on their own counts.
    let (_s2, t2) = tag_of_new_client(&p2).await;
    assert!(t2.is_some(), "{}", p2.log_text());
    for p in [&p1, &p2] {
        let degraded = wait_until(Duration::from_secs(10), || {
            http_get_blocking(p.admin, "/backends")
                .is_ok_and(|(_, body)| body.contains("redis (degraded)"))
        })
        .await;
        assert!(degraded, "{}", p.log_text());
        assert!(p.log_text().contains("Redis slot store unreachable"));
        assert_eq!(p.metric("rtmp_proxy_slot_store_degraded").await, 1.0);
    }

    let _redis = Redis::start_on(redis.port);
    // Each proxy re-registers its live streams; each then sees the other's.
    for (p, other_tag) in [(&p1, &t2), (&p2, &t1)] {
        let other = if other_tag.as_deref() == Some("a") {
            a.addr
        } else {
            b.addr
        };
        let mut reconciled = false;
        for _ in 0..100 {
            if p.backend_field(other, "remote").await == 1 {
                reconciled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(reconciled, "{:?}\n{}", p.backends().await, p.log_text());
        assert!(p.log_text().contains("Redis slot store reachable again"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_proxy_finds_a_stream_published_through_another() {
    let redis = Redis::start();
    let media = Backend::start("media", Mode::Rtmp).await;
    // RTMP mode (the default): the front reads the publish command.
    // The media server answers only as far as a publish: checked by
    // connect only.
    let rtmp = |redis: &Redis| {
        format!(
            "  slots:\n    store: redis\n    url: \"{}\"\n  health_check:\n    kind: tcp\n\
             \x20 backends:\n    static:\n{}",
            redis.url(),
            media.yaml(10, 1)
        )
    };
    let a = Proxy::start(&rtmp(&redis)).await;
    let b = Proxy::start(&rtmp(&redis)).await;

    let mut publisher = b.connect().await;
    assert!(publish_recorded(&mut publisher).await, "{}", b.log_text());
    let path = "/streams/stream/testkey123";
    let mut found = None;
    for _ in 0..100 {
        if let Ok((200, body)) = http_get(a.admin, path).await {
            found = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = found.unwrap_or_else(|| panic!("proxy A never found B's stream:\n{}", b.log_text()));
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["backend"], media.addr.to_string());
    assert_eq!(view["role"], "publish");
    assert!(!body.contains("testkey123"), "{body}");
    assert_eq!(
        http_get(a.admin, "/streams/stream/otherkey")
            .await
            .unwrap()
            .0,
        404
    );
    // The secret key is not written to Redis: entries are keyed by a hash.
    let keys = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan"])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.contains(":stream:") && !keys.contains("testkey123"),
        "{keys}"
    );

    // Gone from every proxy's directory once it ends.
    drop(publisher);
    let gone = wait_until(Duration::from_secs(10), || {
        http_get_blocking(a.admin, path).is_ok_and(|(s, _)| s == 404)
    })
    .await;
    assert!(gone);
}
