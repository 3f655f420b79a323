//! The state every service shares, built once at start-up ([`crate::app`])
//! and borrowed from then on: the proxy listener, the clients an upgrade
//! forwards, and the HTTP listeners all hold one `Arc<Core>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::{AccessLog, AccessLogError};
use crate::auth::Auth;
use crate::balancer::redis::SharedSlots;
use crate::balancer::Member;
use crate::balancer::{policy, Limits, SlotTable};
use crate::config::{DuplicatePublish, Protocol, ProxyConfig, SendProxy};
use crate::discovery::static_member;
use crate::lifecycle::handoff::Handoff;
use crate::lifecycle::{ExitFn, Lifecycle};
use crate::protection::Protection;
use crate::proxy::publishers::Publishers;
use crate::streams::Directory;

pub struct Core {
    /// Backends and their slots, the wait queue.
    pub table: Arc<SlotTable>,
    /// What the data path reads for every connection.
    pub settings: Settings,
    /// Signals, sessions and the drain.
    pub lifecycle: Arc<Lifecycle>,
    /// The channel to the next process of a binary upgrade.
    pub handoff: Arc<Handoff>,
    /// Slots shared by every proxy, when `proxy.slots.store` is `redis`.
    pub shared: Option<Arc<SharedSlots>>,
    pub access_log: Arc<AccessLog>,
    /// Which stream runs where (`/streams`).
    pub streams: Arc<Directory>,
    /// The platform's hooks (`proxy.auth`).
    pub auth: Auth,
    /// Live publishes and where streams last ran: takeovers and sticky
    /// reconnects.
    pub publishers: Arc<Publishers>,
    /// ECS scale-in protection, when enabled.
    pub protection: Option<Arc<Protection>>,
    pub started: Instant,
}

impl Core {
    /// A core with no Pingora around it, for running the proxy inside
    /// another program (tests: see [`crate::proxy::listener::run`]). The
    /// static backends are taken as they are, healthy, with no discovery
    /// or health checks; no Redis, no ECS, no upgrades, no signals.
    pub fn standalone(config: &ProxyConfig, exit: ExitFn) -> Result<Arc<Core>, AccessLogError> {
        let table = slot_table(config);
        let members: Vec<Member> = config.backends.static_.iter().map(static_member).collect();
        table.sync(&members, true);
        let streams = Directory::new();
        // Never listened on: there is no successor to hand off to.
        let handoff = Handoff::new("", table.clone(), streams.clone());
        Ok(Arc::new(Core {
            settings: Settings::from(config),
            lifecycle: Lifecycle::new(config.drain_delay.get(), config.drain_timeout.get(), exit),
            handoff,
            shared: None,
            access_log: Arc::new(AccessLog::open(
                &config.access_log,
                config.access_log_interval.get(),
            )?),
            streams,
            auth: Auth::new(&config.auth),
            publishers: Publishers::new(config.sticky_for.get()),
            protection: None,
            started: Instant::now(),
            table,
        }))
    }
}

/// The slot table `config` asks for, with no backends yet.
pub fn slot_table(config: &ProxyConfig) -> Arc<SlotTable> {
    SlotTable::new(
        policy::from_config(config.balance),
        Limits {
            global_cap: config.global_cap(),
            max_queue: config.max_queue.get(),
        },
    )
}

/// The settings the data path reads for every connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    pub send_proxy: SendProxy,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub stall_timeout: Duration,
    pub queue_timeout: Duration,
    pub duplicate_publish: DuplicatePublish,
}

impl From<&ProxyConfig> for Settings {
    fn from(c: &ProxyConfig) -> Self {
        Self {
            protocol: c.protocol,
            send_proxy: c.send_proxy,
            handshake_timeout: c.handshake_timeout.get(),
            connect_timeout: c.connect_timeout.get(),
            idle_timeout: c.idle_timeout.get(),
            stall_timeout: c.stall_timeout.get(),
            queue_timeout: c.queue_timeout(),
            duplicate_publish: c.duplicate_publish,
        }
    }
}
