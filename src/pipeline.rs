//! The order's trip inside the worker: parse → resolve → lock → provision → report.
//! [`Pipeline::process_one`] takes one order body to an [`Outcome`]; `settle` then decides what
//! becomes of the message (ack, retry or dead-letter) and the broker side carries that out.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::aws::{AccountId, Organizations, Retry};
use crate::config::Settings;
use crate::domain::bounded::capped;
use crate::domain::model::{LaterPlan, Plan, Rules, is_later};
use crate::domain::order::{self, MalformedOrder, PartialIds, PurchaseRequest};
use crate::domain::outcome::Rejection;
use crate::domain::progress::{Granted, Progress, Provisioned};
use crate::lifecycle;
use crate::locks::{Lock, LocksUnavailable, OrderLocks};
use crate::observability::Metrics;
use crate::provision::{
    EMAIL_LOOKS, Polling, ProvisionError, Waiting, mark_credentials_issued, provision,
};
use crate::report::{self, AfterConfirm, Event};
use crate::retry::{Reason, Waits};
use crate::slots::{CreationSlots, Kept, NoSlot, Slot};

/// What to do with a delivery once the pipeline is done with it.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this event (`provisioned` or `failed`), then acknowledge the order.
    Report(Event),
    /// A transient failure: try again later, resuming from the failure's progress.
    Retry(Failure),
    /// Nothing failed, but the order cannot go on yet (another delivery of its asset is being
    /// processed, an earlier delivery's `CreateAccount` may be in flight, its creation is still
    /// in progress at AWS, an email in use whose account is not visible yet, or no creation
    /// slot came free): try again after the wait, without counting an attempt.
    Later(Failure, Duration),
    /// Publish this event (an existing account's `aws.account.invited`), then wait as
    /// [`Outcome::Later`]: the order follows what it started without holding a delivery.
    Announce(Event, Failure, Duration),
    /// Not processable: dead-letter at once (a malformed message, or a permanent AWS error).
    DeadLetter(Failure),
    /// The trip could not be carried out here (the order locks could not be asked for, the
    /// pipeline panicked): hand the delivery back to the broker as it is.
    HandBack(String),
}

/// Why an order was not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The code for `x-failure-reason`.
    pub reason: Reason,
    /// A readable explanation for `x-failure-message`.
    pub message: String,
    /// The order's identifying fields, as far as they are known.
    pub ids: PartialIds,
    /// What the attempt achieved; it travels with the message, so that a retry or a replay
    /// resumes instead of creating a second account.
    pub progress: Progress,
}

/// One order taken through the pipeline.
#[derive(Debug)]
pub struct Processed {
    /// What to do with the delivery.
    pub outcome: Outcome,
    /// The order's lock, when it was taken: held until the outcome is settled, so that the
    /// next delivery of the same order finds the account and the event already out.
    pub lock: Option<Lock>,
    /// The order's span (`request_id`, `asset_id`, `marketplace_id`) once it was parsed, for
    /// settling to log in.
    pub span: Span,
}

impl Processed {
    fn unlocked(outcome: Outcome, span: Span) -> Self {
        Self {
            outcome,
            lock: None,
            span,
        }
    }
}

/// What taking an order's lock gave: the lock, `None` when another delivery holds it, or an
/// error when the locks could not be asked.
type Taken = Result<Option<Lock>, LocksUnavailable>;

/// Where a new order's wait for its slot ([`Pipeline::slot_first`]) left it.
enum SlotFirst {
    /// Its slot and its lock.
    Ready(Slot, Lock),
    /// No slot (no room to wait, or none in time): the order goes back, giving back the lock
    /// it took while it waited, if it did.
    NoSlot(NoSlot, Option<Lock>),
    /// Its lock, taken while it waited, was held by another delivery or could not be asked
    /// for: the order gave up its place.
    NotLocked(Taken),
}

impl SlotFirst {
    /// The wait's end from the slot (or why none) and the lock: a lock refused decides
    /// whatever the slot.
    fn of(slot: Result<Slot, NoSlot>, taken: Taken) -> Self {
        match (slot, taken) {
            (_, refused @ (Ok(None) | Err(_))) => Self::NotLocked(refused),
            (Ok(slot), Ok(Some(lock))) => Self::Ready(slot, lock),
            (Err(why), Ok(Some(lock))) => Self::NoSlot(why, Some(lock)),
        }
    }
}

