//! The queues and exchanges the worker uses (docs/contract.md §3, §5, §6), declared idempotently at
//! start-up, and looked for (without declaring) by `check`.
//!
//! ```text
//! connect.orders (topic) --aws.account.new--> aws-account-orders (quorum)
//!     aws-account-orders --x-delivery-limit / dead letters--> aws-account-orders.dlx (fanout) --> aws-account-orders.dlq
//!     retry: <prefix>.<delay>ms (quorum, TTL) --expired--> default exchange --> aws-account-orders
//! connect.order-results (topic, alternate exchange) --unrouted--> connect.order-results.unrouted (fanout) --> queue of the same name
//! ```

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use crate::config::{AmqpSettings, RetrySettings};

/// The delay before the retry that follows the `failures`-th failed attempt (1-based):
/// `initial_delay_ms * 2^(failures-1)`, at most `max_delay_ms`.
pub fn retry_delay_ms(retry: &RetrySettings, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    retry
        .initial_delay_ms
        .saturating_mul(1u64.checked_shl(doublings).unwrap_or(u64::MAX))
        .min(retry.max_delay_ms)
}

/// Every distinct delay an order can wait (one queue each), shortest first: the retry delays
/// (at least the initial one, which a busy order uses even when no retry is allowed) and the
/// wait after an unsettled delivery.
pub fn retry_delays(retry: &RetrySettings) -> Vec<u64> {
    let mut delays: Vec<u64> = (1..retry.max_attempts.max(2))
        .map(|n| retry_delay_ms(retry, n))
        .chain([retry.redelivered_create_delay_ms.max(1)])
        .collect();
    delays.sort_unstable();
    delays.dedup();
    delays
}

/// The delay of the retry queue that can hold a message for `wait_ms`: the shortest one at least
/// that long (the longest one if none is; configuration validation prevents that for the waits
/// the worker uses).
pub fn retry_queue_for(retry: &RetrySettings, wait_ms: u64) -> u64 {
    let delays = retry_delays(retry);
    delays
        .iter()
        .copied()
        .find(|&d| d >= wait_ms)
        .or_else(|| delays.last().copied())
        .unwrap_or(retry.initial_delay_ms)
}

/// The name of the queue where orders wait `delay_ms` before their next attempt.
pub fn retry_queue(amqp: &AmqpSettings, delay_ms: u64) -> String {
    format!("{}.{delay_ms}ms", amqp.retry_queue_prefix)
}

fn arguments(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
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

/// Declares everything the worker uses; harmless when it already exists as declared.
///
/// # Errors
/// The broker refuses a declaration, for example a queue that exists with other arguments.
pub async fn declare(
    channel: &Channel,
    amqp: &AmqpSettings,
    retry: &RetrySettings,
) -> lapin::Result<()> {
    exchange(
        channel,
        &amqp.dead_letter_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue(channel, &amqp.dead_letter_queue, quorum(&[])).await?;
    bind(
        channel,
        &amqp.dead_letter_queue,
        &amqp.dead_letter_exchange,
        "",
    )
    .await?;

    exchange(
        channel,
        &amqp.orders_exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await?;
    let orders = quorum(&[
        ("x-dead-letter-exchange", text(&amqp.dead_letter_exchange)),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(amqp.delivery_limit)),
        ),
    ]);
    queue(channel, &amqp.orders_queue, orders).await?;
    bind(
        channel,
        &amqp.orders_queue,
        &amqp.orders_exchange,
        &amqp.orders_routing_key,
    )
    .await?;

    for delay in retry_delays(retry) {
        let args = quorum(&[
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(i64::try_from(delay).unwrap_or(i64::MAX)),
            ),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&amqp.orders_queue)),
        ]);
        queue(channel, &retry_queue(amqp, delay), args).await?;
    }

    exchange(
        channel,
        &amqp.unrouted_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue(channel, &amqp.unrouted_queue, quorum(&[])).await?;
    bind(channel, &amqp.unrouted_queue, &amqp.unrouted_exchange, "").await?;
    let results = arguments(&[("alternate-exchange", text(&amqp.unrouted_exchange))]);
    exchange(
        channel,
        &amqp.results_exchange,
        ExchangeKind::Topic,
        results,
    )
    .await
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
        retry_delays(retry)
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

    fn retry(initial: u64, max: u64, attempts: u32) -> RetrySettings {
        RetrySettings {
            initial_delay_ms: initial,
            max_delay_ms: max,
            max_attempts: attempts,
            max_replays: 5,
            redelivered_create_delay_ms: 30_000,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let r = retry(1000, 300_000, 8);
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay_ms(&r, n)).collect();
        assert_eq!(
            delays,
            [
                1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000
            ]
        );
        assert_eq!(
            retry_delays(&r),
            [1000, 2000, 4000, 8000, 16000, 30000, 32000, 64000],
            "the retry delays and the wait after an unsettled delivery"
        );
        assert_eq!(retry_delay_ms(&r, 0), 1000);
        assert_eq!(retry_delay_ms(&r, u32::MAX), 300_000);
    }

    #[test]
    fn capped_delays_share_a_queue() {
        let short_wait = |r: RetrySettings| RetrySettings {
            redelivered_create_delay_ms: 200,
            ..r
        };
        assert_eq!(
            retry_delays(&short_wait(retry(100, 250, 6))),
            [100, 200, 250]
        );
        assert_eq!(
            retry_delays(&short_wait(retry(100, 250, 1))),
            [100, 200],
            "no retries, but a busy order still waits"
        );
    }

    #[test]
    fn a_wait_goes_to_the_shortest_queue_that_holds_it() {
        let r = retry(1000, 300_000, 8);
        assert_eq!(retry_queue_for(&r, 1000), 1000);
        assert_eq!(retry_queue_for(&r, 1001), 2000);
        assert_eq!(retry_queue_for(&r, 30_000), 30_000);
        assert_eq!(retry_queue_for(&r, 1_000_000), 64_000);
    }

    #[test]
    fn names_cover_every_declared_queue_and_exchange() {
        let amqp: AmqpSettings = crate::config::Settings::from_toml(
            "[business_model]\nprovider_email_domain = \"provider.example\"",
        )
        .expect("valid")
        .amqp;
        let names = names(&amqp, &retry(1000, 300_000, 8));
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
