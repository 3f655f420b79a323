//! RTMP awareness through the real binary, against real nginx-rtmp media
//! servers and ffmpeg publishers: slots only after a valid handshake,
//! streams spread and listed with redacted keys, PROXY protocol headers,
//! and backends that fail after accepting TCP skipped.
//!
//! Every process is the test's child and killed on drop; every wait is
//! bounded. No assertion is about how long something took, except that a
//! publisher is served while a silent client still sits in the handshake
//! gate (whose timeout is long enough for that on a loaded machine).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::media::{ffprobe, probe, Nginx, NodeMediaServer, Publisher};
use common::*;
use rtmp_proxy::rtmp::amf0::Value as Amf0;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const C0C1_LEN: usize = 1537;

/// A C0+C1 as a client sends it: version byte, then 1536 bytes.
fn c0c1(version: u8, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; C0C1_LEN];
    Prng::new(seed).fill(&mut b);
    b[0] = version;
    b
}

fn rejected(reason: &str) -> String {
    format!("rtmp_proxy_connections_rejected_total{{reason=\"{reason}\"}}")
}

/// Acceptance 1 and 2 (one setup: two media servers and two encoders).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishers_spread_over_servers_and_are_listed_with_redacted_keys() {
    let servers = [Nginx::start(false).await, Nginx::start(false).await];
    let proxy = Proxy::start(&statics(&[servers[0].yaml(1), servers[1].yaml(1)])).await;
    let keys = ["alphaKey0000secret", "bravoKey0000secret"];
    let mut publishers: Vec<Publisher> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Publisher::start(&url(proxy.listen, k), proxy.dir.path(), &i.to_string()))
        .collect();

    // Each stream publishes on exactly one server, and not the same one.
    let mut home = Vec::new();
    for key in keys {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let found = loop {
            let on: Vec<usize> = (0..2).filter(|&i| servers[i].publishing(key)).collect();
            if !on.is_empty() || std::time::Instant::now() > deadline {
                break on;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            found.len(),
            1,
            "{key} on {found:?}; proxy log:\n{}\nffmpeg: {}",
            proxy.log_text(),
            publishers.iter().map(|p| p.log()).collect::<String>()
        );
        home.push(found[0]);
    }
    assert_ne!(home[0], home[1], "both streams on one server");

    // A player on the media server itself sees the video.
    for (key, &i) in keys.iter().zip(&home) {
        let kinds = probe(&url(servers[i].rtmp, key), Duration::from_secs(20)).await;
        assert!(kinds.contains(&"video".to_string()), "{key}: {kinds:?}");
    }

    // The directory: both streams, keys redacted, live byte counts.
    let list = streams(&proxy).await;
    assert_eq!(list.len(), 2, "{list:#?}");
    for (key, &i) in keys.iter().zip(&home) {
        let shown = format!("{}…", &key[..4]);
        let e = list
            .iter()
            .find(|e| e["key"] == shown.as_str())
            .unwrap_or_else(|| panic!("{shown} not in {list:#?}"));
        assert_eq!(e["app"], "stream");
        assert_eq!(e["role"], "publish");
        assert_eq!(e["status"], "identified");
        assert_eq!(e["backend"], servers[i].rtmp.to_string());
        assert!(e["bytes_up"].as_u64().unwrap() > C0C1_LEN as u64, "{e}");
        assert!(e["bytes_down"].as_u64().unwrap() > 0, "{e}");
        assert!(e["started_at"].as_str().unwrap().ends_with('Z'), "{e}");

        let (status, body) = http_get(proxy.admin, &format!("/streams/stream/{key}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let found: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(found["backend"], servers[i].rtmp.to_string());
    }
    let text = serde_json::to_string(&list).unwrap();
    for key in keys {
        assert!(!text.contains(key), "{text}");
    }
    // Only the exact key finds a stream.
    for path in [
        "/streams/stream/alphaKey0000secre",
        "/streams/stream/alph%E2%80%A6",
        "/streams/other/alphaKey0000secret",
        "/streams/stream",
    ] {
        assert_eq!(http_get(proxy.admin, path).await.unwrap().0, 404, "{path}");
    }

    // A publisher that leaves is logged with role, app and redacted key,
    // and leaves the directory.
    drop(publishers.remove(0));
    let line = format!(
        r#""app":"stream","key":"{}…","role":"publish""#,
        &keys[0][..4]
    );
    let logged = wait_until(Duration::from_secs(10), || {
        proxy
            .log_text()
            .lines()
            .any(|l| l.contains(r#""event":"end""#) && l.contains(&line))
    })
    .await;
    assert!(logged, "no end line with {line:?}:\n{}", proxy.log_text());
    let gone = wait_until(Duration::from_secs(5), || {
        http_get_blocking(proxy.admin, "/streams")
            .map(|(_, b)| !b.contains(&format!("{}…", &keys[0][..4])))
            .unwrap_or(false)
    })
    .await;
    assert!(gone, "{:#?}", streams(&proxy).await);
    assert_eq!(
        proxy
            .metric("rtmp_proxy_streams_identified_total{role=\"publish\"}")
            .await,
        2.0
    );

    let log = proxy.log_text();
    for key in keys {
        assert!(!log.contains(key), "full key {key} in the log:\n{log}");
    }
}

/// Acceptance 3: a silent client and a non-RTMP one never hold the only
/// slot; both are closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_without_a_handshake_take_no_slot() {
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&format!(
        "  handshake_timeout: 10s\n  health_check:\n    interval: 60s\n{}",
        statics(&[server.yaml(1)])
    ))
    .await;

    let mut silent = proxy.connect().await;
    let mut wrong = proxy.connect().await;
    wrong.write_all(&c0c1(9, 1)).await.unwrap();
    let mut short = proxy.connect().await;
    short.write_all(&c0c1(3, 2)[..100]).await.unwrap();
    short.shutdown().await.unwrap();
    assert!(closed_within(&mut wrong, Duration::from_secs(5)).await);
    assert!(closed_within(&mut short, Duration::from_secs(5)).await);
    let accepted = wait_until(Duration::from_secs(5), || {
        metric_blocking(&proxy, "rtmp_proxy_connections_accepted_total") == 3.0
    })
    .await;
    assert!(accepted, "{}", proxy.log_text());
    assert_eq!(proxy.backend_field(server.rtmp, "active").await, 0);

    // The silent client is still in the gate, and the publisher is served.
    let mut publisher = Publisher::start(&url(proxy.listen, "gatekey"), proxy.dir.path(), "p");
    assert!(
        server
            .wait_publishing("gatekey", Duration::from_secs(9))
            .await,
        "publisher not served; log:\n{}\nffmpeg: {}",
        proxy.log_text(),
        publisher.log()
    );
    assert_eq!(proxy.metric(&rejected("handshake_timeout")).await, 0.0);
    assert_eq!(proxy.backend_field(server.rtmp, "active").await, 1);
    assert!(publisher.running());

    assert!(
        closed_within(&mut silent, Duration::from_secs(15)).await,
        "the silent client was not closed"
    );
    for reason in [
        "handshake_timeout",
        "handshake_bad_version",
        "handshake_incomplete",
    ] {
        assert_eq!(proxy.metric(&rejected(reason)).await, 1.0, "{reason}");
    }
    assert_eq!(
        proxy.metric("rtmp_proxy_connections_served_total").await,
        1.0
    );
    let log = proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(r#""reason":"handshake_bad_version""#)
                && l.contains("unsupported RTMP version byte 9")),
        "{log}"
    );
}

fn metric_blocking(proxy: &Proxy, name: &str) -> f64 {
    http_get_blocking(proxy.admin, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Acceptance 4, raw: the header names the client's own address (bound to
/// 127.0.0.2) as source and the address it connected to as destination,
/// though the proxy's own upstream side is 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_headers_carry_the_client_address() {
    for version in ["v1", "v2"] {
        let (backend, mut seen) = proxy_header_backend().await;
        let proxy = Proxy::start(&format!(
            "  send_proxy: {version}\n  health_check:\n    interval: 60s\n{}",
            statics(&[format!("      - addr: \"{backend}\"\n")])
        ))
        .await;
        let _ = proxy.connect().await; // waits until the port is bound

        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut client = socket.connect(proxy.listen).await.unwrap();
        let me = client.local_addr().unwrap();
        let published = publish_recorded(&mut client).await;

        // The probe connection above sent no handshake and was never
        // proxied: the first connection with a header is this client's.
        let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{version}: nothing proxied:\n{}", proxy.log_text()))
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(got.version, version);
        assert_eq!(got.source, me, "{version}");
        assert_eq!(got.destination, proxy.listen, "{version}");
        // The proxy's own handshake, not the client's.
        assert_eq!(got.c0c1[0], 3, "{version}");
        assert_ne!(got.c0c1, FFMPEG_PUBLISH[..C0C1_LEN], "{version}");
        assert!(
            published,
            "{version}: no Publish.Start:\n{}",
            proxy.log_text()
        );
        let list = streams(&proxy).await;
        assert_eq!(list.len(), 1, "{list:#?}");
        assert_eq!(list[0]["status"], "identified", "{list:#?}");
        assert_eq!(list[0]["key"], "tes…", "{list:#?}");
        assert_eq!(list[0]["client"], me.to_string());
        drop(client);

        // Not RTMP after the handshake: refused before any backend.
        let mut stranger = socket_connect(proxy.listen).await.unwrap();
        stranger
            .write_all(&FFMPEG_PUBLISH[..C0C1_LEN])
            .await
            .unwrap();
        let mut rest = vec![0u8; 1536];
        rest.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        stranger.write_all(&rest).await.unwrap();
        let mut answer = vec![0u8; C0C1_LEN + 1536];
        stranger.read_exact(&mut answer).await.unwrap();
        assert!(closed_within(&mut stranger, Duration::from_secs(10)).await);
        let refused = r#"rtmp_proxy_connections_rejected_total{reason="protocol_error"}"#;
        assert_eq!(proxy.metric(refused).await, 1.0);
        let logged = wait_until(Duration::from_secs(10), || {
            proxy.log_text().lines().any(|l| {
                l.contains(r#""reason":"client_closed""#) && l.contains("publish stream/tes…")
            })
        })
        .await;
        assert!(logged, "{}", proxy.log_text());
    }
}

/// A client still in its handshake when an upgrade starts finishes its
/// front with the old process, which passes it (and every byte it read)
/// to the new one. The new process picks up the RTMP session where the old
/// one left it, without answering again, and still sends the client's own
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_passed_on_by_an_upgrade_keeps_its_address_in_the_proxy_header() {
    let (backend, mut seen) = proxy_header_backend().await;
    let old = Proxy::start(&format!(
        "  send_proxy: v2\n  handshake_timeout: 60s\n  health_check:\n    interval: 60s\n{}",
        statics(&[format!("      - addr: \"{backend}\"\n")])
    ))
    .await;
    let mut client = loop {
        // Retried while the proxy port is not bound yet.
        match socket_connect(old.listen).await {
            Some(s) => break s,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let me = client.local_addr().unwrap();
    client.write_all(&FFMPEG_PUBLISH[..100]).await.unwrap();

    let new = old.upgrade().await;
    client
        .write_all(&FFMPEG_PUBLISH[100..C0C1_LEN])
        .await
        .unwrap();
    let mut answer = vec![0u8; C0C1_LEN + 1536];
    client.read_exact(&mut answer).await.unwrap();
    client
        .write_all(&FFMPEG_PUBLISH[C0C1_LEN..PUBLISH_END])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("nothing proxied:\n{}\n{}", old.log_text(), new.log_text()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((got.source, got.destination), (me, old.listen));
    assert!(
        read_until(&mut client, b"NetStream.Publish.Start").await,
        "no Publish.Start through the new process:\n{}",
        new.log_text()
    );
    assert!(
        old.log_text()
            .contains(&format!("{me}: passed to the new process")),
        "the old process served the client itself:\n{}",
        old.log_text()
    );
}

/// Connects from 127.0.0.2; `None` while the port refuses.
async fn socket_connect(to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.connect(to).await.ok()
}

/// Acceptance 4, end to end: nginx-rtmp with `listen ... proxy_protocol`
/// takes a publish through `send_proxy: v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_with_proxy_protocol_takes_a_publish_through_v1() {
    let server = Nginx::start(true).await;
    let proxy = Proxy::start(&format!(
        "  send_proxy: v1\n  health_check:\n    interval: 60s\n{}",
        statics(&[server.yaml(1)])
    ))
    .await;
    let mut publisher = Publisher::start(&url(proxy.listen, "ppkey"), proxy.dir.path(), "p");
    assert!(
        server
            .wait_publishing("ppkey", Duration::from_secs(20))
            .await,
        "not publishing; proxy log:\n{}\nnginx:\n{}\nffmpeg: {}",
        proxy.log_text(),
        server.logs(),
        publisher.log()
    );
    assert!(publisher.running());
    assert!(server.stat().contains("<address>127.0.0.1</address>"));
}

/// A backend that accepts TCP and closes at once, without a byte.
async fn closing_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    (addr, task)
}

/// Publishes `keys` through `proxy` one after the other and checks that
/// each lands on `server` while its encoder reports no error.
async fn publish_all(proxy: &Proxy, server: &Nginx, keys: &[&str]) -> Vec<Publisher> {
    let mut running = Vec::new();
    for key in keys {
        let mut p = Publisher::start(&url(proxy.listen, key), proxy.dir.path(), key);
        assert!(
            server.wait_publishing(key, Duration::from_secs(20)).await,
            "{key} not on {}; proxy log:\n{}\nffmpeg: {}",
            server.rtmp,
            proxy.log_text(),
            p.log()
        );
        assert!(p.running(), "{}", p.log());
        assert_eq!(p.log(), "", "ffmpeg reported an error");
        running.push(p);
    }
    running
}

/// Acceptance 5: a backend that closes right after accepting is skipped
/// with the same handshake bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_that_closes_without_answering_is_skipped() {
    let (closer, _task) = closing_backend().await;
    let server = Nginx::start(false).await;
    // `first` with the closer first: every publisher tries it first while
    // it is up; only the failed attempt marks it down.
    let proxy = Proxy::start(&format!(
        "  balance: first\n  health_check:\n    interval: 60s\n{}",
        statics(&[
            format!("      - addr: \"{closer}\"\n        max_connections: 0\n"),
            server.yaml(0)
        ])
    ))
    .await;
    let _publishers = publish_all(&proxy, &server, &["closer1", "closer2"]).await;
    let log = proxy.log_text();
    assert!(
        log.contains(&format!("backend {closer} ")) && log.contains("before answering"),
        "the closing backend was never tried:\n{log}"
    );
    assert_eq!(proxy.backend_field(closer, "healthy").await, false);
    assert_eq!(proxy.metric(&rejected("connect_failed")).await, 0.0);
}

/// Acceptance 5: a stopped media server (its port refuses) is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_media_server_is_skipped() {
    let mut stopped = Nginx::start(false).await;
    let server = Nginx::start(false).await;
    stopped.stop();
    let proxy = Proxy::start(&format!(
        "  balance: first\n  health_check:\n    interval: 60s\n{}",
        statics(&[stopped.yaml(0), server.yaml(0)])
    ))
    .await;
    let _publishers = publish_all(&proxy, &server, &["live1", "live2"]).await;
    assert_eq!(proxy.backend_field(stopped.rtmp, "healthy").await, false);
    assert_eq!(proxy.metric(&rejected("connect_failed")).await, 0.0);
}

/// `/streams` of `proxy`, read from a blocking condition.
fn streams_blocking(proxy: &Proxy) -> Vec<Value> {
    http_get_blocking(proxy.admin, "/streams")
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// The listed publisher whose key redacts to `shown`.
fn listed<'a>(list: &'a [Value], shown: &str) -> Option<&'a Value> {
    list.iter()
        .find(|s| s["key"] == shown && s["role"] == "publish")
}

/// Reliability defect 5: after an upgrade, the new process lists the
/// streams still live on the old one as draining and answers lookups for
/// them; each leaves the list when it ends there, not when the old
/// process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_left_on_the_old_process_stay_listed_after_an_upgrade() {
    let server = Nginx::start(false).await;
    let old = Proxy::start(&statics(&[server.yaml(2)])).await;
    let keys = ["staysKey0000secret", "leavesKey000secret"];
    let mut publishers: Vec<Publisher> = keys
        .iter()
        .map(|k| Publisher::start(&url(old.listen, k), old.dir.path(), k))
        .collect();
    for key in keys {
        assert!(
            server.wait_publishing(key, Duration::from_secs(20)).await,
            "{key} not live; log:\n{}",
            old.log_text()
        );
    }
    let identified = wait_until(Duration::from_secs(10), || {
        let list = streams_blocking(&old);
        listed(&list, "stay…").is_some() && listed(&list, "leav…").is_some()
    })
    .await;
    assert!(identified, "{:?}", streams(&old).await);

    let new = old.upgrade().await;
    let list = streams(&new).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let stays = listed(&list, "stay…").expect("the old process's stream");
    assert_eq!(stays["draining"], true, "{stays}");
    assert_eq!(stays["backend"], server.rtmp.to_string());
    let (status, body) = http_get(new.admin, &format!("/streams/stream/{}", keys[0]))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&found["key"], &found["draining"]),
        (&"stay…".into(), &true.into())
    );
    // The old process keeps sending the counters.
    let before = stays["bytes_up"].as_u64().unwrap();
    let moving = wait_until(Duration::from_secs(20), || {
        listed(&streams_blocking(&new), "stay…")
            .and_then(|s| s["bytes_up"].as_u64())
            .is_some_and(|now| now > before)
    })
    .await;
    assert!(moving, "counters not refreshed: {:?}", streams(&new).await);

    publishers.pop();
    let gone = wait_until(Duration::from_secs(20), || {
        let list = streams_blocking(&new);
        list.len() == 1 && listed(&list, "stay…").is_some()
    })
    .await;
    assert!(gone, "{:?}\n{}", streams(&new).await, old.log_text());
    let (status, _) = http_get(new.admin, &format!("/streams/stream/{}", keys[1]))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(publishers[0].running(), "{}", publishers[0].log());

    // The last one ends and the old process exits.
    publishers.clear();
    let exited = wait_until(Duration::from_secs(20), || {
        new.log_text().contains("old process gone")
    })
    .await;
    assert!(exited, "{}", new.log_text());
    assert_eq!(streams(&new).await, Vec::<Value>::new());

    // The new process's own stream is draining once it gets SIGTERM.
    let key = "termKey00000secret";
    let _publisher = Publisher::start(&url(new.listen, key), new.dir.path(), key);
    let serving = wait_until(Duration::from_secs(20), || {
        listed(&streams_blocking(&new), "term…").is_some_and(|s| s["draining"] == false)
    })
    .await;
    assert!(
        serving,
        "{:?}
{}",
        streams(&new).await,
        new.log_text()
    );
    new.signal("TERM");
    let draining = wait_until(Duration::from_secs(20), || {
        listed(&streams_blocking(&new), "term…").is_some_and(|s| s["draining"] == true)
    })
    .await;
    assert!(draining, "{:?}", streams(&new).await);
    for log in [old.log_text(), new.log_text()] {
        for key in keys.iter().chain([&key]) {
            assert!(!log.contains(key), "full key {key} in the log:\n{log}");
        }
    }
}

