//! Capacity through the real binary: exact per-backend caps under a burst of
//! clients, the balancing policies, the global cap, and a queued client that
//! leaves. The plain queue (served on release, timed out, full) is tested
//! in-process (`tests/in_process.rs`).
//!
//! Health checks run once at start-up and then every 60 s, so that nothing
//! but a freed slot can wake the queue and backends count only clients once
//! the start-up check has been seen ([`start_checked`]).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that no periodic check runs during a test. The start-up
/// check gets a generous timeout: on a loaded machine a starved proxy could
/// otherwise time out a loopback connect and keep a backend down for 60 s.
const NO_CHECKS: &str = "  health_check:\n    interval: 60s\n    timeout: 10s\n";

/// The backends section, with [`RAW_TCP`]: these clients send no RTMP.
fn statics(lines: &[String]) -> String {
    format!("{RAW_TCP}  backends:\n    static:\n{}", lines.concat())
}

/// Starts the proxy with `extra` and waits until the start-up health check
/// has connected to every backend and gone: from then on, with
/// [`NO_CHECKS`], a backend's `accepted()` moves only for clients.
async fn start_checked(extra: &str, backends: &[&Backend]) -> Proxy {
    let proxy = Proxy::start(extra).await;
    let checked = wait_until(Duration::from_secs(10), || {
        backends
            .iter()
            .all(|b| b.accepted() >= 1 && b.current() == 0)
    })
    .await;
    assert!(
        checked,
        "start-up health check not seen on every backend:\n{}",
        proxy.log_text()
    );
    proxy
}

