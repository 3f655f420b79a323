//! The TCP proxy on `proxy.listen`: one task per client connection, from
//! accept ([`listener`]) to the last byte.
//!
//! A connection goes through its phases in order (`Connection::run`):
//!
//! 1. **front** (`protocol: rtmp`): the proxy answers the handshake and
//!    the commands up to `publish` or `play` itself, so it knows app, key
//!    and role before anything is spent on the client ([`rtmp::front`]);
//! 2. **authorize** (`proxy.auth`): the platform's hook allows or denies
//!    the publish or play, and may name its server or rename it;
//! 3. **claim**: a publish of a stream already live takes the old
//!    session's slot over (or is refused); a stream the hook routed, or
//!    one that ran on a server moments ago, takes a slot there
//!    ([`publishers`]);
//! 4. **admit**: otherwise a publisher's slot by the policy, waiting in
//!    the queue if the fleet is full, and with a Redis store its shared
//!    lease; the client is watched while it waits (`watch`). A player
//!    takes no slot: it is **routed** to the server that carries its
//!    stream;
//! 5. **connect**: to the slot's backend, which gets what the client sent
//!    and in `rtmp` mode must take the stream ([`rtmp::Opening`]); other
//!    backends are tried on failure ([`backend`]);
//! 6. **splice**: bytes both ways until one side ends ([`duplex`]), the
//!    server's rewritten for the client in `rtmp` mode, the stream entered
//!    in the directory ([`rtmp::register`]); then the backend side is
//!    closed;
//! 7. **finish**: the slot is freed (after the backend's close, so a media
//!    server never sees the old and the next connection overlap), and the
//!    outcome is counted and logged with its [`Reason`], in one place. A
//!    client refused after the front is told why in RTMP first.

pub mod backend;
pub mod duplex;
pub mod edge;
pub mod listener;
pub mod publishers;
pub mod rtmp;
mod watch;

use std::net::SocketAddr;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{debug, info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::access_log::Record;
use crate::auth::{Call, Outcome as AuthOutcome, Verdict};
use crate::balancer::redis::{Lease, LeaseOutcome};
use crate::balancer::{Rejection, Slot, Unavailable};
use crate::config::{DuplicatePublish, Protocol};
use crate::core::Core;
use crate::lifecycle::handoff::ForwardedClient;
use crate::lifecycle::SessionGuard;
use crate::metrics;
pub use crate::reason::Reason;
use crate::rtmp::command::Status;
use crate::rtmp::rechunk::{self, Rechunker};
use crate::rtmp::{redact, Role};
use crate::streams::{app_name, display_app, shared_id, Registration};
use backend::ConnectError;
use duplex::{End, Flow, Side};
use edge::{ClientIo, Edge, EdgeError};
use publishers::Handover;
use rtmp::Greeted;

/// How long a refused client gets to read its RTMP error before the close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Longest wait for a session taken over to end: its media server's close
/// (at most `backend::BACKEND_CLOSE_WAIT`), or on another proxy, its
/// entry leaving the shared directory.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// How often a newcomer looks whether another proxy's session it took
/// over has left the shared directory.
const TAKEOVER_POLL: Duration = Duration::from_millis(50);

/// Numbers connections, as nginx-rtmp's `clientid` does.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one client accepted on `edge`'s listener: its PROXY header and
/// TLS handshake first, if the listener asks for them. `pending` holds
/// bytes already read from it (by an older process, for a client it
/// passed on).
pub async fn serve(
    core: &Core,
    edge: &Edge,
    mut client: TcpStream,
    peer: String,
    pending: Vec<u8>,
) {
    metrics::get().accepted.inc();
    let session = core.lifecycle.session();
    let accepted = tokio::time::Instant::now();
    // Config bounds keep this from overflowing.
    let deadline = accepted
        .checked_add(core.settings.handshake_timeout)
        .unwrap_or(accepted);
    let mut ctx = Context {
        peer,
        client_id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        ..Context::default()
    };
    let refused = |ctx: Context, e: EdgeError| async move {
        let why = format!("{}: {e}", edge.name);
        ctx.finish(core, None, Outcome::Rejected(e.reason(), why), None)
            .await;
    };
    let origin = match edge.proxy_header(&mut client, deadline).await {
        Ok(origin) => origin,
        Err(e) => return refused(ctx, e).await,
    };
    if let Some((from, _)) = origin {
        ctx.peer = from.to_string();
    }
    match edge.tls() {
        None => {
            let connection = Connection::new(core, session, client, pending, ctx, origin, deadline);
            connection.run().await;
        }
        Some(certificate) => match certificate.accept(client, deadline).await {
            Ok(tls) => {
                let connection =
                    Connection::new(core, session, tls, pending, ctx, origin, deadline);
                Box::pin(connection.run()).await;
            }
            Err(e) => refused(ctx, e).await,
        },
    }
}

/// One client connection and what it holds.
struct Connection<'a, S> {
    core: &'a Core,
    /// Keeps the process from exiting while the client is here.
    session: SessionGuard,
    client: S,
    /// The client's and our address as a PROXY header from a load
    /// balancer gave them; else they are the socket's.
    origin: Option<(SocketAddr, SocketAddr)>,
    /// The end of the client's `handshake_timeout`.
    deadline: tokio::time::Instant,
    /// Bytes read from the client and not yet sent on.
    pending: Vec<u8>,
    ctx: Context,
    /// The slot, from `admit` until `finish`.
    taken: Option<Taken>,
    /// `rtmp` mode: the client's RTMP session, from the front on. Boxed,
    /// like the RTMP phases' futures, so that a connection in `tcp` mode
    /// (and an idle one in either) carries none of it.
    greeted: Option<Box<Greeted>>,
    /// A publish, from the splice on: what a newcomer of its stream takes
    /// over, and where the stream ran for `sticky_for`.
    live: Option<publishers::Entry>,
    /// Taken over by a newcomer on this proxy: where the slot goes.
    handover: Option<Handover>,
}

