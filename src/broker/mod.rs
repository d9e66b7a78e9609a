//! The broker side: topology, publishing with confirms, the headers an order carries between
//! attempts, and `settle`, the one place that maps a pipeline outcome to ack, retry or
//! dead-letter.

pub mod headers;
pub mod publisher;
pub mod settle;
pub mod topology;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// Opens a connection to the broker at `url`, named for the management UI.
///
/// # Errors
/// The broker cannot be reached or refuses the credentials.
pub async fn connect(url: &SecretString) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name("aws-account-worker".into());
    Connection::connect(url.expose_secret(), properties).await
}
