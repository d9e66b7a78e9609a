//! `suspend` and `resume`: the deny-all SCP (`suspend_policy_id`) attached or detached.
//!
//! Ownership first: an account that is not a member of the payer's organization, or carries
//! another asset's tag (or none), gets `ACCOUNT_NOT_OURS` and no call that changes anything.
//! Both ways are idempotent: the account's own SCPs are read first (`ListPoliciesForTarget`),
//! and the policy is attached only when absent, detached only when present, so a second
//! suspend makes no `AttachPolicy` call and a second resume no `DetachPolicy` call.

use serde_json::{Map, json};

use super::{Owned, Request, Step, not_ours, ownership};
use crate::aws::{AccountId, Organizations};
use crate::domain::ids::PolicyId;
use crate::domain::progress::Progress;
use crate::report::{RESUMED, SUSPENDED};

/// Which way the deny-all SCP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Attach it (`suspend`).
    Attach,
    /// Detach it (`resume`).
    Detach,
}

/// Attaches the deny-all SCP, unless it is attached already; `aws.account.suspended`.
pub async fn suspend<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    policy: &PolicyId,
    progress: Progress,
) -> Step {
    turn(aws, request, account, policy, progress, Direction::Attach).await
}

/// Detaches the deny-all SCP, if it is attached; `aws.account.resumed`.
pub async fn resume<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    policy: &PolicyId,
    progress: Progress,
) -> Step {
    turn(aws, request, account, policy, progress, Direction::Detach).await
}

async fn turn<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    policy: &PolicyId,
    progress: Progress,
    direction: Direction,
) -> Step {
    let failed = |error| Step::Failed {
        error,
        progress: progress.clone(),
    };
    match ownership(aws, request, account).await {
        Ok(Owned::Ours(_)) => {}
        Ok(Owned::NotMember) => {
            return not_ours(
                request,
                account,
                "is not a member of the payer's organization",
            );
        }
        Ok(Owned::NotOurs(_)) => return not_ours(request, account, "is tagged for another asset"),
        Err(error) => return failed(error),
    }
    let attached = match aws.attached_policies(account).await {
        Ok(ids) => ids.iter().any(|id| id == policy.as_str()),
        Err(error) => return failed(error),
    };
    let (changed, name) = match direction {
        Direction::Attach if !attached => (aws.attach_policy(policy, account).await, SUSPENDED),
        Direction::Detach if attached => (aws.detach_policy(policy, account).await, RESUMED),
        Direction::Attach => (Ok(()), SUSPENDED),
        Direction::Detach => (Ok(()), RESUMED),
    };
    if let Err(error) = changed {
        return failed(error);
    }
    let mut fields = Map::new();
    fields.insert("suspend_policy_id".into(), json!(policy.as_str()));
    Step::Report(request.event(name, account, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{AwsError, ExistingAccount, Retry};
    use crate::lifecycle::testing::{Fixture, run_kind};
    use crate::report::Event;

    const ACCOUNT: &str = "111122223333";
    const DENY: &str = "p-deny0001";

    fn described(asset: Option<&str>) -> ExistingAccount {
        ExistingAccount {
            id: AccountId(ACCOUNT.into()),
            email: "c@customer.example".into(),
            asset_id: asset.map(str::to_owned),
            joined: None,
            name: None,
            status: "ACTIVE".into(),
        }
    }

    fn not_found() -> AwsError {
        AwsError {
            retry: Retry::Permanent,
            operation: "DescribeAccount",
            code: Some("AccountNotFoundException".into()),
            message: "no such account".into(),
        }
    }

    /// The kind, SCPs attached before, the account as `DescribeAccount` shows it (`None`: not a
    /// member), the changing calls expected, the event (or failure code).
    type Case<'a> = (
        &'a str,
        Vec<&'a str>,
        Option<ExistingAccount>,
        Vec<&'a str>,
        &'a str,
    );

    #[tokio::test]
    async fn suspend_and_resume_change_only_what_is_needed_and_only_on_our_account() {
        let attach = format!("AttachPolicy {DENY} {ACCOUNT}");
        let detach = format!("DetachPolicy {DENY} {ACCOUNT}");
        let ours = Some(described(Some("AS-1")));
        let other = Some(described(Some("AS-2")));
        let untagged = Some(described(None));
        let cases: Vec<Case<'_>> = vec![
            ("suspend", vec![], ours.clone(), vec![&attach], SUSPENDED),
            ("suspend", vec![DENY], ours.clone(), vec![], SUSPENDED),
            (
                "suspend",
                vec!["p-other001"],
                ours.clone(),
                vec![&attach],
                SUSPENDED,
            ),
            ("resume", vec![DENY], ours.clone(), vec![&detach], RESUMED),
            ("resume", vec![], ours.clone(), vec![], RESUMED),
            ("suspend", vec![], other.clone(), vec![], "ACCOUNT_NOT_OURS"),
            ("resume", vec![DENY], other, vec![], "ACCOUNT_NOT_OURS"),
            ("suspend", vec![], untagged, vec![], "ACCOUNT_NOT_OURS"),
            ("suspend", vec![], None, vec![], "ACCOUNT_NOT_OURS"),
            ("resume", vec![DENY], None, vec![], "ACCOUNT_NOT_OURS"),
        ];
        for (kind, before, account, changes, expected) in cases {
            let aws = ScriptedOrganizations {
                attached_before: before.iter().map(|p| (*p).to_owned()).collect(),
                described: account.clone(),
                ..ScriptedOrganizations::default()
            };
            if account.is_none() {
                aws.refuse
                    .lock()
                    .expect("refusals")
                    .insert("DescribeAccount", not_found());
            }
            let fixture = Fixture::new(kind, &format!("suspend_policy_id = \"{DENY}\""));
            let step = run_kind(&aws, &fixture, Progress::default()).await;
            let what = format!("{kind} with {before:?} on {account:?}");
            let made: Vec<String> = aws
                .calls()
                .into_iter()
                .filter(|c| c.starts_with("AttachPolicy") || c.starts_with("DetachPolicy"))
                .collect();
            assert_eq!(made, changes, "{what}");
            match step {
                Step::Report(Event::Later(event)) => {
                    assert_eq!(event.name, expected, "{what}");
                    assert_eq!(event.fields["suspend_policy_id"], DENY, "{what}");
                }
                Step::Report(event) => {
                    assert_eq!(event.failure_code(), Some(expected), "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_call_is_retried_from_where_it_stood() {
        let aws = ScriptedOrganizations {
            fail_attach: Some(AwsError {
                retry: Retry::Transient,
                operation: "AttachPolicy",
                code: Some("ConcurrentModificationException".into()),
                message: "busy".into(),
            }),
            ..ScriptedOrganizations::default()
        };
        let fixture = Fixture::new("suspend", &format!("suspend_policy_id = \"{DENY}\""));
        let step = run_kind(&aws, &fixture, Progress::default()).await;
        assert!(
            matches!(&step, Step::Failed { error, .. } if error.retry == Retry::Transient),
            "{step:?}"
        );
    }
}
