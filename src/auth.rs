//! The auth hook: an HTTP endpoint asked once per publish (and play), the
//! way nginx-rtmp's `on_publish` and `on_play` ask it, before a slot or a
//! media server is spent on the stream, so a platform's existing endpoint
//! works unchanged.
//!
//! The request is nginx-rtmp's: a POST of an
//! `application/x-www-form-urlencoded` body with the same fields in the same
//! order and the same escaping (`form`). The answer (`interpret`): a 2xx
//! allows, a 4xx denies; a 3xx allows and renames (or routes, with an
//! `rtmp://` Location); a 2xx may route with an `X-RTMP-Backend` header or
//! a JSON body. A timeout, no connection, a 5xx or an answer not
//! understood is a failure that `on_error` decides.
//!
//! The stream key is a secret: the hook alone receives it. Nothing here logs
//! it, and no [`Decision::detail`] carries it or the hook's answer body.

// Nothing here may panic on a hook's answer or a client's names.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, OnError};
use crate::rtmp::{redact, redact_in, Role, StreamInfo};

/// Longest answer body read (only a 2xx JSON body is read at all).
const MAX_ANSWER: usize = 64 * 1024;
const MAX_ANSWER_TEXT: &str = "64 KiB";
/// Longest `Location` or `X-RTMP-Backend` value accepted.
const MAX_HEADER_VALUE: usize = 2048;
/// Longest new stream name accepted from a hook.
const MAX_NAME: usize = 1024;
/// Cached answers at most: a flood of distinct keys costs this many
/// entries (a digest and a decision each), not more.
const CACHE_CAP: u64 = 10_000;
/// Addresses kept from one resolution of a backend's name.
const MAX_RESOLVED: usize = 64;
const RTMP_PORT: u16 = 1935;
const FORM: &str = "application/x-www-form-urlencoded";
const BACKEND_HEADER: &str = "x-rtmp-backend";

/// nginx's `NGX_ESCAPE_ARGS` (`ngx_escape_uri`, the set nginx-rtmp escapes
/// form values with): space, `#`, `%`, `&`, `+`, `;`, `?`, controls, DEL
/// and every non-ASCII byte; the rest (`=`, `/`, `:` ...) stays as is.
const NGINX_ARGS: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b';')
    .add(b'?');

/// The fields the form carries for each call: an appended `?arg` of the
/// same name is dropped, so a client cannot override them (nginx-rtmp
/// appends them all, and a hook reading the last value would see the
/// client's `call` or `name`).
const PUBLISH_FIELDS: &[&str] = &[
    "app", "flashver", "swfurl", "tcurl", "pageurl", "addr", "clientid", "call", "name", "type",
];
const PLAY_FIELDS: &[&str] = &[
    "app", "flashver", "swfurl", "tcurl", "pageurl", "addr", "clientid", "call", "name", "start",
    "duration", "reset",
];

/// One publish or play to ask about.
pub struct Call<'a> {
    pub info: &'a StreamInfo,
    /// The client's address (`addr`).
    pub addr: IpAddr,
    /// The connection's number (`clientid`).
    pub client_id: u64,
}

/// The hook's say on a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// Reused from an earlier identical call (`auth.cache`).
    pub cached: bool,
    /// For logs and the client's error text; never the stream key nor the
    /// hook's answer body.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Directions),
    Deny,
}

/// Where an allowed stream goes, when the hook says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Directions {
    /// The backend the hook named, resolved (all addresses of a name).
    pub backends: Vec<SocketAddr>,
    /// The backend as the hook wrote it, for messages.
    pub backend_named: Option<String>,
    /// The stream's new name, as the hook wrote it (with its own `?query`,
    /// if any).
    pub rename: Option<String>,
}

impl fmt::Debug for Directions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A new name is as secret as the key it replaces.
        f.debug_struct("Directions")
            .field("backends", &self.backends)
            .field("backend_named", &self.backend_named)
            .field("rename", &self.rename.as_deref().map(redact))
            .finish()
    }
}

/// How the verdict came about: the hook's answer, or `on_error` after a
/// failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    FailedAllowed,
    FailedDenied,
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::FailedAllowed => "error_allowed",
            Self::FailedDenied => "error_denied",
        }
    }
}

