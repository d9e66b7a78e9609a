//! Bounded input and settle failures (docs/contract.md §6): a message with a 200 KB field or a
//! huge header is dead-lettered with small headers and the worker keeps its connection; a
//! results exchange that refuses events for 30 s loops nothing hot and loses no order; a queue
//! name composed past AMQP's 255 bytes stops the worker at start-up, naming the key.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_account_worker::broker::headers::{HEADERS_BUDGET_BYTES, encoded_len};
use aws_account_worker::domain::bounded::MAX_INPUT_TEXT_BYTES;
use lapin::options::{
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::support::{
    BIN, DEADLINE, TestEnv, WorkerHandle, WorkerProcess, amqp_url, assert_one_account_per_order,
    header_text, moto_fast_endpoint, provisioned_events, publish_order, root_order, write_config,
};

/// A channel in confirm mode on a connection of the test's own.
pub async fn confirming() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (connection, channel)
}

/// Publishes `body` to the test's orders exchange with `headers`, with confirm.
async fn publish_with_headers(env: &TestEnv, channel: &Channel, body: &[u8], headers: FieldTable) {
    let amqp = &env.settings.amqp;
    let to = (
        amqp.orders_exchange.as_str(),
        amqp.orders_routing_key.as_str(),
    );
    let confirm = publish_order(channel, to, body, headers)
        .await
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "order publish not confirmed");
}

