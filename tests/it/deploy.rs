//! The deployment material (Dockerfile, docker-compose.yml, deploy/) parses with real parsers
//! and agrees with the code: probe paths and port, the shutdown grace, the RabbitMQ topology the
//! worker declares, the AWS operations it calls. Needs no broker and no moto.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aws_account_worker::broker::topology::{
    self, POLICY_PRIORITY, UNROUTED_MAX_LENGTH_CEILING, UNROUTED_MESSAGE_TTL_CEILING_MS,
    retry_queue,
};
use aws_account_worker::config::{DEFAULTS, Settings};
use aws_account_worker::retry::delays as retry_delays;
use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value as FigmentValue};
use serde_json::{Value, json};

/// The port the contract gives the observability listener (docs/contract.md §9).
const OBSERVABILITY_PORT: u16 = 9898;

/// Organizations operations the worker needs that `src/aws/sdk.rs` does not name through
/// `classify`: tagging on `CreateAccount`, and the read-only calls of `check` (docs/contract.md §2).
const PAYER_ACTIONS_BEYOND_SDK_RS: &[&str] = &[
    "organizations:TagResource",
    "organizations:DescribeOrganization",
    "organizations:ListPolicies",
    "organizations:DescribePolicy",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    let full = repo(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// One YAML document (these files keep one per file), as a JSON value for easy lookups.
fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json_file(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value at a JSON pointer, or a panic naming the file and the pointer.
fn at<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{what}: no {pointer}"))
}

fn text<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a str {
    at(value, pointer, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {pointer} is not a string"))
}

/// The built-in defaults plus the one key they leave unset.
fn defaults() -> Settings {
    Settings::from_toml("[business_model]\nprovider_email_domain = \"provider.example\"")
        .expect("the defaults load")
}

/// Every file under deploy/, relative to the repository.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read deploy/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("under the repository");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = repo("");
    let mut files = Vec::new();
    walk(&repo("deploy"), &root, &mut files);
    files.sort();
    files
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

fn deployment() -> Value {
    yaml("deploy/k8s/deployment.yaml")
}

/// The worker container of the Deployment.
fn container(deployment: &Value) -> &Value {
    at(deployment, "/spec/template/spec/containers", "deployment")
        .as_array()
        .and_then(|containers| {
            containers
                .iter()
                .find(|c| c["name"] == "worker" || containers.len() == 1)
        })
        .expect("deployment: a worker container")
}

/// The Secret (name, key) a container env variable is read from.
fn secret_ref(container: &Value, variable: &str) -> (String, String) {
    let env = container["env"].as_array().expect("container env");
    let entry = env
        .iter()
        .find(|e| e["name"] == variable)
        .unwrap_or_else(|| panic!("deployment: no env {variable}"));
    let reference = at(entry, "/valueFrom/secretKeyRef", variable);
    (
        text(reference, "/name", variable).to_owned(),
        text(reference, "/key", variable).to_owned(),
    )
}

/// The kustomization's configMapGenerator entry named `name`.
fn generator(name: &str) -> Value {
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    at(&kustomization, "/configMapGenerator", "kustomization")
        .as_array()
        .expect("configMapGenerator list")
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("kustomization: no configMapGenerator {name}"))
        .clone()
}

/// The worker's config.toml, which the kustomization turns into its ConfigMap.
fn configmap_toml() -> String {
    read("deploy/k8s/config.toml")
}

#[test]
fn every_yaml_and_json_file_parses_and_says_what_it_is_for() {
    let mut files = deploy_files();
    files.push("docker-compose.yml".to_owned());
    let mut parsed = 0;
    for path in &files {
        let source = read(path);
        if is_yaml(path) {
            // One document per file: serde_yaml_ng refuses a second one.
            let value: Value =
                serde_yaml_ng::from_str(&source).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(value.is_object(), "{path}: not a mapping");
            assert!(
                source.starts_with('#'),
                "{path}: should open with a comment saying what it is for"
            );
            parsed += 1;
        } else if path.ends_with(".json") {
            let value: Value =
                serde_json::from_str(&source).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(value.is_object(), "{path}: not an object");
            parsed += 1;
        }
    }
    for expected in [
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/config.toml",
        "deploy/k8s/servicemonitor.yaml",
        "deploy/k8s/prometheusrule.yaml",
        "deploy/k8s/networkpolicy.yaml",
        "deploy/k8s/grafana-dashboard.json",
        "deploy/k8s/serviceaccount.yaml",
        "deploy/k8s/poddisruptionbudget.yaml",
        "deploy/k8s/scaledobject.yaml",
        "deploy/k8s/triggerauthentication.yaml",
        "deploy/k8s/kustomization.yaml",
        "deploy/rabbitmq/definitions.json",
        "deploy/iam/payer-policy.json",
    ] {
        assert!(files.iter().any(|f| f == expected), "missing {expected}");
    }
    assert!(parsed >= 12, "only {parsed} files parsed");
}

#[test]
fn the_deployment_probes_the_contract_endpoints_and_outlives_the_shutdown_grace() {
    let settings = defaults();
    let deployment = deployment();
    let what = "deployment";
    assert_eq!(text(&deployment, "/apiVersion", what), "apps/v1");
    assert_eq!(text(&deployment, "/kind", what), "Deployment");
    let worker = container(&deployment);

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(worker, &format!("/{probe}/httpGet"), what);
        assert_eq!(text(get, "/path", probe), path, "{probe}");
        assert_eq!(get["port"], json!(OBSERVABILITY_PORT), "{probe} port");
    }
    let ports = worker["ports"].as_array().expect("container ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"] == json!(OBSERVABILITY_PORT)),
        "container port {OBSERVABILITY_PORT} is declared"
    );

    let grace = at(
        &deployment,
        "/spec/template/spec/terminationGracePeriodSeconds",
        what,
    )
    .as_u64()
    .expect("terminationGracePeriodSeconds is a number");
    assert!(
        grace > settings.worker.shutdown_grace_seconds,
        "terminationGracePeriodSeconds {grace} leaves no margin over shutdown_grace_seconds {}",
        settings.worker.shutdown_grace_seconds
    );

    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            at(worker, &format!("/resources/{kind}/{resource}"), what);
        }
    }

    let pod_security = at(&deployment, "/spec/template/spec/securityContext", what);
    let security = at(worker, "/securityContext", what);
    assert!(
        pod_security["runAsNonRoot"] == json!(true) || security["runAsNonRoot"] == json!(true),
        "runAsNonRoot"
    );
    assert_ne!(pod_security["runAsUser"], json!(0), "runAsUser is not root");
    assert_eq!(security["readOnlyRootFilesystem"], json!(true));
    assert_eq!(security["allowPrivilegeEscalation"], json!(false));

    // The selector picks the pod template's labels.
    let selector = at(&deployment, "/spec/selector/matchLabels", what)
        .as_object()
        .expect("matchLabels");
    let labels = at(&deployment, "/spec/template/metadata/labels", what);
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "template label {key}");
    }
    assert!(
        deployment.pointer("/spec/replicas").is_none(),
        "KEDA owns the replica count: `replicas` would be reset by every apply"
    );
}

