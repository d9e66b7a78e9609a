//! `cancel`: per `cancel_action`, the account closed, removed from the organization, or left.
//!
//! Ownership first, whatever the action (`none` included): an account that is not a member of
//! the payer's organization, or carries another asset's tag (or none), gets `ACCOUNT_NOT_OURS`
//! and nothing is touched. Then:
//! - `none`: `aws.account.cancelled`, no other call.
//! - `close`: `CloseAccount` unless the account is closing already, then its state is followed
//!   (`DescribeAccount`): `SUSPENDED` or `CLOSED` is `aws.account.closed`; still `ACTIVE` or
//!   `PENDING_CLOSURE` is a wait (`CLOSE_PENDING`) that holds no delivery, after which the
//!   account is looked at again, not closed again. AWS's close quota (10% of the members per 30
//!   days) is `aws.account.failed` `CLOSE_QUOTA_EXCEEDED`, not a retry.
//! - `remove`: `RemoveAccountFromOrganization`; AWS's refusal within 7 days of the account
//!   joining (`WAIT_PERIOD_ACTIVE`) is a wait (`REMOVAL_WAIT_PERIOD`) until then, spending no
//!   attempt. Once removed the account is no member, so a delivery that finds it gone reports
//!   it removed only when it knows an earlier one removed it (`x-step: removed`) or may have
//!   (it was redelivered after an unsettled end).
//!
//! Other constraint refusals are `aws.account.failed` with AWS's reason; transient failures are
//! retried by the pipeline.

use std::time::{Duration, SystemTime};

use serde_json::{Map, json};

use super::{Owned, Request, Step, Wait, not_ours, ownership};
use crate::aws::{AccountId, AwsError, ExistingAccount, Organizations, Retry};
use crate::domain::model::CancelAction;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::report::{CANCELLED, CLOSED, Event, REMOVED};
use crate::retry::Reason;

/// AWS's close quota refusal (`ConstraintViolationException` reason).
const CLOSE_QUOTA: &str = "CLOSE_ACCOUNT_QUOTA_EXCEEDED";
/// AWS's refusal of too many close requests at once: transient.
const CLOSE_RATE: &str = "CLOSE_ACCOUNT_REQUESTS_LIMIT_EXCEEDED";
/// AWS's refusal to remove an account within 7 days of its joining.
const WAIT_PERIOD: &str = "WAIT_PERIOD_ACTIVE";
/// How long after joining AWS refuses to remove an account.
const REMOVAL_WAIT_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest removal wait, when AWS still refuses past the 7 days by our clock.
const REMOVAL_WAIT_FLOOR: Duration = Duration::from_secs(60);
/// The longest a close is followed before the account is looked at again (the back-off of long
/// waits makes it shorter).
const CLOSE_WAIT: Duration = Duration::from_secs(3600);

/// Closes, removes or only reports.
pub async fn run<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    action: CancelAction,
    progress: Progress,
) -> Step {
    let found = match ownership(aws, request, account).await {
        Ok(Owned::Ours(found)) => found,
        Ok(Owned::NotMember)
            if action == CancelAction::Remove && (progress.removed || progress.maybe_in_flight) =>
        {
            return removed(request, account, progress);
        }
        Ok(Owned::NotMember) => {
            return not_ours(
                request,
                account,
                "is not a member of the payer's organization",
            );
        }
        Ok(Owned::NotOurs(_)) => return not_ours(request, account, "is tagged for another asset"),
        Err(error) => return Step::Failed { error, progress },
    };
    match action {
        CancelAction::None => Step::Report(request.event(CANCELLED, account, fields(action))),
        CancelAction::Close => close(aws, request, &found, progress).await,
        CancelAction::Remove => remove(aws, request, &found, progress).await,
    }
}

/// `CloseAccount` unless closing already, then where the account stands.
async fn close<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    found: &ExistingAccount,
    progress: Progress,
) -> Step {
    let account = &found.id;
    if found.is_closing() {
        return closed_or_pending(request, found, progress);
    }
    match aws.close_account(account).await {
        Ok(()) => {}
        Err(error) if error.code.as_deref() == Some(CLOSE_QUOTA) => {
            return request.rejected(&Rejection::new(
                FailureCode::CloseQuotaExceeded,
                format!(
                    "AWS refused to close account {account}: the organization closed its quota of member accounts (10% per 30 days); nothing was changed"
                ),
            ));
        }
        Err(mut error) if error.code.as_deref() == Some(CLOSE_RATE) => {
            error.retry = Retry::Transient;
            return Step::Failed { error, progress };
        }
        Err(error) => return refused(request, account, error, progress),
    }
    match aws.describe_account(account).await {
        Ok(now) => closed_or_pending(request, &now, progress),
        // The next delivery finds it closing and does not close it again.
        Err(error) => Step::Failed { error, progress },
    }
}

