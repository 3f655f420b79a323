//! Publisher identity through the real binary: the platform's auth hook
//! (a small HTTP server here) allows, denies, routes and renames; a stale
//! publisher is taken over; a publisher that comes back goes to the server
//! it left; across two proxies with a real redis-server too. Media servers
//! are nginx-rtmp, encoders ffmpeg, except where a publisher has to go
//! silent without closing, which a raw client replaying ffmpeg's recorded
//! bytes does.
//!
//! Every process is the test's child and killed on drop; every wait is
//! bounded. No assertion is about how long something took: the takeover
//! prints its time for the notes.

mod common;

use std::time::{Duration, Instant};

use common::hook::{field, Answer, Hook};
use common::media::{ffprobe, Nginx, Publisher};
use common::redis::Redis;
use common::*;

/// The recorded publish's key (app `stream`).
const RECORDED_KEY: &str = "testkey123";

fn closed(reason: &str) -> String {
    format!("rtmp_proxy_connections_closed_total{{reason=\"{reason}\"}}")
}

fn rejected(reason: &str) -> String {
    format!("rtmp_proxy_connections_rejected_total{{reason=\"{reason}\"}}")
}

fn quiet_checks() -> &'static str {
    "  health_check:\n    interval: 60s\n"
}

/// Waits until the publisher stopped, then returns what it printed.
async fn refused(mut p: Publisher) -> String {
    let stopped = wait_until(Duration::from_secs(20), || !p.running()).await;
    assert!(stopped, "still publishing: {}", p.log());
    p.log()
}

/// Waits until no server publishes `key` and `proxy` lists no stream.
async fn ended(proxy: &Proxy, servers: &[&Nginx], key: &str) {
    let mut gone = false;
    for _ in 0..200 {
        if servers.iter().all(|s| !s.publishing(key)) && streams(proxy).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "{key} did not end:\n{}", proxy.log_text());
}