#[test]
fn the_deployment_runs_the_worker_with_the_configmap_the_secret_and_the_service_account() {
    let deployment = deployment();
    let worker = container(&deployment);
    let args: Vec<&str> = worker["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    assert_eq!(
        args.last(),
        Some(&"run"),
        "the subcommand is `run`: {args:?}"
    );
    let config = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config FILE");

    // --config names config.toml in the directory where the generated ConfigMap is mounted.
    let configmap_name = "aws-account-worker-config";
    let generated = generator(configmap_name);
    assert!(
        generated.pointer("/options/disableNameSuffixHash") != Some(&json!(true)),
        "the config ConfigMap's name carries its content hash, so an edit rolls the pods"
    );
    let files: Vec<&str> = at(&generated, "/files", "configMapGenerator")
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("file name"))
        .collect();
    let volumes = at(&deployment, "/spec/template/spec/volumes", "deployment")
        .as_array()
        .expect("volumes");
    let volume = volumes
        .iter()
        .find(|v| v.pointer("/configMap/name") == Some(&json!(configmap_name)))
        .expect("a volume from the ConfigMap");
    let mounts = worker["volumeMounts"].as_array().expect("volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    let mounted = Path::new(text(mount, "/mountPath", "mount"));
    let file = Path::new(config)
        .strip_prefix(mounted)
        .unwrap_or_else(|_| panic!("--config {config} is not under {}", mounted.display()));
    let key = file.to_str().expect("utf-8");
    assert!(
        files.contains(&key),
        "the ConfigMap has no key {key}: {files:?}"
    );
    for file in files {
        assert!(repo(&format!("deploy/k8s/{file}")).is_file(), "{file}");
    }

    // The broker URL comes from the Secret whose shape secret.example.yaml shows.
    let (secret, secret_key) = secret_ref(worker, "WORKER__AMQP__URL");
    let example = yaml("deploy/k8s/secret.example.yaml");
    assert_eq!(text(&example, "/metadata/name", "secret"), secret);
    let url = text(&example, &format!("/stringData/{secret_key}"), "secret");
    assert!(
        url.starts_with("amqp://") || url.starts_with("amqps://"),
        "{url}"
    );

    let account = yaml("deploy/k8s/serviceaccount.yaml");
    assert_eq!(
        at(
            &deployment,
            "/spec/template/spec/serviceAccountName",
            "deployment"
        ),
        at(&account, "/metadata/name", "serviceaccount")
    );
    let role = account
        .pointer("/metadata/annotations")
        .and_then(|a| a.get("eks.amazonaws.com/role-arn"))
        .and_then(Value::as_str)
        .expect("IRSA annotation eks.amazonaws.com/role-arn");
    assert!(role.starts_with("arn:aws:iam::"), "{role}");
}

#[test]
fn the_configmap_loads_with_the_worker_loader_and_sets_only_what_differs() {
    let toml = configmap_toml();
    let settings = Settings::from_toml(&toml).unwrap_or_else(|e| panic!("config.toml: {e}"));
    let listen: SocketAddr = settings.observability.listen.parse().expect("listen");
    assert_eq!(listen.port(), OBSERVABILITY_PORT);
    assert!(
        listen.ip().is_unspecified(),
        "probes reach the pod from outside its loopback: {listen}"
    );

    let given: Dict = Figment::from(Toml::string(&toml))
        .extract()
        .expect("config.toml as a table");
    let defaults: Dict = Figment::from(Toml::string(DEFAULTS))
        .extract()
        .expect("defaults as a table");
    fn leaves(dict: &Dict, path: &str, out: &mut Vec<(String, FigmentValue)>) {
        for (key, value) in dict {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match value {
                FigmentValue::Dict(_, inner) => leaves(inner, &full, out),
                other => out.push((full, other.clone())),
            }
        }
    }
    let mut defaults_flat = Vec::new();
    leaves(&defaults, "", &mut defaults_flat);
    let defaults_flat: BTreeMap<_, _> = defaults_flat.into_iter().collect();
    let mut set = Vec::new();
    leaves(&given, "", &mut set);
    assert!(!set.is_empty(), "config.toml sets nothing");
    for (key, value) in set {
        assert_ne!(
            defaults_flat.get(&key),
            Some(&value),
            "config.toml sets {key} to its default"
        );
    }
}

