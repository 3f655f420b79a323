//! The `proxy:` section of the YAML file: every key, its default and its meaning.
//!
//! The same file also carries Pingora's own server keys (`threads`, `pid_file`,
//! `upgrade_sock`, ...) at the top level. Pingora ignores keys it does not
//! know, so the file is read once and parsed twice: by Pingora's `ServerConf`
//! and by [`File`] here, which is strict: an unknown key, a wrong type or a bad
//! value is an error that names the key path and the line.
//!
//! Defaults live in one place: the `DEFAULT_*` constants, used by one
//! `impl Default` per section (with `#[serde(default)]`, a missing key takes
//! its section's default). Values are newtypes that check their bounds as
//! they are parsed ([`Millis`], [`Count`], [`Weight`], [`ListenAddr`],
//! [`BackendAddr`], [`Expiry`]), so nothing later can overflow on them. A
//! test holds docs/configuration.md to these defaults, and the
//! field docs here say what a key means, not its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The whole file as we see it: only `proxy:` is ours; of Pingora's keys
/// we check `threads` and that no other key is unknown to it.
#[derive(Debug)]
pub struct File {
    /// Our settings. Pingora's keys at the top level are read by Pingora.
    pub proxy: ProxyConfig,
}

/// The top-level keys Pingora's `ServerConf` knows (pingora-core 0.9.1,
/// `src/server/configuration/mod.rs`, `pub struct ServerConf`): any other
/// top-level key but `proxy` is a typo that Pingora would silently ignore.
const PINGORA_KEYS: &[&str] = &[
    "version",
    "daemon",
    "error_log",
    "pid_file",
    "upgrade_sock",
    "user",
    "group",
    "working_directory",
    "threads",
    "listener_tasks_per_fd",
    "work_stealing",
    "runtime_enable_alt_timer",
    "ca_file",
    "grace_period_seconds",
    "graceful_shutdown_timeout_seconds",
    "upstream_keepalive_pool_size",
    "upstream_connect_offload_threadpools",
    "upstream_connect_offload_thread_per_pool",
    "downstream_tls_offload_threadpools",
    "downstream_tls_offload_thread_per_pool",
    "upstream_debug_ssl_keylog",
    "max_retries",
    "upgrade_sock_connect_accept_max_retries",
    "max_blocking_threads",
    "blocking_threads_ttl_seconds",
    "fast_timeout_to_tokio_threshold_seconds",
    "runtime_metrics_poll_time_histogram",
    "runtime_metrics_poll_time_histogram_scale",
    "runtime_metrics_poll_time_histogram_resolution_micros",
    "runtime_metrics_poll_time_histogram_buckets",
    "daemon_wait_for_ready",
    "daemon_ready_timeout_seconds",
    "daemon_notify_timeout_seconds",
];

/// Pingora's `threads`: each is a runtime with its own listener task.
const MAX_THREADS: u64 = 256;

impl<'de> Deserialize<'de> for File {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FileVisitor;
        impl<'de> Visitor<'de> for FileVisitor {
            type Value = File;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with a `proxy` key")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<File, A::Error> {
                let mut proxy = None;
                // Bounded by the file size cap.
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "proxy" => proxy = Some(map.next_value::<ProxyConfig>()?),
                        "threads" => {
                            map.next_value_seed(CountSeed(1, MAX_THREADS, ""))?;
                        }
                        k if PINGORA_KEYS.contains(&k) => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        _ => map.next_value_seed(UnknownKey)?,
                    }
                }
                proxy
                    .map(|proxy| File { proxy })
                    .ok_or_else(|| de::Error::missing_field("proxy"))
            }
        }
        d.deserialize_map(FileVisitor)
    }
}

/// Fails on the value of an unknown top-level key, so that the error
/// carries the key's path and the value's line.
struct UnknownKey;

impl<'de> de::DeserializeSeed<'de> for UnknownKey {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl UnknownKey {
    fn fail<E: de::Error>(&self) -> Result<(), E> {
        Err(E::custom(
            "unknown top-level key (expected `proxy` or one of Pingora's server keys, e.g. `threads`)",
        ))
    }
}

impl<'de> Visitor<'de> for UnknownKey {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no value: the key is unknown")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.fail()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.fail()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.fail()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.fail()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.fail()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.fail()
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.fail()
    }
}

