//! The operator kit against the real thing: Debian's Prometheus scrapes a
//! proxy's admin `/metrics` while ffmpeg publishes through it to nginx-rtmp,
//! with `deploy/prometheus/alerts.yaml` loaded as its rules.
//!
//! - `promtool check rules` accepts the shipped rules;
//! - every PromQL expression of `deploy/grafana/rtmp-proxy.json` (dashboard
//!   variables substituted) and every alert expression is accepted by
//!   Prometheus's query API, and names only metrics the scrape has: a
//!   renamed or misspelt metric fails here;
//! - with the fleet full (one server, `max_connections: 1`) and a second
//!   publisher waiting in the queue, `RtmpProxyFleetFull` fires, and no
//!   alert about a healthy part does;
//! - after SIGTERM the drain gauge shows the drain.
//!
//! Prometheus runs in a temp dir on a loopback port (1 s scrape and rule
//! evaluation); its copy of the rules has every `for:` set to `0s`, so an
//! alert fires at the first evaluation that finds it true (the shipped
//! `for:` values are minutes). Every process is the test's child and killed
//! on drop; every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::ecs::AgentDouble;
use common::media::{Nginx, Publisher};
use common::*;

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const DASHBOARD: &str = "deploy/grafana/rtmp-proxy.json";
const JOB: &str = "rtmp-proxy";

/// The alerts docs/operations.md has a runbook section for.
const ALERT_NAMES: [&str; 7] = [
    "RtmpProxyFleetFull",
    "RtmpProxyMediaServerDown",
    "RtmpProxyRedisDegraded",
    "RtmpProxyCloudMapFailing",
    "RtmpProxyProtectionErrors",
    "RtmpProxyRejectionsHigh",
    "RtmpProxyDrainingTooLong",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---------------------------------------------------------------- PromQL

/// Aggregation operators: a name followed by `by`/`without` is not a metric.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers (`{...}`) and ranges (`[...]`) that are not a
/// function call, an aggregation, a keyword, or a label in `by (...)` and
/// the like.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Index just past the string literal opening at `i`.
    let skip_string = |i: usize| {
        let quote = s[i];
        let mut j = i + 1;
        while j < s.len() && s[j] != quote {
            j += if s[j] == '\\' && quote != '`' { 2 } else { 1 };
        }
        j + 1
    };
    // Index just past the `close` matching the opener at `i`, strings skipped.
    let skip_to = |i: usize, close: char| {
        let mut j = i + 1;
        while j < s.len() && s[j] != close {
            j = if matches!(s[j], '"' | '\'' | '`') {
                skip_string(j)
            } else {
                j + 1
            };
        }
        j + 1
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '#' {
            i = skip_to(i, '\n');
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, durations (5m), hex, exponents.
            while i < s.len() && (word_char(s[i]) || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && word_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut next = i;
            while next < s.len() && s[next].is_whitespace() {
                next += 1;
            }
            let call = s.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if call {
                    i = skip_to(next, ')');
                }
            } else if !call
                && !KEYWORDS.contains(&lower.as_str())
                && !AGGREGATIONS.contains(&lower.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_labels_and_keywords() {
    let expr = r#"histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{job=~"x|y",le!="+Inf"}[5m:30s])))
        / on (job) group_left (instance) max without (backend) (b offset 1h) > bool 1e3
        or time() - (c:recorded > 0) unless count(d{reason="queue_full"}) * 8 and ignoring(x) e[1m] @ start()"#;
    let want: BTreeSet<String> = ["a_bucket", "b", "c:recorded", "d", "e"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(metric_names(expr), want);
    assert_eq!(metric_names("vector(0) or sum(x) by (y)").len(), 1);
}

/// Grafana's variables in a panel's query, replaced as Grafana would for
/// one scrape job and a one-minute rate window.
fn substitute(expr: &str) -> String {
    let mut q = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("${__rate_interval}", "1m"),
        ("$__interval", "1m"),
        ("${__interval}", "1m"),
        ("$__range", "1m"),
        ("${job}", ".+"),
        ("$job", ".+"),
    ] {
        q = q.replace(var, value);
    }
    assert!(!q.contains('$'), "an unknown variable in {expr}");
    q
}

// ------------------------------------------------------- the shipped files

/// Every `expr` in the dashboard, with where it is, and the query variables.
struct Dashboard {
    exprs: Vec<(String, String)>,
    variable_queries: Vec<String>,
}

fn collect_exprs(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(Value::String(e)) = m.get("expr") {
                let at = format!("panel \"{title}\" {}", m["refId"].as_str().unwrap_or("?"));
                out.push((at, e.clone()));
            }
            for (k, child) in m {
                if k != "templating" {
                    collect_exprs(child, title, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, title, out)),
        _ => {}
    }
}

/// Reads the dashboard and checks what Grafana needs to import it.
fn dashboard() -> Dashboard {
    let text = std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard");
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );
    assert!(d["title"].is_string() && d["uid"].is_string());
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().expect("its name"));
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64());
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("panel title");
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
    let mut exprs = Vec::new();
    collect_exprs(&Value::Array(panels.clone()), "", &mut exprs);
    let variable_queries = vars
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            assert_eq!(v["datasource"]["uid"], ds_ref.as_str());
            v["definition"].as_str().expect("definition").to_string()
        })
        .collect();
    Dashboard {
        exprs,
        variable_queries,
    }
}

