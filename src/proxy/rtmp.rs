//! RTMP on the data path, around the plain TCP proxy of [`super`]:
//!
//! 1. [`front`]: the proxy answers the client's handshake and commands
//!    itself ([`Front`]) until its `publish` or `play`, within
//!    `handshake_timeout`, so port scanners, probes, slow clients and
//!    anyone who never says what they want hold no slot and reach no
//!    media server.
//! 2. [`Opening::greet`], on every backend connection attempt: the PROXY
//!    protocol header (if configured), the proxy's own handshake with the
//!    server, then every byte the client sent after its handshake,
//!    verbatim; the server's answers are judged ([`Judge`]) until it
//!    starts the stream. A server that closes, fails or declines fails the
//!    attempt like a refused connect, and the next one gets the same
//!    bytes: the publisher never notices.
//! 3. [`register`]: the connection enters the stream directory
//!    ([`crate::streams`]).
//!
//! In `protocol: tcp` mode only the PROXY header applies ([`Opening::send`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::ConnectError;
use super::duplex::Flow;
use crate::config::{Protocol, SendProxy};
use crate::core::Settings;
use crate::reason::Reason;
use crate::rtmp::handshake::{self, HANDSHAKE_LEN};
use crate::rtmp::rechunk::{Phase, Rechunker};
use crate::rtmp::upstream::{Judge, Refusal};
use crate::rtmp::{self, Front, Progress, StreamInfo, C0C1_LEN, C2_LEN, MAX_OBSERVED_BYTES};
use crate::streams::{display_app, Directory, Registration};

/// Most bytes read from a backend at once while its answer is judged.
const FIRST_READ: usize = 8 * 1024;
/// S0+S1+S2.
const S0S1S2_LEN: usize = 1 + 2 * HANDSHAKE_LEN;
/// Client bytes the front reads at most: its handshake, then the command
/// phase up to [`MAX_OBSERVED_BYTES`] and one byte to prove it was passed.
const MAX_FRONT_BYTES: usize = C0C1_LEN + C2_LEN + MAX_OBSERVED_BYTES + 1;

/// Why a client was closed before its `publish` or `play`.
#[derive(Debug)]
pub enum GateError {
    /// No `publish` or `play` within `handshake_timeout`.
    Timeout { got: usize, limit: Duration },
    /// A first byte other than 3: not RTMP (or RTMPE).
    BadVersion(u8),
    /// The client closed or failed before its `publish` or `play`.
    Incomplete { got: usize, error: Option<String> },
    /// What it sent after the handshake is not RTMP the front understands.
    NotUnderstood(&'static str),
}

impl GateError {
    pub fn reason(&self) -> Reason {
        match self {
            GateError::Timeout { .. } => Reason::HandshakeTimeout,
            GateError::BadVersion(_) => Reason::HandshakeBadVersion,
            GateError::Incomplete { .. } => Reason::HandshakeIncomplete,
            GateError::NotUnderstood(_) => Reason::ProtocolError,
        }
    }
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = |got: usize| {
            if got < C0C1_LEN {
                format!("{got} of {C0C1_LEN} handshake bytes")
            } else {
                format!(
                    "the handshake and {} bytes, before publish or play",
                    got.saturating_sub(C0C1_LEN)
                )
            }
        };
        match self {
            GateError::Timeout { got, limit } if *got < C0C1_LEN => write!(
                f,
                "no RTMP handshake within {limit:?} ({got} of {C0C1_LEN} bytes)"
            ),
            GateError::Timeout { got, limit } => {
                write!(f, "no publish or play within {limit:?} ({})", stage(*got))
            }
            GateError::BadVersion(v) => write!(
                f,
                "unsupported RTMP version byte {v} (expected {})",
                rtmp::RTMP_VERSION
            ),
            GateError::Incomplete { got, error: None } => {
                write!(f, "client closed after {}", stage(*got))
            }
            GateError::Incomplete {
                got,
                error: Some(e),
            } => write!(f, "client failed after {}: {e}", stage(*got)),
            GateError::NotUnderstood(why) => {
                write!(f, "RTMP not understood before publish or play ({why})")
            }
        }
    }
}

