//! One delivery at a time per account email, across every worker on every machine, built on
//! RabbitMQ itself: holding the key means owning an exclusive queue named after it. RabbitMQ
//! lets one connection at a time declare an exclusive queue and deletes it when that connection
//! closes, so a crashed worker's keys come back by themselves. Inside one process (one
//! connection), a set of held keys does the same job.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ErrorKind};
use tracing::{debug, warn};

use crate::observability::{Counted, Metrics};

/// AMQP reply code RESOURCE_LOCKED: another connection owns the exclusive queue.
const RESOURCE_LOCKED: u16 = 405;

/// Hands out exclusive keys on one broker connection.
#[derive(Clone)]
pub struct Exclusive {
    connection: Arc<Connection>,
    prefix: String,
    held: Arc<Mutex<HashSet<String>>>,
    metrics: Metrics,
}

/// A key held; [`Held::release`] gives it back (dropping it gives it back in this process, and
/// the broker's queue goes when the connection closes).
pub struct Held {
    key: String,
    queue: String,
    connection: Arc<Connection>,
    held: Arc<Mutex<HashSet<String>>>,
    /// Counts the key in `order_locks_held` once the broker gave it.
    counted: Option<Counted>,
}

impl Exclusive {
    /// Keys on `connection`, as queues named `<prefix>.<key>`, counted in `metrics`.
    pub fn new(connection: &Arc<Connection>, prefix: &str, metrics: &Metrics) -> Self {
        Self {
            connection: Arc::clone(connection),
            prefix: prefix.to_owned(),
            held: Arc::default(),
            metrics: metrics.clone(),
        }
    }

    /// Takes `key` if nobody holds it; `None` when another delivery in this process or another
    /// worker holds it.
    ///
    /// # Errors
    /// The broker connection failed.
    pub async fn try_take(&self, key: &str) -> lapin::Result<Option<Held>> {
        if !lock(&self.held).insert(key.to_owned()) {
            return Ok(None);
        }
        // From here on, dropping the guard frees the key in this process.
        let queue = format!("{}.{key}", self.prefix);
        let channel = match self.connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => {
                lock(&self.held).remove(key);
                return Err(e);
            }
        };
        let mut held = Held {
            key: key.to_owned(),
            queue,
            connection: Arc::clone(&self.connection),
            held: Arc::clone(&self.held),
            counted: None,
        };
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(held.queue.as_str().into(), options, FieldTable::default())
            .await;
        match declared {
            Ok(_) => {
                // The queue belongs to the connection, not to the channel: the channel goes at
                // once, so that a worker with many orders in flight holds no channel for each.
                if let Err(e) = channel.close(200, "key taken".into()).await {
                    debug!(error = %e, "closing a key's channel failed");
                }
                held.counted = Some(self.metrics.lock_held());
                Ok(Some(held))
            }
            Err(e) if is_locked(&e) => {
                debug!(queue = %held.queue, "key held by another worker");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Held {
    /// Gives the key back: deletes the queue on a channel of its own, then closes that channel.
    pub async fn release(self) {
        let deleted = match self.connection.create_channel().await {
            Ok(channel) => {
                let deleted = channel
                    .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                if let Err(e) = channel.close(200, "key released".into()).await {
                    debug!(error = %e, "closing a key's channel failed");
                }
                deleted.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            warn!(queue = %self.queue, error = %e, "could not delete an exclusive key's queue; it goes when the connection closes");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.key);
    }
}

fn lock(held: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // The set stays consistent whatever panicked while holding it: inserts and removes only.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == RESOURCE_LOCKED)
}
