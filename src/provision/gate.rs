//! The idempotency gate: what the progress headers claim is checked against AWS before it is
//! acted on (a hint, never a licence), and the order's account is looked for before any
//! `CreateAccount`. The account is the order's when its `connect:asset-id` tag is the order's
//! asset: identity is the asset, not the email.
//!
//! A new order costs a constant number of reads at any organization size (the creations in
//! progress, then `CreateAccount`: AWS itself refuses an email in use anywhere). Only the rare
//! path ([`walk`]: after `EMAIL_ALREADY_EXISTS`, or when an earlier `CreateAccount` may have
//! been sent unanswered) walks the whole organization.

use tracing::{info, warn};

use super::{ProvisionError, failed};
use crate::aws::{AccountId, Candidates, ExistingAccount, Organizations, Retry};
use crate::domain::model::Plan;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::observability::Metrics;

/// What the rare path's walk of the organization found.
pub(super) enum Walked {
    /// The order's account (its asset tag is the order's).
    Ours(ExistingAccount),
    /// An account with the order's email that is another asset's.
    EmailTaken(ExistingAccount),
    /// Neither.
    Nothing,
}

/// Whether `account` was made for this order: its asset tag is the order's asset id (its email
/// may differ, when the template or the model changed between deliveries).
pub(super) fn is_ours(account: &ExistingAccount, order: &PurchaseRequest) -> bool {
    account.asset_id.as_deref() == Some(order.asset_id.as_str())
}

/// The longest part of a hint written to a log line.
const HINT_LOGGED: usize = 64;

/// A hint that AWS showed is not the order's: logged (capped) and counted; the caller forgets
/// it and lets the gate decide.
pub(super) fn forged(metrics: &Metrics, header: &str, hint: &str, order: &PurchaseRequest) {
    let hint: String = hint.chars().take(HINT_LOGGED).collect();
    warn!(
        header,
        %hint,
        asset_id = %order.asset_id,
        "a progress header names an account or creation that is not this order's: ignored"
    );
    metrics.forged_hint();
}

/// Forgets the ids of `progress` (and what was done on their account), keeping what says how
/// the order must look for its account.
pub(super) fn forget(progress: &mut Progress) {
    *progress = Progress {
        maybe_in_flight: progress.maybe_in_flight,
        create_sent: progress.create_sent,
        email_looks: progress.email_looks,
        ..Progress::default()
    };
}

/// The account the progress's `x-account-id` names, once AWS shows it is this order's
/// (`DescribeAccount` and its tags); its create request id is kept only if AWS shows it made
/// that account. A hint that is not the order's is forgotten, logged and counted: `None`.
///
/// # Errors
/// [`ProvisionError::Aws`] when a look fails transiently (the hints are kept, to be checked
/// again).
pub(super) async fn verified_account<O: Organizations>(
    aws: &O,
    order: &PurchaseRequest,
    progress: &mut Progress,
    metrics: &Metrics,
) -> Result<Option<String>, ProvisionError> {
    let Some(hint) = progress.account_id.clone() else {
        return Ok(None);
    };
    match aws.describe_account(&AccountId(hint.clone())).await {
        Ok(account) if is_ours(&account, order) => {
            progress.create_request_id = request_of(
                aws,
                &account.id,
                progress.create_request_id.clone(),
                progress,
            )
            .await?;
            Ok(Some(hint))
        }
        Err(e) if e.retry != Retry::Permanent => Err(failed(e, progress)),
        // Another asset's account, or no account at all.
        _ => {
            forged(metrics, "x-account-id", &hint, order);
            forget(progress);
            Ok(None)
        }
    }
}

/// The create request id `hint` if AWS shows it made `account`, else `None`.
async fn request_of<O: Organizations>(
    aws: &O,
    account: &AccountId,
    hint: Option<String>,
    progress: &Progress,
) -> Result<Option<String>, ProvisionError> {
    let Some(hint) = hint else {
        return Ok(None);
    };
    match aws.create_status(&hint).await {
        Ok(status) => Ok(match status.state {
            crate::aws::CreateState::Succeeded { account_id } if account_id == account.0 => {
                Some(hint)
            }
            _ => None,
        }),
        Err(e) if e.retry != Retry::Permanent => Err(failed(e, progress)),
        Err(_) => Ok(None),
    }
}