/// The pipeline: AWS plus the settings that resolution and provisioning need.
pub struct Pipeline<O> {
    /// Each payer's management account, by `[payers.NAME]` name; an order goes to its
    /// `plan.payer`'s, for every call (the gate included).
    payers: BTreeMap<String, Arc<O>>,
    rules: Rules,
    polling: Polling,
    /// How long an order that cannot go on yet waits.
    waits: Waits,
    /// Where provisioning counts the hints it ignored.
    metrics: Metrics,
}

impl<O: Organizations> Pipeline<O> {
    /// A pipeline over `payers` (one per `[payers.NAME]` entry, by name) with the
    /// business-model and polling settings of `settings`, counting in `metrics`.
    pub fn new(payers: BTreeMap<String, O>, settings: &Settings, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            payers: payers
                .into_iter()
                .map(|(name, aws)| (name, Arc::new(aws)))
                .collect(),
            rules: settings.rules(),
            polling: Polling {
                interval: Duration::from_millis(settings.aws.create_status_poll_ms),
                patience: Duration::from_secs(settings.aws.create_status_wait_seconds),
                member_ready: Duration::from_secs(settings.aws.member_account_ready_seconds),
            },
            waits: Waits::of(&settings.retry),
            metrics: metrics.clone(),
        })
    }

    /// Takes one order body through the trip, resuming from `progress`: parse and resolve,
    /// take the order's lock from `locks` (one delivery at a time per asset, whichever
    /// worker holds it), provision (a `CreateAccount` in one of `slots`), and report. The lock
    /// comes back with the outcome, to be released once that is settled.
    pub async fn process_one(
        &self,
        body: &[u8],
        progress: Progress,
        locks: &impl OrderLocks,
        slots: &impl CreationSlots,
    ) -> Processed {
        let order = match self.resolve(body) {
            Ok(order) => order,
            Err(ended) => {
                let (outcome, span) = *ended;
                return Processed::unlocked(outcome, span);
            }
        };
        let span = order.span.clone();
        if let Trip::New(plan) = &order.trip
            && progress.is_fresh()
            && !progress.lock_was_busy
            && self.payers.contains_key(&plan.payer)
        {
            let waited = Box::pin(self.slot_first(&order, plan, locks, slots))
                .instrument(span.clone())
                .await;
            let (outcome, lock) = match waited {
                SlotFirst::Ready(slot, lock) => {
                    let slots = Kept::new(slots, Some(slot));
                    let trip = self.with_lock(&order, progress, Ok(Some(lock)), &slots);
                    trip.instrument(span.clone()).await
                }
                SlotFirst::NoSlot(why, lock) => {
                    (span.in_scope(|| self.no_slot(&order, plan, &why)), lock)
                }
                SlotFirst::NotLocked(taken) => {
                    let refused = self.with_lock(&order, progress, taken, slots);
                    refused.instrument(span.clone()).await
                }
            };
            return Processed {
                outcome,
                lock,
                span,
            };
        }
        let slots = Kept::new(slots, None);
        let (outcome, lock) = self
            .lock_and_provision(&order, progress, locks, &slots)
            .instrument(span.clone())
            .await;
        Processed {
            outcome,
            lock,
            span,
        }
    }

    /// The creation slot of a new order (no account, creation or earlier `CreateAccount` to
    /// look for), waited for before its lock: the wait holds no lock (a thousand orders waiting
    /// would hold a thousand broker queues, and shut out their assets' other deliveries). Once
    /// the slots say it is one of the next to be served, it takes its lock while it still
    /// waits, so that a slot handed to it does not stand idle while the lock is declared; a
    /// lock held by another delivery gives up its place. Nothing is asked of AWS before the
    /// lock: the gate runs under it, slot in hand. With no room to wait, or no slot in time,
    /// the order goes back having called nothing.
    async fn slot_first(
        &self,
        order: &Resolved,
        plan: &Plan,
        locks: &impl OrderLocks,
        slots: &impl CreationSlots,
    ) -> SlotFirst {
        let room = match slots.room_to_wait(&plan.payer) {
            Ok(room) => room,
            Err(why) => return SlotFirst::NoSlot(why, None),
        };
        let (tell, next) = oneshot::channel();
        let mut waiting = pin!(slots.acquire_in(&plan.payer, room.telling_next(tell)));
        let key = order.lock_key();
        tokio::select! {
            biased;
            slot = &mut waiting => {
                return match slot {
                    Ok(slot) => SlotFirst::of(Ok(slot), Box::pin(locks.try_take(&key)).await),
                    Err(why) => SlotFirst::NoSlot(why, None),
                };
            }
            // Told, or dropped untold: either way the lock comes next.
            _ = next => {}
        }
        let mut taking = pin!(locks.try_take(&key));
        tokio::select! {
            slot = &mut waiting => SlotFirst::of(slot, taking.await),
            taken = &mut taking => match taken {
                Ok(Some(lock)) => SlotFirst::of(waiting.await, Ok(Some(lock))),
                refused => SlotFirst::NotLocked(refused),
            },
        }
    }

    /// Takes the order's lock, then provisions; a lock held by another delivery means later.
    async fn lock_and_provision(
        &self,
        order: &Resolved,
        progress: Progress,
        locks: &impl OrderLocks,
        slots: &impl CreationSlots,
    ) -> (Outcome, Option<Lock>) {
        let taken = Box::pin(locks.try_take(&order.lock_key())).await;
        self.with_lock(order, progress, taken, slots).await
    }

    /// Provisions (or serves a later request) under `taken`, the order's lock if it was given;
    /// a lock held by another delivery means later.
    async fn with_lock(
        &self,
        order: &Resolved,
        progress: Progress,
        taken: Taken,
        slots: &impl CreationSlots,
    ) -> (Outcome, Option<Lock>) {
        // Each step's future is boxed: inline, the trip held room for the largest of them
        // (taking the lock, provisioning, a later request) all its life, a thousand orders
        // waiting for a slot included (docs/perf/rss.md).
        match taken {
            Ok(Some(lock)) => {
                let outcome = match &order.trip {
                    Trip::New(plan) => Box::pin(self.provision(order, plan, progress, slots)).await,
                    Trip::Later(plan) => Box::pin(self.later(order, plan, progress)).await,
                };
                (outcome, Some(lock))
            }
            Ok(None) => (self.busy(order, progress), None),
            Err(e) => (
                Outcome::HandBack(format!("taking the order's lock failed: {e}")),
                None,
            ),
        }
    }

    /// Parses the body and resolves its business model. An order that needs no AWS call
    /// (malformed, or refused by the rules) comes back as its outcome, with its span.
    fn resolve(&self, body: &[u8]) -> Result<Resolved, Box<(Outcome, Span)>> {
        let (request, resolved) = match resolve_body(&self.rules, body) {
            Resolution::Malformed(malformed) => {
                let reason = Reason::from(&malformed.error);
                // The error quotes input only capped; the cap here bounds the line whatever
                // the error becomes.
                let message = capped(&malformed.error.to_string()).into_owned();
                warn!(%reason, error = %message, "malformed order");
                let failure = Failure {
                    reason,
                    message,
                    ids: malformed.ids,
                    progress: Progress::default(),
                };
                return Err(Box::new((Outcome::DeadLetter(failure), Span::none())));
            }
            Resolution::Rejected(request, rejection) => (request, Err(rejection)),
            Resolution::Planned(request, plan) => (request, Ok(Trip::New(plan))),
            Resolution::Later(request, plan) => (request, Ok(Trip::Later(plan))),
        };
        let span = info_span!(
            "order",
            request_id = %request.request_id,
            asset_id = %request.asset_id,
            marketplace_id = %request.marketplace_id,
        );
        let ids = PartialIds::of(&request);
        let _entered = span.enter();
        let trip = match resolved {
            Ok(trip) => trip,
            Err(rejection) => {
                info!(code = rejection.code.as_str(), message = %rejection.message, "order rejected");
                let outcome = Outcome::Report(report::failed(&ids, None, &rejection));
                drop(_entered);
                return Err(Box::new((outcome, span)));
            }
        };
        match &trip {
            Trip::New(plan) => info!(
                business_model = plan.model.as_str(),
                payer = %plan.payer,
                connection = plan.connection.as_str(),
                "business model resolved"
            ),
            Trip::Later(plan) => info!(
                request = plan.kind.as_str(),
                payer = %plan.payer,
                connection = plan.connection.as_str(),
                "request resolved"
            ),
        }
        drop(_entered);
        Ok(Resolved {
            request,
            trip,
            ids,
            span,
        })
    }

    /// The outcome of a delivery that found another delivery of its asset in progress: try
    /// again later, from where it stands.
    fn busy(&self, order: &Resolved, progress: Progress) -> Outcome {
        info!("another delivery for this asset is in progress: trying again later");
        let message = format!(
            "another delivery for the asset {} was being processed",
            order.request.asset_id
        );
        let failure = order.failure(Reason::OrderBusy, message, progress);
        Outcome::Later(failure, self.waits.order_busy)
    }

    /// Provisions a resolved order, resuming from `progress`; a `CreateAccount` waits for one
    /// of `slots`.
    async fn provision(
        &self,
        order: &Resolved,
        plan: &Plan,
        progress: Progress,
        slots: &impl CreationSlots,
    ) -> Outcome {
        let Resolved { request, ids, .. } = order;
        let aws = match self.payer(order, &plan.payer, &progress) {
            Ok(aws) => aws,
            Err(outcome) => return *outcome,
        };
        let provisioned = provision(
            aws,
            slots,
            request,
            plan,
            progress,
            self.polling,
            &self.metrics,
        )
        .await;
        match provisioned {
            Ok(done) => {
                info!(account_id = %done.account_id, "order provisioned");
                Outcome::Report(provisioned_event(aws, ids, plan, done))
            }
            Err(ProvisionError::Waiting(waiting)) => self.waiting(order, plan, waiting),
            Err(ProvisionError::NoSlot(why)) => self.no_slot(order, plan, &why),
            Err(ProvisionError::Rejected(rejection)) => {
                info!(code = rejection.code.as_str(), message = %rejection.message, "order failed");
                Outcome::Report(report::failed(ids, Some(&plan.payer), &rejection))
            }
            Err(ProvisionError::Aws { error, progress }) => aws_failure(order, &error, progress),
        }
    }

    /// The outcome of a new order that got no creation slot (`why`): nothing was requested, it
    /// tries again later.
    fn no_slot(&self, order: &Resolved, plan: &Plan, why: &NoSlot) -> Outcome {
        let wait = self.waits.slot_busy;
        info!(reason = %why, ?wait, "no creation slot for this delivery: trying again later");
        let message = format!("no CreateAccount slot of payer {}: {why}", plan.payer);
        let failure = order.failure(Reason::CreationSlotBusy, message, Progress::default());
        Outcome::Later(failure, wait)
    }

    /// The management account of `payer`; a payer that is not configured dead-letters the
    /// order.
    fn payer(
        &self,
        order: &Resolved,
        payer: &str,
        progress: &Progress,
    ) -> Result<&Arc<O>, Box<Outcome>> {
        self.payers.get(payer).ok_or_else(|| {
            // Start-up validation refuses a payer without a [payers.NAME] entry.
            warn!(payer = %payer, "no such payer");
            let message = format!("payer `{payer}` is not configured");
            let failure = order.failure(Reason::UnknownPayer, message, progress.clone());
            Box::new(Outcome::DeadLetter(failure))
        })
    }

    /// Carries out a request after the purchase (or an existing account's purchase): one
    /// module per kind ([`lifecycle`]), through the same lock, settle and retries.
    async fn later(&self, order: &Resolved, plan: &LaterPlan, progress: Progress) -> Outcome {
        let aws = match self.payer(order, &plan.payer, &progress) {
            Ok(aws) => aws,
            Err(outcome) => return *outcome,
        };
        let request = lifecycle::Request {
            order: &order.request,
            plan,
            ids: &order.ids,
            waits: &self.waits,
            metrics: &self.metrics,
        };
        match lifecycle::run(aws.as_ref(), &request, progress).await {
            lifecycle::Step::Report(event) => {
                info!(event = event.name(), "request done");
                Outcome::Report(event)
            }
            lifecycle::Step::Wait(wait) => {
                let lifecycle::Wait {
                    reason,
                    message,
                    progress,
                    wait,
                    notice,
                } = wait;
                info!(%reason, ?wait, "the request waits");
                let failure = order.failure(reason, message, progress);
                match notice {
                    Some(event) => Outcome::Announce(event, failure, wait),
                    None => Outcome::Later(failure, wait),
                }
            }
            lifecycle::Step::Failed { error, progress } => aws_failure(order, &error, progress),
        }
    }
}

