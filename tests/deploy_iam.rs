//! The task role in `deploy/service.yaml` grants nothing beyond what the
//! proxy needs: `servicediscovery:DiscoverInstances` always, and
//! `ecs:UpdateTaskProtection` / `ecs:GetTaskProtection` on the cluster's tasks
//! only when the `ScaleInProtection` parameter is `"true"`. The execution
//! role has AWS's `AmazonECSTaskExecutionRolePolicy` and, only when
//! `RedisUrlSecretArn` is set, `secretsmanager:GetSecretValue` on exactly
//! that secret (ECS reads it for the container's `Secrets`).
//!
//! The template is written in CloudFormation's long form (`Fn::If:` rather
//! than `!If`), so serde_yaml reads it as plain YAML. The checker follows
//! `Fn::If` branches and records under which conditions each action is
//! granted. The `checker_*` tests feed it altered templates, so a checker that
//! cannot fail is itself a failure.

use std::collections::BTreeSet;

use serde_yaml::{Mapping, Value};

const ALWAYS: &[&str] = &["servicediscovery:DiscoverInstances"];
const WITH_PROTECTION: &[&str] = &["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"];
const PROTECTION_PARAMETER: &str = "ScaleInProtection";
const SECRET_ACTION: &str = "secretsmanager:GetSecretValue";
const SECRET_PARAMETER: &str = "RedisUrlSecretArn";
/// The only `Resource` the secret action may have.
const SECRET_RESOURCE: &str = "Ref: RedisUrlSecretArn";
/// The execution role's one managed policy.
const EXECUTION_MANAGED: &str = r#"
- Fn::Sub: "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
"#;
/// The only `Resource` the ECS actions may have: the tasks of the proxy's
/// cluster and of the media servers' cluster (`ClusterName` when
/// `MediaClusterName` is empty).
const TASK_RESOURCES: &str = r#"
- Fn::Sub: "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${ClusterName}/*"
- Fn::Sub:
    - "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${MediaCluster}/*"
    - MediaCluster:
        Fn::If: [HasMediaCluster, {Ref: MediaClusterName}, {Ref: ClusterName}]
"#;

fn template_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/service.yaml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(text: &str) -> Value {
    serde_yaml::from_str(text).expect("deploy/service.yaml is not plain YAML (short-form tags?)")
}

/// The `Fn::If` branches a value sits in: (condition name, branch taken).
type Conds = [(String, bool)];

/// One `Allow`ed action, its `Resource` and its conditions.
#[derive(Debug)]
struct Grant {
    action: String,
    resource: Value,
    conditions: Vec<(String, bool)>,
}

fn key<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(k))
}

/// The single-key intrinsic `name` of `v`, e.g. `Fn::If`, `Ref`.
fn intrinsic<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let m = v.as_mapping()?;
    if m.len() == 1 {
        m.get(name)
    } else {
        None
    }
}

fn is_no_value(v: &Value) -> bool {
    intrinsic(v, "Ref").and_then(Value::as_str) == Some("AWS::NoValue")
}

/// Calls `f` for each concrete value `v` stands for: lists are flattened,
/// `Fn::If` is followed into both branches (recording the branch), and
/// `AWS::NoValue` disappears.
fn each(v: &Value, conds: &Conds, f: &mut dyn FnMut(&Value, &Conds)) {
    if is_no_value(v) {
        return;
    }
    if let Some(args) = intrinsic(v, "Fn::If") {
        let args = args.as_sequence().expect("Fn::If takes a list");
        assert_eq!(args.len(), 3, "Fn::If takes [condition, then, else]");
        let name = args[0].as_str().expect("Fn::If condition name").to_string();
        for (branch, taken) in [(&args[1], true), (&args[2], false)] {
            let mut inner = conds.to_vec();
            inner.push((name.clone(), taken));
            each(branch, &inner, f);
        }
        return;
    }
    if let Some(items) = v.as_sequence() {
        for item in items {
            each(item, conds, f);
        }
        return;
    }
    f(v, conds);
}

