//! Composition: the command line, the config file and the Pingora `Server`
//! with its services.
//!
//! | service          | listens on            | job                                  |
//! |------------------|-----------------------|--------------------------------------|
//! | `BG backends`    | -                     | discovery + health checks (Pingora LB) |
//! | `proxy.listen`   | `proxy.listen`        | [`crate::proxy`]                     |
//! | `proxy.tls[i]`   | `proxy.tls[i].listen` | the same, after TLS ([`crate::proxy::edge`]) |
//! | `proxy.health_listen` | `proxy.health_listen` | `GET /health`, `/health/fleet` ([`crate::http::server`]) |
//! | `proxy.admin_listen`  | `proxy.admin_listen`  | `/backends`, `/streams`, `/metrics`  |
//! | `BG forwarded`   | -                     | clients an old process passes on     |

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use log::{info, warn};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backends, LoadBalancer};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::access_log::{AccessLog, AccessLogError};
use crate::auth::Auth;
use crate::balancer::gauges::SlotGauges;
use crate::balancer::redis::{SharedSlots, Store, StoreError};
use crate::balancer::SlotTable;
use crate::config::{self, ProxyConfig, SlotStore};
use crate::core::{self, Core, Settings};
use crate::discovery::cloud_map::CloudMapDiscovery;
use crate::discovery::{Fleet, StaticDiscovery};
use crate::health_check::ReportingCheck;
use crate::http::server::{self as http_server, HttpListener};
use crate::http::{Admin, Health};
use crate::lifecycle::handoff::{ForwardedClient, Handoff, HandoffError};
use crate::lifecycle::{ExitFn, Lifecycle, SignalError, Signals};
use crate::memory;
use crate::metrics;
use crate::protection::Protection;
use crate::proxy::edge::{Certificate, CertificateError, Edge};
use crate::proxy::publishers::Publishers;
use crate::proxy::{listener::Listener, Forwarded};
use crate::runtime::RuntimeError;
use crate::streams::shared::SharedStreams;
use crate::streams::Directory;

/// Command line: Pingora's own flags (`-c`, `-u`, `-d`, `-t`) and ours.
#[derive(Debug, Parser)]
#[command(
    name = "rtmp-proxy",
    version,
    about = "RTMP ingest load balancer on Pingora"
)]
pub struct Cli {
    #[command(flatten)]
    pub pingora: Opt,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no config file given: pass -c FILE (see conf/rtmp-proxy.yaml)")]
    NoConfig,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{path}: Pingora server settings: {message}")]
    ServerConf { path: String, message: String },
    /// Pingora forks in `run`, which would lose the drain and handoff
    /// threads started before it.
    #[error("daemon mode is not supported: run rtmp-proxy in the foreground (systemd, a container runtime)")]
    Daemon,
    #[error("{key}: cannot listen on {addr}: {source}")]
    Listen {
        key: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("{key}: {source}")]
    Certificate {
        key: String,
        source: CertificateError,
    },
    #[error(transparent)]
    Signals(#[from] SignalError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the proxy as the command line says; returns only on a start-up
/// error, after `-t`, or after SIGINT.
pub fn run(cli: Cli, exit: ExitFn) -> Result<(), StartError> {
    let mut opt = cli.pingora;
    let Some((server_conf, proxy, certificates)) = configure(&mut opt)? else {
        return Ok(());
    };
    raise_fd_limit();
    let upgrade = opt.upgrade;
    if !upgrade {
        // Pingora retries a busy address for 30 s and then panics inside
        // the service's thread; fail at once and clearly instead. An
        // upgrading process inherits the sockets, so it binds nothing.
        probe_listen("proxy.listen", &proxy.listen)?;
        probe_listen("proxy.health_listen", &proxy.health_listen)?;
        probe_listen("proxy.admin_listen", &proxy.admin_listen)?;
        for (i, t) in proxy.tls.iter().enumerate() {
            probe_listen(&format!("proxy.tls[{i}].listen"), &t.listen)?;
        }
    }

    let table = core::slot_table(&proxy);
    let lifecycle = Lifecycle::new(proxy.drain_delay.get(), proxy.drain_timeout.get(), exit);
    lifecycle.watch_signals()?;
    // Before the handoff: the old process's stream records arrive at once.
    let streams = Directory::new();
    let handoff = Handoff::new(&server_conf.upgrade_sock, table.clone(), streams.clone());
    let (forward_tx, forward_rx) = tokio::sync::mpsc::unbounded_channel();
    if upgrade {
        // Before bootstrap: the old process must know we are waiting before
        // it gives up the sockets.
        handoff.connect_predecessor(forward_tx);
    } else {
        drop(forward_tx);
    }
    let pid_file = server_conf.pid_file.clone();
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf);
    if upgrade {
        info!("waiting for the old process to hand over the listening sockets");
    }
    server.bootstrap();
    if upgrade && !handoff.wait_ready(HANDOFF_WAIT) {
        warn!("the old process did not confirm the slot handoff; serving with what it reported");
    }
    handoff.listen()?;
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        warn!("cannot write pid_file {pid_file}: {e}");
    }

