//! The handler: one delivery through the trip ([`Pipeline::process_one`]), then settled, then
//! its order lock given back. What could not be settled at all (the settler found no way, or
//! panicked) is held a while and handed back to the broker for another attempt.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_lite::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use tracing::{Instrument, Span, error, info, info_span};

use crate::aws::Organizations;
use crate::broker::headers;
use crate::broker::settle::{Settled, Settler};
use crate::domain::progress::Progress;
use crate::locks::OrderLocks;
use crate::observability::InFlight;
use crate::pipeline::{Outcome, Pipeline, Processed};
use crate::slots::CreationSlots;

/// What one delivery needs besides itself: the pipeline, the settler, the order locks and the
/// creation slots of the session it came on.
pub struct Handler<'a, O, L, S> {
    /// The trip.
    pub pipeline: &'a Pipeline<O>,
    /// Carries the outcome out on the broker.
    pub settler: &'a Settler,
    /// One delivery at a time per asset.
    pub locks: &'a L,
    /// `CreateAccount` requests in progress per payer.
    pub slots: &'a S,
}

impl<O: Organizations, L: OrderLocks, S: CreationSlots> Handler<'_, O, L, S> {
    /// Takes `delivery` through the trip and settles it; the order's lock is given back once
    /// the outcome is settled, so that the next delivery of the same order finds the account
    /// and the event already out. `clock` times the delivery: it ends once the delivery is
    /// settled (acknowledged, or in a retry queue or the dead-letter queue), or once handed
    /// back to the broker.
    pub async fn handle(&self, delivery: Delivery, clock: InFlight) {
        let history = headers::history(delivery.properties.headers().as_ref());
        let span = info_span!(
            "delivery",
            attempt = history.attempts + 1,
            redelivered = delivery.redelivered
        );
        async {
            // An unsettled earlier delivery may have a `CreateAccount` of this order in flight.
            let progress = Progress {
                maybe_in_flight: delivery.redelivered,
                ..history.progress.clone()
            };
            // The trip and the settling are boxed: each is kilobytes, and inline the task of
            // every delivery held room for both (and more) all its life, a thousand orders
            // waiting for a slot included (heaptrack, docs/perf/rss.md).
            let trip = Box::pin(self.pipeline.process_one(
                &delivery.data,
                progress,
                self.locks,
                self.slots,
            ));
            let Processed {
                outcome,
                lock,
                span,
            } = AssertUnwindSafe(trip)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Processed {
                    outcome: Outcome::HandBack("the pipeline panicked".to_owned()),
                    lock: None,
                    span: Span::none(),
                });
            async {
                let settling = Box::pin(self.settler.settle(&delivery, &history, outcome));
                let settled = AssertUnwindSafe(settling)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        error!("settling panicked");
                        let counts = headers::settle_counts(delivery.properties.headers().as_ref());
                        Settled::HandBackAfter(crate::settle::hold(counts))
                    });
                let hold = match settled {
                    Settled::HandBackAfter(hold) => Some(hold),
                    settled => {
                        info!(?settled, "delivery settled");
                        // Settled, the order has left the worker: its time ends here. Giving
                        // its lock back comes after (a delete at the broker), off its path.
                        drop(clock);
                        None
                    }
                };
                if let Some(lock) = lock {
                    lock.release().await;
                }
                if let Some(hold) = hold {
                    hand_back_after(&delivery, hold).await;
                }
            }
            .instrument(span)
            .await;
        }
        .instrument(span)
        .await;
    }
}

/// Holds `delivery` for `hold`, then hands it back to the broker: a delivery that could not be
/// settled is not offered again at once (docs/contract.md §6). Its lock is given back first.
async fn hand_back_after(delivery: &Delivery, hold: Duration) {
    error!(
        hold_ms = hold.as_millis(),
        "delivery not settled: handing it back to the broker after a pause"
    );
    tokio::time::sleep(hold).await;
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(requeue).await {
        error!(error = %e, "handing back failed; the broker returns it when the channel closes");
    }
}
