//! The image's config (`deploy/rtmp-proxy.yaml`) agrees with the Fargate
//! service (`deploy/service.yaml`), and the container entrypoint
//! (`deploy/entrypoint.sh`) applies its environment overrides to a config the
//! real binary accepts.

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
    assert_eq!(tg["HealthCheckPath"].as_str(), Some("/health"));
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
    let t = service();
    let task = resource_of_type(&t, "AWS::ECS::TaskDefinition");
    let env = serde_yaml::to_string(&task["Properties"]["ContainerDefinitions"][0]["Environment"])
        .unwrap();
    for name in [
        "RTMP_PROXY_CLOUD_MAP_NAMESPACE",
        "RTMP_PROXY_CLOUD_MAP_SERVICE",
        "RTMP_PROXY_CLOUD_MAP_REGION",
        "RTMP_PROXY_SCALE_IN_PROTECTION",
        "RTMP_PROXY_SCALE_IN_PROTECTION_CLUSTER",
        "RTMP_PROXY_SLOTS_STORE",
        "RTMP_PROXY_SLOTS_REDIS_URL",
    ] {
        assert!(env.contains(name), "task definition does not set {name}");
        let marker = format!("# env {name}\n");
        assert!(
            read("deploy/rtmp-proxy.yaml").contains(&marker),
            "deploy/rtmp-proxy.yaml has no `{marker}`"
        );
    }
}
