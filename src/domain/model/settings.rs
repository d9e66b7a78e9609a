//! The settings schema of one business-model layer (`[business_model]`,
//! `[marketplaces."MP-…"]`, `[marketplaces."MP-…".opcos."TA-…"]`) as the TOML writes it, and
//! the grammar of each of its values: the typed accessors below are what validation and
//! resolution both read, so the two cannot disagree.
//!
//! The values stay strings in the schema: a value refused while deserializing a flattened
//! marketplace section would lose the key it is under, and configuration errors name the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::email_rules::render_template;
use crate::domain::account_model::AccountModel;
use crate::domain::arn::PolicyArn;
use crate::domain::email::AccountEmail;
use crate::domain::ids::{OuId, PolicyId, TemplateId};

/// One layer of business-model settings (global, marketplace or OPCO); unset fields fall
/// through to the next layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// SPAM or ECAM.
    pub account_model: Option<AccountModel>,
    /// Under ECAM, give the customer the root user instead of an IAM user.
    pub provide_root_user_for_ecam: Option<bool>,
    /// SCP ids attached to every new account ([`PolicyId`]s).
    pub service_control_policies: Option<Vec<String>>,
    /// The provider's own email domain.
    pub provider_email_domain: Option<String>,
    /// The SPAM account email, with placeholders.
    pub spam_email_template: Option<String>,
    /// Policies attached to the customer's IAM user ([`PolicyArn`]s).
    pub iam_user_policy_arns: Option<Vec<String>>,
    /// The `[payers.NAME]` entry whose organization gets the account.
    pub payer: Option<String>,
    /// The OU (or root) the new account is moved to (an [`OuId`]).
    pub organizational_unit_id: Option<String>,
    /// Connect template id sent with an IAM-user result (a [`TemplateId`]).
    pub iam_user_template_id: Option<String>,
    /// Connect template id sent with a root-user result (a [`TemplateId`]).
    pub root_user_template_id: Option<String>,
    /// Connect template id sent with an existing account brought in (a [`TemplateId`]).
    pub existing_account_template_id: Option<String>,
    /// The deny-all SCP a suspended account gets (a [`PolicyId`]).
    pub suspend_policy_id: Option<String>,
    /// What a cancel does to the account ([`CancelAction`]: `close`, `remove` or `none`).
    pub cancel_action: Option<String>,
}

/// What a cancel request does to the account (`cancel_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAction {
    /// `CloseAccount`: the account is closed (AWS keeps it suspended for 90 days).
    Close,
    /// `RemoveAccountFromOrganization`: the customer keeps the account, outside the
    /// organization (for ECAM customers).
    Remove,
    /// Nothing in AWS: the cancel is only reported.
    None,
}

impl CancelAction {
    /// The value as the configuration writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::Remove => "remove",
            Self::None => "none",
        }
    }

    /// Reads `close`, `remove` or `none`.
    ///
    /// # Errors
    /// A message for any other value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "close" => Ok(Self::Close),
            "remove" => Ok(Self::Remove),
            "none" => Ok(Self::None),
            other => Err(format!("`{other}` is none of close, remove or none")),
        }
    }
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

/// A problem in a configured layer, with the key it is under (relative to the layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsIssue {
    /// The key inside the layer, e.g. `service_control_policies`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A typed value of a layer: `None` when the layer does not set it.
pub type Setting<T> = Option<Result<T, SettingsIssue>>;

