//! `aws-account-worker explain ORDER.json` as operators run it: the plan of a sample order and
//! of an OPCO order with each setting's origin (snapshots), the connection routing, exit 1 with
//! the failure for an order that would fail, exit 2 for a file that is not an order. No broker
//! and no AWS are involved: the environment points both at nothing.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::{BIN, write_config};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A configuration with a multi_payer marketplace whose OPCO entry is keyed by a tier2 account,
/// and a sandbox payer for test orders.
const OPCO_CONFIG: &str = r#"
[business_model]
provider_email_domain = "aws.provider.example"
iam_user_template_id = "TL-100-200-301"

[payers.iberia]
role_arn = "arn:aws:iam::111122223333:role/AccountVending"

[payers.sandbox]
role_arn = "arn:aws:iam::444455556666:role/AccountVending"

[connections]
test = "sandbox"

[marketplaces."MP-91673"]
multi_payer = true
service_control_policies = ["p-market0001"]

[marketplaces."MP-91673".opcos."TA-0-1111-2222-3333"]
payer = "iberia"
organizational_unit_id = "ou-ab12-cdef3456"
iam_user_template_id = "TL-300-000-002"
"#;

/// Runs `explain` on `order` with the configuration `config`: (exit code, stdout, stderr).
fn explain(config: &str, order: &str) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .args(["--config", config, "explain", order])
        // Nothing is reachable: explain must not need the broker or AWS.
        .env("WORKER__AMQP__URL", "amqp://guest:guest@127.0.0.1:9/%2f")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run explain");
    (
        output.status.code(),
        String::from_utf8(output.stdout).expect("utf-8"),
        String::from_utf8(output.stderr).expect("utf-8"),
    )
}

fn path(relative: &str) -> String {
    format!("{ROOT}/{relative}")
}

