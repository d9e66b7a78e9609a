//! The account's step: the progress's hints checked against AWS, the gate, then
//! `CreateAccount` in a creation slot of the payer (only once nothing was found), the wait for
//! AWS to end it (polling `DescribeCreateAccountStatus`), and the detached watcher that keeps
//! the slot while a creation outlasts the attempt.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::gate::{self, Walked, forged, forget, is_ours};
use super::{Polling, ProvisionError, Waiting, failed};
use crate::aws::{ASSET_TAG, AccountId, AwsError, CreateState, NewAccount, Organizations, Retry};
use crate::domain::model::Plan;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::observability::Metrics;
use crate::slots::{CreationSlots, Room, Slot};

/// Tags that tie the account to its Connect order; the idempotency gate reads the asset id.
/// An existing account's invitation carries the same.
pub(crate) fn tags(order: &PurchaseRequest) -> Vec<(String, String)> {
    vec![
        ("connect:request-id".into(), order.request_id.to_string()),
        (ASSET_TAG.into(), order.asset_id.to_string()),
        (
            "connect:marketplace-id".into(),
            order.marketplace_id.to_string(),
        ),
    ]
}

/// Times an `EMAIL_ALREADY_EXISTS` with no account in sight is looked at again (each after
/// `retry.redelivered_create_delay_ms`) before it is reported: a creation of the email that is
/// still finishing shows its account within minutes.
pub const EMAIL_LOOKS: u32 = 3;

/// What one order's account step needs besides the order.
pub(super) struct Step<'a, O, S> {
    /// The payer's management account.
    pub aws: &'a Arc<O>,
    /// The payer's creation slots.
    pub slots: &'a S,
    /// The order.
    pub order: &'a PurchaseRequest,
    /// What to provision.
    pub plan: &'a Plan,
    /// How long to wait on AWS.
    pub polling: Polling,
    /// Where ignored hints are counted.
    pub metrics: &'a Metrics,
}

/// Where a creation to follow came from, which says what its end means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A create request id in the progress headers: a hint, followed only to wait for it.
    Hint,
    /// A creation in progress under the order's account name that this order did not issue.
    Adopted,
}

