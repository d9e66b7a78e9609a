//! Creation slots shared by every replica on every machine, built on RabbitMQ itself: slot `i`
//! of payer `p` is the exclusive queue `<prefix>.<p>.<i>`, and holding the slot means holding
//! that queue's lease (see [`crate::broker::lease`]), so a crashed replica's slots come back by
//! themselves, and there is nothing to seed or count. Each process runs one small task per
//! payer that serves its local waiters first come first served: while orders wait it looks for
//! a free slot every `poll` (a refused take costs a channel per busy slot and round; the lease
//! moves to a new connection when refusals used up the current one's). A slot given back goes
//! back to the broker, not straight to a local waiter, so that every replica's waiters get
//! their turn.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::Connection;
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::broker::lease::{Lease, Leases};
use crate::config::Settings;
use crate::observability::{Counted, Metrics};
use crate::slots::{CreationSlots, NoSlot, Room, Slot};

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

impl Limits {
    /// The limits `settings` set: `aws.max_waiting_for_slot` counts at most `amqp.prefetch - 1`
    /// (at least 1), so that waiting orders never hold every delivery.
    pub fn from_settings(settings: &Settings) -> Self {
        let aws = &settings.aws;
        let room = usize::from(settings.amqp.prefetch.saturating_sub(1)).max(1);
        Self {
            slots: aws.max_concurrent_creations as usize,
            poll: Duration::from_millis(aws.creation_slot_poll_ms),
            max_waiting: (aws.max_waiting_for_slot as usize).min(room),
            max_wait: Duration::from_secs(aws.creation_slot_wait_seconds),
        }
    }
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
    Acquire(Waiter),
    /// Slot `i` is given back.
    Release(usize),
}

/// A local order waiting for a slot.
struct Waiter {
    /// Where its slot goes.
    slot: oneshot::Sender<Held>,
    /// Told once it is one of the next to be served; `None` once told.
    next: Option<oneshot::Sender<()>>,
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
                    leases: Leases::replacing(
                        &self.inner.connection,
                        &self.inner.url,
                        self.inner.metrics.health(),
                    ),
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

impl BrokerSlots {
    /// Counts one more waiter of `payer` if the waiting room has room.
    fn enter(&self, task: &Payer) -> Result<Waiting, NoSlot> {
        let before = task.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(Arc::clone(&task.waiting));
        if before >= self.inner.limits.max_waiting {
            return Err(NoSlot::TooManyWaiting(before));
        }
        Ok(waiting)
    }

    /// Waits for a slot of `task`'s payer, counted as a waiter by `_waiting` meanwhile.
    async fn wait(&self, task: Payer, mut waiting: Room) -> Result<Slot, NoSlot> {
        let limits = &self.inner.limits;
        let _counted = self.inner.metrics.slot_waiter(&task.name);
        let (give, take) = oneshot::channel();
        let waiter = Waiter {
            slot: give,
            next: waiting.take_next(),
        };
        task.requests
            .send(Request::Acquire(waiter))
            .map_err(|_| NoSlot::Unavailable("the slot task ended".to_owned()))?;
        let started = tokio::time::Instant::now();
        let waited = tokio::time::timeout(limits.max_wait, take).await;
        crate::observability::spent_outside(started.elapsed());
        match waited {
            Ok(Ok(held)) => Ok(Slot::new(held)),
            Ok(Err(_)) => Err(NoSlot::Unavailable(
                "the broker connection is gone".to_owned(),
            )),
            // Dropping the receiver tells the task; a slot already sent comes back with it.
            Err(_) => Err(NoSlot::TimedOut(limits.max_wait)),
        }
    }
}

impl CreationSlots for BrokerSlots {
    fn room_to_wait(&self, payer: &str) -> Result<Room, NoSlot> {
        let task = self.payer(payer);
        self.enter(&task).map(Room::new)
    }

    async fn acquire(&self, payer: &str) -> Result<Slot, NoSlot> {
        let task = self.payer(payer);
        let waiting = self.enter(&task)?;
        self.wait(task, Room::new(waiting)).await
    }

    async fn acquire_in(&self, payer: &str, room: Room) -> Result<Slot, NoSlot> {
        if !room.is_kept() {
            return self.acquire(payer).await;
        }
        self.wait(self.payer(payer), room).await
    }
}

/// One payer's slots in this process.
struct PayerTask {
    /// The connection the slots were given: once it is closed, the task drops its leases (the
    /// connections opened to replace it close, giving back their slots) and ends.
    base: Arc<Connection>,
    /// Where the slots' queues are taken.
    leases: Leases,
    /// The queue of each slot.
    names: Vec<String>,
    /// The lease of slot `i`'s queue, while this process owns it.
    owned: Vec<Option<Lease>>,
    /// Local orders waiting, oldest first.
    waiters: VecDeque<Waiter>,
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
            self.waiters.retain(|w| !w.slot.is_closed());
            self.tell_next();
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
                return;
            }
        }
    }

    /// Tells the oldest local waiters, as many as there are slots, that they are next: each
    /// then takes its order's lock while it waits, so that a slot handed to it is not kept idle
    /// while the lock is declared. Only the next few hold a lock as they wait, not the whole
    /// waiting room.
    fn tell_next(&mut self) {
        for waiter in self.waiters.iter_mut().take(self.names.len()) {
            if let Some(next) = waiter.next.take() {
                let _ = next.send(());
            }
        }
    }

    /// Hands slot `index` to the oldest local waiter; `false` if none is left.
    fn hand_over(&mut self, index: usize) -> bool {
        while let Some(Waiter { slot: waiter, .. }) = self.waiters.pop_front() {
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
        if let Some(lease) = self.owned.get_mut(index).and_then(Option::take) {
            lease.give_back().await;
        }
    }

    /// Takes every slot no replica holds, while local orders wait for one.
    async fn take_free(&mut self) {
        for index in 0..self.names.len() {
            self.waiters.retain(|w| !w.slot.is_closed());
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
                    if self.base.status().closed() {
                        return;
                    }
                }
            }
        }
    }

    /// Takes slot `index`'s queue: `true` if this process owns it now.
    async fn try_own(&mut self, index: usize) -> lapin::Result<bool> {
        let lease = self.leases.try_take(&self.names[index]).await?;
        let owned = lease.is_some();
        self.owned[index] = lease;
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(toml: &str) -> Limits {
        let text = format!("[business_model]\nprovider_email_domain = \"provider.com\"\n{toml}");
        Limits::from_settings(&Settings::from_toml(&text).expect("valid"))
    }

    #[test]
    fn the_waiting_room_leaves_a_delivery_free() {
        let cases = [
            ("[amqp]\nprefetch = 10\n[aws]\nmax_waiting_for_slot = 4", 4),
            ("[amqp]\nprefetch = 4\n[aws]\nmax_waiting_for_slot = 8", 3),
            ("[amqp]\nprefetch = 1\n[aws]\nmax_waiting_for_slot = 8", 1),
        ];
        for (toml, max_waiting) in cases {
            assert_eq!(limits(toml).max_waiting, max_waiting, "{toml}");
        }
        let set = limits(
            "[aws]\nmax_concurrent_creations = 3\ncreation_slot_poll_ms = 50\n\
             creation_slot_wait_seconds = 7",
        );
        assert_eq!(set.slots, 3);
        assert_eq!(set.poll, Duration::from_millis(50));
        assert_eq!(set.max_wait, Duration::from_secs(7));
    }
}