/// The logical id of the task definition's role `property`
/// (`TaskRoleArn`, `ExecutionRoleArn`).
fn role_id(resources: &Mapping, property: &str) -> String {
    let defs: Vec<&Value> = resources
        .values()
        .filter(|r| key(r, "Type").and_then(Value::as_str) == Some("AWS::ECS::TaskDefinition"))
        .collect();
    assert_eq!(defs.len(), 1, "expected one task definition");
    let arn = key(defs[0], "Properties")
        .and_then(|p| key(p, property))
        .unwrap_or_else(|| panic!("task definition without {property}"));
    let getatt = intrinsic(arn, "Fn::GetAtt")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{property} should be Fn::GetAtt: [Role, Arn]"));
    getatt[0].as_str().unwrap().to_string()
}

/// True when `v` (deeply) contains `Ref: id` or `Fn::GetAtt: [id, ...]`.
fn mentions(v: &Value, id: &str) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| {
            (k.as_str() == Some("Ref") && v.as_str() == Some(id))
                || (k.as_str() == Some("Fn::GetAtt")
                    && v.as_sequence()
                        .and_then(|s| s.first())
                        .and_then(Value::as_str)
                        == Some(id))
                || mentions(v, id)
        }),
        Value::Sequence(s) => s.iter().any(|v| mentions(v, id)),
        Value::Tagged(t) => mentions(&t.value, id),
        _ => false,
    }
}

/// The names of the conditions that mean `RedisUrlSecretArn != ""`.
fn secret_conditions(template: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(conds) = key(template, "Conditions").and_then(Value::as_mapping) {
        for (name, cond) in conds {
            let Some(args) = intrinsic(cond, "Fn::Not")
                .and_then(Value::as_sequence)
                .filter(|a| a.len() == 1)
                .and_then(|a| intrinsic(&a[0], "Fn::Equals"))
                .and_then(Value::as_sequence)
            else {
                continue;
            };
            let is_ref =
                |v: &Value| intrinsic(v, "Ref").and_then(Value::as_str) == Some(SECRET_PARAMETER);
            let is_empty = |v: &Value| v.as_str() == Some("");
            if args.len() == 2
                && ((is_ref(&args[0]) && is_empty(&args[1]))
                    || (is_empty(&args[0]) && is_ref(&args[1])))
            {
                names.insert(name.as_str().unwrap().to_string());
            }
        }
    }
    names
}

/// The names of the conditions that mean `ScaleInProtection == "true"`.
fn protection_conditions(template: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(conds) = key(template, "Conditions").and_then(Value::as_mapping) {
        for (name, cond) in conds {
            let Some(args) = intrinsic(cond, "Fn::Equals").and_then(Value::as_sequence) else {
                continue;
            };
            let is_ref = |v: &Value| {
                intrinsic(v, "Ref").and_then(Value::as_str) == Some(PROTECTION_PARAMETER)
            };
            let is_true = |v: &Value| v.as_str() == Some("true");
            if args.len() == 2
                && ((is_ref(&args[0]) && is_true(&args[1]))
                    || (is_true(&args[0]) && is_ref(&args[1])))
            {
                names.insert(name.as_str().unwrap().to_string());
            }
        }
    }
    names
}

