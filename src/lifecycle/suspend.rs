//! `suspend` and `resume`: the deny-all SCP (`suspend_policy_id`) attached or detached.

use super::{Request, Step};
use crate::aws::{AccountId, Organizations};
use crate::domain::ids::PolicyId;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::progress::Progress;

/// Attaches the deny-all SCP.
pub async fn suspend<O: Organizations>(
    _aws: &O,
    request: &Request<'_>,
    _account: &AccountId,
    _policy: &PolicyId,
    _progress: Progress,
) -> Step {
    request.rejected(&Rejection::new(
        FailureCode::UnsupportedOrderMode,
        "suspend is not supported yet",
    ))
}

/// Detaches the deny-all SCP.
pub async fn resume<O: Organizations>(
    _aws: &O,
    request: &Request<'_>,
    _account: &AccountId,
    _policy: &PolicyId,
    _progress: Progress,
) -> Step {
    request.rejected(&Rejection::new(
        FailureCode::UnsupportedOrderMode,
        "resume is not supported yet",
    ))
}
