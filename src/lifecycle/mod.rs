//! Process lifecycle: signals, drain, and exit when the last stream ends.
//!
//! Pingora's own handling would cut every RTMP stream: after SIGTERM or
//! SIGQUIT it sleeps `grace_period_seconds` (300 s by default) whatever
//! happens, then drops every session. Here:
//!
//! - SIGTERM: `/health` says `draining` at once, the listeners keep
//!   accepting for `drain_delay` (so DNS and load balancers move new
//!   publishers elsewhere without a refused connection), then close. Live
//!   streams run on until they end or `drain_timeout` passes.
//! - SIGQUIT (binary upgrade, see [`handoff`]): honoured only when a new
//!   process is waiting for the listening sockets; this process then stops
//!   granting slots, forwards any client it still accepts to the new
//!   process, and drains like after SIGTERM.
//! - SIGINT: exit now, in any phase (also during a drain, when Pingora no
//!   longer listens): live sessions are cut and get up to
//!   [`SIGINT_GRACE`] to write their `end` records.
//! - SIGHUP: runs the hooks given to [`Lifecycle::on_hangup`] (the access
//!   log reopens its file, for logrotate).
//! - SIGUSR1, SIGUSR2, SIGALRM: logged and ignored; their default action
//!   would kill the process and every stream with it.
//!
//! Either drain ends with `exit(0)` as soon as no session is left (Pingora's
//! grace period is set longer than `drain_timeout`, so it never cuts first).
//! At `drain_timeout` the remaining sessions are cut, each logging why.

pub mod handoff;

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{error, info, warn};
use pingora_core::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Serving = 0,
    /// SIGTERM: health says draining; listeners close after `drain_delay`.
    Draining = 1,
    /// SIGQUIT with a successor: slots and new clients belong to it.
    HandedOff = 2,
}

/// State shared by the proxy, the health endpoint and the exit logic.
pub struct Lifecycle {
    phase: AtomicU8,
    sessions: Mutex<usize>,
    sessions_changed: Condvar,
    /// Flipped at `drain_timeout`: every live session ends itself.
    cut: watch::Sender<bool>,
    /// Flipped when slots pass to a successor: queued clients move to it.
    handed_off: watch::Sender<bool>,
    drain_delay: Duration,
    drain_timeout: Duration,
    /// Run on the drain thread once the drain is over, before the exit.
    before_exit: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// Run on SIGHUP.
    hangup: Mutex<Vec<Box<dyn Fn() + Send>>>,
    exit: ExitFn,
}

/// Why the process ends. The library never exits by itself: it hands this
/// to the function `main` gave, which picks the exit code.
#[derive(Debug)]
pub enum Exit {
    /// The drain is over (SIGTERM, or the old process of an upgrade), or
    /// SIGINT cut what was left.
    Done,
    /// A listener cannot be served: the process must not stay half up.
    Fatal(String),
}

/// The signals cannot be handled: without handlers they would kill the
/// process.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot start the signal thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot handle {0}: {1}")]
    Handler(&'static str, std::io::Error),
}

/// Ends the process; `main`'s choice.
pub type ExitFn = fn(Exit) -> !;

/// How long SIGINT waits for cut sessions to write their `end` records.
pub const SIGINT_GRACE: Duration = Duration::from_secs(2);