/// The log without per-connection lines: start-up, health changes,
/// rejections, warnings. Short enough for a failure message.
fn notable(proxy: &Proxy) -> String {
    proxy
        .log_text()
        .lines()
        .filter(|l| !l.contains(r#""event":"end""#))
        .collect::<Vec<_>>()
        .join("\n")
}

fn accepted_sum(backends: &[&Backend]) -> usize {
    backends.iter().map(|b| b.accepted()).sum()
}

/// True when nothing arrives on `s` (and it stays open) for `d`.
async fn nothing_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(d, s.read(&mut b)).await.is_err()
}

/// The shared `queued` value of a `/backends` answer (every element
/// carries the same one).
fn queued(list: &[Value]) -> u64 {
    let values: Vec<u64> = list.iter().map(|b| b["queued"].as_u64().unwrap()).collect();
    assert!(!values.is_empty(), "no backends listed");
    assert!(
        values.iter().all(|&v| v == values[0]),
        "queued differs between elements: {values:?}"
    );
    values[0]
}

/// The backend at `addr` in a `/backends` answer.
fn entry(list: &[Value], addr: SocketAddr) -> &Value {
    list.iter()
        .find(|b| b["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in /backends: {list:?}"))
}

/// Polls `/backends` every 20 ms until `ok` holds or `limit` passes;
/// returns whether it held and the last answer.
async fn poll_backends(
    proxy: &Proxy,
    limit: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> (bool, Vec<Value>) {
    let deadline = Instant::now() + limit;
    loop {
        let list = proxy.backends().await;
        if ok(&list) {
            return (true, list);
        }
        if Instant::now() >= deadline {
            return (false, list);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the proxy shows `n` queued clients.
async fn assert_queued(proxy: &Proxy, n: u64) {
    let (ok, list) = poll_backends(proxy, Duration::from_secs(5), |l| queued(l) == n).await;
    assert!(
        ok,
        "expected {n} queued, /backends: {list:#?}\nlog:\n{}",
        notable(proxy)
    );
}

/// Sum of `rtmp_proxy_connections_rejected_total` over all reasons, and the
/// lines it came from.
async fn rejected_total(proxy: &Proxy) -> (f64, Vec<String>) {
    let (status, body) = http_get(proxy.admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    let lines: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("rtmp_proxy_connections_rejected_total{"))
        .map(str::to_string)
        .collect();
    let sum = lines
        .iter()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("bad metric line {l:?}"))
        })
        .sum();
    (sum, lines)
}

/// What a client got from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A backend's `name\n` tag.
    Served(String),
    /// EOF or reset before any byte.
    Closed,
    /// Bytes without a tag, or nothing at all within the limit.
    Odd(String),
}

async fn outcome(s: &mut TcpStream, limit: Duration) -> Outcome {
    let mut got = Vec::new();
    let read = async {
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b).await {
                Ok(1) if b[0] == b'\n' => {
                    return Outcome::Served(String::from_utf8_lossy(&got).into_owned())
                }
                Ok(1) => got.push(b[0]),
                Ok(_) | Err(_) if got.is_empty() => return Outcome::Closed,
                Ok(_) | Err(_) => {
                    return Outcome::Odd(format!(
                        "closed after {:?}",
                        String::from_utf8_lossy(&got)
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(o) => o,
        Err(_) => Outcome::Odd(format!("nothing within {limit:?}")),
    }
}

/// Two backends of one slot each, both taken by clients A and B.
struct FullPair {
    proxy: Proxy,
    a: Backend,
    b: Backend,
    first: (TcpStream, String),
    second: (TcpStream, String),
}

async fn full_pair(extra: &str) -> FullPair {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = start_checked(
        &format!(
            "{extra}{NO_CHECKS}{}",
            statics(&[a.yaml(10, 1), b.yaml(10, 1)])
        ),
        &[&a, &b],
    )
    .await;
    let (s1, t1) = tag_of_new_client(&proxy).await;
    let (s2, t2) = tag_of_new_client(&proxy).await;
    let (Some(t1), Some(t2)) = (t1.clone(), t2.clone()) else {
        panic!(
            "A and B should both be served, got {t1:?} and {t2:?}; /backends: {:#?}\nlog:\n{}",
            proxy.backends().await,
            proxy.log_text()
        );
    };
    assert_ne!(t1, t2, "A and B on the same one-slot backend");
    FullPair {
        proxy,
        a,
        b,
        first: (s1, t1),
        second: (s2, t2),
    }
}

/// A queued client stops being read at 64 KiB (the rest stays in its
/// socket); if it then leaves, the proxy must still notice and drop it
/// from the queue, rather than give it a backend when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_clients_that_sent_over_64_kib_and_left_get_no_backend() {
    const DEPARTED: usize = 20;
    // Over the 64 KiB the proxy keeps, yet small enough for the rest to
    // fit in the socket buffers, so that the client's FIN is sent.
    const SENT: usize = 80 * 1024;
    let FullPair {
        proxy,
        a,
        b,
        first: (client_a, tag_a),
        second,
    } = full_pair("  queue_timeout: 60s\n").await;
    let before = accepted_sum(&[&a, &b]);

    let chunk = vec![7u8; SENT];
    let mut departed = Vec::with_capacity(DEPARTED);
    for _ in 0..DEPARTED {
        let mut c = proxy.connect().await;
        let sent = tokio::time::timeout(Duration::from_secs(10), c.write_all(&chunk)).await;
        assert!(
            matches!(sent, Ok(Ok(()))),
            "a queued client could not send {SENT} bytes: {sent:?}"
        );
        departed.push(c);
    }
    assert_queued(&proxy, DEPARTED as u64).await;
    drop(departed);
    assert_queued(&proxy, 0).await;
    assert_eq!(
        proxy
            .metric("rtmp_proxy_connections_rejected_total{reason=\"client_left\"}")
            .await,
        DEPARTED as f64
    );

    // The freed slot goes to the next live client, and no backend ever saw
    // one of the departed.
    drop(client_a);
    let (_d, tag_d) = tag_of_new_client(&proxy).await;
    assert_eq!(
        tag_d.as_deref(),
        Some(tag_a.as_str()),
        "a new client should get A's freed slot; log:\n{}",
        notable(&proxy)
    );
    assert_eq!(
        accepted_sum(&[&a, &b]),
        before + 1,
        "departed queued clients reached a backend"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_never_overshoot_a_cap() {
    const CLIENTS: usize = 200;
    let backends = [
        Backend::start("b0", Mode::TaggedEcho).await,
        Backend::start("b1", Mode::TaggedEcho).await,
        Backend::start("b2", Mode::TaggedEcho).await,
        Backend::start("b3", Mode::TaggedEcho).await,
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let lines: Vec<String> = backends.iter().map(|b| b.yaml(10, 2)).collect();
    let proxy = Arc::new(
        start_checked(
            &format!(
                "  max_queue: 1024\n  queue_timeout: 3s\n{NO_CHECKS}{}",
                statics(&lines)
            ),
            &refs,
        )
        .await,
    );

    // Hold times 0..150 ms, deterministic.
    let mut rng = Prng::new(0x5eed);
    let holds: Vec<Duration> = (0..CLIENTS)
        .map(|_| {
            let mut b = [0u8; 8];
            rng.fill(&mut b);
            Duration::from_millis(u64::from_le_bytes(b) % 150)
        })
        .collect();

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = holds
        .into_iter()
        .map(|hold| {
            let (proxy, gate) = (proxy.clone(), gate.clone());
            tokio::spawn(async move {
                gate.wait().await;
                let mut s = proxy.connect().await;
                let got = outcome(&mut s, Duration::from_secs(10)).await;
                if matches!(got, Outcome::Served(_)) {
                    tokio::time::sleep(hold).await;
                }
                got
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task"));
    }
    eprintln!("{CLIENTS} clients done in {:?}", started.elapsed());

    let odd: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Odd(_)))
        .collect();
    assert!(
        odd.is_empty(),
        "clients neither served nor closed: {odd:?}\nlog:\n{}",
        notable(&proxy)
    );
    let mut per_tag: HashMap<String, usize> = HashMap::new();
    for o in &outcomes {
        if let Outcome::Served(tag) = o {
            *per_tag.entry(tag.clone()).or_default() += 1;
        }
    }
    let served: usize = per_tag.values().sum();
    let (rejected, lines) = rejected_total(&proxy).await;
    eprintln!("served {served} {per_tag:?}, rejected {lines:?}");
    assert_eq!(
        served as f64 + rejected,
        CLIENTS as f64,
        "served {served} + rejected {rejected} ({lines:?})"
    );
    assert_eq!(
        proxy.metric("rtmp_proxy_connections_served_total").await,
        served as f64
    );
    for b in &backends {
        assert!(
            b.peak() <= 2,
            "backend {} had {} connections at once\nlog:\n{}",
            b.name,
            b.peak(),
            notable(&proxy)
        );
        // 200 clients at once on 8 slots: every backend was full.
        assert_eq!(b.peak(), 2, "backend {} was never full", b.name);
    }

    let (idle, list) = poll_backends(&proxy, Duration::from_secs(10), |l| {
        queued(l) == 0 && l.iter().all(|b| b["active"] == 0)
    })
    .await;
    assert!(idle, "slots or queue not released: {list:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leastconn_sends_new_clients_to_the_less_loaded_backend() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = start_checked(
        &format!(
            "  balance: leastconn\n{NO_CHECKS}{}",
            statics(&[a.yaml(10, 0), b.yaml(10, 0)])
        ),
        &[&a, &b],
    )
    .await;

    // Three connections on X, the backend of the first client. Leastconn
    // alternates, so the others are held too (a closed one would leave its
    // backend idle and win every next pick) and closed once X has three.
    let mut on_x = Vec::new();
    let mut others = Vec::new();
    let mut x = None;
    for _ in 0..20 {
        let (s, tag) = tag_of_new_client(&proxy).await;
        let tag = tag.unwrap_or_else(|| panic!("client not served; log:\n{}", notable(&proxy)));
        if x.get_or_insert_with(|| tag.clone()) == &tag {
            on_x.push(s);
            if on_x.len() == 3 {
                break;
            }
        } else {
            others.push(s);
        }
    }
    assert_eq!(on_x.len(), 3, "could not place 3 clients on one backend");
    let x = x.unwrap();
    let (x_addr, y_addr, y) = if x == "a" {
        (a.addr, b.addr, "b")
    } else {
        (b.addr, a.addr, "a")
    };
    drop(others);
    let (settled, list) = poll_backends(&proxy, Duration::from_secs(5), |l| {
        entry(l, x_addr)["active"] == 3 && entry(l, y_addr)["active"] == 0
    })
    .await;
    assert!(settled, "expected 3 on {x} and 0 on {y}: {list:#?}");

    let mut held = Vec::new();
    for i in 0..3 {
        let (s, tag) = tag_of_new_client(&proxy).await;
        assert_eq!(
            tag.as_deref(),
            Some(y),
            "client {i} after the three on {x}; log:\n{}",
            notable(&proxy)
        );
        held.push(s);
    }
    let list = proxy.backends().await;
    assert_eq!(entry(&list, x_addr)["active"], 3, "{list:#?}");
    assert_eq!(entry(&list, y_addr)["active"], 3, "{list:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_fills_backends_in_config_order() {
    let one = Backend::start("one", Mode::TaggedEcho).await;
    let two = Backend::start("two", Mode::TaggedEcho).await;
    let three = Backend::start("three", Mode::TaggedEcho).await;
    let proxy = start_checked(
        &format!(
            "  balance: first\n{NO_CHECKS}{}",
            statics(&[one.yaml(10, 2), two.yaml(10, 2), three.yaml(10, 2)])
        ),
        &[&one, &two, &three],
    )
    .await;
    let third_before = three.accepted();

    let mut held = Vec::new();
    let mut tags = Vec::new();
    for _ in 0..4 {
        let (s, tag) = tag_of_new_client(&proxy).await;
        tags.push(tag.unwrap_or_default());
        held.push(s);
    }
    assert_eq!(
        tags,
        ["one", "one", "two", "two"],
        "log:\n{}",
        notable(&proxy)
    );
    assert_eq!(
        three.accepted(),
        third_before,
        "the third backend got a client"
    );
    let list = proxy.backends().await;
    let active: Vec<&Value> = [one.addr, two.addr, three.addr]
        .iter()
        .map(|&addr| &entry(&list, addr)["active"])
        .collect();
    assert_eq!(active, [2, 2, 0], "{list:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_spreads_evenly() {
    const N: usize = 1000;
    let backends = [
        Backend::start("p", Mode::TaggedEcho).await,
        Backend::start("q", Mode::TaggedEcho).await,
        Backend::start("r", Mode::TaggedEcho).await,
        Backend::start("s", Mode::TaggedEcho).await,
    ];
    let lines: Vec<String> = backends.iter().map(|b| b.yaml(10, 0)).collect();
    let proxy = Proxy::start(&format!(
        "  balance: random\n{NO_CHECKS}{}",
        statics(&lines)
    ))
    .await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..N {
        let (s, tag) = tag_of_new_client(&proxy).await;
        drop(s);
        let tag = tag.unwrap_or_else(|| panic!("client {i} not served; log:\n{}", notable(&proxy)));
        *counts.entry(tag).or_default() += 1;
    }
    eprintln!("random over {N}: {counts:?}");
    // Each count is Binomial(1000, 1/4): mean 250, deviation 13.7. 150 to
    // 350 is more than 7 deviations either way, so a fair pick fails this
    // about once in 10^12 runs, while a backend never picked, or picked
    // half as often (125) or twice as often (500) as its share, fails it.
    for b in &backends {
        let n = counts.get(&b.name).copied().unwrap_or(0);
        assert!(
            (150..=350).contains(&n),
            "backend {} got {n} of {N}: {counts:?}\nlog:\n{}",
            b.name,
            notable(&proxy)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_cap_queues_clients_with_free_backends() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = start_checked(
        &format!(
            "  max_connections: 1\n  queue_timeout: 5s\n{NO_CHECKS}{}",
            statics(&[a.yaml(10, 0), b.yaml(10, 0)])
        ),
        &[&a, &b],
    )
    .await;

    let (first, tag) = tag_of_new_client(&proxy).await;
    assert!(
        tag.is_some(),
        "first client not served; log:\n{}",
        notable(&proxy)
    );
    let before = accepted_sum(&[&a, &b]);

    let mut second = proxy.connect().await;
    assert!(
        nothing_within(&mut second, Duration::from_millis(300)).await,
        "the second client got an answer over the global cap"
    );
    assert_queued(&proxy, 1).await;
    assert_eq!(
        accepted_sum(&[&a, &b]),
        before,
        "a backend saw the second client"
    );

    drop(first);
    let tag = read_tag(&mut second, Duration::from_secs(5)).await;
    assert!(
        tag.is_some(),
        "second client not served after the first left; log:\n{}",
        proxy.log_text()
    );
    assert_queued(&proxy, 0).await;
}
