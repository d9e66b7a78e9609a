//! Settling a delivery, carried out: the [`Disposition`] that `settle` decided becomes
//! publishes and an acknowledgement. Every path publishes with confirm first and acknowledges
//! after, so a failure in between can duplicate a message but never lose one. A settle that
//! fails is counted and never loops hot: the delivery goes to a retry queue with a backoff, or
//! at the limit to the DLQ with its event ([`after_settle_failure`]); only when even that fails
//! is it held a while ([`crate::settle::hold`]) and handed back.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use rand::RngExt;
use tracing::{error, info, warn};

use super::headers;
use super::publisher::{PublishError, Publisher};
use super::topology::retry_queue;
use crate::config::{AmqpSettings, RetrySettings};
use crate::domain::bounded::capped;
use crate::observability::Metrics;
use crate::pipeline::{Failure, Outcome};
use crate::report::{AfterConfirm, Event};
use crate::retry::{History, Reason};
use crate::settle::{
    AfterSettleFailure, Disposition, Unsettled, after_settle_failure, disposition, hold,
};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its event was published and it was acknowledged.
    Reported,
    /// It waits in a retry queue.
    Retrying,
    /// It is in the dead-letter queue.
    DeadLettered,
    /// Its acknowledgement failed: it returns to the broker by itself, for another attempt.
    HandedBack,
    /// It could not be settled, or the trip could not be carried out (`Disposition::HandBack`):
    /// the caller holds it this long, then hands it back.
    HandBackAfter(Duration),
}

/// What a settled delivery adds to the metrics.
enum Count {
    Provisioned,
    Reported(&'static str),
    Failed(String),
    Retried(Reason),
    DeadLettered(Reason),
}

/// The step of settling that failed: the `stage` label of `settle_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Publishing the result event (`provisioned` or `failed`).
    Event,
    /// Publishing to a retry queue.
    Retry,
    /// Publishing to the dead-letter exchange.
    DeadLetter,
    /// Publishing the `dead-lettered` event, the message being in the DLQ already.
    DeadLetteredEvent,
    /// Acknowledging the delivery.
    Ack,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
            Self::DeadLetteredEvent => "dead_lettered_event",
            Self::Ack => "ack",
        }
    }
}

/// Why a delivery could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// A publish was not confirmed.
    #[error("{}: {source}", stage.as_str())]
    Publish {
        /// Which one.
        stage: Stage,
        /// Why.
        source: PublishError,
    },
    /// A publish got no confirm within [`CONFIRM_TIMEOUT`] (a quorum queue without a majority
    /// confirms nothing); it may still be confirmed later, so the retry may duplicate it.
    #[error("{}: no confirm within {} s", stage.as_str(), CONFIRM_TIMEOUT.as_secs())]
    Unconfirmed {
        /// Which one.
        stage: Stage,
    },
    /// The acknowledgement failed (the delivery returns to the queue by itself).
    #[error("acknowledging failed: {0}")]
    Ack(lapin::Error),
}

/// How long a publish of settling waits for the broker's confirm before it counts as a settle
/// failure: a delivery must not wait for ever on a broker that confirms nothing.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl SettleError {
    /// The step that failed.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Publish { stage, .. } | Self::Unconfirmed { stage } => *stage,
            Self::Ack(_) => Stage::Ack,
        }
    }
}

/// A failed publish at `stage`.
fn at(stage: Stage) -> impl FnOnce(PublishError) -> SettleError {
    move |source| SettleError::Publish { stage, source }
}

