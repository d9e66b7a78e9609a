//! The initial IAM password is given out once (docs/contract.md §5): a fulfilled order delivered
//! again, with or without its retry headers, or replayed from the DLQ, reports
//! `credentials: "already_issued"` and leaves the login profile alone; a password set but never
//! published (the worker stopped before the event's confirm) is replaced once, then kept, whether
//! the stop is faked (the tag removed) or a real `kill -9` of the worker's process; a tag
//! that fails after the confirm is counted and the order still acknowledged. moto
//! (with AWS managed policies, for the IAM user's policy) sits behind the fault proxy, which
//! records every login-profile call.

use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

use crate::bounds::{accept_events, confirming, refuse_all_events};
use crate::faults::{FaultProxy, Faults};
use crate::replay::{Queues, failure_headers, replay};
use crate::support::{
    DEADLINE, Payer, TestEnv, WorkerProcess, moto_config, moto_endpoint, order, write_config,
};

/// Quick retries, so that a busy order waits little.
const QUICK_RETRIES: &str = r#"
[retry]
initial_delay_ms = 100
max_delay_ms = 1000
max_attempts = 5
"#;

/// A test environment whose worker reaches the moto with managed policies through a proxy.
async fn behind_proxy() -> (TestEnv, FaultProxy) {
    behind_proxy_with(Faults::default()).await
}

/// Retries slow enough that a worker whose event was refused takes the order up again no
/// sooner than 2 s later (a settle failure's first retry waits 2 to 4 s); a redelivered order
/// whose account is not found yet waits 1 s.
const SLOW_RETRIES: &str = r#"
[retry]
initial_delay_ms = 4000
max_delay_ms = 8000
max_attempts = 5
redelivered_create_delay_ms = 1000
"#;

/// Like `behind_proxy`, injecting `faults`.
async fn behind_proxy_with(faults: Faults) -> (TestEnv, FaultProxy) {
    behind_proxy_as(QUICK_RETRIES, faults).await
}

/// Like `behind_proxy_with`, with the settings `extra` (TOML) instead of the quick retries.
async fn behind_proxy_as(extra: &str, faults: Faults) -> (TestEnv, FaultProxy) {
    let proxy = FaultProxy::start(&moto_endpoint(), faults).await;
    let payer = Payer::on(&moto_endpoint()).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let env = TestEnv::with_aws(extra, payer, aws).await;
    (env, proxy)
}

/// The next event, which must be `aws.account.provisioned` for `order`.
async fn provisioned(env: &mut TestEnv, order: &Value) -> Value {
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    assert_eq!(event["request_id"], order["id"], "{event}");
    event
}

/// Asserts that `event` gives out a new password, and returns it.
fn issued(event: &Value) -> String {
    let access = &event["access"];
    assert_eq!(access["kind"], "iam_user", "{event}");
    assert_eq!(access["credentials"], "issued", "{event}");
    let password = access["initial_password"].as_str().expect("a password");
    assert_eq!(
        event["template"]["params"]["iam_initial_password"].as_str(),
        Some(password)
    );
    password.to_owned()
}

/// Asserts that `event` names `account` and gives out no password.
fn already_issued(event: &Value, account: &str) {
    assert_eq!(event["account"]["id"].as_str(), Some(account), "{event}");
    let access = &event["access"];
    assert_eq!(access["kind"], "iam_user", "{event}");
    assert_eq!(access["credentials"], "already_issued", "{event}");
    assert_eq!(access["initial_password"], Value::Null, "{event}");
    assert!(
        event["template"]["params"]
            .get("iam_initial_password")
            .is_none(),
        "{event}"
    );
    assert_eq!(event["template"]["name"], "iam_user");
}

