//! The foundation through the real binary: byte integrity, weights, exact
//! caps, health checks, retries, config errors, health endpoint, bind
//! failures.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The backends section, with [`RAW_TCP`]: these clients send no RTMP.
fn statics(lines: &[String]) -> String {
    format!("{RAW_TCP}  backends:\n    static:\n{}", lines.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_megabytes_each_way_arrive_intact() {
    const N: usize = 20 * 1024 * 1024;
    let backend = Backend::start("b", Mode::Exchange { n: N, seed: 7 }).await;
    let proxy = Proxy::start(&statics(&[backend.yaml(10, 1)])).await;

    let (mut rd, mut wr) = proxy.connect().await.into_split();
    let send = async {
        write_random(&mut wr, N, 42).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let (_, got) = tokio::join!(send, hash_to_end(&mut rd));
    assert_eq!(
        got.unwrap(),
        expected_hash(N, 7),
        "backend-to-client bytes differ"
    );
    // Health checks connect too; they show up as empty streams.
    let want = expected_hash(N, 42);
    let ok = wait_until(Duration::from_secs(10), || {
        backend.stats.hashes.lock().unwrap().contains(&want)
    })
    .await;
    assert!(
        ok,
        "client-to-backend bytes differ: {:?}",
        backend.stats.hashes.lock().unwrap()
    );
    let line = "\"bytes_up\":20971520,\"bytes_down\":20971520";
    let logged = wait_until(Duration::from_secs(5), || proxy.log_text().contains(line)).await;
    assert!(logged, "{}", proxy.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_split_connections() {
    let light = Backend::start("light", Mode::TaggedEcho).await;
    let heavy = Backend::start("heavy", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&statics(&[light.yaml(10, 0), heavy.yaml(30, 0)])).await;
    let mut light_hits = 0;
    for _ in 0..400 {
        let (s, tag) = tag_of_new_client(&proxy).await;
        drop(s);
        match tag.as_deref() {
            Some("light") => light_hits += 1,
            Some("heavy") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Smooth weighted round robin is exact: 1 in 4.
    assert!(
        (90..=110).contains(&light_hits),
        "light got {light_hits} of 400"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_fleet_closes_new_clients_and_frees_slots_on_disconnect() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    // One health check at start, then none: backends count only clients.
    let proxy = Proxy::start(&format!(
        "  max_queue: 0\n  health_check:\n    interval: 60s\n{}",
        statics(&[a.yaml(10, 1), b.yaml(10, 1)])
    ))
    .await;

    let (first, t1) = tag_of_new_client(&proxy).await;
    let (_second, t2) = tag_of_new_client(&proxy).await;
    assert!(t1.is_some() && t2.is_some() && t1 != t2, "{t1:?} {t2:?}");
    let before = a.accepted() + b.accepted();

    let mut third = proxy.connect().await;
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "third client was not closed"
    );
    assert_eq!(
        a.accepted() + b.accepted(),
        before,
        "the third client reached a backend"
    );
    assert_eq!(
        proxy
            .metric("rtmp_proxy_connections_rejected_total{reason=\"queue_full\"}")
            .await,
        1.0
    );

    drop(first);
    // The slot is freed once the backend has seen the close.
    let freed = t1.clone().unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        if freed == "a" {
            a.current() == 0
        } else {
            b.current() == 0
        }
    })
    .await;
    assert!(gone);
    let served = wait_until_served(&proxy).await;
    assert_eq!(served, t1, "the new client should take the freed slot");
}

async fn wait_until_served(proxy: &Proxy) -> Option<String> {
    for _ in 0..50 {
        let (_s, tag) = tag_of_new_client(proxy).await;
        if tag.is_some() {
            return tag;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_backend_is_marked_down_and_comes_back() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&format!(
        "  health_check:\n    interval: 500ms\n{}",
        statics(&[a.yaml(10, 0), b.yaml(10, 0)])
    ))
    .await;
    let a_addr = a.addr;
    a.stop();
    // Within two intervals (plus the check's own timeout and a margin).
    let mut down = false;
    for _ in 0..40 {
        if proxy.backend_field(a_addr, "healthy").await == false {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "backend a still healthy:\n{}", proxy.log_text());
    for _ in 0..10 {
        let (_s, tag) = tag_of_new_client(&proxy).await;
        assert_eq!(tag.as_deref(), Some("b"));
    }

    let a = Backend::start_on("a", a_addr, Mode::TaggedEcho).await;
    let mut up = false;
    for _ in 0..40 {
        if proxy.backend_field(a_addr, "healthy").await == true {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "backend a did not come back");
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(tag_of_new_client(&proxy).await.1);
    }
    assert!(tags.contains(&Some("a".into())), "{tags:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusing_backend_is_retried_elsewhere() {
    let live = Backend::start("live", Mode::TaggedEcho).await;
    let dead = format!(
        "      - addr: \"127.0.0.1:{}\"\n        max_connections: 0\n",
        free_port()
    );
    // A long check interval: only the failed connects mark the dead one down.
    let proxy = Proxy::start(&format!(
        "  health_check:\n    interval: 60s\n{}",
        statics(&[dead, live.yaml(10, 0)])
    ))
    .await;
    for _ in 0..20 {
        let (_s, tag) = tag_of_new_client(&proxy).await;
        assert_eq!(tag.as_deref(), Some("live"));
    }
    assert_eq!(
        proxy.metric("rtmp_proxy_connections_served_total").await,
        20.0
    );
}

#[test]
fn bad_config_files_are_rejected_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "proxy:\n  listen: \"0.0.0.0:1935\"\n  colour: blue\n",
            "3: proxy.colour: unknown field",
        ),
        (
            "proxy:\n  backends:\n    static:\n      - addr: \"foo:bar\"\n",
            "4: proxy.backends.static[0].addr: invalid socket address \"foo:bar\"",
        ),
        (
            "proxy:\n  connect_timeout: soon\n",
            "2: proxy.connect_timeout: invalid duration \"soon\"",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let (code, out) = run_binary(&["-c", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{yaml}");
        assert!(out.contains(want), "expected {want:?} in {out:?}");
        assert!(!out.contains("panicked"), "{out}");
    }
    let (code, out) = run_binary(&["-c", "/nonexistent/rtmp-proxy.yaml"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("/nonexistent/rtmp-proxy.yaml: cannot read config file"),
        "{out}"
    );
}

#[test]
fn the_shipped_config_passes_the_test_flag() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/rtmp-proxy.yaml");
    let (code, out) = run_binary(&["-t", "-c", conf]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_backends_endpoints() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&format!(
        "  health_check:\n    interval: 300ms\n{}",
        statics(&[a.yaml(7, 3)])
    ))
    .await;
    let (status, body) = http_get(proxy.health, "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = http_get(proxy.health, "/backends").await.unwrap();
    assert_eq!(
        status, 404,
        "the public port must not expose the backend list"
    );

    let list = proxy.backends().await;
    assert_eq!(list.len(), 1);
    let b = &list[0];
    assert_eq!(b["addr"], a.addr.to_string());
    assert_eq!(b["weight"], 7);
    assert_eq!(b["max_connections"], 3);
    assert_eq!(b["healthy"], true);
    assert_eq!(b["active"], 0);
    let (_held, tag) = tag_of_new_client(&proxy).await;
    assert_eq!(tag.as_deref(), Some("a"));
    assert_eq!(proxy.backend_field(a.addr, "active").await, 1);

    a.stop();
    // `/health` is the proxy's own readiness; the fleet's is apart.
    let mut unhealthy = false;
    for _ in 0..60 {
        let (status, body) = http_get(proxy.health, "/health/fleet").await.unwrap();
        if status == 503 {
            assert_eq!(body, "no healthy backend\n");
            unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unhealthy, "/health/fleet stayed 200 with no live backend");
    assert_eq!(http_get(proxy.health, "/health").await.unwrap().0, 200);
}

#[test]
fn an_unbindable_listen_address_exits_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        format!(
            "proxy:\n  listen: \"{addr}\"\n  health_listen: \"127.0.0.1:{}\"\n  admin_listen: \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let (code, out) = run_binary(&["-c", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        out.contains(&format!("proxy.listen: cannot listen on {addr}")),
        "{out}"
    );
    assert!(out.contains("in use"), "{out}");
}

/// `idle_timeout` closes a connection with no byte either way, and only
/// such a one: a client that talks more often than the timeout keeps its
/// connection through several timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_timeout_closes_silent_connections_only() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&format!(
        "  idle_timeout: 2s\n{}",
        statics(&[backend.yaml(10, 2)])
    ))
    .await;
    let mut talker = proxy.connect().await;
    let mut silent = proxy.connect().await;
    for s in [&mut talker, &mut silent] {
        assert_eq!(
            read_tag(s, Duration::from_secs(10)).await.as_deref(),
            Some("b")
        );
    }
    // A byte there and back every 200 ms for 6 s: three idle timeouts.
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        talker.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), talker.read_exact(&mut echo)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "round {i}: the talking client lost its connection: {read:?}\n{}",
            proxy.log_text()
        );
    }
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the silent client was not closed: {closed:?}"
    );
    let log = proxy.log_text();
    assert_eq!(
        log.matches("\"reason\":\"idle_timeout\"").count(),
        1,
        "{log}"
    );
}
