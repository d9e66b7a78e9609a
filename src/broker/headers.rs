//! Headers an order carries between attempts (docs/contract.md §6): the attempt count, the failure
//! times and reason, and the provisioning progress that lets a retry resume.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

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
/// The `CreateAccount` request id, once issued.
pub const CREATE_REQUEST_ID: &str = "x-create-request-id";
/// The new account's id, once created.
pub const ACCOUNT_ID: &str = "x-account-id";
/// The last step done: `create-sent` (a `CreateAccount` sent that got no answer),
/// `create-requested`, `account-created` or `policies-attached`.
pub const STEP: &str = "x-step";
/// Times AWS refused the creation with `EMAIL_ALREADY_EXISTS` while no account with the email
/// could be seen yet.
pub const EMAIL_LOOKS: &str = "x-email-looks";
/// Times `replay` moved the message back for processing (docs/contract.md §7); kept across attempts
/// and dead letters, so a message that fails again is not replayed forever.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// The [`STEP`] value once the account is in its OU (if any) and its SCPs are attached.
const POLICIES_ATTACHED: &str = "policies-attached";
/// The [`STEP`] value once a `CreateAccount` was sent and got no answer.
const CREATE_SENT: &str = "create-sent";

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

/// Reads the history from a delivery's headers; absent or odd values count as none.
pub fn history(headers: Option<&FieldTable>) -> History {
    let Some(headers) = headers else {
        return History::default();
    };
    History {
        attempts: number(headers, ATTEMPTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        first_failed_at: text(headers, FIRST_FAILED_AT),
        progress: Progress {
            create_request_id: text(headers, CREATE_REQUEST_ID),
            account_id: text(headers, ACCOUNT_ID),
            policies_attached: text(headers, STEP).as_deref() == Some(POLICIES_ATTACHED),
            maybe_in_flight: false,
            create_sent: text(headers, STEP).as_deref() == Some(CREATE_SENT),
            email_looks: number(headers, EMAIL_LOOKS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        },
    }
}

/// Writes what provisioning achieved, for the next attempt or a replay to resume from; the
/// progress headers of an earlier attempt are replaced, not kept (a failed creation request
/// that was given up must not be followed again).
pub fn set_progress(headers: &mut FieldTable, progress: &Progress) {
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        if ![CREATE_REQUEST_ID, ACCOUNT_ID, STEP, EMAIL_LOOKS].contains(&key.as_str()) {
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
    if progress.email_looks > 0 {
        set_number(headers, EMAIL_LOOKS, i64::from(progress.email_looks));
    }
    let step = match progress {
        Progress {
            account_id: Some(_),
            policies_attached: true,
            ..
        } => POLICIES_ATTACHED,
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
                policies_attached: true,
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
                    policies_attached: true,
                    email_looks: 1,
                    ..Progress::default()
                },
            );
            set_progress(&mut earlier, &progress);
            assert_eq!(history(Some(&earlier)).progress, progress);
            assert!(headers.contains_key("x-other"));
        }
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
