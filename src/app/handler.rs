//! The handler: one delivery through the trip ([`Pipeline::process_one`]), then settled, then
//! its order lock given back. Anything unsettled (a failed publish, a panic) is handed back to
//! the broker for another attempt.

use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use tracing::{Instrument, Span, error, info, info_span};

use crate::aws::Organizations;
use crate::broker::headers;
use crate::broker::settle::Settler;
use crate::domain::progress::Progress;
use crate::locks::OrderLocks;
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
    /// and the event already out.
    pub async fn handle(&self, delivery: Delivery) {
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
            let trip = self
                .pipeline
                .process_one(&delivery.data, progress, self.locks, self.slots);
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
                let settling = async {
                    let settled = self.settler.settle(&delivery, &history, outcome).await;
                    settled.map_err(|e| e.to_string())
                };
                let settled = AssertUnwindSafe(settling)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err("settling panicked".to_owned()));
                match settled {
                    Ok(settled) => info!(?settled, "delivery settled"),
                    Err(reason) => {
                        error!(%reason, "delivery not settled: handing it back to the broker");
                        let requeue = BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        };
                        if let Err(e) = delivery.nack(requeue).await {
                            error!(error = %e, "handing back failed; the broker returns it when the channel closes");
                        }
                    }
                }
                if let Some(lock) = lock {
                    lock.release().await;
                }
            }
            .instrument(span)
            .await;
        }
        .instrument(span)
        .await;
    }
}