/// Publishes and acknowledges according to outcomes.
#[derive(Clone)]
pub struct Settler {
    publisher: Publisher,
    amqp: AmqpSettings,
    retry: RetrySettings,
    metrics: Metrics,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Settler {
    /// A settler publishing on `publisher` with the names and retry policy of the settings.
    pub fn new(
        publisher: Publisher,
        amqp: &AmqpSettings,
        retry: &RetrySettings,
        metrics: &Metrics,
    ) -> Self {
        Self {
            publisher,
            amqp: amqp.clone(),
            retry: retry.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Settles `delivery`, whose history is `history`, according to `outcome`: decides its
    /// [`Disposition`] (a retry's jitter drawn here) and carries it out. When that fails, the
    /// failure is counted and [`after_settle_failure`] decides what follows, carried out here
    /// too; [`Settled::HandBackAfter`] when even that failed.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        history: &History,
        outcome: Outcome,
    ) -> Settled {
        let jitter = rand::rng().random_range(0.0..=1.0);
        let decided = disposition(outcome, history, &self.retry, jitter);
        let unsettled = Unsettled::of(&decided, history);
        match self.carry_out(delivery, history, decided).await {
            Ok(settled) => settled,
            Err(error) => {
                self.settle_failed(delivery, history, unsettled, &error)
                    .await
            }
        }
    }

    /// After `error`: counts it, then moves the delivery to a retry queue or the DLQ; a
    /// delivery whose ack failed is left to the broker, which returns it.
    async fn settle_failed(
        &self,
        delivery: &Delivery,
        history: &History,
        unsettled: Unsettled,
        error: &SettleError,
    ) -> Settled {
        self.metrics.settle_failure(error.stage().as_str());
        if let SettleError::Ack(e) = error {
            error!(error = %e, "acknowledging failed: the broker returns the delivery once its channel closes");
            return Settled::HandedBack;
        }
        warn!(%error, stage = error.stage().as_str(), "settling the delivery failed");
        let counts = headers::settle_counts(delivery.properties.headers().as_ref());
        let jitter = rand::rng().random_range(0.0..=1.0);
        let next = after_settle_failure(
            unsettled,
            &error.to_string(),
            counts,
            &self.retry,
            self.amqp.delivery_limit,
            jitter,
        );
        match self.carry_out_after_failure(delivery, history, next).await {
            Ok(settled) => settled,
            Err(again) => {
                self.metrics.settle_failure(again.stage().as_str());
                if let SettleError::Ack(e) = again {
                    error!(error = %e, "acknowledging failed: the broker returns the delivery once its channel closes");
                    return Settled::HandedBack;
                }
                let hold = hold(counts);
                error!(first = %error, error = %again, hold_ms = hold.as_millis(), "settling failed and so did moving the delivery: holding it, then handing it back");
                Settled::HandBackAfter(hold)
            }
        }
    }

    /// Carries out what follows a failed settle: publishes, then acknowledges, then counts.
    async fn carry_out_after_failure(
        &self,
        delivery: &Delivery,
        history: &History,
        next: AfterSettleFailure,
    ) -> Result<Settled, SettleError> {
        let (settled, count) = match next {
            AfterSettleFailure::Retry {
                failure,
                attempts,
                settle_failures,
                queue_ms,
                wait_ms,
            } => {
                let counts = (attempts, history.waits);
                let record = Record::new(history, &failure, counts, Some(settle_failures));
                self.schedule_retry(delivery, &record, queue_ms, wait_ms)
                    .await?;
                (Settled::Retrying, Count::Retried(failure.reason))
            }
            AfterSettleFailure::DeadLetter {
                failure,
                attempts,
                settle_failures,
                event,
            } => {
                let counts = (attempts, history.waits);
                let record = Record::new(history, &failure, counts, Some(settle_failures));
                self.dead_letter(delivery, &record, &event).await?;
                (Settled::DeadLettered, Count::DeadLettered(failure.reason))
            }
        };
        self.ack_and_count(delivery, count).await?;
        Ok(settled)
    }

    /// Carries `disposition` out for `delivery`: publishes with confirm, then acknowledges
    /// (or hands the delivery back), then counts it.
    ///
    /// # Errors
    /// [`SettleError`] when a publish was not confirmed or the ack failed; the delivery is then
    /// not acknowledged.
    pub async fn carry_out(
        &self,
        delivery: &Delivery,
        history: &History,
        disposition: Disposition,
    ) -> Result<Settled, SettleError> {
        let (settled, count) = match disposition {
            Disposition::Report(mut event) => {
                self.publish_event(Stage::Event, &event).await?;
                if let Some(step) = event.take_after_confirm() {
                    self.after_confirm(step).await;
                }
                let count = match (event.failure_code(), &event) {
                    (Some(code), _) => Count::Failed(code.to_owned()),
                    (None, Event::Later(later)) => Count::Reported(later.name),
                    (None, _) => Count::Provisioned,
                };
                (Settled::Reported, count)
            }
            Disposition::Retry {
                failure,
                attempts,
                queue_ms,
                wait_ms,
                waits,
                notice,
            } => {
                if let Some(event) = &notice {
                    self.publish_event(Stage::Event, event).await?;
                }
                let record = Record::new(history, &failure, (attempts, waits), None);
                self.schedule_retry(delivery, &record, queue_ms, wait_ms)
                    .await?;
                (Settled::Retrying, Count::Retried(failure.reason))
            }
            Disposition::DeadLetter {
                failure,
                attempts,
                event,
            } => {
                // The waits in a row that led here, if any.
                let counts = (attempts, history.waits);
                let record = Record::new(history, &failure, counts, None);
                self.dead_letter(delivery, &record, &event).await?;
                (Settled::DeadLettered, Count::DeadLettered(failure.reason))
            }
            Disposition::HandBack(why) => {
                // Not at once: a cause that lasts (the locks unreachable, a panic) would loop.
                let counts = headers::settle_counts(delivery.properties.headers().as_ref());
                error!(reason = %why, "delivery not processed: handing it back to the broker");
                return Ok(Settled::HandBackAfter(hold(counts)));
            }
        };
        self.ack_and_count(delivery, count).await?;
        Ok(settled)
    }

    /// Acknowledges `delivery`, then counts it.
    async fn ack_and_count(&self, delivery: &Delivery, count: Count) -> Result<(), SettleError> {
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(SettleError::Ack)?;
        match count {
            Count::Provisioned => self.metrics.provisioned(),
            Count::Reported(name) => self.metrics.reported(name),
            Count::Failed(code) => self.metrics.failed(&code),
            Count::Retried(reason) => self.metrics.retried(reason.as_str()),
            Count::DeadLettered(reason) => self.metrics.dead_lettered(reason.as_str()),
        }
        Ok(())
    }

    /// Runs what an event's confirm allows (marking an IAM user's password as given out); a
    /// failure is logged and counted, and the delivery is acknowledged all the same.
    async fn after_confirm(&self, step: AfterConfirm) {
        let name = step.step;
        if let Err(reason) = step.run().await {
            error!(step = name, %reason, "the step after the event's confirm failed; the order is acknowledged all the same");
            self.metrics.after_confirm_failed(name);
        }
    }

    /// Publishes with confirm as `stage` of settling, waiting at most [`CONFIRM_TIMEOUT`] for the
    /// confirm.
    async fn publish(
        &self,
        stage: Stage,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), SettleError> {
        let publish = self
            .publisher
            .publish(exchange, routing_key, body, properties);
        match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(published) => published.map_err(at(stage)),
            Err(_) => Err(SettleError::Unconfirmed { stage }),
        }
    }

    async fn publish_event(&self, stage: Stage, event: &Event) -> Result<(), SettleError> {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        let (exchange, name) = (&self.amqp.results_exchange, event.name());
        self.publish(stage, exchange, name, &event.body(), properties)
            .await?;
        info!(event = name, "result event published");
        Ok(())
    }

    /// The original message's properties (content type, ids) and headers, plus the failure
    /// record (attempts, waits in a row, settle failures), the order's first delivery (now,
    /// unless the history knows an earlier one) and the progress, within the header budget (headers over it are dropped, with a
    /// warning).
    fn failed_properties(delivery: &Delivery, record: &Record<'_>) -> BasicProperties {
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        let at = now();
        let failure = record.failure;
        headers::set_number(&mut table, headers::ATTEMPTS, i64::from(record.attempts));
        headers::set_number(&mut table, headers::WAITS, i64::from(record.waits));
        headers::set_text(
            &mut table,
            headers::FIRST_DELIVERED_AT,
            record.history.first_delivered_at.as_deref().unwrap_or(&at),
        );
        headers::set_text(&mut table, headers::FAILURE_REASON, failure.reason.as_str());
        headers::set_text(&mut table, headers::FAILURE_MESSAGE, &failure.message);
        headers::set_text(
            &mut table,
            headers::FIRST_FAILED_AT,
            record.history.first_failed_at.as_deref().unwrap_or(&at),
        );
        headers::set_text(&mut table, headers::LAST_FAILED_AT, &at);
        if let Some(count) = record.settle_failures {
            headers::set_number(&mut table, headers::SETTLE_FAILURES, i64::from(count));
        }
        headers::set_progress(&mut table, &failure.progress);
        let table = headers::budgeted(table);
        let original = &delivery.properties;
        let mut properties = BasicProperties::default().with_headers(table);
        if let Some(content_type) = original.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        if let Some(message_id) = original.message_id() {
            properties = properties.with_message_id(message_id.clone());
        }
        if let Some(correlation_id) = original.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        properties
    }

    async fn schedule_retry(
        &self,
        delivery: &Delivery,
        record: &Record<'_>,
        queue_delay: u64,
        wait: u64,
    ) -> Result<(), SettleError> {
        // The message expires after `wait`; the queue's own TTL (`queue_delay`) caps it.
        let properties =
            Self::failed_properties(delivery, record).with_expiration(wait.to_string().into());
        let queue = retry_queue(&self.amqp, queue_delay);
        self.publish(Stage::Retry, "", &queue, &delivery.data, properties)
            .await?;
        let failure = record.failure;
        warn!(attempts = record.attempts, waits = record.waits, settle_failures = record.settle_failures, wait_ms = wait, reason = %failure.reason, "order scheduled for retry");
        Ok(())
    }

    /// Publishes the message to the DLQ, then its event. Once the message is in the DLQ (its
    /// reason in its headers) the event is best effort: a refused event is logged and counted
    /// (`settle_failures_total{stage="dead_lettered_event"}`), not retried, since retrying would
    /// put the message in the DLQ twice.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        record: &Record<'_>,
        event: &Event,
    ) -> Result<(), SettleError> {
        let properties = Self::failed_properties(delivery, record);
        let amqp = &self.amqp;
        let (exchange, routing_key) = (&amqp.dead_letter_exchange, &amqp.orders_routing_key);
        self.publish(
            Stage::DeadLetter,
            exchange,
            routing_key,
            &delivery.data,
            properties,
        )
        .await?;
        let failure = record.failure;
        warn!(attempts = record.attempts, reason = %failure.reason, message = %capped(&failure.message), "order dead-lettered");
        if let Err(e) = self.publish_event(Stage::DeadLetteredEvent, event).await {
            self.metrics.settle_failure(e.stage().as_str());
            error!(error = %e, reason = %failure.reason, "the dead-lettered event was not published; the message is in the DLQ with its reason");
        }
        Ok(())
    }
}

/// The failure record a published-again message carries.
struct Record<'a> {
    history: &'a History,
    failure: &'a Failure,
    /// `x-attempts`.
    attempts: u32,
    /// `x-waits`.
    waits: u32,
    /// `x-settle-failures`, when a settle failure sends the message.
    settle_failures: Option<u32>,
}

impl<'a> Record<'a> {
    fn new(
        history: &'a History,
        failure: &'a Failure,
        (attempts, waits): (u32, u32),
        settle_failures: Option<u32>,
    ) -> Self {
        Self {
            history,
            failure,
            attempts,
            waits,
            settle_failures,
        }
    }
}
