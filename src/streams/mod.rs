//! The stream directory: which RTMP stream runs on which backend, for
//! `GET /streams` and `GET /streams/{app}/{key}` on the admin listener.
//!
//! Every proxied connection in `protocol: rtmp` mode has an entry from the
//! moment it reaches a backend until it ends, with the app, key and role
//! the RTMP front read before it picked the backend. (`identifying` and
//! `unknown` entries come only from an older process of an upgrade.)
//!
//! Stream keys are secrets: listings show them only through
//! [`rtmp::redact`], and a lookup needs the caller to know the full key
//! already. Byte counts are read live from the connection ([`Traffic`]).
//!
//! During a binary upgrade the old process keeps its streams until they
//! end. It sends their records to the new process over the hand-off
//! channel ([`Directory::subscribe`]), which lists them as `draining`
//! ([`Directory::inherit`]) until the old process reports them gone. A
//! record carries the view, already redacted, and a hash of app and key for
//! lookups: the key itself never leaves the process that saw it.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub mod shared;

use shared::SharedStreams;

use crate::rtmp::{self, Role, StreamInfo};

/// A live connection's byte counts, read when it is listed.
pub trait Traffic: Send + Sync {
    /// Bytes from the client so far, and from the backend.
    fn bytes(&self) -> (u64, u64);
}

/// All live entries of this process, and the records of older processes
/// still draining; with the Redis slot store, its publishers are also
/// listed in the shared directory, so any proxy can answer `/streams/{app}/{key}`.
#[derive(Default)]
pub struct Directory {
    inner: Mutex<Inner>,
    shared: OnceLock<Arc<SharedStreams>>,
}

#[derive(Default)]
struct Inner {
    /// This process's part of record ids: pids differ between the
    /// processes of an upgrade, which are alive at the same time.
    origin: u32,
    next_id: u64,
    /// By id, which is also the order of arrival.
    entries: BTreeMap<u64, Entry>,
    /// Streams still live on an older process, by their record id.
    inherited: BTreeMap<String, Inherited>,
    /// The successor of an upgrade, told of every change while connected.
    subscriber: Option<Box<dyn Fn(Change) + Send>>,
}

struct Inherited {
    lookup: Option<String>,
    view: StreamView,
}

/// A stream as one process tells the next one about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Unique among the processes of an upgrade chain: `<pid>-<n>`.
    pub id: String,
    /// `shared_id` of app and key, once identified.
    pub lookup: Option<String>,
    pub view: StreamView,
}

/// What the successor of an upgrade is told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream appeared or changed (its counters move on).
    Upsert(Box<Record>),
    /// The stream with this record id ended.
    Remove(String),
}

struct Entry {
    client: String,
    backend: SocketAddr,
    started: SystemTime,
    flow: Arc<dyn Traffic>,
    state: State,
    /// Its id in the shared directory, once listed there.
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamView {
    /// The RTMP application, with any `?query` (often a token) cut.
    pub app: Option<String>,
    /// The stream key, redacted.
    pub key: Option<String>,
    /// `publish` or `play`.
    pub role: Option<String>,
    /// `identifying`, `identified` or `unknown`.
    pub status: String,
    /// Why the stream could not be identified (`unknown` only).
    pub reason: Option<String>,
    pub backend: SocketAddr,
    pub client: String,
    /// When the connection reached its backend (RFC 3339).
    pub started_at: String,
    /// Bytes from the client so far (towards the backend).
    pub bytes_up: u64,
    /// Bytes from the backend so far.
    pub bytes_down: u64,
    /// The process carrying it takes no new streams: an older process of
    /// an upgrade (counters as it last reported them, every 2 s), or this
    /// one while it drains.
    pub draining: bool,
}

impl Directory {
    pub fn new() -> Arc<Self> {
        Self::with_origin(std::process::id())
    }

    fn with_origin(origin: u32) -> Arc<Self> {
        let dir = Self::default();
        dir.lock().origin = origin;
        Arc::new(dir)
    }

    /// Lists this process's publishers in Redis too, from now on.
    pub fn set_shared(&self, shared: Arc<SharedStreams>) {
        let _ = self.shared.set(shared);
    }

