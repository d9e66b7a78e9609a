//! The account's place in its payer's organization: moved to its OU, then its SCPs attached;
//! one step, done after the customer's access (see [`super::provision`]).

use tracing::{debug, info};

use crate::aws::{AccountId, AwsResult, Organizations};
use crate::domain::model::Plan;

/// Moves `account` to the plan's OU (if it names one and the account is elsewhere), then
/// attaches the plan's SCPs; both accept what is already done.
///
/// # Errors
/// The first AWS call that fails.
pub(super) async fn place<O: Organizations>(
    aws: &O,
    account: &AccountId,
    plan: &Plan,
) -> AwsResult<()> {
    if let Some(parent) = &plan.organizational_unit_id {
        let moved = aws.place_account(account, parent).await?;
        if moved {
            info!(organizational_unit_id = %parent, "account moved to its organizational unit");
        }
    }
    for policy in &plan.service_control_policies {
        aws.attach_policy(policy, account).await?;
        debug!(policy = %policy, "service control policy attached");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Placement once, before the SCPs, and not again once done.

    use std::sync::{Arc, Mutex};

    use crate::aws::fake::ScriptedOrganizations;

    use crate::domain::model::Access;
    use crate::domain::progress::Progress;
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

        // Once the SCPs are attached, the placement is done too.
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            policies_attached: true,
            ..progress
        };
        provision_plan(&aws, &plan, progress)
            .await
            .expect("provisioned");
        assert_eq!(after_checks(&aws), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn attached_policies_are_not_attached_again() {
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            policies_attached: true,
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(after_checks(&aws), Vec::<String>::new());
    }
}
