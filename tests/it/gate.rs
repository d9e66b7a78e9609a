//! The gate (issue 15): progress headers are hints that AWS must confirm, identity is the asset,
//! and a new order's AWS reads do not grow with the organization. The worker reaches moto
//! through the fault proxy, which refuses an email in use as AWS does.

use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use serde_json::Value;

use crate::faults::{Creation, End, FaultProxy, Faults, Stats};
use crate::support::{
    Payer, TestEnv, WorkerHandle, moto_config, moto_fast_endpoint, order, parent_of,
};

/// Quick retries, four attempts.
const RETRIES: &str = "[retry]\ninitial_delay_ms = 500\nmax_delay_ms = 2000\nmax_attempts = 4\n\
redelivered_create_delay_ms = 3000\n";

/// Retries that wait 5 s first.
const SLOW_RETRIES: &str =
    "[retry]\ninitial_delay_ms = 5000\nmax_delay_ms = 10000\nmax_attempts = 4\n";

/// A SPAM order with an IAM user named `user`.
fn spam_order(user: &str) -> Value {
    order(&[("iam_user_name", user)], &[])
}

/// An ECAM root-user order for `email`.
fn root_order_for(email: &str) -> Value {
    order(
        &[("aws_account_email", email)],
        &[
            ("awsAccountModel", "ECAM"),
            ("provideRootUserForECAM", "Yes"),
        ],
    )
}

fn account_of(event: &Value) -> String {
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    event["account"]["id"]
        .as_str()
        .expect("account id")
        .to_owned()
}

fn proxy(env: &TestEnv) -> &FaultProxy {
    env.proxy.as_ref().expect("the environment's proxy")
}