    /// The stream as listed by any proxy (Redis slot store),
    /// when this process does not have it.
    pub async fn find_shared(&self, app: &str, key: &str) -> Option<serde_json::Value> {
        let shared = self.shared.get()?;
        let entry = shared.find(&shared_id(app, key)).await?;
        serde_json::from_str(&entry).ok()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Adds a connection that has just reached `backend`; it leaves the
    /// directory when the returned [`Registration`] is dropped.
    pub fn add(
        self: &Arc<Self>,
        client: &str,
        backend: SocketAddr,
        flow: Arc<dyn Traffic>,
    ) -> Registration {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let entry = Entry {
            client: client.to_owned(),
            backend,
            started: SystemTime::now(),
            flow,
            state: State::Identifying,
            listed: None,
        };
        inner.tell(|| Change::Upsert(Box::new(entry.record(inner.record_id(id)))));
        inner.entries.insert(id, entry);
        Registration {
            handle: Handle {
                dir: self.clone(),
                id,
            },
        }
    }

    /// Every live connection, older processes' first, each oldest first.
    /// `draining` marks this process's own streams too while it drains.
    pub fn list(&self, draining: bool) -> Vec<StreamView> {
        let inner = self.lock();
        let inherited = inner.inherited.values().map(|i| i.view.clone());
        let own = inner.entries.values().map(|e| StreamView {
            draining,
            ..e.view()
        });
        inherited.chain(own).collect()
    }

    /// The stream with exactly this key in `app` (compared without any
    /// `?query` of the app). When several connections match (a publisher
    /// and players), the publisher wins, then the oldest.
    pub fn find(&self, app: &str, key: &str) -> Option<StreamView> {
        let inner = self.lock();
        let lookup = shared_id(app, key);
        let inherited = inner
            .inherited
            .values()
            .filter(|i| i.lookup.as_deref() == Some(lookup.as_str()))
            .map(|i| i.view.clone());
        let own = inner
            .entries
            .values()
            .filter(|e| match &e.state {
                State::Identified(i) => i.stream_key == key && app_name(&i.app) == app,
                _ => false,
            })
            .map(Entry::view);
        let mut matching = inherited.chain(own).peekable();
        let first = matching.peek()?.clone();
        let publisher = matching.find(|v| v.role.as_deref() == Some("publish"));
        Some(publisher.unwrap_or(first))
    }

    fn update(&self, id: u64, state: State) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let record_id = inner.record_id(id);
        let Some(e) = inner.entries.get_mut(&id) else {
            return;
        };
        e.state = state;
        if let Some(subscriber) = &inner.subscriber {
            subscriber(Change::Upsert(Box::new(e.record(record_id))));
        }
        if let (Some(shared), State::Identified(info)) = (self.shared.get(), &e.state) {
            if matches!(info.role, Role::Publish { .. }) {
                let fid = shared_id(app_name(&info.app), &info.stream_key);
                if let Ok(entry) = serde_json::to_string(&e.view()) {
                    shared.publish(fid.clone(), entry);
                    e.listed = Some(fid);
                }
            }
        }
    }

    fn remove(&self, id: u64) {
        let removed = {
            let mut inner = self.lock();
            let removed = inner.entries.remove(&id);
            inner.tell(|| Change::Remove(inner.record_id(id)));
            removed
        };
        if let (Some(shared), Some(fid)) = (self.shared.get(), removed.and_then(|e| e.listed)) {
            shared.unpublish(fid);
        }
    }

    /// Tells `subscriber` of every stream, own and inherited, then of every
    /// change until [`unsubscribe`](Self::unsubscribe). Returns how many
    /// streams it was told of.
    pub fn subscribe(&self, subscriber: impl Fn(Change) + Send + 'static) -> usize {
        let mut inner = self.lock();
        let inherited = inner.inherited.iter().map(|(id, i)| Record {
            id: id.clone(),
            lookup: i.lookup.clone(),
            view: i.view.clone(),
        });
        let all: Vec<Record> = inherited.chain(inner.own_records()).collect();
        let told = all.len();
        for record in all {
            subscriber(Change::Upsert(Box::new(record)));
        }
        inner.subscriber = Some(Box::new(subscriber));
        told
    }

    pub fn unsubscribe(&self) {
        self.lock().subscriber = None;
    }

    /// Tells the subscriber the current counters of this process's streams.
    pub fn refresh(&self) {
        let inner = self.lock();
        if let Some(subscriber) = &inner.subscriber {
            inner
                .own_records()
                .for_each(|r| subscriber(Change::Upsert(Box::new(r))));
        }
    }

    /// Applies a change reported by the older process of an upgrade, and
    /// passes it on to this process's own successor, if any.
    pub fn inherit(&self, change: Change) {
        let mut inner = self.lock();
        match &change {
            Change::Upsert(r) => {
                let view = StreamView {
                    draining: true,
                    ..r.view.clone()
                };
                let lookup = r.lookup.clone();
                inner
                    .inherited
                    .insert(r.id.clone(), Inherited { lookup, view });
            }
            Change::Remove(id) => {
                inner.inherited.remove(id);
            }
        }
        inner.tell(|| change);
    }

    /// The older process is gone, and so are its streams. Returns how many
    /// it still listed.
    pub fn forget_inherited(&self) -> usize {
        let mut inner = self.lock();
        let gone = std::mem::take(&mut inner.inherited);
        for id in gone.keys() {
            inner.tell(|| Change::Remove(id.clone()));
        }
        gone.len()
    }
}

impl Inner {
    /// This process's streams as the next process is told of them.
    fn own_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.entries
            .iter()
            .map(|(&id, e)| e.record(self.record_id(id)))
    }

    /// An entry's id as the processes of an upgrade chain know it.
    fn record_id(&self, id: u64) -> String {
        format!("{}-{id}", self.origin)
    }

    fn tell(&self, change: impl FnOnce() -> Change) {
        if let Some(subscriber) = &self.subscriber {
            subscriber(change());
        }
    }
}

