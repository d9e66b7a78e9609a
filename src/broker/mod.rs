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

/// The largest frame asked for on a connection that only takes and gives back leases (the
/// creation slots', and the lock connections that replace the orders connection): 8 KiB holds
/// any of their declares and deletes. lapin keeps a send and a receive buffer of 32 frames
/// per connection, zero-filled at once: 4 MiB each at RabbitMQ's default 128 KiB frames,
/// 256 KiB each at 8 KiB. The orders connection keeps the broker's frame size: a delivery's
/// headers must fit in one frame.
pub const LEASE_FRAME_MAX: u32 = 8 * 1024;

/// What a connection is for, which sets the frame size it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Orders, events and everything else: the broker's frame size.
    Messages,
    /// Leases alone: frames of at most [`LEASE_FRAME_MAX`].
    Leases,
}

/// Opens a connection to the broker at `url`, named for the management UI, retrying with
/// exponential backoff and jitter ([`retry::broker_connect_backoff`]).
///
/// # Errors
/// The broker cannot be reached or refuses the credentials after every attempt.
pub async fn connect(url: &SecretString) -> lapin::Result<Connection> {
    connect_for(url, Use::Messages).await
}

/// As [`connect`], for `purpose`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_for(url: &SecretString, purpose: Use) -> lapin::Result<Connection> {
    let attempt = || connect_attempt(url, purpose);
    attempt
        .retry(retry::broker_connect_backoff())
        .sleep(tokio::time::sleep)
        .notify(|error, wait| warn!(%error, ?wait, "broker not reachable yet; retrying"))
        .await
}

/// One connection attempt for `purpose`, named for the management UI.
async fn connect_attempt(url: &SecretString, purpose: Use) -> lapin::Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name("aws-account-worker".into());
    match (purpose, lapin::uri::AMQPUri::from_str(url.expose_secret())) {
        (Use::Leases, Ok(mut uri)) => {
            uri.query.frame_max = Some(lease_frame_max(uri.query.frame_max));
            Connection::connect_uri(uri, properties).await
        }
        // A URL lapin cannot parse gets lapin's own error (configuration validation refuses it
        // before any connection).
        _ => Connection::connect(url.expose_secret(), properties).await,
    }
}

/// The frame size a lease connection asks for when the URL asks for `asked` (0 or none: the
/// broker's).
fn lease_frame_max(asked: Option<u32>) -> u32 {
    match asked {
        Some(asked) if asked > 0 => asked.min(LEASE_FRAME_MAX),
        _ => LEASE_FRAME_MAX,
    }
}

/// Opens a connection to the broker at `url` in one attempt that gives up after `limit`: for
/// `check`, which reports an unreachable broker instead of waiting for it.
///
/// # Errors
/// The broker cannot be reached or refuses the credentials; no answer within `limit` is an
/// I/O error of kind `TimedOut`.
pub async fn connect_once(url: &SecretString, limit: Duration) -> lapin::Result<Connection> {
    connect_once_for(url, limit, Use::Messages).await
}

/// As [`connect_once`], for `purpose`.
///
/// # Errors
/// As [`connect_once`].
pub async fn connect_once_for(
    url: &SecretString,
    limit: Duration,
    purpose: Use,
) -> lapin::Result<Connection> {
    match tokio::time::timeout(limit, connect_attempt(url, purpose)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_connection_asks_for_small_frames_unless_the_url_asks_for_smaller() {
        let cases = [
            (None, LEASE_FRAME_MAX),
            (Some(0), LEASE_FRAME_MAX),
            (Some(131_072), LEASE_FRAME_MAX),
            (Some(4096), 4096),
        ];
        for (asked, frame_max) in cases {
            assert_eq!(lease_frame_max(asked), frame_max, "{asked:?}");
        }
    }
}
