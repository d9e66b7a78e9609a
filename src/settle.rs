//! Settling, decided: what becomes of a delivery is a pure function of its [`Outcome`], its
//! [`History`] and the retry settings. The broker side (`broker::settle`) only carries the
//! [`Disposition`] out: it publishes with confirm, then acknowledges. When that fails (a
//! results publish refused, the broker busy), [`after_settle_failure`] decides what follows:
//! a retry queue with a backoff, or the dead-letter queue before the broker's delivery limit.

use std::time::Duration;

use crate::config::RetrySettings;
use crate::domain::order::PartialIds;
use crate::domain::progress::Progress;
use crate::pipeline::{Failure, Outcome};
use crate::report::{self, Event};
use crate::retry::{self, History, Reason};

/// What to do with a delivery.
#[derive(Debug)]
pub enum Disposition {
    /// Publish the event, then acknowledge.
    Report(Event),
    /// Publish the message, with the failure and the progress in its headers, to the retry
    /// queue of `queue_ms` delay, expiring after `wait_ms`; then acknowledge.
    Retry {
        /// Why, and what to resume from.
        failure: Failure,
        /// `x-attempts` of the published message: failed attempts so far.
        attempts: u32,
        /// The delay of the retry queue (one queue per distinct delay).
        queue_ms: u64,
        /// How long the message waits there.
        wait_ms: u64,
        /// `x-waits` of the published message: waits in a row for the failure's reason (0
        /// after a failed attempt).
        waits: u32,
        /// An event to publish before the message goes to the retry queue (an existing
        /// account's `aws.account.invited`, while the order follows the invitation).
        notice: Option<Event>,
    },
    /// Publish the message, with the failure in its headers, to the dead-letter exchange and
    /// then the `aws.account.dead-lettered` event; then acknowledge.
    DeadLetter {
        /// Why, and what was achieved.
        failure: Failure,
        /// `x-attempts` of the dead-lettered message, this attempt included.
        attempts: u32,
        /// `aws.account.dead-lettered`, published after the message.
        event: Event,
    },
    /// Hand the delivery back to the broker unacknowledged, for another attempt.
    HandBack(String),
}

