//! `aws-account-worker explain ORDER.json`: resolves one order file exactly as `run` would
//! (the same parse and resolution, [`resolve_body`]), with no broker and no AWS call, and
//! writes the plan as plain `key value (origin)` lines, or the failure the order would get.

use crate::domain::model::{AccountModel, Plan, Rules, SETTINGS};
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::Rejection;
use crate::pipeline::{Resolution, resolve_body};

/// Exit status of an order that would be provisioned.
pub const PROVISIONED: u8 = 0;
/// Exit status of an order that would get `aws.account.failed`.
pub const FAILED: u8 = 1;
/// Exit status of a file that is not an order.
pub const NOT_AN_ORDER: u8 = 2;

/// What `explain` prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// The lines for standard output (for a file that is not an order: the one line for
    /// standard error).
    pub lines: Vec<String>,
    /// [`PROVISIONED`], [`FAILED`] or [`NOT_AN_ORDER`].
    pub exit: u8,
}

/// Explains the order in `body` under `rules`.
pub fn explain(rules: &Rules, body: &[u8]) -> Explained {
    match resolve_body(rules, body) {
        Resolution::Malformed(malformed) => Explained {
            lines: vec![format!(
                "not an order ({}): {}",
                crate::retry::Reason::from(&malformed.error),
                malformed.error
            )],
            exit: NOT_AN_ORDER,
        },
        Resolution::Rejected(request, rejection) => Explained {
            lines: failed_lines(&request, &rejection),
            exit: FAILED,
        },
        Resolution::Planned(request, plan) => Explained {
            lines: plan_lines(&request, &plan),
            exit: PROVISIONED,
        },
        Resolution::Later(request, plan) => Explained {
            lines: later_lines(&request, &plan),
            exit: PROVISIONED,
        },
    }
}

/// A request after the purchase (or an existing account): its ids, what it does, and with
/// what.
fn later_lines(request: &PurchaseRequest, plan: &crate::domain::model::LaterPlan) -> Vec<String> {
    use crate::domain::model::LaterKind;
    let mut lines = order_lines(request);
    lines.push(format!("request {}", plan.kind.as_str()));
    lines.push(format!("payer {}", plan.payer));
    lines.push(format!(
        "account {}",
        plan.account_id
            .as_deref()
            .unwrap_or("- (aws_account_id absent or not 12 digits)")
    ));
    match &plan.kind {
        LaterKind::Existing {
            service_control_policies,
            organizational_unit_id,
            template_id,
        } => {
            let scps: Vec<&str> = service_control_policies
                .iter()
                .map(|p| p.as_str())
                .collect();
            lines.push(format!("service_control_policies [{}]", scps.join(", ")));
            lines.push(format!(
                "organizational_unit_id {}",
                organizational_unit_id
                    .as_ref()
                    .map_or("-", |ou| ou.as_str())
            ));
            lines.push(format!(
                "template_id {}",
                template_id.as_ref().map_or("-", |id| id.as_str())
            ));
        }
        LaterKind::Suspend { policy } | LaterKind::Resume { policy } => {
            lines.push(format!("suspend_policy_id {policy}"));
        }
        LaterKind::Cancel { action } => lines.push(format!("cancel_action {}", action.as_str())),
        LaterKind::Change => {}
    }
    lines
}

/// The order's identifying fields, one line each.
fn order_lines(request: &PurchaseRequest) -> Vec<String> {
    let optional = |id: Option<&str>| id.unwrap_or("-").to_owned();
    vec![
        format!("request_id {} (order)", request.request_id),
        format!("asset_id {} (order)", request.asset_id),
        format!("marketplace_id {} (order)", request.marketplace_id),
        format!(
            "tier1_id {} (order)",
            optional(request.tier1_id.as_ref().map(|t| t.as_str()))
        ),
        format!(
            "tier2_id {} (order)",
            optional(request.tier2_id.as_ref().map(|t| t.as_str()))
        ),
    ]
}

fn failed_lines(request: &PurchaseRequest, rejection: &Rejection) -> Vec<String> {
    let (action, param) = rejection.action();
    let action = match action {
        crate::domain::outcome::Action::Inquire => "inquire",
        crate::domain::outcome::Action::Fail => "fail",
    };
    let mut lines = vec!["result failed (aws.account.failed)".to_owned()];
    lines.extend(order_lines(request));
    lines.push(format!(
        "connection {} (order)",
        request.connection.as_str()
    ));
    lines.extend([
        format!("failure_code {}", rejection.code.as_str()),
        format!("failure_action {action}"),
        format!("failure_param_id {}", param.unwrap_or("-")),
        format!("failure_message {}", rejection.message),
    ]);
    lines
}

/// A list as one value: comma-separated, `-` when empty.
fn list<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn plan_lines(request: &PurchaseRequest, plan: &Plan) -> Vec<String> {
    use crate::domain::model::Access;
    let mut lines = vec!["result provisioned (aws.account.provisioned)".to_owned()];
    lines.extend(order_lines(request));
    for setting in SETTINGS {
        let Some(origin) = plan.origins.get(setting) else {
            continue;
        };
        let value = match setting {
            "payer" => plan.payer.clone(),
            "account_model" => plan.model.as_str().to_owned(),
            "provider_email_domain" => plan.provider_email_domain.clone(),
            "account_email" => plan.email.to_string(),
            "account_name" => plan.account_name.to_string(),
            "access" => match &plan.access {
                Access::IamUser { .. } => "iam_user".to_owned(),
                Access::RootUser => "root_user".to_owned(),
            },
            "iam_user_name" => match &plan.access {
                Access::IamUser { user_name, .. } => user_name.to_string(),
                Access::RootUser => continue,
            },
            "iam_user_policy_arns" => match &plan.access {
                Access::IamUser { policy_arns, .. } => list(policy_arns),
                Access::RootUser => continue,
            },
            "service_control_policies" => list(
                &plan
                    .service_control_policies
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>(),
            ),
            "organizational_unit_id" => plan
                .organizational_unit_id
                .as_ref()
                .map(|id| id.as_str())
                .unwrap_or("-")
                .to_owned(),
            "template_id" => plan
                .template_id
                .as_ref()
                .map_or("-", |id| id.as_str())
                .to_owned(),
            "connection" => format!("{} -> payer {}", plan.connection.as_str(), plan.payer),
            _ => continue,
        };
        // Where the value was made from another setting, that setting's name comes first.
        let origin = match (setting, plan.model) {
            ("account_email", AccountModel::Spam) => format!("spam_email_template: {origin}"),
            ("access", AccountModel::Ecam) => format!("provide_root_user_for_ecam: {origin}"),
            _ => origin.to_string(),
        };
        lines.push(format!("{setting} {value} ({origin})"));
    }
    lines
}
