//! Headers an order carries between attempts (docs/contract.md §6): the attempt count, the failure
//! times and reason, the waits in a row, the order's first delivery, and the provisioning progress
//! that lets a retry resume; and their bounds: every text header the worker writes is capped at
//! 1 KiB ([`set_text`]), and the headers of a message it publishes again stay within
//! [`HEADERS_BUDGET_BYTES`] ([`within_budget`]).

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tracing::warn;

use crate::domain::bounded::capped;
use crate::domain::ids::PolicyId;
use crate::domain::progress::Progress;
use crate::retry::{History, Reason};
use crate::settle::SettleCounts;

/// Failed attempts so far.
pub const ATTEMPTS: &str = "x-attempts";
/// Code of the last failure.
pub const FAILURE_REASON: &str = "x-failure-reason";
/// Message of the last failure.
pub const FAILURE_MESSAGE: &str = "x-failure-message";
/// RFC 3339 time of the first failure.
pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
/// RFC 3339 time of the last failure.
pub const LAST_FAILED_AT: &str = "x-last-failed-at";
/// Waits in a row for the reason in [`FAILURE_REASON`], spending no attempt (0 after a failed
/// attempt).
pub const WAITS: &str = "x-waits";
/// RFC 3339 time the worker first saw the order, written when it first sends it to a retry queue
/// (or the DLQ); `retry.max_order_age_seconds` counts from it, and replay removes it.
pub const FIRST_DELIVERED_AT: &str = "x-first-delivered-at";
/// The `CreateAccount` request id, once issued.
pub const CREATE_REQUEST_ID: &str = "x-create-request-id";
/// The new account's id, once created.
pub const ACCOUNT_ID: &str = "x-account-id";
/// The last step done: `create-sent` (a `CreateAccount` sent that got no answer),
/// `create-requested`, `account-created` or `policies-attached`.
pub const STEP: &str = "x-step";
/// The invitation an existing-account purchase follows (`h-…`), once announced.
pub const HANDSHAKE_ID: &str = "x-handshake-id";
/// Times AWS refused the creation with `EMAIL_ALREADY_EXISTS` while no account with the email
/// could be seen yet.
pub const EMAIL_LOOKS: &str = "x-email-looks";
/// Times `replay` moved the message back for processing (docs/contract.md §7); kept across attempts
/// and dead letters, so a message that fails again is not replayed forever.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// The SCPs attached so far, comma-separated (`p-1,p-2`): a retry attaches only the others.
pub const POLICIES_ATTACHED: &str = "x-policies-attached";
/// Times settling this order failed (a results publish refused, a confirm lost): not order
/// attempts, counted apart (docs/contract.md §6).
pub const SETTLE_FAILURES: &str = "x-settle-failures";
/// Set by a quorum queue on a message it delivers again (after a nack with requeue or a lost
/// channel): how often it was returned. The broker's own; never published again, since a
/// republished message starts its own count.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// The worker's own headers: kept whole by [`within_budget`] (each text value is at most
/// 1 KiB, see [`set_text`]); a header the worker adds belongs here.
pub const OWNED: [&str; 15] = [
    HANDSHAKE_ID,
    ATTEMPTS,
    EMAIL_LOOKS,
    WAITS,
    FIRST_DELIVERED_AT,
    POLICIES_ATTACHED,
    FAILURE_REASON,
    FAILURE_MESSAGE,
    FIRST_FAILED_AT,
    LAST_FAILED_AT,
    CREATE_REQUEST_ID,
    ACCOUNT_ID,
    STEP,
    REPLAY_COUNT,
    SETTLE_FAILURES,
];
/// The most bytes the headers of a message the worker publishes again may take, encoded: 16
/// KiB. lapin sends a message's properties in one frame and RabbitMQ closes the whole
/// connection (`FRAME_ERROR`) when that frame exceeds `frame_max` (128 KiB by default); 16 KiB
/// is an eighth of that, several times what the worker's own headers can reach (about ten
/// values of at most 1 KiB), and leaves the broker room for its own (`x-death`).
pub const HEADERS_BUDGET_BYTES: usize = 16 * 1024;
/// The [`STEP`] value once the account is in its OU (if any) and its SCPs are attached.
const PLACED: &str = "policies-attached";
/// At most this many bytes of [`POLICIES_ATTACHED`] are written (ids past it are left out: they
/// are attached again, which AWS accepts), and at most this many ids are read back.
const POLICIES_ATTACHED_MAX_BYTES: usize = 1024;
const POLICIES_ATTACHED_MAX_IDS: usize = 64;
/// The [`STEP`] value once a `CreateAccount` was sent and got no answer.
const CREATE_SENT: &str = "create-sent";
/// The [`STEP`] value once a cancel removed the account from the organization.
const REMOVED: &str = "removed";

