//! Result events (docs/contract.md §5): `aws.account.provisioned`, `aws.account.failed` and
//! `aws.account.dead-lettered`, as JSON bodies ready to publish.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use chrono::{SecondsFormat, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::domain::model::{AccountModel, Plan};
use crate::domain::order::PartialIds;
use crate::domain::outcome::Rejection;
use crate::domain::progress::{Granted, Progress, Provisioned};
use crate::retry::Reason;

/// Routing key and event name of a provisioned account.
pub const PROVISIONED: &str = "aws.account.provisioned";
/// Routing key and event name of an order that gets no account.
pub const FAILED: &str = "aws.account.failed";
/// Routing key and event name of a dead-lettered order.
pub const DEAD_LETTERED: &str = "aws.account.dead-lettered";
/// An existing account was invited into the organization (docs/contract.md §10).
pub const INVITED: &str = "aws.account.invited";
/// A suspended account (the deny-all SCP attached).
pub const SUSPENDED: &str = "aws.account.suspended";
/// A resumed account (the deny-all SCP detached).
pub const RESUMED: &str = "aws.account.resumed";
/// A cancel that closed the account.
pub const CLOSED: &str = "aws.account.closed";
/// A cancel that removed the account from the organization.
pub const REMOVED: &str = "aws.account.removed";
/// A cancel with nothing done in AWS (`cancel_action = none`).
pub const CANCELLED: &str = "aws.account.cancelled";
/// A change confirmed (nothing changes in AWS).
pub const CHANGED: &str = "aws.account.changed";

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
    /// An event of a request after the purchase (or of an existing account brought in):
    /// `invited`, `suspended`, `resumed`, `closed`, `removed`, `cancelled`, `changed`, and the
    /// `provisioned` of an existing account.
    Later(Box<LaterEvent>),
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

/// What an event of a later request reports: the envelope, `business_model`, `payer`,
/// `account` {`id`}, then its own `fields` (which may replace `account`).
#[derive(Debug, Clone)]
pub struct LaterEvent {
    /// The event's name and routing key (one of [`INVITED`], [`SUSPENDED`], …, or
    /// [`PROVISIONED`] for an existing account).
    pub name: &'static str,
    /// The request's identifying fields.
    pub ids: PartialIds,
    /// The payer whose organization holds the account.
    pub payer: String,
    /// The business model, when resolved.
    pub model: Option<AccountModel>,
    /// The account acted on.
    pub account_id: String,
    /// The event's own fields.
    pub fields: Map<String, Value>,
    /// What was done, for a delivery whose settling fails to carry on (so that a retry knows
    /// that, for example, the account was removed).
    pub progress: Progress,
}

/// What `aws.account.provisioned` reports.
pub struct ProvisionedEvent {
    /// The event's `event_id`, fixed when the event is made, so that what runs after its
    /// confirm can name it.
    pub event_id: String,
    /// The order's identifying fields.
    pub ids: PartialIds,
    /// What was provisioned.
    pub plan: Plan,
    /// The account and the customer's access.
    pub done: Provisioned,
    /// What to do once the broker confirmed the event, before the order is acknowledged.
    pub after_confirm: Option<AfterConfirm>,
}

/// A step to run once an event's publish is confirmed and before the order's ack (for a new
/// IAM password: mark the user as having had it given out). Built by the pipeline, run by the
/// broker side; it does nothing until run. Its failure is logged and counted, and the ack
/// still happens.
pub struct AfterConfirm {
    /// What the step does, for logs and the metric's label (e.g. `mark_credentials_issued`).
    pub step: &'static str,
    /// In a mutex only so that an event holding it can be shared between threads; never
    /// locked, only taken out.
    run: Mutex<Step>,
}

/// The future an [`AfterConfirm`] runs.
type Step = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

impl AfterConfirm {
    /// The step `step`, carried out by `run` (a future: nothing happens until it is run).
    pub fn new(
        step: &'static str,
        run: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        Self {
            step,
            run: Mutex::new(Box::pin(run)),
        }
    }

    /// Runs the step.
    ///
    /// # Errors
    /// What went wrong, as text.
    pub async fn run(self) -> Result<(), String> {
        self.run
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .await
    }
}

