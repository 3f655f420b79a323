//! The stream directory: which RTMP stream runs on which backend, for
//! `GET /streams` and `GET /streams/{app}/{key}` on the admin listener.
//!
//! Every proxied connection in `protocol: rtmp` mode has an entry from the
//! moment it reaches a backend until it ends. The passive observer
//! (`proxy::rtmp`) fills in app, key and role once it has seen the client's
//! `publish` or `play`, or marks the entry unknown when it cannot tell.
//!
//! Stream keys are secrets: listings show them only through
//! [`rtmp::redact`], and a lookup needs the caller to know the full key
//! already. Byte counts are read live from the connection's [`Flow`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use crate::balancer::redis::SharedSlots;
use crate::proxy::duplex::Flow;
use crate::rtmp::{self, Role, StreamInfo};

/// All live entries of this process; with the Redis slot store, its
/// publishers are also listed fleet-wide, so any proxy can answer
/// `/streams/{app}/{key}`.
#[derive(Default)]
pub struct Directory {
    inner: Mutex<Inner>,
    fleet: Option<Arc<SharedSlots>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By id, which is also the order of arrival.
    entries: BTreeMap<u64, Entry>,
}

struct Entry {
    client: String,
    backend: SocketAddr,
    started: SystemTime,
    flow: Arc<Flow>,
    state: State,
    /// Its id in the fleet-wide directory, once listed there.
    listed: Option<String>,
}

enum State {
    /// No `publish` or `play` seen yet.
    Identifying,
    Identified(StreamInfo),
    /// The observer gave up (reason as in [`rtmp::Progress::Unknown`]); the
    /// connection is proxied as plain TCP.
    Unknown(&'static str),
}

/// One element of `GET /streams`, and the answer of a lookup.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StreamView {
    /// The RTMP application, with any `?query` (often a token) cut.
    pub app: Option<String>,
    /// The stream key, redacted.
    pub key: Option<String>,
    /// `publish` or `play`.
    pub role: Option<String>,
    /// `identifying`, `identified` or `unknown`.
    pub status: &'static str,
    /// Why the stream could not be identified (`unknown` only).
    pub reason: Option<&'static str>,
    pub backend: SocketAddr,
    pub client: String,
    /// When the connection reached its backend (RFC 3339).
    pub started_at: String,
    /// Bytes from the client so far (towards the backend).
    pub bytes_up: u64,
    /// Bytes from the backend so far.
    pub bytes_down: u64,
}

impl Directory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A directory whose publishers are also listed in Redis.
    pub fn with_fleet(fleet: Option<Arc<SharedSlots>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            fleet,
        })
    }

    /// The stream as listed by any proxy of the fleet (Redis slot store),
    /// when this process does not have it.
    pub async fn find_in_fleet(&self, app: &str, key: &str) -> Option<serde_json::Value> {
        let fleet = self.fleet.as_ref()?;
        let entry = fleet.find_stream(&fleet_id(app, key)).await?;
        serde_json::from_str(&entry).ok()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock exits the process (see main).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection that has just reached `backend`; it leaves the
    /// directory when the returned [`Registration`] is dropped.
    pub fn add(
        self: &Arc<Self>,
        client: &str,
        backend: SocketAddr,
        flow: Arc<Flow>,
    ) -> Registration {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        inner.entries.insert(
            id,
            Entry {
                client: client.to_owned(),
                backend,
                started: SystemTime::now(),
                flow,
                state: State::Identifying,
                listed: None,
            },
        );
        Registration {
            handle: Handle {
                dir: self.clone(),
                id,
            },
        }
    }

    /// Every live connection, oldest first.
    pub fn list(&self) -> Vec<StreamView> {
        self.lock().entries.values().map(Entry::view).collect()
    }

    /// The stream with exactly this key in `app` (compared without any
    /// `?query` of the app). When several connections match (a publisher
    /// and players), the publisher wins, then the oldest.
    pub fn find(&self, app: &str, key: &str) -> Option<StreamView> {
        let inner = self.lock();
        let mut matching = inner.entries.values().filter(|e| match &e.state {
            State::Identified(i) => i.stream_key == key && app_name(&i.app) == app,
            _ => false,
        });
        let first = matching.clone().next()?;
        let publisher = matching.find(|e| {
            matches!(
                &e.state,
                State::Identified(StreamInfo {
                    role: Role::Publish { .. },
                    ..
                })
            )
        });
        Some(publisher.unwrap_or(first).view())
    }

    fn update(&self, id: u64, state: State) {
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(&id) else {
            return;
        };
        e.state = state;
        if let (Some(fleet), State::Identified(info)) = (&self.fleet, &e.state) {
            if matches!(info.role, Role::Publish { .. }) {
                let fid = fleet_id(app_name(&info.app), &info.stream_key);
                if let Ok(entry) = serde_json::to_string(&e.view()) {
                    fleet.publish_stream(fid.clone(), entry);
                    e.listed = Some(fid);
                }
            }
        }
    }

    fn remove(&self, id: u64) {
        let removed = self.lock().entries.remove(&id);
        if let (Some(fleet), Some(fid)) = (&self.fleet, removed.and_then(|e| e.listed)) {
            fleet.unpublish_stream(fid);
        }
    }
}

