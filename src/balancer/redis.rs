//! Slots shared by every proxy, in Redis, so that several proxies together never give a
//! media server more than its `max_connections`.
//!
//! Each proxied stream holds a *lease*: a member of the backend's sorted set
//! `{prefix}:backend:<addr>`, scored with its expiry in Redis's own clock.
//! Taking one is a Lua script that drops expired leases, counts the rest and
//! adds ours only below the cap, atomically. Leases are renewed every
//! `lease / 3` while their stream lives and removed when it ends, with a
//! message on `{prefix}:released` so the other proxies serve their queues at
//! once; a crashed proxy's leases simply expire. Every key carries the hash
//! tag `{prefix}`, so the scripts also run on Redis Cluster (ElastiCache,
//! Valkey).
//!
//! The local [`SlotTable`] stays in charge of queueing and policy; this
//! module tells it how many slots *other* proxies hold on each backend
//! (`remote`), which policies and eligibility add to the local count.
//!
//! When Redis cannot be reached the proxy keeps serving on local counts
//! (logged once, shown in `/backends` and metrics); leases taken meanwhile
//! are registered when Redis answers again, which can then show a backend
//! over its cap until streams end: the price of not refusing publishers
//! while the store is down.
//!
//! All Redis I/O runs on one dedicated runtime: Pingora gives each service
//! its own, and a connection's driver task must outlive any one of them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use log::{info, warn};
use redis::aio::ConnectionManager;
use redis::{Client, Script};

use super::SlotTable;

/// Every script starts with `now`, in milliseconds of Redis's own clock:
/// the proxies' clocks need not agree.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Takes a lease if the backend is below its cap. Returns the new count,
/// or -1 when full.
const TAKE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if max > 0 and n >= max then return -1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return n + 1
";

/// Renews (or, after an outage, registers) leases: KEYS[i] holds member
/// ARGV[i + 1]; ARGV[1] is the lease length.
const RENEW: &str = r"
local ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * ms)
end
return #KEYS
";

/// Live lease counts of the given backends.
const COUNT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  out[i] = redis.call('ZCARD', key)
end
return out
";

/// What taking a shared slot gave.
pub enum LeaseOutcome {
    Granted(Lease),
    /// Other proxies hold all of this backend's slots.
    Full,
}

/// The Redis slot store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("proxy.slots.url {url:?}: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// The one Redis connection of this process, shared by the slots
/// ([`SharedSlots`]) and the stream directory (`streams::shared`), with
/// whether Redis answers.
pub struct Store {
    /// `{key_prefix}`: the hash tag of every key.
    pub prefix: String,
    pub lease_ms: u64,
    /// Bounds every Redis call made on a client's behalf.
    pub call_timeout: Duration,
    pub conn: ConnectionManager,
    /// Where all Redis I/O runs.
    pub runtime: tokio::runtime::Handle,
    client: Client,
    degraded: AtomicBool,
}

impl Store {
    /// Connects (lazily) on a dedicated runtime.
    pub fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        call_timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let bad_url = |source| StoreError::Url {
            url: url.to_owned(),
            source,
        };
        let client = Client::open(url).map_err(bad_url)?;
        let runtime = crate::runtime::dedicated("redis")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(call_timeout))
            .set_response_timeout(Some(call_timeout))
            .set_number_of_retries(1);
        let conn = {
            let _guard = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(bad_url)?
        };
        Ok(Arc::new(Self {
            prefix: format!("{{{prefix}}}"),
            lease_ms: lease.as_millis().max(1) as u64,
            call_timeout,
            conn,
            runtime,
            client,
            degraded: AtomicBool::new(false),
        }))
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// For pub/sub, which takes a connection of its own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `GET key` on the store's runtime, bounded by the call timeout;
    /// `None` when Redis does not answer in time.
    pub async fn get(&self, key: String) -> Option<String> {
        let mut conn = self.conn.clone();
        let get = self.runtime.spawn(async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
        });
        match tokio::time::timeout(self.call_timeout, get).await {
            Ok(Ok(Ok(found))) => found,
            _ => None,
        }
    }

    /// `SET key value PX ttl_ms` in the background; a failure marks the
    /// store degraded.
    pub fn set_px(self: &Arc<Self>, key: String, value: String, ttl_ms: u64) {
        let me = self.clone();
        self.runtime.spawn(async move {
            let mut conn = me.conn.clone();
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await;
            if let Err(e) = set {
                me.set_degraded(true, &e.to_string());
            }
        });
    }

    pub fn set_degraded(&self, degraded: bool, why: &str) {
        if self.degraded.swap(degraded, Ordering::SeqCst) != degraded {
            crate::metrics::get()
                .slot_store_degraded
                .set(i64::from(degraded));
            if degraded {
                warn!("Redis slot store unreachable ({why}); serving with this proxy's own counts only");
            } else {
                info!("Redis slot store reachable again; leases re-registered");
            }
        }
    }
}

