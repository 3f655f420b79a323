//! The TCP proxy on `proxy.listen`: one task per client connection, from
//! accept ([`listener`]) to the last byte.
//!
//! A connection goes through four steps: take a slot (waiting in the queue
//! if the fleet is full), connect to the slot's backend (retrying other
//! backends on failure), copy bytes both ways ([`duplex`]), then close the
//! backend side and only then free the slot, so a media server never sees
//! the old and the next connection overlap. In `protocol: rtmp` mode,
//! [`rtmp`] adds a handshake gate before the slot, a check of the backend's
//! first answer to each connect, and a passive look at the stream.

pub mod duplex;
pub mod listener;
pub mod rtmp;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::access_log::{AccessLog, Record};
use crate::balancer::redis::{Lease, LeaseOutcome, SharedSlots};
use crate::balancer::{Rejection, Slot, SlotTable};
use crate::config::ProxyConfig;
use crate::lifecycle::handoff::{ForwardedClient, Handoff};
use crate::lifecycle::Lifecycle;
use crate::metrics;
use crate::streams::Registration;
use duplex::{Flow, Side};

/// Bytes a queued client may send before we stop reading from it.
const MAX_PENDING: usize = 64 * 1024;

/// How long to wait for a backend to close its side after ours is closed,
/// before dropping the connection anyway.
const BACKEND_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings the data path reads for every connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub stall_timeout: Duration,
    pub queue_timeout: Duration,
}

impl From<&ProxyConfig> for Settings {
    fn from(c: &ProxyConfig) -> Self {
        Self {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            stall_timeout: c.stall_timeout,
            queue_timeout: c.queue_timeout(),
        }
    }
}

/// Everything a client connection needs, shared by the listener
/// ([`listener::Listener`]) and the clients an old process forwards during an upgrade
/// ([`Forwarded`]).
pub struct Proxy {
    table: Arc<SlotTable>,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    handoff: Arc<Handoff>,
    /// Fleet-wide slots, when `proxy.slots.store` is `redis`.
    shared: Option<Arc<SharedSlots>>,
    rtmp: rtmp::Rtmp,
    access_log: Arc<AccessLog>,
}

impl Proxy {
    pub fn new(
        table: Arc<SlotTable>,
        settings: Settings,
        lifecycle: Arc<Lifecycle>,
        handoff: Arc<Handoff>,
        shared: Option<Arc<SharedSlots>>,
        rtmp: rtmp::Rtmp,
        access_log: Arc<AccessLog>,
    ) -> Arc<Self> {
        Arc::new(Self {
            table,
            settings,
            lifecycle,
            handoff,
            shared,
            rtmp,
            access_log,
        })
    }

    /// With a Redis slot store, the fleet-wide lease for a local slot;
    /// `None` when other proxies hold the backend's last slot.
    async fn lease(&self, slot: Slot) -> Option<Taken> {
        let Some(shared) = &self.shared else {
            return Some(Taken { slot, lease: None });
        };
        let addr = slot.addr();
        match shared.lease(addr, self.table.max_connections(addr)).await {
            LeaseOutcome::Granted(lease) => Some(Taken {
                slot,
                lease: Some(lease),
            }),
            LeaseOutcome::Full => {
                self.table.mark_remote_full(addr);
                None
            }
        }
    }

    /// Connects to the slot's backend and sends it `opening` (see
    /// [`rtmp::Opening`]); on failure marks it down and tries the other
    /// eligible backends once each. Returns the backend's first bytes, if
    /// the opening waited for them.
    async fn connect(
        &self,
        mut taken: Taken,
        client: &str,
        opening: &rtmp::Opening<'_>,
    ) -> Result<(Taken, TcpStream, Vec<u8>), String> {
        let mut tried = Vec::new();
        loop {
            let addr = taken.slot.addr();
            tried.push(addr);
            let started = std::time::Instant::now();
            let connected = connect(addr, self.settings.connect_timeout).await;
            metrics::get()
                .connect_time
                .observe(started.elapsed().as_secs_f64());
            let why = match connected {
                Ok(mut stream) => match opening.send(&mut stream).await {
                    Ok(first) => return Ok((taken, stream, first)),
                    // `stream` is closed here, before its slot is freed.
                    Err(e) => e,
                },
                // Every backend would fail alike, and none is to blame.
                Err(e) if local_shortage(&e) => {
                    taken.release().await;
                    return Err(format!("cannot connect from this machine: {e}"));
                }
                Err(e) => format!("connect failed: {e}"),
            };
            warn!("{client}: backend {addr} {why}; trying another");
            self.table.set_health(addr, false, &why);
            taken.release().await;
            taken = loop {
                let slot = self.table.try_acquire_excluding(&tried).ok_or_else(|| {
                    format!("no backend accepted the connection (tried {})", tried.len())
                })?;
                let addr = slot.addr();
                match self.lease(slot).await {
                    Some(t) => break t,
                    None => tried.push(addr),
                }
            };
        }
    }

