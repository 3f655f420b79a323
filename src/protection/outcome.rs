//! How a protection call ended, for both ways of making one (the ECS API,
//! [`super::ecs`], and the ECS agent, [`super::agent`]), so the caller logs
//! and counts them alike.

use std::fmt;

/// How one call ended, as counted in
/// `rtmp_proxy_scale_in_protection_calls_total{result}`. Bounded on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every task in the call was updated.
    Ok,
    /// The call succeeded but ECS refused some tasks (`failures` in the
    /// answer: a stopped task, one outside a service).
    TaskFailure,
    Throttled,
    AccessDenied,
    /// Anything else: another service error, a timeout, no connection.
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::TaskFailure => "task_failure",
            Outcome::Throttled => "throttled",
            Outcome::AccessDenied => "access_denied",
            Outcome::Error => "error",
        }
    }
}

/// A call that did not go through.
#[derive(Debug, Clone)]
pub struct CallError {
    /// `Throttled`, `AccessDenied` or `Error`.
    pub outcome: Outcome,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Error codes AWS uses for throttling (the ECS model has none of its own:
/// `ThrottlingException` arrives unmodelled).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// Classifies an error code from the API or the agent.
pub fn outcome_of_code(code: Option<&str>) -> Outcome {
    match code {
        Some(c) if THROTTLING_CODES.contains(&c) => Outcome::Throttled,
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => {
            Outcome::AccessDenied
        }
        _ => Outcome::Error,
    }
}
