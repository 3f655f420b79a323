//! `rtmp-proxy -t` rejects config values that would panic or misbehave at
//! run time, naming the key (and the line where there is one), without a
//! panic.

mod common;

use common::run_binary;

/// Runs `-t` on `yaml` and returns the output of a clean rejection.
fn rejected(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let (code, out) = run_binary(&["-t", "-c", path.to_str().unwrap()]);
    assert!(
        code != 0 && code != 70 && code != 101 && !out.contains("panicked"),
        "expected a clean rejection (exit {code}) of:\n{yaml}\n{out}"
    );
    out
}

fn assert_names(yaml: &str, wanted: &str) {
    let out = rejected(yaml);
    assert!(out.contains(wanted), "wanted {wanted:?} in:\n{out}");
}

#[test]
fn huge_durations_are_rejected() {
    for (key, body) in [
        ("connect_timeout", "  connect_timeout: {}"),
        ("idle_timeout", "  idle_timeout: {}"),
        ("queue_timeout", "  queue_timeout: {}"),
        ("access_log_interval", "  access_log_interval: {}"),
        ("drain_delay", "  drain_delay: {}"),
        ("drain_timeout", "  drain_timeout: {}"),
        ("handshake_timeout", "  handshake_timeout: {}"),
        ("stall_timeout", "  stall_timeout: {}"),
        ("health_check.interval", "  health_check:\n    interval: {}"),
        ("health_check.timeout", "  health_check:\n    timeout: {}"),
        ("slots.lease", "  slots:\n    lease: {}"),
        (
            "backends.cloud_map.refresh",
            "  backends:\n    cloud_map:\n      namespace: n\n      service: s\n      refresh: {}",
        ),
        (
            "scale_in_protection.release_after",
            "  scale_in_protection:\n    release_after: {}",
        ),
        (
            "scale_in_protection.renew_every",
            "  scale_in_protection:\n    renew_every: {}",
        ),
    ] {
        let yaml = format!("proxy:\n{}\n", body.replace("{}", "100000000000s"));
        let line = yaml.lines().count();
        assert_names(&yaml, &format!(":{line}: proxy.{key}: "));
    }
}

#[test]
fn values_that_make_no_sense_are_rejected() {
    for (yaml, wanted) in [
        ("proxy:\n  connect_timeout: 0s\n", ":2: proxy.connect_timeout: "),
        ("proxy:\n  idle_timeout: 0s\n", ":2: proxy.idle_timeout: "),
        (
            "proxy:\n  access_log_interval: 0s\n",
            ":2: proxy.access_log_interval: ",
        ),
        ("proxy:\n  handshake_timeout: 0s\n", ":2: proxy.handshake_timeout: "),
        (
            "proxy:\n  health_check:\n    interval: 0s\n",
            ":3: proxy.health_check.interval: ",
        ),
        (
            "proxy:\n  health_check:\n    timeout: 0s\n",
            ":3: proxy.health_check.timeout: ",
        ),
        (
            "proxy:\n  listen: 127.0.0.1:19350\n  health_listen: 127.0.0.1:19350\n",
            "proxy.health_listen: 127.0.0.1:19350 overlaps proxy.listen",
        ),
        (
            "proxy:\n  listen: 0.0.0.0:19351\n  admin_listen: 127.0.0.1:19351\n",
            "proxy.admin_listen: 127.0.0.1:19351 overlaps proxy.listen",
        ),
        ("threads: 100000\nproxy: {}\n", ":1: threads: 100000 out of range"),
        ("thread: 4\nproxy: {}\n", ":1: thread: unknown top-level key"),
        (
            "proxy:\n  backends:\n    static:\n      - addr: 127.0.0.1:1\n      - addr: 127.0.0.1:1\n",
            "proxy.backends.static[1].addr: 127.0.0.1:1 is listed twice (also proxy.backends.static[0])",
        ),
        ("proxy:\n  max_queue: 100000000000\n", ":2: proxy.max_queue: "),
        (
            "proxy:\n  backends:\n    static:\n      - addr: 127.0.0.1:1\n        max_connections: 100000000000\n",
            ":5: proxy.backends.static[0].max_connections: ",
        ),
    ] {
        assert_names(yaml, wanted);
    }
}

#[test]
fn an_endless_file_is_cut_off() {
    let (code, out) = run_binary(&["-t", "-c", "/dev/zero"]);
    assert!(
        code != 0 && code != 70 && !out.contains("panicked"),
        "exit {code}: {out}"
    );
    assert!(
        out.contains("/dev/zero: config file larger than 1024 KiB"),
        "{out}"
    );
}
