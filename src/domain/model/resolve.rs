//! Resolution (docs/contract.md §4): from an order and the configured layers to a [`Plan`] of
//! what to provision, each setting with its [`Origin`], or a [`Rejection`] saying why the
//! order gets no account.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::email_rules::{ecam_email, spam_email};
use super::layers::{Applicable, LayerTree, Origin, Tier};
use super::settings::{MarketplaceSettings, ModelSettings, SettingsIssue};
use crate::domain::account_model::AccountModel;
use crate::domain::arn::PolicyArn;
use crate::domain::email::AccountEmail;
use crate::domain::ids::{OuId, PolicyId, TemplateId};
use crate::domain::names::{AccountName, IamUserName};
use crate::domain::order::{ConnectionType, OrderMode, PurchaseRequest};
use crate::domain::outcome::{FailureCode, Rejection};

/// What the customer signs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// An IAM user in the new account.
    IamUser {
        /// Its name.
        user_name: IamUserName,
        /// Managed policies attached to it.
        policy_arns: Vec<PolicyArn>,
    },
    /// The account's root user, after a password reset.
    RootUser,
}

/// Everything needed to provision one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// SPAM or ECAM.
    pub model: AccountModel,
    /// The new account's root email.
    pub email: AccountEmail,
    /// The provider's own email domain (SPAM emails are on it, ECAM emails may not be).
    pub provider_email_domain: String,
    /// The new account's name.
    pub account_name: AccountName,
    /// IAM user or root user.
    pub access: Access,
    /// SCPs to attach.
    pub service_control_policies: Vec<PolicyId>,
    /// The payer whose organization gets the account.
    pub payer: String,
    /// Where the account is moved, if anywhere.
    pub organizational_unit_id: Option<OuId>,
    /// The Connect template id for the result.
    pub template_id: Option<TemplateId>,
    /// The connection the order came through; a test or preview order's payer is the one
    /// `[connections]` names.
    pub connection: ConnectionType,
    /// Where each setting came from, by setting name (see [`SETTINGS`]).
    pub origins: BTreeMap<&'static str, Origin>,
}

/// The settings a [`Plan`] records an [`Origin`] for, in the order `explain` prints them.
pub const SETTINGS: [&str; 12] = [
    "payer",
    "account_model",
    "provider_email_domain",
    "account_email",
    "account_name",
    "access",
    "iam_user_name",
    "iam_user_policy_arns",
    "service_control_policies",
    "organizational_unit_id",
    "template_id",
    "connection",
];

/// `[connections]`: the payer (a `[payers.NAME]` entry) of each non-production connection
/// type. A type without one gets no account (`CONNECTION_NOT_ALLOWED`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// The payer of `test` orders.
    pub test: Option<String>,
    /// The payer of `preview` orders.
    pub preview: Option<String>,
}

/// Where an order of a connection type goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing<'a> {
    /// Production: to the payer the layers choose.
    Layers,
    /// To this payer, named by `connections.<key>`.
    Payer {
        /// `test` or `preview`.
        key: &'static str,
        /// The `[payers.NAME]` entry.
        payer: &'a str,
    },
    /// Nowhere: the order gets `CONNECTION_NOT_ALLOWED`.
    Refused,
}

impl Connections {
    /// Where an order that came through `connection` goes.
    pub fn route(&self, connection: &ConnectionType) -> Routing<'_> {
        let (key, payer) = match connection {
            ConnectionType::Production => return Routing::Layers,
            ConnectionType::Test => ("test", &self.test),
            ConnectionType::Preview => ("preview", &self.preview),
            ConnectionType::Other(_) => return Routing::Refused,
        };
        payer
            .as_deref()
            .map_or(Routing::Refused, |payer| Routing::Payer { key, payer })
    }
}

/// Everything resolution reads from the configuration: the layers and the connections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// `[business_model]`, complete (start-up validation ensures it).
    pub global: ModelSettings,
    /// `[marketplaces."MP-…"]` by marketplace id.
    pub marketplaces: BTreeMap<String, MarketplaceSettings>,
    /// `[connections]`.
    pub connections: Connections,
}

pub(super) fn invalid_configuration(message: String) -> Rejection {
    Rejection::new(FailureCode::InvalidConfiguration, message)
}

