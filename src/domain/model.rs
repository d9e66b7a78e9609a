//! Business-model resolution (docs/contract.md §4): from an order and the configured layers to a
//! [`Plan`] of what to provision, or a [`Rejection`] saying why the order gets no account.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::email::{AccountEmail, EmailError};
use super::ids::PolicyId;
use super::names::{AccountName, IamUserName};
use super::order::{ConnectionType, OrderMode, PurchaseRequest};
use super::outcome::{FailureCode, Rejection};

/// Who owns the account's root email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountModel {
    /// Solution Provider Account Model: the email is on the provider's domain.
    #[serde(rename = "SPAM")]
    Spam,
    /// End Customer Account Model: the email is the customer's own.
    #[serde(rename = "ECAM")]
    Ecam,
}

impl AccountModel {
    /// Reads `SPAM` or `ECAM`, ignoring case and surrounding blanks.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_uppercase().as_str() {
            "SPAM" => Some(Self::Spam),
            "ECAM" => Some(Self::Ecam),
            _ => None,
        }
    }

    /// `SPAM` or `ECAM`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spam => "SPAM",
            Self::Ecam => "ECAM",
        }
    }
}

/// One layer of business-model settings (global, marketplace or OPCO); unset fields fall
/// through to the next layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// SPAM or ECAM.
    pub account_model: Option<AccountModel>,
    /// Under ECAM, give the customer the root user instead of an IAM user.
    pub provide_root_user_for_ecam: Option<bool>,
    /// SCP ids attached to every new account.
    pub service_control_policies: Option<Vec<String>>,
    /// The provider's own email domain.
    pub provider_email_domain: Option<String>,
    /// The SPAM account email, with placeholders.
    pub spam_email_template: Option<String>,
    /// Policies attached to the customer's IAM user.
    pub iam_user_policy_arns: Option<Vec<String>>,
    /// The `[payers.NAME]` entry whose organization gets the account.
    pub payer: Option<String>,
    /// The OU the new account is moved to.
    pub organizational_unit_id: Option<String>,
    /// Connect template id sent with an IAM-user result.
    pub iam_user_template_id: Option<String>,
    /// Connect template id sent with a root-user result.
    pub root_user_template_id: Option<String>,
}

/// A `[marketplaces."MP-…"]` section: its own settings plus per-OPCO overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketplaceSettings {
    /// OPCO overrides apply only where this is true.
    #[serde(default)]
    pub multi_payer: bool,
    /// Overrides keyed by a tier account id (`TA-…`) of the request: its tier1, else its
    /// tier2.
    #[serde(default)]
    pub opcos: BTreeMap<String, ModelSettings>,
    /// The marketplace's own settings.
    #[serde(flatten)]
    pub settings: ModelSettings,
}

/// The placeholders a `spam_email_template` may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 6] = [
    "asset_id",
    "request_id",
    "customer_id",
    "customer_external_id",
    "marketplace_id",
    "provider_email_domain",
];

/// What the customer signs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// An IAM user in the new account.
    IamUser {
        /// Its name.
        user_name: IamUserName,
        /// Managed policies attached to it.
        policy_arns: Vec<String>,
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
    pub organizational_unit_id: Option<String>,
    /// The Connect template id for the result.
    pub template_id: Option<String>,
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

/// Which tier account an OPCO override was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `asset.tiers.tier1.id`.
    Tier1,
    /// `asset.tiers.tier2.id`.
    Tier2,
}

