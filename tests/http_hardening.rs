//! The health and admin ports against hostile clients, through the binary:
//! slow headers under a low open-file limit, floods of malformed requests,
//! and a SIGTERM drain, during which both keep answering.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn statics(backend: &Backend) -> String {
    format!("{RAW_TCP}  backends:\n    static:\n{}", backend.yaml(10, 0))
}

/// Slow clients holding partial headers on the health port cannot take the
/// descriptors a stream needs, and are closed at the header deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_on_the_health_port_do_not_starve_the_proxy() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start_with_env(&statics(&backend), &[(NOFILE, "256".into())]).await;

    // More than the process has descriptors for.
    let mut slow = Vec::new();
    for _ in 0..400 {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(proxy.health)).await
        else {
            continue;
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nX-Slow: 1\r\n")
            .await
            .is_ok()
        {
            slow.push(s);
        }
    }
    assert!(
        slow.len() > 300,
        "only {} slow clients connected",
        slow.len()
    );

    let (_stream, tag) = tag_of_new_client(&proxy).await;
    assert_eq!(
        tag.as_deref(),
        Some("b"),
        "a client of the proxy port was not served"
    );

    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(30)).await,
            "a client that never finished its headers was kept"
        );
    }
    let log = proxy.log_text();
    let floods = log.matches("Too many open files").count();
    assert!(floods <= 2, "{floods} lines about descriptors:\n{log}");
    assert!(proxy.metric("rtmp_proxy_http_connections_closed_total{listener=\"proxy.health_listen\",reason=\"header_timeout\"}").await >= 1.0);
}

/// Malformed requests leave a short log that never holds their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_leave_a_bounded_log_without_their_bytes() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&statics(&backend)).await;
    let before = proxy.log_text().len();
    let filler = "x".repeat(4000);
    for n in 0..2000 {
        let addr = if n % 2 == 0 {
            proxy.health
        } else {
            proxy.admin
        };
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = if n % 3 == 0 {
            "GET /streams/live/SECRETKEY123 HTTP/1.1\r\nBad Header\r\n\r\n".to_string()
        } else {
            format!("GET /streams/live/SECRETKEY123?{filler} HTTP/1.1\r\nHost: a\r\n\0\r\n\r\n")
        };
        let _ = s.write_all(req.as_bytes()).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    // The server still answers.
    let (status, _) = http_get(proxy.health, "/health").await.expect("health");
    assert_eq!(status, 200);
    let log = proxy.log_text();
    let grown = log.len().saturating_sub(before);
    assert!(grown < 50_000, "the log grew by {grown} bytes");
    assert!(!log.contains("SECRETKEY123"), "a key in the log:\n{log}");
    assert!(!log.contains("xxxxxxxx"), "request bytes in the log");
}

/// After SIGTERM the proxy port closes, but health and admin answer until
/// the last stream ends and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_admin_answer_through_a_drain() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut proxy = Proxy::start_full(
        "grace_period_seconds: 1\n",
        &format!(
            "  drain_delay: 500ms\n  drain_timeout: 1h\n{}",
            statics(&backend)
        ),
        &[],
    )
    .await;
    let (live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());

    proxy.signal("TERM");
    let listen = proxy.listen;
    let closed = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(listen).is_err()
    })
    .await;
    assert!(closed, "the proxy port stayed open");

    for _ in 0..3 {
        let health = http_get(proxy.health, "/health")
            .await
            .expect("health during the drain");
        assert_eq!(health, (503, "draining\n".to_string()));
        for path in ["/metrics", "/streams", "/status"] {
            let (status, _) = http_get(proxy.admin, path)
                .await
                .expect("admin during the drain");
            assert_eq!(status, 200, "{path}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(proxy.exited_within(Duration::ZERO).await, None);

    drop(live);
    assert_eq!(
        proxy.exited_within(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        proxy.log_text()
    );
}

/// After a graceful upgrade only the new process answers on the shared HTTP
/// sockets, while the old one still carries a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_upgrade_only_the_new_process_answers_http() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut old = Proxy::start(&statics(&backend)).await;
    let (live, tag) = tag_of_new_client(&old).await;
    assert!(tag.is_some());
    let _new = old.upgrade().await;
    assert_eq!(old.exited_within(Duration::ZERO).await, None);
    for _ in 0..20 {
        let (status, body) = http_get(old.admin, "/status").await.expect("admin");
        assert_eq!(status, 200);
        assert!(
            body.contains("\"phase\": \"serving\""),
            "the old process answered: {body}"
        );
        let (status, _) = http_get(old.health, "/health").await.expect("health");
        assert_eq!(status, 200);
    }
    drop(live);
}
