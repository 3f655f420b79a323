//! The two HTTP listeners: the public health check and the private admin API.
//!
//! They are separate services on separate ports because the health port is
//! reachable from the internet (Route53, NLB) and must expose nothing
//! internal, while the admin port lists backend addresses.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

use crate::balancer::redis::SharedSlots;
use crate::balancer::{BackendView, SlotTable};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics;
use crate::protection::Protection;

/// `GET /health` on `proxy.health_listen`.
pub struct Health {
    table: Arc<SlotTable>,
    lifecycle: Arc<Lifecycle>,
}

impl Health {
    pub fn new(table: Arc<SlotTable>, lifecycle: Arc<Lifecycle>) -> Self {
        Self { table, lifecycle }
    }
}

#[async_trait]
impl ServeHttp for Health {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() != "/health" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if !matches!(req.method, Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        // The process exits if the proxy listener cannot be bound (see
        // main), so while this answers, the proxy port is open, unless the
        // process is draining.
        if self.lifecycle.phase() == Phase::Draining {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if self.table.any_healthy() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
        }
    }
}

/// The admin API on `proxy.admin_listen`.
pub struct Admin {
    table: Arc<SlotTable>,
    shared: Option<Arc<SharedSlots>>,
    protection: Option<Arc<Protection>>,
}

impl Admin {
    pub fn new(table: Arc<SlotTable>, shared: Option<Arc<SharedSlots>>) -> Self {
        Self {
            table,
            shared,
            protection: None,
        }
    }

    /// Shows each backend's ECS scale-in protection.
    pub fn with_protection(mut self, protection: Option<Arc<Protection>>) -> Self {
        self.protection = protection;
        self
    }

    fn slot_store(&self) -> &'static str {
        match &self.shared {
            None => "local",
            Some(s) if s.degraded() => "redis (degraded)",
            Some(_) => "redis",
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
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if !matches!(req.method, Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri.path() {
            "/backends" => {
                let queued = self.table.queued();
                let slot_store = self.slot_store();
                let entries: Vec<BackendEntry> = self
                    .table
                    .snapshot()
                    .into_iter()
                    .map(|backend| {
                        let until = self
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
            "/metrics" => body(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&self.table),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
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

/// A complete response; Pingora sends no length of its own.
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
