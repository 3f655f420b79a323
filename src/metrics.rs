//! Prometheus metrics, in the `prometheus` crate's default registry (the one
//! Pingora's `pingora-prometheus` also serves), exposed on the admin
//! listener at `/metrics`. Counters move as things happen; the slot table's
//! gauges are read at scrape time (`balancer::gauges`).
//!
//! Labels stay bounded: reasons, directions, discovery sources and backend
//! addresses (the fleet), never a client address or a stream key.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder, Gauge, GaugeVec,
    Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

pub struct Metrics {
    pub accepted: IntCounter,
    pub served: IntCounter,
    pub rejected: IntCounterVec,
    pub closed: IntCounterVec,
    pub bytes: IntCounterVec,
    pub queue_wait: Histogram,
    pub connect_time: Histogram,
    pub discovery: IntCounterVec,
    pub discovery_last_success: GaugeVec,
    pub slot_store_degraded: IntGauge,
    pub protection_calls: IntCounterVec,
    pub protected_tasks: IntGaugeVec,
    /// Unix time SIGTERM started this process's drain; 0 while serving.
    draining_since: Gauge,
    start_time: Gauge,
    build_info: IntGaugeVec,
    /// `protocol: rtmp`: connections whose `publish` or `play` was seen.
    pub streams_identified: IntCounterVec,
    /// `proxy.auth`: hook answers, by call (publish, play) and result.
    pub auth: IntCounterVec,
    /// Of those, the ones answered from the cache.
    pub auth_cached: IntCounter,
    /// Publishes that took a live session of their stream over, by scope
    /// (local: on this proxy; fleet: on another).
    pub takeovers: IntCounterVec,
    /// Publishers back within `sticky_for`: hit (same server), miss (it
    /// was down or full).
    pub sticky: IntCounterVec,
    /// Health and admin connections closed by us or on an error, by
    /// listener and reason.
    pub http_closed: IntCounterVec,
    /// `bytes` by direction, looked up once rather than per connection.
    byte_pair: OnceLock<[IntCounter; 2]>,
}

