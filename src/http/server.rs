//! The HTTP/1.1 server behind the health and admin ports.
//!
//! Hyper on a dedicated runtime, like the proxy port (`proxy::listener`):
//! the socket is entered in Pingora's descriptor table, so a graceful
//! upgrade passes it on, and the runtime outlives Pingora's shutdown, so
//! both ports keep answering through a SIGTERM drain (`/health` says
//! `draining`). After a graceful upgrade the new process has the sockets
//! and this one stops accepting; requests in flight finish.
//!
//! Both ports may face the internet, so a client gets little: a deadline
//! for its request headers (also bounding an idle keep-alive connection),
//! a bounded header size, and a share of the open-file limit.
//!
//! The health port also takes a PROXY protocol header (v1 or v2) before
//! the request and skips it: a load balancer with PROXY protocol on its
//! target group sends one on its health checks as well (an AWS NLB does,
//! even to a separate health check port), and a plain HTTP server would
//! answer those with 400, so every target would look down.

use parking_lot::Mutex;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::warn;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::config::ProxyMode;
use crate::proxy::edge::{read_header, EdgeError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics;
use crate::proxy::listener::{socket, AcceptErrors, Episode};
use crate::runtime;

/// How long a client has to send its request headers, and how long a
/// keep-alive connection may wait for its next request.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// Request line and headers, at most (a longer request gets 431).
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// At most one line per this interval about bad requests, per listener.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// An error message is cut to this length in the log.
const LOG_MAX: usize = 200;

/// Answers one request; the body is complete (a length is sent).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn respond(&self, method: &Method, path: &str) -> Response<Vec<u8>>;

    /// True when a connection may open with a PROXY protocol header, which
    /// is then skipped (never trusted: the handler gets no address).
    fn skips_proxy_header(&self) -> bool {
        false
    }
}

/// Connections the health port may hold: an eighth of the open-file limit,
/// at least 16, at most 1024, so a flood there leaves the rest to streams
/// (two descriptors each).
pub fn health_cap(nofile: u64) -> usize {
    clamp_cap(nofile / 8, 16, 1024)
}

/// Connections the admin port may hold: a sixteenth of the open-file
/// limit, at least 8, at most 64 (its clients are a few scrapers and
/// people).
pub fn admin_cap(nofile: u64) -> usize {
    clamp_cap(nofile / 16, 8, 64)
}

fn clamp_cap(share: u64, min: u64, max: u64) -> usize {
    usize::try_from(share.clamp(min, max)).unwrap_or(usize::MAX)
}

/// The soft open-file limit in force (after start-up raised it).
pub fn nofile() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// One HTTP port as a Pingora service.
pub struct HttpListener {
    /// Config key, used in logs and as the metric's `listener` label.
    what: &'static str,
    addr: String,
    handler: Arc<dyn Handler>,
    cap: usize,
    lifecycle: Arc<Lifecycle>,
}

impl HttpListener {
    pub fn new(
        what: &'static str,
        addr: &str,
        handler: Arc<dyn Handler>,
        cap: usize,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            what,
            addr: addr.to_string(),
            handler,
            cap: cap.max(1),
            lifecycle,
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    what: &'static str,
    handler: Arc<dyn Handler>,
    slots: Arc<Semaphore>,
    cap: usize,
    bad_requests: RateLimited,
}

#[async_trait]
impl Service for HttpListener {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let what = self.what;
        // The address was free at start-up (app.rs probes it); a port that
        // cannot be served must not leave the process half up.
        let fatal = |e: &dyn std::fmt::Display| -> ! { self.lifecycle.fatal(what, e) };
        let socket = socket(what, &self.addr, fds.as_ref()).unwrap_or_else(|e| fatal(&e));
        let runtime = runtime::dedicated(what).unwrap_or_else(|e| fatal(&e));
        let shared = Arc::new(Shared {
            what,
            handler: self.handler.clone(),
            slots: Arc::new(Semaphore::new(self.cap)),
            cap: self.cap,
            bad_requests: RateLimited::default(),
        });
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(socket)
                .unwrap_or_else(|e| fatal(&format!("cannot use a listening socket: {e}")))
        };
        runtime.spawn(accept_loop(
            listener,
            shared,
            stopped(shutdown, self.lifecycle.clone()),
        ));
    }

    fn name(&self) -> &str {
        self.what
    }

    fn threads(&self) -> Option<usize> {
        // Pingora's runtime only starts the one above.
        Some(1)
    }
}