/// Everything under `proxy:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// RTMP/TCP listen address.
    pub listen: ListenAddr,
    /// Public HTTP health listener: `GET /health` (this proxy is ready:
    /// NLB, ECS) and `GET /health/fleet` (a media server has a free slot:
    /// Route53 failover, alarms).
    pub health_listen: ListenAddr,
    /// Private HTTP admin listener: `GET /backends`.
    /// Keep it off public interfaces: it lists backend addresses.
    pub admin_listen: ListenAddr,
    /// Time allowed for one TCP connect to a backend.
    pub connect_timeout: Millis<1, 300_000>,
    /// A proxied connection with no bytes in either direction for this long is
    /// closed on both sides (checked every eighth of it, so the close comes
    /// at most 1/8 later).
    pub idle_timeout: Millis<100, 86_400_000>,
    /// How a backend is chosen among the healthy ones with a free slot.
    pub balance: Balance,
    /// Global cap on proxied connections; clients over it wait in the queue.
    /// Default: unset, which amounts to the sum of the backends'
    /// `max_connections` (the replaced HAProxy design's `maxconn = number of
    /// servers`), since each backend's own cap already bounds it, and follows
    /// the fleet as discovery changes it. `0` also means unset.
    pub max_connections: Option<Count<0, 1_000_000>>,
    /// How long a client may wait in the queue for a free slot before it is
    /// closed (reason `queue_timeout`). Default: `connect_timeout`, like
    /// HAProxy's `timeout queue`.
    pub queue_timeout: Option<Millis<1, 86_400_000>>,
    /// How many clients may wait at once; one more is closed at once (reason
    /// `queue_full`). `0` disables queueing.
    pub max_queue: Count<0, 1_000_000>,
    /// A live connection whose backend takes none of the client's bytes for
    /// this long, while the client has bytes to send, is closed (reason
    /// `backend_stalled`) and the backend marked down: a hung media server
    /// (stopped, deadlocked, out of disk) then costs the encoder one
    /// reconnect, to another server, rather than `idle_timeout` of silence
    /// and a reconnect to the same hung one.
    pub stall_timeout: Millis<100, 86_400_000>,
    /// Where the JSON access log goes: `stderr`, `off`, or a file path
    /// (appended to). One line per client connection when it ends.
    pub access_log: String,
    /// Time between two progress lines of a live connection in the access
    /// log.
    pub access_log_interval: Millis<100, 86_400_000>,
    /// After SIGTERM, how long the listener keeps accepting (and serving)
    /// new clients while `/health` already answers 503, so Route53 or the
    /// NLB can move new publishers elsewhere first.
    pub drain_delay: Millis<0, 3_600_000>,
    /// After the listeners close (SIGTERM, or SIGQUIT for an upgrade), live
    /// streams run on until they end or this much time has passed; then
    /// they are cut and the process exits.
    pub drain_timeout: Millis<0, 604_800_000>,
    /// Where backend slots are counted: this process only, or shared
    /// in Redis for several proxies behind one DNS name or load balancer.
    pub slots: SlotsConfig,
    /// What clients speak: `rtmp` takes a backend slot only after
    /// a valid RTMP C0+C1 and watches which stream a client publishes or
    /// plays; `tcp` proxies any bytes at once.
    pub protocol: Protocol,
    /// `rtmp` only: how long a new client may take to send C0+C1 (1537
    /// bytes) before it is closed (reason `handshake_timeout`).
    pub handshake_timeout: Millis<100, 300_000>,
    /// PROXY protocol header sent first on every backend connection, so
    /// media servers see the client's address: `off`, `v1` (text) or `v2`
    /// (binary).
    pub send_proxy: SendProxy,
    /// Active checks of every backend (TCP connect, or RTMP handshake).
    pub health_check: HealthCheckConfig,
    /// Where backends come from.
    pub backends: BackendsConfig,
    /// ECS task scale-in protection for the media servers holding live
    /// streams and for this proxy's own task. Off by default.
    pub scale_in_protection: ProtectionConfig,
    /// `rtmp` only: the platform's say on each publish (and play), asked
    /// before a slot or a media server is spent on it.
    pub auth: AuthConfig,
    /// `rtmp` only: a publish of an app and key that is already live, on
    /// this proxy or (Redis store) any other: `takeover` closes the old
    /// session, whose slot the newcomer then takes; `reject` refuses the
    /// newcomer.
    pub duplicate_publish: DuplicatePublish,
    /// `rtmp` only: a publisher back within this time of its last session
    /// of the same app and key goes to the same media server if it is
    /// healthy and has a free slot. `0s` turns it off.
    pub sticky_for: Millis<0, 86_400_000>,
    /// PROXY protocol headers from a load balancer in front of `listen`
    /// (an NLB, HAProxy), carrying the publisher's own address.
    pub accept_proxy: AcceptProxy,
    /// RTMPS listeners: TLS ends here, and the clients then take the same
    /// path as plain RTMP ones.
    pub tls: Vec<TlsListener>,
}

/// `proxy.accept_proxy`, and the same key in each `proxy.tls` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptProxy {
    /// Which PROXY header every connection must open with: `off` (none is
    /// read), `v1` (text), `v2` (binary, what an AWS NLB sends) or `any`.
    pub mode: ProxyMode,
    /// Sources allowed to send one (`10.0.0.0/16`, or one address): a
    /// connection from anywhere else is closed, since its header would
    /// let it claim any address.
    pub trusted: Vec<Cidr>,
}

/// `proxy.accept_proxy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Off,
    V1,
    V2,
    Any,
}

/// A `proxy.tls` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    /// Address of the RTMPS listener, e.g. `0.0.0.0:443`.
    pub listen: ListenAddr,
    /// PEM file: the certificate, then the chain.
    pub cert: String,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    #[serde(default)]
    pub accept_proxy: AcceptProxy,
}

/// An IP network (`10.0.0.0/16`), or one address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(
            "a CIDR such as 10.0.0.0/16, or an IP",
            |v: &str| {
                v.parse::<ipnet::IpNet>()
                    .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(Self)
                    .map_err(|_| format!("invalid CIDR {v:?} (e.g. 10.0.0.0/16 or 192.0.2.7)"))
            },
        ))
    }
}

/// `proxy.auth`: HTTP hooks called the way nginx-rtmp's `on_publish` and
/// `on_play` are, so a platform's existing endpoint works unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `http://` URL POSTed once per publish. Unset: every publish is
    /// allowed.
    pub on_publish: Option<HookUrl>,
    /// `http://` URL POSTed once per play. Unset: every play is allowed.
    pub on_play: Option<HookUrl>,
    /// What a hook that fails (timeout, no connection, 5xx, an answer not
    /// understood) means: `deny` or `allow`.
    pub on_error: OnError,
    /// Time allowed for one hook call, connect included.
    pub timeout: Millis<1, 60_000>,
    /// How long a hook's allow or deny is reused for the same request.
    /// `0s`: every publish asks.
    pub cache: Millis<0, 86_400_000>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            on_publish: None,
            on_play: None,
            on_error: OnError::default(),
            timeout: Millis::secs::<DEFAULT_AUTH_TIMEOUT_SECS>(),
            cache: Millis::secs::<0>(),
        }
    }
}

/// `proxy.auth.on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

/// `proxy.duplicate_publish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePublish {
    /// The old session is closed and the newcomer takes its slot: an
    /// encoder that reconnects after a silent network loss is live again
    /// at once, not after the media server's own timeout.
    #[default]
    Takeover,
    Reject,
}

/// An `http://host[:port]/path` hook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl(pub http::Uri);

impl<'de> Deserialize<'de> for HookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("an http:// URL", |v: &str| {
            let uri: http::Uri = v
                .parse()
                .map_err(|e| format!("{v:?} is not a URL ({e})"))?;
            match (uri.scheme_str(), uri.host()) {
                (Some("http"), Some(_)) => Ok(Self(uri)),
                (Some("https"), _) => Err(format!(
                    "{v:?}: https hooks are not supported yet; use http:// (a sidecar or a local TLS proxy)"
                )),
                _ => Err(format!("{v:?}: expected http://host[:port]/path")),
            }
        }))
    }
}

/// Balancing policies; each skips unhealthy and full backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest active connections relative to weight; round robin among ties.
    Leastconn,
    /// The first backend in a stable order with a free slot: packs streams
    /// onto few servers so idle ones can be scaled in.
    First,
    /// Power of two random choices by active connections.
    Random,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
            Balance::First => "first",
            Balance::Random => "random",
        })
    }
}

/// `proxy.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Clients must open with an RTMP handshake; streams are identified.
    #[default]
    Rtmp,
    /// Any TCP bytes, proxied untouched.
    Tcp,
}