/// The outcome of a failed AWS call: retried when it is transient, else dead-lettered.
fn aws_failure(order: &Resolved, error: &crate::aws::AwsError, progress: Progress) -> Outcome {
    let failure = order.failure(error.reason(), error.to_string(), progress);
    match error.retry {
        // Provisioning settles WhileNew by the account's age; should one get here, retrying is
        // the side that loses nothing.
        Retry::Transient | Retry::WhileNew => {
            warn!(reason = %failure.reason, error = %error, "transient AWS failure");
            Outcome::Retry(failure)
        }
        Retry::Permanent => {
            warn!(reason = %failure.reason, error = %error, "permanent AWS failure");
            Outcome::DeadLetter(failure)
        }
    }
}

/// `aws.account.provisioned` for `done`; when it gives out a new IAM password, with the step
/// that marks the user so once the event is confirmed (the password is given out once).
fn provisioned_event<O: Organizations>(
    aws: &Arc<O>,
    ids: &PartialIds,
    plan: &Plan,
    done: Provisioned,
) -> Event {
    let issued = match &done.access {
        Granted::IamUser { user_name, .. } => Some(user_name.clone()),
        Granted::AlreadyIssued { .. } | Granted::RootUser => None,
    };
    let account = AccountId(done.account_id.clone());
    let event = report::provisioned(ids, plan, done);
    let Some(user_name) = issued else {
        return event;
    };
    let event_id = event.event_id().unwrap_or_default().to_owned();
    let aws = Arc::clone(aws);
    let step = AfterConfirm::new("mark_credentials_issued", async move {
        mark_credentials_issued(aws.as_ref(), &account, &user_name, &event_id)
            .await
            .map_err(|e| e.to_string())
    });
    event.with_after_confirm(step)
}

