//! When an order is tried again, and why it was not done: every wait an order or the worker
//! can take, the backoff arithmetic, the history a message carries, and [`Reason`], the one
//! list of failure-reason codes (`x-failure-reason`, the dead-lettered event's `reason`).
//!
//! Pure: no I/O. `settle` decides with it; the broker side declares one retry queue per
//! distinct delay ([`delays`]) and carries the decisions out.

use std::fmt;
use std::time::Duration;

use backon::ExponentialBuilder;

use crate::config::RetrySettings;
use crate::config::Settings;
use crate::domain::order::OrderError;
use crate::domain::progress::Progress;

/// Why an order was tried again or dead-lettered: the code written to `x-failure-reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The body is larger than the worker reads.
    MessageTooLarge,
    /// The body is not a JSON object of the expected shape.
    NotJson,
    /// The request's `type` is none the worker handles.
    UnknownRequestType,
    /// A required field is absent.
    MissingField,
    /// A required id has the wrong shape.
    InvalidId,
    /// The order names a payer that is not configured.
    UnknownPayer,
    /// Another delivery of the same asset was being processed.
    OrderBusy,
    /// An earlier delivery ended unsettled; its `CreateAccount` may still be on its way.
    CreateMaybeInFlight,
    /// No creation slot of the payer came free for this delivery.
    CreationSlotBusy,
    /// A member account kept refusing the worker past its readiness window.
    MemberAccessDenied,
    /// The creation in progress under the order's account name made an account for another
    /// order.
    AccountNameInUse,
    /// The account's creation was still in progress when the attempt's patience ran out.
    CreateInProgress,
    /// An AWS call got no answer (timeout, connection error).
    AwsUnreachable,
    /// The order was still not done `retry.max_order_age_seconds` after its first delivery.
    OrderTooOld,
    /// Settling the delivery (publishing its event, retry or dead letter) failed too often.
    SettleFailed,
    /// An existing account's invitation is open: the customer has not answered yet.
    InvitationPending,
    /// AWS refuses to remove an account from the organization within 7 days of its joining
    /// (`WAIT_PERIOD_ACTIVE`).
    RemovalWaitPeriod,
    /// A closed account is still `PENDING_CLOSURE`.
    ClosePending,
    /// AWS answered with this error code.
    Aws(String),
}

impl Reason {
    /// The code as written in headers and events.
    pub fn as_str(&self) -> &str {
        match self {
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::NotJson => "NOT_JSON",
            Self::UnknownRequestType => "UNKNOWN_REQUEST_TYPE",
            Self::MissingField => "MISSING_FIELD",
            Self::InvalidId => "INVALID_ID",
            Self::UnknownPayer => "UNKNOWN_PAYER",
            Self::OrderBusy => "ORDER_BUSY",
            Self::CreateMaybeInFlight => "CREATE_MAYBE_IN_FLIGHT",
            Self::CreationSlotBusy => "CREATION_SLOT_BUSY",
            Self::MemberAccessDenied => "MEMBER_ACCESS_DENIED",
            Self::AccountNameInUse => "ACCOUNT_NAME_IN_USE",
            Self::CreateInProgress => "CREATE_IN_PROGRESS",
            Self::AwsUnreachable => "AWS_UNREACHABLE",
            Self::OrderTooOld => "ORDER_TOO_OLD",
            Self::SettleFailed => "SETTLE_FAILED",
            Self::InvitationPending => "INVITATION_PENDING",
            Self::RemovalWaitPeriod => "REMOVAL_WAIT_PERIOD",
            Self::ClosePending => "CLOSE_PENDING",
            Self::Aws(code) => code,
        }
    }

    /// Whether this is a wait on AWS's or a customer's own clock (an invitation open for up to
    /// 15 days, the 7 days before a removal, a closure in progress): such a wait backs off up to
    /// `retry.max_delay_ms` ([`long_wait_ms`]) and is bounded by [`LONG_WAIT_MAX_AGE`] instead
    /// of `retry.max_order_age_seconds`.
    pub fn is_long_wait(&self) -> bool {
        matches!(
            self,
            Self::InvitationPending | Self::RemovalWaitPeriod | Self::ClosePending
        )
    }