impl<O: Organizations, S: CreationSlots> Step<'_, O, S> {
    /// The order's account. The progress's account id is used once AWS shows it is the
    /// order's; else its create request id is followed (the account it made used only if its
    /// tag proves it); else the gate: a new order looks at the creations in progress and then
    /// asks for the account; an order whose earlier `CreateAccount` may be in flight, or whose
    /// creation AWS refused with `EMAIL_ALREADY_EXISTS`, takes the rare path. Returns the
    /// account id; `progress.create_request_id` is then AWS's word, or `None`.
    ///
    /// # Errors
    /// As [`super::provision`].
    pub(super) async fn account(&self, progress: &mut Progress) -> Result<String, ProvisionError> {
        let aws = self.aws.as_ref();
        if let Some(id) = gate::verified_account(aws, self.order, progress, self.metrics).await? {
            return Ok(id);
        }
        if let Some(hint) = progress.create_request_id.clone()
            && let Some(id) = self.follow(&hint, Source::Hint, progress).await?
        {
            return Ok(id);
        }
        if progress.maybe_in_flight || progress.create_sent || progress.email_looks > 0 {
            return self.rare_path(progress).await;
        }
        // A new order that could not wait for a slot anyway goes back before calling AWS; one
        // that can keeps its place while it looks at the creations in progress.
        let room = self
            .slots
            .room_to_wait(&self.plan.payer)
            .map_err(ProvisionError::NoSlot)?;
        if let Some(id) = self.adopt_in_progress(progress).await? {
            return Ok(id);
        }
        self.create(progress, room).await
    }

    /// The rare path: the creations in progress, then the walk of the organization; nothing
    /// found means wait (an earlier delivery's `CreateAccount` may be on its way), look again
    /// (an `EMAIL_ALREADY_EXISTS` whose account is not visible yet), or ask for the account
    /// (after the wait for an unanswered `CreateAccount`).
    async fn rare_path(&self, progress: &mut Progress) -> Result<String, ProvisionError> {
        if let Some(id) = self.adopt_in_progress(progress).await? {
            return Ok(id);
        }
        match gate::walk(self.aws.as_ref(), self.order, self.plan, progress).await? {
            Walked::Ours(account) => gate::resume(self.aws.as_ref(), account, progress).await,
            Walked::EmailTaken(account) => Err(gate::email_taken(&account, self.plan)),
            Walked::Nothing if progress.maybe_in_flight => {
                info!("no account found after an unsettled delivery: looking again after a wait");
                Err(ProvisionError::Waiting(Waiting::MaybeInFlight(Progress {
                    create_sent: true,
                    email_looks: progress.email_looks,
                    ..Progress::default()
                })))
            }
            Walked::Nothing if (1..EMAIL_LOOKS).contains(&progress.email_looks) => {
                Err(email_not_visible(progress, self.plan))
            }
            // After an unanswered `CreateAccount`, or once the looks are over: asked again, so
            // that AWS (not a header) says whether the email is in use.
            Walked::Nothing => {
                info!("no account found: asking for it");
                progress.create_sent = false;
                self.create(progress, Room::default()).await
            }
        }
    }

    /// A creation in progress under the order's account name (`ListCreateAccountStatus`
    /// IN_PROGRESS), followed: its account is the order's only if its tag proves it.
    async fn adopt_in_progress(
        &self,
        progress: &mut Progress,
    ) -> Result<Option<String>, ProvisionError> {
        let found = self
            .aws
            .find_creation(self.plan.account_name.as_str())
            .await
            .map_err(|e| failed(e, progress))?;
        match found {
            Some(id) => {
                info!(create_request_id = %id, "a creation under the order's account name is in progress: following it");
                self.follow(&id, Source::Adopted, progress).await
            }
            None => Ok(None),
        }
    }

    /// Follows a creation this attempt did not issue, only to wait for it: the account it made
    /// is the order's only if its tag proves it, and its FAILED end is never the order's
    /// outcome. `None` (the request forgotten) when it is not the order's; a creation still
    /// in progress waits, its request id kept as a hint.
    async fn follow(
        &self,
        request_id: &str,
        source: Source,
        progress: &mut Progress,
    ) -> Result<Option<String>, ProvisionError> {
        let aws = self.aws.as_ref();
        let not_ours = |progress: &mut Progress| {
            if source == Source::Hint {
                forged(self.metrics, "x-create-request-id", request_id, self.order);
            }
            forget(progress);
        };
        let state = match aws.create_status(request_id).await {
            Ok(status) => status.state,
            Err(e) if e.retry == Retry::Permanent => {
                not_ours(progress);
                return Ok(None);
            }
            Err(e) => return Err(failed(e, progress)),
        };
        match wait_for_account(aws, request_id, state, self.polling).await {
            Ok(account_id) => {
                let account = aws
                    .describe_account(&AccountId(account_id.clone()))
                    .await
                    .map_err(|e| failed(e, progress))?;
                if is_ours(&account, self.order) {
                    progress.create_request_id = Some(request_id.to_owned());
                    info!(account_id, "account created");
                    Ok(Some(account_id))
                } else {
                    not_ours(progress);
                    Ok(None)
                }
            }
            Err(Waited::Failed(reason)) => {
                info!(create_request_id = %request_id, %reason, "a creation this attempt did not issue failed: not taken as the order's outcome");
                forget(progress);
                Ok(None)
            }
            Err(Waited::InProgress) => {
                progress.create_request_id = Some(request_id.to_owned());
                Err(ProvisionError::Waiting(Waiting::CreateInProgress(
                    progress.clone(),
                )))
            }
            Err(Waited::Error(error)) => Err(failed(error, progress)),
        }
    }

    /// `CreateAccount` in a slot of the payer (waited for in `room`), then the wait for it. A
    /// request sent that got no answer is recorded (`create_sent`) and waited for before
    /// anything else is asked.
    async fn create(&self, progress: &mut Progress, room: Room) -> Result<String, ProvisionError> {
        let aws = self.aws.as_ref();
        // The slot is held from right before `CreateAccount` until the creation ends; dropping
        // it gives it back.
        let slot = self
            .slots
            .acquire_in(&self.plan.payer, room)
            .await
            .map_err(ProvisionError::NoSlot)?;
        let account = NewAccount {
            email: self.plan.email.to_string(),
            name: self.plan.account_name.to_string(),
            tags: tags(self.order),
        };
        let status = match aws.create_account(&account).await {
            Ok(status) => status,
            Err(e) if e.code.is_none() && e.retry == Retry::Transient => {
                warn!(error = %e, "CreateAccount got no answer: it may have been made; looking for it after a wait");
                progress.create_sent = true;
                return Err(ProvisionError::Waiting(Waiting::MaybeInFlight(
                    progress.clone(),
                )));
            }
            Err(e) => return Err(failed(e, progress)),
        };
        info!(create_request_id = %status.request_id, "account creation requested");
        let request_id = status.request_id;
        progress.create_request_id = Some(request_id.clone());
        progress.create_sent = false;
        match wait_for_account(aws, &request_id, status.state, self.polling).await {
            Ok(account_id) => {
                info!(account_id, "account created");
                Ok(account_id)
            }
            Err(Waited::Failed(reason)) => self.after_failure(&reason, &request_id, progress).await,
            Err(Waited::InProgress) => {
                keep_until_done(
                    Arc::clone(self.aws),
                    request_id,
                    slot,
                    self.polling.interval,
                );
                Err(ProvisionError::Waiting(Waiting::CreateInProgress(
                    progress.clone(),
                )))
            }
            Err(Waited::Error(error)) => {
                // Unknown at AWS: the slot stays taken until the creation ends.
                keep_until_done(
                    Arc::clone(self.aws),
                    request_id,
                    slot,
                    self.polling.interval,
                );
                Err(failed(error, progress))
            }
        }
    }

    /// This order's creation, which AWS ended FAILED with `reason`: the order's own account
    /// when the email's account turns out to be the order's (the rare path); else tried again
    /// from the gate when the failure is not the order's, a business outcome when it is.
    async fn after_failure(
        &self,
        reason: &str,
        request_id: &str,
        progress: &mut Progress,
    ) -> Result<String, ProvisionError> {
        match reason {
            EMAIL_ALREADY_EXISTS | CONCURRENT_ACCOUNT_MODIFICATION => {
                *progress = Progress {
                    email_looks: progress.email_looks,
                    ..Progress::default()
                };
                if let Some(id) = self.adopt_in_progress(progress).await? {
                    return Ok(id);
                }
                match gate::walk(self.aws.as_ref(), self.order, self.plan, progress).await? {
                    Walked::Ours(account) => {
                        gate::resume(self.aws.as_ref(), account, progress).await
                    }
                    Walked::EmailTaken(account) => Err(gate::email_taken(&account, self.plan)),
                    // "You already submitted a request with the same information": the other
                    // request is still under way; the next attempt's gate follows it.
                    Walked::Nothing if reason == CONCURRENT_ACCOUNT_MODIFICATION => {
                        Err(try_again(reason, request_id))
                    }
                    Walked::Nothing => Err(email_not_visible(progress, self.plan)),
                }
            }
            INTERNAL_FAILURE => Err(try_again(reason, request_id)),
            _ => Err(rejected_by_aws(reason, self.plan)),
        }
    }
}