/// What becomes of a delivery whose history is `history` and whose processing came to
/// `outcome`. `jitter` (0 to 1, drawn by the caller) places a retry's wait between half and
/// all of its backoff step.
///
/// - a report is published and acknowledged;
/// - a transient failure is retried after the backoff step of its attempt, or dead-lettered
///   once `retry.max_attempts` attempts failed;
/// - a wait (`Outcome::Later`) goes to the shortest retry queue that holds it, spending no
///   attempt; a busy order's waits in a row back off ([`retry::busy_backoff_ms`]);
/// - an order that would retry or wait once more, older than `retry.max_order_age_seconds`
///   since its first delivery, is dead-lettered as `ORDER_TOO_OLD`;
/// - a bad message or a permanent failure is dead-lettered at once.
pub fn disposition(
    outcome: Outcome,
    history: &History,
    retry: &RetrySettings,
    jitter: f64,
) -> Disposition {
    let too_old = history.age > Duration::from_secs(retry.max_order_age_seconds);
    match outcome {
        Outcome::Report(event) => Disposition::Report(event),
        Outcome::Announce(event, failure, wait) => {
            match disposition(Outcome::Later(failure, wait), history, retry, jitter) {
                Disposition::Retry {
                    failure,
                    attempts,
                    queue_ms,
                    wait_ms,
                    waits,
                    ..
                } => Disposition::Retry {
                    failure,
                    attempts,
                    queue_ms,
                    wait_ms,
                    waits,
                    notice: Some(event),
                },
                other => other,
            }
        }
        Outcome::Later(failure, wait) if failure.reason.is_long_wait() => {
            if history.age > retry::LONG_WAIT_MAX_AGE {
                return dead_letter(aged(failure, history, retry), history.attempts);
            }
            let waits = history.waits_for(&failure.reason);
            let wait_ms = retry::long_wait_ms(retry, waits)
                .min(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            Disposition::Retry {
                failure,
                attempts: history.attempts,
                queue_ms: retry::queue_for(retry, wait_ms),
                wait_ms,
                waits,
                notice: None,
            }
        }
        Outcome::Retry(failure) => {
            let attempts = history.attempts.saturating_add(1);
            if attempts >= retry.max_attempts {
                dead_letter(failure, attempts)
            } else if too_old {
                dead_letter(aged(failure, history, retry), attempts)
            } else {
                let delay = retry::backoff_ms(retry, attempts);
                Disposition::Retry {
                    failure,
                    attempts,
                    queue_ms: delay,
                    wait_ms: retry::jittered_ms(delay, jitter),
                    waits: 0,
                    notice: None,
                }
            }
        }
        Outcome::Later(failure, _) if too_old => {
            dead_letter(aged(failure, history, retry), history.attempts)
        }
        Outcome::Later(failure, wait) => {
            let waits = history.waits_for(&failure.reason);
            let wait_ms = if failure.reason == Reason::OrderBusy {
                retry::busy_backoff_ms(retry, waits)
            } else {
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
            };
            Disposition::Retry {
                failure,
                attempts: history.attempts,
                queue_ms: retry::queue_for(retry, wait_ms),
                wait_ms,
                waits,
                notice: None,
            }
        }
        Outcome::DeadLetter(failure) => dead_letter(failure, history.attempts.saturating_add(1)),
        Outcome::HandBack(why) => Disposition::HandBack(why),
    }
}

/// `failure` of an order past its age: `ORDER_TOO_OLD`, saying what it last waited for.
fn aged(failure: Failure, history: &History, retry: &RetrySettings) -> Failure {
    let message = format!(
        "not done {}s after its first delivery at {} (retry.max_order_age_seconds = {}); last: {}: {}",
        history.age.as_secs(),
        history.first_delivered_at.as_deref().unwrap_or("?"),
        retry.max_order_age_seconds,
        failure.reason,
        failure.message,
    );
    Failure {
        reason: Reason::OrderTooOld,
        message,
        ..failure
    }
}

/// Dead-letters `failure` after `attempts`, with its event.
fn dead_letter(failure: Failure, attempts: u32) -> Disposition {
    let event = report::dead_lettered(&failure.ids, &failure.reason, &failure.message, attempts);
    Disposition::DeadLetter {
        failure,
        attempts,
        event,
    }
}

/// What a delivery's headers say about earlier failures to settle it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettleCounts {
    /// `x-settle-failures`: failed settles that sent it through a retry queue.
    pub settle_failures: u32,
    /// `x-delivery-count`: how often the broker delivered this copy again (a settle handed
    /// back, a crash, a lost connection); each brings the broker's delivery limit nearer.
    pub delivery_count: u32,
}

/// What a delivery whose settling failed carries on, taken from its [`Disposition`] before
/// that was carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsettled {
    /// The order's identifying fields, for the dead-lettered event.
    pub ids: PartialIds,
    /// What provisioning achieved, to resume from.
    pub progress: Progress,
    /// `x-attempts` to carry: a settle failure is not an order attempt.
    pub attempts: u32,
}

impl Unsettled {
    /// What `disposition`, decided for a delivery of `history`, leaves to carry on.
    pub fn of(disposition: &Disposition, history: &History) -> Self {
        let (ids, progress, attempts) = match disposition {
            Disposition::Report(Event::Later(event)) => {
                (event.ids.clone(), event.progress.clone(), history.attempts)
            }
            Disposition::Report(event) => {
                (event_ids(event), history.progress.clone(), history.attempts)
            }
            // The notice may not have gone out: the next delivery finds the invitation again and
            // announces it.
            Disposition::Retry {
                failure,
                attempts,
                notice: Some(_),
                ..
            } => {
                let mut progress = failure.progress.clone();
                progress.handshake_id = None;
                (failure.ids.clone(), progress, *attempts)
            }
            Disposition::Retry {
                failure, attempts, ..
            }
            | Disposition::DeadLetter {
                failure, attempts, ..
            } => (failure.ids.clone(), failure.progress.clone(), *attempts),
            Disposition::HandBack(_) => (
                PartialIds::default(),
                history.progress.clone(),
                history.attempts,
            ),
        };
        Self {
            ids,
            progress,
            attempts,
        }
    }
}

