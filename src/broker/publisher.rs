//! Publishing with publisher confirms: a publish counts only once the broker has confirmed it
//! and routed it somewhere.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};

/// Why a publish did not count.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("publishing failed: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused to take responsibility for the message.
    #[error("the broker nacked the message published to `{0}`")]
    Nacked(String),
    /// Mandatory and unroutable: no queue is bound for it.
    #[error("no queue is bound for a message to exchange `{exchange}` with key `{routing_key}`")]
    Unroutable {
        /// Where it was sent.
        exchange: String,
        /// With which key.
        routing_key: String,
    },
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and turns on publisher confirms.
    ///
    /// # Errors
    /// The channel cannot be opened.
    pub async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Publishes persistent and mandatory, and waits for the broker's confirm.
    ///
    /// # Errors
    /// [`PublishError`] when the message is not confirmed as routed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties.with_delivery_mode(2),
            )
            .await?
            .await?;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked(exchange.to_owned()));
        }
        if confirmation.take_message().is_some() {
            return Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }
}