impl<O> Pipeline<O> {
    /// The outcome of an order that must wait: how long, and why.
    fn waiting(&self, order: &Resolved, plan: &Plan, waiting: Waiting) -> Outcome {
        let (reason, message, progress, wait) = match waiting {
            Waiting::MaybeInFlight(progress) => (
                Reason::CreateMaybeInFlight,
                "an earlier CreateAccount of this order may still be on its way (its delivery ended unsettled, or it got no answer)".to_owned(),
                progress,
                self.waits.maybe_in_flight,
            ),
            // Polled again soon: the first retry delay, a queue that exists.
            Waiting::CreateInProgress(progress) => (
                Reason::CreateInProgress,
                format!(
                    "account creation {} is still in progress",
                    progress.create_request_id.as_deref().unwrap_or("?")
                ),
                progress,
                self.waits.order_busy,
            ),
            Waiting::EmailNotVisible(progress) => (
                Reason::Aws("EMAIL_ALREADY_EXISTS".to_owned()),
                format!(
                    "AWS says the email {} is in use, but no such account is visible yet (look {} of {EMAIL_LOOKS})",
                    plan.email, progress.email_looks
                ),
                progress,
                self.waits.maybe_in_flight,
            ),
        };
        info!(%reason, ?wait, "the order waits");
        Outcome::Later(order.failure(reason, message, progress), wait)
    }
}

