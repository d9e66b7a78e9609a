//! An existing account brought in by invitation (`order_mode = existing_account`,
//! docs/contract.md §10). AWS is the record: the account's tags say whether it already joined
//! for this asset, and the organization's handshakes say which invitation is this asset's (its
//! notes name the asset). The `x-handshake-id` a delivery carries is only a hint of which one
//! to follow. Nothing holds a delivery while the customer takes their time: an open invitation
//! is a long wait ([`Reason::InvitationPending`]).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::{Owned, Request, Step, Wait, ownership};
use crate::aws::{
    AccountId, AwsError, ExistingAccount, Handshake, HandshakeState, Invitation, Organizations,
    Retry,
};
use crate::domain::ids::{OuId, PolicyId, TemplateId};
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::provision::{account_tags, place_in};
use crate::report::{Event, INVITED, PROVISIONED};
use crate::retry::Reason;

/// How long AWS keeps an invitation open: the wait's bound when AWS gives no expiry.
const INVITATION_LIFETIME: Duration = Duration::from_secs(15 * 24 * 3600);

/// The shortest bound on an open invitation's wait, when its expiry is (nearly) past: AWS
/// marks it expired soon, and the next look reports that.
const LEAST_WAIT: Duration = Duration::from_secs(60);

/// AWS's longest handshake notes.
const NOTES_MAX_CHARS: usize = 1024;

/// `HandshakeConstraintViolationException` reasons that are about the invited account: the
/// customer must name another one (or settle with AWS first).
const ACCOUNT_REASONS: &[&str] = &[
    "ALREADY_IN_AN_ORGANIZATION",
    "ORGANIZATION_FROM_DIFFERENT_SELLER_OF_RECORD",
    "PAYMENT_INSTRUMENT_REQUIRED",
    "PAST_DUE_INVOICE",
    "SOURCE_AND_TARGET_CANNOT_MATCH",
    "TARGET_ACCOUNT_VALIDATION_FAILURE",
    "UNUSED_PREPAYMENT_BALANCE",
];

/// `HandshakeConstraintViolationException` reasons that are rate limits: tried again later.
const RATE_REASONS: &[&str] = &[
    "HANDSHAKE_RATE_LIMIT_EXCEEDED",
    "ORGANIZATION_MEMBERSHIP_CHANGE_RATE_LIMIT_EXCEEDED",
];

/// Where the account goes once it joined, and the template reported.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// SCPs attached to it.
    pub service_control_policies: &'a [PolicyId],
    /// The OU it is moved to, if any.
    pub organizational_unit_id: Option<&'a OuId>,
    /// `existing_account_template_id`.
    pub template_id: Option<&'a TemplateId>,
}

/// Brings `account` in: reported at once if it already joined for this asset, else invited
/// (once) and followed until the customer answers; once it joined, placed in its OU with its
/// SCPs and reported `provisioned` with `access.kind = "existing"`.
pub async fn run<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    placement: Placement<'_>,
    progress: Progress,
) -> Step {
    match bring_in(aws, request, account, placement, &progress).await {
        Ok(step) => step,
        Err(error) => Step::Failed { error, progress },
    }
}

/// The steps of [`run`]; an AWS call that fails ends them (placement reports its own failure,
/// with the SCPs it attached).
async fn bring_in<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    placement: Placement<'_>,
    progress: &Progress,
) -> Result<Step, AwsError> {
    match ownership(aws, request, account).await? {
        Owned::Ours(found) => {
            info!(account = %account, "the account is a member under this asset: placing it");
            Ok(place_and_report(aws, request, found, placement, progress).await)
        }
        Owned::NotOurs(found) if found.asset_id.is_some() => Ok(not_eligible(
            request,
            account,
            "is a member of the payer's organization under another asset",
        )),
        Owned::NotOurs(found) => {
            // Joined by this asset's invitation, whose tags AWS did not put on it: tag it. An
            // untagged member without one may be the provider's own account: never adopted.
            if accepted_invitation(aws, request, account, progress)
                .await?
                .is_none()
            {
                return Ok(not_eligible(
                    request,
                    account,
                    "is a member of the payer's organization that no invitation of this asset brought in",
                ));
            }
            tag_place_and_report(aws, request, found, placement, progress).await
        }
        Owned::NotMember => follow_or_invite(aws, request, account, placement, progress).await,
    }
}

