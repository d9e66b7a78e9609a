//! `aws-account-worker replay` as operators run it, against the real RabbitMQ and the fast moto:
//! orders dead-lettered while AWS was away come back, a fulfilled order replayed creates
//! nothing, what stays in the DLQ keeps its order, a poison message stops at the replay cap, a
//! replay killed mid-way loses nothing, and bad input or a missing broker or queue fails clearly.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_sts::config::Credentials;
use lapin::options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::support::{
    BIN, ClosedPort, DEADLINE, Payer, TestEnv, amqp_section, amqp_url,
    assert_one_account_per_order, digits, header_text, moto_config, moto_fast_endpoint,
    provisioned_events, publish_order, root_order, write_config,
};

/// What one run of `replay` printed, and how it ended.
pub(crate) struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The last line of standard output: the summary.
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    /// The listed lines (all but the summary) that start with `action`.
    fn listed(&self, action: &str) -> Vec<&str> {
        let lines: Vec<&str> = self.stdout.lines().collect();
        lines[..lines.len().saturating_sub(1)]
            .iter()
            .copied()
            .filter(|l| l.split(' ').next() == Some(action))
            .collect()
    }

    /// Asserts exit 0 and the summary line.
    pub(crate) fn expect(&self, summary: &str) {
        assert_eq!(self.code, Some(0), "replay exits 0:\n{self}");
        assert_eq!(self.summary(), summary, "summary:\n{self}");
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `aws-account-worker --config <toml> replay <args>` to its end, with `env` on top.
async fn replay_with(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let config = write_config(toml);
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(BIN)
            .args(["--config", config.path().to_str().expect("path"), "replay"])
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay ends within the deadline")
    .expect("run replay");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub(crate) async fn replay(env: &TestEnv, args: &[&str]) -> Ran {
    replay_with(&env.toml, args, &[]).await
}

/// A connection of the test's own, to put messages in queues and look at them.
pub(crate) struct Queues {
    _connection: Connection,
    pub(crate) channel: Channel,
}

impl Queues {
    pub(crate) async fn open() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ answers");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            _connection: connection,
            channel,
        }
    }

    /// Puts `body` with `headers` into the DLQ as the worker would, through the dead-letter
    /// exchange; waits for the confirm only when `confirm`.
    pub(crate) async fn dead_letter(
        &self,
        env: &TestEnv,
        body: &[u8],
        headers: FieldTable,
        confirm: bool,
    ) {
        let amqp = &env.settings.amqp;
        let to = (
            amqp.dead_letter_exchange.as_str(),
            amqp.orders_routing_key.as_str(),
        );
        let publish = publish_order(&self.channel, to, body, headers).await;
        if confirm {
            assert!(publish.await.expect("confirm").is_ack());
        }
    }

    /// Messages ready in `queue`.
    async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count()
    }

    /// The depth of `queue` once it is `expected`, or what it is after a deadline of 5 s: a
    /// quorum queue counts an acknowledgement only once its log applied it, so a count read
    /// right after a replay can lag by a message or two.
    async fn depth_settled_at(&self, queue: &str, expected: u32) -> u32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let depth = self.depth(queue).await;
            if depth == expected || tokio::time::Instant::now() >= deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every message now in `queue`, in order: (properties, body).
    async fn take_all(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            messages.push((
                message.delivery.properties.clone(),
                message.delivery.data.clone(),
            ));
        }
        messages
    }
}

/// The §6 headers of a worker's dead letter.
pub(crate) fn failure_headers(reason: &str, attempts: i64, replays: Option<i64>) -> FieldTable {
    let mut headers = FieldTable::default();
    let text = |v: &str| AMQPValue::LongString(LongString::from(v));
    headers.insert("x-failure-reason".into(), text(reason));
    headers.insert("x-failure-message".into(), text("AWS gave no answer"));
    headers.insert("x-attempts".into(), AMQPValue::LongLongInt(attempts));
    headers.insert("x-first-failed-at".into(), text("2026-11-26T10:00:00.000Z"));
    headers.insert("x-last-failed-at".into(), text("2026-11-26T10:04:00.000Z"));
    if let Some(replays) = replays {
        headers.insert("x-replay-count".into(), AMQPValue::LongLongInt(replays));
    }
    headers
}

