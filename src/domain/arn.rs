//! IAM ARNs the configuration names: [`PolicyArn`] (a managed policy for the customer's IAM
//! user) and [`RoleArn`] (the role a payer is reached through). One grammar each, used by
//! configuration, resolution, `check` and the AWS side alike.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::names::is_iam_name_byte;

/// The partitions an IAM ARN may name.
pub const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// What an IAM managed-policy ARN looks like.
pub const POLICY_ARN_SHAPE: &str = "arn:aws:iam::aws:policy/NAME (AWS managed) or arn:aws:iam::<12-digit account id>:policy/[PATH/]NAME";
/// What an IAM role ARN looks like.
pub const ROLE_ARN_SHAPE: &str = "arn:aws:iam::<12-digit account id>:role/[PATH/]NAME";

/// Why a string is not the ARN it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not an IAM {what} ARN: {problem}")]
pub struct ArnError {
    /// `policy` or `role`.
    pub what: &'static str,
    /// The offending value (ARNs are not secret).
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The owner and resource of an IAM ARN `arn:<partition>:iam::<owner>:<resource>`.
fn iam_fields<'a>(arn: &'a str, shape: &str) -> Result<(&'a str, &'a str), String> {
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", partition, service, region, owner, resource] = fields.as_slice() else {
        return Err(format!("not of the form {shape}"));
    };
    if !PARTITIONS.contains(partition) {
        return Err(format!(
            "partition `{partition}` is not one of {}",
            PARTITIONS.join(", ")
        ));
    }
    if *service != "iam" {
        return Err(format!("service `{service}` is not `iam`"));
    }
    if !region.is_empty() {
        return Err(format!("IAM ARNs have no region, found `{region}`"));
    }
    Ok((owner, resource))
}

fn is_account_id(owner: &str) -> bool {
    owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `[PATH/]NAME` after the resource type: each segment 1 to `max` of IAM's characters.
fn check_path(resource: &str, path: &str, max: usize) -> Result<(), String> {
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(format!("empty path segment or name in `{resource}`"));
        }
        if segment.len() > max {
            return Err(format!("`{segment}` is longer than {max} characters"));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !c.is_ascii() || !is_iam_name_byte(*c as u8))
        {
            return Err(format!(
                "`{segment}` holds `{c}`, which IAM names do not allow (letters, digits and +=,.@_- only)"
            ));
        }
    }
    Ok(())
}

/// An IAM managed-policy ARN: `arn:<partition>:iam::<aws|12 digits>:policy/[PATH/]NAME`, path
/// segments and the name 1 to 128 of IAM's characters (letters, digits, `+=,.@_-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PolicyArn(String);

impl PolicyArn {
    /// Parses a managed-policy ARN.
    ///
    /// # Errors
    /// [`ArnError`] saying which part is wrong.
    pub fn parse(value: &str) -> Result<Self, ArnError> {
        Self::problem(value)
            .map(|()| Self(value.to_owned()))
            .map_err(|problem| ArnError {
                what: "policy",
                value: value.to_owned(),
                problem,
            })
    }

    fn problem(arn: &str) -> Result<(), String> {
        let (owner, resource) = iam_fields(arn, POLICY_ARN_SHAPE)?;
        if owner != "aws" && !is_account_id(owner) {
            return Err(format!(
                "owner `{owner}` is neither `aws` nor a 12-digit account id"
            ));
        }
        let Some(path) = resource.strip_prefix("policy/") else {
            return Err(format!(
                "resource `{resource}` does not start with `policy/`"
            ));
        };
        if path.len() > 512 + 128 {
            return Err("path and name are longer than IAM allows".to_owned());
        }
        check_path(resource, path, 128)
    }

    /// The ARN.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IAM role ARN: `arn:<partition>:iam::<12 digits>:role/[PATH/]NAME`, path segments and the
/// name 1 to 64 of IAM's characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RoleArn(String);

impl RoleArn {
    /// Parses a role ARN.
    ///
    /// # Errors
    /// [`ArnError`] saying which part is wrong.
    pub fn parse(value: &str) -> Result<Self, ArnError> {
        Self::problem(value)
            .map(|()| Self(value.to_owned()))
            .map_err(|problem| ArnError {
                what: "role",
                value: value.to_owned(),
                problem: format!("{problem}; expected {ROLE_ARN_SHAPE}"),
            })
    }

