//! The proxy's listening socket and accept loops.
//!
//! One accept loop per thread, each on a single-thread runtime of its own,
//! all on the one listening socket: whichever thread is free takes the
//! next client, and a connection stays on the thread that accepted it
//! until it closes. Pingora's listening service accepts on one task and
//! spawns every connection onto a work-stealing pool; on this path that
//! cost a wake-up of another thread and a context switch per connection.
//! A socket per thread (`SO_REUSEPORT`) was measured too: the kernel's
//! even spread kept every thread waking for its share, and on a busy
//! machine that cost 10% of connections/s (see `benches/PROFILE.md`).
//!
//! The socket is entered in Pingora's table of listening descriptors as
//! `<listen>`, so a graceful upgrade passes it to the new process, which
//! listens on it without ever closing it.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use socket2::SockRef;
use tokio::net::TcpListener;

use super::edge::Edge;
use crate::core::Core;
use crate::runtime;

/// Pingora's listen backlog, kept.
const BACKLOG: i32 = 65535;

/// How long an accept loop rests after running out of descriptors or
/// memory; the connection waits in the backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The `proxy.listen` service, or a `proxy.tls` one.
pub struct Listener {
    core: Arc<Core>,
    edge: Arc<Edge>,
    addr: String,
    threads: usize,
}

impl Listener {
    pub fn new(core: Arc<Core>, edge: Edge, addr: &str, threads: usize) -> Self {
        Self {
            core,
            edge: Arc::new(edge),
            addr: addr.to_string(),
            threads: threads.max(1),
        }
    }
}

/// The listening socket of `addr` (config key `what`) inherited from a
/// previous process, or a new one, entered in the descriptor table so that
/// a graceful upgrade passes it on.
pub(crate) fn socket(
    what: &str,
    addr: &str,
    fds: Option<&ListenFds>,
) -> Result<std::net::TcpListener, ListenError> {
    let parsed: SocketAddr = addr.parse().map_err(|e| ListenError::Address {
        addr: addr.into(),
        source: e,
    })?;
    let inherited = fds.and_then(|fds| {
        let (keys, raw) = fds.lock().serialize();
        keys.iter()
            .zip(raw)
            .find_map(|(key, fd)| (key == addr).then_some(fd))
    });
    if let Some(fd) = inherited {
        // SAFETY: Pingora received this descriptor from the previous
        // process for our key, and nothing else in this process uses it.
        #[allow(unsafe_code)]
        let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // What `bind` sets, which an older process may not have. The
        // threads' duplicates share both.
        let sock = SockRef::from(&socket);
        sock.set_nonblocking(true)
            .and_then(|()| sock.set_tcp_nodelay(true))
            .map_err(ListenError::Inherited)?;
        info!("{what}: 1 listening socket(s) taken over from the previous process");
        return Ok(socket);
    }
    let socket = bind(parsed).map_err(|e| ListenError::Bind {
        addr: parsed,
        source: e,
    })?;
    if let Some(fds) = fds {
        fds.lock().add(addr.to_string(), socket.as_raw_fd());
    }
    Ok(socket)
}

/// A listening socket that cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Address {
        addr: String,
        source: std::net::AddrParseError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use an inherited socket: {0}")]
    Inherited(std::io::Error),
}

/// Something going wrong repeatedly (accept failing, a cap reached), logged
/// once when it starts and once when it ends, with the count, instead of a
/// line each time.
pub(crate) struct Episode {
    what: String,
    count: u64,
}

impl Episode {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            count: 0,
        }
    }

    /// One more occurrence; the first of an episode is logged.
    pub(crate) fn hit(&mut self, detail: impl std::fmt::Display) {
        if self.count == 0 {
            warn!("{}: {detail} (logged once until it stops)", self.what);
        }
        self.count = self.count.saturating_add(1);
    }

    /// Things work again: ends the episode, if any.
    pub(crate) fn over(&mut self) {
        if self.count > 0 {
            info!("{}: over after {} time(s)", self.what, self.count);
            self.count = 0;
        }
    }
}