#[test]
fn the_pdb_and_the_service_select_the_deployments_pods() {
    let deployment = deployment();
    let selector = at(&deployment, "/spec/selector/matchLabels", "deployment");
    let pdb = yaml("deploy/k8s/poddisruptionbudget.yaml");
    assert_eq!(text(&pdb, "/apiVersion", "pdb"), "policy/v1");
    assert_eq!(at(&pdb, "/spec/selector/matchLabels", "pdb"), selector);
    assert!(
        pdb.pointer("/spec/maxUnavailable").is_some()
            || pdb.pointer("/spec/minAvailable").is_some(),
        "the PDB bounds disruptions"
    );
    assert_eq!(
        text(&pdb, "/spec/unhealthyPodEvictionPolicy", "pdb"),
        "AlwaysAllow",
        "unready pods (every pod while the broker is down) must not block node drains"
    );

    let service = yaml("deploy/k8s/service.yaml");
    assert_eq!(at(&service, "/spec/selector", "service"), selector);
    let ports = at(&service, "/spec/ports", "service")
        .as_array()
        .expect("ports");
    assert!(
        ports.iter().any(|p| p["port"] == json!(OBSERVABILITY_PORT)),
        "the Service exposes {OBSERVABILITY_PORT}"
    );
}

#[test]
fn keda_scales_the_deployment_on_the_orders_queue() {
    let settings = defaults();
    let deployment = deployment();
    let scaled = yaml("deploy/k8s/scaledobject.yaml");
    let what = "scaledobject";
    assert_eq!(text(&scaled, "/kind", what), "ScaledObject");
    assert_eq!(
        text(&scaled, "/spec/scaleTargetRef/kind", what),
        "Deployment"
    );
    assert_eq!(
        at(&scaled, "/spec/scaleTargetRef/name", what),
        at(&deployment, "/metadata/name", "deployment")
    );
    let min = at(&scaled, "/spec/minReplicaCount", what)
        .as_u64()
        .expect("minReplicaCount");
    let max = at(&scaled, "/spec/maxReplicaCount", what)
        .as_u64()
        .expect("maxReplicaCount");
    assert!(1 <= min && min <= max, "replicas {min}..{max}");

    let triggers = at(&scaled, "/spec/triggers", what)
        .as_array()
        .expect("triggers");
    let trigger = triggers
        .iter()
        .find(|t| t["type"] == "rabbitmq")
        .expect("a rabbitmq trigger");
    assert_eq!(
        text(trigger, "/metadata/queueName", what),
        settings.amqp.orders_queue
    );
    assert_eq!(text(trigger, "/metadata/mode", what), "QueueLength");
    // Over AMQP, QueueLength counts ready orders only, and a worker holds up to amqp.prefetch
    // unacknowledged ones: the management API (http) counts both, one replica per prefetch.
    assert_eq!(text(trigger, "/metadata/protocol", what), "http");
    assert_eq!(
        text(trigger, "/metadata/excludeUnacknowledged", what),
        "false"
    );
    let value: u64 = text(trigger, "/metadata/value", what)
        .parse()
        .expect("value is a number in a string");
    assert_eq!(
        value,
        u64::from(settings.amqp.prefetch),
        "one replica per prefetch"
    );

    // cooldownPeriod only applies to scaling to zero: the slow scale-down is the HPA's.
    let down = at(
        &scaled,
        "/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown",
        what,
    );
    let window = at(down, "/stabilizationWindowSeconds", what)
        .as_u64()
        .expect("stabilizationWindowSeconds");
    assert!(
        window >= 300,
        "scale down on at least 5 minutes of history: {window}"
    );
    let policies = at(down, "/policies", what).as_array().expect("policies");
    assert!(
        policies
            .iter()
            .all(|p| p["type"] == "Pods" && p["value"] == json!(1)),
        "one pod at a time: {policies:?}"
    );

    // The trigger's host is the workers' own management API URL, from the same Secret.
    let auth = yaml("deploy/k8s/triggerauthentication.yaml");
    assert_eq!(
        at(trigger, "/authenticationRef/name", what),
        at(&auth, "/metadata/name", "triggerauthentication")
    );
    let refs = at(&auth, "/spec/secretTargetRef", "triggerauthentication")
        .as_array()
        .expect("secretTargetRef");
    let host = refs
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("the host parameter comes from a Secret");
    let (secret, key) = secret_ref(container(&deployment), "WORKER__AMQP__MANAGEMENT_URL");
    assert_eq!(host["name"], json!(secret));
    assert_eq!(host["key"], json!(key));
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> = at(&kustomization, "/resources", "kustomization")
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_owned())
        .collect();
    let manifests: BTreeSet<String> = deploy_files()
        .iter()
        .filter_map(|f| f.strip_prefix("deploy/k8s/"))
        .filter(|f| is_yaml(f) && *f != "kustomization.yaml" && !f.contains(".example."))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, manifests);
}

