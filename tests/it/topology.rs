//! The topology against the real RabbitMQ: tunables live in policies, so changing one needs no
//! queue deletion; queues an earlier version declared (delivery limit as an argument, no
//! unrouted ceiling) keep working; the delivery-limit policy dead-letters through the orders
//! queue's own route; the unrouted queue is bounded in length (refusing new events) and age.

use std::time::Duration;

use aws_account_worker::broker::topology;
use aws_account_worker::config::Settings;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

use crate::support::{
    DEADLINE, PROVIDER_DOMAIN, amqp_section, amqp_url, digits, put_policy, remove_policies,
};

/// Settings with names unique to this call and `extra` keys of `[amqp]`.
fn unique_settings(extra: &str) -> Settings {
    // amqp_section ends inside [amqp]: `extra` belongs to it.
    let toml = format!(
        "{}\n{extra}\n[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\"\n",
        amqp_section(&digits(10))
    );
    Settings::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers (scripts/services.sh starts it)")
}

/// Connects and declares the topology of `settings`.
async fn declared(settings: &Settings) -> Connection {
    let connection = connect().await;
    topology::declare(&connection, &settings.amqp, &settings.retry)
        .await
        .expect("topology");
    connection
}

/// Puts the worker's `index`-th policy in force, with `definition` instead of its own, and
/// waits until `queue` shows it.
async fn install_policy(
    settings: &Settings,
    index: usize,
    definition: &serde_json::Value,
    queue: &str,
) {
    let policy = &topology::policies(&settings.amqp)[index];
    put_policy(
        settings,
        &policy.name,
        &policy.pattern,
        topology::POLICY_PRIORITY,
        definition,
        queue,
    )
    .await;
}

/// A channel with publisher confirms.
async fn confirming(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
}

/// Waits until `queue` holds `expected` ready messages; panics saying `never` at the deadline.
async fn await_ready(connection: &Connection, queue: &str, expected: u32, never: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ready = topology::ready_messages(connection, queue)
            .await
            .expect("count");
        if ready == Some(expected) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DURABLE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// The arguments every queue of the worker has, and `extra`.
fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![
        ("x-queue-type", topology::text("quorum")),
        ("x-dead-letter-strategy", topology::text("at-least-once")),
        ("x-overflow", topology::text("reject-publish")),
    ];
    pairs.extend_from_slice(extra);
    topology::arguments(&pairs)
}

async fn cleanup(connection: &Connection, settings: &Settings) {
    let channel = connection.create_channel().await.expect("channel");
    let _ = topology::delete(&channel, &settings.amqp, &settings.retry).await;
    remove_policies(settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_delivery_limit_needs_no_queue_deletion() {
    let first = unique_settings("delivery_limit = 20");
    let connection = connect().await;
    topology::declare(&connection, &first.amqp, &first.retry)
        .await
        .expect("first start");
    let mut changed = first.clone();
    changed.amqp.delivery_limit = 5;
    topology::declare(&connection, &changed.amqp, &changed.retry)
        .await
        .expect(
            "a start with another delivery limit declares the same queues: no PRECONDITION_FAILED",
        );
    // The tunable itself moves with the policy, in place.
    for limit in [20, 5] {
        put_policy(
            &changed,
            &changed.amqp.orders_queue,
            &topology::policies(&changed.amqp)[0].pattern,
            topology::POLICY_PRIORITY,
            &json!({"delivery-limit": limit}),
            &changed.amqp.orders_queue,
        )
        .await;
    }
    cleanup(&connection, &changed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_an_earlier_version_declared_keep_working_and_other_shapes_are_refused() {
    let settings = unique_settings("delivery_limit = 20");
    let amqp = &settings.amqp;
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    // As versions before the policies declared them.
    let legacy_orders = quorum(&[
        (
            "x-dead-letter-exchange",
            topology::text(&amqp.dead_letter_exchange),
        ),
        ("x-delivery-limit", AMQPValue::LongLongInt(20)),
    ]);
    channel
        .queue_declare(amqp.orders_queue.as_str().into(), DURABLE, legacy_orders)
        .await
        .expect("legacy orders queue");
    channel
        .queue_declare(amqp.unrouted_queue.as_str().into(), DURABLE, quorum(&[]))
        .await
        .expect("legacy unrouted queue");
    topology::declare(&connection, amqp, &settings.retry)
        .await
        .expect("the new version starts on the old queues");
    topology::declare(&connection, amqp, &settings.retry)
        .await
        .expect("and again");
    cleanup(&connection, &settings).await;

    // An orders queue of a shape no version declared is refused, as before.
    let other = unique_settings("delivery_limit = 20");
    let channel = connection.create_channel().await.expect("channel");
    let odd = quorum(&[
        (
            "x-dead-letter-exchange",
            topology::text(&other.amqp.dead_letter_exchange),
        ),
        ("x-delivery-limit", AMQPValue::LongLongInt(7)),
    ]);
    channel
        .queue_declare(other.amqp.orders_queue.as_str().into(), DURABLE, odd)
        .await
        .expect("odd orders queue");
    let refused = topology::declare(&connection, &other.amqp, &other.retry)
        .await
        .expect_err("a queue with another delivery-limit argument is refused");
    assert!(
        refused.to_string().contains("PRECONDITION_FAILED"),
        "{refused}"
    );
    cleanup(&connection, &other).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delivery_limit_policy_dead_letters_through_the_orders_queue_route() {
    let settings = unique_settings("delivery_limit = 1");
    let amqp = &settings.amqp;
    let connection = declared(&settings).await;
    let own = serde_json::Value::Object(topology::policies(amqp)[0].definition.clone());
    install_policy(&settings, 0, &own, &amqp.orders_queue).await;
    let channel = confirming(&connection).await;
    channel
        .basic_publish(
            "".into(),
            amqp.orders_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"poison",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    let mut consumer = channel
        .basic_consume(
            amqp.orders_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Delivered, handed back, delivered again, handed back: past the limit of 1.
    for _ in 0..2 {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("a delivery")
            .expect("no error");
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("nack");
    }
    await_ready(
        &connection,
        &amqp.dead_letter_queue,
        1,
        "the order never reached the DLQ",
    )
    .await;
    cleanup(&connection, &settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unrouted_queue_refuses_events_when_full_and_forgets_old_ones() {
    let settings = unique_settings("");
    let amqp = &settings.amqp;
    let connection = declared(&settings).await;
    let short = json!({"max-length": 1, "message-ttl": 1500});
    install_policy(&settings, 1, &short, &amqp.unrouted_queue).await;
    let channel = confirming(&connection).await;
    let publish = |n: u8| {
        let channel = channel.clone();
        let exchange = amqp.results_exchange.clone();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "aws.account.provisioned".into(),
                    BasicPublishOptions::default(),
                    &[n],
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("an answer")
        }
    };
    // RabbitMQ 3.10's quorum queues enforce the length one message late (with a limit of 1
    // the second event is still kept): look for the refusal among four.
    let mut answers = Vec::new();
    for n in 1..=4 {
        answers.push(publish(n).await.is_ack());
    }
    let refused = answers.iter().position(|ack| !ack);
    assert!(
        answers[0] && refused.is_some_and(|at| answers[at..].iter().all(|ack| !ack)),
        "a full unrouted queue refuses events (the worker's confirmed publish fails): {answers:?}"
    );
    await_ready(
        &connection,
        &amqp.unrouted_queue,
        0,
        "the unrouted event never expired",
    )
    .await;
    cleanup(&connection, &settings).await;
}