/// Reads `Yes`/`No` (or `true`/`false`), ignoring case.
fn parse_yes_no(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

/// A typed value picked from the layers: start-up validation refused every malformed value,
/// so an error here means the rules did not come from validated settings.
pub(super) fn typed<T>(
    picked: Option<(Result<T, SettingsIssue>, Origin)>,
) -> Result<Option<(T, Origin)>, Rejection> {
    match picked {
        None => Ok(None),
        Some((Ok(value), origin)) => Ok(Some((value, origin))),
        Some((Err(issue), origin)) => Err(invalid_configuration(format!(
            "{} ({origin}): {}",
            issue.key, issue.message
        ))),
    }
}

impl Rules {
    /// The configured layers.
    pub fn layers(&self) -> LayerTree<'_> {
        LayerTree {
            global: &self.global,
            marketplaces: &self.marketplaces,
        }
    }

    /// The business model resolved for `order` (docs/contract.md §4), each setting with its origin.
    ///
    /// # Errors
    /// A [`Rejection`] for an order that gets no account: unsupported order mode, a connection
    /// type with no payer, an unusable configuration parameter, a bad ECAM email or IAM user
    /// name.
    pub fn resolve(&self, order: &PurchaseRequest) -> Result<Plan, Rejection> {
        let mode = match &order.order_mode {
            OrderMode::NewAccount => None,
            // Resolved by `resolve_later`; here only if a caller mixed the two up.
            OrderMode::ExistingAccount => Some("existing_account"),
            OrderMode::Other(mode) => Some(mode.as_str()),
        };
        if let Some(mode) = mode {
            return Err(Rejection::new(
                FailureCode::UnsupportedOrderMode,
                format!(
                    "order_mode `{mode}` is not supported: this worker provisions new_account and existing_account orders"
                ),
            ));
        }
        let routing = self.route(order)?;
        let layers = self.applicable_to(order);
        let (model, origin) = model_for(order, &layers)?;

        let mut plan =
            plan_for(order, &layers, model).map_err(|rejection| rejection.under(model))?;
        plan.origins.insert("account_model", origin);
        if let Routing::Payer { key, payer } = routing {
            if plan.payer != payer {
                let layers_payer = std::mem::replace(&mut plan.payer, payer.to_owned());
                let not_applied = Origin::NotForConnection { layers_payer };
                if plan.organizational_unit_id.take().is_some() {
                    plan.origins
                        .insert("organizational_unit_id", not_applied.clone());
                }
                if !std::mem::take(&mut plan.service_control_policies).is_empty() {
                    plan.origins.insert("service_control_policies", not_applied);
                }
            }
            plan.origins.insert("payer", Origin::Connection(key));
            plan.origins.insert("connection", Origin::Connection(key));
        }
        Ok(plan)
    }

    /// The layers that apply to `order`: its marketplace's, and an OPCO override keyed by its
    /// tier1 or tier2 account.
    pub(super) fn applicable_to(&self, order: &PurchaseRequest) -> Applicable<'_> {
        let tiers = [
            (Tier::Tier1, order.tier1_id.as_ref().map(|id| id.as_str())),
            (Tier::Tier2, order.tier2_id.as_ref().map(|id| id.as_str())),
        ];
        self.layers()
            .applicable(order.marketplace_id.as_str(), tiers)
    }

    /// Where `order` goes by its connection type.
    ///
    /// # Errors
    /// `CONNECTION_NOT_ALLOWED` for a connection type with no payer.
    pub(super) fn route(&self, order: &PurchaseRequest) -> Result<Routing<'_>, Rejection> {
        let routing = self.connections.route(&order.connection);
        if routing == Routing::Refused {
            let message = match &order.connection {
                // The type is input: at most 64 characters of it go into the event.
                ConnectionType::Other(kind) => format!(
                    "connection type `{}` is neither production, test nor preview; no account is created",
                    kind.chars().take(64).collect::<String>()
                ),
                kind => format!(
                    "a {kind} order is provisioned only in the payer that connections.{kind} names, and none is configured; no account is created",
                    kind = kind.as_str()
                ),
            };
            return Err(Rejection::new(FailureCode::ConnectionNotAllowed, message));
        }
        Ok(routing)
    }
}

