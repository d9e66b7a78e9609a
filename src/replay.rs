//! `aws-account-worker replay` (docs/contract.md §7): moves dead-lettered orders from the DLQ back to the
//! orders exchange.
//!
//! The DLQ is read from the front, once through the messages it holds when the replay starts.
//! A message to replay is published to the orders exchange with confirm, then acknowledged in
//! the DLQ; every other message is published again to the back of the DLQ, unchanged, with
//! confirm, then acknowledged. So a crash can duplicate a message but never lose one, and the
//! messages left behind keep their order. (A quorum queue does not keep the order of messages
//! handed back with `basic.nack`: RabbitMQ 3.10 returned them shuffled, so holding them
//! unacknowledged and handing them back is no way to leave them in place.)
//!
//! A message put back carries the run's mark ([`PASS`]): the count read at the start can be
//! one too many (a quorum queue counts an acknowledgement only once its log applied it), and a
//! run that meets its own mark has gone round the queue once; it hands that message back
//! (`basic.nack`, to the front, one message) and stops.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ExchangeKind};
use tracing::{info, warn};

use crate::broker::headers::{self, FAILURE_REASON, FIRST_FAILED_AT, REPLAY_COUNT};
use crate::broker::publisher::{PublishError, Publisher};
use crate::broker::{self, topology};
use crate::config::Settings;
use crate::domain::ids::RequestId;

/// How long `replay` waits for the broker to answer its one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one step with the broker (taking a message, a publish's confirm, the final close)
/// may take before the replay gives up on it instead of hanging: a step that stalls leaves the
/// message in hand in the DLQ.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mark of the replay run that last put a message back in the DLQ; dropped on replay.
pub const PASS: &str = "x-replay-pass";

/// RabbitMQ's record of the times it dead-lettered a message, most recent first.
const DEATH: &str = "x-death";
/// The reason of a message's first RabbitMQ dead-lettering.
const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// The reason RabbitMQ gives a message that waited out its TTL (our retry queues).
const EXPIRED: &str = "expired";

/// Headers a replayed message does not carry on: the failure record of the attempts that led to
/// the DLQ (the replay starts them afresh, settle failures included), its first delivery (a
/// replay gives the order a fresh age), RabbitMQ's dead-letter and delivery records, and the
/// `x-last-death-*` headers of RabbitMQ 3.13 and later.
const DROPPED_ON_REPLAY: [&str; 18] = [
    PASS,
    headers::ATTEMPTS,
    headers::WAITS,
    headers::FIRST_DELIVERED_AT,
    headers::SETTLE_FAILURES,
    headers::FAILURE_REASON,
    headers::FAILURE_MESSAGE,
    headers::FIRST_FAILED_AT,
    headers::LAST_FAILED_AT,
    DEATH,
    FIRST_DEATH_REASON,
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
    REPLAY_COUNT,
];

/// Which messages to replay: all filters must match. No filter matches every message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these requests (any of them), if not empty.
    pub request_ids: Vec<RequestId>,
    /// Only messages with this reason (see [`DeadLetter::reason`]).
    pub reason: Option<String>,
    /// At most this many messages replayed.
    pub limit: Option<u32>,
}

impl Filter {
    /// True when `letter` is selected by the request ids and the reason (not the limit).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let id_matches = self.request_ids.is_empty()
            || letter
                .request_id
                .as_deref()
                .is_some_and(|id| self.request_ids.iter().any(|r| r.as_str() == id));
        let reason_matches = self.reason.as_deref().is_none_or(|r| r == letter.reason);
        id_matches && reason_matches
    }
}

