//! Provisioning: the account, the customer's access, then the account's OU and SCPs; each step
//! safe to run again. What is known so far ([`Progress`]) travels with the order when it goes
//! back to the broker, so a retry never asks AWS for a second account.
//!
//! The steps, in their order: `gate` checks the progress headers' hints against AWS and looks
//! for the order's account before anything is requested (at a cost that does not grow with the
//! organization, but on its rare path); `creation` requests it in a creation slot and waits for
//! it; `access` gives the customer their access; `placement` moves the account to its OU and
//! attaches its SCPs.

mod access;
mod creation;
mod gate;
mod placement;

#[cfg(test)]
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use crate::aws::{AccountId, AwsError, Organizations};
use crate::domain::model::Plan;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::Rejection;
use crate::domain::progress::{Progress, Provisioned};
use crate::observability::Metrics;
use crate::slots::{CreationSlots, NoSlot};

pub use access::{mark_credentials_issued, member_refusal};
pub(crate) use creation::tags as account_tags;
pub use creation::{EMAIL_LOOKS, keep_until_done};
pub(crate) use placement::place_in;

/// How long provisioning waits on AWS: for a creation in progress, and for a new account.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Between two `DescribeCreateAccountStatus` calls.
    pub interval: Duration,
    /// In all, before the order goes back to the broker to wait.
    pub patience: Duration,
    /// The readiness window: a member account younger than this that refuses the worker
    /// ([`crate::aws::Retry::WhileNew`]) is not ready yet; an older one denies the call for
    /// good.
    pub member_ready: Duration,
}

/// Why provisioning stopped.
#[derive(Debug)]
pub enum ProvisionError {
    /// A business outcome: the order gets `aws.account.failed`.
    Rejected(Rejection),
    /// Nothing failed, but the order cannot go on yet: it waits (spending no attempt), then
    /// resumes from the progress it carries.
    Waiting(Waiting),
    /// The gate found nothing, but no creation slot of the payer came free for this delivery:
    /// nothing was requested, the order tries again later.
    NoSlot(NoSlot),
    /// An AWS call failed; `progress` is what was achieved before it.
    Aws {
        /// The classified failure.
        error: AwsError,
        /// What to resume from.
        progress: Progress,
    },
}

/// What an order waits for before its next attempt.
#[derive(Debug)]
pub enum Waiting {
    /// An earlier delivery may have a `CreateAccount` in flight (it ended unsettled, or its
    /// `CreateAccount` got no answer): look again after `retry.redelivered_create_delay_ms`,
    /// before requesting an account.
    MaybeInFlight(Progress),
    /// The creation the progress names is still in progress at AWS.
    CreateInProgress(Progress),
    /// AWS refused the creation with `EMAIL_ALREADY_EXISTS`, and no account with the email can
    /// be seen yet (a creation still finishing): look again later, a bounded number of times.
    EmailNotVisible(Progress),
}

/// An AWS call failed; `progress` is what to resume from.
fn failed(error: AwsError, progress: &Progress) -> ProvisionError {
    ProvisionError::Aws {
        error,
        progress: progress.clone(),
    }
}