/// `proxy.send_proxy`: the PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    #[default]
    Off,
    /// Text header (`PROXY TCP4 ...`), what nginx-rtmp's
    /// `listen ... proxy_protocol` accepts.
    V1,
    /// Binary header.
    V2,
}

/// `proxy.health_check`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// What a check does: `tcp` connects; `rtmp` also sends C0+C1 and
    /// expects S0+S1 within `timeout`, so a media server that accepts
    /// connections but no longer answers (stopped, hung) is marked down.
    /// Default: `rtmp` when `proxy.protocol` is `rtmp`, else `tcp`.
    pub kind: Option<CheckKind>,
    /// Time between two TCP connect checks of a backend.
    pub interval: Millis<100, 86_400_000>,
    /// Time allowed for one check: the connect, and with `kind: rtmp` the
    /// server's S0+S1.
    pub timeout: Millis<1, 300_000>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: None,
            interval: Millis::secs::<DEFAULT_CHECK_INTERVAL_SECS>(),
            timeout: Millis::secs::<DEFAULT_CHECK_TIMEOUT_SECS>(),
        }
    }
}

/// `proxy.health_check.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Rtmp,
}

/// `proxy.slots`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlotsConfig {
    /// `local`: this process's own table. `redis`: leases in Redis shared
    /// by every proxy, so caps hold across proxies.
    pub store: SlotStore,
    /// `redis://host:6379/0` (or `rediss://` for TLS). Required for `redis`.
    pub url: Option<String>,
    /// How long a stream's lease lives without renewal (renewed every
    /// third of it): a crashed proxy's slots free after this.
    pub lease: Millis<1_000, 3_600_000>,
    /// Prefix (and Redis Cluster hash tag) of every key.
    pub key_prefix: String,
}

impl Default for SlotsConfig {
    fn default() -> Self {
        Self {
            store: SlotStore::Local,
            url: None,
            lease: Millis::secs::<DEFAULT_LEASE_SECS>(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
        }
    }
}

/// `proxy.slots.store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotStore {
    #[default]
    Local,
    Redis,
}

/// `proxy.backends`: the sources of backends, combined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendsConfig {
    /// Backends listed in the file, in the order `first` balancing fills them.
    #[serde(rename = "static")]
    pub static_: Vec<StaticBackend>,
    /// Backends registered in AWS Cloud Map, polled every `refresh`.
    pub cloud_map: Option<CloudMapConfig>,
}

/// `proxy.backends.cloud_map`: media servers as registered in an AWS Cloud
/// Map service (ECS service discovery registers each task). Credentials and
/// region come from the AWS SDK's default chain (the ECS task role on
/// Fargate, environment variables locally).
///
/// `namespace` and `service` have no default: the derived parse (`remote =
/// "Self"`) fills a missing key from `Default` like every section, and the
/// `Deserialize` impl below then fails on a missing one, as a required key
/// does elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(remote = "Self", default, deny_unknown_fields)]
pub struct CloudMapConfig {
    /// Namespace name, e.g. `media.internal`.
    pub namespace: Required,
    /// Service name within the namespace.
    pub service: Required,
    /// AWS region; unset: the SDK's default chain.
    pub region: Option<String>,
    /// API endpoint override (e.g. a local moto server); the SDK also reads
    /// `AWS_ENDPOINT_URL_SERVICEDISCOVERY`.
    pub endpoint: Option<String>,
    /// Port used for an instance without an `AWS_INSTANCE_PORT` attribute.
    pub port: u16,
    /// Which instances to ask for: `HEALTHY`, `UNHEALTHY`, `ALL` or
    /// `HEALTHY_OR_ELSE_ALL` (healthy ones, or all when none is, so a
    /// health-reporting outage does not empty the fleet).
    pub health_status: HealthStatus,
    /// Time between two `DiscoverInstances` calls.
    pub refresh: Millis<100, 3_600_000>,
    /// Attribute filters Cloud Map applies (`DiscoverInstances`'
    /// `QueryParameters`).
    pub query_parameters: std::collections::BTreeMap<String, String>,
    /// Weight of an instance without a `weight` attribute.
    pub weight: Weight,
    /// Cap of an instance without a `max_connections` attribute. `0` = unlimited.
    pub max_connections: BackendCap,
}

impl Default for CloudMapConfig {
    fn default() -> Self {
        Self {
            namespace: Required::default(),
            service: Required::default(),
            region: None,
            endpoint: None,
            port: DEFAULT_CLOUD_MAP_PORT,
            health_status: HealthStatus::default(),
            refresh: Millis::secs::<DEFAULT_CLOUD_MAP_REFRESH_SECS>(),
            query_parameters: Default::default(),
            weight: Weight::default(),
            max_connections: BackendCap::default(),
        }
    }
}

impl<'de> Deserialize<'de> for CloudMapConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CloudMapVisitor)
    }
}

/// Checks the required keys inside `visit_map`, so that serde_yaml gives a
/// missing one the section's line, as for any derived struct.
struct CloudMapVisitor;

impl CloudMapVisitor {
    fn required<E: de::Error>(c: CloudMapConfig) -> Result<CloudMapConfig, E> {
        for (key, value) in [("namespace", &c.namespace), ("service", &c.service)] {
            if value.0.is_none() {
                return Err(E::missing_field(key));
            }
        }
        Ok(c)
    }
}

impl<'de> Visitor<'de> for CloudMapVisitor {
    type Value = CloudMapConfig;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The derived struct's wording.
        f.write_str("struct CloudMapConfig")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<CloudMapConfig, A::Error> {
        Self::required(CloudMapConfig::deserialize(
            de::value::MapAccessDeserializer::new(map),
        )?)
    }
}

/// A string key without a default. Unset only in a `Default` section: a
/// parse without the key fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Required(Option<String>);

impl Required {
    pub fn get(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Required {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Some(s)))
    }
}

/// `proxy.backends.cloud_map.health_status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    All,
    #[default]
    HealthyOrElseAll,
}