/// A string header; absent, empty or of another type is `None`.
pub fn text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// An integer header, of any AMQP integer type or as decimal text; otherwise `None`.
pub fn number(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        _ => None,
    }
}

/// Reads the history from a delivery's headers, now; absent or odd values count as none.
pub fn history(headers: Option<&FieldTable>) -> History {
    history_at(headers, Utc::now())
}

/// Reads the history from a delivery's headers at `now`; absent or odd values count as none.
///
/// `x-first-delivered-at` is a claim like any header: one that is not a time, or lies in the
/// future, counts as absent (the order ages from now, and its next republish writes now), so a
/// forged value cannot keep an order alive past its age. A forged old value can only turn the
/// order's next retry or wait into an `ORDER_TOO_OLD` dead letter, with its event, which replay
/// undoes (it removes the header).
pub fn history_at(headers: Option<&FieldTable>, now: DateTime<Utc>) -> History {
    let Some(headers) = headers else {
        return History::default();
    };
    let first_delivered = text(headers, FIRST_DELIVERED_AT)
        .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= now);
    History {
        attempts: count(headers, ATTEMPTS),
        first_failed_at: text(headers, FIRST_FAILED_AT),
        last_reason: text(headers, FAILURE_REASON),
        waits: count(headers, WAITS),
        first_delivered_at: first_delivered.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        age: first_delivered
            .and_then(|t| (now - t).to_std().ok())
            .unwrap_or_default(),
        progress: Progress {
            create_request_id: text(headers, CREATE_REQUEST_ID),
            account_id: text(headers, ACCOUNT_ID),
            policies_attached: policies(headers),
            placed: text(headers, STEP).as_deref() == Some(PLACED),
            maybe_in_flight: false,
            create_sent: text(headers, STEP).as_deref() == Some(CREATE_SENT),
            email_looks: number(headers, EMAIL_LOOKS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            handshake_id: text(headers, HANDSHAKE_ID),
            removed: text(headers, STEP).as_deref() == Some(REMOVED),
            lock_was_busy: text(headers, FAILURE_REASON).as_deref()
                == Some(Reason::OrderBusy.as_str()),
        },
    }
}

