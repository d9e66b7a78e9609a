//! The running worker: consume orders with a bounded number in flight, reconnect when the
//! broker is lost, and stop cleanly when asked. [`consumer`] holds the broker session,
//! [`handler`] takes one delivery through the trip and settles it.

mod consumer;
pub mod handler;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use self::consumer::{Ended, Session, reconnect, stop};
use crate::aws::Organizations;
use crate::config::Settings;
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
                    observed.metrics.connection_lost();
                    warn!(%reason, in_flight = in_flight.len(), "broker connection lost: orders in flight are abandoned and will be delivered again");
                    lost.cancel();
                    in_flight.wait().await;
                    // The slots' connection may still be up: its slots go with it.
                    session.drop_slots().await;
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