/// `proxy.scale_in_protection`: keeps ECS service scale-in away from busy
/// tasks. A media server discovered from Cloud Map (an ECS task) is
/// protected while it holds a live stream and released `release_after` its
/// last one ended; the proxy's own task is protected through the ECS agent
/// while it holds streams, and released when it starts draining.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectionConfig {
    /// Turns it on. The task role then needs
    /// `ecs:UpdateTaskProtection` (and `ecs:GetTaskProtection`).
    pub enabled: bool,
    /// ECS cluster (name or ARN) of the media servers' tasks. Empty:
    /// each Cloud Map instance's `ECS_CLUSTER_NAME` attribute.
    pub cluster: String,
    /// How long one enable protects a task (`expiresInMinutes`): whole
    /// minutes from `1m` to `2880m` (48 h). A proxy that dies without
    /// releasing leaves its servers protected at most this long.
    pub expires: Expiry,
    /// How often a protection is renewed while streams live. Default: half
    /// of `expires`; at least `1s` and shorter than `expires`.
    pub renew_every: Option<Millis<1_000, 172_800_000>>,
    /// How long a server (or the proxy itself) must stay without a stream
    /// before its protection is released, so a publisher that reconnects
    /// does not make it flap.
    pub release_after: Millis<0, 604_800_000>,
    /// ECS API endpoint override (a local test double); the SDK also reads
    /// `AWS_ENDPOINT_URL_ECS`. Default: AWS.
    pub endpoint: Option<String>,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cluster: String::new(),
            expires: Expiry(Duration::from_secs(DEFAULT_PROTECTION_EXPIRES_MINUTES * 60)),
            renew_every: None,
            release_after: Millis::secs::<DEFAULT_RELEASE_AFTER_SECS>(),
            endpoint: None,
        }
    }
}

impl ProtectionConfig {
    /// The renewal period in force: `renew_every`, else half of `expires`.
    pub fn renew_every(&self) -> Duration {
        self.renew_every.map_or(self.expires.0 / 2, Millis::get)
    }

    /// `expires` as the API's `expiresInMinutes`.
    pub fn expires_in_minutes(&self) -> i32 {
        i32::try_from(self.expires.0.as_secs() / 60).unwrap_or(MAX_PROTECTION_MINUTES)
    }
}

/// The API's ceiling for `expiresInMinutes` (48 h).
pub const MAX_PROTECTION_MINUTES: i32 = 2880;

/// One entry of `proxy.backends.static`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticBackend {
    /// `IP:port` of the media server (no host names: nothing is resolved).
    pub addr: BackendAddr,
    /// Relative share of new connections, 1 to 256.
    #[serde(default)]
    pub weight: Weight,
    /// Most proxied connections this backend holds at once. `0` means
    /// unlimited.
    #[serde(default)]
    pub max_connections: BackendCap,
}

impl ProxyConfig {
    /// The queue timeout in force: `queue_timeout`, else `connect_timeout`.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
            .map_or(self.connect_timeout.get(), Millis::get)
    }

    /// The health check in force: `health_check.kind`, else the one that
    /// matches `protocol`.
    pub fn check_kind(&self) -> CheckKind {
        self.health_check.kind.unwrap_or(match self.protocol {
            Protocol::Rtmp => CheckKind::Rtmp,
            Protocol::Tcp => CheckKind::Tcp,
        })
    }

    /// The explicit global cap, `None` when only the backends' caps apply.
    pub fn global_cap(&self) -> Option<usize> {
        self.max_connections.map(Count::get).filter(|&n| n != 0)
    }
}

/// A config file that could not be used, with where and why.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Largest config file read: a real one is a few KiB.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Reads and checks the file at `path`, returning its text (for Pingora's
/// own parse) and our section.
pub fn load(path: &Path) -> Result<(String, ProxyConfig), ConfigError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        ConfigError(format!("{}: cannot read config file: {e}", path.display()))
    };
    let mut text = String::new();
    // `-c /dev/zero` must not read forever.
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(ConfigError(format!(
            "{}: config file larger than {} KiB",
            path.display(),
            MAX_FILE_SIZE / 1024
        )));
    }
    let proxy = parse(&text).map_err(|e| ConfigError(format!("{}:{e}", path.display())))?;
    Ok((text, proxy))
}

/// Parses our section of a config file's text. Errors read
/// `LINE: KEY.PATH: what is wrong`.
pub fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
    let file: File = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| {
            let line = e.inner().location().map_or(0, |l| l.line());
            let path = e.path().to_string();
            let message = bare_message(e.inner());
            if path == "." {
                ConfigError(format!("{line}: {message}"))
            } else {
                ConfigError(format!("{line}: {path}: {message}"))
            }
        })?;
    let proxy = file.proxy;
    check_listeners(&proxy)?;
    check_duplicate_backends(&proxy.backends.static_)?;
    if proxy.slots.store == SlotStore::Redis && proxy.slots.url.is_none() {
        return Err(ConfigError(
            "proxy.slots.url: required when proxy.slots.store is redis (e.g. redis://127.0.0.1:6379/0)".into(),
        ));
    }
    let accepting = std::iter::once(("proxy.accept_proxy".to_owned(), &proxy.accept_proxy)).chain(
        proxy
            .tls
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("proxy.tls[{i}].accept_proxy"), &t.accept_proxy)),
    );
    for (key, accept) in accepting {
        if accept.mode != ProxyMode::Off && accept.trusted.is_empty() {
            return Err(ConfigError(format!(
                "{key}.trusted: required when mode is not off (the load balancers' addresses, e.g. the VPC CIDR 10.0.0.0/16)"
            )));
        }
    }
    if proxy.protocol == Protocol::Tcp {
        let a = &proxy.auth;
        for (key, set) in [
            ("on_publish", a.on_publish.is_some()),
            ("on_play", a.on_play.is_some()),
        ] {
            if set {
                return Err(ConfigError(format!(
                    "proxy.auth.{key}: needs protocol: rtmp (in tcp mode the proxy never sees app and key)"
                )));
            }
        }
    }
    let p = &proxy.scale_in_protection;
    let renew = p.renew_every();
    if renew < Duration::from_secs(1) || renew >= p.expires.get() {
        return Err(ConfigError(format!(
            "proxy.scale_in_protection.renew_every: {} must be at least 1s and shorter than expires ({})",
            humantime::format_duration(renew),
            humantime::format_duration(p.expires.get())
        )));
    }
    Ok(proxy)
}