/// An accept loop's failures: out of descriptors or memory, every accept
/// fails at once until something is closed, so the loop rests and logs the
/// episode, not each failure.
pub(crate) struct AcceptErrors(Episode);

impl AcceptErrors {
    pub(crate) fn new(what: &str) -> Self {
        Self(Episode::new(format!("{what}: accept failing")))
    }

    pub(crate) fn accepted(&mut self) {
        self.0.over();
    }

    /// Logs a failed accept (once per episode) and rests if it was for
    /// want of a resource. The client is still queued in the backlog:
    /// nothing is lost.
    pub(crate) async fn failed(&mut self, e: &std::io::Error) {
        if super::backend::local_shortage(e) {
            self.0.hit(e);
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        } else {
            // A client that left before its accept (ECONNABORTED): its own
            // affair, nothing this process can act on.
            log::debug!("{}: {e}", self.0.what);
        }
    }
}

/// A fresh listening socket. Accepted connections inherit its Nagle off,
/// without a system call each (RTMP control messages and acknowledgements
/// are small and must not wait).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = super::backend::tcp_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[async_trait]
impl Service for Listener {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        // The address was free at start-up (app.rs probes it); the proxy
        // port that cannot be served must not leave the process half up.
        let name = self.edge.name.clone();
        let fatal = |why: &dyn std::fmt::Display| -> ! { self.core.lifecycle.fatal(&name, why) };
        let socket = socket(&name, &self.addr, fds.as_ref()).unwrap_or_else(|e| fatal(&e));
        // Every thread accepts on the socket through a descriptor of its
        // own (its runtime's poller registers it). The first thread keeps
        // the original, whose number is in the descriptor table.
        let mut per_thread = Vec::with_capacity(self.threads);
        for _ in 1..self.threads {
            let clone = socket.try_clone();
            per_thread
                .push(clone.unwrap_or_else(|e| fatal(&format!("cannot share the socket: {e}"))));
        }
        per_thread.insert(0, socket);
        for (n, socket) in per_thread.into_iter().enumerate() {
            // After shutdown the runtime lives on with its connections
            // until they end or the process exits (`lifecycle`'s drain).
            let runtime = runtime::dedicated(&format!("{name}-{n}")).unwrap_or_else(|e| fatal(&e));
            // Non-blocking already: made so (`bind`) or set when taken over.
            let listener = {
                let _in_runtime = runtime.enter();
                TcpListener::from_std(socket)
                    .unwrap_or_else(|e| fatal(&format!("cannot use a listening socket: {e}")))
            };
            let (core, edge) = (self.core.clone(), self.edge.clone());
            runtime.spawn(accept_loop(listener, core, edge, shutdown.clone()));
        }
    }

    fn name(&self) -> &str {
        &self.edge.name
    }

    fn threads(&self) -> Option<usize> {
        // Pingora's runtime only starts the threads above.
        Some(1)
    }
}

/// Accepts clients on `listener` and serves each on a task of its own
/// until `shutdown` resolves; connections already accepted run on. The
/// in-process entry point (with [`Core::standalone`]) as well as each
/// thread's accept loop.
pub async fn run(
    listener: TcpListener,
    core: Arc<Core>,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut errors = AcceptErrors::new(&edge.name);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                errors.accepted();
                let (core, edge) = (core.clone(), edge.clone());
                tokio::spawn(async move {
                    super::serve(&core, &edge, client, peer.to_string(), Vec::new()).await
                });
            }
            Err(e) => errors.failed(&e).await,
        }
    }
    info!("{}: no longer accepting", edge.name);
}

async fn accept_loop(
    listener: TcpListener,
    core: Arc<Core>,
    edge: Arc<Edge>,
    mut shutdown: ShutdownWatch,
) {
    // One wait for shutdown for the whole loop: a fresh one per accept
    // would join and leave the channel's waiter list (a lock shared by
    // every thread) for each connection.
    let stop = async move {
        while shutdown.changed().await.is_ok() {
            if *shutdown.borrow() {
                return;
            }
        }
    };
    run(listener, core, edge, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_inherit_nagle_off() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = std::net::TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        let (accepted, _) = socket.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
