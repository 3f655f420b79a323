//! The established phase: bytes copied both ways unchanged, counted as they
//! flow, with an idle timeout and a record of which side ended first.
//!
//! `tokio::io::copy_bidirectional` does the copying (it propagates
//! half-close and flushes Pingora's write buffer); the [`Metered`] wrappers
//! around each side see every read, which is where counting, activity and
//! the first end are recorded, since the copy itself reports none of that
//! when a side resets.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// Buffer per direction. Publishers push a few Mbit/s towards the backend;
/// the reverse direction carries only RTMP acknowledgements.
const UPSTREAM_BUF: usize = 32 * 1024;
const DOWNSTREAM_BUF: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// How a proxied connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A side closed its sending direction first (the other then followed).
    Closed(Side),
    /// A side failed (reset, broken pipe) first.
    Failed(Side, String),
    /// No byte in either direction for `idle_timeout`.
    Idle,
    /// The process stopped draining (`drain_timeout`) and cut the stream.
    ShutdownCut,
}

impl End {
    /// The reason as logged and counted.
    pub fn reason(&self) -> &'static str {
        match self {
            End::Closed(Side::Client) => "client_closed",
            End::Closed(Side::Backend) => "backend_closed",
            End::Failed(Side::Client, _) => "client_error",
            End::Failed(Side::Backend, _) => "backend_error",
            End::Idle => "idle_timeout",
            End::ShutdownCut => "shutdown_cut",
        }
    }
}

/// Given a copy of each read from the client while it returns true (the
/// RTMP observer, see `proxy::rtmp`). Runs inside the read: keep it cheap.
pub type ClientTap = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// Shared record of one connection's traffic.
pub struct Flow {
    start: Instant,
    /// Milliseconds since `start` of the last byte read from either side.
    last_activity_ms: AtomicU64,
    /// Bytes read from the client (towards the backend) and from the backend.
    pub from_client: AtomicU64,
    pub from_backend: AtomicU64,
    first_end: OnceLock<End>,
    counters: [IntCounter; 2],
    /// Taken by [`run`] and owned by the client side's reader from then on.
    client_tap: Mutex<Option<ClientTap>>,
}

impl Flow {
    /// `counters`: the process-wide byte counters for client-to-backend and
    /// backend-to-client, bumped as bytes flow.
    pub fn new(counters: [IntCounter; 2]) -> Self {
        Self {
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            from_client: AtomicU64::new(0),
            from_backend: AtomicU64::new(0),
            first_end: OnceLock::new(),
            counters,
            client_tap: Mutex::new(None),
        }
    }

    /// Has [`run`] hand `tap` a copy of every read from the client.
    pub fn tap_client(&self, tap: ClientTap) {
        *self.client_tap.lock().unwrap_or_else(|p| p.into_inner()) = Some(tap);
    }

