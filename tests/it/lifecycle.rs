//! The subscription's later life end to end (docs/contract.md §10): suspend, resume, cancel
//! (close, remove, none) and change requests, published with their own routing keys, against
//! member accounts made in moto with their asset's tag; AWS's refusals that moto does not make
//! (the close quota, the 7-day wait before a removal, `PENDING_CLOSURE`) come from the fault
//! proxy. Also a worker killed (`kill -9`) in the middle of a suspend and of a cancel.

use std::time::Duration;

use aws_sdk_organizations::types::Tag;
use serde_json::{Value, json};

use crate::faults::FaultProxy;
use crate::support::{DEADLINE, TestEnv, WorkerProcess, digits, order, write_config};

/// Quick retries and waits; the payer's SCP is the deny-all policy of suspended accounts.
fn settings(cancel_action: &str) -> String {
    format!(
        r#"
        [retry]
        initial_delay_ms = 200
        max_delay_ms = 1000
        max_attempts = 3
        [business_model]
        suspend_policy_id = "{{scp}}"
        cancel_action = "{cancel_action}"
        "#
    )
}

fn new_asset() -> String {
    format!("AS-{}-{}-{}", digits(4), digits(4), digits(4))
}

/// A member account of the payer's organization tagged for `asset`, made in moto directly
/// (not through the proxy: the worker's calls alone are counted).
async fn member(env: &TestEnv, asset: &str) -> String {
    let tag = Tag::builder()
        .key("connect:asset-id")
        .value(asset)
        .build()
        .expect("tag");
    let created = env
        .payer
        .organizations()
        .create_account()
        .email(format!("it-{}@customer.example", digits(10)))
        .account_name(format!("{asset} it"))
        .tags(tag)
        .send()
        .await
        .expect("create account in moto");
    created
        .create_account_status()
        .and_then(|s| s.account_id())
        .expect("moto creates at once")
        .to_owned()
}

/// A request of `kind` for `asset` naming `account` (`aws_account_id`), with a fresh request id.
fn later(kind: &str, asset: &str, account: &str) -> Value {
    let mut request = order(&[("aws_account_id", account)], &[]);
    request["type"] = json!(kind);
    request["asset"]["id"] = json!(asset);
    request
}

/// The routing key of `kind`, as configured.
fn key(env: &TestEnv, kind: &str) -> String {
    let amqp = &env.settings.amqp;
    match kind {
        "change" => &amqp.change_routing_key,
        "suspend" => &amqp.suspend_routing_key,
        "resume" => &amqp.resume_routing_key,
        "cancel" => &amqp.cancel_routing_key,
        _ => &amqp.orders_routing_key,
    }
    .clone()
}

/// Publishes `request` with its kind's routing key.
async fn publish(env: &TestEnv, request: &Value) {
    let kind = request["type"].as_str().expect("type").to_owned();
    env.publish_routed(&key(env, &kind), request).await;
}

/// The next event, which must be `name` for `request` on `account` (a failed event names no
/// account); printed, for the docs.
async fn expect(env: &mut TestEnv, name: &str, request: &Value, account: &str) -> Value {
    let event = env.next_event().await;
    assert_eq!(event["event"], name, "{event}");
    assert_eq!(event["request_id"], request["id"], "{event}");
    assert_eq!(event["asset_id"], request["asset"]["id"], "{event}");
    if name != "aws.account.failed" {
        assert_eq!(event["account"]["id"], account, "{event}");
    }
    assert_eq!(event["payer"], "default", "{event}");
    eprintln!("{name}: {event}");
    event
}

fn proxy(env: &TestEnv) -> &FaultProxy {
    env.proxy.as_ref().expect("a fault proxy")
}

