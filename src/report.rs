//! Result events (docs/contract.md §5): `aws.account.provisioned`, `aws.account.failed` and
//! `aws.account.dead-lettered`, as JSON bodies ready to publish.

use chrono::{SecondsFormat, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::domain::model::{AccountModel, Plan};
use crate::domain::order::PartialIds;
use crate::domain::outcome::Rejection;
use crate::domain::progress::{Granted, Provisioned};
use crate::retry::Reason;

/// Routing key and event name of a provisioned account.
pub const PROVISIONED: &str = "aws.account.provisioned";
/// Routing key and event name of an order that gets no account.
pub const FAILED: &str = "aws.account.failed";
/// Routing key and event name of a dead-lettered order.
pub const DEAD_LETTERED: &str = "aws.account.dead-lettered";

/// A result event, typed until it is published: [`Event::body`] renders its JSON then. The
/// provisioned event holds the customer's initial password: it is published and never logged,
/// and `Debug` shows the event's name only.
pub enum Event {
    /// `aws.account.provisioned`.
    Provisioned(Box<ProvisionedEvent>),
    /// `aws.account.failed`.
    Failed {
        /// The order's identifying fields.
        ids: PartialIds,
        /// The payer, when resolution got that far.
        payer: Option<String>,
        /// Why the order gets no account.
        rejection: Rejection,
    },
    /// `aws.account.dead-lettered`.
    DeadLettered {
        /// The order's identifying fields, as far as they are known.
        ids: PartialIds,
        /// The failure-reason code.
        reason: Reason,
        /// A readable explanation.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// What `aws.account.provisioned` reports.
pub struct ProvisionedEvent {
    /// The order's identifying fields.
    pub ids: PartialIds,
    /// What was provisioned.
    pub plan: Plan,
    /// The account and the customer's access.
    pub done: Provisioned,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl Event {
    /// The event's name, also its routing key.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Provisioned(_) => PROVISIONED,
            Self::Failed { .. } => FAILED,
            Self::DeadLettered { .. } => DEAD_LETTERED,
        }
    }

    /// The `failure.code` of a failed event.
    pub fn failure_code(&self) -> Option<&str> {
        match self {
            Self::Failed { rejection, .. } => Some(rejection.code.as_str()),
            _ => None,
        }
    }

    /// The JSON body, with a new event id and the time of this call.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Self::Provisioned(event) => provisioned_body(&event.ids, &event.plan, &event.done),
            Self::Failed {
                ids,
                payer,
                rejection,
            } => failed_body(ids, payer.as_deref(), rejection),
            Self::DeadLettered {
                ids,
                reason,
                message,
                attempts,
            } => {
                let body =
                    json!({"reason": reason.as_str(), "message": message, "attempts": attempts});
                finish(envelope(DEAD_LETTERED, ids), body)
            }
        }
    }
}

