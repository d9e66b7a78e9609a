//! The queues and exchanges the worker uses (docs/contract.md §3, §5, §6), declared idempotently at
//! start-up, and looked for (without declaring) by `check`; and the RabbitMQ policies that carry
//! their tunables.
//!
//! ```text
//! connect.orders (topic) --aws.account.new--> aws-account-orders (quorum)
//!     aws-account-orders --delivery limit (policy) / dead letters--> aws-account-orders.dlx (fanout) --> aws-account-orders.dlq
//!     retry: <prefix>.<delay>ms (quorum, TTL) --expired--> default exchange --> aws-account-orders
//! connect.order-results (topic, alternate exchange) --unrouted--> connect.order-results.unrouted (fanout) --> queue of the same name
//! ```
//!
//! Queue arguments hold only what keeps orders safe when no policy applies (a missing, mistyped
//! or shadowed policy): the queue type, the dead-letter routes, at-least-once dead-lettering,
//! `reject-publish`, each retry queue's TTL (its delay, which its name carries), and ceilings:
//! the orders queue's delivery limit and the unrouted queue's length and age. The tunables are policies ([`policies`]): the orders
//! queue's delivery limit and the unrouted queue's bounds, which an operator changes without
//! deleting a queue. RabbitMQ applies the smaller of an argument and a policy value for these
//! keys, so a policy can tighten the unrouted ceiling and never lift it. A queue declared by an
//! earlier version (delivery limit as an argument, no unrouted ceiling) is accepted as it is,
//! with a warning: see [`declare`].

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::config::{AmqpSettings, DELIVERY_LIMIT_CEILING, RetrySettings};

/// The priority of the worker's policies: above a catch-all policy at the default priority 0,
/// which would otherwise shadow them (RabbitMQ applies one policy per queue, the highest).
pub const POLICY_PRIORITY: i64 = 10;

/// The unrouted queue's length bound in the worker's policy (events, about 1 KiB each).
pub const UNROUTED_MAX_LENGTH: i64 = 100_000;
/// The unrouted queue's age bound in the worker's policy: 7 days. Its events hold initial
/// passwords, so they are not kept longer than operators need to fix a binding and move them.
pub const UNROUTED_MESSAGE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// The unrouted queue's length ceiling, a queue argument: a policy can lower it, not lift it.
pub const UNROUTED_MAX_LENGTH_CEILING: i64 = 1_000_000;
/// The unrouted queue's age ceiling, a queue argument: 30 days, whatever the policies say.
pub const UNROUTED_MESSAGE_TTL_CEILING_MS: i64 = 30 * 24 * 3600 * 1000;

/// The name of the queue where orders wait `delay_ms` before their next attempt.
pub fn retry_queue(amqp: &AmqpSettings, delay_ms: u64) -> String {
    amqp.retry_queue(delay_ms)
}

/// A queue-arguments table of `pairs`.
pub fn arguments(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// A text argument.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A durable quorum queue that dead-letters at least once (never dropping a message in transit).
fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![
        ("x-queue-type", text("quorum")),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ];
    pairs.extend_from_slice(extra);
    arguments(&pairs)
}

const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

async fn queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    channel
        .queue_declare(name.into(), DURABLE_QUEUE, args)
        .await
        .map(|_| ())
}

async fn exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> lapin::Result<()> {
    channel
        .exchange_declare(name.into(), kind, DURABLE_EXCHANGE, args)
        .await
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The orders queue's arguments: what must hold even when no policy applies. Without its
/// dead-letter route, a delivery limit would drop orders; without a limit of its own, a message
/// that crashes the worker every time would loop for ever where the policy is missing (RabbitMQ
/// 3.10 has no default), so the queue carries [`DELIVERY_LIMIT_CEILING`], which the policy lowers.
fn orders_arguments(amqp: &AmqpSettings) -> FieldTable {
    quorum(&[
        ("x-dead-letter-exchange", text(&amqp.dead_letter_exchange)),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(DELIVERY_LIMIT_CEILING)),
        ),
    ])
}

