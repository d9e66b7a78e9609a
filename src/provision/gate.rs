//! The idempotency gate: before any `CreateAccount`, the order's account or a creation in
//! progress for it is looked for, and what is found is checked to be the order's own.

use tracing::info;

use super::{ProvisionError, failed};
use crate::aws::{ExistingAccount, Organizations};
use crate::domain::model::Plan;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;

/// What the idempotency gate found.
pub(super) enum Gate {
    /// The order's account exists.
    Account(String),
    /// A creation is in progress for the order's account name.
    Creation(String),
    /// Nothing: the account may be requested.
    Nothing,
}

/// Looks for the order's account before any `CreateAccount`: first a creation in progress for
/// its account name, then an account with its email (in this order, so that a creation that
/// ends between the two looks is still seen). An account with the email that is not this
/// order's is `EMAIL_ALREADY_EXISTS`.
///
/// # Errors
/// [`ProvisionError::Rejected`] for an email whose account is another's;
/// [`ProvisionError::Aws`] (with no progress) when a look fails.
pub(super) async fn gate<O: Organizations>(
    aws: &O,
    order: &PurchaseRequest,
    plan: &Plan,
) -> Result<Gate, ProvisionError> {
    let fail = |error| failed(error, &Progress::default());
    if let Some(id) = aws
        .find_creation(plan.account_name.as_str())
        .await
        .map_err(fail)?
    {
        info!(create_request_id = %id, "the order's account is being created: following it");
        return Ok(Gate::Creation(id));
    }
    match aws.find_account(plan.email.as_str()).await.map_err(fail)? {
        Some(account) if is_ours(&account, order, plan) => {
            info!(account_id = %account.id, "the order's account already exists: resuming");
            Ok(Gate::Account(account.id.0))
        }
        Some(account) => Err(ProvisionError::Rejected(
            Rejection::new(
                FailureCode::EmailAlreadyExists,
                format!(
                    "the email {} belongs to account {}, which was not made for this order",
                    plan.email, account.id
                ),
            )
            .under(plan.model),
        )),
        None => Ok(Gate::Nothing),
    }
}

/// Whether `account` was made for this order: its email and its asset tag match.
pub(super) fn is_ours(account: &ExistingAccount, order: &PurchaseRequest, plan: &Plan) -> bool {
    account.email.eq_ignore_ascii_case(plan.email.as_str())
        && account.asset_id.as_deref() == Some(order.asset_id.as_str())
}

#[cfg(test)]
mod tests {
    //! What the gate finds is used (no second account, no slot), refused when it is another
    //! order's, and nothing found after an unsettled delivery means "not yet".

    use std::sync::Arc;

    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{CreateState, Retry};
    use crate::domain::model::{Access, AccountModel};
    use crate::domain::outcome::FailureCode;
    use crate::domain::progress::Progress;
    use crate::provision::fixtures::{
        POLLING, account, created, order, plan, provision_root, succeeded,
    };
    use crate::provision::{ProvisionError, provision};
    use crate::slots::{CreationSlots, Local};

    #[tokio::test(start_paused = true)]
    async fn the_gate_resumes_an_account_already_made_for_the_order() {
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(created(&aws), 0);
        assert!(
            aws.calls()
                .contains(&"AttachPolicy p-abcd1234 111122223333".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_refuses_an_email_whose_account_is_another_orders() {
        for other in [Some("AS-2"), None] {
            let aws = ScriptedOrganizations {
                existing: Some(account(other)),
                ..ScriptedOrganizations::default()
            };
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Rejected(rejection)) = err else {
                panic!("{other:?}: expected a rejection, got {err:?}");
            };
            assert_eq!(rejection.code, FailureCode::EmailAlreadyExists);
            assert_eq!(
                rejection.model,
                Some(AccountModel::Ecam),
                "inquire under ECAM"
            );
            assert_eq!(created(&aws), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_follows_a_creation_in_progress_and_checks_whose_it_is() {
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::InProgress, succeeded()])
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(done.create_request_id, "car-test");
        assert_eq!(created(&aws), 0);

        // The same name, another order's account: not ours, and not recorded as ours.
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-2"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected a transient error, got {err:?}");
        };
        assert_eq!(error.retry, Retry::Transient);
        assert_eq!(error.code.as_deref(), Some("ACCOUNT_NAME_IN_USE"));
        assert_eq!(progress, Progress::default());
        assert_eq!(created(&aws), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_unsettled_delivery_nothing_found_means_not_yet() {
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision_root(&aws, progress).await;
        assert!(matches!(err, Err(ProvisionError::NotYet)), "{err:?}");
        assert_eq!(
            created(&aws),
            0,
            "no CreateAccount while one may be in flight"
        );

        // What the gate finds is used at once, unsettled or not.
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_gate_finds_needs_no_slot() {
        let slots = Local::new(1);
        let _taken = slots.acquire("default").await.expect("slot");
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let (order, plan) = (order(), plan(Access::RootUser));
        provision(
            &Arc::new(aws),
            &slots,
            &order,
            &plan,
            Progress::default(),
            POLLING,
        )
        .await
        .expect("provisioned without a slot");

        // Nor does following a create request id of an earlier attempt.
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision(&Arc::new(aws), &slots, &order, &plan, progress, POLLING)
            .await
            .expect("provisioned without a slot");
    }
}
