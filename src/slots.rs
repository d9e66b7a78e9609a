//! Creation slots: how many `CreateAccount` requests may be in progress at once in one payer's
//! organization (AWS allows 5). A [`Slot`] is taken right before `CreateAccount` and held until
//! the creation ends; dropping it gives it back. [`CreationSlots`] is the narrow interface
//! provisioning sees; `broker::slots` shares the limit between every replica through RabbitMQ,
//! [`Unlimited`] and [`Local`] serve tests and one-off runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// A creation slot held; dropping it gives it back.
pub struct Slot {
    _held: Box<dyn Send + Sync>,
}

impl Slot {
    /// A slot that gives itself back when `held` is dropped.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// Why no slot was handed out. Nothing was requested from AWS: the order tries again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSlot {
    /// Too many orders of this worker already wait for a slot of this payer.
    #[error("{0} orders of this worker already wait for a creation slot")]
    TooManyWaiting(usize),
    /// The order waited this long without getting one.
    #[error("no creation slot came free within {}s", .0.as_secs())]
    TimedOut(Duration),
    /// The broker connection that holds the slots is gone.
    #[error("the creation slots are unavailable: {0}")]
    Unavailable(String),
}

/// A place in a payer's waiting room for a slot, held from [`CreationSlots::room_to_wait`]
/// until [`CreationSlots::acquire_in`] (or until dropped): the room it says there is stays
/// there while the order takes its lock and reads AWS, so that no order reads AWS and then
/// finds the room full.
#[derive(Default)]
pub struct Room {
    held: Option<Box<dyn Send + Sync>>,
    /// Told once the order is one of the next to be served: see [`Room::telling_next`].
    next: Option<oneshot::Sender<()>>,
}

impl Room {
    /// A place that `held` keeps counted until it is dropped.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            held: Some(Box::new(held)),
            next: None,
        }
    }

    /// This place, telling `next` once the order waiting in it is one of the next few to be
    /// served (as many as the payer has slots), so that it can take its lock while it still
    /// waits. Slots that keep no queue of waiters, or hand the slot out first, drop `next`
    /// untold instead: either way the order goes on to its lock.
    #[must_use]
    pub fn telling_next(mut self, next: oneshot::Sender<()>) -> Self {
        self.next = Some(next);
        self
    }

    /// Who to tell once the order is one of the next to be served (for the slots' side).
    pub fn take_next(&mut self) -> Option<oneshot::Sender<()>> {
        self.next.take()
    }

    /// Whether this place is counted in a waiting room (`false`: [`Room::default`], nothing
    /// kept).
    pub fn is_kept(&self) -> bool {
        self.held.is_some()
    }
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Room(kept: {})", self.is_kept())
    }
}

/// Hands out creation slots per payer organization.
pub trait CreationSlots: Send + Sync {
    /// Waits for a slot of `payer`'s organization, first come first served.
    ///
    /// # Errors
    /// [`NoSlot`] when the order should rather go back to the broker than wait here.
    fn acquire(&self, payer: &str) -> impl Future<Output = Result<Slot, NoSlot>> + Send;

    /// Keeps a place for an order of `payer` in the waiting room, if there is one: asked
    /// before the order's lock and the gate's AWS reads, so that an order with no room to wait
    /// goes back at once, and one that found room still has it at [`CreationSlots::acquire_in`].
    ///
    /// # Errors
    /// [`NoSlot::TooManyWaiting`] when the waiting room is full.
    fn room_to_wait(&self, _payer: &str) -> Result<Room, NoSlot> {
        Ok(Room::default())
    }

    /// As [`CreationSlots::acquire`], waiting in the place `room` kept (one not kept is asked
    /// for as [`CreationSlots::acquire`] does).
    ///
    /// # Errors
    /// As [`CreationSlots::acquire`].
    fn acquire_in(
        &self,
        payer: &str,
        room: Room,
    ) -> impl Future<Output = Result<Slot, NoSlot>> + Send {
        drop(room);
        self.acquire(payer)
    }
}

/// One order's view of `slots`, with the slot it already holds, if any: a new order waits for
/// its slot before it takes its lock (so that a thousand orders waiting hold no lock), and its
/// `CreateAccount` then uses that slot.
pub struct Kept<'a, S> {
    slots: &'a S,
    slot: Mutex<Option<Slot>>,
}

impl<'a, S> Kept<'a, S> {
    /// `slots`, with `slot` already held for the order (`None`: none yet).
    pub fn new(slots: &'a S, slot: Option<Slot>) -> Self {
        Self {
            slots,
            slot: Mutex::new(slot),
        }
    }

    fn held(&self) -> Option<Slot> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn holds(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl<S: CreationSlots> CreationSlots for Kept<'_, S> {
    async fn acquire(&self, payer: &str) -> Result<Slot, NoSlot> {
        match self.held() {
            Some(slot) => Ok(slot),
            None => self.slots.acquire(payer).await,
        }
    }

    fn room_to_wait(&self, payer: &str) -> Result<Room, NoSlot> {
        if self.holds() {
            return Ok(Room::default());
        }
        self.slots.room_to_wait(payer)
    }

    async fn acquire_in(&self, payer: &str, room: Room) -> Result<Slot, NoSlot> {
        match self.held() {
            Some(slot) => Ok(slot),
            None => self.slots.acquire_in(payer, room).await,
        }
    }
}

/// No limit: every request gets a slot at once (`process_one`, unit tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl CreationSlots for Unlimited {
    async fn acquire(&self, _: &str) -> Result<Slot, NoSlot> {
        Ok(Slot::new(()))
    }
}

/// An in-process limit of `limit` slots per payer, for one process alone (tests).
#[derive(Debug, Clone)]
pub struct Local {
    limit: usize,
    payers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Local {
    /// `limit` slots per payer.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            payers: Arc::default(),
        }
    }

    /// Slots of `payer` free now.
    pub fn available(&self, payer: &str) -> usize {
        self.semaphore(payer).available_permits()
    }

    fn semaphore(&self, payer: &str) -> Arc<Semaphore> {
        let mut payers = self.payers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            payers
                .entry(payer.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit))),
        )
    }
}

impl CreationSlots for Local {
    async fn acquire(&self, payer: &str) -> Result<Slot, NoSlot> {
        let permit: OwnedSemaphorePermit = self
            .semaphore(payer)
            .acquire_owned()
            .await
            .map_err(|e| NoSlot::Unavailable(e.to_string()))?;
        Ok(Slot::new(permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_slots_are_counted_per_payer_and_come_back_when_dropped() {
        let slots = Local::new(2);
        let a = slots.acquire("default").await.expect("slot");
        let _b = slots.acquire("default").await.expect("slot");
        assert_eq!(slots.available("default"), 0);
        assert_eq!(slots.available("other"), 2, "another payer has its own");
        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.acquire("default"));
        assert!(waiting.await.is_err(), "a third waits");
        drop(a);
        assert_eq!(slots.available("default"), 1);
        slots.acquire("default").await.expect("the slot came back");
    }
}