// Registration fails only on a duplicate name or a malformed one, both
// fixed at compile time: a startup invariant.
#[allow(clippy::expect_used)]
static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    accepted: register_int_counter!(
        "rtmp_proxy_connections_accepted_total",
        "Client connections accepted on the proxy listener."
    )
    .expect("metric registration"),
    served: register_int_counter!(
        "rtmp_proxy_connections_served_total",
        "Client connections that reached a backend."
    )
    .expect("metric registration"),
    rejected: register_int_counter_vec!(
        "rtmp_proxy_connections_rejected_total",
        "Client connections closed without reaching a backend, by reason.",
        &["reason"]
    )
    .expect("metric registration"),
    closed: register_int_counter_vec!(
        "rtmp_proxy_connections_closed_total",
        "Proxied connections that ended, by reason.",
        &["reason"]
    )
    .expect("metric registration"),
    bytes: register_int_counter_vec!(
        "rtmp_proxy_bytes_total",
        "Bytes proxied, by direction.",
        &["direction"]
    )
    .expect("metric registration"),
    queue_wait: register_histogram!(
        "rtmp_proxy_queue_wait_seconds",
        "Time clients waited for a backend slot (0 when one was free).",
        vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
    )
    .expect("metric registration"),
    connect_time: register_histogram!(
        "rtmp_proxy_backend_connect_seconds",
        "Time to open a TCP connection to a backend, failures included.",
        vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    )
    .expect("metric registration"),
    discovery: register_int_counter_vec!(
        "rtmp_proxy_discovery_refreshes_total",
        "Discovery calls, by source and result (ok, error).",
        &["source", "result"]
    )
    .expect("metric registration"),
    discovery_last_success: register_gauge_vec!(
        "rtmp_proxy_discovery_last_success_timestamp_seconds",
        "Unix time of the last successful discovery call, by source.",
        &["source"]
    )
    .expect("metric registration"),
    slot_store_degraded: register_int_gauge!(
        "rtmp_proxy_slot_store_degraded",
        "1 while the Redis slot store is unreachable and slots are counted locally."
    )
    .expect("metric registration"),
    protection_calls: register_int_counter_vec!(
        "rtmp_proxy_scale_in_protection_calls_total",
        "ECS task scale-in protection calls, by target (media: the ECS API for media servers; self: the ECS agent) and result (ok, task_failure, throttled, access_denied, error).",
        &["target", "result"]
    )
    .expect("metric registration"),
    protected_tasks: register_int_gauge_vec!(
        "rtmp_proxy_scale_in_protected_tasks",
        "Tasks this proxy holds scale-in protection on, by target (media, self).",
        &["target"]
    )
    .expect("metric registration"),
    draining_since: register_gauge!(
        "rtmp_proxy_draining_since_timestamp_seconds",
        "Unix time this process started draining (SIGTERM); 0 while it serves."
    )
    .expect("metric registration"),
    start_time: register_gauge!(
        "rtmp_proxy_start_time_seconds",
        "Unix time the process started."
    )
    .expect("metric registration"),
    build_info: register_int_gauge_vec!(
        "rtmp_proxy_build_info",
        "Always 1; the labels say which build runs.",
        &["version"]
    )
    .expect("metric registration"),
    streams_identified: register_int_counter_vec!(
        "rtmp_proxy_streams_identified_total",
        "Proxied RTMP connections whose publish or play was seen, by role.",
        &["role"]
    )
    .expect("metric registration"),
    auth: register_int_counter_vec!(
        "rtmp_proxy_auth_total",
        "Auth hook answers, by call (publish, play) and result (allowed, denied, error_allowed, error_denied).",
        &["call", "result"]
    )
    .expect("metric registration"),
    auth_cached: register_int_counter!(
        "rtmp_proxy_auth_cache_hits_total",
        "Auth hook answers reused from the cache (proxy.auth.cache)."
    )
    .expect("metric registration"),
    takeovers: register_int_counter_vec!(
        "rtmp_proxy_takeovers_total",
        "Publishes that took over a live session of the same stream, by where it ran (local, fleet).",
        &["scope"]
    )
    .expect("metric registration"),
    sticky: register_int_counter_vec!(
        "rtmp_proxy_sticky_total",
        "Publishers back within sticky_for: hit (same server again), miss (it was down or full).",
        &["result"]
    )
    .expect("metric registration"),
    http_closed: register_int_counter_vec!(
        "rtmp_proxy_http_connections_closed_total",
        "Health and admin connections closed over the cap, at the header deadline or on a bad request, by listener and reason.",
        &["listener", "reason"]
    )
    .expect("metric registration"),
    byte_pair: OnceLock::new(),
}
});

/// Registers the process-level metrics; call once at start-up.
pub fn init() {
    let m = get();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    m.start_time.set(now);
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    // Every reason at 0 from the start, so that `rate()` and `increase()`
    // see a reason's first connection, not only its second.
    for reason in crate::reason::Reason::ALL {
        let counter = if reason.is_rejection() {
            &m.rejected
        } else {
            &m.closed
        };
        counter.with_label_values(&[reason.label()]);
    }
    // CPU, memory and file descriptors of this process. Fails only when
    // registered twice.
    let _ = prometheus::register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
}

/// The drain started (SIGTERM): sets `rtmp_proxy_draining_since_timestamp_seconds`
/// to now, once.
pub fn draining_started() {
    let since = &get().draining_since;
    if since.get() <= 0.0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        since.set(now);
    }
}

pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Byte counters for client-to-backend and backend-to-client.
    pub fn byte_counters(&self) -> [IntCounter; 2] {
        self.byte_pair
            .get_or_init(|| {
                [
                    self.bytes.with_label_values(&["client_to_backend"]),
                    self.bytes.with_label_values(&["backend_to_client"]),
                ]
            })
            .clone()
    }
}

/// The sum of a counter over all its label values.
pub fn sum(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The default registry in Prometheus' text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a malformed family would be
    // a bug in this file, and an empty answer is then the honest one.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