/// Two listeners on one address would share (or fight for) one socket.
/// They overlap when their ports are equal and their IPs are equal, or one
/// is unspecified in the same family; `[::]` overlaps both families
/// (a dual-stack socket on Linux by default).
fn check_listeners(p: &ProxyConfig) -> Result<(), ConfigError> {
    let tls_keys: Vec<String> = (0..p.tls.len())
        .map(|i| format!("proxy.tls[{i}].listen"))
        .collect();
    let mut listeners = vec![
        ("proxy.listen", &p.listen),
        ("proxy.health_listen", &p.health_listen),
        ("proxy.admin_listen", &p.admin_listen),
    ];
    listeners.extend(
        tls_keys
            .iter()
            .map(String::as_str)
            .zip(p.tls.iter().map(|t| &t.listen)),
    );
    let addrs: Vec<(&str, SocketAddr)> = listeners
        .iter()
        .filter_map(|(k, v)| v.parse().ok().map(|a| (*k, a)))
        .collect();
    for (i, (k1, a)) in addrs.iter().enumerate() {
        for (k2, b) in &addrs[i + 1..] {
            if overlap(*a, *b) {
                return Err(ConfigError(format!(
                    "{k2}: {b} overlaps {k1} ({a}): each listener needs its own address or port"
                )));
            }
        }
    }
    Ok(())
}

fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let dual = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    a.port() == b.port()
        && (a.ip() == b.ip()
            || dual(a)
            || dual(b)
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn check_duplicate_backends(list: &[StaticBackend]) -> Result<(), ConfigError> {
    for (i, b) in list.iter().enumerate() {
        if let Some(j) = list[..i].iter().position(|a| a.addr == b.addr) {
            return Err(ConfigError(format!(
                "proxy.backends.static[{i}].addr: {} is listed twice (also proxy.backends.static[{j}])",
                b.addr.0
            )));
        }
    }
    Ok(())
}

/// serde_yaml's message without its own (less precise) key path prefix and
/// location suffix, which we replace with ours.
fn bare_message(e: &serde_yaml::Error) -> String {
    let full = e.to_string();
    let mut msg = full.as_str();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        msg = msg.strip_suffix(&suffix).unwrap_or(msg);
    }
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
        _ => msg.to_string(),
    }
}

// Defaults, one place each. docs/configuration.md is checked
// against them (tests/config_check.rs).

pub const DEFAULT_LISTEN: &str = "0.0.0.0:1935";
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8001";
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_QUEUE: usize = 1024;
pub const DEFAULT_ACCESS_LOG: &str = "stderr";
pub const DEFAULT_ACCESS_LOG_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_DRAIN_DELAY_SECS: u64 = 10;
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 6 * 3600;
pub const DEFAULT_LEASE_SECS: u64 = 15;
pub const DEFAULT_KEY_PREFIX: &str = "rtmp-proxy";
pub const DEFAULT_CHECK_INTERVAL_SECS: u64 = 2;
pub const DEFAULT_CHECK_TIMEOUT_SECS: u64 = 1;
pub const DEFAULT_CLOUD_MAP_PORT: u16 = 1935;
pub const DEFAULT_CLOUD_MAP_REFRESH_SECS: u64 = 5;
pub const DEFAULT_WEIGHT: usize = 10;
/// One ffmpeg per media server.
pub const DEFAULT_BACKEND_MAX_CONNECTIONS: usize = 1;
pub const DEFAULT_PROTECTION_EXPIRES_MINUTES: u64 = 60;
pub const DEFAULT_RELEASE_AFTER_SECS: u64 = 30;
/// nginx-rtmp's `notify_...` calls have no timeout of their own; 2 s keeps
/// an encoder's connect well inside its own (OBS waits 10 s or more).
pub const DEFAULT_AUTH_TIMEOUT_SECS: u64 = 2;
/// About one encoder reconnect cycle (OBS retries after 2-10 s, up to 25
/// times), so a stream that drops comes back to where its HLS output is.
pub const DEFAULT_STICKY_FOR_SECS: u64 = 30;

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(DEFAULT_LISTEN.into()),
            health_listen: ListenAddr(DEFAULT_HEALTH_LISTEN.into()),
            admin_listen: ListenAddr(DEFAULT_ADMIN_LISTEN.into()),
            connect_timeout: Millis::secs::<DEFAULT_CONNECT_TIMEOUT_SECS>(),
            idle_timeout: Millis::secs::<DEFAULT_IDLE_TIMEOUT_SECS>(),
            balance: Balance::default(),
            max_connections: None,
            queue_timeout: None,
            max_queue: Count(DEFAULT_MAX_QUEUE),
            stall_timeout: Millis::secs::<DEFAULT_STALL_TIMEOUT_SECS>(),
            access_log: DEFAULT_ACCESS_LOG.into(),
            access_log_interval: Millis::secs::<DEFAULT_ACCESS_LOG_INTERVAL_SECS>(),
            drain_delay: Millis::secs::<DEFAULT_DRAIN_DELAY_SECS>(),
            drain_timeout: Millis::secs::<DEFAULT_DRAIN_TIMEOUT_SECS>(),
            slots: SlotsConfig::default(),
            protocol: Protocol::default(),
            handshake_timeout: Millis::secs::<DEFAULT_HANDSHAKE_TIMEOUT_SECS>(),
            send_proxy: SendProxy::default(),
            health_check: HealthCheckConfig::default(),
            backends: BackendsConfig::default(),
            scale_in_protection: ProtectionConfig::default(),
            auth: AuthConfig::default(),
            duplicate_publish: DuplicatePublish::default(),
            sticky_for: Millis::secs::<DEFAULT_STICKY_FOR_SECS>(),
            accept_proxy: AcceptProxy::default(),
            tls: Vec::new(),
        }
    }
}

// Values. Each fails inside a `Visitor`, so that serde_yaml reports the
// line of the value itself rather than of the enclosing mapping.

struct StrVisitor<F>(&'static str, F);

impl<T, F: Fn(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

fn parse_socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("invalid socket address {v:?} (expected IP:port)"))
}

/// A backend's `IP:port` (nothing is resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendAddr(SocketAddr);

impl BackendAddr {
    pub fn get(self) -> SocketAddr {
        self.0
    }
}

impl<'de> Deserialize<'de> for BackendAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a socket address IP:port", |v: &str| {
            parse_socket_addr(v).map(BackendAddr)
        }))
    }
}

/// A listen address, kept as written: Pingora hands listening sockets to a
/// new process by their exact address text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

impl std::ops::Deref for ListenAddr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a socket address IP:port", |v: &str| {
            parse_socket_addr(v).map(|_| ListenAddr(v.to_string()))
        }))
    }
}

pub(crate) fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|e| format!("invalid duration {v:?} ({e}; e.g. 10s, 500ms)"))
}

/// A duration from `MIN` to `MAX` milliseconds: every duration key has
/// bounds, so no later `Instant + d` or `d * n` can overflow, and none is
/// zero where zero would make no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis<const MIN: u64, const MAX: u64>(Duration);