/// Everything the task definition's role `property` allows, with
/// conditions; panics on shapes the checker does not understand rather
/// than skipping them. `managed`: the managed policies it must have, exactly
/// (none for the task role: only inline policies are checked).
fn grants(
    template: &Value,
    property: &str,
    managed: Option<&Value>,
    errors: &mut Vec<String>,
) -> Vec<Grant> {
    let resources = key(template, "Resources")
        .and_then(Value::as_mapping)
        .expect("no Resources");
    let role_id = role_id(resources, property);
    let role = resources.get(role_id.as_str()).expect("role resource");
    assert_eq!(
        key(role, "Type").and_then(Value::as_str),
        Some("AWS::IAM::Role")
    );
    let props = key(role, "Properties").expect("role Properties");
    if key(props, "PermissionsBoundary").is_some() {
        errors.push(format!(
            "role {role_id} has PermissionsBoundary: only inline Policies are checked"
        ));
    }
    match (key(props, "ManagedPolicyArns"), managed) {
        (None, None) => {}
        (Some(has), Some(want)) if has == want => {}
        (has, _) => errors.push(format!(
            "role {role_id} has ManagedPolicyArns {has:?}: only inline Policies are checked, so none may be attached beyond {managed:?}"
        )),
    }
    // Policies attached from outside the role.
    for (id, r) in resources {
        let ty = key(r, "Type").and_then(Value::as_str).unwrap_or("");
        if ty.starts_with("AWS::IAM::") && ty != "AWS::IAM::Role" && mentions(r, &role_id) {
            errors.push(format!(
                "{} ({ty}) attaches permissions to the role {role_id}",
                id.as_str().unwrap_or("?")
            ));
        }
    }

    let mut out = Vec::new();
    let Some(policies) = key(props, "Policies") else {
        return out;
    };
    each(policies, &[], &mut |policy, conds| {
        let doc = key(policy, "PolicyDocument").expect("policy without PolicyDocument");
        let statements = key(doc, "Statement").expect("policy document without Statement");
        each(statements, conds, &mut |st, conds| {
            let effect = key(st, "Effect").and_then(Value::as_str);
            match effect {
                Some("Deny") => return,
                Some("Allow") => {}
                other => panic!("statement Effect {other:?} not understood"),
            }
            if key(st, "NotAction").is_some() || key(st, "NotResource").is_some() {
                errors.push(format!(
                    "Allow with NotAction/NotResource grants too much: {st:?}"
                ));
            }
            let resource = key(st, "Resource").cloned().unwrap_or(Value::Null);
            let actions = key(st, "Action").expect("Allow statement without Action");
            each(actions, conds, &mut |a, conds| {
                let action = a
                    .as_str()
                    .unwrap_or_else(|| panic!("action {a:?} is not a string"));
                out.push(Grant {
                    action: action.to_string(),
                    resource: resource.clone(),
                    conditions: conds.to_vec(),
                });
            });
        });
    });
    out
}

/// Everything wrong with the template's task role; empty when it is right.
fn violations(template: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let task_resources: Value = serde_yaml::from_str(TASK_RESOURCES).unwrap();
    let protection = protection_conditions(template);
    let grants = grants(template, "TaskRoleArn", None, &mut errors);
    let under_protection = |g: &Grant| {
        g.conditions
            .iter()
            .any(|(name, taken)| *taken && protection.contains(name))
    };
    for g in &grants {
        // IAM action names are case-insensitive; wildcards match nothing here.
        let is = |list: &[&str]| list.iter().any(|a| a.eq_ignore_ascii_case(&g.action));
        if is(ALWAYS) {
            continue;
        }
        if !is(WITH_PROTECTION) {
            errors.push(format!(
                "task role allows {} (only {ALWAYS:?} and {WITH_PROTECTION:?} are allowed)",
                g.action
            ));
        } else if !under_protection(g) {
            errors.push(format!(
                "{} is granted outside the {PROTECTION_PARAMETER} == \"true\" condition (conditions {:?})",
                g.action, g.conditions
            ));
        } else if g.resource != task_resources {
            errors.push(format!(
                "{} must be scoped to the tasks of ClusterName and MediaClusterName ({TASK_RESOURCES}), not {:?}",
                g.action, g.resource
            ));
        }
    }
    // The proxy must still work: discovery always, protection when asked.
    for a in ALWAYS {
        if !grants
            .iter()
            .any(|g| g.action == *a && g.conditions.is_empty())
        {
            errors.push(format!("{a} is not granted unconditionally"));
        }
    }
    for a in WITH_PROTECTION {
        if !grants.iter().any(|g| g.action == *a && under_protection(g)) {
            errors.push(format!(
                "{a} is not granted when {PROTECTION_PARAMETER} is \"true\""
            ));
        }
    }
    errors
}

/// Everything wrong with the template's execution role; empty when it is
/// right.
fn execution_violations(template: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let managed: Value = serde_yaml::from_str(EXECUTION_MANAGED).unwrap();
    let resource: Value = serde_yaml::from_str(SECRET_RESOURCE).unwrap();
    let with_secret = secret_conditions(template);
    let grants = grants(template, "ExecutionRoleArn", Some(&managed), &mut errors);
    let under_secret = |g: &Grant| {
        g.conditions
            .iter()
            .any(|(name, taken)| *taken && with_secret.contains(name))
    };
    for g in &grants {
        if !g.action.eq_ignore_ascii_case(SECRET_ACTION) {
            errors.push(format!(
                "execution role allows {} (only {SECRET_ACTION} is allowed)",
                g.action
            ));
        } else if !under_secret(g) {
            errors.push(format!(
                "{} is granted outside the {SECRET_PARAMETER} != \"\" condition (conditions {:?})",
                g.action, g.conditions
            ));
        } else if g.resource != resource {
            errors.push(format!(
                "{} must be scoped to exactly the secret {SECRET_PARAMETER} names, not {:?}",
                g.action, g.resource
            ));
        }
    }
    if !grants
        .iter()
        .any(|g| g.action == SECRET_ACTION && under_secret(g))
    {
        errors.push(format!(
            "{SECRET_ACTION} is not granted when {SECRET_PARAMETER} is set"
        ));
    }
    errors
}

