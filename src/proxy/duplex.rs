//! The established phase: bytes copied both ways unchanged, counted as they
//! flow, with an idle timeout and a record of which side ended first.
//!
//! Our own loop rather than `tokio::io::copy_bidirectional`, for memory: a
//! read lands in a buffer on the poll's stack and is written on at once,
//! so a connection holds heap only while a writer pushes back. Most RTMP
//! connections sit between small paced reads, and with a fixed buffer per
//! direction each would keep tens of KiB resident for nothing. The loop
//! flushes the writer whenever its reader has nothing (for writers that
//! buffer; a tokio socket does not) and propagates half-close.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reason::Reason;

/// Most bytes one read takes (HAProxy's buffers hold 16 KiB). On loopback
/// a single bulk stream measured 20 Gbit/s with 32 KiB, 13 with 16 KiB and
/// 12 with 64 KiB; paced RTMP reads are far smaller anyway.
const READ_SIZE: usize = 32 * 1024;

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
    /// The backend took none of the client's waiting bytes for
    /// `stall_timeout`.
    BackendStalled,
    /// The process stopped draining (`drain_timeout`) and cut the stream.
    ShutdownCut,
    /// A new publisher of the stream took over.
    TakenOver,
}

impl End {
    pub fn reason(&self) -> Reason {
        match self {
            End::Closed(Side::Client) => Reason::ClientClosed,
            End::Closed(Side::Backend) => Reason::BackendClosed,
            End::Failed(Side::Client, _) => Reason::ClientError,
            End::Failed(Side::Backend, _) => Reason::BackendError,
            End::Idle => Reason::IdleTimeout,
            End::BackendStalled => Reason::BackendStalled,
            End::ShutdownCut => Reason::ShutdownCut,
            End::TakenOver => Reason::Takeover,
        }
    }
}

