//! Waiting is not failing (docs/contract.md §6): a busy order backs off and spends no attempt, no
//! order waits past `retry.max_order_age_seconds` (`ORDER_TOO_OLD`, and replay gives a fresh
//! age), lock refusals do not stop a worker, and a worker whose broker channels ran out says so
//! on `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use aws_account_worker::broker::lease::{Lease, Leases};
use aws_account_worker::config::Settings;
use aws_account_worker::domain::order::PartialIds;
use aws_account_worker::observability::{self, Metrics, Readiness};
use aws_account_worker::pipeline::{Resolution, Resolved, Trip, resolve_body};
use aws_account_worker::replay::{self, Request};
use chrono::{DateTime, Utc};
use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tracing::Span;

use crate::support::{
    DEADLINE, TestEnv, WorkerHandle, amqp_url, header_text, http_get, order, publish_order,
    root_order,
};

/// A connection of the test's own: it holds order locks as another worker would, and publishes
/// orders with headers of its choice.
struct Other {
    connection: Arc<Connection>,
}

impl Other {
    async fn open() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers");
        Self {
            connection: Arc::new(connection),
        }
    }

    /// Takes the lock the worker asks for before provisioning `order`, as another worker
    /// holding it would.
    async fn hold(&self, settings: &Settings, order: &Value) -> Lease {
        let body = order.to_string();
        let Resolution::Planned(request, plan) = resolve_body(&settings.rules(), body.as_bytes())
        else {
            panic!("the order resolves: {order}");
        };
        let ids = PartialIds::of(&request);
        let resolved = Resolved {
            request,
            trip: Trip::New(plan),
            ids,
            span: Span::none(),
        };
        let queue = format!(
            "{}.busy.{}",
            settings.amqp.orders_queue,
            resolved.lock_key()
        );
        Leases::on(&self.connection)
            .try_take(&queue)
            .await
            .expect("broker")
            .expect("the lock is free")
    }

    /// Publishes `order` to the orders exchange with `headers`, with confirm.
    async fn publish(&self, settings: &Settings, order: &Value, headers: &[(&str, &str)]) {
        let mut table = FieldTable::default();
        for (key, value) in headers {
            table.insert((*key).into(), AMQPValue::LongString((*value).into()));
        }
        let amqp = &settings.amqp;
        let body = order.to_string();
        self.put(&amqp.orders_exchange, body.as_bytes(), table, settings)
            .await;
    }

    /// Puts `body` with `headers` back into the DLQ, as the worker left it.
    async fn dead_letter(&self, settings: &Settings, body: &[u8], headers: FieldTable) {
        self.put(&settings.amqp.dead_letter_exchange, body, headers, settings)
            .await;
    }

    async fn put(&self, exchange: &str, body: &[u8], headers: FieldTable, settings: &Settings) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let to = (exchange, settings.amqp.orders_routing_key.as_str());
        let confirm = publish_order(&channel, to, body, headers)
            .await
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        let _ = channel.close(200, "published".into()).await;
    }
}

/// The value of the metric line starting with `line` (name and labels), 0 if absent.
async fn metric(worker: &WorkerHandle, line: &str) -> f64 {
    let (_, text) = worker.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const BUSY_RETRIES: &str = "aws_account_worker_orders_retried_total{code=\"ORDER_BUSY\"}";

fn time(headers: &FieldTable, key: &str) -> DateTime<Utc> {
    let text = header_text(headers, key).unwrap_or_else(|| panic!("{key} in {headers:?}"));
    DateTime::parse_from_rfc3339(&text)
        .unwrap_or_else(|e| panic!("{key}: {text}: {e}"))
        .with_timezone(&Utc)
}

fn count(headers: &FieldTable, key: &str) -> u32 {
    header_text(headers, key)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {headers:?}"))
}

/// The dead-lettered event of the order `order`, its reason, and the DLQ's one message (taken
/// out of the DLQ).
async fn dead_lettered(env: &mut TestEnv, order: &Value) -> (FieldTable, Vec<u8>) {
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
    assert_eq!(event["request_id"], order["id"], "{event}");
    assert_eq!(event["reason"], "ORDER_TOO_OLD", "{event}");
    assert_eq!(event["attempts"], 0, "waiting spent no attempt: {event}");
    let mut dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 1);
    let (headers, body) = dlq.remove(0);
    assert_eq!(
        header_text(&headers, "x-failure-reason").as_deref(),
        Some("ORDER_TOO_OLD")
    );
    assert_eq!(count(&headers, "x-attempts"), 0);
    assert!(
        header_text(&headers, "x-failure-message").is_some_and(|m| m.contains("ORDER_BUSY")),
        "the message says what it waited for: {headers:?}"
    );
    (headers, body)
}

