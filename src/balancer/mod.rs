//! The slot table: which backends exist, which are healthy, how many proxied
//! connections each holds, and who waits for a free slot.
//!
//! Pingora's `LoadBalancer` keeps no per-backend counters and rebuilds its
//! selector on every discovery update, so exact slot accounting lives here,
//! keyed by backend address, beside it. One mutex guards the whole table:
//! choosing a backend and taking its slot is a single step, so no race can
//! give a backend more than its `max_connections`.
//!
//! A taken slot is a [`Slot`] value; dropping it frees the slot and serves
//! the head of the wait queue at once.

pub mod gauges;
pub mod policy;
pub mod redis;

use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use serde::Serialize;
use tokio::sync::oneshot;

use policy::Candidate;
pub use policy::Policy;

/// What discovery says about one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: usize,
    /// `0` means unlimited.
    pub max_connections: usize,
    /// `static`, or the discovery source's id for it (a Cloud Map instance id).
    pub source: String,
    /// The ECS task behind it, when discovery knows (Cloud Map instances
    /// registered by ECS service discovery): for scale-in protection.
    pub task: Option<TaskRef>,
}

/// An ECS task: its id and, when known, its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskRef {
    pub id: String,
    pub cluster: Option<String>,
}

/// One backend as the table tracks it.
#[derive(Debug, Clone)]
struct Backend {
    member: Member,
    active: usize,
    /// Of `active`, slots held by the previous process of an upgrade.
    inherited: usize,
    /// Slots other proxies hold on it (shared store only).
    remote: usize,
    healthy: bool,
    /// Still in the latest discovery answer. A backend that left keeps its
    /// live connections (and their slots) until they end.
    present: bool,
}

impl Backend {
    fn has_free_slot(&self) -> bool {
        self.member.max_connections == 0 || self.load() < self.member.max_connections
    }

    /// This process's slots plus other proxies'.
    fn load(&self) -> usize {
        self.active + self.remote
    }
}

/// A backend as shown by `/backends`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub addr: SocketAddr,
    pub weight: usize,
    pub max_connections: usize,
    pub active: usize,
    /// Of `active`, streams still running on the previous process of a
    /// binary upgrade.
    pub inherited: usize,
    /// Slots other proxies hold on it (Redis slot store).
    pub remote: usize,
    pub healthy: bool,
    /// False once discovery has dropped it; it stays listed while it still
    /// holds connections.
    pub present: bool,
    pub source: String,
    /// When discovery last answered successfully (RFC 3339).
    pub refreshed_at: String,
    /// The ECS task behind it, for scale-in protection (not shown as is).
    #[serde(skip)]
    pub task: Option<TaskRef>,
}

/// A slot taken or freed, as told to a successor process (see
/// `lifecycle::handoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotEvent {
    Take(SocketAddr),
    Release(SocketAddr),
}

type Subscriber = Box<dyn Fn(SlotEvent) + Send>;

/// Why a client got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The wait queue was full (or disabled) when the client arrived.
    QueueFull,
    /// The client waited `queue_timeout` without a slot coming free.
    QueueTimeout,
    /// This process handed its slots to a new process (binary upgrade);
    /// the client belongs there.
    HandedOff,
}

/// Why a backend named for a client has no slot for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Not a backend of the fleet (or one discovery has dropped).
    Unknown,
    /// Marked down by health checks or a failed connection.
    Down,
    /// Every slot is taken (or the global cap is reached).
    Full,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "is not a media server of the fleet",
            Self::Down => "is down",
            Self::Full => "has no free slot",
        })
    }
}

/// Limits that do not belong to one backend.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Global cap on taken slots; `None` when only the backends' caps apply.
    pub global_cap: Option<usize>,
    /// Most clients waiting at once; `0` disables the queue.
    pub max_queue: usize,
}

pub struct SlotTable {
    inner: Mutex<Inner>,
    limits: Limits,
}

struct Inner {
    /// Stable order: the order of the latest discovery answer, then backends
    /// that left it. `first` balancing depends on it.
    backends: Vec<Backend>,
    policy: Box<dyn Policy>,
    active_total: usize,
    queue: VecDeque<Waiter>,
    next_waiter: u64,
    /// When `sync` last ran: discovery's last successful answer.
    synced_at: Option<std::time::SystemTime>,
    /// Told of every take and release, while a successor listens.
    subscriber: Option<Subscriber>,
    /// No more grants: the slots belong to a successor process.
    frozen: bool,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<SocketAddr>,
}

