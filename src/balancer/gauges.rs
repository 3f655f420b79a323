//! The slot table's gauges, read from the table at scrape time by a
//! Prometheus [`Collector`], so that nothing rewrites them between scrapes
//! and a backend that left disappears from the output with it.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};

use super::SlotTable;

pub struct SlotGauges {
    table: Arc<SlotTable>,
    /// Templates: their descriptions are what [`Collector::desc`] reports,
    /// and each scrape fills fresh copies.
    active: IntGaugeVec,
    max: IntGaugeVec,
    healthy: IntGaugeVec,
    queue: IntGauge,
}

fn per_backend(name: &str, help: &str) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), &["backend"])
}

impl SlotGauges {
    pub fn new(table: Arc<SlotTable>) -> prometheus::Result<Self> {
        Ok(Self {
            table,
            active: per_backend(
                "rtmp_proxy_backend_active_connections",
                "Proxied connections each backend holds (including an upgrade's inherited ones).",
            )?,
            max: per_backend(
                "rtmp_proxy_backend_max_connections",
                "Each backend's cap (0 = unlimited).",
            )?,
            healthy: per_backend(
                "rtmp_proxy_backend_healthy",
                "1 when the backend is present and passed its last check, else 0.",
            )?,
            queue: IntGauge::new(
                "rtmp_proxy_queue_length",
                "Clients waiting for a free backend slot.",
            )?,
        })
    }
}

impl Collector for SlotGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.active.desc();
        descs.extend(self.max.desc());
        descs.extend(self.healthy.desc());
        descs.extend(self.queue.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (active, max, healthy) = (self.active.clone(), self.max.clone(), self.healthy.clone());
        for g in [&active, &max, &healthy] {
            g.reset();
        }
        for b in self.table.snapshot() {
            let addr = b.addr.to_string();
            let label = [addr.as_str()];
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            active.with_label_values(&label).set(count(b.active));
            max.with_label_values(&label).set(count(b.max_connections));
            healthy
                .with_label_values(&label)
                .set(i64::from(b.healthy && b.present));
        }
        self.queue
            .set(i64::try_from(self.table.queued()).unwrap_or(i64::MAX));
        let mut families = active.collect();
        families.extend(max.collect());
        families.extend(healthy.collect());
        families.extend(self.queue.collect());
        families
    }
}