/// The RTMP front with real nginx-rtmp servers, ffmpeg and ffprobe:
/// - a server that answers a publish with "Already publishing" is skipped
///   and the publisher lands on the next one without noticing;
/// - a play of a published key goes to that key's server and decodes,
///   through ffprobe, which validates the digest handshake's S1 and S2;
/// - a play of an unknown key gets StreamNotFound, with no server asked;
/// - with the fleet full, a publisher gets an RTMP error that ffmpeg
///   prints, after `queue_timeout`, and no server sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn players_follow_their_stream_and_refusals_reach_the_encoder() {
    let (busy, other) = (Nginx::start(false).await, Nginx::start(false).await);
    let dir = tempfile::tempdir().unwrap();
    // "dupKey0000" already publishes on `busy`, behind the proxy's back.
    let direct = format!("rtmp://{}/stream/dupKey0000", busy.rtmp);
    let _direct = Publisher::start(&direct, dir.path(), "direct");
    assert!(
        busy.wait_publishing("dupKey0000", Duration::from_secs(20))
            .await
    );

    let proxy = Proxy::start(&format!(
        "  balance: first\n  queue_timeout: 2s\n  health_check:\n    interval: 60s\n{}",
        statics(&[busy.yaml(1), other.yaml(1)])
    ))
    .await;
    let mut dup = Publisher::start(&url(proxy.listen, "dupKey0000"), dir.path(), "dup");
    assert!(
        other
            .wait_publishing("dupKey0000", Duration::from_secs(20))
            .await,
        "{}\n{}",
        proxy.log_text(),
        dup.log()
    );
    assert!(dup.running(), "{}", dup.log());
    assert!(
        proxy.log_text().contains("NetStream.Publish.BadName"),
        "{}",
        proxy.log_text()
    );

    // The player of dupKey0000 is sent to `other`, where the proxy put it.
    let (seen, said) = ffprobe(&url(proxy.listen, "dupKey0000")).await;
    assert_eq!(seen, ["video"], "{said}\n{}", proxy.log_text());
    let (seen, said) = ffprobe(&url(proxy.listen, "nobodyKey00")).await;
    assert!(seen.is_empty());
    assert!(
        said.contains("rtmp-proxy: stream/nob… is not being published"),
        "{said}"
    );
    // ffprobe names its own URL; the proxy never names the key.
    assert!(!proxy.log_text().contains("nobodyKey00"));

    // Fill `busy`'s free slot, then one more: refused with a reason.
    let _second = Publisher::start(&url(proxy.listen, "secondKey00"), dir.path(), "second");
    assert!(
        busy.wait_publishing("secondKey00", Duration::from_secs(20))
            .await
    );
    let mut third = Publisher::start(&url(proxy.listen, "thirdKey000"), dir.path(), "third");
    let stopped = wait_until(Duration::from_secs(20), || !third.running()).await;
    assert!(stopped, "{}", third.log());
    assert!(
        third
            .log()
            .contains("Server error: rtmp-proxy: no media server came free within 2s"),
        "{}",
        third.log()
    );
    assert!(!busy.stat().contains("thirdKey000") && !other.stat().contains("thirdKey000"));
    let refused = r#"rtmp_proxy_connections_rejected_total{reason="queue_timeout"}"#;
    assert_eq!(proxy.metric(refused).await, 1.0);
    let not_found = r#"rtmp_proxy_connections_rejected_total{reason="stream_not_found"}"#;
    assert_eq!(proxy.metric(not_found).await, 1.0);
}