/// A client whose `publish` or `play` the front has read.
pub struct Greeted {
    pub front: Front,
    pub info: StreamInfo,
    /// Sent to media servers instead of the client's bytes: the stream
    /// renamed by the auth hook.
    pub replay: Option<Vec<u8>>,
    /// The servers the auth hook named (addresses of one name).
    pub routed: Vec<SocketAddr>,
    /// That name, as the hook wrote it.
    pub routed_as: Option<String>,
}

/// The client's handshake (C0+C1, C2): what precedes its chunk stream.
pub const CLIENT_HANDSHAKE_LEN: usize = C0C1_LEN + C2_LEN;

/// `rtmp` mode: answers the client's handshake and commands until its
/// `publish` or `play`, reading into `pending`, which then holds every
/// byte the client sent, by `deadline` (the end of its `handshake_timeout`,
/// which a PROXY header and TLS handshake began to use). `None` in `tcp`
/// mode.
///
/// A client passed on by an upgrade arrives with those bytes already read
/// and answered by the old process: they are read again here without
/// answering, which leaves the front in the state the client knows.
pub async fn front<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &Settings,
    client: &mut S,
    pending: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Greeted>, GateError> {
    if settings.protocol != Protocol::Rtmp {
        return Ok(None);
    }
    let answered = pending.len().min(MAX_FRONT_BYTES);
    let talk = async {
        read_at_least(client, pending, C0C1_LEN).await?;
        let hello = pending.get(..C0C1_LEN).unwrap_or_default();
        if answered <= C0C1_LEN {
            debug!("answering a {} RTMP handshake", handshake::kind(hello));
            let answer = handshake::answer(hello);
            write(client, &answer, pending.len()).await?;
        }
        let mut front = Front::new();
        let mut fed = C0C1_LEN;
        loop {
            let mut reply = Vec::new();
            let progress = front
                .feed(pending.get(fed..).unwrap_or_default(), &mut reply)
                .clone();
            if pending.len() > answered {
                write(client, &reply, pending.len()).await?;
            }
            fed = pending.len();
            match progress {
                Progress::NeedMore => read_at_least(client, pending, fed.saturating_add(1)).await?,
                Progress::Found(info) => {
                    return Ok(Some(Greeted {
                        front,
                        info,
                        replay: None,
                        routed: Vec::new(),
                        routed_as: None,
                    }))
                }
                Progress::Unknown(why) => return Err(GateError::NotUnderstood(why)),
            }
        }
    };
    let outcome = tokio::time::timeout_at(deadline, talk).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(GateError::Timeout {
            got: pending.len(),
            limit: settings.handshake_timeout,
        }),
    }
}

/// Reads into `pending` until it holds `want` bytes (at most
/// [`MAX_FRONT_BYTES`]), checking the version byte first.
async fn read_at_least<S: AsyncRead + Unpin>(
    client: &mut S,
    pending: &mut Vec<u8>,
    want: usize,
) -> Result<(), GateError> {
    loop {
        // The version byte says "not RTMP" before the rest arrives.
        if let Some(&v) = pending.first() {
            if v != rtmp::RTMP_VERSION {
                return Err(GateError::BadVersion(v));
            }
        }
        if pending.len() >= want {
            return Ok(());
        }
        // Never past C0+C1 before it is answered: the client sends nothing
        // more until then anyway.
        let room = if pending.len() < C0C1_LEN {
            C0C1_LEN.saturating_sub(pending.len())
        } else {
            // Commands are small: read them in small steps.
            MAX_FRONT_BYTES.saturating_sub(pending.len()).min(4096)
        };
        // Straight into `pending`: no buffer kept in the task.
        pending.reserve(room);
        let error = match (&mut *client).take(room as u64).read_buf(pending).await {
            Ok(0) => None,
            Ok(_) => continue,
            Err(e) => Some(e.to_string()),
        };
        return Err(GateError::Incomplete {
            got: pending.len(),
            error,
        });
    }
}