    /// Counts bytes moved outside the copy loop (e.g. data a client sent
    /// while it was queued).
    pub fn count(&self, side: Side, n: usize) {
        let n = n as u64;
        let (total, counter) = match side {
            Side::Client => (&self.from_client, &self.counters[0]),
            Side::Backend => (&self.from_backend, &self.counters[1]),
        };
        total.fetch_add(n, Ordering::Relaxed);
        counter.inc_by(n);
        let now = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn ended(&self, end: End) {
        let _ = self.first_end.set(end);
    }

    pub fn duration(&self) -> Duration {
        self.start.elapsed()
    }

    /// Resolves once no byte has moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies both ways until both directions are closed, a side fails, the
/// connection is idle for `idle_timeout`, or `cut` turns true.
pub async fn run<C, B>(
    client: &mut C,
    backend: &mut B,
    flow: &Flow,
    idle_timeout: Duration,
    mut cut: watch::Receiver<bool>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let tap = flow
        .client_tap
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let mut client = Metered {
        inner: client,
        side: Side::Client,
        flow,
        tap,
    };
    let mut backend = Metered {
        inner: backend,
        side: Side::Backend,
        flow,
        tap: None,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut backend,
        UPSTREAM_BUF,
        DOWNSTREAM_BUF,
    );
    tokio::select! {
        result = copy => {
            if let Err(e) = result {
                // The wrappers saw the failing side; this is a fallback.
                flow.ended(End::Failed(Side::Client, e.to_string()));
            }
            flow.first_end.get().cloned().unwrap_or(End::Closed(Side::Client))
        }
        () = flow.idle(idle_timeout) => End::Idle,
        _ = cut.wait_for(|cut| *cut) => End::ShutdownCut,
    }
}

/// A side of the copy, recording what it reads and how it ends.
struct Metered<'a, S: ?Sized> {
    inner: &'a mut S,
    side: Side,
    flow: &'a Flow,
    tap: Option<ClientTap>,
}

impl<S: ?Sized> Metered<'_, S> {
    fn note<T>(&self, result: &io::Result<T>) {
        if let Err(e) = result {
            self.flow.ended(End::Failed(self.side, e.to_string()));
        }
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Metered<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut *this.inner).poll_read(cx, buf));
        this.note(&result);
        if result.is_ok() {
            let n = buf.filled().len() - before;
            if n == 0 {
                this.flow.ended(End::Closed(this.side));
            } else {
                this.flow.count(this.side, n);
                if let Some(tap) = &mut this.tap {
                    let read = buf.filled().get(before..).unwrap_or_default();
                    if !tap(read) {
                        this.tap = None;
                    }
                }
            }
        }
        Poll::Ready(result)
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut *this.inner).poll_write(cx, buf));
        this.note(&result);
        Poll::Ready(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut *this.inner).poll_flush(cx));
        this.note(&result);
        Poll::Ready(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut *this.inner).poll_shutdown(cx));
        this.note(&result);
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn flow() -> Flow {
        let c = || IntCounter::new("t", "t").unwrap();
        Flow::new([c(), c()])
    }

    #[tokio::test]
    async fn copies_and_counts_both_ways_with_half_close() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let f = flow();
        let peers = async {
            client.write_all(b"hello").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            backend.write_all(b"world!").await.unwrap();
            backend.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"world!");
        };
        let (_keep, cut) = watch::channel(false);
        let (end, ()) = tokio::join!(
            run(
                &mut proxy_client,
                &mut proxy_backend,
                &f,
                Duration::from_secs(5),
                cut
            ),
            peers
        );
        assert_eq!(end, End::Closed(Side::Client));
        assert_eq!(f.from_client.load(Ordering::Relaxed), 5);
        assert_eq!(f.from_backend.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn the_client_tap_sees_client_bytes_until_it_declines() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let f = flow();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        f.tap_client(Box::new(move |b| {
            let mut log = log.lock().unwrap();
            log.extend_from_slice(b);
            log.len() < 3
        }));
        let peers = async {
            for piece in [&b"ab"[..], b"cd", b"ef"] {
                client.write_all(piece).await.unwrap();
                let mut got = [0u8; 2];
                backend.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, piece);
            }
            client.shutdown().await.unwrap();
            backend.shutdown().await.unwrap();
        };
        let (_keep, cut) = watch::channel(false);
        let (end, ()) = tokio::join!(
            run(
                &mut proxy_client,
                &mut proxy_backend,
                &f,
                Duration::from_secs(5),
                cut
            ),
            peers
        );
        assert_eq!(end, End::Closed(Side::Client));
        // Declined after "abcd": "ef" was forwarded but not shown.
        assert_eq!(*seen.lock().unwrap(), b"abcd");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_end() {
        let (_client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, _backend) = tokio::io::duplex(1024);
        let f = flow();
        let (_keep, cut) = watch::channel(false);
        let end = run(
            &mut proxy_client,
            &mut proxy_backend,
            &f,
            Duration::from_secs(30),
            cut,
        )
        .await;
        assert_eq!(end, End::Idle);
    }

    #[tokio::test]
    async fn a_cut_ends_the_copy() {
        let (_client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, _backend) = tokio::io::duplex(1024);
        let f = flow();
        let (tx, cut) = watch::channel(false);
        tx.send_replace(true);
        let end = run(
            &mut proxy_client,
            &mut proxy_backend,
            &f,
            Duration::from_secs(30),
            cut,
        )
        .await;
        assert_eq!(end, End::ShutdownCut);
    }
}