/// `EMAIL_ALREADY_EXISTS` and no account with the email in sight: look again later, up to
/// [`EMAIL_LOOKS`] times, then report it.
fn email_not_visible(progress: &Progress, plan: &Plan) -> ProvisionError {
    let looks = progress.email_looks.saturating_add(1);
    if looks > EMAIL_LOOKS {
        return rejected_by_aws(EMAIL_ALREADY_EXISTS, plan);
    }
    info!(
        looks,
        "AWS says the email is in use, but no such account is visible yet: looking again later"
    );
    ProvisionError::Waiting(Waiting::EmailNotVisible(Progress {
        email_looks: looks,
        ..Progress::default()
    }))
}

/// Status polls that may fail in a row before a watched slot is given back anyway.
const WATCH_ERRORS: u32 = 30;

/// Keeps `slot` taken while the creation `request_id` is in progress at AWS, after its order
/// went back to the broker to wait: a small task polls the status every `interval` and gives
/// the slot back once the creation ends (or the status cannot be read `WATCH_ERRORS` times in
/// a row). Should the process die first, the slot comes back with its broker connection while
/// the creation may still run: the limit then briefly undercounts, and AWS's own refusal is
/// a transient error.
pub fn keep_until_done<O: Organizations>(
    aws: Arc<O>,
    request_id: String,
    slot: Slot,
    interval: Duration,
) {
    tokio::spawn(async move {
        let mut errors = 0;
        while errors < WATCH_ERRORS {
            tokio::time::sleep(interval).await;
            match aws.create_status(&request_id).await {
                Ok(status) if status.state == CreateState::InProgress => errors = 0,
                Ok(_) => break,
                Err(e) => {
                    errors += 1;
                    debug!(create_request_id = %request_id, error = %e, "polling a watched creation failed");
                }
            }
        }
        if errors >= WATCH_ERRORS {
            warn!(create_request_id = %request_id, "a creation's status could not be read: its slot is given back");
        }
        drop(slot);
    });
}

