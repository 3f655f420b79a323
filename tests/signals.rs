//! Signals other than the drain and upgrade ones, through the real binary:
//! none of them may cut a live stream, and SIGINT still leaves an `end`
//! record for every session it cuts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

/// A raw TCP proxy to one echoing backend, access log in `log`.
async fn proxy_with_log(backend: &Backend, log: &Path, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "  access_log: \"{}\"\n{extra}{RAW_TCP}  backends:\n    static:\n{}",
        log.display(),
        backend.yaml(10, 0)
    ))
    .await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The `end` records in an access log file.
fn ends(path: &Path) -> Vec<serde_json::Value> {
    read(path)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "end")
        .collect()
}

fn log_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stray_signals_leave_live_streams_and_the_process_alone() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let (_dir, log) = log_path();
    let mut proxy = proxy_with_log(&backend, &log, "").await;
    let (mut live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());
    for sig in ["HUP", "USR1", "USR2", "ALRM"] {
        proxy.signal(sig);
        let logged = wait_until(Duration::from_secs(5), || {
            proxy.log_text().contains(&format!("SIG{sig}"))
        })
        .await;
        assert!(logged, "SIG{sig} was not logged:\n{}", proxy.log_text());
        assert!(
            still_echoes(&mut live).await,
            "SIG{sig} cut the live stream:\n{}",
            proxy.log_text()
        );
        assert_eq!(
            proxy.exited_within(Duration::ZERO).await,
            None,
            "SIG{sig} ended the process"
        );
    }
    let (_new, tag) = tag_of_new_client(&proxy).await;
    assert!(
        tag.is_some(),
        "a new client after the signals was not served"
    );
    assert!(ends(&log).is_empty(), "a session ended: {}", read(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reopens_a_renamed_access_log() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let (dir, log) = log_path();
    let mut proxy = proxy_with_log(&backend, &log, "").await;
    let (first, _) = tag_of_new_client(&proxy).await;
    drop(first);
    assert!(wait_until(Duration::from_secs(10), || ends(&log).len() == 1).await);

    // logrotate: rename, then SIGHUP.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    proxy.signal("HUP");
    let reopened = wait_until(Duration::from_secs(5), || {
        proxy.log_text().contains("access log reopened")
    })
    .await;
    assert!(reopened, "{}", proxy.log_text());

    let (second, _) = tag_of_new_client(&proxy).await;
    drop(second);
    assert!(
        wait_until(Duration::from_secs(10), || ends(&log).len() == 1).await,
        "no record in the new file at the path:\n{}",
        proxy.log_text()
    );
    assert_eq!(ends(&rotated).len(), 1, "{}", read(&rotated));
    assert_eq!(proxy.exited_within(Duration::ZERO).await, None);
}

/// SIGINT exits now, and the live stream it cuts has its `end` record.
async fn sigint_cuts_with_an_end_record(proxy: &mut Proxy, log: &Path, live: &mut TcpStream) {
    proxy.signal("INT");
    assert_eq!(
        proxy.exited_within(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        proxy.log_text()
    );
    assert!(closed_within(live, Duration::from_secs(5)).await);
    let ends = ends(log);
    assert!(
        ends.iter().any(|e| e["reason"] == "shutdown_cut"),
        "no end record for the cut stream: {}\n{}",
        read(log),
        proxy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_while_serving_exits_and_logs_the_end_of_each_stream() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let (_dir, log) = log_path();
    let mut proxy = proxy_with_log(&backend, &log, "").await;
    let (mut live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());
    sigint_cuts_with_an_end_record(&mut proxy, &log, &mut live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_during_a_drain_exits_now_and_logs_the_end_of_each_stream() {
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let (_dir, log) = log_path();
    let mut proxy = proxy_with_log(&backend, &log, "  drain_delay: 200ms\n").await;
    let (mut live, tag) = tag_of_new_client(&proxy).await;
    assert!(tag.is_some());
    proxy.signal("TERM");
    // Past drain_delay: Pingora has closed the listener and stopped
    // watching signals; the drain runs on (drain_timeout is hours).
    let listen = proxy.listen;
    let closed = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(listen).is_err()
    })
    .await;
    assert!(closed, "the listener did not close");
    assert!(still_echoes(&mut live).await, "the drain cut the stream");
    sigint_cuts_with_an_end_record(&mut proxy, &log, &mut live).await;
}