pub struct SharedSlots {
    store: Arc<Store>,
    table: Arc<SlotTable>,
    /// Our live leases: backend -> members.
    own: Mutex<HashMap<SocketAddr, Vec<String>>>,
    next_id: AtomicU64,
    proxy_id: String,
    /// When the last successful count read began: the table's `remote`
    /// counts are at least that fresh.
    counts_read: Mutex<Option<Instant>>,
    scripts: Scripts,
}

struct Scripts {
    take: Script,
    renew: Script,
    count: Script,
}

impl SharedSlots {
    /// Starts the renewal, refresh and release listener tasks on the
    /// store's runtime.
    pub fn start(
        store: Arc<Store>,
        lease: Duration,
        table: Arc<SlotTable>,
        url: &str,
    ) -> Arc<Self> {
        let handle = store.runtime.clone();
        let client = store.client.clone();
        let me = Arc::new(Self {
            store,
            table,
            own: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            proxy_id: format!("{}-{}", std::process::id(), fastrand::u64(..)),
            counts_read: Mutex::new(None),
            scripts: Scripts {
                take: Script::new(&format!("{NOW}{TAKE}")),
                renew: Script::new(&format!("{NOW}{RENEW}")),
                count: Script::new(&format!("{NOW}{COUNT}")),
            },
        });
        handle.spawn(me.clone().maintain(lease / 3));
        handle.spawn(me.clone().listen_releases(client));
        info!(
            "fleet-wide slots in Redis at {url} (lease {})",
            humantime::format_duration(lease)
        );
        me
    }

    fn key(&self, addr: SocketAddr) -> String {
        format!("{}:backend:{addr}", self.store.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:released", self.store.prefix)
    }

    pub fn degraded(&self) -> bool {
        self.store.degraded()
    }

    fn set_degraded(&self, degraded: bool, why: &str) {
        self.store.set_degraded(degraded, why);
    }

    /// When the read behind the table's current `remote` counts began:
    /// scale-in protection releases a server only on counts read after it
    /// went idle, so a stream another proxy just started is not missed.
    pub fn counts_read_at(&self) -> Option<Instant> {
        *self.counts_read.lock()
    }

    /// Takes a shared slot on `addr` for a client that holds a local one.
    /// Never waits longer than the call timeout: when Redis does not answer,
    /// the client is served on local counts (and the lease registered later).
    pub async fn lease(self: &Arc<Self>, addr: SocketAddr, max: usize) -> LeaseOutcome {
        let member = format!(
            "{}:{}",
            self.proxy_id,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        if !self.degraded() {
            let me = self.clone();
            let key = self.key(addr);
            let m = member.clone();
            let call = self.store.runtime.spawn(async move {
                let mut conn = me.store.conn.clone();
                me.scripts
                    .take
                    .key(key)
                    .arg(m)
                    .arg(max)
                    .arg(me.store.lease_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            });
            match tokio::time::timeout(self.store.call_timeout, call).await {
                Ok(Ok(Ok(n))) if n < 0 => return LeaseOutcome::Full,
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => self.set_degraded(true, &e.to_string()),
                Ok(Err(e)) => self.set_degraded(true, &e.to_string()),
                Err(_) => self.set_degraded(true, "timed out"),
            }
        }
        self.own_insert(addr, member.clone());
        LeaseOutcome::Granted(Lease {
            shared: Some(self.clone()),
            addr,
            member,
        })
    }

    fn own_insert(&self, addr: SocketAddr, member: String) {
        self.own.lock().entry(addr).or_default().push(member);
    }

    fn own_remove(&self, addr: SocketAddr, member: &str) {
        let mut own = self.own.lock();
        if let Some(members) = own.get_mut(&addr) {
            members.retain(|m| m != member);
            if members.is_empty() {
                own.remove(&addr);
            }
        }
    }

    async fn release(&self, addr: SocketAddr, member: String) {
        self.own_remove(addr, &member);
        let mut conn = self.store.conn.clone();
        let removed: redis::RedisResult<()> = redis::pipe()
            .zrem(self.key(addr), &member)
            .ignore()
            .publish(self.channel(), addr.to_string())
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = removed {
            // The lease expires by itself.
            self.set_degraded(true, &e.to_string());
        }
    }

    /// Renews our leases every `every`, and refreshes the other proxies'
    /// counts: then, and every 500 ms while clients are queued here (a
    /// crashed proxy's leases expire without a message).
    async fn maintain(self: Arc<Self>, every: Duration) {
        let mut renew = tokio::time::interval(every.max(Duration::from_millis(100)));
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    self.renew().await;
                    self.refresh_counts().await;
                }
                _ = poll.tick() => {
                    if self.table.queued() > 0 || self.degraded() {
                        self.refresh_counts().await;
                    }
                }
            }
        }
    }