/// The `FailureReason` of an email in use by another account, anywhere.
const EMAIL_ALREADY_EXISTS: &str = "EMAIL_ALREADY_EXISTS";
/// A `FailureReason` after which nothing was created and a new request may succeed.
const INTERNAL_FAILURE: &str = "INTERNAL_FAILURE";
/// A `FailureReason` meaning another request with the same information is under way.
const CONCURRENT_ACCOUNT_MODIFICATION: &str = "CONCURRENT_ACCOUNT_MODIFICATION";

/// A creation that ended FAILED for a reason that is not the order's: nothing was created, so
/// the next attempt starts again from the gate (its progress forgets the failed request).
fn try_again(reason: &str, request_id: &str) -> ProvisionError {
    ProvisionError::Aws {
        error: AwsError {
            retry: Retry::Transient,
            operation: "CreateAccount",
            code: Some(reason.to_owned()),
            message: format!("account creation {request_id} failed with {reason}; trying again"),
        },
        progress: Progress::default(),
    }
}

/// A creation that AWS ended FAILED for a reason that is the order's: a business outcome, its
/// code mapped from AWS's reason.
fn rejected_by_aws(reason: &str, plan: &Plan) -> ProvisionError {
    ProvisionError::Rejected(
        Rejection::new(
            FailureCode::from_aws_reason(reason),
            format!("AWS could not create the account: {reason}"),
        )
        .under(plan.model),
    )
}

/// How a wait for a creation ended, when it made no account.
enum Waited {
    /// AWS ended it FAILED, with its `FailureReason`.
    Failed(String),
    /// Still in progress when the attempt's patience ran out.
    InProgress,
    /// Its status could not be read.
    Error(AwsError),
}

