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

/// docs/configuration.md's key table and the code's defaults agree: for
/// every key whose stated default is a value (one `code` span), a file
/// setting the key to that value parses to the same configuration as a file
/// without it. Keys whose default is prose (`unset`, `required`, "half of
/// `expires`") or another key (`connect_timeout`) are skipped.
#[test]
fn the_configuration_doc_states_the_defaults_of_the_code() {
    use rtmp_proxy::config::parse;
    let section = key_table();
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
            "docs/configuration.md says {key} defaults to {default}, the code disagrees"
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

/// docs/configuration.md's table of keys: from its header row to the
/// next section.
fn key_table() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    doc.split("| key | default | meaning |")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/configuration.md's table of keys")
        .to_owned()
}

/// The keys docs/configuration.md's table lists, each with its meaning.
fn documented_keys() -> Vec<(String, String)> {
    key_table()
        .lines()
        .filter(|l| l.starts_with("| `proxy."))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            (
                key.to_owned(),
                cells.get(2).copied().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The fields the parser accepts at `path` under `proxy:` (a part ending
/// in `[]` is a list of such maps), or `None` when `path` is not a map of
/// fields. Asked of the parser itself: a map with an unknown key is refused
/// with serde's list of the fields it expected.
fn fields_at(path: &[String]) -> Option<Vec<String>> {
    const PROBE: &str = "zz_probe";
    let mut yaml = format!("{{{PROBE}: 1}}");
    for part in path.iter().rev() {
        yaml = match part.strip_suffix("[]") {
            Some(name) => format!("{{{name}: [{yaml}]}}"),
            None => format!("{{{part}: {yaml}}}"),
        };
    }
    let error = rtmp_proxy::config::parse(&format!("proxy: {yaml}\n"))
        .err()?
        .to_string();
    let expected = error
        .split(&format!("unknown field `{PROBE}`, expected"))
        .nth(1)?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key the code reads under `proxy:`, as the table writes them
/// (`proxy.backends.static[].addr`): the values, and the lists of maps
/// themselves (`proxy.tls[]`). `sections` gets the maps of fields too.
fn code_keys(path: &[String], keys: &mut Vec<String>, sections: &mut Vec<String>) {
    let dotted = |p: &[String]| format!("proxy.{}", p.join("."));
    let fields = fields_at(path).unwrap_or_else(|| panic!("{} is not a section", dotted(path)));
    assert!(!fields.is_empty(), "no fields found at {}", dotted(path));
    for field in fields {
        let mut here = path.to_vec();
        here.push(field.clone());
        if fields_at(&here).is_some() {
            sections.push(dotted(&here));
            code_keys(&here, keys, sections);
            continue;
        }
        let mut list = path.to_vec();
        list.push(format!("{field}[]"));
        if fields_at(&list).is_some() {
            keys.push(dotted(&list));
            code_keys(&list, keys, sections);
        } else {
            keys.push(dotted(&here));
        }
    }
}

/// Every key the code reads is in docs/configuration.md's table, and every
/// key there is one the code reads. A key inside a section whose row says
/// "As `proxy.x`" (`proxy.tls[].accept_proxy`) is documented by
/// `proxy.x`'s rows.
#[test]
fn the_configuration_doc_lists_every_key_of_the_code() {
    let (mut keys, mut sections) = (Vec::new(), Vec::new());
    code_keys(&[], &mut keys, &mut sections);
    // A walk that found little would prove nothing.
    assert!(keys.len() >= 50, "only {keys:?} found");
    let documented = documented_keys();
    let is_documented = |key: &str| {
        documented.iter().any(|(k, meaning)| {
            if k == key {
                return true;
            }
            // "As `proxy.accept_proxy`, for this listener."
            let Some(rest) = key.strip_prefix(&format!("{k}.")) else {
                return false;
            };
            let Some(like) = meaning
                .strip_prefix("As `")
                .and_then(|m| m.split('`').next())
            else {
                return false;
            };
            let target = format!("{like}.{rest}");
            documented.iter().any(|(k, _)| *k == target)
        })
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !is_documented(k)).collect();
    assert!(
        missing.is_empty(),
        "keys the code reads but docs/configuration.md does not list: {missing:?}"
    );
    let stale: Vec<&String> = documented
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !keys.contains(k) && !sections.contains(k))
        .collect();
    assert!(
        stale.is_empty(),
        "keys docs/configuration.md lists but the code does not read: {stale:?}"
    );
}
