//! Order locks shared by every worker on every machine, built on RabbitMQ itself: holding the
//! lock of key `k` means holding the lease of the exclusive queue `<prefix>.<k>` (see
//! [`crate::broker::lease`]), so a crashed worker's locks come back by themselves. Inside one
//! process, a set of held keys does the same job without asking the broker.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::Connection;
use secrecy::SecretString;

use crate::broker::lease::{Lease, Leases};
use crate::locks::{Lock, LocksUnavailable, OrderLocks, Release};
use crate::observability::{Counted, Metrics};

/// Hands out order locks as exclusive queues on one broker connection (and the connections
/// that replace it once refusals used up its channel ids). Cheap to clone.
#[derive(Clone)]
pub struct BrokerLocks {
    leases: Leases,
    prefix: String,
    held: Arc<Mutex<HashSet<String>>>,
    metrics: Metrics,
}

/// A key held on the broker: given back on release, freed in this process when dropped.
struct Held {
    key: String,
    held: Arc<Mutex<HashSet<String>>>,
    lease: Option<Lease>,
    /// Counts the key in `order_locks_held` once the broker gave it.
    counted: Option<Counted>,
}

impl BrokerLocks {
    /// Locks on `connection`, as exclusive queues named `<prefix>.<key>`, counted in
    /// `metrics`; `url` opens the connections that replace `connection` for new locks once
    /// refused ones used up half its channel ids. Closing `connection` gives back the locks
    /// taken on it.
    pub fn new(
        connection: &Arc<Connection>,
        url: &SecretString,
        prefix: &str,
        metrics: &Metrics,
    ) -> Self {
        Self {
            leases: Leases::replacing(connection, url, metrics.health()),
            prefix: prefix.to_owned(),
            held: Arc::default(),
            metrics: metrics.clone(),
        }
    }
}

impl OrderLocks for BrokerLocks {
    async fn try_take(&self, key: &str) -> Result<Option<Lock>, LocksUnavailable> {
        if !held(&self.held).insert(key.to_owned()) {
            return Ok(None);
        }
        // From here on, dropping `taken` frees the key in this process.
        let mut taken = Held {
            key: key.to_owned(),
            held: Arc::clone(&self.held),
            lease: None,
            counted: None,
        };
        let queue = format!("{}.{key}", self.prefix);
        match self.leases.try_take(&queue).await {
            Ok(Some(lease)) => {
                taken.lease = Some(lease);
                taken.counted = Some(self.metrics.lock_held());
                Ok(Some(Lock::new(taken)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(LocksUnavailable(e.to_string())),
        }
    }
}

impl Release for Held {
    fn release(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let lease = self.lease.take();
        Box::pin(async move {
            if let Some(lease) = lease {
                lease.give_back().await;
            }
            // The key is free in this process once its queue is gone.
            drop(self);
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        held(&self.held).remove(&self.key);
    }
}

fn held(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // The set stays consistent whatever panicked while holding it: inserts and removes only.
    set.lock().unwrap_or_else(PoisonError::into_inner)
}