/// What the worker declares for `settings` (src/broker/topology.rs), as definitions entries.
fn declared_topology(settings: &Settings) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let amqp = &settings.amqp;
    let quorum = |extra: Value| {
        let mut args = json!({
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        });
        let map = args.as_object_mut().expect("object");
        for (key, value) in extra.as_object().expect("object") {
            map.insert(key.clone(), value.clone());
        }
        args
    };
    let exchange = |name: &str, kind: &str, arguments: Value| {
        json!({"name": name, "type": kind, "durable": true, "auto_delete": false,
               "internal": false, "arguments": arguments})
    };
    let queue = |name: &str, arguments: Value| json!({"name": name, "durable": true, "auto_delete": false, "arguments": arguments});
    let binding = |source: &str, destination: &str, key: &str| {
        json!({"source": source, "destination": destination, "destination_type": "queue",
               "routing_key": key, "arguments": {}})
    };

    let exchanges = vec![
        exchange(&amqp.dead_letter_exchange, "fanout", json!({})),
        exchange(&amqp.orders_exchange, "topic", json!({})),
        exchange(&amqp.unrouted_exchange, "fanout", json!({})),
        exchange(
            &amqp.results_exchange,
            "topic",
            json!({"alternate-exchange": amqp.unrouted_exchange}),
        ),
    ];
    let mut queues = vec![
        queue(&amqp.dead_letter_queue, quorum(json!({}))),
        queue(
            &amqp.orders_queue,
            // The delivery limit is a policy; the argument is its ceiling.
            quorum(json!({
                "x-dead-letter-exchange": amqp.dead_letter_exchange,
                "x-delivery-limit": 100,
            })),
        ),
    ];
    for delay in retry_delays(&settings.retry) {
        queues.push(queue(
            &retry_queue(amqp, delay),
            quorum(json!({
                "x-message-ttl": delay,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": amqp.orders_queue,
            })),
        ));
    }
    queues.push(queue(
        &amqp.unrouted_queue,
        quorum(json!({
            "x-max-length": UNROUTED_MAX_LENGTH_CEILING,
            "x-message-ttl": UNROUTED_MESSAGE_TTL_CEILING_MS,
        })),
    ));
    let mut bindings = vec![binding(
        &amqp.dead_letter_exchange,
        &amqp.dead_letter_queue,
        "",
    )];
    // Purchases and the later requests of a subscription (change, suspend, resume, cancel).
    for key in [
        &amqp.orders_routing_key,
        &amqp.change_routing_key,
        &amqp.suspend_routing_key,
        &amqp.resume_routing_key,
        &amqp.cancel_routing_key,
    ] {
        bindings.push(binding(&amqp.orders_exchange, &amqp.orders_queue, key));
    }
    bindings.push(binding(&amqp.unrouted_exchange, &amqp.unrouted_queue, ""));
    (exchanges, queues, bindings)
}

/// `entries` keyed by `key` (the name, or source/destination/routing key), each without its
/// vhost, which is checked separately.
fn keyed(entries: &[Value], key: fn(&Value) -> String) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            if let Some(map) = entry.as_object_mut() {
                map.remove("vhost");
            }
            (key(&entry), entry)
        })
        .collect()
}

fn by_name(entry: &Value) -> String {
    entry["name"].as_str().unwrap_or_default().to_owned()
}

fn by_route(entry: &Value) -> String {
    format!(
        "{} -[{}]-> {}",
        entry["source"].as_str().unwrap_or_default(),
        entry["routing_key"].as_str().unwrap_or_default(),
        entry["destination"].as_str().unwrap_or_default()
    )
}

#[test]
fn the_definitions_are_the_topology_the_worker_declares() {
    let settings = defaults();
    assert_eq!(
        retry_delays(&settings.retry),
        [1000, 2000, 4000, 8000, 16000, 30000, 32000, 64000],
        "the default retry steps and the wait after an unsettled delivery"
    );
    let definitions = json_file("deploy/rabbitmq/definitions.json");
    let (exchanges, queues, bindings) = declared_topology(&settings);
    for (section, declared, key) in [
        ("exchanges", exchanges, by_name as fn(&Value) -> String),
        ("queues", queues, by_name),
        ("bindings", bindings, by_route),
    ] {
        let entries = at(&definitions, &format!("/{section}"), "definitions")
            .as_array()
            .unwrap_or_else(|| panic!("definitions: {section} is not a list"));
        for entry in entries {
            assert_eq!(entry["vhost"], "/", "{section}: {entry} is in the / vhost");
        }
        let found = keyed(entries, key);
        let expected = keyed(&declared, key);
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{section}: the same names"
        );
        for (name, want) in &expected {
            assert_eq!(&found[name], want, "{section}: {name}");
        }
    }
    // The policies are the worker's (names, patterns, values), each matching its one queue and
    // no other queue of the definitions.
    let policies = at(&definitions, "/policies", "definitions")
        .as_array()
        .expect("policies list");
    let expected = topology::policies(&settings.amqp);
    assert_eq!(
        policies.len(),
        expected.len(),
        "one policy per tunable queue"
    );
    let queue_names: Vec<&str> = at(&definitions, "/queues", "definitions")
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["name"].as_str().expect("queue name"))
        .collect();
    for want in &expected {
        let found = policies
            .iter()
            .find(|p| p["name"] == want.name.as_str())
            .unwrap_or_else(|| panic!("no policy {}", want.name));
        assert_eq!(found["vhost"], "/", "{}", want.name);
        assert_eq!(found["pattern"], want.pattern.as_str(), "{}", want.name);
        assert_eq!(found["apply-to"], "queues", "{}", want.name);
        assert_eq!(found["priority"], json!(POLICY_PRIORITY), "{}", want.name);
        assert_eq!(
            found["definition"],
            Value::Object(want.definition.clone()),
            "{}",
            want.name
        );
        let matched: Vec<&&str> = queue_names
            .iter()
            .filter(|q| exact_match(&want.pattern, q))
            .collect();
        assert_eq!(
            matched,
            [&want.queue.as_str()],
            "{} matches only its queue",
            want.name
        );
    }

    let vhosts = at(&definitions, "/vhosts", "definitions");
    assert!(
        vhosts
            .as_array()
            .is_some_and(|v| v.iter().any(|h| h["name"] == "/")),
        "the / vhost is defined"
    );
}