impl SlotTable {
    pub fn new(policy: Box<dyn Policy>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                backends: Vec::new(),
                policy,
                active_total: 0,
                queue: VecDeque::new(),
                next_waiter: 0,
                synced_at: None,
                subscriber: None,
                frozen: false,
            }),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Takes a slot, waiting in the FIFO queue up to `wait` if none is free.
    ///
    /// Dropping the returned future (the client left) removes its place in
    /// the queue.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Slot, Rejection> {
        self.acquire_at(wait, false).await
    }

    /// Like [`SlotTable::acquire`] for a client that lost its slot to
    /// another proxy (Redis store) after waiting its turn: it goes back to
    /// the head of the queue, whatever the queue's length.
    pub async fn acquire_again(self: &Arc<Self>, wait: Duration) -> Result<Slot, Rejection> {
        self.acquire_at(wait, true).await
    }

    async fn acquire_at(self: &Arc<Self>, wait: Duration, head: bool) -> Result<Slot, Rejection> {
        let (id, mut granted) = {
            let mut inner = self.lock();
            if inner.frozen {
                return Err(Rejection::HandedOff);
            }
            if inner.queue.is_empty() {
                if let Some(addr) = inner.take(self.limits.global_cap, &[]) {
                    return Ok(Slot::new(self, addr));
                }
            }
            if !head && inner.queue.len() >= self.limits.max_queue {
                return Err(Rejection::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = inner.next_waiter;
            inner.next_waiter += 1;
            let waiter = Waiter { id, grant: tx };
            if head {
                inner.queue.push_front(waiter);
            } else {
                inner.queue.push_back(waiter);
            }
            (id, rx)
        };
        // A slot may have come free between the failed take and queueing.
        self.dispatch();
        let leave = LeaveQueue { table: self, id };
        let outcome = tokio::time::timeout(wait, &mut granted).await;
        drop(leave);
        match outcome {
            Ok(Ok(addr)) => Ok(Slot::new(self, addr)),
            // The queue is only emptied under us when the table freezes.
            Ok(Err(_)) => Err(Rejection::HandedOff),
            // Granted at the last moment: take it rather than leak it.
            Err(_) => match granted.try_recv() {
                Ok(addr) => Ok(Slot::new(self, addr)),
                Err(_) => Err(Rejection::QueueTimeout),
            },
        }
    }

    /// Takes a free slot on a backend not in `tried`, without queueing: a
    /// retry after a failed connect.
    pub fn try_acquire_excluding(self: &Arc<Self>, tried: &[SocketAddr]) -> Option<Slot> {
        let addr = self.lock().take(self.limits.global_cap, tried)?;
        Some(Slot::new(self, addr))
    }

    /// Whether `addr` is a backend of the fleet (and not one discovery
    /// has dropped).
    pub fn has(&self, addr: SocketAddr) -> bool {
        self.lock()
            .backends
            .iter()
            .any(|b| b.member.addr == addr && b.present)
    }

    /// Takes a free slot on `addr` itself, without queueing: a stream
    /// routed there by the platform, or going back where it was.
    pub fn try_acquire_on(self: &Arc<Self>, addr: SocketAddr) -> Result<Slot, Unavailable> {
        let mut inner = self.lock();
        let i = inner
            .backends
            .iter()
            .position(|b| b.member.addr == addr && b.present)
            .ok_or(Unavailable::Unknown)?;
        let b = &inner.backends[i];
        if !b.healthy {
            return Err(Unavailable::Down);
        }
        let capped = self
            .limits
            .global_cap
            .is_some_and(|cap| inner.active_total >= cap);
        if inner.frozen || capped || !b.has_free_slot() {
            return Err(Unavailable::Full);
        }
        inner.take_at(i);
        drop(inner);
        Ok(Slot::new(self, addr))
    }

    /// Replaces the set of present backends with `members`, in order.
    /// Backends that left stay while they hold connections; counts of a
    /// backend that comes back carry on. `fresh`: every discovery source
    /// answered (rather than some repeating their last good answer).
    pub fn sync(&self, members: &[Member], fresh: bool) {
        {
            let mut inner = self.lock();
            let mut old = std::mem::take(&mut inner.backends);
            let mut next = Vec::with_capacity(members.len());
            for m in members {
                match old.iter().position(|b| b.member.addr == m.addr) {
                    Some(i) => {
                        let mut b = old.swap_remove(i);
                        if !b.present {
                            info!("backend {} is back ({})", m.addr, m.source);
                        }
                        b.member = m.clone();
                        b.present = true;
                        next.push(b);
                    }
                    None => {
                        info!("backend {} added ({})", m.addr, m.source);
                        next.push(Backend {
                            member: m.clone(),
                            active: 0,
                            inherited: 0,
                            remote: 0,
                            // As in Pingora: new backends start healthy and
                            // the first check or failed connect says otherwise.
                            healthy: true,
                            present: true,
                        })
                    }
                }
            }
            for mut b in old {
                if b.present {
                    info!(
                        "backend {} removed ({}), {} live connection(s) keep running",
                        b.member.addr, b.member.source, b.active
                    );
                }
                b.present = false;
                if b.active > 0 {
                    next.push(b);
                } else {
                    inner.policy.forget(&b.member.addr);
                }
            }
            inner.backends = next;
            if fresh {
                inner.synced_at = Some(std::time::SystemTime::now());
            }
        }
        self.dispatch();
    }

    /// Records a health check result or a failed proxy connect.
    pub fn set_health(&self, addr: SocketAddr, healthy: bool, why: &str) {
        let came_up = {
            let mut inner = self.lock();
            let Some(b) = inner.backends.iter_mut().find(|b| b.member.addr == addr) else {
                return;
            };
            if b.healthy == healthy {
                return;
            }
            b.healthy = healthy;
            if healthy {
                info!("backend {addr} is up");
            } else {
                warn!("backend {addr} is down: {why}");
            }
            healthy
        };
        if came_up {
            self.dispatch();
        }
    }

    /// True when at least one present backend is healthy.
    pub fn any_healthy(&self) -> bool {
        self.lock().backends.iter().any(|b| b.present && b.healthy)
    }

    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn snapshot(&self) -> Vec<BackendView> {
        let inner = self.lock();
        let refreshed_at = inner
            .synced_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        inner
            .backends
            .iter()
            .map(|b| BackendView {
                addr: b.member.addr,
                weight: b.member.weight,
                max_connections: b.member.max_connections,
                active: b.active,
                inherited: b.inherited,
                remote: b.remote,
                healthy: b.healthy,
                present: b.present,
                source: b.member.source.clone(),
                refreshed_at: refreshed_at.clone(),
                task: b.member.task.clone(),
            })
            .collect()
    }

    fn release(&self, addr: SocketAddr) {
        self.lock().release(addr, false);
        self.dispatch();
    }

    /// Tells `subscriber` of every slot held now (as takes) and of every
    /// take and release from now on; returns how many are held.
    pub fn subscribe(&self, subscriber: impl Fn(SlotEvent) + Send + 'static) -> usize {
        let mut inner = self.lock();
        let mut held = 0;
        for b in &inner.backends {
            for _ in 0..b.active {
                subscriber(SlotEvent::Take(b.member.addr));
                held += 1;
            }
        }
        inner.subscriber = Some(Box::new(subscriber));
        held
    }

    pub fn unsubscribe(&self) {
        self.lock().subscriber = None;
    }

    /// Stops granting slots for good: queued clients are told
    /// [`Rejection::HandedOff`]; held slots are still released as they end.
    pub fn freeze(&self) {
        let mut inner = self.lock();
        inner.frozen = true;
        inner.queue.clear();
    }

    /// Counts a slot held by the previous process of an upgrade.
    pub fn inherit(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        let i = match inner.backends.iter().position(|b| b.member.addr == addr) {
            Some(i) => i,
            None => {
                // Not discovered here yet: tracked like a backend that left,
                // until discovery names it or its last slot ends.
                inner.backends.push(Backend {
                    member: Member {
                        addr,
                        weight: 1,
                        max_connections: 0,
                        source: "inherited".into(),
                        task: None,
                    },
                    active: 0,
                    inherited: 0,
                    remote: 0,
                    healthy: true,
                    present: false,
                });
                inner.backends.len() - 1
            }
        };
        inner.backends[i].active += 1;
        inner.backends[i].inherited += 1;
        inner.active_total += 1;
        inner.notify(SlotEvent::Take(addr));
    }

    /// A stream of the previous process ended.
    pub fn release_inherited(&self, addr: SocketAddr) {
        self.lock().release(addr, true);
        self.dispatch();
    }

    /// The previous process is gone, and with it every stream it held;
    /// returns how many slots that freed.
    pub fn clear_inherited(&self) -> usize {
        let freed = {
            let mut inner = self.lock();
            let held: Vec<(SocketAddr, usize)> = inner
                .backends
                .iter()
                .filter(|b| b.inherited > 0)
                .map(|b| (b.member.addr, b.inherited))
                .collect();
            for &(addr, n) in &held {
                for _ in 0..n {
                    inner.release(addr, true);
                }
            }
            held.iter().map(|(_, n)| n).sum()
        };
        self.dispatch();
        freed
    }

    /// Sets how many slots other proxies hold on each backend; frees the
    /// queue if that made room.
    pub fn set_remote(&self, counts: &[(SocketAddr, usize)]) {
        let mut freed = false;
        {
            let mut inner = self.lock();
            for &(addr, n) in counts {
                if let Some(b) = inner.backends.iter_mut().find(|b| b.member.addr == addr) {
                    freed |= n < b.remote;
                    b.remote = n;
                }
            }
        }
        if freed {
            self.dispatch();
        }
    }

    /// Another proxy took the last slot of `addr` before us: count it full
    /// until the next refresh says otherwise.
    pub fn mark_remote_full(&self, addr: SocketAddr) {
        let mut inner = self.lock();
        if let Some(b) = inner.backends.iter_mut().find(|b| b.member.addr == addr) {
            b.remote = b
                .remote
                .max(b.member.max_connections.saturating_sub(b.active));
        }
    }

    /// The cap of `addr` (0 = unlimited).
    pub fn max_connections(&self, addr: SocketAddr) -> usize {
        self.lock()
            .backends
            .iter()
            .find(|b| b.member.addr == addr)
            .map_or(0, |b| b.member.max_connections)
    }

    /// Slots held by the previous process of an upgrade.
    pub fn inherited(&self) -> usize {
        self.lock().backends.iter().map(|b| b.inherited).sum()
    }

    /// Serves queued clients in order while slots are free. Grants are sent
    /// after the lock is released: a grant whose client has just left is
    /// dropped as a [`Slot`], which releases it through the normal path.
    fn dispatch(&self) {
        let mut grants = Vec::new();
        {
            let mut inner = self.lock();
            while !inner.queue.is_empty() {
                let Some(addr) = inner.take(self.limits.global_cap, &[]) else {
                    break;
                };
                if let Some(w) = inner.queue.pop_front() {
                    grants.push((w.grant, addr));
                }
            }
        }
        for (tx, addr) in grants {
            if let Err(addr) = tx.send(addr) {
                self.release(addr);
            }
        }
    }
}

impl Inner {
    fn notify(&self, event: SlotEvent) {
        if let Some(subscriber) = &self.subscriber {
            subscriber(event);
        }
    }

    fn release(&mut self, addr: SocketAddr, inherited: bool) {
        self.active_total = self.active_total.saturating_sub(1);
        if let Some(i) = self.backends.iter().position(|b| b.member.addr == addr) {
            let b = &mut self.backends[i];
            b.active = b.active.saturating_sub(1);
            if inherited {
                b.inherited = b.inherited.saturating_sub(1);
            }
            if !b.present && b.active == 0 {
                self.backends.remove(i);
                self.policy.forget(&addr);
            }
        }
        self.notify(SlotEvent::Release(addr));
    }

    /// Picks an eligible backend with the policy and takes one of its slots.
    fn take(&mut self, global_cap: Option<usize>, tried: &[SocketAddr]) -> Option<SocketAddr> {
        if self.frozen || global_cap.is_some_and(|cap| self.active_total >= cap) {
            return None;
        }
        let eligible: Vec<usize> = (0..self.backends.len())
            .filter(|&i| {
                let b = &self.backends[i];
                b.present && b.healthy && b.has_free_slot() && !tried.contains(&b.member.addr)
            })
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|&i| {
                let b = &self.backends[i];
                Candidate {
                    addr: b.member.addr,
                    weight: b.member.weight,
                    active: b.load(),
                }
            })
            .collect();
        let picked = self.policy.pick(&candidates).min(eligible.len() - 1);
        Some(self.take_at(eligible[picked]))
    }

    /// Takes one slot of backend `i`, which has a free one.
    fn take_at(&mut self, i: usize) -> SocketAddr {
        let b = &mut self.backends[i];
        b.active += 1;
        let addr = b.member.addr;
        self.active_total += 1;
        self.notify(SlotEvent::Take(addr));
        addr
    }
}

