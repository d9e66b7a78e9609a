//! Multi-Payer (docs/contract.md §4): two payers as two moto accounts, each with its own organization.
//! The worker's own credentials are payer A's (`default`); payer B is reached by assuming a
//! role in B's account. An OPCO of a multi_payer marketplace provisions in B, every other order
//! in A; the account is moved to the configured OU; `template.id` follows the layers.

use std::time::Duration;

use serde_json::Value;

use crate::observability::sample;
use crate::support::{
    DEADLINE, Payer, TestEnv, digits, moto_endpoint, moto_fast_endpoint, new_ou, order_for,
    parent_of, provisioned_events, root_of,
};

const MULTI: &str = "MP-91673";
const OPCO: &str = "TA-0-9046-4815-5226";
const OTHER_OPCO: &str = "TA-0-1111-2222-3333";

/// Ids of the payer's member accounts.
async fn member_ids(payer: &Payer) -> Vec<String> {
    let mut ids: Vec<String> = payer
        .member_accounts()
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

/// An ECAM root-user order of `marketplace` from `tier1`.
fn root_order_for(marketplace: &str, tier1: &str) -> Value {
    order_for(
        marketplace,
        Some(tier1),
        &[(
            "aws_account_email",
            &format!("root-{}@customer.example", digits(10)),
        )],
        &[
            ("awsAccountModel", "ECAM"),
            ("provideRootUserForECAM", "Yes"),
        ],
    )
}

/// The configuration of the two-payer world: global settings in A; `MP-91673` multi_payer
/// with its own template id; its OPCO `TA-0-9046-4815-5226` in B, placed in `ou`, with B's SCP
/// and a template id of its own; `MP-22222` without multi_payer, whose identical OPCO section
/// must be ignored.
fn two_payers(b: &Payer, ou: &str) -> String {
    format!(
        r#"
        [business_model]
        service_control_policies = ["{{scp}}"]
        root_user_template_id = "TL-100-000-001"
        iam_user_template_id = "TL-100-000-002"

        [payers.b]
        role_arn = "arn:aws:iam::{b_account}:role/payer"

        [marketplaces."{MULTI}"]
        multi_payer = true
        root_user_template_id = "TL-200-000-001"

        [marketplaces."{MULTI}".opcos."{OPCO}"]
        payer = "b"
        organizational_unit_id = "{ou}"
        service_control_policies = ["{b_scp}"]
        root_user_template_id = "TL-300-000-001"
        iam_user_template_id = "TL-300-000-002"

        [marketplaces."MP-22222"]
        multi_payer = false

        [marketplaces."MP-22222".opcos."{OPCO}"]
        payer = "b"
        root_user_template_id = "TL-999-999-999"
        "#,
        b_account = b.account_id,
        b_scp = b.scp_id,
    )
}

/// Two payers in `endpoint`'s moto; the worker runs with A's credentials.
async fn two_payer_env(endpoint: &str) -> (TestEnv, Payer, String) {
    let a = Payer::on(endpoint).await;
    let b = Payer::on(endpoint).await;
    let ou = new_ou(&b).await;
    // Through the fault proxy, which refuses an email in use as AWS does (moto does not).
    let proxy = crate::faults::FaultProxy::start(endpoint, crate::faults::Faults::default()).await;
    let config = crate::support::moto_config(&proxy.endpoint, a.credentials.clone());
    let mut env = TestEnv::with_aws(&two_payers(&b, &ou), a, config).await;
    env.proxy = Some(proxy);
    (env, b, ou)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opco_of_a_multi_payer_marketplace_provisions_in_payer_b_and_every_other_order_in_a() {
    let (mut env, b, ou) = two_payer_env(&moto_fast_endpoint()).await;
    let worker = env.spawn_worker().await;
    // (order, payer, template id)
    let orders = [
        (root_order_for(MULTI, OPCO), "b", "TL-300-000-001"),
        (
            root_order_for(MULTI, OTHER_OPCO),
            "default",
            "TL-200-000-001",
        ),
        (
            root_order_for("MP-22222", OPCO),
            "default",
            "TL-100-000-001",
        ),
        (
            root_order_for("MP-33333", OPCO),
            "default",
            "TL-100-000-001",
        ),
    ];
    for (order, ..) in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders
        .iter()
        .map(|(o, ..)| o["id"].as_str().expect("id").to_owned())
        .collect();
    let events = provisioned_events(&mut env, &ids).await;

    let mut in_a = Vec::new();
    for ((order, payer, template), id) in orders.iter().zip(&ids) {
        let event = &events[id][0];
        assert_eq!(event["payer"], *payer, "{order}\n{event}");
        assert_eq!(event["template"]["name"], "root_user");
        assert_eq!(event["template"]["id"], *template, "{event}");
        let account = event["account"]["id"].as_str().expect("account id");
        if *payer == "default" {
            in_a.push(account.to_owned());
            assert_eq!(
                event["service_control_policies"],
                serde_json::json!([env.payer.scp_id])
            );
            assert_eq!(
                parent_of(&env.payer, account).await,
                root_of(&env.payer).await,
                "no OU configured: A's accounts stay under the root"
            );
        } else {
            assert_eq!(
                member_ids(&b).await,
                [account],
                "B holds the OPCO's account only"
            );
            assert_eq!(
                event["service_control_policies"],
                serde_json::json!([b.scp_id])
            );
            assert!(b.scps_of(account).await.contains(&b.scp_id));
            assert_eq!(parent_of(&b, account).await, ou, "moved to the OPCO's OU");
        }
    }
    in_a.sort();
    assert_eq!(
        member_ids(&env.payer).await,
        in_a,
        "A holds every other account, and not B's"
    );
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_b_order_delivered_again_is_found_in_b_creates_nothing_and_is_not_moved_again() {
    let (mut env, b, ou) = two_payer_env(&moto_fast_endpoint()).await;
    let worker = env.spawn_worker().await;
    let order = root_order_for(MULTI, OPCO);
    env.publish_json(&order).await;
    let first = env.next_event().await;
    assert_eq!(first["event"], "aws.account.provisioned", "{first}");
    let account = first["account"]["id"]
        .as_str()
        .expect("account id")
        .to_owned();

    // The same order again, without progress headers (as a replay or a resend): the gate looks
    // in B and finds it.
    env.publish_json(&order).await;
    let second = env.next_event().await;
    assert_eq!(second["event"], "aws.account.provisioned", "{second}");
    assert_eq!(second["payer"], "b");
    assert_eq!(
        second["account"]["id"],
        account.as_str(),
        "the same account"
    );

    assert_eq!(member_ids(&b).await, [account.as_str()], "one account in B");
    assert_eq!(
        member_ids(&env.payer).await,
        Vec::<String>::new(),
        "none in A"
    );
    assert_eq!(parent_of(&b, &account).await, ou, "still in its OU");

    // Counts are taken once a delivery is acknowledged: wait for both provisioned deliveries
    // (the second may have waited once, ORDER_BUSY, while the first still held its email).
    // One creation (the second delivery's CreateAccount is refused by AWS, EMAIL_ALREADY_EXISTS,
    // and the walk finds the account), one move, and a look at the account's place per
    // provisioned delivery.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let text = loop {
        let (_, text) = worker.get("/metrics").await;
        let settled = sample(&text, "aws_account_worker_orders_provisioned_total") == Some(2.0)
            && sample(&text, "aws_account_worker_orders_in_flight") == Some(0.0);
        if settled {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "2 orders provisioned: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (operation, calls) in [
        ("CreateAccount", 2.0),
        ("MoveAccount", 1.0),
        ("ListParents", 2.0),
    ] {
        let name = format!(
            "aws_account_worker_aws_calls_total{{operation=\"{operation}\",outcome=\"ok\"}}"
        );
        assert_eq!(sample(&text, &name), Some(calls), "{name} in\n{text}");
    }
    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_iam_user_of_a_b_order_is_made_through_bs_credentials() {
    // IAM users need the managed policies: the moto that has them.
    let (mut env, b, _) = two_payer_env(&moto_endpoint()).await;
    let worker = env.spawn_worker().await;
    let order = order_for(
        MULTI,
        Some(OPCO),
        &[("iam_user_name", "opco.admin")],
        &[("awsAccountModel", "SPAM")],
    );
    env.publish_json(&order).await;
    let event = env.next_event().await;
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    assert_eq!(event["payer"], "b");
    assert_eq!(event["template"]["name"], "iam_user");
    assert_eq!(event["template"]["id"], "TL-300-000-002");
    let account = event["account"]["id"].as_str().expect("account id");
    assert_eq!(member_ids(&b).await, [account]);
    let user = b
        .member_iam(account)
        .await
        .get_user()
        .user_name("opco.admin")
        .send()
        .await
        .expect("the IAM user exists in B's new account");
    assert!(user.user().is_some());
    env.finish(worker).await;
}