    /// Closes a client that got no backend: counted, and logged with why.
    fn reject(&self, client: &str, reason: &'static str, why: &str, waited: Duration) {
        metrics::get().rejected.with_label_values(&[reason]).inc();
        debug!("{client}: closed without a backend: {reason} ({why})");
        self.access_log.write(Record {
            event: "rejected",
            client: client.to_string(),
            queue_wait_ms: waited.as_millis() as u64,
            reason: Some(reason),
            detail: Some(why.to_string()),
            ..Default::default()
        });
    }

    /// Serves one client; `pending` holds bytes already read from it.
    async fn serve(&self, mut client: TcpStream, client_addr: &str, mut pending: Vec<u8>) {
        let session = self.lifecycle.session();
        let m = metrics::get();
        m.accepted.inc();

        // Step 0 (`protocol: rtmp`): a valid C0+C1 before any slot.
        if let Err(e) = self.rtmp.gate(&mut client, &mut pending).await {
            self.reject(client_addr, e.reason(), &e.to_string(), Duration::ZERO);
            return;
        }

        // Step 1: a slot (and with a Redis store its fleet-wide lease),
        // watching the client while it waits.
        let queued_at = std::time::Instant::now();
        // Config bounds keep this from overflowing; if it did, wait the full time.
        let deadline = queued_at.checked_add(self.settings.queue_timeout);
        let mut lost_race = false;
        let taken = loop {
            let wait = deadline.map_or(self.settings.queue_timeout, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            let slot = tokio::select! {
                // A free slot wins over a client that has already half-closed.
                biased;
                slot = async {
                    if lost_race {
                        self.table.acquire_again(wait).await
                    } else {
                        self.table.acquire(wait).await
                    }
                } => slot,
                () = watch_queued_client(&mut client, &mut pending) => {
                    let waited = queued_at.elapsed();
                    self.reject(client_addr, "client_left", "client closed while queued", waited);
                    return;
                }
            };
            match slot {
                Ok(slot) => match self.lease(slot).await {
                    Some(taken) => break Ok(taken),
                    // Another proxy took it first: wait again, at the head.
                    None => lost_race = true,
                },
                Err(e) => break Err(e),
            }
        };
        let waited = queued_at.elapsed();
        m.queue_wait.observe(waited.as_secs_f64());
        let taken = match taken {
            Ok(taken) => taken,
            Err(Rejection::HandedOff) => {
                // An upgrade is under way: the new process serves it.
                if self
                    .handoff
                    .forward(client, client_addr, pending, session)
                    .is_err()
                {
                    self.reject(
                        client_addr,
                        "handed_off",
                        "no new process to pass the client to",
                        waited,
                    );
                }
                return;
            }
            Err(r) => {
                self.reject(client_addr, r.as_str(), "no free backend slot", waited);
                return;
            }
        };

        // Step 2: a backend connection, sent what the client sent so far.
        let opening = self
            .rtmp
            .opening(|| rtmp::addresses(&client), client_addr, &pending);
        let (taken, mut backend, first) = match self.connect(taken, client_addr, &opening).await {
            Ok(opened) => opened,
            Err(why) => {
                self.reject(client_addr, "connect_failed", &why, waited);
                return;
            }
        };
        m.served.inc();
        let backend_addr = taken.slot.addr();

        // Step 3: bytes both ways.
        let flow = Arc::new(Flow::new(m.byte_counters()));
        let stream = self.rtmp.track(&flow, client_addr, backend_addr, &pending);
        let cut = self.lifecycle.cut_signal();
        let timers = duplex::Timers {
            idle: self.settings.idle_timeout,
            stall: self.settings.stall_timeout,
            // Long streams log a progress line every interval.
            progress: self.access_log.interval,
        };
        flow.count(Side::Client, pending.len());
        flow.count(Side::Backend, first.len());
        let record = |event, reason| Record {
            event,
            client: client_addr.to_string(),
            backend: Some(backend_addr.to_string()),
            bytes_up: flow.from_client.load(Ordering::Relaxed),
            bytes_down: flow.from_backend.load(Ordering::Relaxed),
            duration_ms: flow.duration().as_millis() as u64,
            queue_wait_ms: waited.as_millis() as u64,
            reason,
            ..stream.as_ref().map(stream_fields).unwrap_or_default()
        };
        let end = match client.write_all(&first).await {
            Ok(()) => {
                let progress = || self.access_log.write(record("progress", None));
                duplex::run(&mut client, &mut backend, &flow, timers, cut, progress).await
            }
            Err(e) => duplex::End::Failed(Side::Client, e.to_string()),
        };

        // Step 4: close the backend side, then free the slot. After a
        // clean end both FINs have crossed already. A stalled backend is
        // marked down first, so that no queued client gets its slot.
        if end == duplex::End::BackendStalled {
            let why = format!(
                "took no bytes for {}",
                humantime::format_duration(self.settings.stall_timeout)
            );
            warn!("{client_addr}: backend {backend_addr} {why}; closing the stream");
            self.table.set_health(backend_addr, false, &why);
        }
        if !matches!(end, duplex::End::Closed(_)) {
            close_backend(&mut backend).await;
        }
        drop(backend);
        taken.release().await;

        m.closed.with_label_values(&[end.reason()]).inc();
        // Formatted only for a reader: with the access log off, nothing.
        let detail = || {
            let mut detail = match &end {
                duplex::End::Failed(_, e) => format!(" ({e})"),
                _ => String::new(),
            };
            if let Some(stream) = &stream {
                detail.push_str(&format!(", {}", stream.describe()));
            }
            detail
        };
        if self.access_log.is_on() {
            let mut last = record("end", Some(end.reason()));
            last.detail =
                Some(detail().trim_start_matches([',', ' ']).to_string()).filter(|d| !d.is_empty());
            self.access_log.write(last);
        }
        debug!(
            "{client_addr} -> {backend_addr}: {} bytes up, {} bytes down, {:.1?}, {}{}",
            flow.from_client.load(std::sync::atomic::Ordering::Relaxed),
            flow.from_backend.load(std::sync::atomic::Ordering::Relaxed),
            flow.duration(),
            end.reason(),
            detail(),
        );
    }
}

/// A backend slot and, with a Redis store, its fleet-wide lease.
struct Taken {
    slot: Slot,
    lease: Option<Lease>,
}

impl Taken {
    /// The lease goes first: the local queue, served when the slot frees,
    /// must find the backend free in Redis too.
    async fn release(self) {
        if let Some(lease) = self.lease {
            lease.release().await;
        }
        drop(self.slot);
    }
}

/// Clients the old process passes over during an upgrade, served as if
/// accepted here.
pub struct Forwarded {
    proxy: Arc<Proxy>,
    clients: std::sync::Mutex<Option<UnboundedReceiver<ForwardedClient>>>,
}

impl Forwarded {
    pub fn new(proxy: Arc<Proxy>, clients: UnboundedReceiver<ForwardedClient>) -> Self {
        Self {
            proxy,
            clients: std::sync::Mutex::new(Some(clients)),
        }
    }
}

#[async_trait]
impl BackgroundService for Forwarded {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let taken = self.clients.lock().ok().and_then(|mut c| c.take());
        let Some(mut clients) = taken else { return };
        while let Some(c) = clients.recv().await {
            let std_stream = std::net::TcpStream::from(c.fd);
            let stream = match std_stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(std_stream))
            {
                Ok(s) => s,
                Err(e) => {
                    warn!("{}: cannot take over a forwarded client: {e}", c.peer);
                    continue;
                }
            };
            let proxy = self.proxy.clone();
            tokio::spawn(async move { proxy.serve(stream, &c.peer, c.pending).await });
        }
    }
}