/// What parsing and resolving an order body came to.
#[derive(Debug)]
pub enum Resolution {
    /// Not a valid order: dead-lettered at once.
    Malformed(Box<MalformedOrder>),
    /// A valid order that gets no account: `aws.account.failed`.
    Rejected(PurchaseRequest, Rejection),
    /// A valid order and what to provision for it.
    Planned(PurchaseRequest, Box<Plan>),
    /// A valid request after the purchase (or an existing account's purchase) and what to do.
    Later(PurchaseRequest, Box<LaterPlan>),
}

/// Parses an order body and resolves its business model under `rules`, with no I/O: the one
/// path that `run` (through [`Pipeline::resolve`]) and `explain` share.
pub fn resolve_body(rules: &Rules, body: &[u8]) -> Resolution {
    match order::parse(body) {
        Err(malformed) => Resolution::Malformed(malformed),
        Ok(request) if is_later(&request) => match rules.resolve_later(&request) {
            Ok(plan) => Resolution::Later(request, Box::new(plan)),
            Err(rejection) => Resolution::Rejected(request, rejection),
        },
        Ok(request) => match rules.resolve(&request) {
            Ok(plan) => Resolution::Planned(request, Box::new(plan)),
            Err(rejection) => Resolution::Rejected(request, rejection),
        },
    }
}

/// An order that passed parsing and business-model resolution: what provisioning needs.
#[derive(Debug)]
pub struct Resolved {
    /// The Connect request.
    pub request: PurchaseRequest,
    /// What to do.
    pub trip: Trip,
    /// Its identifying fields, for events.
    pub ids: PartialIds,
    /// The order's span (`request_id`, `asset_id`, `marketplace_id`).
    pub span: Span,
}

/// What a resolved request asks of AWS.
#[derive(Debug)]
pub enum Trip {
    /// A new account.
    New(Box<Plan>),
    /// A request after the purchase, or an existing account brought in.
    Later(Box<LaterPlan>),
}

impl Resolved {
    /// What two deliveries that must not be provisioned at the same time share: the asset id
    /// (the same order delivered twice, or another order for the same asset); identity is the
    /// asset, not the email.
    pub fn lock_key(&self) -> String {
        self.request.asset_id.to_string()
    }