/// The hooks, built once at start-up and shared by every connection.
pub struct Auth {
    publish: Option<Uri>,
    play: Option<Uri>,
    on_error: OnError,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    /// `None` when `auth.cache` is `0s`.
    cache: Option<mini_moka::sync::Cache<CacheKey, Decision>>,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let timeout = config.timeout.get();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        // No idle connections: a pooled connection's task lives on the
        // runtime that opened it, so a call from another proxy thread would
        // depend on that runtime; a hook call per publish can afford its
        // own connection (nginx-rtmp opens one per call too).
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let ttl = config.cache.get();
        Auth {
            publish: config.on_publish.as_ref().map(|u| u.0.clone()),
            play: config.on_play.as_ref().map(|u| u.0.clone()),
            on_error: config.on_error,
            timeout,
            client,
            cache: (!ttl.is_zero()).then(|| {
                mini_moka::sync::Cache::builder()
                    .max_capacity(CACHE_CAP)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    /// Whether a hook is configured for this role.
    pub fn asks(&self, role: &Role) -> bool {
        self.url(role).is_some()
    }

    fn url(&self, role: &Role) -> Option<&Uri> {
        match role {
            Role::Publish { .. } => self.publish.as_ref(),
            Role::Play => self.play.as_ref(),
        }
    }

    /// Calls the hook for this role (Allow with no directions when none is
    /// configured).
    pub async fn ask(&self, call: &Call<'_>) -> Decision {
        let role = &call.info.role;
        let Some(url) = self.url(role) else {
            return Decision {
                verdict: Verdict::Allow(Directions::default()),
                outcome: Outcome::Allowed,
                cached: false,
                detail: format!("no auth hook is configured for {role}"),
            };
        };
        let form = form(call.info, call.addr);
        let key = form.key(role);
        if let Some(cache) = &self.cache {
            if let Some(mut hit) = cache.get(&key) {
                hit.cached = true;
                return hit;
            }
        }
        let decision = self
            .call_hook(url, form.body(call.client_id), &call.info.stream_key)
            .await;
        match decision.outcome {
            Outcome::Allowed | Outcome::Denied => {
                log::debug!("auth hook {url} ({role}): {}", decision.detail);
                // Only answers are reused: a failure asks again next time.
                if let Some(cache) = &self.cache {
                    cache.insert(key, decision.clone());
                }
            }
            Outcome::FailedAllowed | Outcome::FailedDenied => {
                let then = if decision.outcome == Outcome::FailedAllowed {
                    "allowed (on_error: allow)"
                } else {
                    "denied (on_error: deny)"
                };
                log::warn!("auth hook {url} ({role}): {}; {then}", decision.detail);
            }
        }
        decision
    }

    /// One exchange with the hook, backend resolution included, within the
    /// timeout.
    async fn call_hook(&self, url: &Uri, body: String, key: &str) -> Decision {
        let work = async {
            let (status, answer) = self.exchange(url, body).await?;
            match answer {
                Answer::Deny => Ok((Verdict::Deny, answered(status))),
                Answer::Failed(why) => Err(why),
                Answer::Allow { backend, rename } => {
                    let mut notes = Vec::new();
                    let mut directions = Directions {
                        rename,
                        ..Directions::default()
                    };
                    if let Some(backend) = backend {
                        // The hook wrote it: it could be anything, the key
                        // included.
                        let shown = redact_in(&backend.written, key);
                        directions.backends = resolve(&backend).await.map_err(|why| {
                            format!("the backend the auth hook named ({shown}) {why}")
                        })?;
                        notes.push(format!("backend {shown}"));
                        directions.backend_named = Some(backend.written);
                    }
                    if directions.rename.is_some() {
                        notes.push("stream renamed".to_owned());
                    }
                    let mut detail = answered(status);
                    if !notes.is_empty() {
                        detail = format!("{detail} ({})", notes.join(", "));
                    }
                    Ok((Verdict::Allow(directions), detail))
                }
            }
        };
        let result = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the auth hook timed out after {}",
                    humantime::format_duration(self.timeout)
                ))
            });
        match result {
            Ok((verdict, detail)) => Decision {
                outcome: match verdict {
                    Verdict::Allow(_) => Outcome::Allowed,
                    Verdict::Deny => Outcome::Denied,
                },
                verdict,
                cached: false,
                detail,
            },
            Err(detail) => match self.on_error {
                OnError::Allow => Decision {
                    verdict: Verdict::Allow(Directions::default()),
                    outcome: Outcome::FailedAllowed,
                    cached: false,
                    detail,
                },
                OnError::Deny => Decision {
                    verdict: Verdict::Deny,
                    outcome: Outcome::FailedDenied,
                    cached: false,
                    detail,
                },
            },
        }
    }

    /// POSTs the form and reads the answer; `Err` is a failure's detail.
    async fn exchange(&self, url: &Uri, body: String) -> Result<(StatusCode, Answer), String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, FORM)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("the auth hook request could not be built ({e})"))?;
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                format!("the auth hook is unreachable ({})", cause(&e))
            } else {
                format!("the auth hook's answer could not be read ({})", cause(&e))
            }
        })?;
        let (parts, body) = response.into_parts();
        // Only a 2xx JSON body means anything; others are not read.
        let bytes = if parts.status.is_success() && is_json(&parts.headers) {
            match Limited::new(body, MAX_ANSWER).collect().await {
                Ok(collected) => Some(collected.to_bytes()),
                Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    return Err(format!(
                        "the auth hook's answer is larger than {MAX_ANSWER_TEXT}"
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "the auth hook's answer could not be read ({})",
                        cause(&*e)
                    ))
                }
            }
        } else {
            None
        };
        Ok((
            parts.status,
            interpret(parts.status, &parts.headers, bytes.as_deref()),
        ))
    }
}

