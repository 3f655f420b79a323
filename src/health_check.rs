//! Active backend checks: Pingora's TCP connect check, with every result
//! reported to the slot table.
//!
//! Pingora only reports health flips it saw itself; a backend the proxy
//! marked down after a failed connect would then never come back, because
//! Pingora still thinks it healthy. Reporting every result makes the latest
//! check (or failed connect) the truth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_load_balancing::health_check::{HealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use crate::balancer::SlotTable;

pub struct ReportingCheck {
    tcp: TcpHealthCheck,
    table: Arc<SlotTable>,
}

impl ReportingCheck {
    pub fn new(table: Arc<SlotTable>, timeout: Duration) -> Self {
        let mut tcp = *TcpHealthCheck::new();
        tcp.peer_template.options.connection_timeout = Some(timeout);
        Self { tcp, table }
    }
}

#[async_trait]
impl HealthCheck for ReportingCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let result = self.tcp.check(target).await;
        if let Some(addr) = target.addr.as_inet().copied() {
            report(&self.table, addr, &result);
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.tcp.health_threshold(success)
    }
}

fn report(table: &SlotTable, addr: SocketAddr, result: &Result<()>) {
    match result {
        Ok(()) => table.set_health(addr, true, "check passed"),
        Err(e) => table.set_health(
            addr,
            false,
            &format!("health check failed: {}", e.root_cause()),
        ),
    }
}