/// Polls the creation until it ends or `polling.patience` runs out (then
/// [`Waited::InProgress`], so the order waits in the broker instead of holding its consumer
/// slot).
async fn wait_for_account<O: Organizations>(
    aws: &O,
    request_id: &str,
    mut state: CreateState,
    polling: Polling,
) -> Result<String, Waited> {
    let deadline = Instant::now() + polling.patience;
    loop {
        match state {
            CreateState::Succeeded { account_id } => return Ok(account_id),
            CreateState::Failed { reason } => return Err(Waited::Failed(reason)),
            CreateState::InProgress if Instant::now() + polling.interval > deadline => {
                info!(create_request_id = %request_id, "the account's creation is still in progress: waiting for it");
                return Err(Waited::InProgress);
            }
            CreateState::InProgress => {
                tokio::time::sleep(polling.interval).await;
                state = aws
                    .create_status(request_id)
                    .await
                    .map_err(Waited::Error)?
                    .state;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Creations that fail, outlast the attempt, or wait for a slot.

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::domain::model::{Access, AccountModel};
    use crate::observability::Metrics;
    use crate::provision::fixtures::{
        POLLING, account, created, order, plan, provision_root, succeeded,
    };
    use crate::provision::provision;
    use crate::slots::{Local, NoSlot};

    #[tokio::test(start_paused = true)]
    async fn a_failed_creation_is_a_business_outcome_with_the_mapped_code() {
        // EMAIL_ALREADY_EXISTS takes the rare path first (the gate's tests).
        let cases = [
            ("INVALID_EMAIL", FailureCode::InvalidEmail),
            (
                "ACCOUNT_LIMIT_EXCEEDED",
                FailureCode::Aws("ACCOUNT_LIMIT_EXCEEDED".into()),
            ),
        ];
        for (reason, code) in cases {
            let failed = CreateState::Failed {
                reason: reason.into(),
            };
            let aws = ScriptedOrganizations::with_states([CreateState::InProgress, failed]);
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Rejected(rejection)) = err else {
                panic!("{reason}: expected a rejection, got {err:?}");
            };
            assert_eq!(rejection.code, code);
            assert_eq!(rejection.model, Some(AccountModel::Ecam));
            assert!(
                !aws.calls().iter().any(|c| c.starts_with("AttachPolicy")),
                "nothing after a failed creation"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_creation_waits_in_the_broker_with_its_request_id() {
        let aws =
            ScriptedOrganizations::with_states(std::iter::repeat_n(CreateState::InProgress, 10));
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Waiting(Waiting::CreateInProgress(progress))) = err else {
            panic!("expected a wait, got {err:?}");
        };
        assert_eq!(progress.create_request_id.as_deref(), Some("car-test"));
        let polls = aws
            .calls()
            .iter()
            .filter(|c| c.starts_with("Describe"))
            .count();
        assert_eq!(polls, 5, "at 2, 4, 6, 8 and 10 s: 10 s of patience");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_that_are_not_the_orders_are_tried_again_from_the_gate() {
        for reason in ["INTERNAL_FAILURE", "CONCURRENT_ACCOUNT_MODIFICATION"] {
            let aws = ScriptedOrganizations::with_states([CreateState::Failed {
                reason: reason.into(),
            }]);
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Aws { error, progress }) = err else {
                panic!("{reason}: expected a transient error, got {err:?}");
            };
            assert_eq!(error.retry, Retry::Transient, "{reason}");
            assert_eq!(error.code.as_deref(), Some(reason));
            assert_eq!(
                progress,
                Progress::default(),
                "{reason}: the failed request is forgotten"
            );
        }
        // CONCURRENT_ACCOUNT_MODIFICATION whose account turns out to be the order's: resumed.
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::Failed {
                reason: "CONCURRENT_ACCOUNT_MODIFICATION".into(),
            }])
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
    }

    /// Slots that never hand one out; `full` also says so before the gate.
    struct Refusing {
        full: bool,
    }

    impl CreationSlots for Refusing {
        async fn acquire(&self, _: &str) -> Result<Slot, NoSlot> {
            Err(NoSlot::TooManyWaiting(32))
        }

        fn room_to_wait(&self, _: &str) -> Result<Room, NoSlot> {
            if self.full {
                Err(NoSlot::TooManyWaiting(32))
            } else {
                Ok(Room::default())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn create_account_waits_for_a_slot_of_the_payer() {
        let slots = Local::new(1);
        let taken = slots.acquire("default").await.expect("slot");
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let shared = Arc::new(aws.clone());
        let (order, plan) = (order(), plan(Access::RootUser));
        let metrics = Metrics::default();
        let provisioning = provision(
            &shared,
            &slots,
            &order,
            &plan,
            Progress::default(),
            POLLING,
            &metrics,
        );
        let mut provisioning = std::pin::pin!(provisioning);
        let waited = tokio::time::timeout(Duration::from_secs(60), provisioning.as_mut()).await;
        assert!(waited.is_err(), "no slot, no creation");
        assert_eq!(created(&aws), 0, "the gate ran, CreateAccount did not");
        drop(taken);
        provisioning
            .await
            .expect("provisioned once the slot came back");
        assert_eq!(created(&aws), 1);
        assert_eq!(
            slots.available("default"),
            1,
            "given back when the creation ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_slot_means_later_and_nothing_requested() {
        let aws = ScriptedOrganizations::default();
        let (order, plan) = (order(), plan(Access::RootUser));
        let refusing = Refusing { full: false };
        let fresh = Progress::default;
        let err = provision(
            &Arc::new(aws.clone()),
            &refusing,
            &order,
            &plan,
            fresh(),
            POLLING,
            &Metrics::default(),
        )
        .await;
        assert!(
            matches!(err, Err(ProvisionError::NoSlot(NoSlot::TooManyWaiting(32)))),
            "{err:?}"
        );
        assert_eq!(created(&aws), 0);

        // With no room to wait, a new order goes back before it calls AWS at all ...
        let aws = ScriptedOrganizations::default();
        let full = Refusing { full: true };
        let err = provision(
            &Arc::new(aws.clone()),
            &full,
            &order,
            &plan,
            fresh(),
            POLLING,
            &Metrics::default(),
        )
        .await;
        assert!(matches!(err, Err(ProvisionError::NoSlot(_))), "{err:?}");
        assert_eq!(aws.calls(), Vec::<String>::new());

        // ... but one whose earlier delivery may have a CreateAccount in flight takes the rare
        // path (and waits), and a known request id needs no slot.
        let maybe = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision(
            &Arc::new(aws.clone()),
            &full,
            &order,
            &plan,
            maybe,
            POLLING,
            &Metrics::default(),
        )
        .await;
        assert!(
            matches!(err, Err(ProvisionError::Waiting(Waiting::MaybeInFlight(_)))),
            "{err:?}"
        );
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let known = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision(
            &Arc::new(aws),
            &full,
            &order,
            &plan,
            known,
            POLLING,
            &Metrics::default(),
        )
        .await
        .expect("provisioned without a slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_creation_that_outlasts_the_attempt_keeps_its_slot_until_aws_ends_it() {
        let slots = Local::new(1);
        // CreateAccount and the attempt's 5 polls see IN_PROGRESS; so do the watcher's first
        // 3 polls; the 4th sees it succeeded.
        let aws = ScriptedOrganizations::with_states(
            std::iter::repeat_n(CreateState::InProgress, 9).chain([succeeded()]),
        );
        let (order, plan) = (order(), plan(Access::RootUser));
        let err = provision(
            &Arc::new(aws.clone()),
            &slots,
            &order,
            &plan,
            Progress::default(),
            POLLING,
            &Metrics::default(),
        )
        .await;
        assert!(
            matches!(
                err,
                Err(ProvisionError::Waiting(Waiting::CreateInProgress(_)))
            ),
            "{err:?}"
        );
        assert_eq!(
            slots.available("default"),
            0,
            "still held while AWS creates"
        );
        tokio::time::sleep(POLLING.interval * 3 + Duration::from_millis(1)).await;
        assert_eq!(
            slots.available("default"),
            0,
            "3 polls later, still in progress"
        );
        tokio::time::sleep(POLLING.interval).await;
        tokio::task::yield_now().await;
        assert_eq!(slots.available("default"), 1, "given back once it ended");
    }
}
