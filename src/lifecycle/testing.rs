//! Unit-test support for the lifecycle modules: a later request of any kind, resolved under a
//! configuration, and run against a fake `Organizations`.

use serde_json::json;

use super::{Request, Step, run};
use crate::aws::Organizations;
use crate::config::Settings;
use crate::domain::model::LaterPlan;
use crate::domain::order::{PartialIds, PurchaseRequest, parse};
use crate::domain::progress::Progress;
use crate::observability::Metrics;
use crate::retry::Waits;

/// A later request for asset `AS-1` on account `111122223333`, resolved.
pub struct Fixture {
    /// The request.
    pub order: PurchaseRequest,
    /// What it resolved to.
    pub plan: LaterPlan,
    /// Its ids.
    pub ids: PartialIds,
    /// The default waits.
    pub waits: Waits,
    /// Fresh metrics.
    pub metrics: Metrics,
}

impl Fixture {
    /// A request of `kind` (`suspend`, `cancel`, …) under the global settings `global` (TOML
    /// lines of `[business_model]`).
    pub fn new(kind: &str, global: &str) -> Self {
        let settings = Settings::from_toml(&format!(
            "[business_model]\nprovider_email_domain = \"provider.example\"\n{global}"
        ))
        .expect("valid settings");
        let body = json!({
            "id": "PR-1-2", "type": kind,
            "asset": {
                "id": "AS-1", "marketplace": {"id": "MP-1"},
                "tiers": {"customer": {"id": "TA-1", "name": "C"}},
                "params": [{"id": "aws_account_id", "value": "111122223333"}],
            }
        });
        let order = parse(body.to_string().as_bytes()).expect("valid request");
        let plan = settings.rules().resolve_later(&order).expect("plan");
        Self {
            ids: PartialIds::of(&order),
            order,
            plan,
            waits: Waits::of(&settings.retry),
            metrics: Metrics::new(),
        }
    }
}

/// Runs the fixture's request against `aws`, from `progress`.
pub async fn run_kind<O: Organizations>(aws: &O, fixture: &Fixture, progress: Progress) -> Step {
    let request = Request {
        order: &fixture.order,
        plan: &fixture.plan,
        ids: &fixture.ids,
        waits: &fixture.waits,
        metrics: &fixture.metrics,
    };
    run(aws, &request, progress).await
}
