//! Wiring and the run loop: connect, declare the topology, consume with a bounded number of
//! orders in flight, and stop cleanly when asked.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::aws::Organizations;
use crate::broker::headers::History;
use crate::broker::publisher::Publisher;
use crate::broker::settle::Settler;
use crate::broker::{connect, topology};
use crate::config::Settings;
use crate::pipeline::Pipeline;

/// Why the worker stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The broker could not be reached, refused a declaration, or dropped the connection.
    #[error("broker connection failed")]
    Broker(#[from] lapin::Error),
    /// The broker cancelled the consumer (for example, the queue was deleted).
    #[error("the broker ended the consumer of `{0}`")]
    ConsumerEnded(String),
}

/// A worker that is consuming.
pub struct Worker<O> {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    pipeline: Arc<Pipeline<O>>,
    settler: Settler,
    settings: Settings,
}

impl<O: Organizations> Worker<O> {
    /// Connects, declares the topology and starts consuming; returns once consuming.
    ///
    /// # Errors
    /// [`RunError::Broker`] when the broker cannot be reached or refuses the topology.
    pub async fn start(settings: &Settings, pipeline: Arc<Pipeline<O>>) -> Result<Self, RunError> {
        let amqp = &settings.amqp;
        let connection = connect(&amqp.url).await?;
        let channel = connection.create_channel().await?;
        topology::declare(&channel, amqp, &settings.retry).await?;
        channel
            .basic_qos(amqp.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                amqp.orders_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let settler = Settler::new(Publisher::open(&connection).await?, amqp, &settings.retry);
        info!(queue = %amqp.orders_queue, prefetch = amqp.prefetch, "consuming orders");
        Ok(Self {
            connection,
            channel,
            consumer,
            pipeline,
            settler,
            settings: settings.clone(),
        })
    }

    /// Processes orders until `shutdown` completes, then stops consuming, waits up to
    /// `worker.shutdown_grace_seconds` for orders in flight, and closes the connection (orders
    /// still unfinished go back to the queue unacknowledged).
    ///
    /// # Errors
    /// [`RunError`] when the broker connection or the consumer is lost.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let in_flight = TaskTracker::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let ended = loop {
            let next = tokio::select! {
                () = &mut shutdown => break Ok(()),
                next = self.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(handle(
                        delivery,
                        Arc::clone(&self.pipeline),
                        self.settler.clone(),
                    ));
                }
                Some(Err(e)) => break Err(RunError::Broker(e)),
                None => {
                    break Err(RunError::ConsumerEnded(
                        self.settings.amqp.orders_queue.clone(),
                    ));
                }
            }
        };
        info!(
            in_flight = in_flight.len(),
            "stopping: no new orders are taken"
        );
        if ended.is_ok() {
            let cancel = self
                .channel
                .basic_cancel(self.consumer.tag(), BasicCancelOptions::default());
            if let Err(e) = cancel.await {
                warn!(error = %e, "could not cancel the consumer");
            }
        }
        in_flight.close();
        let grace = Duration::from_secs(self.settings.worker.shutdown_grace_seconds);
        if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
            warn!(
                unfinished = in_flight.len(),
                "grace period over: unfinished orders go back to the queue"
            );
        }
        if let Err(e) = self.connection.close(200, "worker stopping".into()).await {
            warn!(error = %e, "closing the broker connection failed");
        }
        info!("stopped");
        ended
    }
}

/// Takes one delivery through the pipeline and settles it; anything unsettled (a failed
/// publish, a panic) is handed back to the broker for another attempt.
async fn handle<O: Organizations>(
    delivery: Delivery,
    pipeline: Arc<Pipeline<O>>,
    settler: Settler,
) {
    let history = History::read(delivery.properties.headers().as_ref());
    let span = info_span!(
        "delivery",
        attempt = history.attempts + 1,
        redelivered = delivery.redelivered
    );
    async {
        let outcome = AssertUnwindSafe(pipeline.process_one(&delivery.data, history.progress.clone()))
            .catch_unwind()
            .await;
        let settled = match outcome {
            Ok(outcome) => settler.settle(&delivery, &history, outcome).await.map_err(|e| e.to_string()),
            Err(_) => Err("the pipeline panicked".to_owned()),
        };
        match settled {
            Ok(settled) => info!(?settled, "delivery settled"),
            Err(reason) => {
                error!(%reason, "delivery not settled: handing it back to the broker");
                let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                if let Err(e) = delivery.nack(requeue).await {
                    error!(error = %e, "handing back failed; the broker returns it when the channel closes");
                }
            }
        }
    }
    .instrument(span)
    .await;
}