/// The identifying fields an event carries.
fn event_ids(event: &Event) -> PartialIds {
    match event {
        Event::Provisioned(provisioned) => provisioned.ids.clone(),
        Event::Later(event) => event.ids.clone(),
        Event::Failed { ids, .. } | Event::DeadLettered { ids, .. } => ids.clone(),
    }
}

/// What follows a failed settle.
#[derive(Debug)]
pub enum AfterSettleFailure {
    /// Publish the message to the retry queue of `queue_ms` delay, expiring after `wait_ms`,
    /// with `x-settle-failures = settle_failures`; then acknowledge.
    Retry {
        /// [`Reason::SettleFailed`], the progress and the ids.
        failure: Failure,
        /// `x-attempts`, unchanged by the settle failure.
        attempts: u32,
        /// `x-settle-failures` of the published message, this failure included.
        settle_failures: u32,
        /// The delay of the retry queue.
        queue_ms: u64,
        /// How long the message waits there.
        wait_ms: u64,
    },
    /// Dead-letter the message with [`Reason::SettleFailed`] and publish its event (best
    /// effort: the results exchange may still refuse); then acknowledge.
    DeadLetter {
        /// [`Reason::SettleFailed`], the progress and the ids.
        failure: Failure,
        /// `x-attempts`, unchanged by the settle failure.
        attempts: u32,
        /// `x-settle-failures` of the dead-lettered message, this failure included.
        settle_failures: u32,
        /// `aws.account.dead-lettered`.
        event: Event,
    },
}

/// The settle failures after which a delivery is dead-lettered: two below
/// `amqp.delivery_limit` (at least 1), so the worker dead-letters it, with its reason and
/// event, while the broker's limit (which drops it with neither) still leaves room for a crash
/// or a lost connection.
pub fn settle_failure_limit(delivery_limit: u32) -> u32 {
    delivery_limit.saturating_sub(2).max(1)
}

/// What follows when settling a delivery with `counts` failed because of `why`: every failure
/// counts, those that went through a retry queue and those the broker returned
/// (`x-delivery-count`), this one included. Below [`settle_failure_limit`] the delivery waits
/// in a retry queue, the backoff doubling from `retry.initial_delay_ms` to
/// `retry.max_delay_ms` (and at most the longest retry queue); at the limit it is
/// dead-lettered with [`Reason::SettleFailed`]. `jitter` as for [`disposition`].
pub fn after_settle_failure(
    unsettled: Unsettled,
    why: &str,
    counts: SettleCounts,
    retry: &RetrySettings,
    delivery_limit: u32,
    jitter: f64,
) -> AfterSettleFailure {
    let settle_failures = counts
        .settle_failures
        .saturating_add(counts.delivery_count)
        .saturating_add(1);
    let failure = Failure {
        reason: Reason::SettleFailed,
        message: format!("settling failed {settle_failures} times; the last: {why}"),
        ids: unsettled.ids,
        progress: unsettled.progress,
    };
    let attempts = unsettled.attempts;
    if settle_failures >= settle_failure_limit(delivery_limit) {
        let event =
            report::dead_lettered(&failure.ids, &failure.reason, &failure.message, attempts);
        return AfterSettleFailure::DeadLetter {
            failure,
            attempts,
            settle_failures,
            event,
        };
    }
    let delay = retry::backoff_ms(retry, settle_failures);
    AfterSettleFailure::Retry {
        failure,
        attempts,
        settle_failures,
        queue_ms: retry::queue_for(retry, delay),
        wait_ms: retry::jittered_ms(delay, jitter),
    }
}

/// The longest a delivery is held before it is handed back: 30 s.
pub const HOLD_CEILING: Duration = Duration::from_secs(30);

