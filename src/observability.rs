//! What an operator sees from outside (docs/contract.md §9): Prometheus metrics on `/metrics`,
//! liveness on `/healthz` and readiness on `/readyz` (ready while consuming), served on
//! `observability.listen`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Labels of a count by code (an event's failure code, a retry or dead-letter reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

/// Labels of an AWS call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    operation: String,
    outcome: String,
}

/// The worker's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    received: Counter,
    provisioned: Counter,
    failed: Family<Code, Counter>,
    retried: Family<Code, Counter>,
    dead_lettered: Family<Code, Counter>,
    in_flight: Gauge,
    aws_calls: Family<Call, Counter>,
    processing: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all at zero, registered under the prefix `aws_account_worker`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aws_account_worker");
        let metrics = Self {
            registry: Arc::default(),
            received: Counter::default(),
            provisioned: Counter::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            in_flight: Gauge::default(),
            aws_calls: Family::default(),
            // 50 ms to about 100 s.
            processing: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
        };
        registry.register(
            "orders_received",
            "Order deliveries taken from the orders queue",
            metrics.received.clone(),
        );
        registry.register(
            "orders_provisioned",
            "Orders reported aws.account.provisioned",
            metrics.provisioned.clone(),
        );
        registry.register(
            "orders_failed",
            "Orders reported aws.account.failed, by failure code",
            metrics.failed.clone(),
        );
        registry.register(
            "orders_retried",
            "Orders sent to a retry queue, by reason (an AWS error code, ORDER_BUSY, ...)",
            metrics.retried.clone(),
        );
        registry.register(
            "orders_dead_lettered",
            "Orders dead-lettered, by reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "orders_in_flight",
            "Order deliveries being processed now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls, by operation and outcome (ok, client_error, server_error, no_response)",
            metrics.aws_calls.clone(),
        );
        registry.register(
            "order_processing_seconds",
            "Time from taking a delivery to settling it",
            metrics.processing.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// A delivery was taken; returns a guard that counts it in flight until dropped, and then
    /// observes its processing time.
    pub fn received(&self) -> InFlight {
        self.received.inc();
        self.in_flight.inc();
        InFlight {
            metrics: self.clone(),
            started: tokio::time::Instant::now(),
        }
    }

    /// An order was reported provisioned.
    pub fn provisioned(&self) {
        self.provisioned.inc();
    }

    /// An order was reported failed with `code`.
    pub fn failed(&self, code: &str) {
        self.failed.get_or_create(&label(code)).inc();
    }

    /// An order went to a retry queue for `reason`.
    pub fn retried(&self, reason: &str) {
        self.retried.get_or_create(&label(reason)).inc();
    }

    /// An order was dead-lettered for `reason`.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_lettered.get_or_create(&label(reason)).inc();
    }

    /// An AWS call ended.
    pub fn aws_call(&self, operation: &str, outcome: &str) {
        let labels = Call {
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.aws_calls.get_or_create(&labels).inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %e, "encoding the metrics failed");
        }
        text
    }
}

fn label(code: &str) -> Code {
    Code {
        code: code.to_owned(),
    }
}

/// A delivery in flight; dropping it ends it.
pub struct InFlight {
    metrics: Metrics,
    started: tokio::time::Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .processing
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Whether the worker is consuming; `/readyz` answers from it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the worker ready (consuming) or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds `listen` for `/metrics`, `/healthz` and `/readyz`; the returned future serves until
/// dropped.
///
/// # Errors
/// The address cannot be bound (in use, not permitted).
pub async fn bind(
    listen: &str,
    metrics: Metrics,
    readiness: Readiness,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    info!(%address, "serving /metrics, /healthz and /readyz");
    let serving = async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting an observability connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = answer(&request, &metrics, &readiness);
                    async move { Ok::<_, Infallible>(answer) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "observability connection ended");
                }
            });
        }
    };
    Ok((address, serving))
}

fn answer<B>(
    request: &Request<B>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if readiness.get() => text(StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not consuming\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_text_format() {
        let metrics = Metrics::new();
        drop(metrics.received());
        metrics.provisioned();
        metrics.failed("INVALID_EMAIL");
        metrics.retried("TooManyRequestsException");
        metrics.aws_call("CreateAccount", "ok");
        let text = metrics.render();
        for line in [
            "aws_account_worker_orders_received_total 1",
            "aws_account_worker_orders_provisioned_total 1",
            "aws_account_worker_orders_failed_total{code=\"INVALID_EMAIL\"} 1",
            "aws_account_worker_orders_retried_total{code=\"TooManyRequestsException\"} 1",
            "aws_account_worker_orders_in_flight 0",
            "aws_account_worker_aws_calls_total{operation=\"CreateAccount\",outcome=\"ok\"} 1",
            "aws_account_worker_order_processing_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