impl std::fmt::Debug for AfterConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterConfirm")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
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
            Self::Later(event) => event.name,
            Self::Failed { .. } => FAILED,
            Self::DeadLettered { .. } => DEAD_LETTERED,
        }
    }

    /// The `event_id` of a provisioned event (fixed when it was made); other events get theirs
    /// when their body is made.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Self::Provisioned(event) => Some(&event.event_id),
            _ => None,
        }
    }

    /// Sets what to do once this provisioned event is confirmed (other events take none).
    #[must_use]
    pub fn with_after_confirm(mut self, step: AfterConfirm) -> Self {
        if let Self::Provisioned(event) = &mut self {
            event.after_confirm = Some(step);
        }
        self
    }

    /// Takes what to do once this event is confirmed, if anything.
    pub fn take_after_confirm(&mut self) -> Option<AfterConfirm> {
        match self {
            Self::Provisioned(event) => event.after_confirm.take(),
            _ => None,
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
            Self::Provisioned(event) => provisioned_body(event),
            Self::Failed {
                ids,
                payer,
                rejection,
            } => failed_body(ids, payer.as_deref(), rejection),
            Self::Later(event) => {
                let mut body = Map::new();
                body.insert(
                    "business_model".into(),
                    json!(event.model.map(AccountModel::as_str)),
                );
                body.insert("payer".into(), json!(event.payer));
                body.insert("account".into(), json!({"id": event.account_id}));
                body.extend(event.fields.clone());
                finish(envelope(event.name, &event.ids), Value::Object(body))
            }
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

/// The fields every event starts with, with a new event id.
fn envelope(name: &'static str, ids: &PartialIds) -> Map<String, Value> {
    envelope_with_id(name, &new_event_id(), ids)
}

fn new_event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The fields every event starts with.
fn envelope_with_id(name: &'static str, event_id: &str, ids: &PartialIds) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("event".into(), json!(name));
    fields.insert("event_id".into(), json!(event_id));
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
        event_id: new_event_id(),
        ids: ids.clone(),
        plan: plan.clone(),
        done,
        after_confirm: None,
    }))
}

