//! Business outcomes: why an order ends `aws.account.failed`, and what the customer can do.

use super::account_model::AccountModel;

/// A failure code of `aws.account.failed` (docs/contract.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCode {
    /// ECAM email missing, malformed, on the provider's domain; or AWS said INVALID_EMAIL.
    InvalidEmail,
    /// An account with that email exists that is not this order's.
    EmailAlreadyExists,
    /// The requested IAM user name breaks IAM's rules.
    InvalidIamUserName,
    /// `order_mode` is not `new_account`.
    UnsupportedOrderMode,
    /// A `test` or `preview` order (or an unknown connection type) with no payer named for it.
    ConnectionNotAllowed,
    /// A configuration parameter in the request is unusable.
    InvalidConfiguration,
    /// A later request (or an existing-account purchase already joined) names an account that
    /// AWS does not show as the asset's (its `connect:asset-id` tag): nothing is touched.
    AccountNotOurs,
    /// The account an existing-account purchase names cannot be invited: it is in another
    /// organization, in this one under another asset, or does not exist.
    AccountNotEligible,
    /// The customer declined the invitation (or it was cancelled).
    InvitationDeclined,
    /// The invitation expired before the customer accepted it.
    InvitationExpired,
    /// AWS refused to close the account: the organization closed its quota of members (10%
    /// per 30 days).
    CloseQuotaExceeded,
    /// AWS ended the creation FAILED for this reason (as AWS spells it).
    Aws(String),
}

impl FailureCode {
    /// The code as it appears in the event.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidEmail => "INVALID_EMAIL",
            Self::EmailAlreadyExists => "EMAIL_ALREADY_EXISTS",
            Self::InvalidIamUserName => "INVALID_IAM_USER_NAME",
            Self::UnsupportedOrderMode => "UNSUPPORTED_ORDER_MODE",
            Self::ConnectionNotAllowed => "CONNECTION_NOT_ALLOWED",
            Self::InvalidConfiguration => "INVALID_CONFIGURATION",
            Self::AccountNotOurs => "ACCOUNT_NOT_OURS",
            Self::AccountNotEligible => "ACCOUNT_NOT_ELIGIBLE",
            Self::InvitationDeclined => "INVITATION_DECLINED",
            Self::InvitationExpired => "INVITATION_EXPIRED",
            Self::CloseQuotaExceeded => "CLOSE_QUOTA_EXCEEDED",
            Self::Aws(reason) => reason,
        }
    }

    /// Maps an AWS `CreateAccountStatus.FailureReason` to our code.
    pub fn from_aws_reason(reason: &str) -> Self {
        match reason {
            "EMAIL_ALREADY_EXISTS" => Self::EmailAlreadyExists,
            "INVALID_EMAIL" => Self::InvalidEmail,
            other => Self::Aws(other.to_owned()),
        }
    }
}

/// What Connect should do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Ask the customer to fix an ordering parameter.
    Inquire,
    /// Fail the request.
    Fail,
}

/// Why an order gets no account: the body of `aws.account.failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The failure code.
    pub code: FailureCode,
    /// A readable explanation for the customer and the operator.
    pub message: String,
    /// The business model, when resolution got that far.
    pub model: Option<AccountModel>,
}

impl Rejection {
    /// A rejection with this code and message.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            model: None,
        }
    }

    /// The same rejection, for an order under `model`.
    pub fn under(self, model: AccountModel) -> Self {
        Self {
            model: Some(model),
            ..self
        }
    }

    /// The action and the parameter to fix, per docs/contract.md §5 (EMAIL_ALREADY_EXISTS is the
    /// customer's to fix only under ECAM).
    pub fn action(&self) -> (Action, Option<&'static str>) {
        match (&self.code, self.model) {
            (FailureCode::InvalidEmail, _) => (Action::Inquire, Some("aws_account_email")),
            (FailureCode::EmailAlreadyExists, Some(AccountModel::Ecam)) => {
                (Action::Inquire, Some("aws_account_email"))
            }
            (FailureCode::InvalidIamUserName, _) => (Action::Inquire, Some("iam_user_name")),
            (
                FailureCode::AccountNotEligible
                | FailureCode::InvitationDeclined
                | FailureCode::InvitationExpired,
                _,
            ) => (Action::Inquire, Some("aws_account_id")),
            _ => (Action::Fail, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_contract_table() {
        use AccountModel::{Ecam, Spam};
        let inquire_email = (Action::Inquire, Some("aws_account_email"));
        let fail = (Action::Fail, None);
        let cases = [
            (FailureCode::InvalidEmail, Some(Ecam), inquire_email),
            (FailureCode::InvalidEmail, Some(Spam), inquire_email),
            (FailureCode::EmailAlreadyExists, Some(Ecam), inquire_email),
            (FailureCode::EmailAlreadyExists, Some(Spam), fail),
            (FailureCode::EmailAlreadyExists, None, fail),
            (
                FailureCode::InvalidIamUserName,
                Some(Spam),
                (Action::Inquire, Some("iam_user_name")),
            ),
            (FailureCode::UnsupportedOrderMode, None, fail),
            (FailureCode::AccountNotOurs, Some(Spam), fail),
            (FailureCode::CloseQuotaExceeded, None, fail),
            (
                FailureCode::AccountNotEligible,
                None,
                (Action::Inquire, Some("aws_account_id")),
            ),
            (
                FailureCode::InvitationDeclined,
                Some(Ecam),
                (Action::Inquire, Some("aws_account_id")),
            ),
            (
                FailureCode::InvitationExpired,
                None,
                (Action::Inquire, Some("aws_account_id")),
            ),
            (FailureCode::ConnectionNotAllowed, None, fail),
            (FailureCode::InvalidConfiguration, Some(Ecam), fail),
            (
                FailureCode::Aws("ACCOUNT_LIMIT_EXCEEDED".into()),
                Some(Ecam),
                fail,
            ),
        ];
        for (code, model, expected) in cases {
            let mut rejection = Rejection::new(code.clone(), "x");
            rejection.model = model;
            assert_eq!(rejection.action(), expected, "{code:?} {model:?}");
        }
    }

    #[test]
    fn aws_reasons_map_to_codes() {
        assert_eq!(
            FailureCode::from_aws_reason("EMAIL_ALREADY_EXISTS"),
            FailureCode::EmailAlreadyExists
        );
        assert_eq!(
            FailureCode::from_aws_reason("INVALID_EMAIL"),
            FailureCode::InvalidEmail
        );
        let other = FailureCode::from_aws_reason("FAILED_BUSINESS_VALIDATION");
        assert_eq!(other.as_str(), "FAILED_BUSINESS_VALIDATION");
    }
}
