//! Whether the RabbitMQ policies in force on the worker's queues are the ones it expects
//! ([`topology::policies`]): its own policy applies (not missing, not shadowed by another of
//! higher priority) with the expected delivery limit and bounds, and no policy sets on an
//! order-holding queue a key that would drop, expire or divert orders. Works on the queues as
//! the management API describes them; `check` fetches them.

use serde_json::{Map, Value};

use crate::broker::topology::{self, Policy};
use crate::config::AmqpSettings;

/// Policy keys that can lose, expire, reroute or hurry orders (a retry queue's delay is what
/// keeps a redelivered order from asking AWS for a second account too soon).
const RISKY_KEYS: [&str; 9] = [
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "delivery-limit",
];

/// What a queue's policy key is allowed to be: the worker's own policy's keys aside, a risky
/// key is fine only where it changes nothing.
fn harmless(key: &str, value: &Value) -> bool {
    match key {
        "overflow" => value == "reject-publish",
        "dead-letter-strategy" => value == "at-least-once",
        _ => false,
    }
}

/// What the management API says about one queue (`GET /api/queues/VHOST/NAME`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueState {
    /// The queue's arguments.
    pub arguments: Map<String, Value>,
    /// The policy applied to it, if any.
    pub policy: Option<String>,
    /// The operator policy applied to it, if any.
    pub operator_policy: Option<String>,
    /// The policy and operator policy keys in force.
    pub definition: Map<String, Value>,
}

