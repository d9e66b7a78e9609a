//! What an operator sees from outside (docs/contract.md §9): Prometheus metrics on `/metrics`,
//! liveness on `/healthz` and readiness on `/readyz` (ready while consuming; both fail once
//! [`Health`] says the worker cannot go on, as when its channels ran out), served on
//! `observability.listen` by a small HTTP/1 server that cuts off clients slow to send their
//! request headers, refuses connections beyond a cap, and stops on the worker's shutdown
//! signal (docs/decisions.md: hyper rather than axum).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

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

/// Labels of a step run after an event's confirm.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Step {
    step: String,
}

/// Labels of the build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

/// Labels of a settle failure: the step that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

/// Labels of a per-payer gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Payer {
    payer: String,
}

/// The worker's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    broker_connected: Gauge,
    slots_held: Family<Payer, Gauge>,
    slot_waiters: Family<Payer, Gauge>,
    locks_held: Gauge,
    received: Counter,
    provisioned: Counter,
    failed: Family<Code, Counter>,
    reported: Family<Code, Counter>,
    retried: Family<Code, Counter>,
    dead_lettered: Family<Code, Counter>,
    settle_failures: Family<Stage, Counter>,
    connections_lost: Counter,
    in_flight: Gauge,
    aws_calls: Family<Call, Counter>,
    after_confirm_failed: Family<Step, Counter>,
    forged_hints: Counter,
    processing: Histogram,
    overhead: Histogram,
    health: Health,
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
    /// Fresh metrics, all at zero, registered under the prefix `aws_account_worker`, and the
    /// standard `process_*` metrics (read from `/proc` at each scrape, on Linux).
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("aws_account_worker");
        let metrics = Self {
            registry: Arc::default(),
            broker_connected: Gauge::default(),
            slots_held: Family::default(),
            slot_waiters: Family::default(),
            locks_held: Gauge::default(),
            received: Counter::default(),
            provisioned: Counter::default(),
            failed: Family::default(),
            reported: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            settle_failures: Family::default(),
            connections_lost: Counter::default(),
            in_flight: Gauge::default(),
            aws_calls: Family::default(),
            after_confirm_failed: Family::default(),
            forged_hints: Counter::default(),
            // 50 ms to about 100 s.
            processing: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            // 0.25 ms to about 5 s, 1.5 apart: fine enough for a p50 of a few milliseconds.
            overhead: Histogram::new(exponential_buckets(0.000_25, 1.5, 25)),
            health: Health::default(),
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
            "requests_reported",
            "Requests after the purchase (and existing accounts) reported, by event (aws.account.suspended, ...)",
            metrics.reported.clone(),
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
            "settle_failures",
            "Failures to settle a delivery, by the step that failed (event, retry, dead_letter, dead_lettered_event, ack)",
            metrics.settle_failures.clone(),
        );
        registry.register(
            "broker_connections_lost",
            "Times the orders connection was lost while consuming (the worker then reconnects)",
            metrics.connections_lost.clone(),
        );
        registry.register(
            "forged_hints",
            "Progress headers (an account or create request id) that AWS showed were not the order's, ignored",
            metrics.forged_hints.clone(),
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
            "after_confirm_failed",
            "Steps after an event's confirm that failed, by step (mark_credentials_issued: a later delivery of that order would set a new password)",
            metrics.after_confirm_failed.clone(),
        );
        registry.register(
            "order_processing_seconds",
            "Time from taking a delivery to settling it (its lock is given back just after)",
            metrics.processing.clone(),
        );
        registry.register(
            "order_overhead_seconds",
            "Time from taking a delivery to settling it, less its AWS calls (the SDK's retries included) and its wait for a creation slot: the worker's own share",
            metrics.overhead.clone(),
        );
        let build: Family<Build, Gauge> = Family::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running version; always 1", build);
        registry.register(
            "broker_connected",
            "1 while the orders connection is open and consuming, else 0",
            metrics.broker_connected.clone(),
        );
        registry.register(
            "creation_slots_held",
            "Creation slots of a payer's organization held by this process's orders",
            metrics.slots_held.clone(),
        );
        registry.register(
            "creation_slot_waiters",
            "Orders of this process waiting for a creation slot of a payer",
            metrics.slot_waiters.clone(),
        );
        registry.register(
            "order_locks_held",
            "Exclusive per-order keys this process holds",
            metrics.locks_held.clone(),
        );
        Self {
            registry: Arc::new(root),
            ..metrics
        }
    }

    /// Whether the worker can go on: what every part of it that finds it cannot (its broker
    /// channels ran out) reports to, and what `/healthz` and `/readyz` answer from.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether the orders connection is open and consuming.
    pub fn broker_connected(&self, connected: bool) {
        self.broker_connected.set(i64::from(connected));
    }

    /// Counts one creation slot of `payer` held while the guard lives.
    pub fn slot_held(&self, payer: &str) -> Counted {
        Counted::new(self.slots_held.get_or_create(&payer_label(payer)).clone())
    }

    /// Counts one order waiting for a creation slot of `payer` while the guard lives.
    pub fn slot_waiter(&self, payer: &str) -> Counted {
        Counted::new(self.slot_waiters.get_or_create(&payer_label(payer)).clone())
    }

    /// Counts one exclusive per-order key held while the guard lives.
    pub fn lock_held(&self) -> Counted {
        Counted::new(self.locks_held.clone())
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

    /// A request other than a new account's was reported with the event `name` (labelled
    /// `code`).
    pub fn reported(&self, name: &str) {
        self.reported.get_or_create(&label(name)).inc();
    }

    /// An order went to a retry queue for `reason`.
    pub fn retried(&self, reason: &str) {
        self.retried.get_or_create(&label(reason)).inc();
    }

    /// An order was dead-lettered for `reason`.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_lettered.get_or_create(&label(reason)).inc();
    }

    /// Settling a delivery failed at `stage`.
    pub fn settle_failure(&self, stage: &str) {
        let labels = Stage {
            stage: stage.to_owned(),
        };
        self.settle_failures.get_or_create(&labels).inc();
    }

    /// The orders connection was lost while consuming.
    pub fn connection_lost(&self) {
        self.connections_lost.inc();
    }

    /// A progress header named an account or creation that AWS showed was not the order's.
    pub fn forged_hint(&self) {
        self.forged_hints.inc();
    }

    /// An AWS call ended.
    pub fn aws_call(&self, operation: &str, outcome: &str) {
        let labels = Call {
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.aws_calls.get_or_create(&labels).inc();
    }

    /// A step after an event's confirm failed.
    pub fn after_confirm_failed(&self, step: &str) {
        let labels = Step {
            step: step.to_owned(),
        };
        self.after_confirm_failed.get_or_create(&labels).inc();
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

fn payer_label(payer: &str) -> Payer {
    Payer {
        payer: payer.to_owned(),
    }
}

/// One unit of a gauge, counted while this lives.
#[derive(Debug)]
pub struct Counted(Gauge);

impl Counted {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc` at
/// each scrape; on a system without `/proc` they are left out.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second in `/proc` (`USER_HZ`): 100 on every Linux architecture the worker
/// runs on (it is part of the kernel's user-space ABI, unlike `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(process.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                process.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                process.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                process.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/proc` says about this process; `None` where it cannot be read.
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: the fields that follow it count
        // from its closing parenthesis (field 3, `state`, is the first).
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        let start_time_seconds = boot_time
            .zip(field(22))
            .map(|(boot, ticks)| boot + ticks / TICKS_PER_SECOND);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let resident_bytes = status.lines().find_map(|line| {
            let kib = line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            Some(kib.trim().parse::<f64>().ok()? * 1024.0)
        });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as f64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("Max open files"))?;
                line.strip_prefix("Max open files")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            });
        Some(Self {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
            start_time_seconds,
        })
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
        let took = self.started.elapsed();
        self.metrics.processing.observe(took.as_secs_f64());
        // Dropped inside its delivery's `timed` scope, the elapsed time outside the worker is known.
        if let Ok(outside) = ORDER_CLOCK.try_with(Cell::get) {
            let overhead = took.saturating_sub(outside);
            self.metrics.overhead.observe(overhead.as_secs_f64());
        }
    }
}

tokio::task_local! {
    /// The time the delivery of this task spent waiting outside the worker so far.
    static ORDER_CLOCK: Cell<Duration>;
}

/// Runs `delivery` (one delivery's task, its [`InFlight`] dropped inside) with a clock of the
/// time spent outside the worker, which [`spent_outside`] adds to: on drop, the `InFlight`
/// observes `order_overhead_seconds`. One cell per task, no lock.
pub async fn timed<F: Future>(delivery: F) -> F::Output {
    ORDER_CLOCK.scope(Cell::new(Duration::ZERO), delivery).await
}

/// Adds `spent` (an AWS call, a wait for a creation slot) to the time the current delivery
/// spent outside the worker; outside a [`timed`] delivery, nothing.
pub fn spent_outside(spent: Duration) {
    let _ = ORDER_CLOCK.try_with(|clock| clock.set(clock.get() + spent));
}

/// Whether the worker can go on. Once a part of it reports that it cannot (a broker connection
/// ran out of channels: `ChannelsLimitReached`), `/healthz` and `/readyz` answer 503 with the
/// reason for the rest of the process's life, so that the orchestrator takes it out of service
/// and restarts it. Cheap to clone: clones share the state.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Reports that the worker cannot go on, for `reason`; the first reason is kept.
    pub fn fail(&self, reason: &str) {
        let mut problem = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if problem.is_none() {
            error!(%reason, "the worker cannot go on: /healthz and /readyz now fail");
            *problem = Some(reason.to_owned());
        }
    }

    /// Why the worker cannot go on, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

/// How the observability server protects itself.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A connection that has not sent a complete request head this long after it opened (or
    /// after its previous request) is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; one more is accepted and closed at once (refused).
    pub max_connections: usize,
    /// After shutdown, how long requests in progress may take before the server ends anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Binds `listen` for `/metrics`, `/healthz` and `/readyz` with the default [`ServerLimits`];
/// the returned future serves until dropped.
///
/// # Errors
/// The address cannot be bound (in use, not permitted).
pub async fn bind(
    listen: &str,
    metrics: Metrics,
    readiness: Readiness,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    bind_until(
        listen,
        metrics,
        readiness,
        ServerLimits::default(),
        std::future::pending(),
    )
    .await
}

/// Binds `listen` for `/metrics`, `/healthz` and `/readyz`; the returned future serves until
/// `shutdown` completes, then stops listening, lets the requests in progress finish (closing
/// idle connections) within `limits.shutdown_grace`, and ends.
///
/// # Errors
/// The address cannot be bound (in use, not permitted).
pub async fn bind_until(
    listen: &str,
    metrics: Metrics,
    readiness: Readiness,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    info!(%address, "serving /metrics, /healthz and /readyz");
    let serving = async move {
        let room = Arc::new(Semaphore::new(limits.max_connections));
        let connections = TaskTracker::new();
        let stopping = CancellationToken::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = shutdown.as_mut() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting an observability connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&room).try_acquire_owned() else {
                debug!(
                    max = limits.max_connections,
                    "too many observability connections: one refused"
                );
                drop(stream);
                continue;
            };
            let service = {
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                service_fn(move |request| {
                    let answer = answer(&request, &metrics, &readiness);
                    async move { Ok::<_, Infallible>(answer) }
                })
            };
            let stopping = stopping.clone();
            connections.spawn(async move {
                let _permit = permit;
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = stopping.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = ended {
                    debug!(error = %e, "observability connection ended");
                }
            });
        }
        drop(listener);
        stopping.cancel();
        connections.close();
        if tokio::time::timeout(limits.shutdown_grace, connections.wait())
            .await
            .is_err()
        {
            warn!("observability connections still open after the grace period: dropped");
        }
        info!("observability server stopped");
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
    let path = request.uri().path();
    if let ("/healthz" | "/readyz", Some(problem)) = (path, metrics.health().problem()) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            format!("unhealthy: {problem}\n"),
        );
    }
    match path {
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
            "aws_account_worker_build_info{version=\"0.1.0\"} 1",
            "aws_account_worker_broker_connected 0",
            "aws_account_worker_order_locks_held 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn gauges_count_while_their_guards_live() {
        let metrics = Metrics::new();
        metrics.broker_connected(true);
        let slot = metrics.slot_held("default");
        let _waiter = metrics.slot_waiter("default");
        let lock = metrics.lock_held();
        let text = metrics.render();
        for line in [
            "aws_account_worker_broker_connected 1",
            "aws_account_worker_creation_slots_held{payer=\"default\"} 1",
            "aws_account_worker_creation_slot_waiters{payer=\"default\"} 1",
            "aws_account_worker_order_locks_held 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop((slot, lock));
        let text = metrics.render();
        assert!(text.contains("aws_account_worker_creation_slots_held{payer=\"default\"} 0"));
        assert!(text.contains("aws_account_worker_order_locks_held 0"));
    }

    #[test]
    fn health_keeps_the_first_reason_it_failed_for() {
        let metrics = Metrics::new();
        let health = metrics.clone().health().clone();
        assert_eq!(metrics.health().problem(), None);
        health.fail("channels ran out");
        health.fail("something else");
        assert_eq!(
            metrics.health().problem().as_deref(),
            Some("channels ran out"),
            "clones share it"
        );
        let readiness = Readiness::default();
        readiness.set(true);
        for path in ["/healthz", "/readyz"] {
            let request = Request::get(path).body(()).expect("request");
            let response = answer(&request, &metrics, &readiness);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let request = Request::get("/metrics").body(()).expect("request");
        assert_eq!(
            answer(&request, &metrics, &readiness).status(),
            StatusCode::OK
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_proc() {
        let text = Metrics::new().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value = text.lines().find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            });
            assert!(value.is_some_and(|v| v >= 0.0), "{name} in\n{text}");
        }
        let started = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("process_start_time_seconds ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        assert!(
            started > now - 86_400.0 * 365.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
    }
}