/// The account model: the request's `awsAccountModel`, else the layers'.
///
/// # Errors
/// `INVALID_CONFIGURATION` for an unknown model, or none configured.
pub(super) fn model_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
) -> Result<(AccountModel, Origin), Rejection> {
    let params = &order.configuration;
    let requested_model = match params.account_model.as_deref() {
        Some(raw) => Some((
            AccountModel::parse(raw).ok_or_else(|| {
                invalid_configuration(format!("awsAccountModel `{raw}` is neither SPAM nor ECAM"))
            })?,
            "awsAccountModel",
        )),
        None => None,
    };
    layers
        .pick_with_request(requested_model, |s| s.account_model)
        .ok_or_else(|| invalid_configuration("no account model is configured".into()))
}

/// The rest of the plan, once the model is known.
fn plan_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
    model: AccountModel,
) -> Result<Plan, Rejection> {
    let mut origins = BTreeMap::new();
    // The request's parameters are read in this order: the first unusable one rejects.
    let requested_root = match order.configuration.provide_root_user_for_ecam.as_deref() {
        Some(raw) => Some((
            parse_yes_no(raw).ok_or_else(|| {
                invalid_configuration(format!(
                    "provideRootUserForECAM `{raw}` is neither Yes nor No"
                ))
            })?,
            "provideRootUserForECAM",
        )),
        None => None,
    };
    let (service_control_policies, origin) = scps_for(order, layers)?;
    origins.insert("service_control_policies", origin);
    let (provider_domain, origin) = layers
        .pick(|s| s.provider_email_domain.clone())
        .ok_or_else(|| invalid_configuration("no provider_email_domain is configured".into()))?;
    origins.insert("provider_email_domain", origin);
    let (email, origin) = email_for(order, layers, model, &provider_domain)?;
    origins.insert("account_email", origin);
    let access = access_for(order, layers, model, requested_root, &mut origins)?;
    let template = match access {
        Access::IamUser { .. } => layers.pick(ModelSettings::iam_user_template_id),
        Access::RootUser => layers.pick(ModelSettings::root_user_template_id),
    };
    let (template_id, origin) =
        typed(template)?.map_or((None, Origin::Fallback), |(id, origin)| (Some(id), origin));
    origins.insert("template_id", origin);
    let (payer, origin) = layers
        .pick(|s| s.payer.clone())
        .unwrap_or_else(|| ("default".to_owned(), Origin::Fallback));
    origins.insert("payer", origin);
    let (organizational_unit_id, origin) = typed(layers.pick(ModelSettings::ou_id))?
        .map_or((None, Origin::Fallback), |(id, origin)| (Some(id), origin));
    origins.insert("organizational_unit_id", origin);
    origins.insert(
        "account_name",
        if order.aws_account_name.is_some() {
            Origin::Request("aws_account_name")
        } else {
            Origin::Derived
        },
    );
    origins.insert("connection", Origin::Order);

    Ok(Plan {
        model,
        email,
        provider_email_domain: provider_domain,
        account_name: AccountName::derive(
            order.aws_account_name.as_deref(),
            order.asset_id.as_str(),
            order.customer.external_id.as_deref(),
            &order.customer.name,
        ),
        access,
        service_control_policies,
        payer,
        organizational_unit_id,
        template_id,
        connection: order.connection.clone(),
        origins,
    })
}

/// The SCPs: the request's `provisionServiceControlPolicies` (a malformed one rejects the
/// order), between the OPCO and the marketplace layers.
pub(super) fn scps_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
) -> Result<(Vec<PolicyId>, Origin), Rejection> {
    let requested = match order.configuration.service_control_policies.as_deref() {
        Some(raw) => Some((
            Ok(PolicyId::parse_list(raw).map_err(|e| {
                invalid_configuration(format!("provisionServiceControlPolicies: {e}"))
            })?),
            "provisionServiceControlPolicies",
        )),
        None => None,
    };
    Ok(
        typed(layers.pick_with_request(requested, ModelSettings::scp_ids))?
            .unwrap_or((Vec::new(), Origin::Fallback)),
    )
}

