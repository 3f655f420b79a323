//! Slot handoff between the old and the new process of a binary upgrade.
//!
//! Pingora moves the listening sockets; established streams stay in the old
//! process until they end. So that `max_connections` holds across the
//! upgrade, exactly one process grants slots at any moment:
//!
//! 1. The new process (started with `-u`) connects to the old one's control
//!    socket (`<upgrade_sock>.slots`) *before* it asks Pingora for the
//!    listening sockets. The old process sends one `take` per slot it holds,
//!    then every `take` and `release` as they happen; the new process counts
//!    them as occupied (they are "inherited").
//! 2. On SIGQUIT, the old process stops granting slots ("hands off"), sends a
//!    `handoff` marker, and only then lets Pingora send the sockets. The new
//!    process waits for that marker before it serves anyone, so every slot
//!    the old one granted is known first.
//! 3. For the few seconds both processes accept on the shared sockets, the
//!    old one passes each client it accepts (and any client still queued)
//!    to the new one, with the bytes already read, over the same socket
//!    (`SCM_RIGHTS`).
//! 4. The old process keeps reporting releases until it exits; when it is
//!    gone, whatever it still held is released. A process that is itself
//!    upgraded passes on what it inherited, so upgrades can follow each
//!    other while old streams run.
//! 5. Alongside the slots, the old process sends its stream directory
//!    ([`crate::streams`]): a record per stream when the successor connects,
//!    on every change, and with fresh counters every `REFRESH`; an end
//!    when the stream ends. The new process lists them as `draining`.
//!
//! The channel is a Unix `SOCK_SEQPACKET` socket: message boundaries are
//! kept, so every message is one datagram, tagged by its first byte. It is
//! served by plain threads: it carries a handful of messages per stream.

use parking_lot::{Condvar, Mutex};
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::TcpStream;

use super::{Lifecycle, SessionGuard};
use crate::balancer::{SlotEvent, SlotTable};
use crate::metrics;
use crate::reason::Reason;
use crate::streams::{Change, Directory, Record};

const TAKE: u8 = b'T';
const RELEASE: u8 = b'R';
const HANDOFF: u8 = b'H';
const CLIENT: u8 = b'C';
const STREAM: u8 = b'S';
const STREAM_END: u8 = b'E';

/// Largest datagram: a client message carries what the front read (at
/// most its handshake and 64 KiB of commands, `proxy::rtmp`).
const MAX_MESSAGE: usize = 80 * 1024;

/// How often the old process sends its streams' counters, so that the new
/// one's `/streams` shows them moving.
const REFRESH: Duration = Duration::from_secs(2);

/// The control socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("slot handoff socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("slot handoff thread: {0}")]
    Thread(std::io::Error),
}

/// Why SIGQUIT cannot start an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum NoSuccessor {
    #[error(
        "no new process is waiting for the sockets (start it with -u first; see scripts/upgrade)"
    )]
    NotWaiting,
    #[error("the new process is not listening on {} yet", .0.display())]
    NotListening(PathBuf),
    #[error("the new process has gone away")]
    Gone,
}

/// A stream message that cannot be sent or was not understood.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("stream record is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stream record id {0:?} is not <pid>-<number>")]
    BadId(String),
    #[error("stream record lookup is not a SHA-256 digest in hex")]
    BadLookup,
    #[error("stream record of {0} bytes does not fit one {MAX_MESSAGE}-byte message")]
    TooLarge(usize),
}

/// A client accepted by the old process, to be served here.
pub struct ForwardedClient {
    pub fd: OwnedFd,
    pub peer: String,
    pub pending: Vec<u8>,
}

/// What goes to the successor, in order.
enum Outgoing {
    Event(SlotEvent),
    Stream(Change),
    Marker,
    /// With the client's session: the old process may not exit before the
    /// client has left it.
    Client(ForwardedClient, SessionGuard),
}

pub struct Handoff {
    path: PathBuf,
    /// Pingora's `upgrade_sock`, where a new process waits for the sockets.
    upgrade_sock: PathBuf,
    table: Arc<SlotTable>,
    streams: Arc<Directory>,
    /// The connected successor's queue, while there is one.
    successor: Mutex<Option<mpsc::Sender<Outgoing>>>,
    /// Set once the predecessor's marker arrived (or it never existed).
    ready: (Mutex<bool>, Condvar),
}

impl Handoff {
    /// The control socket path for a given Pingora `upgrade_sock`.
    fn path_for(upgrade_sock: &str) -> PathBuf {
        PathBuf::from(format!("{upgrade_sock}.slots"))
    }