/// The fields every event starts with.
fn envelope(name: &'static str, ids: &PartialIds) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("event".into(), json!(name));
    fields.insert("event_id".into(), json!(uuid::Uuid::new_v4().to_string()));
    fields.insert(
        "occurred_at".into(),
        json!(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    fields.insert("request_id".into(), json!(ids.request_id));
    fields.insert("asset_id".into(), json!(ids.asset_id));
    fields.insert("marketplace_id".into(), json!(ids.marketplace_id));
    fields.insert("tier1_id".into(), json!(ids.tier1_id));
    fields
}

/// `fields` followed by the event's own `rest`, as the JSON body.
fn finish(mut fields: Map<String, Value>, rest: Value) -> Vec<u8> {
    if let Value::Object(rest) = rest {
        fields.extend(rest);
    }
    Value::Object(fields).to_string().into_bytes()
}

/// `aws.account.provisioned` for `plan`, done as `done`.
pub fn provisioned(ids: &PartialIds, plan: &Plan, done: Provisioned) -> Event {
    Event::Provisioned(Box::new(ProvisionedEvent {
        ids: ids.clone(),
        plan: plan.clone(),
        done,
    }))
}

/// `aws.account.failed`; `business_model` and `payer` are null when resolution did not get
/// that far.
pub fn failed(ids: &PartialIds, payer: Option<&str>, rejection: &Rejection) -> Event {
    Event::Failed {
        ids: ids.clone(),
        payer: payer.map(str::to_owned),
        rejection: rejection.clone(),
    }
}

/// `aws.account.dead-lettered`.
pub fn dead_lettered(ids: &PartialIds, reason: &Reason, message: &str, attempts: u32) -> Event {
    Event::DeadLettered {
        ids: ids.clone(),
        reason: reason.clone(),
        message: message.to_owned(),
        attempts,
    }
}

/// The body of `aws.account.provisioned`, with the subscription template's parameters.
fn provisioned_body(ids: &PartialIds, plan: &Plan, done: &Provisioned) -> Vec<u8> {
    let console_url = format!("https://{}.signin.aws.amazon.com/console", done.account_id);
    let (template_name, access, params) = match &done.access {
        Granted::IamUser {
            user_name,
            password,
        } => (
            "iam_user",
            json!({
                "kind": "iam_user",
                "iam_user_name": user_name,
                "console_url": console_url,
                "initial_password": password.expose_secret(),
                "password_reset_required": true,
            }),
            json!({
                "aws_account_id": done.account_id,
                "aws_account_email": plan.email,
                "iam_user_name": user_name,
                "iam_console_url": console_url,
                "iam_initial_password": password.expose_secret(),
            }),
        ),
        Granted::RootUser => (
            "root_user",
            json!({"kind": "root_user", "root_email": plan.email, "console_url": console_url}),
            json!({"aws_account_id": done.account_id, "aws_account_email": plan.email}),
        ),
    };
    let body = json!({
        "business_model": plan.model.as_str(),
        "payer": plan.payer,
        "account": {
            "id": done.account_id,
            "email": plan.email,
            "name": plan.account_name,
            "create_request_id": done.create_request_id,
        },
        "access": access,
        "service_control_policies": done.service_control_policies,
        "template": {"name": template_name, "id": plan.template_id, "params": params},
    });
    finish(envelope(PROVISIONED, ids), body)
}

/// The body of `aws.account.failed`.
fn failed_body(ids: &PartialIds, payer: Option<&str>, rejection: &Rejection) -> Vec<u8> {
    let (action, param_id) = rejection.action();
    let body = json!({
        "business_model": rejection.model.map(AccountModel::as_str),
        "payer": payer,
        "failure": {
            "code": rejection.code.as_str(),
            "message": rejection.message,
            "action": action,
            "param_id": param_id,
        },
    });
    finish(envelope(FAILED, ids), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::outcome::FailureCode;

    fn ids() -> PartialIds {
        PartialIds {
            request_id: Some("PR-1".into()),
            asset_id: Some("AS-1".into()),
            marketplace_id: Some("MP-1".into()),
            tier1_id: None,
        }
    }

    fn parse(event: &Event) -> Value {
        serde_json::from_slice(&event.body()).expect("event is JSON")
    }

    #[test]
    fn failed_events_carry_action_and_param() {
        let rejection = Rejection::new(FailureCode::EmailAlreadyExists, "taken");
        let ecam = parse(&failed(
            &ids(),
            Some("default"),
            &rejection.clone().under(AccountModel::Ecam),
        ));
        assert_eq!(ecam["event"], "aws.account.failed");
        assert_eq!(ecam["failure"]["code"], "EMAIL_ALREADY_EXISTS");
        assert_eq!(ecam["failure"]["action"], "inquire");
        assert_eq!(ecam["failure"]["param_id"], "aws_account_email");
        assert_eq!(ecam["tier1_id"], Value::Null);
        let unknown = parse(&failed(&ids(), None, &rejection));
        assert_eq!(unknown["failure"]["action"], "fail");
        assert_eq!(unknown["business_model"], Value::Null);
    }

    #[test]
    fn events_have_unique_ids_and_rfc3339_times() {
        let a = parse(&dead_lettered(&ids(), &Reason::NotJson, "x", 1));
        let b = parse(&dead_lettered(
            &PartialIds::default(),
            &Reason::NotJson,
            "x",
            1,
        ));
        assert_ne!(a["event_id"], b["event_id"]);
        let at = a["occurred_at"].as_str().expect("string");
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert_eq!(b["request_id"], Value::Null);
        assert_eq!(a["attempts"], 1);
    }

    #[test]
    fn debug_never_shows_the_body() {
        let event = dead_lettered(&ids(), &Reason::NotJson, "secret-password", 1);
        assert!(!format!("{event:?}").contains("secret"));
    }
}
