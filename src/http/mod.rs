//! The two HTTP listeners: the public health check and the private admin API.
//!
//! They are separate services on separate ports because the health port is
//! reachable from the internet (Route53, NLB) and must expose nothing
//! internal, while the admin port lists backend addresses. Both run on
//! [`server`].

pub mod server;

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use serde::Serialize;

use crate::access_log::Record;
use crate::balancer::BackendView;
use crate::core::Core;
use crate::lifecycle::Phase;
use crate::metrics;

/// The public port, `proxy.health_listen`:
///
/// - `GET /health`: this process's own readiness, for the load balancer
///   in front (NLB target group, Route53 record) and ECS. 200 while it
///   takes clients, 503 once it drains or has handed off. It does not look
///   at the media servers: an empty or unreachable fleet must not make ECS
///   replace every proxy task (which would not help), nor an NLB fail open.
/// - `GET /health/fleet`: 200 while at least one media server is healthy
///   with a free slot, 503 otherwise; for Route53 failover to another
///   region and for alarms. The body says why, never which server.
pub struct Health {
    core: Arc<Core>,
}

impl Health {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn readiness(&self) -> Response<Vec<u8>> {
        // The process exits if the proxy listener cannot be bound (see
        // main), so while this answers, the proxy port is open, unless the
        // process is draining or has handed its sockets to a successor.
        match self.core.lifecycle.phase() {
            Phase::Serving => text(StatusCode::OK, "ok\n"),
            Phase::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            Phase::HandedOff => text(StatusCode::SERVICE_UNAVAILABLE, "handed off\n"),
        }
    }

    fn fleet(&self) -> Response<Vec<u8>> {
        // Read from the same table the proxy takes slots from, so the
        // answer matches what a new client would get (apart from the
        // global cap and the queue, which are this process's own limits).
        let backends = self.core.table.snapshot();
        let healthy: Vec<_> = backends.iter().filter(|b| b.present && b.healthy).collect();
        let free = healthy
            .iter()
            .filter(|b| b.max_connections == 0 || b.active + b.remote < b.max_connections)
            .count();
        if free > 0 {
            text(
                StatusCode::OK,
                &format!("ok: {free} healthy media server(s) with a free slot\n"),
            )
        } else if healthy.is_empty() {
            text(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no free slot: {} healthy media server(s), all full\n",
                    healthy.len()
                ),
            )
        }
    }
}

#[async_trait]
impl server::Handler for Health {
    async fn respond(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let answer: fn(&Self) -> Response<Vec<u8>> = match path {
            "/health" => Self::readiness,
            "/health/fleet" => Self::fleet,
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if !matches!(*method, Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        answer(self)
    }

    fn skips_proxy_header(&self) -> bool {
        // Load balancers with PROXY protocol on the target group send a
        // header on their health checks too (an AWS NLB does, whatever the
        // health check port); nothing here uses the client's address.
        true
    }
}

/// The admin API on `proxy.admin_listen`: the stats page (`/`), JSON
/// endpoints it reads (`/status`, `/backends`, `/streams`) and `/metrics`.
pub struct Admin {
    core: Arc<Core>,
}

/// The stats page: one self-contained file (no external assets), which
/// refreshes itself from the JSON endpoints.
const STATS_PAGE: &str = include_str!("stats.html");

/// `GET /status`.
#[derive(Serialize)]
struct Status {
    version: &'static str,
    /// `serving`, `draining` or `handed_off`.
    phase: &'static str,
    uptime_seconds: u64,
    /// Client connections open now (queued, connecting or proxied).
    sessions: usize,
    queued: usize,
    slot_store: &'static str,
    accepted_total: u64,
    served_total: u64,
    rejected_total: u64,
    /// Publishes and plays the auth hook denied, or that failed with
    /// `on_error: deny`.
    auth_denied_total: u64,
    /// Publishes that took over a live session of their stream.
    takeovers_total: u64,
    /// Publishers that went back to their last server (`sticky_for`).
    sticky_hits_total: u64,
    /// The last rejections, oldest first (access log records).
    recent_rejections: Vec<Record>,
}

impl Admin {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn status(&self) -> Status {
        let m = metrics::get();
        let rejected = metrics::sum(&m.rejected);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            phase: match self.core.lifecycle.phase() {
                Phase::Serving => "serving",
                Phase::Draining => "draining",
                Phase::HandedOff => "handed_off",
            },
            uptime_seconds: self.core.started.elapsed().as_secs(),
            sessions: self.core.lifecycle.sessions(),
            queued: self.core.table.queued(),
            slot_store: self.slot_store(),
            accepted_total: m.accepted.get(),
            served_total: m.served.get(),
            rejected_total: rejected,
            auth_denied_total: ["auth_denied", "auth_failed"]
                .iter()
                .map(|r| m.rejected.with_label_values(&[r]).get())
                .sum(),
            takeovers_total: metrics::sum(&m.takeovers),
            sticky_hits_total: m.sticky.with_label_values(&["hit"]).get(),
            recent_rejections: self.core.access_log.recent_rejections(),
        }
    }

    fn slot_store(&self) -> &'static str {
        match &self.core.shared {
            None => "local",
            Some(s) if s.degraded() => "redis (degraded)",
            Some(_) => "redis",
        }
    }