impl QueueState {
    /// From the management API's JSON for a queue.
    pub fn from_api(queue: &Value) -> Self {
        let object = |key: &str| queue[key].as_object().cloned().unwrap_or_default();
        let name = |key: &str| {
            queue[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            arguments: object("arguments"),
            policy: name("policy"),
            operator_policy: name("operator_policy"),
            definition: object("effective_policy_definition"),
        }
    }

    /// The value RabbitMQ uses for a numeric key that both an argument (`x-KEY`) and a policy
    /// can set: the smaller one.
    fn effective(&self, key: &str) -> Option<i64> {
        let argument = self
            .arguments
            .get(&format!("x-{key}"))
            .and_then(Value::as_i64);
        let policy = self.definition.get(key).and_then(Value::as_i64);
        match (argument, policy) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }
}

/// What is in force on the worker's queues: one summary when all is as expected, else every
/// problem found.
///
/// `queues` holds, for every queue of [`topology::names`], its state (`None`: it does not
/// exist).
///
/// # Errors
/// The problems, one sentence each.
pub fn compare(
    amqp: &AmqpSettings,
    queues: &[(String, Option<QueueState>)],
) -> Result<String, Vec<String>> {
    let expected = topology::policies(amqp);
    let own = |queue: &str| -> Option<&Policy> { expected.iter().find(|p| p.queue == queue) };
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for (name, state) in queues {
        let Some(state) = state else {
            problems.push(format!("queue {name} does not exist"));
            continue;
        };
        let policy = own(name);
        if let Some(policy) = policy {
            match &state.policy {
                Some(applied) if *applied == policy.name => {}
                Some(applied) => problems.push(format!(
                    "queue {name} is under policy {applied}, not {}: a policy of higher priority shadows it",
                    policy.name
                )),
                None => problems.push(format!(
                    "queue {name} is under no policy; policy {} is missing or does not match it",
                    policy.name
                )),
            }
        }
        for (key, value) in &state.definition {
            let own_key = policy.is_some_and(|p| p.definition.contains_key(key));
            if RISKY_KEYS.contains(&key.as_str()) && !own_key && !harmless(key, value) {
                let source = match (&state.policy, &state.operator_policy) {
                    (Some(p), Some(o)) => format!("policy {p} or operator policy {o}"),
                    (Some(p), None) => format!("policy {p}"),
                    (None, Some(o)) => format!("operator policy {o}"),
                    (None, None) => "a policy".to_owned(),
                };
                problems.push(format!(
                    "{source} sets {key} = {value} on queue {name}, which would drop, expire, reroute or hurry its messages"
                ));
            }
        }
        if *name == amqp.orders_queue {
            let limit = state.effective("delivery-limit");
            if limit == Some(i64::from(amqp.delivery_limit)) {
                summary.push(format!("delivery limit {} on {name}", amqp.delivery_limit));
            } else {
                problems.push(format!(
                    "the delivery limit in force on {name} is {}, the worker expects amqp.delivery_limit = {}",
                    limit.map_or_else(|| "none".to_owned(), |l| l.to_string()),
                    amqp.delivery_limit
                ));
            }
        }
        if *name == amqp.unrouted_queue {
            let length = state.effective("max-length");
            let age = state.effective("message-ttl");
            match (length, age) {
                (Some(length), Some(age)) => summary.push(format!(
                    "{name} bounded to {length} events and {} hours",
                    age / 3_600_000
                )),
                _ => problems.push(format!(
                    "queue {name} is not bounded in length and age: it would keep events, initial passwords included, for ever"
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{}; no policy drops, expires or reroutes orders",
            summary.join(", ")
        ))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetrySettings;
    use serde_json::json;

    fn settings() -> crate::config::Settings {
        crate::config::Settings::from_toml(
            "[business_model]\nprovider_email_domain = \"provider.example\"",
        )
        .expect("valid")
    }

    /// Every queue as the worker declares it, under its own policies.
    fn healthy(amqp: &AmqpSettings, retry: &RetrySettings) -> Vec<(String, Option<QueueState>)> {
        let policies = topology::policies(amqp);
        topology::names(amqp, retry)
            .queues
            .into_iter()
            .map(|name| {
                let arguments = topology::declared_arguments(amqp, retry, &name)
                    .and_then(|a| a.as_object().cloned())
                    .unwrap_or_default();
                let own = policies.iter().find(|p| p.queue == name);
                let state = QueueState {
                    arguments,
                    policy: own.map(|p| p.name.clone()),
                    operator_policy: None,
                    definition: own.map(|p| p.definition.clone()).unwrap_or_default(),
                };
                (name, Some(state))
            })
            .collect()
    }

    fn state_of<'a>(
        queues: &'a mut [(String, Option<QueueState>)],
        name: &str,
    ) -> &'a mut QueueState {
        queues
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.as_mut())
            .expect("queue")
    }

    #[test]
    fn the_worker_s_own_policies_pass() {
        let s = settings();
        let summary = compare(&s.amqp, &healthy(&s.amqp, &s.retry)).expect("ok");
        assert!(
            summary.contains("delivery limit 20 on aws-account-orders"),
            "{summary}"
        );
        assert!(
            summary.contains("bounded to 100000 events and 168 hours"),
            "{summary}"
        );
    }

    #[test]
    fn a_missing_policy_is_named() {
        let s = settings();
        let mut queues = healthy(&s.amqp, &s.retry);
        let orders = state_of(&mut queues, "aws-account-orders");
        orders.policy = None;
        orders.definition.clear();
        let problems = compare(&s.amqp, &queues).expect_err("fails");
        assert!(
            problems[0].contains("under no policy; policy aws-account-orders is missing"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("delivery limit in force on aws-account-orders is none"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_shadowing_policy_and_its_risky_keys_are_named() {
        let s = settings();
        let mut queues = healthy(&s.amqp, &s.retry);
        let unrouted = state_of(&mut queues, "connect.order-results.unrouted");
        unrouted.policy = Some("everything".to_owned());
        unrouted.definition = json!({"overflow": "drop-head", "queue-leader-locator": "balanced"})
            .as_object()
            .cloned()
            .expect("object");
        let retry = state_of(&mut queues, "aws-account-orders.retry.30000ms");
        retry.policy = Some("everything".to_owned());
        retry.definition = json!({"message-ttl": 10, "overflow": "reject-publish"})
            .as_object()
            .cloned()
            .expect("object");
        let problems = compare(&s.amqp, &queues).expect_err("fails").join("\n");
        assert!(problems.contains("connect.order-results.unrouted is under policy everything, not connect.order-results.unrouted: a policy of higher priority shadows it"), "{problems}");
        assert!(problems.contains("policy everything sets overflow = \"drop-head\" on queue connect.order-results.unrouted"), "{problems}");
        assert!(
            problems.contains("sets message-ttl = 10 on queue aws-account-orders.retry.30000ms"),
            "{problems}"
        );
        assert!(
            !problems.contains("queue-leader-locator"),
            "harmless keys pass: {problems}"
        );
        assert!(!problems.contains("reject-publish"), "{problems}");
        // The ceiling arguments still bound the unrouted queue.
        assert!(!problems.contains("not bounded"), "{problems}");
    }

    #[test]
    fn a_legacy_orders_queue_passes_when_its_argument_is_the_limit() {
        let s = settings();
        let mut queues = healthy(&s.amqp, &s.retry);
        let orders = state_of(&mut queues, "aws-account-orders");
        orders
            .arguments
            .insert("x-delivery-limit".to_owned(), json!(20));
        assert!(compare(&s.amqp, &queues).is_ok());
        let orders = state_of(&mut queues, "aws-account-orders");
        orders
            .arguments
            .insert("x-delivery-limit".to_owned(), json!(5));
        let problems = compare(&s.amqp, &queues).expect_err("5 < 20 wins");
        assert!(
            problems[0].contains("is 5, the worker expects amqp.delivery_limit = 20"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_legacy_unrouted_queue_without_a_policy_is_unbounded() {
        let s = settings();
        let mut queues = healthy(&s.amqp, &s.retry);
        let unrouted = state_of(&mut queues, "connect.order-results.unrouted");
        unrouted.arguments.remove("x-max-length");
        unrouted.arguments.remove("x-message-ttl");
        unrouted.policy = None;
        unrouted.definition.clear();
        let problems = compare(&s.amqp, &queues).expect_err("fails").join("\n");
        assert!(
            problems.contains("initial passwords included, for ever"),
            "{problems}"
        );
    }

    #[test]
    fn the_api_shape_is_read() {
        let state = QueueState::from_api(&json!({
            "arguments": {"x-queue-type": "quorum"},
            "policy": "p", "operator_policy": "",
            "effective_policy_definition": []
        }));
        assert_eq!(state.policy.as_deref(), Some("p"));
        assert_eq!(state.operator_policy, None);
        assert!(state.definition.is_empty());
    }
}