/// Whether `pattern`, of the form `^…$` with `\` escaping the characters after it, matches
/// exactly `name` (the worker's policies use nothing else).
fn exact_match(pattern: &str, name: &str) -> bool {
    let Some(body) = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')) else {
        return false;
    };
    let mut literal = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => literal.push(escaped),
                None => return false,
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return false;
            }
            other => literal.push(other),
        }
    }
    literal == name
}

/// The user of an `amqp://user:password@host…` URL.
fn amqp_user(url: &str) -> &str {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(user, _)| user)
        .unwrap_or_else(|| panic!("no user in {url}"))
}

#[test]
fn the_compose_stack_loads_the_topology_and_runs_three_workers() {
    let settings = defaults();
    let compose = yaml("docker-compose.yml");
    let what = "docker-compose.yml";
    let services = at(&compose, "/services", what);

    let rabbitmq = &services["rabbitmq"];
    assert!(
        text(rabbitmq, "/image", what).contains("management"),
        "RabbitMQ with the management plugin"
    );
    let mounts: Vec<&str> = rabbitmq["volumes"]
        .as_array()
        .expect("rabbitmq volumes")
        .iter()
        .map(|v| v.as_str().expect("short volume syntax"))
        .collect();
    let mut targets = BTreeMap::new();
    for mount in &mounts {
        let parts: Vec<&str> = mount.split(':').collect();
        assert_eq!(parts.len(), 3, "{mount}: source:target:ro");
        assert_eq!(parts[2], "ro", "{mount} is read-only");
        assert!(repo(parts[0]).is_file(), "{mount}: no such file");
        targets.insert(parts[0].trim_start_matches("./"), parts[1]);
    }
    let definitions_target = targets["deploy/rabbitmq/definitions.json"];
    let users_target = targets["deploy/rabbitmq/local-users.json"];
    assert!(targets["deploy/rabbitmq/rabbitmq.conf"].starts_with("/etc/rabbitmq/conf.d/"));
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let definitions_dir = conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("load_definitions"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(str::trim)
        .expect("rabbitmq.conf sets load_definitions");
    for target in [definitions_target, users_target] {
        assert_eq!(
            Path::new(target).parent(),
            Some(Path::new(definitions_dir)),
            "{target} is loaded at boot"
        );
    }
    assert!(
        users_target < definitions_target,
        "the users and vhost are imported before the topology"
    );

    let moto = &services["moto"];
    assert_eq!(text(moto, "/image", what), "motoserver/moto:5.2.5");
    assert_eq!(
        text(moto, "/environment/MOTO_IAM_LOAD_MANAGED_POLICIES", what),
        "true"
    );
    assert!(services.get("setup").is_some(), "the one-shot setup");
    let setup_script = at(&services["setup"], "/volumes/0", what)
        .as_str()
        .and_then(|v| v.split(':').next())
        .expect("setup script mount");
    assert!(repo(setup_script).is_file(), "{setup_script}");

    let worker = &services["worker"];
    assert_eq!(at(worker, "/deploy/replicas", what), &json!(3));
    let environment = at(worker, "/environment", what)
        .as_object()
        .expect("environment map");
    // The worker's WORKER__SECTION__KEY variables, as the TOML they stand for, load.
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in environment {
        if let Some(key) = name.strip_prefix("WORKER__") {
            let (section, key) = key.split_once("__").expect("WORKER__SECTION__KEY");
            let value = value.as_str().expect("string value");
            sections
                .entry(section.to_lowercase())
                .or_default()
                .push(format!("{} = {value:?}", key.to_lowercase()));
        }
    }
    let toml: String = sections
        .iter()
        .map(|(section, keys)| format!("[{section}]\n{}\n", keys.join("\n")))
        .collect();
    let worker_settings =
        Settings::from_toml(&toml).unwrap_or_else(|e| panic!("compose worker env: {e}"));
    let listen: SocketAddr = worker_settings
        .observability
        .listen
        .parse()
        .expect("listen");
    assert_eq!(listen.port(), OBSERVABILITY_PORT);

    // The worker's broker user is the one local-users.json creates.
    let url = environment["WORKER__AMQP__URL"].as_str().expect("amqp url");
    let users = json_file("deploy/rabbitmq/local-users.json");
    let names: Vec<&str> = at(&users, "/users", "local-users")
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["name"].as_str().expect("user name"))
        .collect();
    assert!(names.contains(&amqp_user(url)), "{url}: user in {names:?}");

    let stop = text(worker, "/stop_grace_period", what)
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .expect("stop_grace_period in seconds");
    assert!(stop > settings.worker.shutdown_grace_seconds);
}

/// IAM actions allowed by `policy`, with each statement's resources.
fn allowed(path: &str) -> BTreeMap<String, Vec<String>> {
    let policy = json_file(path);
    assert_eq!(policy["Version"], "2012-10-17", "{path}");
    let statements = policy["Statement"].as_array().expect("Statement list");
    let mut sids = BTreeSet::new();
    let mut actions = BTreeMap::new();
    let strings = |value: &Value| -> Vec<String> {
        match value {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect(),
            other => panic!("{path}: {other} is neither a string nor a list"),
        }
    };
    for statement in statements {
        let sid = statement["Sid"]
            .as_str()
            .expect("every statement has a Sid");
        assert!(
            sid.chars().all(|c| c.is_ascii_alphanumeric()),
            "{path}: Sid {sid}"
        );
        assert!(sids.insert(sid.to_owned()), "{path}: Sid {sid} twice");
        assert_eq!(statement["Effect"], "Allow", "{path}: {sid}");
        let resources = strings(&statement["Resource"]);
        for action in strings(&statement["Action"]) {
            assert!(!action.contains('*'), "{path}: {sid}: wildcard {action}");
            actions
                .entry(action)
                .or_insert_with(Vec::new)
                .extend(resources.clone());
        }
    }
    actions
}

