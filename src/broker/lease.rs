//! Holding an exclusive queue: the one broker mechanism under the order locks and the creation
//! slots. RabbitMQ lets one connection at a time declare an exclusive queue and deletes it when
//! that connection closes, so a lease taken by a worker that crashes comes back by itself.
//! [`Leases::try_take`] declares the queue (`None` when another connection holds it),
//! [`Lease::give_back`] deletes it; nothing else lives here.
//!
//! A refused declare (`RESOURCE_LOCKED`) closes its channel on the broker side, and lapin
//! (4.12) drops the channel too, but keeps its id poisoned with the refusal for the
//! connection's life (`Frames::channels_poison`, cleared only by connection recovery): a channel
//! opened later on that id is refused at once with the old error and stays among the
//! connection's channels. Nothing in lapin's API frees the id, so refusals use up a connection's
//! channel ids for good. [`Leases`] therefore takes new leases on a connection it replaces once
//! half its channel ids went that way; a replaced connection stays open while a lease taken on
//! it lives, and closes with its last one. Should channels run out all the same (no replacement
//! could be opened, or none is allowed), the leases report it to the worker's [`Health`], which
//! fails `/healthz` and `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ErrorKind};
use secrecy::SecretString;
use tracing::{debug, warn};

use crate::broker;
use crate::observability::Health;

/// AMQP reply code RESOURCE_LOCKED: another connection owns the exclusive queue.
const RESOURCE_LOCKED: u16 = 405;

/// How long opening a replacement connection may take.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Channels kept open per connection between declares and deletes that succeeded: a lease
/// taken and given back on a kept channel costs one round trip each instead of three (open,
/// declare or delete, close), and a handful bounds what idle channels hold.
const IDLE_CHANNELS: usize = 4;

/// Takes exclusive queues on a broker connection. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    /// Opens the connections that replace the current one; `None`: never replaced.
    url: Option<SecretString>,
    /// Where new leases are taken, and how many of its channel ids are spent.
    current: Mutex<Current>,
    /// Set while one caller opens a replacement connection.
    replacing: AtomicBool,
    /// Told when the channels ran out.
    health: Health,
}

struct Current {
    link: Arc<Link>,
    spent: usize,
}

/// A connection leases are taken on. One this module opened is closed once the last lease taken
/// on it and the [`Leases`] that used it are gone; the connection given to [`Leases`] is its
/// owner's to close.
struct Link {
    connection: Arc<Connection>,
    opened: bool,
    /// Channels whose last declare or delete succeeded, open for the next one (a refusal
    /// closes its channel, so a refused one is never kept).
    idle: Mutex<Vec<Channel>>,
}

impl Link {
    fn new(connection: Arc<Connection>, opened: bool) -> Self {
        Self {
            connection,
            opened,
            idle: Mutex::default(),
        }
    }

    /// A kept channel that is still open, if any.
    fn reuse(&self) -> Option<Channel> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(channel) = idle.pop() {
            if channel.status().connected() {
                return Some(channel);
            }
        }
        None
    }

    /// Keeps `channel` for the next declare or delete, or closes it when enough are kept.
    async fn keep(&self, channel: Channel) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_CHANNELS && channel.status().connected() {
                idle.push(channel);
                return;
            }
        }
        if let Err(e) = channel
            .close(200, "enough idle lease channels".into())
            .await
        {
            debug!(error = %e, "closing a lease's channel failed");
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if !self.connection.status().connected() {
            return;
        }
        if !self.opened {
            // The owner's connection stays open: the channels kept on it close here.
            let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
            if let (false, Ok(runtime)) = (idle.is_empty(), tokio::runtime::Handle::try_current()) {
                runtime.spawn(async move {
                    for channel in idle {
                        let _ = channel.close(200, "lease connection replaced".into()).await;
                    }
                });
            }
            return;
        }
        let connection = Arc::clone(&self.connection);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                debug!("closing a replaced lease connection");
                if let Err(e) = connection.close(200, "replaced".into()).await {
                    debug!(error = %e, "closing a replaced lease connection failed");
                }
            });
        }
    }
}

/// An exclusive queue held: this process owns it until [`Lease::give_back`], or until the
/// connection it was taken on closes. Dropped without being given back, the queue stays until
/// that connection closes.
pub struct Lease {
    queue: String,
    link: Arc<Link>,
    leases: Leases,
}

impl Leases {
    /// Leases on `connection` alone, however many channel ids refusals spend on it (tests and
    /// short-lived uses).
    pub fn on(connection: &Arc<Connection>) -> Self {
        Self::build(connection, None, &Health::default())
    }

    /// As [`Leases::on`], telling `health` when the connection's channels ran out.
    pub fn on_reporting(connection: &Arc<Connection>, health: &Health) -> Self {
        Self::build(connection, None, health)
    }

    /// Leases on `connection` first, then on connections opened from `url` each time refusals
    /// have spent half the channel ids of the current one; `health` is told if channels run
    /// out all the same.
    pub fn replacing(connection: &Arc<Connection>, url: &SecretString, health: &Health) -> Self {
        Self::build(connection, Some(url.clone()), health)
    }

    fn build(connection: &Arc<Connection>, url: Option<SecretString>, health: &Health) -> Self {
        let link = Arc::new(Link::new(Arc::clone(connection), false));
        Self {
            inner: Arc::new(Inner {
                url,
                current: Mutex::new(Current { link, spent: 0 }),
                replacing: AtomicBool::new(false),
                health: health.clone(),
            }),
        }
    }

