//! `ConcurrentModificationException` is retried inside the AWS SDK, and each SCP attached is
//! remembered: with half of the answers of the placement's calls refused so, orders with an OU
//! and several SCPs are all provisioned within few message attempts, each account in its OU
//! with all its SCPs. moto (without managed policies: root-user orders) behind the fault proxy.

use aws_sdk_organizations::types::PolicyType;
use serde_json::Value;

use crate::faults::{FaultProxy, Faults};
use crate::support::{
    Payer, TestEnv, assert_one_account_per_order, digits, moto_config, moto_fast_endpoint, new_ou,
    provisioned_events, root_order,
};

/// A second SCP in the payer's organization.
async fn another_scp(payer: &Payer) -> String {
    let policy = payer
        .organizations()
        .create_policy()
        .name(format!("deny-close-{}", digits(8)))
        .description("test SCP")
        .r#type(PolicyType::ServiceControlPolicy)
        .content(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"account:CloseAccount","Resource":"*"}]}"#)
        .send()
        .await
        .expect("create SCP");
    policy
        .policy()
        .and_then(|p| p.policy_summary())
        .and_then(|s| s.id())
        .expect("policy id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn half_of_the_placement_calls_refused_as_concurrent_modifications_dead_letter_nothing() {
    let faults = Faults {
        concurrent_modification_share: 0.5,
        concurrent_modification_operations: vec!["AttachPolicy", "TagResource", "MoveAccount"],
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&moto_fast_endpoint(), faults).await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let second = another_scp(&payer).await;
    let ou = new_ou(&payer).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let toml = format!(
        r#"
[retry]
initial_delay_ms = 100
max_delay_ms = 1000
max_attempts = 4

[business_model]
service_control_policies = ["{{scp}}", "{second}"]
organizational_unit_id = "{ou}"
"#
    );
    let mut env = TestEnv::with_aws(&toml, payer, aws).await;
    let worker = env.spawn_worker().await;
    let orders: Vec<Value> = (0..20).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();

    // Every event is a provisioned one (a dead-lettered order would fail here).
    let events = provisioned_events(&mut env, &ids).await;
    assert_eq!(events.len(), 20);
    assert_one_account_per_order(&env, &events).await;
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");

    let mut expected = vec![env.payer.scp_id.clone(), second.clone()];
    expected.sort();
    let orgs = env.payer.organizations();
    for order_events in events.values() {
        let account = order_events[0]["account"]["id"].as_str().expect("account");
        // moto attaches AWS's own `FullAWSAccess` to every account.
        let mut scps: Vec<String> = env
            .payer
            .scps_of(account)
            .await
            .into_iter()
            .filter(|id| id != "p-FullAWSAccess")
            .collect();
        scps.sort();
        assert_eq!(scps, expected, "{account} has all its SCPs");
        assert_eq!(
            order_events[0]["service_control_policies"],
            serde_json::json!([env.payer.scp_id, second])
        );
        let parents = orgs
            .list_parents()
            .child_id(account)
            .send()
            .await
            .expect("list parents");
        assert_eq!(
            parents.parents()[0].id(),
            Some(ou.as_str()),
            "{account} in its OU"
        );
    }
    let stats = proxy.stats();
    assert!(stats.concurrent_modifications > 0, "{stats:?}");
    let (_, metrics) = worker.get("/metrics").await;
    let retried: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("aws_account_worker_orders_retried_total"))
        .collect();
    println!(
        "20 orders, 20 accounts, each in its OU with 2 SCPs: {} ConcurrentModificationException answers of {} calls; message retries: {retried:?}",
        stats.concurrent_modifications, stats.calls
    );
    env.finish(worker).await;
}
