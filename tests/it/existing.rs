//! An existing account brought in by invitation (`order_mode = existing_account`), against the
//! real broker and moto. moto has no handshakes: the fault proxy answers for them, hides the
//! existing account from the worker until its invitation is accepted, and then tags it in moto
//! with the invitation's tags, as AWS does when the account joins.

use std::time::Duration;

use serde_json::Value;

use crate::faults::{Answer, FaultProxy, Faults, Invitations};
use crate::support::{
    DEADLINE, Payer, TestEnv, WorkerProcess, digits, moto_config, moto_fast_endpoint, new_ou,
    order, parent_of, root_of, write_config,
};

/// The existing-account template id the tests configure.
const TEMPLATE: &str = "TL-123-456-789";

/// A test's world: the payer's organization with an OU, the proxy in front of moto, and
/// settings that place existing accounts in that OU with the payer's SCP, retrying quickly.
struct World {
    env: TestEnv,
    proxy: FaultProxy,
    ou: String,
}

async fn world(faults: Faults) -> World {
    let proxy = FaultProxy::start(&moto_fast_endpoint(), faults).await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let ou = new_ou(&payer).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let toml = format!(
        r#"
[retry]
initial_delay_ms = 200
max_delay_ms = 800
max_attempts = 4

[business_model]
service_control_policies = ["{{scp}}"]
organizational_unit_id = "{ou}"
existing_account_template_id = "{TEMPLATE}"
"#
    );
    let env = TestEnv::with_aws(&toml, payer, aws).await;
    World { env, proxy, ou }
}

/// An account made in moto directly (so that it has an id), tagged with `tags`: the customer's
/// existing account.
async fn existing_account(payer: &Payer, tags: &[(&str, &str)]) -> String {
    let mut request = payer
        .organizations()
        .create_account()
        .email(format!("existing-{}@customer.example", digits(10)))
        .account_name(format!("Existing {}", digits(6)));
    for (key, value) in tags {
        request = request.tags(
            aws_sdk_organizations::types::Tag::builder()
                .key(*key)
                .value(*value)
                .build()
                .expect("tag"),
        );
    }
    let created = request.send().await.expect("moto creates the account");
    created
        .create_account_status()
        .and_then(|s| s.account_id())
        .expect("moto's account id")
        .to_owned()
}