/// What a message in the DLQ says about itself, from its body and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The body's `id` when the body is JSON with a well-formed request id.
    pub request_id: Option<String>,
    /// Why it is in the DLQ: RabbitMQ's reason when RabbitMQ dead-lettered it last (e.g.
    /// `delivery_limit`), else the worker's `x-failure-reason`, else `unknown`.
    pub reason: String,
    /// Failed attempts the worker recorded (`x-attempts`, 0 when absent).
    pub attempts: u32,
    /// Times replayed so far (`x-replay-count`, 0 when absent).
    pub replays: u32,
    /// When it first failed: `x-first-failed-at`, else the time of RabbitMQ's earliest
    /// dead-lettering (RFC 3339).
    pub first_failure: Option<String>,
}

/// The `x-death` entries of `headers`, most recent first.
fn deaths(headers: &FieldTable) -> Vec<&FieldTable> {
    match headers.inner().get(DEATH) {
        Some(AMQPValue::FieldArray(entries)) => entries
            .as_slice()
            .iter()
            .filter_map(|entry| match entry {
                AMQPValue::FieldTable(table) => Some(table),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The time of an `x-death` entry, in seconds since the epoch.
fn death_time(entry: &FieldTable) -> Option<i64> {
    match entry.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => i64::try_from(*seconds).ok(),
        _ => headers::number(entry, "time"),
    }
}

impl DeadLetter {
    /// Reads what a DLQ message says; odd or missing values count as none (a poison message
    /// can hold anything).
    pub fn read(headers: Option<&FieldTable>, body: &[u8]) -> Self {
        let empty = FieldTable::default();
        let headers = headers.unwrap_or(&empty);
        let request_id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|order| order.get("id")?.as_str().map(str::to_owned))
            .filter(|id| RequestId::parse(id).is_ok());
        let deaths = deaths(headers);
        // Our retry queues dead-letter every retried order (`expired`); only another reason
        // means RabbitMQ, not the worker, sent it to the DLQ.
        let last_death = deaths
            .first()
            .and_then(|entry| headers::text(entry, "reason"))
            .filter(|reason| reason != EXPIRED);
        let reason = last_death
            .or_else(|| headers::text(headers, FAILURE_REASON))
            .or_else(|| headers::text(headers, FIRST_DEATH_REASON))
            .unwrap_or_else(|| "unknown".to_owned());
        let count = |key| {
            headers::number(headers, key)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        let first_failure = headers::text(headers, FIRST_FAILED_AT).or_else(|| {
            deaths
                .iter()
                .filter_map(|entry| death_time(entry))
                .min()
                .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
                .map(|time| time.to_rfc3339_opts(SecondsFormat::Secs, true))
        });
        Self {
            request_id,
            reason,
            attempts: count(headers::ATTEMPTS),
            replays: count(REPLAY_COUNT),
            first_failure,
        }
    }
}

/// What becomes of one DLQ message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Back to the orders exchange.
    Replay,
    /// Selected, but replayed `retry.max_replays` times already: it stays in the DLQ.
    Keep,
    /// Not selected by the filters, or beyond `--limit`: it stays in the DLQ.
    Skip,
}

/// Decides for `letter`, when `replayed` messages were replayed (or would be, in a dry run)
/// before it.
pub fn decide(letter: &DeadLetter, filter: &Filter, max_replays: u32, replayed: u32) -> Decision {
    if !filter.matches(letter) {
        Decision::Skip
    } else if letter.replays >= max_replays {
        Decision::Keep
    } else if filter.limit.is_some_and(|limit| replayed >= limit) {
        Decision::Skip
    } else {
        Decision::Replay
    }
}

/// The properties of the replayed message: the original ones (content type, ids, …) with the
/// progress headers kept, the failure and RabbitMQ records dropped ([`DROPPED_ON_REPLAY`]), and
/// `x-replay-count` one more than `replays`.
pub fn replay_properties(original: &BasicProperties, replays: u32) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(headers) = original.headers() {
        for (key, value) in headers.inner() {
            if !DROPPED_ON_REPLAY.contains(&key.as_str()) {
                table.insert(key.clone(), value.clone());
            }
        }
    }
    headers::set_number(&mut table, REPLAY_COUNT, i64::from(replays) + 1);
    original.clone().with_headers(headers::budgeted(table))
}

/// `original` with the run's mark `pass` in its headers.
fn marked(original: &BasicProperties, pass: &str) -> BasicProperties {
    let mut table = original.headers().clone().unwrap_or_default();
    headers::set_text(&mut table, PASS, pass);
    original.clone().with_headers(headers::budgeted(table))
}

/// The counts of one run: `replayed N, kept M, skipped K`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Moved back to the orders exchange (0 in a dry run).
    pub replayed: u32,
    /// Selected but at `retry.max_replays`: left in the DLQ.
    pub kept: u32,
    /// Not selected (filters, `--limit`): left in the DLQ.
    pub skipped: u32,
    /// In a dry run, how many would have been replayed.
    pub would_replay: u32,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {}, kept {}, skipped {}",
            self.replayed, self.kept, self.skipped
        )
    }
}