/// A backend connection that has taken the client.
struct Linked {
    backend: TcpStream,
    /// What the backend sent first, for the client.
    first: Vec<u8>,
    /// `rtmp` mode: rewrites the rest of what the backend sends.
    rewrite: Option<duplex::Rewrite>,
}

/// What has been learned about a connection, for its log records.
#[derive(Default)]
struct Context {
    /// The client's address.
    peer: String,
    /// This process's number for the connection (the hook's `clientid`).
    client_id: u64,
    /// Time spent waiting for a slot.
    waited: Duration,
    backend: Option<SocketAddr>,
    flow: Option<Arc<Flow>>,
    /// The connection's entry in the stream directory (`rtmp` mode).
    stream: Option<Registration>,
    /// The last media server's refusal of the stream, for the client.
    declined: Option<Box<Status>>,
    /// From the front on: app, redacted key and role, for the log records
    /// of a connection refused before it is in the directory.
    named: Option<Box<(String, String, &'static str)>>,
    /// The auth hook's answer, when one was asked.
    auth: Option<&'static str>,
    /// How the backend was chosen (the access log's `placement`).
    placement: Option<&'static str>,
}

/// Why the phases stopped before a backend was reached.
enum Stop {
    /// Closed, for this reason; the text is for people.
    Rejected(Reason, String),
    /// A binary upgrade is under way: the new process serves the client.
    HandOver,
}

/// How a connection ended.
enum Outcome {
    Rejected(Reason, String),
    Ended(End),
}

impl<'a, S: ClientIo> Connection<'a, S> {
    fn new(
        core: &'a Core,
        session: SessionGuard,
        client: S,
        pending: Vec<u8>,
        ctx: Context,
        origin: Option<(SocketAddr, SocketAddr)>,
        deadline: tokio::time::Instant,
    ) -> Self {
        Self {
            core,
            session,
            client,
            origin,
            deadline,
            pending,
            ctx,
            taken: None,
            greeted: None,
            live: None,
            handover: None,
        }
    }

    /// The client's and our address, for a PROXY header to a backend.
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.origin
            .or_else(|| rtmp::addresses(self.client.socket()))
    }

    /// The phases, then the one end of every connection. What follows the
    /// phases runs boxed: a live connection's task holds the phases'
    /// state only.
    async fn run(mut self) {
        let outcome = self.phases().await;
        Box::pin(self.end(outcome)).await;
    }

    async fn end(mut self, outcome: Result<End, Stop>) {
        let mut told = false;
        let outcome = match outcome {
            Ok(end) => Outcome::Ended(end),
            Err(Stop::Rejected(reason, why)) => {
                told = self.refuse(reason, &why).await;
                Outcome::Rejected(reason, why)
            }
            Err(Stop::HandOver) => return self.hand_over().await,
        };
        // The session ends last: the process may exit once it has.
        let Connection {
            core,
            ctx,
            taken,
            session: _session,
            mut client,
            handover,
            ..
        } = self;
        ctx.finish(core, taken, outcome, handover).await;
        if told {
            linger(&mut client).await;
        }
    }