impl Lifecycle {
    pub fn new(drain_delay: Duration, drain_timeout: Duration, exit: ExitFn) -> Arc<Self> {
        Arc::new(Self {
            exit,
            phase: AtomicU8::new(Phase::Serving as u8),
            sessions: Mutex::new(0),
            sessions_changed: Condvar::new(),
            cut: watch::channel(false).0,
            handed_off: watch::channel(false).0,
            drain_delay,
            drain_timeout,
            before_exit: Mutex::new(Vec::new()),
            hangup: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on every SIGHUP (on the signal thread: `f` bounds its own
    /// time and logs its own outcome).
    pub fn on_hangup(&self, f: impl Fn() + Send + 'static) {
        self.hangup.lock().push(Box::new(f));
    }

    /// Installs the handlers for SIGHUP, SIGINT, SIGUSR1, SIGUSR2 and
    /// SIGALRM and serves them on a thread of their own for the life of the
    /// process. Called at start-up: Pingora only asks [`Signals`] once every
    /// service runs, and until a handler is installed these signals kill
    /// the process.
    pub fn watch_signals(self: &Arc<Self>) -> Result<(), SignalError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SignalError::Thread)?;
        let install = |kind: SignalKind, name: &'static str| {
            let _in_rt = rt.enter();
            signal(kind).map_err(|e| SignalError::Handler(name, e))
        };
        let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        let mut usr1 = install(SignalKind::user_defined1(), "SIGUSR1")?;
        let mut usr2 = install(SignalKind::user_defined2(), "SIGUSR2")?;
        let mut alrm = install(SignalKind::alarm(), "SIGALRM")?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                rt.block_on(async {
                    loop {
                        tokio::select! {
                            _ = hup.recv() => me.hang_up(),
                            _ = int.recv() => break,
                            _ = usr1.recv() => info!("SIGUSR1 ignored"),
                            _ = usr2.recv() => info!("SIGUSR2 ignored"),
                            _ = alrm.recv() => info!("SIGALRM ignored"),
                        }
                    }
                });
                me.interrupt();
            })
            .map(drop)
            .map_err(SignalError::Thread)
    }

    fn hang_up(&self) {
        let hooks = self.hangup.lock();
        info!("SIGHUP: reopening ({} hook(s))", hooks.len());
        for hook in hooks.iter() {
            hook();
        }
    }

    /// SIGINT: cut every live session, give them a moment to log their
    /// end, exit.
    fn interrupt(&self) -> ! {
        let live = self.sessions();
        info!("SIGINT: exiting now; cutting {live} live session(s)");
        self.cut.send_replace(true);
        let still = self.wait_sessions_gone(SIGINT_GRACE);
        if still > 0 {
            warn!("{still} session(s) did not end after the cut; exiting anyway");
        }
        (self.exit)(Exit::Done)
    }

    /// A service cannot go on (its socket or runtime failed): logs why and
    /// ends the process.
    pub fn fatal(&self, what: &str, why: impl std::fmt::Display) -> ! {
        error!("{what}: {why}; exiting");
        (self.exit)(Exit::Fatal(format!("{what}: {why}")))
    }

    /// Runs `f` once the drain is over, just before the process exits (not
    /// after SIGINT). The exit waits for it: `f` bounds its own time.
    pub fn before_exit(&self, f: impl FnOnce() + Send + 'static) {
        self.before_exit.lock().push(Box::new(f));
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            1 => Phase::Draining,
            2 => Phase::HandedOff,
            _ => Phase::Serving,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Counts a client connection for as long as the guard lives.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        *self.sessions.lock() += 1;
        SessionGuard(self.clone())
    }

    pub fn sessions(&self) -> usize {
        *self.sessions.lock()
    }

    /// Resolves when sessions must end now (`drain_timeout` passed).
    pub fn cut_signal(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    /// Resolves when this process has handed its slots to a successor.
    pub fn handed_off_signal(&self) -> watch::Receiver<bool> {
        self.handed_off.subscribe()
    }

    pub(crate) fn hand_off(&self) {
        self.set_phase(Phase::HandedOff);
        self.handed_off.send_replace(true);
    }

    /// Waits (blocking) until no session is left or `limit` has passed;
    /// returns the number left.
    fn wait_sessions_gone(&self, limit: Duration) -> usize {
        // A limit beyond what `Instant` can hold means no limit.
        let deadline = Instant::now().checked_add(limit);
        let mut n = self.sessions.lock();
        while *n > 0 {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                // Woken by every drop to zero; an hour is only a re-check.
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            self.sessions_changed.wait_for(&mut n, left);
        }
        *n
    }

    /// Runs on its own thread from start-up: once Pingora has closed the
    /// listeners, waits for the sessions to end (or cuts them at
    /// `drain_timeout`), then exits the process.
    pub fn exit_when_drained(self: &Arc<Self>, mut phases: broadcast::Receiver<ExecutionPhase>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                loop {
                    match phases.blocking_recv() {
                        Ok(ExecutionPhase::ShutdownStarted) => break,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
                me.drain_and_exit();
            });
        if let Err(e) = spawned {
            error!(
                "cannot start the drain thread ({e}); Pingora's grace period will end the process"
            );
        }
    }

    fn drain_and_exit(&self) {
        let live = self.sessions();
        info!(
            "listeners closed; {live} stream(s) draining (up to {})",
            humantime::format_duration(self.drain_timeout)
        );
        let left = self.wait_sessions_gone(self.drain_timeout);
        if left > 0 {
            warn!("drain_timeout reached: cutting {left} live stream(s)");
            self.cut.send_replace(true);
            let still = self.wait_sessions_gone(Duration::from_secs(2));
            if still > 0 {
                warn!("{still} session(s) did not end after the cut; exiting anyway");
            }
        }
        info!("drained; exiting");
        let hooks = std::mem::take(&mut *self.before_exit.lock());
        for hook in hooks {
            hook();
        }
        (self.exit)(Exit::Done)
    }
}

/// One live client connection; dropping it may let the process exit.
pub struct SessionGuard(Arc<Lifecycle>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut n = self.0.sessions.lock();
        *n = n.saturating_sub(1);
        // The drain waits for zero; a wake-up per connection would cost a
        // system call each.
        if *n == 0 {
            self.0.sessions_changed.notify_all();
        }
    }
}

/// Pingora's shutdown signal source, replacing its plain Unix one.
pub struct Signals {
    lifecycle: Arc<Lifecycle>,
    handoff: Arc<handoff::Handoff>,
}

impl Signals {
    pub fn new(lifecycle: Arc<Lifecycle>, handoff: Arc<handoff::Handoff>) -> Self {
        Self { lifecycle, handoff }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        // SIGINT is served by [`Lifecycle::watch_signals`], in every phase.
        let (Ok(mut term), Ok(mut quit)) =
            (signal(SignalKind::terminate()), signal(SignalKind::quit()))
        else {
            error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    let delay = self.lifecycle.drain_delay;
                    self.lifecycle.set_phase(Phase::Draining);
                    crate::metrics::draining_started();
                    info!(
                        "SIGTERM: draining; /health answers 503, new clients are still served for {}",
                        humantime::format_duration(delay)
                    );
                    tokio::time::sleep(delay).await;
                    info!("closing the listeners");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    match self.handoff.begin(&self.lifecycle) {
                        Ok(()) => {
                            info!("SIGQUIT: upgrade started; handing the listening sockets to the new process");
                            return ShutdownSignal::GracefulUpgrade;
                        }
                        Err(why) => warn!("SIGQUIT ignored: {why}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_limit_beyond_any_instant_does_not_panic() {
        let lifecycle = Lifecycle::new(Duration::ZERO, Duration::MAX, |e| panic!("{e:?}"));
        assert_eq!(lifecycle.wait_sessions_gone(Duration::MAX), 0);
    }
}
