//! AWS Cloud Map discovery: one `DiscoverInstances` call per poll, turned into
//! socket addresses plus the per-instance limits the load balancer needs.
//!
//! The caller owns the poll loop and its backoff ([`crate::backoff::Backoff`]); the SDK client is
//! therefore configured with a short retry budget and a per-call timeout so the
//! two layers of retries do not multiply.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_servicediscovery::config::endpoint::Params as EndpointParams;
use aws_sdk_servicediscovery::error::SdkError;
use aws_sdk_servicediscovery::operation::discover_instances::DiscoverInstancesError;
use aws_sdk_servicediscovery::types::HealthStatusFilter;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::endpoint::{EndpointPrefix, EndpointResolverParams};
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;

use std::collections::BTreeSet;

use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;

use crate::backoff::Backoff;
use crate::balancer::Member;
use crate::config::{
    CloudMapConfig, HealthStatus, MAX_BACKEND_CONNECTIONS as MAX_CONNECTIONS, MAX_WEIGHT,
};

/// Attribute names Cloud Map (and ECS when it registers tasks) use.
pub const ATTR_IPV4: &str = "AWS_INSTANCE_IPV4";
pub const ATTR_IPV6: &str = "AWS_INSTANCE_IPV6";
pub const ATTR_PORT: &str = "AWS_INSTANCE_PORT";
pub const ATTR_CLUSTER: &str = "ECS_CLUSTER_NAME";
/// Custom attributes an operator may set on an instance.
pub const ATTR_WEIGHT: &str = "weight";
pub const ATTR_MAX_CONNECTIONS: &str = "max_connections";

/// DiscoverInstances' documented maximum. Without it AWS returns at most 100.
const MAX_RESULTS: i32 = 1000;

