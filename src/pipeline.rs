//! The order's trip inside the worker: parse → resolve → provision → report. `process_one`
//! returns an [`Outcome`]; the broker side settles it (ack, retry or dead-letter).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, Span, info, info_span, warn};

use crate::aws::{Organizations, Retry};
use crate::config::Settings;
use crate::domain::model::{Plan, Rules};
use crate::domain::order::{self, MalformedOrder, PartialIds, PurchaseRequest};
use crate::domain::outcome::Rejection;
use crate::domain::progress::Progress;
use crate::provision::{Polling, ProvisionError, provision};
use crate::report::{self, Event};
use crate::slots::{CreationSlots, Unlimited};

/// How long an order that found no creation slot (nor room to wait for one) waits in a retry
/// queue: a slot frees when a creation ends, which takes minutes at AWS, so looking again
/// sooner would only cycle the order through the broker.
pub const SLOT_BUSY_WAIT: Duration = Duration::from_secs(10);

/// What to do with a delivery once the pipeline is done with it.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this event (`provisioned` or `failed`), then acknowledge the order.
    Report(Event),
    /// A transient failure: try again later, resuming from the failure's progress.
    Retry(Failure),
    /// Nothing failed, but the order cannot go on yet (another delivery of its account email
    /// is being processed, an earlier delivery's `CreateAccount` may be in flight, or no
    /// creation slot came free): try again after the wait, without counting an attempt.
    Later(Failure, Duration),
    /// Not processable: dead-letter at once (a malformed message, or a permanent AWS error).
    DeadLetter(Failure),
}

/// Why an order was not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A code for `x-failure-reason`.
    pub reason: String,
    /// A readable explanation for `x-failure-message`.
    pub message: String,
    /// The order's identifying fields, as far as they are known.
    pub ids: PartialIds,
    /// What the attempt achieved; it travels with the message, so that a retry or a replay
    /// resumes instead of creating a second account.
    pub progress: Progress,
}

/// The pipeline: AWS plus the settings that resolution and provisioning need.
pub struct Pipeline<O> {
    /// Each payer's management account, by `[payers.NAME]` name; an order goes to its
    /// `plan.payer`'s, for every call (the gate included).
    payers: BTreeMap<String, Arc<O>>,
    rules: Rules,
    polling: Polling,
    /// How long an order waits before a new `CreateAccount` when an earlier delivery may have
    /// one in flight.
    in_flight_wait: Duration,
    /// How long a delivery waits when another delivery of its account email is in progress.
    busy_wait: Duration,
}