/// An account that joined by this asset's invitation without the invitation's tags: tagged,
/// then placed and reported.
async fn tag_place_and_report<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    mut found: ExistingAccount,
    placement: Placement<'_>,
    progress: &Progress,
) -> Result<Step, AwsError> {
    warn!(account = %found.id, "the account joined by this asset's invitation without its tags: tagging it");
    aws.tag_account(&found.id, &account_tags(request.order))
        .await?;
    found.asset_id = Some(request.order.asset_id.to_string());
    Ok(place_and_report(aws, request, found, placement, progress).await)
}

/// Whether `handshake` is this asset's invitation of `account`: it invites that account and its
/// notes name the asset.
fn is_ours(handshake: &Handshake, account: &AccountId, asset_id: &str) -> bool {
    handshake.account.as_deref() == Some(account.0.as_str())
        && handshake
            .notes
            .as_deref()
            .is_some_and(|notes| names_asset(notes, asset_id))
}

/// Whether `notes` name `asset_id` as a word of their own (`AS-1` is not named by `AS-12`).
fn names_asset(notes: &str, asset_id: &str) -> bool {
    notes
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | ':'))
        .any(|word| word == asset_id)
}

/// The notes of the asset's invitation: the ids the customer's invitation names.
fn notes(request: &Request<'_>) -> String {
    let notes = format!(
        "Connect asset {} (request {})",
        request.order.asset_id, request.order.request_id
    );
    notes.chars().take(NOTES_MAX_CHARS).collect()
}

