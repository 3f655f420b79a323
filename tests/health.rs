//! The public health port through the binary: `/health` is this process's
//! own readiness (it ignores the media fleet, answers 503 while draining),
//! `/health/fleet` says whether a media server has a free slot, and a
//! PROXY protocol header before a request (what an NLB with PROXY v2 on its
//! target group sends on its health checks) is skipped.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Raw TCP clients, TCP health checks every 200 ms, these backends.
fn config(backends: &[String]) -> String {
    format!(
        "{RAW_TCP}  health_check:\n    kind: tcp\n    interval: 200ms\n    timeout: 200ms\n{}",
        statics(backends)
    )
}

/// `backend.yaml(10, max)` for an address nothing listens on.
fn yaml_of(addr: SocketAddr, max: usize) -> String {
    format!("      - addr: \"{addr}\"\n        weight: 10\n        max_connections: {max}\n")
}

/// Polls `path` on the health port until it answers `status`; returns the
/// last answer.
async fn wait_for(proxy: &Proxy, path: &str, status: u16) -> (u16, String) {
    let health = proxy.health;
    let mut last = (0, String::new());
    wait_until(Duration::from_secs(10), || {
        last = http_get_blocking(health, path).unwrap_or((0, String::new()));
        last.0 == status
    })
    .await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_ignores_the_fleet_and_fleet_follows_free_slots() {
    // Nothing listens there yet: the first check marks it down.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(&config(&[yaml_of(addr, 1)])).await;

    let fleet = wait_for(&proxy, "/health/fleet", 503).await;
    assert_eq!(fleet, (503, "no healthy backend\n".to_string()));
    let health = http_get(proxy.health, "/health").await.unwrap();
    assert_eq!(
        health,
        (200, "ok\n".to_string()),
        "/health must not depend on the media servers"
    );

    // The server comes up: one healthy server with its one slot free.
    let backend = Backend::start_on("a", addr, Mode::TaggedEcho).await;
    let fleet = wait_for(&proxy, "/health/fleet", 200).await;
    assert_eq!(
        fleet,
        (
            200,
            "ok: 1 healthy media server(s) with a free slot\n".to_string()
        )
    );

    // A client takes the slot: healthy but full.
    let (held, tag) = tag_of_new_client(&proxy).await;
    assert_eq!(tag.as_deref(), Some("a"), "{}", proxy.log_text());
    let fleet = http_get(proxy.health, "/health/fleet").await.unwrap();
    assert_eq!(
        fleet,
        (
            503,
            "no free slot: 1 healthy media server(s), all full\n".to_string()
        )
    );
    assert_eq!(http_get(proxy.health, "/health").await.unwrap().0, 200);

    // Freed again.
    drop(held);
    assert_eq!(wait_for(&proxy, "/health/fleet", 200).await.0, 200);
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_says_draining_after_sigterm_while_the_fleet_is_fine() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut proxy = Proxy::start_full(
        "grace_period_seconds: 1\n",
        &format!("  drain_delay: 2s\n{}", config(&[backend.yaml(10, 0)])),
        &[],
    )
    .await;
    assert_eq!(wait_for(&proxy, "/health/fleet", 200).await.0, 200);
    let (live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());

    proxy.signal("TERM");
    let health = wait_for(&proxy, "/health", 503).await;
    assert_eq!(health, (503, "draining\n".to_string()));
    // The fleet is another question: unlimited slots, still free.
    let (status, _) = http_get(proxy.health, "/health/fleet").await.unwrap();
    assert_eq!(status, 200);
    // Still accepting during drain_delay, as /health's 503 moves clients.
    let (_during, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some(), "a client during drain_delay must be served");

    drop(live);
    drop(_during);
    assert_eq!(proxy.exited_within(Duration::from_secs(10)).await, Some(0));
}

/// Sends `parts` with a pause between them and returns the whole answer.
async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for part in parts {
        s.write_all(part).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_health_port_skips_a_proxy_protocol_header() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&config(&[backend.yaml(10, 0)])).await;

    // v2, LOCAL command (a load balancer's own check), no addresses.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    // v2, PROXY over TCP/IPv4 with a TLV, as an NLB sends it.
    let mut tcp4 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    tcp4.extend_from_slice(&[0x21, 0x11, 0x00, 0x13]);
    tcp4.extend_from_slice(&[192, 0, 2, 1, 10, 0, 0, 5, 0xdc, 0x04, 0x1f, 0x40]);
    tcp4.extend_from_slice(&[0x04, 0x00, 0x04, b'v', b'p', b'c', b'e']);
    let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.5 56324 8000\r\n";

    for (what, parts) in [
        ("v2 LOCAL", vec![&local[..], GET_HEALTH]),
        (
            "v2 in one write with the request",
            vec![&[&tcp4[..], GET_HEALTH].concat()[..]],
        ),
        (
            "v2 split inside the header",
            vec![&tcp4[..7], &tcp4[7..15], &tcp4[15..], GET_HEALTH],
        ),
        ("v1", vec![&v1[..], GET_HEALTH]),
        ("v1 split", vec![&v1[..3], &v1[3..], GET_HEALTH]),
        ("no header", vec![GET_HEALTH]),
    ] {
        let answer = exchange(proxy.health, &parts).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok\n"),
            "{what}: {answer:?}"
        );
    }

    // Only a header at the very start, and only on the health port.
    let answer = exchange(proxy.health, &[GET_HEALTH, &local]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let answer = exchange(proxy.admin, &[&local[..], b"GET /status HTTP/1.1\r\n\r\n"]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "admin: {answer:?}");
    // A header too long for the proxy port's reader: closed, not a hang.
    let mut huge = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let answer = exchange(proxy.health, &[&huge[..]]).await;
    assert_eq!(answer, "");

    // Other methods and paths as before.
    let post = exchange(proxy.health, &[b"POST /health/fleet HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"]).await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post:?}");
    assert_eq!(http_get(proxy.health, "/health/x").await.unwrap().0, 404);
    assert_eq!(http_get(proxy.health, "/backends").await.unwrap().0, 404);
}
