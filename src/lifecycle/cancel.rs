//! `cancel`: per `cancel_action`, the account closed, removed from the organization, or left.

use super::{Request, Step};
use crate::aws::{AccountId, Organizations};
use crate::domain::model::CancelAction;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;

/// Closes, removes or only reports.
pub async fn run<O: Organizations>(
    _aws: &O,
    request: &Request<'_>,
    _account: &AccountId,
    _action: CancelAction,
    _progress: Progress,
) -> Step {
    request.rejected(&Rejection::new(
        FailureCode::UnsupportedOrderMode,
        "cancel is not supported yet",
    ))
}