/// What ends a stream from outside: the drain's `cut`, or a newcomer
/// taking the stream over (`kick`).
pub async fn interrupted(mut cut: watch::Receiver<bool>, kick: impl Future<Output = ()>) -> End {
    let cut_fired = async {
        loop {
            if *cut.borrow_and_update() {
                return;
            }
            // No one can cut any more.
            if cut.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = cut_fired => End::ShutdownCut,
        () = kick => End::TakenOver,
    }
}

/// Turns each read from the backend into what the client gets (the RTMP
/// rechunker, see `rtmp::rechunk`); an error ends the connection as the
/// backend's failure. Runs inside the read: keep it cheap.
pub type Rewrite = Box<dyn FnMut(&[u8], &mut Vec<u8>) -> Result<(), String> + Send>;

/// Shared record of one connection's traffic.
pub struct Flow {
    start: Instant,
    /// Set by every read, cleared by the idle check: a flag rather than a
    /// clock reading per read.
    active: AtomicBool,
    /// Set while the backend refuses bytes the client sent; `backend_took`
    /// is set by every write that gets some of them through, and cleared
    /// by the stall check.
    backend_blocked: AtomicBool,
    backend_took: AtomicBool,
    /// Bytes read from the client (towards the backend) and from the backend.
    pub from_client: AtomicU64,
    pub from_backend: AtomicU64,
    first_end: OnceLock<End>,
    counters: [IntCounter; 2],
}

impl Flow {
    /// `counters`: the process-wide byte counters for client-to-backend and
    /// backend-to-client, bumped as bytes flow.
    pub fn new(counters: [IntCounter; 2]) -> Self {
        Self {
            start: Instant::now(),
            active: AtomicBool::new(true),
            backend_blocked: AtomicBool::new(false),
            backend_took: AtomicBool::new(false),
            from_client: AtomicU64::new(0),
            from_backend: AtomicU64::new(0),
            first_end: OnceLock::new(),
            counters,
        }
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
        self.active.store(true, Ordering::Relaxed);
    }

    fn ended(&self, end: End) {
        let _ = self.first_end.set(end);
    }

    pub fn duration(&self) -> Duration {
        self.start.elapsed()
    }
}

impl crate::streams::Traffic for Flow {
    fn bytes(&self) -> (u64, u64) {
        (
            self.from_client.load(Ordering::Relaxed),
            self.from_backend.load(Ordering::Relaxed),
        )
    }
}

/// The timers of one connection's copy, on a single timer.
pub struct Timers {
    /// No byte either way for this long ends the copy ([`End::Idle`]),
    /// checked every eighth of it: the end comes within 1/8 past it.
    pub idle: Duration,
    /// The backend taking none of the client's waiting bytes for this long
    /// ends the copy ([`End::BackendStalled`]), checked like `idle`.
    pub stall: Duration,
    /// Time between two calls of the progress callback.
    pub progress: Duration,
}

/// Copies both ways until both directions are closed, a side fails, the
/// connection is idle (see [`Timers`]), or `cut` turns true; calls
/// `progress` every `timers.progress` meanwhile. With `rewrite`, the
/// client gets the backend's bytes as it rewrites them.
///
/// `stop` ends the stream from outside ([`interrupted`]).
///
/// After [`End::Closed`] the caller drops both sides at once: the last
/// FIN is left to that close rather than paid for with a `shutdown` call.
///
/// Long on purpose: this is the loop every byte of every stream passes
/// through, and its timers, cut signal and both directions are polled in
/// one place so that a connection costs one task and no extra wake-ups.
pub async fn run<C, B>(
    client: &mut C,
    backend: &mut B,
    flow: &Flow,
    timers: Timers,
    stop: impl Future<Output = End>,
    mut progress: impl FnMut(),
    rewrite: Option<Rewrite>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Direction::new(Side::Client, None);
    let mut down = Direction::new(Side::Backend, rewrite);
    let copy = std::future::poll_fn(|cx| {
        // Each direction runs to its own end; an error ends both.
        let last = down.state == State::Done;
        let up_done = up
            .poll(cx, &mut *client, &mut *backend, flow, last)?
            .is_ready();
        let last = up.state == State::Done;
        let down_done = down
            .poll(cx, &mut *backend, &mut *client, flow, last)?
            .is_ready();
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(copy);
    tokio::pin!(stop);
    // Cut before it began: not a byte.
    if let Poll::Ready(end) = futures::poll!(stop.as_mut()) {
        return end;
    }
    // The idle check, progress and an end from outside, on one timer.
    let watchdog = async {
        let step = (timers.idle.min(timers.stall) / 8).max(Duration::from_millis(1));
        let every = timers.progress.max(Duration::from_millis(1));
        let now = Instant::now();
        let (mut next_check, mut next_progress) = (after(now, step), after(now, every));
        let (mut last_seen, mut last_taken) = (now, now);
        let tick = tokio::time::sleep_until(next_check.min(next_progress));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                end = &mut stop => return end,
                () = &mut tick => {
                    let now = Instant::now();
                    if now >= next_check {
                        if flow.active.swap(false, Ordering::Relaxed) {
                            last_seen = now;
                        } else if now.duration_since(last_seen) >= timers.idle {
                            return End::Idle;
                        }
                        if !flow.backend_blocked.load(Ordering::Relaxed)
                            || flow.backend_took.swap(false, Ordering::Relaxed)
                        {
                            last_taken = now;
                        } else if now.duration_since(last_taken) >= timers.stall {
                            return End::BackendStalled;
                        }
                        next_check = after(now, step);
                    }
                    if now >= next_progress {
                        progress();
                        next_progress = after(now, every);
                    }
                    tick.as_mut().reset(next_check.min(next_progress));
                }
            }
        }
    };
    tokio::pin!(watchdog);
    // Sockets wake the task for nearly every poll, and polling the
    // watchdog then would cost a timer and a channel check per read: it
    // gets a waker of its own and is polled only when that fired.
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let flag_waker = Waker::from(flag.clone());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = copy.as_mut().poll(cx) {
            // A failure was recorded where it happened.
            let _: Result<(), Failed> = result;
            return Poll::Ready(
                flow.first_end
                    .get()
                    .cloned()
                    .unwrap_or(End::Closed(Side::Client)),
            );
        }
        flag.task.register(cx.waker());
        if flag.woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(end) = watchdog
                .as_mut()
                .poll(&mut Context::from_waker(&flag_waker))
            {
                return Poll::Ready(end);
            }
        }
        Poll::Pending
    })
    .await
}