fn health_filter(status: HealthStatus) -> HealthStatusFilter {
    match status {
        HealthStatus::Healthy => HealthStatusFilter::Healthy,
        HealthStatus::Unhealthy => HealthStatusFilter::Unhealthy,
        HealthStatus::All => HealthStatusFilter::All,
        HealthStatus::HealthyOrElseAll => HealthStatusFilter::HealthyOrElseAll,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub addr: SocketAddr,
    /// `None` when the attribute is absent; always within `1..=MAX_WEIGHT`.
    pub weight: Option<usize>,
    /// `None` when the attribute is absent, `Some(0)` when the instance asked for
    /// no limit. Kept apart so a global default can still apply to instances
    /// that say nothing.
    pub max_connections: Option<usize>,
    /// `ECS_CLUSTER_NAME`, needed later to call ECS task protection.
    pub cluster: Option<String>,
}

/// Why one instance was skipped. Values are shown with `{:?}` because they come
/// from a remote registry and end up in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceError {
    pub instance_id: String,
    pub problem: InstanceProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceProblem {
    /// Neither `AWS_INSTANCE_IPV4` nor `AWS_INSTANCE_IPV6` is set.
    MissingAddress,
    /// No `AWS_INSTANCE_PORT` and the configured fallback port is 0.
    MissingPort,
    Invalid {
        attribute: &'static str,
        /// What the value should have been, e.g. "port".
        what: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for InstanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {:?}: ", self.instance_id)?;
        match &self.problem {
            InstanceProblem::MissingAddress => {
                write!(f, "no {ATTR_IPV4} or {ATTR_IPV6} attribute")
            }
            InstanceProblem::MissingPort => write!(
                f,
                "no {ATTR_PORT} attribute and no fallback port configured"
            ),
            InstanceProblem::Invalid {
                attribute,
                what,
                value,
                expected,
            } => write!(
                f,
                "attribute {attribute}: invalid {what} {value:?} (expected {expected})"
            ),
        }
    }
}

impl std::error::Error for InstanceError {}

/// Turns one Cloud Map instance into an [`Instance`].
///
/// An attribute that is present but empty counts as absent: Cloud Map accepts
/// empty values, and an empty IPv4 next to a valid IPv6 should not hide it.
pub fn parse_instance(
    id: &str,
    attributes: &HashMap<String, String>,
    fallback_port: u16,
) -> Result<Instance, InstanceError> {
    let get = |name: &str| {
        attributes
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let invalid = |attribute: &'static str, what, value: &str, expected| InstanceError {
        instance_id: id.to_owned(),
        problem: InstanceProblem::Invalid {
            attribute,
            what,
            value: value.to_owned(),
            expected,
        },
    };

    let ip: IpAddr = if let Some(v) = get(ATTR_IPV4) {
        v.parse::<Ipv4Addr>()
            .map_err(|_| invalid(ATTR_IPV4, "IPv4 address", v, "dotted quad"))?
            .into()
    } else if let Some(v) = get(ATTR_IPV6) {
        v.parse::<Ipv6Addr>()
            .map_err(|_| invalid(ATTR_IPV6, "IPv6 address", v, "an unbracketed IPv6 address"))?
            .into()
    } else {
        return Err(InstanceError {
            instance_id: id.to_owned(),
            problem: InstanceProblem::MissingAddress,
        });
    };

    let port = match get(ATTR_PORT) {
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(invalid(ATTR_PORT, "port", v, "1..=65535")),
        },
        None if fallback_port != 0 => fallback_port,
        None => {
            return Err(InstanceError {
                instance_id: id.to_owned(),
                problem: InstanceProblem::MissingPort,
            });
        }
    };

    let weight = match get(ATTR_WEIGHT) {
        Some(v) => match v.parse::<usize>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Some(w),
            _ => return Err(invalid(ATTR_WEIGHT, "weight", v, "1..=256")),
        },
        None => None,
    };

    let max_connections = match get(ATTR_MAX_CONNECTIONS) {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_CONNECTIONS => Some(n),
            _ => {
                return Err(invalid(
                    ATTR_MAX_CONNECTIONS,
                    "max_connections",
                    v,
                    "0..=1000000, 0 = unlimited",
                ))
            }
        },
        None => None,
    };

    Ok(Instance {
        id: id.to_owned(),
        addr: SocketAddr::new(ip, port),
        weight,
        max_connections,
        cluster: get(ATTR_CLUSTER).map(str::to_owned),
    })
}

/// The result of one poll. Skipped instances are reported rather than failing
/// the whole poll, so one mis-registered task cannot take the others out.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub instances: Vec<Instance>,
    pub skipped: Vec<InstanceError>,
}

#[derive(Debug)]
pub struct DiscoverError {
    namespace: String,
    service: String,
    source: SdkError<DiscoverInstancesError, HttpResponse>,
}

impl DiscoverError {
    /// The SDK error, for callers that want to classify it (e.g. throttling).
    pub fn sdk_error(&self) -> &SdkError<DiscoverInstancesError, HttpResponse> {
        &self.source
    }
}

impl fmt::Display for DiscoverError {
    /// `{}` uses the SDK's `DisplayErrorContext`: the cause chain followed by a
    /// Debug dump of the error, which for service errors includes the raw HTTP
    /// response. `{:#}` prints the cause chain only, for one-line logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cloud Map DiscoverInstances (namespace {:?}, service {:?}): ",
            self.namespace, self.service
        )?;
        // The SDK's own Display is just "dispatch failure" / "service error";
        // the cause is only visible by walking the chain.
        if !f.alternate() {
            return write!(f, "{}", DisplayErrorContext(&self.source));
        }
        let mut err: &dyn std::error::Error = &self.source;
        write!(f, "{err}")?;
        while let Some(cause) = err.source() {
            write!(f, ": {cause}")?;
            err = cause;
        }
        Ok(())
    }
}

// No `source()`: Display already contains the whole chain, and returning it here
// too would make chain-walking loggers print every cause twice.
impl std::error::Error for DiscoverError {}