/// The innermost cause of `e`, as a lower-case phrase: "connection
/// refused", not "Connection refused (os error 111)".
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    let text = text
        .split_once(" (os error ")
        .map_or(text.as_str(), |(head, _)| head);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The request body, split around `clientid`'s value: the rest is what the
/// cache key is made of, since the connection's number would make every
/// call distinct.
#[derive(Debug)]
struct Form {
    head: String,
    tail: String,
}

impl Form {
    fn body(&self, client_id: u64) -> String {
        format!("{}{client_id}{}", self.head, self.tail)
    }

    /// A digest rather than the body itself: entries stay small whatever
    /// the names' sizes, and the cache holds no stream key.
    fn key(&self, role: &Role) -> CacheKey {
        let mut hash = Sha256::new();
        for part in [role.label(), self.head.as_str(), self.tail.as_str()] {
            // Lengths first, so no two splits of the same bytes collide.
            hash.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }
}

/// nginx-rtmp's form (`ngx_rtmp_netcall_http_format_session` then
/// `ngx_rtmp_notify_publish_create` / `_play_create`):
/// `app, flashver, swfurl, tcurl, pageurl, addr, clientid, call, name`,
/// then `type` (publish) or `start, duration, reset` (play), then the
/// `?args`, appended unescaped as nginx appends them.
fn form(info: &StreamInfo, addr: IpAddr) -> Form {
    let (app, app_args) = nginx_app(&info.app);
    let (name, name_args) = info
        .stream_key
        .split_once('?')
        .unwrap_or((info.stream_key.as_str(), ""));
    // nginx-rtmp passes the connect's args only inside `tcurl`; they are
    // appended here too, so a token in the server URL reaches the hook as
    // a field. The app's args are what ffmpeg and OBS send; the tcUrl's
    // query covers a client that puts it there only.
    let connect_args = if app_args.is_empty() {
        info.tc_url
            .as_deref()
            .and_then(|url| url.split_once('?'))
            .map_or("", |(_, query)| query)
    } else {
        app_args
    };
    let esc = |s: &str| utf8_percent_encode(s, NGINX_ARGS).to_string();
    let opt = |s: &Option<String>| esc(s.as_deref().unwrap_or_default());
    let head = format!(
        "app={}&flashver={}&swfurl={}&tcurl={}&pageurl={}&addr={}&clientid=",
        esc(app),
        opt(&info.client.flash_ver),
        opt(&info.client.swf_url),
        opt(&info.tc_url),
        opt(&info.client.page_url),
        esc(&addr.to_canonical().to_string()),
    );
    let (mut tail, fields) = match &info.role {
        Role::Publish { kind } => (
            format!("&call=publish&name={}&type={}", esc(name), esc(kind)),
            PUBLISH_FIELDS,
        ),
        // A plain play(name) as nginx-rtmp reports it: its optional start,
        // duration and reset are zero when absent (and the front keeps no
        // others).
        Role::Play => (
            format!("&call=play&name={}&start=0&duration=0&reset=0", esc(name)),
            PLAY_FIELDS,
        ),
    };
    let name_keys: HashSet<String> = pairs(name_args).map(arg_key).collect();
    // The stream name's args come last: a hook reading the last value of a
    // repeated key sees what nginx-rtmp would have sent; a connect arg the
    // name repeats is dropped, so no hook sees two values.
    let connect = pairs(connect_args).filter(|p| !name_keys.contains(&arg_key(p)));
    for pair in connect.chain(pairs(name_args)) {
        if !fields.contains(&arg_key(pair).as_str()) {
            tail.push('&');
            tail.push_str(pair);
        }
    }
    Form { head, tail }
}

/// The app as nginx-rtmp's `connect` leaves it: without a trailing
/// `/_definst_` or `/`, and split from its `?args`.
fn nginx_app(app: &str) -> (&str, &str) {
    let app = app
        .strip_suffix("/_definst_")
        .filter(|a| !a.is_empty())
        .or_else(|| app.strip_suffix('/'))
        .unwrap_or(app);
    app.split_once('?').unwrap_or((app, ""))
}

fn pairs(args: &str) -> impl Iterator<Item = &str> {
    args.split('&').filter(|p| !p.is_empty())
}

/// An arg's key as a hook decodes it (`c%61ll` is `call`).
fn arg_key(pair: &str) -> String {
    let raw = pair.split_once('=').map_or(pair, |(k, _)| k);
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// What a hook answered, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Allow {
        backend: Option<Backend>,
        rename: Option<String>,
    },
    Deny,
    /// Not an answer (a 5xx, or one not understood): `on_error` decides.
    /// The detail never quotes the hook.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    /// As the hook wrote it.
    written: String,
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

fn answered(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("the auth hook answered {} {reason}", status.as_u16()),
        None => format!("the auth hook answered {}", status.as_u16()),
    }
}