/// A duplicate held up by another delivery looks again less and less often, spends no attempt,
/// and is dead-lettered `ORDER_TOO_OLD` once past its age; a replay starts a fresh age.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_order_backs_off_spends_no_attempt_and_ages_out_until_replayed() {
    let mut env = TestEnv::fast(
        r#"
        [retry]
        initial_delay_ms = 200
        max_delay_ms = 60000
        max_attempts = 2
        max_order_age_seconds = 4
        "#,
    )
    .await;
    let other = Other::open().await;
    let order = order(&[], &[]);
    let _held = other.hold(&env.settings, &order).await;
    let worker = env.spawn_worker().await;
    let published = Utc::now();
    env.publish_json(&order).await;

    let (headers, body) = dead_lettered(&mut env, &order).await;
    let dead_at = Utc::now();
    let first = time(&headers, "x-first-delivered-at");
    assert!(
        first >= published - chrono::Duration::seconds(1) && first <= dead_at,
        "the first delivery is the worker's own record: {first}"
    );
    assert!(
        (dead_at - first).num_milliseconds() > 4000,
        "dead-lettered only past the age"
    );
    // Waits of 200, 400, 800, 1600 ms (3 s) fit in 4 s, the next (3.2 s) does not: about
    // five looks, where a fixed 200 ms wait would make about twenty.
    let retried = metric(&worker, BUSY_RETRIES).await;
    let waits = count(&headers, "x-waits");
    assert!((3.0..=7.0).contains(&retried), "busy retries: {retried}");
    assert_eq!(
        f64::from(waits),
        retried,
        "x-waits counts the waits in a row"
    );

    // Replayed while still busy: a fresh age, so it waits (and backs off) about 4 s again.
    other.dead_letter(&env.settings, &body, headers).await;
    let replayed_at = Utc::now();
    let summary = replay::run(&env.settings, &Request::default(), |_, _| {})
        .await
        .expect("replay");
    assert_eq!(summary.replayed, 1);
    let (again, _) = dead_lettered(&mut env, &order).await;
    let fresh = time(&again, "x-first-delivered-at");
    assert!(fresh >= replayed_at, "a fresh age: {fresh} < {replayed_at}");
    assert!((Utc::now() - fresh).num_milliseconds() > 4000);
    assert!(count(&again, "x-waits") >= 3, "{again:?}");
    assert_eq!(header_text(&again, "x-replay-count").as_deref(), Some("1"));
    env.finish(worker).await;
}