/// The orders queue as versions before the policies declared it: the delivery limit was an
/// argument.
fn orders_arguments_legacy(amqp: &AmqpSettings) -> FieldTable {
    quorum(&[
        ("x-dead-letter-exchange", text(&amqp.dead_letter_exchange)),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(amqp.delivery_limit)),
        ),
    ])
}

/// The unrouted queue's arguments: `reject-publish` (a full queue refuses an event, so the
/// worker's confirmed publish fails and the order keeps its event, rather than an older event
/// being dropped unseen) and the length and age ceilings.
fn unrouted_arguments() -> FieldTable {
    quorum(&[
        (
            "x-max-length",
            AMQPValue::LongLongInt(UNROUTED_MAX_LENGTH_CEILING),
        ),
        (
            "x-message-ttl",
            AMQPValue::LongLongInt(UNROUTED_MESSAGE_TTL_CEILING_MS),
        ),
    ])
}

/// A retry queue's arguments: its delay and its route back to the orders queue. Both are load
/// bearing (without them it would hold orders forever or drop them) and the delay is in the
/// queue's name, so they stay arguments.
fn retry_arguments(amqp: &AmqpSettings, delay: u64) -> FieldTable {
    quorum(&[
        (
            "x-message-ttl",
            AMQPValue::LongLongInt(i64::try_from(delay).unwrap_or(i64::MAX)),
        ),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&amqp.orders_queue)),
    ])
}

/// True for the broker's `PRECONDITION_FAILED` answer (a queue that exists with other
/// arguments).
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Declares queue `name` with `args` on a channel of its own (a refused declare closes its
/// channel). When the broker refuses because the queue exists with other arguments and
/// `legacy` is given, declares it again with the arguments an earlier version used: a queue
/// that exists exactly so is used as it is, with a warning. Any other shape is refused, as
/// before, with the first refusal.
async fn queue_or_legacy(
    connection: &Connection,
    name: &str,
    args: FieldTable,
    legacy: Option<(FieldTable, &str)>,
) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    let refused = match queue(&channel, name, args).await {
        Ok(()) => {
            // Declared; a channel that fails to close is the broker's business.
            let _ = channel.close(200, "declared".into()).await;
            return Ok(());
        }
        Err(e) => e,
    };
    let Some((legacy, what)) = legacy.filter(|_| is_precondition_failed(&refused)) else {
        return Err(refused);
    };
    let channel = connection.create_channel().await?;
    match queue(&channel, name, legacy).await {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            warn!(
                queue = name,
                "queue declared by an earlier version: {what}; it works as it is (see docs/decisions.md, RabbitMQ policies)"
            );
            Ok(())
        }
        Err(_) => Err(refused),
    }
}