/// Reads a hook's answer; `body` is the 2xx JSON body when there is one.
fn interpret(status: StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> Answer {
    let failed = |what: &str| Answer::Failed(format!("{} {what}", answered(status)));
    match status.as_u16() {
        200..=299 => {
            let mut backend = None;
            if let Some(value) = headers.get(BACKEND_HEADER) {
                match header_text(value).and_then(parse_backend) {
                    Some(b) => backend = Some(b),
                    None => return failed("with an unusable X-RTMP-Backend header"),
                }
            }
            let mut rename = None;
            let body = body
                .filter(|_| is_json(headers))
                .filter(|b| !b.trim_ascii().is_empty());
            if let Some(body) = body {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
                    return failed("with a JSON body that is not JSON");
                };
                // Any other JSON (`true`, `"OK"`) carries no directions.
                if let serde_json::Value::Object(object) = value {
                    if backend.is_none() {
                        match json_text(object.get("backend")) {
                            Ok(None) => {}
                            Ok(Some(text)) => match parse_backend(text) {
                                Some(b) => backend = Some(b),
                                None => return failed("with an unusable \"backend\""),
                            },
                            Err(()) => return failed("with an unusable \"backend\""),
                        }
                    }
                    match json_text(object.get("name")) {
                        Ok(None) => {}
                        Ok(Some(text)) => match stream_name(text) {
                            Some(name) => rename = Some(name),
                            None => return failed("with an unusable \"name\""),
                        },
                        Err(()) => return failed("with an unusable \"name\""),
                    }
                }
            }
            Answer::Allow { backend, rename }
        }
        300..=399 => {
            let Some(location) = headers.get(header::LOCATION) else {
                return failed("without a Location");
            };
            let unusable =
                "with a Location that is neither rtmp://host[:port]/app/name nor a stream name";
            let Some(location) = header_text(location) else {
                return failed(unusable);
            };
            let is_rtmp = location
                .get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rtmp://"));
            if is_rtmp {
                match rtmp_location(location) {
                    Some((backend, name)) => Answer::Allow {
                        backend: Some(backend),
                        rename: Some(name),
                    },
                    None => failed(unusable),
                }
            } else if location.contains("://") {
                // A web redirect (a login page, say) is no stream name.
                failed(unusable)
            } else {
                match stream_name(location) {
                    Some(name) => Answer::Allow {
                        backend: None,
                        rename: Some(name),
                    },
                    None => failed(unusable),
                }
            }
        }
        400..=499 => Answer::Deny,
        500..=599 => Answer::Failed(answered(status)),
        _ => failed("(not a 2xx, 3xx, 4xx or 5xx)"),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON member that must be a string when present; `Err` when it is not.
fn json_text(value: Option<&serde_json::Value>) -> Result<Option<&str>, ()> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// A header value small enough, in UTF-8 and without control characters.
fn header_text(value: &HeaderValue) -> Option<&str> {
    if value.len() > MAX_HEADER_VALUE {
        return None;
    }
    let text = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

/// A new stream name from a hook: not empty, bounded, no control
/// characters (it is written into the RTMP `publish` or `play`).
fn stream_name(text: &str) -> Option<String> {
    (!text.is_empty() && text.len() <= MAX_NAME && !text.chars().any(char::is_control))
        .then(|| text.to_owned())
}

/// `rtmp://host[:port]/app[/...]/name[?query]`: the backend, and the last
/// path segment (with the query) as the new name. The app is the client's
/// own; the proxy does not change it.
fn rtmp_location(location: &str) -> Option<(Backend, String)> {
    let rest = location.get(7..)?;
    let (authority, path) = rest.split_once('/')?;
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let (app, _) = path.split_once('/')?;
    let name = path.rsplit('/').next()?;
    if app.is_empty() || name.is_empty() {
        return None;
    }
    let backend = parse_backend(authority)?;
    let name = match query {
        Some(query) => format!("{name}?{query}"),
        None => name.to_owned(),
    };
    Some((backend, stream_name(&name)?))
}

/// `IP:port`, `[IPv6]:port`, `host:port`, or any of them without the port
/// (1935).
fn parse_backend(text: &str) -> Option<Backend> {
    let backend = |host, port| {
        Some(Backend {
            written: text.to_owned(),
            host,
            port,
        })
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return None;
        }
        return backend(Host::Ip(addr.ip()), addr.port());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return backend(Host::Ip(ip), RTMP_PORT);
    }
    if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        return backend(Host::Ip(IpAddr::V6(ip)), RTMP_PORT);
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => (text, RTMP_PORT),
    };
    if !is_hostname(host) {
        return None;
    }
    backend(Host::Name(host.to_ascii_lowercase()), port)
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63, at most
/// 253 in all: what a resolver is asked about.
fn is_hostname(host: &str) -> bool {
    (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Every address of the backend; `Err` says why there is none.
async fn resolve(backend: &Backend) -> Result<Vec<SocketAddr>, String> {
    let name = match &backend.host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, backend.port)]),
        Host::Name(name) => name,
    };
    let found = tokio::net::lookup_host((name.as_str(), backend.port))
        .await
        .map_err(|e| format!("does not resolve ({})", cause(&e)))?;
    let mut addrs = Vec::new();
    for addr in found {
        if addrs.len() >= MAX_RESOLVED {
            break;
        }
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err("resolves to no address".to_owned());
    }
    Ok(addrs)
}