/// The account's state in moto.
async fn status(env: &TestEnv, account: &str) -> String {
    let described = env
        .payer
        .organizations()
        .describe_account()
        .account_id(account)
        .send()
        .await
        .expect("describe account");
    let account = described.account().expect("account");
    account
        .status()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// Calls of `operation` the worker made so far.
fn calls(env: &TestEnv, operation: &str) -> u64 {
    proxy(env).stats().calls_of(operation)
}

/// No further event for a few seconds, and nothing dead-lettered.
async fn quiet(env: &mut TestEnv) {
    if let Some(event) = env.next_event_within(Duration::from_secs(2)).await {
        panic!("no further event: {event}");
    }
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_twice_then_resume_twice_attaches_and_detaches_the_deny_scp_once_each() {
    let mut env = TestEnv::new(&settings("none")).await;
    let deny = env.payer.scp_id.clone();
    let worker = env.spawn_worker().await;
    let asset = new_asset();
    let account = member(&env, &asset).await;

    let mut names = Vec::new();
    for (kind, name, attached) in [
        ("suspend", "aws.account.suspended", true),
        ("suspend", "aws.account.suspended", true),
        ("resume", "aws.account.resumed", false),
        ("resume", "aws.account.resumed", false),
    ] {
        let request = later(kind, &asset, &account);
        publish(&env, &request).await;
        let event = expect(&mut env, name, &request, &account).await;
        assert_eq!(event["suspend_policy_id"], deny, "{event}");
        names.push(event["event"].as_str().expect("name").to_owned());
        assert_eq!(
            env.payer.scps_of(&account).await.contains(&deny),
            attached,
            "after {kind}"
        );
    }
    assert_eq!(
        names,
        [
            "aws.account.suspended",
            "aws.account.suspended",
            "aws.account.resumed",
            "aws.account.resumed"
        ]
    );
    assert_eq!(calls(&env, "AttachPolicy"), 1, "attached once");
    assert_eq!(calls(&env, "DetachPolicy"), 1, "detached once");
    quiet(&mut env).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_close_closes_once_follows_a_pending_closure_and_fails_over_the_quota() {
    let mut env = TestEnv::new(&settings("close")).await;
    let worker = env.spawn_worker().await;

    // Closed once; delivered again: reported closed, not closed again.
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let request = later("cancel", &asset, &account);
    publish(&env, &request).await;
    let event = expect(&mut env, "aws.account.closed", &request, &account).await;
    assert_eq!(event["cancel_action"], "close");
    assert_eq!(event["account"]["status"], "SUSPENDED");
    assert_eq!(status(&env, &account).await, "SUSPENDED");
    assert_eq!(calls(&env, "CloseAccount"), 1);
    publish(&env, &request).await;
    expect(&mut env, "aws.account.closed", &request, &account).await;
    assert_eq!(calls(&env, "CloseAccount"), 1, "no second CloseAccount");

    // As at AWS, the account is PENDING_CLOSURE for a while: the request waits, then reports.
    proxy(&env).update(|f| f.pending_closure_describes = 2);
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let request = later("cancel", &asset, &account);
    publish(&env, &request).await;
    expect(&mut env, "aws.account.closed", &request, &account).await;
    assert_eq!(
        calls(&env, "CloseAccount"),
        2,
        "one CloseAccount for this one"
    );

    // Over AWS's close quota: failed, nothing else.
    proxy(&env).update(|f| {
        f.pending_closure_describes = 0;
        f.close_quota_exceeded = true;
    });
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let request = later("cancel", &asset, &account);
    publish(&env, &request).await;
    let event = expect(&mut env, "aws.account.failed", &request, &account).await;
    assert_eq!(event["failure"]["code"], "CLOSE_QUOTA_EXCEEDED", "{event}");
    assert_eq!(event["failure"]["action"], "fail", "{event}");
    assert_eq!(status(&env, &account).await, "ACTIVE");
    assert_eq!(calls(&env, "CloseAccount"), 3, "refused once, not retried");
    quiet(&mut env).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_remove_waits_out_the_seven_days_without_spending_attempts_then_removes() {
    // One attempt allowed and an order age of 1 s: a wait that spent an attempt, or that the
    // order age bounded, would dead-letter the request.
    let mut env = TestEnv::new(
        r#"
        [retry]
        initial_delay_ms = 700
        max_delay_ms = 1000
        max_attempts = 1
        max_order_age_seconds = 1
        [business_model]
        cancel_action = "remove"
        "#,
    )
    .await;
    proxy(&env).update(|f| f.removal_wait_period_refusals = 3);
    let worker = env.spawn_worker().await;
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let request = later("cancel", &asset, &account);
    publish(&env, &request).await;
    let event = expect(&mut env, "aws.account.removed", &request, &account).await;
    assert_eq!(event["cancel_action"], "remove");
    assert_eq!(calls(&env, "RemoveAccountFromOrganization"), 4, "3 refused");
    let members = env.payer.member_accounts().await;
    assert!(
        members.iter().all(|(id, _)| *id != account),
        "{account} left the organization: {members:?}"
    );

    // Delivered again (as after a lost ack): the account is gone, nothing is done.
    publish(&env, &request).await;
    let event = env.next_event().await;
    assert_eq!(event["failure"]["code"], "ACCOUNT_NOT_OURS", "{event}");
    assert_eq!(calls(&env, "RemoveAccountFromOrganization"), 4);
    quiet(&mut env).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_naming_an_account_of_another_asset_touches_nothing() {
    let mut env = TestEnv::new(&settings("close")).await;
    let deny = env.payer.scp_id.clone();
    let worker = env.spawn_worker().await;
    let theirs = member(&env, &new_asset()).await;
    let before = env.payer.scps_of(&theirs).await;
    let asset = new_asset();
    let stranger = digits(12);
    for (kind, account) in [
        ("suspend", &theirs),
        ("cancel", &theirs),
        ("suspend", &stranger),
        ("cancel", &stranger),
    ] {
        let request = later(kind, &asset, account);
        publish(&env, &request).await;
        let event = expect(&mut env, "aws.account.failed", &request, account).await;
        assert_eq!(event["failure"]["code"], "ACCOUNT_NOT_OURS", "{event}");
        assert_eq!(event["failure"]["action"], "fail", "{event}");
    }
    assert_eq!(env.payer.scps_of(&theirs).await, before);
    assert!(!before.contains(&deny));
    assert_eq!(status(&env, &theirs).await, "ACTIVE");
    for operation in [
        "AttachPolicy",
        "DetachPolicy",
        "CloseAccount",
        "RemoveAccountFromOrganization",
    ] {
        assert_eq!(calls(&env, operation), 0, "{operation}");
    }
    quiet(&mut env).await;
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_confirmed_with_no_aws_call_and_cancel_none_only_reads() {
    let mut env = TestEnv::new(&settings("none")).await;
    let worker = env.spawn_worker().await;
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let before = proxy(&env).stats().calls;
    let request = later("change", &asset, &account);
    publish(&env, &request).await;
    expect(&mut env, "aws.account.changed", &request, &account).await;
    assert_eq!(proxy(&env).stats().calls, before, "no AWS call");

    let request = later("cancel", &asset, &account);
    let before = proxy(&env).stats().operations;
    publish(&env, &request).await;
    let event = expect(&mut env, "aws.account.cancelled", &request, &account).await;
    assert_eq!(event["cancel_action"], "none");
    let after = proxy(&env).stats().operations;
    let called: Vec<&String> = after
        .iter()
        .filter(|(op, n)| before.get(*op) != Some(*n))
        .map(|(op, _)| op)
        .collect();
    assert_eq!(
        called,
        ["DescribeAccount", "ListTagsForResource"],
        "only the ownership check"
    );
    assert_eq!(status(&env, &account).await, "ACTIVE");
    quiet(&mut env).await;
    env.finish(worker).await;
}

/// Polls until `done`, or panics at the deadline with the worker's logs.
async fn until<F, Fut>(worker: &WorkerProcess, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_in_the_middle_of_a_suspend_or_a_cancel_ends_each_once() {
    let mut env = TestEnv::new(&settings("close")).await;
    let deny = env.payer.scp_id.clone();
    let endpoint = proxy(&env).endpoint.clone();
    let closing = write_config(&env.toml);
    let removing = write_config(
        &env.toml
            .replace("cancel_action = \"close\"", "cancel_action = \"remove\""),
    );
    let asset = new_asset();
    let account = member(&env, &asset).await;
    let other_asset = new_asset();
    let other = member(&env, &other_asset).await;

    for (kind, name, operation, config, asset, account) in [
        (
            "suspend",
            "aws.account.suspended",
            "AttachPolicy",
            &closing,
            &asset,
            &account,
        ),
        (
            "cancel",
            "aws.account.closed",
            "CloseAccount",
            &closing,
            &asset,
            &account,
        ),
        (
            "cancel",
            "aws.account.removed",
            "RemoveAccountFromOrganization",
            &removing,
            &other_asset,
            &other,
        ),
    ] {
        // Every answer comes late: the worker is killed once AWS did the change and before
        // it heard of it (so before its event could go out).
        proxy(&env).update(|f| f.delay = Duration::from_millis(1500));
        let mut first = WorkerProcess::spawn(&env, config, &endpoint).await;
        let request = later(kind, asset, account);
        publish(&env, &request).await;
        let payer = &env.payer;
        until(&first, &format!("{operation} done in moto"), || async {
            match operation {
                "AttachPolicy" => payer.scps_of(account).await.contains(&deny),
                "CloseAccount" => status(&env, account).await == "SUSPENDED",
                _ => payer
                    .member_accounts()
                    .await
                    .iter()
                    .all(|(id, _)| id != account),
            }
        })
        .await;
        first.signal("KILL");
        first.exit(Duration::from_secs(10)).await;
        assert_eq!(calls(&env, operation), 1, "{operation} sent once");

        proxy(&env).update(|f| f.delay = Duration::ZERO);
        let mut second = WorkerProcess::spawn(&env, config, &endpoint).await;
        let Some(event) = env.next_event_within(DEADLINE).await else {
            panic!("no event after the kill: {}", second.log_tail());
        };
        assert_eq!(event["event"], name, "{event}");
        assert_eq!(event["request_id"], request["id"], "{event}");
        assert_eq!(calls(&env, operation), 1, "no second {operation}");
        quiet(&mut env).await;
        second.signal("TERM");
        assert_eq!(
            second.exit(DEADLINE).await,
            Some(0),
            "{}",
            second.log_tail()
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_type_decides_the_path_not_the_routing_key() {
    let mut env = TestEnv::new(&settings("none")).await;
    let worker = env.spawn_worker().await;
    let asset = new_asset();
    let account = member(&env, &asset).await;
    // A suspend published with the change routing key is a suspend.
    let request = later("suspend", &asset, &account);
    env.publish_routed(&env.settings.amqp.change_routing_key.clone(), &request)
        .await;
    expect(&mut env, "aws.account.suspended", &request, &account).await;
    assert_eq!(calls(&env, "AttachPolicy"), 1);
    quiet(&mut env).await;
    env.finish(worker).await;
}