    async fn renew(&self) {
        let own: Vec<(SocketAddr, String)> = self
            .own
            .lock()
            .iter()
            .flat_map(|(a, ms)| ms.iter().map(move |m| (*a, m.clone())))
            .collect();
        if own.is_empty() {
            return;
        }
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.arg(self.store.lease_ms);
        for (addr, member) in &own {
            inv.key(self.key(*addr)).arg(member);
        }
        let mut conn = self.store.conn.clone();
        match inv.invoke_async::<i64>(&mut conn).await {
            Ok(_) => self.set_degraded(false, ""),
            Err(e) => self.set_degraded(true, &e.to_string()),
        }
    }

    /// [`Self::refresh_counts`] now, on the store's runtime, bounded by the
    /// call timeout: for a client that knows another proxy has just
    /// released a slot (a takeover) before the release's notice arrives.
    pub async fn refresh_now(self: &Arc<Self>) {
        let me = self.clone();
        let task = self
            .store
            .runtime
            .spawn(async move { me.refresh_counts().await });
        let _ = tokio::time::timeout(self.store.call_timeout, task).await;
    }

    /// Reads every backend's count across every proxy and tells the table how many
    /// belong to other proxies.
    async fn refresh_counts(&self) {
        let addrs: Vec<SocketAddr> = self.table.snapshot().iter().map(|b| b.addr).collect();
        if addrs.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut inv = self.scripts.count.prepare_invoke();
        for addr in &addrs {
            inv.key(self.key(*addr));
        }
        let mut conn = self.store.conn.clone();
        let counts: Vec<i64> = match inv.invoke_async(&mut conn).await {
            Ok(c) => c,
            Err(e) => {
                self.set_degraded(true, &e.to_string());
                return;
            }
        };
        if self.degraded() {
            // Back after an outage: register what we took meanwhile first.
            self.renew().await;
            if self.degraded() {
                return;
            }
        }
        let own = self.own.lock().clone();
        let remote: Vec<(SocketAddr, usize)> = addrs
            .iter()
            .zip(counts)
            .map(|(a, n)| {
                let mine = own.get(a).map_or(0, Vec::len);
                (*a, usize::try_from(n).unwrap_or(0).saturating_sub(mine))
            })
            .collect();
        self.table.set_remote(&remote);
        *self.counts_read.lock() = Some(started);
    }

    /// Other proxies announce releases: refresh at once so our queue moves.
    async fn listen_releases(self: Arc<Self>, client: Client) {
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(self.channel()).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            self.refresh_counts().await;
                        }
                    }
                }
                Err(e) => self.set_degraded(true, &e.to_string()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One stream's shared slot. Release it with [`Lease::release`] before
/// freeing the local slot; dropping it releases in the background.
pub struct Lease {
    shared: Option<Arc<SharedSlots>>,
    addr: SocketAddr,
    member: String,
}

impl Lease {
    pub async fn release(mut self) {
        if let Some(shared) = self.shared.take() {
            let (addr, member) = (self.addr, std::mem::take(&mut self.member));
            let timeout = shared.store.call_timeout;
            let task = shared.store.runtime.spawn({
                let shared = shared.clone();
                async move { shared.release(addr, member).await }
            });
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let (addr, member) = (self.addr, std::mem::take(&mut self.member));
            let rt = shared.store.runtime.clone();
            rt.spawn(async move { shared.release(addr, member).await });
        }
    }
}
