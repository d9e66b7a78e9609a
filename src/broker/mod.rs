//! The broker side: topology, publishing with confirms, the headers an order carries between
//! attempts, and `settle`, the one place that maps a pipeline outcome to ack, retry or
//! dead-letter.

pub mod exclusive;
pub mod headers;
pub mod publisher;
pub mod settle;
pub mod topology;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use tracing::warn;

/// Connection attempts at start-up before giving up (about 15 s in all), so a worker that
/// starts just before its broker does not fail at once.
const CONNECT_ATTEMPTS: usize = 6;

/// Opens a connection to the broker at `url`, named for the management UI, retrying with
/// exponential backoff and jitter.
///
/// # Errors
/// The broker cannot be reached or refuses the credentials after every attempt.
pub async fn connect(url: &SecretString) -> lapin::Result<Connection> {
    let attempt = || async {
        let properties =
            ConnectionProperties::default().with_connection_name("aws-account-worker".into());
        Connection::connect(url.expose_secret(), properties).await
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(CONNECT_ATTEMPTS - 1)
        .with_jitter();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .notify(|error, wait| warn!(%error, ?wait, "broker not reachable yet; retrying"))
        .await
}
