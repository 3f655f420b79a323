//! The slot queue with the proxy running inside the test process
//! (`Core::standalone` and `proxy::listener::run`): no binary, no Pingora,
//! no health checks; real loopback TCP clients and backends. What the
//! process around the proxy adds (signals, upgrades, HTTP) is tested
//! through the binary elsewhere.
//!
//! Every wait is bounded. Metrics are global to the test process, so these
//! tests read each proxy's own access log instead.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rtmp_proxy::core::Core;
use rtmp_proxy::proxy::edge::Edge;
use rtmp_proxy::proxy::listener;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A proxy on a loopback port of this process, stopped on drop.
struct InProcess {
    core: Arc<Core>,
    addr: std::net::SocketAddr,
    dir: TempDir,
    _stop: oneshot::Sender<()>,
}

impl InProcess {
    async fn start(extra: &str, backends: &[&Backend]) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let statics: String = backends.iter().map(|b| b.yaml(10, 1)).collect();
        let yaml = format!(
            "proxy:\n{RAW_TCP}{extra}  access_log: {log:?}\n  backends:\n    static:\n{statics}"
        );
        let config = rtmp_proxy::config::parse(&yaml).expect("config");
        let core = Core::standalone(&config, |why| panic!("the proxy asked to exit: {why:?}"))
            .expect("core");
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let edge = Arc::new(Edge::plain("proxy.listen"));
        tokio::spawn(listener::run(socket, core.clone(), edge, async {
            let _ = stopped.await;
        }));
        InProcess {
            core,
            addr,
            dir,
            _stop: stop,
        }
    }

    async fn client(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    async fn wait_queued(&self, n: usize) {
        let core = self.core.clone();
        let held = wait_until(Duration::from_secs(10), || core.table.queued() == n).await;
        assert!(held, "queued {} instead of {n}", self.core.table.queued());
    }

    async fn wait_logged(&self, needle: &str) {
        let held = wait_until(Duration::from_secs(10), || {
            self.access_log().contains(needle)
        })
        .await;
        assert!(held, "no {needle} in:\n{}", self.access_log());
    }
}

/// Two backends of one slot each, both taken.
async fn full_pair(extra: &str) -> (InProcess, [Backend; 2], [(TcpStream, String); 2]) {
    let backends = [
        Backend::start("a", Mode::TaggedEcho).await,
        Backend::start("b", Mode::TaggedEcho).await,
    ];
    let proxy = InProcess::start(extra, &[&backends[0], &backends[1]]).await;
    let mut taken = Vec::new();
    for _ in 0..2 {
        let mut s = proxy.client().await;
        let tag = read_tag(&mut s, Duration::from_secs(5))
            .await
            .expect("served");
        taken.push((s, tag));
    }
    assert_ne!(
        taken[0].1, taken[1].1,
        "two clients on one one-slot backend"
    );
    let [first, second] = <[_; 2]>::try_from(taken).ok().unwrap();
    (proxy, backends, [first, second])
}

fn accepted(backends: &[Backend; 2]) -> usize {
    backends.iter().map(|b| b.accepted()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_takes_the_first_freed_slot() {
    let (proxy, backends, [(client_a, tag_a), _b]) = full_pair("  queue_timeout: 5s\n").await;
    let before = accepted(&backends);

    let mut c = proxy.client().await;
    proxy.wait_queued(1).await;
    assert_eq!(
        accepted(&backends),
        before,
        "a backend saw the queued client"
    );

    drop(client_a);
    let tag_c = read_tag(&mut c, Duration::from_secs(5)).await;
    assert_eq!(
        tag_c.as_deref(),
        Some(tag_a.as_str()),
        "{}",
        proxy.access_log()
    );
    proxy.wait_queued(0).await;
    assert!(still_echoes(&mut c).await);
    proxy.wait_logged(r#""reason":"client_closed""#).await;
    assert!(
        !proxy.access_log().contains("rejected"),
        "{}",
        proxy.access_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_is_closed_after_queue_timeout() {
    let (proxy, backends, _taken) = full_pair("  queue_timeout: 1s\n").await;
    let before = accepted(&backends);

    let mut c = proxy.client().await;
    assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    assert_eq!(
        accepted(&backends),
        before,
        "the timed-out client reached a backend"
    );
    proxy.wait_logged(r#""event":"rejected""#).await;
    proxy.wait_logged(r#""reason":"queue_timeout""#).await;
    proxy.wait_queued(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_closes_the_next_client_at_once() {
    let (proxy, backends, _taken) = full_pair("  queue_timeout: 30s\n  max_queue: 1\n").await;
    let before = accepted(&backends);

    let _c = proxy.client().await;
    proxy.wait_queued(1).await;
    let mut d = proxy.client().await;
    assert!(closed_within(&mut d, Duration::from_secs(5)).await);
    proxy.wait_logged(r#""reason":"queue_full""#).await;
    // C keeps its place.
    proxy.wait_queued(1).await;
    assert_eq!(accepted(&backends), before);
}
