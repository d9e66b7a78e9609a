//! Headers an order carries between attempts (docs/contract.md §6): the attempt count, the failure
//! times and reason, the waits in a row, the order's first delivery, and the provisioning progress
//! that lets a retry resume.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::domain::ids::PolicyId;
use crate::domain::progress::Progress;
use crate::retry::History;

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
/// The last step done: `create-requested`, `account-created` or `policies-attached`.
pub const STEP: &str = "x-step";
/// Times `replay` moved the message back for processing (docs/contract.md §7); kept across attempts
/// and dead letters, so a message that fails again is not replayed forever.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// The SCPs attached so far, comma-separated (`p-1,p-2`): a retry attaches only the others.
pub const POLICIES_ATTACHED: &str = "x-policies-attached";
/// The [`STEP`] value once the account is in its OU (if any) and its SCPs are attached.
const PLACED: &str = "policies-attached";
/// At most this many bytes of [`POLICIES_ATTACHED`] are written (ids past it are left out: they
/// are attached again, which AWS accepts), and at most this many ids are read back.
const POLICIES_ATTACHED_MAX_BYTES: usize = 1024;
const POLICIES_ATTACHED_MAX_IDS: usize = 64;

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
        if ![CREATE_REQUEST_ID, ACCOUNT_ID, STEP, POLICIES_ATTACHED].contains(&key.as_str()) {
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
    let step = match progress {
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
        _ => return,
    };
    set_text(headers, STEP, step);
}

/// Sets a string header.
pub fn set_text(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
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