/// `x-first-delivered-at` is a claim: an old one ages the order out at its first wait (replay
/// undoes that), one in the future or not a time counts as now and is written afresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_delivery_header_can_neither_keep_an_order_alive_nor_pass_for_a_time() {
    let mut env = TestEnv::fast(
        r#"
        [retry]
        initial_delay_ms = 200
        max_delay_ms = 400
        max_order_age_seconds = 2
        "#,
    )
    .await;
    let other = Other::open().await;
    let worker = env.spawn_worker().await;

    let old = order(&[], &[]);
    let _old_held = other.hold(&env.settings, &old).await;
    let old_time = "2020-01-01T00:00:00.000Z";
    other
        .publish(&env.settings, &old, &[("x-first-delivered-at", old_time)])
        .await;
    let (headers, _) = dead_lettered(&mut env, &old).await;
    assert_eq!(
        header_text(&headers, "x-first-delivered-at").as_deref(),
        Some(old_time)
    );
    assert_eq!(count(&headers, "x-waits"), 0, "at its first wait");

    for forged in ["2999-01-01T00:00:00Z", "not a time"] {
        let order = order(&[], &[]);
        let _held = other.hold(&env.settings, &order).await;
        let published = Utc::now();
        other
            .publish(&env.settings, &order, &[("x-first-delivered-at", forged)])
            .await;
        let (headers, _) = dead_lettered(&mut env, &order).await;
        let first = time(&headers, "x-first-delivered-at");
        assert!(
            first >= published - chrono::Duration::seconds(1) && first <= Utc::now(),
            "{forged} counts as now: {first}"
        );
        assert!((Utc::now() - first).num_milliseconds() > 2000);
    }
    env.finish(worker).await;
}

/// Lock refusals spend channel ids for good (lapin); a worker refused 2,500 times (more than a
/// connection's 2,047 channels) still takes a new order and stays ready and live.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refused_2500_locks_still_takes_new_orders() {
    let mut env = TestEnv::fast(
        r#"
        [retry]
        initial_delay_ms = 1
        max_delay_ms = 1
        redelivered_create_delay_ms = 1
        "#,
    )
    .await;
    let other = Other::open().await;
    let duplicate = order(&[], &[]);
    let _held = other.hold(&env.settings, &duplicate).await;
    let worker = env.spawn_worker().await;
    // Sixteen deliveries of one order, looking at its lock every millisecond or so.
    for _ in 0..16 {
        env.publish_json(&duplicate).await;
    }
    let started = tokio::time::Instant::now();
    loop {
        let refused = metric(&worker, BUSY_RETRIES).await;
        if refused >= 2500.0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE * 3,
            "only {refused} refusals within the deadline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = root_order();
    env.publish_json(&fresh).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    assert_eq!(event["request_id"], fresh["id"]);
    assert_eq!(worker.get("/readyz").await.0, 200);
    assert_eq!(worker.get("/healthz").await.0, 200);
    assert!(metric(&worker, BUSY_RETRIES).await >= 2500.0);
    env.finish(worker).await;
}

/// Where channels do run out (a connection allowed 16, with no replacement), the leases report
/// it: `/healthz` and `/readyz` answer 503 with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn channels_running_out_fail_liveness_and_readiness() {
    let queue = format!("test-lease.{}", crate::support::digits(10));
    let other = Other::open().await;
    let _held = Leases::on(&other.connection)
        .try_take(&queue)
        .await
        .expect("broker")
        .expect("free");
    let url = format!("{}?channel_max=16", amqp_url());
    let small = Arc::new(
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers"),
    );
    assert_eq!(small.configuration().channel_max(), 16);
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    readiness.set(true);
    let (address, serving) = observability::bind("127.0.0.1:0", metrics.clone(), readiness)
        .await
        .expect("bind");
    let server = tokio::spawn(serving);
    assert_eq!(http_get(address, "/healthz").await.0, 200);
    assert_eq!(http_get(address, "/readyz").await.0, 200);

    let leases = Leases::on_reporting(&small, metrics.health());
    let mut refusals = 0;
    let error = loop {
        match leases.try_take(&queue).await {
            Ok(None) => refusals += 1,
            Ok(Some(_)) => panic!("the other connection holds it"),
            Err(e) => break e,
        }
        assert!(refusals <= 64, "channels never ran out");
    };
    assert!(
        aws_account_worker::broker::lease::channels_exhausted(&error),
        "{error}"
    );
    assert!(
        refusals >= 8,
        "{refusals} refusals before the channels ran out"
    );
    for path in ["/healthz", "/readyz"] {
        let (status, body) = http_get(address, path).await;
        assert_eq!(status, 503, "{path}");
        assert!(body.contains("ran out of channels"), "{path}: {body}");
    }
    server.abort();
    let _ = small.close(200, "done".into()).await;
    let _ = other.connection.close(200, "done".into()).await;
}