#[test]
fn execution_role_reads_only_the_redis_secret_and_only_when_set() {
    let errors = execution_violations(&parse(&template_text()));
    assert!(
        errors.is_empty(),
        "deploy/service.yaml:\n{}",
        errors.join("\n")
    );
}

#[test]
fn checker_catches_a_wider_execution_role() {
    let assert_exec_caught = |t: &Value, needle: &str| {
        let errors = execution_violations(t);
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "expected a violation mentioning {needle:?}, got {errors:?}"
        );
    };
    let t = altered(
        "Action: secretsmanager:GetSecretValue",
        "Action: [secretsmanager:GetSecretValue, secretsmanager:ListSecrets]",
    );
    assert_exec_caught(&t, "allows secretsmanager:ListSecrets");
    let t = altered(
        "Action: secretsmanager:GetSecretValue",
        "Action: secretsmanager:*",
    );
    assert_exec_caught(&t, "allows secretsmanager:*");
    let t = altered(
        "                    Resource:\n                      Ref: RedisUrlSecretArn\n",
        "                    Resource: \"*\"\n",
    );
    assert_exec_caught(&t, "must be scoped to exactly the secret");
    let t = altered(
        "                    Resource:\n                      Ref: RedisUrlSecretArn\n",
        "                    Resource:\n                      - Ref: RedisUrlSecretArn\n                      - Fn::Sub: \"${RedisUrlSecretArn}*\"\n",
    );
    assert_exec_caught(&t, "must be scoped to exactly the secret");
    let t = altered(
        "service-role/AmazonECSTaskExecutionRolePolicy\"\n",
        "service-role/AmazonECSTaskExecutionRolePolicy\"\n        - arn:aws:iam::aws:policy/SecretsManagerReadWrite\n",
    );
    assert_exec_caught(&t, "ManagedPolicyArns");

    // Branches swapped: the secret would be readable (as `RedisUrlSecretArn`
    // names nothing) when no secret is set, and not when one is.
    let mut t = parse(&template_text());
    let branches = t["Resources"]["ExecutionRole"]["Properties"]["Policies"]
        .get_mut("Fn::If")
        .and_then(Value::as_sequence_mut)
        .expect("the execution role's conditional policies");
    branches.swap(1, 2);
    assert_exec_caught(&t, "is not granted when RedisUrlSecretArn is set");
    // A condition that is not `RedisUrlSecretArn != ""`.
    let t = altered(
        "Fn::Equals: [{Ref: RedisUrlSecretArn}, \"\"]",
        "Fn::Equals: [{Ref: RedisUrlSecretArn}, \"x\"]",
    );
    assert_exec_caught(&t, "outside the RedisUrlSecretArn");
    // The task role may not read it.
    let t = altered(
        "Action: servicediscovery:DiscoverInstances",
        "Action: [servicediscovery:DiscoverInstances, secretsmanager:GetSecretValue]",
    );
    assert_caught(&t, "allows secretsmanager:GetSecretValue");
}

#[test]
fn task_role_allows_only_discovery_and_task_protection() {
    let errors = violations(&parse(&template_text()));
    assert!(
        errors.is_empty(),
        "deploy/service.yaml:\n{}",
        errors.join("\n")
    );
}

#[test]
fn scale_in_protection_parameter_is_off_by_default() {
    let t = parse(&template_text());
    let p = key(&t, "Parameters")
        .and_then(|p| key(p, PROTECTION_PARAMETER))
        .expect("ScaleInProtection parameter");
    assert_eq!(key(p, "Default").and_then(Value::as_str), Some("false"));
    let allowed: Vec<&str> = key(p, "AllowedValues")
        .and_then(Value::as_sequence)
        .expect("AllowedValues")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(allowed, ["true", "false"]);
    assert!(!protection_conditions(&t).is_empty());
}

