//! Settling a delivery: the one place that maps a pipeline [`Outcome`] to what happens to the
//! message. Every path publishes with confirm first and acknowledges after, so a failure in
//! between can duplicate a message but never lose one.

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use rand::RngExt;
use tracing::{info, warn};

use super::headers::{self, History};
use super::publisher::{PublishError, Publisher};
use super::topology::{retry_delay_ms, retry_queue, retry_queue_for};
use crate::config::{AmqpSettings, RetrySettings};
use crate::observability::Metrics;
use crate::pipeline::{Failure, Outcome};
use crate::report::{self, Event};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its event was published and it was acknowledged.
    Reported,
    /// It waits in a retry queue.
    Retrying,
    /// It is in the dead-letter queue.
    DeadLettered,
}

/// What a settled delivery adds to the metrics.
enum Count {
    Event(Event),
    Retried(String),
    DeadLettered(String),
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

    /// Settles `delivery`, whose history is `history`, according to `outcome`.
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
        let (settled, count) = match outcome {
            Outcome::Report(event) => {
                self.publish_event(&event).await?;
                (Settled::Reported, Count::Event(event))
            }
            Outcome::Retry(failure) => {
                let attempts = history.attempts + 1;
                if attempts >= self.retry.max_attempts {
                    let settled = self
                        .dead_letter(delivery, history, &failure, attempts)
                        .await?;
                    (settled, Count::DeadLettered(failure.reason))
                } else {
                    let delay = retry_delay_ms(&self.retry, attempts);
                    // Jitter: wait between half and all of the step's delay.
                    let wait = rand::rng().random_range(delay.div_ceil(2)..=delay);
                    let settled = self
                        .schedule_retry(delivery, history, &failure, attempts, delay, wait)
                        .await?;
                    (settled, Count::Retried(failure.reason))
                }
            }
            Outcome::Later(failure, wait) => {
                let wait = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                let queue = retry_queue_for(&self.retry, wait);
                let settled = self
                    .schedule_retry(delivery, history, &failure, history.attempts, queue, wait)
                    .await?;
                (settled, Count::Retried(failure.reason))
            }
            Outcome::DeadLetter(failure) => {
                let settled = self
                    .dead_letter(delivery, history, &failure, history.attempts + 1)
                    .await?;
                (settled, Count::DeadLettered(failure.reason))
            }
        };
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(SettleError::Ack)?;
        match count {
            Count::Event(event) if event.name == report::PROVISIONED => self.metrics.provisioned(),
            Count::Event(event) => {
                let body: serde_json::Value =
                    serde_json::from_slice(&event.body).unwrap_or_default();
                self.metrics
                    .failed(body["failure"]["code"].as_str().unwrap_or("UNKNOWN"));
            }
            Count::Retried(reason) => self.metrics.retried(&reason),
            Count::DeadLettered(reason) => self.metrics.dead_lettered(&reason),
        }
        Ok(settled)
    }

    async fn publish_event(&self, event: &Event) -> Result<(), PublishError> {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.publisher
            .publish(
                &self.amqp.results_exchange,
                event.name,
                &event.body,
                properties,
            )
            .await?;
        info!(event = event.name, "result event published");
        Ok(())
    }

    /// The original message's properties (content type, ids) and headers, plus the failure
    /// record and the progress.
    fn failed_properties(
        delivery: &Delivery,
        history: &History,
        failure: &Failure,
        attempts: u32,
    ) -> BasicProperties {
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        let at = now();
        headers::set_number(&mut table, headers::ATTEMPTS, i64::from(attempts));
        headers::set_text(&mut table, headers::FAILURE_REASON, &failure.reason);
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
        attempts: u32,
        queue_delay: u64,
        wait: u64,
    ) -> Result<Settled, SettleError> {
        // The message expires after `wait`; the queue's own TTL (`queue_delay`) caps it.
        let properties = Self::failed_properties(delivery, history, failure, attempts)
            .with_expiration(wait.to_string().into());
        let queue = retry_queue(&self.amqp, queue_delay);
        self.publisher
            .publish("", &queue, &delivery.data, properties)
            .await?;
        warn!(attempts, wait_ms = wait, reason = %failure.reason, "order scheduled for retry");
        Ok(Settled::Retrying)
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        history: &History,
        failure: &Failure,
        attempts: u32,
    ) -> Result<Settled, SettleError> {
        let properties = Self::failed_properties(delivery, history, failure, attempts);
        self.publisher
            .publish(
                &self.amqp.dead_letter_exchange,
                &self.amqp.orders_routing_key,
                &delivery.data,
                properties,
            )
            .await?;
        warn!(attempts, reason = %failure.reason, message = %failure.message, "order dead-lettered");
        let event =
            report::dead_lettered(&failure.ids, &failure.reason, &failure.message, attempts);
        self.publish_event(&event).await?;
        Ok(Settled::DeadLettered)
    }
}
