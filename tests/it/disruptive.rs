//! Tests that disturb the shared broker (a RabbitMQ restart). `scripts/test.sh` runs them in a
//! pass of their own, after every other test, one at a time.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::faults::{FaultProxy, Faults};
use crate::support::{
    DEADLINE, Payer, TestEnv, WorkerHandle, assert_one_account_per_order, collect, moto_config,
    moto_fast_endpoint, root_order,
};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs (RabbitMQ is installed here)");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// Waits until `/readyz` answers `status`, with a deadline.
async fn wait_for_readiness(worker: &WorkerHandle, status: u16) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while worker.get("/readyz").await.0 != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_in_the_middle_of_fifty_orders_loses_and_duplicates_nothing() {
    // Answers 150 ms late, so orders are in flight when the broker goes.
    let proxy = FaultProxy::start(
        &moto_fast_endpoint(),
        Faults {
            delay: Duration::from_millis(150),
            ..Faults::default()
        },
    )
    .await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let mut env = TestEnv::with_aws(
        "[retry]\ninitial_delay_ms = 100\nmax_delay_ms = 1000\nmax_attempts = 20\nredelivered_create_delay_ms = 5000",
        payer,
        aws,
    )
    .await;
    let worker = env.spawn_worker().await;
    let orders: Vec<Value> = (0..50).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    let mut events: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for _ in 0..5 {
        collect(&mut events, env.next_event().await);
    }

    assert_eq!(worker.get("/readyz").await.0, 200);
    rabbitmqctl(&["stop_app"]);
    wait_for_readiness(&worker, 503).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    env.reconnect().await;
    wait_for_readiness(&worker, 200).await;

    while ids.iter().any(|id| !events.contains_key(id)) {
        collect(&mut events, env.next_event().await);
    }
    assert_one_account_per_order(&env, &events).await;
    eprintln!(
        "broker restarted after 5 of 50 orders: 50 accounts, {} provisioned events, {} creations",
        events.values().map(Vec::len).sum::<usize>(),
        proxy.stats().creations
    );
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    env.finish(worker).await;
}
