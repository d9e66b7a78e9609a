//! Creation slots shared by every replica on every machine, built on RabbitMQ itself: slot `i`
//! of payer `p` is the exclusive queue `<prefix>.<p>.<i>`, and holding the slot means owning
//! that queue. RabbitMQ lets one connection at a time own an exclusive queue and deletes it when
//! that connection closes, so a crashed replica's slots come back by themselves, and there is
//! nothing to seed or count. Each process runs one small task per payer that serves its local
//! waiters first come first served: while orders wait it looks for a free slot every `poll` (a
//! refused exclusive declare closes its channel, so looking costs a channel per busy slot and
//! round). A slot given back goes back to the broker, not straight to a local waiter, so that
//! every replica's waiters get their turn.
//!
//! lapin never frees the id of a channel the broker closed (lapin 4.12), so refused declares
//! use up a connection's channels. New slots are therefore taken on a connection the task
//! replaces once half its channels were refused; a replaced connection stays open while it
//! owns a slot and is closed when its last slot comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ErrorKind};
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::broker;
use crate::observability::{Counted, Metrics};
use crate::slots::{CreationSlots, NoSlot, Slot};

/// How long opening a replacement slots connection may take.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(5);

/// AMQP reply code RESOURCE_LOCKED: another connection owns the exclusive queue.
const RESOURCE_LOCKED: u16 = 405;

/// How the slots are shared.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Slots per payer organization (`aws.max_concurrent_creations`).
    pub slots: usize,
    /// How often waiting orders look for a slot another replica gave back.
    pub poll: Duration,
    /// Orders of this process that may wait for one payer's slot at once.
    pub max_waiting: usize,
    /// The longest one order waits before it goes back to the broker.
    pub max_wait: Duration,
}

/// The slots of every payer, on one broker connection. Cheap to clone.
#[derive(Clone)]
pub struct BrokerSlots {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Arc<Connection>,
    url: SecretString,
    prefix: String,
    limits: Limits,
    payers: Mutex<HashMap<String, Payer>>,
    metrics: Metrics,
}

/// One payer's task, and how many local orders wait for it.
#[derive(Clone)]
struct Payer {
    name: String,
    requests: mpsc::UnboundedSender<Request>,
    waiting: Arc<AtomicUsize>,
}

enum Request {
    /// A local order wants a slot.
    Acquire(oneshot::Sender<Held>),
    /// Slot `i` is given back.
    Release(usize),
}

/// Slot `index`, owned by this process; dropped, it goes back to the payer's task.
struct Held {
    index: usize,
    requests: Option<mpsc::UnboundedSender<Request>>,
    /// Counts it in `creation_slots_held` while an order of this process holds it.
    _counted: Counted,
}

impl Held {
    /// Takes the slot back into the task without a release message.
    fn disarm(mut self) -> usize {
        self.requests = None;
        self.index
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(requests) = self.requests.take() {
            // A task that is gone had its connection closed: the queue is gone with it.
            let _ = requests.send(Request::Release(self.index));
        }
    }
}

impl BrokerSlots {
    /// Slots on `connection`, as exclusive queues named `<prefix>.<payer>.<i>`; `url` opens
    /// the connections that replace it once refused declares used up half its channels.
    /// Closing `connection` gives back every slot this process holds.
    pub fn new(
        connection: &Arc<Connection>,
        url: &SecretString,
        prefix: &str,
        limits: Limits,
    ) -> Self {
        Self::observed(connection, url, prefix, limits, &Metrics::default())
    }

    /// As [`BrokerSlots::new`], counting the slots held and the orders waiting for one in
    /// `metrics`.
    pub fn observed(
        connection: &Arc<Connection>,
        url: &SecretString,
        prefix: &str,
        limits: Limits,
        metrics: &Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connection: Arc::clone(connection),
                url: url.clone(),
                prefix: prefix.to_owned(),
                limits,
                payers: Mutex::default(),
                metrics: metrics.clone(),
            }),
        }
    }

    fn payer(&self, payer: &str) -> Payer {
        let mut payers = self
            .inner
            .payers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        payers
            .entry(payer.to_owned())
            .or_insert_with(|| {
                let (requests, receiver) = mpsc::unbounded_channel();
                let names = (0..self.inner.limits.slots)
                    .map(|i| format!("{}.{payer}.{i}", self.inner.prefix))
                    .collect();
                let task = PayerTask {
                    base: Arc::clone(&self.inner.connection),
                    url: self.inner.url.clone(),
                    current: Arc::clone(&self.inner.connection),
                    refused: 0,
                    names,
                    owned: (0..self.inner.limits.slots).map(|_| None).collect(),
                    waiters: VecDeque::new(),
                    requests: requests.downgrade(),
                    payer: payer.to_owned(),
                    metrics: self.inner.metrics.clone(),
                };
                tokio::spawn(task.run(receiver, self.inner.limits.poll));
                Payer {
                    name: payer.to_owned(),
                    requests,
                    waiting: Arc::default(),
                }
            })
            .clone()
    }
}

