//! Transient AWS failures are retried through the broker's delay queues with growing delays,
//! then dead-lettered with their history.

use aws_sdk_sts::config::Credentials;

use crate::support::{Payer, TestEnv, header_text, moto_config, order};

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_aws_is_retried_with_growing_delays_then_dead_lettered() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let payer = Payer::new().await;
    let down = moto_config(
        &format!("http://127.0.0.1:{closed_port}"),
        Credentials::new("testing", "testing", None, None, "down"),
    );
    let mut env = TestEnv::with_aws(
        r#"
        [retry]
        initial_delay_ms = 200
        max_delay_ms = 400
        max_attempts = 3
        "#,
        payer,
        down,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
    assert_eq!(event["request_id"], order["id"]);
    assert_eq!(event["reason"], "AWS_UNREACHABLE");
    assert_eq!(event["attempts"], 3);

    let dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 1);
    let (headers, body) = &dlq[0];
    assert_eq!(body, &order.to_string().into_bytes());
    assert_eq!(header_text(headers, "x-attempts").as_deref(), Some("3"));
    assert_eq!(
        header_text(headers, "x-failure-reason").as_deref(),
        Some("AWS_UNREACHABLE")
    );
    assert!(header_text(headers, "x-failure-message").is_some_and(|m| m.contains("CreateAccount")));
    let time = |key| {
        let text = header_text(headers, key).expect(key);
        chrono::DateTime::parse_from_rfc3339(&text).unwrap_or_else(|e| panic!("{key}: {text}: {e}"))
    };
    let waited = time("x-last-failed-at") - time("x-first-failed-at");
    // Two waits: at least half of 200 ms, then at least half of 400 ms.
    assert!(
        waited.num_milliseconds() >= 300,
        "retries waited only {waited}"
    );
    assert!(env.payer.member_accounts().await.is_empty());

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_aws_error_is_dead_lettered_at_once_with_the_progress() {
    // A well-formed SCP id that does not exist: AttachPolicy fails after the account was made.
    let mut env = TestEnv::new(
        r#"
        [business_model]
        service_control_policies = ["p-doesnotexist"]
        "#,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = order(&[], &[]);
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.dead-lettered", "{event}");
    assert_eq!(event["reason"], "PolicyNotFoundException");
    assert_eq!(event["attempts"], 1, "no retries for a permanent error");

    let accounts = env.payer.member_accounts().await;
    assert_eq!(
        accounts.len(),
        1,
        "the account was created before AttachPolicy failed"
    );
    let dlq = env.drain_dlq().await;
    assert_eq!(dlq.len(), 1);
    let (headers, _) = &dlq[0];
    assert_eq!(header_text(headers, "x-attempts").as_deref(), Some("1"));
    assert_eq!(
        header_text(headers, "x-account-id").as_deref(),
        Some(accounts[0].0.as_str()),
        "a replay resumes from the account instead of creating another"
    );
    assert!(header_text(headers, "x-create-request-id").is_some_and(|id| id.starts_with("car-")));

    env.finish(worker).await;
}
