//! The email rules of the business model: the SPAM email rendered from its template onto the
//! provider's domain, and the ECAM email, the customer's own, never on the provider's domain.
//! (What makes an address acceptable to AWS at all is [`AccountEmail`]'s.)

use crate::domain::email::{AccountEmail, EmailError};
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};

/// The placeholders a `spam_email_template` may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 6] = [
    "asset_id",
    "request_id",
    "customer_id",
    "customer_external_id",
    "marketplace_id",
    "provider_email_domain",
];

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

/// Whether `template` renders, for a sample order, an address on `domain` (start-up
/// validation of the layers that apply together).
///
/// # Errors
/// What is wrong with the rendered address, or with the template.
pub fn check_spam_template(template: &str, domain: &str) -> Result<(), String> {
    let sample = |name: &str| match name {
        "provider_email_domain" => Some(domain),
        _ => Some("AS-1000-2000-3000"),
    };
    let rendered = render_template(template, &sample)?;
    match AccountEmail::parse(&rendered) {
        Ok(email) if email.is_on_domain(domain) => Ok(()),
        Ok(email) => Err(format!(
            "renders `{email}`, which is not on the provider domain `{domain}`"
        )),
        Err(e) => Err(format!("renders `{rendered}`: {e}")),
    }
}

fn invalid_configuration(message: String) -> Rejection {
    Rejection::new(FailureCode::InvalidConfiguration, message)
}

/// The SPAM email of `order`: `template` rendered, on the provider's `domain`.
///
/// # Errors
/// `INVALID_CONFIGURATION` when the rendered address is unusable or off the domain.
pub fn spam_email(
    order: &PurchaseRequest,
    template: &str,
    domain: &str,
) -> Result<AccountEmail, Rejection> {
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
    let rendered = render_template(template, &value).map_err(invalid_configuration)?;
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
    Ok(email)
}

/// The ECAM email of `order`: the customer's own `aws_account_email`, off the provider's domain.
///
/// # Errors
/// `INVALID_EMAIL` when it is missing, malformed, or on the provider's domain.
pub fn ecam_email(
    order: &PurchaseRequest,
    provider_domain: &str,
) -> Result<AccountEmail, Rejection> {
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
    fn spam_templates_must_render_onto_the_provider_domain() {
        let cases = [
            (
                "aws+{asset_id}@{provider_email_domain}",
                "provider.com",
                true,
            ),
            ("aws+{asset_id}@mail.provider.com", "provider.com", true),
            ("{customer_id}@other.com", "provider.com", false),
            ("no-at-sign", "provider.com", false),
            ("{unknown}@provider.com", "provider.com", false),
        ];
        for (template, domain, ok) in cases {
            assert_eq!(
                check_spam_template(template, domain).is_ok(),
                ok,
                "{template}"
            );
        }
    }
}