/// The app without its `?query`.
fn app_name(app: &str) -> &str {
    app.split_once('?').map_or(app, |(name, _)| name)
}

impl Entry {
    fn view(&self) -> StreamView {
        let (app, key, role, status, reason) = match &self.state {
            State::Identifying => (None, None, None, "identifying", None),
            State::Identified(i) => (
                Some(display_app(&i.app)),
                Some(rtmp::redact(&i.stream_key)),
                Some(i.role.to_string()),
                "identified",
                None,
            ),
            State::Unknown(r) => (None, None, None, "unknown", Some(*r)),
        };
        StreamView {
            app,
            key,
            role,
            status,
            reason,
            backend: self.backend,
            client: self.client.clone(),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            bytes_up: self.flow.from_client.load(Ordering::Relaxed),
            bytes_down: self.flow.from_backend.load(Ordering::Relaxed),
        }
    }
}

/// The app as shown: a `?query` may carry a token, so only its presence is.
pub(crate) fn display_app(app: &str) -> String {
    match app.split_once('?') {
        Some((name, _)) => format!("{name}?…"),
        None => app.to_owned(),
    }
}

/// Updates one entry; held by the observer's tap while the connection runs.
#[derive(Clone)]
pub struct Handle {
    dir: Arc<Directory>,
    id: u64,
}

impl Handle {
    pub fn identified(&self, info: StreamInfo) {
        self.dir.update(self.id, State::Identified(info));
    }

    pub fn unknown(&self, reason: &'static str) {
        self.dir.update(self.id, State::Unknown(reason));
    }
}

/// An entry's lifetime: dropping it removes the entry.
pub struct Registration {
    handle: Handle,
}

impl Registration {
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The entry as `/streams` shows it.
    pub fn view(&self) -> Option<StreamView> {
        let inner = self.handle.dir.lock();
        inner.entries.get(&self.handle.id).map(Entry::view)
    }

    /// What the connection's log line says about the stream: role, app
    /// and redacted key, or why it is unknown.
    pub fn describe(&self) -> String {
        let inner = self.handle.dir.lock();
        match inner.entries.get(&self.handle.id).map(|e| &e.state) {
            Some(State::Identified(i)) => format!(
                "{} {}/{}",
                i.role,
                display_app(&i.app),
                rtmp::redact(&i.stream_key)
            ),
            Some(State::Unknown(r)) => format!("unknown stream ({r})"),
            Some(State::Identifying) | None => "stream not identified".to_owned(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.dir.remove(self.handle.id);
    }
}

/// A stream's id in the fleet-wide directory: a hash of app and key, so the
/// secret key itself is never written to Redis.
fn fleet_id(app: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(app.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::duplex::Side;
    use prometheus::IntCounter;

    fn flow() -> Arc<Flow> {
        let c = || IntCounter::new("t", "t").unwrap();
        Arc::new(Flow::new([c(), c()]))
    }

    fn info(app: &str, key: &str, role: Role) -> StreamInfo {
        StreamInfo {
            app: app.into(),
            tc_url: None,
            stream_key: key.into(),
            role,
        }
    }

    fn publish() -> Role {
        Role::Publish {
            kind: "live".into(),
        }
    }

    #[test]
    fn entries_live_as_long_as_their_registration() {
        let dir = Directory::new();
        let f = flow();
        let a = dir.add("1.2.3.4:5", "127.0.0.1:1935".parse().unwrap(), f.clone());
        f.count(Side::Client, 10);
        f.count(Side::Backend, 3);
        let list = dir.list();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].status, list[0].bytes_up, list[0].bytes_down),
            ("identifying", 10, 3)
        );
        assert_eq!(a.describe(), "stream not identified");
        a.handle().unknown("bad_amf0");
        assert_eq!(dir.list()[0].reason, Some("bad_amf0"));
        assert_eq!(a.describe(), "unknown stream (bad_amf0)");
        drop(a);
        assert!(dir.list().is_empty());
    }

    #[test]
    fn keys_are_redacted_and_lookups_exact() {
        let dir = Directory::new();
        let backend: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let p = dir.add("c1", backend, flow());
        p.handle()
            .identified(info("live?tok=s3cret", "secretkey123", publish()));
        let other: SocketAddr = "127.0.0.1:1936".parse().unwrap();
        let player = dir.add("c2", other, flow());
        player
            .handle()
            .identified(info("live", "secretkey123", Role::Play));

        let list = dir.list();
        let text = serde_json::to_string(&list).unwrap();
        assert!(
            !text.contains("secretkey123") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(list[0].key.as_deref(), Some("secr…"));
        assert_eq!(list[0].app.as_deref(), Some("live?…"));
        assert_eq!(list[0].role.as_deref(), Some("publish"));
        assert_eq!(p.describe(), "publish live?…/secr…");

        // The publisher wins over an older or newer player.
        assert_eq!(dir.find("live", "secretkey123").unwrap().backend, backend);
        assert!(dir.find("live", "secretkey12").is_none());
        assert!(dir.find("other", "secretkey123").is_none());
        drop(p);
        assert_eq!(dir.find("live", "secretkey123").unwrap().backend, other);
    }
}
