//! A platform's auth endpoint, as `proxy.auth` calls it: a small HTTP/1.1
//! server on loopback that records each form it is POSTed and answers with
//! what the test's rule says for it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request's form fields, decoded, in order.
pub type Form = Vec<(String, String)>;

/// What the hook answers: status, extra headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Rule = dyn Fn(&Form) -> Answer + Send + Sync;

pub struct Hook {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Form>>>,
    task: JoinHandle<()>,
}

impl Hook {
    pub async fn start(rule: impl Fn(&Form) -> Answer + Send + Sync + 'static) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hook");
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (rule, recorded) = (rule.clone(), recorded.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        serve(sock, &*rule, &recorded),
                    )
                    .await;
                });
            }
        });
        Hook { addr, calls, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    /// Every form received so far.
    pub fn calls(&self) -> Vec<Form> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `name` in `form`.
pub fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn serve(mut sock: TcpStream, rule: &Rule, calls: &Mutex<Vec<Form>>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
        match sock.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return,
        }
    };
    while got.len() < head_end + length {
        match sock.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let body = String::from_utf8_lossy(&got[head_end..head_end + length]).into_owned();
    let form: Form = body
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect();
    let answer = rule(&form);
    calls.lock().unwrap().push(form);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&answer.body);
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}