    pub fn new(upgrade_sock: &str, table: Arc<SlotTable>, streams: Arc<Directory>) -> Arc<Self> {
        Arc::new(Self {
            path: Self::path_for(upgrade_sock),
            upgrade_sock: PathBuf::from(upgrade_sock),
            table,
            streams,
            successor: Mutex::new(None),
            ready: (Mutex::new(false), Condvar::new()),
        })
    }

    /// New process side, before Pingora's bootstrap: connects to the old
    /// process and starts applying its slots. Forwarded clients are sent to
    /// `clients`. Returns false when there is no old process to talk to.
    pub fn connect_predecessor(
        self: &Arc<Self>,
        clients: tokio::sync::mpsc::UnboundedSender<ForwardedClient>,
    ) -> bool {
        let conn = match seqpacket().and_then(|socket| {
            socket.connect(&SockAddr::unix(&self.path)?)?;
            Ok(socket)
        }) {
            Ok(socket) => OwnedFd::from(socket),
            Err(e) => {
                warn!(
                    "no slot handoff from the old process ({}: {e}); slot counts start at zero",
                    self.path.display()
                );
                self.set_ready();
                return false;
            }
        };
        info!(
            "connected to the old process for the slot handoff; its listening sockets follow once it gets SIGQUIT (polled once a second, 6 tries)"
        );
        let me = self.clone();
        if let Err(e) = thread("handoff-in", move || me.read_predecessor(conn, clients)) {
            warn!("cannot start the handoff reader ({e}); slot counts start at zero");
            self.set_ready();
            return false;
        }
        true
    }