    fn problem(arn: &str) -> Result<(), String> {
        let (owner, resource) = iam_fields(arn, ROLE_ARN_SHAPE)?;
        if !is_account_id(owner) {
            return Err(format!("account `{owner}` is not a 12-digit account id"));
        }
        let Some(path) = resource.strip_prefix("role/") else {
            return Err(format!("resource `{resource}` does not start with `role/`"));
        };
        check_path(resource, path, 64)
    }

    /// The ARN.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_and_deserialize {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

display_and_deserialize!(PolicyArn, RoleArn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_arns_follow_iam_rules() {
        let good = [
            "arn:aws:iam::aws:policy/AdministratorAccess",
            "arn:aws:iam::aws:policy/job-function/Billing",
            "arn:aws:iam::123456789012:policy/team/customer-admin+x=y,z.w@q_1",
            "arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess",
            "arn:aws-cn:iam::123456789012:policy/ReadOnly",
        ];
        for arn in good {
            assert_eq!(
                PolicyArn::parse(arn).map(|a| a.to_string()),
                Ok(arn.to_owned())
            );
        }
        let bad = [
            ("AdministratorAccess", "not of the form"),
            ("arn:aws:iam::aws:policy/Admin Access", "holds ` `"),
            ("arn:aws:iam::aws:policy/", "empty"),
            ("arn:aws:iam::aws:policy//Admin", "empty"),
            ("arn:aws:iam::aws:policy/team/", "empty"),
            (
                "arn:aws:iam::aws:role/Admin",
                "does not start with `policy/`",
            ),
            ("arn:aws:s3::aws:policy/Admin", "service `s3`"),
            ("arn:aws:iam:us-east-1:aws:policy/Admin", "no region"),
            ("arn:aws:iam::12345:policy/Admin", "owner `12345`"),
            ("arn:awz:iam::aws:policy/Admin", "partition `awz`"),
            ("arn:awsx:iam::aws:policy/Admin", "partition `awsx`"),
            ("arn:aws:iam::aws:policy/Ädmin", "holds `Ä`"),
            (
                "arn:aws:iam::123456789012:role/Admin",
                "does not start with `policy/`",
            ),
        ];
        for (arn, why) in bad {
            let problem = PolicyArn::parse(arn).expect_err(arn).to_string();
            assert!(problem.contains(why), "{arn}: {problem}");
            assert!(problem.contains(arn), "{arn}: {problem}");
        }
        let long = format!("arn:aws:iam::aws:policy/{}", "a".repeat(129));
        assert!(PolicyArn::parse(&long).is_err());
        let longest = format!("arn:aws:iam::aws:policy/{}", "a".repeat(128));
        assert!(PolicyArn::parse(&longest).is_ok());
    }

    #[test]
    fn role_arns_follow_iam_rules() {
        let cases = [
            ("arn:aws:iam::111122223333:role/AccountVending", true),
            (
                "arn:aws:iam::111122223333:role/vending/AccountVending",
                true,
            ),
            ("arn:aws-cn:iam::111122223333:role/x", true),
            ("arn:aws:iam::1:role/x", false),
            ("arn:aws:iam::aws:role/x", false),
            ("arn:aws:iam::111122223333:user/x", false),
            ("arn:aws:iam::111122223333:role/bad name", false),
            ("arn:aws:iam::111122223333:role/", false),
            ("arn:aws:sts::111122223333:role/x", false),
            ("arn:aws:iam:eu-west-1:111122223333:role/x", false),
            ("arn:awz:iam::111122223333:role/x", false),
            ("AccountVending", false),
        ];
        for (arn, ok) in cases {
            assert_eq!(RoleArn::parse(arn).is_ok(), ok, "{arn}");
        }
        assert!(
            RoleArn::parse(&format!(
                "arn:aws:iam::111122223333:role/{}",
                "r".repeat(64)
            ))
            .is_ok()
        );
        assert!(
            RoleArn::parse(&format!(
                "arn:aws:iam::111122223333:role/{}",
                "r".repeat(65)
            ))
            .is_err()
        );
        let error = RoleArn::parse("arn:aws:iam::1:role/x")
            .expect_err("short account")
            .to_string();
        assert!(error.contains(ROLE_ARN_SHAPE), "{error}");
    }

    #[test]
    fn arns_deserialize_through_their_parser() {
        let arn: PolicyArn =
            serde_json::from_str("\"arn:aws:iam::aws:policy/ReadOnlyAccess\"").expect("valid");
        assert_eq!(arn.as_str(), "arn:aws:iam::aws:policy/ReadOnlyAccess");
        let error = serde_json::from_str::<RoleArn>("\"AccountVending\"").expect_err("invalid");
        assert!(error.to_string().contains("not an IAM role ARN"), "{error}");
    }
}