/// `aws.account.closed` once AWS shows the account closed; a wait while it is on its way.
fn closed_or_pending(request: &Request<'_>, found: &ExistingAccount, progress: Progress) -> Step {
    if matches!(found.status.as_str(), "SUSPENDED" | "CLOSED") {
        let mut fields = fields(CancelAction::Close);
        fields.insert(
            "account".into(),
            json!({"id": found.id.0, "status": found.status}),
        );
        return Step::Report(request.event(CLOSED, &found.id, fields));
    }
    let status = if found.status.is_empty() {
        "unknown"
    } else {
        found.status.as_str()
    };
    Step::Wait(Wait {
        reason: Reason::ClosePending,
        message: format!(
            "account {} is being closed (its state is {status}): looked at again later",
            found.id
        ),
        progress,
        wait: CLOSE_WAIT,
        notice: None,
    })
}

/// `RemoveAccountFromOrganization`, or a wait while AWS's 7 days run.
async fn remove<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    found: &ExistingAccount,
    progress: Progress,
) -> Step {
    let account = &found.id;
    match aws.remove_account(account).await {
        Ok(()) => removed(request, account, progress),
        Err(error) if error.code.as_deref() == Some(WAIT_PERIOD) => {
            let wait = removal_wait(found.joined, SystemTime::now());
            Step::Wait(Wait {
                reason: Reason::RemovalWaitPeriod,
                message: format!(
                    "AWS removes account {account} from the organization only 7 days after it joined: waiting up to {} s",
                    wait.as_secs()
                ),
                progress,
                wait,
                notice: None,
            })
        }
        // It was ours a moment ago: gone since, it was removed.
        Err(error) if error.code.as_deref() == Some("AccountNotFoundException") => {
            removed(request, account, progress)
        }
        Err(error) => refused(request, account, error, progress),
    }
}

/// How long until AWS's 7 days since `joined` are over, at least a minute; 7 days when AWS did
/// not say when the account joined.
fn removal_wait(joined: Option<SystemTime>, now: SystemTime) -> Duration {
    joined.map_or(REMOVAL_WAIT_PERIOD, |joined| {
        (joined + REMOVAL_WAIT_PERIOD)
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .max(REMOVAL_WAIT_FLOOR)
    })
}

/// `aws.account.removed`; a delivery whose settling fails carries `x-step: removed` on.
fn removed(request: &Request<'_>, account: &AccountId, progress: Progress) -> Step {
    let mut event = request.event(REMOVED, account, fields(CancelAction::Remove));
    if let Event::Later(later) = &mut event {
        later.progress = Progress {
            removed: true,
            ..progress
        };
    }
    Step::Report(event)
}

/// A failed close or removal: a constraint AWS gave a reason for is `aws.account.failed` with
/// that reason (the same call fails again); anything else goes to the pipeline.
fn refused(
    request: &Request<'_>,
    account: &AccountId,
    error: AwsError,
    progress: Progress,
) -> Step {
    match constraint_reason(&error) {
        Some(reason) => request.rejected(&Rejection::new(
            FailureCode::Aws(reason.to_owned()),
            format!(
                "AWS refused {} of account {account} ({reason}): {}",
                error.operation, error.message
            ),
        )),
        None => Step::Failed { error, progress },
    }
}

/// The reason of a permanent `ConstraintViolationException`: the AWS side writes it as the
/// error's code (`MEMBER_ACCOUNT_PAYMENT_INSTRUMENT_REQUIRED`), in upper case with
/// underscores, unlike an exception's name (`AccessDeniedException`).
fn constraint_reason(error: &AwsError) -> Option<&str> {
    let code = error.code.as_deref()?;
    let reason = error.retry == Retry::Permanent
        && code.contains('_')
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    reason.then_some(code)
}