/// One listed message: `<action> <request id or -> reason=… attempts=… replays=…
/// first_failure=…`, where the action is `replayed`/`kept`, or in a dry run `replay`/`keep`.
pub fn line(decision: Decision, dry_run: bool, letter: &DeadLetter) -> String {
    let action = action(decision, dry_run);
    format!(
        "{action:<8} {} reason={} attempts={} replays={} first_failure={}",
        letter.request_id.as_deref().unwrap_or("-"),
        letter.reason,
        letter.attempts,
        letter.replays,
        letter.first_failure.as_deref().unwrap_or("-"),
    )
}

/// One listed message as a JSON object (`replay --format json`): `{"type": "message",
/// "action", "request_id", "reason", "attempts", "replays", "first_failure"}`, with the action
/// and fields of [`line`] (`request_id` and `first_failure` are null when unknown).
pub fn json(decision: Decision, dry_run: bool, letter: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "type": "message",
        "action": action(decision, dry_run),
        "request_id": letter.request_id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "replays": letter.replays,
        "first_failure": letter.first_failure,
    })
}

impl Summary {
    /// The counts as the last JSON object of `replay --format json`: `{"type": "summary",
    /// "dry_run", "replayed", "kept", "skipped", "would_replay"}`.
    pub fn to_json(&self, dry_run: bool) -> serde_json::Value {
        serde_json::json!({
            "type": "summary",
            "dry_run": dry_run,
            "replayed": self.replayed,
            "kept": self.kept,
            "skipped": self.skipped,
            "would_replay": self.would_replay,
        })
    }
}

/// What became of a listed message: `replayed`/`kept`, or in a dry run `replay`/`keep`.
fn action(decision: Decision, dry_run: bool) -> &'static str {
    match (decision, dry_run) {
        (Decision::Replay, false) => "replayed",
        (Decision::Replay, true) => "replay",
        (Decision::Keep, false) => "kept",
        (Decision::Keep, true) => "keep",
        (Decision::Skip, _) => "skipped",
    }
}

/// Why a replay stopped; every message not yet handled stays in the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No connection to the broker.
    #[error(
        "cannot connect to the broker at {address}: {error}; check amqp.url (WORKER__AMQP__URL) and that RabbitMQ runs and this host can reach it"
    )]
    Unreachable {
        /// Host, port, vhost and user.
        address: String,
        /// What the connection attempt said (in the message, not a source of its own).
        error: lapin::Error,
    },
    /// The DLQ does not exist (a replay never declares it: a typo must not create an empty one).
    #[error(
        "the dead-letter queue `{0}` does not exist; check amqp.dead_letter_queue, or start the worker once (it declares its topology) or import deploy/rabbitmq/definitions.json"
    )]
    NoDeadLetterQueue(String),
    /// The orders exchange does not exist.
    #[error(
        "the orders exchange `{0}` does not exist; check amqp.orders_exchange, or start the worker once (it declares its topology) or import deploy/rabbitmq/definitions.json"
    )]
    NoOrdersExchange(String),
    /// The broker failed or refused something mid-way.
    #[error(
        "{done} before the broker failed: {error}; the message in hand stays in the DLQ, run replay again"
    )]
    Broker {
        /// What was done before.
        done: Summary,
        /// The failure.
        error: lapin::Error,
    },
    /// The broker did not answer a step within [`STEP_TIMEOUT`].
    #[error(
        "{done} before the broker stopped answering ({step}, {}s); the message in hand stays in the DLQ, run replay again",
        STEP_TIMEOUT.as_secs()
    )]
    Stalled {
        /// What was done before.
        done: Summary,
        /// The step that got no answer.
        step: &'static str,
    },
    /// A publish was not confirmed (e.g. no queue bound to the orders exchange).
    #[error(
        "{done} before a publish failed: {error}; the message in hand stays in the DLQ, fix the cause and run replay again"
    )]
    Publish {
        /// What was done before.
        done: Summary,
        /// The failure.
        error: PublishError,
    },
}