/// The handshake the delivery's `x-handshake-id` names, when AWS shows it is this asset's
/// invitation of the account; a hint that does not hold is dropped.
async fn hinted<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    progress: &Progress,
) -> Result<Option<Handshake>, AwsError> {
    let Some(id) = &progress.handshake_id else {
        return Ok(None);
    };
    match aws.describe_handshake(id).await {
        Ok(handshake) if is_ours(&handshake, account, request.order.asset_id.as_str()) => {
            Ok(Some(handshake))
        }
        Ok(_) => {
            warn!(handshake_id = %id, "the delivery's handshake is not this asset's invitation of the account: ignored");
            Ok(None)
        }
        Err(e) if e.code.as_deref() == Some("HandshakeNotFoundException") => {
            warn!(handshake_id = %id, "the delivery's handshake is unknown to AWS: ignored");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// This asset's accepted invitation of the account, if any: the one the delivery follows, else
/// one the organization lists.
async fn accepted_invitation<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    progress: &Progress,
) -> Result<Option<Handshake>, AwsError> {
    if let Some(handshake) = hinted(aws, request, account, progress).await?
        && handshake.state == HandshakeState::Accepted
    {
        return Ok(Some(handshake));
    }
    let asset = request.order.asset_id.as_str();
    Ok(aws
        .find_invitations(account)
        .await?
        .into_iter()
        .find(|h| h.state == HandshakeState::Accepted && is_ours(h, account, asset)))
}

/// The account is not a member: follow the invitation this delivery names, else the open one
/// the organization lists, else invite the account.
async fn follow_or_invite<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    placement: Placement<'_>,
    progress: &Progress,
) -> Result<Step, AwsError> {
    if let Some(handshake) = hinted(aws, request, account, progress).await? {
        return match handshake.state {
            HandshakeState::Open | HandshakeState::Other(_) => {
                Ok(pending(request, account, &handshake, progress))
            }
            // Accepted since the account was looked at: look again.
            HandshakeState::Accepted => match ownership(aws, request, account).await? {
                Owned::NotMember => Err(AwsError {
                    retry: Retry::Transient,
                    operation: "DescribeAccount",
                    code: Some("AccountNotFoundException".into()),
                    message: format!(
                        "invitation {} was accepted, but account {account} is not visible in the organization yet",
                        handshake.id
                    ),
                }),
                Owned::Ours(found) => {
                    Ok(place_and_report(aws, request, found, placement, progress).await)
                }
                Owned::NotOurs(found) if found.asset_id.is_some() => Ok(not_eligible(
                    request,
                    account,
                    "is a member of the payer's organization under another asset",
                )),
                Owned::NotOurs(found) => {
                    Ok(tag_place_and_report(aws, request, found, placement, progress).await?)
                }
            },
            HandshakeState::Declined | HandshakeState::Canceled => Ok(ended(
                request,
                account,
                &handshake,
                FailureCode::InvitationDeclined,
            )),
            HandshakeState::Expired => Ok(ended(
                request,
                account,
                &handshake,
                FailureCode::InvitationExpired,
            )),
        };
    }
    let asset = request.order.asset_id.as_str();
    let invitations = aws.find_invitations(account).await?;
    let open = |h: &&Handshake| matches!(h.state, HandshakeState::Open | HandshakeState::Other(_));
    if let Some(theirs) = invitations
        .iter()
        .filter(open)
        .find(|h| !is_ours(h, account, asset))
    {
        info!(handshake_id = %theirs.id, "the account has an open invitation that is not this asset's");
        return Ok(not_eligible(
            request,
            account,
            "has an open invitation into the payer's organization for another asset",
        ));
    }
    if let Some(ours) = invitations
        .iter()
        .filter(open)
        .find(|h| is_ours(h, account, asset))
    {
        return Ok(pending(request, account, ours, progress));
    }
    // None open: a first delivery, or the customer's new attempt after a closed one.
    invite(aws, request, account, progress).await
}

/// `InviteAccountToOrganization`, then the wait with `aws.account.invited` as its notice.
async fn invite<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
    progress: &Progress,
) -> Result<Step, AwsError> {
    let invitation = Invitation {
        account: account.clone(),
        notes: notes(request),
        tags: account_tags(request.order),
    };
    match aws.invite_account(&invitation).await {
        Ok(handshake) => {
            info!(handshake_id = %handshake.id, account = %account, "account invited");
            Ok(pending(request, account, &handshake, progress))
        }
        Err(e) => match e.code.as_deref() {
            Some(reason) if ACCOUNT_REASONS.contains(&reason) => Ok(not_eligible(
                request,
                account,
                &format!("cannot be invited into the payer's organization ({reason})"),
            )),
            Some(reason) if RATE_REASONS.contains(&reason) => Err(AwsError {
                retry: Retry::Transient,
                ..e
            }),
            // An invitation AWS holds open that the organization's list did not show yet:
            // looked for again on the next delivery.
            Some("DuplicateHandshakeException") => {
                let mut progress = progress.clone();
                progress.handshake_id = None;
                Ok(Step::Wait(Wait {
                    reason: Reason::Aws("DuplicateHandshakeException".into()),
                    message: format!(
                        "AWS holds an invitation of account {account} open that is not listed yet: looking again"
                    ),
                    progress,
                    wait: request.waits.order_busy,
                    notice: None,
                }))
            }
            _ => Err(e),
        },
    }
}

/// The wait on an open invitation; `aws.account.invited` is published first unless this
/// delivery already followed it (a lost event is worse than a duplicate).
fn pending(
    request: &Request<'_>,
    account: &AccountId,
    handshake: &Handshake,
    progress: &Progress,
) -> Step {
    let announced = progress.handshake_id.as_deref() == Some(handshake.id.as_str());
    let notice = (!announced).then(|| invited(request, account, handshake));
    let mut progress = progress.clone();
    progress.handshake_id = Some(handshake.id.clone());
    let wait = handshake
        .expires_at
        .map_or(INVITATION_LIFETIME, |at| {
            at.duration_since(SystemTime::now()).unwrap_or_default()
        })
        .max(LEAST_WAIT);
    Step::Wait(Wait {
        reason: Reason::InvitationPending,
        message: format!(
            "invitation {} of account {account} waits for the account's owner{}",
            handshake.id,
            expiry(handshake).map_or_else(String::new, |at| format!(" (it expires {at})"))
        ),
        progress,
        wait,
        notice,
    })
}

