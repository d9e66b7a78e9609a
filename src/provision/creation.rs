//! The account's creation: `CreateAccount` in a creation slot of the payer (only once the gate
//! found nothing), the wait for AWS to end it (polling `DescribeCreateAccountStatus`), and the
//! detached watcher that keeps the slot while a creation outlasts the attempt.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::gate::{Gate, gate, is_ours};
use super::{Polling, ProvisionError, failed};
use crate::aws::{
    ASSET_TAG, AccountId, AwsError, CreateState, CreateStatus, NewAccount, Organizations, Retry,
};
use crate::domain::model::Plan;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::retry::Reason;
use crate::slots::{CreationSlots, Slot};

/// Tags that tie the account to its Connect order; the idempotency gate reads the asset id.
fn tags(order: &PurchaseRequest) -> Vec<(String, String)> {
    vec![
        ("connect:request-id".into(), order.request_id.to_string()),
        (ASSET_TAG.into(), order.asset_id.to_string()),
        (
            "connect:marketplace-id".into(),
            order.marketplace_id.to_string(),
        ),
    ]
}

/// Where the account of an order comes from.
enum Source {
    /// A `CreateAccount` request of this order's, from an earlier attempt or just issued.
    Own(CreateStatus),
    /// A request in progress for the order's account name that no progress of ours named
    /// (an attempt that crashed before it could record it, or a copy of the order).
    Adopted(CreateStatus),
}

/// What the start of the account step found or began.
enum Started {
    /// The gate found the order's account.
    Found(String),
    /// A creation to follow, with the slot taken for it if this attempt requested it.
    Creation(Source, Option<Slot>),
}

/// The order's account when its progress names none: the creation of an earlier attempt is
/// followed; else the gate looks, and `CreateAccount` is called in a creation slot only if it
/// found nothing; then the creation is waited for. Returns the account id; records the create
/// request id in `progress`.
///
/// # Errors
/// As [`super::provision`].
pub(super) async fn find_or_create<O: Organizations>(
    aws: &Arc<O>,
    slots: &impl CreationSlots,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &mut Progress,
    polling: Polling,
) -> Result<String, ProvisionError> {
    // The slot is held from right before `CreateAccount` until the creation ends; dropping it
    // gives it back.
    let (source, slot) = match progress.create_request_id.clone() {
        Some(id) => (
            Source::Own(status(aws.as_ref(), &id, progress).await?),
            None,
        ),
        None => match start(aws.as_ref(), slots, order, plan, progress).await? {
            Started::Found(id) => return Ok(id),
            Started::Creation(source, slot) => (source, slot),
        },
    };
    let (status, adopted) = match source {
        Source::Own(status) => {
            progress.create_request_id = Some(status.request_id.clone());
            (status, false)
        }
        // An adopted request is not recorded: should the wait run out, the next attempt goes
        // through the gate again rather than trust a request it never checked.
        Source::Adopted(status) => (status, true),
    };
    let request_id = status.request_id.clone();
    match wait_for_account(aws.as_ref(), request_id.clone(), status.state, polling).await {
        Ok(account_id) if adopted => {
            claim_adopted(aws.as_ref(), account_id, request_id, order, plan, progress).await
        }
        Ok(account_id) => {
            info!(account_id, "account created");
            Ok(account_id)
        }
        Err(Waited::Failed(reason)) => {
            after_failure(aws.as_ref(), &reason, &request_id, order, plan, progress).await
        }
        Err(Waited::Error(error)) => {
            // Still in progress (or unknown) at AWS: the slot stays taken until it ends.
            if let Some(slot) = slot {
                keep_until_done(Arc::clone(aws), request_id, slot, polling.interval);
            }
            Err(failed(error, progress))
        }
    }
}

/// `DescribeCreateAccountStatus` of `request_id`.
async fn status<O: Organizations>(
    aws: &O,
    request_id: &str,
    progress: &Progress,
) -> Result<CreateStatus, ProvisionError> {
    aws.create_status(request_id)
        .await
        .map_err(|e| failed(e, progress))
}