/// The fields every cancel event has: `cancel_action`.
fn fields(action: CancelAction) -> Map<String, serde_json::Value> {
    let mut fields = Map::new();
    fields.insert("cancel_action".into(), json!(action.as_str()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::ScriptedOrganizations;
    use crate::lifecycle::testing::{Fixture, run_kind};

    const ACCOUNT: &str = "111122223333";

    fn account(asset: Option<&str>, status: &str) -> ExistingAccount {
        ExistingAccount {
            id: AccountId(ACCOUNT.into()),
            email: "c@customer.example".into(),
            asset_id: asset.map(str::to_owned),
            joined: Some(SystemTime::now()),
            name: None,
            status: status.into(),
        }
    }

    fn refusal(operation: &'static str, code: &str, retry: Retry) -> AwsError {
        AwsError {
            retry,
            operation,
            code: Some(code.into()),
            message: "refused".into(),
        }
    }

    /// What a case ends with.
    #[derive(Debug, PartialEq)]
    enum End {
        Event(&'static str),
        Failed(&'static str),
        Wait(Reason),
        Pipeline,
    }

    struct Case {
        what: &'static str,
        action: &'static str,
        described: Option<ExistingAccount>,
        refuse: Vec<(&'static str, AwsError)>,
        status_after_close: Option<&'static str>,
        progress: Progress,
        changes: Vec<&'static str>,
        end: End,
    }

    fn case(what: &'static str, action: &'static str, end: End) -> Case {
        Case {
            what,
            action,
            described: None,
            refuse: Vec::new(),
            status_after_close: None,
            progress: Progress::default(),
            changes: Vec::new(),
            end,
        }
    }

    fn not_member() -> (&'static str, AwsError) {
        (
            "DescribeAccount",
            refusal(
                "DescribeAccount",
                "AccountNotFoundException",
                Retry::Permanent,
            ),
        )
    }

    #[tokio::test]
    async fn each_action_does_what_it_says_once_and_only_on_our_account() {
        let close = "CloseAccount 111122223333";
        let remove = "RemoveAccountFromOrganization 111122223333";
        let redelivered = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let cases = vec![
            case("none reports", "none", End::Event(CANCELLED)),
            Case {
                described: Some(account(Some("AS-2"), "ACTIVE")),
                ..case(
                    "none on another asset's",
                    "none",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                changes: vec![close],
                ..case("close", "close", End::Event(CLOSED))
            },
            Case {
                described: Some(account(Some("AS-1"), "SUSPENDED")),
                ..case("close of a closed account", "close", End::Event(CLOSED))
            },
            Case {
                described: Some(account(Some("AS-1"), "PENDING_CLOSURE")),
                ..case(
                    "close of a closing account",
                    "close",
                    End::Wait(Reason::ClosePending),
                )
            },
            Case {
                status_after_close: Some("PENDING_CLOSURE"),
                changes: vec![close],
                ..case(
                    "close still on its way",
                    "close",
                    End::Wait(Reason::ClosePending),
                )
            },
            Case {
                refuse: vec![(
                    "CloseAccount",
                    refusal("CloseAccount", CLOSE_QUOTA, Retry::Permanent),
                )],
                changes: vec![close],
                ..case(
                    "close over quota",
                    "close",
                    End::Failed("CLOSE_QUOTA_EXCEEDED"),
                )
            },
            Case {
                refuse: vec![(
                    "CloseAccount",
                    refusal("CloseAccount", CLOSE_RATE, Retry::Permanent),
                )],
                changes: vec![close],
                ..case("close rate limited", "close", End::Pipeline)
            },
            Case {
                refuse: vec![(
                    "CloseAccount",
                    refusal("CloseAccount", "AccessDeniedException", Retry::Permanent),
                )],
                changes: vec![close],
                ..case("close denied", "close", End::Pipeline)
            },
            Case {
                described: Some(account(Some("AS-2"), "ACTIVE")),
                ..case(
                    "close of another asset's",
                    "close",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                described: Some(account(None, "ACTIVE")),
                ..case(
                    "close of an untagged",
                    "close",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                refuse: vec![not_member()],
                ..case(
                    "close of a non-member",
                    "close",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                changes: vec![remove],
                ..case("remove", "remove", End::Event(REMOVED))
            },
            Case {
                refuse: vec![(
                    "RemoveAccountFromOrganization",
                    refusal(
                        "RemoveAccountFromOrganization",
                        WAIT_PERIOD,
                        Retry::Permanent,
                    ),
                )],
                changes: vec![remove],
                ..case(
                    "remove within 7 days",
                    "remove",
                    End::Wait(Reason::RemovalWaitPeriod),
                )
            },
            Case {
                refuse: vec![(
                    "RemoveAccountFromOrganization",
                    refusal(
                        "RemoveAccountFromOrganization",
                        "MEMBER_ACCOUNT_PAYMENT_INSTRUMENT_REQUIRED",
                        Retry::Permanent,
                    ),
                )],
                changes: vec![remove],
                ..case(
                    "remove without payment",
                    "remove",
                    End::Failed("MEMBER_ACCOUNT_PAYMENT_INSTRUMENT_REQUIRED"),
                )
            },
            Case {
                refuse: vec![(
                    "RemoveAccountFromOrganization",
                    refusal(
                        "RemoveAccountFromOrganization",
                        "ConcurrentModificationException",
                        Retry::Transient,
                    ),
                )],
                changes: vec![remove],
                ..case("remove busy", "remove", End::Pipeline)
            },
            Case {
                refuse: vec![not_member()],
                ..case(
                    "remove of a non-member",
                    "remove",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                refuse: vec![not_member()],
                progress: Progress {
                    removed: true,
                    ..Progress::default()
                },
                ..case("remove, removed before", "remove", End::Event(REMOVED))
            },
            Case {
                refuse: vec![not_member()],
                progress: redelivered.clone(),
                ..case("remove, redelivered", "remove", End::Event(REMOVED))
            },
            Case {
                refuse: vec![not_member()],
                progress: redelivered,
                ..case(
                    "close, redelivered",
                    "close",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
            Case {
                described: Some(account(Some("AS-2"), "ACTIVE")),
                ..case(
                    "remove of another asset's",
                    "remove",
                    End::Failed("ACCOUNT_NOT_OURS"),
                )
            },
        ];
        for case in cases {
            let aws = ScriptedOrganizations {
                described: case.described.clone(),
                status_after_close: case.status_after_close.map(str::to_owned),
                ..ScriptedOrganizations::default()
            };
            aws.refuse.lock().expect("refusals").extend(case.refuse);
            let fixture = Fixture::new("cancel", &format!("cancel_action = \"{}\"", case.action));
            let step = run_kind(&aws, &fixture, case.progress).await;
            let changes: Vec<String> = aws
                .calls()
                .into_iter()
                .filter(|c| c.starts_with("CloseAccount") || c.starts_with("RemoveAccount"))
                .collect();
            assert_eq!(changes, case.changes, "{}", case.what);
            let end = match &step {
                Step::Report(Event::Later(event)) => {
                    assert_eq!(event.fields["cancel_action"], case.action, "{}", case.what);
                    assert_eq!(
                        event.progress.removed,
                        event.name == REMOVED,
                        "{}",
                        case.what
                    );
                    End::Event(event.name)
                }
                Step::Report(event) => End::Failed(match event.failure_code() {
                    Some("ACCOUNT_NOT_OURS") => "ACCOUNT_NOT_OURS",
                    Some("CLOSE_QUOTA_EXCEEDED") => "CLOSE_QUOTA_EXCEEDED",
                    Some("MEMBER_ACCOUNT_PAYMENT_INSTRUMENT_REQUIRED") => {
                        "MEMBER_ACCOUNT_PAYMENT_INSTRUMENT_REQUIRED"
                    }
                    other => panic!("{}: {other:?}", case.what),
                }),
                Step::Wait(wait) => End::Wait(wait.reason.clone()),
                Step::Failed { .. } => End::Pipeline,
            };
            assert_eq!(end, case.end, "{}", case.what);
        }
    }

    #[test]
    fn the_removal_waits_until_seven_days_after_joining() {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(removal_wait(Some(now), now), REMOVAL_WAIT_PERIOD);
        assert_eq!(removal_wait(Some(now - 2 * day), now), 5 * day);
        assert_eq!(removal_wait(Some(now - 8 * day), now), REMOVAL_WAIT_FLOOR);
        assert_eq!(removal_wait(None, now), REMOVAL_WAIT_PERIOD);
    }

    #[test]
    fn only_a_constraint_reason_is_a_business_failure() {
        let reason = |code: &str, retry| {
            constraint_reason(&refusal("RemoveAccountFromOrganization", code, retry))
                .map(str::to_owned)
        };
        assert_eq!(
            reason("MASTER_ACCOUNT_MISSING_CONTACT_INFO", Retry::Permanent).as_deref(),
            Some("MASTER_ACCOUNT_MISSING_CONTACT_INFO")
        );
        assert_eq!(reason("AccessDeniedException", Retry::Permanent), None);
        assert_eq!(reason("WAIT_PERIOD_ACTIVE", Retry::Transient), None);
        assert_eq!(reason("ABC", Retry::Permanent), None);
    }
}
