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

/// `rtmp_proxy_*` families docs/observability.md documents but that need
/// AWS to appear: the ECS doubles of tests/scale_in_protection.rs exercise
/// them there.
const EXPOSED_ONLY_WITH_ECS: &[&str] = &[
    "rtmp_proxy_scale_in_protection_calls_total",
    "rtmp_proxy_scale_in_protected_tasks",
];

fn docs_observability() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/observability.md"
    ))
    .expect("docs/observability.md")
}

/// A table of docs/observability.md, from its header row to the blank
/// line after it: each row's first-column names (a cell may hold several
/// `names`) with the row's second column.
fn doc_table(header: &str) -> Vec<(Vec<String>, String)> {
    let doc = docs_observability();
    let table = doc
        .split(header)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/observability.md has no table {header:?}"));
    let table = table.split("\n\n").next().unwrap_or(table);
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let names = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (names, cells.get(1).map_or("", |c| c.trim()).to_owned())
        })
        .collect()
}

/// Every `rtmp_proxy_*` family `/metrics` exposes is in
/// docs/observability.md's table with its type, and every one there is
/// exposed once the traffic below has touched it (a labelled counter has
/// no family before its first sample); the access log's fields are the
/// ones its table lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_and_log_field_is_documented_and_every_documented_one_exists() {
    let backend = Backend::start("media", Mode::Rtmp).await;
    let hook = common::hook::Hook::start(|_| common::hook::Answer::status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "  access_log: \"{}\"\n  access_log_interval: 300ms\n{TCP_CHECK}  auth:\n    on_publish: {}\n  backends:\n    static:\n{}",
        access.display(),
        hook.url(),
        backend.yaml(10, 1)
    ))
    .await;
    let count = |name: &'static str| {
        let admin = proxy.admin;
        move || {
            http_get_blocking(admin, "/metrics").is_ok_and(|(_, body)| {
                body.lines()
                    .any(|l| l.starts_with(name) && !l.ends_with(" 0"))
            })
        }
    };

    // A rejection: not RTMP.
    let mut probe = proxy.connect().await;
    probe.write_all(&[4u8; 8]).await.unwrap();
    assert!(closed_within(&mut probe, Duration::from_secs(5)).await);
    // A closed HTTP connection: a malformed request on the admin port.
    let mut bad = TcpStream::connect(proxy.admin).await.unwrap();
    bad.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the admin port kept a malformed request open");
    // A publish (auth, bytes, identified) taken over by a second one of the
    // same key (takeover, closed) ...
    let mut first = publisher(&proxy).await;
    let mut second = publisher(&proxy).await;
    assert!(closed_within(&mut first, Duration::from_secs(5)).await);
    // ... which ends, and is back within sticky_for (sticky).
    drop(second.shutdown().await);
    drop(second);
    let ended = wait_until(
        Duration::from_secs(10),
        count("rtmp_proxy_connections_closed_total{reason=\"client_closed\"}"),
    )
    .await;
    assert!(ended, "{}", proxy.log_text());
    let third = publisher(&proxy).await;
    let sticky = wait_until(Duration::from_secs(10), count("rtmp_proxy_sticky_total")).await;
    assert!(sticky, "{}", proxy.log_text());
    // A progress line of the live stream, for the log's fields.
    let progressed = wait_until(Duration::from_secs(5), || {
        access_lines(&access)
            .iter()
            .any(|l| l["event"] == "progress")
    })
    .await;
    assert!(progressed, "no progress line");

    let (status, body) = http_get(proxy.admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    let exposed: HashMap<String, String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE rtmp_proxy_"))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((format!("rtmp_proxy_{name}"), kind.trim().to_owned()))
        })
        .collect();
    let documented: HashMap<String, String> = doc_table("| metric | type | labels | meaning |")
        .into_iter()
        .flat_map(|(names, kind)| names.into_iter().map(move |n| (n, kind.clone())))
        .filter(|(n, _)| n.starts_with("rtmp_proxy_"))
        .collect();
    let mut wrong = Vec::new();
    for (name, kind) in &exposed {
        match documented.get(name) {
            None => wrong.push(format!("{name} is exposed but not documented")),
            Some(doc) if doc != kind => {
                wrong.push(format!("{name} is a {kind}, documented as a {doc}"))
            }
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !exposed.contains_key(name) && !EXPOSED_ONLY_WITH_ECS.contains(&name.as_str()) {
            wrong.push(format!("{name} is documented but was not exposed"));
        }
    }
    for name in EXPOSED_ONLY_WITH_ECS {
        if !documented.contains_key(*name) {
            wrong.push(format!("{name} (allowed unexposed) is not documented"));
        }
    }
    assert!(wrong.is_empty(), "{}\n/metrics:\n{body}", wrong.join("\n"));

    let fields: Vec<String> = doc_table("| field | meaning |")
        .into_iter()
        .flat_map(|(names, _)| names)
        .collect();
    let lines = access_lines(&access);
    let mut seen: Vec<String> = lines
        .iter()
        .filter_map(|l| l.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    seen.sort();
    seen.dedup();
    let mut listed = fields.clone();
    listed.sort();
    assert_eq!(
        seen, listed,
        "the access log's fields and docs/observability.md's table differ"
    );
    drop(third);
}
