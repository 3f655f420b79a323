//! A moto server on loopback plus Cloud Map fixtures built with the same SDK
//! the discovery client uses. Include from an integration test with
//! `mod common;` (and `tests/common/mod.rs` saying `pub mod moto;`), or with
//! `#[path = "common/moto.rs"] mod moto;`.
//!
//! Panics are the error handling here: a fixture that cannot be set up should
//! fail the test with the reason, not return something to unwrap.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, HealthCheckCustomConfig, OperationTargetType,
};
use aws_sdk_servicediscovery::Client;

pub const REGION: &str = "us-east-1";
/// moto accepts any credentials but needs a SigV4 signature to tell which AWS
/// service a request is for, so clients must sign with something.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const START_TRIES: usize = 3;

pub fn test_credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "moto-test")
}

/// `$CARGO_MANIFEST_DIR/.venv/bin/moto_server`, else `moto_server` on PATH.
pub fn moto_server_path() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "moto_server not found at {} nor on PATH. Install it with:\n  \
             python3 -m venv {dir}/.venv && {dir}/.venv/bin/pip install 'moto[server]'",
            venv.display(),
            dir = env!("CARGO_MANIFEST_DIR"),
        )
    })
}

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers HTTP.
    pub fn start() -> Moto {
        let mut last_failure = String::new();
        // The free port is found by binding and releasing it, so another process
        // can take it before moto binds; a retry with a new port covers that.
        for _ in 0..START_TRIES {
            match Self::start_on(free_port()) {
                Ok(moto) => return moto,
                Err(why) => last_failure = why,
            }
        }
        panic!("moto_server did not start after {START_TRIES} tries: {last_failure}");
    }

    /// Starts moto on `port` (a restart after [`Moto::stop`] keeps the
    /// port, so a client configured with it reconnects; moto's state is
    /// gone).
    pub fn start_on(port: u16) -> Result<Moto, String> {
        let exe = moto_server_path();
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let log_file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log file handle: {e}"));
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let mut moto = Moto { child, port, log };
        moto.wait_ready().map(|()| moto)
    }
    /// Kills moto (its port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "moto_server exited with {status}; log {}:\n{}",
                    self.log.display(),
                    self.log_text()
                ));
            }
            if http_post(self.port, "/moto-api/reset").is_ok_and(|code| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "moto_server not ready after {STARTUP_TIMEOUT:?}; log {}:\n{}",
            self.log.display(),
            self.log_text()
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `http://127.0.0.1:PORT`, for settings or `AWS_ENDPOINT_URL_SERVICEDISCOVERY`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a child process (e.g. the load balancer binary) that
    /// should talk to this moto through aws-config's default chain. IMDS is
    /// disabled so a missing variable fails fast instead of probing 169.254.169.254.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL_SERVICEDISCOVERY", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wipes all of moto's state (every service, every region).
    pub fn reset(&self) {
        match http_post(self.port, "/moto-api/reset") {
            Ok(200) => {}
            other => panic!("moto reset failed: {other:?}"),
        }
    }

    /// A servicediscovery client for setting up fixtures. Credentials and region
    /// are set on the client, not in the process environment, so tests running
    /// in parallel threads never race on env vars.
    pub fn client(&self) -> Client {
        let config = aws_sdk_servicediscovery::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(test_credentials())
            .endpoint_url(self.endpoint())
            // Only DiscoverInstances(Revision) carry the `data-` prefix; the
            // management calls work without this, but fixtures may discover too.
            .interceptor(rtmp_proxy::discovery::cloud_map::NoHostPrefixForCustomEndpoint)
            .build();
        Client::from_conf(config)
    }

    /// Creates an HTTP namespace and a service in it with custom health checks
    /// (so `set_health` works), and returns a handle to the service.
    pub async fn create_service(&self, namespace: &str, service: &str) -> CloudMapService {
        let client = self.client();
        let created = client
            .create_http_namespace()
            .name(namespace)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateHttpNamespace {namespace}: {e:?}"));
        let operation_id = created
            .operation_id()
            .unwrap_or_else(|| panic!("CreateHttpNamespace {namespace}: no OperationId"));
        let operation = client
            .get_operation()
            .operation_id(operation_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetOperation {operation_id}: {e:?}"));
        let namespace_id = operation
            .operation()
            .and_then(|op| op.targets())
            .and_then(|t| t.get(&OperationTargetType::Namespace))
            .unwrap_or_else(|| panic!("GetOperation {operation_id}: no NAMESPACE target"))
            .clone();

        let created = client
            .create_service()
            .name(service)
            .namespace_id(&namespace_id)
            .health_check_custom_config(HealthCheckCustomConfig::builder().build())
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateService {service}: {e:?}"));
        let service_id = created
            .service()
            .and_then(|s| s.id())
            .unwrap_or_else(|| panic!("CreateService {service}: no Id"))
            .to_owned();

        CloudMapService {
            client,
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            namespace_id,
            service_id,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A Cloud Map service in moto, with the ids the management API needs.
pub struct CloudMapService {
    pub client: Client,
    pub namespace: String,
    pub service: String,
    pub namespace_id: String,
    pub service_id: String,
}

impl CloudMapService {
    /// Registers (or, as in AWS, replaces) an instance. moto appends a second
    /// copy on re-registration, so an existing one is deregistered first.
    pub async fn register(&self, instance_id: &str, attributes: &[(&str, &str)]) {
        if self.instance_exists(instance_id).await {
            self.deregister(instance_id).await;
        }
        let attributes: HashMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.client
            .register_instance()
            .service_id(&self.service_id)
            .instance_id(instance_id)
            .set_attributes(Some(attributes))
            .send()
            .await
            .unwrap_or_else(|e| panic!("RegisterInstance {instance_id}: {e:?}"));
    }

    pub async fn deregister(&self, instance_id: &str) {
        self.client
            .deregister_instance()
            .service_id(&self.service_id)
            .instance_id(instance_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DeregisterInstance {instance_id}: {e:?}"));
    }

    pub async fn set_health(&self, instance_id: &str, healthy: bool) {
        let status = if healthy {
            CustomHealthStatus::Healthy
        } else {
            CustomHealthStatus::Unhealthy
        };
        self.client
            .update_instance_custom_health_status()
            .service_id(&self.service_id)
            .instance_id(instance_id)
            .status(status)
            .send()
            .await
            .unwrap_or_else(|e| panic!("UpdateInstanceCustomHealthStatus {instance_id}: {e:?}"));
    }

    pub async fn instance_exists(&self, instance_id: &str) -> bool {
        let listed = self
            .client
            .list_instances()
            .service_id(&self.service_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListInstances: {e:?}"));
        listed
            .instances()
            .iter()
            .any(|i| i.id() == Some(instance_id))
    }
}

/// Minimal HTTP/1.1 POST so the helper needs no HTTP client crate.
fn http_post(port: u16, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {response:?}")))
}