/// Counts one local waiter while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CreationSlots for BrokerSlots {
    fn room_to_wait(&self, payer: &str) -> Result<(), NoSlot> {
        let waiting = self.payer(payer).waiting.load(Ordering::SeqCst);
        if waiting >= self.inner.limits.max_waiting {
            return Err(NoSlot::TooManyWaiting(waiting));
        }
        Ok(())
    }

    async fn acquire(&self, payer: &str) -> Result<Slot, NoSlot> {
        let limits = &self.inner.limits;
        let task = self.payer(payer);
        let before = task.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(Arc::clone(&task.waiting));
        if before >= limits.max_waiting {
            return Err(NoSlot::TooManyWaiting(before));
        }
        let _counted = self.inner.metrics.slot_waiter(&task.name);
        let (give, take) = oneshot::channel();
        task.requests
            .send(Request::Acquire(give))
            .map_err(|_| NoSlot::Unavailable("the slot task ended".to_owned()))?;
        match tokio::time::timeout(limits.max_wait, take).await {
            Ok(Ok(held)) => Ok(Slot::new(held)),
            Ok(Err(_)) => Err(NoSlot::Unavailable(
                "the broker connection is gone".to_owned(),
            )),
            // Dropping the receiver tells the task; a slot already sent comes back with it.
            Err(_) => Err(NoSlot::TimedOut(limits.max_wait)),
        }
    }
}

/// A slot's queue owned by this process.
struct Owned {
    channel: Channel,
    connection: Arc<Connection>,
}

/// One payer's slots in this process.
struct PayerTask {
    /// The connection the slots were given: once it is closed, the task closes the ones it
    /// opened (giving back their slots) and ends.
    base: Arc<Connection>,
    /// Opens the connections that replace `current`.
    url: SecretString,
    /// Where new slots are taken.
    current: Arc<Connection>,
    /// Declares refused on `current`: each one keeps a channel id for good.
    refused: usize,
    /// The queue of each slot.
    names: Vec<String>,
    /// The channel (and its connection) that declared slot `i`'s queue, while this process
    /// owns it.
    owned: Vec<Option<Owned>>,
    /// Local orders waiting, oldest first.
    waiters: VecDeque<oneshot::Sender<Held>>,
    /// For the slots handed out, to come back; weak, so that the task ends once the slots'
    /// owner and every slot handed out are gone.
    requests: mpsc::WeakUnboundedSender<Request>,
    /// The payer, for the slot metrics.
    payer: String,
    metrics: Metrics,
}