/// What the command line asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Which messages.
    pub filter: Filter,
    /// List, move nothing.
    pub dry_run: bool,
}

/// Runs a replay against the broker of `settings`, handing each listed message (replayed or
/// kept: what became of it, and what it is; see [`line`] and [`json`]) to `emit` as soon as it
/// is known; returns the counts.
///
/// # Errors
/// [`ReplayError`]: the broker is unreachable, the DLQ or the orders exchange is missing, or
/// the broker failed mid-way (what was done until then is in the error).
pub async fn run(
    settings: &Settings,
    request: &Request,
    mut emit: impl FnMut(Decision, &DeadLetter),
) -> Result<Summary, ReplayError> {
    let connection = broker::connect_once(&settings.amqp.url, CONNECT_TIMEOUT)
        .await
        .map_err(|error| ReplayError::Unreachable {
            address: broker::address(&settings.amqp.url),
            error,
        })?;
    let result = replay_on(&connection, settings, request, &mut emit).await;
    // The close waits for the broker to take every acknowledgement sent before it. A close that
    // fails leaves unacknowledged messages in the DLQ: a duplicate at worst.
    let closing = connection.close(200, "replay done".into());
    if tokio::time::timeout(STEP_TIMEOUT, closing).await.is_err() {
        warn!(
            "the broker did not answer the close: acknowledgements not yet taken leave their messages in the DLQ (a duplicate at worst)"
        );
    }
    result
}

/// A step that the broker left unanswered past [`STEP_TIMEOUT`].
fn stalled(done: Summary, step: &'static str) -> ReplayError {
    ReplayError::Stalled { done, step }
}

