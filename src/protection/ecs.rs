//! The two ways to set task protection: the ECS API for the media servers'
//! tasks (`UpdateTaskProtection`, several tasks a call) and the ECS agent
//! endpoint for this proxy's own task. Both report failures the same way,
//! so the caller logs and counts them alike.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};

use super::outcome::{outcome_of_code, CallError, Outcome};

/// What ECS answered to one `UpdateTaskProtection`.
#[derive(Debug, Default)]
pub struct Answer {
    /// Task id and the expiry ECS set (none when disabled).
    pub protected: Vec<(String, Option<SystemTime>)>,
    /// Task id, reason (`MISSING`, `TASK_NOT_VALID`, ...) and detail.
    pub failures: Vec<(String, String)>,
}

/// The task id in an ECS task ARN (`arn:aws:ecs:r:a:task/cluster/id`, or
/// the older `task/id`); an id stays as it is.
pub fn task_id(arn_or_id: &str) -> &str {
    arn_or_id.rsplit('/').next().unwrap_or(arn_or_id)
}

/// The ECS API client: the SDK's default chain for credentials and region,
/// `AWS_ENDPOINT_URL_ECS` or the configured endpoint for where.
#[derive(Debug, Clone)]
pub struct EcsApi {
    client: aws_sdk_ecs::Client,
}

impl EcsApi {
    pub async fn new(endpoint: Option<&str>, region: Option<&str>, timeout: Duration) -> Self {
        let loader = aws_config::defaults(BehaviorVersion::latest());
        let sdk_config = crate::aws::load(loader, timeout, region, endpoint).await;
        Self {
            client: aws_sdk_ecs::Client::new(&sdk_config),
        }
    }

    /// `UpdateTaskProtection` for up to 10 tasks of one cluster.
    pub async fn update(
        &self,
        cluster: &str,
        tasks: &[String],
        enabled: bool,
        expires_in_minutes: i32,
    ) -> Result<Answer, CallError> {
        let mut call = self
            .client
            .update_task_protection()
            .cluster(cluster)
            .set_tasks(Some(tasks.to_vec()))
            .protection_enabled(enabled);
        if enabled {
            call = call.expires_in_minutes(expires_in_minutes);
        }
        let output = call.send().await.map_err(|e| {
            let outcome = match &e {
                SdkError::ServiceError(_) => outcome_of_code(e.code()),
                _ => Outcome::Error,
            };
            CallError {
                outcome,
                message: format!(
                    "UpdateTaskProtection (cluster {cluster:?}, {} task(s)): {}",
                    tasks.len(),
                    one_line(&e)
                ),
            }
        })?;
        let mut answer = Answer::default();
        for t in output.protected_tasks() {
            let Some(arn) = t.task_arn() else { continue };
            let until = t
                .expiration_date()
                .and_then(|d| SystemTime::try_from(*d).ok())
                .filter(|_| t.protection_enabled());
            answer.protected.push((task_id(arn).to_string(), until));
        }
        for f in output.failures() {
            let id = task_id(f.arn().unwrap_or_default()).to_string();
            let mut reason = f.reason().unwrap_or("unknown").to_string();
            if let Some(detail) = f.detail() {
                reason = format!("{reason} ({detail})");
            }
            answer.failures.push((id, reason));
        }
        Ok(answer)
    }
}

/// The SDK error's code and message on one line (its own Display says only
/// "service error"), else its cause chain (e.g. "dispatch failure: io error:
/// ... Connection refused").
fn one_line<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => crate::aws::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_and_codes() {
        assert_eq!(
            task_id("arn:aws:ecs:us-east-1:123456789012:task/media/0123abcd"),
            "0123abcd"
        );
        assert_eq!(task_id("0123abcd"), "0123abcd");
        assert_eq!(
            outcome_of_code(Some("ThrottlingException")),
            Outcome::Throttled
        );
        assert_eq!(
            outcome_of_code(Some("AccessDeniedException")),
            Outcome::AccessDenied
        );
        assert_eq!(outcome_of_code(Some("ServerException")), Outcome::Error);
        assert_eq!(outcome_of_code(None), Outcome::Error);
    }
}
