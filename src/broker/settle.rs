//! Settling a delivery, carried out: the [`Disposition`] that `settle` decided becomes
//! publishes and an acknowledgement. Every path publishes with confirm first and acknowledges
//! after, so a failure in between can duplicate a message but never lose one.

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use rand::RngExt;
use tracing::{error, info, warn};

use super::headers;
use super::publisher::{PublishError, Publisher};
use super::topology::retry_queue;
use crate::config::{AmqpSettings, RetrySettings};
use crate::observability::Metrics;
use crate::pipeline::{Failure, Outcome};
use crate::report::{AfterConfirm, Event};
use crate::retry::{History, Reason};
use crate::settle::{Disposition, disposition};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its event was published and it was acknowledged.
    Reported,
    /// It waits in a retry queue.
    Retrying,
    /// It is in the dead-letter queue.
    DeadLettered,
    /// It went back to the broker unacknowledged, for another attempt.
    HandedBack,
}

/// What a settled delivery adds to the metrics.
enum Count {
    Provisioned,
    Failed(String),
    Retried(Reason),
    DeadLettered(Reason),
}

/// Why a delivery could not be settled; the caller hands it back to the broker.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// A publish was not confirmed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The acknowledgement failed (the delivery returns to the queue by itself).
    #[error("acknowledging failed: {0}")]
    Ack(lapin::Error),
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
    /// [`Disposition`] (a retry's jitter drawn here) and carries it out.
    ///
    /// # Errors
    /// [`SettleError`] when a publish was not confirmed or the ack failed; the delivery is then
    /// not acknowledged.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        history: &History,
        outcome: Outcome,
    ) -> Result<Settled, SettleError> {
        let jitter = rand::rng().random_range(0.0..=1.0);
        let decided = disposition(outcome, history, &self.retry, jitter);
        self.carry_out(delivery, history, decided).await
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
                self.publish_event(&event).await?;
                if let Some(step) = event.take_after_confirm() {
                    self.after_confirm(step).await;
                }
                let count = match event.failure_code() {
                    Some(code) => Count::Failed(code.to_owned()),
                    None => Count::Provisioned,
                };
                (Settled::Reported, count)
            }
            Disposition::Retry {
                failure,
                attempts,
                queue_ms,
                wait_ms,
                waits,
            } => {
                let counts = (attempts, waits);
                self.schedule_retry(delivery, history, &failure, counts, queue_ms, wait_ms)
                    .await?;
                (Settled::Retrying, Count::Retried(failure.reason))
            }
            Disposition::DeadLetter {
                failure,
                attempts,
                event,
            } => {
                self.dead_letter(delivery, history, &failure, attempts, &event)
                    .await?;
                (Settled::DeadLettered, Count::DeadLettered(failure.reason))
            }
            Disposition::HandBack(why) => {
                error!(reason = %why, "delivery not processed: handing it back to the broker");
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.nack(requeue).await.map_err(SettleError::Ack)?;
                return Ok(Settled::HandedBack);
            }
        };
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(SettleError::Ack)?;
        match count {
            Count::Provisioned => self.metrics.provisioned(),
            Count::Failed(code) => self.metrics.failed(&code),
            Count::Retried(reason) => self.metrics.retried(reason.as_str()),
            Count::DeadLettered(reason) => self.metrics.dead_lettered(reason.as_str()),
        }
        Ok(settled)
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

    async fn publish_event(&self, event: &Event) -> Result<(), PublishError> {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.publisher
            .publish(
                &self.amqp.results_exchange,
                event.name(),
                &event.body(),
                properties,
            )
            .await?;
        info!(event = event.name(), "result event published");
        Ok(())
    }

    /// The original message's properties (content type, ids) and headers, plus the failure
    /// record (`attempts` failed attempts, `waits` waits in a row), the order's first delivery
    /// (now, unless the history knows an earlier one) and the progress.
    fn failed_properties(
        delivery: &Delivery,
        history: &History,
        failure: &Failure,
        (attempts, waits): (u32, u32),
    ) -> BasicProperties {
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        let at = now();
        headers::set_number(&mut table, headers::ATTEMPTS, i64::from(attempts));
        headers::set_number(&mut table, headers::WAITS, i64::from(waits));
        headers::set_text(
            &mut table,
            headers::FIRST_DELIVERED_AT,
            history.first_delivered_at.as_deref().unwrap_or(&at),
        );
        headers::set_text(&mut table, headers::FAILURE_REASON, failure.reason.as_str());
        headers::set_text(&mut table, headers::FAILURE_MESSAGE, &failure.message);
        headers::set_text(
            &mut table,
            headers::FIRST_FAILED_AT,
            history.first_failed_at.as_deref().unwrap_or(&at),
        );
        headers::set_text(&mut table, headers::LAST_FAILED_AT, &at);
        headers::set_progress(&mut table, &failure.progress);
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
        history: &History,
        failure: &Failure,
        (attempts, waits): (u32, u32),
        queue_delay: u64,
        wait: u64,
    ) -> Result<(), SettleError> {
        // The message expires after `wait`; the queue's own TTL (`queue_delay`) caps it.
        let properties = Self::failed_properties(delivery, history, failure, (attempts, waits))
            .with_expiration(wait.to_string().into());
        let queue = retry_queue(&self.amqp, queue_delay);
        self.publisher
            .publish("", &queue, &delivery.data, properties)
            .await?;
        warn!(attempts, waits, wait_ms = wait, reason = %failure.reason, "order scheduled for retry");
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        history: &History,
        failure: &Failure,
        attempts: u32,
        event: &Event,
    ) -> Result<(), SettleError> {
        // The waits in a row that led here, if any.
        let counts = (attempts, history.waits);
        let properties = Self::failed_properties(delivery, history, failure, counts);
        self.publisher
            .publish(
                &self.amqp.dead_letter_exchange,
                &self.amqp.orders_routing_key,
                &delivery.data,
                properties,
            )
            .await?;
        warn!(attempts, reason = %failure.reason, message = %failure.message, "order dead-lettered");
        self.publish_event(event).await?;
        Ok(())
    }
}
