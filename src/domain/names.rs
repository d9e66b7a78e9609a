//! Names AWS puts limits on: the account name, the IAM user name and the IAM role name.

use std::fmt;

/// AWS `CreateAccount` takes 1 to 50 printable ASCII characters as the account name.
const ACCOUNT_NAME_MAX: usize = 50;
/// IAM user names are 1 to 64 characters of `[A-Za-z0-9+=,.@_-]`.
const IAM_USER_NAME_MAX: usize = 64;

/// A name for a new AWS account, within AWS's limits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct AccountName(String);

impl AccountName {
    /// The requested name reduced to AWS's allowed characters and length, or, when none was
    /// requested or nothing usable is left of it, `{asset_id} {customer_external_id}
    /// {customer_name}` reduced the same way.
    pub fn derive(
        requested: Option<&str>,
        asset_id: &str,
        customer_external_id: Option<&str>,
        customer_name: &str,
    ) -> Self {
        if let Some(name) = requested.map(reduce_account_name).filter(|n| !n.is_empty()) {
            return Self(name);
        }
        let parts = [Some(asset_id), customer_external_id, Some(customer_name)];
        let joined = parts.into_iter().flatten().collect::<Vec<_>>().join(" ");
        Self(reduce_account_name(&joined))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keeps printable ASCII, folds runs of whitespace into one space, trims, cuts to 50.
fn reduce_account_name(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| (' '..='~').contains(c))
        .collect();
    let folded = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    folded
        .chars()
        .take(ACCOUNT_NAME_MAX)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// Why a requested IAM user name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid IAM user name (1 to 64 characters: letters, digits and + = , . @ _ -)"
)]
pub struct IamUserNameError(pub String);

/// An IAM user name that IAM accepts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct IamUserName(String);

impl IamUserName {
    /// Checks a name the customer asked for (trimmed); a bad one is refused, not repaired,
    /// since the customer will sign in with it.
    ///
    /// # Errors
    /// [`IamUserNameError`] when it breaks IAM's rules.
    pub fn parse(requested: &str) -> Result<Self, IamUserNameError> {
        let name = requested.trim();
        let ok = !name.is_empty()
            && name.len() <= IAM_USER_NAME_MAX
            && name.bytes().all(is_iam_name_byte);
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(IamUserNameError(requested.to_owned()))
        }
    }

    /// A default derived from the customer's name: lower-cased, other characters turned into
    /// dashes, dashes folded and trimmed, cut to 64; `customer-<customer id>` when nothing is left.
    pub fn derive(customer_name: &str, customer_id: &str) -> Self {
        let mut name = String::new();
        for c in customer_name.chars().flat_map(char::to_lowercase) {
            let c = if c.is_ascii() && is_iam_name_byte(c as u8) {
                c
            } else {
                '-'
            };
            if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
                name.push(c);
            }
        }
        let mut name: String = name.chars().take(IAM_USER_NAME_MAX).collect();
        while name.ends_with('-') {
            name.pop();
        }
        if name.is_empty() {
            name = format!("customer-{}", customer_id.to_lowercase());
            name.truncate(IAM_USER_NAME_MAX);
        }
        Self(name)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IamUserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// IAM role names are 1 to 64 characters of `[A-Za-z0-9+=,.@_-]`.
const ROLE_NAME_MAX: usize = 64;

/// Why a string cannot be an IAM role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid IAM role name (1 to 64 characters: letters, digits and + = , . @ _ -)"
)]
pub struct RoleNameError(pub String);

/// An IAM role name (`aws.member_role_name`: the access role `CreateAccount` makes in a new
/// member account).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct RoleName(String);

impl RoleName {
    /// Checks a role name as written (not trimmed: the configuration says it exactly).
    ///
    /// # Errors
    /// [`RoleNameError`] when it breaks IAM's rules.
    pub fn parse(name: &str) -> Result<Self, RoleNameError> {
        let ok = (1..=ROLE_NAME_MAX).contains(&name.len()) && name.bytes().all(is_iam_name_byte);
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(RoleNameError(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RoleName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <String as serde::Deserialize>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// True for a character IAM allows in user, role and policy names and paths: letters,
/// digits and `+=,.@_-`.
pub(crate) fn is_iam_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_reduced_to_aws_limits() {
        let cases = [
            (Some("  My   Account "), "My Account"),
            (Some("Café\tZürich"), "Caf Zrich"),
            (Some("ééé"), "AS-1 42 Hospitaller"),
            (Some(""), "AS-1 42 Hospitaller"),
            (None, "AS-1 42 Hospitaller"),
        ];
        for (requested, expected) in cases {
            let name = AccountName::derive(requested, "AS-1", Some("42"), "Hospitaller");
            assert_eq!(name.as_str(), expected, "{requested:?}");
        }
        let long = AccountName::derive(None, "AS-8790-0160-2196", None, &"x".repeat(80));
        assert_eq!(long.as_str().len(), 50);
        assert!(long.as_str().starts_with("AS-8790-0160-2196 xxx"));
        let cut_at_space =
            AccountName::derive(Some(&format!("{} tail", "a".repeat(49))), "", None, "");
        assert_eq!(cut_at_space.as_str(), "a".repeat(49));
    }

    #[test]
    fn role_names_follow_iam_rules() {
        let cases = [
            ("OrganizationAccountAccessRole", true),
            ("vending+x=y,z.w@q_1-2", true),
            ("", false),
            ("bad role", false),
            (" padded", false),
            ("path/role", false),
            ("rôle", false),
        ];
        for (raw, ok) in cases {
            assert_eq!(RoleName::parse(raw).is_ok(), ok, "{raw:?}");
        }
        assert!(RoleName::parse(&"r".repeat(64)).is_ok());
        assert!(RoleName::parse(&"r".repeat(65)).is_err());
    }

    #[test]
    fn requested_iam_user_names_follow_iam_rules() {
        let cases = [
            ("admin", true),
            (" admin ", true),
            ("first.last+ops=1,x@y_z-w", true),
            ("", false),
            ("has space", false),
            ("slash/name", false),
            ("ünïcode", false),
        ];
        for (raw, ok) in cases {
            assert_eq!(IamUserName::parse(raw).is_ok(), ok, "{raw:?}");
        }
        assert!(IamUserName::parse(&"a".repeat(64)).is_ok());
        assert!(IamUserName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn default_iam_user_names_come_from_the_customer() {
        let cases = [
            ("Hospitaller", "hospitaller"),
            ("ACME  Corp, Inc.", "acme-corp,-inc."),
            ("  Zürich AG!", "z-rich-ag"),
            ("日本", "customer-ta-0-1"),
            ("", "customer-ta-0-1"),
        ];
        for (customer, expected) in cases {
            assert_eq!(
                IamUserName::derive(customer, "TA-0-1").as_str(),
                expected,
                "{customer:?}"
            );
        }
        let long = IamUserName::derive(&"n".repeat(100), "TA-1");
        assert_eq!(long.as_str().len(), 64);
        for name in [long.as_str(), "hospitaller"] {
            assert!(IamUserName::parse(name).is_ok());
        }
    }
}