/// Resolves when this listener must stop accepting: at shutdown, unless
/// the process is draining after SIGTERM (then it answers until exit).
/// After a graceful upgrade, Pingora has passed the socket to the new
/// process before it signals shutdown: both accepting would split the
/// requests between them.
async fn stopped(mut shutdown: ShutdownWatch, lifecycle: Arc<Lifecycle>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    if lifecycle.phase() == Phase::Draining {
        std::future::pending::<()>().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut errors = AcceptErrors::new(shared.what);
    let mut full = Episode::new(format!("{}: connection cap reached", shared.what));
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        errors.accepted();
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            // Closed at once: a waiting connection would hold its
            // descriptor all the same.
            full.hit(format!(
                "{} connections open (the cap); closing new ones at once",
                shared.cap
            ));
            count(shared.what, "over_cap");
            continue;
        };
        full.over();
        tokio::spawn(serve(stream, shared.clone(), permit));
    }
    log::info!("{}: no longer accepting", shared.what);
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    if shared.handler.skips_proxy_header() {
        // Its own deadline: a load balancer sends the header at once, and a
        // client trickling one is closed like one trickling its headers.
        let skipped = tokio::time::timeout(HEADER_DEADLINE, skip_proxy_header(&mut stream)).await;
        match skipped {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return count(shared.what, "error"),
            Err(_) => return count(shared.what, "header_timeout"),
        }
    }
    serve_io(stream, shared, permit).await;
}

/// Reads and drops a PROXY header (v1 or v2, read exactly by the proxy
/// port's own reader) if the connection opens with the start of one;
/// anything else is left for HTTP.
async fn skip_proxy_header(stream: &mut TcpStream) -> Result<(), EdgeError> {
    let mut head = [0u8; 5];
    let n = stream
        .peek(&mut head)
        .await
        .map_err(|e| EdgeError::BadHeader(e.to_string()))?;
    let seen = head.get(..n).unwrap_or_default();
    let opens = |prefix: &[u8]| n > 0 && prefix.starts_with(seen);
    if opens(b"PROXY") || opens(b"\r\n\r\n\0") {
        read_header(stream, ProxyMode::Any).await?;
    }
    Ok(())
}

async fn serve_io<I>(io: I, shared: Arc<Shared>, _permit: OwnedSemaphorePermit)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = shared.handler.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let resp = handler.respond(req.method(), req.uri().path()).await;
            Ok::<_, Infallible>(resp.map(|body| Full::new(Bytes::from(body))))
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        let reason = reason(&e);
        count(shared.what, reason);
        // Only hyper's words, never the client's bytes: a request target
        // may hold a stream key.
        if let Some(suppressed) = shared.bad_requests.allow() {
            let mut msg = e.to_string();
            truncate(&mut msg, LOG_MAX);
            let more = if suppressed > 0 {
                format!(" ({suppressed} more since the last such line)")
            } else {
                String::new()
            };
            warn!("{}: connection closed, {reason}: {msg}{more}", shared.what);
        }
    }
}

fn reason(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        "header_timeout"
    } else if e.is_parse_too_large() {
        "header_too_large"
    } else if e.is_parse() {
        "bad_request"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else {
        "error"
    }
}

fn count(what: &str, reason: &str) {
    metrics::get()
        .http_closed
        .with_label_values(&[what, reason])
        .inc();
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at = at.saturating_sub(1);
        }
        s.truncate(at);
        s.push('…');
    }
}

/// At most one line per `LOG_INTERVAL`; counts the ones left out.
#[derive(Default)]
struct RateLimited(Mutex<(Option<Instant>, u64)>);

impl RateLimited {
    /// `Some(n)`: log now, `n` lines were left out since the last one.
    fn allow(&self) -> Option<u64> {
        let mut state = self.0.lock();
        let (last, suppressed) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL) {
            *suppressed = suppressed.saturating_add(1);
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_open_file_limit_within_bounds() {
        assert_eq!(health_cap(256), 32);
        assert_eq!(health_cap(64), 16);
        assert_eq!(health_cap(1 << 20), 1024);
        assert_eq!(admin_cap(256), 16);
        assert_eq!(admin_cap(16), 8);
        assert_eq!(admin_cap(1 << 20), 64);
    }

    #[test]
    fn lines_are_rate_limited_and_count_what_they_leave_out() {
        let limit = RateLimited::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        *limit.0.lock() = (Instant::now().checked_sub(LOG_INTERVAL), 2);
        assert_eq!(limit.allow(), Some(2));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let mut s = "é".repeat(150);
        truncate(&mut s, 201);
        assert!(s.len() <= 204 && s.ends_with('…'));
    }
}