    /// The reason of a failed AWS step: its error code (one of ours when provisioning set it,
    /// as [`Reason::MemberAccessDenied`]), or [`Reason::AwsUnreachable`] when AWS gave none.
    pub fn of_aws(code: Option<&str>) -> Self {
        let ours = [
            Self::MemberAccessDenied,
            Self::AccountNameInUse,
            Self::CreateInProgress,
        ];
        match code {
            None => Self::AwsUnreachable,
            Some(code) => ours
                .into_iter()
                .find(|reason| reason.as_str() == code)
                .unwrap_or_else(|| Self::Aws(code.to_owned())),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&OrderError> for Reason {
    fn from(error: &OrderError) -> Self {
        match error {
            OrderError::TooLarge(_) => Self::MessageTooLarge,
            OrderError::NotJson(_) => Self::NotJson,
            OrderError::UnknownType(_) => Self::UnknownRequestType,
            OrderError::MissingField(_) => Self::MissingField,
            OrderError::InvalidId { .. } => Self::InvalidId,
        }
    }
}

/// What a delivery's headers say about earlier attempts (read by `broker::headers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the first attempt failed (RFC 3339).
    pub first_failed_at: Option<String>,
    /// What to resume from.
    pub progress: Progress,
    /// The reason the order last went to a retry queue (`x-failure-reason`), if it did.
    pub last_reason: Option<String>,
    /// Waits in a row for [`History::last_reason`] (`x-waits`): 0 after a failed attempt.
    pub waits: u32,
    /// When the worker first saw the order (`x-first-delivered-at`, RFC 3339), as read: `None`
    /// for a first delivery, and for a value that is not a time or lies in the future (the
    /// order then ages from now, and the header is written afresh).
    pub first_delivered_at: Option<String>,
    /// How long ago [`History::first_delivered_at`] was (zero when it is `None`).
    pub age: Duration,
}

impl History {
    /// How many waits in a row for `reason` a new wait for it makes: one more than the
    /// history's if the last one was for the same reason, else the first.
    pub fn waits_for(&self, reason: &Reason) -> u32 {
        if self.waits > 0 && self.last_reason.as_deref() == Some(reason.as_str()) {
            self.waits.saturating_add(1)
        } else {
            1
        }
    }
}

/// The waits of an order that cannot go on yet, without a failure: none of them counts as an
/// attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// Another delivery of the same order is in progress: the first such wait
    /// (`retry.initial_delay_ms`: the other delivery is usually done within a second); the
    /// waits in a row that follow back off ([`busy_backoff_ms`]).
    pub order_busy: Duration,
    /// An earlier delivery ended unsettled, so its `CreateAccount` may still be on its way
    /// (`retry.redelivered_create_delay_ms`).
    pub maybe_in_flight: Duration,
    /// No creation slot of the payer came free (`retry.creation_slot_busy_delay_ms`): a slot
    /// frees when a creation ends, which takes minutes at AWS, so looking again sooner would
    /// only cycle the order through the broker.
    pub slot_busy: Duration,
}

/// The longest a busy order waits between two looks at its lock (or `retry.max_delay_ms`, if
/// shorter): the other delivery may hold it through a creation of several minutes.
pub const ORDER_BUSY_CAP_MS: u64 = 30_000;

/// The wait of the `waits`-th busy look in a row (1-based): `retry.initial_delay_ms` doubling
/// each time, up to [`ORDER_BUSY_CAP_MS`] or `retry.max_delay_ms` (never below the first).
pub fn busy_backoff_ms(retry: &RetrySettings, waits: u32) -> u64 {
    let cap = ORDER_BUSY_CAP_MS
        .min(retry.max_delay_ms)
        .max(retry.initial_delay_ms);
    backoff_ms(retry, waits).min(cap)
}

impl Waits {
    /// The waits the settings give.
    pub fn of(retry: &RetrySettings) -> Self {
        Self {
            order_busy: Duration::from_millis(retry.initial_delay_ms),
            maybe_in_flight: Duration::from_millis(retry.redelivered_create_delay_ms),
            slot_busy: Duration::from_millis(retry.creation_slot_busy_delay_ms),
        }
    }
}

/// How long an order may wait on AWS's or a customer's clock ([`Reason::is_long_wait`]) since
/// its first delivery: 30 days, twice AWS's longest (an invitation expires after 15 days).
pub const LONG_WAIT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The wait after `waits` long waits in a row ([`Reason::is_long_wait`]): from
/// `initial_delay_ms`, doubling, up to `max_delay_ms`.
pub fn long_wait_ms(retry: &RetrySettings, waits: u32) -> u64 {
    backoff_ms(retry, waits)
}

/// The delay before the retry that follows the `failures`-th failed attempt (1-based):
/// `initial_delay_ms * 2^(failures-1)`, at most `max_delay_ms`.
pub fn backoff_ms(retry: &RetrySettings, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    retry
        .initial_delay_ms
        .saturating_mul(1u64.checked_shl(doublings).unwrap_or(u64::MAX))
        .min(retry.max_delay_ms)
}

/// Jitter: a retry waits between half and all of its step's delay; `fraction` (0 to 1, drawn
/// by the caller) says where.
pub fn jittered_ms(delay_ms: u64, fraction: f64) -> u64 {
    let low = delay_ms.div_ceil(2);
    let span = delay_ms - low;
    // The product is at most `span`, so the conversion back is exact enough and in range.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let extra = (span as f64 * fraction.clamp(0.0, 1.0)).round() as u64;
    low + extra.min(span)
}

/// Every distinct delay an order can wait (one retry queue each), shortest first: the backoff
/// delays, the busy order's backoff (at least the initial delay, which a busy order uses even
/// when no retry is allowed) and the wait after an unsettled delivery.
pub fn delays(retry: &RetrySettings) -> Vec<u64> {
    let busy = (1..)
        .map(|n| busy_backoff_ms(retry, n))
        .scan(0, |last, step| {
            let grew = step > *last;
            *last = step;
            grew.then_some(step)
        });
    let mut delays: Vec<u64> = (1..retry.max_attempts.max(2))
        .map(|n| backoff_ms(retry, n))
        .chain(busy)
        .chain([retry.redelivered_create_delay_ms.max(1)])
        .collect();
    delays.sort_unstable();
    delays.dedup();
    delays
}

/// The delay of the retry queue that can hold a message for `wait_ms`: the shortest one at
/// least that long (the longest one if none is; the message then waits that long).
pub fn queue_for(retry: &RetrySettings, wait_ms: u64) -> u64 {
    let delays = delays(retry);
    delays
        .iter()
        .copied()
        .find(|&d| d >= wait_ms)
        .or_else(|| delays.last().copied())
        .unwrap_or(retry.initial_delay_ms)
}

/// Connection attempts to the broker at start-up before giving up (about 15 s in all), so a
/// worker that starts just before its broker does not fail at once.
pub const BROKER_CONNECT_ATTEMPTS: usize = 6;

/// The backoff between those attempts: exponential from 0.5 s to 8 s, with jitter.
pub fn broker_connect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(BROKER_CONNECT_ATTEMPTS - 1)
        .with_jitter()
}