/// A metric's value in a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of `family` (its name up to the labels).
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{family}{{")) || line.starts_with(&format!("{family} "))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The largest header a sender can publish with the test's other properties: the frame holds
/// 131,072 bytes, 88 of which go to the frame, the properties and the other header. The worker
/// adds a few hundred bytes of its own: without the header budget its republish would overflow
/// the frame and RabbitMQ would close its connection.
const SENDER_HEADER_BYTES: usize = 130_900;

#[tokio::test(flavor = "multi_thread")]
async fn a_200_kb_field_or_a_huge_header_is_dead_lettered_small_and_the_connection_stays() {
    let mut env = TestEnv::fast("").await;
    let config = write_config(&env.toml);
    let mut worker = WorkerProcess::spawn(&env, &config, &moto_fast_endpoint()).await;

    // An id of 200 KB: its error message and its dead-lettered event quote it capped.
    let huge_id = {
        let mut o = root_order();
        o["id"] = json!(format!("PR-{}", "1".repeat(200 * 1024)));
        o
    };
    // A huge header of a sender's own, as large as a frame allows (RabbitMQ refuses a larger one
    // at the door: 128 KiB frames): published again as it is, with the worker's headers added,
    // it would overflow the frame and cost the connection.
    let huge_header = {
        let mut o = root_order();
        o["asset"]["id"] = json!(format!("AS-{}", "2".repeat(200 * 1024)));
        o
    };
    let mut big = FieldTable::default();
    big.insert(
        "x-sender-trace".into(),
        AMQPValue::LongString(LongString::from("t".repeat(SENDER_HEADER_BYTES))),
    );
    big.insert(
        "x-sender-small".into(),
        AMQPValue::LongString("kept".into()),
    );
    let good = root_order();
    let (connection, channel) = confirming().await;
    env.publish_json(&huge_id).await;
    publish_with_headers(&env, &channel, huge_header.to_string().as_bytes(), big).await;
    env.publish_json(&good).await;

    let mut dead_lettered = Vec::new();
    let mut provisioned = Vec::new();
    while dead_lettered.len() < 2 || provisioned.is_empty() {
        let event = env.next_event().await;
        match event["event"].as_str() {
            Some("aws.account.dead-lettered") => dead_lettered.push(event),
            Some("aws.account.provisioned") => provisioned.push(event),
            other => panic!("unexpected event {other:?}: {}", worker.log_tail()),
        }
    }
    assert_eq!(
        provisioned[0]["request_id"], good["id"],
        "the next order is provisioned"
    );
    for event in &dead_lettered {
        assert_eq!(event["reason"], "INVALID_ID");
        let bytes = event.to_string().len();
        assert!(
            bytes < 4 * 1024,
            "the dead-lettered event is small: {bytes} bytes"
        );
    }
    let request_id = dead_lettered
        .iter()
        .find_map(|e| e["request_id"].as_str().filter(|id| id.len() > 64))
        .expect("the huge id, capped");
    assert!(request_id.len() <= MAX_INPUT_TEXT_BYTES && request_id.ends_with('…'));

    let dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 2, "both are in the DLQ, once");
    for (headers, _) in &dlq {
        assert_eq!(
            header_text(headers, "x-failure-reason").as_deref(),
            Some("INVALID_ID")
        );
        let message = header_text(headers, "x-failure-message").expect("message");
        assert!(
            message.len() <= MAX_INPUT_TEXT_BYTES,
            "{} bytes",
            message.len()
        );
        let size = encoded_len(headers);
        assert!(size < HEADERS_BUDGET_BYTES, "headers of {size} bytes");
    }
    let with_sender_headers = dlq
        .iter()
        .find(|(headers, _)| headers.contains_key("x-sender-small"))
        .expect("the sender's small header is kept");
    assert!(
        !with_sender_headers.0.contains_key("x-sender-trace"),
        "the sender's huge header is dropped"
    );

    // One connection all along, and no log line carries the 200 KB field.
    worker.signal("TERM");
    assert_eq!(
        worker.exit(DEADLINE).await,
        Some(0),
        "{}",
        worker.log_tail()
    );
    let logs = std::fs::read_to_string(worker.logs.path()).expect("logs");
    assert!(logs.contains("malformed order"), "{}", worker.log_tail());
    assert!(
        logs.contains("headers over the budget dropped"),
        "the dropped header is named in a warning: {}",
        worker.log_tail()
    );
    for word in ["connection lost", "reconnected", "FRAME_ERROR"] {
        assert!(
            !logs.contains(word),
            "`{word}` in the logs: {}",
            worker.log_tail()
        );
    }
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4 * 1024, "a log line of {longest} bytes");
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

/// A classic queue that refuses every message (`x-max-length` 0, `reject-publish`), bound to
/// the events of `routing_key`: while it is bound, every publish of one is nacked.
async fn refuse_events(env: &TestEnv, channel: &Channel, queue: &str, routing_key: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("refusing queue");
    bind_events(env, channel, queue, routing_key).await;
}

async fn bind_events(env: &TestEnv, channel: &Channel, queue: &str, routing_key: &str) {
    channel
        .queue_bind(
            queue.into(),
            env.settings.amqp.results_exchange.as_str().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
}

/// Makes the results exchange refuse every event (a publish is nacked) until
/// [`accept_events`]; the test's events queue is unbound meanwhile, so that it sees only the
/// events the exchange accepted. Returns the refusing queue's name.
pub async fn refuse_all_events(env: &TestEnv, channel: &Channel) -> String {
    let refusing = format!("{}.refusing", events_queue(env));
    channel
        .queue_unbind(
            events_queue(env).as_str().into(),
            env.settings.amqp.results_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind the events queue");
    refuse_events(env, channel, &refusing, "#").await;
    refusing
}

/// Ends [`refuse_all_events`]: the test's events queue bound again, the refusing one deleted.
pub async fn accept_events(env: &TestEnv, channel: &Channel, refusing: &str) {
    bind_events(env, channel, &events_queue(env), "#").await;
    channel
        .queue_delete(refusing.into(), QueueDeleteOptions::default())
        .await
        .expect("delete the refusing queue");
}

/// The test's own events queue (support names it after the test's id).
fn events_queue(env: &TestEnv) -> String {
    let id = env
        .settings
        .amqp
        .orders_queue
        .strip_prefix("test-orders.")
        .expect("a test's orders queue");
    format!("test.events.{id}")
}

/// `/metrics` of `worker` once `ready` holds for it, or a panic at the deadline.
async fn metrics_once(worker: &WorkerHandle, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, text) = worker.get("/metrics").await;
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_results_exchange_refusing_for_30_s_loses_no_order_and_loops_nothing_hot() {
    // Settle failures wait 1 s, 2 s, 4 s, then 8 s each: about 7 of them in 30 s, well below
    // the limit (amqp.delivery_limit 20 - 2).
    let mut env =
        TestEnv::fast("[retry]\ninitial_delay_ms = 1000\nmax_delay_ms = 8000\nmax_attempts = 4")
            .await;
    let (connection, channel) = confirming().await;
    let refusing = refuse_all_events(&env, &channel).await;
    let worker = env.spawn_worker().await;
    let refused_at = tokio::time::Instant::now();

    let orders: Vec<Value> = (0..3).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let stage = "aws_account_worker_settle_failures_total{stage=\"event\"}";
    metrics_once(&worker, |text| metric(text, stage) >= 3.0).await;
    tokio::time::sleep_until(refused_at + Duration::from_secs(30)).await;
    let during = worker.get("/metrics").await.1;

    accept_events(&env, &channel, &refusing).await;
    let ids: Vec<String> = orders
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    let events: BTreeMap<String, Vec<Value>> = provisioned_events(&mut env, &ids).await;
    assert_one_account_per_order(&env, &events).await;

    let after = metrics_once(&worker, |text| {
        metric(text, "aws_account_worker_orders_provisioned_total") >= 3.0
    })
    .await;
    // Backed off, not hot: a handful of deliveries per order over 30 s, not thousands.
    let received = metric(&during, "aws_account_worker_orders_received_total");
    assert!(
        received <= 3.0 * 10.0,
        "{received} deliveries in 30 s:\n{during}"
    );
    assert!(
        metric(
            &after,
            "aws_account_worker_orders_retried_total{code=\"SETTLE_FAILED\"}"
        ) >= 3.0,
        "{after}"
    );
    // Nothing dead-lettered silently: every DLQ message has its reason and is counted.
    let dlq = env.drain_dlq().await;
    for (headers, _) in &dlq {
        assert!(header_text(headers, "x-failure-reason").is_some());
    }
    let counted = family_sum(&after, "aws_account_worker_orders_dead_lettered_total");
    assert_eq!(counted, dlq.len() as f64, "{after}");
    assert!(dlq.is_empty(), "30 s of refusal dead-letters nothing");
    assert_eq!(
        metric(&after, "aws_account_worker_broker_connections_lost_total"),
        0.0
    );
    let _ = connection.close(200, "done".into()).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settle_failures_end_in_the_dlq_with_their_event_before_the_delivery_limit() {
    let mut env = TestEnv::fast("[retry]\ninitial_delay_ms = 200\nmax_delay_ms = 400").await;
    // Settle failures end at delivery_limit - 2 = 2: one retry, then the DLQ.
    env.settings.amqp.delivery_limit = 4;
    let (connection, channel) = confirming().await;
    // Provisioned events are refused for good; the dead-lettered event goes through.
    let refusing = format!("{}.refusing", events_queue(&env));
    refuse_events(&env, &channel, &refusing, "aws.account.provisioned").await;
    let worker = env.spawn_worker().await;
    let order = root_order();
    env.publish_json(&order).await;

    let dead_lettered = loop {
        let event = env.next_event().await;
        if event["event"] == "aws.account.dead-lettered" {
            break event;
        }
        // The provisioned events the test's own queue took while the refusing one said no.
        assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    };
    assert_eq!(dead_lettered["reason"], "SETTLE_FAILED");
    assert_eq!(dead_lettered["request_id"], order["id"]);
    assert_eq!(
        dead_lettered["attempts"], 0,
        "a settle failure is not an order attempt"
    );
    let dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 1, "in the DLQ once");
    let headers = &dlq[0].0;
    assert_eq!(
        header_text(headers, "x-failure-reason").as_deref(),
        Some("SETTLE_FAILED")
    );
    assert_eq!(
        header_text(headers, "x-settle-failures").as_deref(),
        Some("2")
    );
    assert!(header_text(headers, "x-failure-message").is_some_and(|m| m.contains("nacked")));
    let text = metrics_once(&worker, |text| {
        metric(
            text,
            "aws_account_worker_orders_dead_lettered_total{code=\"SETTLE_FAILED\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "aws_account_worker_settle_failures_total{stage=\"event\"}"
        ),
        2.0,
        "{text}"
    );
    channel
        .queue_delete(refusing.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the refusing queue");
    let _ = connection.close(200, "done".into()).await;
    env.finish(worker).await;
}

#[test]
fn a_queue_name_composed_past_255_bytes_exits_2_naming_the_key() {
    let config = write_config("[business_model]\nprovider_email_domain = \"provider.example\"\n");
    let long = "q".repeat(200);
    let output = std::process::Command::new(BIN)
        .args(["--config", config.path().to_str().expect("path"), "run"])
        .env("WORKER__AMQP__ORDERS_QUEUE", &long)
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("amqp.orders_queue") && stderr.contains("255"),
        "{stderr}"
    );
}
