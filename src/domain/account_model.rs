//! The account model of an order: who owns the new account's root email (SPAM or ECAM).

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_read_either_case() {
        for (raw, model) in [
            ("SPAM", Some(AccountModel::Spam)),
            (" ecam ", Some(AccountModel::Ecam)),
            ("Spam", Some(AccountModel::Spam)),
            ("HYBRID", None),
            ("", None),
        ] {
            assert_eq!(AccountModel::parse(raw), model, "{raw:?}");
        }
        assert_eq!(AccountModel::Ecam.as_str(), "ECAM");
    }
}
