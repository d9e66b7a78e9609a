//! Wiring and the run loop: connect, declare the topology, consume with a bounded number of
//! orders in flight, and stop cleanly when asked.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::aws::Organizations;
use crate::broker::headers::History;
use crate::broker::locks::BrokerLocks;
use crate::broker::publisher::Publisher;
use crate::broker::settle::{Settled, Settler};
use crate::broker::slots::{BrokerSlots, Limits};
use crate::broker::{connect, topology};
use crate::config::Settings;
use crate::domain::progress::Progress;
use crate::locks::OrderLocks;
use crate::observability::{Metrics, Readiness};
use crate::pipeline::Pipeline;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The broker could not be reached or refused a declaration.
    #[error("broker connection failed")]
    Broker(#[from] lapin::Error),
}

/// A worker that is consuming.
pub struct Worker<O> {
    session: Session,
    pipeline: Arc<Pipeline<O>>,
    settings: Settings,
    observed: Observed,
}

/// What the worker reports to the outside: metrics, and whether it is consuming.
#[derive(Clone, Default)]
pub struct Observed {
    /// Counts of orders, outcomes and AWS calls.
    pub metrics: Metrics,
    /// Ready while consuming.
    pub readiness: Readiness,
}

impl Observed {
    /// Marks the worker consuming or not: `/readyz` and the broker-connected gauge.
    fn consuming(&self, consuming: bool) {
        self.readiness.set(consuming);
        self.metrics.broker_connected(consuming);
    }
}

/// One broker connection and what hangs on it; a lost connection is replaced by a new session.
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
    consumer: Consumer,
    settler: Settler,
    exclusive: BrokerLocks,
    slots: BrokerSlots,
    /// Owns the creation slots' queues; closing it frees the slots held.
    slots_connection: Arc<Connection>,
}

/// Why a session stopped consuming.
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The connection or the consumer was lost.
    Lost(String),
}

impl Session {
    /// Connects, declares the topology and starts consuming.
    async fn open(settings: &Settings, metrics: &Metrics) -> lapin::Result<Self> {
        let amqp = &settings.amqp;
        let connection = Arc::new(connect(&amqp.url).await?);
        let channel = connection.create_channel().await?;
        topology::declare(&connection, amqp, &settings.retry).await?;
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
        let settler = Settler::new(
            Publisher::open(&connection).await?,
            amqp,
            &settings.retry,
            metrics,
        );
        let exclusive = BrokerLocks::new(
            &connection,
            &amqp.url,
            &format!("{}.busy", amqp.orders_queue),
            metrics,
        );
        // The slots on a connection of their own: taking a slot fails by design (a refused
        // exclusive declare closes its channel), and lapin can hand such a refusal to another
        // channel opened at the same moment on the same connection (an order's key).
        let slots_connection = Arc::new(connect(&amqp.url).await?);
        let slots = BrokerSlots::observed(
            &slots_connection,
            &amqp.url,
            &format!("{}.slot", amqp.orders_queue),
            Limits::from_settings(settings),
            metrics,
        );
        info!(queue = %amqp.orders_queue, prefetch = amqp.prefetch, "consuming orders");
        Ok(Self {
            connection,
            channel,
            consumer,
            settler,
            exclusive,
            slots,
            slots_connection,
        })
    }

    /// Hands deliveries to tasks on `in_flight` until `shutdown` completes or the connection is
    /// lost; the tasks stop early when `lost` is cancelled.
    async fn consume<O: Organizations>(
        &mut self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
        in_flight: &TaskTracker,
        lost: &CancellationToken,
        pipeline: &Arc<Pipeline<O>>,
        metrics: &Metrics,
    ) -> Ended {
        loop {
            let next = tokio::select! {
                () = shutdown.as_mut() => return Ended::Shutdown,
                next = self.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let in_flight_now = metrics.received();
                    let task = handle(
                        delivery,
                        Arc::clone(pipeline),
                        self.settler.clone(),
                        self.exclusive.clone(),
                        self.slots.clone(),
                    );
                    let lost = lost.clone();
                    in_flight.spawn(async move {
                        tokio::select! {
                            () = lost.cancelled() => {}
                            () = task => {}
                        }
                        drop(in_flight_now);
                    });
                }
                Some(Err(e)) => return Ended::Lost(e.to_string()),
                None => return Ended::Lost("the broker ended the consumer".to_owned()),
            }
        }
    }
}

impl<O: Organizations> Worker<O> {
    /// Connects, declares the topology and starts consuming; returns once consuming.
    ///
    /// # Errors
    /// [`RunError::Broker`] when the broker cannot be reached or refuses the topology.
    ///
    /// The worker counts in `observed.metrics` and marks `observed.readiness` while it
    /// consumes.
    pub async fn start(
        settings: &Settings,
        pipeline: Arc<Pipeline<O>>,
        observed: Observed,
    ) -> Result<Self, RunError> {
        let session = Session::open(settings, &observed.metrics).await?;
        observed.consuming(true);
        Ok(Self {
            session,
            pipeline,
            settings: settings.clone(),
            observed,
        })
    }

