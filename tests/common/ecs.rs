//! Loopback doubles for ECS task scale-in protection, which moto does not
//! implement:
//!
//! - [`EcsDouble`]: the ECS API as the SDK speaks it (AWS JSON 1.1: `POST /`
//!   with `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`),
//!   answering `UpdateTaskProtection` and `GetTaskProtection` like ECS,
//!   recording every call, and failing the next N requests on demand with
//!   ECS's throttling or access-denied answers. SigV4 signatures are
//!   accepted unchecked (whether a request was signed is recorded).
//! - [`AgentDouble`]: the ECS agent's `PUT .../task-protection/v1/state`,
//!   recording each body.
//!
//! Both sit on a minimal HTTP/1.1 server (keep-alive, `Content-Length`
//! bodies, which is what the SDK and hyper send here).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
pub const ACCOUNT: &str = "123456789012";

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// One answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// A loopback HTTP/1.1 server running `handler` for each request.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind double");
        let addr = listener.local_addr().expect("double address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, handler).await;
                });
            }
        });
        Server { addr, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut sock = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if sock.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if sock.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).await?;
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let r = handler(Request {
            method,
            path,
            headers,
            body,
        });
        let reason = match r.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Error",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nx-amzn-RequestId: {}\r\n\r\n",
            r.status,
            r.content_type,
            r.body.len(),
            request_id()
        );
        let out = sock.get_mut();
        out.write_all(head.as_bytes()).await?;
        out.write_all(r.body.as_bytes()).await?;
        out.flush().await?;
        if close {
            return Ok(());
        }
    }
}

fn request_id() -> String {
    format!(
        "{:08x}-double",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One ECS API call the double received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The operation, e.g. `UpdateTaskProtection`.
    pub target: String,
    pub cluster: Option<String>,
    pub tasks: Vec<String>,
    pub protection_enabled: Option<bool>,
    pub expires_in_minutes: Option<i64>,
    pub at: Instant,
    /// Carried a SigV4 `Authorization` header.
    pub signed: bool,
    /// Answered with a fault instead.
    pub fault: Option<Fault>,
}

/// An error ECS answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 `ThrottlingException: Rate exceeded`.
    Throttling,
    /// HTTP 400 `AccessDeniedException`.
    AccessDenied,
}

#[derive(Default)]
struct EcsState {
    calls: Vec<Call>,
    faults: VecDeque<Fault>,
    /// Tasks ECS no longer knows (answered with a `MISSING` failure).
    stopped: HashSet<String>,
    /// Task id -> expiry (epoch seconds) while protected.
    protected: HashMap<String, f64>,
}

/// The ECS API double.
pub struct EcsDouble {
    server: Server,
    state: Arc<Mutex<EcsState>>,
}

impl EcsDouble {
    pub async fn start() -> EcsDouble {
        let state = Arc::new(Mutex::new(EcsState::default()));
        let s = state.clone();
        let server = Server::start(Arc::new(move |r| handle_ecs(&s, r))).await;
        EcsDouble { server, state }
    }

    /// `http://127.0.0.1:PORT`, for `scale_in_protection.endpoint` or
    /// `AWS_ENDPOINT_URL_ECS`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `UpdateTaskProtection` calls naming `task` (faulted ones included).
    pub fn updates_for(&self, task: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.target == "UpdateTaskProtection" && c.tasks.iter().any(|t| t == task))
            .collect()
    }

    /// Successful `UpdateTaskProtection` calls naming `task` with
    /// `protectionEnabled == enabled`.
    pub fn accepted(&self, task: &str, enabled: bool) -> Vec<Call> {
        self.updates_for(task)
            .into_iter()
            .filter(|c| c.fault.is_none() && c.protection_enabled == Some(enabled))
            .collect()
    }

    /// Answers the next `n` requests with `fault` (after faults queued
    /// before).
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut st = self.state.lock().unwrap();
        st.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// ECS forgets `task`: calls naming it get a `MISSING` failure.
    pub fn stop_task(&self, task: &str) {
        self.state.lock().unwrap().stopped.insert(task.to_string());
    }

    /// Whether ECS would say `task` is protected now.
    pub fn is_protected(&self, task: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .protected
            .get(task)
            .is_some_and(|&until| until > epoch_now())
    }
}

fn arn(cluster: &str, task: &str) -> String {
    let id = task.rsplit('/').next().unwrap_or(task);
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/{id}")
}

fn ecs_error(kind: &str, message: &str) -> Response {
    Response {
        status: 400,
        content_type: "application/x-amz-json-1.1",
        body: json!({"__type": kind, "message": message}).to_string(),
    }
}