/// The gate, then `CreateAccount` in a slot if it found nothing. A new order that could not
/// wait for a slot anyway goes back before calling AWS at all (not one whose earlier delivery
/// may have a `CreateAccount` in flight: it waits in [`ProvisionError::NotYet`]).
async fn start<O: Organizations>(
    aws: &O,
    slots: &impl CreationSlots,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &Progress,
) -> Result<Started, ProvisionError> {
    if !progress.maybe_in_flight
        && let Err(no_slot) = slots.room_to_wait(&plan.payer)
    {
        return Err(ProvisionError::NoSlot(no_slot));
    }
    match gate(aws, order, plan).await? {
        Gate::Account(id) => Ok(Started::Found(id)),
        Gate::Creation(id) => Ok(Started::Creation(
            Source::Adopted(status(aws, &id, progress).await?),
            None,
        )),
        Gate::Nothing if progress.maybe_in_flight => Err(ProvisionError::NotYet),
        Gate::Nothing => {
            let taken = slots
                .acquire(&plan.payer)
                .await
                .map_err(ProvisionError::NoSlot)?;
            let account = NewAccount {
                email: plan.email.to_string(),
                name: plan.account_name.to_string(),
                tags: tags(order),
            };
            let status = aws
                .create_account(&account)
                .await
                .map_err(|e| failed(e, progress))?;
            info!(create_request_id = %status.request_id, "account creation requested");
            Ok(Started::Creation(Source::Own(status), Some(taken)))
        }
    }
}