/// How long to hold a delivery that could be neither settled nor moved to a retry queue or
/// the DLQ, before handing it back to the broker: `2^n` seconds for its `n`-th return
/// (`x-delivery-count`), at most [`HOLD_CEILING`], so that a broker refusing everything is not
/// asked again at once.
pub fn hold(counts: SettleCounts) -> Duration {
    let seconds = 1u64
        .checked_shl(counts.delivery_count.min(63))
        .unwrap_or(u64::MAX);
    Duration::from_secs(seconds).min(HOLD_CEILING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::PartialIds;
    use crate::domain::outcome::{FailureCode, Rejection};
    use crate::domain::progress::Progress;

    /// Retries: 1 s doubling up to 8 s, 4 attempts, 30 s after an unsettled delivery.
    fn settings() -> RetrySettings {
        RetrySettings {
            initial_delay_ms: 1000,
            max_delay_ms: 8000,
            max_attempts: 4,
            max_replays: 5,
            redelivered_create_delay_ms: 30_000,
            creation_slot_busy_delay_ms: 10_000,
            max_order_age_seconds: 3600,
        }
    }

    fn failure(reason: Reason) -> Failure {
        Failure {
            reason,
            message: "m".into(),
            ids: PartialIds::default(),
            progress: Progress {
                account_id: Some("123456789012".into()),
                ..Progress::default()
            },
        }
    }

    fn history(attempts: u32) -> History {
        History {
            attempts,
            ..History::default()
        }
    }

    /// What a disposition comes to, in a comparable form: (kind, attempts, queue, wait).
    fn summary(disposition: &Disposition) -> (&'static str, u32, u64, u64) {
        match disposition {
            Disposition::Report(_) => ("report", 0, 0, 0),
            Disposition::Retry {
                attempts,
                queue_ms,
                wait_ms,
                ..
            } => ("retry", *attempts, *queue_ms, *wait_ms),
            Disposition::DeadLetter { attempts, .. } => ("dead-letter", *attempts, 0, 0),
            Disposition::HandBack(_) => ("hand back", 0, 0, 0),
        }
    }

    #[test]
    fn every_outcome_for_every_history() {
        let transient = || Outcome::Retry(failure(Reason::Aws("Throttling".into())));
        let busy = || Outcome::Later(failure(Reason::OrderBusy), Duration::from_secs(1));
        let slot = || Outcome::Later(failure(Reason::CreationSlotBusy), Duration::from_secs(10));
        let in_flight = || {
            Outcome::Later(
                failure(Reason::CreateMaybeInFlight),
                Duration::from_secs(30),
            )
        };
        let bad = || Outcome::DeadLetter(failure(Reason::NotJson));
        let failed = || {
            Outcome::Report(report::failed(
                &PartialIds::default(),
                None,
                &Rejection::new(FailureCode::InvalidEmail, "bad"),
            ))
        };
        let back = || Outcome::HandBack("locks unavailable".into());
        type Case = (
            &'static str,
            fn() -> Outcome,
            u32,
            f64,
            (&'static str, u32, u64, u64),
        );
        #[rustfmt::skip]
        let cases: [Case; 14] = [
            // A transient failure: the n-th waits between half and all of step n.
            ("transient, first", transient, 0, 1.0, ("retry", 1, 1000, 1000)),
            ("transient, jitter low", transient, 0, 0.0, ("retry", 1, 1000, 500)),
            ("transient, third", transient, 2, 1.0, ("retry", 3, 4000, 4000)),
            ("transient, last", transient, 3, 1.0, ("dead-letter", 4, 0, 0)),
            ("transient, past the last", transient, 9, 1.0, ("dead-letter", 10, 0, 0)),
            // Waits spend no attempt, whatever the history, and find a queue that holds them.
            ("busy", busy, 0, 0.0, ("retry", 0, 1000, 1000)),
            ("busy after failures", busy, 3, 0.0, ("retry", 3, 1000, 1000)),
            ("no slot", slot, 1, 0.0, ("retry", 1, 30_000, 10_000)),
            ("maybe in flight", in_flight, 2, 0.0, ("retry", 2, 30_000, 30_000)),
            // Bad messages and permanent failures go at once.
            ("malformed", bad, 0, 0.0, ("dead-letter", 1, 0, 0)),
            ("permanent after retries", bad, 2, 0.0, ("dead-letter", 3, 0, 0)),
            // Reports and hand-backs do not look at the history.
            ("failed event", failed, 0, 0.0, ("report", 0, 0, 0)),
            ("failed event, late", failed, 7, 0.0, ("report", 0, 0, 0)),
            ("hand back", back, 5, 0.0, ("hand back", 0, 0, 0)),
        ];
        for (name, outcome, attempts, jitter, expected) in cases {
            let got = disposition(outcome(), &history(attempts), &settings(), jitter);
            assert_eq!(summary(&got), expected, "{name}");
        }
    }

    /// A history of `attempts` failed attempts, `waits` waits in a row for `last`, first seen
    /// `age_s` seconds ago.
    fn lived(attempts: u32, last: &str, waits: u32, age_s: u64) -> History {
        History {
            attempts,
            last_reason: Some(last.to_owned()).filter(|l| !l.is_empty()),
            waits,
            first_delivered_at: (age_s > 0).then(|| "2026-01-01T00:00:00.000Z".to_owned()),
            age: Duration::from_secs(age_s),
            ..History::default()
        }
    }

    #[test]
    fn waits_back_off_and_the_age_caps_them_all() {
        let transient = || Outcome::Retry(failure(Reason::Aws("Throttling".into())));
        let busy = || Outcome::Later(failure(Reason::OrderBusy), Duration::from_secs(1));
        let slot = || Outcome::Later(failure(Reason::CreationSlotBusy), Duration::from_secs(10));
        let creating = || Outcome::Later(failure(Reason::CreateInProgress), Duration::from_secs(5));
        let bad = || Outcome::DeadLetter(failure(Reason::NotJson));
        let done = || {
            Outcome::Report(report::failed(
                &PartialIds::default(),
                None,
                &Rejection::new(FailureCode::InvalidEmail, "bad"),
            ))
        };
        // (name, outcome, history, (kind, attempts, queue, wait), x-waits, reason)
        type Case = (
            &'static str,
            fn() -> Outcome,
            History,
            (&'static str, u32, u64, u64),
            u32,
            &'static str,
        );
        let busy_reason = "ORDER_BUSY";
        #[rustfmt::skip]
        let cases: [Case; 16] = [
            // A busy order backs off, wait after wait, up to max_delay_ms (8 s here).
            ("busy, first", busy, lived(0, "", 0, 0), ("retry", 0, 1000, 1000), 1, busy_reason),
            ("busy, second", busy, lived(0, busy_reason, 1, 5), ("retry", 0, 2000, 2000), 2, busy_reason),
            ("busy, fourth", busy, lived(2, busy_reason, 3, 5), ("retry", 2, 8000, 8000), 4, busy_reason),
            ("busy, tenth", busy, lived(0, busy_reason, 9, 5), ("retry", 0, 8000, 8000), 10, busy_reason),
            // Another kind of wait, or a failure, in between starts the count again.
            ("busy after a slot wait", busy, lived(0, "CREATION_SLOT_BUSY", 4, 5), ("retry", 0, 1000, 1000), 1, busy_reason),
            ("busy after a failure", busy, lived(1, "Throttling", 0, 5), ("retry", 1, 1000, 1000), 1, busy_reason),
            ("slot after busy", slot, lived(0, busy_reason, 6, 5), ("retry", 0, 30_000, 10_000), 1, "CREATION_SLOT_BUSY"),
            ("slot, again", slot, lived(0, "CREATION_SLOT_BUSY", 2, 5), ("retry", 0, 30_000, 10_000), 3, "CREATION_SLOT_BUSY"),
            ("creation in progress", creating, lived(3, "CREATE_IN_PROGRESS", 7, 5), ("retry", 3, 8000, 5000), 8, "CREATE_IN_PROGRESS"),
            ("a failure resets the waits", transient, lived(0, busy_reason, 6, 5), ("retry", 1, 1000, 1000), 0, "Throttling"),
            // Past the age (an hour here), a retry or a wait dead-letters, no attempt spent by a wait.
            ("busy, too old", busy, lived(2, busy_reason, 9, 3601), ("dead-letter", 2, 0, 0), 0, "ORDER_TOO_OLD"),
            ("slot, too old", slot, lived(0, "", 0, 90_000), ("dead-letter", 0, 0, 0), 0, "ORDER_TOO_OLD"),
            ("transient, too old", transient, lived(1, "", 0, 3601), ("dead-letter", 2, 0, 0), 0, "ORDER_TOO_OLD"),
            ("transient, at the age", transient, lived(1, "", 0, 3600), ("retry", 2, 2000, 2000), 0, "Throttling"),
            // The last attempt keeps its own reason; reports and bad messages ignore the age.
            ("transient, last and too old", transient, lived(3, "", 0, 9999), ("dead-letter", 4, 0, 0), 0, "Throttling"),
            ("malformed, too old", bad, lived(0, "", 0, 9999), ("dead-letter", 1, 0, 0), 0, "NOT_JSON"),
        ];
        for (name, outcome, history, expected, waits, reason) in cases {
            let got = disposition(outcome(), &history, &settings(), 1.0);
            assert_eq!(summary(&got), expected, "{name}");
            match got {
                Disposition::Retry {
                    failure, waits: w, ..
                } => {
                    assert_eq!((w, failure.reason.as_str()), (waits, reason), "{name}");
                }
                Disposition::DeadLetter { failure, event, .. } => {
                    assert_eq!(failure.reason.as_str(), reason, "{name}");
                    let body: serde_json::Value =
                        serde_json::from_slice(&event.body()).expect("JSON");
                    assert_eq!(body["reason"], reason, "{name}: the event says why");
                    assert_eq!(
                        failure.progress.account_id.as_deref(),
                        Some("123456789012"),
                        "{name}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let late = disposition(done(), &lived(0, "", 0, 99_999), &settings(), 1.0);
        assert_eq!(
            summary(&late),
            ("report", 0, 0, 0),
            "a report goes out however old"
        );
        match disposition(busy(), &lived(0, "", 0, 4000), &settings(), 1.0) {
            Disposition::DeadLetter { failure, .. } => assert!(
                failure.message.contains("4000s") && failure.message.contains("ORDER_BUSY: m"),
                "{}",
                failure.message
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_replayed_message_starts_its_attempts_again_but_keeps_its_progress() {
        // `replay` resets x-attempts; the history then counts from zero, and the failure's
        // progress (what the attempt achieved) is what travels on.
        let replayed = History {
            attempts: 0,
            first_failed_at: Some("2026-01-01T00:00:00.000Z".into()),
            progress: Progress {
                create_request_id: Some("car-1".into()),
                ..Progress::default()
            },
            ..History::default()
        };
        let outcome = Outcome::Retry(failure(Reason::AwsUnreachable));
        match disposition(outcome, &replayed, &settings(), 1.0) {
            Disposition::Retry {
                failure, attempts, ..
            } => {
                assert_eq!(attempts, 1);
                assert_eq!(failure.progress.account_id.as_deref(), Some("123456789012"));
                assert_eq!(failure.reason, Reason::AwsUnreachable);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn one_attempt_allowed_means_the_first_failure_dead_letters() {
        let once = RetrySettings {
            max_attempts: 1,
            ..settings()
        };
        let outcome = Outcome::Retry(failure(Reason::AwsUnreachable));
        let got = disposition(outcome, &history(0), &once, 1.0);
        assert_eq!(summary(&got), ("dead-letter", 1, 0, 0));
        let busy = Outcome::Later(failure(Reason::OrderBusy), Duration::from_secs(1));
        let got = disposition(busy, &history(0), &once, 1.0);
        assert_eq!(
            summary(&got),
            ("retry", 0, 1000, 1000),
            "a wait still waits"
        );
    }

    #[test]
    fn a_dead_letter_carries_its_event_with_the_reason_and_the_attempts() {
        let outcome = Outcome::DeadLetter(failure(Reason::InvalidId));
        match disposition(outcome, &history(2), &settings(), 0.0) {
            Disposition::DeadLetter { event, .. } => {
                assert_eq!(event.name(), report::DEAD_LETTERED);
                let body: serde_json::Value = serde_json::from_slice(&event.body()).expect("JSON");
                assert_eq!(body["reason"], "INVALID_ID");
                assert_eq!(body["attempts"], 3);
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    /// What follows a settle failure, comparable: (kind, x-settle-failures, queue, wait).
    type Summary = (&'static str, u32, u64, u64);

    #[test]
    fn settle_failures_back_off_then_dead_letter_below_the_delivery_limit() {
        let counts = |settle_failures, delivery_count| SettleCounts {
            settle_failures,
            delivery_count,
        };
        let unsettled = || Unsettled {
            ids: PartialIds {
                request_id: Some("PR-1".into()),
                ..PartialIds::default()
            },
            progress: Progress {
                account_id: Some("123456789012".into()),
                ..Progress::default()
            },
            attempts: 2,
        };
        // (kind, x-settle-failures, queue, wait): 1 s doubling to 8 s; at 20 - 2 = 18, the DLQ.
        #[rustfmt::skip]
        let cases: [(&str, SettleCounts, u32, Summary); 7] = [
            ("first", counts(0, 0), 20, ("retry", 1, 1000, 1000)),
            ("third", counts(2, 0), 20, ("retry", 3, 4000, 4000)),
            // 8 s has a queue of its own (a busy order's back-off steps have one each).
            ("capped", counts(9, 0), 20, ("retry", 10, 8000, 8000)),
            ("handed back before", counts(1, 2), 20, ("retry", 4, 8000, 8000)),
            ("at the limit", counts(17, 0), 20, ("dead-letter", 18, 0, 0)),
            ("returned by the broker", counts(0, 17), 20, ("dead-letter", 18, 0, 0)),
            ("a limit of 1", counts(0, 0), 1, ("dead-letter", 1, 0, 0)),
        ];
        for (name, counts, limit, expected) in cases {
            let got = after_settle_failure(unsettled(), "nacked", counts, &settings(), limit, 1.0);
            let summary = match &got {
                AfterSettleFailure::Retry {
                    settle_failures,
                    queue_ms,
                    wait_ms,
                    ..
                } => ("retry", *settle_failures, *queue_ms, *wait_ms),
                AfterSettleFailure::DeadLetter {
                    settle_failures, ..
                } => ("dead-letter", *settle_failures, 0, 0),
            };
            assert_eq!(summary, expected, "{name}");
            let (AfterSettleFailure::Retry {
                failure, attempts, ..
            }
            | AfterSettleFailure::DeadLetter {
                failure, attempts, ..
            }) = got;
            assert_eq!(failure.reason, Reason::SettleFailed, "{name}");
            assert_eq!(attempts, 2, "{name}: not an order attempt");
            assert_eq!(failure.progress, unsettled().progress, "{name}");
            assert!(failure.message.contains("nacked"), "{name}");
        }
        assert_eq!(settle_failure_limit(20), 18);
        assert_eq!(settle_failure_limit(2), 1);
    }

    #[test]
    fn a_settle_failure_dead_letters_with_its_event() {
        let counts = SettleCounts {
            settle_failures: 17,
            delivery_count: 0,
        };
        match after_settle_failure(Unsettled::default(), "x", counts, &settings(), 20, 0.0) {
            AfterSettleFailure::DeadLetter { event, .. } => {
                let body: serde_json::Value = serde_json::from_slice(&event.body()).expect("JSON");
                assert_eq!(body["reason"], "SETTLE_FAILED");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn what_a_failed_settle_carries_on_comes_from_its_disposition() {
        let earlier = History {
            attempts: 3,
            progress: Progress {
                create_request_id: Some("car-1".into()),
                ..Progress::default()
            },
            ..History::default()
        };
        let retry = disposition(
            Outcome::Retry(failure(Reason::AwsUnreachable)),
            &earlier,
            &settings(),
            1.0,
        );
        let carried = Unsettled::of(&retry, &earlier);
        assert_eq!(carried.attempts, 4, "the failed attempt counts");
        assert_eq!(carried.progress.account_id.as_deref(), Some("123456789012"));
        let ids = PartialIds {
            request_id: Some("PR-1".into()),
            ..PartialIds::default()
        };
        let rejection = Rejection::new(FailureCode::InvalidEmail, "bad");
        let report = Disposition::Report(report::failed(&ids, None, &rejection));
        let carried = Unsettled::of(&report, &earlier);
        assert_eq!(carried.attempts, 3);
        assert_eq!(carried.ids, ids);
        assert_eq!(carried.progress, earlier.progress);
    }

    #[test]
    fn a_delivery_is_held_longer_each_return_up_to_30_s() {
        let held = |delivery_count| {
            hold(SettleCounts {
                settle_failures: 0,
                delivery_count,
            })
            .as_secs()
        };
        let got: Vec<u64> = [0, 1, 2, 4, 5, 6, 64, u32::MAX]
            .into_iter()
            .map(held)
            .collect();
        assert_eq!(got, [1, 2, 4, 16, 30, 30, 30, 30]);
    }
}
