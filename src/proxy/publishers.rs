//! Who publishes which stream, and where each stream last ran: so that a
//! publish of a key that is already live takes over the stale session (or
//! is refused), and a publisher that comes back soon goes to the media
//! server it left, where its HLS output and the origin's routing still are.
//!
//! Streams are known by their id in the shared directory (a hash of app
//! and key). With a Redis store both hold across proxies: a takeover is
//! asked for on a pub/sub channel, and the last server of a stream is kept
//! under its id, never its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use log::debug;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Taken;
use crate::balancer::redis::Store;

/// Most streams remembered for `sticky_for` in this process: a flood of
/// short publishes of distinct keys cannot grow it without bound.
const MAX_REMEMBERED: usize = 100_000;

/// Where a session that is taken over sends its slot, once its media
/// server has seen the close.
pub type Handover = oneshot::Sender<Taken>;

/// Tells a live session it is taken over: with a [`Handover`] for a
/// newcomer on this proxy, without one for a newcomer on another.
pub type Kick = oneshot::Receiver<Option<Handover>>;

pub struct Publishers {
    live: Mutex<HashMap<String, Live>>,
    recent: Mutex<HashMap<String, (SocketAddr, Instant)>>,
    sticky_for: Duration,
    fleet: OnceLock<Arc<Store>>,
    next_session: AtomicU64,
}

struct Live {
    session: u64,
    kick: oneshot::Sender<Option<Handover>>,
}

/// A live publish in [`Publishers`]; dropped when the session ends, which
/// also remembers its server for `sticky_for`.
pub struct Entry {
    publishers: Arc<Publishers>,
    id: String,
    session: u64,
    backend: SocketAddr,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let p = &self.publishers;
        {
            let mut live = p.live.lock();
            if live
                .get(&self.id)
                .is_some_and(|l| l.session == self.session)
            {
                live.remove(&self.id);
            }
        }
        p.remember(&self.id, self.backend);
    }
}

impl Publishers {
    pub fn new(sticky_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            sticky_for,
            fleet: OnceLock::new(),
            next_session: AtomicU64::new(0),
        })
    }

    /// From now on takeovers and sticky servers are fleet-wide, through
    /// `store`; listens for other proxies' takeovers.
    pub fn set_fleet(self: &Arc<Self>, store: Arc<Store>) {
        if self.fleet.set(store.clone()).is_ok() {
            let runtime = store.runtime.clone();
            runtime.spawn(self.clone().listen_takeovers(store));
        }
    }

    /// Enters a publish that has just gone live on `backend`; the
    /// returned [`Kick`] fires if a newcomer takes it over.
    pub fn enter(self: &Arc<Self>, id: String, backend: SocketAddr) -> (Entry, Kick) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        self.live.lock().insert(id.clone(), Live { session, kick });
        let entry = Entry {
            publishers: self.clone(),
            id,
            session,
            backend,
        };
        (entry, kicked)
    }

    /// Whether this process has a live publish of `id`.
    pub fn is_live(&self, id: &str) -> bool {
        self.live.lock().contains_key(id)
    }

    /// Takes over this process's live publish of `id`: its slot arrives
    /// on the returned receiver once its server has seen it close. `None`
    /// when there is none (or it is ending anyway).
    pub fn take_over(&self, id: &str) -> Option<oneshot::Receiver<Taken>> {
        let live = self.live.lock().remove(id)?;
        let (handover, slot) = oneshot::channel();
        live.kick.send(Some(handover)).ok()?;
        Some(slot)
    }

    /// Asks the proxy that has `id` live to close it. Fire and forget: the
    /// caller watches the shared directory for the stream to leave.
    pub fn take_over_elsewhere(&self, id: &str) {
        let Some(store) = self.fleet.get() else {
            return;
        };
        let (mut conn, channel, id) = (store.conn.clone(), takeover_channel(store), id.to_owned());
        let store = store.clone();
        store.runtime.clone().spawn(async move {
            let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(id)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                store.set_degraded(true, &e.to_string());
            }
        });
    }

    /// The server `id` last ran on, if it ended less than `sticky_for` ago:
    /// this process's memory first, then the fleet's.
    pub async fn recall(&self, id: &str) -> Option<SocketAddr> {
        if self.sticky_for.is_zero() {
            return None;
        }
        let local = self
            .recent
            .lock()
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.sticky_for)
            .map(|(addr, _)| *addr);
        if local.is_some() {
            return local;
        }
        let store = self.fleet.get()?;
        store.get(sticky_key(store, id)).await?.parse().ok()
    }

    fn remember(&self, id: &str, backend: SocketAddr) {
        if self.sticky_for.is_zero() {
            return;
        }
        {
            let mut recent = self.recent.lock();
            if recent.len() >= MAX_REMEMBERED {
                let sticky_for = self.sticky_for;
                recent.retain(|_, (_, at)| at.elapsed() < sticky_for);
            }
            if recent.len() < MAX_REMEMBERED {
                recent.insert(id.to_owned(), (backend, Instant::now()));
            }
        }
        let Some(store) = self.fleet.get() else {
            return;
        };
        let ttl_ms = self.sticky_for.as_millis().max(1) as u64;
        store.set_px(sticky_key(store, id), backend.to_string(), ttl_ms);
    }

    /// Closes our sessions that other proxies take over, for as long as
    /// the process runs; resubscribes after Redis comes back.
    async fn listen_takeovers(self: Arc<Self>, store: Arc<Store>) {
        loop {
            match store.client().get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(takeover_channel(&store)).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(m) = messages.next().await {
                            let Ok(id) = m.get_payload::<String>() else {
                                continue;
                            };
                            if let Some(live) = self.live.lock().remove(&id) {
                                debug!("another proxy takes over a stream of ours");
                                let _ = live.kick.send(None);
                            }
                        }
                    }
                }
                // Logged once per outage, as the slots' own listener does.
                Err(e) => store.set_degraded(true, &e.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn takeover_channel(store: &Store) -> String {
    format!("{}:takeover", store.prefix)
}

fn sticky_key(store: &Store, id: &str) -> String {
    format!("{}:sticky:{id}", store.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_session_that_ends_is_remembered_for_sticky_for_only() {
        let p = Publishers::new(Duration::from_secs(30));
        let (entry, _kick) = p.enter("s".into(), addr(1));
        assert!(p.is_live("s"));
        assert_eq!(p.recall("s").await, None);
        drop(entry);
        assert!(!p.is_live("s"));
        assert_eq!(p.recall("s").await, Some(addr(1)));
        assert_eq!(p.recall("other").await, None);

        let off = Publishers::new(Duration::ZERO);
        drop(off.enter("s".into(), addr(1)));
        assert_eq!(off.recall("s").await, None);
    }

    #[tokio::test]
    async fn a_takeover_kicks_the_live_session_once() {
        let p = Publishers::new(Duration::from_secs(30));
        let (old, kick) = p.enter("s".into(), addr(1));
        let slot = p.take_over("s");
        assert!(slot.is_some());
        assert!(matches!(kick.await, Ok(Some(_))));
        // It is no longer live: a second newcomer finds nothing to take.
        assert!(p.take_over("s").is_none());
        // The newcomer's entry survives the old one's end.
        let (_new, _kick) = p.enter("s".into(), addr(1));
        drop(old);
        assert!(p.is_live("s"));
    }
}