/// The operations `src/aws/sdk.rs` classifies errors for, with where they are sent:
/// `classify("CreateAccount", Target::Payer, e)`, and the payer calls whose effect may already
/// be there: `done_unless(result, "AttachPolicy", …)`.
fn sdk_operations() -> Vec<(String, String)> {
    let source = read("src/aws/sdk.rs");
    let mut operations: Vec<(String, String)> = source
        .split("classify(\"")
        .skip(1)
        .filter_map(|rest| {
            let (operation, rest) = rest.split_once('"')?;
            let target = rest.split_once("Target::")?.1;
            let target: String = target
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            Some((operation.to_owned(), target))
        })
        .collect();
    operations.extend(
        source
            .split("done_unless(result, \"")
            .skip(1)
            .filter_map(|rest| {
                let (operation, _) = rest.split_once('"')?;
                Some((operation.to_owned(), "Payer".to_owned()))
            }),
    );
    operations
}

/// The operations `check` makes, from `src/aws/probe.rs`: `probe_error("ListRoots", &e)`.
fn probe_operations() -> Vec<String> {
    read("src/aws/probe.rs")
        .split("probe_error(\"")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('"')
                .map(|(operation, _)| operation.to_owned())
        })
        .collect()
}

#[test]
fn the_iam_policies_allow_every_call_the_worker_makes() {
    let settings = defaults();
    let payer = allowed("deploy/iam/payer-policy.json");
    let member = allowed("deploy/iam/member-role-policy.json");

    let operations = sdk_operations();
    for known in ["CreateAccount", "AttachPolicy", "AssumeRole", "CreateUser"] {
        assert!(
            operations.iter().any(|(op, _)| op == known),
            "src/aws/sdk.rs no longer names {known} through classify: update this test"
        );
    }
    let mut needed_payer: BTreeSet<String> = PAYER_ACTIONS_BEYOND_SDK_RS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let mut needed_member = BTreeSet::new();
    for (operation, target) in operations {
        match (operation.as_str(), target.as_str()) {
            ("AssumeRole", _) => needed_payer.insert("sts:AssumeRole".to_owned()),
            (_, "Payer") => needed_payer.insert(format!("organizations:{operation}")),
            (_, "Member") => needed_member.insert(format!("iam:{operation}")),
            (_, other) => panic!("unknown target {other} for {operation}"),
        };
    }
    let probed = probe_operations();
    assert!(
        probed.iter().any(|op| op == "ListRoots"),
        "src/aws/probe.rs no longer names ListRoots through probe_error: update this test"
    );
    for operation in probed {
        // STS GetCallerIdentity needs no permission.
        if operation != "GetCallerIdentity" {
            needed_payer.insert(format!("organizations:{operation}"));
        }
    }
    for action in &needed_payer {
        assert!(payer.contains_key(action), "payer policy lacks {action}");
    }
    for action in &needed_member {
        assert!(member.contains_key(action), "member policy lacks {action}");
    }

    // AssumeRole: the member accounts' access role, and the roles of other payers
    // (`[payers.NAME].role_arn`, named `AccountVending` in the documented example), nothing else.
    let role = format!(":role/{}", settings.aws.member_role_name);
    let payer_role = ":role/AccountVending";
    let assumable = &payer["sts:AssumeRole"];
    for wanted in [role.as_str(), payer_role] {
        assert!(
            assumable.iter().any(|r| r.ends_with(wanted)),
            "sts:AssumeRole allows {wanted}: {assumable:?}"
        );
    }
    assert!(
        assumable
            .iter()
            .all(|r| r.ends_with(&role) || r.ends_with(payer_role)),
        "sts:AssumeRole is only for {role} and {payer_role}: {assumable:?}"
    );
    let example = read("config/default.toml");
    assert!(
        example.contains(&format!(
            "role_arn = \"arn:aws:iam::111122223333{payer_role}\""
        )),
        "config/default.toml shows a payer role named as the policy allows"
    );

    // The member role may attach exactly the configured IAM user policies.
    let policy = json_file("deploy/iam/member-role-policy.json");
    let attach = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Action"] == "iam:AttachUserPolicy")
        .expect("an iam:AttachUserPolicy statement");
    let arns = at(
        attach,
        "/Condition/ArnEquals/iam:PolicyARN",
        "member policy",
    );
    let default_arns = settings
        .business_model
        .iam_user_policy_arns
        .clone()
        .unwrap_or_default();
    for arn in default_arns {
        assert!(
            arns.as_array().is_some_and(|a| a.contains(&json!(arn))),
            "{arn} may be attached"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_stages_runs_unprivileged_and_checks_health() {
    let source = read("Dockerfile");
    // Join continuation lines into instructions.
    let instructions: Vec<String> = source
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let starting = |word: &str| -> Vec<&String> {
        instructions
            .iter()
            .filter(|i| {
                i.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(word))
            })
            .collect()
    };
    assert!(starting("FROM").len() >= 2, "a multi-stage build");
    let user = starting("USER");
    let last_user = user.last().expect("a USER instruction");
    let who = last_user
        .split_whitespace()
        .nth(1)
        .and_then(|u| u.split(':').next())
        .expect("USER name");
    assert!(who != "root" && who != "0", "runs as {who}");
    let health = starting("HEALTHCHECK");
    let health = health.first().expect("a HEALTHCHECK");
    assert!(
        health.contains(&format!("127.0.0.1:{OBSERVABILITY_PORT}/healthz")),
        "{health}"
    );
    assert!(
        starting("ENV").iter().any(|e| e.contains(&format!(
            "WORKER__OBSERVABILITY__LISTEN=0.0.0.0:{OBSERVABILITY_PORT}"
        ))),
        "the image listens beyond loopback"
    );
    assert!(
        starting("COPY")
            .iter()
            .any(|c| c.contains("config/default.toml")),
        "the configuration is in the image"
    );
}

/// The project's Python (scripts/services.sh makes it and installs kubernetes-validate there).
fn venv_python() -> PathBuf {
    let python = repo(".venv/bin/python");
    let has_validator = python.is_file()
        && std::process::Command::new(&python)
            .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        has_validator,
        "{} lacks kubernetes-validate: run scripts/services.sh",
        python.display()
    );
    python
}

/// Runs scripts/validate-manifests.py on `dir`: (exit code, output).
fn validate_manifests(dir: &Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(venv_python())
        .arg(repo("scripts/validate-manifests.py"))
        .arg(dir)
        .output()
        .expect("run scripts/validate-manifests.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn every_manifest_validates_against_its_schema_and_a_broken_one_fails() {
    let (code, output) = validate_manifests(&repo("deploy/k8s"));
    assert_eq!(code, Some(0), "{output}");
    let manifests = deploy_files()
        .iter()
        .filter(|f| {
            f.strip_prefix("deploy/k8s/")
                .is_some_and(|f| !f.contains('/') && (is_yaml(f) || f.ends_with(".json")))
        })
        .count();
    assert!(manifests >= 12, "{manifests} manifests");
    assert!(
        output.contains(&format!("{manifests} passed, 0 failed")),
        "every manifest was validated:\n{output}"
    );

    // The same files with one mistake each: every one is caught.
    let broken = tempfile::tempdir().expect("temp dir");
    for file in deploy_files() {
        if let Some(name) = file.strip_prefix("deploy/k8s/") {
            let target = broken.path().join(name);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::copy(repo(&file), target).expect("copy");
        }
    }
    let spoil = |name: &str, from: &str, to: &str| {
        let path = broken.path().join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{name} holds {from}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    };
    spoil("deployment.yaml", "maxUnavailable: 0", "maxUnavalable: 0");
    spoil("service.yaml", "port: 9898", "port: \"ninety\"");
    spoil(
        "scaledobject.yaml",
        "stabilizationWindowSeconds: 600",
        "stabilisationWindowSeconds: 600",
    );
    spoil("prometheusrule.yaml", "for: 10m", "for: ten minutes");
    spoil("servicemonitor.yaml", "endpoints:", "endpoint:");
    spoil("grafana-dashboard.json", "\"refId\"", "\"refid\"");
    let (code, output) = validate_manifests(broken.path());
    assert_eq!(code, Some(1), "{output}");
    for name in [
        "deployment.yaml",
        "service.yaml",
        "scaledobject.yaml",
        "prometheusrule.yaml",
        "servicemonitor.yaml",
        "grafana-dashboard.json",
    ] {
        assert!(
            output.contains(&format!("FAIL {name}")),
            "{name} fails:\n{output}"
        );
    }
}

/// RabbitMQ's own exporter's per-queue metrics that the alerts and the dashboard use.
const RABBITMQ_METRICS: &[&str] = &[
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
];

/// Every series name the worker's /metrics shows, from its `# TYPE` lines (each labelled family
/// counted once, so that it shows).
fn exported_metrics() -> BTreeSet<String> {
    let metrics = aws_account_worker::observability::Metrics::new();
    metrics.failed("INVALID_EMAIL");
    metrics.retried("ORDER_BUSY");
    metrics.dead_lettered("AWS_UNREACHABLE");
    metrics.settle_failure("event");
    metrics.aws_call("CreateAccount", "ok");
    // Labelled gauges show once they have a series.
    let _held = metrics.slot_held("default");
    let _waiting = metrics.slot_waiter("default");
    let rendered = metrics.render();
    let mut names = BTreeSet::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The metric names an expression selects.
fn selected_metrics(expr: &promql_parser::parser::Expr, out: &mut Vec<String>) {
    use promql_parser::parser::Expr;
    let vector = |vs: &promql_parser::parser::VectorSelector, out: &mut Vec<String>| match &vs.name
    {
        Some(name) => out.push(name.clone()),
        None => out.extend(
            vs.matchers
                .matchers
                .iter()
                .filter(|m| m.name == "__name__")
                .map(|m| m.value.clone()),
        ),
    };
    match expr {
        Expr::Aggregate(a) => {
            selected_metrics(&a.expr, out);
            if let Some(param) = &a.param {
                selected_metrics(param, out);
            }
        }
        Expr::Unary(u) => selected_metrics(&u.expr, out),
        Expr::Binary(b) => {
            selected_metrics(&b.lhs, out);
            selected_metrics(&b.rhs, out);
        }
        Expr::Paren(p) => selected_metrics(&p.expr, out),
        Expr::Subquery(s) => selected_metrics(&s.expr, out),
        Expr::VectorSelector(vs) => vector(vs, out),
        Expr::MatrixSelector(ms) => vector(&ms.vs, out),
        Expr::Call(call) => {
            for arg in &call.args.args {
                selected_metrics(arg, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// What is wrong with one expression: it does not parse, selects no metric, or selects one
/// that neither the worker nor RabbitMQ exports.
fn expression_problems(expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    let parsed = match promql_parser::parser::parse(expr) {
        Ok(parsed) => parsed,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let mut metrics = Vec::new();
    selected_metrics(&parsed, &mut metrics);
    if metrics.is_empty() {
        return vec!["selects no metric".to_owned()];
    }
    metrics
        .into_iter()
        .filter(|m| !known.contains(m))
        .map(|m| format!("{m} is not exported by the worker or RabbitMQ"))
        .collect()
}

/// Every PromQL expression of the alert rules and the dashboard, with where it is.
fn promql_expressions() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let rules = yaml("deploy/k8s/prometheusrule.yaml");
    for group in at(&rules, "/spec/groups", "prometheusrule")
        .as_array()
        .expect("groups")
    {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: a severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: a summary"
            );
            found.push((format!("alert {name}"), expr.to_owned()));
        }
    }
    let dashboard = json_file("deploy/k8s/grafana-dashboard.json");
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            found.push((format!("panel {title}"), expr.to_owned()));
        }
    }
    found
}

#[test]
fn the_alerts_and_the_dashboard_parse_and_use_only_exported_metrics() {
    let exported = exported_metrics();
    for name in [
        "aws_account_worker_orders_received_total",
        "aws_account_worker_order_processing_seconds_bucket",
        "aws_account_worker_orders_in_flight",
    ] {
        assert!(exported.contains(name), "{name} in {exported:?}");
    }
    let mut known = exported.clone();
    known.extend(RABBITMQ_METRICS.iter().map(|m| (*m).to_owned()));

    let expressions = promql_expressions();
    assert!(expressions.len() >= 20, "{} expressions", expressions.len());
    let mut problems = Vec::new();
    for (place, expr) in &expressions {
        for problem in expression_problems(expr, &known) {
            problems.push(format!("{place}: {problem}: {expr}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The dashboard covers what operators look at.
    let all: String = expressions.iter().map(|(_, e)| e.as_str()).collect();
    for needed in [
        "orders_provisioned_total",
        "orders_failed_total",
        "orders_retried_total",
        "orders_dead_lettered_total",
        "aws-account-orders.dlq",
        "creation_slots_held",
        "aws_calls_total",
        "order_processing_seconds_bucket",
    ] {
        assert!(all.contains(needed), "nothing shows {needed}");
    }

    // And the check itself catches what it is for.
    assert!(
        expression_problems(
            "sum(rate(aws_account_worker_orders_received_total[5m])",
            &known
        )[0]
        .contains("does not parse")
    );
    assert!(
        expression_problems(
            "rate(aws_account_worker_orders_receved_total[5m]) > 0",
            &known
        )[0]
        .contains("aws_account_worker_orders_receved_total is not exported")
    );
    assert!(expression_problems("vector(1)", &known)[0].contains("selects no metric"));
    assert!(
        expression_problems("{__name__=\"rabbitmq_nope\"}", &known)[0].contains("rabbitmq_nope")
    );
}

/// The default of `NAME = os.environ.get("NAME", "default")` in a Python script.
fn python_default(source: &str, name: &str) -> String {
    let start = format!("{name} = os.environ.get(\"{name}\", \"");
    source
        .split_once(&start)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_owned())
        .unwrap_or_else(|| panic!("no default for {name}"))
}

#[test]
fn the_compose_stack_publishes_the_sample_orders_once_the_workers_consume_and_prints_events() {
    let settings = defaults();
    let compose = yaml("docker-compose.yml");
    let what = "docker-compose.yml";
    let services = at(&compose, "/services", what);

    // The workers are healthy once consuming.
    let check = at(&services["worker"], "/healthcheck/test", what).to_string();
    assert!(check.contains("/readyz"), "{check}");

    for (name, script) in [
        ("publish-orders", "deploy/compose/publish-orders.py"),
        ("print-events", "deploy/compose/print-events.py"),
    ] {
        let service = &services[name];
        let context = text(service, "/build/context", name);
        let dockerfile = text(service, "/build/dockerfile", name);
        assert!(
            repo(context).join(dockerfile).is_file(),
            "{name}: {context}/{dockerfile}"
        );
        let mounts: Vec<&str> = service["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| v.as_str().expect("short syntax"))
            .collect();
        for mount in &mounts {
            let source = mount.split(':').next().expect("source");
            assert!(repo(source).exists(), "{name}: {mount}");
            assert!(mount.ends_with(":ro"), "{name}: {mount} read-only");
        }
        assert!(
            mounts
                .iter()
                .any(|m| m.trim_start_matches("./").starts_with(script)),
            "{name} runs {script}"
        );
        let command = at(service, "/command", name).to_string();
        let in_container = mounts
            .iter()
            .find(|m| m.trim_start_matches("./").starts_with(script))
            .and_then(|m| m.split(':').nth(1))
            .expect("mount target");
        assert!(command.contains(in_container), "{name}: {command}");
        let url = text(service, "/environment/AMQP_URL", name);
        assert!(url.contains("@rabbitmq:5672"), "{name}: {url}");

        // The script's defaults are the worker's default names.
        let source = read(script);
        assert_eq!(
            python_default(&source, "RESULTS_EXCHANGE"),
            settings.amqp.results_exchange
        );
        if name == "publish-orders" {
            assert_eq!(
                python_default(&source, "ORDERS_EXCHANGE"),
                settings.amqp.orders_exchange
            );
            assert_eq!(
                python_default(&source, "ORDERS_ROUTING_KEY"),
                settings.amqp.orders_routing_key
            );
        }
    }

    let publish = &services["publish-orders"];
    assert_eq!(
        text(publish, "/depends_on/worker/condition", what),
        "service_healthy",
        "orders are published once the workers consume"
    );
    assert_eq!(text(publish, "/restart", what), "no", "one-shot");
    let orders_dir = text(publish, "/environment/ORDERS_DIR", what);
    let mounted = publish["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .any(|m| m == format!("./examples/orders:{orders_dir}:ro"));
    assert!(mounted, "examples/orders is mounted at {orders_dir}");
    assert!(
        std::fs::read_dir(repo("examples/orders"))
            .expect("examples/orders")
            .filter_map(Result::ok)
            .any(|f| f.path().extension().is_some_and(|e| e == "json")),
        "sample orders to publish"
    );
}