/// The account's tags in moto, as (key, value).
async fn tags_of(payer: &Payer, account: &str) -> Vec<(String, String)> {
    let listed = payer
        .organizations()
        .list_tags_for_resource()
        .resource_id(account)
        .send()
        .await
        .expect("list tags");
    listed
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// An existing-account purchase of `account`.
fn existing_order(account: &str) -> Value {
    order(
        &[
            ("order_mode", "existing_account"),
            ("aws_account_id", account),
        ],
        &[],
    )
}

fn assert_invited(event: &Value, order: &Value, account: &str) -> String {
    assert_eq!(event["event"], "aws.account.invited", "{event}");
    assert_eq!(event["request_id"], order["id"], "{event}");
    assert_eq!(event["account"]["id"], account, "{event}");
    let expires = event["expires_at"].as_str().expect("expires_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(expires).is_ok(),
        "{expires}"
    );
    let id = event["handshake_id"].as_str().expect("handshake_id");
    assert!(id.starts_with("h-"), "{event}");
    id.to_owned()
}

/// Asserts that the worker changed nothing in AWS: no invitation beyond `invites`, no tag,
/// move or SCP attached.
fn assert_nothing_changed(proxy: &FaultProxy, invites: u64) {
    let stats = proxy.stats();
    assert_eq!(stats.calls_of("InviteAccountToOrganization"), invites);
    for operation in ["TagResource", "MoveAccount", "AttachPolicy"] {
        assert_eq!(stats.calls_of(operation), 0, "{operation}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_accepted_after_a_while_is_placed_and_reported_once_invited() {
    let World { mut env, proxy, ou } = world(Faults {
        invitations: Invitations::OpenFor {
            describes: 3,
            then: Answer::Accepted,
        },
        ..Faults::default()
    })
    .await;
    let account = existing_account(&env.payer, &[]).await;
    proxy.hide(&account);
    let worker = env.spawn_worker().await;
    let order = existing_order(&account);
    env.publish_json(&order).await;

    let first = env.next_event().await;
    eprintln!("invited event: {first}");
    let handshake = assert_invited(&first, &order, &account);
    // Delivered again while the invitation is open.
    env.publish_json(&order).await;

    let mut provisioned = Vec::new();
    while provisioned.len() < 2 {
        let event = env.next_event().await;
        match event["event"].as_str() {
            Some("aws.account.invited") => {
                assert_eq!(event["handshake_id"], handshake.as_str(), "{event}");
            }
            Some("aws.account.provisioned") => provisioned.push(event),
            _ => panic!("unexpected event {event}"),
        }
    }
    eprintln!("provisioned event: {}", provisioned[0]);
    for event in &provisioned {
        assert_eq!(event["request_id"], order["id"]);
        assert_eq!(event["account"]["id"], account.as_str());
        assert_eq!(event["account"]["create_request_id"], Value::Null);
        assert!(event["account"]["email"].as_str().is_some(), "{event}");
        assert_eq!(event["access"]["kind"], "existing");
        assert_eq!(
            event["access"]["console_url"],
            format!("https://{account}.signin.aws.amazon.com/console")
        );
        assert_eq!(
            event["service_control_policies"],
            serde_json::json!([env.payer.scp_id])
        );
        assert_eq!(event["template"]["name"], "existing_account");
        assert_eq!(event["template"]["id"], TEMPLATE);
        assert_eq!(
            event["template"]["params"]["aws_account_id"],
            account.as_str()
        );
        assert_eq!(
            event["template"]["params"]["aws_account_email"],
            event["account"]["email"]
        );
    }
    let stats = proxy.stats();
    assert_eq!(
        stats.calls_of("InviteAccountToOrganization"),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.calls_of("MoveAccount"), 1, "{stats:?}");
    assert_eq!(stats.calls_of("AttachPolicy"), 1, "{stats:?}");
    assert_eq!(parent_of(&env.payer, &account).await, ou);
    // moto attaches FullAWSAccess to every account; ours is the one the worker attached.
    assert!(
        env.payer
            .scps_of(&account)
            .await
            .contains(&env.payer.scp_id)
    );
    let asset = order["asset"]["id"].as_str().expect("asset id");
    assert!(
        tags_of(&env.payer, &account)
            .await
            .contains(&("connect:asset-id".to_owned(), asset.to_owned())),
        "the invitation's tags are on the account"
    );
    assert_eq!(
        proxy.invitations(),
        [(handshake, account.clone(), "ACCEPTED".to_owned())]
    );

    env.finish(worker).await;
}

/// An invitation that ends unaccepted (`answer`) is reported with `code`; nothing changes.
async fn an_invitation_ending(answer: Answer, code: &str) {
    let World { mut env, proxy, .. } = world(Faults {
        invitations: Invitations::OpenFor {
            describes: 1,
            then: answer,
        },
        ..Faults::default()
    })
    .await;
    let account = existing_account(&env.payer, &[]).await;
    proxy.hide(&account);
    let worker = env.spawn_worker().await;
    let order = existing_order(&account);
    env.publish_json(&order).await;

    let invited = env.next_event().await;
    assert_invited(&invited, &order, &account);
    let failed = env.next_event().await;
    eprintln!("failed event: {failed}");
    assert_eq!(failed["event"], "aws.account.failed", "{failed}");
    assert_eq!(failed["request_id"], order["id"]);
    assert_eq!(failed["failure"]["code"], code, "{failed}");
    assert_eq!(failed["failure"]["action"], "inquire");
    assert_eq!(failed["failure"]["param_id"], "aws_account_id");
    assert_nothing_changed(&proxy, 1);
    assert_eq!(
        parent_of(&env.payer, &account).await,
        root_of(&env.payer).await
    );
    assert!(tags_of(&env.payer, &account).await.is_empty());

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_invitation_fails_and_changes_nothing() {
    an_invitation_ending(Answer::Declined, "INVITATION_DECLINED").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_invitation_fails_and_changes_nothing() {
    an_invitation_ending(Answer::Expired, "INVITATION_EXPIRED").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_in_another_organization_is_not_eligible() {
    let account = digits(12);
    let World { mut env, proxy, .. } = world(Faults {
        in_another_organization: vec![account.clone()],
        ..Faults::default()
    })
    .await;
    let worker = env.spawn_worker().await;
    let order = existing_order(&account);
    env.publish_json(&order).await;

    let failed = env.next_event().await;
    eprintln!("failed event: {failed}");
    assert_eq!(failed["event"], "aws.account.failed", "{failed}");
    assert_eq!(
        failed["failure"]["code"], "ACCOUNT_NOT_ELIGIBLE",
        "{failed}"
    );
    assert_eq!(failed["failure"]["action"], "inquire");
    assert_eq!(failed["failure"]["param_id"], "aws_account_id");
    let message = failed["failure"]["message"].as_str().expect("message");
    assert!(message.contains("ALREADY_IN_AN_ORGANIZATION"), "{message}");
    assert_nothing_changed(&proxy, 1);

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_under_another_assets_tag_is_not_eligible_and_untouched() {
    let World { mut env, proxy, .. } = world(Faults::default()).await;
    let other = format!("AS-{}-{}-{}", digits(4), digits(4), digits(4));
    let account = existing_account(&env.payer, &[("connect:asset-id", &other)]).await;
    let worker = env.spawn_worker().await;
    let order = existing_order(&account);
    env.publish_json(&order).await;

    let failed = env.next_event().await;
    assert_eq!(failed["event"], "aws.account.failed", "{failed}");
    assert_eq!(
        failed["failure"]["code"], "ACCOUNT_NOT_ELIGIBLE",
        "{failed}"
    );
    assert!(
        !failed["failure"]["message"]
            .as_str()
            .expect("message")
            .contains(&other),
        "another customer's asset id is not given out: {failed}"
    );
    assert_nothing_changed(&proxy, 0);
    assert_eq!(
        parent_of(&env.payer, &account).await,
        root_of(&env.payer).await
    );
    assert!(
        !env.payer
            .scps_of(&account)
            .await
            .contains(&env.payer.scp_id)
    );

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_while_the_invitation_is_open_ends_once_after_a_restart() {
    let World { mut env, proxy, .. } = world(Faults {
        invitations: Invitations::Takes {
            duration: Duration::from_secs(4),
            then: Answer::Accepted,
        },
        ..Faults::default()
    })
    .await;
    let account = existing_account(&env.payer, &[]).await;
    proxy.hide(&account);
    let config = write_config(&env.toml);
    let mut first = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    let order = existing_order(&account);
    env.publish_json(&order).await;

    let invited = env.next_event().await;
    let handshake = assert_invited(&invited, &order, &account);
    // The order now waits on the invitation, looked at again every few hundred ms. AWS slows
    // down; once the worker's next look is at AWS (it holds the delivery, unacknowledged),
    // kill -9.
    proxy.update(|faults| faults.delay = Duration::from_millis(500));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while proxy.stats().calls_of("DescribeHandshake") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never looked at its invitation: {}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("KILL");
    first.exit(Duration::from_secs(10)).await;
    proxy.update(|faults| faults.delay = Duration::ZERO);
    let second = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;

    let mut provisioned = 0;
    while let Some(event) = env
        .next_event_within(if provisioned == 0 {
            DEADLINE
        } else {
            Duration::from_secs(3)
        })
        .await
    {
        match event["event"].as_str() {
            Some("aws.account.invited") => {
                assert_eq!(event["handshake_id"], handshake.as_str(), "{event}");
            }
            Some("aws.account.provisioned") => {
                assert_eq!(event["account"]["id"], account.as_str());
                provisioned += 1;
            }
            _ => panic!("unexpected event {event}: {}", second.log_tail()),
        }
    }
    assert_eq!(provisioned, 1, "{}", second.log_tail());
    assert_eq!(
        proxy.stats().calls_of("InviteAccountToOrganization"),
        1,
        "one invitation"
    );
    drop(second);
    env.cleanup().await;
}
