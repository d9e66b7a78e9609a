//! Resolution of the requests that follow a purchase (docs/contract.md §10): an existing
//! account brought in, change, suspend, resume and cancel. They need fewer settings than a new
//! account (no email, name or IAM user): the payer, and what the kind acts with.

use super::layers::Applicable;
use super::resolve::{Routing, Rules, invalid_configuration, model_for, scps_for, typed};
use super::settings::{CancelAction, ModelSettings};
use crate::domain::account_model::AccountModel;
use crate::domain::ids::{OuId, PolicyId, TemplateId};
use crate::domain::order::{ConnectionType, OrderMode, PurchaseRequest, RequestKind};
use crate::domain::outcome::{FailureCode, Rejection};

/// What a request other than a new-account purchase acts on, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaterPlan {
    /// What is done.
    pub kind: LaterKind,
    /// The business model, for the events; `None` when it cannot be resolved (a later request
    /// is not refused for that).
    pub model: Option<AccountModel>,
    /// The payer whose organization holds (or gets) the account.
    pub payer: String,
    /// The connection the request came through.
    pub connection: ConnectionType,
    /// The account the request names (`aws_account_id`): 12 digits, or `None` when absent or
    /// malformed. A claim, checked against the account's tag before anything is done.
    pub account_id: Option<String>,
}

/// What a [`LaterPlan`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaterKind {
    /// Invite the account, then place it like a new one.
    Existing {
        /// SCPs to attach once it joined.
        service_control_policies: Vec<PolicyId>,
        /// Where it is moved once it joined.
        organizational_unit_id: Option<OuId>,
        /// `existing_account_template_id`.
        template_id: Option<TemplateId>,
    },
    /// Confirm a change: no AWS call.
    Change,
    /// Attach the deny-all SCP.
    Suspend {
        /// `suspend_policy_id`.
        policy: PolicyId,
    },
    /// Detach the deny-all SCP.
    Resume {
        /// `suspend_policy_id`.
        policy: PolicyId,
    },
    /// Close, remove, or only report.
    Cancel {
        /// `cancel_action` (default `none`).
        action: CancelAction,
    },
}

impl LaterKind {
    /// A short name for logs and `explain`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Existing { .. } => "existing_account",
            Self::Change => "change",
            Self::Suspend { .. } => "suspend",
            Self::Resume { .. } => "resume",
            Self::Cancel { .. } => "cancel",
        }
    }
}

/// Whether `order` is resolved by [`Rules::resolve_later`] rather than [`Rules::resolve`]:
/// every request but a new-account purchase.
pub fn is_later(order: &PurchaseRequest) -> bool {
    order.kind != RequestKind::Purchase || order.order_mode == OrderMode::ExistingAccount
}

/// `aws_account_id` when it is 12 digits.
fn account_id(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim)
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

impl Rules {
    /// The plan of a request other than a new-account purchase ([`is_later`]).
    ///
    /// # Errors
    /// A [`Rejection`]: a connection type with no payer, an unusable configuration parameter,
    /// a suspend or resume with no `suspend_policy_id` configured.
    pub fn resolve_later(&self, order: &PurchaseRequest) -> Result<LaterPlan, Rejection> {
        let routing = self.route(order)?;
        let layers = self.applicable_to(order);
        let model = model_for(order, &layers).ok().map(|(model, _)| model);
        let layers_payer = layers
            .pick(|s| s.payer.clone())
            .map_or_else(|| "default".to_owned(), |(payer, _)| payer);
        let (payer, for_connection) = match routing {
            Routing::Payer { payer, .. } => (payer.to_owned(), payer != layers_payer),
            Routing::Layers | Routing::Refused => (layers_payer, false),
        };
        let kind = kind_for(order, &layers, for_connection)?;
        Ok(LaterPlan {
            kind,
            model,
            payer,
            connection: order.connection.clone(),
            account_id: account_id(order.aws_account_id.as_deref()),
        })
    }
}

/// What the request's kind acts with; a test or preview request sent to another payer than the
/// layers' gets no OU and no SCPs of the layers (as a new account).
fn kind_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
    for_connection: bool,
) -> Result<LaterKind, Rejection> {
    let suspend_policy = || {
        typed(layers.pick(ModelSettings::suspend_policy_id))?
            .map(|(policy, _)| policy)
            .ok_or_else(|| {
                invalid_configuration(
                    "no suspend_policy_id is configured for this order's marketplace".into(),
                )
            })
    };
    Ok(match order.kind {
        RequestKind::Purchase => {
            let (mut service_control_policies, _) = scps_for(order, layers)?;
            let mut organizational_unit_id =
                typed(layers.pick(ModelSettings::ou_id))?.map(|(id, _)| id);
            if for_connection {
                service_control_policies.clear();
                organizational_unit_id = None;
            }
            let template_id =
                typed(layers.pick(ModelSettings::existing_account_template_id))?.map(|(id, _)| id);
            LaterKind::Existing {
                service_control_policies,
                organizational_unit_id,
                template_id,
            }
        }
        RequestKind::Change => LaterKind::Change,
        RequestKind::Suspend => LaterKind::Suspend {
            policy: suspend_policy()?,
        },
        RequestKind::Resume => LaterKind::Resume {
            policy: suspend_policy()?,
        },
        RequestKind::Cancel => LaterKind::Cancel {
            action: typed(layers.pick(ModelSettings::cancel_action))?
                .map_or(CancelAction::None, |(action, _)| action),
        },
    })
}

