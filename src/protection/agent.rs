//! This proxy's own task protection, through the ECS agent's task
//! protection endpoint: `PUT $ECS_AGENT_URI/task-protection/v1/state`. The
//! agent (1.65.0 or later, and Fargate) calls `UpdateTaskProtection` with the
//! task's own role and answers with `protection`, `failure` (a 200 with a
//! per-task reason) or `error` (the API's error code and message).

use std::time::{Duration, SystemTime};

use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::outcome::{outcome_of_code, CallError, Outcome};

/// The environment variable ECS sets in every container of a task.
pub const ENV: &str = "ECS_AGENT_URI";

/// Longest answer read from the agent; its answers are a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// What the agent answered to a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The state was set; the expiry when the agent told it.
    Set(Option<SystemTime>),
    /// ECS refused it for this task (`TASK_NOT_VALID` outside a service).
    Failure(String),
}

pub struct Agent {
    url: hyper::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// `ECS_AGENT_URI` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentUriError {
    #[error("{ENV} {base:?} is not a URL: {source}")]
    NotUrl {
        base: String,
        source: hyper::http::uri::InvalidUri,
    },
    #[error("{ENV} {0:?}: expected an http:// URL")]
    NotHttp(String),
}

impl Agent {
    /// The agent named by `ECS_AGENT_URI`; `None` when it is unset (not
    /// running on ECS).
    pub fn from_env(timeout: Duration) -> Result<Option<Agent>, AgentUriError> {
        match std::env::var(ENV) {
            Ok(base) if !base.is_empty() => Self::new(&base, timeout).map(Some),
            _ => Ok(None),
        }
    }

    /// `base` carries a path (`http://169.254.170.2/api/<id>`): the state
    /// endpoint is appended to it.
    pub fn new(base: &str, timeout: Duration) -> Result<Agent, AgentUriError> {
        let url = format!("{}/task-protection/v1/state", base.trim_end_matches('/'));
        let url: hyper::Uri = url.parse().map_err(|e| AgentUriError::NotUrl {
            base: base.to_owned(),
            source: e,
        })?;
        // The agent listens on plain HTTP on a link-local address.
        if url.scheme_str() != Some("http") {
            return Err(AgentUriError::NotHttp(base.to_owned()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Agent {
            url,
            client,
            timeout,
        })
    }

    pub fn url(&self) -> &hyper::Uri {
        &self.url
    }

    /// Sets this task's protection: on for `expires_in_minutes`, or off.
    pub async fn put(&self, enabled: bool, expires_in_minutes: i32) -> Result<Reply, CallError> {
        let body = if enabled {
            serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": expires_in_minutes})
        } else {
            serde_json::json!({"ProtectionEnabled": false})
        };
        let what = if enabled { "on" } else { "off" };
        let fail = |outcome, why: String| CallError {
            outcome,
            message: format!("ECS agent task protection {what} ({}): {why}", self.url),
        };
        let request = Request::builder()
            .method(Method::PUT)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| fail(Outcome::Error, e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::aws::error_chain(&e))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| fail(Outcome::Error, "timed out".into()))?
            .map_err(|why| fail(Outcome::Error, why))?;
        let answer: Answer = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some(e) = answer.error {
            let code = e.code.unwrap_or_default();
            return Err(fail(
                outcome_of_code(Some(&code)),
                format!("HTTP {status}: {code}: {}", e.message.unwrap_or_default()),
            ));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(200).collect();
            return Err(fail(Outcome::Error, format!("HTTP {status}: {text:?}")));
        }
        if let Some(f) = answer.failure {
            let reason = f.reason.unwrap_or_else(|| "unknown".into());
            return Ok(Reply::Failure(match f.detail {
                Some(d) => format!("{reason} ({d})"),
                None => reason,
            }));
        }
        let until = answer
            .protection
            .and_then(|p| p.expiration_date)
            .and_then(|d| match d {
                serde_json::Value::String(s) => humantime::parse_rfc3339_weak(&s).ok(),
                serde_json::Value::Number(n) => n.as_f64().and_then(expiry_from_epoch),
                _ => None,
            });
        Ok(Reply::Set(until))
    }
}

/// An `ExpirationDate` in seconds since the epoch; `None` (the expiry is
/// then taken as unknown) when negative, not a number or past what
/// `SystemTime` holds: it comes from outside.
fn expiry_from_epoch(secs: f64) -> Option<SystemTime> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
}

/// The agent's answer (`TaskProtectionResponse` in amazon-ecs-agent).
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    protection: Option<AgentProtection>,
    #[serde(default)]
    failure: Option<Failure>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Debug, Deserialize)]
/// The agent's `protection` object (the ECS `ProtectedTask` shape).
struct AgentProtection {
    #[serde(rename = "ExpirationDate", default)]
    expiration_date: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Failure {
    #[serde(rename = "Reason", default)]
    reason: Option<String>,
    #[serde(rename = "Detail", default)]
    detail: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: Option<String>,
    #[serde(rename = "Message", default)]
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_expiration_dates_are_unknown_not_a_panic() {
        for s in [-1.0, f64::NAN, f64::INFINITY, 1e30, f64::MAX] {
            assert_eq!(expiry_from_epoch(s), None, "{s}");
        }
        assert_eq!(
            expiry_from_epoch(60.0),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(60))
        );
    }

    #[test]
    fn the_path_is_appended_to_the_agent_uri() {
        let a = Agent::new("http://169.254.170.2/api/abc-123", Duration::from_secs(1)).unwrap();
        assert_eq!(
            a.url().to_string(),
            "http://169.254.170.2/api/abc-123/task-protection/v1/state"
        );
        let a = Agent::new("http://127.0.0.1:51678/api/x/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            a.url().to_string(),
            "http://127.0.0.1:51678/api/x/task-protection/v1/state"
        );
        assert!(Agent::new("https://169.254.170.2/api/x", Duration::from_secs(1)).is_err());
        assert!(Agent::new("not a url", Duration::from_secs(1)).is_err());
    }
}
