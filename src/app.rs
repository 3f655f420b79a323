//! Composition: the command line, the config file and the Pingora `Server`
//! with its services.
//!
//! | service          | listens on            | job                                  |
//! |------------------|-----------------------|--------------------------------------|
//! | `BG backends`    | -                     | discovery + health checks (Pingora LB) |
//! | `rtmp proxy`     | `proxy.listen`        | [`crate::proxy`]                     |
//! | `health`         | `proxy.health_listen` | `GET /health`                        |
//! | `admin`          | `proxy.admin_listen`  | `/backends`, `/metrics`              |

use std::net::TcpListener;
use std::path::Path;

use clap::Parser;
use log::info;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backends, LoadBalancer};

use crate::balancer::{policy, Limits, SlotTable};
use crate::config::{self, ProxyConfig};
use crate::discovery::cloud_map::CloudMapDiscovery;
use crate::discovery::{Fleet, StaticDiscovery};
use crate::health_check::ReportingCheck;
use crate::http::{Admin, Health};
use crate::proxy::{ProxyApp, Settings};

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

/// Runs the proxy as the command line says; returns only on a start-up
/// error or after `-t`.
pub fn run(cli: Cli) -> Result<(), String> {
    let mut opt = cli.pingora;
    let path = opt
        .conf
        .take()
        .ok_or("no config file given: pass -c FILE (see conf/rtmp-proxy.yaml)")?;
    let (text, proxy) = config::load(Path::new(&path)).map_err(|e| e.to_string())?;
    let server_conf = ServerConf::from_yaml(&text)
        .map_err(|e| format!("{path}: Pingora server settings: {e}"))?;
    if opt.test {
        println!("{path}: configuration OK");
        return Ok(());
    }
    if !opt.upgrade {
        // Pingora retries a busy address for 30 s and then panics inside
        // the service's thread; fail at once and clearly instead. An
        // upgrading process inherits the sockets, so it binds nothing.
        probe_listen("proxy.listen", &proxy.listen)?;
        probe_listen("proxy.health_listen", &proxy.health_listen)?;
        probe_listen("proxy.admin_listen", &proxy.admin_listen)?;
    }

    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf);
    server.bootstrap();
    compose(&mut server, &proxy);
    info!(
        "rtmp-proxy {} listening on {} (health {}, admin {})",
        env!("CARGO_PKG_VERSION"),
        proxy.listen,
        proxy.health_listen,
        proxy.admin_listen
    );
    server.run_forever()
}

fn probe_listen(key: &str, addr: &str) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))
}

/// Adds every service to the server.
fn compose(server: &mut Server, proxy: &ProxyConfig) {
    let table = SlotTable::new(
        policy::from_config(proxy.balance),
        Limits {
            global_cap: proxy.global_cap(),
            max_queue: proxy.max_queue,
        },
    );

    let mut sources: Vec<Box<dyn ServiceDiscovery + Send + Sync>> =
        vec![Box::new(StaticDiscovery::new(&proxy.backends.static_))];
    if let Some(cloud_map) = &proxy.backends.cloud_map {
        sources.push(Box::new(CloudMapDiscovery::new(cloud_map.clone())));
    }
    let fleet = Fleet::new(sources, table.clone());
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(fleet)));
    lb.set_health_check(Box::new(ReportingCheck::new(
        table.clone(),
        proxy.health_check.timeout,
    )));
    lb.health_check_frequency = Some(proxy.health_check.interval);
    lb.parallel_health_check = true;
    // Static backends need one discovery; Cloud Map is polled.
    lb.update_frequency = proxy.backends.cloud_map.as_ref().map(|c| c.refresh);
    let backends = server.add_service(background_service("backends", lb));

    let mut rtmp = Service::new(
        "rtmp proxy".to_string(),
        ProxyApp::new(table.clone(), Settings::from(proxy)),
    );
    // No read buffer per accepted client: the copy has its own, and idle
    // connections should cost little.
    rtmp.add_listener(ListenerConfig::tcp(&proxy.listen).l4_buffer(L4BufferSettings::unbuffered()));
    server.add_service(rtmp).add_dependency(&backends);

    let mut health = Service::new(
        "health".to_string(),
        HttpServer::new_app(Health::new(table.clone())),
    );
    health.add_tcp(&proxy.health_listen);
    health.threads = Some(1);
    server.add_service(health).add_dependency(&backends);

    let mut admin = Service::new("admin".to_string(), HttpServer::new_app(Admin::new(table)));
    admin.add_tcp(&proxy.admin_listen);
    admin.threads = Some(1);
    server.add_service(admin);
}