/// The rejection of a later request whose `aws_account_id` is absent or not 12 digits: an
/// existing-account purchase asks the customer to fix it; any other request names no account
/// of the asset.
pub fn no_account_id(plan: &LaterPlan) -> Rejection {
    match plan.kind {
        LaterKind::Existing { .. } => Rejection::new(
            FailureCode::AccountNotEligible,
            "aws_account_id is not a 12-digit AWS account id",
        ),
        _ => Rejection::new(
            FailureCode::AccountNotOurs,
            "the request names no AWS account (aws_account_id is absent or not 12 digits); nothing was changed",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::parse;
    use serde_json::{Value, json};

    fn request(kind: &str, params: Value) -> PurchaseRequest {
        let body = json!({
            "id": "PR-1-2", "type": kind,
            "asset": {
                "id": "AS-1", "marketplace": {"id": "MP-1"},
                "tiers": {"customer": {"id": "TA-1", "name": "C"}},
                "params": params,
            }
        });
        parse(body.to_string().as_bytes()).expect("valid request")
    }

    fn rules(global: &str) -> Rules {
        crate::config::Settings::from_toml(&format!(
            "[business_model]\nprovider_email_domain = \"provider.example\"\n{global}"
        ))
        .expect("valid settings")
        .rules()
    }

    #[test]
    fn each_kind_resolves_what_it_acts_with() {
        let rules = rules(
            "suspend_policy_id = \"p-deny0001\"\ncancel_action = \"close\"\n\
             service_control_policies = [\"p-guard001\"]\nexisting_account_template_id = \"TL-1-2\"",
        );
        let id = json!([{"id": "aws_account_id", "value": " 111122223333 "}]);
        let existing = {
            let mut params = id.clone();
            params
                .as_array_mut()
                .expect("array")
                .push(json!({"id": "order_mode", "value": "existing_account"}));
            request("purchase", params)
        };
        assert!(is_later(&existing));
        assert!(!is_later(&request("purchase", json!([]))));
        let plan = rules.resolve_later(&existing).expect("plan");
        assert_eq!(plan.account_id.as_deref(), Some("111122223333"));
        assert!(matches!(
            &plan.kind,
            LaterKind::Existing { service_control_policies, template_id: Some(_), .. }
                if service_control_policies.len() == 1
        ));
        let deny = PolicyId::parse("p-deny0001").expect("id");
        let cases = [
            ("change", LaterKind::Change),
            (
                "suspend",
                LaterKind::Suspend {
                    policy: deny.clone(),
                },
            ),
            ("resume", LaterKind::Resume { policy: deny }),
            (
                "cancel",
                LaterKind::Cancel {
                    action: CancelAction::Close,
                },
            ),
        ];
        for (kind, expected) in cases {
            let plan = rules
                .resolve_later(&request(kind, id.clone()))
                .expect("plan");
            assert_eq!(plan.kind, expected, "{kind}");
            assert_eq!(plan.payer, "default");
        }
    }

    #[test]
    fn cancel_defaults_to_none_and_suspend_needs_its_policy() {
        let rules = rules("");
        let cancel = rules
            .resolve_later(&request("cancel", json!([])))
            .expect("plan");
        assert_eq!(
            cancel.kind,
            LaterKind::Cancel {
                action: CancelAction::None
            }
        );
        assert_eq!(cancel.account_id, None, "no aws_account_id");
        assert_eq!(no_account_id(&cancel).code, FailureCode::AccountNotOurs);
        for kind in ["suspend", "resume"] {
            let rejection = rules
                .resolve_later(&request(kind, json!([])))
                .expect_err("no suspend_policy_id");
            assert_eq!(rejection.code, FailureCode::InvalidConfiguration);
        }
        let bad = rules
            .resolve_later(&request(
                "cancel",
                json!([{"id": "aws_account_id", "value": "1234"}]),
            ))
            .expect("plan");
        assert_eq!(bad.account_id, None, "not 12 digits");
    }
}
