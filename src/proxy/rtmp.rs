//! RTMP awareness on the data path, around the plain TCP proxy of
//! [`super`]:
//!
//! 1. [`gate`]: before a client may take a backend slot it must send
//!    a valid C0+C1 (version 3, 1537 bytes) within `handshake_timeout`, so
//!    port scanners, TCP probes and slowloris clients never occupy a media
//!    server.
//! 2. [`Opening::send`], on every backend connection attempt: the PROXY
//!    protocol header (if configured), the bytes the client has sent so
//!    far, and in `rtmp` mode a wait for the backend's first byte back. A
//!    backend that accepts TCP but closes or resets before answering (full,
//!    broken, shutting down) fails the attempt like a refused connect, and
//!    the same bytes go to the next backend: the publisher never notices.
//! 3. [`track`]: the connection enters the stream directory
//!    ([`crate::streams`]) and a copy of the client's bytes after C0+C1 goes
//!    to a passive [`Observer`] until it finds the `publish`/`play` or gives
//!    up. Forwarding never waits for it: the copy loop hands it each read.
//!
//! In `protocol: tcp` mode only the PROXY header applies.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::ConnectError;
use super::duplex::Flow;
use crate::config::{Protocol, SendProxy};
use crate::core::Settings;
use crate::metrics;
use crate::reason::Reason;
use crate::rtmp::{self, Observer, Progress, C0C1_LEN};
use crate::streams::{display_app, Directory, Handle, Registration};

/// Most bytes read from a backend while waiting for its first answer:
/// nginx-rtmp sends S0+S1+S2 (3073 bytes) at once.
const FIRST_READ: usize = 8 * 1024;

/// Why a client was closed at the gate.
#[derive(Debug)]
pub enum GateError {
    /// Fewer than 1537 bytes within `handshake_timeout`.
    Timeout { got: usize, limit: Duration },
    /// A first byte other than 3: not RTMP (or RTMPE).
    BadVersion(u8),
    /// The client closed or failed before sending all of C0+C1.
    Incomplete { got: usize, error: Option<String> },
}

impl GateError {
    pub fn reason(&self) -> Reason {
        match self {
            GateError::Timeout { .. } => Reason::HandshakeTimeout,
            GateError::BadVersion(_) => Reason::HandshakeBadVersion,
            GateError::Incomplete { .. } => Reason::HandshakeIncomplete,
        }
    }
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateError::Timeout { got, limit } => write!(
                f,
                "no RTMP handshake within {limit:?} ({got} of {C0C1_LEN} bytes)"
            ),
            GateError::BadVersion(v) => write!(
                f,
                "unsupported RTMP version byte {v} (expected {})",
                rtmp::RTMP_VERSION
            ),
            GateError::Incomplete { got, error: None } => {
                write!(f, "client closed after {got} of {C0C1_LEN} handshake bytes")
            }
            GateError::Incomplete {
                got,
                error: Some(e),
            } => write!(
                f,
                "client failed after {got} of {C0C1_LEN} handshake bytes: {e}"
            ),
        }
    }
}

/// `rtmp` mode: reads until `pending` (bytes already read from the
/// client, e.g. by a previous process) holds C0+C1, and checks it.
/// Reads never go past C0+C1: the client sends nothing more before the
/// backend's S0+S1 anyway.
pub async fn gate<S: AsyncRead + Unpin>(
    settings: &Settings,
    client: &mut S,
    pending: &mut Vec<u8>,
) -> Result<(), GateError> {
    if settings.protocol != Protocol::Rtmp {
        return Ok(());
    }
    let read = async {
        loop {
            // The version byte says "not RTMP" before the rest arrives.
            if let Some(&v) = pending.first() {
                if v != rtmp::RTMP_VERSION {
                    return Err(GateError::BadVersion(v));
                }
            }
            let need = C0C1_LEN.saturating_sub(pending.len());
            if need == 0 {
                return Ok(());
            }
            // Straight into `pending`: no buffer kept in the task.
            pending.reserve(need);
            match (&mut *client).take(need as u64).read_buf(pending).await {
                Ok(0) => {
                    return Err(GateError::Incomplete {
                        got: pending.len(),
                        error: None,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(GateError::Incomplete {
                        got: pending.len(),
                        error: Some(e.to_string()),
                    })
                }
            }
        }
    };
    let outcome = tokio::time::timeout(settings.handshake_timeout, read).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(GateError::Timeout {
            got: pending.len(),
            limit: settings.handshake_timeout,
        }),
    }
}

/// What every backend connection attempt for this client starts with.
/// `addrs` gives the client's addresses (see [`addresses`]), asked
/// only for a PROXY header.
pub fn opening<'a>(
    settings: &Settings,
    addrs: impl FnOnce() -> Option<(SocketAddr, SocketAddr)>,
    client_addr: &str,
    pending: &'a [u8],
) -> Opening<'a> {
    let header = match settings.send_proxy {
        SendProxy::Off => None,
        version => {
            let addrs = addrs();
            if addrs.is_none() {
                warn!(
                    "{client_addr}: client addresses unknown; sending a PROXY header without them"
                );
            }
            Some(proxy_header(version, addrs))
        }
    };
    Opening {
        header,
        bytes: pending,
        reply_timeout: (settings.protocol == Protocol::Rtmp).then_some(settings.connect_timeout),
    }
}

