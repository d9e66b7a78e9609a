//! The deployment material (Dockerfile, docker-compose.yml, deploy/) parses with real parsers
//! and agrees with the code: probe paths and port, the shutdown grace, the RabbitMQ topology the
//! worker declares, the AWS operations it calls. Needs no broker and no moto.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aws_account_worker::broker::topology::{retry_delays, retry_queue};
use aws_account_worker::config::{DEFAULTS, Settings};
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

/// The ConfigMap's embedded config.toml.
fn configmap_toml() -> String {
    let configmap = yaml("deploy/k8s/configmap.yaml");
    text(&configmap, "/data/config.toml", "configmap").to_owned()
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
        "deploy/k8s/configmap.yaml",
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

    // --config names config.toml in the directory where the ConfigMap is mounted.
    let configmap = yaml("deploy/k8s/configmap.yaml");
    let configmap_name = text(&configmap, "/metadata/name", "configmap");
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
        configmap.pointer(&format!("/data/{key}")).is_some(),
        "the ConfigMap has no key {key}"
    );

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
    let value: u64 = text(trigger, "/metadata/value", what)
        .parse()
        .expect("value is a number in a string");
    assert!(value > 0);

    // The trigger's host is the workers' own broker URL, from the same Secret.
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
    let (secret, key) = secret_ref(container(&deployment), "WORKER__AMQP__URL");
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
            quorum(json!({
                "x-dead-letter-exchange": amqp.dead_letter_exchange,
                "x-delivery-limit": amqp.delivery_limit,
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
    queues.push(queue(&amqp.unrouted_queue, quorum(json!({}))));
    let bindings = vec![
        binding(&amqp.dead_letter_exchange, &amqp.dead_letter_queue, ""),
        binding(
            &amqp.orders_exchange,
            &amqp.orders_queue,
            &amqp.orders_routing_key,
        ),
        binding(&amqp.unrouted_exchange, &amqp.unrouted_queue, ""),
    ];
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
    let vhosts = at(&definitions, "/vhosts", "definitions");
    assert!(
        vhosts
            .as_array()
            .is_some_and(|v| v.iter().any(|h| h["name"] == "/")),
        "the / vhost is defined"
    );
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
/// `classify("CreateAccount", Target::Payer, e)`.
fn sdk_operations() -> Vec<(String, String)> {
    let source = read("src/aws/sdk.rs");
    source
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
        .collect()
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
