//! Why a client connection ended: one name per reason, used as the metric
//! label (`rtmp_proxy_connections_rejected_total{reason}` and
//! `..._closed_total{reason}`) and as the access log's `reason`.

use std::fmt;

use serde::{Serialize, Serializer};

/// Every way a client connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Rejected: closed before it reached a backend.
    /// A PROXY header from a source not in `accept_proxy.trusted`.
    ProxyHeaderUntrusted,
    /// No valid PROXY header where `accept_proxy` requires one.
    ProxyHeaderInvalid,
    /// The TLS handshake failed (`proxy.tls`).
    TlsHandshake,
    /// No `publish` or `play` within `handshake_timeout` (`rtmp` mode).
    HandshakeTimeout,
    /// A first byte other than 3: not RTMP.
    HandshakeBadVersion,
    /// The client closed or failed before its `publish` or `play`.
    HandshakeIncomplete,
    /// The client's RTMP before its `publish` or `play` was not understood.
    ProtocolError,
    /// A `play` of a stream no media server is known to carry.
    StreamNotFound,
    /// The auth hook (`proxy.auth`) denied the publish or play.
    AuthDenied,
    /// The auth hook failed (timeout, unreachable, 5xx, an answer not
    /// understood) and `on_error` is `deny`.
    AuthFailed,
    /// The auth hook named a media server that is unknown, down or full.
    RouteUnavailable,
    /// A publish of a stream already live, with `duplicate_publish: reject`.
    DuplicatePublish,
    /// The client closed while it waited in the queue.
    ClientLeft,
    /// The queue was full (or off) when the client arrived.
    QueueFull,
    /// No slot came free within `queue_timeout`.
    QueueTimeout,
    /// A binary upgrade was under way and the client could not be passed to
    /// the new process.
    HandedOff,
    /// No eligible backend accepted the connection.
    ConnectFailed,

    // Closed: ended after it reached a backend.
    /// The client closed its side first.
    ClientClosed,
    /// The backend closed its side first.
    BackendClosed,
    /// The client's side failed (reset, broken pipe) first.
    ClientError,
    /// The backend's side failed first.
    BackendError,
    /// No byte either way for `idle_timeout`.
    IdleTimeout,
    /// The backend took none of the client's bytes for `stall_timeout`.
    BackendStalled,
    /// `drain_timeout` passed, or SIGINT, and the stream was cut.
    ShutdownCut,
    /// A new publisher of the same stream took the session over
    /// (`duplicate_publish: takeover`).
    Takeover,
}

impl Reason {
    /// Every reason, in declaration order (rejections, then ends): for
    /// documentation checks (`tests/docs.rs`) and anything else that must
    /// cover them all. The test below fails when a variant is added
    /// without a place here.
    pub const ALL: &[Reason] = &[
        Reason::ProxyHeaderUntrusted,
        Reason::ProxyHeaderInvalid,
        Reason::TlsHandshake,
        Reason::HandshakeTimeout,
        Reason::HandshakeBadVersion,
        Reason::HandshakeIncomplete,
        Reason::ProtocolError,
        Reason::StreamNotFound,
        Reason::AuthDenied,
        Reason::AuthFailed,
        Reason::RouteUnavailable,
        Reason::DuplicatePublish,
        Reason::ClientLeft,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::HandedOff,
        Reason::ConnectFailed,
        Reason::ClientClosed,
        Reason::BackendClosed,
        Reason::ClientError,
        Reason::BackendError,
        Reason::IdleTimeout,
        Reason::BackendStalled,
        Reason::ShutdownCut,
        Reason::Takeover,
    ];

    /// Ended before reaching a backend (`..._rejected_total`), rather
    /// than after (`..._closed_total`).
    pub fn is_rejection(self) -> bool {
        !matches!(
            self,
            Reason::ClientClosed
                | Reason::BackendClosed
                | Reason::ClientError
                | Reason::BackendError
                | Reason::IdleTimeout
                | Reason::BackendStalled
                | Reason::ShutdownCut
                | Reason::Takeover
        )
    }

    /// The label in metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ProxyHeaderUntrusted => "proxy_header_untrusted",
            Reason::ProxyHeaderInvalid => "proxy_header_invalid",
            Reason::TlsHandshake => "tls_handshake",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeBadVersion => "handshake_bad_version",
            Reason::HandshakeIncomplete => "handshake_incomplete",
            Reason::ProtocolError => "protocol_error",
            Reason::StreamNotFound => "stream_not_found",
            Reason::AuthDenied => "auth_denied",
            Reason::AuthFailed => "auth_failed",
            Reason::RouteUnavailable => "route_unavailable",
            Reason::DuplicatePublish => "duplicate_publish",
            Reason::ClientLeft => "client_left",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::HandedOff => "handed_off",
            Reason::ConnectFailed => "connect_failed",
            Reason::ClientClosed => "client_closed",
            Reason::BackendClosed => "backend_closed",
            Reason::ClientError => "client_error",
            Reason::BackendError => "backend_error",
            Reason::IdleTimeout => "idle_timeout",
            Reason::BackendStalled => "backend_stalled",
            Reason::ShutdownCut => "shutdown_cut",
            Reason::Takeover => "takeover",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    /// `ALL` lists every variant of the enum once, in declaration order:
    /// the variants are read from this file's own source, so a variant
    /// added anywhere fails here until `ALL` has it.
    #[test]
    fn all_lists_every_reason_once() {
        let source = include_str!("reason.rs");
        let body = source
            .split("pub enum Reason {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("the enum in src/reason.rs");
        let declared: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && l.ends_with(','))
            .map(|l| l.trim_end_matches(','))
            .collect();
        let listed: Vec<String> = Reason::ALL.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(listed, declared, "Reason::ALL and the enum disagree");
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len(), "two reasons share a label");
    }

    /// `is_rejection` follows the enum's two sections: the variants after
    /// its `// Closed:` comment end after reaching a backend.
    #[test]
    fn rejections_are_the_first_section() {
        let source = include_str!("reason.rs");
        let closed = source
            .split("pub enum Reason {")
            .nth(1)
            .and_then(|rest| rest.split("// Closed:").nth(1))
            .and_then(|rest| rest.split("\n}").next())
            .expect("the enum's Closed section");
        for r in Reason::ALL {
            let in_closed = closed.contains(&format!("    {r:?},"));
            assert_eq!(r.is_rejection(), !in_closed, "{r:?}");
        }
    }
}
