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
use crate::streams::Directory;

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
    streams: Arc<Directory>,
}

impl Admin {
    pub fn new(
        table: Arc<SlotTable>,
        shared: Option<Arc<SharedSlots>>,
        streams: Arc<Directory>,
    ) -> Self {
        Self {
            table,
            shared,
            streams,
        }
    }

    /// `GET /streams/{app}/{key}`: segments percent-decoded, so a key with
    /// `/` or `?` in it is asked for as `%2F` / `%3F`.
    fn stream(&self, rest: &str) -> Response<Vec<u8>> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
        let found = match rest.split_once('/') {
            Some((app, key)) if !key.contains('/') => decode(app)
                .zip(decode(key))
                .and_then(|(app, key)| self.streams.find(&app, &key)),
            _ => None,
        };
        // Never echo the key back: the answer carries it redacted.
        match found {
            Some(view) => json(&view),
            None => text(StatusCode::NOT_FOUND, "no such stream\n"),
        }
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
                    .map(|backend| BackendEntry {
                        backend,
                        queued,
                        slot_store,
                    })
                    .collect();
                json(&entries)
            }
            "/streams" => json(&self.streams.list()),
            "/metrics" => body(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&self.table),
            ),
            path => match path.strip_prefix("/streams/") {
                Some(rest) => self.stream(rest),
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
