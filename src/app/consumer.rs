//! The consumer: one broker session (connection, topology, consumer, settler, order locks,
//! creation slots), deliveries handed to tasks with a bounded number in flight, reconnection
//! after a lost broker, and a clean stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::handler::Handler;
use crate::aws::Organizations;
use crate::broker::locks::BrokerLocks;
use crate::broker::publisher::Publisher;
use crate::broker::settle::Settler;
use crate::broker::slots::{BrokerSlots, Limits};
use crate::broker::{self, connect, lease, topology};
use crate::config::Settings;
use crate::observability::Metrics;
use crate::pipeline::Pipeline;
use crate::retry;

/// One broker connection and what hangs on it; a lost connection is replaced by a new session.
pub(super) struct Session {
    connection: Arc<Connection>,
    channel: Channel,
    consumer: Consumer,
    settler: Settler,
    locks: BrokerLocks,
    slots: BrokerSlots,
    /// Owns the creation slots' queues; closing it frees the slots held.
    slots_connection: Arc<Connection>,
}

/// Why a session stopped consuming.
pub(super) enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The connection or the consumer was lost.
    Lost(String),
}

impl Session {
    /// Connects, declares the topology and starts consuming; a connection out of channels
    /// (`ChannelsLimitReached`) fails the worker's health.
    pub(super) async fn open(settings: &Settings, metrics: &Metrics) -> lapin::Result<Self> {
        let opened = Self::start(settings, metrics).await;
        if let Err(e) = &opened
            && lease::channels_exhausted(e)
        {
            metrics
                .health()
                .fail("the orders connection ran out of channels");
        }
        opened
    }

    async fn start(settings: &Settings, metrics: &Metrics) -> lapin::Result<Self> {
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
        let locks = BrokerLocks::new(&connection, &amqp.url, &amqp.lock_prefix(), metrics);
        // The slots on a connection of their own: taking a slot is refused by design (a refused
        // exclusive declare closes its channel), and lapin keeps a refused channel id poisoned
        // for the connection's life, so a channel opened later on that id would fail with the
        // old refusal (broker/lease.rs moves to a new connection before the ids run out).
        let slots_connection = Arc::new(broker::connect_for(&amqp.url, broker::Use::Leases).await?);
        let slots = BrokerSlots::observed(
            &slots_connection,
            &amqp.url,
            &amqp.slot_prefix(),
            Limits::from_settings(settings),
            metrics,
        );
        info!(queue = %amqp.orders_queue, prefetch = amqp.prefetch, "consuming orders");
        Ok(Self {
            connection,
            channel,
            consumer,
            settler,
            locks,
            slots,
            slots_connection,
        })
    }

    /// Hands deliveries to tasks on `in_flight` until `shutdown` completes or the connection is
    /// lost; the tasks stop early when `lost` is cancelled.
    pub(super) async fn consume<O: Organizations>(
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
                    let pipeline = Arc::clone(pipeline);
                    let settler = self.settler.clone();
                    let locks = self.locks.clone();
                    let slots = self.slots.clone();
                    let lost = lost.clone();
                    in_flight.spawn(crate::observability::timed(async move {
                        let handler = Handler {
                            pipeline: &pipeline,
                            settler: &settler,
                            locks: &locks,
                            slots: &slots,
                        };
                        // Boxed: the task holds what it captured and a pointer, not room for
                        // every state of the handling as well (docs/perf/rss.md).
                        let handling = Box::pin(handler.handle(delivery, in_flight_now));
                        tokio::select! {
                            () = lost.cancelled() => {}
                            () = handling => {}
                        }
                    }));
                }
                Some(Err(e)) => return Ended::Lost(e.to_string()),
                None => return Ended::Lost("the broker ended the consumer".to_owned()),
            }
        }
    }

    /// Closes the slots' connection after the session was lost: its slots go with it.
    pub(super) async fn drop_slots(&self) {
        let _ = self
            .slots_connection
            .close(200, "session lost".into())
            .await;
    }
}

/// Stops consuming, waits for the orders in flight within the grace period, then closes.
pub(super) async fn stop(
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
pub(super) async fn reconnect(
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
                        () = tokio::time::sleep(retry::reconnect_pause(settings)) => {}
                    }
                }
            },
        }
    }
}
