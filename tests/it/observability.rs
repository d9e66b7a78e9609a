//! `/metrics`, `/healthz` and `/readyz` (docs/contract.md §9), scraped over HTTP as Prometheus and
//! Kubernetes would; and the server's own defences: slow clients cut off, a connection cap,
//! and shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use aws_account_worker::observability::{self, Metrics, Readiness, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{DEADLINE, TestEnv, WorkerProcess, http_get, order, root_order, write_config};

/// The value of the sample `name` (with its labels, as printed) in a scrape, if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_orders_outcomes_and_aws_calls() {
    let mut env = TestEnv::fast("").await;
    let worker = env.spawn_worker().await;
    assert_eq!(worker.get("/healthz").await.0, 200);
    assert_eq!(worker.get("/readyz").await.0, 200, "ready once consuming");

    env.publish_json(&root_order()).await;
    env.publish_json(&root_order()).await;
    env.publish_json(&order(
        &[("aws_account_email", "not-an-email")],
        &[("awsAccountModel", "ECAM")],
    ))
    .await;
    env.publish(b"not json").await;
    for _ in 0..4 {
        env.next_event().await;
    }

    // Counts are taken once a delivery is acknowledged, just after its event, and its lock is
    // given back just after that: wait for all 4, and for their locks.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let text = loop {
        let (status, text) = worker.get("/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, "aws_account_worker_order_processing_seconds_count") == Some(4.0)
            && sample(&text, "aws_account_worker_order_locks_held") == Some(0.0)
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4 orders settled: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (name, value) in [
        ("aws_account_worker_orders_received_total", 4.0),
        ("aws_account_worker_orders_provisioned_total", 2.0),
        (
            "aws_account_worker_orders_failed_total{code=\"INVALID_EMAIL\"}",
            1.0,
        ),
        (
            "aws_account_worker_orders_dead_lettered_total{code=\"NOT_JSON\"}",
            1.0,
        ),
        ("aws_account_worker_orders_in_flight", 0.0),
        (
            "aws_account_worker_aws_calls_total{operation=\"CreateAccount\",outcome=\"ok\"}",
            2.0,
        ),
        // The gate of a new order: the creations in progress, no walk of the organization.
        (
            "aws_account_worker_aws_calls_total{operation=\"ListCreateAccountStatus\",outcome=\"ok\"}",
            2.0,
        ),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(text.contains("# TYPE aws_account_worker_order_processing_seconds histogram"));
    let version = format!(
        "aws_account_worker_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in [
        (version.as_str(), 1.0),
        ("aws_account_worker_broker_connected", 1.0),
        ("aws_account_worker_order_locks_held", 0.0),
        (
            "aws_account_worker_creation_slots_held{payer=\"default\"}",
            0.0,
        ),
        (
            "aws_account_worker_creation_slot_waiters{payer=\"default\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&text, name).is_some(), "{name} in\n{text}");
    }
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_before_consuming_but_alive() {
    let env = TestEnv::fast("").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The broker is unreachable: the worker keeps trying to connect, and is not consuming.
    let config = write_config(
        &env.toml
            .replace("127.0.0.1:5672", &format!("127.0.0.1:{closed}")),
    );
    let listen = format!("127.0.0.1:{port}");
    let worker = WorkerProcess::spawn_listening(&env, &config, &env.payer.endpoint, &listen).await;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint listens: {}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(address, "/healthz").await.0, 200);
    let (status, body) = http_get(address, "/readyz").await;
    assert_eq!(status, 503, "not ready: {body}");
    drop(worker);
    env.cleanup().await;
}

/// A server on a free port with `limits`, stopped by the returned token; its task ends when it
/// has stopped.
async fn server(
    limits: ServerLimits,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let (address, serving) = observability::bind_until(
        "127.0.0.1:0",
        Metrics::new(),
        Readiness::default(),
        limits,
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("bind");
    (address, stop, tokio::spawn(serving))
}

/// Reads until the server closes the connection (or resets it); returns what came, or panics
/// after the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0_u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.expect("the server closes the connection");
    answer
}

/// One `GET path`, if the server answers it: `None` when the connection is closed unanswered.
async fn try_get(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let answer = read_until_closed(&mut stream).await;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
}

fn limits(header_read_timeout: Duration, max_connections: usize) -> ServerLimits {
    ServerLimits {
        header_read_timeout,
        max_connections,
        shutdown_grace: DEADLINE,
    }
}

#[tokio::test]
async fn a_client_slow_to_send_its_headers_is_cut_off() {
    let timeout = Duration::from_millis(500);
    let (address, stop, serving) = server(limits(timeout, 8)).await;
    let mut slow = TcpStream::connect(address).await.expect("connect");
    let opened = tokio::time::Instant::now();
    // Half a request head, then nothing more.
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let answer = read_until_closed(&mut slow).await;
    assert!(
        opened.elapsed() >= timeout,
        "cut off after the timeout, not before: {:?}",
        opened.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains(" 200 "),
        "no answer to half a request: {answer}"
    );
    // A client that says nothing at all is cut off too; a prompt one is served.
    let mut silent = TcpStream::connect(address).await.expect("connect");
    read_until_closed(&mut silent).await;
    assert_eq!(try_get(address, "/healthz").await, Some(200));
    stop.cancel();
    serving.await.expect("the server ends");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_until_one_closes() {
    // Long enough that the idle connections hold their places for the whole test.
    let (address, stop, serving) = server(limits(DEADLINE * 2, 2)).await;
    let first = TcpStream::connect(address).await.expect("connect");
    let _second = TcpStream::connect(address).await.expect("connect");
    // The server accepts in order: the first two hold both places, so the third is accepted
    // and closed unanswered.
    assert_eq!(
        try_get(address, "/healthz").await,
        None,
        "refused beyond the cap"
    );
    drop(first);
    // Once the server has seen the first one close, its place is free again.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while try_get(address, "/healthz").await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "a place came free");
    }
    stop.cancel();
    serving.await.expect("the server ends");
}

#[tokio::test]
async fn shutdown_ends_the_server_and_closes_idle_connections() {
    let (address, stop, serving) = server(limits(DEADLINE * 2, 8)).await;
    assert_eq!(http_get(address, "/readyz").await.0, 503);
    let mut idle = TcpStream::connect(address).await.expect("connect");
    // A keep-alive request answered, then the connection stays open and idle.
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut answered = Vec::new();
    while !String::from_utf8_lossy(&answered).ends_with("ok\n") {
        let mut buffer = [0_u8; 1024];
        let n = tokio::time::timeout(DEADLINE, idle.read(&mut buffer))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "answered before closing");
        answered.extend_from_slice(&buffer[..n]);
    }
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("the server ends on shutdown")
        .expect("the server task");
    read_until_closed(&mut idle).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "nothing listens any more"
    );
}