/// The event `name` of a later request on `account_id`, with its own `fields`.
pub fn later(
    name: &'static str,
    ids: &PartialIds,
    plan: &crate::domain::model::LaterPlan,
    account_id: &str,
    fields: Map<String, Value>,
) -> Event {
    Event::Later(Box::new(LaterEvent {
        name,
        ids: ids.clone(),
        payer: plan.payer.clone(),
        model: plan.model,
        account_id: account_id.to_owned(),
        fields,
        progress: Progress::default(),
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

/// `access.credentials` of an IAM user whose new password the event carries.
pub const CREDENTIALS_ISSUED: &str = "issued";
/// `access.credentials` of an IAM user whose password an earlier event gave out.
pub const CREDENTIALS_ALREADY_ISSUED: &str = "already_issued";

/// `access` and the template's params of an IAM user: with `password` when the event gives it
/// out, else `initial_password: null` and no `iam_initial_password`.
fn iam_user_access(
    user_name: &crate::domain::names::IamUserName,
    password: Option<&str>,
    console_url: &str,
    done: &Provisioned,
    plan: &Plan,
) -> (Value, Value) {
    let credentials = match password {
        Some(_) => CREDENTIALS_ISSUED,
        None => CREDENTIALS_ALREADY_ISSUED,
    };
    let access = json!({
        "kind": "iam_user",
        "iam_user_name": user_name,
        "console_url": console_url,
        "initial_password": password,
        "password_reset_required": true,
        "credentials": credentials,
    });
    let mut params = json!({
        "aws_account_id": done.account_id,
        "aws_account_email": plan.email,
        "iam_user_name": user_name,
        "iam_console_url": console_url,
    });
    if let (Some(password), Some(params)) = (password, params.as_object_mut()) {
        params.insert("iam_initial_password".into(), json!(password));
    }
    (access, params)
}

/// The body of `aws.account.provisioned`, with the subscription template's parameters.
fn provisioned_body(event: &ProvisionedEvent) -> Vec<u8> {
    let ProvisionedEvent {
        event_id,
        ids,
        plan,
        done,
        ..
    } = event;
    let console_url = format!("https://{}.signin.aws.amazon.com/console", done.account_id);
    let (template_name, access, params) = match &done.access {
        Granted::IamUser {
            user_name,
            password,
        } => {
            let password = Some(password.expose_secret());
            let (access, params) = iam_user_access(user_name, password, &console_url, done, plan);
            ("iam_user", access, params)
        }
        Granted::AlreadyIssued { user_name } => {
            let (access, params) = iam_user_access(user_name, None, &console_url, done, plan);
            ("iam_user", access, params)
        }
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
    finish(envelope_with_id(PROVISIONED, event_id, ids), body)
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

    /// An ECAM plan with no SCP.
    fn plan() -> Plan {
        use crate::domain::email::AccountEmail;
        use crate::domain::model::Access;
        use crate::domain::names::AccountName;
        Plan {
            model: AccountModel::Ecam,
            email: AccountEmail::parse("c@customer.example").expect("email"),
            provider_email_domain: "provider.example".into(),
            account_name: AccountName::derive(Some("C"), "AS-1", None, "C"),
            access: Access::RootUser,
            service_control_policies: Vec::new(),
            payer: "default".into(),
            organizational_unit_id: None,
            template_id: None,
            connection: crate::domain::order::ConnectionType::Production,
            origins: std::collections::BTreeMap::new(),
        }
    }

    fn provisioned_with(access: Granted) -> Event {
        let done = Provisioned {
            account_id: "111122223333".into(),
            create_request_id: Some("car-1".into()),
            service_control_policies: Vec::new(),
            access,
        };
        provisioned(&ids(), &plan(), done)
    }

    #[test]
    fn a_password_is_given_out_once_then_reported_as_already_issued() {
        let user_name = crate::domain::names::IamUserName::parse("admin").expect("name");
        let first = provisioned_with(Granted::IamUser {
            user_name: user_name.clone(),
            password: "s3cret-Passw0rd!".to_owned().into(),
        });
        let body = parse(&first);
        assert_eq!(body["access"]["credentials"], "issued");
        assert_eq!(body["access"]["initial_password"], "s3cret-Passw0rd!");
        assert_eq!(
            body["template"]["params"]["iam_initial_password"],
            "s3cret-Passw0rd!"
        );
        // The event id is the event's, whatever the number of renderings.
        assert_eq!(body["event_id"].as_str(), first.event_id());
        assert_eq!(parse(&first)["event_id"], body["event_id"]);

        let again = parse(&provisioned_with(Granted::AlreadyIssued { user_name }));
        assert_eq!(again["access"]["kind"], "iam_user");
        assert_eq!(again["access"]["iam_user_name"], "admin");
        assert_eq!(again["access"]["credentials"], "already_issued");
        assert_eq!(again["access"]["initial_password"], Value::Null);
        assert_eq!(again["template"]["name"], "iam_user");
        assert_eq!(again["template"]["params"]["iam_user_name"], "admin");
        assert!(
            again["template"]["params"]
                .get("iam_initial_password")
                .is_none(),
            "{again}"
        );
        assert_ne!(again["event_id"], body["event_id"]);
    }

    #[tokio::test]
    async fn the_step_after_the_confirm_is_taken_once_and_only_from_a_provisioned_event() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&ran);
        let step = AfterConfirm::new("test", async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let mut event = provisioned_with(Granted::RootUser).with_after_confirm(step);
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "nothing runs before run()"
        );
        let taken = event.take_after_confirm().expect("a step");
        assert!(event.take_after_confirm().is_none());
        taken.run().await.expect("ran");
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));

        let step = AfterConfirm::new("test", async { Ok(()) });
        let mut failed = dead_lettered(&ids(), &Reason::NotJson, "x", 1).with_after_confirm(step);
        assert!(failed.take_after_confirm().is_none());
    }

    #[test]
    fn debug_never_shows_the_body() {
        let event = dead_lettered(&ids(), &Reason::NotJson, "secret-password", 1);
        assert!(!format!("{event:?}").contains("secret"));
    }
}
