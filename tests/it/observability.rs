//! `/metrics`, `/healthz` and `/readyz` (docs/contract.md §9), scraped over HTTP as Prometheus and
//! Kubernetes would.

use std::time::Duration;

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

    // Counts are taken once a delivery is acknowledged, just after its event: wait for all 4.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let text = loop {
        let (status, text) = worker.get("/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, "aws_account_worker_order_processing_seconds_count") == Some(4.0) {
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
        (
            "aws_account_worker_aws_calls_total{operation=\"ListAccounts\",outcome=\"ok\"}",
            2.0,
        ),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(text.contains("# TYPE aws_account_worker_order_processing_seconds histogram"));
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