/// The rare path: walks the organization for the accounts that may be the order's (its email,
/// its account name, or a name with its asset id) and reads only their tags.
///
/// # Errors
/// [`ProvisionError::Aws`] when the walk fails.
pub(super) async fn walk<O: Organizations>(
    aws: &O,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &Progress,
) -> Result<Walked, ProvisionError> {
    let wanted = Candidates {
        email: plan.email.as_str(),
        account_name: plan.account_name.as_str(),
        asset_id: order.asset_id.as_str(),
    };
    let found = aws
        .find_accounts(&wanted)
        .await
        .map_err(|e| failed(e, progress))?;
    info!(
        candidates = found.len(),
        "walked the organization for the order's account"
    );
    if let Some(ours) = found.iter().find(|a| is_ours(a, order)) {
        return Ok(Walked::Ours(ours.clone()));
    }
    Ok(found
        .into_iter()
        .find(|a| a.email.eq_ignore_ascii_case(plan.email.as_str()))
        .map_or(Walked::Nothing, Walked::EmailTaken))
}

/// The order's account found by the walk: its create request id looked up (`None` where AWS no
/// longer lists it), recorded in `progress`.
///
/// # Errors
/// [`ProvisionError::Aws`] when the look-up fails.
pub(super) async fn resume<O: Organizations>(
    aws: &O,
    account: ExistingAccount,
    progress: &mut Progress,
) -> Result<String, ProvisionError> {
    info!(account_id = %account.id, "the order's account already exists: resuming");
    progress.create_request_id = aws
        .find_request(&account.id)
        .await
        .map_err(|e| failed(e, progress))?;
    Ok(account.id.0)
}

/// `EMAIL_ALREADY_EXISTS`: the order's email belongs to `account`, which is another asset's.
pub(super) fn email_taken(account: &ExistingAccount, plan: &Plan) -> ProvisionError {
    ProvisionError::Rejected(
        Rejection::new(
            FailureCode::EmailAlreadyExists,
            format!(
                "the email {} belongs to account {}, which was not made for this order",
                plan.email, account.id
            ),
        )
        .under(plan.model),
    )
}

#[cfg(test)]
mod tests {
    //! Hints used only once AWS shows they are the order's; a new order's reads do not depend
    //! on the organization; the rare path resumes the order's account, refuses another's, and
    //! looks again a bounded number of times.

    use std::sync::Arc;

    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{CreateState, ExistingAccount};
    use crate::domain::model::{Access, AccountModel};
    use crate::domain::outcome::FailureCode;
    use crate::domain::progress::Progress;
    use crate::observability::Metrics;
    use crate::provision::fixtures::{
        POLLING, account, created, order, plan, provision_root, succeeded,
    };
    use crate::provision::{EMAIL_LOOKS, ProvisionError, Waiting, provision};
    use crate::slots::{CreationSlots, Local, Unlimited};

    fn email_exists() -> CreateState {
        CreateState::Failed {
            reason: "EMAIL_ALREADY_EXISTS".into(),
        }
    }