    async fn phases(&mut self) -> Result<End, Stop> {
        if self.core.settings.protocol == Protocol::Rtmp {
            Box::pin(self.front()).await?;
        }
        if self.greeted.is_some() {
            Box::pin(self.authorize()).await?;
        }
        let play = self.greeted.as_ref().map(|g| &g.info.role) == Some(&Role::Play);
        let linked = if play {
            Box::pin(self.route()).await?
        } else {
            let claimed = match self.greeted.is_some() {
                true => Box::pin(self.claim()).await?,
                false => None,
            };
            let pinned = claimed.as_ref().is_some_and(|c| c.1);
            let taken = match claimed {
                Some((taken, _)) => taken,
                None => self.admit().await?,
            };
            self.connect(taken, pinned).await?
        };
        Ok(self.splice(linked).await)
    }

    /// `protocol: rtmp`: the client's `publish` or `play` before any slot.
    async fn front(&mut self) -> Result<(), Stop> {
        let greeted = rtmp::front(
            &self.core.settings,
            &mut self.client,
            &mut self.pending,
            self.deadline,
        )
        .await
        .map_err(|e| Stop::Rejected(e.reason(), e.to_string()))?;
        if let Some(g) = &greeted {
            metrics::get()
                .streams_identified
                .with_label_values(&[g.info.role.label()])
                .inc();
            self.ctx.named = Some(Box::new((
                display_app(&g.info.app),
                redact(&g.info.stream_key),
                g.info.role.label(),
            )));
        }
        self.greeted = greeted.map(Box::new);
        Ok(())
    }