type CacheKey = [u8; 32];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::ClientFields;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn info(app: &str, tc_url: Option<&str>, key: &str, role: Role) -> StreamInfo {
        StreamInfo {
            app: app.into(),
            tc_url: tc_url.map(Into::into),
            stream_key: key.into(),
            role,
            client: ClientFields::default(),
        }
    }

    fn publish() -> Role {
        Role::Publish {
            kind: "live".into(),
        }
    }

    #[test]
    fn publish_form_matches_nginx_rtmp() {
        let mut i = info(
            "live",
            Some("rtmp://example.com/live?sig=abc"),
            "key123?token=abc&call=play&c%61ll=x&sig=name",
            publish(),
        );
        i.client.flash_ver = Some("FMLE/3.0 (compatible; FMSc/1.0)".into());
        i.client.swf_url = Some("http://s/p.swf".into());
        let body = form(&i, "203.0.113.7".parse().unwrap()).body(42);
        assert_eq!(
            body,
            "app=live&flashver=FMLE/3.0%20(compatible%3B%20FMSc/1.0)&swfurl=http://s/p.swf\
             &tcurl=rtmp://example.com/live%3Fsig=abc&pageurl=&addr=203.0.113.7&clientid=42\
             &call=publish&name=key123&type=live&token=abc&sig=name"
        );
        // The app's args, with the app as nginx-rtmp trims it.
        let i = info("live/?a=1&b=2", None, "k?b=3", publish());
        assert_eq!(
            form(&i, "::1".parse().unwrap()).body(1),
            "app=live/&flashver=&swfurl=&tcurl=&pageurl=&addr=::1&clientid=1\
             &call=publish&name=k&type=live&a=1&b=3"
        );
        assert_eq!(nginx_app("live/_definst_"), ("live", ""));
        assert_eq!(nginx_app("live?t=1/"), ("live", "t=1"));
        assert_eq!(nginx_app("/_definst_"), ("/_definst_", ""));
        // Non-ASCII and the escaped set.
        let i = info("a b", None, "ké#;+%", publish());
        assert!(form(&i, "10.0.0.1".parse().unwrap())
            .body(0)
            .contains("&name=k%C3%A9%23%3B%2B%25&"));
    }

    #[test]
    fn play_form_matches_nginx_rtmp() {
        let mut i = info(
            "live?auth=1",
            Some("rtmp://h:1935/live?auth=1"),
            "cam1?t=2&start=5",
            Role::Play,
        );
        i.client.flash_ver = Some("LNX 9,0,124,2".into());
        i.client.page_url = Some("http://example.com/p?a=b&c=d".into());
        let addr: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            form(&i, addr).body(7),
            "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://h:1935/live%3Fauth=1\
             &pageurl=http://example.com/p%3Fa=b%26c=d&addr=10.0.0.1&clientid=7\
             &call=play&name=cam1&start=0&duration=0&reset=0&auth=1&t=2"
        );
    }

    #[test]
    fn the_cache_key_is_the_request_but_the_client_id() {
        let i = info("live", None, "k", publish());
        let a = form(&i, "10.0.0.1".parse().unwrap());
        let b = form(&i, "10.0.0.1".parse().unwrap());
        assert_ne!(a.body(1), b.body(2));
        assert_eq!(a.key(&i.role), b.key(&i.role));
        let other_ip = form(&i, "10.0.0.2".parse().unwrap());
        assert_ne!(a.key(&i.role), other_ip.key(&i.role));
        let play = info("live", None, "k", Role::Play);
        assert_ne!(
            a.key(&i.role),
            form(&play, "10.0.0.1".parse().unwrap()).key(&play.role)
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(text: &str, port: u16) -> Option<Backend> {
        Some(Backend {
            written: text.into(),
            host: Host::Ip(
                text.parse()
                    .unwrap_or_else(|_| text.parse::<SocketAddr>().map(|a| a.ip()).unwrap()),
            ),
            port,
        })
    }

    fn failed(answer: Answer, want: &str) {
        match answer {
            Answer::Failed(d) => assert!(d.contains(want), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_2xx_plain_header_and_json() {
        let ok = StatusCode::OK;
        let plain = Answer::Allow {
            backend: None,
            rename: None,
        };
        assert_eq!(interpret(ok, &HeaderMap::new(), None), plain);
        assert_eq!(
            interpret(StatusCode::NO_CONTENT, &HeaderMap::new(), None),
            plain
        );
        assert_eq!(
            interpret(ok, &headers(&[("X-RTMP-Backend", "10.0.0.5:1936")]), None),
            Answer::Allow {
                backend: ip("10.0.0.5:1936", 1936),
                rename: None
            }
        );
        assert_eq!(
            interpret(
                ok,
                &headers(&[("x-rtmp-backend", "Media-1.internal")]),
                None
            ),
            Answer::Allow {
                backend: Some(Backend {
                    written: "Media-1.internal".into(),
                    host: Host::Name("media-1.internal".into()),
                    port: 1935
                }),
                rename: None
            }
        );
        for bad in ["10.0.0.5:0", "host:port", "-bad", "a..b", "[::1", "x:99999"] {
            failed(
                interpret(ok, &headers(&[("X-RTMP-Backend", bad)]), None),
                "the auth hook answered 200 OK with an unusable X-RTMP-Backend header",
            );
        }
        let json = headers(&[("Content-Type", "application/json; charset=utf-8")]);
        assert_eq!(
            interpret(
                ok,
                &json,
                Some(br#"{"backend": "10.0.0.5", "name": "other?x=1"}"#)
            ),
            Answer::Allow {
                backend: ip("10.0.0.5", 1935),
                rename: Some("other?x=1".into())
            }
        );
        // The header wins over the body's backend; the body still renames.
        let both = headers(&[
            ("Content-Type", "application/json"),
            ("X-RTMP-Backend", "[::1]:2000"),
        ]);
        assert_eq!(
            interpret(
                ok,
                &both,
                Some(br#"{"backend": "10.9.9.9:1", "name": "n"}"#)
            ),
            Answer::Allow {
                backend: ip("[::1]:2000", 2000),
                rename: Some("n".into())
            }
        );
        for body in [&b"true"[..], b"\"OK\"", b"{}", b"  ", b"{\"ok\":1}"] {
            assert_eq!(interpret(ok, &json, Some(body)), plain);
        }
        failed(interpret(ok, &json, Some(b"{nope")), "not JSON");
        failed(
            interpret(ok, &json, Some(br#"{"backend": 5}"#)),
            "\"backend\"",
        );
        failed(interpret(ok, &json, Some(br#"{"name": ""}"#)), "\"name\"");
        // A body not declared JSON is not looked at.
        let text = headers(&[("Content-Type", "text/plain")]);
        assert_eq!(interpret(ok, &text, Some(b"{nope")), plain);
    }

    #[test]
    fn answers_3xx_location() {
        let found = StatusCode::FOUND;
        assert_eq!(
            interpret(
                found,
                &headers(&[("Location", "rtmp://10.0.0.9:1940/live/newkey?x=1")]),
                None
            ),
            Answer::Allow {
                backend: ip("10.0.0.9:1940", 1940),
                rename: Some("newkey?x=1".into())
            }
        );
        assert_eq!(
            interpret(
                StatusCode::MOVED_PERMANENTLY,
                &headers(&[("Location", "RTMP://media.internal/live/inst/k")]),
                None
            ),
            Answer::Allow {
                backend: Some(Backend {
                    written: "media.internal".into(),
                    host: Host::Name("media.internal".into()),
                    port: 1935
                }),
                rename: Some("k".into())
            }
        );
        assert_eq!(
            interpret(found, &headers(&[("Location", "otherkey")]), None),
            Answer::Allow {
                backend: None,
                rename: Some("otherkey".into())
            }
        );
        failed(
            interpret(found, &HeaderMap::new(), None),
            "the auth hook answered 302 Found without a Location",
        );
        for bad in [
            "rtmp://h/onlyapp",
            "rtmp://h/live/",
            "rtmp://h",
            "rtmp://h:0/a/b",
            "http://login.example.com/",
        ] {
            failed(
                interpret(found, &headers(&[("Location", bad)]), None),
                "with a Location that is neither",
            );
        }
    }

    #[test]
    fn answers_4xx_deny_and_5xx_fail() {
        for code in [400, 401, 403, 404, 499] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(interpret(status, &HeaderMap::new(), None), Answer::Deny);
        }
        assert_eq!(
            interpret(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), None),
            Answer::Failed("the auth hook answered 503 Service Unavailable".into())
        );
        failed(
            interpret(StatusCode::from_u16(600).unwrap(), &HeaderMap::new(), None),
            "the auth hook answered 600 (not a 2xx",
        );
        assert_eq!(
            answered(StatusCode::FORBIDDEN),
            "the auth hook answered 403 Forbidden"
        );
    }

    fn config(yaml: &str) -> AuthConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// Answers the first connection with `answer` once its request is in,
    /// and returns the request.
    async fn serve_once(answer: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            let _ = s.shutdown().await;
            String::from_utf8(got).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn end_to_end_allow_with_json_routing_then_cached() {
        let body = r#"{"backend":"127.0.0.1:1936","name":"renamed"}"#;
        let answer: &'static str = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .leak();
        let (addr, server) = serve_once(answer).await;
        let auth = Auth::new(&config(&format!(
            "on_publish: http://{addr}/auth?site=1\ntimeout: 10s\ncache: 1m\n"
        )));
        let i = info("live", Some("rtmp://x/live"), "secret?t=1", publish());
        assert!(auth.asks(&i.role) && !auth.asks(&Role::Play));
        let call = Call {
            info: &i,
            addr: "192.0.2.1".parse().unwrap(),
            client_id: 9,
        };
        let d = auth.ask(&call).await;
        let want = Verdict::Allow(Directions {
            backends: vec!["127.0.0.1:1936".parse().unwrap()],
            backend_named: Some("127.0.0.1:1936".into()),
            rename: Some("renamed".into()),
        });
        assert_eq!(
            (&d.verdict, d.outcome, d.cached),
            (&want, Outcome::Allowed, false)
        );
        assert_eq!(
            d.detail,
            "the auth hook answered 200 OK (backend 127.0.0.1:1936, stream renamed)"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /auth?site=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("\r\ncontent-type: application/x-www-form-urlencoded\r\n"),
            "{request}"
        );
        assert!(request.ends_with(
            "\r\n\r\napp=live&flashver=&swfurl=&tcurl=rtmp://x/live&pageurl=&addr=192.0.2.1\
             &clientid=9&call=publish&name=secret&type=live&t=1"
        ));
        // The server is gone: only the cache can answer, for another client.
        let again = auth
            .ask(&Call {
                client_id: 10,
                ..call
            })
            .await;
        assert_eq!((&again.verdict, again.cached), (&want, true));
    }

    #[tokio::test]
    async fn end_to_end_silent_hook_follows_on_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts, reads, never answers.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let auth = Auth::new(&config(&format!(
            "on_play: http://{addr}/\ntimeout: 100ms\non_error: allow\ncache: 1m\n"
        )));
        let i = info("live", None, "secret", Role::Play);
        let call = Call {
            info: &i,
            addr: "192.0.2.1".parse().unwrap(),
            client_id: 1,
        };
        let d = auth.ask(&call).await;
        assert_eq!(
            d,
            Decision {
                verdict: Verdict::Allow(Directions::default()),
                outcome: Outcome::FailedAllowed,
                cached: false,
                detail: "the auth hook timed out after 100ms".into(),
            }
        );
        assert_eq!(d.outcome.label(), "error_allowed");
        // Failures are not cached.
        use mini_moka::sync::ConcurrentCacheExt;
        let cache = auth.cache.as_ref().unwrap();
        cache.sync();
        assert_eq!(cache.entry_count(), 0);
        server.abort();
    }

    #[tokio::test]
    async fn end_to_end_refused_connection_follows_on_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let auth = Auth::new(&config(&format!("on_publish: http://{addr}/\n")));
        let i = info("live", None, "secret", publish());
        let d = auth
            .ask(&Call {
                info: &i,
                addr: "192.0.2.1".parse().unwrap(),
                client_id: 1,
            })
            .await;
        assert_eq!(
            (&d.verdict, d.outcome),
            (&Verdict::Deny, Outcome::FailedDenied)
        );
        assert_eq!(
            d.detail,
            "the auth hook is unreachable (connection refused)"
        );
        assert!(!d.detail.contains("secret"));
    }

    #[tokio::test]
    async fn no_hook_allows() {
        let auth = Auth::new(&AuthConfig::default());
        let i = info("live", None, "k", publish());
        assert!(!auth.asks(&i.role));
        let d = auth
            .ask(&Call {
                info: &i,
                addr: "192.0.2.1".parse().unwrap(),
                client_id: 1,
            })
            .await;
        assert_eq!(
            (d.verdict, d.outcome, d.cached),
            (
                Verdict::Allow(Directions::default()),
                Outcome::Allowed,
                false
            )
        );
    }
}