fn parse_list<T, E: ToString>(
    key: &'static str,
    items: Option<&Vec<String>>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Setting<Vec<T>> {
    let items = items?;
    Some(
        items
            .iter()
            .map(|item| {
                parse(item).map_err(|e| SettingsIssue {
                    key,
                    message: e.to_string(),
                })
            })
            .collect(),
    )
}

fn parse_one<T, E: ToString>(
    key: &'static str,
    item: Option<&String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Setting<T> {
    let item = item?;
    Some(parse(item).map_err(|e| SettingsIssue {
        key,
        message: e.to_string(),
    }))
}

impl ModelSettings {
    /// `service_control_policies`, parsed.
    pub fn scp_ids(&self) -> Setting<Vec<PolicyId>> {
        parse_list(
            "service_control_policies",
            self.service_control_policies.as_ref(),
            PolicyId::parse,
        )
    }

    /// `iam_user_policy_arns`, parsed.
    pub fn policy_arns(&self) -> Setting<Vec<PolicyArn>> {
        parse_list(
            "iam_user_policy_arns",
            self.iam_user_policy_arns.as_ref(),
            PolicyArn::parse,
        )
    }

    /// `organizational_unit_id`, parsed.
    pub fn ou_id(&self) -> Setting<OuId> {
        parse_one(
            "organizational_unit_id",
            self.organizational_unit_id.as_ref(),
            OuId::parse,
        )
    }

    /// `iam_user_template_id`, parsed.
    pub fn iam_user_template_id(&self) -> Setting<TemplateId> {
        parse_one(
            "iam_user_template_id",
            self.iam_user_template_id.as_ref(),
            TemplateId::parse,
        )
    }

    /// `root_user_template_id`, parsed.
    pub fn root_user_template_id(&self) -> Setting<TemplateId> {
        parse_one(
            "root_user_template_id",
            self.root_user_template_id.as_ref(),
            TemplateId::parse,
        )
    }

    /// `existing_account_template_id`, parsed.
    pub fn existing_account_template_id(&self) -> Setting<TemplateId> {
        parse_one(
            "existing_account_template_id",
            self.existing_account_template_id.as_ref(),
            TemplateId::parse,
        )
    }

    /// `suspend_policy_id`, parsed.
    pub fn suspend_policy_id(&self) -> Setting<PolicyId> {
        parse_one(
            "suspend_policy_id",
            self.suspend_policy_id.as_ref(),
            PolicyId::parse,
        )
    }

    /// `cancel_action`, parsed.
    pub fn cancel_action(&self) -> Setting<CancelAction> {
        parse_one(
            "cancel_action",
            self.cancel_action.as_ref(),
            CancelAction::parse,
        )
    }

    /// Checks every field of this layer that is set, on its own; returns the first problem.
    /// (What needs several layers, the SPAM email rendered on the provider's domain and the
    /// payer's entry, is checked by the configuration over the layers that apply together.)
    ///
    /// # Errors
    /// [`SettingsIssue`] naming the key.
    pub fn validate(&self) -> Result<(), SettingsIssue> {
        let issue = |key, message: String| Err(SettingsIssue { key, message });
        if let Some(Err(issue)) = self.scp_ids() {
            return Err(issue);
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
        if let Some(Err(issue)) = self.policy_arns() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.ou_id() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.iam_user_template_id() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.root_user_template_id() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.existing_account_template_id() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.suspend_policy_id() {
            return Err(issue);
        }
        if let Some(Err(issue)) = self.cancel_action() {
            return Err(issue);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    iam_user_policy_arns: Some(vec!["arn:aws:iam::aws:policy/Admin Access".into()]),
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
                    iam_user_template_id: Some("TL-12a".into()),
                    ..ModelSettings::default()
                },
                "iam_user_template_id",
            ),
            (
                ModelSettings {
                    root_user_template_id: Some("123".into()),
                    ..ModelSettings::default()
                },
                "root_user_template_id",
            ),
            (
                ModelSettings {
                    existing_account_template_id: Some("TL-x".into()),
                    ..ModelSettings::default()
                },
                "existing_account_template_id",
            ),
            (
                ModelSettings {
                    suspend_policy_id: Some("deny-all".into()),
                    ..ModelSettings::default()
                },
                "suspend_policy_id",
            ),
            (
                ModelSettings {
                    cancel_action: Some("delete".into()),
                    ..ModelSettings::default()
                },
                "cancel_action",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(settings.validate().expect_err("invalid").key, key);
        }
        let arn = ModelSettings {
            iam_user_policy_arns: Some(vec![
                "arn:aws:iam::123456789012:policy/team/ReadOnly".into(),
            ]),
            organizational_unit_id: Some("r-ab12".into()),
            ..ModelSettings::default()
        };
        assert_eq!(arn.validate(), Ok(()));
        let parsed = arn.policy_arns().expect("set").expect("valid");
        assert_eq!(
            parsed[0].as_str(),
            "arn:aws:iam::123456789012:policy/team/ReadOnly"
        );
        assert!(ModelSettings::default().ou_id().is_none());
    }
}