/// Declares everything the worker uses; harmless when it already exists as declared. Queues
/// each use a channel of their own, the exchanges and bindings one more.
///
/// The orders queue and the unrouted queue may exist as an earlier version declared them (the
/// orders queue with `x-delivery-limit` equal to `amqp.delivery_limit`, the unrouted queue
/// without its ceiling): they are used as they are, with a warning; the delivery-limit policy
/// then applies only below the old argument. Policies are not declared here: AMQP cannot set
/// them (`deploy/rabbitmq/definitions.json` holds them; `check` compares them).
///
/// # Errors
/// The broker refuses a declaration, for example a queue that exists with other arguments.
pub async fn declare(
    connection: &Connection,
    amqp: &AmqpSettings,
    retry: &RetrySettings,
) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    exchange(
        &channel,
        &amqp.dead_letter_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue_or_legacy(connection, &amqp.dead_letter_queue, quorum(&[]), None).await?;
    bind(
        &channel,
        &amqp.dead_letter_queue,
        &amqp.dead_letter_exchange,
        "",
    )
    .await?;

    exchange(
        &channel,
        &amqp.orders_exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await?;
    queue_or_legacy(
        connection,
        &amqp.orders_queue,
        orders_arguments(amqp),
        Some((
            orders_arguments_legacy(amqp),
            "its delivery limit is the argument x-delivery-limit, which a policy can only lower",
        )),
    )
    .await?;
    for key in amqp.order_routing_keys() {
        bind(&channel, &amqp.orders_queue, &amqp.orders_exchange, key).await?;
    }

    for delay in crate::retry::delays(retry) {
        let name = retry_queue(amqp, delay);
        queue_or_legacy(connection, &name, retry_arguments(amqp, delay), None).await?;
    }

    exchange(
        &channel,
        &amqp.unrouted_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue_or_legacy(
        connection,
        &amqp.unrouted_queue,
        unrouted_arguments(),
        Some((
            quorum(&[]),
            "it has no length and age ceiling: only a policy bounds it",
        )),
    )
    .await?;
    bind(&channel, &amqp.unrouted_queue, &amqp.unrouted_exchange, "").await?;
    let results = arguments(&[("alternate-exchange", text(&amqp.unrouted_exchange))]);
    exchange(
        &channel,
        &amqp.results_exchange,
        ExchangeKind::Topic,
        results,
    )
    .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The queue arguments [`declare`] gives queue `name` (one of [`names`]), as JSON, the way the
/// management API and definition files write them; `None` for a name it does not declare.
pub fn declared_arguments(amqp: &AmqpSettings, retry: &RetrySettings, name: &str) -> Option<Value> {
    let table = if name == amqp.orders_queue {
        orders_arguments(amqp)
    } else if name == amqp.unrouted_queue {
        unrouted_arguments()
    } else if name == amqp.dead_letter_queue {
        quorum(&[])
    } else {
        let delay = crate::retry::delays(retry)
            .into_iter()
            .find(|&d| retry_queue(amqp, d) == name)?;
        retry_arguments(amqp, delay)
    };
    let mut object = Map::new();
    for (key, value) in table.inner() {
        let value = match value {
            AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::LongLongInt(n) => json!(n),
            other => json!(format!("{other:?}")),
        };
        object.insert(key.to_string(), value);
    }
    Some(Value::Object(object))
}

/// A RabbitMQ policy the worker expects in force on one of its queues.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The policy's name: the name of the queue it is for.
    pub name: String,
    /// The queue it is for.
    pub queue: String,
    /// Its pattern: exactly that queue's name.
    pub pattern: String,
    /// Its definition (the tunables).
    pub definition: Map<String, Value>,
}

/// `^name$` with the regular-expression characters of `name` escaped.
fn exact_pattern(name: &str) -> String {
    let mut pattern = String::from("^");
    for c in name.chars() {
        if r"\.^$|?*+()[]{}".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('$');
    pattern
}

/// The policies that carry the tunables: the orders queue's delivery limit
/// (`amqp.delivery_limit`) and the unrouted queue's length and age bounds. Each applies to
/// queues, at [`POLICY_PRIORITY`], and matches its one queue only.
pub fn policies(amqp: &AmqpSettings) -> Vec<Policy> {
    let policy = |queue: &str, definition: Value| Policy {
        name: queue.to_owned(),
        queue: queue.to_owned(),
        pattern: exact_pattern(queue),
        definition: match definition {
            Value::Object(map) => map,
            _ => Map::new(),
        },
    };
    vec![
        policy(
            &amqp.orders_queue,
            json!({ "delivery-limit": amqp.delivery_limit }),
        ),
        policy(
            &amqp.unrouted_queue,
            json!({
                "max-length": UNROUTED_MAX_LENGTH,
                "message-ttl": UNROUTED_MESSAGE_TTL_MS,
            }),
        ),
    ]
}

/// The names of the exchanges and queues [`declare`] declares (bindings aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Exchange names.
    pub exchanges: Vec<String>,
    /// Queue names.
    pub queues: Vec<String>,
}

impl Names {
    /// True when there is no name at all.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty()
    }
}

/// Every exchange and queue the worker declares, in declaration order.
pub fn names(amqp: &AmqpSettings, retry: &RetrySettings) -> Names {
    let mut queues = vec![amqp.dead_letter_queue.clone(), amqp.orders_queue.clone()];
    queues.extend(
        crate::retry::delays(retry)
            .into_iter()
            .map(|d| retry_queue(amqp, d)),
    );
    queues.push(amqp.unrouted_queue.clone());
    Names {
        exchanges: vec![
            amqp.dead_letter_exchange.clone(),
            amqp.orders_exchange.clone(),
            amqp.unrouted_exchange.clone(),
            amqp.results_exchange.clone(),
        ],
        queues,
    }
}

/// Deletes every queue and exchange [`names`] lists (one that is not there is no error): for
/// tests and the benchmark, which declare a topology of their own per run. It tries them all.
///
/// # Errors
/// The first deletion the broker refused, or a channel failure.
pub async fn delete(
    channel: &Channel,
    amqp: &AmqpSettings,
    retry: &RetrySettings,
) -> lapin::Result<()> {
    let names = names(amqp, retry);
    let mut first_error = Ok(());
    for queue in &names.queues {
        let deleted = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        first_error = first_error.and(deleted.map(drop));
    }
    for exchange in &names.exchanges {
        let deleted = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        first_error = first_error.and(deleted);
    }
    first_error
}

const PASSIVE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: true,
    ..DURABLE_EXCHANGE
};