    /// Provisions the root-user plan, counting ignored hints in a metrics of its own.
    async fn provision_counted(
        aws: &ScriptedOrganizations,
        progress: Progress,
    ) -> (
        Result<crate::domain::progress::Provisioned, ProvisionError>,
        String,
    ) {
        let metrics = Metrics::default();
        let done = provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan(Access::RootUser),
            progress,
            POLLING,
            &metrics,
        )
        .await;
        (done, metrics.render())
    }

    fn forged_count(rendered: &str) -> u32 {
        rendered
            .lines()
            .find_map(|l| l.strip_prefix("aws_account_worker_forged_hints_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_order_reads_the_creations_in_progress_only_then_asks() {
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-2"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        let calls = aws.calls();
        assert_eq!(
            calls[..2],
            [
                "ListCreateAccountStatus C",
                "CreateAccount c@customer.example"
            ]
        );
        assert!(
            !calls.iter().any(|c| c.starts_with("ListAccounts")),
            "no walk of the organization: {calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn email_already_exists_walks_and_resumes_the_orders_account() {
        // Tagged with the asset, under another email (the template changed): the order's.
        let moved = ExistingAccount {
            email: "old@customer.example".into(),
            ..account(Some("AS-1"))
        };
        for existing in [account(Some("AS-1")), moved] {
            let aws = ScriptedOrganizations {
                existing: Some(existing),
                listed_request: Some("car-first".into()),
                ..ScriptedOrganizations::with_states([CreateState::InProgress, email_exists()])
            };
            let done = provision_root(&aws, Progress::default())
                .await
                .expect("provisioned");
            assert_eq!(done.account_id, "111122223333");
            assert_eq!(done.create_request_id.as_deref(), Some("car-first"));
            assert_eq!(created(&aws), 1);
            assert!(
                aws.calls()
                    .contains(&"ListAccounts c@customer.example".to_owned())
            );
        }
        // AWS no longer lists the request: null, never "".
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([email_exists()])
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.create_request_id, None);
    }

    #[tokio::test(start_paused = true)]
    async fn email_already_exists_with_another_assets_account_is_refused() {
        for other in [Some("AS-2"), None] {
            let aws = ScriptedOrganizations {
                existing: Some(account(other)),
                ..ScriptedOrganizations::with_states([email_exists()])
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
        }
    }

    #[tokio::test(start_paused = true)]
    async fn email_already_exists_with_no_account_in_sight_is_looked_at_again_then_reported() {
        let aws = ScriptedOrganizations::with_states([email_exists(), email_exists()]);
        let mut progress = Progress::default();
        for look in 1..=EMAIL_LOOKS {
            let err = provision_root(&aws, progress.clone()).await;
            let Err(ProvisionError::Waiting(Waiting::EmailNotVisible(next))) = err else {
                panic!("look {look}: expected a wait, got {err:?}");
            };
            assert_eq!(next.email_looks, look);
            assert_eq!(next.create_request_id, None);
            progress = next;
        }
        let err = provision_root(&aws, progress).await;
        let Err(ProvisionError::Rejected(rejection)) = err else {
            panic!("expected a rejection, got {err:?}");
        };
        assert_eq!(rejection.code, FailureCode::EmailAlreadyExists);
        assert_eq!(
            created(&aws),
            2,
            "the looks ask for nothing; AWS refuses the email again before it is reported"
        );

        // An `x-email-looks` header is no verdict: with the email free, the account is made.
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let forged = Progress {
            email_looks: 99,
            ..Progress::default()
        };
        provision_root(&aws, forged).await.expect("provisioned");
        assert_eq!(created(&aws), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forged_account_hint_is_ignored_counted_and_the_gate_decides() {
        // Another asset's account, and an account with no asset tag.
        for described in [Some(account(Some("AS-2"))), Some(account(None))] {
            let aws = ScriptedOrganizations {
                described,
                ..ScriptedOrganizations::with_states([succeeded()])
            };
            let progress = Progress {
                account_id: Some("999999999999".into()),
                create_request_id: Some("car-other".into()),
                policies_attached: [crate::domain::ids::PolicyId::parse("p-abcd1234").expect("id")]
                    .into(),
                placed: true,
                ..Progress::default()
            };
            let (done, metrics) = provision_counted(&aws, progress).await;
            let done = done.expect("provisioned");
            assert_eq!(done.account_id, "111122223333", "its own account");
            assert_eq!(forged_count(&metrics), 1, "{metrics}");
            assert_eq!(created(&aws), 1);
            let calls = aws.calls();
            assert!(
                !calls
                    .iter()
                    .any(|c| c.contains("999999999999") && !c.starts_with("Describe")),
                "nothing done to the named account: {calls:?}"
            );
            assert!(
                calls.contains(&"AttachPolicy p-abcd1234 111122223333".to_owned()),
                "the forged step is forgotten with its account: {calls:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_verified_account_hint_resumes_with_its_checked_request() {
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let progress = Progress {
            account_id: Some("111122223333".into()),
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        let (done, metrics) = provision_counted(&aws, progress).await;
        let done = done.expect("provisioned");
        assert_eq!(done.create_request_id.as_deref(), Some("car-test"));
        assert_eq!(forged_count(&metrics), 0);
        assert_eq!(created(&aws), 0);
        assert_eq!(
            aws.calls()[..2],
            [
                "DescribeAccount 111122223333",
                "DescribeCreateAccountStatus car-test"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_request_hint_is_followed_but_its_account_used_only_if_tagged_for_the_order() {
        // The hint's creation made another asset's account: ignored, counted, the order's own.
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-2"))),
            ..ScriptedOrganizations::with_states([succeeded(), succeeded()])
        };
        let progress = Progress {
            create_request_id: Some("car-other".into()),
            ..Progress::default()
        };
        let (done, metrics) = provision_counted(&aws, progress.clone()).await;
        done.expect("provisioned");
        assert_eq!(forged_count(&metrics), 1);
        assert_eq!(created(&aws), 1);

        // A FAILED hint is never the order's outcome (and not counted: it may be the order's
        // own earlier request): the gate decides.
        let aws = ScriptedOrganizations::with_states([
            CreateState::Failed {
                reason: "INVALID_EMAIL".into(),
            },
            succeeded(),
        ]);
        let (done, metrics) = provision_counted(&aws, progress.clone()).await;
        done.expect("provisioned");
        assert_eq!(forged_count(&metrics), 0);
        assert_eq!(created(&aws), 1);

        // The order's own: used, no second account.
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let (done, _) = provision_counted(&aws, progress).await;
        assert_eq!(
            done.expect("provisioned").create_request_id.as_deref(),
            Some("car-other")
        );
        assert_eq!(created(&aws), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_creation_in_progress_under_the_name_is_adopted_only_when_tagged_for_the_order() {
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::InProgress, succeeded()])
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.create_request_id.as_deref(), Some("car-test"));
        assert_eq!(created(&aws), 0);

        // The same name, another asset's account ("Production"): not ours; the order asks for
        // its own.
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-2"))),
            ..ScriptedOrganizations::with_states([succeeded(), succeeded()])
        };
        let (done, metrics) = provision_counted(&aws, Progress::default()).await;
        done.expect("provisioned");
        assert_eq!(created(&aws), 1);
        assert_eq!(forged_count(&metrics), 0, "a name in common is no forgery");

        // Its FAILED end is not the order's outcome either.
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            ..ScriptedOrganizations::with_states([email_exists(), succeeded()])
        };
        provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(created(&aws), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_unsettled_delivery_nothing_found_means_wait_then_ask() {
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision_root(&aws, progress).await;
        let Err(ProvisionError::Waiting(Waiting::MaybeInFlight(next))) = err else {
            panic!("expected a wait, got {err:?}");
        };
        assert!(next.create_sent, "{next:?}");
        assert_eq!(
            created(&aws),
            0,
            "no CreateAccount while one may be in flight"
        );
        assert!(
            aws.calls()
                .contains(&"ListAccounts c@customer.example".to_owned())
        );

        // After the wait, the walk again, then the account is asked for.
        provision_root(&aws, next).await.expect("provisioned");
        assert_eq!(created(&aws), 1);

        // What the rare path finds is used at once.
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(created(&aws), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_create_account_is_recorded_and_waited_for() {
        let aws = ScriptedOrganizations {
            lost_creates: Arc::new(std::sync::Mutex::new(1)),
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Waiting(Waiting::MaybeInFlight(next))) = err else {
            panic!("expected a wait, got {err:?}");
        };
        assert!(next.create_sent);
        // The next attempt takes the rare path and finds the account the lost request made.
        let done = provision_root(&aws, next).await.expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(created(&aws), 1, "no second CreateAccount");
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_gate_finds_needs_no_slot() {
        let slots = Local::new(1);
        let _taken = slots.acquire("default").await.expect("slot");
        let (order, plan) = (order(), plan(Access::RootUser));
        // A verified account hint, and a create request id of an earlier attempt.
        let aws = ScriptedOrganizations {
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([succeeded(), succeeded()])
        };
        for progress in [
            Progress {
                account_id: Some("111122223333".into()),
                ..Progress::default()
            },
            Progress {
                create_request_id: Some("car-test".into()),
                ..Progress::default()
            },
        ] {
            provision(
                &Arc::new(aws.clone()),
                &slots,
                &order,
                &plan,
                progress,
                POLLING,
                &Metrics::default(),
            )
            .await
            .expect("provisioned without a slot");
        }
    }
}
