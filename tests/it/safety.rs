//! Never lose an order, never create two accounts: duplicates, creations that take their time,
//! throttling, a worker killed at random moments, and SIGTERM with orders in flight. moto sits
//! behind the fault proxy where moto alone cannot show the behaviour.

use std::time::Duration;

use rand::RngExt;
use serde_json::Value;

use crate::faults::{Creation, End, FaultProxy, Faults};
use crate::support::{
    DEADLINE, Payer, TestEnv, WorkerProcess, assert_one_account_per_order, collect, moto_config,
    moto_fast_endpoint, order, provisioned_events, root_order, write_config,
};

/// Quick retries, so that tests do not wait for production delays.
const QUICK_RETRIES: &str = r#"
[retry]
initial_delay_ms = 100
max_delay_ms = 1000
max_attempts = 20
redelivered_create_delay_ms = 5000
"#;

/// A test environment whose worker reaches moto through a fault proxy.
async fn behind_proxy(extra: &str, faults: Faults) -> (TestEnv, FaultProxy) {
    let proxy = FaultProxy::start(&moto_fast_endpoint(), faults).await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let env = TestEnv::with_aws(&format!("{QUICK_RETRIES}\n{extra}"), payer, aws).await;
    (env, proxy)
}

fn request_id(order: &Value) -> String {
    order["id"].as_str().expect("request id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_order_three_times_at_once_makes_one_account() {
    let mut env = TestEnv::new(&format!(
        "{QUICK_RETRIES}\n[business_model]\nservice_control_policies = [\"{{scp}}\"]"
    ))
    .await;
    // Two workers on two connections: the copies race inside one process and across two.
    let first = env.spawn_worker().await;
    let second = env.spawn_worker().await;
    let order = order(&[], &[]);
    let copies = [order.clone(), order.clone(), order.clone()];
    for copy in &copies {
        env.publish_json(copy).await;
    }

    let mut events = Vec::new();
    for _ in 0..3 {
        let event = env.next_event().await;
        assert_eq!(event["event"], "aws.account.provisioned", "{event}");
        events.push(event);
    }
    let accounts = env.payer.member_accounts().await;
    assert_eq!(accounts.len(), 1, "one account for one order: {accounts:?}");
    for event in &events {
        assert_eq!(event["request_id"], order["id"]);
        assert_eq!(
            event["account"]["id"].as_str(),
            Some(accounts[0].0.as_str())
        );
    }
    // The password is given out once: the first copy's event carries it, the others say it
    // was already issued (docs/contract.md §5).
    let credentials: Vec<&str> = events
        .iter()
        .map(|e| e["access"]["credentials"].as_str().expect("credentials"))
        .collect();
    let passwords = events
        .iter()
        .filter(|e| e["access"]["initial_password"].is_string())
        .count();
    assert_eq!(passwords, 1, "one password given out: {credentials:?}");
    assert_eq!(
        credentials,
        ["issued", "already_issued", "already_issued"],
        "the first event gives the password out"
    );

    first.stop().await;
    env.finish(second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creation_in_progress_for_several_polls_then_succeeded_is_provisioned() {
    let faults = Faults {
        creation: Creation::InProgressFor {
            polls: 4,
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy("[aws]\ncreate_status_poll_ms = 100", faults).await;
    let worker = env.spawn_worker().await;
    let order = root_order();
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    assert_eq!(proxy.stats().creations, 1);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_creation_waits_in_the_broker_and_is_requested_once() {
    // The creation takes 3 s; one attempt waits 1 s at most, then the order goes back to the
    // broker with its create request id and resumes from it.
    let faults = Faults {
        creation: Creation::Takes {
            duration: Duration::from_secs(3),
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy(
        "[aws]\ncreate_status_poll_ms = 200\ncreate_status_wait_seconds = 1",
        faults,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = root_order();
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    let stats = proxy.stats();
    assert_eq!(
        stats.creations, 1,
        "CreateAccount requested once: {stats:?}"
    );
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creation_that_ends_failed_with_email_already_exists_asks_the_customer() {
    let faults = Faults {
        creation: Creation::InProgressFor {
            polls: 2,
            then: End::Failed("EMAIL_ALREADY_EXISTS".into()),
        },
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy("[aws]\ncreate_status_poll_ms = 100", faults).await;
    let worker = env.spawn_worker().await;
    let order = order(
        &[("aws_account_email", "taken@customer.example")],
        &[("awsAccountModel", "ECAM")],
    );
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.failed", "{event}");
    assert_eq!(event["failure"]["code"], "EMAIL_ALREADY_EXISTS");
    assert_eq!(event["failure"]["action"], "inquire");
    assert_eq!(event["failure"]["param_id"], "aws_account_email");
    // No account with the email ever shows: looked at again 3 times, then AWS asked once more.
    assert_eq!(proxy.stats().creations, 2);
    assert!(env.payer.member_accounts().await.is_empty());
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_taken_by_another_order_is_refused_and_makes_no_second_account() {
    let mut env = TestEnv::fast(QUICK_RETRIES).await;
    let worker = env.spawn_worker().await;
    let email = format!("shared-{}@customer.example", crate::support::digits(8));
    let ecam = |email: &str| {
        order(
            &[("aws_account_email", email)],
            &[
                ("awsAccountModel", "ECAM"),
                ("provideRootUserForECAM", "Yes"),
            ],
        )
    };
    let first = ecam(&email);
    env.publish_json(&first).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");

    let second = ecam(&email.to_uppercase());
    env.publish_json(&second).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.failed", "{event}");
    assert_eq!(event["request_id"], second["id"]);
    assert_eq!(event["failure"]["code"], "EMAIL_ALREADY_EXISTS");
    assert_eq!(event["failure"]["action"], "inquire");
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_percent_of_calls_throttled_over_fifty_orders() {
    let faults = Faults {
        throttle_share: 0.3,
        concurrent_modification_share: 0.05,
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy(
        "[business_model]\nservice_control_policies = [\"{scp}\"]",
        faults,
    )
    .await;
    let worker = env.spawn_worker().await;
    let orders: Vec<Value> = (0..50).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders.iter().map(request_id).collect();

    let events = provisioned_events(&mut env, &ids).await;
    assert_eq!(events.len(), 50);
    assert_one_account_per_order(&env, &events).await;
    let stats = proxy.stats();
    assert!(
        stats.throttled > 0 && stats.concurrent_modifications > 0,
        "{stats:?}"
    );
    eprintln!("50 orders, 50 accounts, proxy: {stats:?}");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_at_random_moments_loses_nothing_and_duplicates_nothing() {
    // Every answer is 100 ms late, so orders are caught half-way when the worker dies.
    let faults = Faults {
        delay: Duration::from_millis(100),
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy(
        "[business_model]\nservice_control_policies = [\"{scp}\"]",
        faults,
    )
    .await;
    let config = write_config(&env.toml);
    let orders: Vec<Value> = (0..100).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders.iter().map(request_id).collect();

    let endpoint = proxy.endpoint.clone();
    let mut kills = 0;
    let mut events: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let mut worker = WorkerProcess::spawn(&env, &config, &endpoint).await;
    while ids.iter().any(|id| !events.contains_key(id)) {
        if kills < 8 {
            // Collect events for a random while, then kill the worker and start another.
            let pause = Duration::from_millis(rand::rng().random_range(300..1500));
            let until = tokio::time::Instant::now() + pause;
            // Only the wait for a delivery is cut short, never its acknowledgement: an event
            // taken from the stream and then dropped would look lost.
            while let Some(event) = env
                .next_event_within(until.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                collect(&mut events, event);
            }
            worker.signal("KILL");
            worker.exit(Duration::from_secs(10)).await;
            kills += 1;
            worker = WorkerProcess::spawn(&env, &config, &endpoint).await;
        } else {
            let Some(event) = env.next_event_within(DEADLINE).await else {
                panic!(
                    "{} of 100 orders provisioned after {kills} kills; the last worker's log:\n{}",
                    events.len(),
                    worker.log_tail()
                );
            };
            collect(&mut events, event);
        }
    }

    assert_eq!(events.len(), 100);
    assert_one_account_per_order(&env, &events).await;
    let delivered: usize = events.values().map(Vec::len).sum();
    eprintln!(
        "100 orders, {kills} kills, 100 accounts, {delivered} provisioned events, {} creations",
        proxy.stats().creations
    );
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    worker.signal("TERM");
    assert_eq!(worker.exit(Duration::from_secs(40)).await, Some(0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_orders_in_flight_exits_0_within_the_grace_period_and_loses_none() {
    // Answers 600 ms late: an order makes at least 3 calls (the gate's two looks, then
    // CreateAccount), so it takes at least 1.8 s, longer than the 1 s grace period.
    let faults = Faults {
        delay: Duration::from_millis(600),
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy("[worker]\nshutdown_grace_seconds = 1", faults).await;
    let config = write_config(&env.toml);
    let orders: Vec<Value> = (0..20).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders.iter().map(request_id).collect();
    let mut worker = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    // SIGTERM once the worker has its first orders in flight (the proxy has their first calls).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while proxy.stats().calls == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never called AWS: {}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = std::collections::BTreeMap::new();

    worker.signal("TERM");
    let asked = tokio::time::Instant::now();
    let code = worker.exit(Duration::from_secs(10)).await;
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "SIGTERM exits 0: {}", worker.log_tail());
    assert!(
        took < Duration::from_millis(2500),
        "exit within the 1 s grace period (plus process teardown), took {took:?}"
    );
    assert!(
        worker.log_tail().contains("grace period over"),
        "orders were in flight when the grace period ended: {}",
        worker.log_tail()
    );

    let worker = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    while ids.iter().any(|id| !events.contains_key(id)) {
        let Some(event) = env.next_event_within(DEADLINE).await else {
            panic!(
                "{} of 20 orders provisioned; the second worker's log:\n{}",
                events.len(),
                worker.log_tail()
            );
        };
        collect(&mut events, event);
    }
    assert_one_account_per_order(&env, &events).await;
    eprintln!(
        "SIGTERM with orders in flight: exit 0 in {took:?}; 20 orders, 20 accounts, {} events",
        events.values().map(Vec::len).sum::<usize>()
    );
    drop(worker);
    env.cleanup().await;
}
