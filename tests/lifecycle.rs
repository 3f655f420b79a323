//! Binary upgrade and drain through the real binary: streams are never cut
//! by a deploy, slots stay exact across the handoff, processes exit when
//! their last stream ends.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The backends section, with [`RAW_TCP`]: these clients send no RTMP.
fn statics(lines: &[String]) -> String {
    format!("{RAW_TCP}  backends:\n    static:\n{}", lines.concat())
}

/// Writes the `write_random(_, seed)` stream at about 2 MB/s until `stop`,
/// then half-closes; returns how many bytes it wrote.
async fn stream_paced(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> usize {
    const CHUNK: usize = 64 * 1024;
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(32));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        rng.fill(&mut buf);
        w.write_all(&buf).await.expect("the stream was cut");
        sent += CHUNK;
    }
    w.shutdown().await.expect("half-close");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_runs_through_an_upgrade_and_the_old_process_exits_after_it() {
    let backend = Backend::start("b", Mode::Exchange { n: 0, seed: 1 }).await;
    let mut old = Proxy::start(&statics(&[backend.yaml(10, 1)])).await;

    let (mut rd, wr) = old.connect().await.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(stream_paced(wr, 9, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let new = old.upgrade().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        old.exited_within(Duration::ZERO).await.is_none(),
        "the old process left its stream"
    );
    stop.store(true, Ordering::SeqCst);
    let sent = writer.await.unwrap();
    let want = expected_hash(sent, 9);
    let ok = wait_until(Duration::from_secs(10), || {
        backend.stats.hashes.lock().unwrap().contains(&want)
    })
    .await;
    assert!(
        ok,
        "bytes lost or corrupted across the upgrade ({sent} sent)"
    );
    let mut rest = Vec::new();
    let _ = rd.read_to_end(&mut rest).await;
    drop(rd);

    assert_eq!(
        old.exited_within(Duration::from_secs(5)).await,
        Some(0),
        "{}",
        old.log_text()
    );
    let log = old.log_text();
    assert!(
        log.contains("upgrade started") && log.contains("drained; exiting"),
        "{log}"
    );
    // The new process serves.
    let (status, _) = http_get(new.health, "/health").await.unwrap();
    assert_eq!(status, 200);
    // A normal upgrade logs no error, and start-up no `service exited`
    // lines, though the tests run with `RUST_LOG=info`.
    for log in [old.log_text(), new.log_text()] {
        assert!(
            !log.contains("ERROR") && !log.contains("' exited."),
            "noise in a normal upgrade:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_connection_is_refused_or_reset_across_an_upgrade() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let old = Proxy::start(&statics(&[backend.yaml(10, 0)])).await;
    let listen = old.listen;
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let load = tokio::spawn(async move {
        let mut errors = Vec::new();
        for i in 0..300 {
            let started = Instant::now();
            match TcpStream::connect(listen).await {
                Ok(mut s) => {
                    if read_tag(&mut s, Duration::from_secs(10)).await.is_none() {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("#{i}: closed without an answer"));
                    }
                }
                Err(e) => {
                    f.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("#{i}: {e}"));
                }
            }
            // About 100 connections a second.
            tokio::time::sleep(Duration::from_millis(10).saturating_sub(started.elapsed())).await;
        }
        errors
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let new = old.upgrade().await;
    let errors = load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "{errors:?}\nold:\n{}\nnew:\n{}",
        old.log_text(),
        new.log_text()
    );
    // While both processes accepted, the old one passed its clients on.
    assert!(
        old.log_text().contains("passed to the new process"),
        "{}",
        old.log_text()
    );
    // The listening socket (one, shared by the `threads: 2`) went over.
    assert!(
        new.log_text()
            .contains("1 listening socket(s) taken over from the previous process"),
        "{}",
        new.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_held_by_the_old_process_stay_taken_after_an_upgrade() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let mut old = Proxy::start(&format!(
        "  queue_timeout: 20s\n  health_check:\n    interval: 60s\n{}",
        statics(&[a.yaml(10, 1), b.yaml(10, 1)])
    ))
    .await;
    let (mut held, held_tag) = tag_of_new_client(&old).await;
    let held_tag = held_tag.expect("first client served");

    let new = old.upgrade().await;
    let inherited: u64 = new
        .backends()
        .await
        .iter()
        .filter_map(|b| b["inherited"].as_u64())
        .sum();
    assert_eq!(inherited, 1, "{:?}", new.backends().await);

    let (_second, tag) = tag_of_new_client(&new).await;
    let other = if held_tag == "a" { "b" } else { "a" };
    assert_eq!(
        tag.as_deref(),
        Some(other),
        "the new process gave away the old stream's slot"
    );

    let mut third = new.connect().await;
    let early = read_tag(&mut third, Duration::from_millis(500)).await;
    assert_eq!(early, None, "the third client should wait in the queue");
    assert!(still_echoes(&mut held).await);
    drop(held);
    let tag = read_tag(&mut third, Duration::from_secs(10)).await;
    assert_eq!(
        tag.as_deref(),
        Some(held_tag.as_str()),
        "{}",
        new.log_text()
    );
    assert_eq!(old.exited_within(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_cutting_streams() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut proxy = Proxy::start_full(
        "grace_period_seconds: 1\n",
        &format!("  drain_delay: 2s\n{}", statics(&[backend.yaml(10, 0)])),
        &[],
    )
    .await;
    let (mut live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());

    proxy.signal("TERM");
    let health = proxy.health;
    let draining = wait_until(Duration::from_secs(1), || {
        http_get_blocking(health, "/health").is_ok_and(|(s, b)| s == 503 && b == "draining\n")
    })
    .await;
    assert!(draining, "/health did not say draining within 1 s");
    let (_during, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some(), "a client during drain_delay must be served");

    // Past drain_delay and Pingora's grace period: the listener is closed,
    // the stream is not.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = TcpStream::connect(proxy.listen).await;
    assert!(
        refused.is_err(),
        "the listener should be closed after drain_delay"
    );
    assert!(still_echoes(&mut live).await, "the live stream was cut");
    assert_eq!(proxy.exited_within(Duration::ZERO).await, None);

    drop(live);
    drop(_during);
    assert_eq!(
        proxy.exited_within(Duration::from_secs(3)).await,
        Some(0),
        "{}",
        proxy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_timeout_cuts_what_is_left_and_says_so() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut proxy = Proxy::start(&format!(
        "  drain_delay: 200ms\n  drain_timeout: 2s\n{}",
        statics(&[backend.yaml(10, 0)])
    ))
    .await;
    let (mut live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());
    proxy.signal("TERM");
    assert!(
        closed_within(&mut live, Duration::from_secs(10)).await,
        "the stream was never cut"
    );
    assert_eq!(proxy.exited_within(Duration::from_secs(5)).await, Some(0));
    let log = proxy.log_text();
    assert!(
        log.contains("drain_timeout reached: cutting 1 live stream"),
        "{log}"
    );
    assert!(log.contains("shutdown_cut"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigquit_without_a_new_process_is_ignored() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut proxy = Proxy::start(&statics(&[backend.yaml(10, 0)])).await;
    proxy.signal("QUIT");
    let logged = wait_until(Duration::from_secs(5), || {
        proxy.log_text().contains("SIGQUIT ignored")
    })
    .await;
    assert!(logged, "{}", proxy.log_text());
    assert_eq!(proxy.exited_within(Duration::from_secs(1)).await, None);
    let (_s, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_upgrades_in_a_row_leave_no_process_behind() {
    let a = Backend::start("a", Mode::TaggedEcho).await;
    let b = Backend::start("b", Mode::TaggedEcho).await;
    let c = Backend::start("c", Mode::TaggedEcho).await;
    let mut first = Proxy::start(&format!(
        "  health_check:\n    interval: 60s\n{}",
        statics(&[a.yaml(10, 1), b.yaml(10, 1), c.yaml(10, 1)])
    ))
    .await;
    let (mut s1, t1) = tag_of_new_client(&first).await;
    let mut second = first.upgrade().await;
    let (mut s2, t2) = tag_of_new_client(&second).await;
    let third = second.upgrade().await;
    // Both older streams still count in the newest process.
    let inherited: u64 = third
        .backends()
        .await
        .iter()
        .filter_map(|b| b["inherited"].as_u64())
        .sum();
    assert_eq!(
        inherited,
        2,
        "{:?}\n{}",
        third.backends().await,
        third.log_text()
    );
    let (_s3, t3) = tag_of_new_client(&third).await;
    let mut tags = vec![t1.unwrap(), t2.unwrap(), t3.unwrap()];
    tags.sort();
    assert_eq!(tags, ["a", "b", "c"], "each backend holds one stream");

    assert!(still_echoes(&mut s1).await && still_echoes(&mut s2).await);
    drop(s1);
    drop(s2);
    assert_eq!(
        first.exited_within(Duration::from_secs(5)).await,
        Some(0),
        "{}",
        first.log_text()
    );
    assert_eq!(
        second.exited_within(Duration::from_secs(5)).await,
        Some(0),
        "{}",
        second.log_text()
    );
    let freed = wait_until(Duration::from_secs(5), || {
        http_get_blocking(third.admin, "/backends")
            .is_ok_and(|(_, body)| !body.contains("\"inherited\": 1"))
    })
    .await;
    assert!(freed, "{:?}", third.backends().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upgrade_script_hands_over() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let mut old = Proxy::start(&statics(&[backend.yaml(10, 0)])).await;
    let (mut live, _) = tag_of_new_client(&old).await;
    let conf = old.dir.path().join("proxy.yaml");
    let log = old.dir.path().join("upgraded.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade");
    let out = tokio::process::Command::new(script)
        .args([conf.to_str().unwrap(), BIN])
        .env("LOG", &log)
        .output()
        .await
        .expect("run scripts/upgrade");
    let pid_file = old.dir.path().join("proxy.pid");
    let new_pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_default()
        .trim()
        .to_string();
    // The new process is the script's, not ours: stop it at the end.
    struct KillOnDrop(String);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0])
                .status();
        }
    }
    let _new = KillOnDrop(new_pid.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("New process {new_pid} serves")),
        "{stdout}"
    );
    assert_ne!(new_pid, old.pid().to_string());
    assert!(still_echoes(&mut live).await);
    drop(live);
    assert_eq!(
        old.exited_within(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        old.log_text()
    );
    let (_s, tag) = tag_of_new_client(&old).await;
    assert_eq!(
        tag.as_deref(),
        Some("b"),
        "the new process serves on the same port"
    );
}