/// `expires_at` in RFC 3339, when AWS gave it.
fn expiry(handshake: &Handshake) -> Option<String> {
    handshake
        .expires_at
        .map(|at| DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `aws.account.invited` {`handshake_id`, `expires_at`}.
fn invited(request: &Request<'_>, account: &AccountId, handshake: &Handshake) -> Event {
    let mut fields = Map::new();
    fields.insert("handshake_id".into(), json!(handshake.id));
    fields.insert("expires_at".into(), json!(expiry(handshake)));
    request.event(INVITED, account, fields)
}

/// `INVITATION_DECLINED` or `INVITATION_EXPIRED` for the invitation this delivery followed.
fn ended(
    request: &Request<'_>,
    account: &AccountId,
    handshake: &Handshake,
    code: FailureCode,
) -> Step {
    let how = match handshake.state {
        HandshakeState::Canceled => "was cancelled",
        HandshakeState::Expired => "expired before it was accepted",
        _ => "was declined",
    };
    info!(handshake_id = %handshake.id, code = code.as_str(), "the invitation ended unaccepted");
    request.rejected(&Rejection::new(
        code,
        format!(
            "the invitation {} of account {account} {how}; nothing was changed",
            handshake.id
        ),
    ))
}

/// `ACCOUNT_NOT_ELIGIBLE`: the account `why`; nothing was changed.
fn not_eligible(request: &Request<'_>, account: &AccountId, why: &str) -> Step {
    info!(account = %account, why, "account not eligible");
    request.rejected(&Rejection::new(
        FailureCode::AccountNotEligible,
        format!("account {account} {why}; nothing was changed"),
    ))
}

/// Places the joined account (OU, SCPs; each only if missing) and reports it provisioned.
async fn place_and_report<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    found: ExistingAccount,
    placement: Placement<'_>,
    progress: &Progress,
) -> Step {
    // Every SCP is claimed attached, so that AWS's list decides which are missing: an account
    // reported before is not attached to again.
    let mut attached: BTreeSet<PolicyId> =
        placement.service_control_policies.iter().cloned().collect();
    let placed = place_in(
        aws,
        &found.id,
        (
            placement.organizational_unit_id,
            placement.service_control_policies,
        ),
        &mut attached,
    )
    .await;
    if let Err(error) = placed {
        let mut progress = progress.clone();
        progress.policies_attached = attached;
        return Step::Failed { error, progress };
    }
    info!(account = %found.id, "existing account placed: reporting it");
    Step::Report(request.event(
        PROVISIONED,
        &found.id,
        provisioned_fields(&found, placement),
    ))
}

/// The fields of an existing account's `aws.account.provisioned`.
fn provisioned_fields(found: &ExistingAccount, placement: Placement<'_>) -> Map<String, Value> {
    let id = &found.id.0;
    let console_url = format!("https://{id}.signin.aws.amazon.com/console");
    let mut fields = Map::new();
    fields.insert(
        "account".into(),
        json!({"id": id, "email": found.email, "name": found.name, "create_request_id": null}),
    );
    fields.insert(
        "access".into(),
        json!({"kind": "existing", "console_url": console_url}),
    );
    fields.insert(
        "service_control_policies".into(),
        json!(placement.service_control_policies),
    );
    fields.insert(
        "template".into(),
        json!({
            "name": "existing_account",
            "id": placement.template_id,
            "params": {"aws_account_id": id, "aws_account_email": found.email},
        }),
    );
    fields
}

#[cfg(test)]
mod tests {
    //! The states an existing account and its invitations can be in, and what one delivery
    //! does about each, against the scripted fake.

    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::super::{Request, Step, run as run_later};
    use crate::aws::fake::ScriptedOrganizations;
    use crate::aws::{AwsError, ExistingAccount, Handshake, HandshakeState, Retry};
    use crate::domain::ids::{OuId, PolicyId};
    use crate::domain::model::{LaterKind, LaterPlan};
    use crate::domain::order::{ConnectionType, PartialIds, PurchaseRequest, parse};
    use crate::domain::progress::Progress;
    use crate::observability::Metrics;
    use crate::retry::{Reason, Waits};

    const ACCOUNT: &str = "111122223333";

    fn order() -> PurchaseRequest {
        let body = json!({
            "id": "PR-1-2", "type": "purchase",
            "asset": {
                "id": "AS-1", "marketplace": {"id": "MP-1"},
                "tiers": {"customer": {"id": "TA-1", "name": "C"}},
                "params": [
                    {"id": "order_mode", "value": "existing_account"},
                    {"id": "aws_account_id", "value": ACCOUNT},
                ],
            }
        });
        parse(body.to_string().as_bytes()).expect("valid request")
    }

    fn plan() -> LaterPlan {
        LaterPlan {
            kind: LaterKind::Existing {
                service_control_policies: vec![PolicyId::parse("p-abcd1234").expect("id")],
                organizational_unit_id: Some(OuId::parse("ou-root-opco0001").expect("id")),
                template_id: None,
            },
            model: None,
            payer: "default".into(),
            connection: ConnectionType::Production,
            account_id: Some(ACCOUNT.into()),
        }
    }

    fn handshake(id: &str, asset: &str, state: HandshakeState) -> Handshake {
        Handshake {
            id: id.into(),
            account: Some(ACCOUNT.into()),
            state,
            expires_at: None,
            notes: Some(format!("Connect asset {asset} (request PR-0-0)")),
        }
    }

    fn member(tag: Option<&str>) -> ExistingAccount {
        ExistingAccount {
            id: crate::aws::AccountId(ACCOUNT.into()),
            email: "owner@customer.example".into(),
            asset_id: tag.map(str::to_owned),
            joined: None,
            name: Some("Owner".into()),
            status: "ACTIVE".into(),
        }
    }

    /// Where the account is: not a member, or a member with this asset tag.
    #[derive(Clone, Copy)]
    enum Account {
        Outside,
        Member(Option<&'static str>),
    }

    /// What one delivery ends with.
    #[derive(Debug, PartialEq)]
    enum Ends {
        Provisioned,
        Failed(&'static str),
        /// Waits on the invitation, with `aws.account.invited` first or not.
        Pending {
            announced: bool,
        },
        Waits(&'static str),
        Transient,
    }

    struct Case {
        name: &'static str,
        account: Account,
        handshakes: Vec<Handshake>,
        hint: Option<&'static str>,
        refuse_invite: Option<&'static str>,
        ends: Ends,
        /// The calls that change something (invite, tag, move, attach), in order.
        changes: &'static [&'static str],
    }

    async fn deliver(case: &Case) -> (Step, ScriptedOrganizations) {
        let aws = ScriptedOrganizations {
            handshakes: Arc::new(Mutex::new(case.handshakes.clone())),
            not_member: Arc::new(Mutex::new(matches!(case.account, Account::Outside))),
            described: match case.account {
                Account::Member(tag) => Some(member(tag)),
                Account::Outside => None,
            },
            parent: Arc::new(Mutex::new("r-root".into())),
            ..ScriptedOrganizations::default()
        };
        if let Some(code) = case.refuse_invite {
            aws.refuse.lock().expect("refusals").insert(
                "InviteAccountToOrganization",
                AwsError {
                    retry: Retry::Permanent,
                    operation: "InviteAccountToOrganization",
                    code: Some(code.into()),
                    message: "refused".into(),
                },
            );
        }
        let (order, plan) = (order(), plan());
        let ids = PartialIds::of(&order);
        let waits = Waits {
            order_busy: std::time::Duration::from_secs(1),
            maybe_in_flight: std::time::Duration::from_secs(5),
            slot_busy: std::time::Duration::from_secs(5),
        };
        let metrics = Metrics::new();
        let request = Request {
            order: &order,
            plan: &plan,
            ids: &ids,
            waits: &waits,
            metrics: &metrics,
        };
        let progress = Progress {
            handshake_id: case.hint.map(str::to_owned),
            ..Progress::default()
        };
        (run_later(&aws, &request, progress).await, aws)
    }

    fn body(event: &crate::report::Event) -> Value {
        serde_json::from_slice(&event.body()).expect("JSON")
    }

    fn ends(step: &Step) -> Ends {
        match step {
            Step::Report(event) => match event.failure_code() {
                Some(code) => Ends::Failed(match code {
                    "ACCOUNT_NOT_ELIGIBLE" => "ACCOUNT_NOT_ELIGIBLE",
                    "INVITATION_DECLINED" => "INVITATION_DECLINED",
                    "INVITATION_EXPIRED" => "INVITATION_EXPIRED",
                    other => panic!("unexpected code {other}"),
                }),
                None => {
                    assert_eq!(event.name(), crate::report::PROVISIONED);
                    Ends::Provisioned
                }
            },
            Step::Wait(wait) if wait.reason == Reason::InvitationPending => Ends::Pending {
                announced: wait.notice.is_some(),
            },
            Step::Wait(wait) => Ends::Waits(match wait.reason.as_str() {
                "DuplicateHandshakeException" => "DuplicateHandshakeException",
                other => panic!("unexpected wait {other}"),
            }),
            Step::Failed { error, .. } => {
                assert_eq!(error.retry, Retry::Transient, "{error}");
                Ends::Transient
            }
        }
    }

    #[tokio::test]
    async fn each_state_of_the_account_and_its_invitations() {
        use HandshakeState::{Accepted, Canceled, Declined, Expired, Open};
        let placed: &[&str] = &[
            "MoveAccount 111122223333 r-root ou-root-opco0001",
            "AttachPolicy p-abcd1234 111122223333",
        ];
        let invited: &[&str] = &["InviteAccountToOrganization 111122223333"];
        let case = |name, account, handshakes, hint, ends, changes| Case {
            name,
            account,
            handshakes,
            hint,
            refuse_invite: None,
            ends,
            changes,
        };
        let cases = vec![
            case(
                "joined under this asset",
                Account::Member(Some("AS-1")),
                vec![],
                None,
                Ends::Provisioned,
                placed,
            ),
            case(
                "a member of another asset",
                Account::Member(Some("AS-9")),
                vec![handshake("h-1", "AS-1", Accepted)],
                None,
                Ends::Failed("ACCOUNT_NOT_ELIGIBLE"),
                &[],
            ),
            case(
                "an untagged member nobody invited",
                Account::Member(None),
                vec![],
                None,
                Ends::Failed("ACCOUNT_NOT_ELIGIBLE"),
                &[],
            ),
            case(
                "an untagged member another asset invited",
                Account::Member(None),
                vec![handshake("h-1", "AS-12", Accepted)],
                None,
                Ends::Failed("ACCOUNT_NOT_ELIGIBLE"),
                &[],
            ),
            case(
                "joined by our invitation without its tags",
                Account::Member(None),
                vec![handshake("h-1", "AS-1", Accepted)],
                Some("h-1"),
                Ends::Provisioned,
                &[
                    "TagResource 111122223333 connect:request-id,connect:asset-id,connect:marketplace-id",
                    "MoveAccount 111122223333 r-root ou-root-opco0001",
                    "AttachPolicy p-abcd1234 111122223333",
                ],
            ),
            case(
                "outside, never invited",
                Account::Outside,
                vec![],
                None,
                Ends::Pending { announced: true },
                invited,
            ),
            case(
                "outside, our invitation open, first look",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Open)],
                None,
                Ends::Pending { announced: true },
                &[],
            ),
            case(
                "outside, our invitation open, followed",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Open)],
                Some("h-1"),
                Ends::Pending { announced: false },
                &[],
            ),
            case(
                "followed and declined",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Declined)],
                Some("h-1"),
                Ends::Failed("INVITATION_DECLINED"),
                &[],
            ),
            case(
                "followed and cancelled",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Canceled)],
                Some("h-1"),
                Ends::Failed("INVITATION_DECLINED"),
                &[],
            ),
            case(
                "followed and expired",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Expired)],
                Some("h-1"),
                Ends::Failed("INVITATION_EXPIRED"),
                &[],
            ),
            case(
                "followed, accepted, not visible yet",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Accepted)],
                Some("h-1"),
                Ends::Transient,
                &[],
            ),
            case(
                "a fresh delivery after an expired one invites anew",
                Account::Outside,
                vec![handshake("h-1", "AS-1", Expired)],
                None,
                Ends::Pending { announced: true },
                invited,
            ),
            case(
                "another asset's invitation open",
                Account::Outside,
                vec![handshake("h-1", "AS-12", Open)],
                None,
                Ends::Failed("ACCOUNT_NOT_ELIGIBLE"),
                &[],
            ),
            case(
                "a hint naming another asset's invitation is ignored",
                Account::Outside,
                vec![handshake("h-1", "AS-12", Declined)],
                Some("h-1"),
                Ends::Pending { announced: true },
                invited,
            ),
            case(
                "a hint AWS does not know is ignored",
                Account::Outside,
                vec![handshake("h-2", "AS-1", Open)],
                Some("h-9"),
                Ends::Pending { announced: true },
                &[],
            ),
        ];
        let refused = |name, code, ends| Case {
            name,
            account: Account::Outside,
            handshakes: vec![],
            hint: None,
            refuse_invite: Some(code),
            ends,
            changes: invited,
        };
        let cases = cases.into_iter().chain([
            refused(
                "in another organization",
                "ALREADY_IN_AN_ORGANIZATION",
                Ends::Failed("ACCOUNT_NOT_ELIGIBLE"),
            ),
            refused(
                "an invitation AWS holds but does not list",
                "DuplicateHandshakeException",
                Ends::Waits("DuplicateHandshakeException"),
            ),
            refused(
                "a rate limit",
                "HANDSHAKE_RATE_LIMIT_EXCEEDED",
                Ends::Transient,
            ),
        ]);
        for case in cases {
            let (step, aws) = deliver(&case).await;
            assert_eq!(ends(&step), case.ends, "{}", case.name);
            let changes: Vec<String> = aws
                .calls()
                .into_iter()
                .filter(|call| {
                    ["Invite", "Tag", "Move", "Attach", "Detach", "Cancel"]
                        .iter()
                        .any(|verb| call.starts_with(verb))
                })
                .collect();
            assert_eq!(changes, case.changes, "{}", case.name);
        }
    }

    #[tokio::test]
    async fn the_invitation_names_the_asset_and_the_events_carry_what_connect_needs() {
        let case = Case {
            name: "invite",
            account: Account::Outside,
            handshakes: vec![],
            hint: None,
            refuse_invite: None,
            ends: Ends::Pending { announced: true },
            changes: &[],
        };
        let (step, aws) = deliver(&case).await;
        let Step::Wait(wait) = step else {
            panic!("a wait");
        };
        let sent = aws.handshakes.lock().expect("handshakes")[0].clone();
        assert_eq!(
            sent.notes.as_deref(),
            Some("Connect asset AS-1 (request PR-1-2)")
        );
        assert_eq!(
            wait.progress.handshake_id.as_deref(),
            Some(sent.id.as_str())
        );
        let notice = body(wait.notice.as_ref().expect("invited"));
        assert_eq!(notice["event"], "aws.account.invited");
        assert_eq!(notice["handshake_id"], json!(sent.id));
        assert_eq!(notice["account"]["id"], ACCOUNT);
        assert!(notice.get("expires_at").is_some(), "{notice}");

        let case = Case {
            name: "joined",
            account: Account::Member(Some("AS-1")),
            ends: Ends::Provisioned,
            ..case
        };
        let (Step::Report(event), _) = deliver(&case).await else {
            panic!("a report");
        };
        let event = body(&event);
        assert_eq!(event["event"], "aws.account.provisioned");
        assert_eq!(
            event["access"],
            json!({"kind": "existing", "console_url": "https://111122223333.signin.aws.amazon.com/console"})
        );
        assert_eq!(event["account"]["email"], "owner@customer.example");
        assert_eq!(event["account"]["create_request_id"], Value::Null);
        assert_eq!(event["service_control_policies"], json!(["p-abcd1234"]));
        assert_eq!(event["template"]["name"], "existing_account");
        assert_eq!(
            event["template"]["params"],
            json!({"aws_account_id": ACCOUNT, "aws_account_email": "owner@customer.example"})
        );
    }

    #[test]
    fn notes_name_an_asset_as_a_word() {
        assert!(super::names_asset(
            "Connect asset AS-1 (request PR-1)",
            "AS-1"
        ));
        assert!(!super::names_asset(
            "Connect asset AS-12 (request PR-1)",
            "AS-1"
        ));
        assert!(!super::names_asset("hello", "AS-1"));
    }
}
