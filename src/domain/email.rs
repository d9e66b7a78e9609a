//! The email of a new AWS account: `AccountEmail` can only hold an address AWS accepts.

use std::fmt;

/// Why an address cannot be an AWS account email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing was given.
    #[error("no email address was given")]
    Missing,
    /// AWS takes 6 to 64 characters.
    #[error("an AWS account email has 6 to 64 characters, this one has {0}")]
    Length(usize),
    /// Not of the shape `local@domain.tld` with the characters AWS allows.
    #[error("`{0}` is not a valid email address")]
    Malformed(String),
}

/// A trimmed, lower-cased email address that satisfies AWS's rules for `CreateAccount`
/// (6 to 64 characters, `[^\s@]+@[^\s@]+\.[^\s@]+`) and ordinary DNS rules for its domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct AccountEmail(String);

impl AccountEmail {
    /// Trims and lower-cases `raw`, then checks it.
    ///
    /// # Errors
    /// [`EmailError`] saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(EmailError::Missing);
        }
        let length = email.chars().count();
        if !(6..=64).contains(&length) {
            return Err(EmailError::Length(length));
        }
        let malformed = || EmailError::Malformed(email.clone());
        let (local, domain) = email.split_once('@').ok_or_else(malformed)?;
        if !is_valid_local_part(local) || !is_valid_domain(domain) {
            return Err(malformed());
        }
        Ok(Self(email))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `@`.
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, domain)| domain)
    }

    /// True when the address is on `domain` or one of its subdomains (case-insensitive).
    pub fn is_on_domain(&self, domain: &str) -> bool {
        let domain = domain.trim().trim_start_matches('@').to_lowercase();
        let own = self.domain();
        !domain.is_empty()
            && (own == domain
                || own
                    .strip_suffix(domain.as_str())
                    .is_some_and(|head| head.ends_with('.')))
    }
}

impl fmt::Display for AccountEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Printable ASCII without whitespace, `@`, quotes or the specials RFC 5322 reserves,
/// and no leading, trailing or doubled dot.
fn is_valid_local_part(local: &str) -> bool {
    const SPECIALS: &[u8] = b"\"(),:;<>[\\]@";
    !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !SPECIALS.contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// At least two dot-separated labels of letters, digits and inner dashes; a final label of
/// at least two letters.
fn is_valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let tld_ok = labels
        .last()
        .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    labels.len() >= 2
        && tld_ok
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_lowercased_and_checked() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("  Jane.Doe@Example.COM ", Ok("jane.doe@example.com")),
            ("a+tag@sub.example.org", Ok("a+tag@sub.example.org")),
            ("o'brien@example.ie", Ok("o'brien@example.ie")),
            ("x@y.io", Ok("x@y.io")),
            ("", Err(())),
            ("   ", Err(())),
            ("a@b.c", Err(())),
            ("no-at-sign.example.com", Err(())),
            ("two@@example.com", Err(())),
            ("a@b@example.com", Err(())),
            ("space in@example.com", Err(())),
            ("jane@example", Err(())),
            ("jane@.example.com", Err(())),
            ("jane@example..com", Err(())),
            ("jane@-example.com", Err(())),
            ("jane@example.c0m", Err(())),
            (".jane@example.com", Err(())),
            ("ja..ne@example.com", Err(())),
            ("jane\"@example.com", Err(())),
            ("jané@example.com", Err(())),
            ("jane@exämple.com", Err(())),
        ];
        for (raw, expected) in cases {
            let got = AccountEmail::parse(raw);
            match expected {
                Ok(email) => assert_eq!(
                    got.as_ref().map(AccountEmail::as_str),
                    Ok(*email),
                    "{raw:?}"
                ),
                Err(()) => assert!(got.is_err(), "{raw:?} should be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn aws_length_limits_apply() {
        let long = format!("{}@example.com", "a".repeat(53));
        assert_eq!(long.len(), 65);
        assert_eq!(AccountEmail::parse(&long), Err(EmailError::Length(65)));
        let fits = format!("{}@example.com", "a".repeat(52));
        assert!(AccountEmail::parse(&fits).is_ok());
        assert_eq!(AccountEmail::parse(""), Err(EmailError::Missing));
    }

    #[test]
    fn domain_membership_includes_subdomains_only() {
        let email = AccountEmail::parse("ops@aws.provider.com").expect("valid");
        assert!(email.is_on_domain("provider.com"));
        assert!(email.is_on_domain("AWS.Provider.com"));
        assert!(email.is_on_domain("@provider.com"));
        assert!(!email.is_on_domain("der.com"));
        assert!(!email.is_on_domain("other.com"));
        assert!(!email.is_on_domain(""));
        let lookalike = AccountEmail::parse("ops@notprovider.com").expect("valid");
        assert!(!lookalike.is_on_domain("provider.com"));
    }
}