/// `rtmp` mode: enters the connection in the stream directory and has
/// `flow` hand a copy of the client's bytes to an observer. `pending`
/// holds every client byte sent to the backend before the copy loop.
pub fn track(
    settings: &Settings,
    streams: &Arc<Directory>,
    flow: &Arc<Flow>,
    client_addr: &str,
    backend: SocketAddr,
    pending: &[u8],
) -> Option<Registration> {
    if settings.protocol != Protocol::Rtmp {
        return None;
    }
    let registration = streams.add(client_addr, backend, flow.clone());
    let mut tap = Tap {
        observer: Observer::new(),
        entry: registration.handle(),
        client: client_addr.to_owned(),
        backend,
    };
    // Bytes past C0+C1 read before the copy: a forwarded client's.
    if tap.feed(pending.get(C0C1_LEN..).unwrap_or_default()) {
        flow.tap_client(Box::new(move |bytes| tap.feed(bytes)));
    }
    Some(registration)
}

/// Watches one client's bytes after C0+C1 and reports to the directory.
struct Tap {
    observer: Observer,
    entry: Handle,
    client: String,
    backend: SocketAddr,
}

impl Tap {
    /// Returns whether it wants more bytes.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let m = metrics::get();
        match self.observer.feed(bytes) {
            Progress::NeedMore => true,
            Progress::Found(found) => {
                // Logged here as well as at the end: publishes last hours.
                info!(
                    "{} -> {}: {} {}/{}",
                    self.client,
                    self.backend,
                    found.role,
                    display_app(&found.app),
                    rtmp::redact(&found.stream_key)
                );
                let role = match found.role {
                    rtmp::Role::Publish { .. } => "publish",
                    rtmp::Role::Play => "play",
                };
                m.streams_identified.with_label_values(&[role]).inc();
                self.entry.identified(found.clone());
                false
            }
            Progress::Unknown(reason) => {
                info!(
                    "{} -> {}: stream not understood ({reason}); proxied as plain TCP",
                    self.client, self.backend
                );
                m.streams_unknown.with_label_values(&[reason]).inc();
                self.entry.unknown(reason);
                false
            }
        }
    }
}

/// The start of every backend connection for one client.
pub struct Opening<'a> {
    header: Option<Vec<u8>>,
    /// Client bytes read so far (C0+C1 in `rtmp` mode).
    bytes: &'a [u8],
    /// `rtmp` mode: the backend must answer within this.
    reply_timeout: Option<Duration>,
}

/// What a `kind: rtmp` health check sends: version 3, time and zero
/// fields 0, no randomness needed for a server to answer.
static CHECK_C0C1: [u8; C0C1_LEN] = {
    let mut b = [0u8; C0C1_LEN];
    b[0] = rtmp::RTMP_VERSION;
    b
};

impl Opening<'static> {
    /// The opening of a `kind: rtmp` health check: the PROXY header (with
    /// no client, so `UNKNOWN` or `LOCAL`), C0+C1, and a wait of `timeout`
    /// for the answer.
    pub fn check(send_proxy: SendProxy, timeout: Duration) -> Self {
        Self {
            header: (send_proxy != SendProxy::Off).then(|| proxy_header(send_proxy, None)),
            bytes: &CHECK_C0C1,
            reply_timeout: Some(timeout),
        }
    }
}

