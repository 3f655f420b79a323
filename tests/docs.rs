//! The documents stay true to the code and to each other: every relative
//! link and `#anchor` in README.md and docs/*.md (and the alert rules'
//! `runbook_url`s) resolves, every close and reject reason has a row in the
//! troubleshooting table, every alert a runbook section, every metric the
//! code registers a row in docs/observability.md, and the README's commands
//! and example config are real. No binary, no network.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use rtmp_proxy::reason::Reason;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The alerts of `deploy/prometheus/alerts.yaml` that link to the runbook.
const ALERTS: &[&str] = &[
    "RtmpProxyFleetFull",
    "RtmpProxyMediaServerDown",
    "RtmpProxyRedisDegraded",
    "RtmpProxyCloudMapFailing",
    "RtmpProxyProtectionErrors",
    "RtmpProxyRejectionsHigh",
    "RtmpProxyDrainingTooLong",
];

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// README.md and every docs/*.md, as paths relative to the repository.
fn documents() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    docs.insert(0, "README.md".into());
    docs
}

/// The text outside fenced code blocks.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `prose` without inline code spans, which hold no links.
fn without_code_spans(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The anchor GitHub gives a heading: lowercase, punctuation dropped
/// (letters, digits, `-` and `_` stay), each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a Markdown file, a repeated heading getting `-1`, `-2`
/// as on GitHub.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for line in prose(markdown).lines() {
        let level = line.chars().take_while(|c| *c == '#').count();
        if level == 0 || level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[level..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = without_code_spans(&prose(markdown));
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_owned());
        rest = &rest[end..];
    }
    out
}