/// A count header: an integer from 0 to `u32::MAX`, else 0.
fn count(headers: &FieldTable, key: &str) -> u32 {
    number(headers, key)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// The SCP ids of [`POLICIES_ATTACHED`]: only those that parse as SCP ids, and a bounded number
/// of them (provisioning then keeps only those of the order's plan).
fn policies(headers: &FieldTable) -> BTreeSet<PolicyId> {
    text(headers, POLICIES_ATTACHED)
        .unwrap_or_default()
        .split(',')
        .take(POLICIES_ATTACHED_MAX_IDS)
        .filter_map(|id| PolicyId::parse(id.trim()).ok())
        .collect()
}

/// `policies` joined by commas, as many as fit in [`POLICIES_ATTACHED_MAX_BYTES`].
fn joined(policies: &BTreeSet<PolicyId>) -> String {
    let mut joined = String::new();
    for id in policies.iter().take(POLICIES_ATTACHED_MAX_IDS) {
        let id = id.as_str();
        let extra = if joined.is_empty() { 0 } else { 1 };
        if joined.len() + extra + id.len() > POLICIES_ATTACHED_MAX_BYTES {
            break;
        }
        if extra == 1 {
            joined.push(',');
        }
        joined.push_str(id);
    }
    joined
}

/// Writes what provisioning achieved, for the next attempt or a replay to resume from; the
/// progress headers of an earlier attempt are replaced, not kept (a failed creation request
/// that was given up must not be followed again).
pub fn set_progress(headers: &mut FieldTable, progress: &Progress) {
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        let progress_keys = [
            CREATE_REQUEST_ID,
            ACCOUNT_ID,
            STEP,
            POLICIES_ATTACHED,
            EMAIL_LOOKS,
            HANDSHAKE_ID,
        ];
        if !progress_keys.contains(&key.as_str()) {
            kept.insert(key.clone(), value.clone());
        }
    }
    *headers = kept;
    if let Some(id) = &progress.create_request_id {
        set_text(headers, CREATE_REQUEST_ID, id);
    }
    if let Some(id) = &progress.account_id {
        set_text(headers, ACCOUNT_ID, id);
    }
    if progress.account_id.is_some() && !progress.policies_attached.is_empty() {
        set_text(
            headers,
            POLICIES_ATTACHED,
            &joined(&progress.policies_attached),
        );
    }
    if progress.email_looks > 0 {
        set_number(headers, EMAIL_LOOKS, i64::from(progress.email_looks));
    }
    if let Some(id) = &progress.handshake_id {
        set_text(headers, HANDSHAKE_ID, id);
    }
    let step = match progress {
        Progress { removed: true, .. } => REMOVED,
        Progress {
            account_id: Some(_),
            placed: true,
            ..
        } => PLACED,
        Progress {
            account_id: Some(_),
            ..
        } => "account-created",
        Progress {
            create_request_id: Some(_),
            ..
        } => "create-requested",
        Progress {
            create_sent: true, ..
        } => CREATE_SENT,
        _ => return,
    };
    set_text(headers, STEP, step);
}

/// Sets a string header, capped at 1 KiB ([`capped`]): header values often come from input.
pub fn set_text(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(capped(value).as_ref())),
    );
}

/// Reads the settle-failure count and the broker's delivery count; absent or odd is 0.
pub fn settle_counts(headers: Option<&FieldTable>) -> SettleCounts {
    let count = |key| {
        headers
            .and_then(|h| number(h, key))
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    SettleCounts {
        settle_failures: count(SETTLE_FAILURES),
        delivery_count: count(DELIVERY_COUNT),
    }
}

/// What [`within_budget`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Headers dropped.
    pub count: usize,
    /// Their encoded size.
    pub bytes: usize,
}

/// `headers` cut to [`HEADERS_BUDGET_BYTES`] for publishing again: [`DELIVERY_COUNT`] goes
/// (the broker's, of the message as delivered); the worker's own headers ([`OWNED`]) stay
/// unless one is larger than a capped value can be (forged input); then the others, smallest
/// first, as long as the whole fits. A sender's oversized header is what goes, not the small
/// ones behind it. Returns what was dropped, for the caller to warn about.
pub fn within_budget(headers: FieldTable) -> (FieldTable, Dropped) {
    let mut owned = Vec::new();
    let mut foreign = Vec::new();
    let mut dropped = Dropped::default();
    for (key, value) in headers.inner() {
        let size = entry_len(key, value);
        if key.as_str() == DELIVERY_COUNT {
            continue;
        }
        if OWNED.contains(&key.as_str()) {
            if size <= OWNED_ENTRY_MAX_BYTES {
                owned.push((key.clone(), value.clone(), size));
            } else {
                dropped.count += 1;
                dropped.bytes += size;
            }
        } else {
            foreign.push((key.clone(), value.clone(), size));
        }
    }
    foreign.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    let mut kept = FieldTable::default();
    let mut total = TABLE_LENGTH_BYTES;
    for (key, value, size) in owned.into_iter().chain(foreign) {
        if total + size <= HEADERS_BUDGET_BYTES {
            total += size;
            kept.insert(key, value);
        } else {
            dropped.count += 1;
            dropped.bytes += size;
        }
    }
    (kept, dropped)
}

/// [`within_budget`], with a warning naming what had to go.
pub fn budgeted(headers: FieldTable) -> FieldTable {
    let (kept, dropped) = within_budget(headers);
    if dropped.count > 0 {
        warn!(
            dropped = dropped.count,
            dropped_bytes = dropped.bytes,
            budget_bytes = HEADERS_BUDGET_BYTES,
            "headers over the budget dropped from a message published again"
        );
    }
    kept
}