async fn write<S: AsyncWrite + Unpin>(
    client: &mut S,
    bytes: &[u8],
    got: usize,
) -> Result<(), GateError> {
    if bytes.is_empty() {
        return Ok(());
    }
    client
        .write_all(bytes)
        .await
        .map_err(|e| GateError::Incomplete {
            got,
            error: Some(e.to_string()),
        })
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
    let rtmp = settings.protocol == Protocol::Rtmp;
    Opening {
        header,
        // After its handshake, which the proxy answered.
        bytes: if rtmp {
            pending.get(CLIENT_HANDSHAKE_LEN..).unwrap_or_default()
        } else {
            pending
        },
        reply_timeout: rtmp.then_some(settings.connect_timeout),
    }
}

/// Enters the connection in the stream directory, identified.
pub fn register(
    streams: &Arc<Directory>,
    flow: &Arc<Flow>,
    client_addr: &str,
    backend: SocketAddr,
    found: &StreamInfo,
) -> Registration {
    let registration = streams.add(client_addr, backend, flow.clone());
    // Logged here as well as at the end: publishes last hours.
    info!(
        "{client_addr} -> {backend}: {} {}/{}",
        found.role,
        display_app(&found.app),
        rtmp::redact(&found.stream_key)
    );
    registration.handle().identified(found.clone());
    registration
}

/// The start of every backend connection for one client.
pub struct Opening<'a> {
    header: Option<Vec<u8>>,
    /// Client bytes to send: in `rtmp` mode those after its handshake.
    bytes: &'a [u8],
    /// `rtmp` mode: the backend must answer within this.
    reply_timeout: Option<Duration>,
}

