//! The subscription's later life (docs/contract.md §10): an existing account brought in, and
//! the change, suspend, resume and cancel requests that follow a purchase. Each kind is one
//! module; they share the pipeline's parse, lock, settle, retries, replay and metrics, and
//! this module's ownership check: nothing is done to an account that AWS does not show as the
//! request's asset's (its `connect:asset-id` tag).

mod cancel;
mod change;
mod existing;
mod suspend;
#[cfg(test)]
mod testing;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::aws::{AccountId, AwsError, ExistingAccount, Organizations};
use crate::domain::model::{LaterKind, LaterPlan, no_account_id};
use crate::domain::order::{PartialIds, PurchaseRequest};
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;
use crate::observability::Metrics;
use crate::report::{self, Event};
use crate::retry::{Reason, Waits};

/// A resolved request and what its module needs besides AWS.
pub struct Request<'a> {
    /// The Connect request.
    pub order: &'a PurchaseRequest,
    /// What to do, and with what.
    pub plan: &'a LaterPlan,
    /// Its identifying fields, for events.
    pub ids: &'a PartialIds,
    /// The waits the retry settings give.
    pub waits: &'a Waits,
    /// Where to count.
    pub metrics: &'a Metrics,
}

/// Where a request's module stopped.
#[derive(Debug)]
pub enum Step {
    /// Done (or refused as a business outcome): publish the event, then acknowledge.
    Report(Event),
    /// Nothing failed, but the request waits (for a customer, or for AWS's clock), spending no
    /// attempt.
    Wait(Wait),
    /// An AWS call failed: retried if transient, else dead-lettered.
    Failed {
        /// The classified failure.
        error: AwsError,
        /// What to resume from.
        progress: Progress,
    },
}

/// A request that waits.
#[derive(Debug)]
pub struct Wait {
    /// Why (for `x-failure-reason`); a [`Reason::is_long_wait`] backs off up to
    /// `retry.max_delay_ms`.
    pub reason: Reason,
    /// A readable explanation.
    pub message: String,
    /// What to resume from.
    pub progress: Progress,
    /// How long at most; a long wait's back-off may be shorter.
    pub wait: Duration,
    /// An event to publish before waiting (`aws.account.invited`).
    pub notice: Option<Event>,
}

/// Carries out `request` against its payer's `aws`, resuming from `progress`.
pub async fn run<O: Organizations>(aws: &O, request: &Request<'_>, progress: Progress) -> Step {
    let Some(account_id) = request.plan.account_id.clone().map(AccountId) else {
        if request.plan.kind == LaterKind::Change {
            return change::run(request, None);
        }
        return request.rejected(&no_account_id(request.plan));
    };
    match &request.plan.kind {
        LaterKind::Change => change::run(request, Some(&account_id)),
        LaterKind::Existing {
            service_control_policies,
            organizational_unit_id,
            template_id,
        } => {
            let placement = existing::Placement {
                service_control_policies,
                organizational_unit_id: organizational_unit_id.as_ref(),
                template_id: template_id.as_ref(),
            };
            existing::run(aws, request, &account_id, placement, progress).await
        }
        LaterKind::Suspend { policy } => {
            suspend::suspend(aws, request, &account_id, policy, progress).await
        }
        LaterKind::Resume { policy } => {
            suspend::resume(aws, request, &account_id, policy, progress).await
        }
        LaterKind::Cancel { action } => {
            cancel::run(aws, request, &account_id, *action, progress).await
        }
    }
}

impl Request<'_> {
    /// `aws.account.failed` for `rejection`.
    pub fn rejected(&self, rejection: &Rejection) -> Step {
        let mut rejection = rejection.clone();
        rejection.model = self.plan.model;
        Step::Report(report::failed(self.ids, Some(&self.plan.payer), &rejection))
    }

    /// The event `name` on `account`, with its own `fields`.
    pub fn event(
        &self,
        name: &'static str,
        account: &AccountId,
        fields: Map<String, Value>,
    ) -> Event {
        report::later(name, self.ids, self.plan, &account.0, fields)
    }
}

/// What the ownership check found.
#[derive(Debug)]
pub enum Owned {
    /// The account is a member of the payer's organization and carries the request's asset tag.
    Ours(ExistingAccount),
    /// The account is not a member of the payer's organization (`AccountNotFoundException`).
    NotMember,
    /// The account is a member, but its asset tag is another asset's, or it has none.
    NotOurs(ExistingAccount),
}

/// Looks the account up in the payer's organization (`DescribeAccount`, then its tags) and
/// says whether it is the request's asset's.
///
/// # Errors
/// The failed call, other than the account not being a member.
pub async fn ownership<O: Organizations>(
    aws: &O,
    request: &Request<'_>,
    account: &AccountId,
) -> Result<Owned, AwsError> {
    match aws.describe_account(account).await {
        Ok(found) if found.asset_id.as_deref() == Some(request.order.asset_id.as_str()) => {
            Ok(Owned::Ours(found))
        }
        Ok(found) => Ok(Owned::NotOurs(found)),
        Err(e) if e.code.as_deref() == Some("AccountNotFoundException") => Ok(Owned::NotMember),
        Err(e) => Err(e),
    }
}

/// `ACCOUNT_NOT_OURS` for `account`: nothing was touched.
pub fn not_ours(request: &Request<'_>, account: &AccountId, why: &str) -> Step {
    request.rejected(&Rejection::new(
        FailureCode::AccountNotOurs,
        format!(
            "account {account} {why}, not the asset {}'s: nothing was changed",
            request.order.asset_id
        ),
    ))
}
