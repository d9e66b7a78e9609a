//! The customer's access to the new account: nothing more for the root user; for an IAM user,
//! the user made in the member account through its access role. A refusal there is settled by
//! the account's age (the member-refusal rule).
//!
//! The initial password is given out once (docs/contract.md §5): the user is tagged once the
//! event carrying it was confirmed ([`mark_credentials_issued`], run after the confirm), and a
//! later delivery that finds the tag leaves the login profile alone. A user with a login profile
//! but no tag (the worker stopped between setting the password and the confirm) gets a new
//! password, which is then published once.

use std::time::Duration;

use secrecy::SecretString;
use tracing::{debug, info};

use super::Polling;
use crate::aws::{AccountId, AwsError, MemberIam, Organizations, Retry};
use crate::domain::arn::PolicyArn;
use crate::domain::model::Access;
use crate::domain::names::IamUserName;
use crate::domain::password;
use crate::domain::progress::Granted;
use crate::retry::Reason;

/// Gives the customer `access` to `account`: the root user needs no call; an IAM user is made
/// (see [`iam_user`]), a refusal settled by the account's age (see [`member_refusal`]).
pub(super) async fn grant<O: Organizations>(
    aws: &O,
    account: &AccountId,
    access: &Access,
    polling: Polling,
) -> Result<Granted, AwsError> {
    match access {
        Access::RootUser => Ok(Granted::RootUser),
        Access::IamUser {
            user_name,
            policy_arns,
        } => match iam_user(aws, account, user_name, policy_arns).await {
            Ok(granted) => Ok(granted),
            Err(error) => Err(settle_refusal(aws, account, error, polling).await),
        },
    }
}

/// Makes the customer's IAM user in the new account, through its access role: the user, a
/// login profile with a new initial password (reset required), and the user's policies; or,
/// when the user is marked as having had its password given out, nothing more.
async fn iam_user<O: Organizations>(
    aws: &O,
    account: &AccountId,
    user_name: &IamUserName,
    policy_arns: &[PolicyArn],
) -> Result<Granted, AwsError> {
    let member = aws.member(account).await?;
    member.create_user(user_name).await?;
    if member.credentials_issued(user_name).await? {
        info!(iam_user_name = %user_name, "IAM user's password already given out: login profile left as it is");
        return Ok(Granted::AlreadyIssued {
            user_name: user_name.clone(),
        });
    }
    let password: SecretString = password::generate();
    member.set_login_profile(user_name, &password).await?;
    for arn in policy_arns {
        member.attach_user_policy(user_name, arn).await?;
    }
    info!(iam_user_name = %user_name, "IAM user ready");
    Ok(Granted::IamUser {
        user_name: user_name.clone(),
        password,
    })
}

/// Marks the IAM user `user_name` of `account` as having had its password given out, in the
/// event `event_id`; run once that event's publish is confirmed, before the order's ack.
///
/// # Errors
/// The `AssumeRole` or `TagUser` failure; the caller logs and counts it (a later delivery
/// would then set and publish a new password).
pub async fn mark_credentials_issued<O: Organizations>(
    aws: &O,
    account: &AccountId,
    user_name: &IamUserName,
    event_id: &str,
) -> Result<(), AwsError> {
    let member = aws.member(account).await?;
    member.mark_credentials_issued(user_name, event_id).await?;
    info!(iam_user_name = %user_name, event_id, "IAM user marked: its password was given out");
    Ok(())
}

/// Settles a [`Retry::WhileNew`] refusal inside `account` by the account's age (AWS's
/// `JoinedTimestamp`); any other error is returned as it is.
async fn settle_refusal<O: Organizations>(
    aws: &O,
    account: &AccountId,
    error: AwsError,
    polling: Polling,
) -> AwsError {
    if error.retry != Retry::WhileNew {
        return error;
    }
    let age = match aws.describe_account(account).await {
        Ok(found) => found
            .joined
            .and_then(|joined| std::time::SystemTime::now().duration_since(joined).ok()),
        Err(e) => {
            debug!(error = %e, "the refusing account's age could not be read: treated as new");
            None
        }
    };
    member_refusal(error, account, age, polling.member_ready)
}