    /// Processes orders until `shutdown` completes, then stops consuming, waits up to
    /// `worker.shutdown_grace_seconds` for orders in flight, and closes the connection (orders
    /// still unfinished go back to the queue unacknowledged).
    ///
    /// A lost broker connection does not end the run: the orders in flight are abandoned (the
    /// broker delivers them again, and the idempotency gate finds whatever they achieved), and
    /// the worker reconnects with backoff until it consumes again or is stopped.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let Self {
            mut session,
            pipeline,
            settings,
            observed,
        } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let in_flight = TaskTracker::new();
            let lost = CancellationToken::new();
            let ended = session
                .consume(
                    &mut shutdown,
                    &in_flight,
                    &lost,
                    &pipeline,
                    &observed.metrics,
                )
                .await;
            observed.consuming(false);
            in_flight.close();
            match ended {
                Ended::Shutdown => {
                    stop(session, &in_flight, &lost, &settings).await;
                    return;
                }
                Ended::Lost(reason) => {
                    warn!(%reason, in_flight = in_flight.len(), "broker connection lost: orders in flight are abandoned and will be delivered again");
                    lost.cancel();
                    in_flight.wait().await;
                    // The slots' connection may still be up: its slots go with it.
                    let _ = session
                        .slots_connection
                        .close(200, "session lost".into())
                        .await;
                    match reconnect(&settings, &observed.metrics, &mut shutdown).await {
                        Some(new) => {
                            session = new;
                            observed.consuming(true);
                        }
                        None => {
                            info!("stopped");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Stops consuming, waits for the orders in flight within the grace period, then closes.
async fn stop(
    session: Session,
    in_flight: &TaskTracker,
    lost: &CancellationToken,
    settings: &Settings,
) {
    info!(
        in_flight = in_flight.len(),
        "stopping: no new orders are taken"
    );
    let cancel = session
        .channel
        .basic_cancel(session.consumer.tag(), BasicCancelOptions::default());
    if let Err(e) = cancel.await {
        warn!(error = %e, "could not cancel the consumer");
    }
    let grace = Duration::from_secs(settings.worker.shutdown_grace_seconds);
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        warn!(
            unfinished = in_flight.len(),
            "grace period over: unfinished orders go back to the queue"
        );
        lost.cancel();
        in_flight.wait().await;
    }
    for connection in [&session.connection, &session.slots_connection] {
        if let Err(e) = connection.close(200, "worker stopping".into()).await {
            warn!(error = %e, "closing a broker connection failed");
        }
    }
    info!("stopped");
}

/// Opens a new session, retrying with a pause until it succeeds; `None` if shutdown comes
/// first.
async fn reconnect(
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<Session> {
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return None,
            opened = Session::open(settings, metrics) => match opened {
                Ok(session) => {
                    info!("reconnected to the broker");
                    return Some(session);
                }
                Err(e) => {
                    warn!(error = %e, "broker still unreachable; trying again");
                    tokio::select! {
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    }
                }
            },
        }
    }
}

/// The pause between two rounds of connection attempts once the broker was lost.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Takes one delivery through the pipeline and settles it; anything unsettled (a failed
/// publish, a panic) is handed back to the broker for another attempt.
async fn handle<O: Organizations>(
    delivery: Delivery,
    pipeline: Arc<Pipeline<O>>,
    settler: Settler,
    exclusive: BrokerLocks,
    slots: BrokerSlots,
) {
    let history = History::read(delivery.properties.headers().as_ref());
    let span = info_span!(
        "delivery",
        attempt = history.attempts + 1,
        redelivered = delivery.redelivered
    );
    async {
        let settled = AssertUnwindSafe(process(&delivery, &history, &pipeline, &settler, &exclusive, &slots))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err("the pipeline panicked".to_owned()));
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

/// Resolves the order, takes its exclusive key (one delivery at a time per account email,
/// whichever worker holds it), provisions (a `CreateAccount` in one of the shared `slots`),
/// settles, and gives the key back after settling, so that the next delivery of the same order
/// finds the account and the event already out.
async fn process<O: Organizations>(
    delivery: &Delivery,
    history: &History,
    pipeline: &Pipeline<O>,
    settler: &Settler,
    exclusive: &BrokerLocks,
    slots: &BrokerSlots,
) -> Result<Settled, String> {
    let settle = |outcome| async {
        settler
            .settle(delivery, history, outcome)
            .await
            .map_err(|e| e.to_string())
    };
    let order = match pipeline.resolve(&delivery.data) {
        Ok(order) => order,
        Err(outcome) => return settle(*outcome).await,
    };
    let span = order.span.clone();
    async {
        let taken = exclusive
            .try_take(&order.exclusive_key())
            .await
            .map_err(|e| format!("taking the order's exclusive key failed: {e}"))?;
        let Some(held) = taken else {
            return settle(pipeline.busy(&order, history.progress.clone())).await;
        };
        let progress = Progress {
            maybe_in_flight: delivery.redelivered,
            ..history.progress.clone()
        };
        let outcome = pipeline.provision(&order, progress, slots).await;
        let settled = settle(outcome).await;
        held.release().await;
        settled
    }
    .instrument(span)
    .await
}