    /// Takes the exclusive queue `queue`: `None` when another connection holds it. The queue
    /// belongs to the connection, not the channel: the declare's channel is kept for the next
    /// declare or delete (a few at most per connection), or closed.
    ///
    /// # Errors
    /// The broker connection failed, or the broker refused the declare for another reason.
    pub async fn try_take(&self, queue: &str) -> lapin::Result<Option<Lease>> {
        let (link, channel) = self.open_channel(None).await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        match declared {
            Ok(_) => {
                link.keep(channel).await;
                Ok(Some(Lease {
                    queue: queue.to_owned(),
                    link,
                    leases: self.clone(),
                }))
            }
            Err(e) if is_locked(&e) => {
                // The broker closed the channel and lapin dropped it; its id is spent.
                debug!(queue, "exclusive queue held by another connection");
                self.spent(&link, false).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The connection new leases are taken on now.
    fn link(&self) -> Arc<Link> {
        Arc::clone(&self.current().link)
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Only swaps and counts happen under the lock: its state is sound whatever panicked.
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a channel on `fixed`, or else on the current connection, past the ids earlier
    /// refusals spent (lapin answers those with the old refusal at once, each such answer
    /// spending the id for good).
    async fn open_channel(&self, fixed: Option<&Arc<Link>>) -> lapin::Result<(Arc<Link>, Channel)> {
        let mut attempts = 0;
        loop {
            let link = fixed.map_or_else(|| self.link(), Arc::clone);
            if let Some(channel) = link.reuse() {
                return Ok((link, channel));
            }
            match link.connection.create_channel().await {
                Ok(channel) => return Ok((link, channel)),
                Err(e) if is_spent_id(&e) && attempts < channel_max(&link.connection) => {
                    debug!(error = %e, "a channel id spent by a refusal: trying the next one");
                    self.spent(&link, matches!(e.kind(), ErrorKind::ChannelsLimitReached))
                        .await;
                    attempts += 1;
                }
                Err(e) => {
                    if channels_exhausted(&e) {
                        self.inner
                            .health
                            .fail("the order locks' and creation slots' broker connection ran out of channels");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Counts a channel id of `link` spent for good, and replaces the current connection once
    /// half its ids are spent (at once if `exhausted`). If no new connection can be opened, the
    /// old one stays.
    async fn spent(&self, link: &Arc<Link>, exhausted: bool) {
        let Some(url) = &self.inner.url else {
            return;
        };
        {
            let mut current = self.current();
            if !Arc::ptr_eq(&current.link, link) {
                return;
            }
            current.spent += 1;
            if !exhausted && current.spent < channel_max(&link.connection) / 2 {
                return;
            }
        }
        if self.inner.replacing.swap(true, Ordering::SeqCst) {
            return;
        }
        match broker::connect_once_for(url, REPLACE_TIMEOUT, broker::Use::Leases).await {
            Ok(new) => {
                let new = Arc::new(Link::new(Arc::new(new), true));
                let mut current = self.current();
                debug!(spent = current.spent, "replacing the lease connection");
                // The old link closes with its last lease (if this module opened it).
                *current = Current {
                    link: new,
                    spent: 0,
                };
            }
            Err(e) => warn!(error = %e, "could not open a new lease connection"),
        }
        self.inner.replacing.store(false, Ordering::SeqCst);
    }
}

impl Lease {
    /// The exclusive queue held.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Gives the queue back: deletes it on a kept or new channel of its connection, kept in
    /// turn if the delete succeeded. A queue that cannot be deleted goes when its connection
    /// closes.
    pub async fn give_back(self) {
        let deleted = match self.leases.open_channel(Some(&self.link)).await {
            Ok((_, channel)) => {
                let deleted = channel
                    .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                if deleted.is_ok() {
                    self.link.keep(channel).await;
                } else if let Err(e) = channel.close(200, "lease given back".into()).await {
                    debug!(error = %e, "closing a lease's channel failed");
                }
                deleted.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            warn!(queue = %self.queue, error = %e, "could not delete an exclusive queue; it goes when its connection closes");
        }
    }
}

/// The channels `connection` may open (0 negotiated: no limit but the id's range).
fn channel_max(connection: &Connection) -> usize {
    match connection.configuration().channel_max() {
        0 => usize::from(u16::MAX),
        max => usize::from(max),
    }
}

/// Whether `error` says a connection has no channel left to open (`ChannelsLimitReached`): the
/// worker cannot go on on it.
pub fn channels_exhausted(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ChannelsLimitReached)
}

/// Whether `error` is the broker's refusal of an exclusive queue another connection holds.
fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == RESOURCE_LOCKED)
}

/// Whether opening a channel failed on an id an earlier refusal spent: lapin answers it with
/// that refusal (or, once every id is spent, with `ChannelsLimitReached`).
fn is_spent_id(error: &lapin::Error) -> bool {
    is_locked(error) || matches!(error.kind(), ErrorKind::ChannelsLimitReached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn protocol(kind: AMQPSoftError) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Soft(kind), "refused".into())).into()
    }

    #[test]
    fn a_refusal_is_told_from_other_broker_failures() {
        let cases = [
            (protocol(AMQPSoftError::RESOURCELOCKED), true, true),
            (protocol(AMQPSoftError::NOTFOUND), false, false),
            (protocol(AMQPSoftError::ACCESSREFUSED), false, false),
            (ErrorKind::ChannelsLimitReached.into(), false, true),
            (
                ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
                false,
                false,
            ),
        ];
        for (error, locked, spent) in cases {
            assert_eq!(is_locked(&error), locked, "{error}");
            assert_eq!(is_spent_id(&error), spent, "{error}");
        }
    }
}