impl<O: Organizations> Pipeline<O> {
    /// A pipeline over `payers` (one per `[payers.NAME]` entry, by name) with the
    /// business-model and polling settings of `settings`.
    pub fn new(payers: BTreeMap<String, O>, settings: &Settings) -> Arc<Self> {
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
            in_flight_wait: Duration::from_millis(settings.retry.redelivered_create_delay_ms),
            busy_wait: Duration::from_millis(settings.retry.initial_delay_ms),
        })
    }

    /// Takes one order body through the pipeline, resuming from `progress`: [`Self::resolve`],
    /// then [`Self::provision`], without a limit on creations in progress.
    pub async fn process_one(&self, body: &[u8], progress: Progress) -> Outcome {
        match self.resolve(body) {
            Ok(order) => self.provision(&order, progress, &Unlimited).await,
            Err(outcome) => *outcome,
        }
    }

    /// Parses the body and resolves its business model. An order that needs no AWS call
    /// (malformed, or refused by the rules) comes back as its outcome.
    ///
    /// # Errors
    /// The [`Outcome`] of an order that goes no further: dead-letter or `failed`.
    pub fn resolve(&self, body: &[u8]) -> Result<Resolved, Box<Outcome>> {
        let (request, resolved) = match resolve_body(&self.rules, body) {
            Resolution::Malformed(malformed) => {
                warn!(reason = malformed.error.code(), error = %malformed.error, "malformed order");
                return Err(Box::new(Outcome::DeadLetter(Failure {
                    reason: malformed.error.code().to_owned(),
                    message: malformed.error.to_string(),
                    ids: malformed.ids,
                    progress: Progress::default(),
                })));
            }
            Resolution::Rejected(request, rejection) => (request, Err(rejection)),
            Resolution::Planned(request, plan) => (request, Ok(*plan)),
        };
        let span = info_span!(
            "order",
            request_id = %request.request_id,
            asset_id = %request.asset_id,
            marketplace_id = %request.marketplace_id,
        );
        let ids = PartialIds::of(&request);
        let _entered = span.enter();
        let plan = match resolved {
            Ok(plan) => plan,
            Err(rejection) => {
                info!(code = rejection.code.as_str(), message = %rejection.message, "order rejected");
                return Err(Box::new(Outcome::Report(report::failed(
                    &ids, None, &rejection,
                ))));
            }
        };
        info!(
            business_model = plan.model.as_str(),
            payer = %plan.payer,
            connection = plan.connection.as_str(),
            "business model resolved"
        );
        drop(_entered);
        Ok(Resolved {
            request,
            plan,
            ids,
            span,
        })
    }

    /// The outcome of a delivery that found another delivery of its account email in
    /// progress: try again later, from where it stands.
    pub fn busy(&self, order: &Resolved, progress: Progress) -> Outcome {
        info!("another delivery for this account email is in progress: trying again later");
        Outcome::Later(
            Failure {
                reason: "ORDER_BUSY".to_owned(),
                message: format!(
                    "another delivery for the account email {} was being processed",
                    order.plan.email
                ),
                ids: order.ids.clone(),
                progress,
            },
            self.busy_wait,
        )
    }

    /// Provisions a resolved order, resuming from `progress`; a `CreateAccount` waits for one
    /// of `slots`.
    pub async fn provision(
        &self,
        order: &Resolved,
        progress: Progress,
        slots: &impl CreationSlots,
    ) -> Outcome {
        self.provision_order(order, progress, slots)
            .instrument(order.span.clone())
            .await
    }

    async fn provision_order(
        &self,
        order: &Resolved,
        progress: Progress,
        slots: &impl CreationSlots,
    ) -> Outcome {
        let Resolved {
            request, plan, ids, ..
        } = order;
        let Some(aws) = self.payers.get(&plan.payer) else {
            // Start-up validation refuses a payer without a [payers.NAME] entry.
            warn!(payer = %plan.payer, "no such payer");
            return Outcome::DeadLetter(Failure {
                reason: "UNKNOWN_PAYER".to_owned(),
                message: format!("payer `{}` is not configured", plan.payer),
                ids: ids.clone(),
                progress,
            });
        };
        match provision(aws, slots, request, plan, progress, self.polling).await {
            Ok(done) => {
                info!(account_id = %done.account_id, "order provisioned");
                Outcome::Report(report::provisioned(ids, plan, &done))
            }
            Err(ProvisionError::NotYet) => {
                info!(wait = ?self.in_flight_wait, "no account found after an unsettled delivery: looking again before creating one");
                Outcome::Later(
                    Failure {
                        reason: "CREATE_MAYBE_IN_FLIGHT".to_owned(),
                        message: "an earlier delivery ended unsettled; its CreateAccount may still be on its way".to_owned(),
                        ids: ids.clone(),
                        progress: Progress::default(),
                    },
                    self.in_flight_wait,
                )
            }
            Err(ProvisionError::NoSlot(why)) => {
                info!(reason = %why, wait = ?SLOT_BUSY_WAIT, "no creation slot for this delivery: trying again later");
                Outcome::Later(
                    Failure {
                        reason: "CREATION_SLOT_BUSY".to_owned(),
                        message: format!("no CreateAccount slot of payer {}: {why}", plan.payer),
                        ids: ids.clone(),
                        progress: Progress::default(),
                    },
                    SLOT_BUSY_WAIT,
                )
            }
            Err(ProvisionError::Rejected(rejection)) => {
                info!(code = rejection.code.as_str(), message = %rejection.message, "order failed");
                Outcome::Report(report::failed(ids, Some(&plan.payer), &rejection))
            }
            Err(ProvisionError::Aws { error, progress }) => {
                let failure = Failure {
                    reason: error.reason(),
                    message: error.to_string(),
                    ids: ids.clone(),
                    progress,
                };
                match error.retry {
                    // Provisioning settles WhileNew by the account's age; should one get here,
                    // retrying is the side that loses nothing.
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
        }
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
}

/// Parses an order body and resolves its business model under `rules`, with no I/O: the one
/// path that `run` (through [`Pipeline::resolve`]) and `explain` share.
pub fn resolve_body(rules: &Rules, body: &[u8]) -> Resolution {
    match order::parse(body) {
        Err(malformed) => Resolution::Malformed(malformed),
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
    /// What to provision.
    pub plan: Plan,
    /// Its identifying fields, for events.
    pub ids: PartialIds,
    /// The order's span (`request_id`, `asset_id`, `marketplace_id`).
    pub span: Span,
}

impl Resolved {
    /// What two deliveries that must not be provisioned at the same time share: the account
    /// email (the same order delivered twice, or two orders for one email).
    pub fn exclusive_key(&self) -> String {
        self.plan.email.as_str().to_ascii_lowercase()
    }
}
