//! `change`: nothing changes in AWS; `aws.account.changed` lets Connect approve the request.

use serde_json::{Map, json};

use super::{Request, Step};
use crate::aws::AccountId;
use crate::report::{self, CHANGED};

/// Confirms the change, with no AWS call; `account` is the `aws_account_id` the request names,
/// if any (reported as given, unchecked: nothing is done to it).
pub fn run(request: &Request<'_>, account: Option<&AccountId>) -> Step {
    let mut fields = Map::new();
    fields.insert(
        "account".into(),
        json!({"id": account.map(|a| a.0.as_str())}),
    );
    Step::Report(report::later(
        CHANGED,
        request.ids,
        request.plan,
        account.map_or("", |a| a.0.as_str()),
        fields,
    ))
}