/// An order file written from `value`.
fn order_file(value: &Value) -> tempfile::NamedTempFile {
    write_config(&value.to_string())
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(path(&format!("tests/fixtures/{name}"))).expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

#[test]
fn a_sample_order_explained() {
    let (code, out, err) = explain(
        &path("examples/demo.toml"),
        &path("examples/orders/1-spam.json"),
    );
    assert_eq!(code, Some(0), "{err}");
    println!("{out}");
    assert_eq!(
        out,
        "\
result provisioned (aws.account.provisioned)
request_id PR-7001-0001-0001-001 (order)
asset_id AS-7001-0001-0001 (order)
marketplace_id MP-91673 (order)
tier1_id TA-0-9046-4815-5226 (order)
tier2_id - (order)
payer default (global default)
account_model SPAM (request parameter awsAccountModel)
provider_email_domain aws.provider.example (global default)
account_email aws+as-7001-0001-0001@aws.provider.example (spam_email_template: global default)
account_name AS-7001-0001-0001 1234567 Hospitaller (derived from the order)
access iam_user (rule: SPAM always gives an IAM user)
iam_user_name marc.serrat (request parameter iam_user_name)
iam_user_policy_arns arn:aws:iam::aws:policy/AdministratorAccess (global default)
service_control_policies - (global default)
organizational_unit_id - (not configured)
template_id TL-100-200-301 (global default)
connection production -> payer default (order)
"
    );
}

#[test]
fn every_sample_order_would_be_provisioned() {
    for (name, access) in [
        ("1-spam.json", "access iam_user"),
        ("2-ecam-iam-user.json", "access iam_user"),
        ("3-ecam-root-user.json", "access root_user"),
    ] {
        let (code, out, err) = explain(
            &path("examples/demo.toml"),
            &path(&format!("examples/orders/{name}")),
        );
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(out.starts_with("result provisioned"), "{name}: {out}");
        assert!(out.contains(access), "{name}: {out}");
        assert!(
            out.lines().all(|l| l.ends_with(')')),
            "{name}: every line is `key value (origin)`:\n{out}"
        );
    }
}

#[test]
fn an_opco_order_on_tier2_explained() {
    let config = write_config(OPCO_CONFIG);
    let config = config.path().to_str().expect("path");
    let (code, out, err) = explain(config, &path("tests/fixtures/purchase_tier2_opco.json"));
    assert_eq!(code, Some(0), "{err}");
    println!("{out}");
    assert_eq!(
        out,
        "\
result provisioned (aws.account.provisioned)
request_id PR-5852-1608-1567-002 (order)
asset_id AS-5852-1608-1567 (order)
marketplace_id MP-91673 (order)
tier1_id TA-0-5555-6666-7777 (order)
tier2_id TA-0-1111-2222-3333 (order)
payer iberia (OPCO tier2 TA-0-1111-2222-3333)
account_model ECAM (request parameter awsAccountModel)
provider_email_domain aws.provider.example (global default)
account_email it-admin@hospitaller.example (request parameter aws_account_email)
account_name AS-5852-1608-1567 1234567 Hospitaller (derived from the order)
access iam_user (provide_root_user_for_ecam: global default)
iam_user_name marc.serrat (request parameter iam_user_name)
iam_user_policy_arns arn:aws:iam::aws:policy/AdministratorAccess (global default)
service_control_policies p-abcd1234 (request parameter provisionServiceControlPolicies)
organizational_unit_id ou-ab12-cdef3456 (OPCO tier2 TA-0-1111-2222-3333)
template_id TL-300-000-002 (OPCO tier2 TA-0-1111-2222-3333)
connection production -> payer iberia (order)
"
    );

    // An entry for its tier1 as well: tier1 wins.
    let both = format!(
        "{OPCO_CONFIG}\n[marketplaces.\"MP-91673\".opcos.\"TA-0-5555-6666-7777\"]\npayer = \"default\"\n"
    );
    let both = write_config(&both);
    let (code, out, _) = explain(
        both.path().to_str().expect("path"),
        &path("tests/fixtures/purchase_tier2_opco.json"),
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains("payer default (OPCO tier1 TA-0-5555-6666-7777)\n"),
        "{out}"
    );
    assert!(
        out.contains("template_id TL-100-200-301 (global default)\n"),
        "the tier1 entry is the OPCO layer, the tier2 one is not used: {out}"
    );
}

#[test]
fn connection_routing_and_an_order_that_would_fail() {
    let config = write_config(OPCO_CONFIG);
    let config = config.path().to_str().expect("path");
    let mut test = fixture("purchase_tier2_opco.json");
    test["asset"]["connection"]["type"] = json!("test");
    let file = order_file(&test);
    let (code, out, err) = explain(config, file.path().to_str().expect("path"));
    assert_eq!(code, Some(0), "{err}");
    println!("{out}");
    for line in [
        "payer sandbox (connections.test)",
        "connection test -> payer sandbox (connections.test)",
        "organizational_unit_id - (not applied: configured for payer iberia, the connection's payer is another organization)",
        "service_control_policies - (not applied: configured for payer iberia, the connection's payer is another organization)",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line}:\n{out}");
    }

    let mut preview = fixture("purchase_tier2_opco.json");
    preview["asset"]["connection"]["type"] = json!("preview");
    let file = order_file(&preview);
    let (code, out, err) = explain(config, file.path().to_str().expect("path"));
    assert_eq!(code, Some(1), "would fail: {err}");
    println!("{out}");
    assert!(
        out.starts_with("result failed (aws.account.failed)\n"),
        "{out}"
    );
    for line in [
        "connection preview (order)",
        "failure_code CONNECTION_NOT_ALLOWED",
        "failure_action fail",
        "failure_param_id -",
        "failure_message a preview order is provisioned only in the payer that connections.preview names, and none is configured; no account is created",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line}:\n{out}");
    }

    let mut bad_email = fixture("purchase_tier2_opco.json");
    bad_email["asset"]["params"][1]["structured_value"] = json!("o'brien@hospitaller.example");
    let file = order_file(&bad_email);
    let (code, out, _) = explain(config, file.path().to_str().expect("path"));
    assert_eq!(code, Some(1));
    assert!(out.contains("failure_code INVALID_EMAIL\n"), "{out}");
    assert!(
        out.contains("failure_param_id aws_account_email\n"),
        "{out}"
    );
}

#[test]
fn a_file_that_is_not_an_order_exits_2() {
    let config = path("examples/demo.toml");
    let not_json = write_config("not json");
    let not_purchase = order_file(&json!({"id": "PR-1-2", "type": "adjustment"}));
    let mut no_asset_id = fixture("purchase_tier2_opco.json");
    no_asset_id["asset"]
        .as_object_mut()
        .expect("object")
        .remove("id");
    let no_asset_id = order_file(&no_asset_id);
    for (file, reason) in [
        (not_json.path().to_str().expect("path"), "NOT_JSON"),
        (
            not_purchase.path().to_str().expect("path"),
            "UNKNOWN_REQUEST_TYPE",
        ),
        (no_asset_id.path().to_str().expect("path"), "MISSING_FIELD"),
        ("/nonexistent/order.json", "cannot read"),
    ] {
        let (code, out, err) = explain(&config, file);
        assert_eq!(code, Some(2), "{reason}: {out} {err}");
        assert!(
            out.is_empty(),
            "{reason}: nothing on standard output: {out}"
        );
        assert!(err.contains(reason), "{reason}: {err}");
    }
}