impl<const MIN: u64, const MAX: u64> Millis<MIN, MAX> {
    pub fn get(self) -> Duration {
        self.0
    }

    /// A default of `N` seconds, checked against the bounds at compile
    /// time.
    const fn secs<const N: u64>() -> Self {
        const {
            assert!(N.saturating_mul(1000) >= MIN && N.saturating_mul(1000) <= MAX);
        }
        Self(Duration::from_secs(N))
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Millis<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor("a duration such as 10s or 500ms", |v: &str| {
            let d = parse_duration(v)?;
            let (min, max) = (Duration::from_millis(MIN), Duration::from_millis(MAX));
            if d < min || d > max {
                return Err(format!(
                    "{v:?} out of range ({} to {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
            Ok(Self(d))
        }))
    }
}

/// An integer from `.0` to `.1`.
struct CountSeed(u64, u64, &'static str);

impl<'de> de::DeserializeSeed<'de> for CountSeed {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_u64(self)
    }
}

impl Visitor<'_> for CountSeed {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {} to {}", self.0, self.1)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        match usize::try_from(v) {
            Ok(n) if (self.0..=self.1).contains(&v) => Ok(n),
            _ => Err(E::custom(format!(
                "{}{v} out of range ({} to {})",
                self.2, self.0, self.1
            ))),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "{}{v} out of range ({} to {})",
                self.2, self.0, self.1
            ))),
        }
    }
}

/// A count from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count<const MIN: u64, const MAX: u64>(usize);

impl<const MIN: u64, const MAX: u64> Count<MIN, MAX> {
    pub fn get(self) -> usize {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Count<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::DeserializeSeed::deserialize(CountSeed(MIN, MAX, ""), d).map(Self)
    }
}

/// Most connections a backend holds at once; `0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendCap(usize);

impl BackendCap {
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for BackendCap {
    fn default() -> Self {
        Self(DEFAULT_BACKEND_MAX_CONNECTIONS)
    }
}

impl<'de> Deserialize<'de> for BackendCap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::DeserializeSeed::deserialize(CountSeed(0, MAX_BACKEND_CONNECTIONS as u64, ""), d)
            .map(Self)
    }
}

/// Highest backend weight (config key and Cloud Map attribute). Pingora's
/// weighted selection repeats each backend `weight` times in a table, so
/// unbounded weights cost memory; 256 is HAProxy's ceiling, which
/// operators already know.
pub const MAX_WEIGHT: usize = 256;

/// Highest `max_connections` of a backend (config key and Cloud Map
/// attribute).
pub const MAX_BACKEND_CONNECTIONS: usize = 1_000_000;

/// A backend's relative share of new connections, 1 to [`MAX_WEIGHT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(usize);

impl Weight {
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self(DEFAULT_WEIGHT)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::DeserializeSeed::deserialize(CountSeed(1, MAX_WEIGHT as u64, "weight "), d).map(Self)
    }
}

/// A protection's life (`expiresInMinutes`): whole minutes, 1 to 2,880.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(Duration);

impl Expiry {
    pub fn get(self) -> Duration {
        self.0
    }
}

