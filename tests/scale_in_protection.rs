//! ECS task scale-in protection, through the real binary: media servers
//! discovered from Cloud Map (moto) are protected through an ECS API double,
//! the proxy's own task through an ECS agent double (both in
//! `tests/common/ecs.rs`; moto does not implement task protection).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::ecs::{AgentDouble, EcsDouble, Fault};
use common::moto::{CloudMapService, Moto};
use common::redis::Redis;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER: &str = "media";
/// `release_after` in these tests.
const RELEASE_AFTER: Duration = Duration::from_secs(2);

struct Fleet {
    moto: Moto,
    svc: CloudMapService,
    ecs: EcsDouble,
}

async fn fleet() -> Fleet {
    let moto = Moto::start();
    let svc = moto.create_service("media.internal", "rtmp-server").await;
    let ecs = EcsDouble::start().await;
    Fleet { moto, svc, ecs }
}

/// Registers `backend` as ECS service discovery registers a task.
async fn register_task(svc: &CloudMapService, task: &str, backend: &Backend, max: usize) {
    let ip = backend.addr.ip().to_string();
    let port = backend.addr.port().to_string();
    let max = max.to_string();
    svc.register(
        task,
        &[
            ("AWS_INSTANCE_IPV4", ip.as_str()),
            ("AWS_INSTANCE_PORT", port.as_str()),
            ("ECS_CLUSTER_NAME", CLUSTER),
            ("max_connections", max.as_str()),
        ],
    )
    .await;
}

/// `proxy:` lines: Cloud Map discovery, `slots` as given, protection on
/// with `protection` extra lines (`endpoint: none` leaves it out).
fn config(f: &Fleet, slots: &str, protection: &str) -> String {
    let endpoint = if protection.contains("endpoint: none") {
        String::new()
    } else {
        format!("    endpoint: {}\n", f.ecs.endpoint())
    };
    let protection = protection.replace("    endpoint: none\n", "");
    let release_after = if protection.contains("release_after:") {
        String::new()
    } else {
        format!("    release_after: {}s\n", RELEASE_AFTER.as_secs())
    };
    format!(
        "{RAW_TCP}  health_check:\n    interval: 60s\n  backends:\n    cloud_map:\n      namespace: {}\n      service: {}\n      \
         region: us-east-1\n      endpoint: {}\n      refresh: 500ms\n{slots}  scale_in_protection:\n    enabled: true\n{endpoint}    \
         expires: 1m\n{release_after}{protection}",
        f.svc.namespace,
        f.svc.service,
        f.moto.endpoint(),
    )
}

fn redis_slots(redis: &Redis) -> String {
    format!(
        "  slots:\n    store: redis\n    url: \"{}\"\n    lease: 3s\n",
        redis.url()
    )
}

async fn wait_present(proxy: &Proxy, addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let list = proxy.backends().await;
        let all = addrs.iter().all(|a| {
            list.iter()
                .any(|b| b["addr"] == a.to_string() && b["present"] == true)
        });
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backends never discovered:\n{}", proxy.log_text());
}

/// A client through `proxy` that landed on the backend tagged `want`.
async fn client_on(proxy: &Proxy, want: &str) -> TcpStream {
    let (s, tag) = tag_of_new_client(proxy).await;
    assert_eq!(tag.as_deref(), Some(want), "{}", proxy.log_text());
    s
}