/// Provisions `plan` for `order`, resuming from `progress`. Every step is safe to run again:
/// the account is looked for before it is requested, and the later steps accept what is
/// already there. `CreateAccount` waits for a slot of the payer's organization from `slots`
/// and holds it until the creation ends (see [`keep_until_done`] for a creation that outlasts
/// the attempt).
///
/// What is read from the progress (headers) is a hint: acted on only once AWS shows it is this
/// order's; a hint that is not is logged, counted in `metrics` and ignored.
///
/// # Errors
/// [`ProvisionError::Rejected`] for a business outcome (AWS ended the creation FAILED, the
/// email belongs to another account); [`ProvisionError::Aws`] when a call fails, with the
/// progress to resume from; [`ProvisionError::NoSlot`] when no creation slot came;
/// [`ProvisionError::Waiting`] when the order must wait (a creation in progress or maybe in
/// flight, an email in use whose account is not visible yet).
pub async fn provision<O: Organizations>(
    aws: &Arc<O>,
    slots: &impl CreationSlots,
    order: &PurchaseRequest,
    plan: &Plan,
    mut progress: Progress,
    polling: Polling,
    metrics: &Metrics,
) -> Result<Provisioned, ProvisionError> {
    let step = creation::Step {
        aws,
        slots,
        order,
        plan,
        polling,
        metrics,
    };
    // Each step's future is boxed, so that an order waiting in one (for a creation slot) holds
    // room for that one alone, not for the largest (docs/perf/rss.md).
    let account_id = Box::pin(step.account(&mut progress)).await?;
    progress.account_id = Some(account_id.clone());
    let account = AccountId(account_id.clone());

    // The customer's access first, then the account's place and SCPs: an SCP that denies IAM
    // actions (attached here or inherited from the OU) must not block the worker's own setup.
    let access = Box::pin(access::grant(aws.as_ref(), &account, &plan.access, polling))
        .await
        .map_err(|e| failed(e, &progress))?;

    // The account's place and its SCPs are one step, run on every attempt: the move looks
    // first, and each SCP attached is remembered on the way, so a retry attaches only the
    // others (those AWS confirms: `placed` and the SCPs a header names are claims, not proof).
    let mut attached = std::mem::take(&mut progress.policies_attached);
    let placed = Box::pin(placement::place(
        aws.as_ref(),
        &account,
        plan,
        &mut attached,
    ))
    .await;
    progress.policies_attached = attached;
    placed.map_err(|e| failed(e, &progress))?;
    progress.placed = true;

    Ok(Provisioned {
        account_id,
        create_request_id: progress.create_request_id,
        service_control_policies: plan.service_control_policies.clone(),
        access,
    })
}

#[cfg(test)]
mod tests {
    //! The order of the steps, and what a resumed order skips.

    use super::fixtures::{
        account, calls_after_creation_into_an_ou, iam_user, plan, provision_plan, provision_root,
        succeeded,
    };
    use super::*;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{CreateState, Retry};

    use crate::domain::progress::Granted;

    #[tokio::test(start_paused = true)]
    async fn polls_until_succeeded_then_makes_the_user_then_attaches_scps() {
        let aws = ScriptedOrganizations::with_states([
            CreateState::InProgress,
            CreateState::InProgress,
            succeeded(),
        ]);
        let done = provision_plan(&aws, &plan(iam_user()), Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(done.create_request_id.as_deref(), Some("car-test"));
        assert!(matches!(done.access, Granted::IamUser { .. }));
        assert_eq!(
            aws.calls(),
            [
                "ListCreateAccountStatus C",
                "CreateAccount c@customer.example",
                "DescribeCreateAccountStatus car-test",
                "DescribeCreateAccountStatus car-test",
                "AssumeRole 111122223333",
                "CreateUser admin",
                "ListUserTags admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
                "AttachPolicy p-abcd1234 111122223333",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_order_never_asks_for_a_second_account() {
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(aws.calls()[0], "DescribeCreateAccountStatus car-test");
        assert!(!aws.calls().iter().any(|c| c.starts_with("CreateAccount")));

        // Its account checked (its tag), its request checked, then only what is left.
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(
            aws.calls(),
            [
                "DescribeAccount 111122223333",
                "DescribeCreateAccountStatus car-test",
                "AttachPolicy p-abcd1234 111122223333"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_after_creation_keeps_the_account_in_the_progress() {
        let throttled = AwsError {
            retry: Retry::Transient,
            operation: "AttachPolicy",
            code: Some("TooManyRequestsException".into()),
            message: "slow down".into(),
        };
        let aws = ScriptedOrganizations {
            fail_attach: Some(throttled.clone()),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected an AWS error, got {err:?}");
        };
        assert_eq!(error, throttled);
        assert_eq!(progress.account_id.as_deref(), Some("111122223333"));
        assert_eq!(progress.create_request_id.as_deref(), Some("car-test"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_iam_user_is_made_before_the_ou_and_the_scps() {
        let after_creation = calls_after_creation_into_an_ou(iam_user()).await;
        assert_eq!(
            after_creation,
            [
                "AssumeRole 111122223333",
                "CreateUser admin",
                "ListUserTags admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
                "ListParents 111122223333",
                "MoveAccount 111122223333 r-root ou-root-opco0001",
                "AttachPolicy p-abcd1234 111122223333",
            ]
        );
    }
}