/// The encoded size of a header table, as it goes on the wire.
pub fn encoded_len(headers: &FieldTable) -> usize {
    TABLE_LENGTH_BYTES
        + headers
            .inner()
            .iter()
            .map(|(key, value)| entry_len(key, value))
            .sum::<usize>()
}

/// A table's length prefix.
const TABLE_LENGTH_BYTES: usize = 4;

/// The largest entry of the worker's own a [`within_budget`] keeps: a capped text value, its
/// key, and the encoding's type and length bytes.
const OWNED_ENTRY_MAX_BYTES: usize = crate::domain::bounded::MAX_INPUT_TEXT_BYTES + 64;

/// One entry's encoded size: the key (a length byte and its bytes) and the value.
fn entry_len(key: &ShortString, value: &AMQPValue) -> usize {
    1 + key.as_str().len() + value_len(value)
}

/// A value's encoded size: its type byte and its payload.
fn value_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(a) => 4 + a.len(),
        AMQPValue::FieldArray(items) => 4 + items.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(table) => encoded_len(table),
        // Scalars take at most 8 bytes (a decimal 5, a timestamp or a 64-bit number 8).
        _ => 8,
    }
}

/// Sets a number header.
pub fn set_number(headers: &mut FieldTable, key: &str, value: i64) {
    headers.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_through_headers() {
        let mut headers = FieldTable::default();
        set_number(&mut headers, ATTEMPTS, 3);
        set_text(&mut headers, FIRST_FAILED_AT, "2026-11-26T10:00:00Z");
        set_text(&mut headers, CREATE_REQUEST_ID, "car-abc");
        let history = history(Some(&headers));
        assert_eq!(history.attempts, 3);
        assert_eq!(
            history.first_failed_at.as_deref(),
            Some("2026-11-26T10:00:00Z")
        );
        assert_eq!(
            history.progress.create_request_id.as_deref(),
            Some("car-abc")
        );
        assert_eq!(history.progress.account_id, None);
    }

    #[test]
    fn a_retry_for_a_busy_lock_says_so_and_no_other_does() {
        let cases = [
            (Some("ORDER_BUSY"), true),
            (Some("CREATION_SLOT_BUSY"), false),
            (Some("order_busy"), false),
            (None, false),
        ];
        for (reason, busy) in cases {
            let mut table = FieldTable::default();
            if let Some(reason) = reason {
                set_text(&mut table, FAILURE_REASON, reason);
            }
            assert_eq!(
                history(Some(&table)).progress.lock_was_busy,
                busy,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn progress_round_trips_through_headers() {
        let cases = [
            Progress::default(),
            Progress {
                create_request_id: Some("car-1".into()),
                ..Progress::default()
            },
            Progress {
                create_request_id: Some("car-1".into()),
                account_id: Some("111122223333".into()),
                ..Progress::default()
            },
            Progress {
                create_request_id: Some("car-1".into()),
                account_id: Some("111122223333".into()),
                policies_attached: scps(&["p-aaaaaaaa", "p-bbbbbbbb"]),
                ..Progress::default()
            },
            Progress {
                create_request_id: Some("car-1".into()),
                account_id: Some("111122223333".into()),
                policies_attached: scps(&["p-aaaaaaaa", "p-bbbbbbbb"]),
                placed: true,
                ..Progress::default()
            },
            Progress {
                create_sent: true,
                ..Progress::default()
            },
            Progress {
                email_looks: 2,
                ..Progress::default()
            },
        ];
        for progress in cases {
            let mut headers = FieldTable::default();
            set_text(&mut headers, "x-other", "kept");
            set_progress(&mut headers, &progress);
            assert_eq!(history(Some(&headers)).progress, progress);
            // Written over an earlier attempt's progress, it replaces it.
            let mut earlier = FieldTable::default();
            set_progress(
                &mut earlier,
                &Progress {
                    create_request_id: Some("car-old".into()),
                    account_id: Some("999999999999".into()),
                    policies_attached: scps(&["p-cccccccc"]),
                    placed: true,
                    email_looks: 1,
                    ..Progress::default()
                },
            );
            set_progress(&mut earlier, &progress);
            assert_eq!(history(Some(&earlier)).progress, progress);
            assert!(headers.contains_key("x-other"));
        }
    }

    fn scps(ids: &[&str]) -> BTreeSet<PolicyId> {
        ids.iter()
            .map(|id| PolicyId::parse(id).expect("SCP id"))
            .collect()
    }

    #[test]
    fn attached_policies_are_read_back_only_as_scp_ids_and_bounded() {
        let mut headers = FieldTable::default();
        set_text(
            &mut headers,
            POLICIES_ATTACHED,
            "p-aaaaaaaa, p-bbbbbbbb,,not-an-id,p-short,p-aaaaaaaa",
        );
        assert_eq!(
            history(Some(&headers)).progress.policies_attached,
            scps(&["p-aaaaaaaa", "p-bbbbbbbb"])
        );
        // Thousands of ids: a bounded number is read.
        let many: Vec<String> = (0..5000).map(|n| format!("p-{n:0>10}")).collect();
        set_text(&mut headers, POLICIES_ATTACHED, &many.join(","));
        let read = history(Some(&headers)).progress.policies_attached;
        assert_eq!(read.len(), POLICIES_ATTACHED_MAX_IDS);
        // And a bounded header is written.
        let progress = Progress {
            account_id: Some("111122223333".into()),
            policies_attached: many
                .iter()
                .map(|id| PolicyId::parse(id).expect("id"))
                .collect(),
            ..Progress::default()
        };
        let mut headers = FieldTable::default();
        set_progress(&mut headers, &progress);
        let written = text(&headers, POLICIES_ATTACHED).expect("written");
        assert!(
            written.len() <= POLICIES_ATTACHED_MAX_BYTES,
            "{}",
            written.len()
        );
        assert!(
            written.starts_with("p-0000000000,p-0000000001,"),
            "{written}"
        );
    }

    #[test]
    fn an_old_message_whose_step_is_policies_attached_is_placed() {
        let mut headers = FieldTable::default();
        set_text(&mut headers, ACCOUNT_ID, "111122223333");
        set_text(&mut headers, STEP, "policies-attached");
        let progress = history(Some(&headers)).progress;
        assert!(progress.placed);
        assert!(progress.policies_attached.is_empty());
    }

    #[test]
    fn the_age_counts_from_a_first_delivery_in_the_past_only() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let at = |value: &str| {
            let mut headers = FieldTable::default();
            set_text(&mut headers, FIRST_DELIVERED_AT, value);
            let history = history_at(Some(&headers), now);
            (history.first_delivered_at, history.age.as_secs())
        };
        let known = |t: &str| Some(t.to_owned());
        for (value, expected) in [
            (
                "2026-11-26T09:00:00Z",
                (known("2026-11-26T09:00:00.000Z"), 3600),
            ),
            (
                "2026-11-26T11:00:00+02:00",
                (known("2026-11-26T09:00:00.000Z"), 3600),
            ),
            (
                "2026-11-26T10:00:00.000Z",
                (known("2026-11-26T10:00:00.000Z"), 0),
            ),
            (
                "1970-01-01T00:00:00Z",
                (known("1970-01-01T00:00:00.000Z"), 1_795_687_200),
            ),
            // Forged into the future, or not a time: as if absent, the order ages from now.
            ("2026-11-26T10:00:01Z", (None, 0)),
            ("9999-12-31T23:59:59Z", (None, 0)),
            ("yesterday", (None, 0)),
            ("", (None, 0)),
        ] {
            assert_eq!(at(value), expected, "{value}");
        }
        assert_eq!(history_at(None, now).age, std::time::Duration::ZERO);
    }

    #[test]
    fn waits_and_the_last_reason_are_read() {
        let mut headers = FieldTable::default();
        set_number(&mut headers, WAITS, 4);
        set_text(&mut headers, FAILURE_REASON, "ORDER_BUSY");
        let history = history(Some(&headers));
        assert_eq!(history.waits, 4);
        assert_eq!(history.last_reason.as_deref(), Some("ORDER_BUSY"));
        headers.insert(WAITS.into(), AMQPValue::LongInt(-4));
        assert_eq!(history_at(Some(&headers), Utc::now()).waits, 0);
    }

    #[test]
    fn every_text_header_the_worker_writes_is_capped() {
        let mut headers = FieldTable::default();
        set_text(&mut headers, FAILURE_MESSAGE, &"m".repeat(200 * 1024));
        set_progress(
            &mut headers,
            &Progress {
                account_id: Some("1".repeat(200 * 1024)),
                ..Progress::default()
            },
        );
        for key in [FAILURE_MESSAGE, ACCOUNT_ID] {
            let value = text(&headers, key).expect("set");
            assert!(value.len() <= 1024 && value.ends_with('…'), "{key}");
        }
    }

    #[test]
    fn the_encoded_length_counts_keys_types_and_lengths() {
        let mut headers = FieldTable::default();
        assert_eq!(encoded_len(&headers), 4);
        // 1 + 3 key bytes, 1 type byte, 4 length bytes, 5 value bytes.
        set_text(&mut headers, "x-a", "hello");
        assert_eq!(encoded_len(&headers), 4 + 4 + 1 + 4 + 5);
        set_number(&mut headers, "x-n", 7);
        assert_eq!(encoded_len(&headers), 18 + 4 + 1 + 8);
    }

    /// A header table of `(key, value)` text pairs, unchecked (as a sender may publish it).
    fn raw(pairs: &[(&str, String)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert(
                ShortString::from(*key),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        table
    }

    #[test]
    fn the_budget_drops_the_large_foreign_headers_first() {
        let big = "b".repeat(120 * 1024);
        let mut headers = raw(&[
            ("a-big", big.clone()),
            ("z-small", "kept".to_owned()),
            ("m-medium", "m".repeat(10 * 1024)),
            ("n-medium", "n".repeat(10 * 1024)),
            (DELIVERY_COUNT, "3".to_owned()),
        ]);
        set_text(&mut headers, FAILURE_MESSAGE, &big);
        set_number(&mut headers, ATTEMPTS, 2);
        let (kept, dropped) = within_budget(headers);
        assert!(
            encoded_len(&kept) <= HEADERS_BUDGET_BYTES,
            "{}",
            encoded_len(&kept)
        );
        for key in [FAILURE_MESSAGE, ATTEMPTS, "z-small", "m-medium"] {
            assert!(kept.contains_key(key), "{key} kept");
        }
        for key in ["a-big", "n-medium", DELIVERY_COUNT] {
            assert!(!kept.contains_key(key), "{key} dropped");
        }
        // The two foreign headers over the budget; the broker's delivery count goes unsaid.
        assert_eq!(dropped.count, 2);
        assert!(dropped.bytes > 130 * 1024, "{}", dropped.bytes);
    }

    #[test]
    fn a_forged_header_of_the_workers_own_name_is_dropped_when_oversized() {
        let headers = raw(&[
            (REPLAY_COUNT, "9".repeat(64 * 1024)),
            (STEP, "account-created".to_owned()),
        ]);
        let (kept, dropped) = within_budget(headers);
        assert!(!kept.contains_key(REPLAY_COUNT));
        assert!(kept.contains_key(STEP));
        assert_eq!(dropped.count, 1);
        let small = raw(&[("x-trace", "t".to_owned())]);
        let (kept, dropped) = within_budget(small.clone());
        assert_eq!(
            (kept, dropped),
            (small, Dropped::default()),
            "within it, nothing changes"
        );
    }

    #[test]
    fn settle_counts_read_the_workers_and_the_brokers_count() {
        assert_eq!(settle_counts(None), SettleCounts::default());
        let mut headers = FieldTable::default();
        set_number(&mut headers, SETTLE_FAILURES, 3);
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongInt(2));
        assert_eq!(
            settle_counts(Some(&headers)),
            SettleCounts {
                settle_failures: 3,
                delivery_count: 2
            }
        );
    }

    #[test]
    fn odd_or_missing_headers_mean_a_first_attempt() {
        assert_eq!(history(None), History::default());
        let mut headers = FieldTable::default();
        headers.insert("x-attempts".into(), AMQPValue::LongString("two".into()));
        assert_eq!(history(Some(&headers)).attempts, 0);
        headers.insert("x-attempts".into(), AMQPValue::LongInt(-1));
        assert_eq!(history(Some(&headers)).attempts, 0);
        headers.insert("x-attempts".into(), AMQPValue::ShortShortUInt(2));
        assert_eq!(history(Some(&headers)).attempts, 2);
    }
}