    /// The order's failure for `reason`, to resume from `progress`.
    fn failure(&self, reason: Reason, message: String, progress: Progress) -> Failure {
        Failure {
            reason,
            message,
            ids: self.ids.clone(),
            progress,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole trip in one call, against the scripted AWS fake, with in-process locks and
    //! no limit on creations: no broker.

    use super::*;
    use crate::aws::CreateState;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::locks::{Local, LocksUnavailable};
    use crate::slots::Unlimited;

    /// ECAM with the root user: one `CreateAccount`, no IAM user.
    fn settings() -> Settings {
        Settings::from_toml(
            r#"
            [business_model]
            provider_email_domain = "provider.example"
            account_model = "ECAM"
            provide_root_user_for_ecam = true
            "#,
        )
        .expect("valid settings")
    }

    fn body() -> Vec<u8> {
        serde_json::json!({
            "id": "PR-1-2", "type": "purchase",
            "asset": {
                "id": "AS-1", "marketplace": {"id": "MP-1"},
                "tiers": {"customer": {"id": "TA-1", "name": "C"}},
                "params": [{"id": "aws_account_email", "value": "c@customer.example"}]
            }
        })
        .to_string()
        .into_bytes()
    }

    fn pipeline(aws: &ScriptedOrganizations) -> Arc<Pipeline<ScriptedOrganizations>> {
        let succeeded = CreateState::Succeeded {
            account_id: "111122223333".into(),
        };
        aws.states.lock().expect("states").push_back(succeeded);
        Pipeline::new(
            BTreeMap::from([("default".to_owned(), aws.clone())]),
            &settings(),
            &Metrics::default(),
        )
    }

    fn reason(outcome: &Outcome) -> Option<&Reason> {
        match outcome {
            Outcome::Retry(failure)
            | Outcome::Later(failure, _)
            | Outcome::Announce(_, failure, _)
            | Outcome::DeadLetter(failure) => Some(&failure.reason),
            Outcome::Report(_) | Outcome::HandBack(_) => None,
        }
    }

    #[tokio::test]
    async fn a_new_password_comes_with_the_step_that_marks_it_given_out_after_the_confirm() {
        let user = crate::domain::names::IamUserName::parse("admin").expect("name");
        let done = |access| Provisioned {
            account_id: "111122223333".into(),
            create_request_id: Some("car-test".into()),
            service_control_policies: Vec::new(),
            access,
        };
        let plan = settings()
            .rules()
            .resolve(&order::parse(&body()).expect("order"))
            .expect("plan");
        let aws = Arc::new(ScriptedOrganizations::default());
        let ids = PartialIds::default();
        let password = Granted::IamUser {
            user_name: user.clone(),
            password: "x".to_owned().into(),
        };
        let mut event = provisioned_event(&aws, &ids, &plan, done(password));
        let step = event
            .take_after_confirm()
            .expect("a step after the confirm");
        assert!(aws.calls().is_empty(), "nothing runs before the confirm");
        step.run().await.expect("marked");
        assert_eq!(aws.calls(), ["AssumeRole 111122223333", "TagUser admin"]);
        assert_eq!(
            aws.issued_in.lock().expect("issued").as_deref(),
            event.event_id(),
            "the tag names the event"
        );
        for access in [
            Granted::AlreadyIssued { user_name: user },
            Granted::RootUser,
        ] {
            let mut event = provisioned_event(&aws, &ids, &plan, done(access));
            assert!(event.take_after_confirm().is_none());
        }
    }

    #[tokio::test]
    async fn an_order_goes_from_its_body_to_its_event_holding_its_lock() {
        let aws = ScriptedOrganizations::default();
        let locks = Local::default();
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &locks, &Unlimited)
            .await;
        match &processed.outcome {
            Outcome::Report(event) => assert_eq!(event.name(), report::PROVISIONED),
            other => panic!("expected the provisioned event, got {other:?}"),
        }
        assert!(
            locks.is_held("AS-1"),
            "the lock is held until the outcome is settled"
        );
        processed.lock.expect("the lock").release().await;
        assert!(!locks.is_held("AS-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_creation_in_progress_waits_without_spending_an_attempt() {
        let aws =
            ScriptedOrganizations::with_states(std::iter::repeat_n(CreateState::InProgress, 40));
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &Local::default(), &Unlimited)
            .await;
        let Outcome::Later(failure, wait) = &processed.outcome else {
            panic!("expected a wait, got {:?}", processed.outcome);
        };
        assert_eq!(failure.reason, Reason::CreateInProgress);
        assert_eq!(*wait, Duration::from_millis(1000), "retry.initial_delay_ms");
        assert_eq!(
            failure.progress.create_request_id.as_deref(),
            Some("car-test")
        );
    }

    #[tokio::test]
    async fn a_held_lock_means_later_with_no_aws_call() {
        let aws = ScriptedOrganizations::default();
        let locks = Local::default();
        let _other = locks.try_take("AS-1").await.expect("locks");
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &locks, &Unlimited)
            .await;
        assert!(
            matches!(processed.outcome, Outcome::Later(_, wait) if wait == Duration::from_millis(1000)),
            "{:?}",
            processed.outcome
        );
        assert_eq!(reason(&processed.outcome), Some(&Reason::OrderBusy));
        assert!(processed.lock.is_none());
        assert!(aws.calls().is_empty(), "no AWS call: {:?}", aws.calls());
    }

    /// Locks that must not be asked for: taking one panics with the reason.
    struct NoLock(&'static str);

    impl OrderLocks for NoLock {
        async fn try_take(&self, _: &str) -> Result<Option<Lock>, LocksUnavailable> {
            panic!("{}", self.0)
        }
    }

    #[tokio::test]
    async fn a_malformed_body_is_dead_lettered_before_any_lock() {
        let aws = ScriptedOrganizations::default();
        let refusing = NoLock("a malformed order takes no lock");
        let processed = pipeline(&aws)
            .process_one(b"not json", Progress::default(), &refusing, &Unlimited)
            .await;
        assert_eq!(reason(&processed.outcome), Some(&Reason::NotJson));
        assert!(matches!(processed.outcome, Outcome::DeadLetter(_)));
        assert!(aws.calls().is_empty());
    }

    /// Slots whose waiting room has `room` places, counting what is asked of them.
    #[derive(Default)]
    struct Room {
        room: usize,
        kept: std::sync::Mutex<usize>,
        waited_in_kept: std::sync::Mutex<usize>,
    }

    impl CreationSlots for Room {
        async fn acquire(&self, _: &str) -> Result<crate::slots::Slot, NoSlot> {
            panic!("a new order waits in the place kept for it")
        }

        fn room_to_wait(&self, _: &str) -> Result<crate::slots::Room, NoSlot> {
            let mut kept = self.kept.lock().expect("kept");
            if *kept >= self.room {
                return Err(NoSlot::TooManyWaiting(*kept));
            }
            *kept += 1;
            Ok(crate::slots::Room::new(()))
        }

        async fn acquire_in(
            &self,
            _: &str,
            room: crate::slots::Room,
        ) -> Result<crate::slots::Slot, NoSlot> {
            assert!(room.is_kept());
            *self.waited_in_kept.lock().expect("waited") += 1;
            Ok(crate::slots::Slot::new(()))
        }
    }

    #[tokio::test]
    async fn a_new_order_waits_for_its_slot_before_its_lock_and_without_room_goes_back() {
        let aws = ScriptedOrganizations::default();
        let full = Room::default();
        let refusing = NoLock("an order with no room to wait takes no lock");
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &refusing, &full)
            .await;
        assert_eq!(reason(&processed.outcome), Some(&Reason::CreationSlotBusy));
        assert!(matches!(processed.outcome, Outcome::Later(..)));
        assert!(processed.lock.is_none());
        assert!(aws.calls().is_empty(), "{:?}", aws.calls());

        // With room, the order waits in the place kept for it, and takes its lock slot in
        // hand; its CreateAccount uses that slot.
        struct SlotFirst<'a>(&'a Room, Local);
        impl OrderLocks for SlotFirst<'_> {
            async fn try_take(&self, key: &str) -> Result<Option<Lock>, LocksUnavailable> {
                assert_eq!(*self.0.waited_in_kept.lock().expect("waited"), 1);
                self.1.try_take(key).await
            }
        }
        let aws = ScriptedOrganizations::default();
        let one = Room {
            room: 1,
            ..Room::default()
        };
        let locks = SlotFirst(&one, Local::default());
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &locks, &one)
            .await;
        assert!(
            matches!(&processed.outcome, Outcome::Report(e) if e.name() == report::PROVISIONED),
            "{:?}",
            processed.outcome
        );
        assert_eq!(*one.kept.lock().expect("kept"), 1);
        assert_eq!(*one.waited_in_kept.lock().expect("waited"), 1);

        // One whose last delivery found the lock held takes its lock first: a duplicate takes
        // no slot only to find the lock held again.
        struct LockFirst<'a>(&'a Room, Local);
        impl OrderLocks for LockFirst<'_> {
            async fn try_take(&self, key: &str) -> Result<Option<Lock>, LocksUnavailable> {
                assert_eq!(*self.0.kept.lock().expect("kept"), 0, "no place kept yet");
                self.1.try_take(key).await
            }
        }
        let one = Room {
            room: 1,
            ..Room::default()
        };
        let held = Local::default();
        let _other = held.try_take("AS-1").await.expect("locks");
        let busy = Progress {
            lock_was_busy: true,
            ..Progress::default()
        };
        let processed = pipeline(&ScriptedOrganizations::default())
            .process_one(&body(), busy, &LockFirst(&one, held.clone()), &one)
            .await;
        assert_eq!(reason(&processed.outcome), Some(&Reason::OrderBusy));
        assert_eq!(*one.waited_in_kept.lock().expect("waited"), 0);
    }

    /// Slots with one place in line: it tells the order it is next at once, and hands the
    /// slot out only once `give` is sent; `places` counts the places still kept.
    struct Line {
        give: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
        places: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Line {
        fn new() -> (Self, oneshot::Sender<()>) {
            let (give, given) = oneshot::channel();
            let line = Self {
                give: std::sync::Mutex::new(Some(given)),
                places: Arc::default(),
            };
            (line, give)
        }
    }

    /// Counts one place in [`Line`] while it lives.
    struct Place(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Place {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl CreationSlots for Line {
        async fn acquire(&self, _: &str) -> Result<crate::slots::Slot, NoSlot> {
            panic!("a new order waits in the place kept for it")
        }

        fn room_to_wait(&self, _: &str) -> Result<crate::slots::Room, NoSlot> {
            self.places
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(crate::slots::Room::new(Place(Arc::clone(&self.places))))
        }

        async fn acquire_in(
            &self,
            _: &str,
            mut room: crate::slots::Room,
        ) -> Result<crate::slots::Slot, NoSlot> {
            let next = room.take_next().expect("the order asks to be told");
            next.send(()).expect("the order listens");
            let given = self.give.lock().expect("give").take().expect("one wait");
            given
                .await
                .map_err(|_| NoSlot::Unavailable("no slot".into()))?;
            Ok(crate::slots::Slot::new(room))
        }
    }

    #[tokio::test]
    async fn an_order_told_it_is_next_takes_its_lock_while_it_waits() {
        // Its lock is taken before its slot comes: taking it gives the slot.
        struct GivesTheSlot(std::sync::Mutex<Option<oneshot::Sender<()>>>, Local);
        impl OrderLocks for GivesTheSlot {
            async fn try_take(&self, key: &str) -> Result<Option<Lock>, LocksUnavailable> {
                let give = self.0.lock().expect("give").take();
                give.expect("the lock is taken once, before the slot comes")
                    .send(())
                    .expect("the order still waits");
                self.1.try_take(key).await
            }
        }
        let aws = ScriptedOrganizations::default();
        let (line, give) = Line::new();
        let locks = GivesTheSlot(std::sync::Mutex::new(Some(give)), Local::default());
        let processed = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline(&aws).process_one(&body(), Progress::default(), &locks, &line),
        )
        .await
        .expect("the slot comes once the lock is taken");
        assert!(
            matches!(&processed.outcome, Outcome::Report(e) if e.name() == report::PROVISIONED),
            "{:?}",
            processed.outcome
        );
        assert!(processed.lock.is_some(), "held until settled");

        // A lock held by another delivery: the order gives up its place at once, without its
        // slot (which never comes here) and without calling AWS.
        let aws = ScriptedOrganizations::default();
        let (line, _never) = Line::new();
        let held = Local::default();
        let _other = held.try_take("AS-1").await.expect("locks");
        let processed = tokio::time::timeout(
            Duration::from_secs(5),
            pipeline(&aws).process_one(&body(), Progress::default(), &held, &line),
        )
        .await
        .expect("the order does not wait for its slot once its lock is refused");
        assert_eq!(reason(&processed.outcome), Some(&Reason::OrderBusy));
        assert!(processed.lock.is_none());
        assert_eq!(line.places.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(aws.calls().is_empty(), "{:?}", aws.calls());
    }

    #[tokio::test]
    async fn unavailable_locks_hand_the_delivery_back() {
        struct Unavailable;
        impl OrderLocks for Unavailable {
            async fn try_take(&self, _: &str) -> Result<Option<Lock>, LocksUnavailable> {
                Err(LocksUnavailable("connection closed".into()))
            }
        }
        let aws = ScriptedOrganizations::default();
        let processed = pipeline(&aws)
            .process_one(&body(), Progress::default(), &Unavailable, &Unlimited)
            .await;
        assert!(
            matches!(&processed.outcome, Outcome::HandBack(why) if why.contains("connection closed")),
            "{:?}",
            processed.outcome
        );
        assert!(aws.calls().is_empty());
    }
}