fn handle_ecs(state: &Mutex<EcsState>, r: Request) -> Response {
    let target = r
        .headers
        .get("x-amz-target")
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .unwrap_or_default()
        .to_string();
    let json_type = r
        .headers
        .get("content-type")
        .is_some_and(|t| t == "application/x-amz-json-1.1");
    if r.method != "POST" || r.path != "/" || !json_type {
        return ecs_error(
            "UnknownOperationException",
            "expected POST / with application/x-amz-json-1.1",
        );
    }
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let cluster = body["cluster"].as_str().map(str::to_string);
    let tasks: Vec<String> = body["tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut st = state.lock().unwrap();
    let fault = st.faults.pop_front();
    st.calls.push(Call {
        target: target.clone(),
        cluster: cluster.clone(),
        tasks: tasks.clone(),
        protection_enabled: body["protectionEnabled"].as_bool(),
        expires_in_minutes: body["expiresInMinutes"].as_i64(),
        at: Instant::now(),
        signed: r
            .headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ")),
        fault,
    });
    match fault {
        Some(Fault::Throttling) => return ecs_error("ThrottlingException", "Rate exceeded"),
        Some(Fault::AccessDenied) => {
            return ecs_error(
                "AccessDeniedException",
                &format!(
                    "User: arn:aws:sts::{ACCOUNT}:assumed-role/rtmp-proxy/task is not authorized to perform: ecs:{target}"
                ),
            )
        }
        None => {}
    }
    let Some(cluster) = cluster else {
        return ecs_error("InvalidParameterException", "cluster is required");
    };
    if tasks.is_empty() || tasks.len() > 10 {
        return ecs_error("InvalidParameterException", "tasks: 1 to 10 tasks");
    }
    let mut protected_tasks = Vec::new();
    let mut failures = Vec::new();
    for task in &tasks {
        if st.stopped.contains(task) {
            failures.push(json!({"arn": arn(&cluster, task), "reason": "MISSING"}));
            continue;
        }
        match target.as_str() {
            "UpdateTaskProtection" => {
                let enabled = body["protectionEnabled"].as_bool().unwrap_or(false);
                if enabled {
                    let minutes = body["expiresInMinutes"].as_i64().unwrap_or(120);
                    let until = (epoch_now() + minutes as f64 * 60.0).floor();
                    st.protected.insert(task.clone(), until);
                    protected_tasks.push(json!({
                        "taskArn": arn(&cluster, task),
                        "protectionEnabled": true,
                        "expirationDate": until,
                    }));
                } else {
                    st.protected.remove(task);
                    protected_tasks.push(json!({
                        "taskArn": arn(&cluster, task),
                        "protectionEnabled": false,
                    }));
                }
            }
            "GetTaskProtection" => {
                let until = st.protected.get(task).copied().filter(|&u| u > epoch_now());
                let mut t = json!({
                    "taskArn": arn(&cluster, task),
                    "protectionEnabled": until.is_some(),
                });
                if let Some(u) = until {
                    t["expirationDate"] = json!(u);
                }
                protected_tasks.push(t);
            }
            other => {
                return ecs_error(
                    "UnknownOperationException",
                    &format!("the double does not implement {other:?}"),
                )
            }
        }
    }
    Response {
        status: 200,
        content_type: "application/x-amz-json-1.1",
        body: json!({"protectedTasks": protected_tasks, "failures": failures}).to_string(),
    }
}

/// One `PUT` the agent double received.
#[derive(Debug, Clone)]
pub struct Put {
    pub path: String,
    pub body: Value,
    pub at: Instant,
}

impl Put {
    pub fn enabled(&self) -> Option<bool> {
        self.body["ProtectionEnabled"].as_bool()
    }
}

/// The ECS agent's task protection endpoint.
pub struct AgentDouble {
    server: Server,
    puts: Arc<Mutex<Vec<Put>>>,
}

impl AgentDouble {
    pub async fn start() -> AgentDouble {
        let puts = Arc::new(Mutex::new(Vec::new()));
        let p = puts.clone();
        let server = Server::start(Arc::new(move |r: Request| {
            if r.method != "PUT" || !r.path.ends_with("/task-protection/v1/state") {
                return Response {
                    status: 404,
                    content_type: "application/json",
                    body: json!({"error": {"Code": "ResourceNotFoundException", "Message": "no such path"}}).to_string(),
                };
            }
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            p.lock().unwrap().push(Put {
                path: r.path.clone(),
                body: body.clone(),
                at: Instant::now(),
            });
            let enabled = body["ProtectionEnabled"].as_bool().unwrap_or(false);
            let mut protection = json!({
                "ProtectionEnabled": enabled,
                "TaskArn": arn("proxies", "proxy-task"),
            });
            if enabled {
                let minutes = body["ExpiresInMinutes"].as_u64().unwrap_or(120);
                let until = SystemTime::now() + Duration::from_secs(minutes * 60);
                protection["ExpirationDate"] =
                    json!(humantime::format_rfc3339_millis(until).to_string());
            }
            Response {
                status: 200,
                content_type: "application/json",
                body: json!({"protection": protection}).to_string(),
            }
        }))
        .await;
        AgentDouble { server, puts }
    }

    /// What ECS sets as `ECS_AGENT_URI`: the agent's address plus a path.
    pub fn uri(&self, task: &str) -> String {
        format!("http://{}/api/{task}", self.server.addr)
    }

    pub fn puts(&self) -> Vec<Put> {
        self.puts.lock().unwrap().clone()
    }
}