/// Which of `servers` publishes `key`, once one does.
async fn on(servers: &[&Nginx], key: &str) -> usize {
    for _ in 0..200 {
        if let Some(i) = servers.iter().position(|s| s.publishing(key)) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{key} never went live");
}

/// Acceptance 1: the hook gets nginx-rtmp's form; an allowed key goes
/// live; a denied one gets an RTMP error ffmpeg prints, and a flood of
/// denied publishers costs no media server connection; with the hook down,
/// `on_error` decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_allows_or_denies_before_any_media_server() {
    let hook = Hook::start(|form| match field(form, "name") {
        Some(name) if name.starts_with("good") => Answer::status(200),
        _ => Answer::status(403),
    })
    .await;
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&format!(
        "  auth:\n    on_publish: \"{}\"\n{}{}",
        hook.url(),
        quiet_checks(),
        statics(&[server.yaml(2)])
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let _good = Publisher::start(
        &format!("rtmp://{}/stream/goodKey0001?token=abc", proxy.listen),
        dir.path(),
        "good",
    );
    assert!(
        server
            .wait_publishing("goodKey0001", Duration::from_secs(20))
            .await,
        "{}",
        proxy.log_text()
    );
    let form = hook
        .calls()
        .into_iter()
        .next()
        .expect("the hook was called");
    for (name, want) in [
        ("call", "publish"),
        ("app", "stream"),
        ("name", "goodKey0001"),
        ("type", "live"),
        ("addr", "127.0.0.1"),
        ("token", "abc"),
    ] {
        assert_eq!(field(&form, name), Some(want), "{name} in {form:?}");
    }
    assert!(field(&form, "tcurl").is_some_and(|t| t.starts_with("rtmp://")));
    assert!(field(&form, "flashver").is_some(), "{form:?}");

    let denied = Publisher::start(&url(proxy.listen, "badKey00001"), dir.path(), "bad");
    let said = refused(denied).await;
    assert!(said.contains("Server error: rtmp-proxy: "), "{said}");
    assert!(said.contains("403"), "{said}");
    assert!(!server.stat().contains("badKey00001"));
    assert_eq!(proxy.metric(&rejected("auth_denied")).await, 1.0);
    let allowed = r#"rtmp_proxy_auth_total{call="publish",result="allowed"}"#;
    assert_eq!(proxy.metric(allowed).await, 1.0);

    // A flood of denied publishers in front of a counting media server.
    let media = Backend::start("media", Mode::Rtmp).await;
    let flooded = Proxy::start(&format!(
        "  auth:\n    on_publish: \"{}\"\n  health_check:\n    kind: tcp\n    interval: 60s\n{}",
        hook.url(),
        statics(&[media.yaml(10, 1)])
    ))
    .await;
    let checked = wait_until(Duration::from_secs(10), || media.accepted() >= 1).await;
    assert!(checked);
    let before = media.accepted();
    for _ in 0..20 {
        let mut client = flooded.connect().await;
        assert!(!publish_recorded(&mut client).await);
    }
    assert_eq!(flooded.metric(&rejected("auth_denied")).await, 20.0);
    assert_eq!(
        media.accepted(),
        before,
        "a denied publisher reached a server"
    );

    // The hook down: `deny` refuses, `allow` admits.
    let down = format!("http://127.0.0.1:{}/auth", free_port());
    for (on_error, goes_live) in [("deny", false), ("allow", true)] {
        let p = Proxy::start(&format!(
            "  auth:\n    on_publish: \"{down}\"\n    on_error: {on_error}\n  health_check:\n    kind: tcp\n    interval: 60s\n{}",
            statics(&[media.yaml(10, 1)])
        ))
        .await;
        let mut client = p.connect().await;
        assert_eq!(
            publish_recorded(&mut client).await,
            goes_live,
            "{on_error}: {}",
            p.log_text()
        );
        let result = if goes_live {
            "error_allowed"
        } else {
            "error_denied"
        };
        let counted = format!("rtmp_proxy_auth_total{{call=\"publish\",result=\"{result}\"}}");
        assert_eq!(p.metric(&counted).await, 1.0, "{}", p.log_text());
        if !goes_live {
            assert_eq!(p.metric(&rejected("auth_failed")).await, 1.0);
        }
    }
}

/// Acceptance 2: a hook answer naming server B puts the stream on B though
/// the policy picks A; a 3xx with a new name makes the server see the new
/// name; a named server that is not in the fleet is an RTMP error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_routes_and_renames() {
    let (a, b) = (Nginx::start(false).await, Nginx::start(false).await);
    let to_b = b.rtmp.to_string();
    let hook = Hook::start(move |form| match field(form, "name") {
        Some("routeKey01") => Answer::status(200).header("X-RTMP-Backend", &to_b),
        Some("renameMe01") => Answer::status(302).header("Location", "renamedKey01"),
        Some("nowhere001") => Answer::status(200).header("X-RTMP-Backend", "127.0.0.1:9"),
        Some("secretPlay1") => Answer::status(403),
        _ => Answer::status(200),
    })
    .await;
    let proxy = Proxy::start(&format!(
        "  balance: first\n  auth:\n    on_publish: \"{0}\"\n    on_play: \"{0}\"\n{1}{2}",
        hook.url(),
        quiet_checks(),
        statics(&[a.yaml(2), b.yaml(2)])
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let _routed = Publisher::start(&url(proxy.listen, "routeKey01"), dir.path(), "routed");
    assert!(
        b.wait_publishing("routeKey01", Duration::from_secs(20))
            .await,
        "{}",
        proxy.log_text()
    );
    let _renamed = Publisher::start(&url(proxy.listen, "renameMe01"), dir.path(), "renamed");
    assert!(
        a.wait_publishing("renamedKey01", Duration::from_secs(20))
            .await,
        "{}",
        proxy.log_text()
    );
    assert!(!a.stat().contains("renameMe01") && !b.stat().contains("renameMe01"));
    // Players find it under the name the server has; `on_play` asks too.
    let (seen, said) = ffprobe(&url(proxy.listen, "renamedKey01")).await;
    assert_eq!(seen, ["video"], "{said}\n{}", proxy.log_text());
    let (seen, said) = ffprobe(&url(proxy.listen, "secretPlay1")).await;
    assert!(seen.is_empty());
    assert!(said.contains("the auth hook answered 403"), "{said}");
    let plays = hook
        .calls()
        .into_iter()
        .filter(|f| field(f, "call") == Some("play"))
        .count();
    assert_eq!(plays, 2);
    let said = refused(Publisher::start(
        &url(proxy.listen, "nowhere001"),
        dir.path(),
        "nowhere",
    ))
    .await;
    assert!(
        said.contains("is not a media server of the fleet"),
        "{said}"
    );
    assert_eq!(proxy.metric(&rejected("route_unavailable")).await, 1.0);
}

/// Acceptance 3 on one proxy: a publisher that went silent without a FIN
/// is closed (reason `takeover`) when a new publisher of its key arrives,
/// which goes live on the same one-stream server, without queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_publisher_is_taken_over_on_the_same_server() {
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&format!(
        "  queue_timeout: 1s\n{}{}",
        quiet_checks(),
        statics(&[server.yaml(1)])
    ))
    .await;
    let mut stale = proxy.connect().await;
    assert!(publish_recorded(&mut stale).await, "{}", proxy.log_text());
    assert!(server.publishing(RECORDED_KEY));

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut newcomer = Publisher::start(&url(proxy.listen, RECORDED_KEY), dir.path(), "new");
    assert!(
        closed_within(&mut stale, Duration::from_secs(20)).await,
        "{}",
        proxy.log_text()
    );
    // Live when ffmpeg's metadata (its frame size) reaches the server.
    let live = wait_until(Duration::from_secs(20), || {
        server.publishing(RECORDED_KEY) && server.stat().contains("<width>320</width>")
    })
    .await;
    eprintln!("takeover: live again after {:?}", started.elapsed());
    assert!(live, "{}\n{}", proxy.log_text(), newcomer.log());
    assert!(newcomer.running(), "{}", newcomer.log());
    assert_eq!(proxy.metric(&closed("takeover")).await, 1.0);
    let local = r#"rtmp_proxy_takeovers_total{scope="local"}"#;
    assert_eq!(proxy.metric(local).await, 1.0);
    assert_eq!(proxy.metric(&rejected("queue_timeout")).await, 0.0);
    assert!(proxy.log_text().contains(r#""reason":"takeover""#));
    let listed = streams(&proxy).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
}

/// Acceptance 3 with `reject`: the newcomer gets an RTMP error and the old
/// session runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_reject_the_newcomer_is_refused_and_the_old_session_kept() {
    let server = Nginx::start(false).await;
    let proxy = Proxy::start(&format!(
        "  duplicate_publish: reject\n{}{}",
        quiet_checks(),
        statics(&[server.yaml(2)])
    ))
    .await;
    let mut stale = proxy.connect().await;
    assert!(publish_recorded(&mut stale).await);
    let dir = tempfile::tempdir().unwrap();
    let said = refused(Publisher::start(
        &url(proxy.listen, RECORDED_KEY),
        dir.path(),
        "dup",
    ))
    .await;
    assert!(
        said.contains("rtmp-proxy: stream/tes… is already being published"),
        "{said}"
    );
    assert_eq!(proxy.metric(&rejected("duplicate_publish")).await, 1.0);
    assert!(!closed_within(&mut stale, Duration::from_secs(1)).await);
    assert!(server.publishing(RECORDED_KEY));
    assert_eq!(streams(&proxy).await.len(), 1);
}

/// Acceptance 4 on one proxy: back within `sticky_for`, a publisher lands
/// where it was though round robin would pick the other server; after it,
/// the policy decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_back_within_sticky_for_returns_to_its_server() {
    let (a, b) = (Nginx::start(false).await, Nginx::start(false).await);
    let sticky_for = Duration::from_secs(3);
    let proxy = Proxy::start(&format!(
        "  sticky_for: 3s\n{}{}",
        quiet_checks(),
        statics(&[a.yaml(1), b.yaml(1)])
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = "stickyKey01";
    let first = Publisher::start(&url(proxy.listen, key), dir.path(), "first");
    let was = on(&[&a, &b], key).await;
    drop(first);
    ended(&proxy, &[&a, &b], key).await;

    let again = Publisher::start(&url(proxy.listen, key), dir.path(), "again");
    assert_eq!(on(&[&a, &b], key).await, was, "{}", proxy.log_text());
    let hit = r#"rtmp_proxy_sticky_total{result="hit"}"#;
    assert_eq!(proxy.metric(hit).await, 1.0);
    drop(again);
    ended(&proxy, &[&a, &b], key).await;

    // Past sticky_for: round robin's next pick, the other server.
    tokio::time::sleep(sticky_for + Duration::from_millis(500)).await;
    let _later = Publisher::start(&url(proxy.listen, key), dir.path(), "later");
    assert_eq!(on(&[&a, &b], key).await, 1 - was, "{}", proxy.log_text());
    assert_eq!(proxy.metric(hit).await, 1.0);
}

/// Acceptance 3, 4 and 5 across two proxies sharing Redis: a publisher is
/// sticky through the other proxy; a silent one is taken over from the
/// other proxy, on its server; and the full key is in no log, listing,
/// metric, status page or Redis key or value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_and_sticky_hold_across_proxies_and_no_key_leaks() {
    let redis = Redis::start();
    let (a, b) = (Nginx::start(false).await, Nginx::start(false).await);
    let config = |servers: &[&Nginx]| {
        format!(
            "  balance: first\n  slots:\n    store: redis\n    url: \"{}\"\n{}{}",
            redis.url(),
            quiet_checks(),
            statics(&servers.iter().map(|s| s.yaml(1)).collect::<Vec<_>>())
        )
    };
    // Each proxy's policy prefers another server.
    let p1 = Proxy::start(&config(&[&a, &b])).await;
    let p2 = Proxy::start(&config(&[&b, &a])).await;
    let dir = tempfile::tempdir().unwrap();

    let key = "stickyFleetKey1";
    let first = Publisher::start(&url(p1.listen, key), dir.path(), "first");
    assert!(a.wait_publishing(key, Duration::from_secs(20)).await);
    drop(first);
    ended(&p1, &[&a, &b], key).await;
    let again = Publisher::start(&url(p2.listen, key), dir.path(), "again");
    assert!(
        a.wait_publishing(key, Duration::from_secs(20)).await,
        "{}",
        p2.log_text()
    );
    assert_eq!(
        p2.metric(r#"rtmp_proxy_sticky_total{result="hit"}"#).await,
        1.0
    );
    drop(again);
    ended(&p2, &[&a, &b], key).await;

    // A silent publisher on p1 (server a), taken over through p2.
    let mut stale = p1.connect().await;
    assert!(publish_recorded(&mut stale).await, "{}", p1.log_text());
    let started = Instant::now();
    let _newcomer = Publisher::start(&url(p2.listen, RECORDED_KEY), dir.path(), "new");
    assert!(
        closed_within(&mut stale, Duration::from_secs(20)).await,
        "{}\n{}",
        p1.log_text(),
        p2.log_text()
    );
    let live = wait_until(Duration::from_secs(20), || {
        a.publishing(RECORDED_KEY) && a.stat().contains("<width>320</width>")
    })
    .await;
    eprintln!(
        "takeover across proxies: live again after {:?}",
        started.elapsed()
    );
    assert!(live, "{}", p2.log_text());
    assert!(!b.publishing(RECORDED_KEY));
    assert_eq!(p1.metric(&closed("takeover")).await, 1.0);
    let fleet = r#"rtmp_proxy_takeovers_total{scope="fleet"}"#;
    assert_eq!(p2.metric(fleet).await, 1.0);

    // Acceptance 5: only the hook ever sees a full key.
    let mut seen = String::new();
    for p in [&p1, &p2] {
        seen.push_str(&p.log_text());
        for path in ["/streams", "/metrics", "/status", "/"] {
            if let Ok((_, body)) = http_get(p.admin, path).await {
                seen.push_str(&body);
            }
        }
    }
    seen.push_str(&redis_dump(&redis));
    assert!(seen.contains(":sticky:") && seen.contains(":stream:"));
    for secret in [key, RECORDED_KEY] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

/// Every key in Redis and its value.
fn redis_dump(redis: &Redis) -> String {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut dump = String::new();
    for key in cli(&["--scan"]).lines() {
        dump.push_str(key);
        dump.push('\n');
        let value = match cli(&["TYPE", key]).trim() {
            "string" => cli(&["GET", key]),
            "zset" => cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            "hash" => cli(&["HGETALL", key]),
            "set" => cli(&["SMEMBERS", key]),
            other => format!("({other})"),
        };
        dump.push_str(&value);
    }
    dump
}
