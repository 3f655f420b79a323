//! Memory through the real binary: what a burst took is given back once
//! the burst is over, so a small container does not pay for it for good.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_a_burst_took_is_given_back_after_it() {
    const CLIENTS: usize = 800;
    // Under MAX_PENDING (64 KiB): every byte is read and kept for the backend.
    const SENT: usize = 60_000;
    let backend = Backend::start("b", Mode::TaggedEcho).await;
    let proxy = Proxy::start(&format!(
        "{RAW_TCP}  queue_timeout: 120s\n  max_queue: 2000\n  backends:\n    static:\n{}",
        backend.yaml(10, 1)
    ))
    .await;
    let fresh = rss_kib(proxy.pid());

    // The only slot, taken; then a queue of clients that each sent 60 KB.
    let mut holder = proxy.connect().await;
    let mut tag = [0u8; 2];
    holder.read_exact(&mut tag).await.expect("served");
    let mut queued = Vec::with_capacity(CLIENTS);
    let chunk = vec![7u8; SENT];
    for _ in 0..CLIENTS {
        let mut c = proxy.connect().await;
        c.write_all(&chunk).await.expect("write while queued");
        queued.push(c);
    }
    let mut during = 0;
    let grew = wait_until(Duration::from_secs(60), || {
        during = rss_kib(proxy.pid());
        during > fresh + 20 * 1024
    })
    .await;
    assert!(
        grew,
        "the burst never showed in RSS ({fresh} KiB fresh, {during} KiB with the queue): \
         the test would prove nothing"
    );

    drop(queued);
    drop(holder);
    let mut after = 0;
    let given_back = wait_until(Duration::from_secs(60), || {
        after = rss_kib(proxy.pid());
        after < fresh + 8 * 1024
    })
    .await;
    assert!(
        given_back,
        "RSS {fresh} KiB fresh, {during} KiB during the burst, still {after} KiB after it"
    );
}