/// `base/relative`, with `..` and `.` resolved, as a path under the
/// repository.
fn resolve(base: &Path, relative: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in base.join(relative).components() {
        match part {
            Component::ParentDir => {
                assert!(out.pop(), "{relative} leaves the repository");
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Checks one link found in `from`: the file exists, and the anchor is a
/// heading of the Markdown file it names. Returns what is wrong.
fn check_link(from: &str, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        PathBuf::from(from)
    } else {
        let dir = Path::new(from).parent().unwrap_or(Path::new(""));
        resolve(dir, path)
    };
    let full = Path::new(ROOT).join(&file);
    if !full.exists() {
        return Some(format!(
            "{from}: link {target}: {} does not exist",
            file.display()
        ));
    }
    let anchor = anchor?;
    if file.extension().and_then(|e| e.to_str()) != Some("md") {
        return Some(format!(
            "{from}: link {target}: an anchor into a non-Markdown file"
        ));
    }
    let known = anchors(&std::fs::read_to_string(&full).unwrap_or_default());
    if known.contains(anchor) {
        None
    } else {
        Some(format!(
            "{from}: link {target}: no heading gives #{anchor} in {}",
            file.display()
        ))
    }
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        for target in link_targets(&read(&doc)) {
            checked += 1;
            broken.extend(check_link(&doc, &target));
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} links found");
}

/// The `runbook_url` of every rule in `deploy/prometheus/alerts.yaml`,
/// with the rule's alert name.
fn runbook_urls(yaml: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
    match yaml {
        serde_yaml::Value::Mapping(map) => {
            let url = map
                .get("annotations")
                .and_then(|a| a.get("runbook_url"))
                .and_then(|u| u.as_str());
            if let Some(url) = url {
                let alert = map.get("alert").and_then(|a| a.as_str()).unwrap_or("?");
                out.push((alert.to_owned(), url.to_owned()));
            }
            for value in map.values() {
                runbook_urls(value, out);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                runbook_urls(item, out);
            }
        }
        _ => {}
    }
}

/// The `### ` headings of docs/operations.md's "## Alert runbook".
fn runbook_sections() -> Vec<String> {
    let ops = read("docs/operations.md");
    let section = ops
        .split("\n## Alert runbook\n")
        .nth(1)
        .expect("docs/operations.md has an \"## Alert runbook\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_owned())
        .collect()
}

/// Every alert has its runbook section, and the rules' `runbook_url`s
/// (relative to the repository, or a web address of a file in it) land on
/// it; a section without an alert is stale.
#[test]
fn every_alert_has_a_runbook_section_its_url_reaches() {
    let sections = runbook_sections();
    for alert in ALERTS {
        assert!(
            sections.iter().any(|s| s == alert),
            "docs/operations.md's runbook has no \"### {alert}\""
        );
    }
    let rules = Path::new(ROOT).join("deploy/prometheus/alerts.yaml");
    if !rules.exists() {
        return;
    }
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts.yaml");
    let mut urls = Vec::new();
    runbook_urls(&yaml, &mut urls);
    assert!(!urls.is_empty(), "alerts.yaml has no runbook_url");
    let mut broken = Vec::new();
    for (alert, url) in &urls {
        // A web address of the repository's file: its path from docs/ on.
        let relative = match url.find("://") {
            Some(_) => match url.find("/docs/") {
                Some(at) => &url[at + 1..],
                None => {
                    broken.push(format!("{alert}: {url} does not point into docs/"));
                    continue;
                }
            },
            None => url.as_str(),
        };
        // Relative to the repository root, as the rules' comment says.
        broken.extend(check_link("alerts.yaml", relative));
        let anchor = relative.split_once('#').map_or("", |(_, a)| a);
        if anchor != alert.to_lowercase() {
            broken.push(format!("{alert}: {url} is not #{}", alert.to_lowercase()));
        }
    }
    assert!(broken.is_empty(), "runbook links:\n{}", broken.join("\n"));
    let alerts: BTreeSet<&str> = urls.iter().map(|(a, _)| a.as_str()).collect();
    let stale: Vec<&String> = sections
        .iter()
        .filter(|s| !alerts.contains(s.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "runbook sections without an alert: {stale:?}"
    );
}

/// The reasons in the first column of docs/operations.md's troubleshooting
/// tables.
fn troubleshooting_reasons() -> BTreeSet<String> {
    let ops = read("docs/operations.md");
    let section = ops
        .split("\n## Troubleshooting\n")
        .nth(1)
        .expect("docs/operations.md has a \"## Troubleshooting\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_reason_is_in_the_troubleshooting_table() {
    let documented = troubleshooting_reasons();
    let labels: BTreeSet<String> = Reason::ALL.iter().map(|r| r.label().to_owned()).collect();
    let missing: Vec<&String> = labels.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "reasons without a row in docs/operations.md#troubleshooting: {missing:?}"
    );
    let stale: Vec<&String> = documented.difference(&labels).collect();
    assert!(
        stale.is_empty(),
        "rows of docs/operations.md#troubleshooting that are no reason: {stale:?}"
    );
}

/// Every `rtmp_proxy_*` metric name in the source.
fn metric_names_in_source(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("src/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            metric_names_in_source(&path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for piece in text.split("\"rtmp_proxy_").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if piece[name.len()..].starts_with('"') {
                out.insert(format!("rtmp_proxy_{name}"));
            }
        }
    }
}

/// The metric names in the first column of docs/observability.md's
/// metrics table, with the row's type.
fn documented_metrics() -> HashMap<String, String> {
    let doc = read("docs/observability.md");
    let table = doc
        .split("| metric | type | labels | meaning |")
        .nth(1)
        .expect("docs/observability.md's metrics table");
    let table = table.split("\n\n").next().unwrap_or(table);
    table
        .lines()
        .filter(|l| l.starts_with("| `rtmp_proxy_"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let name = cells[0].trim_start_matches("| ").trim_matches('`');
            (name.to_owned(), cells[1].trim().to_owned())
        })
        .collect()
}

/// Every metric name the source registers is documented, and every
/// documented one is in the source (what the binary exposes is checked in
/// tests/observability.rs).
#[test]
fn every_metric_of_the_source_is_documented() {
    let mut source = BTreeSet::new();
    metric_names_in_source(&Path::new(ROOT).join("src"), &mut source);
    assert!(source.len() >= 20, "only {source:?} found in src/");
    let documented: BTreeSet<String> = documented_metrics().into_keys().collect();
    let missing: Vec<&String> = source.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "metrics without a row in docs/observability.md: {missing:?}"
    );
    let stale: Vec<&String> = documented.difference(&source).collect();
    assert!(
        stale.is_empty(),
        "rows of docs/observability.md that no code registers: {stale:?}"
    );
}

/// The README stays a front page: short, its first screen the commands for
/// a fresh machine (scripts that exist), its example config valid.
#[test]
fn the_readme_is_short_and_its_commands_and_config_are_real() {
    let readme = read("README.md");
    assert!(
        readme.len() <= 8 * 1024,
        "README.md is {} bytes",
        readme.len()
    );
    let first_screen: Vec<&str> = readme.lines().take(35).collect();
    for command in [
        "scripts/install-deps && scripts/demo",
        "scripts/install-deps && cargo run --release -- -c conf/rtmp-proxy.yaml",
        "scripts/test",
    ] {
        assert!(
            first_screen.contains(&command),
            "README.md's first screen lacks the line {command:?}"
        );
    }
    for script in ["scripts/install-deps", "scripts/demo", "scripts/test"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Path::new(ROOT).join(script))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    rtmp_proxy::config::parse(&read("conf/rtmp-proxy.yaml"))
        .unwrap_or_else(|e| panic!("conf/rtmp-proxy.yaml: {e}"));
    let example = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a YAML example");
    rtmp_proxy::config::parse(example)
        .unwrap_or_else(|e| panic!("README.md's example config: {e}\n{example}"));
}

#[test]
fn anchors_are_computed_as_github_does() {
    let doc = "# A\n## RTMPS and the publisher's address\n## ECS / Fargate task replacement\n\
               ## `GET /health` (public)\n```\n# not a heading\n```\n## A\n";
    let found = anchors(doc);
    for want in [
        "a",
        "rtmps-and-the-publishers-address",
        "ecs--fargate-task-replacement",
        "get-health-public",
        "a-1",
    ] {
        assert!(found.contains(want), "{want} not in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}