/// The stream still carries bytes both ways.
async fn echoes(s: &mut TcpStream) -> bool {
    let probe = b"still live";
    if s.write_all(probe).await.is_err() {
        return false;
    }
    let mut back = [0u8; 10];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && &back == probe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_server_is_protected_and_released_after_its_last_stream() {
    let redis = Redis::start();
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 2).await;
    let proxy =
        Proxy::start_with_env(&config(&f, &redis_slots(&redis), ""), &f.moto.child_env()).await;
    wait_present(&proxy, &[a.addr]).await;
    assert_eq!(proxy.backend_field(a.addr, "protected").await, false);
    assert!(f.ecs.calls().is_empty());

    // The first stream: one enable for that task within a second.
    let s1 = client_on(&proxy, "a").await;
    let started = Instant::now();
    let called = wait_until(Duration::from_secs(1), || {
        !f.ecs.updates_for("task-a").is_empty()
    })
    .await;
    assert!(called, "no call within 1 s:\n{}", proxy.log_text());
    let calls = f.ecs.updates_for("task-a");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    assert_eq!(
        (
            c.cluster.as_deref(),
            c.tasks.as_slice(),
            c.protection_enabled,
            c.expires_in_minutes
        ),
        (
            Some(CLUSTER),
            &["task-a".to_string()][..],
            Some(true),
            Some(1)
        ),
    );
    assert!(c.signed, "the SDK signs its calls");
    eprintln!(
        "protected {:?} after the stream started",
        c.at.saturating_duration_since(started)
    );
    let shown = wait_until(Duration::from_secs(2), || {
        http_get_blocking(proxy.admin, "/backends")
            .is_ok_and(|(_, b)| b.contains("\"protected\": true"))
    })
    .await;
    assert!(shown, "{:?}", proxy.backends().await);
    let until = proxy.backend_field(a.addr, "protected_until").await;
    assert!(until.as_str().is_some_and(|t| t.ends_with('Z')), "{until}");

    // A second stream on the same server: no call; the first one ends
    // while the second lives: still no call.
    let mut s2 = client_on(&proxy, "a").await;
    drop(s1);
    tokio::time::sleep(RELEASE_AFTER + Duration::from_millis(1500)).await;
    assert_eq!(
        f.ecs.updates_for("task-a").len(),
        1,
        "a call while a second stream uses the server:\n{}",
        proxy.log_text()
    );
    assert!(echoes(&mut s2).await);

    // The last stream ends: released after release_after.
    drop(s2);
    let ended = Instant::now();
    let released = wait_until(RELEASE_AFTER + Duration::from_secs(3), || {
        !f.ecs.accepted("task-a", false).is_empty()
    })
    .await;
    assert!(released, "never released:\n{}", proxy.log_text());
    let after = f.ecs.accepted("task-a", false)[0].at - ended;
    eprintln!("released {after:?} after the last stream ended");
    assert!(
        after >= RELEASE_AFTER && after <= RELEASE_AFTER + Duration::from_millis(1500),
        "released {after:?} after the end"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.ecs.updates_for("task-a").len(), 2);
    assert!(!f.ecs.is_protected("task-a"));
    assert_eq!(proxy.backend_field(a.addr, "protected").await, false);
    assert_eq!(
        proxy.backend_field(a.addr, "protected_until").await,
        serde_json::Value::Null
    );
    assert_eq!(
        proxy
            .metric("rtmp_proxy_scale_in_protection_calls_total{result=\"ok\",target=\"media\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_proxys_stream_holds_the_release() {
    let redis = Redis::start();
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 2).await;
    let conf = config(&f, &redis_slots(&redis), "");
    let p1 = Proxy::start_with_env(&conf, &f.moto.child_env()).await;
    let p2 = Proxy::start_with_env(&conf, &f.moto.child_env()).await;
    wait_present(&p1, &[a.addr]).await;
    wait_present(&p2, &[a.addr]).await;

    let s1 = client_on(&p1, "a").await;
    assert!(
        wait_until(Duration::from_secs(1), || f
            .ecs
            .accepted("task-a", true)
            .len()
            == 1)
        .await
    );
    // Each proxy protects the servers it streams to itself.
    let mut s2 = client_on(&p2, "a").await;
    assert!(
        wait_until(Duration::from_secs(1), || f
            .ecs
            .accepted("task-a", true)
            .len()
            == 2)
        .await
    );

    // p1's stream ends; p2's lives on: nobody releases the server.
    drop(s1);
    tokio::time::sleep(RELEASE_AFTER + Duration::from_secs(3)).await;
    assert!(
        f.ecs.accepted("task-a", false).is_empty(),
        "released while another proxy streams to it:\n{}",
        p1.log_text()
    );
    assert!(f.ecs.is_protected("task-a"));
    assert!(echoes(&mut s2).await);

    // The last stream in the fleet ends: released.
    drop(s2);
    let ended = Instant::now();
    assert!(
        wait_until(RELEASE_AFTER + Duration::from_secs(3), || {
            !f.ecs.accepted("task-a", false).is_empty()
        })
        .await,
        "never released:\n{}\n{}",
        p1.log_text(),
        p2.log_text()
    );
    assert!(f.ecs.accepted("task-a", false)[0].at - ended >= RELEASE_AFTER);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.ecs.accepted("task-a", true).len(), 2, "no enable after");
    assert!(!f.ecs.is_protected("task-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_proxy_releases_idle_servers_before_it_exits() {
    let redis = Redis::start();
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 1).await;
    register_task(&f.svc, "task-b", &b, 1).await;
    // release_after longer than the test: only the exit releases.
    let conf = config(
        &f,
        &format!("  drain_delay: 500ms\n{}", redis_slots(&redis)),
        "    release_after: 60s\n",
    );
    let mut p1 = Proxy::start_with_env(&conf, &f.moto.child_env()).await;
    let p2 = Proxy::start_with_env(&conf, &f.moto.child_env()).await;
    wait_present(&p1, &[a.addr, b.addr]).await;
    wait_present(&p2, &[a.addr, b.addr]).await;
    let task = |tag: &str| format!("task-{tag}");

    // p1 streams to both servers; then one of its streams ends and p2
    // takes that server: p1 has protected it, p2 streams to it.
    let (s1, x) = tag_of_new_client(&p1).await;
    let (s2, y) = tag_of_new_client(&p1).await;
    let (x, y) = (x.expect("served"), y.expect("served"));
    assert!(
        wait_until(Duration::from_secs(2), || {
            f.ecs.is_protected(&task(&x)) && f.ecs.is_protected(&task(&y))
        })
        .await
    );
    drop(s2);
    let mut s3 = client_on(&p2, &y).await;
    // p2's lease is in Redis and p1 has read it.
    assert!(
        wait_until(Duration::from_secs(3), || {
            http_get_blocking(p1.admin, "/backends").is_ok_and(|(_, body)| {
                serde_json::from_str::<Vec<serde_json::Value>>(&body).is_ok_and(|l| {
                    l.iter()
                        .any(|e| e["source"] == task(&y) && e["remote"] == 1)
                })
            })
        })
        .await
    );

    // p1 drains and exits when its last stream ends: it releases the
    // server nobody uses, not the one p2 streams to.
    p1.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s1);
    assert_eq!(p1.exited_within(Duration::from_secs(10)).await, Some(0));
    assert_eq!(
        f.ecs.accepted(&task(&x), false).len(),
        1,
        "{:?}\n{}",
        f.ecs.calls(),
        p1.log_text()
    );
    assert!(f.ecs.accepted(&task(&y), false).is_empty());
    assert!(f.ecs.is_protected(&task(&y)));
    assert!(echoes(&mut s3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_local_store_protection_is_left_to_expire() {
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 1).await;
    let proxy = Proxy::start_with_env(&config(&f, "", ""), &f.moto.child_env()).await;
    wait_present(&proxy, &[a.addr]).await;
    assert!(proxy.log_text().contains("never released, left to expire"));

    let s1 = client_on(&proxy, "a").await;
    assert!(
        wait_until(Duration::from_secs(1), || f
            .ecs
            .accepted("task-a", true)
            .len()
            == 1)
        .await
    );
    drop(s1);
    tokio::time::sleep(RELEASE_AFTER + Duration::from_secs(2)).await;
    // Other proxies' streams are unknown here: never released.
    assert_eq!(f.ecs.updates_for("task-a").len(), 1, "{:?}", f.ecs.calls());
    assert!(f.ecs.is_protected("task-a"));
    assert_eq!(proxy.backend_field(a.addr, "protected").await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protection_is_renewed_while_a_stream_lives() {
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 1).await;
    // The endpoint from the SDK's environment variable this time.
    let mut env = f.moto.child_env();
    env.push(("AWS_ENDPOINT_URL_ECS", f.ecs.endpoint()));
    let proxy = Proxy::start_with_env(
        &config(&f, "", "    endpoint: none\n    renew_every: 1s\n"),
        &env,
    )
    .await;
    wait_present(&proxy, &[a.addr]).await;

    let mut s1 = client_on(&proxy, "a").await;
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let enables = f.ecs.accepted("task-a", true);
    assert!(enables.len() >= 3, "{enables:?}\n{}", proxy.log_text());
    for pair in enables.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900) && gap <= Duration::from_millis(1800),
            "renewed {gap:?} apart"
        );
    }
    assert!(echoes(&mut s1).await);

    // No renewal once the stream is gone.
    drop(s1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = f.ecs.updates_for("task-a").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(f.ecs.updates_for("task-a").len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_failures_leave_streams_alone_and_are_logged_once() {
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 1).await;
    register_task(&f.svc, "task-b", &b, 1).await;
    let proxy = Proxy::start_with_env(&config(&f, "", ""), &f.moto.child_env()).await;
    wait_present(&proxy, &[a.addr, b.addr]).await;

    f.ecs.fail_next(2, Fault::Throttling);
    f.ecs.fail_next(2, Fault::AccessDenied);
    let (mut s1, t1) = tag_of_new_client(&proxy).await;
    let t1 = t1.expect("first client served");
    let faulted = |n: usize| f.ecs.calls().iter().filter(|c| c.fault.is_some()).count() >= n;
    assert!(wait_until(Duration::from_secs(2), || faulted(1)).await);

    // While the API fails: the live stream flows, a new client is served.
    assert!(echoes(&mut s1).await);
    let (mut s2, t2) = tag_of_new_client(&proxy).await;
    assert!(t2.is_some(), "{}", proxy.log_text());
    assert!(echoes(&mut s1).await && echoes(&mut s2).await);

    // Backoff, then success: both servers end up protected.
    assert!(
        wait_until(Duration::from_secs(15), || faulted(4)
            && f.ecs.is_protected("task-a")
            && f.ecs.is_protected("task-b")
            && proxy.log_text().contains("calls succeed again"))
        .await,
        "{:?}\n{}",
        f.ecs.calls(),
        proxy.log_text()
    );
    assert!(echoes(&mut s1).await && echoes(&mut s2).await);
    let log = proxy.log_text();
    assert_eq!(
        log.matches("scale-in protection (media) failing").count(),
        2,
        "one line per kind of failure:\n{log}"
    );
    assert_eq!(
        log.matches("ThrottlingException: Rate exceeded").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("AccessDeniedException").count(), 1, "{log}");
    assert_eq!(log.matches("calls succeed again").count(), 1, "{log}");
    let metric = |result: &str| {
        format!(
            "rtmp_proxy_scale_in_protection_calls_total{{result=\"{result}\",target=\"media\"}}"
        )
    };
    assert!(proxy.metric(&metric("throttled")).await >= 1.0);
    assert!(proxy.metric(&metric("access_denied")).await >= 1.0);
    assert!(proxy.metric(&metric("ok")).await >= 1.0);
    assert_eq!(proxy.metric(&metric("error")).await, 0.0);
    for addr in [a.addr, b.addr] {
        let shown = wait_until(Duration::from_secs(2), || {
            http_get_blocking(proxy.admin, "/backends").is_ok_and(|(_, body)| {
                serde_json::from_str::<Vec<serde_json::Value>>(&body).is_ok_and(|l| {
                    l.iter()
                        .any(|x| x["addr"] == addr.to_string() && x["protected"] == true)
                })
            })
        })
        .await;
        assert!(shown, "{t1}: {:?}", proxy.backends().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_ecs_refuses_is_reported_once_and_streams_run_on() {
    let f = fleet().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    register_task(&f.svc, "task-a", &a, 1).await;
    f.ecs.stop_task("task-a");
    let proxy = Proxy::start_with_env(&config(&f, "", ""), &f.moto.child_env()).await;
    wait_present(&proxy, &[a.addr]).await;

    let mut s1 = client_on(&proxy, "a").await;
    assert!(wait_until(Duration::from_secs(1), || !f.ecs.calls().is_empty()).await);
    // Not retried before renew_every (30 s here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(f.ecs.calls().len(), 1);
    assert!(echoes(&mut s1).await);
    let log = proxy.log_text();
    assert_eq!(log.matches("ECS refused").count(), 1, "{log}");
    assert!(log.contains("task-a") && log.contains("MISSING"), "{log}");
    assert_eq!(
        proxy
            .metric(
                "rtmp_proxy_scale_in_protection_calls_total{result=\"task_failure\",target=\"media\"}"
            )
            .await,
        1.0
    );
    assert_eq!(proxy.backend_field(a.addr, "protected").await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxys_own_task_is_protected_while_it_holds_streams() {
    let agent = AgentDouble::start().await;
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let env = [
        ("ECS_AGENT_URI", agent.uri("proxy-task-1")),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let mut proxy = Proxy::start_with_env(
        &format!(
            "{RAW_TCP}  drain_delay: 3s\n  scale_in_protection:\n    enabled: true\n    expires: 1m\n    \
             release_after: {}s\n  backends:\n    static:\n{}",
            RELEASE_AFTER.as_secs(),
            a.yaml(10, 0)
        ),
        &env,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(agent.puts().is_empty(), "idle: no call");

    // A stream: protected within a second, through the agent URI's path.
    let s1 = client_on(&proxy, "a").await;
    assert!(
        wait_until(Duration::from_secs(1), || agent.puts().len() == 1).await,
        "{}",
        proxy.log_text()
    );
    let put = &agent.puts()[0];
    assert_eq!(put.path, "/api/proxy-task-1/task-protection/v1/state");
    assert_eq!(
        put.body,
        serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": 1})
    );
    let gauge = "rtmp_proxy_scale_in_protected_tasks{target=\"self\"}";
    assert!(
        wait_until(Duration::from_secs(1), || {
            http_get_blocking(proxy.admin, "/metrics")
                .is_ok_and(|(_, m)| m.contains(&format!("{gauge} 1")))
        })
        .await
    );

    // Idle for release_after: released.
    drop(s1);
    let ended = Instant::now();
    assert!(
        wait_until(RELEASE_AFTER + Duration::from_secs(2), || agent
            .puts()
            .len()
            == 2)
        .await
    );
    let put = &agent.puts()[1];
    assert_eq!(put.body, serde_json::json!({"ProtectionEnabled": false}));
    assert!(put.at - ended >= RELEASE_AFTER);

    // Busy again, then SIGTERM: released at once while the stream drains.
    let mut s2 = client_on(&proxy, "a").await;
    assert!(wait_until(Duration::from_secs(1), || agent.puts().len() == 3).await);
    assert_eq!(agent.puts()[2].enabled(), Some(true));
    proxy.signal("TERM");
    let term = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || agent.puts().len() == 4).await,
        "{}",
        proxy.log_text()
    );
    assert_eq!(agent.puts()[3].enabled(), Some(false));
    eprintln!("released {:?} after SIGTERM", agent.puts()[3].at - term);
    assert!(echoes(&mut s2).await, "the draining stream flows");
    assert_eq!(
        proxy
            .metric("rtmp_proxy_scale_in_protection_calls_total{result=\"ok\",target=\"self\"}")
            .await,
        4.0
    );
    assert!(proxy
        .log_text()
        .contains("off for this proxy's task: draining"));

    drop(s2);
    assert_eq!(proxy.exited_within(Duration::from_secs(10)).await, Some(0));
    assert_eq!(agent.puts().len(), 4);
}
