//! An RTMP ingest load balancer on Cloudflare's Pingora.
//!
//! Publishers push RTMP to one address; the proxy spreads them over a fleet
//! of media servers, giving each server at most its `max_connections`
//! streams, and forwards bytes untouched.
//!
//! # Layout
//!
//! - [`app`]: command line, config file, and the Pingora `Server` composed
//!   of its services. `main.rs` only calls it.
//! - [`config`]: the `proxy:` section of the YAML file; every key, its
//!   default and its meaning.
//! - [`core`]: the state every service borrows, built once: slot table,
//!   data-path settings, lifecycle, handoff, Redis slots, access log,
//!   stream directory.
//! - [`discovery`]: where backends come from (static list; Cloud Map),
//!   behind Pingora's `ServiceDiscovery`, combined into one fleet.
//! - [`health_check`]: active TCP checks, reported to the slot table.
//! - [`balancer`]: the slot table (exact per-backend caps, the wait queue),
//!   the balancing policies, shared leases in Redis over the process's
//!   one Redis connection ([`balancer::redis`]), and the table's gauges
//!   ([`balancer::gauges`]).
//! - [`lifecycle`]: signals, drains that never cut a live stream, and the
//!   slot handoff of a binary upgrade ([`lifecycle::handoff`]).
//! - [`proxy`]: one client connection from accept to close, as phases in
//!   one file: front, admit (or route, for a player), connect, splice,
//!   finish; [`proxy::backend`] opens backend connections and says how
//!   they failed; [`proxy::duplex`] copies; [`proxy::listener`] accepts,
//!   one socket and runtime per thread; [`proxy::rtmp`] runs the RTMP
//!   front on a socket, the opening towards a media server and PROXY
//!   headers.
//! - [`auth`]: the HTTP auth hook asked before a publish or play
//!   (nginx-rtmp's `on_publish` / `on_play` form), what its answer allows
//!   and where it routes the stream, and a bounded cache of its answers.
//! - [`reason`]: every way a client connection ends, one name each (the
//!   metric label and the access log's `reason`).
//! - [`streams`]: the stream directory (which stream runs on which
//!   backend) behind `GET /streams`, shared by every proxy with Redis
//!   ([`streams::shared`]), and carried over an upgrade.
//! - [`access_log`]: one JSON line per connection, progress lines, recent
//!   rejections.
//! - [`rtmp`]: RTMP without I/O, bounded and fuzzed: handshakes
//!   (`rtmp::handshake`), bytes become chunks (`rtmp::chunk`, no meaning)
//!   and chunks are written again (`rtmp::rechunk`), chunks become AMF0
//!   values (`rtmp::amf0`), values become commands (`rtmp::command`,
//!   meaning); the front's state (`rtmp::Front`) and the judge of a
//!   server's answers (`rtmp::upstream`).
//! - [`http`]: the public health endpoint and the private admin API with
//!   the stats page (`stats.html`), on a small hyper server of our own
//!   (`http::server`: header deadline, connection caps, quiet logs).
//! - [`metrics`]: Prometheus metrics.
//! - [`memory`]: hands heap memory freed after a burst back to the system.
//! - [`protection`]: ECS task scale-in protection for busy media servers
//!   and for the proxy's own task, on its own runtime thread.
//! - [`runtime`]: the dedicated runtimes such work runs on.
//! - [`aws`]: the AWS SDK config and error text Cloud Map discovery and
//!   scale-in protection share; [`backoff`]: their retry delays.

// Nothing outside tests may panic on input: unwrap, expect and panic are
// denied (the `rtmp` parser also denies indexing and unchecked arithmetic).
// Unsafe code is denied in Cargo.toml's `[lints]`; the few places that take
// ownership of a raw descriptor allow it where they stand.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access_log;
pub mod app;
pub mod auth;
pub mod aws;
pub mod backoff;
pub mod balancer;
pub mod config;
pub mod core;
pub mod discovery;
pub mod health_check;
pub mod http;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod protection;
pub mod proxy;
pub mod reason;
pub mod rtmp;
pub mod runtime;
pub mod streams;