    metrics::init();
    match SlotGauges::new(table.clone()) {
        Ok(gauges) => {
            if let Err(e) = prometheus::register(Box::new(gauges)) {
                warn!("the slot table's metrics are not exported: {e}");
            }
        }
        Err(e) => warn!("the slot table's metrics are not exported: {e}"),
    }
    memory::trim_periodically();
    let core = Arc::new(build_core(&proxy, table, &lifecycle, &handoff, streams)?);
    compose(&mut server, &proxy, core, forward_rx, certificates);
    info!(
        "rtmp-proxy {} listening on {} (health {}, admin {})",
        env!("CARGO_PKG_VERSION"),
        proxy.listen,
        proxy.health_listen,
        proxy.admin_listen
    );
    lifecycle.exit_when_drained(server.watch_execution_phase());
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals::new(lifecycle, handoff)),
    });
    Ok(())
}

/// Reads and checks the config file and the TLS listeners' certificates;
/// `None` after `-t`, which only checks.
fn configure(opt: &mut Opt) -> Result<Option<Configured>, StartError> {
    let path = opt.conf.take().ok_or(StartError::NoConfig)?;
    let (text, proxy) = config::load(Path::new(&path))?;
    let mut certificates = Vec::with_capacity(proxy.tls.len());
    for (i, listener) in proxy.tls.iter().enumerate() {
        let name = format!("proxy.tls[{i}]");
        let certificate =
            Certificate::load(&name, listener).map_err(|e| StartError::Certificate {
                key: name.clone(),
                source: e,
            })?;
        certificates.push(certificate);
    }
    let mut server_conf = ServerConf::from_yaml(&text).map_err(|e| StartError::ServerConf {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if opt.daemon || server_conf.daemon {
        return Err(StartError::Daemon);
    }
    // Pingora drops every session when its grace period ends; ours (the
    // drain) must always end first.
    server_conf.grace_period_seconds = Some(proxy.drain_timeout.get().as_secs().saturating_add(30));
    if opt.test {
        println!("{path}: configuration OK");
        return Ok(None);
    }
    Ok(Some((server_conf, proxy, certificates)))
}

/// Pingora's settings, ours, and each `proxy.tls` listener's certificate.
type Configured = (ServerConf, ProxyConfig, Vec<Arc<Certificate>>);

/// The core, once the process owns its sockets: the Redis slot store,
/// scale-in protection and the access log start here.
fn build_core(
    proxy: &ProxyConfig,
    table: Arc<SlotTable>,
    lifecycle: &Arc<Lifecycle>,
    handoff: &Arc<Handoff>,
    streams: Arc<Directory>,
) -> Result<Core, StartError> {
    let publishers = Publishers::new(proxy.sticky_for.get());
    let shared = match (&proxy.slots.store, &proxy.slots.url) {
        (SlotStore::Redis, Some(url)) => {
            let lease = proxy.slots.lease.get();
            let store = Store::connect(
                url,
                &proxy.slots.key_prefix,
                lease,
                proxy.connect_timeout.get(),
            )?;
            streams.set_shared(SharedStreams::start(store.clone(), lease));
            publishers.set_fleet(store.clone());
            Some(SharedSlots::start(store, lease, table.clone(), url))
        }
        _ => None,
    };
    let protection = if proxy.scale_in_protection.enabled {
        Some(Protection::start(
            proxy,
            table.clone(),
            lifecycle.clone(),
            shared.clone(),
        )?)
    } else {
        None
    };
    let access_log = Arc::new(AccessLog::open(
        &proxy.access_log,
        proxy.access_log_interval.get(),
    )?);
    let reopened = access_log.clone();
    lifecycle.on_hangup(move || reopened.reopen());
    Ok(Core {
        table,
        settings: Settings::from(proxy),
        lifecycle: lifecycle.clone(),
        handoff: handoff.clone(),
        shared,
        access_log,
        streams,
        auth: Auth::new(&proxy.auth),
        publishers,
        protection,
        started: std::time::Instant::now(),
    })
}

/// How long a new process waits, after receiving the sockets, for the old
/// one's last slot report.
const HANDOFF_WAIT: Duration = Duration::from_secs(10);

/// Every stream holds two descriptors, and Pingora only sleeps when it runs
/// out: take the hard limit the system allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
    }
}