/// A server that has taken the stream.
pub struct Greeting {
    /// Its first messages, rewritten for the client.
    pub first: Vec<u8>,
    /// Rewrites the rest of what it sends.
    pub rechunker: Rechunker,
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
    /// `rtmp` mode: the PROXY header and the proxy's own handshake on a
    /// fresh backend connection, then the client's bytes after its
    /// handshake; returns once the server has started the stream. An error
    /// means the attempt failed and the next server should be tried.
    pub async fn greet<S>(
        &self,
        backend: &mut S,
        front: &Front,
        stream: &StreamInfo,
    ) -> Result<Greeting, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let limit = self.reply_timeout.unwrap_or(Duration::ZERO);
        let talk = async {
            let hello = [
                self.header.as_deref().unwrap_or_default(),
                &handshake::client_hello(),
            ]
            .concat();
            backend
                .write_all(&hello)
                .await
                .map_err(ConnectError::SendFailed)?;
            let mut answer = vec![0u8; S0S1S2_LEN];
            backend
                .read_exact(&mut answer)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => ConnectError::Closed,
                    _ => ConnectError::AnswerFailed(e),
                })?;
            match answer.first() {
                Some(&rtmp::RTMP_VERSION) => {}
                other => {
                    return Err(ConnectError::NotRtmp(format!(
                        "version byte {}",
                        other.copied().unwrap_or_default()
                    )))
                }
            }
            let reply = [&handshake::client_reply(&answer), self.bytes].concat();
            backend
                .write_all(&reply)
                .await
                .map_err(ConnectError::SendFailed)?;
            let mut rechunker = Rechunker::new(front.writer().clone(), true);
            let mut judge = Judge::new(&stream.role, front.answered());
            let mut first = Vec::new();
            let mut buf = vec![0u8; FIRST_READ];
            loop {
                let n = match backend.read(&mut buf).await {
                    Ok(0) => return Err(ConnectError::Left),
                    Ok(n) => n,
                    Err(e) => return Err(ConnectError::AnswerFailed(e)),
                };
                let read = buf.get(..n).unwrap_or_default();
                let phase = rechunker
                    .feed(read, &mut first, &mut |h, p| judge.judge(h, p))
                    .map_err(|e| ConnectError::BadAnswer(e.reason()))?;
                match phase {
                    Phase::Holding => {}
                    Phase::Passing => return Ok(Greeting { first, rechunker }),
                    Phase::Refused => {
                        return Err(match judge.refusal.take() {
                            // Servers may name the stream: logged, so redacted.
                            Some(Refusal::Declined(mut status)) => {
                                let key = &stream.stream_key;
                                status.code = rtmp::redact_in(&status.code, key);
                                status.description = rtmp::redact_in(&status.description, key);
                                ConnectError::Declined(status)
                            }
                            Some(Refusal::OtherStreamId(id)) => ConnectError::OtherStreamId(id),
                            None => ConnectError::Left,
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(limit, talk).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::NoAnswer(limit)),
        }
    }

    /// Sends the PROXY header and the client's bytes on a fresh backend
    /// connection, then (a health check) waits for the backend's first
    /// bytes and returns them. An error means the attempt failed and the backend
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

    /// The end of a client's handshake_timeout that begins now.
    fn deadline(settings: &Settings) -> Instant {
        Instant::now() + settings.handshake_timeout
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

    const PUBLISH: &[u8] = include_bytes!("../rtmp/testdata/ffmpeg_publish.bin");
    /// Where ffmpeg's publish command ends in the fixture.
    const PUBLISH_END: usize = C0C1_LEN + C2_LEN + 348;

    /// The front over ffmpeg's real bytes, in pieces; returns what the
    /// client was sent and what the front read.
    async fn front_over(
        settings: &Settings,
        sent: &[u8],
        pending: &mut Vec<u8>,
    ) -> (Result<Option<Greeted>, GateError>, Vec<u8>) {
        let (mut client, mut peer) = pipe();
        for piece in sent.chunks(500) {
            peer.write_all(piece).await.unwrap();
        }
        drop_writes(&mut peer).await;
        let result = front(settings, &mut client, pending, deadline(settings)).await;
        drop(client);
        let mut answers = Vec::new();
        peer.read_to_end(&mut answers).await.unwrap();
        (result, answers)
    }

    /// The client sends nothing more.
    async fn drop_writes(peer: &mut DuplexStream) {
        peer.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_front_answers_ffmpeg_until_its_publish_and_again_silently_after_an_upgrade() {
        let r = rtmp_mode("  handshake_timeout: 5s\n");
        let mut pending = Vec::new();
        let (result, answers) = front_over(&r, &PUBLISH[..PUBLISH_END], &mut pending).await;
        let greeted = result.unwrap().unwrap();
        assert_eq!(greeted.info.stream_key, "testkey123");
        assert_eq!(pending.len(), PUBLISH_END);
        // S0+S1+S2, then window, bandwidth and the answers to connect,
        // releaseStream, FCPublish and createStream.
        assert_eq!(answers[0], rtmp::RTMP_VERSION);
        assert!(answers.len() > S0S1S2_LEN + 100, "{}", answers.len());
        assert_eq!(greeted.front.answered().len(), 4);
        // A forwarded client: the same state, and nothing said again.
        let (again, said) = front_over(&r, &[], &mut pending).await;
        let again = again.unwrap().unwrap();
        assert!(said.is_empty());
        assert_eq!(again.front.answered(), greeted.front.answered());
    }

    #[tokio::test]
    async fn the_front_refuses_what_is_not_rtmp() {
        let r = rtmp_mode("");
        let (e, _) = front_over(&r, &[9], &mut Vec::new()).await;
        let e = e.err().unwrap();
        assert_eq!(e.reason(), Reason::HandshakeBadVersion);
        assert_eq!(
            e.to_string(),
            "unsupported RTMP version byte 9 (expected 3)"
        );

        let (e, _) = front_over(&r, &c0c1()[..100], &mut Vec::new()).await;
        let e = e.err().unwrap();
        assert_eq!(e.reason(), Reason::HandshakeIncomplete);
        assert_eq!(
            e.to_string(),
            "client closed after 100 of 1537 handshake bytes"
        );

        let mut http = c0c1();
        http.extend(vec![0; C2_LEN]);
        http.extend(b"GET / HTTP/1.1\r\n\r\n");
        let (e, _) = front_over(&r, &http, &mut Vec::new()).await;
        let e = e.err().unwrap();
        assert_eq!(e.reason(), Reason::ProtocolError);
        assert_eq!(
            e.to_string(),
            "RTMP not understood before publish or play (bad_message_type)"
        );
        // Closed after the handshake, before its publish.
        let (e, _) = front_over(&r, &PUBLISH[..PUBLISH_END - 1], &mut Vec::new()).await;
        assert_eq!(
            e.err().unwrap().to_string(),
            "client closed after the handshake and 1883 bytes, before publish or play"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_front_times_out_a_silent_client() {
        let r = rtmp_mode("  handshake_timeout: 2s\n");
        let (mut client, _peer) = pipe();
        let e = front(&r, &mut client, &mut Vec::new(), deadline(&r))
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason(), Reason::HandshakeTimeout);
        assert_eq!(
            e.to_string(),
            "no RTMP handshake within 2s (0 of 1537 bytes)"
        );
    }

    #[tokio::test]
    async fn the_front_is_open_in_tcp_mode() {
        let r = rtmp_mode("  protocol: tcp\n");
        let (mut client, _peer) = pipe();
        let mut pending = Vec::new();
        assert!(front(&r, &mut client, &mut pending, deadline(&r))
            .await
            .unwrap()
            .is_none());
        assert!(pending.is_empty());
    }

    /// A media server as far as `greet` needs one: reads the proxy's
    /// handshake and the replay, then sends `answers` (a chunk stream).
    async fn server(mut end: DuplexStream, answers: Vec<u8>) -> Vec<u8> {
        let mut hello = vec![0u8; 15 + C0C1_LEN];
        end.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..15], b"PROXY UNKNOWN\r\n");
        let s = handshake::answer(&hello[15..]);
        end.write_all(&s).await.unwrap();
        let mut replay = vec![0u8; PUBLISH_END - C0C1_LEN];
        end.read_exact(&mut replay).await.unwrap();
        end.write_all(&answers).await.unwrap();
        replay
    }

    fn status(level: &str, code: &str) -> Vec<u8> {
        use crate::rtmp::amf0::{encode, Value};
        let text = |s: &str| Value::String(s.into());
        let info = Value::Object(vec![
            ("level".into(), text(level)),
            ("code".into(), text(code)),
            ("description".into(), text("said so")),
        ]);
        let mut payload = Vec::new();
        let values = [text("onStatus"), Value::Number(0.0), Value::Null, info];
        encode(&values, &mut payload);
        crate::rtmp::chunk::testutil::message(5, 20, 0, &payload, 128)
    }

    #[tokio::test]
    async fn greet_replays_the_client_and_waits_for_the_server_to_take_the_stream() {
        let r = rtmp_mode("  send_proxy: v1\n");
        let mut pending = Vec::new();
        let (greeted, _) = front_over(&r, &PUBLISH[..PUBLISH_END], &mut pending).await;
        let greeted = greeted.unwrap().unwrap();
        let opening = opening(&r, || None, "c", &pending);
        let (mut backend, end) = pipe();
        let started = status("status", "NetStream.Publish.Start");
        let (greeting, replay) = tokio::join!(
            opening.greet(&mut backend, &greeted.front, &greeted.info),
            server(end, started)
        );
        // C2, then the client's bytes after its handshake, verbatim.
        assert_eq!(&replay[C2_LEN..], &PUBLISH[C0C1_LEN + C2_LEN..PUBLISH_END]);
        assert!(!greeting.unwrap().first.is_empty());

        let (mut backend, end) = pipe();
        let bad = status("error", "NetStream.Publish.BadName");
        let (greeting, _) = tokio::join!(
            opening.greet(&mut backend, &greeted.front, &greeted.info),
            server(end, bad)
        );
        let e = greeting.err().unwrap();
        assert!(!e.marks_down());
        assert_eq!(
            e.to_string(),
            "declined the stream: NetStream.Publish.BadName (said so)"
        );
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