#[derive(Debug, Clone)]
pub struct CloudMapClient {
    client: aws_sdk_servicediscovery::Client,
    settings: CloudMapConfig,
}

impl CloudMapClient {
    /// Credentials and region from aws-config's default chain (env, profile,
    /// ECS container credentials, IMDS).
    pub async fn new(settings: CloudMapConfig, timeout: Duration) -> Self {
        Self::with_loader(
            settings,
            timeout,
            aws_config::defaults(BehaviorVersion::latest()),
        )
        .await
    }

    /// Like [`CloudMapClient::new`], starting from a caller-supplied loader, so
    /// tests can inject credentials without touching the process environment.
    pub async fn with_loader(
        settings: CloudMapConfig,
        timeout: Duration,
        loader: aws_config::ConfigLoader,
    ) -> Self {
        let sdk_config = crate::aws::load(
            loader,
            timeout,
            settings.region.as_deref(),
            settings.endpoint.as_deref(),
        )
        .await;
        // The interceptor decides per call whether a custom endpoint is in effect,
        // which covers settings.endpoint, AWS_ENDPOINT_URL_SERVICEDISCOVERY,
        // AWS_ENDPOINT_URL and profile `endpoint_url` alike without re-implementing
        // the SDK's precedence rules here.
        let config = aws_sdk_servicediscovery::config::Builder::from(&sdk_config)
            .interceptor(NoHostPrefixForCustomEndpoint)
            .build();
        Self {
            client: aws_sdk_servicediscovery::Client::from_conf(config),
            settings,
        }
    }

    pub async fn discover(&self) -> Result<Discovered, DiscoverError> {
        let s = &self.settings;
        let query_parameters = (!s.query_parameters.is_empty()).then(|| {
            s.query_parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>()
        });
        let output = self
            .client
            .discover_instances()
            .namespace_name(s.namespace.get())
            .service_name(s.service.get())
            .max_results(MAX_RESULTS)
            .health_status(health_filter(s.health_status))
            .set_query_parameters(query_parameters)
            .send()
            .await
            .map_err(|source| DiscoverError {
                namespace: s.namespace.get().to_string(),
                service: s.service.get().to_string(),
                source,
            })?;

        let empty = HashMap::new();
        let mut found = Discovered::default();
        for summary in output.instances() {
            let id = summary.instance_id().unwrap_or_default();
            let attributes = summary.attributes().unwrap_or(&empty);
            match parse_instance(id, attributes, s.port) {
                Ok(instance) => found.instances.push(instance),
                Err(e) => found.skipped.push(e),
            }
        }
        Ok(found)
    }
}

/// DiscoverInstances is modelled with the host prefix `data-`, which is right for
/// `servicediscovery.<region>.amazonaws.com` but turns `127.0.0.1` into
/// `data-127.0.0.1` for a local or proxied endpoint. The operation stores the
/// prefix in `read_before_execution`, after client interceptors have run that
/// hook, and the endpoint is resolved after `read_before_attempt`, so this is the
/// first hook where unsetting it sticks.
#[derive(Debug)]
pub struct NoHostPrefixForCustomEndpoint;

impl Intercept for NoHostPrefixForCustomEndpoint {
    fn name(&self) -> &'static str {
        "NoHostPrefixForCustomEndpoint"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let custom_endpoint = cfg
            .load::<EndpointResolverParams>()
            .and_then(|p| p.get::<EndpointParams>())
            .and_then(EndpointParams::endpoint)
            .is_some();
        if custom_endpoint {
            cfg.interceptor_state().unset::<EndpointPrefix>();
        }
        Ok(())
    }
}

/// Cloud Map as a Pingora `ServiceDiscovery` source.
///
/// Pingora calls `discover` every `refresh`. A failed call makes the next
/// ones fail fast (keeping the previous backends, which Pingora does on
/// `Err`) until a backoff delay has passed, so a throttled or unreachable API
/// is not hammered; the failure is logged once when it starts and once when
/// it ends.
pub struct CloudMapDiscovery {
    settings: CloudMapConfig,
    client: tokio::sync::OnceCell<CloudMapClient>,
    state: parking_lot::Mutex<PollState>,
}