/// The pause between two rounds of connection attempts once the broker was lost
/// (`amqp.reconnect_pause_ms`).
pub fn reconnect_pause(settings: &Settings) -> Duration {
    Duration::from_millis(settings.amqp.reconnect_pause_ms)
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
            creation_slot_busy_delay_ms: 10_000,
            max_order_age_seconds: 86_400,
        }
    }

    #[test]
    fn a_busy_order_backs_off_up_to_its_cap() {
        let steps = |r: &RetrySettings| (1..=8).map(|n| busy_backoff_ms(r, n)).collect::<Vec<_>>();
        assert_eq!(
            steps(&retry(1000, 300_000, 8)),
            [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(
            steps(&retry(100, 400, 3)),
            [100, 200, 400, 400, 400, 400, 400, 400],
            "retry.max_delay_ms caps it when shorter"
        );
        assert_eq!(
            steps(&retry(60_000, 300_000, 3))[..2],
            [60_000, 60_000],
            "never below the first delay"
        );
        assert_eq!(busy_backoff_ms(&retry(1000, 300_000, 8), u32::MAX), 30_000);
        assert_eq!(
            delays(&retry(1000, 300_000, 3)),
            [1000, 2000, 4000, 8000, 16000, 30000],
            "every busy step has its queue"
        );
    }

    #[test]
    fn waits_in_a_row_count_per_reason() {
        let after = |reason: Option<&str>, waits| History {
            last_reason: reason.map(str::to_owned),
            waits,
            ..History::default()
        };
        let busy = Reason::OrderBusy;
        for (history, expected) in [
            (History::default(), 1),
            (after(Some("ORDER_BUSY"), 3), 4),
            (after(Some("ORDER_BUSY"), 0), 1),
            (after(Some("CREATION_SLOT_BUSY"), 5), 1),
            (after(Some("ORDER_BUSY"), u32::MAX), u32::MAX),
        ] {
            assert_eq!(history.waits_for(&busy), expected, "{history:?}");
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let r = retry(1000, 300_000, 8);
        let steps: Vec<u64> = (1..=10).map(|n| backoff_ms(&r, n)).collect();
        assert_eq!(
            steps,
            [
                1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000
            ]
        );
        assert_eq!(
            delays(&r),
            [1000, 2000, 4000, 8000, 16000, 30000, 32000, 64000],
            "the retry delays and the wait after an unsettled delivery"
        );
        assert_eq!(backoff_ms(&r, 0), 1000);
        assert_eq!(backoff_ms(&r, u32::MAX), 300_000);
    }

    #[test]
    fn capped_delays_share_a_queue() {
        let short_wait = |r: RetrySettings| RetrySettings {
            redelivered_create_delay_ms: 200,
            ..r
        };
        assert_eq!(delays(&short_wait(retry(100, 250, 6))), [100, 200, 250]);
        assert_eq!(
            delays(&short_wait(retry(100, 250, 1))),
            [100, 200, 250],
            "no retries, but a busy order still waits, and backs off"
        );
    }

    #[test]
    fn a_wait_goes_to_the_shortest_queue_that_holds_it() {
        let r = retry(1000, 300_000, 8);
        assert_eq!(queue_for(&r, 1000), 1000);
        assert_eq!(queue_for(&r, 1001), 2000);
        assert_eq!(queue_for(&r, 30_000), 30_000);
        assert_eq!(queue_for(&r, 1_000_000), 64_000);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for (delay, fraction, expected) in [
            (1000, 0.0, 500),
            (1000, 1.0, 1000),
            (1000, 0.5, 750),
            (1001, 0.0, 501),
            (1, 0.0, 1),
            (1000, 7.0, 1000),
            (1000, -1.0, 500),
        ] {
            assert_eq!(
                jittered_ms(delay, fraction),
                expected,
                "{delay} × {fraction}"
            );
        }
    }

    #[test]
    fn every_reason_has_its_code() {
        for (reason, code) in [
            (Reason::MessageTooLarge, "MESSAGE_TOO_LARGE"),
            (Reason::NotJson, "NOT_JSON"),
            (Reason::UnknownRequestType, "UNKNOWN_REQUEST_TYPE"),
            (Reason::MissingField, "MISSING_FIELD"),
            (Reason::InvalidId, "INVALID_ID"),
            (Reason::UnknownPayer, "UNKNOWN_PAYER"),
            (Reason::OrderBusy, "ORDER_BUSY"),
            (Reason::CreateMaybeInFlight, "CREATE_MAYBE_IN_FLIGHT"),
            (Reason::CreationSlotBusy, "CREATION_SLOT_BUSY"),
            (Reason::MemberAccessDenied, "MEMBER_ACCESS_DENIED"),
            (Reason::AccountNameInUse, "ACCOUNT_NAME_IN_USE"),
            (Reason::CreateInProgress, "CREATE_IN_PROGRESS"),
            (Reason::AwsUnreachable, "AWS_UNREACHABLE"),
            (Reason::OrderTooOld, "ORDER_TOO_OLD"),
            (Reason::SettleFailed, "SETTLE_FAILED"),
            (
                Reason::Aws("TooManyRequestsException".into()),
                "TooManyRequestsException",
            ),
        ] {
            assert_eq!(reason.as_str(), code);
            assert_eq!(reason.to_string(), code);
        }
        assert_eq!(Reason::of_aws(None), Reason::AwsUnreachable);
        for ours in [
            Reason::MemberAccessDenied,
            Reason::AccountNameInUse,
            Reason::CreateInProgress,
        ] {
            assert_eq!(Reason::of_aws(Some(ours.as_str())), ours);
        }
        assert_eq!(
            Reason::of_aws(Some("ConcurrentModificationException")),
            Reason::Aws("ConcurrentModificationException".into())
        );
    }
}
