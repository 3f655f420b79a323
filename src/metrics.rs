//! Process-wide counters, in the `prometheus` crate's default registry (the
//! one Pingora's `pingora-prometheus` also serves), exposed on the admin
//! listener at `/metrics`.
//!
//! Labels stay bounded: reasons and directions, never a client address or a
//! stream key.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, Encoder, IntCounter, IntCounterVec, TextEncoder,
};

pub struct Metrics {
    pub accepted: IntCounter,
    pub served: IntCounter,
    pub rejected: IntCounterVec,
    pub closed: IntCounterVec,
    pub bytes: IntCounterVec,
    /// `protocol: rtmp`: connections whose `publish` or `play` was seen.
    pub streams_identified: IntCounterVec,
    /// `protocol: rtmp`: connections the observer could not follow.
    pub streams_unknown: IntCounterVec,
}

// Registration fails only on a duplicate name or a malformed one, both
// fixed at compile time: a startup invariant.
#[allow(clippy::expect_used)]
static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
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
    streams_identified: register_int_counter_vec!(
        "rtmp_proxy_streams_identified_total",
        "Proxied RTMP connections whose publish or play was seen, by role.",
        &["role"]
    )
    .expect("metric registration"),
    streams_unknown: register_int_counter_vec!(
        "rtmp_proxy_streams_unknown_total",
        "Proxied connections the RTMP observer could not follow (proxied as plain TCP), by reason.",
        &["reason"]
    )
    .expect("metric registration"),
});

pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Byte counters for client-to-backend and backend-to-client.
    pub fn byte_counters(&self) -> [IntCounter; 2] {
        [
            self.bytes.with_label_values(&["client_to_backend"]),
            self.bytes.with_label_values(&["backend_to_client"]),
        ]
    }
}

/// The default registry in Prometheus' text format.
pub fn render() -> Vec<u8> {
    LazyLock::force(&METRICS);
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a malformed family would be
    // a bug in this file, and an empty answer is then the honest one.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
