//! Order locks: one delivery at a time per order key (the asset id), whichever worker
//! holds it. A [`Lock`] is taken before provisioning and given back after settling, so the next
//! delivery of the same order finds the account and the event already out. [`OrderLocks`] is
//! the narrow interface the trip sees; `broker::locks` shares the locks between every replica
//! through RabbitMQ, [`Local`] serves tests.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

/// Gives a held lock back; implemented by each kind of lock.
pub trait Release: Send + Sync {
    /// Gives the lock back, waiting until it is free for others.
    fn release(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A lock held. [`Lock::release`] gives it back; dropping it frees it in this process, and a
/// broker-side lock then goes when its connection closes.
pub struct Lock {
    held: Box<dyn Release>,
}

impl Lock {
    /// A lock that `held` gives back.
    pub fn new(held: impl Release + 'static) -> Self {
        Self {
            held: Box::new(held),
        }
    }

    /// Gives the lock back.
    pub async fn release(self) {
        self.held.release().await;
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lock")
    }
}

/// Why a lock could not be asked for (not: it is held by another delivery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the order locks are unavailable: {0}")]
pub struct LocksUnavailable(pub String);

/// Hands out order locks by key.
pub trait OrderLocks: Send + Sync {
    /// Takes the lock of `key` if nobody holds it; `None` when another delivery (in this
    /// process or in another worker) holds it.
    ///
    /// # Errors
    /// [`LocksUnavailable`] when the locks cannot be asked for (the broker connection failed).
    fn try_take(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Lock>, LocksUnavailable>> + Send;
}

/// Locks for one process alone (tests): a set of held keys.
#[derive(Debug, Clone, Default)]
pub struct Local {
    held: Arc<Mutex<HashSet<String>>>,
}

impl Local {
    /// Whether `key` is held now.
    pub fn is_held(&self, key: &str) -> bool {
        held(&self.held).contains(key)
    }
}

/// A key of a [`Local`] set, removed when released or dropped.
struct LocalKey {
    key: String,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Drop for LocalKey {
    fn drop(&mut self) {
        held(&self.held).remove(&self.key);
    }
}

impl Release for LocalKey {
    fn release(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        drop(self);
        Box::pin(async {})
    }
}

impl OrderLocks for Local {
    async fn try_take(&self, key: &str) -> Result<Option<Lock>, LocksUnavailable> {
        if !held(&self.held).insert(key.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Lock::new(LocalKey {
            key: key.to_owned(),
            held: Arc::clone(&self.held),
        })))
    }
}

fn held(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // The set stays consistent whatever panicked while holding it: inserts and removes only.
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_key_is_held_once_until_released_or_dropped() {
        let locks = Local::default();
        let a = locks.try_take("a@example.com").await.expect("locks");
        assert!(a.is_some());
        assert!(
            locks
                .try_take("a@example.com")
                .await
                .expect("locks")
                .is_none()
        );
        assert!(
            locks
                .try_take("b@example.com")
                .await
                .expect("locks")
                .is_some_and(|b| {
                    drop(b);
                    true
                })
        );
        a.expect("held").release().await;
        assert!(!locks.is_held("a@example.com"));
        let again = locks.try_take("a@example.com").await.expect("locks");
        drop(again);
        assert!(
            !locks.is_held("a@example.com"),
            "dropping gives it back too"
        );
    }
}
