//! The broker side: topology, publishing with confirms, the headers an order carries between
//! attempts, `settle`, the one place that maps a pipeline outcome to ack, retry or
//! dead-letter, and the order locks and creation slots, both held as exclusive queues (`lease`).

pub mod headers;
pub mod in_force;
pub mod lease;
pub mod locks;
pub mod management;
pub mod publisher;
pub mod settle;
pub mod slots;
pub mod topology;

use std::str::FromStr;
use std::time::Duration;

use backon::Retryable;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use tracing::warn;

use crate::retry;

/// Opens a connection to the broker at `url`, named for the management UI, retrying with
/// exponential backoff and jitter ([`retry::broker_connect_backoff`]).
///
/// # Errors
/// The broker cannot be reached or refuses the credentials after every attempt.
pub async fn connect(url: &SecretString) -> lapin::Result<Connection> {
    let attempt = || connect_attempt(url);
    attempt
        .retry(retry::broker_connect_backoff())
        .sleep(tokio::time::sleep)
        .notify(|error, wait| warn!(%error, ?wait, "broker not reachable yet; retrying"))
        .await
}

/// One connection attempt, named for the management UI.
async fn connect_attempt(url: &SecretString) -> lapin::Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name("aws-account-worker".into());
    Connection::connect(url.expose_secret(), properties).await
}

/// Opens a connection to the broker at `url` in one attempt that gives up after `limit`: for
/// `check`, which reports an unreachable broker instead of waiting for it.
///
/// # Errors
/// The broker cannot be reached or refuses the credentials; no answer within `limit` is an
/// I/O error of kind `TimedOut`.
pub async fn connect_once(url: &SecretString, limit: Duration) -> lapin::Result<Connection> {
    match tokio::time::timeout(limit, connect_attempt(url)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", limit.as_secs_f32()),
        )
        .into()),
    }
}

/// Where `url` points, for messages: host, port, vhost and user, never the password.
pub fn address(url: &SecretString) -> String {
    match lapin::uri::AMQPUri::from_str(url.expose_secret()) {
        Ok(uri) => format!(
            "{}:{}, vhost {}, user {}",
            uri.authority.host, uri.authority.port, uri.vhost, uri.authority.userinfo.username
        ),
        // Configuration validation refuses such a URL; never print it, it may hold a password.
        Err(_) => "amqp.url".to_owned(),
    }
}
