//! The sample requests in tests/fixtures, in the shapes of CloudBlue's public SDK fixtures, all
//! parse as purchase requests.

use aws_account_worker::domain::order::{self, OrderMode};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn tier1_only() {
    let order = order::parse(&fixture("purchase_tier1_only.json")).expect("valid");
    assert_eq!(order.request_id.as_str(), "PR-5852-1608-1567-000");
    assert_eq!(
        order.tier1_id.as_ref().map(|t| t.as_str()),
        Some("TA-0-9046-4815-5226")
    );
    assert_eq!(order.order_mode, OrderMode::NewAccount);
    assert_eq!(
        order.aws_account_email, None,
        "empty parameters count as absent"
    );
    assert_eq!(order.customer.external_id.as_deref(), Some("1234567"));
}

#[test]
fn with_tier2() {
    let order = order::parse(&fixture("purchase_with_tier2.json")).expect("valid");
    assert_eq!(
        order.tier1_id.as_ref().map(|t| t.as_str()),
        Some("TA-0-9046-4815-5226")
    );
}

#[test]
fn with_string_booleans() {
    let order = order::parse(&fixture("purchase_string_booleans.json")).expect("valid");
    assert_eq!(order.configuration.account_model.as_deref(), Some("ECAM"));
    assert_eq!(
        order.configuration.provide_root_user_for_ecam.as_deref(),
        Some("Yes")
    );
    assert_eq!(
        order.configuration.service_control_policies.as_deref(),
        Some("p-abcd1234, p-efgh5678")
    );
    assert_eq!(
        order.aws_account_email.as_deref(),
        Some("it-admin@hospitaller.example")
    );
}

#[test]
fn with_object_assignee_and_top_level_marketplace() {
    let order = order::parse(&fixture("purchase_object_assignee.json")).expect("valid");
    assert_eq!(order.marketplace_id.as_str(), "MP-91673");
    assert_eq!(order.iam_user_name.as_deref(), Some("marc.serrat"));
}

#[test]
fn an_opco_on_tier2_with_structured_values() {
    let order = order::parse(&fixture("purchase_tier2_opco.json")).expect("valid");
    assert_eq!(
        order.tier2_id.as_ref().map(|t| t.as_str()),
        Some("TA-0-1111-2222-3333")
    );
    assert_eq!(
        order.aws_account_email.as_deref(),
        Some("it-admin@hospitaller.example"),
        "read from structured_value"
    );
    assert_eq!(
        order.configuration.service_control_policies.as_deref(),
        Some("p-abcd1234"),
        "the ticked option of a checkbox"
    );
}