/// The expression of the first target of the panel titled `title`.
fn panel_expr(d: &Dashboard, title: &str) -> String {
    let at = format!("panel \"{title}\" A");
    let (_, e) = d
        .exprs
        .iter()
        .find(|(a, _)| *a == at)
        .unwrap_or_else(|| panic!("no panel {title}"));
    substitute(e)
}

/// The rules file, checked: one group, the seven alerts, their runbooks.
fn alert_rules() -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo(ALERTS)).expect("read the alerts");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let groups = rules["groups"].as_sequence().expect("groups");
    assert_eq!(groups.len(), 1, "one group");
    let names: Vec<&str> = groups[0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().expect("an alerting rule");
            assert!(r["expr"].as_str().is_some(), "{name}: expr");
            assert_eq!(
                r["annotations"]["runbook_url"].as_str(),
                Some(format!("docs/operations.md#{}", name.to_lowercase()).as_str()),
                "{name}: runbook_url"
            );
            name
        })
        .collect();
    let mut want = ALERT_NAMES.to_vec();
    let mut got = names.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    rules
}

/// The rules with every `for:` at 0 s, for Prometheus's copy.
fn without_for(mut rules: serde_yaml::Value) -> String {
    for group in rules["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            if let Some(m) = rule.as_mapping_mut() {
                m.insert("for".into(), "0s".into());
            }
        }
    }
    serde_yaml::to_string(&rules).expect("YAML")
}

/// Runs a command to completion within `limit`.
async fn run(cmd: &str, args: &[&str], limit: Duration) -> std::process::Output {
    let run = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/install-deps installs prometheus)"))
}

// ------------------------------------------------------------- Prometheus