/// A refusal inside a member account, decided by the account's `age` (unknown: new): transient
/// inside the readiness `window` (a brand-new account's access role is not usable at once),
/// permanent past it, with a message naming the step that was refused and what may deny it.
pub fn member_refusal(
    error: AwsError,
    account: &AccountId,
    age: Option<Duration>,
    window: Duration,
) -> AwsError {
    match age {
        Some(age) if age >= window => AwsError {
            retry: Retry::Permanent,
            code: Some(Reason::MemberAccessDenied.as_str().to_owned()),
            message: format!(
                "step {operation} in member account {account} was refused ({code}: {message}) {age} s after the account joined the organization, past the readiness window of {window} s (aws.member_account_ready_seconds): something denies the access role there, most likely a service control policy on the organization's root or on the account's OU that denies IAM actions (the worker attaches its own SCPs only after this step), or an account without the role aws.member_role_name; fix that, then replay the order",
                operation = error.operation,
                code = error.code.as_deref().unwrap_or("no error code"),
                message = error.message,
                age = age.as_secs(),
                window = window.as_secs(),
            ),
            ..error
        },
        _ => AwsError {
            retry: Retry::Transient,
            ..error
        },
    }
}

#[cfg(test)]
mod tests {
    //! The member-refusal rule, and how provisioning applies it.

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::aws::ExistingAccount;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::domain::progress::Progress;
    use crate::provision::ProvisionError;
    use crate::provision::fixtures::{account, after_checks, iam_user, plan, provision_plan};

    fn refusal(retry: Retry) -> AwsError {
        AwsError {
            retry,
            operation: "CreateUser",
            code: Some("AccessDenied".into()),
            message: "explicit deny in a service control policy".into(),
        }
    }

    #[test]
    fn a_refusal_in_a_member_account_is_permanent_only_past_the_readiness_window() {
        let account = AccountId("111122223333".into());
        let window = Duration::from_secs(300);
        // (age of the account, retry)
        let cases = [
            (None, Retry::Transient),
            (Some(Duration::ZERO), Retry::Transient),
            (Some(Duration::from_secs(299)), Retry::Transient),
            (Some(Duration::from_secs(300)), Retry::Permanent),
            (Some(Duration::from_secs(86_400)), Retry::Permanent),
        ];
        for (age, retry) in cases {
            let error = member_refusal(refusal(Retry::WhileNew), &account, age, window);
            assert_eq!(error.retry, retry, "{age:?}");
            if retry == Retry::Permanent {
                assert_eq!(
                    error.code.as_deref(),
                    Some(Reason::MemberAccessDenied.as_str())
                );
                assert!(
                    error.message.contains("step CreateUser"),
                    "{}",
                    error.message
                );
                assert!(
                    error.message.contains("service control policy"),
                    "{}",
                    error.message
                );
                assert!(error.message.contains("111122223333"), "{}", error.message);
            } else {
                assert_eq!(error.code.as_deref(), Some("AccessDenied"));
            }
        }
        let window = Duration::ZERO;
        let error = member_refusal(
            refusal(Retry::WhileNew),
            &account,
            Some(Duration::ZERO),
            window,
        );
        assert_eq!(error.retry, Retry::Permanent, "0: never waited out");
    }