/// Acceptance 1 and 4 of the RTMP front: each publisher goes live through
/// the proxy on nginx-rtmp, the directory lists it, and what it sends
/// plays back through the proxy and decodes: with ffprobe, and recorded
/// with rtmpdump (librtmp as a player) and then decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn librtmp_and_gstreamer_publishers_go_live_and_play_back() {
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&statics(&[server.yaml(3)])).await;
    let dir = tempfile::tempdir().unwrap();
    let publishers = [("rtmpsink", "gstLibrtmp01"), ("rtmp2sink", "gstRtmp2Key01")];
    let mut running = Vec::new();
    for (sink, key) in publishers {
        let mut p = Publisher::gstreamer(sink, &url(proxy.listen, key), dir.path(), sink);
        let live = server.wait_publishing(key, Duration::from_secs(30)).await;
        assert!(live, "{sink}: {}\n{}", p.log(), proxy.log_text());
        assert!(p.running(), "{sink}: {}", p.log());
        let (seen, said) = ffprobe(&url(proxy.listen, key)).await;
        assert_eq!(seen, ["video"], "{sink}: {said}\n{}", proxy.log_text());
        running.push(p);
    }
    let list = streams(&proxy).await;
    let shown: Vec<_> = list
        .iter()
        .filter(|s| s["role"] == "publish")
        .map(|s| s["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, ["gstL…", "gstR…"], "{list:#?}");

    // rtmpdump (librtmp as a player) records the rtmp2sink stream through
    // the proxy for 4 s, then is interrupted: it finishes the file on SIGINT.
    let flv = dir.path().join("recorded.flv");
    let mut rtmpdump = tokio::process::Command::new("rtmpdump")
        .args(["-q", "-v", "-r", &url(proxy.listen, "gstRtmp2Key01"), "-o"])
        .arg(&flv)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rtmpdump (scripts/install-deps installs it)");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = rtmpdump.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    assert!(sent.unwrap().success());
    let done = tokio::time::timeout(Duration::from_secs(20), rtmpdump.wait()).await;
    assert!(done.is_ok(), "rtmpdump did not stop");
    let (seen, said) = ffprobe(flv.to_str().unwrap()).await;
    assert_eq!(seen, ["video"], "{said}\n{}", proxy.log_text());
}

/// Acceptance 1, the second server: ffmpeg publishes through the front to
/// node-media-server, which sees the stream, and it plays back through the
/// proxy and decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_media_server_takes_ffmpeg_through_the_front() {
    let server = NodeMediaServer::start().await;
    let proxy = Proxy::start(&format!(
        "  health_check:\n    interval: 60s\n{}",
        statics(&[server.yaml(2)])
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::start(&url(proxy.listen, "nmsKey0001"), dir.path(), "nms");
    let live = wait_until(Duration::from_secs(30), || {
        server.publishing("stream", "nmsKey0001")
    })
    .await;
    assert!(live, "{}\n{}", publisher.log(), proxy.log_text());
    assert!(publisher.running(), "{}", publisher.log());
    let (seen, said) = ffprobe(&url(proxy.listen, "nmsKey0001")).await;
    assert_eq!(seen, ["video"], "{said}\n{}", proxy.log_text());
    let list = streams(&proxy).await;
    assert!(
        list.iter()
            .any(|s| s["key"] == "nms…" && s["role"] == "publish"),
        "{list:#?}"
    );
}

/// A media server that gives `createStream` the stream id 2, where the
/// proxy told the client 1: the publisher's messages would carry an id
/// the server does not know.
async fn other_stream_id_server() -> SocketAddr {
    // ffmpeg's createStream is transaction 4.
    let values = [
        Amf0::String("_result".into()),
        Amf0::Number(4.0),
        Amf0::Null,
        Amf0::Number(2.0),
    ];
    rtmp_server_answering(rtmp_command(3, 0, &values)).await
}

/// The message stream id the front gave the client must be the server's:
/// a server that gives another is skipped, not marked down, and the
/// publisher lands on the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_with_another_stream_id_is_skipped() {
    let odd = other_stream_id_server().await;
    let good = Backend::start("good", Mode::Rtmp).await;
    let proxy = Proxy::start(&format!(
        "  balance: first\n  health_check:\n    kind: tcp\n    interval: 60s\n{}",
        statics(&[
            format!("      - addr: \"{odd}\"\n        max_connections: 1\n"),
            good.yaml(1, 1),
        ])
    ))
    .await;
    let mut client = proxy.connect().await;
    assert!(publish_recorded(&mut client).await, "{}", proxy.log_text());
    let list = streams(&proxy).await;
    assert_eq!(list[0]["backend"], good.addr.to_string(), "{list:#?}");
    assert!(
        proxy
            .log_text()
            .contains("gave message stream id 2 where the client was given 1"),
        "{}",
        proxy.log_text()
    );
    assert_eq!(proxy.backend_field(odd, "healthy").await, true);
}

/// A media server may name the stream in its refusal; the proxy logs the
/// refusal and passes it to the publisher, with the key redacted in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_that_names_the_key_is_redacted() {
    let text = |s: &str| Amf0::String(s.into());
    let info = Amf0::Object(vec![
        ("level".into(), text("error")),
        ("code".into(), text("NetStream.Publish.BadName")),
        (
            "description".into(),
            text("testkey123 is already publishing"),
        ),
    ]);
    let values = [text("onStatus"), Amf0::Number(0.0), Amf0::Null, info];
    let server = rtmp_server_answering(rtmp_command(5, 1, &values)).await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "  access_log: {access:?}\n  health_check:\n    kind: tcp\n    interval: 60s\n{}",
        statics(&[format!(
            "      - addr: \"{server}\"\n        max_connections: 1\n"
        )])
    ))
    .await;
    let mut client = proxy.connect().await;
    assert!(!publish_recorded(&mut client).await);
    let refused = r#"rtmp_proxy_connections_rejected_total{reason="connect_failed"}"#;
    let counted = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&access).is_ok_and(|l| l.contains("connect_failed"))
    })
    .await;
    assert!(counted, "{}", proxy.log_text());
    assert_eq!(proxy.metric(refused).await, 1.0);
    let logged = format!(
        "{}{}",
        proxy.log_text(),
        std::fs::read_to_string(&access).unwrap()
    );
    assert!(logged.contains("tes… is already publishing"), "{logged}");
    assert!(!logged.contains("testkey123"), "{logged}");
}
