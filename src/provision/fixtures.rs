//! What provisioning's unit tests share: the test order, its plan, the polling, and a few
//! scripted answers of [`ScriptedOrganizations`].

use std::sync::Arc;
use std::time::Duration;

use super::{Polling, ProvisionError, provision};
use crate::aws::fake::ScriptedOrganizations;
use crate::aws::{AccountId, CreateState, ExistingAccount};
use crate::domain::arn::PolicyArn;
use crate::domain::email::AccountEmail;
use crate::domain::ids::{OuId, PolicyId};
use crate::domain::model::{Access, AccountModel, Plan};
use crate::domain::names::{AccountName, IamUserName};
use crate::domain::order::PurchaseRequest;
use crate::domain::progress::{Progress, Provisioned};
use crate::observability::Metrics;
use crate::slots::Unlimited;

/// The test order: asset `AS-1`, customer `C`.
pub(super) fn order() -> PurchaseRequest {
    let body = serde_json::json!({
        "id": "PR-1-2", "type": "purchase",
        "asset": {"id": "AS-1", "marketplace": {"id": "MP-1"}, "tiers": {"customer": {"id": "TA-1", "name": "C"}}}
    });
    crate::domain::order::parse(body.to_string().as_bytes()).expect("valid order")
}

/// An ECAM plan for the test order with one SCP, giving `access`.
pub(super) fn plan(access: Access) -> Plan {
    Plan {
        model: AccountModel::Ecam,
        email: AccountEmail::parse("c@customer.example").expect("email"),
        provider_email_domain: "provider.example".into(),
        account_name: AccountName::derive(Some("C"), "AS-1", None, "C"),
        access,
        service_control_policies: vec![PolicyId::parse("p-abcd1234").expect("id")],
        payer: "default".into(),
        organizational_unit_id: None,
        template_id: None,
        connection: crate::domain::order::ConnectionType::Production,
        origins: std::collections::BTreeMap::new(),
    }
}

/// An IAM user `admin` with one policy.
pub(super) fn iam_user() -> Access {
    Access::IamUser {
        user_name: IamUserName::parse("admin").expect("name"),
        policy_arns: vec![PolicyArn::parse("arn:aws:iam::aws:policy/ReadOnlyAccess").expect("ARN")],
    }
}

/// A poll every 2 s, 10 s of patience, a 300 s readiness window.
pub(super) const POLLING: Polling = Polling {
    interval: Duration::from_secs(2),
    patience: Duration::from_secs(10),
    member_ready: Duration::from_secs(300),
};

/// Provisions a root-user plan for the test order.
pub(super) async fn provision_root(
    aws: &ScriptedOrganizations,
    progress: Progress,
) -> Result<Provisioned, ProvisionError> {
    provision_plan(aws, &plan(Access::RootUser), progress).await
}

/// Provisions `plan` for the test order, with no limit on creations.
pub(super) async fn provision_plan(
    aws: &ScriptedOrganizations,
    plan: &Plan,
    progress: Progress,
) -> Result<Provisioned, ProvisionError> {
    provision(
        &Arc::new(aws.clone()),
        &Unlimited,
        &order(),
        plan,
        progress,
        POLLING,
        &Metrics::default(),
    )
    .await
}

/// The creation succeeded with account `111122223333`.
pub(super) fn succeeded() -> CreateState {
    CreateState::Succeeded {
        account_id: "111122223333".into(),
    }
}

/// Account `111122223333` with the plan's email (in other case), tagged with `asset_id`.
pub(super) fn account(asset_id: Option<&str>) -> ExistingAccount {
    ExistingAccount {
        id: AccountId("111122223333".into()),
        email: "C@Customer.example".into(),
        asset_id: asset_id.map(str::to_owned),
        joined: None,
        name: None,
        status: "ACTIVE".into(),
    }
}

/// How many `CreateAccount` calls `aws` saw.
pub(super) fn created(aws: &ScriptedOrganizations) -> usize {
    aws.calls()
        .iter()
        .filter(|c| c.starts_with("CreateAccount"))
        .count()
}

/// The test plan giving `access`, with OU `ou-root-opco0001`.
pub(super) fn ou_plan(access: Access) -> Plan {
    Plan {
        organizational_unit_id: Some(OuId::parse("ou-root-opco0001").expect("OU id")),
        ..plan(access)
    }
}

/// Provisions `access` for the test order into OU `ou-root-opco0001`, from an account under
/// the root; returns the calls after the creation (the gate's look, `CreateAccount`).
pub(super) async fn calls_after_creation_into_an_ou(access: Access) -> Vec<String> {
    let aws = ScriptedOrganizations::with_states([succeeded()]);
    *aws.parent.lock().expect("parent") = "r-root".to_owned();
    provision_plan(&aws, &ou_plan(access), Progress::default())
        .await
        .expect("provisioned");
    aws.calls()[2..].to_vec()
}

/// The calls `aws` saw after the leading checks of the progress's hints (`DescribeAccount` of
/// its account, `DescribeCreateAccountStatus` of its request).
pub(super) fn after_checks(aws: &ScriptedOrganizations) -> Vec<String> {
    aws.calls()
        .into_iter()
        .skip_while(|c| {
            c.starts_with("DescribeAccount ") || c.starts_with("DescribeCreateAccountStatus ")
        })
        .collect()
}