/// App, redacted key and role of an RTMP stream, for access log records.
fn stream_fields(stream: &Registration) -> Record {
    let view = stream.view();
    Record {
        app: view.as_ref().and_then(|v| v.app.clone()),
        key: view.as_ref().and_then(|v| v.key.clone()),
        role: view.and_then(|v| v.role),
        ..Default::default()
    }
}

/// Resolves when a queued client closes or fails. Whatever it sends
/// meanwhile is kept for the backend, up to [`MAX_PENDING`].
///
/// Reads go straight into `pending`: a buffer on the stack would live in
/// every connection's task for as long as the connection does.
async fn watch_queued_client(client: &mut TcpStream, pending: &mut Vec<u8>) {
    loop {
        let room = MAX_PENDING.saturating_sub(pending.len());
        if room == 0 {
            return watch_hang_up(client).await;
        }
        pending.reserve(room.min(4096));
        match (&mut *client).take(room as u64).read_buf(pending).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Resolves when the client hangs up, reading nothing: what it sends
/// beyond [`MAX_PENDING`] stays in the socket for the backend.
///
/// The poller reports a peer's FIN (`EPOLLRDHUP`) or reset as a closed
/// read side, a state that is never cleared; plain readability, raised by
/// every new segment, is cleared by an empty `try_io` so that only the next
/// event wakes us.
async fn watch_hang_up(client: &TcpStream) {
    loop {
        match client.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {
                let _ = client.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
            _ => return,
        }
    }
}

/// A failure of this machine, not of the peer: out of descriptors, memory,
/// buffers or local ports. It says nothing about a backend's health.
pub(crate) fn local_shortage(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(n))
    })
}