/// A Prometheus server on a loopback port scraping `/metrics` of one
/// target every second, killed on drop.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    async fn start(target: SocketAddr, rules: &str) -> Prometheus {
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("prometheus dir");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let rules_path = dir.path().join("alerts.yaml");
            std::fs::write(&rules_path, rules).expect("write rules");
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules_path.display()
            );
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, config).expect("write prometheus.yml");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn prometheus (scripts/install-deps installs it)");
            let mut prom = Prometheus { child, dir, addr };
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(30), || {
                exited = matches!(prom.child.try_wait(), Ok(Some(_)));
                exited || get(prom.addr, "/-/ready").is_ok_and(|(s, _)| s == 200)
            })
            .await;
            if exited && prom.log().contains("address already in use") {
                continue;
            }
            assert!(
                ready && !exited,
                "prometheus did not come up:\n{}",
                prom.log()
            );
            return prom;
        }
        panic!("prometheus found its port taken in three tries");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` of the HTTP API as JSON (the whole answer).
    fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status} {e}: {body}"))
    }

    /// An instant query's whole answer; status is checked by the caller.
    fn query(&self, promql: &str) -> Value {
        let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        self.api(&format!("/api/v1/query?query={q}"))
    }

    /// The values of an instant vector query (empty on an error).
    fn values(&self, promql: &str) -> Vec<f64> {
        let answer = self.query(promql);
        answer["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Metric names in the TSDB, i.e. in the scrape.
    fn names(&self) -> BTreeSet<String> {
        let answer = self.api("/api/v1/label/__name__/values");
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect()
    }

    /// Alert name to state (`pending`, `firing`) of the active alerts.
    fn alerts(&self) -> Vec<(String, String)> {
        let answer = self.api("/api/v1/alerts");
        answer["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                        (s(&x["labels"]["alertname"]), s(&x["state"]))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `promql` has a value satisfying `ok`.
    async fn wait_value(&self, promql: &str, ok: impl Fn(f64) -> bool) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.values(promql).into_iter().any(&ok)
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP/1.0 GET (so Go answers without chunked encoding); (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {raw:?}")))?;
    Ok((status, body.to_string()))
}

/// Every expression is accepted by Prometheus and names only metrics the
/// scrape has; returns the failures, one line each.
fn check_queries(prom: &Prometheus, exprs: &[(String, String)]) -> Vec<String> {
    let names = prom.names();
    let mut failures = Vec::new();
    for (at, expr) in exprs {
        let q = substitute(expr);
        let used = metric_names(&q);
        if used.is_empty() {
            failures.push(format!("{at}: no metric in {q}"));
        }
        for name in used.iter().filter(|n| !names.contains(*n)) {
            failures.push(format!("{at}: no metric {name} in the scrape ({q})"));
        }
        let answer = prom.query(&q);
        if answer["status"] != "success" {
            failures.push(format!("{at}: {q}: {answer}"));
        }
    }
    failures
}

// ------------------------------------------------------------------ test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alerts_work_on_a_live_scrape_and_the_fleet_full_alert_fires() {
    // The shipped rules as promtool sees them.
    let checked = run(
        "promtool",
        &["check", "rules", repo(ALERTS).to_str().unwrap()],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        checked.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let rules = alert_rules();
    let mut exprs: Vec<(String, String)> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().unwrap_or_default();
            (
                format!("alert {name}"),
                r["expr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let dash = dashboard();
    exprs.extend(dash.exprs.iter().cloned());

    // One media server with one slot, a long queue of one.
    let server = Nginx::start(false).await;
    let agent = AgentDouble::start().await;
    let env = [
        ("ECS_AGENT_URI", agent.uri("proxy-task-1")),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let proxy = Proxy::start_with_env(
        &format!(
            "  queue_timeout: 5m\n  max_queue: 1\n  drain_delay: 1s\n  health_check:\n    interval: 1s\n  \
             scale_in_protection:\n    enabled: true\n    expires: 1m\n{}",
            statics(&[server.yaml(1)])
        ),
        &env,
    )
    .await;
    let prom = Prometheus::start(proxy.admin, &without_for(rules)).await;
    let up = format!("up{{job=\"{JOB}\"}}");
    assert!(
        prom.wait_value(&up, |v| v == 1.0).await,
        "never scraped:\n{}",
        prom.log()
    );

    // A live stream takes the only slot; a second publisher waits; a third
    // finds the queue full.
    let dir = proxy.dir.path();
    let live = Publisher::start(&url(proxy.listen, "liveKey0001"), dir, "live");
    assert!(
        server
            .wait_publishing("liveKey0001", Duration::from_secs(20))
            .await,
        "{}\n{}",
        proxy.log_text(),
        live.log()
    );
    let _waiting = Publisher::start(&url(proxy.listen, "waitKey0002"), dir, "waiting");
    assert!(
        wait_until(Duration::from_secs(20), || {
            http_get_blocking(proxy.admin, "/metrics")
                .is_ok_and(|(_, m)| m.lines().any(|l| l == "rtmp_proxy_queue_length 1"))
        })
        .await,
        "the second publisher never queued:\n{}",
        proxy.log_text()
    );
    let mut refused = Publisher::start(&url(proxy.listen, "fullKey0003"), dir, "refused");
    assert!(wait_until(Duration::from_secs(20), || !refused.running()).await);

    // The fleet-full alert fires; none about a healthy part does.
    let fired = wait_until(Duration::from_secs(30), || {
        prom.alerts()
            .iter()
            .any(|(name, state)| name == "RtmpProxyFleetFull" && state == "firing")
    })
    .await;
    assert!(
        fired,
        "RtmpProxyFleetFull did not fire: {:?}\n{}",
        prom.alerts(),
        prom.log()
    );
    let active: Vec<_> = prom
        .alerts()
        .into_iter()
        .filter(|(name, _)| name != "RtmpProxyFleetFull")
        .collect();
    assert!(active.is_empty(), "false alarms: {active:?}");
    let queued = panel_expr(&dash, "Queued publishers");
    assert_eq!(prom.values(&queued), [1.0], "{queued}");

    // The live stream ends; the waiting one gets its slot. Then every
    // expression against a scrape holding every kind of event.
    drop(live);
    assert!(
        server
            .wait_publishing("waitKey0002", Duration::from_secs(20))
            .await
    );
    let closed = wait_until(Duration::from_secs(20), || {
        prom.names().contains("rtmp_proxy_connections_closed_total")
    })
    .await;
    assert!(closed, "no stream end scraped");
    let failures = check_queries(&prom, &exprs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let names = prom.names();
    for def in &dash.variable_queries {
        let metric = def
            .strip_prefix("label_values(")
            .and_then(|d| d.split(',').next())
            .unwrap_or_else(|| panic!("unexpected variable query {def}"));
        assert!(
            names.contains(metric.trim()),
            "{def}: no such metric in the scrape"
        );
    }
    println!("{} expressions checked", exprs.len());

    // Values the panels show: bits flow in, the one slot is taken.
    let ingest = panel_expr(&dash, "Ingest bitrate");
    assert!(
        prom.wait_value(&ingest, |v| v > 10_000.0).await,
        "{ingest}: {:?}",
        prom.values(&ingest)
    );
    let free = panel_expr(&dash, "Free slots (fleet)");
    assert!(
        prom.wait_value(&free, |v| v == 0.0).await,
        "{free}: {:?}",
        prom.values(&free)
    );
    let live_now = panel_expr(&dash, "Live connections");
    assert!(prom.wait_value(&live_now, |v| v == 1.0).await, "{live_now}");
    let protected = panel_expr(&dash, "Scale-in protected tasks");
    assert!(
        prom.wait_value(&protected, |v| v == 1.0).await,
        "{protected}"
    );

    // SIGTERM: the stream drains and the dashboard shows it.
    let draining = panel_expr(&dash, "Proxies draining");
    assert_eq!(prom.values(&draining), [0.0], "{draining}");
    proxy.signal("TERM");
    assert!(
        prom.wait_value(&draining, |v| v == 1.0).await,
        "{draining}: {:?}\n{}",
        prom.values(&draining),
        proxy.log_text()
    );
    let since = panel_expr(&dash, "Draining for");
    let for_seconds = prom.values(&since);
    assert!(
        for_seconds.len() == 1 && (0.0..60.0).contains(&for_seconds[0]),
        "{since}: {for_seconds:?}"
    );
}