fn probe_listen(key: &str, addr: &str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Listen {
            key: key.to_owned(),
            addr: addr.into(),
            source,
        })
}

/// Adds every service to the server.
fn compose(
    server: &mut Server,
    proxy: &ProxyConfig,
    core: Arc<Core>,
    forwarded: UnboundedReceiver<ForwardedClient>,
    certificates: Vec<Arc<Certificate>>,
) {
    let table = &core.table;
    let mut sources: Vec<(&'static str, Box<dyn ServiceDiscovery + Send + Sync>)> = vec![(
        "static",
        Box::new(StaticDiscovery::new(&proxy.backends.static_)),
    )];
    if let Some(cloud_map) = &proxy.backends.cloud_map {
        sources.push((
            "cloud_map",
            Box::new(CloudMapDiscovery::new(cloud_map.clone())),
        ));
    }
    let fleet = Fleet::new(sources, table.clone());
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(fleet)));
    lb.set_health_check(Box::new(ReportingCheck::new(
        table.clone(),
        proxy.check_kind(),
        proxy.health_check.timeout.get(),
        proxy.send_proxy,
    )));
    lb.health_check_frequency = Some(proxy.health_check.interval.get());
    lb.parallel_health_check = true;
    // Static backends need one discovery; Cloud Map is polled.
    lb.update_frequency = proxy.backends.cloud_map.as_ref().map(|c| c.refresh.get());
    let backends = server.add_service(background_service("backends", lb));

    let threads = server.configuration.threads;
    let plain = Edge::new("proxy.listen", &proxy.accept_proxy, None);
    let rtmp = Listener::new(core.clone(), plain, &proxy.listen, threads);
    server.add_service(rtmp).add_dependency(&backends);
    for (i, (tls, certificate)) in proxy.tls.iter().zip(certificates).enumerate() {
        // New clients get the files as they are now; sessions keep theirs.
        let reloaded = certificate.clone();
        core.lifecycle.on_hangup(move || reloaded.reload());
        let edge = Edge::new(
            &format!("proxy.tls[{i}]"),
            &tls.accept_proxy,
            Some(certificate),
        );
        let listener = Listener::new(core.clone(), edge, &tls.listen, threads);
        server.add_service(listener).add_dependency(&backends);
    }
    server
        .add_service(background_service(
            "forwarded",
            Forwarded::new(core.clone(), forwarded),
        ))
        .add_dependency(&backends);

    // Each HTTP port gets a share of the descriptors; the rest stay for
    // streams (see docs/operations.md, "HTTP endpoints").
    let nofile = http_server::nofile();
    let http: [(&'static str, &str, Arc<dyn http_server::Handler>, usize); 2] = [
        (
            "proxy.health_listen",
            &proxy.health_listen,
            Arc::new(Health::new(core.clone())),
            http_server::health_cap(nofile),
        ),
        (
            "proxy.admin_listen",
            &proxy.admin_listen,
            Arc::new(Admin::new(core.clone())),
            http_server::admin_cap(nofile),
        ),
    ];
    for (what, addr, handler, cap) in http {
        let listener = HttpListener::new(what, addr, handler, cap, core.lifecycle.clone());
        server.add_service(listener).add_dependency(&backends);
    }
}