impl Opening<'_> {
    /// Sends the PROXY header and the client's bytes on a fresh backend
    /// connection, then (`rtmp` mode) waits for the backend's first bytes
    /// and returns them. An error means the attempt failed and the backend
    /// should be treated like one that refused the connect.
    pub async fn send<S>(&self, backend: &mut S) -> Result<Vec<u8>, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // One write, so header and bytes leave in one segment.
        let joined;
        let bytes = match &self.header {
            Some(header) => {
                joined = [header.as_slice(), self.bytes].concat();
                &joined
            }
            None => self.bytes,
        };
        if !bytes.is_empty() {
            backend
                .write_all(bytes)
                .await
                .map_err(ConnectError::SendFailed)?;
        }
        let Some(limit) = self.reply_timeout else {
            return Ok(Vec::new());
        };
        let mut first = vec![0u8; FIRST_READ];
        match tokio::time::timeout(limit, backend.read(&mut first)).await {
            Ok(Ok(0)) => Err(ConnectError::Closed),
            Ok(Ok(n)) => {
                first.truncate(n);
                Ok(first)
            }
            Ok(Err(e)) => Err(ConnectError::AnswerFailed(e)),
            Err(_) => Err(ConnectError::NoAnswer(limit)),
        }
    }
}

/// The client's address and the local address it connected to (not the
/// listen address, which may be 0.0.0.0), as the PROXY header carries them.
pub fn addresses(client: &TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    Some(canonical(
        client.peer_addr().ok()?,
        client.local_addr().ok()?,
    ))
}

/// IPv4 clients of a dual-stack listener appear as `::ffff:a.b.c.d`; media
/// servers expect them as IPv4 (`TCP4`).
fn canonical(peer: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |a: SocketAddr| match a.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => Some(SocketAddr::from((ip, a.port()))),
        std::net::IpAddr::V6(_) => None,
    };
    match (v4(peer), v4(local)) {
        (Some(p), Some(l)) => (p, l),
        _ => (peer, local),
    }
}