    /// `GET /streams/{app}/{key}`: segments percent-decoded, so a key with
    /// `/` or `?` in it is asked for as `%2F` / `%3F`.
    async fn stream(&self, rest: &str) -> Response<Vec<u8>> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
        let Some((app, key)) = rest
            .split_once('/')
            .filter(|(_, key)| !key.contains('/'))
            .and_then(|(app, key)| decode(app).zip(decode(key)))
        else {
            return text(StatusCode::NOT_FOUND, "no such stream\n");
        };
        // Never echo the key back: the answer carries it redacted.
        if let Some(view) = self.core.streams.find(&app, &key) {
            return json(&view);
        }
        // Published through another proxy (Redis slot store)?
        match self.core.streams.find_shared(&app, &key).await {
            Some(view) => json(&view),
            None => text(StatusCode::NOT_FOUND, "no such stream\n"),
        }
    }
}

/// One element of `GET /backends`.
#[derive(Serialize)]
struct BackendEntry {
    #[serde(flatten)]
    backend: BackendView,
    /// Clients waiting for any backend: the queue is shared, so every
    /// element carries the same value.
    queued: usize,
    /// Where slots are counted: `local`, `redis`, or `redis (degraded)`
    /// while Redis is unreachable (same in every element).
    slot_store: &'static str,
    /// Its ECS task is scale-in protected, as this proxy last set it.
    protected: bool,
    /// Until when (RFC 3339), or null.
    protected_until: Option<String>,
}

#[async_trait]
impl server::Handler for Admin {
    async fn respond(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path {
            "/backends" => {
                let queued = self.core.table.queued();
                let slot_store = self.slot_store();
                let entries: Vec<BackendEntry> = self
                    .core
                    .table
                    .snapshot()
                    .into_iter()
                    .map(|backend| {
                        let until = self
                            .core
                            .protection
                            .as_ref()
                            .zip(backend.task.as_ref())
                            .and_then(|(p, task)| p.protected_until(task));
                        BackendEntry {
                            backend,
                            queued,
                            slot_store,
                            protected: until.is_some(),
                            protected_until: until
                                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        }
                    })
                    .collect();
                json(&entries)
            }
            "/" => body(
                StatusCode::OK,
                "text/html; charset=utf-8",
                STATS_PAGE.as_bytes().to_vec(),
            ),
            "/status" => json(&self.status()),
            "/streams" => json(
                &self
                    .core
                    .streams
                    .list(self.core.lifecycle.phase() != Phase::Serving),
            ),
            "/metrics" => body(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            path => match path.strip_prefix("/streams/") {
                Some(rest) => self.stream(rest).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            body(StatusCode::OK, "application/json", bytes)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode response: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    body(status, "text/plain; charset=utf-8", msg.as_bytes().to_vec())
}

/// A complete response, with its length.
fn body(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Vec<u8>> {
    let len = bytes.len();
    let mut resp = Response::new(bytes);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
