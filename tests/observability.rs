//! Metrics, the access log and the stats page, through the real binary: a
//! Prometheus text-format parser reads `/metrics`, every access-log line is
//! parsed as JSON, and the stats page is rendered by headless Chromium.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What real ffmpeg sent when publishing `stream/testkey123`.
const KEY: &str = "testkey123";

/// Connects and replays the captured publish; the stream stays open.
/// The media servers here answer as far as a publish only: they could not
/// pass an RTMP health check.
const TCP_CHECK: &str = "  health_check:\n    kind: tcp\n";

async fn publisher(proxy: &Proxy) -> TcpStream {
    let mut s = proxy.connect().await;
    assert!(publish_recorded(&mut s).await, "{}", proxy.log_text());
    s
}

/// A publisher the proxy turns away: it gets the handshake and its
/// answers, then an RTMP error (its description is checked with ffmpeg,
/// in tests/rtmp.rs).
async fn refused_publisher(proxy: &Proxy) -> TcpStream {
    // Another key: a second publish of the same key would take over.
    let publish = ffmpeg_publish_of("otherkey12");
    let mut s = proxy.connect().await;
    s.write_all(&publish[..RTMP_C0C1_LEN]).await.unwrap();
    let mut answer = vec![0u8; RTMP_C0C1_LEN + 1536];
    s.read_exact(&mut answer).await.unwrap();
    s.write_all(&publish[RTMP_C0C1_LEN..PUBLISH_END])
        .await
        .unwrap();
    assert!(
        read_until(&mut s, b"NetStream.Failed").await,
        "{}",
        proxy.log_text()
    );
    s
}

/// `/metrics` through a real Prometheus text-format parser: sample name
/// with its labels rendered `{k="v",...}` (sorted) -> value.
async fn scrape(proxy: &Proxy) -> HashMap<String, f64> {
    let (status, body) = http_get(proxy.admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let name = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            Some((name, value))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// The access log's lines, each parsed as JSON.
fn access_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_access_log_follow_the_traffic() {
    let backend = Backend::start("media", Mode::Rtmp).await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "  access_log: \"{}\"\n  access_log_interval: 300ms\n  max_queue: 0\n{TCP_CHECK}  backends:\n    static:\n{}",
        access.display(),
        backend.yaml(10, 1)
    ))
    .await;
    let before = scrape(&proxy).await;

    let mut live = publisher(&proxy).await;
    let streaming = wait_until(Duration::from_secs(10), || {
        http_get_blocking(proxy.admin, "/streams").is_ok_and(|(_, b)| b.contains("\"identified\""))
    })
    .await;
    assert!(streaming, "{}", proxy.log_text());
    // The only slot is taken: the next publisher is turned away.
    let mut second = refused_publisher(&proxy).await;
    assert!(closed_within(&mut second, Duration::from_secs(5)).await);
    // Counted as the proxy finishes with it, just after its side closed.
    let queue_full = r#"rtmp_proxy_connections_rejected_total{reason="queue_full"}"#;
    let mut counted = false;
    for _ in 0..100 {
        if get(&scrape(&proxy).await, queue_full) == 1.0 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted, "{}", proxy.log_text());

    let during = scrape(&proxy).await;
    assert_eq!(
        get(&during, "rtmp_proxy_connections_served_total")
            - get(&before, "rtmp_proxy_connections_served_total"),
        1.0
    );
    assert_eq!(
        get(
            &during,
            r#"rtmp_proxy_connections_rejected_total{reason="queue_full"}"#
        ),
        1.0
    );
    assert!(
        get(
            &during,
            r#"rtmp_proxy_bytes_total{direction="client_to_backend"}"#
        ) >= PUBLISH_END as f64
    );
    assert_eq!(
        get(
            &during,
            &format!(
                r#"rtmp_proxy_backend_active_connections{{backend="{}"}}"#,
                backend.addr
            )
        ),
        1.0
    );
    // Both publishes were read before a slot was asked for.
    assert_eq!(
        get(
            &during,
            r#"rtmp_proxy_streams_identified_total{role="publish"}"#
        ),
        2.0
    );
    assert_eq!(get(&during, "rtmp_proxy_queue_length"), 0.0);

    // A long stream shows up before it ends.
    let progressed = wait_until(Duration::from_secs(5), || {
        access_lines(&access)
            .iter()
            .any(|l| l["event"] == "progress")
    })
    .await;
    assert!(progressed, "no progress line");
    drop(live.shutdown().await);
    drop(live);
    let ended = wait_until(Duration::from_secs(10), || {
        access_lines(&access).iter().any(|l| l["event"] == "end")
    })
    .await;
    assert!(ended, "no end line");

    let lines = access_lines(&access);
    let fields = [
        "time",
        "event",
        "client",
        "backend",
        "app",
        "key",
        "role",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "queue_wait_ms",
        "reason",
    ];
    for line in &lines {
        for f in fields {
            assert!(line.get(f).is_some(), "field {f} missing in {line}");
        }
    }
    let end = lines.iter().find(|l| l["event"] == "end").unwrap();
    assert_eq!(end["app"], "stream");
    assert_eq!(end["role"], "publish");
    assert_eq!(end["key"], "tes…");
    assert_eq!(end["backend"], backend.addr.to_string());
    assert!(end["bytes_up"].as_u64().unwrap() >= PUBLISH_END as u64);
    let rejected = lines
        .iter()
        .find(|l| l["event"] == "rejected")
        .expect("a rejected line");
    assert_eq!(rejected["reason"], "queue_full");
    let all = std::fs::read_to_string(&access).unwrap() + &proxy.log_text();
    assert!(!all.contains(KEY), "the full stream key leaked");
}

/// Renders `url` in headless Chromium: the DOM after scripts ran, and a
/// screenshot at `png`.
fn chromium(url: &str, png: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
    ];
    let run = |extra: &[String]| {
        let out = std::process::Command::new("chromium")
            .args(common)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium (Debian package chromium; scripts/install-deps installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom".into()]);
    run(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1280,900".into(),
    ]);
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stats_page_shows_backends_and_live_streams_in_a_browser() {
    let a = Backend::start("a", Mode::Rtmp).await;
    let b = Backend::start("b", Mode::Rtmp).await;
    let proxy = Proxy::start(&format!(
        "{TCP_CHECK}  backends:\n    static:\n{}{}",
        a.yaml(10, 1),
        b.yaml(10, 2)
    ))
    .await;
    let _live = publisher(&proxy).await;
    let streaming = wait_until(Duration::from_secs(10), || {
        http_get_blocking(proxy.admin, "/streams").is_ok_and(|(_, b)| b.contains("\"identified\""))
    })
    .await;
    assert!(streaming);

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("stats-page.png");
    let url = format!("http://{}/", proxy.admin);
    let dom = tokio::task::spawn_blocking(move || chromium(&url, &png))
        .await
        .unwrap();

    assert!(
        dom.contains(&a.addr.to_string()) && dom.contains(&b.addr.to_string()),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"stream\""),
        "no active stream row:\n{dom}"
    );
    assert!(dom.contains("tes…") && dom.contains("publish"), "{dom}");
    assert!(
        dom.contains(r#"<span class="meta" id="error"></span>"#),
        "a refresh failed:\n{dom}"
    );
    assert!(!dom.contains(KEY));
    assert!(artifacts.join("stats-page.png").exists(), "no screenshot");
}
