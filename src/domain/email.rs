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

/// A trimmed, lower-cased email address that AWS accepts as the email of a new account.
///
/// AWS Organizations documents these rules for `CreateAccount`'s `Email` (length 6 to 64,
/// pattern `[^\s@]*@[^\s@]*\.[^\s@]*`): 7-bit ASCII; exactly one `@`; a local part without
/// whitespace or any of [`REFUSED_IN_LOCAL_PART`], not beginning with a dot; a domain of
/// letters, digits, hyphens and dots, not beginning or ending with a hyphen or dot, with at
/// least one dot. On top of them the worker asks what mail needs anyway: no empty or doubled
/// dot in the local part, DNS labels of at most 63 characters not beginning or ending with a
/// hyphen, and a final label of at least two letters.
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

/// The characters AWS refuses in the local part of an account email (besides whitespace).
pub const REFUSED_IN_LOCAL_PART: &str = "\"'()<>[]:;,\\|%&@";

/// Printable ASCII without whitespace or [`REFUSED_IN_LOCAL_PART`], and no leading, trailing
/// or doubled dot.
fn is_valid_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !REFUSED_IN_LOCAL_PART.as_bytes().contains(&b))
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
            ("o'brien@example.ie", Err(())),
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

    /// AWS's documented pattern for `CreateAccount`'s `Email`: `[^\s@]*@[^\s@]*\.[^\s@]*`.
    fn matches_aws_pattern(email: &str) -> bool {
        let plain = |s: &str| !s.chars().any(|c| c.is_whitespace() || c == '@');
        email
            .split_once('@')
            .is_some_and(|(local, domain)| plain(local) && domain.contains('.') && plain(domain))
    }

    #[test]
    fn the_table_of_aws_create_account_email_rules() {
        let refused_chars = [
            '"', '\'', '(', ')', '<', '>', '[', ']', ':', ';', ',', '\\', '|', '%', '&',
        ];
        for c in refused_chars {
            assert!(REFUSED_IN_LOCAL_PART.contains(c), "{c:?} is in the list");
            let raw = format!("jane{c}doe@example.com");
            assert!(
                matches!(AccountEmail::parse(&raw), Err(EmailError::Malformed(_))),
                "{raw:?}: AWS refuses {c:?} in the local part"
            );
        }
        // (address, accepted): AWS's pattern and lengths, and what it refuses besides.
        let cases: &[(&str, bool)] = &[
            ("a@b.co", true),                                    // 6 characters: the shortest
            ("a@b.c", false),                                    // 5
            (&format!("{}@example.com", "a".repeat(52)), true),  // 64: the longest
            (&format!("{}@example.com", "a".repeat(53)), false), // 65
            ("jane@example", false),                             // the domain needs a dot
            ("jane@@example.com", false),                        // one @ only
            ("jane@exa mple.com", false),                        // whitespace
            ("jane\tdoe@example.com", false),
            (".jane@example.com", false), // no leading dot
            ("jane@-example.com", false), // no leading hyphen in the domain
            ("jane@example.com-", false), // nor trailing
            ("jane@.example.com", false), // nor leading dot
            ("jane@example.com.", false), // nor trailing
            ("jane@exa_mple.com", false), // letters, digits, - and . only
            ("jané@example.com", false),  // 7-bit ASCII
            ("jane+aws@example.com", true),
            ("jane.doe-1_x=y!#$*/?^`{}~@sub.example-1.org", true),
        ];
        for (raw, accepted) in cases {
            let got = AccountEmail::parse(raw);
            assert_eq!(got.is_ok(), *accepted, "{raw:?}: {got:?}");
            if let Ok(email) = got {
                assert!(matches_aws_pattern(email.as_str()), "{raw:?}");
                assert!((6..=64).contains(&email.as_str().len()), "{raw:?}");
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