impl PayerTask {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Request>, poll: Duration) {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            self.waiters.retain(|w| !w.is_closed());
            let waiting = !self.waiters.is_empty();
            tokio::select! {
                request = receiver.recv() => match request {
                    Some(Request::Acquire(waiter)) => {
                        self.waiters.push_back(waiter);
                        if !waiting {
                            self.take_free().await;
                            ticker.reset();
                        }
                    }
                    Some(Request::Release(index)) => self.give_back(index).await,
                    None => return,
                },
                _ = ticker.tick(), if waiting => self.take_free().await,
            }
            if self.base.status().closed() {
                debug!("the slots' connection is closed: the slot task ends");
                self.close_all().await;
                return;
            }
        }
    }

    /// Hands slot `index` to the oldest local waiter; `false` if none is left.
    fn hand_over(&mut self, index: usize) -> bool {
        while let Some(waiter) = self.waiters.pop_front() {
            // A waiter exists, so its `acquire` holds a strong sender: upgrading succeeds.
            let Some(requests) = self.requests.upgrade() else {
                return false;
            };
            let held = Held {
                index,
                requests: Some(requests),
                _counted: self.metrics.slot_held(&self.payer),
            };
            match waiter.send(held) {
                Ok(()) => return true,
                Err(refused) => {
                    refused.disarm();
                }
            }
        }
        false
    }

    /// A slot came back: to every replica, the local waiters included (they look again at the
    /// next poll, like the other replicas' waiters), so that no replica keeps the slots while
    /// another one's orders wait.
    async fn give_back(&mut self, index: usize) {
        let Some(Owned {
            channel,
            connection,
        }) = self.owned.get_mut(index).and_then(Option::take)
        else {
            return;
        };
        let name = &self.names[index];
        if let Err(e) = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            warn!(queue = %name, error = %e, "could not delete a creation slot's queue; it goes when the connection closes");
        }
        if let Err(e) = channel.close(200, "slot released".into()).await {
            debug!(error = %e, "closing a slot's channel failed");
        }
        self.close_if_retired(&connection).await;
    }

    /// Closes `connection` if it was replaced and owns no slot any more (never the base one,
    /// whose closing ends the task).
    async fn close_if_retired(&self, connection: &Arc<Connection>) {
        let in_use = Arc::ptr_eq(connection, &self.current)
            || Arc::ptr_eq(connection, &self.base)
            || self
                .owned
                .iter()
                .flatten()
                .any(|owned| Arc::ptr_eq(&owned.connection, connection));
        if !in_use {
            debug!("closing a replaced creation slots connection");
            if let Err(e) = connection.close(200, "replaced".into()).await {
                debug!(error = %e, "closing a replaced slots connection failed");
            }
        }
    }

    /// Closes every connection this task opened, so the slots they own come back.
    async fn close_all(&mut self) {
        let mut opened: Vec<Arc<Connection>> = self
            .owned
            .iter_mut()
            .filter_map(Option::take)
            .map(|owned| owned.connection)
            .collect();
        opened.push(Arc::clone(&self.current));
        for connection in opened {
            if !Arc::ptr_eq(&connection, &self.base) && connection.status().connected() {
                let _ = connection.close(200, "slots closed".into()).await;
            }
        }
    }

    /// Counts a refused declare on `current`, and replaces `current` once half its channels
    /// are used up that way. If no new connection can be opened, it keeps the old one.
    async fn refused_once(&mut self) {
        self.refused += 1;
        let channel_max = match self.current.configuration().channel_max() {
            0 => u16::MAX,
            max => max,
        };
        if self.refused < usize::from(channel_max / 2) {
            return;
        }
        match broker::connect_once(&self.url, REPLACE_TIMEOUT).await {
            Ok(new) => {
                debug!(
                    refused = self.refused,
                    "replacing the creation slots connection"
                );
                let old = std::mem::replace(&mut self.current, Arc::new(new));
                self.refused = 0;
                self.close_if_retired(&old).await;
            }
            Err(e) => warn!(error = %e, "could not open a new creation slots connection"),
        }
    }

    /// Takes every slot no replica holds, while local orders wait for one.
    async fn take_free(&mut self) {
        for index in 0..self.names.len() {
            self.waiters.retain(|w| !w.is_closed());
            if self.waiters.is_empty() {
                return;
            }
            if self.owned[index].is_some() {
                continue;
            }
            match self.try_own(index).await {
                Ok(true) => {
                    debug!(queue = %self.names[index], "creation slot taken");
                    if !self.hand_over(index) {
                        self.give_back(index).await;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(queue = %self.names[index], error = %e, kind = ?e.kind(), "could not take a free creation slot");
                    if self.current.status().closed() {
                        return;
                    }
                }
            }
        }
    }

    /// Declares slot `index`'s exclusive queue: `true` if this process owns it now.
    async fn try_own(&mut self, index: usize) -> lapin::Result<bool> {
        // A refused declare closes its channel; should lapin hand that refusal to the next
        // channel opened, it is the same answer.
        let channel = match self.current.create_channel().await {
            Ok(channel) => channel,
            Err(e) if is_locked(&e) => {
                self.refused_once().await;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(
                self.names[index].as_str().into(),
                options,
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                self.owned[index] = Some(Owned {
                    channel,
                    connection: Arc::clone(&self.current),
                });
                Ok(true)
            }
            Err(e) if is_locked(&e) => {
                self.refused_once().await;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == RESOURCE_LOCKED)
}
