//! Orders end to end: SPAM, ECAM with an IAM user or the root user, business failures, and
//! OPCO overrides.

use serde_json::Value;

use crate::support::{PROVIDER_DOMAIN, TestEnv, order, order_for};

const CUSTOMER_EMAIL: &str = "it-admin@hospitaller.example";

/// The fields every event starts with, checked against the order.
fn assert_envelope(event: &Value, name: &str, order: &Value) {
    assert_eq!(event["event"], name, "{event}");
    assert!(event["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    let at = event["occurred_at"].as_str().expect("occurred_at");
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    assert_eq!(event["request_id"], order["id"]);
    assert_eq!(event["asset_id"], order["asset"]["id"]);
    assert_eq!(event["marketplace_id"], order["asset"]["marketplace"]["id"]);
    assert_eq!(event["tier1_id"], order["asset"]["tiers"]["tier1"]["id"]);
}

fn account_id(event: &Value) -> String {
    let id = event["account"]["id"]
        .as_str()
        .expect("account id")
        .to_owned();
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn spam_order_gets_an_account_on_the_provider_domain_an_iam_user_and_the_scps() {
    let mut env = TestEnv::new(
        r#"
        [business_model]
        account_model = "SPAM"
        service_control_policies = ["{scp}"]
        iam_user_template_id = "TL-111-222-333"
        "#,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = order(&[("iam_user_name", "marc.serrat")], &[]);
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_envelope(&event, "aws.account.provisioned", &order);
    assert_eq!(event["business_model"], "SPAM");
    assert_eq!(event["payer"], "default");
    let id = account_id(&event);
    let asset = order["asset"]["id"]
        .as_str()
        .expect("asset id")
        .to_lowercase();
    let email = format!("aws+{asset}@{PROVIDER_DOMAIN}");
    assert_eq!(event["account"]["email"], email);
    assert_eq!(
        event["account"]["name"],
        format!(
            "{} 1234567 Hospitaller",
            order["asset"]["id"].as_str().expect("id")
        )
    );
    assert!(
        event["account"]["create_request_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("car-")),
        "{event}"
    );

    let access = &event["access"];
    let console = format!("https://{id}.signin.aws.amazon.com/console");
    assert_eq!(access["kind"], "iam_user");
    assert_eq!(access["iam_user_name"], "marc.serrat");
    assert_eq!(access["console_url"], console);
    assert_eq!(access["password_reset_required"], true);
    let password = access["initial_password"].as_str().expect("password");
    assert!(password.len() >= 20, "password too short");
    assert_eq!(
        event["service_control_policies"],
        serde_json::json!([env.payer.scp_id])
    );
    let template = &event["template"];
    assert_eq!(template["name"], "iam_user");
    assert_eq!(template["id"], "TL-111-222-333");
    assert_eq!(template["params"]["aws_account_id"], id.as_str());
    assert_eq!(template["params"]["aws_account_email"], email);
    assert_eq!(template["params"]["iam_user_name"], "marc.serrat");
    assert_eq!(template["params"]["iam_console_url"], console);
    assert_eq!(template["params"]["iam_initial_password"], password);

    // In AWS: one account with that email, tagged with the order, the SCP attached, and the
    // IAM user inside the member account with a login profile and the policy.
    assert_eq!(
        env.payer.accounts_with_email(&email).await,
        vec![id.clone()]
    );
    let tags = env
        .payer
        .organizations()
        .list_tags_for_resource()
        .resource_id(&id)
        .send()
        .await
        .expect("tags");
    let tag = |key: &str| {
        tags.tags()
            .iter()
            .find(|t| t.key() == key)
            .map(|t| t.value().to_owned())
    };
    assert_eq!(tag("connect:request-id").as_deref(), order["id"].as_str());
    assert_eq!(
        tag("connect:asset-id").as_deref(),
        order["asset"]["id"].as_str()
    );
    assert_eq!(tag("connect:marketplace-id").as_deref(), Some("MP-91673"));
    assert!(env.payer.scps_of(&id).await.contains(&env.payer.scp_id));
    let iam = env.payer.member_iam(&id).await;
    let user = iam
        .get_user()
        .user_name("marc.serrat")
        .send()
        .await
        .expect("IAM user exists in the member account");
    assert!(
        user.user().is_some_and(|u| u.arn().contains(&id)),
        "user lives in account {id}"
    );
    // moto 5.2.5 ignores PasswordResetRequired on CreateLoginProfile, so only existence is checked.
    let profile = iam
        .get_login_profile()
        .user_name("marc.serrat")
        .send()
        .await
        .expect("login profile");
    assert!(
        profile
            .login_profile()
            .is_some_and(|p| p.user_name() == "marc.serrat")
    );
    let policies = iam
        .list_attached_user_policies()
        .user_name("marc.serrat")
        .send()
        .await
        .expect("policies");
    let arns: Vec<_> = policies
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn())
        .collect();
    assert_eq!(arns, ["arn:aws:iam::aws:policy/AdministratorAccess"]);

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecam_order_gets_the_customer_email_and_an_iam_user() {
    let mut env = TestEnv::new("").await;
    let worker = env.spawn_worker().await;
    let scps = format!(" {} ,", env.payer.scp_id);
    let order = order(
        &[("aws_account_email", "  IT-Admin@Hospitaller.example ")],
        &[
            ("awsAccountModel", "ECAM"),
            ("provideRootUserForECAM", "No"),
            ("provisionServiceControlPolicies", &scps),
        ],
    );
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_envelope(&event, "aws.account.provisioned", &order);
    assert_eq!(event["business_model"], "ECAM");
    assert_eq!(event["account"]["email"], CUSTOMER_EMAIL);
    let id = account_id(&event);
    assert_eq!(event["access"]["kind"], "iam_user");
    assert_eq!(
        event["access"]["iam_user_name"], "hospitaller",
        "derived from the customer name"
    );
    assert_eq!(event["template"]["name"], "iam_user");
    assert_eq!(event["template"]["id"], Value::Null);
    assert_eq!(
        event["service_control_policies"],
        serde_json::json!([env.payer.scp_id])
    );
    assert_eq!(
        env.payer.accounts_with_email(CUSTOMER_EMAIL).await,
        vec![id.clone()]
    );
    assert!(env.payer.scps_of(&id).await.contains(&env.payer.scp_id));
    let iam = env.payer.member_iam(&id).await;
    iam.get_user()
        .user_name("hospitaller")
        .send()
        .await
        .expect("IAM user exists in the member account");

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecam_order_with_root_user_gets_no_iam_user() {
    let mut env = TestEnv::new(
        r#"
        [business_model]
        root_user_template_id = "TL-999-888-777"
        "#,
    )
    .await;
    let worker = env.spawn_worker().await;
    let order = order(
        &[("aws_account_email", CUSTOMER_EMAIL)],
        &[
            ("awsAccountModel", "ECAM"),
            ("provideRootUserForECAM", "Yes"),
        ],
    );
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_envelope(&event, "aws.account.provisioned", &order);
    let id = account_id(&event);
    let access = &event["access"];
    assert_eq!(access["kind"], "root_user");
    assert_eq!(access["root_email"], CUSTOMER_EMAIL);
    assert_eq!(
        access["console_url"],
        format!("https://{id}.signin.aws.amazon.com/console")
    );
    assert!(
        access.get("initial_password").is_none(),
        "no password for the root user"
    );
    let template = &event["template"];
    assert_eq!(template["name"], "root_user");
    assert_eq!(template["id"], "TL-999-888-777");
    assert_eq!(
        template["params"],
        serde_json::json!({"aws_account_id": id, "aws_account_email": CUSTOMER_EMAIL})
    );
    let users = env
        .payer
        .member_iam(&id)
        .await
        .list_users()
        .send()
        .await
        .expect("list users");
    assert!(
        users.users().is_empty(),
        "no IAM user in a root-user account: {:?}",
        users.users()
    );

    env.finish(worker).await;
}

/// An ECAM order with `email` fails with INVALID_EMAIL, inquire, and creates nothing.
async fn assert_ecam_email_refused(email: &str) {
    let mut env = TestEnv::new("").await;
    let worker = env.spawn_worker().await;
    let order = order(
        &[("aws_account_email", email)],
        &[("awsAccountModel", "ECAM")],
    );
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_envelope(&event, "aws.account.failed", &order);
    assert_eq!(event["failure"]["code"], "INVALID_EMAIL", "{event}");
    assert_eq!(event["business_model"], "ECAM");
    assert_eq!(event["failure"]["action"], "inquire");
    assert_eq!(event["failure"]["param_id"], "aws_account_email");
    assert!(
        event["failure"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(
        env.payer.member_accounts().await.is_empty(),
        "no account is created"
    );

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecam_invalid_email_is_sent_back_to_the_customer() {
    assert_ecam_email_refused("it-admin@hospitaller").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecam_email_on_the_provider_domain_is_refused() {
    assert_ecam_email_refused(&format!("someone@{PROVIDER_DOMAIN}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_order_mode_is_unsupported_and_creates_nothing() {
    let mut env = TestEnv::new("").await;
    let worker = env.spawn_worker().await;
    let order = order(&[("order_mode", "transfer_account")], &[]);
    env.publish_json(&order).await;

    let event = env.next_event().await;
    assert_envelope(&event, "aws.account.failed", &order);
    assert_eq!(event["failure"]["code"], "UNSUPPORTED_ORDER_MODE");
    assert_eq!(event["failure"]["action"], "fail");
    assert_eq!(event["failure"]["param_id"], Value::Null);
    assert_eq!(event["business_model"], Value::Null);
    assert!(
        env.payer.member_accounts().await.is_empty(),
        "no account is created"
    );

    env.finish(worker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opco_override_beats_the_request_only_on_a_multi_payer_marketplace() {
    const OPCO: &str = "TA-0-9046-4815-5226";
    let mut env = TestEnv::new(&format!(
        r#"
        [marketplaces."MP-11111"]
        multi_payer = true
        [marketplaces."MP-11111".opcos."{OPCO}"]
        account_model = "SPAM"
        [marketplaces."MP-22222"]
        multi_payer = false
        [marketplaces."MP-22222".opcos."{OPCO}"]
        account_model = "SPAM"
        "#
    ))
    .await;
    let worker = env.spawn_worker().await;
    let ecam_request = [("awsAccountModel", "ECAM")];
    let multi = order_for(
        "MP-11111",
        Some(OPCO),
        &[("aws_account_email", "a@customer-a.example")],
        &ecam_request,
    );
    let single = order_for(
        "MP-22222",
        Some(OPCO),
        &[("aws_account_email", "b@customer-b.example")],
        &ecam_request,
    );
    env.publish_json(&multi).await;
    let first = env.next_event().await;
    env.publish_json(&single).await;
    let second = env.next_event().await;

    assert_envelope(&first, "aws.account.provisioned", &multi);
    assert_eq!(
        first["business_model"], "SPAM",
        "the OPCO override wins on a multi_payer marketplace"
    );
    assert!(
        first["account"]["email"]
            .as_str()
            .is_some_and(|e| e.ends_with(PROVIDER_DOMAIN)),
        "{first}"
    );
    assert_envelope(&second, "aws.account.provisioned", &single);
    assert_eq!(
        second["business_model"], "ECAM",
        "without multi_payer the OPCO override is ignored"
    );
    assert_eq!(second["account"]["email"], "b@customer-b.example");

    env.finish(worker).await;
}