    /// `proxy.auth`: the platform allows or denies the publish or play,
    /// and may name its server or rename the stream.
    async fn authorize(&mut self) -> Result<(), Stop> {
        let addr = self
            .addresses()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |(client, _)| client.ip());
        let Some(g) = &mut self.greeted else {
            return Ok(());
        };
        let auth = &self.core.auth;
        if !auth.asks(&g.info.role) {
            return Ok(());
        }
        let call = Call {
            info: &g.info,
            addr,
            client_id: self.ctx.client_id,
        };
        let decision = auth.ask(&call).await;
        let m = metrics::get();
        let result = decision.outcome.label();
        m.auth
            .with_label_values(&[g.info.role.label(), result])
            .inc();
        if decision.cached {
            m.auth_cached.inc();
        }
        self.ctx.auth = Some(result);
        let directions = match decision.verdict {
            Verdict::Allow(d) => d,
            Verdict::Deny => {
                let reason = match decision.outcome {
                    AuthOutcome::FailedDenied => Reason::AuthFailed,
                    _ => Reason::AuthDenied,
                };
                return Err(Stop::Rejected(reason, decision.detail));
            }
        };
        if let Some(name) = directions.rename {
            let cut = rtmp::CLIENT_HANDSHAKE_LEN;
            let (handshake, stream) = self.pending.split_at(cut.min(self.pending.len()));
            let Some(renamed) = g.front.rename(stream, &name) else {
                return Err(Stop::Rejected(
                    Reason::AuthFailed,
                    "the auth hook renamed the stream, but the client's command could not be rewritten".into(),
                ));
            };
            let mut replay = handshake.to_vec();
            replay.extend_from_slice(&renamed);
            g.replay = Some(replay);
            g.info.stream_key = name;
            if let Some(named) = &mut self.ctx.named {
                named.1 = redact(&g.info.stream_key);
            }
        }
        g.routed = directions.backends;
        g.routed_as = directions.backend_named;
        Ok(())
    }

    /// A publish of a stream that is live already takes the old session
    /// over, slot and all (or is refused); one the hook routed takes a
    /// slot on its server or none; one that ran on a server moments ago
    /// goes back there if it can. `None`: the policy chooses. The flag
    /// says the slot is the only one the stream may have.
    async fn claim(&mut self) -> Result<Option<(Taken, bool)>, Stop> {
        let previous = self.replace_live().await?;
        let Some(g) = &self.greeted else {
            return Ok(None);
        };
        let core = self.core;
        if !g.routed.is_empty() {
            let taken = match previous {
                Some(Previous::Slot(t)) if g.routed.contains(&t.slot.addr()) => t,
                other => {
                    if let Some(Previous::Slot(t)) = other {
                        t.release().await;
                    }
                    self.take_routed().await?
                }
            };
            self.ctx.placement = Some("routed");
            return Ok(Some((taken, true)));
        }
        let (taken, placement) = match previous {
            Some(Previous::Slot(t)) => (Some(t), "takeover"),
            Some(Previous::Server(addr)) => (take_on(core, addr).await, "takeover"),
            None => {
                let id = shared_id(app_name(&g.info.app), &g.info.stream_key);
                let Some(addr) = core.publishers.recall(&id).await else {
                    return Ok(None);
                };
                let taken = take_on(core, addr).await;
                let result = if taken.is_some() { "hit" } else { "miss" };
                metrics::get().sticky.with_label_values(&[result]).inc();
                (taken, "sticky")
            }
        };
        if taken.is_some() {
            self.ctx.placement = Some(placement);
        }
        Ok(taken.map(|t| (t, false)))
    }

    /// A publish of a stream that is live already: closes the old session
    /// (`takeover`) and returns its slot, or with the session on another
    /// proxy, its server once it is gone; or refuses the newcomer
    /// (`reject`).
    async fn replace_live(&self) -> Result<Option<Previous>, Stop> {
        let Some(g) = &self.greeted else {
            return Ok(None);
        };
        let core = self.core;
        let (app, key) = (app_name(&g.info.app), g.info.stream_key.as_str());
        let id = shared_id(app, key);
        let here = core.publishers.is_live(&id);
        let elsewhere = match here {
            true => None,
            false => core
                .streams
                .find_shared(app, key)
                .await
                .filter(|v| v.get("role").and_then(|r| r.as_str()) == Some("publish"))
                .and_then(|v| v.get("backend")?.as_str()?.parse::<SocketAddr>().ok()),
        };
        if !here && elsewhere.is_none() {
            return Ok(None);
        }
        let stream = format!("{}/{}", display_app(app), redact(key));
        if core.settings.duplicate_publish == DuplicatePublish::Reject {
            let why = format!("{stream} is already being published");
            return Err(Stop::Rejected(Reason::DuplicatePublish, why));
        }
        let scope = if here { "local" } else { "fleet" };
        metrics::get().takeovers.with_label_values(&[scope]).inc();
        info!("{}: takes over {stream}", self.ctx.peer);
        let Some(addr) = elsewhere else {
            return Ok(self.take_over_here(&id).await.map(Previous::Slot));
        };
        core.publishers.take_over_elsewhere(&id);
        let gone = async {
            while core.streams.find_shared(app, key).await.is_some() {
                tokio::time::sleep(TAKEOVER_POLL).await;
            }
        };
        let _ = tokio::time::timeout(TAKEOVER_WAIT, gone).await;
        // Its lease is released by now; our counts may not know yet.
        if let Some(shared) = &core.shared {
            shared.refresh_now().await;
        }
        Ok(Some(Previous::Server(addr)))
    }

    /// The slot of this proxy's live session of `id`, once its media
    /// server has seen it close.
    async fn take_over_here(&self, id: &str) -> Option<Taken> {
        let slot = self.core.publishers.take_over(id)?;
        match tokio::time::timeout(TAKEOVER_WAIT, slot).await {
            Ok(Ok(taken)) => Some(taken),
            _ => None,
        }
    }

    /// A slot on the server the auth hook named, or why there is none:
    /// never a silent fallback to another.
    async fn take_routed(&self) -> Result<Taken, Stop> {
        let Some(g) = &self.greeted else {
            return Err(Stop::Rejected(Reason::RouteUnavailable, "no route".into()));
        };
        let core = self.core;
        let named = g.routed_as.as_deref().unwrap_or("the named server");
        let mut why = Unavailable::Unknown;
        for &addr in &g.routed {
            match core.table.try_acquire_on(addr) {
                Ok(slot) => match lease(core, slot).await {
                    Some(taken) => return Ok(taken),
                    None => why = Unavailable::Full,
                },
                // The most telling of the addresses' answers.
                Err(e) if why == Unavailable::Unknown => why = e,
                Err(_) => {}
            }
        }
        Err(Stop::Rejected(
            Reason::RouteUnavailable,
            format!("the media server the platform chose, {named}, {why}"),
        ))
    }

    /// A player goes to the server the hook named, or else to the server
    /// that carries its stream: this process's publisher, or with a Redis
    /// store any proxy's.
    async fn route(&mut self) -> Result<Linked, Stop> {
        let Some(g) = &self.greeted else {
            return Err(Stop::Rejected(Reason::StreamNotFound, "no stream".into()));
        };
        let (app, key) = (app_name(&g.info.app), g.info.stream_key.as_str());
        let streams = &self.core.streams;
        let routed = g.routed.iter().find(|&&a| self.core.table.has(a));
        if routed.is_none() && !g.routed.is_empty() {
            let named = g.routed_as.as_deref().unwrap_or("the named server");
            let why = format!(
                "the media server the platform chose, {named}, {}",
                Unavailable::Unknown
            );
            return Err(Stop::Rejected(Reason::RouteUnavailable, why));
        }
        let found = match routed {
            Some(&addr) => Some(addr),
            None => {
                let local = streams
                    .find(app, key)
                    .filter(|v| v.role.as_deref() == Some("publish"))
                    .map(|v| v.backend);
                match local {
                    Some(addr) => Some(addr),
                    None => streams
                        .find_shared(app, key)
                        .await
                        .and_then(|v| v.get("backend")?.as_str()?.parse::<SocketAddr>().ok()),
                }
            }
        };
        let Some(addr) = found else {
            let why = format!(
                "{}/{} is not being published",
                display_app(app),
                redact(key)
            );
            return Err(Stop::Rejected(Reason::StreamNotFound, why));
        };
        self.ctx.placement = Some(if g.routed.is_empty() {
            "stream"
        } else {
            "routed"
        });
        let opening = rtmp::opening(
            &self.core.settings,
            || self.addresses(),
            &self.ctx.peer,
            g.replay.as_deref().unwrap_or(&self.pending),
        );
        match self.attempt(addr, &opening).await {
            Ok(linked) => {
                self.ctx.backend = Some(addr);
                Ok(linked)
            }
            Err(e) => Err(Stop::Rejected(
                Reason::ConnectFailed,
                format!("the media server of the stream, {addr}, {e}"),
            )),
        }
    }

    /// One backend connection attempt.
    async fn attempt(
        &self,
        addr: SocketAddr,
        opening: &rtmp::Opening<'_>,
    ) -> Result<Linked, ConnectError> {
        let started = Instant::now();
        let opened = backend::open(addr, self.core.settings.connect_timeout).await;
        metrics::get()
            .connect_time
            .observe(started.elapsed().as_secs_f64());
        let mut backend = opened?;
        match &self.greeted {
            Some(g) => {
                let greeting = Box::pin(opening.greet(&mut backend, &g.front, &g.info)).await?;
                Ok(Linked {
                    backend,
                    first: greeting.first,
                    rewrite: Some(rewrite(greeting.rechunker)),
                })
            }
            None => {
                let first = opening.send(&mut backend).await?;
                Ok(Linked {
                    backend,
                    first,
                    rewrite: None,
                })
            }
        }
    }

    /// `rtmp` mode: tells a client refused after the front why, in an
    /// `onStatus` error it shows, and ends our side; true if it was told.
    async fn refuse(&mut self, reason: Reason, why: &str) -> bool {
        let Some(g) = &mut self.greeted else {
            return false;
        };
        if reason == Reason::ClientLeft {
            return false;
        }
        let play = g.info.role == Role::Play;
        let code = match (&self.ctx.declined, reason) {
            (_, Reason::StreamNotFound) => "NetStream.Play.StreamNotFound",
            // nginx-rtmp's code for "Already publishing".
            (_, Reason::DuplicatePublish) => "NetStream.Publish.BadName",
            (_, Reason::AuthDenied | Reason::AuthFailed) if !play => "NetStream.Publish.Denied",
            (Some(status), Reason::ConnectFailed) => status.code.as_str(),
            _ if play => "NetStream.Play.Failed",
            _ => "NetStream.Failed",
        };
        let mut reply = Vec::new();
        g.front
            .refuse(code, &format!("rtmp-proxy: {why}"), &mut reply);
        let client = &mut self.client;
        let told = async {
            client.write_all(&reply).await?;
            client.shutdown().await
        };
        matches!(tokio::time::timeout(REFUSAL_LINGER, told).await, Ok(Ok(())))
    }

    /// A slot (and with a Redis store its shared lease), watching the
    /// client while it waits.
    async fn admit(&mut self) -> Result<Taken, Stop> {
        let Core {
            table, settings, ..
        } = self.core;
        let queued_at = Instant::now();
        // Config bounds keep this from overflowing; if it did, wait the full time.
        let deadline = queued_at.checked_add(settings.queue_timeout);
        let mut lost_race = false;
        let admitted = loop {
            let wait = deadline.map_or(settings.queue_timeout, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let slot = tokio::select! {
                // A free slot wins over a client that has already half-closed.
                biased;
                slot = async {
                    if lost_race {
                        table.acquire_again(wait).await
                    } else {
                        table.acquire(wait).await
                    }
                } => slot,
                () = watch::queued_client(&mut self.client, &mut self.pending) => {
                    self.ctx.waited = queued_at.elapsed();
                    return Err(Stop::Rejected(Reason::ClientLeft, "client closed while queued".into()));
                }
            };
            match slot {
                Ok(slot) => match lease(self.core, slot).await {
                    Some(taken) => break Ok(taken),
                    // Another proxy took it first: wait again, at the head.
                    None => lost_race = true,
                },
                Err(e) => break Err(e),
            }
        };
        self.ctx.waited = queued_at.elapsed();
        metrics::get()
            .queue_wait
            .observe(self.ctx.waited.as_secs_f64());
        admitted.map_err(|r| match r {
            Rejection::HandedOff => Stop::HandOver,
            Rejection::QueueFull => Stop::Rejected(
                Reason::QueueFull,
                "every media server is busy and the queue is full".into(),
            ),
            Rejection::QueueTimeout => Stop::Rejected(
                Reason::QueueTimeout,
                format!(
                    "no media server came free within {}",
                    humantime::format_duration(settings.queue_timeout)
                ),
            ),
        })
    }

    /// A backend connection, sent what the client sent so far, that has
    /// taken the client; on failure the other eligible backends are tried
    /// once each, and a backend that failed (rather than declined the
    /// stream) is marked down.
    async fn connect(&mut self, mut taken: Taken, pinned: bool) -> Result<Linked, Stop> {
        let table = &self.core.table;
        let replay = self.greeted.as_ref().and_then(|g| g.replay.as_deref());
        let opening = rtmp::opening(
            &self.core.settings,
            || self.addresses(),
            &self.ctx.peer,
            replay.unwrap_or(&self.pending),
        );
        let mut tried = Vec::new();
        loop {
            let addr = taken.slot.addr();
            tried.push(addr);
            let failed = match self.attempt(addr, &opening).await {
                Ok(linked) => {
                    self.ctx.backend = Some(addr);
                    self.taken = Some(taken);
                    return Ok(linked);
                }
                // The backend connection is closed here, before its slot is freed.
                Err(e @ ConnectError::LocalShortage(_)) => {
                    taken.release().await;
                    return Err(Stop::Rejected(Reason::ConnectFailed, e.to_string()));
                }
                Err(e) => e,
            };
            let why = failed.to_string();
            warn!("{}: backend {addr} {why}; trying another", self.ctx.peer);
            if failed.marks_down() {
                table.set_health(addr, false, &why);
            }
            if let ConnectError::Declined(status) = failed {
                self.ctx.declined = Some(Box::new(status));
            }
            taken.release().await;
            if pinned {
                let why = format!("the media server the platform chose, {addr}, {why}");
                return Err(Stop::Rejected(Reason::ConnectFailed, why));
            }
            taken = loop {
                let Some(slot) = table.try_acquire_excluding(&tried) else {
                    let why = match &self.ctx.declined {
                        Some(s) => format!(
                            "no media server took the stream (tried {}); the last said: {}",
                            tried.len(),
                            s.description
                        ),
                        None => {
                            format!("no backend accepted the connection (tried {})", tried.len())
                        }
                    };
                    return Err(Stop::Rejected(Reason::ConnectFailed, why));
                };
                let addr = slot.addr();
                match lease(self.core, slot).await {
                    Some(t) => break t,
                    None => tried.push(addr),
                }
            };
        }
    }

    /// Bytes both ways until one side ends; then the backend side is
    /// closed. A stalled backend is marked down first, so that no queued
    /// client gets its slot.
    async fn splice(&mut self, linked: Linked) -> End {
        let Linked {
            mut backend,
            first,
            rewrite,
        } = linked;
        let Core {
            table,
            settings,
            lifecycle,
            access_log,
            streams,
            ..
        } = self.core;
        let m = metrics::get();
        m.served.inc();
        let Some(backend_addr) = self.ctx.backend else {
            return End::Failed(Side::Backend, "no backend".into());
        };
        let flow = Arc::new(Flow::new(m.byte_counters()));
        self.ctx.stream = self
            .greeted
            .as_ref()
            .map(|g| rtmp::register(streams, &flow, &self.ctx.peer, backend_addr, &g.info));
        if self.ctx.placement.is_none() && self.taken.is_some() {
            self.ctx.placement = Some("policy");
        }
        // A publish can be taken over from now on.
        let kick = match &self.greeted {
            Some(g) if g.info.role != Role::Play => {
                let id = shared_id(app_name(&g.info.app), &g.info.stream_key);
                let (entry, kick) = self.core.publishers.enter(id, backend_addr);
                self.live = Some(entry);
                Some(kick)
            }
            _ => None,
        };
        let handover = &mut self.handover;
        let kicked = async move {
            match kick {
                Some(kick) => match kick.await {
                    Ok(to) => *handover = to,
                    // Its entry is gone without a takeover: never fires.
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };

        flow.count(Side::Client, self.pending.len());
        // Sent, and no other backend will need it.
        self.pending = Vec::new();
        flow.count(Side::Backend, first.len());
        self.ctx.flow = Some(flow.clone());
        let timers = duplex::Timers {
            idle: settings.idle_timeout,
            stall: settings.stall_timeout,
            // Long streams log a progress line every interval.
            progress: access_log.interval,
        };
        let ctx = &self.ctx;
        let end = match self.client.write_all(&first).await {
            Ok(()) => {
                let progress = || access_log.write(ctx.record("progress", None));
                let stop = duplex::interrupted(lifecycle.cut_signal(), kicked);
                duplex::run(
                    &mut self.client,
                    &mut backend,
                    &flow,
                    timers,
                    stop,
                    progress,
                    rewrite,
                )
                .await
            }
            Err(e) => End::Failed(Side::Client, e.to_string()),
        };
        if end == End::BackendStalled {
            let why = format!(
                "took no bytes for {}",
                humantime::format_duration(settings.stall_timeout)
            );
            warn!(
                "{}: backend {backend_addr} {why}; closing the stream",
                ctx.peer
            );
            table.set_health(backend_addr, false, &why);
        }
        // After a clean end both FINs have crossed already.
        if !matches!(end, End::Closed(_)) {
            backend::close_backend(&mut backend).await;
        }
        end
    }

    /// Passes the client to the new process of an upgrade, which counts
    /// and logs it from then on; if there is none, the client is closed as
    /// `handed_off`.
    async fn hand_over(self) {
        let Connection {
            core,
            session,
            client,
            pending,
            ctx,
            taken,
            ..
        } = self;
        // A TLS session cannot leave this process: it ends as handed_off.
        let Some(socket) = client.into_socket() else {
            let why = "a TLS session cannot be passed to the new process".to_owned();
            ctx.finish(core, taken, Outcome::Rejected(Reason::HandedOff, why), None)
                .await;
            drop(session);
            return;
        };
        // Held until the client is counted: the process may exit after.
        if let Err((_socket, _session)) = core.handoff.forward(socket, &ctx.peer, pending, session)
        {
            let why = "no new process to pass the client to".to_owned();
            ctx.finish(core, taken, Outcome::Rejected(Reason::HandedOff, why), None)
                .await;
        }
    }
}

impl Context {
    /// Frees the slot, then counts and logs the outcome: every connection
    /// that was not handed over ends here. A session taken over by a
    /// newcomer on this proxy is counted and leaves the directory first,
    /// then gives its slot to the newcomer.
    async fn finish(
        self,
        core: &Core,
        taken: Option<Taken>,
        outcome: Outcome,
        handover: Option<Handover>,
    ) {
        let Some(handover) = handover else {
            if let Some(taken) = taken {
                taken.release().await;
            }
            return self.account(core, outcome);
        };
        self.account(core, outcome);
        if let Some(taken) = taken {
            if let Err(unwanted) = handover.send(taken) {
                unwanted.release().await;
            }
        }
    }

    /// Counts and logs how the connection ended.
    fn account(self, core: &Core, outcome: Outcome) {
        let ctx = &self;
        let m = metrics::get();
        let access_log = &core.access_log;
        match outcome {
            Outcome::Rejected(reason, why) => {
                m.rejected.with_label_values(&[reason.label()]).inc();
                debug!("{}: closed without a backend: {reason} ({why})", ctx.peer);
                let mut record = ctx.record("rejected", Some(reason));
                record.detail = Some(why);
                access_log.write(record);
            }
            Outcome::Ended(end) => {
                let reason = end.reason();
                m.closed.with_label_values(&[reason.label()]).inc();
                // Formatted only for a reader: with the access log off, nothing.
                let detail = || {
                    let failure = match &end {
                        End::Failed(_, e) => Some(e.clone()),
                        _ => None,
                    };
                    let stream = ctx.stream.as_ref().map(Registration::describe);
                    [failure, stream].into_iter().flatten().collect::<Vec<_>>()
                };
                if access_log.is_on() {
                    let mut last = ctx.record("end", Some(reason));
                    last.detail = Some(detail().join(", ")).filter(|d| !d.is_empty());
                    access_log.write(last);
                }
                if log::log_enabled!(log::Level::Debug) {
                    let (up, down, duration) =
                        ctx.flow.as_ref().map_or_else(Default::default, |f| {
                            let bytes =
                                |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                            (bytes(&f.from_client), bytes(&f.from_backend), f.duration())
                        });
                    let backend = ctx.backend.map(|b| b.to_string()).unwrap_or_default();
                    debug!(
                        "{} -> {backend}: {up} bytes up, {down} bytes down, {duration:.1?}, {reason}{}",
                        ctx.peer,
                        detail().iter().map(|d| format!(", {d}")).collect::<String>(),
                    );
                }
            }
        }
    }

    /// An access log record of the connection so far.
    fn record(&self, event: &'static str, reason: Option<Reason>) -> Record {
        let bytes = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (bytes_up, bytes_down, duration_ms) = self.flow.as_ref().map_or((0, 0, 0), |f| {
            (
                bytes(&f.from_client),
                bytes(&f.from_backend),
                f.duration().as_millis() as u64,
            )
        });
        let view = self.stream.as_ref().and_then(Registration::view);
        let named = self.named.as_deref();
        Record {
            event,
            client: self.peer.clone(),
            backend: self.backend.map(|b| b.to_string()),
            bytes_up,
            bytes_down,
            duration_ms,
            queue_wait_ms: self.waited.as_millis() as u64,
            reason,
            app: view
                .as_ref()
                .and_then(|v| v.app.clone())
                .or_else(|| named.map(|n| n.0.clone())),
            key: view
                .as_ref()
                .and_then(|v| v.key.clone())
                .or_else(|| named.map(|n| n.1.clone())),
            role: view
                .and_then(|v| v.role)
                .or_else(|| named.map(|n| n.2.to_owned())),
            auth: self.auth,
            placement: self.placement,
            ..Default::default()
        }
    }
}

/// The server-to-client direction of a stream whose front the proxy
/// answered: the server's chunk stream, rewritten for the client.
fn rewrite(mut rechunker: Rechunker) -> duplex::Rewrite {
    Box::new(move |bytes, out| {
        rechunker
            .feed(bytes, out, &mut |_, _| rechunk::Judgement::Forward)
            .map(|_| ())
            .map_err(|e| format!("sent RTMP not understood ({})", e.reason()))
    })
}

/// Reads what a told client still sends until it closes, for at most
/// [`REFUSAL_LINGER`]: closing with unread bytes would reset the
/// connection and could discard the error before the client reads it.
async fn linger<S: tokio::io::AsyncRead + Unpin>(client: &mut S) {
    let drain = async {
        let mut sink = [0u8; 1024];
        while matches!(tokio::io::AsyncReadExt::read(client, &mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// With a Redis slot store, the shared lease for a local slot; `None`
/// when other proxies hold the backend's last slot.
async fn lease(core: &Core, slot: Slot) -> Option<Taken> {
    let Some(shared) = &core.shared else {
        return Some(Taken { slot, lease: None });
    };
    let addr = slot.addr();
    match shared.lease(addr, core.table.max_connections(addr)).await {
        LeaseOutcome::Granted(lease) => Some(Taken {
            slot,
            lease: Some(lease),
        }),
        LeaseOutcome::Full => {
            core.table.mark_remote_full(addr);
            None
        }
    }
}

/// What a publish that took over a live session has of it.
enum Previous {
    /// Its slot (the session was on this proxy).
    Slot(Taken),
    /// Its server (the session was on another proxy, and is gone).
    Server(SocketAddr),
}

/// A free slot on `addr` (and with a Redis store its lease), if it has one.
async fn take_on(core: &Core, addr: SocketAddr) -> Option<Taken> {
    let slot = core.table.try_acquire_on(addr).ok()?;
    lease(core, slot).await
}

/// A backend slot and, with a Redis store, its shared lease.
pub struct Taken {
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
    core: Arc<Core>,
    clients: parking_lot::Mutex<Option<UnboundedReceiver<ForwardedClient>>>,
}

impl Forwarded {
    pub fn new(core: Arc<Core>, clients: UnboundedReceiver<ForwardedClient>) -> Self {
        Self {
            core,
            clients: parking_lot::Mutex::new(Some(clients)),
        }
    }
}

#[async_trait]
impl BackgroundService for Forwarded {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let taken = self.clients.lock().take();
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
            let core = self.core.clone();
            tokio::spawn(async move {
                // Its PROXY header and TLS were the old process's affair.
                let edge = Edge::plain("upgrade");
                serve(&core, &edge, stream, c.peer, c.pending).await
            });
        }
    }
}
