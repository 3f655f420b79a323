//! Active backend checks, every result reported to the slot table.
//!
//! `kind: tcp` connects; `kind: rtmp` also sends C0+C1 (after the PROXY
//! header, if backends get one) and wants S0 back within the timeout. A
//! stopped or hung media server still completes TCP connects (the kernel
//! answers them), so only the RTMP check sees it.
//!
//! Pingora only reports health flips it saw itself; a backend the proxy
//! marked down after a failed connect would then never come back, because
//! Pingora still thinks it healthy. Reporting every result makes the latest
//! check (or failed connect) the truth.
//!
//! A check that fails for want of a local resource (descriptors, memory,
//! ports) says nothing about the backend: it changes no backend's state.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::{Error, ErrorType, Result};
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;

use crate::balancer::SlotTable;
use crate::config::{CheckKind, SendProxy};
use crate::proxy::backend::{self, ConnectError};
use crate::proxy::listener::Episode;
use crate::proxy::rtmp::Opening;
use crate::rtmp::RTMP_VERSION;

pub struct ReportingCheck {
    table: Arc<SlotTable>,
    timeout: Duration,
    /// `kind: rtmp`: what goes to the backend, and the wait for its answer.
    opening: Option<Opening<'static>>,
    local: Mutex<Episode>,
}

impl ReportingCheck {
    pub fn new(
        table: Arc<SlotTable>,
        kind: CheckKind,
        timeout: Duration,
        send_proxy: SendProxy,
    ) -> Self {
        Self {
            table,
            timeout,
            opening: (kind == CheckKind::Rtmp).then(|| Opening::check(send_proxy, timeout)),
            local: Mutex::new(Episode::new("health checks")),
        }
    }

    fn local_episode(&self) -> parking_lot::MutexGuard<'_, Episode> {
        self.local.lock()
    }

    /// A [`ConnectError::LocalShortage`] is no verdict on the backend.
    async fn probe(&self, addr: SocketAddr) -> std::result::Result<(), ConnectError> {
        let mut stream = backend::open(addr, self.timeout).await?;
        let Some(opening) = &self.opening else {
            return Ok(());
        };
        let first = opening.send(&mut stream).await?;
        match first.first() {
            Some(&RTMP_VERSION) => Ok(()),
            other => Err(ConnectError::NotRtmp(format!(
                "{other:?}, not version {RTMP_VERSION}"
            ))),
        }
    }
}

#[async_trait]
impl HealthCheck for ReportingCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Ok(());
        };
        match self.probe(addr).await {
            Ok(()) => {
                self.local_episode().over();
                self.table.set_health(addr, true, "check passed");
                Ok(())
            }
            Err(ConnectError::LocalShortage(e)) => {
                self.local_episode().hit(format_args!(
                    "{e} (on this machine; backends keep their state)"
                ));
                Ok(())
            }
            Err(e) => {
                self.local_episode().over();
                let why = format!("health check failed: {e}");
                self.table.set_health(addr, false, &why);
                Err(Error::explain(ErrorType::ConnectError, why))
            }
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