/// The app without its `?query`.
pub(crate) fn app_name(app: &str) -> &str {
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
            State::Unknown(r) => (None, None, None, "unknown", Some((*r).to_owned())),
        };
        let (bytes_up, bytes_down) = self.flow.bytes();
        StreamView {
            app,
            key,
            role,
            status: status.to_owned(),
            reason,
            backend: self.backend,
            client: self.client.clone(),
            started_at: humantime::format_rfc3339_seconds(self.started).to_string(),
            bytes_up,
            bytes_down,
            draining: false,
        }
    }

    fn record(&self, id: String) -> Record {
        let lookup = match &self.state {
            State::Identified(i) => Some(shared_id(app_name(&i.app), &i.stream_key)),
            _ => None,
        };
        Record {
            id,
            lookup,
            view: self.view(),
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

/// Updates one entry.
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

/// A stream's id in the shared directory: a hash of app and key, so the
/// secret key itself is never written to Redis.
pub(crate) fn shared_id(app: &str, key: &str) -> String {
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
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Counts(AtomicU64, AtomicU64);

    impl Traffic for Counts {
        fn bytes(&self) -> (u64, u64) {
            (
                self.0.load(Ordering::Relaxed),
                self.1.load(Ordering::Relaxed),
            )
        }
    }

    fn flow() -> Arc<Counts> {
        Arc::new(Counts::default())
    }

    fn info(app: &str, key: &str, role: Role) -> StreamInfo {
        StreamInfo {
            app: app.into(),
            tc_url: None,
            stream_key: key.into(),
            role,
            client: Default::default(),
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
        f.0.store(10, Ordering::Relaxed);
        f.1.store(3, Ordering::Relaxed);
        let list = dir.list(false);
        assert_eq!(list.len(), 1);
        assert_eq!(
            (
                list[0].status.as_str(),
                list[0].bytes_up,
                list[0].bytes_down
            ),
            ("identifying", 10, 3)
        );
        assert_eq!(a.describe(), "stream not identified");
        a.handle().unknown("bad_amf0");
        assert_eq!(dir.list(false)[0].reason.as_deref(), Some("bad_amf0"));
        assert_eq!(a.describe(), "unknown stream (bad_amf0)");
        assert!(dir.list(true)[0].draining);
        drop(a);
        assert!(dir.list(false).is_empty());
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

        let list = dir.list(false);
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

    /// The old process of an upgrade (`old`) tells the new one (`new`),
    /// which lists its streams as draining and passes them on.
    #[test]
    fn an_upgrade_chain_lists_the_old_streams_until_they_end() {
        let (old, new, newest) = (
            Directory::with_origin(1),
            Directory::with_origin(2),
            Directory::with_origin(3),
        );
        let backend: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let early = old.add("c0", backend, flow());
        let sink = |to: &Arc<Directory>| {
            let to = to.clone();
            move |change| to.inherit(change)
        };
        assert_eq!(old.subscribe(sink(&new)), 1);
        let p = old.add("c1", backend, flow());
        p.handle()
            .identified(info("live", "secretkey123", publish()));
        assert_eq!(new.subscribe(sink(&newest)), 2);

        for dir in [&new, &newest] {
            let list = dir.list(false);
            assert_eq!(list.len(), 2);
            assert!(list.iter().all(|v| v.draining), "{list:?}");
            let found = dir.find("live", "secretkey123").unwrap();
            assert_eq!((found.client.as_str(), found.draining), ("c1", true));
            assert!(dir.find("live", "secretkey12").is_none());
        }
        // A new player of the stream on the new process: the publisher on
        // the old one still answers the lookup.
        let player = new.add("c2", backend, flow());
        player
            .handle()
            .identified(info("live", "secretkey123", Role::Play));
        assert_eq!(new.find("live", "secretkey123").unwrap().client, "c1");
        assert_eq!(newest.list(false).len(), 3);

        drop(p);
        assert_eq!(new.find("live", "secretkey123").unwrap().client, "c2");
        assert!(newest.list(false).iter().all(|v| v.client != "c1"));
        drop(early);
        drop(player);
        assert!(new.list(false).is_empty());
        assert!(newest.list(false).is_empty());
    }

    #[test]
    fn a_gone_process_takes_its_streams_along() {
        let (new, newest) = (Directory::new(), Directory::new());
        let view = Directory::new()
            .add("c1", "127.0.0.1:1935".parse().unwrap(), flow())
            .view()
            .unwrap();
        let record = |id: &str| Record {
            id: id.into(),
            lookup: None,
            view: view.clone(),
        };
        new.inherit(Change::Upsert(Box::new(record("7-0"))));
        new.inherit(Change::Upsert(Box::new(record("7-1"))));
        new.inherit(Change::Upsert(Box::new(record("7-1"))));
        let told = Arc::new(Mutex::new(Vec::new()));
        let log = told.clone();
        new.subscribe(move |c| log.lock().push(c));
        assert_eq!(new.forget_inherited(), 2);
        assert!(new.list(false).is_empty());
        let told = told.lock();
        assert_eq!(told.len(), 4);
        assert_eq!(told[3], Change::Remove("7-1".into()));
        drop(newest);
    }
}