/// The IAM user's `connect:*` tags in `account`, once the credentials tag is there (a
/// deadline otherwise): the tag is written after the event's confirm.
async fn credentials_tags(env: &TestEnv, account: &str, user: &str) -> Vec<(String, String)> {
    let iam = env.payer.member_iam(account).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let listed = iam
            .list_user_tags()
            .user_name(user)
            .send()
            .await
            .expect("list user tags");
        let tags: Vec<(String, String)> = listed
            .tags()
            .iter()
            .filter(|t| t.key().starts_with("connect:"))
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        if tags.iter().any(|(k, _)| k == "connect:credentials") {
            return tags;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the IAM user {user} is never tagged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The progress headers a retry of the fulfilled order would carry.
fn progress_headers(mut headers: FieldTable, event: &Value) -> FieldTable {
    let text = |v: &str| AMQPValue::LongString(LongString::from(v));
    let account = event["account"]["id"].as_str().expect("account id");
    let car = event["account"]["create_request_id"]
        .as_str()
        .unwrap_or_default();
    headers.insert("x-account-id".into(), text(account));
    if !car.is_empty() {
        headers.insert("x-create-request-id".into(), text(car));
    }
    headers.insert("x-step".into(), text("account-created"));
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fulfilled_order_delivered_again_or_replayed_keeps_its_password() {
    let (mut env, proxy) = behind_proxy().await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    let body = order.to_string().into_bytes();
    env.publish(&body).await;

    let first = provisioned(&mut env, &order).await;
    let password = issued(&first);
    let account = first["account"]["id"].as_str().expect("account").to_owned();
    let user = first["access"]["iam_user_name"]
        .as_str()
        .expect("user")
        .to_owned();
    let tags = credentials_tags(&env, &account, &user).await;
    assert!(
        tags.contains(&("connect:credentials".into(), "issued".into())),
        "{tags:?}"
    );
    let event_id = first["event_id"].as_str().expect("event id").to_owned();
    assert!(
        tags.contains(&("connect:credentials-event-id".into(), event_id)),
        "the tag names the event that gave the password out: {tags:?}"
    );
    let set_once = proxy.stats().login_profile_calls;
    assert_eq!(set_once, ["CreateLoginProfile"]);

    // The same body again (a lost ack), then with the headers of a retry.
    env.publish(&body).await;
    already_issued(&provisioned(&mut env, &order).await, &account);
    let queues = Queues::open().await;
    let headers = progress_headers(FieldTable::default(), &first);
    env.publish_with_headers(&body, headers).await;
    already_issued(&provisioned(&mut env, &order).await, &account);

    // A copy dead-lettered, then replayed.
    let headers = progress_headers(failure_headers("AWS_UNREACHABLE", 3, None), &first);
    queues.dead_letter(&env, &body, headers, true).await;
    replay(&env, &[])
        .await
        .expect("replayed 1, kept 0, skipped 0");
    already_issued(&provisioned(&mut env, &order).await, &account);

    assert_eq!(
        proxy.stats().login_profile_calls,
        set_once,
        "no login-profile call after the first delivery: the password {} is the customer's",
        password.len()
    );
    assert_eq!(env.payer.member_accounts().await.len(), 1, "one account");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_set_but_never_published_is_replaced_once_then_kept() {
    let (mut env, proxy) = behind_proxy().await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    let body = order.to_string().into_bytes();
    env.publish(&body).await;
    let lost = provisioned(&mut env, &order).await;
    let lost_password = issued(&lost);
    let account = lost["account"]["id"].as_str().expect("account").to_owned();
    let user = lost["access"]["iam_user_name"]
        .as_str()
        .expect("user")
        .to_owned();
    credentials_tags(&env, &account, &user).await;

    // The state a worker killed between CreateLoginProfile and the event's confirm leaves: the
    // account, the user with its login profile and policies, and no tag (that first event
    // stands for the one the crash lost).
    let iam = env.payer.member_iam(&account).await;
    iam.untag_user()
        .user_name(&user)
        .tag_keys("connect:credentials")
        .tag_keys("connect:credentials-event-id")
        .send()
        .await
        .expect("untag user");
    iam.get_login_profile()
        .user_name(&user)
        .send()
        .await
        .expect("the login profile is there");
    let before = proxy.stats().login_profile_calls.len();

    env.publish(&body).await;
    let replaced = provisioned(&mut env, &order).await;
    let new_password = issued(&replaced);
    assert_ne!(new_password, lost_password, "a new password");
    assert_eq!(replaced["account"]["id"].as_str(), Some(account.as_str()));
    let tags = credentials_tags(&env, &account, &user).await;
    let event_id = replaced["event_id"].as_str().expect("event id").to_owned();
    assert!(
        tags.contains(&("connect:credentials-event-id".into(), event_id)),
        "{tags:?}"
    );
    let calls = proxy.stats().login_profile_calls;
    assert_eq!(
        calls[before..],
        ["CreateLoginProfile", "UpdateLoginProfile"],
        "the profile there is updated once"
    );
    // Exactly one event for that delivery.
    assert!(
        env.next_event_within(Duration::from_secs(2))
            .await
            .is_none(),
        "one provisioned event"
    );

    // Delivered again: kept.
    env.publish(&body).await;
    already_issued(&provisioned(&mut env, &order).await, &account);
    assert_eq!(proxy.stats().login_profile_calls, calls);
    env.finish(worker).await;
}

/// The IAM user `user` of `account` as a killed worker leaves it: a login profile in AWS and
/// no `connect:credentials` tag.
async fn assert_password_set_but_not_marked(env: &TestEnv, account: &str, user: &str) {
    let iam = env.payer.member_iam(account).await;
    iam.get_login_profile()
        .user_name(user)
        .send()
        .await
        .expect("the login profile is there");
    let listed = iam
        .list_user_tags()
        .user_name(user)
        .send()
        .await
        .expect("list user tags");
    assert!(
        listed
            .tags()
            .iter()
            .all(|t| t.key() != "connect:credentials"),
        "no event was confirmed, so the user is not marked: {:?}",
        listed.tags()
    );
}

/// The one member account and the name of its one IAM user.
async fn the_account_and_user(env: &TestEnv) -> (String, String) {
    let accounts = env.payer.member_accounts().await;
    assert_eq!(accounts.len(), 1, "one account: {accounts:?}");
    let account = accounts[0].0.clone();
    let listed = env
        .payer
        .member_iam(&account)
        .await
        .list_users()
        .send()
        .await
        .expect("list users");
    let users: Vec<&str> = listed.users().iter().map(|u| u.user_name()).collect();
    assert_eq!(users.len(), 1, "one IAM user: {users:?}");
    (account, users[0].to_owned())
}

/// Waits until the proxy saw `operation` at least once, or panics at the deadline with the
/// worker's logs.
async fn until_called(proxy: &FaultProxy, operation: &str, worker: &WorkerProcess) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while proxy.stats().calls_of(operation) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never called {operation}: {}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_setting_the_password_and_the_confirm_publishes_one_new_once() {
    let started = Instant::now();
    let (mut env, proxy) = behind_proxy_as(SLOW_RETRIES, Faults::default()).await;
    let config = write_config(&env.toml);
    // The results exchange refuses every event: no `provisioned` event can be confirmed.
    let (connection, channel) = confirming().await;
    let refusing = refuse_all_events(&env, &channel).await;
    let mut first = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    let order = order(&[], &[]);
    let body = order.to_string().into_bytes();
    env.publish(&body).await;

    // The user's policy is attached right after CreateLoginProfile: once the proxy sees that
    // call, AWS holds the password. Kill -9 then; the refused event cannot have been confirmed,
    // and the worker's own retry of the order waits 2 s at least.
    until_called(&proxy, "AttachUserPolicy", &first).await;
    first.signal("KILL");
    first.exit(Duration::from_secs(10)).await;
    let killed = started.elapsed();
    assert_eq!(proxy.stats().login_profile_calls, ["CreateLoginProfile"]);
    let (account, user) = the_account_and_user(&env).await;
    assert_password_set_but_not_marked(&env, &account, &user).await;

    // Accepting again; another worker takes the order up.
    accept_events(&env, &channel, &refusing).await;
    let mut second = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    let restarted = Instant::now();
    let Some(event) = env.next_event_within(DEADLINE).await else {
        panic!("no event after the kill: {}", second.log_tail());
    };
    let recovered = restarted.elapsed();
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    assert_eq!(event["request_id"], order["id"], "{event}");
    let password = issued(&event);
    assert_eq!(event["account"]["id"].as_str(), Some(account.as_str()));
    assert_eq!(
        event["access"]["iam_user_name"].as_str(),
        Some(user.as_str())
    );
    assert!(
        env.next_event_within(Duration::from_secs(3))
            .await
            .is_none(),
        "one provisioned event"
    );
    // The second worker's CreateLoginProfile is refused (the profile exists), then the new
    // password is set, once.
    let calls = proxy.stats().login_profile_calls;
    assert_eq!(
        calls,
        [
            "CreateLoginProfile",
            "CreateLoginProfile",
            "UpdateLoginProfile"
        ]
    );
    let tags = credentials_tags(&env, &account, &user).await;
    assert!(
        tags.contains(&("connect:credentials".into(), "issued".into())),
        "{tags:?}"
    );
    let event_id = event["event_id"].as_str().expect("event id").to_owned();
    assert!(
        tags.contains(&("connect:credentials-event-id".into(), event_id)),
        "the tag names the event that gave the password out: {tags:?}"
    );
    assert_eq!(env.payer.member_accounts().await.len(), 1, "one account");

    // Delivered again: the password given out is kept.
    env.publish(&body).await;
    already_issued(&provisioned(&mut env, &order).await, &account);
    assert_eq!(
        proxy.stats().login_profile_calls,
        calls,
        "no login-profile call after the password ({} characters) was given out",
        password.len()
    );
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    eprintln!(
        "killed {killed:?} after the start; the second worker's event {recovered:?} after its \
         start; login-profile calls {calls:?}; {} AWS calls in all",
        proxy.stats().calls
    );
    second.signal("TERM");
    assert_eq!(
        second.exit(DEADLINE).await,
        Some(0),
        "{}",
        second.log_tail()
    );
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_that_cannot_be_tagged_after_the_confirm_is_counted_and_the_order_acknowledged() {
    let faults = Faults {
        deny_iam_actions: vec!["TagUser"],
        ..Faults::default()
    };
    let (mut env, proxy) = behind_proxy_with(faults).await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    env.publish_json(&order).await;
    issued(&provisioned(&mut env, &order).await);

    // The order is acknowledged all the same: no second event, nothing dead-lettered, and the
    // failure is counted.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let counted = loop {
        let (_, metrics) = worker.get("/metrics").await;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("aws_account_worker_after_confirm_failed_total"))
            .map(str::to_owned);
        if let Some(line) = line {
            break line;
        }
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        counted.contains(r#"step="mark_credentials_issued""#) && counted.ends_with(" 1"),
        "{counted}"
    );
    assert_eq!(proxy.stats().denied_iam, ["TagUser"]);
    assert!(
        env.next_event_within(Duration::from_secs(2))
            .await
            .is_none(),
        "the order was acknowledged: no second delivery"
    );
    assert!(env.drain_dlq().await.is_empty());
    env.finish(worker).await;
}
