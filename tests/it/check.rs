//! `aws-account-worker check` as operators run it, against the real RabbitMQ and moto: a
//! healthy deployment passes every check and exits 0; each broken part fails its own check
//! (exit 1), later checks still run where they make sense, and the ones that cannot are skipped.
//! The payers live in the moto without managed policies: `check` makes no IAM call.

use std::time::Duration;

use aws_account_worker::check::CHECKS;
use aws_sdk_organizations::types::{OrganizationFeatureSet, PolicyType};
use aws_sdk_sts::config::Credentials;

use crate::support::{
    BIN, ClosedPort, PROVIDER_DOMAIN, Payer, TestEnv, amqp_section, apply_policies, assume,
    delete_policy, digits, moto_config, moto_fast_endpoint, put_policy, remove_policies,
    wait_for_policy, write_config,
};

/// What one run of `check` printed, and how it ended.
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// The line of `check`, which must be there exactly once.
    fn line(&self, check: &str) -> &str {
        let found: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| {
                l.get(5..)
                    .is_some_and(|rest| rest.starts_with(&format!("{check}:")))
            })
            .collect();
        assert_eq!(found.len(), 1, "one `{check}` line:\n{self}");
        found[0]
    }

    /// Asserts the line of `check` starts with `status` (`ok  `, `FAIL`, `skip`) and contains
    /// every one of `parts`.
    fn expect(&self, check: &str, status: &str, parts: &[&str]) {
        let line = self.line(check);
        assert!(
            line.starts_with(&format!("{status} {check}: ")),
            "`{check}` is {status}:\n{self}"
        );
        for part in parts {
            assert!(
                line.contains(part),
                "`{check}` line names `{part}`:\n{self}"
            );
        }
    }

    /// Asserts one line per check, in order, and the exit code.
    fn expect_shape(&self, code: i32) {
        let checks: Vec<&str> = self
            .stdout
            .lines()
            .map(|l| {
                l.get(5..)
                    .and_then(|r| r.split_once(':'))
                    .map_or("", |(c, _)| c)
            })
            .collect();
        assert_eq!(checks, CHECKS, "one line per check, in order:\n{self}");
        assert_eq!(self.code, Some(code), "exit code:\n{self}");
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `aws-account-worker --config <toml> check` with `credentials` against the AWS at
/// `endpoint`, in an environment of its own, with `env` on top.
async fn run_check(
    toml: &str,
    credentials: &Credentials,
    endpoint: &str,
    env: &[(&str, &str)],
) -> Checked {
    run_check_as(toml, Some(credentials), endpoint, env).await
}

/// Like `run_check`; with `None`, the SDK finds no credentials at all.
async fn run_check_as(
    toml: &str,
    credentials: Option<&Credentials>,
    endpoint: &str,
    env: &[(&str, &str)],
) -> Checked {
    let config = write_config(toml);
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["--config", config.path().to_str().expect("path"), "check"])
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("RUST_LOG", "warn");
    if let Some(credentials) = credentials {
        command
            .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
            .env(
                "AWS_SESSION_TOKEN",
                credentials.session_token().unwrap_or_default(),
            );
    }
    command
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("check ends within 90 s")
        .expect("run check");
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A test environment (declared topology, a payer with an organization and an SCP) in the moto
/// without managed policies, with the payer's SCP configured and `extra` TOML.
async fn healthy(extra: &str) -> TestEnv {
    let env = TestEnv::fast(&format!(
        "[business_model]\nservice_control_policies = [\"{{scp}}\"]\n{extra}"
    ))
    .await;
    apply_policies(&env.settings).await;
    env
}

/// Credentials of a fresh moto account that belongs to no organization.
async fn account_without_organization() -> (String, Credentials) {
    let base = moto_config(
        &moto_fast_endpoint(),
        Credentials::new("testing", "testing", None, None, "test"),
    );
    let account = digits(12);
    let credentials = assume(
        &base,
        &format!("arn:aws:iam::{account}:role/loner"),
        "test-loner",
    )
    .await;
    (account, credentials)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_deployment_passes_every_check() {
    let env = healthy("").await;
    let checked = run_check(
        &env.toml,
        &env.payer.credentials,
        &env.payer.endpoint,
        &[("WORKER__RETRY__MAX_REPLAYS", "4")],
    )
    .await;
    checked.expect_shape(0);
    assert!(
        checked.stdout.lines().all(|l| l.starts_with("ok   ")),
        "every check ok:\n{checked}"
    );
    checked.expect(
        "configuration",
        "ok  ",
        &["valid", "environment WORKER__RETRY__MAX_REPLAYS"],
    );
    checked.expect(
        "iam names",
        "ok  ",
        &["OrganizationAccountAccessRole", "1 IAM user policy ARN"],
    );
    checked.expect("broker", "ok  ", &["connected to 127.0.0.1:5672"]);
    checked.expect("topology", "ok  ", &["all 4 exchanges and"]);
    checked.expect(
        "policies",
        "ok  ",
        &[
            &format!("delivery limit 20 on {}", env.settings.amqp.orders_queue),
            "bounded to 100000 events and 168 hours",
        ],
    );
    checked.expect("aws credentials", "ok  ", &[&env.payer.account_id]);
    checked.expect(
        "organization",
        "ok  ",
        &[
            &format!("management account {}", env.payer.account_id),
            "all features",
            "SCPs enabled on root r-",
        ],
    );
    checked.expect("service control policies", "ok  ", &[&env.payer.scp_id]);
    for secret in ["guest:guest", env.payer.credentials.secret_access_key()] {
        assert!(
            !checked.stdout.contains(secret) && !checked.stderr.contains(secret),
            "no secret in the output"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_fails_skips_the_topology_and_aws_is_still_checked() {
    let env = healthy("").await;
    let closed = ClosedPort::new();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed.port);
    let checked = run_check(
        &env.toml,
        &env.payer.credentials,
        &env.payer.endpoint,
        &[("WORKER__AMQP__URL", &url)],
    )
    .await;
    checked.expect_shape(1);
    checked.expect(
        "broker",
        "FAIL",
        &["cannot connect to 127.0.0.1:", "refused", "check amqp.url"],
    );
    checked.expect("topology", "skip", &["the broker is not reachable"]);
    checked.expect("policies", "skip", &["the broker is not reachable"]);
    checked.expect("aws credentials", "ok  ", &[]);
    checked.expect("organization", "ok  ", &[]);
    checked.expect("service control policies", "ok  ", &[]);
    assert!(
        !checked.stdout.contains("guest:guest") && !checked.stderr.contains("guest:guest"),
        "the broker password is never printed:\n{checked}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_broker_fails_after_one_short_attempt() {
    // Accepts connections and never answers: the check must give up on its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let env = healthy("").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = std::time::Instant::now();
    let checked = run_check(
        &env.toml,
        &env.payer.credentials,
        &env.payer.endpoint,
        &[("WORKER__AMQP__URL", &url)],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "one attempt of 5 s, no retry loop: {:?}\n{checked}",
        started.elapsed()
    );
    checked.expect_shape(1);
    checked.expect("broker", "FAIL", &["no answer within 5s"]);
    checked.expect("topology", "skip", &[]);
    hold.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topology_names_what_is_missing() {
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let id = digits(10);
    let toml = format!(
        "{}\n[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\"\nservice_control_policies = [\"{}\"]\n",
        amqp_section(&id),
        payer.scp_id
    );
    let checked = run_check(&toml, &payer.credentials, &payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "topology",
        "FAIL",
        &[
            &format!("missing exchanges test-orders.{id}.dlx, test.orders.{id},"),
            &format!(
                "queues test-orders.{id}.dlq, test-orders.{id}, test-orders.{id}.retry.1000ms,"
            ),
            &format!("test.results.{id}.unrouted"),
            "start the worker once",
            "deploy/rabbitmq/definitions.json",
        ],
    );
    checked.expect("broker", "ok  ", &[]);
    checked.expect("service control policies", "ok  ", &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_aws_fails_the_credentials_and_skips_what_needs_them() {
    let env = healthy("").await;
    let closed = ClosedPort::new();
    let endpoint = format!("http://127.0.0.1:{}", closed.port);
    let checked = run_check(&env.toml, &env.payer.credentials, &endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "aws credentials",
        "FAIL",
        &[
            "GetCallerIdentity failed (no answer from AWS)",
            "AWS_ENDPOINT_URL",
        ],
    );
    checked.expect("organization", "skip", &["the AWS credentials do not work"]);
    checked.expect(
        "service control policies",
        "skip",
        &["the AWS credentials do not work"],
    );
    checked.expect("broker", "ok  ", &[]);
    checked.expect("topology", "ok  ", &[]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_aws_credentials_at_all_fail_on_one_line() {
    let env = healthy("").await;
    let checked = run_check_as(&env.toml, None, &env.payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "aws credentials",
        "FAIL",
        &[
            "GetCallerIdentity failed (not sent)",
            "no credentials found in chain",
            "give the SDK credentials",
        ],
    );
    checked.expect("organization", "skip", &["the AWS credentials do not work"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_in_no_organization_fails_the_organization_check() {
    let env = healthy("").await;
    let (account, credentials) = account_without_organization().await;
    let checked = run_check(&env.toml, &credentials, &env.payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect("aws credentials", "ok  ", &[&format!("account {account}")]);
    checked.expect(
        "organization",
        "FAIL",
        &[
            &format!("account {account} is not in an organization"),
            "AWSOrganizationsNotInUseException",
            "management account",
        ],
    );
    checked.expect(
        "service control policies",
        "skip",
        &["no organization to look in"],
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organization_without_all_features_fails() {
    let env = healthy("").await;
    let (_, credentials) = account_without_organization().await;
    let config = moto_config(&moto_fast_endpoint(), credentials.clone());
    aws_sdk_organizations::Client::new(&config)
        .create_organization()
        .feature_set(OrganizationFeatureSet::ConsolidatedBilling)
        .send()
        .await
        .expect("create a consolidated-billing organization");
    let checked = run_check(&env.toml, &credentials, &env.payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "organization",
        "FAIL",
        &[
            "feature set is CONSOLIDATED_BILLING, not ALL",
            "enable all features",
        ],
    );
    // The payer's SCP is not in this organization.
    checked.expect(
        "service control policies",
        "FAIL",
        &["not found in o-", &env.payer.scp_id],
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scps_disabled_on_the_root_fail_the_organization_check() {
    let env = healthy("").await;
    let orgs = env.payer.organizations();
    let roots = orgs.list_roots().send().await.expect("list roots");
    let root = roots.roots()[0].id().expect("root id").to_owned();
    orgs.disable_policy_type()
        .root_id(&root)
        .policy_type(PolicyType::ServiceControlPolicy)
        .send()
        .await
        .expect("moto disables the SCP policy type");
    let checked = run_check(&env.toml, &env.payer.credentials, &env.payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "organization",
        "FAIL",
        &[
            &format!("the SERVICE_CONTROL_POLICY type is not enabled on root {root}"),
            &format!("enable-policy-type --root-id {root} --policy-type SERVICE_CONTROL_POLICY"),
        ],
    );
    checked.expect("service control policies", "ok  ", &[&env.payer.scp_id]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_scp_id_is_named_with_where_it_is_configured() {
    let env = healthy(
        "[marketplaces.\"MP-91673\"]\nservice_control_policies = [\"{scp}\", \"p-doesnotexist\"]\n",
    )
    .await;
    let checked = run_check(&env.toml, &env.payer.credentials, &env.payer.endpoint, &[]).await;
    checked.expect_shape(1);
    checked.expect(
        "service control policies",
        "FAIL",
        &[
            "p-doesnotexist (in marketplaces.\"MP-91673\".service_control_policies)",
            "create them in the payer's organization or fix the ids",
        ],
    );
    assert!(
        !checked
            .line("service control policies")
            .contains(&env.payer.scp_id),
        "the SCP that exists is not named as missing:\n{checked}"
    );
    checked.expect("organization", "ok  ", &[]);
    env.cleanup().await;
}

/// A policy ARN that IAM refuses stops the configuration from loading, as `run` does, naming
/// it, its key and why: configuration and the IAM names check read ARNs with one grammar (it
/// used to load, then fail only the IAM names check).
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_iam_user_policy_arn_fails_naming_it_and_its_key() {
    let toml = format!(
        "[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\"\niam_user_policy_arns = [\"arn:aws:iam::aws:policy/Administrator Access\"]\n"
    );
    let nobody = Credentials::new("testing", "testing", None, None, "test");
    let checked = run_check(&toml, &nobody, "http://127.0.0.1:1", &[]).await;
    assert_eq!(checked.code, Some(2), "{checked}");
    for part in [
        "business_model.iam_user_policy_arns",
        "`arn:aws:iam::aws:policy/Administrator Access`",
        "letters, digits and +=,.@_- only",
    ] {
        assert!(checked.stderr.contains(part), "{part}:\n{checked}");
    }
    assert!(checked.stdout.is_empty(), "no check ran:\n{checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_that_does_not_load_exits_2_naming_the_key() {
    let toml = format!(
        "[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\"\niam_user_policy_arns = [\"AdministratorAccess\"]\n"
    );
    let nobody = Credentials::new("testing", "testing", None, None, "test");
    let checked = run_check(&toml, &nobody, "http://127.0.0.1:1", &[]).await;
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked
            .stderr
            .contains("business_model.iam_user_policy_arns"),
        "{checked}"
    );
    assert!(checked.stdout.is_empty(), "no check ran:\n{checked}");
}

/// Two payers in the moto without managed policies: A's credentials are the worker's, B is
/// reached through a role; B's OPCO gets `b_scps` (TOML list items; `{b_scp}` is B's SCP).
async fn two_payers(b_scps: &str) -> (TestEnv, Payer) {
    let a = Payer::on(&moto_fast_endpoint()).await;
    let b = Payer::on(&moto_fast_endpoint()).await;
    let toml = format!(
        "[business_model]\nservice_control_policies = [\"{{scp}}\"]\n\
         [payers.b]\nrole_arn = \"arn:aws:iam::{b_account}:role/payer\"\n\
         [marketplaces.\"MP-91673\"]\nmulti_payer = true\n\
         [marketplaces.\"MP-91673\".opcos.\"TA-0-9046-4815-5226\"]\npayer = \"b\"\n\
         service_control_policies = [{b_scps}]\n",
        b_account = b.account_id,
        b_scps = b_scps.replace("{b_scp}", &b.scp_id),
    );
    let config = a.config.clone();
    let env = TestEnv::with_aws(&toml, a, config).await;
    apply_policies(&env.settings).await;
    (env, b)
}

/// The `organization` lines, one per payer.
fn organization_lines(checked: &Checked) -> Vec<&str> {
    checked
        .stdout
        .lines()
        .filter(|l| l.get(5..).is_some_and(|r| r.starts_with("organization: ")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_payer_gets_an_organization_line_and_its_scps_are_looked_for_in_its_organization() {
    let (env, b) = two_payers("\"{b_scp}\"").await;
    let checked = run_check(&env.toml, &env.payer.credentials, &env.payer.endpoint, &[]).await;
    assert_eq!(checked.code, Some(0), "{checked}");
    let organizations = organization_lines(&checked);
    assert_eq!(organizations.len(), 2, "one line per payer:\n{checked}");
    assert!(
        organizations[0].starts_with("ok   organization: payer default: o-")
            && organizations[0].contains(&format!("management account {}", env.payer.account_id)),
        "{checked}"
    );
    let role = format!("arn:aws:iam::{}:role/payer", b.account_id);
    assert!(
        organizations[1].starts_with(&format!("ok   organization: payer b: role {role}: o-"))
            && organizations[1].contains(&format!("management account {}", b.account_id)),
        "{checked}"
    );
    checked.expect(
        "service control policies",
        "ok  ",
        &[
            &format!("payer default: 1 SCP found: {}", env.payer.scp_id),
            &format!("payer b: 1 SCP found: {}", b.scp_id),
        ],
    );

    env.cleanup().await;

    // A's SCP configured for B's OPCO: it is not in B's organization.
    let (env, b) = two_payers("\"{scp}\"").await;
    let checked = run_check(&env.toml, &env.payer.credentials, &env.payer.endpoint, &[]).await;
    assert_eq!(checked.code, Some(1), "{checked}");
    checked.expect(
        "service control policies",
        "FAIL",
        &[
            &format!("payer default: 1 SCP found: {}", env.payer.scp_id),
            "payer b: not found in o-",
            &format!(
                "{} (in marketplaces.\"MP-91673\".opcos.\"TA-0-9046-4815-5226\".service_control_policies)",
                env.payer.scp_id
            ),
        ],
    );
    assert!(!checked.stdout.contains(&b.scp_id), "{checked}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_format_json_is_one_document_with_every_check_and_the_same_exit_code() {
    let env = healthy("").await;
    let closed = ClosedPort::new();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed.port);
    let json = run_check_json(&env, &url).await;
    assert_eq!(json.code, Some(1), "exit code unchanged:\n{json}");
    let document: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("standard output is one JSON document");
    assert_eq!(document["ok"], false, "{document}");
    assert_eq!(document["failed"], 1, "{document}");
    let checks = document["checks"].as_array().expect("checks");
    let skipped = checks.iter().filter(|c| c["status"] == "skip").count();
    assert!(skipped >= 1, "what needs the broker is skipped: {document}");
    assert_eq!(document["skipped"], skipped, "{document}");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, CHECKS, "every check, in order: {document}");
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["status"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status("broker"), "fail");
    assert_eq!(status("topology"), "skip");
    assert_eq!(status("aws credentials"), "ok");
    let broker = checks
        .iter()
        .find(|c| c["name"] == "broker")
        .expect("broker");
    assert!(
        broker["detail"]
            .as_str()
            .is_some_and(|d| d.contains("check amqp.url")),
        "{broker}"
    );
    assert!(!json.stdout.contains("guest:guest"), "no password: {json}");
    env.cleanup().await;
}

/// `check --format json` against `env` with the broker at `url`.
async fn run_check_json(env: &TestEnv, url: &str) -> Checked {
    let config = write_config(&env.toml);
    let credentials = &env.payer.credentials;
    let output = tokio::process::Command::new(BIN)
        .args(["--config", config.path().to_str().expect("path")])
        .args(["check", "--format", "json"])
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("RUST_LOG", "warn")
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
        .env(
            "AWS_SESSION_TOKEN",
            credentials.session_token().unwrap_or_default(),
        )
        .env("AWS_ENDPOINT_URL", &env.payer.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("WORKER__AMQP__URL", url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("check ends within 90 s")
        .expect("run check");
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_mistyped_and_shadowed_policies_fail_the_policies_check() {
    let env = healthy("").await;
    let amqp = &env.settings.amqp;
    let run = || run_check(&env.toml, &env.payer.credentials, &env.payer.endpoint, &[]);

    // Missing: the worker's own policies were never applied.
    remove_policies(&env.settings).await;
    for policy in aws_account_worker::broker::topology::policies(amqp) {
        wait_for_policy(&env.settings, &policy.queue, None).await;
    }
    let checked = run().await;
    checked.expect_shape(1);
    checked.expect(
        "policies",
        "FAIL",
        &[
            &format!("queue {} is under no policy", amqp.orders_queue),
            &format!(
                "the delivery limit in force on {} is 100, the worker expects amqp.delivery_limit = 20",
                amqp.orders_queue
            ),
            "deploy/rabbitmq/definitions.json",
        ],
    );
    checked.expect("topology", "ok  ", &[]);

    // Mistyped value: the worker expects another delivery limit than the policy gives.
    apply_policies(&env.settings).await;
    let checked = run_check(
        &env.toml,
        &env.payer.credentials,
        &env.payer.endpoint,
        &[("WORKER__AMQP__DELIVERY_LIMIT", "7")],
    )
    .await;
    checked.expect(
        "policies",
        "FAIL",
        &["is 20, the worker expects amqp.delivery_limit = 7"],
    );

    // Shadowed: a catch-all policy of this test at a higher priority takes the orders queue,
    // and would drop orders when full.
    let shadow = format!("{}.shadow", amqp.orders_queue);
    let pattern = format!("^{}", amqp.orders_queue.replace('.', "\\."));
    put_policy(
        &env.settings,
        &shadow,
        &pattern,
        50,
        &serde_json::json!({"overflow": "drop-head", "max-length": 1000}),
        &amqp.orders_queue,
    )
    .await;
    let checked = run().await;
    checked.expect(
        "policies",
        "FAIL",
        &[
            &format!(
                "queue {} is under policy {shadow}, not {}: a policy of higher priority shadows it",
                amqp.orders_queue, amqp.orders_queue
            ),
            &format!(
                "policy {shadow} sets overflow = \"drop-head\" on queue {}",
                amqp.orders_queue
            ),
            "sets max-length = 1000 on queue",
        ],
    );
    delete_policy(&env.settings, &shadow).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_management_api_fails_the_policies_check_and_names_the_fix() {
    let env = healthy("").await;
    let closed = ClosedPort::new();
    let url = format!("http://127.0.0.1:{}", closed.port);
    let checked = run_check(
        &env.toml,
        &env.payer.credentials,
        &env.payer.endpoint,
        &[("WORKER__AMQP__MANAGEMENT_URL", &url)],
    )
    .await;
    checked.expect_shape(1);
    checked.expect(
        "policies",
        "FAIL",
        &[
            "cannot read the policies through the management API at 127.0.0.1:",
            "enable the rabbitmq_management plugin",
            "amqp.management_url",
        ],
    );
    checked.expect("topology", "ok  ", &[]);
    env.cleanup().await;
}