/// The account email: SPAM's rendered from the layers' template, ECAM's the customer's own.
fn email_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
    model: AccountModel,
    provider_domain: &str,
) -> Result<(AccountEmail, Origin), Rejection> {
    match model {
        AccountModel::Spam => {
            let (template, origin) = layers
                .pick(|s| s.spam_email_template.as_deref())
                .ok_or_else(|| {
                    invalid_configuration("no spam_email_template is configured".into())
                })?;
            Ok((spam_email(order, template, provider_domain)?, origin))
        }
        AccountModel::Ecam => Ok((
            ecam_email(order, provider_domain)?,
            Origin::Request("aws_account_email"),
        )),
    }
}

/// The root user (ECAM, where `provideRootUserForECAM`, the request's or the layers', says so)
/// or an IAM user with its policies; records the origins of `access`, `iam_user_name` and
/// `iam_user_policy_arns`.
fn access_for(
    order: &PurchaseRequest,
    layers: &Applicable<'_>,
    model: AccountModel,
    requested_root: Option<(bool, &'static str)>,
    origins: &mut BTreeMap<&'static str, Origin>,
) -> Result<Access, Rejection> {
    let (root_for_ecam, root_origin) = layers
        .pick_with_request(requested_root, |s| s.provide_root_user_for_ecam)
        .unwrap_or((false, Origin::Fallback));
    if model == AccountModel::Ecam && root_for_ecam {
        origins.insert("access", root_origin);
        return Ok(Access::RootUser);
    }
    origins.insert(
        "access",
        match model {
            AccountModel::Spam => Origin::Rule("SPAM always gives an IAM user"),
            AccountModel::Ecam => root_origin,
        },
    );
    let user_name = match order.iam_user_name.as_deref() {
        Some(requested) => {
            origins.insert("iam_user_name", Origin::Request("iam_user_name"));
            IamUserName::parse(requested)
                .map_err(|e| Rejection::new(FailureCode::InvalidIamUserName, e.to_string()))?
        }
        None => {
            origins.insert("iam_user_name", Origin::Derived);
            IamUserName::derive(&order.customer.name, order.customer.id.as_str())
        }
    };
    let (policy_arns, origin) =
        typed(layers.pick(ModelSettings::policy_arns))?.unwrap_or((Vec::new(), Origin::Fallback));
    origins.insert("iam_user_policy_arns", origin);
    Ok(Access::IamUser {
        user_name,
        policy_arns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::parse;
    use serde_json::{Value, json};

    const OPCO: &str = "TA-0-9046-4815-5226";
    const MP: &str = "MP-91673";

    fn order(ordering: Value, configuration: Value) -> PurchaseRequest {
        let body = json!({
            "id": "PR-5852-1608-1567-000",
            "type": "purchase",
            "asset": {
                "id": "AS-8790-0160-2196",
                "marketplace": {"id": MP},
                "tiers": {
                    "customer": {"id": "TA-0-7304-8514-7852", "name": "Hospitaller Ltd", "external_id": "42"},
                    "tier1": {"id": OPCO}
                },
                "params": ordering,
                "configuration": {"params": configuration}
            }
        });
        parse(body.to_string().as_bytes()).expect("test order is valid")
    }

    /// Resolution with these layers and no `[connections]`.
    fn resolve(
        order: &PurchaseRequest,
        global: &ModelSettings,
        marketplaces: &BTreeMap<String, MarketplaceSettings>,
    ) -> Result<Plan, Rejection> {
        Rules {
            global: global.clone(),
            marketplaces: marketplaces.clone(),
            connections: Connections::default(),
        }
        .resolve(order)
    }

    fn params(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .map(|(id, value)| json!({"id": id, "value": value}))
                .collect(),
        )
    }

    fn global() -> ModelSettings {
        ModelSettings {
            account_model: Some(AccountModel::Spam),
            provide_root_user_for_ecam: Some(false),
            service_control_policies: Some(vec!["p-global0001".into()]),
            provider_email_domain: Some("provider.com".into()),
            spam_email_template: Some("aws+{asset_id}@{provider_email_domain}".into()),
            iam_user_policy_arns: Some(vec!["arn:aws:iam::aws:policy/AdministratorAccess".into()]),
            payer: Some("default".into()),
            iam_user_template_id: Some("TL-111-111".into()),
            root_user_template_id: Some("TL-222-222".into()),
            ..ModelSettings::default()
        }
    }

    fn marketplaces(
        multi_payer: bool,
        mp: ModelSettings,
        opco: ModelSettings,
    ) -> BTreeMap<String, MarketplaceSettings> {
        let section = MarketplaceSettings {
            multi_payer,
            opcos: BTreeMap::from([(OPCO.to_owned(), opco)]),
            settings: mp,
        };
        BTreeMap::from([(MP.to_owned(), section)])
    }

    fn ecam_settings() -> ModelSettings {
        ModelSettings {
            account_model: Some(AccountModel::Ecam),
            ..ModelSettings::default()
        }
    }

    #[test]
    fn account_model_precedence_has_four_levels() {
        let spam = || ModelSettings {
            account_model: Some(AccountModel::Spam),
            ..ModelSettings::default()
        };
        let none = ModelSettings::default;
        let ecam_email = params(&[("aws_account_email", "jane@customer.org")]);
        let request_ecam = params(&[("awsAccountModel", "ECAM")]);
        let request_spam = params(&[("awsAccountModel", "SPAM")]);
        // (multi_payer, marketplace layer, opco layer, request configuration, global model, expected)
        let cases = [
            (
                true,
                spam(),
                ecam_settings(),
                request_spam.clone(),
                AccountModel::Spam,
                AccountModel::Ecam,
            ),
            (
                false,
                spam(),
                ecam_settings(),
                request_ecam.clone(),
                AccountModel::Spam,
                AccountModel::Ecam,
            ),
            (
                false,
                none(),
                ecam_settings(),
                request_spam.clone(),
                AccountModel::Ecam,
                AccountModel::Spam,
            ),
            (
                true,
                ecam_settings(),
                none(),
                request_spam.clone(),
                AccountModel::Ecam,
                AccountModel::Spam,
            ),
            (
                true,
                ecam_settings(),
                none(),
                json!([]),
                AccountModel::Spam,
                AccountModel::Ecam,
            ),
            (
                false,
                spam(),
                ecam_settings(),
                json!([]),
                AccountModel::Ecam,
                AccountModel::Spam,
            ),
            (
                false,
                none(),
                none(),
                json!([]),
                AccountModel::Ecam,
                AccountModel::Ecam,
            ),
            (
                true,
                none(),
                ecam_settings(),
                json!([]),
                AccountModel::Spam,
                AccountModel::Ecam,
            ),
        ];
        for (i, (multi_payer, mp, opco, configuration, global_model, expected)) in
            cases.into_iter().enumerate()
        {
            let global = ModelSettings {
                account_model: Some(global_model),
                ..global()
            };
            let plan = resolve(
                &order(ecam_email.clone(), configuration),
                &global,
                &marketplaces(multi_payer, mp, opco),
            )
            .unwrap_or_else(|r| panic!("case {i}: {r:?}"));
            assert_eq!(plan.model, expected, "case {i}");
        }
    }

    #[test]
    fn opco_override_needs_multi_payer_and_a_matching_tier1() {
        let opco = ModelSettings {
            service_control_policies: Some(vec!["p-opco00001".into()]),
            payer: Some("opco".into()),
            iam_user_template_id: Some("TL-333-333".into()),
            ..ModelSettings::default()
        };
        let configuration = params(&[("provisionServiceControlPolicies", "p-request01")]);
        let with = resolve(
            &order(json!([]), configuration.clone()),
            &global(),
            &marketplaces(true, ModelSettings::default(), opco.clone()),
        )
        .expect("plan");
        assert_eq!(
            with.service_control_policies,
            [PolicyId::parse("p-opco00001").expect("id")]
        );
        assert_eq!(with.payer, "opco");
        assert_eq!(
            with.template_id.as_ref().map(TemplateId::as_str),
            Some("TL-333-333")
        );
        let without = resolve(
            &order(json!([]), configuration),
            &global(),
            &marketplaces(false, ModelSettings::default(), opco),
        )
        .expect("plan");
        assert_eq!(
            without.service_control_policies,
            [PolicyId::parse("p-request01").expect("id")]
        );
        assert_eq!(without.payer, "default");
        assert_eq!(
            without.template_id.as_ref().map(TemplateId::as_str),
            Some("TL-111-111")
        );
    }

    /// A root-user ECAM order from these tiers, through this connection type.
    fn order_from(tiers: Value, connection: Option<&str>) -> PurchaseRequest {
        let mut body = json!({
            "id": "PR-5852-1608-1567-000",
            "type": "purchase",
            "asset": {
                "id": "AS-8790-0160-2196",
                "marketplace": {"id": MP},
                "tiers": tiers,
                "params": [{"id": "aws_account_email", "value": "jane@customer.org"}],
                "configuration": {"params": []}
            }
        });
        if let Some(kind) = connection {
            body["asset"]["connection"] = json!({"type": kind});
        }
        parse(body.to_string().as_bytes()).expect("test order is valid")
    }

    const TIER2: &str = "TA-0-1111-2222-3333";

    fn customer_tiers(tier1: Option<&str>, tier2: Option<&str>) -> Value {
        let tier = |id: Option<&str>| id.map_or_else(|| json!({}), |id| json!({"id": id}));
        json!({
            "customer": {"id": "TA-0-7304-8514-7852", "name": "Hospitaller Ltd"},
            "tier1": tier(tier1),
            "tier2": tier(tier2)
        })
    }

    fn opco_with_payer(payer: &str) -> ModelSettings {
        ModelSettings {
            payer: Some(payer.into()),
            ..ModelSettings::default()
        }
    }

    #[test]
    fn opco_overrides_are_keyed_by_tier1_or_tier2_tier1_winning() {
        let section = MarketplaceSettings {
            multi_payer: true,
            opcos: BTreeMap::from([
                (OPCO.to_owned(), opco_with_payer("by-tier1")),
                (TIER2.to_owned(), opco_with_payer("by-tier2")),
            ]),
            settings: ModelSettings::default(),
        };
        let marketplaces = BTreeMap::from([(MP.to_owned(), section)]);
        let other = "TA-0-5555-6666-7777";
        // (tier1, tier2, expected payer, expected origin)
        let cases = [
            (
                Some(OPCO),
                Some(TIER2),
                "by-tier1",
                Some((Tier::Tier1, OPCO)),
            ),
            (
                Some(other),
                Some(TIER2),
                "by-tier2",
                Some((Tier::Tier2, TIER2)),
            ),
            (None, Some(TIER2), "by-tier2", Some((Tier::Tier2, TIER2))),
            (Some(OPCO), None, "by-tier1", Some((Tier::Tier1, OPCO))),
            (Some(other), None, "default", None),
        ];
        for (tier1, tier2, payer, origin) in cases {
            let plan = resolve(
                &order_from(customer_tiers(tier1, tier2), None),
                &global(),
                &marketplaces,
            )
            .expect("plan");
            assert_eq!(plan.payer, payer, "{tier1:?} {tier2:?}");
            let expected = origin.map_or(Origin::Global, |(tier, id)| Origin::Opco {
                tier,
                id: id.to_owned(),
            });
            assert_eq!(plan.origins["payer"], expected, "{tier1:?} {tier2:?}");
        }
    }

    #[test]
    fn test_and_preview_orders_go_only_where_connections_send_them() {
        let rules = |connections: Connections| Rules {
            global: ModelSettings {
                organizational_unit_id: Some("ou-ab12-cdef3456".into()),
                ..global()
            },
            marketplaces: BTreeMap::new(),
            connections,
        };
        let tiers = || customer_tiers(Some(OPCO), None);
        for kind in ["test", "preview", "staging"] {
            let rejection = rules(Connections::default())
                .resolve(&order_from(tiers(), Some(kind)))
                .expect_err("no payer for it");
            assert_eq!(rejection.code, FailureCode::ConnectionNotAllowed, "{kind}");
            assert_eq!(
                rejection.action(),
                (crate::domain::outcome::Action::Fail, None)
            );
        }
        let sandbox = rules(Connections {
            test: Some("sandbox".into()),
            preview: None,
        });
        let plan = sandbox
            .resolve(&order_from(tiers(), Some("test")))
            .expect("routed");
        assert_eq!(plan.payer, "sandbox");
        assert_eq!(plan.origins["payer"], Origin::Connection("test"));
        assert_eq!(plan.connection, ConnectionType::Test);
        assert_eq!(
            (plan.organizational_unit_id, plan.service_control_policies),
            (None, vec![]),
            "the production organization's OU and SCPs do not exist in the sandbox"
        );
        assert_eq!(
            plan.origins["service_control_policies"],
            Origin::NotForConnection {
                layers_payer: "default".into()
            }
        );
        assert!(
            sandbox
                .resolve(&order_from(tiers(), Some("preview")))
                .is_err(),
            "preview is not routed by test"
        );
        // Production orders ignore [connections].
        let plan = sandbox
            .resolve(&order_from(tiers(), Some("production")))
            .expect("production");
        assert_eq!(plan.payer, "default");
        assert_eq!(plan.service_control_policies.len(), 1);
        // A connection named to the layers' own payer keeps what is configured for it.
        let same = rules(Connections {
            test: Some("default".into()),
            preview: None,
        });
        let plan = same
            .resolve(&order_from(tiers(), Some("test")))
            .expect("plan");
        assert_eq!(
            plan.organizational_unit_id.as_ref().map(OuId::as_str),
            Some("ou-ab12-cdef3456")
        );
        assert_eq!(plan.service_control_policies.len(), 1);
    }

    #[test]
    fn every_setting_records_its_origin() {
        let mp = ModelSettings {
            iam_user_template_id: Some("TL-444-444".into()),
            ..ModelSettings::default()
        };
        let plan = resolve(
            &order(
                params(&[("iam_user_name", "jane.admin")]),
                params(&[("awsAccountModel", "SPAM")]),
            ),
            &global(),
            &marketplaces(false, mp, ModelSettings::default()),
        )
        .expect("plan");
        for setting in SETTINGS {
            assert!(plan.origins.contains_key(setting), "{setting}");
        }
        let origin = |key: &str| plan.origins[key].to_string();
        assert_eq!(origin("account_model"), "request parameter awsAccountModel");
        assert_eq!(origin("account_email"), "global default");
        assert_eq!(origin("access"), "rule: SPAM always gives an IAM user");
        assert_eq!(origin("iam_user_name"), "request parameter iam_user_name");
        assert_eq!(origin("template_id"), "marketplace MP-91673");
        assert_eq!(origin("organizational_unit_id"), "not configured");
        assert_eq!(origin("account_name"), "derived from the order");
    }

    #[test]
    fn scp_lists_resolve_by_level_and_parse_leniently() {
        let mp = ModelSettings {
            service_control_policies: Some(vec!["p-market001".into()]),
            ..ModelSettings::default()
        };
        let cases = [
            (
                params(&[(
                    "provisionServiceControlPolicies",
                    " p-request01 ,, p-request02 ",
                )]),
                vec!["p-request01", "p-request02"],
            ),
            (json!([]), vec!["p-market001"]),
        ];
        for (configuration, expected) in cases {
            let plan = resolve(
                &order(json!([]), configuration),
                &global(),
                &marketplaces(false, mp.clone(), ModelSettings::default()),
            )
            .expect("plan");
            let ids: Vec<_> = plan
                .service_control_policies
                .iter()
                .map(PolicyId::as_str)
                .collect();
            assert_eq!(ids, expected);
        }
        let plan =
            resolve(&order(json!([]), json!([])), &global(), &BTreeMap::new()).expect("plan");
        assert_eq!(
            plan.service_control_policies,
            [PolicyId::parse("p-global0001").expect("id")]
        );
    }

    #[test]
    fn spam_renders_the_email_on_the_provider_domain_and_gives_an_iam_user() {
        let configuration = params(&[
            ("awsAccountModel", "spam"),
            ("provideRootUserForECAM", "Yes"),
        ]);
        let plan = resolve(
            &order(json!([]), configuration),
            &global(),
            &BTreeMap::new(),
        )
        .expect("plan");
        assert_eq!(plan.email.as_str(), "aws+as-8790-0160-2196@provider.com");
        assert_eq!(plan.model, AccountModel::Spam);
        let Access::IamUser {
            user_name,
            policy_arns,
        } = &plan.access
        else {
            panic!("SPAM always gets an IAM user, got {:?}", plan.access);
        };
        assert_eq!(user_name.as_str(), "hospitaller-ltd");
        assert_eq!(
            policy_arns
                .iter()
                .map(PolicyArn::as_str)
                .collect::<Vec<_>>(),
            ["arn:aws:iam::aws:policy/AdministratorAccess"]
        );
        assert_eq!(
            plan.account_name.as_str(),
            "AS-8790-0160-2196 42 Hospitaller Ltd"
        );
        assert_eq!(
            plan.template_id.as_ref().map(TemplateId::as_str),
            Some("TL-111-111")
        );
    }

    #[test]
    fn spam_template_that_leaves_the_provider_domain_is_a_configuration_failure() {
        let global = ModelSettings {
            spam_email_template: Some("{customer_id}@elsewhere.com".into()),
            ..global()
        };
        let rejection = resolve(&order(json!([]), json!([])), &global, &BTreeMap::new())
            .expect_err("off-domain");
        assert_eq!(rejection.code, FailureCode::InvalidConfiguration);
    }

    #[test]
    fn ecam_email_rules() {
        let ecam = params(&[("awsAccountModel", "ECAM")]);
        let cases: [(Value, Result<&str, FailureCode>); 5] = [
            (
                params(&[("aws_account_email", "  Jane@Customer.ORG ")]),
                Ok("jane@customer.org"),
            ),
            (json!([]), Err(FailureCode::InvalidEmail)),
            (
                params(&[("aws_account_email", "not-an-email")]),
                Err(FailureCode::InvalidEmail),
            ),
            (
                params(&[("aws_account_email", "ops@provider.com")]),
                Err(FailureCode::InvalidEmail),
            ),
            (
                params(&[("aws_account_email", "ops@mail.provider.com")]),
                Err(FailureCode::InvalidEmail),
            ),
        ];
        for (ordering, expected) in cases {
            let got = resolve(
                &order(ordering.clone(), ecam.clone()),
                &global(),
                &BTreeMap::new(),
            );
            match expected {
                Ok(email) => assert_eq!(got.expect("plan").email.as_str(), email),
                Err(code) => {
                    let rejection = got.expect_err("rejected");
                    assert_eq!(rejection.code, code, "{ordering}");
                    assert_eq!(
                        rejection.model,
                        Some(AccountModel::Ecam),
                        "the model is known"
                    );
                }
            }
        }
    }

    #[test]
    fn ecam_root_or_iam_user() {
        let email = params(&[
            ("aws_account_email", "jane@customer.org"),
            ("iam_user_name", "jane.admin"),
        ]);
        let cases = [
            ("Yes", true),
            ("yes", true),
            ("No", false),
            ("False", false),
        ];
        for (flag, root) in cases {
            let configuration = params(&[
                ("awsAccountModel", "ECAM"),
                ("provideRootUserForECAM", flag),
            ]);
            let plan = resolve(
                &order(email.clone(), configuration),
                &global(),
                &BTreeMap::new(),
            )
            .expect("plan");
            assert_eq!(plan.access == Access::RootUser, root, "{flag}");
            let expected_template = if root { "TL-222-222" } else { "TL-111-111" };
            assert_eq!(
                plan.template_id.as_ref().map(TemplateId::as_str),
                Some(expected_template)
            );
            if let Access::IamUser { user_name, .. } = &plan.access {
                assert_eq!(user_name.as_str(), "jane.admin");
            }
        }
    }

    #[test]
    fn unusable_request_parameters_are_rejected_with_the_right_code() {
        let email = ("aws_account_email", "jane@customer.org");
        let cases = [
            (
                params(&[email]),
                params(&[("awsAccountModel", "HYBRID")]),
                FailureCode::InvalidConfiguration,
            ),
            (
                params(&[email]),
                params(&[("provideRootUserForECAM", "maybe")]),
                FailureCode::InvalidConfiguration,
            ),
            (
                params(&[email]),
                params(&[("provisionServiceControlPolicies", "p-good0001,bad")]),
                FailureCode::InvalidConfiguration,
            ),
            (
                params(&[("iam_user_name", "bad name")]),
                json!([]),
                FailureCode::InvalidIamUserName,
            ),
            (
                params(&[("order_mode", "existing_account")]),
                json!([]),
                FailureCode::UnsupportedOrderMode,
            ),
        ];
        for (ordering, configuration, code) in cases {
            let rejection = resolve(
                &order(ordering.clone(), configuration.clone()),
                &global(),
                &BTreeMap::new(),
            )
            .expect_err("rejected");
            assert_eq!(rejection.code, code, "{ordering} {configuration}");
        }
    }
}