fn parse_protection_expiry(v: &str) -> Result<Expiry, String> {
    let d = parse_duration(v)?;
    let minutes = d.as_secs() / 60;
    if d.subsec_nanos() != 0 || d.as_secs() % 60 != 0 {
        return Err(format!("{v:?} is not a whole number of minutes"));
    }
    if !(1..=MAX_PROTECTION_MINUTES as u64).contains(&minutes) {
        return Err(format!(
            "{v:?} out of range (1m to {MAX_PROTECTION_MINUTES}m, the ECS limit)"
        ));
    }
    Ok(Expiry(d))
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(
            "a whole number of minutes such as 60m",
            parse_protection_expiry,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        parse(yaml)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn edge_keys() {
        let c = parse(
            "proxy:\n  accept_proxy:\n    mode: v2\n    trusted: [10.0.0.0/16, 127.0.0.2]\n  tls:\n    - listen: \"0.0.0.0:443\"\n      cert: /c.pem\n      key: /k.pem\n",
        )
        .unwrap();
        assert_eq!(c.accept_proxy.mode, ProxyMode::V2);
        let trusted: Vec<String> = c
            .accept_proxy
            .trusted
            .iter()
            .map(|c| c.0.to_string())
            .collect();
        assert_eq!(trusted, ["10.0.0.0/16", "127.0.0.2/32"]);
        assert_eq!(
            (c.tls.len(), c.tls[0].accept_proxy.mode),
            (1, ProxyMode::Off)
        );
        assert_eq!(
            err("proxy:\n  accept_proxy:\n    mode: any\n"),
            "proxy.accept_proxy.trusted: required when mode is not off (the load balancers' addresses, e.g. the VPC CIDR 10.0.0.0/16)"
        );
        assert_eq!(
            err("proxy:\n  accept_proxy:\n    mode: v2\n    trusted: [10.0.0.0/33]\n"),
            "4: proxy.accept_proxy.trusted[0]: invalid CIDR \"10.0.0.0/33\" (e.g. 10.0.0.0/16 or 192.0.2.7)"
        );
        assert!(err(
            "proxy:\n  tls:\n    - listen: \"0.0.0.0:1935\"\n      cert: c\n      key: k\n"
        )
        .contains("proxy.tls[0].listen: 0.0.0.0:1935 overlaps proxy.listen"));
        assert!(
            err("proxy:\n  tls:\n    - listen: \"0.0.0.0:443\"\n      cert: c\n")
                .contains("missing field `key`")
        );
    }

    #[test]
    fn rtmp_keys() {
        let c = parse("proxy:\n  protocol: tcp\n  handshake_timeout: 750ms\n  send_proxy: v2\n")
            .unwrap();
        assert_eq!(
            (c.protocol, c.handshake_timeout.get(), c.send_proxy),
            (Protocol::Tcp, Duration::from_millis(750), SendProxy::V2)
        );
        // YAML 1.2: `off` is a string, not a boolean.
        assert_eq!(
            parse("proxy:\n  send_proxy: off\n").unwrap().send_proxy,
            SendProxy::Off
        );
        let e = err("proxy:\n  send_proxy: v3\n");
        assert!(
            e.starts_with("2: proxy.send_proxy: unknown variant `v3`"),
            "{e}"
        );
        let e = err("proxy:\n  protocol: http\n");
        assert!(
            e.starts_with("2: proxy.protocol: unknown variant `http`"),
            "{e}"
        );
        let e = err("proxy:\n  handshake_timeout: 5\n");
        assert!(e.starts_with("2: proxy.handshake_timeout: "), "{e}");
    }

    #[test]
    fn pingora_keys_are_left_to_pingora() {
        let c = parse(
            "version: 1\nthreads: 2\nproxy:\n  backends:\n    static:\n      - addr: 127.0.0.1:1\n",
        )
        .unwrap();
        assert_eq!(c.backends.static_[0].weight, Weight(10));
        assert_eq!(c.backends.static_[0].max_connections, BackendCap(1));
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = err(
            "proxy:\n  listen: 0.0.0.0:1935\n  backends:\n    static:\n      - addr: \"foo:bar\"\n",
        );
        assert_eq!(
            e,
            "5: proxy.backends.static[0].addr: invalid socket address \"foo:bar\" (expected IP:port)"
        );
        let e = err("proxy:\n  listen: 0.0.0.0:1935\n  connect_timeout: 10x\n");
        assert!(
            e.starts_with("3: proxy.connect_timeout: invalid duration \"10x\""),
            "{e}"
        );
        let e = err("proxy:\n  listen: 0.0.0.0:1935\n  bogus: 1\n");
        assert!(
            e.starts_with("3: proxy.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e =
            err("proxy:\n  backends:\n    static:\n      - addr: 1.2.3.4:5\n        weight: 0\n");
        assert!(
            e.starts_with("5: proxy.backends.static[0].weight: weight 0 out of range"),
            "{e}"
        );
        let e = err("proxy:\n  balance: fastest\n");
        assert!(
            e.starts_with("2: proxy.balance: unknown variant `fastest`"),
            "{e}"
        );
        let e = err("threads: 2\n");
        assert!(e.contains("missing field `proxy`"), "{e}");
    }

    #[test]
    fn cloud_map_section() {
        let c = parse("proxy:\n  backends:\n    cloud_map:\n      namespace: media.internal\n      service: rtmp-server\n      health_status: HEALTHY\n").unwrap();
        let cm = c.backends.cloud_map.unwrap();
        assert_eq!(
            (cm.port, cm.refresh.get(), cm.health_status),
            (1935, Duration::from_secs(5), HealthStatus::Healthy)
        );
        let e = err("proxy:\n  backends:\n    cloud_map:\n      namespace: n\n      service: s\n      health_status: GREEN\n");
        assert!(
            e.starts_with("6: proxy.backends.cloud_map.health_status: unknown variant `GREEN`"),
            "{e}"
        );
        let e = err("proxy:\n  backends:\n    cloud_map:\n      service: s\n");
        assert!(
            e.contains("proxy.backends.cloud_map: missing field `namespace`"),
            "{e}"
        );
        let e = err("proxy:\n  backends:\n    cloud_map:\n      namespace: n\n");
        assert_eq!(e, "4: proxy.backends.cloud_map: missing field `service`");
    }

    /// Ties the docs test in tests/config_check.rs, which compares parses,
    /// to the `Default` impls: a missing key takes its section's default.
    #[test]
    fn missing_keys_take_the_default() {
        assert_eq!(parse("proxy: {}\n").unwrap(), ProxyConfig::default());
        let c =
            parse("proxy:\n  backends:\n    cloud_map:\n      namespace: n\n      service: s\n")
                .unwrap();
        assert_eq!(
            c.backends.cloud_map,
            Some(CloudMapConfig {
                namespace: Required(Some("n".into())),
                service: Required(Some("s".into())),
                ..CloudMapConfig::default()
            })
        );
        let c = parse("proxy:\n  backends:\n    static:\n      - addr: 127.0.0.1:1\n").unwrap();
        assert_eq!(
            (
                c.backends.static_[0].weight,
                c.backends.static_[0].max_connections
            ),
            (Weight::default(), BackendCap::default())
        );
    }

    #[test]
    fn scale_in_protection_section() {
        let p = parse("proxy: {}\n").unwrap().scale_in_protection;
        assert!(!p.enabled);
        assert_eq!(
            (p.expires.get(), p.renew_every(), p.release_after.get()),
            (
                Duration::from_secs(3600),
                Duration::from_secs(1800),
                Duration::from_secs(30)
            )
        );
        assert_eq!(p.expires_in_minutes(), 60);
        let p = parse("proxy:\n  scale_in_protection:\n    enabled: true\n    cluster: media\n    expires: 2h\n    renew_every: 1s\n    endpoint: http://127.0.0.1:1\n").unwrap().scale_in_protection;
        assert_eq!(
            (p.expires_in_minutes(), p.renew_every(), p.cluster.as_str()),
            (120, Duration::from_secs(1), "media")
        );
        let e = err("proxy:\n  scale_in_protection:\n    enabled: true\n    expires: 90s\n");
        assert!(
            e.starts_with(
                "4: proxy.scale_in_protection.expires: \"90s\" is not a whole number of minutes"
            ),
            "{e}"
        );
        let e = err("proxy:\n  scale_in_protection:\n    expires: 49h\n");
        assert!(e.contains("out of range (1m to 2880m"), "{e}");
        let e = err("proxy:\n  scale_in_protection:\n    expires: 1m\n    renew_every: 1m\n");
        assert!(
            e.starts_with("proxy.scale_in_protection.renew_every: 1m must be at least 1s and shorter than expires (1m)"),
            "{e}"
        );
        let e = err("proxy:\n  scale_in_protection:\n    enable: true\n");
        assert!(
            e.starts_with("3: proxy.scale_in_protection.enable: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn zero_durations_that_make_no_sense() {
        for key in [
            "connect_timeout",
            "idle_timeout",
            "queue_timeout",
            "access_log_interval",
            "handshake_timeout",
            "stall_timeout",
        ] {
            let e = err(&format!("proxy:\n  {key}: 0s\n"));
            assert!(
                e.starts_with(&format!("2: proxy.{key}: \"0s\" out of range")),
                "{e}"
            );
        }
        for key in ["interval", "timeout"] {
            let e = err(&format!("proxy:\n  health_check:\n    {key}: 0s\n"));
            assert!(
                e.starts_with(&format!("3: proxy.health_check.{key}: \"0s\" out of range")),
                "{e}"
            );
        }
        let e = err("proxy:\n  health_check:\n    interval: 10ms\n");
        assert!(e.contains("out of range (100ms to 1day)"), "{e}");
        // Zero is meaningful here: no delay, cut at once.
        let c = parse("proxy:\n  drain_delay: 0s\n  drain_timeout: 0s\n").unwrap();
        assert_eq!(c.drain_timeout.get(), Duration::ZERO);
        // Values the repo's own configs and benches use.
        let c =
            parse("proxy:\n  health_check:\n    interval: 3600s\n  access_log_interval: 300ms\n")
                .unwrap();
        assert_eq!(c.health_check.interval.get(), Duration::from_secs(3600));
    }

    #[test]
    fn the_check_follows_the_protocol_unless_set() {
        let kind = |yaml: &str| parse(&format!("proxy:\n{yaml}")).unwrap().check_kind();
        assert_eq!(kind(""), CheckKind::Rtmp);
        assert_eq!(kind("  protocol: tcp\n"), CheckKind::Tcp);
        assert_eq!(kind("  health_check:\n    kind: tcp\n"), CheckKind::Tcp);
        assert_eq!(
            kind("  protocol: tcp\n  health_check:\n    kind: rtmp\n"),
            CheckKind::Rtmp
        );
        let e = err("proxy:\n  health_check:\n    kind: http\n");
        assert!(
            e.starts_with("3: proxy.health_check.kind: unknown variant `http`"),
            "{e}"
        );
    }

    #[test]
    fn integers_are_bounded() {
        let e = err("proxy:\n  max_queue: 1000001\n");
        assert!(
            e.starts_with("2: proxy.max_queue: 1000001 out of range"),
            "{e}"
        );
        let e = err("proxy:\n  max_connections: -1\n");
        assert!(
            e.starts_with("2: proxy.max_connections: ") && e.contains("from 0 to 1000000"),
            "{e}"
        );
        let e = err("proxy:\n  backends:\n    static:\n      - addr: 1.2.3.4:5\n        max_connections: 99999999999\n");
        assert!(
            e.starts_with("5: proxy.backends.static[0].max_connections: 99999999999 out of range"),
            "{e}"
        );
        let e = err("threads: 100000\nproxy: {}\n");
        assert!(
            e.starts_with("1: threads: 100000 out of range (1 to 256)"),
            "{e}"
        );
        let e = err("threads: 0\nproxy: {}\n");
        assert!(e.starts_with("1: threads: 0 out of range"), "{e}");
        assert!(parse("threads: 256\nproxy: {}\n").is_ok());
    }

    #[test]
    fn unknown_top_level_keys() {
        let e = err("proxy: {}\nthread: 4\n");
        assert!(e.starts_with("2: thread: unknown top-level key"), "{e}");
        let e = err("proxy: {}\nextra:\n  a: 1\n");
        assert!(e.contains("extra: unknown top-level key"), "{e}");
        assert!(parse("version: 1\npid_file: /tmp/x.pid\nupgrade_sock: /tmp/x.sock\ngrace_period_seconds: 5\nproxy: {}\n").is_ok());
    }

    #[test]
    fn listeners_must_not_overlap() {
        for (yaml, want) in [
            (
                "proxy:\n  listen: 0.0.0.0:1935\n  health_listen: 0.0.0.0:1935\n",
                "proxy.health_listen: 0.0.0.0:1935 overlaps proxy.listen (0.0.0.0:1935)",
            ),
            (
                "proxy:\n  listen: 0.0.0.0:9000\n  admin_listen: 127.0.0.1:9000\n",
                "proxy.admin_listen: 127.0.0.1:9000 overlaps proxy.listen (0.0.0.0:9000)",
            ),
            (
                "proxy:\n  health_listen: \"[::]:8001\"\n",
                "proxy.admin_listen: 127.0.0.1:8001 overlaps proxy.health_listen ([::]:8001)",
            ),
        ] {
            let e = err(yaml);
            assert!(e.starts_with(want), "{e}");
        }
        // Different IPs of one family, or different ports, are fine.
        assert!(
            parse("proxy:\n  listen: 127.0.0.1:9000\n  admin_listen: 127.0.0.2:9000\n").is_ok()
        );
        assert!(parse("proxy:\n  listen: 0.0.0.0:9000\n  admin_listen: \"[::1]:9000\"\n").is_ok());
    }

    #[test]
    fn duplicate_static_backends() {
        let e = err("proxy:\n  backends:\n    static:\n      - addr: 127.0.0.1:1\n      - addr: 127.0.0.1:2\n      - addr: 127.0.0.1:1\n");
        assert_eq!(
            e,
            "proxy.backends.static[2].addr: 127.0.0.1:1 is listed twice (also proxy.backends.static[0])"
        );
    }

    #[test]
    fn file_size_is_capped() {
        let e = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(e, "/dev/zero: config file larger than 1024 KiB");
    }

    /// A stable stand-in for `fuzz/fuzz_targets/config.rs` that runs with
    /// every `cargo test`: the repo's configs, mutated, never panic.
    #[test]
    fn mutated_configs_never_panic() {
        let seeds = [
            include_str!("../conf/rtmp-proxy.yaml"),
            include_str!("../deploy/rtmp-proxy.yaml"),
        ];
        let tokens = [
            "0s",
            "99999999999999999s",
            "-1",
            "18446744073709551616",
            "1e400",
            "[::]:1935",
            "{",
            "}",
            "[",
            "\n  ",
            ": ",
            "- ",
            "&a ",
            "*a",
            "!!binary ",
            "~",
            "'",
            "\"",
            "threads: ",
            "proxy:",
            "\t",
            "<<: *a",
        ];
        let mut rng = fastrand::Rng::with_seed(18);
        for i in 0..5000 {
            let mut text = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(0..=text.len());
                match rng.u8(0..3) {
                    0 => {
                        let t = tokens[rng.usize(0..tokens.len())];
                        text.splice(at..at, t.bytes());
                    }
                    1 if at < text.len() => {
                        text.remove(at);
                    }
                    _ if at < text.len() => text[at] = rng.u8(..),
                    _ => {}
                }
            }
            if let Ok(t) = std::str::from_utf8(&text) {
                let _ = parse(t);
            }
        }
    }

    #[test]
    fn global_cap() {
        assert_eq!(parse("proxy: {}\n").unwrap().global_cap(), None);
        assert_eq!(
            parse("proxy:\n  max_connections: 0\n")
                .unwrap()
                .global_cap(),
            None
        );
        assert_eq!(
            parse("proxy:\n  max_connections: 1\n")
                .unwrap()
                .global_cap(),
            Some(1)
        );
    }
}
