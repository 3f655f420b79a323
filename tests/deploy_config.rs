//! The image's config (`deploy/rtmp-proxy.yaml`) agrees with the Fargate
//! service (`deploy/service.yaml`), and the container entrypoint
//! (`deploy/entrypoint.sh`) applies its environment overrides to a config the
//! real binary accepts.
//!
//! Conditional parts of the template (TLS listener, PROXY v2, the Redis
//! secret) are checked on the template as CloudFormation would render it
//! for given parameters: [`render`] evaluates `Conditions`, `Fn::If`,
//! parameter `Ref`s and `AWS::NoValue`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn service() -> Value {
    serde_yaml::from_str(&read("deploy/service.yaml")).unwrap()
}

fn resource_of_type<'a>(t: &'a Value, ty: &str) -> &'a Value {
    let found: Vec<&Value> = t["Resources"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|r| r["Type"].as_str() == Some(ty))
        .collect();
    assert_eq!(found.len(), 1, "expected one {ty}");
    found[0]
}

fn port(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn deploy_config_fits_the_fargate_service() {
    let proxy = rtmp_proxy::config::parse(&read("deploy/rtmp-proxy.yaml"))
        .unwrap_or_else(|e| panic!("deploy/rtmp-proxy.yaml:{e}"));
    let t = service();
    let task = resource_of_type(&t, "AWS::ECS::TaskDefinition");
    let container = &task["Properties"]["ContainerDefinitions"][0];
    let stop_timeout = container["StopTimeout"].as_u64().expect("StopTimeout");
    assert!(stop_timeout <= 120, "Fargate allows at most 120 s");

    // After SIGTERM the proxy accepts for drain_delay, then drains for up
    // to drain_timeout; it must be done (and have cut what is left itself)
    // before ECS's SIGKILL, with a margin for closing and exiting.
    let drain = proxy.drain_delay.get() + proxy.drain_timeout.get();
    assert!(
        drain + Duration::from_secs(10) <= Duration::from_secs(stop_timeout),
        "drain_delay + drain_timeout = {drain:?} leaves under 10 s before StopTimeout {stop_timeout} s"
    );

    // The admin API stays inside the task.
    assert!(
        proxy.admin_listen.starts_with("127.0.0.1:"),
        "{}",
        proxy.admin_listen
    );
    let cm = proxy
        .backends
        .cloud_map
        .as_ref()
        .expect("cloud_map backends");
    assert!(
        cm.region.is_none(),
        "region must follow the task (AWS_REGION) unless overridden"
    );

    // Ports: the listeners, the container's mappings and the NLB agree.
    let mapped: Vec<u64> = container["PortMappings"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["ContainerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(mapped, [port(&proxy.listen), port(&proxy.health_listen)]);
    let tg = &resource_of_type(&t, "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"];
    assert_eq!(tg["Port"].as_u64(), Some(port(&proxy.listen)));
    assert_eq!(
        tg["HealthCheckPort"].as_str(),
        Some(port(&proxy.health_listen).to_string().as_str())
    );
    // The proxy's own readiness (GET /health), over HTTP, 200 only.
    assert_eq!(tg["HealthCheckProtocol"].as_str(), Some("HTTP"));
    assert_eq!(tg["HealthCheckPath"].as_str(), Some("/health"));
    assert_eq!(tg["Matcher"]["HttpCode"].as_str(), Some("200"));
    let attr = |k: &str| -> Value {
        tg["TargetGroupAttributes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|a| a["Key"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("target group attribute {k}"))["Value"]
            .clone()
    };
    // The NLB must never cut streams itself: the proxy's drain decides.
    assert_eq!(
        attr("deregistration_delay.connection_termination.enabled"),
        Value::from("false")
    );
    assert_eq!(
        attr("target_health_state.unhealthy.connection_termination.enabled"),
        Value::from("false")
    );

    // A deployment never lowers the running count.
    let svc = &resource_of_type(&t, "AWS::ECS::Service")["Properties"];
    let dc = &svc["DeploymentConfiguration"];
    assert_eq!(dc["MinimumHealthyPercent"].as_u64(), Some(100));
    assert_eq!(dc["MaximumPercent"].as_u64(), Some(200));
}

/// Runs the entrypoint with the real binary and `-t` (check the config and
/// exit), a config copied to a temporary directory and `env` set.
fn entrypoint(dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let config = dir.join("rtmp-proxy.yaml");
    if !config.exists() {
        std::fs::copy(repo("deploy/rtmp-proxy.yaml"), &config).unwrap();
    }
    let mut cmd = Command::new("sh");
    cmd.arg(repo("deploy/entrypoint.sh"))
        .arg("-t")
        .env_remove("RTMP_PROXY_CLOUD_MAP_NAMESPACE")
        .env_remove("RTMP_PROXY_CLOUD_MAP_SERVICE")
        .env_remove("RTMP_PROXY_CLOUD_MAP_REGION")
        .env("RTMP_PROXY_CONFIG", &config)
        .env("RTMP_PROXY_RENDERED_CONFIG", dir.join("rendered.yaml"))
        .env("RTMP_PROXY_BIN", env!("CARGO_BIN_EXE_rtmp-proxy"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn entrypoint_uses_the_baked_config_as_is_without_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let out = entrypoint(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rtmp-proxy.yaml: configuration OK"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dir.path().join("rendered.yaml").exists());
}

#[test]
fn entrypoint_applies_cloud_map_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let out = entrypoint(
        dir.path(),
        &[
            ("RTMP_PROXY_CLOUD_MAP_NAMESPACE", "prod.media.internal"),
            ("RTMP_PROXY_CLOUD_MAP_SERVICE", "nginx-rtmp_2"),
            ("RTMP_PROXY_CLOUD_MAP_REGION", "eu-west-1"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = dir.path().join("rendered.yaml");
    assert!(text(&out.stdout).contains(&format!("{}: configuration OK", rendered.display())));
    let proxy = rtmp_proxy::config::parse(&std::fs::read_to_string(&rendered).unwrap()).unwrap();
    let cm = proxy.backends.cloud_map.unwrap();
    assert_eq!(
        (cm.namespace.get(), cm.service.get(), cm.region.as_deref()),
        ("prod.media.internal", "nginx-rtmp_2", Some("eu-west-1"))
    );
    // Nothing else changed.
    let base = rtmp_proxy::config::parse(&read("deploy/rtmp-proxy.yaml")).unwrap();
    assert_eq!(
        (proxy.drain_delay, proxy.drain_timeout),
        (base.drain_delay, base.drain_timeout)
    );
    assert_eq!(proxy.listen, base.listen);
}

#[test]
fn entrypoint_refuses_values_that_could_change_the_yaml() {
    for bad in ["a b", "x\"y", "n: 1", "ns\nservice: evil", "$(id)"] {
        let dir = tempfile::tempdir().unwrap();
        let out = entrypoint(dir.path(), &[("RTMP_PROXY_CLOUD_MAP_SERVICE", bad)]);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{bad:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("only letters, digits"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn entrypoint_refuses_an_override_its_config_has_no_marker_for() {
    let dir = tempfile::tempdir().unwrap();
    let without =
        read("deploy/rtmp-proxy.yaml").replace("  # env RTMP_PROXY_CLOUD_MAP_SERVICE", "");
    std::fs::write(dir.path().join("rtmp-proxy.yaml"), without).unwrap();
    let out = entrypoint(dir.path(), &[("RTMP_PROXY_CLOUD_MAP_SERVICE", "other")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("has 0 lines ending in '# env RTMP_PROXY_CLOUD_MAP_SERVICE'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn entrypoint_applies_protection_and_redis_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let url = "redis://:p&ss@10.0.0.5:6379/0";
    let out = entrypoint(
        dir.path(),
        &[
            ("RTMP_PROXY_SCALE_IN_PROTECTION", "true"),
            ("RTMP_PROXY_SCALE_IN_PROTECTION_CLUSTER", "media"),
            ("RTMP_PROXY_SLOTS_STORE", "redis"),
            ("RTMP_PROXY_SLOTS_REDIS_URL", url),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = dir.path().join("rendered.yaml");
    let proxy = rtmp_proxy::config::parse(&std::fs::read_to_string(&rendered).unwrap()).unwrap();
    assert!(proxy.scale_in_protection.enabled);
    assert_eq!(proxy.scale_in_protection.cluster, "media");
    assert_eq!(proxy.slots.store, rtmp_proxy::config::SlotStore::Redis);
    assert_eq!(proxy.slots.url.as_deref(), Some(url));
    // The URL may carry a password: the copy is the user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rendered).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "rendered config mode {mode:o}");

    let base = rtmp_proxy::config::parse(&read("deploy/rtmp-proxy.yaml")).unwrap();
    assert!(
        !base.scale_in_protection.enabled,
        "off unless ScaleInProtection says so"
    );
    assert_eq!(base.slots.store, rtmp_proxy::config::SlotStore::Local);

    for (k, bad) in [
        ("RTMP_PROXY_SCALE_IN_PROTECTION", "yes"),
        ("RTMP_PROXY_SLOTS_REDIS_URL", "redis://h:1/0\"\nproxy: {}"),
        ("RTMP_PROXY_SLOTS_REDIS_URL", "redis://a b"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = entrypoint(dir.path(), &[(k, bad)]);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{k}={bad:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn service_passes_protection_and_redis_to_the_container() {
    // Every optional parameter set, so that every variable is there.
    let t = render(&[
        ("CloudMapRegion", "eu-west-1"),
        ("MediaClusterName", "media"),
        (
            "RedisUrlSecretArn",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:r-AbCdEf",
        ),
        ("TlsCertificateArn", CERT),
    ]);
    let c = container(&t);
    let names: Vec<String> = env(c).into_keys().chain(secrets(c).into_keys()).collect();
    for name in [
        "RTMP_PROXY_CLOUD_MAP_NAMESPACE",
        "RTMP_PROXY_CLOUD_MAP_SERVICE",
        "RTMP_PROXY_CLOUD_MAP_REGION",
        "RTMP_PROXY_SCALE_IN_PROTECTION",
        "RTMP_PROXY_SCALE_IN_PROTECTION_CLUSTER",
        "RTMP_PROXY_SLOTS_STORE",
        "RTMP_PROXY_SLOTS_REDIS_URL",
        "RTMP_PROXY_ACCEPT_PROXY_MODE",
        "RTMP_PROXY_ACCEPT_PROXY_TRUSTED",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "task definition does not set {name}"
        );
    }
    // Each one the entrypoint must write into the config has its marker.
    for name in names.iter().filter(|n| *n != "RUST_LOG") {
        let marker = format!("# env {name}\n");
        assert!(
            read("deploy/rtmp-proxy.yaml").contains(&marker),
            "deploy/rtmp-proxy.yaml has no `{marker}`"
        );
    }
}

/// `service.yaml` as CloudFormation renders it with these parameters (the
/// others at their defaults, or left as `Ref`s): conditions evaluated,
/// `Fn::If` resolved, `AWS::NoValue` and resources whose condition is false
/// removed, parameters substituted for their `Ref`s.
fn render(params: &[(&str, &str)]) -> Value {
    let t = service();
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    for (name, p) in t["Parameters"].as_mapping().unwrap() {
        if let Some(default) = p.get("Default") {
            values.insert(name.as_str().unwrap().to_string(), default.clone());
        }
    }
    // The required ones the conditions and tests look at.
    values.insert("VpcCidr".into(), "10.0.0.0/16".into());
    for (k, v) in params {
        assert!(
            t["Parameters"].get(*k).is_some(),
            "service.yaml has no parameter {k}"
        );
        values.insert(k.to_string(), Value::from(*v));
    }
    let mut r = Render {
        template: &t,
        params: values,
        conds: BTreeMap::new(),
    };
    let names: Vec<String> = t["Conditions"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for name in names {
        let truth = r.condition(&name);
        r.conds.insert(name, truth);
    }
    let mut out = r.value(&t).expect("the template itself");
    // Resources under a false condition do not exist.
    let resources = out["Resources"].as_mapping_mut().unwrap();
    resources.retain(
        |_, res| match res.get("Condition").and_then(Value::as_str) {
            Some(c) => r.conds[c],
            None => true,
        },
    );
    out
}

struct Render<'a> {
    template: &'a Value,
    params: BTreeMap<String, Value>,
    conds: BTreeMap<String, bool>,
}

impl Render<'_> {
    fn condition(&self, name: &str) -> bool {
        if let Some(&c) = self.conds.get(name) {
            return c;
        }
        let def = &self.template["Conditions"][name];
        assert!(!def.is_null(), "no condition {name}");
        self.truth(def)
    }

    fn truth(&self, v: &Value) -> bool {
        let (op, args) = single(v).unwrap_or_else(|| panic!("condition {v:?}"));
        let list = || {
            args.as_sequence()
                .unwrap_or_else(|| panic!("{op} takes a list"))
        };
        match op {
            "Fn::Equals" => {
                let l = list();
                assert_eq!(l.len(), 2, "Fn::Equals takes two values");
                self.value(&l[0]) == self.value(&l[1])
            }
            "Fn::Not" => !self.truth(&list()[0]),
            "Fn::And" => list().iter().all(|c| self.truth(c)),
            "Fn::Or" => list().iter().any(|c| self.truth(c)),
            "Condition" => self.condition(args.as_str().unwrap()),
            other => panic!("condition function {other} not understood"),
        }
    }

    /// `None`: `AWS::NoValue`, i.e. nothing.
    fn value(&self, v: &Value) -> Option<Value> {
        if let Some((op, args)) = single(v) {
            match op {
                "Fn::If" => {
                    let a = args.as_sequence().expect("Fn::If takes a list");
                    assert_eq!(a.len(), 3, "Fn::If takes [condition, then, else]");
                    let c = self.conds[a[0].as_str().expect("Fn::If condition name")];
                    return self.value(&a[if c { 1 } else { 2 }]);
                }
                "Ref" if args.as_str() == Some("AWS::NoValue") => return None,
                "Ref" => {
                    if let Some(p) = args.as_str().and_then(|p| self.params.get(p)) {
                        return Some(p.clone());
                    }
                }
                _ => {}
            }
        }
        Some(match v {
            Value::Sequence(s) => s.iter().filter_map(|v| self.value(v)).collect(),
            Value::Mapping(m) => Value::Mapping(
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.value(v)?)))
                    .collect(),
            ),
            other => other.clone(),
        })
    }
}

/// The only key of a one-key mapping and its value (an intrinsic function).
fn single(v: &Value) -> Option<(&str, &Value)> {
    let m = v.as_mapping()?;
    if m.len() != 1 {
        return None;
    }
    let (k, v) = m.iter().next()?;
    Some((k.as_str()?, v))
}

/// The rtmp-proxy container of the task definition.
fn container(t: &Value) -> &Value {
    &resource_of_type(t, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"][0]
}

/// A list of `{Name, <field>}` as a map.
fn named(list: &Value, field: &str) -> BTreeMap<String, Value> {
    list.as_sequence()
        .map(|l| {
            l.iter()
                .map(|e| (e["Name"].as_str().unwrap().to_string(), e[field].clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn env(container: &Value) -> BTreeMap<String, Value> {
    named(&container["Environment"], "Value")
}

fn secrets(container: &Value) -> BTreeMap<String, Value> {
    named(&container["Secrets"], "ValueFrom")
}

fn resources_of_type<'a>(t: &'a Value, ty: &str) -> Vec<&'a Value> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|r| r["Type"].as_str() == Some(ty))
        .collect()
}

fn tg_attribute(t: &Value, key: &str) -> Value {
    let tg = resource_of_type(t, "AWS::ElasticLoadBalancingV2::TargetGroup");
    tg["Properties"]["TargetGroupAttributes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|a| a["Key"].as_str() == Some(key))
        .unwrap_or_else(|| panic!("target group attribute {key}"))["Value"]
        .clone()
}

/// The NLB's listeners by port: (protocol, certificate ARNs, target).
fn listeners(t: &Value) -> BTreeMap<u64, (String, Vec<Value>, Value)> {
    resources_of_type(t, "AWS::ElasticLoadBalancingV2::Listener")
        .into_iter()
        .map(|l| {
            let p = &l["Properties"];
            let certs = p["Certificates"]
                .as_sequence()
                .map(|c| c.iter().map(|c| c["CertificateArn"].clone()).collect())
                .unwrap_or_default();
            let actions = p["DefaultActions"].as_sequence().unwrap();
            assert_eq!(actions.len(), 1);
            assert_eq!(actions[0]["Type"].as_str(), Some("forward"));
            (
                p["Port"].as_u64().unwrap(),
                (
                    p["Protocol"].as_str().unwrap().to_string(),
                    certs,
                    actions[0]["TargetGroupArn"].clone(),
                ),
            )
        })
        .collect()
}

const CERT: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/0b5e1c2d-1111-2222-3333-444455556666";

#[test]
fn tls_listener_and_proxy_protocol_exist_exactly_with_a_certificate() {
    let target: Value = serde_yaml::from_str("Ref: TargetGroup").unwrap();

    // Without a certificate: the plain listener only, no PROXY protocol,
    // publishers' addresses preserved and filtered by ClientCidr.
    let plain = render(&[("ClientCidr", "192.0.2.0/24")]);
    assert_eq!(
        listeners(&plain),
        BTreeMap::from([(1935, ("TCP".to_string(), vec![], target.clone()))])
    );
    assert_eq!(tg_attribute(&plain, "proxy_protocol_v2.enabled"), "false");
    assert_eq!(tg_attribute(&plain, "preserve_client_ip.enabled"), "true");
    let env_plain = env(container(&plain));
    assert!(!env_plain.contains_key("RTMP_PROXY_ACCEPT_PROXY_MODE"));
    assert!(!env_plain.contains_key("RTMP_PROXY_ACCEPT_PROXY_TRUSTED"));
    assert_eq!(rtmp_ingress(&plain), "192.0.2.0/24");
    let base = rtmp_proxy::config::parse(&read("deploy/rtmp-proxy.yaml")).unwrap();
    assert_eq!(
        base.accept_proxy.mode,
        rtmp_proxy::config::ProxyMode::Off,
        "the image's config must not expect PROXY headers by default"
    );

    // With one: TLS on 443 to the same target group, which sends PROXY v2
    // on both listeners; the proxy requires it from the VPC only.
    let tls = render(&[("TlsCertificateArn", CERT)]);
    assert_eq!(
        listeners(&tls),
        BTreeMap::from([
            (1935, ("TCP".to_string(), vec![], target.clone())),
            (443, ("TLS".to_string(), vec![Value::from(CERT)], target)),
        ])
    );
    assert_eq!(tg_attribute(&tls, "proxy_protocol_v2.enabled"), "true");
    assert_eq!(
        tg_attribute(&tls, "preserve_client_ip.enabled"),
        "false",
        "with preservation the source is the publisher, which accept_proxy.trusted (the VPC) refuses"
    );
    // The health check is the same /health: the health port skips the
    // header the NLB then sends on its checks (tests/health.rs).
    let tg = &resource_of_type(&tls, "AWS::ElasticLoadBalancingV2::TargetGroup")["Properties"];
    assert_eq!(tg["HealthCheckPath"].as_str(), Some("/health"));
    assert_eq!(rtmp_ingress(&tls), "10.0.0.0/16");
    let env_tls = env(container(&tls));
    assert_eq!(env_tls["RTMP_PROXY_ACCEPT_PROXY_MODE"], "v2");
    assert_eq!(env_tls["RTMP_PROXY_ACCEPT_PROXY_TRUSTED"], "10.0.0.0/16");

    // ... which the entrypoint turns into a config the binary accepts.
    let dir = tempfile::tempdir().unwrap();
    let out = entrypoint(
        dir.path(),
        &[
            ("RTMP_PROXY_ACCEPT_PROXY_MODE", "v2"),
            ("RTMP_PROXY_ACCEPT_PROXY_TRUSTED", "10.0.0.0/16"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = std::fs::read_to_string(dir.path().join("rendered.yaml")).unwrap();
    let proxy = rtmp_proxy::config::parse(&rendered).unwrap();
    assert_eq!(proxy.accept_proxy.mode, rtmp_proxy::config::ProxyMode::V2);
    let trusted: Vec<String> = proxy
        .accept_proxy
        .trusted
        .iter()
        .map(|c| c.0.to_string())
        .collect();
    assert_eq!(trusted, ["10.0.0.0/16"]);
}

/// Where the tasks' security group admits RTMP on 1935 from.
fn rtmp_ingress(t: &Value) -> String {
    let sg = resource_of_type(t, "AWS::EC2::SecurityGroup");
    let rules: Vec<&Value> = sg["Properties"]["SecurityGroupIngress"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| r["FromPort"].as_u64() == Some(1935))
        .collect();
    assert_eq!(rules.len(), 1);
    rules[0]["CidrIp"].as_str().unwrap().to_string()
}

#[test]
fn tls_refuses_a_client_cidr_the_tasks_could_not_enforce() {
    // The rule's condition and assertion, evaluated like the rest.
    let rule = |params: &[(&str, &str)]| -> bool {
        let t = render(params);
        let rule = &t["Rules"]["TlsNeedsOpenClientCidr"];
        let r = Render {
            template: &t,
            params: BTreeMap::new(),
            conds: BTreeMap::new(),
        };
        !r.truth(&rule["RuleCondition"])
            || rule["Assertions"]
                .as_sequence()
                .unwrap()
                .iter()
                .all(|a| r.truth(&a["Assert"]))
    };
    assert!(rule(&[]));
    assert!(rule(&[("ClientCidr", "192.0.2.0/24")]));
    assert!(rule(&[("TlsCertificateArn", CERT)]));
    assert!(!rule(&[
        ("TlsCertificateArn", CERT),
        ("ClientCidr", "192.0.2.0/24")
    ]));
}

#[test]
fn the_redis_url_comes_from_secrets_manager_not_the_environment() {
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rtmp-proxy/redis-AbCdEf";
    let with = render(&[("RedisUrlSecretArn", arn)]);
    let c = container(&with);
    assert_eq!(
        secrets(c),
        BTreeMap::from([("RTMP_PROXY_SLOTS_REDIS_URL".to_string(), Value::from(arn))])
    );
    let env_with = env(c);
    assert_eq!(env_with["RTMP_PROXY_SLOTS_STORE"], "redis");
    assert!(
        !env_with.contains_key("RTMP_PROXY_SLOTS_REDIS_URL"),
        "the Redis URL must not be in Environment"
    );
    // Nowhere in the environment, whatever the conditions.
    let raw = serde_yaml::to_string(
        &resource_of_type(&service(), "AWS::ECS::TaskDefinition")["Properties"]
            ["ContainerDefinitions"][0]["Environment"],
    )
    .unwrap();
    assert!(!raw.contains("REDIS_URL"), "{raw}");
    assert!(service()["Parameters"].get("RedisUrl").is_none());

    let without = render(&[]);
    let c = container(&without);
    assert!(secrets(c).is_empty());
    assert!(!env(c).contains_key("RTMP_PROXY_SLOTS_STORE"));
    // A value with the password the entrypoint takes from that variable.
    assert!(read("deploy/entrypoint.sh").contains("RTMP_PROXY_SLOTS_REDIS_URL:url"));
}

#[test]
fn entrypoint_applies_accept_proxy_overrides_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = entrypoint(
        dir.path(),
        &[
            ("RTMP_PROXY_ACCEPT_PROXY_MODE", "any"),
            (
                "RTMP_PROXY_ACCEPT_PROXY_TRUSTED",
                "10.0.0.0/16,192.0.2.7,2001:db8::/32",
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = std::fs::read_to_string(dir.path().join("rendered.yaml")).unwrap();
    let proxy = rtmp_proxy::config::parse(&rendered).unwrap();
    assert_eq!(proxy.accept_proxy.mode, rtmp_proxy::config::ProxyMode::Any);
    assert_eq!(proxy.accept_proxy.trusted.len(), 3);

    for (k, bad) in [
        ("RTMP_PROXY_ACCEPT_PROXY_MODE", "v3"),
        ("RTMP_PROXY_ACCEPT_PROXY_MODE", "\"v2\""),
        ("RTMP_PROXY_ACCEPT_PROXY_TRUSTED", "10.0.0.0/16]\nproxy: {}"),
        (
            "RTMP_PROXY_ACCEPT_PROXY_TRUSTED",
            "10.0.0.0/16, 10.1.0.0/16",
        ),
        ("RTMP_PROXY_ACCEPT_PROXY_TRUSTED", ",10.0.0.0/16"),
        (
            "RTMP_PROXY_ACCEPT_PROXY_TRUSTED",
            "10.0.0.0/16,,10.1.0.0/16",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = entrypoint(dir.path(), &[(k, bad)]);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{k}={bad:?}: {}",
            text(&out.stderr)
        );
    }
    // A CIDR of the right characters but wrong is the binary's to refuse.
    let dir = tempfile::tempdir().unwrap();
    let out = entrypoint(
        dir.path(),
        &[
            ("RTMP_PROXY_ACCEPT_PROXY_MODE", "v2"),
            ("RTMP_PROXY_ACCEPT_PROXY_TRUSTED", "10.0.0.0/33"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("invalid CIDR") || text(&out.stderr).contains("invalid CIDR")
    );
}