/// A fresh connection to a backend, with Nagle off like the client side.
///
/// Neither Pingora's `TransportConnector` (made for pooled HTTP upstreams:
/// per connection a bind option, a `getsockname` and a `TCP_NODELAY` probe
/// on drop, and streams that buffer small writes until a flush) nor
/// tokio's `TcpSocket::connect`, which asks `getsockopt(SO_ERROR)` after
/// every connect: the poller already tells. A connecting socket turns
/// writable once the handshake is done, and a failed one reports a
/// hang-up, so the error is asked for only then.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = tcp_socket(addr)?;
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(nix::libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let stream = TcpStream::from_std(socket.into())?;
    // Pingora's coarse timer (10 ms steps, on its own thread): a tokio
    // timer that comes due before all others wakes the runtime's poller
    // through its eventfd, a system call per connection.
    let ready = match pingora_timeout::fast_timeout::fast_timeout(
        timeout,
        stream.ready(Interest::WRITABLE),
    )
    .await
    {
        Ok(ready) => ready?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {timeout:?}"),
            ))
        }
    };
    if ready.is_write_closed() || ready.is_error() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| std::io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

/// A non-blocking TCP socket of `addr`'s family with Nagle off, made in
/// one `socket` call: for backends, and for the listener, whose accepted
/// sockets inherit `TCP_NODELAY`.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// Sends our FIN and waits (bounded) for the backend's, so that the backend
/// has seen this connection end before its slot is given to someone else.
async fn close_backend<S: AsyncRead + AsyncWrite + Unpin>(backend: &mut S) {
    let _ = backend.shutdown().await;
    let _ = tokio::time::timeout(BACKEND_CLOSE_WAIT, async {
        let mut buf = [0u8; 256];
        while let Ok(n) = backend.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_tells_a_refusal_from_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let stream = connect(open, Duration::from_secs(5)).await.unwrap();
        assert!(stream.nodelay().unwrap());
        drop(listener);
        // Nothing listens there now.
        let e = connect(open, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn only_this_machines_shortages_are_local() {
        use nix::errno::Errno;
        let err = |e: Errno| std::io::Error::from_raw_os_error(e as i32);
        for e in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(local_shortage(&err(e)), "{e}");
        }
        for e in [
            Errno::ECONNREFUSED,
            Errno::ETIMEDOUT,
            Errno::EHOSTUNREACH,
            Errno::ECONNRESET,
        ] {
            assert!(!local_shortage(&err(e)), "{e}");
        }
        assert!(!local_shortage(&std::io::ErrorKind::TimedOut.into()));
    }
}
