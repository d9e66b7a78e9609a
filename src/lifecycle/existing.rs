//! An existing account brought in by invitation (`order_mode = existing_account`).

use super::{Request, Step};
use crate::aws::{AccountId, Organizations};
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;

/// Invites the account, follows the invitation, then places it.
pub async fn run<O: Organizations>(
    _aws: &O,
    request: &Request<'_>,
    _account: &AccountId,
    _progress: Progress,
) -> Step {
    request.rejected(&Rejection::new(
        FailureCode::UnsupportedOrderMode,
        "existing_account is not supported yet",
    ))
}
