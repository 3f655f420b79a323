//! Hung media servers through the real binary: one that is stopped (it
//! still completes TCP connects, the kernel answers them) fails the RTMP
//! health check, and a live stream whose server stops taking its bytes is
//! closed as `backend_stalled`, the server marked down, so the encoder's
//! reconnect goes to a healthy one.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::media::{Nginx, Publisher};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const C0C1_LEN: usize = 1537;

fn statics(lines: &[String]) -> String {
    format!("  backends:\n    static:\n{}", lines.concat())
}

async fn healthy(proxy: &Proxy, addr: SocketAddr) -> bool {
    proxy.backend_field(addr, "healthy").await == true
}

/// Waits (bounded) until the proxy shows `addr` with health `want`.
async fn wait_health(proxy: &Proxy, addr: SocketAddr, want: bool) -> bool {
    for _ in 0..300 {
        if healthy(proxy, addr).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A stopped nginx accepts TCP connects but never answers: the default
/// check (`rtmp`, as `protocol` is) marks it down before any publisher
/// tries it, and the next publisher goes straight to the running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_media_server_fails_the_rtmp_health_check() {
    let hung = Nginx::start(false).await;
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&format!(
        "  balance: first\n  health_check:\n    interval: 500ms\n    timeout: 500ms\n{}",
        statics(&[hung.yaml(1), server.yaml(1)])
    ))
    .await;
    assert!(
        wait_health(&proxy, hung.rtmp, true).await,
        "a running nginx fails the RTMP check:\n{}",
        proxy.log_text()
    );

    hung.pause();
    let down = wait_health(&proxy, hung.rtmp, false).await;
    assert!(
        down,
        "a stopped nginx still counts as healthy:\n{}",
        proxy.log_text()
    );
    assert!(
        proxy.log_text().contains("RTMP handshake"),
        "marked down for another reason:\n{}",
        proxy.log_text()
    );

    let mut publisher = Publisher::start(
        &format!("rtmp://{}/stream/after-stop", proxy.listen),
        proxy.dir.path(),
        "after-stop",
    );
    assert!(
        server
            .wait_publishing("after-stop", Duration::from_secs(20))
            .await,
        "the publisher did not reach the running server:\n{}\nffmpeg: {}",
        proxy.log_text(),
        publisher.log()
    );
    assert!(publisher.running(), "{}", publisher.log());
    hung.resume();
    assert!(
        wait_health(&proxy, hung.rtmp, true).await,
        "a resumed nginx does not come back:\n{}",
        proxy.log_text()
    );
}

/// An RTMP server that answers every handshake; `reads: false` then never
/// reads again (a hung server whose buffers fill), with a small receive
/// buffer so that they fill soon. Counts the connections it accepted.
async fn rtmp_server(reads: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut c0c1 = vec![0u8; C0C1_LEN];
                if s.read_exact(&mut c0c1).await.is_err() {
                    return;
                }
                let answer = rtmp_proxy::rtmp::handshake::answer(&c0c1);
                if s.write_all(&answer).await.is_err() || !read_until(&mut s, b"publish").await {
                    return;
                }
                let started = on_status("status", "NetStream.Publish.Start");
                if s.write_all(&started).await.is_err() {
                    return;
                }
                let mut sink = vec![0u8; 64 * 1024];
                loop {
                    if !reads {
                        // Held open, never read: up to an hour.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    match s.read(&mut sink).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Publishes through the proxy as a client.
async fn rtmp_client(proxy: &Proxy) -> TcpStream {
    let mut s = proxy.connect().await;
    assert!(publish_recorded(&mut s).await, "{}", proxy.log_text());
    s
}

/// A live stream whose server stops taking bytes is closed well before
/// `idle_timeout` with reason `backend_stalled`, and the server is marked
/// down: the reconnect goes to the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_server_stops_reading_is_closed_as_stalled() {
    let (stuck, _) = rtmp_server(false).await;
    let (good, good_accepted) = rtmp_server(true).await;
    let proxy = Proxy::start(&format!(
        "  balance: first\n  stall_timeout: 2s\n  idle_timeout: 1h\n\
         \x20 health_check:\n    interval: 1h\n{}",
        statics(&[
            format!("      - addr: \"{stuck}\"\n        max_connections: 1\n"),
            format!("      - addr: \"{good}\"\n        max_connections: 1\n"),
        ])
    ))
    .await;
    assert!(wait_health(&proxy, stuck, true).await && wait_health(&proxy, good, true).await);
    let before = good_accepted.load(Ordering::SeqCst);

    // A publisher with always more to send, on the first (stuck) server.
    let mut client = rtmp_client(&proxy).await;
    let chunk = vec![9u8; 64 * 1024];
    let pushed = tokio::time::timeout(Duration::from_secs(120), async {
        // Bounded: the buffers on the way hold far less than 1 GiB.
        for _ in 0..16_384 {
            if client.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        pushed,
        Ok(true),
        "the stream on the stalled server was not closed:\n{}",
        proxy.log_text()
    );
    assert_eq!(
        good_accepted.load(Ordering::SeqCst),
        before,
        "the stream went to the good server"
    );

    assert_eq!(
        proxy
            .metric("rtmp_proxy_connections_closed_total{reason=\"backend_stalled\"}")
            .await,
        1.0
    );
    assert!(
        wait_until(Duration::from_secs(10), || proxy
            .log_text()
            .contains(r#""reason":"backend_stalled""#))
        .await,
        "no end record with the reason:\n{}",
        proxy.log_text()
    );
    assert!(
        !healthy(&proxy, stuck).await,
        "the stalled server is still up"
    );

    // The encoder's reconnect: to the good server, though `first` prefers
    // the stuck one.
    let _again = rtmp_client(&proxy).await;
    assert_eq!(good_accepted.load(Ordering::SeqCst), before + 1);
}

/// Out of descriptors, the proxy's own health checks and connects fail:
/// that says nothing about the backends, which must stay up (before, every
/// backend went down, `/health` answered 503 and clients queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_out_of_descriptors_marks_no_backend_down() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start_with_env(
        &format!(
            "{RAW_TCP}  max_queue: 1000\n  queue_timeout: 60s\n\
             \x20 health_check:\n    interval: 200ms\n    timeout: 1s\n\
             \x20 backends:\n    static:\n{}",
            backend.yaml(10, 1)
        ),
        &[(NOFILE, "128".into())],
    )
    .await;
    let mut holder = proxy.connect().await;
    assert!(read_tag(&mut holder, Duration::from_secs(10))
        .await
        .is_some());

    // Queued clients hold one descriptor each: 200 use up 128, and the
    // rest wait in the listen backlog.
    let mut queued = Vec::new();
    for _ in 0..200 {
        queued.push(proxy.connect().await);
    }
    let starved = wait_until(Duration::from_secs(30), || {
        proxy.log_text().contains("backends keep their state")
    })
    .await;
    assert!(
        starved,
        "no health check ran out of descriptors: the test proves nothing\n{}",
        proxy.log_text()
    );
    // The served client leaves: the first queued one gets its slot, and
    // its connect may fail here for want of a descriptor too.
    drop(holder);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(queued);

    let down = format!("backend {} is down", backend.addr);
    assert!(
        !proxy.log_text().contains(&down),
        "a local shortage marked the backend down:\n{}",
        proxy.log_text()
    );
    assert_eq!(proxy.backend_field(backend.addr, "healthy").await, true);
}