/// Where a resolved setting came from: one of the layers of docs/contract.md §4, or the order itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The OPCO override of a `multi_payer` marketplace, found under this tier's account.
    Opco {
        /// tier1 or tier2.
        tier: Tier,
        /// The tier account id (`TA-…`) the override is keyed by.
        id: String,
    },
    /// The request's own parameter, by its Connect id.
    Request(&'static str),
    /// The `[marketplaces."MP-…"]` section.
    Marketplace(String),
    /// The global `[business_model]` defaults.
    Global,
    /// Nothing configured: the worker's fallback (no OU, no template id, no SCPs, no root user).
    Fallback,
    /// Derived from the order's ids and customer (a name).
    Derived,
    /// A field of the order itself.
    Order,
    /// `[connections]`: the payer named for the order's connection type.
    Connection(&'static str),
    /// A rule of the business model (SPAM always gives an IAM user).
    Rule(&'static str),
    /// Configured for the layers' payer, not applied: a test or preview order goes to the
    /// payer `[connections]` names, whose organization has other OUs and SCPs.
    NotForConnection {
        /// The payer the layers chose.
        layers_payer: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opco { tier, id } => {
                let tier = match tier {
                    Tier::Tier1 => "tier1",
                    Tier::Tier2 => "tier2",
                };
                write!(f, "OPCO {tier} {id}")
            }
            Self::Request(param) => write!(f, "request parameter {param}"),
            Self::Marketplace(id) => write!(f, "marketplace {id}"),
            Self::Global => f.write_str("global default"),
            Self::Fallback => f.write_str("not configured"),
            Self::Derived => f.write_str("derived from the order"),
            Self::Order => f.write_str("order"),
            Self::Connection(kind) => write!(f, "connections.{kind}"),
            Self::Rule(rule) => write!(f, "rule: {rule}"),
            Self::NotForConnection { layers_payer } => write!(
                f,
                "not applied: configured for payer {layers_payer}, the connection's payer is another organization"
            ),
        }
    }
}

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

/// A problem in a configured layer, with the key it is under (relative to the layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsIssue {
    /// The key inside the layer, e.g. `service_control_policies`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ModelSettings {
    /// Checks every field that is set; returns the first problem.
    ///
    /// # Errors
    /// [`SettingsIssue`] naming the key.
    pub fn validate(&self) -> Result<(), SettingsIssue> {
        let issue = |key, message: String| Err(SettingsIssue { key, message });
        if let Some(ids) = &self.service_control_policies {
            for id in ids {
                if let Err(e) = PolicyId::parse(id) {
                    return issue("service_control_policies", e.to_string());
                }
            }
        }
        if let Some(domain) = &self.provider_email_domain
            && AccountEmail::parse(&format!("probe@{domain}")).is_err()
        {
            return issue(
                "provider_email_domain",
                format!("`{domain}` is not a domain name"),
            );
        }
        if let Some(template) = &self.spam_email_template
            && let Err(message) = render_template(template, &|_| Some("x1"))
        {
            return issue("spam_email_template", message);
        }
        if let Some(arns) = &self.iam_user_policy_arns
            && let Some(bad) = arns.iter().find(|arn| !is_policy_arn(arn))
        {
            return issue(
                "iam_user_policy_arns",
                format!(
                    "`{bad}` is not an IAM policy ARN (arn:aws:iam::<account|aws>:policy/<name>)"
                ),
            );
        }
        if let Some(ou) = &self.organizational_unit_id
            && !is_parent_id(ou)
        {
            return issue(
                "organizational_unit_id",
                format!(
                    "`{ou}` is not an OU id (ou-<4 to 32 of a-z0-9>-<8 to 32 of a-z0-9>) or root id (r-<4 to 32 of a-z0-9>)"
                ),
            );
        }
        for (key, id) in [
            ("iam_user_template_id", &self.iam_user_template_id),
            ("root_user_template_id", &self.root_user_template_id),
        ] {
            if let Some(id) = id.as_deref().filter(|id| !is_template_id(id)) {
                return issue(
                    key,
                    format!(
                        "`{id}` is not a Connect template id (TL-<digits>[-<digits>…], e.g. TL-123-456-789)"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// An OU id (`ou-` root part `-` suffix) or a root id (`r-…`), as AWS Organizations writes them.
fn is_parent_id(id: &str) -> bool {
    let part = |s: &str, min: usize| {
        (min..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if let Some(rest) = id.strip_prefix("ou-") {
        rest.split_once('-')
            .is_some_and(|(root, ou)| part(root, 4) && part(ou, 8))
    } else {
        id.strip_prefix("r-").is_some_and(|root| part(root, 4))
    }
}

/// A Connect template id: `TL-` and groups of digits joined by `-`.
fn is_template_id(id: &str) -> bool {
    id.strip_prefix("TL-").is_some_and(|rest| {
        rest.split('-')
            .all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_policy_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", owner, resource]
        if partition.starts_with("aws")
            && (*owner == "aws" || (owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit())))
            && resource.strip_prefix("policy/").is_some_and(|name| !name.is_empty()))
}

/// Replaces each `{name}` in `template` by `value(name)`.
///
/// # Errors
/// A message naming an unknown placeholder or an unclosed brace.
pub fn render_template<'a>(
    template: &str,
    value: &dyn Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let name = &after[..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; known: {}",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        out.push_str(value(name).unwrap_or(""));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The settings that apply to one order, most specific first.
#[derive(Clone)]
struct Layers<'a> {
    opco: Option<(&'a ModelSettings, Origin)>,
    marketplace: Option<(&'a ModelSettings, &'a str)>,
    global: &'a ModelSettings,
}

impl Layers<'_> {
    /// The first configured value, OPCO then marketplace then global, with its origin.
    fn pick<T>(&self, field: impl Fn(&ModelSettings) -> Option<T>) -> Option<(T, Origin)> {
        self.pick_with_request(None, field)
    }

    /// Like `pick`, with the request's own value (and its parameter id) between the OPCO and
    /// marketplace layers.
    fn pick_with_request<T>(
        &self,
        request: Option<(T, &'static str)>,
        field: impl Fn(&ModelSettings) -> Option<T>,
    ) -> Option<(T, Origin)> {
        if let Some((layer, origin)) = &self.opco
            && let Some(value) = field(layer)
        {
            return Some((value, origin.clone()));
        }
        if let Some((value, param)) = request {
            return Some((value, Origin::Request(param)));
        }
        if let Some((layer, id)) = self.marketplace
            && let Some(value) = field(layer)
        {
            return Some((value, Origin::Marketplace(id.to_owned())));
        }
        field(self.global).map(|value| (value, Origin::Global))
    }
}

fn invalid_configuration(message: String) -> Rejection {
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

/// The OPCO override of `order`, when its marketplace is `multi_payer`: the entry keyed by its
/// tier1 account, else the one keyed by its tier2 account.
fn opco_layer<'a>(
    marketplace: Option<&'a MarketplaceSettings>,
    order: &PurchaseRequest,
) -> Option<(&'a ModelSettings, Origin)> {
    let section = marketplace.filter(|m| m.multi_payer)?;
    [
        (Tier::Tier1, &order.tier1_id),
        (Tier::Tier2, &order.tier2_id),
    ]
    .into_iter()
    .find_map(|(tier, id)| {
        let id = id.as_ref()?.as_str();
        let layer = section.opcos.get(id)?;
        Some((
            layer,
            Origin::Opco {
                tier,
                id: id.to_owned(),
            },
        ))
    })
}

impl Rules {
    /// The business model resolved for `order` (docs/contract.md §4), each setting with its origin.
    ///
    /// # Errors
    /// A [`Rejection`] for an order that gets no account: unsupported order mode, a connection
    /// type with no payer, an unusable configuration parameter, a bad ECAM email or IAM user
    /// name.
    pub fn resolve(&self, order: &PurchaseRequest) -> Result<Plan, Rejection> {
        if let OrderMode::Other(mode) = &order.order_mode {
            return Err(Rejection::new(
                FailureCode::UnsupportedOrderMode,
                format!(
                    "order_mode `{mode}` is not supported: this worker only provisions new_account orders"
                ),
            ));
        }
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
        let marketplace = self.marketplaces.get(order.marketplace_id.as_str());
        let layers = Layers {
            opco: opco_layer(marketplace, order),
            marketplace: marketplace.map(|m| (&m.settings, order.marketplace_id.as_str())),
            global: &self.global,
        };
        let params = &order.configuration;

        let requested_model = match params.account_model.as_deref() {
            Some(raw) => Some((
                AccountModel::parse(raw).ok_or_else(|| {
                    invalid_configuration(format!(
                        "awsAccountModel `{raw}` is neither SPAM nor ECAM"
                    ))
                })?,
                "awsAccountModel",
            )),
            None => None,
        };
        let (model, origin) = layers
            .pick_with_request(requested_model, |s| s.account_model)
            .ok_or_else(|| invalid_configuration("no account model is configured".into()))?;

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
}

/// The rest of the plan, once the model is known.
fn plan_for(
    order: &PurchaseRequest,
    layers: &Layers<'_>,
    model: AccountModel,
) -> Result<Plan, Rejection> {
    let mut origins = BTreeMap::new();
    let params = &order.configuration;
    let requested_root = match params.provide_root_user_for_ecam.as_deref() {
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
    let (root_for_ecam, root_origin) = layers
        .pick_with_request(requested_root, |s| s.provide_root_user_for_ecam)
        .unwrap_or((false, Origin::Fallback));

    let requested_scps = match params.service_control_policies.as_deref() {
        Some(raw) => Some((
            PolicyId::parse_list(raw).map_err(|e| {
                invalid_configuration(format!("provisionServiceControlPolicies: {e}"))
            })?,
            "provisionServiceControlPolicies",
        )),
        None => None,
    };
    // Configured ids were validated at start-up.
    let (service_control_policies, origin) = layers
        .pick_with_request(requested_scps, |s| {
            let ids = s.service_control_policies.as_ref()?;
            Some(
                ids.iter()
                    .filter_map(|id| PolicyId::parse(id).ok())
                    .collect(),
            )
        })
        .unwrap_or((Vec::new(), Origin::Fallback));
    origins.insert("service_control_policies", origin);

    let (provider_domain, origin) = layers
        .pick(|s| s.provider_email_domain.clone())
        .ok_or_else(|| invalid_configuration("no provider_email_domain is configured".into()))?;
    origins.insert("provider_email_domain", origin);
    let (email, origin) = match model {
        AccountModel::Spam => spam_email(order, layers, &provider_domain)?,
        AccountModel::Ecam => (
            ecam_email(order, &provider_domain)?,
            Origin::Request("aws_account_email"),
        ),
    };
    origins.insert("account_email", origin);

    let access = if model == AccountModel::Ecam && root_for_ecam {
        origins.insert("access", root_origin);
        Access::RootUser
    } else {
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
        let (policy_arns, origin) = layers
            .pick(|s| s.iam_user_policy_arns.clone())
            .unwrap_or((Vec::new(), Origin::Fallback));
        origins.insert("iam_user_policy_arns", origin);
        Access::IamUser {
            user_name,
            policy_arns,
        }
    };
    let (template_id, origin) = match access {
        Access::IamUser { .. } => layers.pick(|s| s.iam_user_template_id.clone()),
        Access::RootUser => layers.pick(|s| s.root_user_template_id.clone()),
    }
    .map_or((None, Origin::Fallback), |(id, origin)| (Some(id), origin));
    origins.insert("template_id", origin);
    let (payer, origin) = layers
        .pick(|s| s.payer.clone())
        .unwrap_or_else(|| ("default".to_owned(), Origin::Fallback));
    origins.insert("payer", origin);
    let (organizational_unit_id, origin) = layers
        .pick(|s| s.organizational_unit_id.clone())
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

/// The SPAM email rendered from the layers' template, with the template's origin.
fn spam_email(
    order: &PurchaseRequest,
    layers: &Layers<'_>,
    domain: &str,
) -> Result<(AccountEmail, Origin), Rejection> {
    let (template, origin) = layers
        .pick(|s| s.spam_email_template.clone())
        .ok_or_else(|| invalid_configuration("no spam_email_template is configured".into()))?;
    let external_id = order.customer.external_id.as_deref();
    let value = |name: &str| match name {
        "asset_id" => Some(order.asset_id.as_str()),
        "request_id" => Some(order.request_id.as_str()),
        "customer_id" => Some(order.customer.id.as_str()),
        "customer_external_id" => external_id,
        "marketplace_id" => Some(order.marketplace_id.as_str()),
        "provider_email_domain" => Some(domain),
        _ => None,
    };
    let rendered = render_template(&template, &value).map_err(invalid_configuration)?;
    let email = AccountEmail::parse(&rendered).map_err(|e| {
        invalid_configuration(format!(
            "the SPAM email rendered from spam_email_template is unusable: {e}"
        ))
    })?;
    if !email.is_on_domain(domain) {
        return Err(invalid_configuration(format!(
            "the SPAM email `{email}` is not on the provider's domain `{domain}`"
        )));
    }
    Ok((email, origin))
}

fn ecam_email(order: &PurchaseRequest, provider_domain: &str) -> Result<AccountEmail, Rejection> {
    let invalid = |message: String| Rejection::new(FailureCode::InvalidEmail, message);
    let raw = order.aws_account_email.as_deref().unwrap_or("");
    let email = AccountEmail::parse(raw).map_err(|e| match e {
        EmailError::Missing => {
            invalid("ECAM needs the customer's own email in aws_account_email".into())
        }
        other => invalid(other.to_string()),
    })?;
    if email.is_on_domain(provider_domain) {
        return Err(invalid(format!(
            "`{email}` is on the provider's domain; ECAM needs the customer's own email"
        )));
    }
    Ok(email)
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
        assert_eq!(with.template_id.as_deref(), Some("TL-333-333"));
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
        assert_eq!(without.template_id.as_deref(), Some("TL-111-111"));
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
                (super::super::outcome::Action::Fail, None)
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
            plan.organizational_unit_id.as_deref(),
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
            policy_arns,
            &["arn:aws:iam::aws:policy/AdministratorAccess"]
        );
        assert_eq!(
            plan.account_name.as_str(),
            "AS-8790-0160-2196 42 Hospitaller Ltd"
        );
        assert_eq!(plan.template_id.as_deref(), Some("TL-111-111"));
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
            assert_eq!(plan.template_id.as_deref(), Some(expected_template));
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

    #[test]
    fn templates_render_and_refuse_unknown_placeholders() {
        let value = |name: &str| (name == "asset_id").then_some("AS-1");
        assert_eq!(
            render_template("aws+{asset_id}@x.com", &value).as_deref(),
            Ok("aws+AS-1@x.com")
        );
        assert!(render_template("{nope}@x.com", &value).is_err());
        assert!(render_template("{asset_id@x.com", &value).is_err());
    }

    #[test]
    fn ou_and_template_ids_follow_their_formats() {
        for (id, ok) in [
            ("ou-ab12-cdef3456", true),
            ("ou-a1b2c3d4e5-0123456789abcdef", true),
            ("r-ab12", true),
            ("ou-ab12", false),
            ("ou-ab1-cdef3456", false),
            ("ou-ab12-cdef345", false),
            ("OU-AB12-CDEF3456", false),
            ("r-", false),
            ("o-ab12cdef34", false),
        ] {
            assert_eq!(is_parent_id(id), ok, "{id}");
        }
        for (id, ok) in [
            ("TL-123-456-789", true),
            ("TL-1", true),
            ("TL-", false),
            ("TL-12a-345", false),
            ("TL-123--456", false),
            ("tl-123-456", false),
            ("PR-123-456", false),
        ] {
            assert_eq!(is_template_id(id), ok, "{id}");
        }
    }

    #[test]
    fn settings_validation_names_the_key() {
        let cases = [
            (
                ModelSettings {
                    service_control_policies: Some(vec!["x".into()]),
                    ..ModelSettings::default()
                },
                "service_control_policies",
            ),
            (
                ModelSettings {
                    provider_email_domain: Some("no domain".into()),
                    ..ModelSettings::default()
                },
                "provider_email_domain",
            ),
            (
                ModelSettings {
                    spam_email_template: Some("{bad}".into()),
                    ..ModelSettings::default()
                },
                "spam_email_template",
            ),
            (
                ModelSettings {
                    iam_user_policy_arns: Some(vec!["AdministratorAccess".into()]),
                    ..ModelSettings::default()
                },
                "iam_user_policy_arns",
            ),
            (
                ModelSettings {
                    organizational_unit_id: Some("x".into()),
                    ..ModelSettings::default()
                },
                "organizational_unit_id",
            ),
            (
                ModelSettings {
                    root_user_template_id: Some("123".into()),
                    ..ModelSettings::default()
                },
                "root_user_template_id",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(settings.validate().expect_err("invalid").key, key);
        }
        assert_eq!(global().validate(), Ok(()));
        let arn = ModelSettings {
            iam_user_policy_arns: Some(vec![
                "arn:aws:iam::123456789012:policy/team/ReadOnly".into(),
            ]),
            ..ModelSettings::default()
        };
        assert_eq!(arn.validate(), Ok(()));
    }
}