    /// Provisions the IAM-user plan for an account that exists, with `aws`.
    async fn grant_to_existing(aws: &ScriptedOrganizations) -> Granted {
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
        };
        provision_plan(aws, &plan(iam_user()), progress)
            .await
            .expect("provisioned")
            .access
    }

    /// The IAM calls `aws` saw: without the checks of the progress's hints and the SCP.
    fn iam_calls(aws: &ScriptedOrganizations) -> Vec<String> {
        let not_iam = [
            "AttachPolicy",
            "DescribeAccount",
            "DescribeCreateAccountStatus",
        ];
        aws.calls()
            .into_iter()
            .filter(|c| !not_iam.iter().any(|op| c.starts_with(op)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_user_gets_a_password_and_is_marked_once_the_event_is_out() {
        let aws = ScriptedOrganizations::default();
        let granted = grant_to_existing(&aws).await;
        assert!(matches!(granted, Granted::IamUser { .. }), "{granted:?}");
        assert_eq!(
            iam_calls(&aws),
            [
                "AssumeRole 111122223333",
                "CreateUser admin",
                "ListUserTags admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
            ]
        );
        // What runs after the event's confirm.
        let user = IamUserName::parse("admin").expect("name");
        let account = AccountId("111122223333".into());
        mark_credentials_issued(&aws, &account, &user, "event-1")
            .await
            .expect("marked");
        assert_eq!(
            aws.issued_in.lock().expect("issued").as_deref(),
            Some("event-1")
        );
        assert!(
            aws.calls()
                .ends_with(&["AssumeRole 111122223333".into(), "TagUser admin".into()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_whose_password_was_given_out_keeps_its_login_profile() {
        let aws = ScriptedOrganizations {
            login_profile: Arc::new(Mutex::new(true)),
            issued_in: Arc::new(Mutex::new(Some("event-1".into()))),
            ..ScriptedOrganizations::default()
        };
        let granted = grant_to_existing(&aws).await;
        let Granted::AlreadyIssued { user_name } = granted else {
            panic!("expected already issued, got {granted:?}");
        };
        assert_eq!(user_name.as_str(), "admin");
        assert_eq!(
            iam_calls(&aws),
            [
                "AssumeRole 111122223333",
                "CreateUser admin",
                "ListUserTags admin"
            ],
            "no login profile call, no policy call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_password_set_but_never_published_is_replaced() {
        // The worker stopped between CreateLoginProfile and the event's confirm: a login
        // profile, no mark.
        let aws = ScriptedOrganizations {
            login_profile: Arc::new(Mutex::new(true)),
            ..ScriptedOrganizations::default()
        };
        let granted = grant_to_existing(&aws).await;
        assert!(matches!(granted, Granted::IamUser { .. }), "{granted:?}");
        assert_eq!(
            iam_calls(&aws),
            [
                "AssumeRole 111122223333",
                "CreateUser admin",
                "ListUserTags admin",
                "UpdateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn provisioning_asks_the_accounts_age_of_a_refusal_and_attaches_no_scp() {
        let joined = |ago: u64| Some(std::time::SystemTime::now() - Duration::from_secs(ago));
        for (ago, retry) in [(3600, Retry::Permanent), (10, Retry::Transient)] {
            let aws = ScriptedOrganizations {
                refuse_user: Some(refusal(Retry::WhileNew)),
                described: Some(ExistingAccount {
                    joined: joined(ago),
                    name: None,
                    status: "ACTIVE".into(),
                    ..account(Some("AS-1"))
                }),
                ..ScriptedOrganizations::default()
            };
            let progress = Progress {
                create_request_id: Some("car-test".into()),
                account_id: Some("111122223333".into()),
                ..Progress::default()
            };
            let err = provision_plan(&aws, &plan(iam_user()), progress).await;
            let Err(ProvisionError::Aws { error, progress }) = err else {
                panic!("expected an AWS error, got {err:?}");
            };
            assert_eq!(error.retry, retry, "{ago} s old");
            assert_eq!(progress.account_id.as_deref(), Some("111122223333"));
            assert!(
                !aws.calls().iter().any(|c| c.starts_with("AttachPolicy")),
                "no SCP before the user: {:?}",
                aws.calls()
            );
            // Other errors are not looked into.
            let throttled = AwsError {
                retry: Retry::Transient,
                ..refusal(Retry::Transient)
            };
            let aws = ScriptedOrganizations {
                refuse_user: Some(throttled.clone()),
                ..ScriptedOrganizations::default()
            };
            let progress = Progress {
                account_id: Some("111122223333".into()),
                ..Progress::default()
            };
            let err = provision_plan(&aws, &plan(iam_user()), progress).await;
            assert!(
                matches!(&err, Err(ProvisionError::Aws { error, .. }) if *error == throttled),
                "{err:?}"
            );
            assert!(
                !after_checks(&aws)
                    .iter()
                    .any(|c| c.starts_with("DescribeAccount"))
            );
        }
    }
}
