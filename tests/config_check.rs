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

/// The README's configuration table and the code's defaults agree: for
/// every key whose stated default is a value (one `code` span), a file
/// setting the key to that value parses to the same configuration as a file
/// without it. Keys whose default is prose (`unset`, `required`, "half of
/// `expires`") or another key (`connect_timeout`) are skipped.
#[test]
fn the_readme_states_the_defaults_of_the_code() {
    use rtmp_proxy::config::parse;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .and_then(|rest| rest.split("**Bounds.**").next())
        .expect("README's configuration reference");
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| `proxy."))
        .collect();
    // A default that names another key (`connect_timeout`) is a reference.
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.split('`').nth(1)?.rsplit('.').next())
        .collect();
    let mut checked = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let default = cells[1];
        let is_value = default.len() > 2
            && default.starts_with('`')
            && default.ends_with('`')
            && default.matches('`').count() == 2;
        if !is_value {
            continue;
        }
        let value = default.trim_matches('`');
        if names.contains(&value) {
            continue;
        }
        let (base, with) = yaml_with(key, value);
        let base_config = parse(&base).unwrap_or_else(|e| panic!("{key}: {base}\n{e}"));
        let stated = parse(&with).unwrap_or_else(|e| panic!("{key}: {with}\n{e}"));
        assert_eq!(
            stated, base_config,
            "README.md says {key} defaults to {default}, the code disagrees"
        );
        checked.push(key);
    }
    // Most keys have a value as default; a parse of the table that found
    // none would prove nothing.
    assert!(checked.len() >= 30, "only {checked:?} checked");
}

/// A config without `key`, and one with `key: value`, in the smallest
/// context the key needs.
fn yaml_with(key: &str, value: &str) -> (String, String) {
    if let Some(field) = key.strip_prefix("proxy.backends.static[].") {
        let base = "proxy:\n  backends:\n    static:\n      - addr: \"127.0.0.1:1\"\n";
        return (base.into(), format!("{base}        {field}: {value}\n"));
    }
    if let Some(field) = key.strip_prefix("proxy.backends.cloud_map.") {
        let base = "proxy:\n  backends:\n    cloud_map:\n      namespace: n\n      service: s\n";
        return (base.into(), format!("{base}      {field}: {value}\n"));
    }
    let path: Vec<&str> = key.trim_end_matches("[]").split('.').collect();
    let mut with = String::new();
    for (depth, part) in path.iter().enumerate() {
        let indent = "  ".repeat(depth);
        if depth + 1 == path.len() {
            with.push_str(&format!("{indent}{part}: {value}\n"));
        } else {
            with.push_str(&format!("{indent}{part}:\n"));
        }
    }
    ("proxy: {}\n".into(), with)
}