async fn replay_on(
    connection: &Connection,
    settings: &Settings,
    request: &Request,
    emit: &mut impl FnMut(Decision, &DeadLetter),
) -> Result<Summary, ReplayError> {
    let amqp = &settings.amqp;
    let mut summary = Summary::default();
    let broker_failed =
        |done: Summary| move |error: lapin::Error| ReplayError::Broker { done, error };
    let depth = topology::ready_messages(connection, &amqp.dead_letter_queue)
        .await
        .map_err(broker_failed(summary))?
        .ok_or_else(|| ReplayError::NoDeadLetterQueue(amqp.dead_letter_queue.clone()))?;
    if !request.dry_run
        && !topology::exists(connection, &amqp.orders_exchange, Some(ExchangeKind::Topic))
            .await
            .map_err(broker_failed(summary))?
    {
        return Err(ReplayError::NoOrdersExchange(amqp.orders_exchange.clone()));
    }
    let publisher = Publisher::open(connection)
        .await
        .map_err(broker_failed(summary))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(broker_failed(summary))?;
    info!(
        queue = %amqp.dead_letter_queue,
        messages = depth,
        dry_run = request.dry_run,
        "replay reads the dead-letter queue"
    );
    let pass = uuid::Uuid::new_v4().to_string();
    for _ in 0..depth {
        // Another replay may have taken the rest.
        let taking = channel.basic_get(
            amqp.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let Some(message) = tokio::time::timeout(STEP_TIMEOUT, taking)
            .await
            .map_err(|_| stalled(summary, "basic.get"))?
            .map_err(broker_failed(summary))?
        else {
            break;
        };
        let delivery = message.delivery;
        let table = delivery.properties.headers().as_ref();
        if table.and_then(|t| headers::text(t, PASS)) == Some(pass.clone()) {
            // Round the queue once: this one and all behind it were put back by this run.
            let front = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            delivery.nack(front).await.map_err(broker_failed(summary))?;
            break;
        }
        let letter = DeadLetter::read(table, &delivery.data);
        let replayed = summary.replayed + summary.would_replay;
        let decision = decide(
            &letter,
            &request.filter,
            settings.retry.max_replays,
            replayed,
        );
        // Replayed: to the orders exchange. Left in the DLQ: to its back, as it was but for
        // this run's mark, so the messages left keep their order.
        let (exchange, routing_key, properties) = match decision {
            Decision::Replay if !request.dry_run => (
                amqp.orders_exchange.as_str(),
                amqp.orders_routing_key.as_str(),
                replay_properties(&delivery.properties, letter.replays),
            ),
            _ => (
                "",
                amqp.dead_letter_queue.as_str(),
                marked(&delivery.properties, &pass),
            ),
        };
        let publishing = publisher.publish(exchange, routing_key, &delivery.data, properties);
        tokio::time::timeout(STEP_TIMEOUT, publishing)
            .await
            .map_err(|_| stalled(summary, "publish confirm"))?
            .map_err(|error| ReplayError::Publish {
                done: summary,
                error,
            })?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker_failed(summary))?;
        match decision {
            Decision::Replay if request.dry_run => summary.would_replay += 1,
            Decision::Replay => summary.replayed += 1,
            Decision::Keep => summary.kept += 1,
            Decision::Skip => summary.skipped += 1,
        }
        if decision != Decision::Skip {
            emit(decision, &letter);
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString, ShortString};

    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert(ShortString::from(*key), value.clone());
        }
        table
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    fn death(reason: &str, queue: &str, time: u64) -> AMQPValue {
        AMQPValue::FieldTable(table(&[
            ("reason", text(reason)),
            ("queue", text(queue)),
            ("count", AMQPValue::LongLongInt(1)),
            ("time", AMQPValue::Timestamp(time)),
        ]))
    }

    const ORDER: &[u8] = br#"{"id":"PR-1234-5678-000","type":"purchase"}"#;

    #[test]
    fn reads_the_workers_dead_letters() {
        // Retried through a retry queue (x-death `expired`), then dead-lettered by the worker.
        let headers = table(&[
            ("x-attempts", AMQPValue::LongLongInt(8)),
            ("x-failure-reason", text("AWS_UNREACHABLE")),
            ("x-first-failed-at", text("2026-11-26T10:00:00.000Z")),
            ("x-replay-count", AMQPValue::LongLongInt(2)),
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![death(
                    "expired",
                    "orders.retry.1000ms",
                    1_790_000_000,
                )])),
            ),
            ("x-first-death-reason", text("expired")),
        ]);
        assert_eq!(
            DeadLetter::read(Some(&headers), ORDER),
            DeadLetter {
                request_id: Some("PR-1234-5678-000".into()),
                reason: "AWS_UNREACHABLE".into(),
                attempts: 8,
                replays: 2,
                first_failure: Some("2026-11-26T10:00:00.000Z".into()),
            }
        );
    }

    #[test]
    fn reads_rabbitmqs_dead_letters() {
        // What RabbitMQ 3.10 sets when the orders queue's delivery limit is reached, after an
        // earlier retry.
        let headers = table(&[
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    death("delivery_limit", "orders", 1_790_000_100),
                    death("expired", "orders.retry.1000ms", 1_790_000_000),
                ])),
            ),
            ("x-first-death-reason", text("expired")),
            ("x-delivery-count", AMQPValue::LongLongInt(0)),
            ("x-failure-reason", text("Throttling")),
        ]);
        let letter = DeadLetter::read(Some(&headers), ORDER);
        assert_eq!(letter.reason, "delivery_limit");
        assert_eq!(letter.attempts, 0);
        assert_eq!(
            letter.first_failure.as_deref(),
            Some("2026-09-21T14:13:20Z"),
            "the earliest dead-lettering"
        );
    }

    #[test]
    fn poison_bodies_and_bare_messages_read_as_unknown() {
        for body in [
            &b"not json"[..],
            br#"{"id":"PR-12ab"}"#,
            br#"{"id":7}"#,
            br#"[1]"#,
        ] {
            let letter = DeadLetter::read(None, body);
            assert_eq!(letter.request_id, None, "{body:?}");
            assert_eq!(letter.reason, "unknown");
            assert_eq!((letter.attempts, letter.replays), (0, 0));
            assert_eq!(letter.first_failure, None);
        }
        let odd = table(&[
            ("x-replay-count", text("many")),
            ("x-attempts", AMQPValue::LongInt(-3)),
        ]);
        let letter = DeadLetter::read(Some(&odd), b"");
        assert_eq!((letter.attempts, letter.replays), (0, 0));
    }

    fn letter(id: Option<&str>, reason: &str, replays: u32) -> DeadLetter {
        DeadLetter {
            request_id: id.map(str::to_owned),
            reason: reason.into(),
            attempts: 1,
            replays,
            first_failure: None,
        }
    }

    #[test]
    fn decisions_follow_the_filters_the_cap_and_the_limit() {
        let id = |s: &str| RequestId::parse(s).expect("valid");
        let everything = Filter::default();
        let one = Filter {
            request_ids: vec![id("PR-1-1"), id("PR-2-2")],
            ..Filter::default()
        };
        let reason = Filter {
            reason: Some("NOT_JSON".into()),
            ..Filter::default()
        };
        let two = Filter {
            limit: Some(2),
            ..Filter::default()
        };
        use Decision::*;
        // (letter, filter, replayed before, decision)
        let cases = [
            (letter(Some("PR-1-1"), "X", 0), &everything, 0, Replay),
            (letter(Some("PR-1-1"), "X", 4), &everything, 0, Replay),
            (letter(Some("PR-1-1"), "X", 5), &everything, 0, Keep),
            (letter(Some("PR-1-1"), "X", 9), &everything, 0, Keep),
            (letter(Some("PR-2-2"), "X", 0), &one, 0, Replay),
            (letter(Some("PR-3-3"), "X", 0), &one, 0, Skip),
            (letter(None, "NOT_JSON", 0), &one, 0, Skip),
            (letter(None, "NOT_JSON", 0), &reason, 0, Replay),
            (letter(None, "NOT_JSON", 5), &reason, 0, Keep),
            (
                letter(Some("PR-1-1"), "AWS_UNREACHABLE", 0),
                &reason,
                0,
                Skip,
            ),
            (letter(Some("PR-1-1"), "X", 0), &two, 1, Replay),
            (letter(Some("PR-1-1"), "X", 0), &two, 2, Skip),
            (letter(Some("PR-1-1"), "X", 5), &two, 2, Keep),
        ];
        for (letter, filter, replayed, expected) in cases {
            assert_eq!(
                decide(&letter, filter, 5, replayed),
                expected,
                "{letter:?} {filter:?} after {replayed}"
            );
        }
    }

    #[test]
    fn a_replayed_or_kept_message_keeps_its_headers_within_the_budget() {
        // RabbitMQ dead-letters a message by itself (delivery limit) with its sender's headers,
        // however large: published again whole, it could overflow a frame.
        let original = BasicProperties::default().with_headers(table(&[
            ("x-huge", text(&"h".repeat(120 * 1024))),
            ("x-custom", text("kept")),
            ("x-create-request-id", text("car-1")),
        ]));
        for properties in [replay_properties(&original, 0), marked(&original, "pass-1")] {
            let headers = properties.headers().clone().expect("headers");
            assert!(headers::encoded_len(&headers) <= headers::HEADERS_BUDGET_BYTES);
            assert!(!headers.contains_key("x-huge"));
            assert!(
                headers.contains_key("x-custom") && headers.contains_key("x-create-request-id")
            );
        }
    }

    #[test]
    fn a_replayed_message_starts_afresh_and_keeps_its_progress() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_headers(table(&[
                ("x-attempts", AMQPValue::LongLongInt(8)),
                ("x-waits", AMQPValue::LongLongInt(2)),
                ("x-first-delivered-at", text("2026-11-25T10:00:00.000Z")),
                ("x-failure-reason", text("AWS_UNREACHABLE")),
                ("x-failure-message", text("no answer")),
                ("x-first-failed-at", text("2026-11-26T10:00:00.000Z")),
                ("x-last-failed-at", text("2026-11-26T10:04:00.000Z")),
                ("x-create-request-id", text("car-1")),
                ("x-account-id", text("111122223333")),
                ("x-step", text("account-created")),
                (
                    "x-death",
                    AMQPValue::FieldArray(FieldArray::from(vec![death("expired", "q", 1)])),
                ),
                ("x-first-death-reason", text("expired")),
                ("x-first-death-queue", text("q")),
                ("x-first-death-exchange", text("")),
                ("x-delivery-count", AMQPValue::LongLongInt(3)),
                ("x-replay-count", AMQPValue::ShortShortUInt(2)),
                ("x-settle-failures", AMQPValue::LongLongInt(18)),
                ("x-custom", text("kept")),
            ]));
        let replayed = replay_properties(&original, 2);
        let headers = replayed.headers().clone().expect("headers");
        let mut keys: Vec<&str> = headers.inner().keys().map(ShortString::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "x-account-id",
                "x-create-request-id",
                "x-custom",
                "x-replay-count",
                "x-step"
            ]
        );
        assert_eq!(headers::number(&headers, REPLAY_COUNT), Some(3));
        assert_eq!(
            replayed.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            replayed.message_id().as_ref().map(ShortString::as_str),
            Some("m-1")
        );
        let history = headers::history(Some(&headers));
        assert_eq!(history.attempts, 0, "attempts start again");
        assert_eq!(
            (history.first_delivered_at, history.waits),
            (None, 0),
            "a fresh age, no waits"
        );
        assert_eq!(history.progress.account_id.as_deref(), Some("111122223333"));
        assert_eq!(
            headers::number(
                replay_properties(&BasicProperties::default(), 0)
                    .headers()
                    .as_ref()
                    .expect("headers"),
                REPLAY_COUNT
            ),
            Some(1)
        );
    }

    #[test]
    fn lines_and_summary_read_as_documented() {
        let letter = DeadLetter {
            request_id: Some("PR-1234-5678-000".into()),
            reason: "AWS_UNREACHABLE".into(),
            attempts: 3,
            replays: 1,
            first_failure: Some("2026-11-26T10:00:00.000Z".into()),
        };
        assert_eq!(
            line(Decision::Replay, true, &letter),
            "replay   PR-1234-5678-000 reason=AWS_UNREACHABLE attempts=3 replays=1 first_failure=2026-11-26T10:00:00.000Z"
        );
        assert!(line(Decision::Keep, false, &letter).starts_with("kept     PR-1234-5678-000 "));
        let poison = DeadLetter::read(None, b"garbage");
        assert_eq!(
            line(Decision::Replay, false, &poison),
            "replayed - reason=unknown attempts=0 replays=0 first_failure=-"
        );
        let summary = Summary {
            replayed: 19,
            kept: 1,
            skipped: 2,
            would_replay: 0,
        };
        assert_eq!(summary.to_string(), "replayed 19, kept 1, skipped 2");
    }
}
