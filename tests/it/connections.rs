//! Real Connect order shapes against real AWS rules: `test` and `preview` connections go only
//! where `[connections]` sends them; `CreateAccount` makes the configured member role, which the
//! worker then uses; an IAM call refused inside a member account past the readiness window is
//! dead-lettered after one attempt (an SCP denying IAM, injected by the fault proxy: moto
//! evaluates no SCP), while inside the window it is retried.

use serde_json::{Value, json};

use crate::faults::{FaultProxy, Faults};
use crate::support::{
    Payer, TestEnv, assume, header_text, moto_config, moto_endpoint, moto_fast_endpoint, order,
    root_order,
};

/// `order` through a Connect connection of type `kind`.
fn through(mut order: Value, kind: &str) -> Value {
    order["asset"]["connection"] = json!({"id": "CT-0000-0000-0001", "type": kind});
    order
}

/// A test environment whose worker reaches AWS through a fault proxy in front of `endpoint`.
async fn behind_proxy(endpoint: &str, faults: Faults, extra: &str) -> (TestEnv, FaultProxy) {
    let payer = Payer::on(endpoint).await;
    let proxy = FaultProxy::start(endpoint, faults).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    (TestEnv::with_aws(extra, payer, aws).await, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn test_and_preview_orders_without_connections_fail_and_nothing_is_created() {
    let (mut env, proxy) = behind_proxy(&moto_fast_endpoint(), Faults::default(), "").await;
    let worker = env.spawn_worker().await;
    let orders = [
        through(root_order(), "test"),
        through(root_order(), "preview"),
    ];
    for order in &orders {
        env.publish_json(order).await;
    }
    for _ in &orders {
        let event = env.next_event().await;
        println!(
            "{}",
            serde_json::to_string_pretty(&event).expect("pretty JSON")
        );
        assert_eq!(event["event"], "aws.account.failed", "{event}");
        let failure = &event["failure"];
        assert_eq!(failure["code"], "CONNECTION_NOT_ALLOWED", "{event}");
        assert_eq!(failure["action"], "fail");
        assert_eq!(failure["param_id"], Value::Null);
        assert!(
            orders.iter().any(|o| o["id"] == event["request_id"]),
            "{event}"
        );
    }
    assert!(env.payer.member_accounts().await.is_empty(), "no account");
    assert_eq!(proxy.stats().calls, 0, "no AWS call at all");
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_order_lands_in_the_sandbox_payer_only() {
    let endpoint = moto_fast_endpoint();
    let production = Payer::on(&endpoint).await;
    let sandbox = Payer::on(&endpoint).await;
    let aws = production.config.clone();
    let extra = format!(
        r#"
        [business_model]
        service_control_policies = ["{{scp}}"]

        [payers.sandbox]
        role_arn = "arn:aws:iam::{sandbox}:role/payer"

        [connections]
        test = "sandbox"
        "#,
        sandbox = sandbox.account_id
    );
    let mut env = TestEnv::with_aws(&extra, production, aws).await;
    let worker = env.spawn_worker().await;
    let test = through(root_order(), "test");
    let real = through(root_order(), "production");
    env.publish_json(&test).await;
    env.publish_json(&real).await;

    let mut events = Vec::new();
    for _ in 0..2 {
        let event = env.next_event().await;
        assert_eq!(event["event"], "aws.account.provisioned", "{event}");
        events.push(event);
    }
    let of = |order: &Value| {
        events
            .iter()
            .find(|e| e["request_id"] == order["id"])
            .expect("an event for the order")
            .clone()
    };
    let (test_event, real_event) = (of(&test), of(&real));
    assert_eq!(test_event["payer"], "sandbox");
    assert_eq!(
        test_event["service_control_policies"],
        json!([]),
        "the production organization's SCP is not applied in the sandbox"
    );
    assert_eq!(real_event["payer"], "default");
    let test_account = test_event["account"]["id"].as_str().expect("id");
    let real_account = real_event["account"]["id"].as_str().expect("id");
    let ids = |accounts: Vec<(String, String)>| -> Vec<String> {
        accounts.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(sandbox.member_accounts().await), [test_account]);
    assert_eq!(ids(env.payer.member_accounts().await), [real_account]);
    assert!(
        env.payer
            .scps_of(real_account)
            .await
            .contains(&env.payer.scp_id)
    );
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_account_makes_the_configured_member_role_and_the_user_is_made_through_it() {
    let (mut env, proxy) = behind_proxy(
        &moto_endpoint(),
        Faults::default(),
        r#"
        [aws]
        member_role_name = "ConnectProvisioning"
        iam_user_access_to_billing = "DENY"
        "#,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = order(&[("iam_user_name", "jane.admin")], &[]);
    env.publish_json(&order).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    let account = event["account"]["id"].as_str().expect("id").to_owned();

    assert_eq!(
        proxy.stats().create_options,
        [("ConnectProvisioning".to_owned(), "DENY".to_owned())],
        "CreateAccount was asked for the role and the billing access"
    );
    let role = format!("arn:aws:iam::{account}:role/ConnectProvisioning");
    // Assumed to make the user, and again to tag it once the event is confirmed (that one may
    // come just after the event reaches the test): which roles, not how often.
    let mut assumed = proxy.stats().assumed_roles;
    assumed.dedup();
    assert_eq!(
        assumed,
        std::slice::from_ref(&role),
        "the worker entered the account through that role, and no other"
    );
    let credentials = assume(&env.payer.config, &role, "test-member").await;
    let iam = aws_sdk_iam::Client::new(&moto_config(&env.payer.endpoint, credentials));
    let made = iam
        .get_role()
        .role_name("ConnectProvisioning")
        .send()
        .await
        .expect("CreateAccount made the role from RoleName");
    assert!(
        made.role()
            .map(|r| r.assume_role_policy_document().unwrap_or_default())
            .is_some_and(|trust| trust.contains(&env.payer.account_id)),
        "the payer may assume it"
    );
    assert!(
        iam.get_role()
            .role_name("OrganizationAccountAccessRole")
            .send()
            .await
            .is_err(),
        "not the default role"
    );
    iam.get_user()
        .user_name("jane.admin")
        .send()
        .await
        .expect("the customer's user exists");
    env.finish(worker).await;
}

/// Settings for the refusal tests: the payer's SCP, quick retries.
fn refusal_settings(ready_seconds: u64, max_attempts: u32) -> String {
    format!(
        r#"
        [business_model]
        service_control_policies = ["{{scp}}"]

        [aws]
        member_account_ready_seconds = {ready_seconds}

        [retry]
        initial_delay_ms = 100
        max_delay_ms = 200
        max_attempts = {max_attempts}
        "#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_iam_call_refused_past_the_readiness_window_is_dead_lettered_after_one_attempt() {
    let faults = Faults {
        deny_iam: true,
        ..Faults::default()
    };
    let (mut env, proxy) =
        behind_proxy(&moto_fast_endpoint(), faults, &refusal_settings(0, 8)).await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    env.publish_json(&order).await;

    let event = env.next_event().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&event).expect("pretty JSON")
    );
    assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
    assert_eq!(event["reason"], "MEMBER_ACCESS_DENIED");
    assert_eq!(event["attempts"], 1, "one attempt, not eight");
    assert_eq!(proxy.stats().denied_iam, ["CreateUser"]);

    let dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 1);
    let (headers, _) = &dlq[0];
    let message = header_text(headers, "x-failure-message").expect("message");
    assert!(message.contains("step CreateUser"), "{message}");
    assert!(message.contains("service control policy"), "{message}");
    let account = header_text(headers, "x-account-id").expect("the account is known");
    assert!(
        !env.payer
            .scps_of(&account)
            .await
            .contains(&env.payer.scp_id),
        "the SCPs come after the user, so the configured one was not attached"
    );
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inside_the_readiness_window_a_refusal_is_retried() {
    let faults = Faults {
        deny_iam: true,
        ..Faults::default()
    };
    let (mut env, proxy) =
        behind_proxy(&moto_fast_endpoint(), faults, &refusal_settings(300, 2)).await;
    let worker = env.spawn_worker().await;
    env.publish_json(&order(&[], &[])).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
    assert_eq!(
        event["reason"], "AccessDenied",
        "transient while the account is new"
    );
    assert_eq!(event["attempts"], 2);
    assert_eq!(proxy.stats().denied_iam, ["CreateUser", "CreateUser"]);
    assert_eq!(proxy.stats().creations, 1, "the retry resumed the account");
    env.finish(worker).await;
}
