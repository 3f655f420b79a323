//! What Cloud Map discovery and ECS scale-in protection share about the
//! AWS SDK: one way to load its config, and one way to print its errors.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{ConfigLoader, SdkConfig};

/// One SDK retry absorbs a stale pooled connection; anything longer-lived
/// is the caller's backoff's business.
const SDK_MAX_ATTEMPTS: u32 = 2;
const SDK_INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The SDK config from `loader` (credentials and region from the default
/// chain unless given), each call bounded by `timeout`, with the region
/// and endpoint overrides of our config.
pub async fn load(
    loader: ConfigLoader,
    timeout: Duration,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> SdkConfig {
    let mut loader = loader
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(SDK_MAX_ATTEMPTS)
                .with_initial_backoff(SDK_INITIAL_BACKOFF),
        )
        .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// An error and its causes on one line: the SDK's and hyper-util's own
/// Display ("service error", "client error (Connect)") hide why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut err = e;
    while let Some(cause) = err.source() {
        text.push_str(&format!(": {cause}"));
        err = cause;
    }
    text
}