/// The watchdog's waker: notes that it fired, then wakes the task.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One direction of the copy: reads from side `from`, writes to the other.
struct Direction {
    from: Side,
    /// Empty unless the writer pushed back; then `READ_SIZE` bytes, holding
    /// what is still to be written (`buf[pos..end]`), and the read buffer
    /// until the reader runs dry, so a bulk flow pays no extra copy.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    state: State,
    rewrite: Option<Rewrite>,
    /// What `rewrite` made of the last read; emptied when the reader has
    /// nothing, like `buf`.
    rewritten: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The reader has ended: flush and shut the writer down.
    Closing,
    Done,
}

/// Why a direction stopped early; the failure is recorded in the [`Flow`].
struct Failed;

impl Direction {
    fn new(from: Side, rewrite: Option<Rewrite>) -> Self {
        Self {
            from,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            state: State::Open,
            rewrite,
            rewritten: Vec::new(),
        }
    }

    fn to(&self) -> Side {
        match self.from {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// Ready(Ok) once this direction has ended and the writer is shut
    /// down; Ready(Err) once either side failed. `last`: the other
    /// direction is done, so the writer's socket is closed right after
    /// and its close sends the FIN: no `shutdown` call needed.
    ///
    /// Long on purpose: one state machine per direction (read, write,
    /// flush, shut down) reads best as one match, and it is the hot path,
    /// measured in benches/.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        flow: &Flow,
        last: bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let to = self.to();
        // Only the client's bytes waiting for the backend can stall.
        let watched = (to == Side::Backend).then_some(flow);
        let failed = |side: Side, e: io::Error| {
            flow.ended(End::Failed(side, e.to_string()));
            Poll::Ready(Err(Failed))
        };
        loop {
            // What the writer pushed back, first.
            while self.pos < self.end {
                let rest = self.buf.get(self.pos..self.end).unwrap_or_default();
                let Poll::Ready(written) = Pin::new(&mut *writer).poll_write(cx, rest) else {
                    if let Some(flow) = watched {
                        flow.backend_blocked.store(true, Ordering::Relaxed);
                    }
                    return Poll::Pending;
                };
                match written {
                    Ok(0) => return failed(to, io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.pos += n;
                        if let Some(flow) = watched {
                            flow.backend_took.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => return failed(to, e),
                }
            }
            if self.end > 0 {
                if let Some(flow) = watched {
                    flow.backend_blocked.store(false, Ordering::Relaxed);
                }
            }
            (self.pos, self.end) = (0, 0);

            match self.state {
                State::Open => {}
                State::Closing => {
                    if let Err(e) = ready!(Pin::new(&mut *writer).poll_flush(cx)) {
                        return failed(to, e);
                    }
                    if !last {
                        if let Err(e) = ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                            return failed(to, e);
                        }
                    }
                    self.state = State::Done;
                    return Poll::Ready(Ok(()));
                }
                State::Done => return Poll::Ready(Ok(())),
            }

            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let on_heap = !self.buf.is_empty();
            let mut read = if on_heap {
                ReadBuf::new(&mut self.buf)
            } else {
                ReadBuf::uninit(&mut stack)
            };
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Idle until the next read: no buffer kept, nothing
                    // left in the writer's own buffer.
                    self.buf = Vec::new();
                    self.rewritten = Vec::new();
                    return match ready!(Pin::new(&mut *writer).poll_flush(cx)) {
                        Ok(()) => Poll::Pending,
                        Err(e) => failed(to, e),
                    };
                }
                Poll::Ready(Err(e)) => return failed(self.from, e),
                Poll::Ready(Ok(())) => {}
            }
            let data = read.filled();
            if data.is_empty() {
                flow.ended(End::Closed(self.from));
                self.state = State::Closing;
                continue;
            }
            flow.count(self.from, data.len());
            let data = match &mut self.rewrite {
                Some(rewrite) => {
                    self.rewritten.clear();
                    if let Err(e) = rewrite(data, &mut self.rewritten) {
                        return failed(self.from, io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    self.rewritten.as_slice()
                }
                None if on_heap => {
                    self.end = data.len();
                    continue;
                }
                None => data,
            };
            // Straight from the stack; only what the writer refuses is kept.
            let mut data = data;
            while !data.is_empty() {
                match Pin::new(&mut *writer).poll_write(cx, data) {
                    Poll::Ready(Ok(0)) => return failed(to, io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => data = data.get(k..).unwrap_or_default(),
                    Poll::Ready(Err(e)) => return failed(to, e),
                    Poll::Pending => {
                        let mut buf = vec![0; READ_SIZE.max(data.len())];
                        if let Some(head) = buf.get_mut(..data.len()) {
                            head.copy_from_slice(data);
                        }
                        (self.buf, self.pos, self.end) = (buf, 0, data.len());
                        if let Some(flow) = watched {
                            flow.backend_blocked.store(true, Ordering::Relaxed);
                        }
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// `now + d` without a panic: config bounds keep `d` within a day, and
/// should one slip through, the timer fires a day on rather than never.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn flow() -> Flow {
        let c = || IntCounter::new("t", "t").unwrap();
        Flow::new([c(), c()])
    }

    fn timers(idle_secs: u64) -> Timers {
        Timers {
            idle: Duration::from_secs(idle_secs),
            stall: Duration::from_secs(idle_secs),
            progress: Duration::from_secs(60),
        }
    }

    /// Runs the copy between two pipe ends and closes them, as the proxy
    /// does.
    async fn proxy(mut client: DuplexStream, mut backend: DuplexStream, f: &Flow) -> End {
        let (_keep, cut) = watch::channel(false);
        run(
            &mut client,
            &mut backend,
            f,
            timers(5),
            interrupted(cut, std::future::pending()),
            || {},
            None,
        )
        .await
    }

    #[tokio::test]
    async fn copies_and_counts_both_ways_with_half_close() {
        let (mut client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_backend, mut backend) = tokio::io::duplex(1024);
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
        let (end, ()) = tokio::join!(proxy(proxy_client, proxy_backend, &f), peers);
        assert_eq!(end, End::Closed(Side::Client));
        assert_eq!(f.from_client.load(Ordering::Relaxed), 5);
        assert_eq!(f.from_backend.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn the_rewrite_turns_what_the_backend_sends_and_its_error_ends_the_copy() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let f = flow();
        let rewrite: Rewrite = Box::new(|b, out| {
            if b.contains(&b'!') {
                return Err("bang".into());
            }
            out.extend(b.iter().map(u8::to_ascii_uppercase));
            out.extend_from_slice(b".");
            Ok(())
        });
        let peers = async {
            backend.write_all(b"ab").await.unwrap();
            let mut got = [0u8; 3];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"AB.");
            client.write_all(b"up").await.unwrap();
            let mut got = [0u8; 2];
            backend.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"up");
            backend.write_all(b"x!").await.unwrap();
        };
        let (_keep, cut) = watch::channel(false);
        let copy = run(
            &mut proxy_client,
            &mut proxy_backend,
            &f,
            timers(5),
            interrupted(cut, std::future::pending()),
            || {},
            Some(rewrite),
        );
        let (end, ()) = tokio::join!(copy, peers);
        assert_eq!(end, End::Failed(Side::Backend, "bang".into()));
        // Counted as read, before the rewrite.
        assert_eq!(f.from_backend.load(Ordering::Relaxed), 4);
    }

    /// A slow reader on the far side makes every write push back: the bytes
    /// go through the spill buffer, in order, none lost or repeated.
    #[tokio::test]
    async fn bytes_survive_a_writer_that_pushes_back() {
        let (mut client, proxy_client) = tokio::io::duplex(256 * 1024);
        let (proxy_backend, mut backend) = tokio::io::duplex(100);
        let f = flow();
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let peers = async {
            let write = async {
                client.write_all(&sent).await.unwrap();
                client.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                let mut piece = [0u8; 333];
                loop {
                    let n = backend.read(&mut piece).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&piece[..n]);
                    tokio::task::yield_now().await;
                }
                backend.shutdown().await.unwrap();
                got
            };
            let ((), got) = tokio::join!(write, read);
            got
        };
        let (end, got) = tokio::join!(proxy(proxy_client, proxy_backend, &f), peers);
        assert_eq!(end, End::Closed(Side::Client));
        assert!(got == sent, "{} bytes arrived of {}", got.len(), sent.len());
        assert_eq!(f.from_client.load(Ordering::Relaxed), sent.len() as u64);
    }

    /// Idle is measured from the last byte: a connection that talked for a
    /// while ends `idle` after it fell silent, not `idle` after it opened,
    /// and progress is reported while it runs.
    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_byte_and_progress_is_reported() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let f = flow();
        let (_keep, cut) = watch::channel(false);
        let started = Instant::now();
        let talk = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                backend.read_exact(&mut b).await.unwrap();
            }
            Instant::now()
        };
        let mut reports = 0;
        let timers = Timers {
            idle: Duration::from_secs(30),
            stall: Duration::from_secs(30),
            progress: Duration::from_secs(60),
        };
        let copy = run(
            &mut proxy_client,
            &mut proxy_backend,
            &f,
            timers,
            interrupted(cut, std::future::pending()),
            || reports += 1,
            None,
        );
        let (end, silent_since) = tokio::join!(copy, talk);
        assert_eq!(end, End::Idle);
        let idle_for = Instant::now() - silent_since;
        assert!(idle_for >= Duration::from_secs(30), "{idle_for:?}");
        assert!(
            idle_for
                < Duration::from_secs(30) + Duration::from_secs(30) / 8 + Duration::from_millis(10),
            "{idle_for:?}"
        );
        // 200 s of talk and 30-34 s of silence: three progress reports.
        assert_eq!(reports, 3, "after {:?}", Instant::now() - started);
    }

    /// The copy between two pipes whose far ends stay silent.
    async fn silent(cut: watch::Receiver<bool>) -> End {
        let (_client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, _backend) = tokio::io::duplex(1024);
        let f = flow();
        run(
            &mut proxy_client,
            &mut proxy_backend,
            &f,
            timers(30),
            interrupted(cut, std::future::pending()),
            || {},
            None,
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_end() {
        let (_keep, cut) = watch::channel(false);
        assert_eq!(silent(cut).await, End::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_ends_a_running_copy() {
        let (tx, cut) = watch::channel(false);
        let cut_later = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(true);
        };
        let (end, ()) = tokio::join!(silent(cut), cut_later);
        assert_eq!(end, End::ShutdownCut);
    }

    #[tokio::test]
    async fn a_cut_before_the_copy_ends_it_at_once() {
        let (tx, cut) = watch::channel(false);
        tx.send_replace(true);
        assert_eq!(silent(cut).await, End::ShutdownCut);
    }

    /// A backend that stops taking bytes while the client has more to send
    /// ends the copy as stalled; one that is slow but keeps taking them
    /// does not.
    #[tokio::test(start_paused = true)]
    async fn a_backend_that_takes_nothing_is_stalled_and_a_slow_one_is_not() {
        for slow_reader in [false, true] {
            let (mut client, mut proxy_client) = tokio::io::duplex(1024);
            let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
            let f = flow();
            let (_keep, cut) = watch::channel(false);
            // Idle counts reads only: kept out of the way.
            let timers = Timers {
                idle: Duration::from_secs(3600),
                stall: Duration::from_secs(10),
                progress: Duration::from_secs(3600),
            };
            let copy = run(
                &mut proxy_client,
                &mut proxy_backend,
                &f,
                timers,
                interrupted(cut, std::future::pending()),
                || {},
                None,
            );
            // Up to 300 virtual seconds of a client that always has bytes to
            // send; the slow reader takes 100 bytes every 5 s.
            let peers = async {
                let write = async {
                    for _ in 0..3000 {
                        if client.write_all(&[1u8; 100]).await.is_err() {
                            return;
                        }
                    }
                };
                let read = async {
                    let mut b = [0u8; 100];
                    for _ in 0..60 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        if !slow_reader {
                            continue;
                        }
                        if backend.read_exact(&mut b).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = write => {},
                    () = read => {},
                }
            };
            let end = tokio::select! {
                end = copy => Some(end),
                () = peers => None,
            };
            if slow_reader {
                assert_eq!(end, None, "a slow but moving backend was cut");
            } else {
                assert_eq!(end, Some(End::BackendStalled));
            }
        }
    }
}