    /// Blocks until the old process has handed off (bounded by `limit`).
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let (lock, cv) = &self.ready;
        let mut ready = lock.lock();
        cv.wait_while_for(&mut ready, |ready| !*ready, limit);
        *ready
    }

    fn set_ready(&self) {
        let (lock, cv) = &self.ready;
        *lock.lock() = true;
        cv.notify_all();
    }

    fn read_predecessor(
        &self,
        conn: OwnedFd,
        clients: tokio::sync::mpsc::UnboundedSender<ForwardedClient>,
    ) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (len, fd) = match receive(&conn, &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    warn!("slot handoff channel failed: {e}");
                    break;
                }
            };
            let Some((&tag, body)) = buf[..len].split_first() else {
                continue;
            };
            match (tag, fd) {
                (TAKE, None) => {
                    if let Some(addr) = parse_addr(body) {
                        self.table.inherit(addr);
                    }
                }
                (RELEASE, None) => {
                    if let Some(addr) = parse_addr(body) {
                        self.table.release_inherited(addr);
                    }
                }
                (HANDOFF, None) => {
                    info!(
                        "old process handed off; it still holds {} slot(s)",
                        self.table.inherited()
                    );
                    self.set_ready();
                }
                (CLIENT, Some(fd)) => match decode_client(body, fd) {
                    Some(client) => {
                        let _ = clients.send(client);
                    }
                    None => warn!("malformed forwarded client from the old process; dropped"),
                },
                (STREAM | STREAM_END, None) => match decode_change(tag, body) {
                    Ok(change) => self.streams.inherit(change),
                    Err(e) => warn!("from the old process: {e}; ignored"),
                },
                _ => warn!("unexpected slot handoff message (tag {tag}); ignored"),
            }
        }
        let left = self.table.clear_inherited();
        let streams = self.streams.forget_inherited();
        info!(
            "old process gone; released the {left} slot(s) it still held and unlisted its {streams} stream(s)"
        );
        self.set_ready();
    }

    /// Every process: serves the control socket so that a future new
    /// process can take over. Replaces the old process's socket file, which
    /// must already be connected to by then.
    pub fn listen(self: &Arc<Self>) -> Result<(), HandoffError> {
        let what = |source| HandoffError::Socket {
            path: self.path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&self.path);
        let socket = seqpacket().map_err(what)?;
        socket
            .bind(&SockAddr::unix(&self.path).map_err(what)?)
            .and_then(|()| socket.listen(4))
            .map_err(what)?;
        let me = self.clone();
        thread("handoff-listen", move || me.accept_successors(socket)).map_err(HandoffError::Thread)
    }

    fn accept_successors(self: Arc<Self>, listener: Socket) {
        loop {
            let conn = match listener.accept() {
                Ok((socket, _)) => OwnedFd::from(socket),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("slot handoff socket: accept failed: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let mut successor = self.successor.lock();
            if successor.is_some() {
                warn!("a second new process tried to take over; refused");
                continue;
            }
            let (tx, rx) = mpsc::channel();
            let snapshot = self.table.subscribe({
                let tx = tx.clone();
                move |event| {
                    let _ = tx.send(Outgoing::Event(event));
                }
            });
            let streams = self.streams.subscribe({
                let tx = tx.clone();
                move |change| {
                    let _ = tx.send(Outgoing::Stream(change));
                }
            });
            info!(
                "a new process is waiting to take over; sent it {snapshot} live slot(s) and {streams} stream record(s)"
            );
            *successor = Some(tx);
            drop(successor);
            let me = self.clone();
            if let Err(e) = thread("handoff-out", move || me.write_successor(conn, rx)) {
                warn!("cannot start the handoff writer: {e}");
                self.drop_successor();
            }
        }
    }

    fn write_successor(&self, conn: OwnedFd, rx: mpsc::Receiver<Outgoing>) {
        // A deadline, not a quiet spell: slot events may never pause for
        // `REFRESH`, and the counters must still move.
        let mut refresh_at = Instant::now() + REFRESH;
        loop {
            let wait = refresh_at.saturating_duration_since(Instant::now());
            let out = match rx.recv_timeout(wait) {
                Ok(out) => out,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The fresh counters come back through the queue.
                    self.streams.refresh();
                    refresh_at = Instant::now() + REFRESH;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let sent = match out {
                Outgoing::Event(SlotEvent::Take(addr)) => {
                    send(&conn, TAKE, addr.to_string().as_bytes(), None)
                }
                Outgoing::Event(SlotEvent::Release(addr)) => {
                    send(&conn, RELEASE, addr.to_string().as_bytes(), None)
                }
                Outgoing::Marker => send(&conn, HANDOFF, &[], None),
                Outgoing::Stream(change) => match encode_change(&change) {
                    Ok((tag, body)) => send(&conn, tag, &body, None),
                    Err(e) => {
                        warn!("not sent to the new process: {e}");
                        Ok(())
                    }
                },
                Outgoing::Client(c, _session) => {
                    let sent = send(&conn, CLIENT, &encode_client(&c), Some(c.fd.as_raw_fd()));
                    match &sent {
                        Ok(()) => info!("{}: passed to the new process (upgrade)", c.peer),
                        Err(e) => not_passed(&c.peer, e),
                    }
                    sent
                }
            };
            if let Err(e) = sent {
                warn!("the new process left the slot handoff: {e}");
                break;
            }
        }
        self.drop_successor();
    }

    fn drop_successor(&self) {
        self.table.unsubscribe();
        self.streams.unsubscribe();
        *self.successor.lock() = None;
    }

    /// Old process, on SIGQUIT: hands off to the connected new process, or
    /// says why it cannot.
    pub fn begin(&self, lifecycle: &Lifecycle) -> Result<(), NoSuccessor> {
        let successor = self.successor.lock();
        let Some(tx) = successor.as_ref() else {
            return Err(NoSuccessor::NotWaiting);
        };
        if !unix_listener_exists(&self.upgrade_sock) {
            return Err(NoSuccessor::NotListening(self.upgrade_sock.clone()));
        }
        // Freezing first means no grant can follow the marker.
        self.table.freeze();
        lifecycle.hand_off();
        tx.send(Outgoing::Marker).map_err(|_| NoSuccessor::Gone)
    }

    /// Old process, after handing off: passes a client to the new process.
    /// Gives the client and its session back when there is none.
    pub fn forward(
        &self,
        client: TcpStream,
        peer: &str,
        pending: Vec<u8>,
        session: SessionGuard,
    ) -> Result<(), (TcpStream, SessionGuard)> {
        let successor = self.successor.lock();
        let Some(tx) = successor.as_ref() else {
            return Err((client, session));
        };
        // If the socket cannot leave the runtime, the client is closed
        // here, as if the old process had stopped accepting.
        let client = match client.into_std() {
            Ok(client) => client,
            Err(e) => {
                not_passed(peer, &e);
                return Ok(());
            }
        };
        let client = ForwardedClient {
            fd: OwnedFd::from(client),
            peer: peer.to_string(),
            pending,
        };
        tx.send(Outgoing::Client(client, session))
            .map_err(|_| ())
            .ok();
        Ok(())
    }
}

/// The channel is served by plain threads, one per job.
fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

/// A client the old process could not pass on is closed: counted and logged.
fn not_passed(peer: &str, e: &dyn std::fmt::Display) {
    metrics::get()
        .rejected
        .with_label_values(&[Reason::HandedOff.label()])
        .inc();
    warn!("{peer}: closed: could not pass it to the new process: {e}");
}

fn seqpacket() -> std::io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

fn parse_addr(body: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

fn encode_client(c: &ForwardedClient) -> Vec<u8> {
    let peer = c.peer.as_bytes();
    let peer = &peer[..peer.len().min(255)];
    let mut out = Vec::with_capacity(1 + peer.len() + c.pending.len());
    out.push(peer.len() as u8);
    out.extend_from_slice(peer);
    out.extend_from_slice(&c.pending);
    out
}

fn decode_client(body: &[u8], fd: OwnedFd) -> Option<ForwardedClient> {
    let (&n, rest) = body.split_first()?;
    let (peer, pending) = rest.split_at_checked(n as usize)?;
    Some(ForwardedClient {
        fd,
        peer: String::from_utf8_lossy(peer).into_owned(),
        pending: pending.to_vec(),
    })
}

/// A stream change as one message: its tag and body (JSON, or the id of
/// an ended stream).
fn encode_change(change: &Change) -> Result<(u8, Vec<u8>), RecordError> {
    let (tag, body) = match change {
        Change::Upsert(record) => (STREAM, serde_json::to_vec(record)?),
        Change::Remove(id) => (STREAM_END, id.as_bytes().to_vec()),
    };
    // One byte goes to the tag.
    if body.len() >= MAX_MESSAGE {
        return Err(RecordError::TooLarge(body.len()));
    }
    Ok((tag, body))
}

fn decode_change(tag: u8, body: &[u8]) -> Result<Change, RecordError> {
    if tag == STREAM_END {
        let id = String::from_utf8_lossy(body).into_owned();
        if !valid_id(&id) {
            return Err(RecordError::BadId(id));
        }
        return Ok(Change::Remove(id));
    }
    let record: Record = serde_json::from_slice(body)?;
    if !valid_id(&record.id) {
        return Err(RecordError::BadId(record.id));
    }
    let hex_digest = |l: &String| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit());
    if !record.lookup.as_ref().is_none_or(hex_digest) {
        return Err(RecordError::BadLookup);
    }
    Ok(Change::Upsert(Box::new(record)))
}

/// `<pid>-<number>`, as [`crate::streams`] makes them.
fn valid_id(id: &str) -> bool {
    let digits = |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    id.split_once('-')
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

fn send(conn: &OwnedFd, tag: u8, body: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let tag = [tag];
    let iov = [IoSlice::new(&tag), IoSlice::new(body)];
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    sendmsg::<UnixAddr>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// One datagram: its length and the descriptor it carried, `None` at EOF.
fn receive(conn: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::Error::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed these descriptors for us alone.
                #[allow(unsafe_code)]
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if msg.bytes == 0 && fd.is_none() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fd)))
}

/// True when some process listens on the Unix socket at `path` (read from
/// /proc/net/unix, which does not disturb the listener).
pub fn unix_listener_exists(path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTCON != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, lookup: Option<&str>) -> Change {
        let view = serde_json::from_value(serde_json::json!({
            "app": "live", "key": "secr…", "role": "publish",
            "status": "identified", "reason": null,
            "backend": "127.0.0.1:1935", "client": "127.0.0.1:40000",
            "started_at": "2026-12-05T15:00:00Z",
            "bytes_up": 12345, "bytes_down": 678, "draining": false
        }))
        .unwrap();
        Change::Upsert(Box::new(Record {
            id: id.into(),
            lookup: lookup.map(str::to_owned),
            view,
        }))
    }

    #[test]
    fn stream_changes_round_trip() {
        let lookup = "ab".repeat(32);
        for change in [
            record("4242-0", Some(&lookup)),
            record("1-18446744073709551615", None),
            Change::Remove("4242-7".into()),
        ] {
            let (tag, body) = encode_change(&change).unwrap();
            assert_eq!(decode_change(tag, &body).unwrap(), change);
        }
    }

    #[test]
    fn malformed_stream_messages_are_errors() {
        let lookup = "ab".repeat(32);
        let bad = [
            (STREAM_END, b"".to_vec()),
            (STREAM_END, b"4242".to_vec()),
            (STREAM_END, b"-1".to_vec()),
            (STREAM_END, b"1-x".to_vec()),
            (STREAM_END, vec![0xff, b'-', b'1']),
            (STREAM_END, b"1-123456789012345678901".to_vec()),
            (STREAM, b"".to_vec()),
            (STREAM, b"{".to_vec()),
            (STREAM, b"{\"id\": \"1-1\"}".to_vec()),
            (STREAM, encode_change(&record("x-1", None)).unwrap().1),
            (STREAM, encode_change(&record("1-1", Some("ab"))).unwrap().1),
            (
                STREAM,
                encode_change(&record("1-1", Some(&lookup.replace('a', "g"))))
                    .unwrap()
                    .1,
            ),
        ];
        for (tag, body) in bad {
            assert!(
                decode_change(tag, &body).is_err(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn oversized_records_are_not_sent() {
        let Change::Upsert(mut r) = record("1-1", None) else {
            unreachable!()
        };
        r.view.client = "x".repeat(MAX_MESSAGE);
        assert!(matches!(
            encode_change(&Change::Upsert(r)),
            Err(RecordError::TooLarge(_))
        ));
    }
}