/// An adopted creation made `account_id`: it is the order's (and its request recorded in
/// `progress`) only if the account's email and asset tag say so; else the account name is
/// another order's, a transient error.
async fn claim_adopted<O: Organizations>(
    aws: &O,
    account_id: String,
    request_id: String,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<String, ProvisionError> {
    let account = aws
        .describe_account(&AccountId(account_id.clone()))
        .await
        .map_err(|e| failed(e, progress))?;
    if is_ours(&account, order, plan) {
        progress.create_request_id = Some(request_id);
        info!(account_id, "account created");
        Ok(account_id)
    } else {
        Err(failed(
            AwsError {
                retry: Retry::Transient,
                operation: "CreateAccount",
                code: Some(Reason::AccountNameInUse.as_str().to_owned()),
                message: format!(
                    "creation {request_id} for the account name {} made an account for another order",
                    plan.account_name
                ),
            },
            progress,
        ))
    }
}

/// A creation that AWS ended FAILED with `reason`: the order's own account when the email's
/// account turns out to be this order's; else tried again from the gate when the failure is not
/// the order's, a business outcome when it is.
async fn after_failure<O: Organizations>(
    aws: &O,
    reason: &str,
    request_id: &str,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &Progress,
) -> Result<String, ProvisionError> {
    match reason {
        "EMAIL_ALREADY_EXISTS" | CONCURRENT_ACCOUNT_MODIFICATION => {
            // The email's account may be this order's own (a request sent twice whose first
            // copy won): look again before telling the customer.
            match aws
                .find_account(plan.email.as_str())
                .await
                .map_err(|e| failed(e, progress))?
            {
                Some(account) if is_ours(&account, order, plan) => {
                    info!(account_id = %account.id, "the email's account is this order's: resuming");
                    Ok(account.id.0)
                }
                // "You already submitted a request with the same information": the other
                // request is still under way; the next attempt's gate follows it.
                _ if reason == CONCURRENT_ACCOUNT_MODIFICATION => {
                    Err(try_again(reason, request_id))
                }
                _ => Err(rejected_by_aws(reason, plan)),
            }
        }
        INTERNAL_FAILURE => Err(try_again(reason, request_id)),
        _ => Err(rejected_by_aws(reason, plan)),
    }
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
    /// Still in progress when the patience ran out, or its status could not be read.
    Error(AwsError),
}

/// Polls the creation until it ends or `polling.patience` runs out (then a transient error, so
/// the order waits in the broker instead of holding its consumer slot).
async fn wait_for_account<O: Organizations>(
    aws: &O,
    request_id: String,
    mut state: CreateState,
    polling: Polling,
) -> Result<String, Waited> {
    let deadline = Instant::now() + polling.patience;
    loop {
        match state {
            CreateState::Succeeded { account_id } => return Ok(account_id),
            CreateState::Failed { reason } => return Err(Waited::Failed(reason)),
            CreateState::InProgress if Instant::now() + polling.interval > deadline => {
                return Err(Waited::Error(AwsError {
                    retry: Retry::Transient,
                    operation: "DescribeCreateAccountStatus",
                    code: Some(Reason::CreateInProgress.as_str().to_owned()),
                    message: format!("account creation {request_id} is still in progress"),
                }));
            }
            CreateState::InProgress => {
                tokio::time::sleep(polling.interval).await;
                state = aws
                    .create_status(&request_id)
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
    use crate::provision::fixtures::{
        POLLING, account, created, order, plan, provision_root, succeeded,
    };
    use crate::provision::provision;
    use crate::slots::{Local, NoSlot};

    #[tokio::test(start_paused = true)]
    async fn a_failed_creation_is_a_business_outcome_with_the_mapped_code() {
        let cases = [
            ("EMAIL_ALREADY_EXISTS", FailureCode::EmailAlreadyExists),
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
    async fn a_long_creation_goes_back_to_the_broker_with_its_request_id() {
        let aws =
            ScriptedOrganizations::with_states(std::iter::repeat_n(CreateState::InProgress, 10));
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected a transient error, got {err:?}");
        };
        assert_eq!(error.retry, Retry::Transient);
        assert_eq!(error.code.as_deref(), Some("CREATE_IN_PROGRESS"));
        assert_eq!(progress.create_request_id.as_deref(), Some("car-test"));
        let polls = aws
            .calls()
            .iter()
            .filter(|c| c.starts_with("Describe"))
            .count();
        assert_eq!(polls, 5, "at 2, 4, 6, 8 and 10 s: 10 s of patience");
    }

    #[tokio::test(start_paused = true)]
    async fn email_already_exists_for_the_orders_own_account_resumes_it() {
        let failed = CreateState::Failed {
            reason: "EMAIL_ALREADY_EXISTS".into(),
        };
        // The gate saw nothing; the creation failed because a copy of the order won the race.
        let aws = ScriptedOrganizations::with_states([failed]);
        let aws = ScriptedOrganizations {
            existing: None,
            ..aws
        };
        assert!(matches!(
            provision_root(&aws, Progress::default()).await,
            Err(ProvisionError::Rejected(_))
        ));

        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::Failed {
                reason: "EMAIL_ALREADY_EXISTS".into(),
            }])
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        let done = provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
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
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        let done = provision_root(&aws, progress).await.expect("provisioned");
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

        fn room_to_wait(&self, _: &str) -> Result<(), NoSlot> {
            if self.full {
                Err(NoSlot::TooManyWaiting(32))
            } else {
                Ok(())
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
        let provisioning = provision(&shared, &slots, &order, &plan, Progress::default(), POLLING);
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
        )
        .await;
        assert!(matches!(err, Err(ProvisionError::NoSlot(_))), "{err:?}");
        assert_eq!(aws.calls(), Vec::<String>::new());

        // ... but one whose earlier delivery may have a CreateAccount in flight goes through
        // the gate (and waits in NotYet), and a known request id needs no slot.
        let maybe = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision(&Arc::new(aws.clone()), &full, &order, &plan, maybe, POLLING).await;
        assert!(matches!(err, Err(ProvisionError::NotYet)), "{err:?}");
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let known = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision(&Arc::new(aws), &full, &order, &plan, known, POLLING)
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
        )
        .await;
        assert!(matches!(err, Err(ProvisionError::Aws { .. })), "{err:?}");
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
