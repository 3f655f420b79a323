//! The stream directory shared by every proxy (Redis slot store): each
//! proxy lists its publishers under a hash of app and key, with the same
//! lease as its slots, so any proxy can answer `/streams/{app}/{key}`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::redis::Store;

pub struct SharedStreams {
    store: Arc<Store>,
    /// Our publishers: id -> entry.
    own: Mutex<HashMap<String, String>>,
}

impl SharedStreams {
    /// Starts renewing our entries every third of the lease.
    pub fn start(store: Arc<Store>, lease: Duration) -> Arc<Self> {
        let me = Arc::new(Self {
            store,
            own: Mutex::new(HashMap::new()),
        });
        let renewing = me.clone();
        me.store.runtime.spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(100));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                renewing.renew().await;
            }
        });
        me
    }

    fn key(&self, id: &str) -> String {
        format!("{}:stream:{id}", self.store.prefix)
    }

    /// Lists a publisher in the shared stream directory (`id`: a hash
    /// of app and key), with the same lease as slots.
    pub fn publish(self: &Arc<Self>, id: String, entry: String) {
        self.own.lock().insert(id.clone(), entry.clone());
        self.store.set_px(self.key(&id), entry, self.store.lease_ms);
    }

    pub fn unpublish(self: &Arc<Self>, id: String) {
        self.own.lock().remove(&id);
        let me = self.clone();
        self.store.runtime.spawn(async move {
            let mut conn = me.store.conn.clone();
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(me.key(&id))
                .query_async(&mut conn)
                .await;
        });
    }

    /// A publisher listed by any proxy, bounded by the call timeout.
    pub async fn find(&self, id: &str) -> Option<String> {
        self.store.get(self.key(id)).await
    }

    async fn renew(&self) {
        let entries = self.own.lock().clone();
        if entries.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (id, entry) in &entries {
            pipe.cmd("SET")
                .arg(self.key(id))
                .arg(entry)
                .arg("PX")
                .arg(self.store.lease_ms)
                .ignore();
        }
        let mut conn = self.store.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            self.store.set_degraded(true, &e.to_string());
        }
    }
}
