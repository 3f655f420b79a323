//! Where backends come from: sources behind Pingora's `ServiceDiscovery`
//! trait, combined into one [`Fleet`] that feeds both Pingora's
//! `LoadBalancer` (which runs discovery and health checks on schedule) and
//! our slot table.
//!
//! Each source describes its backends as Pingora `Backend`s carrying a
//! [`Member`] (cap, source id) and an [`Order`] in their extensions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use log::warn;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::Result;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;

pub mod cloud_map;

use crate::balancer::{Member, SlotTable};
use crate::config::StaticBackend;
use crate::metrics;

/// Position of a backend within its source, for `first` balancing: config
/// order for static backends. Backends without one sort by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order(pub usize);

/// Wraps a member as the `Backend` Pingora's load balancer tracks.
pub fn backend(member: Member, order: Option<Order>) -> Backend {
    let mut b = Backend {
        addr: PingoraAddr::Inet(member.addr),
        weight: member.weight,
        ext: Default::default(),
    };
    b.ext.insert(member);
    if let Some(order) = order {
        b.ext.insert(order);
    }
    b
}

/// The backends listed under `proxy.backends.static`.
pub struct StaticDiscovery {
    backends: BTreeSet<Backend>,
}

impl StaticDiscovery {
    pub fn new(list: &[StaticBackend]) -> Self {
        let backends = list
            .iter()
            .enumerate()
            .map(|(i, b)| backend(static_member(b), Some(Order(i))))
            .collect();
        Self { backends }
    }
}

/// A backend of `proxy.backends.static` as the slot table knows it.
pub fn static_member(b: &StaticBackend) -> Member {
    Member {
        addr: b.addr.get(),
        weight: b.weight.get(),
        max_connections: b.max_connections.get(),
        source: "static".into(),
        task: None,
    }
}

#[async_trait]
impl ServiceDiscovery for StaticDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.backends.clone(), HashMap::new()))
    }
}

/// All sources in config order, combined. Every answer also updates the
/// slot table. A source that fails keeps its previous backends (or none, if
/// it never answered), so a Cloud Map outage at start-up does not hold back
/// the static backends.
pub struct Fleet {
    /// Each source with its name for metrics.
    sources: Vec<(&'static str, Box<dyn ServiceDiscovery + Send + Sync>)>,
    last_good: parking_lot::Mutex<Vec<Option<BTreeSet<Backend>>>>,
    table: Arc<SlotTable>,
}

impl Fleet {
    pub fn new(
        sources: Vec<(&'static str, Box<dyn ServiceDiscovery + Send + Sync>)>,
        table: Arc<SlotTable>,
    ) -> Self {
        let last_good = parking_lot::Mutex::new(vec![None; sources.len()]);
        Self {
            sources,
            last_good,
            table,
        }
    }
}

#[async_trait]
impl ServiceDiscovery for Fleet {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut answers = Vec::with_capacity(self.sources.len());
        let m = metrics::get();
        for (name, source) in &self.sources {
            // Sources log their own failures.
            let answer = source.discover().await.ok().map(|(found, _)| found);
            let result = if answer.is_some() { "ok" } else { "error" };
            m.discovery.with_label_values(&[name, result]).inc();
            if answer.is_some() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                m.discovery_last_success.with_label_values(&[name]).set(now);
            }
            answers.push(answer);
        }
        let all_fresh = answers.iter().all(Option::is_some);
        let sets = {
            let mut last_good = self.last_good.lock();
            for (slot, answer) in last_good.iter_mut().zip(answers) {
                if answer.is_some() {
                    *slot = answer;
                }
            }
            last_good.clone()
        };

        let mut all = BTreeSet::new();
        let mut members: Vec<Member> = Vec::new();
        for found in sets.iter().flatten() {
            let mut ordered: Vec<&Backend> = found.iter().collect();
            ordered.sort_by_key(|b| (b.ext.get::<Order>().copied(), b.addr.clone()));
            for b in ordered {
                let Some(member) = b.ext.get::<Member>() else {
                    continue;
                };
                if members.iter().any(|m| m.addr == member.addr) {
                    warn!(
                        "backend {} is listed by more than one source; keeping the first ({})",
                        member.addr, member.source
                    );
                    continue;
                }
                members.push(member.clone());
                all.insert(b.clone());
            }
        }
        self.table.sync(&members, all_fresh);
        Ok((all, HashMap::new()))
    }
}