/// A PROXY protocol header (built with the `ppp` crate). Without addresses
/// it says so (`PROXY UNKNOWN`, or a v2 `LOCAL` command) rather than lie.
fn proxy_header(version: SendProxy, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    use ppp::v2;
    match version {
        SendProxy::Off => Vec::new(),
        SendProxy::V1 => addrs
            .map_or(ppp::v1::Addresses::Unknown, ppp::v1::Addresses::from)
            .to_string()
            .into_bytes(),
        SendProxy::V2 => {
            let built = match addrs {
                Some(a) => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    a,
                )
                .build(),
                None => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Local,
                    v2::Protocol::Unspecified,
                    v2::Addresses::Unspecified,
                )
                .build(),
            };
            // Building fails only on a payload over 64 KiB; ours is at
            // most 52 bytes.
            built.unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    fn rtmp_mode(yaml: &str) -> Settings {
        let config = crate::config::parse(&format!("proxy:\n{yaml}")).unwrap();
        Settings::from(&config)
    }

    /// A proxy-side stream and the peer's end of it.
    fn pipe() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 * 1024)
    }

    fn c0c1() -> Vec<u8> {
        let mut b = vec![0x5a; C0C1_LEN];
        b[0] = rtmp::RTMP_VERSION;
        b
    }

    #[tokio::test]
    async fn gate_passes_a_handshake_in_pieces_and_reads_no_further() {
        let r = rtmp_mode("  handshake_timeout: 5s\n");
        let (mut client, mut peer) = pipe();
        let mut sent = c0c1();
        sent.extend_from_slice(b"C2 follows");
        for piece in sent.chunks(500) {
            peer.write_all(piece).await.unwrap();
        }
        let mut pending = Vec::new();
        gate(&r, &mut client, &mut pending).await.unwrap();
        assert_eq!(pending, c0c1());
        // Already read (a forwarded client): nothing more is needed.
        gate(&r, &mut client, &mut pending).await.unwrap();
        assert_eq!(pending.len(), C0C1_LEN);
    }

    #[tokio::test]
    async fn gate_rejects_a_bad_version_at_the_first_byte() {
        let r = rtmp_mode("");
        let (mut client, mut peer) = pipe();
        peer.write_all(&[9]).await.unwrap();
        let e = gate(&r, &mut client, &mut Vec::new()).await.unwrap_err();
        assert_eq!(e.reason(), Reason::HandshakeBadVersion);
        assert_eq!(
            e.to_string(),
            "unsupported RTMP version byte 9 (expected 3)"
        );
    }

    #[tokio::test]
    async fn gate_rejects_a_client_that_closes_early() {
        let r = rtmp_mode("");
        let (mut client, mut peer) = pipe();
        peer.write_all(&c0c1()[..100]).await.unwrap();
        drop(peer);
        let e = gate(&r, &mut client, &mut Vec::new()).await.unwrap_err();
        assert_eq!(e.reason(), Reason::HandshakeIncomplete);
        assert_eq!(
            e.to_string(),
            "client closed after 100 of 1537 handshake bytes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gate_times_out_a_silent_client() {
        let r = rtmp_mode("  handshake_timeout: 2s\n");
        let (mut client, _peer) = pipe();
        let e = gate(&r, &mut client, &mut Vec::new()).await.unwrap_err();
        assert_eq!(e.reason(), Reason::HandshakeTimeout);
        assert_eq!(
            e.to_string(),
            "no RTMP handshake within 2s (0 of 1537 bytes)"
        );
    }

    #[tokio::test]
    async fn gate_is_open_in_tcp_mode() {
        let r = rtmp_mode("  protocol: tcp\n");
        let (mut client, _peer) = pipe();
        let mut pending = Vec::new();
        gate(&r, &mut client, &mut pending).await.unwrap();
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn opening_sends_header_and_bytes_and_returns_the_first_answer() {
        let r = rtmp_mode("  send_proxy: v1\n");
        let bytes = c0c1();
        let opening = opening(&r, || None, "c", &bytes);
        let (mut backend, mut server) = pipe();
        let serve = async {
            let mut got = vec![0u8; 15 + C0C1_LEN];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"S0S1").await.unwrap();
            got
        };
        let (first, got) = tokio::join!(opening.send(&mut backend), serve);
        assert_eq!(first.unwrap(), b"S0S1");
        // No addresses known: the header says so.
        assert_eq!(&got[..15], b"PROXY UNKNOWN\r\n");
        assert_eq!(&got[15..], bytes.as_slice());
    }

    #[tokio::test]
    async fn opening_fails_when_the_backend_closes_without_answering() {
        let r = rtmp_mode("");
        let bytes = c0c1();
        let opening = opening(&r, || None, "c", &bytes);
        let (mut backend, mut server) = pipe();
        let serve = async {
            let mut got = vec![0u8; C0C1_LEN];
            server.read_exact(&mut got).await.unwrap();
            drop(server);
        };
        let (first, ()) = tokio::join!(opening.send(&mut backend), serve);
        assert!(matches!(first, Err(ConnectError::Closed)), "{first:?}");
        // In tcp mode nothing is awaited.
        let r = rtmp_mode("  protocol: tcp\n");
        let opening = super::opening(&r, || None, "c", &[]);
        let (mut backend, _server) = pipe();
        assert!(opening.send(&mut backend).await.unwrap().is_empty());
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.2:50000".parse().unwrap(),
            "127.0.0.1:1935".parse().unwrap(),
        )
    }

    #[test]
    fn v1_header() {
        let h = proxy_header(SendProxy::V1, Some(addrs()));
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 50000 1935\r\n");
        let h = proxy_header(SendProxy::V1, None);
        assert_eq!(h, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_header_round_trips() {
        let h = proxy_header(SendProxy::V2, Some(addrs()));
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from(addrs()));
        assert_eq!(h.len(), 16 + 12);
        let h = proxy_header(SendProxy::V2, None);
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
    }

    #[test]
    fn mapped_ipv4_is_sent_as_ipv4() {
        let peer: SocketAddr = "[::ffff:10.0.0.9]:4000".parse().unwrap();
        let local: SocketAddr = "[::ffff:10.0.0.1]:1935".parse().unwrap();
        let h = proxy_header(SendProxy::V1, Some(canonical(peer, local)));
        assert_eq!(h, b"PROXY TCP4 10.0.0.9 10.0.0.1 4000 1935\r\n");
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let local: SocketAddr = "[2001:db8::2]:1935".parse().unwrap();
        let h = proxy_header(SendProxy::V1, Some(canonical(peer, local)));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1935\r\n");
    }
}