const PASSIVE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: true,
    ..DURABLE_QUEUE
};

/// True for the broker's `NOT_FOUND` answer to a passive declare.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Whether an exchange (`kind` given) or a queue (`kind` `None`) named `name` exists: a
/// passive declare on a channel of its own, since a failed one closes its channel. It declares
/// nothing and does not compare types or arguments.
///
/// # Errors
/// The broker refuses the look (other than `NOT_FOUND`) or the connection fails.
pub async fn exists(
    connection: &Connection,
    name: &str,
    kind: Option<ExchangeKind>,
) -> lapin::Result<bool> {
    let channel = connection.create_channel().await?;
    let declared = match kind {
        Some(kind) => {
            channel
                .exchange_declare(name.into(), kind, PASSIVE_EXCHANGE, FieldTable::default())
                .await
        }
        None => channel
            .queue_declare(name.into(), PASSIVE_QUEUE, FieldTable::default())
            .await
            .map(|_| ()),
    };
    match declared {
        Ok(()) => {
            // The answer is in; a channel that fails to close is the broker's business.
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The messages ready in queue `name`, or `None` when it does not exist: a passive declare on a
/// channel of its own, which declares nothing.
///
/// # Errors
/// The broker refuses the look (other than `NOT_FOUND`) or the connection fails.
pub async fn ready_messages(connection: &Connection, name: &str) -> lapin::Result<Option<u32>> {
    let channel = connection.create_channel().await?;
    match channel
        .queue_declare(name.into(), PASSIVE_QUEUE, FieldTable::default())
        .await
    {
        Ok(queue) => {
            // The answer is in; a channel that fails to close is the broker's business.
            let _ = channel.close(200, "counted".into()).await;
            Ok(Some(queue.message_count()))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The exchanges and queues of [`names`] that do not exist on the broker.
///
/// # Errors
/// The broker refuses a look (e.g. `ACCESS_REFUSED`) or the connection fails.
pub async fn missing(
    connection: &Connection,
    amqp: &AmqpSettings,
    retry: &RetrySettings,
) -> lapin::Result<Names> {
    let expected = names(amqp, retry);
    let mut missing = Names::default();
    for name in expected.exchanges {
        // A passive declare checks the name only; the kind is not compared.
        if !exists(connection, &name, Some(ExchangeKind::Topic)).await? {
            missing.exchanges.push(name);
        }
    }
    for name in expected.queues {
        if !exists(connection, &name, None).await? {
            missing.queues.push(name);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_declared_queue_and_exchange() {
        // The default retries: 1 s doubling to 300 s, 8 attempts.
        let settings = crate::config::Settings::from_toml(
            "[business_model]\nprovider_email_domain = \"provider.example\"",
        )
        .expect("valid");
        let names = names(&settings.amqp, &settings.retry);
        assert_eq!(
            names.exchanges,
            [
                "aws-account-orders.dlx",
                "connect.orders",
                "connect.order-results.unrouted",
                "connect.order-results"
            ]
        );
        assert_eq!(
            names.queues.len(),
            2 + 8 + 1,
            "dlq, orders, 8 retry queues, unrouted"
        );
        assert!(
            names
                .queues
                .contains(&"aws-account-orders.retry.30000ms".to_owned())
        );
        assert!(!names.is_empty());
    }
}