/// The request id in an order body.
fn request_id(body: &[u8]) -> String {
    let order: Value = serde_json::from_slice(body).expect("an order");
    order["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_dead_lettered_while_aws_was_away_are_replayed_once_it_is_back() {
    let closed_port_socket = ClosedPort::new();
    let closed_port = closed_port_socket.port;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let down = moto_config(
        &format!("http://127.0.0.1:{closed_port}"),
        Credentials::new("testing", "testing", None, None, "down"),
    );
    let mut env = TestEnv::with_aws(
        "[retry]\ninitial_delay_ms = 50\nmax_delay_ms = 100\nmax_attempts = 2\n",
        payer,
        down,
    )
    .await;
    let queues = Queues::open().await;
    let amqp = env.settings.amqp.clone();

    // AWS away: every order dead-letters after two attempts.
    let worker = env.spawn_worker().await;
    let orders: Vec<Value> = (0..20).map(|_| root_order()).collect();
    let ids: Vec<String> = orders
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let mut dead = BTreeSet::new();
    while dead.len() < ids.len() {
        let event = env.next_event().await;
        assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
        assert_eq!(event["reason"], "AWS_UNREACHABLE", "{event}");
        dead.insert(event["request_id"].as_str().expect("id").to_owned());
    }
    worker.stop().await;
    assert_eq!(
        queues.depth_settled_at(&amqp.dead_letter_queue, 20).await,
        20
    );

    // A dry run lists all 20 and moves none.
    let dry = replay(&env, &["--dry-run"]).await;
    println!("--- replay --dry-run\n{}{}", dry.stdout, dry.stderr);
    dry.expect("replayed 0, kept 0, skipped 0");
    let listed = dry.listed("replay");
    assert_eq!(listed.len(), 20, "one line per message:\n{dry}");
    for id in &ids {
        let line = listed
            .iter()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("{id} listed:\n{dry}"));
        assert!(
            line.contains("reason=AWS_UNREACHABLE attempts=2 replays=0 first_failure=20"),
            "{line}"
        );
    }
    assert!(
        dry.stderr.contains("dry run: 20 would be replayed"),
        "{dry}"
    );
    assert_eq!(
        queues.depth_settled_at(&amqp.dead_letter_queue, 20).await,
        20
    );
    assert_eq!(
        queues.depth_settled_at(&amqp.orders_queue, 0).await,
        0,
        "nothing moved"
    );

    // AWS back; the worker runs while the replays do.
    env.aws = env.payer.config.clone();
    let worker = env.spawn_worker().await;

    // --request-id moves exactly one.
    let one = replay(&env, &["--request-id", &ids[7]]).await;
    println!("--- replay --request-id {}\n{}", ids[7], one.stdout);
    one.expect("replayed 1, kept 0, skipped 19");
    assert_eq!(one.listed("replayed").len(), 1, "{one}");
    assert!(one.listed("replayed")[0].contains(&ids[7]), "{one}");
    assert_eq!(
        queues.depth_settled_at(&amqp.dead_letter_queue, 19).await,
        19
    );
    let first = provisioned_events(&mut env, &ids[7..8]).await;
    assert_eq!(first.len(), 1, "only the one replayed is provisioned");

    // A full replay provisions the rest and empties the DLQ.
    let all = replay(&env, &[]).await;
    println!("--- replay\n{}", all.stdout);
    all.expect("replayed 19, kept 0, skipped 0");
    assert_eq!(queues.depth_settled_at(&amqp.dead_letter_queue, 0).await, 0);
    let rest: Vec<String> = ids.iter().filter(|id| *id != &ids[7]).cloned().collect();
    let mut events = provisioned_events(&mut env, &rest).await;
    events.extend(first);
    assert_eq!(events.len(), 20);
    assert!(
        events.values().all(|e| e.len() == 1),
        "one provisioned event per order"
    );
    assert_one_account_per_order(&env, &events).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_order_that_already_succeeded_creates_nothing_and_reports_again() {
    let mut env = TestEnv::fast("").await;
    let queues = Queues::open().await;
    let worker = env.spawn_worker().await;
    let order = root_order();
    env.publish_json(&order).await;
    let first = env.next_event().await;
    assert_eq!(first["event"], "aws.account.provisioned", "{first}");

    // The same order in the DLQ, as if a duplicate delivery had given up.
    queues
        .dead_letter(
            &env,
            order.to_string().as_bytes(),
            failure_headers("AWS_UNREACHABLE", 8, None),
            true,
        )
        .await;
    replay(&env, &[])
        .await
        .expect("replayed 1, kept 0, skipped 0");

    let again = env.next_event().await;
    assert_eq!(again["event"], "aws.account.provisioned", "{again}");
    assert_eq!(again["request_id"], order["id"]);
    assert_eq!(
        again["account"]["id"], first["account"]["id"],
        "the same account"
    );
    assert_eq!(env.payer.member_accounts().await.len(), 1, "no new account");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_left_in_the_dlq_keep_their_order_and_replayed_ones_start_afresh() {
    // No worker: what the replay moves stays in the orders queue to be looked at.
    let env = TestEnv::fast("").await;
    let queues = Queues::open().await;
    let amqp = env.settings.amqp.clone();
    let mut bodies = Vec::new();
    for i in 0..30 {
        let body = root_order().to_string().into_bytes();
        // Every tenth at the replay cap (5).
        let replays = (i % 10 == 9).then_some(5);
        let mut headers = failure_headers("AWS_UNREACHABLE", 8, replays);
        if i == 3 {
            headers.insert(
                "x-create-request-id".into(),
                AMQPValue::LongString("car-12345678".into()),
            );
            headers.insert(
                "x-step".into(),
                AMQPValue::LongString("create-requested".into()),
            );
        }
        queues.dead_letter(&env, &body, headers, true).await;
        bodies.push(body);
    }
    queues
        .dead_letter(
            &env,
            b"not json",
            failure_headers("NOT_JSON", 1, None),
            true,
        )
        .await;
    let poison = bodies.len();
    bodies.push(b"not json".to_vec());

    let dry = replay(&env, &["--dry-run"]).await;
    dry.expect("replayed 0, kept 3, skipped 0");
    assert_eq!(dry.listed("replay").len(), 28, "{dry}");
    assert_eq!(dry.listed("keep").len(), 3, "{dry}");
    assert!(
        dry.listed("replay")
            .iter()
            .any(|l| l.starts_with("replay   - reason=NOT_JSON attempts=1 replays=0")),
        "the poison message is listed without a request id:\n{dry}"
    );

    let ids = [request_id(&bodies[3]), request_id(&bodies[20])];
    let at_cap = request_id(&bodies[9]);
    let some = replay(
        &env,
        &[
            "--request-id",
            &ids[0],
            "--request-id",
            &ids[1],
            "--request-id",
            &at_cap,
        ],
    )
    .await;
    some.expect("replayed 2, kept 1, skipped 28");
    assert!(some.listed("kept")[0].contains(&at_cap), "{some}");
    let limited = replay(&env, &["--reason", "NOT_JSON", "--limit", "1"]).await;
    limited.expect("replayed 1, kept 0, skipped 28");

    let left: Vec<Vec<u8>> = queues
        .take_all(&amqp.dead_letter_queue)
        .await
        .into_iter()
        .map(|(properties, body)| {
            assert_eq!(
                properties.content_type().as_ref().map(ShortString::as_str),
                Some("application/json")
            );
            let headers = properties.headers().clone().unwrap_or_default();
            assert_eq!(header_text(&headers, "x-attempts").as_deref(), Some("8"));
            body
        })
        .collect();
    let expected: Vec<Vec<u8>> = bodies
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 20, poison].contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(left.len(), expected.len());
    assert!(left == expected, "the messages left keep their order");

    let moved = queues.take_all(&amqp.orders_queue).await;
    let moved_bodies: Vec<&[u8]> = moved.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(
        moved_bodies,
        [&bodies[3][..], &bodies[20][..], &bodies[poison][..]]
    );
    for (properties, _) in &moved {
        let headers = properties.headers().clone().unwrap_or_default();
        assert_eq!(
            header_text(&headers, "x-replay-count").as_deref(),
            Some("1")
        );
        for dropped in ["x-attempts", "x-failure-reason", "x-first-failed-at"] {
            assert_eq!(header_text(&headers, dropped), None, "{dropped} dropped");
        }
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
    }
    let progress = moved[0].0.headers().clone().unwrap_or_default();
    assert_eq!(
        header_text(&progress, "x-create-request-id").as_deref(),
        Some("car-12345678"),
        "the progress travels on, so the order resumes"
    );
    assert_eq!(
        header_text(&progress, "x-step").as_deref(),
        Some("create-requested")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_comes_back_to_the_dlq_and_stops_at_the_replay_cap() {
    let mut env = TestEnv::fast("[retry]\nmax_replays = 2\n").await;
    let queues = Queues::open().await;
    let worker = env.spawn_worker().await;
    env.publish(b"{not json").await;
    let dead_lettered = |event: &Value| {
        assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
        assert_eq!(event["reason"], "NOT_JSON", "{event}");
    };
    dead_lettered(&env.next_event().await);

    for replays in 0..2 {
        let ran = replay(&env, &[]).await;
        ran.expect("replayed 1, kept 0, skipped 0");
        assert!(
            ran.listed("replayed")[0]
                .contains(&format!("reason=NOT_JSON attempts=1 replays={replays}")),
            "{ran}"
        );
        // It fails again and returns to the DLQ, its replay count carried over.
        dead_lettered(&env.next_event().await);
    }
    let ran = replay(&env, &[]).await;
    println!("--- replay at the cap\n{}", ran.stdout);
    ran.expect("replayed 0, kept 1, skipped 0");
    assert!(
        ran.listed("kept")[0].starts_with("kept     - reason=NOT_JSON attempts=1 replays=2"),
        "{ran}"
    );
    let left = queues.take_all(&env.settings.amqp.dead_letter_queue).await;
    assert_eq!(left.len(), 1, "it stays in the DLQ");
    let headers = left[0].0.headers().clone().unwrap_or_default();
    assert_eq!(
        header_text(&headers, "x-replay-count").as_deref(),
        Some("2")
    );
    assert!(
        env.next_event_within(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing more happened"
    );
    env.finish(worker).await;
}

/// Puts `count` root-user orders in the DLQ as dead-lettered after 8 `AWS_UNREACHABLE`
/// attempts, confirmed; returns their request ids.
async fn dead_letter_orders(env: &TestEnv, queues: &Queues, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for _ in 0..count {
        let order = root_order();
        ids.insert(order["id"].as_str().expect("id").to_owned());
        let headers = failure_headers("AWS_UNREACHABLE", 8, None);
        queues
            .dead_letter(env, order.to_string().as_bytes(), headers, false)
            .await;
    }
    assert!(
        queues
            .channel
            .wait_for_confirms()
            .await
            .expect("confirms")
            .is_empty()
    );
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_mid_way_and_run_again_loses_nothing() {
    // No worker: every message ends in the DLQ or the orders queue, where it can be counted.
    let env = TestEnv::fast("").await;
    let queues = Queues::open().await;
    let amqp = env.settings.amqp.clone();
    const MESSAGES: usize = 600;
    let ids = dead_letter_orders(&env, &queues, MESSAGES).await;
    assert_eq!(
        queues
            .depth_settled_at(&amqp.dead_letter_queue, MESSAGES as u32)
            .await,
        MESSAGES as u32
    );

    let config = write_config(&env.toml);
    let mut first = tokio::process::Command::new(BIN)
        .args(["--config", config.path().to_str().expect("path"), "replay"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn replay");
    // Kill it once it has moved some.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while queues.depth(&amqp.orders_queue).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay moves nothing"
        );
        assert!(
            first.try_wait().expect("wait").is_none(),
            "the replay ended before it could be killed"
        );
    }
    first.start_kill().expect("SIGKILL");
    let status = first.wait().await.expect("wait");
    assert_eq!(status.code(), None, "killed by a signal");
    let moved = queues.depth(&amqp.orders_queue).await;
    assert!(
        (moved as usize) < MESSAGES,
        "killed mid-way: {moved} of {MESSAGES} moved"
    );

    let started = std::time::Instant::now();
    let second = replay(&env, &[]).await;
    println!(
        "--- replay after one killed at {moved}: {} in {:?}",
        second.summary(),
        started.elapsed()
    );
    assert_eq!(second.code, Some(0), "{second}");

    // Every message is in the orders queue or back in the DLQ; a duplicate is allowed.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ids.iter().any(|id| !seen.contains_key(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost: {:?}",
            ids.iter()
                .filter(|id| !seen.contains_key(*id))
                .collect::<Vec<_>>()
        );
        for queue in [&amqp.orders_queue, &amqp.dead_letter_queue] {
            for (_, body) in queues.take_all(queue).await {
                *seen.entry(request_id(&body)).or_default() += 1;
            }
        }
    }
    let duplicates = seen.values().filter(|n| **n > 1).count();
    assert!(
        duplicates <= 1,
        "at most the message in hand is duplicated: {duplicates}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_an_unreachable_broker_and_a_missing_dlq_fail_clearly() {
    let toml = format!(
        "{}\n[business_model]\nprovider_email_domain = \"provider.example\"\n",
        amqp_section(&digits(10))
    );
    for (args, flag) in [
        (&["--request-id", "AS-1234-5678"][..], "--request-id"),
        (&["--request-id", "PR-12ab"], "--request-id"),
        (&["--reason", " "], "--reason"),
        (&["--limit", "0"], "--limit"),
        (&["--limit", "many"], "--limit"),
        (&["--dry"], "--dry"),
    ] {
        let ran = replay_with(&toml, args, &[]).await;
        assert_eq!(ran.code, Some(2), "{args:?}:\n{ran}");
        assert!(ran.stderr.contains(flag), "{args:?} names {flag}:\n{ran}");
        assert!(ran.stdout.is_empty(), "{args:?}:\n{ran}");
    }

    let closed_port_socket = ClosedPort::new();
    let closed_port = closed_port_socket.port;
    let url = format!("amqp://guest:secret-pass@127.0.0.1:{closed_port}/%2f");
    let ran = replay_with(&toml, &[], &[("WORKER__AMQP__URL", &url)]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(
        ran.stderr.contains("cannot connect to the broker")
            && ran.stderr.contains(&format!("127.0.0.1:{closed_port}"))
            && ran.stderr.contains("amqp.url"),
        "{ran}"
    );
    assert!(
        !ran.stderr.contains("secret-pass"),
        "no password in messages"
    );

    // This test's names were never declared: no DLQ.
    let ran = replay_with(&toml, &["--dry-run"], &[]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(
        ran.stderr.contains("dead-letter queue") && ran.stderr.contains("definitions.json"),
        "{ran}"
    );
    assert!(ran.stdout.is_empty(), "no summary after a failure:\n{ran}");
    let settings = aws_account_worker::config::Settings::from_toml(&toml).expect("settings");
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers");
    let still_missing = aws_account_worker::broker::topology::ready_messages(
        &connection,
        &settings.amqp.dead_letter_queue,
    )
    .await
    .expect("look");
    assert_eq!(still_missing, None, "replay does not declare the DLQ");
    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replays_at_once_share_the_dlq_and_lose_nothing() {
    let env = TestEnv::fast("").await;
    let queues = Queues::open().await;
    let amqp = env.settings.amqp.clone();
    const MESSAGES: usize = 200;
    let ids = dead_letter_orders(&env, &queues, MESSAGES).await;

    let (a, b) = tokio::join!(replay(&env, &[]), replay(&env, &[]));
    let replayed = |ran: &Ran| -> usize {
        assert_eq!(ran.code, Some(0), "{ran}");
        ran.listed("replayed").len()
    };
    assert_eq!(
        replayed(&a) + replayed(&b),
        MESSAGES,
        "each message replayed by one of them:\n{a}\n{b}"
    );
    assert_eq!(queues.depth_settled_at(&amqp.dead_letter_queue, 0).await, 0);
    let moved: BTreeSet<String> = queues
        .take_all(&amqp.orders_queue)
        .await
        .iter()
        .map(|(_, body)| request_id(body))
        .collect();
    assert_eq!(moved, ids);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_format_json_prints_one_object_per_message_and_a_summary() {
    let env = TestEnv::fast("").await;
    let queues = Queues::open().await;
    let order = root_order().to_string().into_bytes();
    let id = request_id(&order);
    queues
        .dead_letter(
            &env,
            &order,
            failure_headers("AWS_UNREACHABLE", 8, None),
            true,
        )
        .await;
    queues
        .dead_letter(
            &env,
            b"not json",
            failure_headers("NOT_JSON", 1, Some(5)),
            true,
        )
        .await;
    let objects = |ran: &Ran| -> Vec<serde_json::Value> {
        ran.stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect()
    };

    let dry = replay(&env, &["--dry-run", "--format", "json"]).await;
    assert_eq!(dry.code, Some(0), "{dry}");
    let listed = objects(&dry);
    assert_eq!(listed.len(), 3, "two messages and the summary:\n{dry}");
    assert_eq!(listed[0]["type"], "message");
    assert_eq!(listed[0]["action"], "replay");
    assert_eq!(listed[0]["request_id"], id.as_str());
    assert_eq!(listed[0]["reason"], "AWS_UNREACHABLE");
    assert_eq!(listed[0]["attempts"], 8);
    assert_eq!(listed[0]["replays"], 0);
    assert_eq!(listed[1]["action"], "keep");
    assert_eq!(listed[1]["request_id"], serde_json::Value::Null);
    assert_eq!(listed[1]["replays"], 5);
    assert_eq!(
        listed[2],
        serde_json::json!({"type": "summary", "dry_run": true, "replayed": 0, "kept": 1,
            "skipped": 0, "would_replay": 1}),
        "{dry}"
    );

    let done = replay(&env, &["--format", "json"]).await;
    assert_eq!(done.code, Some(0), "{done}");
    let listed = objects(&done);
    assert_eq!(listed[0]["action"], "replayed", "{done}");
    assert_eq!(listed[1]["action"], "kept", "{done}");
    assert_eq!(listed[2]["type"], "summary");
    assert_eq!(listed[2]["replayed"], 1);
    assert_eq!(listed[2]["dry_run"], false);

    // Exit codes do not change with the format: an unreachable broker still exits 1.
    let closed_port_socket = ClosedPort::new();
    let closed_port = closed_port_socket.port;
    let url = format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f");
    let unreachable = replay_with(
        &env.toml,
        &["--format", "json"],
        &[("WORKER__AMQP__URL", &url)],
    )
    .await;
    assert_eq!(unreachable.code, Some(1), "{unreachable}");
    env.cleanup().await;
}