struct PollState {
    backoff: Backoff,
    /// While failing: when the next real call may go out, and how many
    /// calls failed so far.
    retry_at: Option<std::time::Instant>,
    failures: u64,
    /// Instance problems already warned about, so a mis-registered task is
    /// reported once, not every refresh.
    warned: std::collections::HashSet<String>,
}

impl CloudMapDiscovery {
    pub fn new(settings: CloudMapConfig) -> Self {
        let refresh = settings.refresh.get();
        Self {
            settings,
            client: tokio::sync::OnceCell::new(),
            state: parking_lot::Mutex::new(PollState {
                backoff: Backoff::new(
                    refresh,
                    refresh.saturating_mul(12).max(Duration::from_secs(60)),
                ),
                retry_at: None,
                failures: 0,
                warned: Default::default(),
            }),
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, PollState> {
        self.state.lock()
    }

    /// One call's budget: at most the refresh period, at most 10 s.
    fn timeout(&self) -> Duration {
        self.settings
            .refresh
            .get()
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    fn member(&self, instance: &Instance) -> Member {
        Member {
            addr: instance.addr,
            weight: instance.weight.unwrap_or(self.settings.weight.get()),
            max_connections: instance
                .max_connections
                .unwrap_or(self.settings.max_connections.get()),
            source: instance.id.clone(),
            // ECS service discovery registers each task under its task id.
            task: Some(crate::balancer::TaskRef {
                id: instance.id.clone(),
                cluster: instance.cluster.clone(),
            }),
        }
    }

    fn failed(&self, why: String) -> pingora_core::BError {
        let mut st = self.state();
        st.failures += 1;
        let delay = st.backoff.next_delay();
        let now = std::time::Instant::now();
        st.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        if st.failures == 1 {
            log::warn!(
                "Cloud Map discovery failing, keeping the last known backends; retrying with backoff: {why}"
            );
        }
        pingora_core::Error::explain(pingora_core::ErrorType::InternalError, why)
    }
}

#[async_trait::async_trait]
impl ServiceDiscovery for CloudMapDiscovery {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backing_off = self
            .state()
            .retry_at
            .is_some_and(|at| std::time::Instant::now() < at);
        if backing_off {
            return Err(pingora_core::Error::explain(
                pingora_core::ErrorType::InternalError,
                "Cloud Map discovery backing off after an error",
            ));
        }
        let timeout = self.timeout();
        let client = self
            .client
            .get_or_init(|| CloudMapClient::new(self.settings.clone(), timeout))
            .await;
        let found = match client.discover().await {
            Ok(found) => found,
            Err(e) => return Err(self.failed(format!("{e:#}"))),
        };
        let mut st = self.state();
        if st.failures > 0 {
            log::info!(
                "Cloud Map discovery recovered after {} failed call(s): {} instance(s)",
                st.failures,
                found.instances.len()
            );
        }
        st.failures = 0;
        st.retry_at = None;
        st.backoff.reset();
        for problem in &found.skipped {
            let text = problem.to_string();
            if st.warned.insert(text.clone()) {
                log::warn!("Cloud Map: skipping {text}");
            }
        }
        let backends = found
            .instances
            .iter()
            .map(|i| super::backend(self.member(i), None))
            .collect();
        Ok((backends, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn invalid_attribute(err: &InstanceError) -> &'static str {
        match &err.problem {
            InstanceProblem::Invalid { attribute, .. } => attribute,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn ipv4_with_port() {
        let i = parse_instance(
            "i-1",
            &attrs(&[
                (ATTR_IPV4, "10.0.0.5"),
                (ATTR_PORT, "1935"),
                (ATTR_CLUSTER, "prod"),
            ]),
            9999,
        )
        .unwrap();
        assert_eq!(i.id, "i-1");
        assert_eq!(i.addr, "10.0.0.5:1935".parse().unwrap());
        assert_eq!(i.weight, None);
        assert_eq!(i.max_connections, None);
        assert_eq!(i.cluster.as_deref(), Some("prod"));
    }

    #[test]
    fn ipv6_when_no_ipv4() {
        let i = parse_instance(
            "i-6",
            &attrs(&[(ATTR_IPV6, "2001:db8::7"), (ATTR_PORT, "1936")]),
            1,
        )
        .unwrap();
        assert_eq!(i.addr, "[2001:db8::7]:1936".parse().unwrap());
    }

    #[test]
    fn ipv4_preferred_and_empty_counts_as_absent() {
        let both = attrs(&[(ATTR_IPV4, "10.0.0.1"), (ATTR_IPV6, "::1")]);
        assert!(parse_instance("a", &both, 80).unwrap().addr.is_ipv4());
        let empty_v4 = attrs(&[(ATTR_IPV4, ""), (ATTR_IPV6, "::1")]);
        assert!(parse_instance("b", &empty_v4, 80).unwrap().addr.is_ipv6());
    }

    #[test]
    fn missing_address() {
        let err = parse_instance("i-1", &attrs(&[(ATTR_PORT, "1935")]), 1935).unwrap_err();
        assert_eq!(err.problem, InstanceProblem::MissingAddress);
        assert_eq!(
            err.to_string(),
            r#"instance "i-1": no AWS_INSTANCE_IPV4 or AWS_INSTANCE_IPV6 attribute"#
        );
    }

    #[test]
    fn bad_ips() {
        let err = parse_instance("i-1", &attrs(&[(ATTR_IPV4, "10.0.0.256")]), 1935).unwrap_err();
        assert_eq!(invalid_attribute(&err), ATTR_IPV4);
        assert!(err.to_string().contains(r#""10.0.0.256""#), "{err}");
        // An IPv6 literal in the IPv4 attribute is a registration bug, not a fallback.
        let err = parse_instance("i-1", &attrs(&[(ATTR_IPV4, "::1")]), 1935).unwrap_err();
        assert_eq!(invalid_attribute(&err), ATTR_IPV4);
        let err = parse_instance("i-2", &attrs(&[(ATTR_IPV6, "[::1]")]), 1935).unwrap_err();
        assert_eq!(invalid_attribute(&err), ATTR_IPV6);
    }

    #[test]
    fn bad_port() {
        for bad in ["70000", "0", "-1", "19x", " 1935"] {
            let err = parse_instance(
                "i-1",
                &attrs(&[(ATTR_IPV4, "10.0.0.1"), (ATTR_PORT, bad)]),
                1935,
            )
            .unwrap_err();
            assert_eq!(invalid_attribute(&err), ATTR_PORT, "{bad}");
        }
        let err = parse_instance(
            "i-1",
            &attrs(&[(ATTR_IPV4, "10.0.0.1"), (ATTR_PORT, "70000")]),
            1935,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"instance "i-1": attribute AWS_INSTANCE_PORT: invalid port "70000" (expected 1..=65535)"#
        );
    }

    #[test]
    fn port_fallback() {
        let i = parse_instance("i-1", &attrs(&[(ATTR_IPV4, "10.0.0.1")]), 1935).unwrap();
        assert_eq!(i.addr.port(), 1935);
        let err = parse_instance("i-1", &attrs(&[(ATTR_IPV4, "10.0.0.1")]), 0).unwrap_err();
        assert_eq!(err.problem, InstanceProblem::MissingPort);
    }

    #[test]
    fn weight() {
        let base = [(ATTR_IPV4, "10.0.0.1")];
        let with = |w: &str| {
            let mut a = attrs(&base);
            a.insert(ATTR_WEIGHT.into(), w.into());
            parse_instance("i-1", &a, 1935)
        };
        assert_eq!(with("1").unwrap().weight, Some(1));
        assert_eq!(with("256").unwrap().weight, Some(256));
        for bad in ["heavy", "0", "257", "-3", "1.5"] {
            let err = with(bad).unwrap_err();
            assert_eq!(invalid_attribute(&err), ATTR_WEIGHT, "{bad}");
        }
        assert_eq!(
            with("heavy").unwrap_err().to_string(),
            r#"instance "i-1": attribute weight: invalid weight "heavy" (expected 1..=256)"#
        );
    }

    #[test]
    fn max_connections() {
        let with = |m: &str| {
            parse_instance(
                "i-1",
                &attrs(&[(ATTR_IPV4, "10.0.0.1"), (ATTR_MAX_CONNECTIONS, m)]),
                1935,
            )
        };
        let unlimited = with("0").unwrap();
        assert_eq!(unlimited.max_connections, Some(0));
        assert_eq!(with("3").unwrap().max_connections, Some(3));
        let absent = parse_instance("i-1", &attrs(&[(ATTR_IPV4, "10.0.0.1")]), 1).unwrap();
        assert_eq!(absent.max_connections, None);
        assert!(with("1000000").is_ok());
        assert!(with("1000001").is_err());
        let err = with("lots").unwrap_err();
        assert_eq!(invalid_attribute(&err), ATTR_MAX_CONNECTIONS);
    }

    #[test]
    fn control_characters_are_escaped_in_errors() {
        let err = parse_instance("i\n1", &attrs(&[(ATTR_IPV4, "1.2.3.4\n")]), 1).unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    /// Records the URI of the first request and aborts it before transmission,
    /// so the endpoint can be checked without any network traffic.
    #[derive(Debug, Default, Clone)]
    struct CaptureUri(std::sync::Arc<parking_lot::Mutex<Option<String>>>);

    impl Intercept for CaptureUri {
        fn name(&self) -> &'static str {
            "CaptureUri"
        }

        fn read_before_transmit(
            &self,
            context: &BeforeTransmitInterceptorContextRef<'_>,
            _runtime_components: &RuntimeComponents,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            *self.0.lock() = Some(context.request().uri().to_owned());
            Err("captured; not sending".into())
        }
    }

    async fn discover_uri(endpoint: Option<&str>) -> String {
        let mut yaml = "namespace: ns\nservice: svc\nregion: eu-west-1\n".to_string();
        if let Some(e) = endpoint {
            yaml.push_str(&format!("endpoint: {e}\n"));
        }
        let settings: CloudMapConfig = serde_yaml::from_str(&yaml).unwrap();
        let credentials =
            aws_sdk_servicediscovery::config::Credentials::new("k", "s", None, None, "test");
        let loader =
            aws_config::defaults(BehaviorVersion::latest()).credentials_provider(credentials);
        let client = CloudMapClient::with_loader(settings, Duration::from_secs(5), loader).await;
        let capture = CaptureUri::default();
        let config = client
            .client
            .config()
            .to_builder()
            .interceptor(capture.clone())
            .build();
        let probe = aws_sdk_servicediscovery::Client::from_conf(config);
        let result = probe
            .discover_instances()
            .namespace_name("ns")
            .service_name("svc")
            .send()
            .await;
        assert!(
            result.is_err(),
            "the capture interceptor must stop the request"
        );
        let uri = capture.0.lock().clone();
        uri.expect("no request was built")
    }

    #[tokio::test]
    async fn host_prefix_removed_only_for_custom_endpoint() {
        // Env vars could change the endpoint under this test; it would then
        // fail loudly rather than pass by accident.
        assert_eq!(
            discover_uri(None).await,
            "https://data-servicediscovery.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            discover_uri(Some("http://127.0.0.1:4566")).await,
            "http://127.0.0.1:4566/"
        );
    }
}
