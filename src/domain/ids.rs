//! Connect and AWS identifiers: newtypes that can only hold a well-formed id.

use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} (expected {expected})")]
pub struct IdError {
    /// What kind of id was expected.
    pub what: &'static str,
    /// What the id should look like.
    pub expected: &'static str,
    /// The offending value (ids are not secret).
    pub value: String,
}

/// True for `PREFIX-` followed by groups of ASCII digits joined by single dashes (`PR-1234-5678-000`).
fn is_connect_id(value: &str, prefix: &str) -> bool {
    let Some(rest) = value.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    value.len() <= 64
        && rest
            .split('-')
            .all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()))
}

macro_rules! connect_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses the id: its prefix, a dash, then digit groups joined by single dashes.
            ///
            /// # Errors
            /// [`IdError`] when the value has another shape.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                if is_connect_id(value, $prefix) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError {
                        what: $what,
                        expected: concat!($prefix, "-<digits>[-<digits>…]"),
                        value: value.to_owned(),
                    })
                }
            }

            /// The id as Connect wrote it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

connect_id!(
    /// A Connect fulfillment request id (`PR-…`).
    RequestId,
    "PR",
    "request id"
);
connect_id!(
    /// A Connect asset (subscription) id (`AS-…`).
    AssetId,
    "AS",
    "asset id"
);
connect_id!(
    /// A Connect marketplace id (`MP-…`).
    MarketplaceId,
    "MP",
    "marketplace id"
);
connect_id!(
    /// A Connect template id (`TL-…`), sent with a result to pick the customer's message.
    TemplateId,
    "TL",
    "Connect template id"
);
connect_id!(
    /// A Connect tier account id (`TA-…`): a customer or a reseller (OPCO).
    TierAccountId,
    "TA",
    "tier account id"
);

/// A Service Control Policy id (`p-` then 8 to 128 letters, digits or underscores, as AWS defines it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PolicyId(String);

impl PolicyId {
    /// # Errors
    /// [`IdError`] when the value does not match AWS's `^p-[0-9a-zA-Z_]{8,128}$`.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let ok = value.strip_prefix("p-").is_some_and(|rest| {
            (8..=128).contains(&rest.len())
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError {
                what: "service control policy id",
                expected: "p- then 8 to 128 letters, digits or underscores",
                value: value.to_owned(),
            })
        }
    }

    /// Parses a comma-separated list: items are trimmed and empty items dropped.
    ///
    /// # Errors
    /// The first malformed id.
    pub fn parse_list(joined: &str) -> Result<Vec<Self>, IdError> {
        joined
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// The id as AWS knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Organizations parent id: an OU id (`ou-` then 4 to 32 of `a-z0-9`, `-`, 8 to 32 of
/// `a-z0-9`) or a root id (`r-` then 4 to 32 of `a-z0-9`), as AWS Organizations writes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct OuId(String);

impl OuId {
    /// Parses an OU or root id.
    ///
    /// # Errors
    /// [`IdError`] when the value has another shape.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let part = |s: &str, min: usize| {
            (min..=32).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        let ok = if let Some(rest) = value.strip_prefix("ou-") {
            rest.split_once('-')
                .is_some_and(|(root, ou)| part(root, 4) && part(ou, 8))
        } else {
            value.strip_prefix("r-").is_some_and(|root| part(root, 4))
        };
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError {
                what: "OU id",
                expected: "ou-<4 to 32 of a-z0-9>-<8 to 32 of a-z0-9>, or a root id r-<4 to 32 of a-z0-9>",
                value: value.to_owned(),
            })
        }
    }

    /// The id as AWS knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("r-ab1", false),
            ("o-ab12cdef34", false),
            (" ou-ab12-cdef3456", false),
        ] {
            assert_eq!(OuId::parse(id).is_ok(), ok, "{id}");
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
            assert_eq!(TemplateId::parse(id).is_ok(), ok, "{id}");
        }
        let error = OuId::parse("x").expect_err("not an OU").to_string();
        assert!(error.contains("ou-<4 to 32 of a-z0-9>"), "{error}");
    }

    #[test]
    fn connect_ids_need_their_prefix_and_digit_groups() {
        let cases = [
            ("PR-5852-1608-1567-000", true),
            ("PR-1", true),
            ("PR-", false),
            ("PR--1", false),
            ("PR-1-", false),
            ("PR-12a", false),
            ("pr-1234", false),
            ("AS-1234", false),
            (" PR-1234", false),
            ("PR-1234\n", false),
        ];
        for (value, ok) in cases {
            assert_eq!(RequestId::parse(value).is_ok(), ok, "{value:?}");
        }
        assert!(AssetId::parse("AS-8790-0160-2196").is_ok());
        assert!(MarketplaceId::parse("MP-91673").is_ok());
        assert!(TierAccountId::parse("TA-0-7304-8514-7852").is_ok());
        assert!(TierAccountId::parse("MP-91673").is_err());
    }

    #[test]
    fn policy_ids_follow_aws_pattern() {
        let cases = [
            ("p-abcd1234", true),
            ("p-FullAWSAccess", true),
            ("p-under_score", true),
            ("p-short", false),
            ("p-has-dash1", false),
            ("r-abcd1234", false),
            ("p-", false),
        ];
        for (value, ok) in cases {
            assert_eq!(PolicyId::parse(value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn policy_lists_are_trimmed_and_empties_dropped() {
        let list = PolicyId::parse_list(" p-abcd1234 ,, p-efgh5678,  ").expect("valid list");
        let ids: Vec<_> = list.iter().map(PolicyId::as_str).collect();
        assert_eq!(ids, ["p-abcd1234", "p-efgh5678"]);
        assert!(PolicyId::parse_list("").expect("empty is fine").is_empty());
        let err = PolicyId::parse_list("p-abcd1234, bogus").expect_err("bogus id");
        assert_eq!(err.value, "bogus");
    }
}
