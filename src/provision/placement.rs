//! The account's place in its payer's organization: moved to its OU, then its SCPs attached;
//! one step, done after the customer's access (see [`super::provision`]). Each SCP attached is
//! remembered in the progress, so a retry attaches only the missing ones.

use std::collections::BTreeSet;

use tracing::{debug, info};

use crate::aws::{AccountId, AwsResult, Organizations};
use crate::domain::ids::{OuId, PolicyId};
use crate::domain::model::Plan;

/// Moves `account` to the plan's OU (if it names one and the account is elsewhere: the move
/// looks first, so it is safe to run again), then attaches the plan's SCPs that `attached`
/// does not hold yet, adding each to it once AWS accepted it. `attached` comes from a message:
/// it is first cut down to the plan's SCPs, then, if anything is left, to those AWS lists on
/// the account (`ListPoliciesForTarget`), so a forged header cannot keep an SCP off.
///
/// # Errors
/// The first AWS call that fails; `attached` then holds what was attached before it.
pub(super) async fn place<O: Organizations>(
    aws: &O,
    account: &AccountId,
    plan: &Plan,
    attached: &mut BTreeSet<PolicyId>,
) -> AwsResult<()> {
    place_in(
        aws,
        account,
        (
            plan.organizational_unit_id.as_ref(),
            &plan.service_control_policies,
        ),
        attached,
    )
    .await
}

/// [`place`] with its OU and SCPs given as `(organizational_unit_id, service_control_policies)`
/// rather than by a new account's plan (an existing account brought in places itself so too).
///
/// # Errors
/// The first AWS call that fails; `attached` then holds what was attached before it.
pub(crate) async fn place_in<O: Organizations>(
    aws: &O,
    account: &AccountId,
    (organizational_unit_id, service_control_policies): (Option<&OuId>, &[PolicyId]),
    attached: &mut BTreeSet<PolicyId>,
) -> AwsResult<()> {
    attached.retain(|id| service_control_policies.contains(id));
    if !attached.is_empty() {
        let on_aws = aws.attached_policies(account).await?;
        attached.retain(|id| on_aws.iter().any(|listed| listed == id.as_str()));
    }
    if let Some(parent) = organizational_unit_id {
        let moved = aws.place_account(account, parent).await?;
        if moved {
            info!(organizational_unit_id = %parent, "account moved to its organizational unit");
        }
    }
    for policy in service_control_policies {
        if attached.contains(policy) {
            continue;
        }
        aws.attach_policy(policy, account).await?;
        attached.insert(policy.clone());
        debug!(policy = %policy, "service control policy attached");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Placement once, before the SCPs, and not again once done.

    use std::sync::{Arc, Mutex};

    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{AwsError, Retry};
    use crate::domain::ids::PolicyId;
    use crate::domain::model::{Access, Plan};
    use crate::domain::progress::Progress;
    use crate::provision::ProvisionError;
    use crate::provision::fixtures::{
        after_checks, calls_after_creation_into_an_ou, ou_plan, provision_plan, provision_root,
    };

    #[tokio::test(start_paused = true)]
    async fn the_account_is_moved_to_its_ou_once_before_the_scps() {
        let after_creation = calls_after_creation_into_an_ou(Access::RootUser).await;
        let plan = ou_plan(Access::RootUser);
        assert_eq!(
            after_creation,
            [
                "ListParents 111122223333",
                "MoveAccount 111122223333 r-root ou-root-opco0001",
                "AttachPolicy p-abcd1234 111122223333",
            ]
        );

        // Delivered again after a failure before the SCPs: it is there, so it stays.
        let aws = ScriptedOrganizations {
            parent: Arc::new(Mutex::new("ou-root-opco0001".into())),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
        };
        provision_plan(&aws, &plan, progress.clone())
            .await
            .expect("provisioned");
        assert_eq!(
            after_checks(&aws),
            [
                "ListParents 111122223333",
                "AttachPolicy p-abcd1234 111122223333"
            ]
        );

        // Once the SCPs are attached, a retry asks AWS and changes nothing.
        let aws = ScriptedOrganizations {
            parent: Arc::new(Mutex::new("ou-root-opco0001".into())),
            attached_before: vec!["p-abcd1234".into()],
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            placed: true,
            policies_attached: scps(&["p-abcd1234"]).into_iter().collect(),
            ..progress
        };
        provision_plan(&aws, &plan, progress)
            .await
            .expect("provisioned");
        assert_eq!(
            after_checks(&aws),
            [
                "ListPoliciesForTarget 111122223333",
                "ListParents 111122223333"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scps_a_header_claims_attached_are_checked_with_aws() {
        let claimed = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            placed: true,
            policies_attached: scps(&["p-abcd1234"]).into_iter().collect(),
            ..Progress::default()
        };
        // Attached indeed: not again.
        let aws = ScriptedOrganizations {
            attached_before: vec!["p-abcd1234".into()],
            ..ScriptedOrganizations::default()
        };
        provision_root(&aws, claimed.clone())
            .await
            .expect("provisioned");
        assert_eq!(after_checks(&aws), ["ListPoliciesForTarget 111122223333"]);

        // A forged claim: AWS lists no such SCP on the account, so it is attached.
        let aws = ScriptedOrganizations::default();
        provision_root(&aws, claimed).await.expect("provisioned");
        assert_eq!(
            after_checks(&aws),
            [
                "ListPoliciesForTarget 111122223333",
                "AttachPolicy p-abcd1234 111122223333"
            ]
        );
    }

    fn scps(ids: &[&str]) -> Vec<PolicyId> {
        ids.iter()
            .map(|id| PolicyId::parse(id).expect("SCP id"))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_attaches_only_the_missing_scps() {
        let plan = Plan {
            service_control_policies: scps(&["p-aaaaaaaa", "p-bbbbbbbb", "p-cccccccc"]),
            ..ou_plan(Access::RootUser)
        };
        // The first attempt: the second attach fails; the first is remembered.
        let refused = AwsError {
            retry: Retry::Transient,
            operation: "AttachPolicy",
            code: Some("ConcurrentModificationException".into()),
            message: "busy".into(),
        };
        let aws = ScriptedOrganizations {
            fail_attach_of: Some(("p-bbbbbbbb".into(), refused)),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
        };
        let err = provision_plan(&aws, &plan, progress).await;
        let Err(ProvisionError::Aws { progress, .. }) = err else {
            panic!("expected an AWS error, got {err:?}");
        };
        assert_eq!(
            progress.policies_attached.iter().collect::<Vec<_>>(),
            scps(&["p-aaaaaaaa"]).iter().collect::<Vec<_>>()
        );
        assert!(!progress.placed);

        // The retry, with an id from the message that the plan does not name: ignored.
        let mut resumed = progress;
        resumed
            .policies_attached
            .insert(PolicyId::parse("p-zzzzzzzz").expect("id"));
        let aws = ScriptedOrganizations {
            parent: Arc::new(Mutex::new("ou-root-opco0001".into())),
            attached_before: vec!["p-aaaaaaaa".into()],
            ..ScriptedOrganizations::default()
        };
        provision_plan(&aws, &plan, resumed)
            .await
            .expect("provisioned");
        assert_eq!(
            after_checks(&aws),
            [
                "ListPoliciesForTarget 111122223333",
                "ListParents 111122223333",
                "AttachPolicy p-bbbbbbbb 111122223333",
                "AttachPolicy p-cccccccc 111122223333",
            ]
        );
    }
}