/// `template_text()` with `from` replaced by `to`, which must occur.
fn altered(from: &str, to: &str) -> Value {
    let text = template_text();
    assert!(
        text.contains(from),
        "test fixture out of date: {from:?} not in service.yaml"
    );
    parse(&text.replacen(from, to, 1))
}

fn assert_caught(t: &Value, needle: &str) {
    let errors = violations(t);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected a violation mentioning {needle:?}, got {errors:?}"
    );
}

#[test]
fn checker_catches_an_extra_action() {
    let t = altered(
        "Action: servicediscovery:DiscoverInstances",
        "Action: [servicediscovery:DiscoverInstances, s3:GetObject]",
    );
    assert_caught(&t, "allows s3:GetObject");
    let t = altered(
        "- ecs:GetTaskProtection",
        "- ecs:GetTaskProtection\n                      - ecs:StopTask",
    );
    assert_caught(&t, "allows ecs:StopTask");
    let t = altered("- ecs:GetTaskProtection", "- ecs:*");
    assert_caught(&t, "allows ecs:*");
}

#[test]
fn checker_catches_protection_outside_its_condition() {
    // Branches swapped: the ECS actions would apply when protection is off.
    let mut t = parse(&template_text());
    let policies = t["Resources"]["TaskRole"]["Properties"]["Policies"]
        .as_sequence_mut()
        .unwrap();
    let branches = policies
        .iter_mut()
        .find_map(|p| p.get_mut("Fn::If"))
        .and_then(Value::as_sequence_mut)
        .expect("the task role's conditional policy");
    branches.swap(1, 2);
    assert_caught(&t, "ecs:GetTaskProtection is granted outside");

    // A malformed Fn::If must stop the checker, not be skipped.
    let result = std::panic::catch_unwind(|| {
        violations(&altered(
            "            - ScaleInProtectionEnabled\n",
            "            - Fn::Not: [ScaleInProtectionEnabled]\n",
        ))
    });
    assert!(result.is_err(), "a malformed Fn::If passed the checker");

    // The ECS statement moved into the always-present discovery policy.
    let t = altered(
        "                Action: servicediscovery:DiscoverInstances\n",
        "                Action: [servicediscovery:DiscoverInstances, ecs:UpdateTaskProtection]\n",
    );
    assert_caught(&t, "ecs:UpdateTaskProtection is granted outside");

    // A condition that is not `ScaleInProtection == "true"`.
    let t = altered(
        "Fn::Equals: [{Ref: ScaleInProtection}, \"true\"]",
        "Fn::Equals: [{Ref: ScaleInProtection}, \"false\"]",
    );
    assert_caught(&t, "outside the ScaleInProtection");
}

#[test]
fn checker_catches_wider_resources_and_attached_policies() {
    let t = altered("task/${ClusterName}/*", "task/*");
    assert_caught(&t, "must be scoped to the tasks");
    let t = altered("task/${MediaCluster}/*", "task/${MediaCluster}*");
    assert_caught(&t, "must be scoped to the tasks");
    let t = altered(
        "      Policies:\n        - PolicyName: cloud-map-discovery",
        "      ManagedPolicyArns: [arn:aws:iam::aws:policy/AdministratorAccess]\n      Policies:\n        - PolicyName: cloud-map-discovery",
    );
    assert_caught(&t, "ManagedPolicyArns");
    let t = altered(
        "      Policies:\n        - PolicyName: cloud-map-discovery",
        "      PermissionsBoundary: arn:aws:iam::aws:policy/AdministratorAccess\n      Policies:\n        - PolicyName: cloud-map-discovery",
    );
    assert_caught(&t, "PermissionsBoundary");
    let mut t = parse(&template_text());
    let extra: Value = serde_yaml::from_str(
        "Type: AWS::IAM::Policy\nProperties:\n  PolicyName: more\n  Roles: [{Ref: TaskRole}]\n  PolicyDocument: {}\n",
    )
    .unwrap();
    t["Resources"]
        .as_mapping_mut()
        .unwrap()
        .insert("MorePermissions".into(), extra);
    assert_caught(&t, "MorePermissions");
}