/// `aws_account_worker_forged_hints_total` on the worker's `/metrics`.
async fn forged_hints(worker: &WorkerHandle) -> u64 {
    let (_, text) = worker.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("aws_account_worker_forged_hints_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The AWS calls between two snapshots of the proxy's counts, in all.
fn calls_between(before: &Stats, after: &Stats) -> u64 {
    after.calls - before.calls
}

/// IAM user names in `account`.
async fn users_in(env: &TestEnv, account: &str) -> Vec<String> {
    let iam = env.payer.member_iam(account).await;
    let listed = iam.list_users().send().await.expect("list users");
    listed
        .users()
        .iter()
        .map(|u| u.user_name().to_owned())
        .collect()
}

fn text_header(headers: &mut FieldTable, key: &str, value: &str) {
    aws_account_worker::broker::headers::set_text(headers, key, value);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_hints_naming_another_assets_account_are_ignored() {
    let mut env = TestEnv::new(&format!(
        "{RETRIES}[business_model]\naccount_model = \"SPAM\"\nservice_control_policies = [\"{{scp}}\"]"
    ))
    .await;
    let worker = env.spawn_worker().await;
    let first = spam_order("alice");
    env.publish_json(&first).await;
    let event = env.next_event().await;
    let victim = account_of(&event);
    let victim_request = event["account"]["create_request_id"]
        .as_str()
        .expect("create request id")
        .to_owned();
    let (scps, parent) = (
        env.payer.scps_of(&victim).await,
        parent_of(&env.payer, &victim).await,
    );

    // Three forgeries: the account id with the last step, the create request id, both.
    let forgeries: [&[(&str, &str)]; 3] = [
        &[("x-account-id", &victim), ("x-step", "account-created")],
        &[
            ("x-create-request-id", &victim_request),
            ("x-step", "create-requested"),
        ],
        &[
            ("x-account-id", &victim),
            ("x-create-request-id", &victim_request),
            ("x-step", "policies-attached"),
        ],
    ];
    let mut own = Vec::new();
    for (n, forged) in forgeries.iter().enumerate() {
        let attacker = spam_order(&format!("mallory{n}"));
        let mut headers = FieldTable::default();
        for (key, value) in *forged {
            text_header(&mut headers, key, value);
        }
        env.publish_with_headers(attacker.to_string().as_bytes(), headers)
            .await;
        let event = env.next_event().await;
        assert_eq!(event["request_id"], attacker["id"], "{event}");
        let account = account_of(&event);
        assert_ne!(account, victim, "forgery {n} got the victim's account");
        own.push(account);
    }
    own.sort();
    own.dedup();
    assert_eq!(own.len(), 3, "each order its own account: {own:?}");

    assert_eq!(
        users_in(&env, &victim).await,
        ["alice"],
        "no IAM user added"
    );
    assert_eq!(env.payer.scps_of(&victim).await, scps, "SCPs unchanged");
    assert_eq!(parent_of(&env.payer, &victim).await, parent, "not moved");
    let counted = forged_hints(&worker).await;
    assert!(counted >= 3, "forged hints counted: {counted}");
    assert_eq!(env.payer.member_accounts().await.len(), 4);
    env.finish(worker).await;
}

/// Creates `n` accounts straight in moto (not through the worker's proxy), `parallel` at once.
async fn fill_organization(payer: &Payer, n: usize, parallel: usize) -> Duration {
    let started = Instant::now();
    let organizations = payer.organizations();
    let mut pending = (0..n).peekable();
    while pending.peek().is_some() {
        let batch: Vec<usize> = pending.by_ref().take(parallel).collect();
        let calls = batch.into_iter().map(|i| {
            let organizations = organizations.clone();
            async move {
                organizations
                    .create_account()
                    .email(format!("filler-{i}@other.example"))
                    .account_name(format!("Filler {i}"))
                    .send()
                    .await
                    .expect("create a filler account");
            }
        });
        futures_util_join_all(calls).await;
    }
    started.elapsed()
}

/// Runs `futures` at once and waits for all.
async fn futures_util_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        handle.await.expect("task");
    }
}

/// One new root order's AWS calls, by the proxy's count.
async fn calls_for_a_new_order(env: &mut TestEnv) -> (u64, Stats, Stats) {
    let before = proxy(env).stats();
    let email = format!("new-{}@customer.example", crate::support::digits(8));
    env.publish_json(&root_order_for(&email)).await;
    account_of(&env.next_event().await);
    let after = proxy(env).stats();
    (calls_between(&before, &after), before, after)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_order_costs_the_same_in_an_organization_of_a_thousand_accounts() {
    let mut env = TestEnv::fast(RETRIES).await;
    let worker = env.spawn_worker().await;
    let (empty, before, after) = calls_for_a_new_order(&mut env).await;
    assert_eq!(
        after.calls_of("ListAccounts"),
        before.calls_of("ListAccounts")
    );

    let took = fill_organization(&env.payer, 1000, 32).await;
    println!("gate: 1000 accounts created in moto-fast in {took:?} (32 at once)");
    let (full, before, after) = calls_for_a_new_order(&mut env).await;
    println!(
        "gate: AWS calls per new order: {empty} in an empty organization, {full} at 1,000 accounts"
    );
    assert!(
        full <= empty + 1,
        "a new order costs {full} calls at 1,000 accounts, {empty} in an empty organization"
    );
    assert_eq!(
        after.calls_of("ListAccounts"),
        before.calls_of("ListAccounts"),
        "no walk of the organization for a new order"
    );
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn email_already_exists_walks_the_organization_once() {
    let mut env = TestEnv::fast(RETRIES).await;
    let worker = env.spawn_worker().await;
    let email = format!("walk-{}@customer.example", crate::support::digits(8));
    let first = root_order_for(&email);
    env.publish_json(&first).await;
    let event = env.next_event().await;
    let account = account_of(&event);
    let request = event["account"]["create_request_id"].clone();

    // The fulfilled order delivered again with no headers (a lost ack): AWS refuses the email,
    // the walk finds the order's own account by its tag.
    let before = proxy(&env).stats();
    env.publish_json(&first).await;
    let again = env.next_event().await;
    assert_eq!(account_of(&again), account);
    assert_eq!(again["account"]["create_request_id"], request, "{again}");
    let after = proxy(&env).stats();
    println!(
        "gate: the rare path (EMAIL_ALREADY_EXISTS, the order's own) took {} AWS calls, {} of them ListAccounts",
        calls_between(&before, &after),
        after.calls_of("ListAccounts") - before.calls_of("ListAccounts")
    );
    assert!(after.calls_of("ListAccounts") > before.calls_of("ListAccounts"));
    assert_eq!(after.duplicate_emails, 1, "{after:?}");

    // Another asset's order for the same email: refused, nothing made.
    let other = root_order_for(&email.to_uppercase());
    env.publish_json(&other).await;
    let failed = env.next_event().await;
    assert_eq!(failed["event"], "aws.account.failed", "{failed}");
    assert_eq!(failed["request_id"], other["id"]);
    assert_eq!(failed["failure"]["code"], "EMAIL_ALREADY_EXISTS");
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creation_that_takes_25_seconds_with_1_second_of_patience_is_one_account() {
    let faults = Faults {
        creation: Creation::Takes {
            duration: Duration::from_secs(25),
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&moto_fast_endpoint(), faults).await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let mut env = TestEnv::with_aws(
        &format!("{RETRIES}[aws]\ncreate_status_poll_ms = 300\ncreate_status_wait_seconds = 1\n"),
        payer,
        aws,
    )
    .await;
    let worker = env.spawn_worker().await;
    let started = Instant::now();
    let email = format!("slow-{}@customer.example", crate::support::digits(8));
    env.publish_json(&root_order_for(&email)).await;
    let event = env
        .next_event_within(Duration::from_secs(90))
        .await
        .expect("an event within 90 s");
    account_of(&event);
    println!(
        "gate: a 25 s creation provisioned after {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stats().creations, 1, "{:?}", proxy.stats());
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_asset_with_another_email_between_deliveries_is_one_account() {
    // Retries slow enough for the first worker to stop before its retry comes back.
    let mut env = TestEnv::new(&format!(
        "{SLOW_RETRIES}[aws]\nmember_account_ready_seconds = 600\n[business_model]\naccount_model = \"SPAM\"\n\
         spam_email_template = \"aws+{{asset_id}}@{{provider_email_domain}}\""
    ))
    .await;
    // The first delivery creates the account, then IAM is refused: it goes back to retry.
    proxy(&env).update(|f| f.deny_iam = true);
    let worker = env.spawn_worker().await;
    let first = spam_order("carol");
    env.publish_json(&first).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy(&env).stats().denied_iam.is_empty() {
        assert!(Instant::now() < deadline, "IAM never asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
    let made = env.payer.member_accounts().await;
    assert_eq!(made.len(), 1);

    // Restarted with another email template: the retry (its hint checked by tag) finds the
    // account, whatever its email.
    let moved = aws_account_worker::config::Settings::from_toml(
        &env.toml.replace("aws+{asset_id}@", "aws+{asset_id}-moved@"),
    )
    .expect("settings");
    proxy(&env).update(|f| f.deny_iam = false);
    let worker = env.spawn_worker_with(&moved).await;
    let event = env.next_event().await;
    assert_eq!(account_of(&event), made[0].0);

    // A delivery whose CreateAccount may have been sent (x-step create-sent) takes the rare
    // path: the walk finds the asset's account by its name and tag, not its email.
    let mut headers = FieldTable::default();
    text_header(&mut headers, "x-step", "create-sent");
    env.publish_with_headers(first.to_string().as_bytes(), headers)
        .await;
    let event = env.next_event().await;
    assert_eq!(account_of(&event), made[0].0);
    assert_eq!(env.payer.member_accounts().await.len(), 1, "one account");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_account_whose_answer_is_lost_is_waited_for_and_found() {
    let mut env = TestEnv::fast(RETRIES).await;
    proxy(&env).update(|f| f.lost_create_answers = 1);
    let worker = env.spawn_worker().await;
    let started = Instant::now();
    let email = format!("lost-{}@customer.example", crate::support::digits(8));
    env.publish_json(&root_order_for(&email)).await;
    let event = env.next_event().await;
    account_of(&event);
    let waited = started.elapsed();
    let stats = proxy(&env).stats();
    println!("gate: a lost CreateAccount answer: provisioned after {waited:?}, {stats:?}");
    assert_eq!(stats.lost_answers, 1, "{stats:?}");
    assert_eq!(
        stats.calls_of("CreateAccount"),
        1,
        "no second CreateAccount: {stats:?}"
    );
    assert!(
        waited >= Duration::from_secs(3),
        "the next attempt waited: {waited:?}"
    );
    assert_eq!(env.payer.member_accounts().await.len(), 1);
    env.finish(worker).await;
}