/// Removes a waiter from the queue when its wait ends, however it ends.
struct LeaveQueue<'a> {
    table: &'a SlotTable,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.table.lock().queue.retain(|w| w.id != self.id);
    }
}

/// One taken slot on one backend, freed when dropped.
pub struct Slot {
    table: Arc<SlotTable>,
    addr: SocketAddr,
}

impl Slot {
    fn new(table: &Arc<SlotTable>, addr: SocketAddr) -> Self {
        Self {
            table: table.clone(),
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.addr);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;

    fn member(port: u16, max: usize) -> Member {
        Member {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 10,
            max_connections: max,
            source: "static".into(),
            task: None,
        }
    }

    fn table(balance: Balance, members: &[Member], max_queue: usize) -> Arc<SlotTable> {
        let t = SlotTable::new(
            policy::from_config(balance),
            Limits {
                global_cap: None,
                max_queue,
            },
        );
        t.sync(members, true);
        t
    }

    const NOW: Duration = Duration::from_millis(1);

    #[test]
    fn a_named_backend_gives_its_own_slot_or_says_why_not() {
        let (a, b) = (member(1, 1), member(2, 1));
        let t = table(Balance::Roundrobin, &[a.clone(), b.clone()], 0);
        let held = t.try_acquire_on(b.addr);
        assert_eq!(held.as_ref().map(Slot::addr).ok(), Some(b.addr));
        assert_eq!(t.try_acquire_on(b.addr).err(), Some(Unavailable::Full));
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], 9));
        assert_eq!(
            t.try_acquire_on(elsewhere).err(),
            Some(Unavailable::Unknown)
        );
        t.set_health(a.addr, false, "test");
        assert_eq!(t.try_acquire_on(a.addr).err(), Some(Unavailable::Down));
        drop(held);
        assert!(t.try_acquire_on(b.addr).is_ok());
    }

    #[tokio::test]
    async fn caps_are_exact_and_slots_come_back() {
        let t = table(Balance::Roundrobin, &[member(1, 1), member(2, 1)], 0);
        let a = t.acquire(NOW).await.unwrap();
        let b = t.acquire(NOW).await.unwrap();
        assert_ne!(a.addr(), b.addr());
        assert_eq!(t.acquire(NOW).await.unwrap_err(), Rejection::QueueFull);
        let freed = a.addr();
        drop(a);
        assert_eq!(t.acquire(NOW).await.unwrap().addr(), freed);
    }

    #[tokio::test]
    async fn queue_is_served_in_order_on_release() {
        let t = table(Balance::Roundrobin, &[member(1, 1)], 8);
        let held = t.acquire(NOW).await.unwrap();
        let t1 = t.clone();
        let first = tokio::spawn(async move { t1.acquire(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t2 = t.clone();
        let second = tokio::spawn(async move { t2.acquire(Duration::from_millis(200)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(t.queued(), 2);
        drop(held);
        let got = first.await.unwrap().unwrap();
        assert_eq!(second.await.unwrap().unwrap_err(), Rejection::QueueTimeout);
        assert_eq!(t.queued(), 0);
        drop(got);
        assert_eq!(t.snapshot()[0].active, 0);
    }

    #[tokio::test]
    async fn a_client_that_leaves_the_queue_loses_its_place() {
        let t = table(Balance::Roundrobin, &[member(1, 1)], 1);
        let held = t.acquire(NOW).await.unwrap();
        let t1 = t.clone();
        let waiting = tokio::spawn(async move { t1.acquire(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(t.queued(), 0);
        drop(held);
        assert_eq!(t.snapshot()[0].active, 0);
    }

    #[tokio::test]
    async fn removed_backend_keeps_its_slot_until_released() {
        let t = table(Balance::Roundrobin, &[member(1, 1)], 0);
        let held = t.acquire(NOW).await.unwrap();
        t.sync(&[], true);
        let view = t.snapshot();
        assert_eq!((view.len(), view[0].present, view[0].active), (1, false, 1));
        t.sync(&[member(1, 1)], true);
        assert!(
            t.acquire(NOW).await.is_err(),
            "the returning backend is still full"
        );
        drop(held);
        assert_eq!(t.snapshot()[0].active, 0);
        t.sync(&[], true);
        assert!(t.snapshot().is_empty());
    }

    #[tokio::test]
    async fn down_backends_are_skipped_and_retries_exclude() {
        let t = table(Balance::First, &[member(1, 0), member(2, 0)], 0);
        t.set_health(member(1, 0).addr, false, "test");
        assert_eq!(t.acquire(NOW).await.unwrap().addr(), member(2, 0).addr);
        t.set_health(member(1, 0).addr, true, "test");
        assert!(t
            .try_acquire_excluding(&[member(1, 0).addr, member(2, 0).addr])
            .is_none());
        assert_eq!(
            t.try_acquire_excluding(&[member(1, 0).addr])
                .unwrap()
                .addr(),
            member(2, 0).addr
        );
    }

    #[tokio::test]
    async fn global_cap_queues() {
        let t = SlotTable::new(
            policy::from_config(Balance::Roundrobin),
            Limits {
                global_cap: Some(1),
                max_queue: 4,
            },
        );
        t.sync(&[member(1, 0), member(2, 0)], true);
        let _a = t.acquire(NOW).await.unwrap();
        assert_eq!(t.acquire(NOW).await.unwrap_err(), Rejection::QueueTimeout);
    }
}
