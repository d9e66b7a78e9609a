//! Builds the running application from [`Settings`]: the AWS clients of every payer, the
//! metrics and health endpoints, the pipeline and the consuming worker. `main` and the
//! integration tests start the worker here (the benchmark runs the binary), so what runs in
//! production is what the tests run.

use std::net::SocketAddr;

use aws_config::SdkConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{Observed, RunError, Worker};
use crate::aws::sdk::{self, SdkOrganizations};
use crate::aws::{CallLimits, MemberAccess};
use crate::config::Settings;
use crate::observability::{self, ServerLimits};
use crate::pipeline::Pipeline;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics and health endpoints could not listen.
    #[error("cannot listen on observability.listen = {listen}")]
    Listen {
        /// The address asked for.
        listen: String,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be reached or refused the topology.
    #[error("cannot start consuming (is the broker at amqp.url reachable?)")]
    Broker(#[from] RunError),
}

/// The worker consuming, with its metrics and health endpoints serving.
pub struct Application {
    worker: Worker<SdkOrganizations>,
    address: SocketAddr,
    serving: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Application {
    /// Starts everything `settings` describe, with AWS reached through `aws` (the SDK's
    /// standard chain in `main`, a test's endpoint in the tests). Returns once the worker
    /// consumes; cancelling `shutdown` stops it the way SIGTERM does.
    ///
    /// # Errors
    /// [`StartError`] when the endpoints cannot listen on `observability.listen` or the broker
    /// cannot be reached.
    pub async fn start(
        settings: &Settings,
        aws: &SdkConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let observed = Observed::default();
        let listen = &settings.observability.listen;
        let (address, serving) = observability::bind_until(
            listen,
            observed.metrics.clone(),
            observed.readiness.clone(),
            ServerLimits::default(),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .map_err(|source| StartError::Listen {
            listen: listen.clone(),
            source,
        })?;
        let serving = tokio::spawn(serving);
        let payers = sdk::payers(
            aws,
            &settings.payers,
            &MemberAccess::from_settings(&settings.aws),
            &CallLimits::from_settings(&settings.aws),
            &observed.metrics,
        )
        .await;
        let pipeline = Pipeline::new(payers, settings, &observed.metrics);
        let worker = match Worker::start(settings, pipeline, observed).await {
            Ok(worker) => worker,
            Err(e) => {
                serving.abort();
                return Err(e.into());
            }
        };
        Ok(Self {
            worker,
            address,
            serving,
            shutdown,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Processes orders until the shutdown token is cancelled, then stops (see
    /// [`Worker::run_until`]) and waits for the endpoints to close.
    pub async fn run(self) {
        let Self {
            worker,
            serving,
            shutdown,
            ..
        } = self;
        worker.run_until(shutdown.clone().cancelled_owned()).await;
        // The endpoints stop on the same token; a worker that ended first stops them too.
        shutdown.cancel();
        let _ = serving.await;
    }
}
