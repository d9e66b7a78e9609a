//! The demo's client (scripts/demo.sh): `setup` makes a fresh payer account in moto with an
//! organization and an SCP and prints shell exports for the worker; `publish FILE…` publishes
//! the sample orders and prints each order's result event readably.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_account_worker::broker::topology;
use aws_account_worker::config::Settings;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_organizations::types::{OrganizationFeatureSet, PolicyType};
use aws_sdk_sts::config::{Credentials, Region, SharedCredentialsProvider};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::RngExt;
use secrecy::ExposeSecret;
use serde_json::Value;

fn moto(credentials: Credentials) -> SdkConfig {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// A fresh moto account with an organization and one SCP; prints `export` lines.
async fn setup() -> anyhow::Result<()> {
    let account: String = (0..12)
        .map(|i| char::from(b'0' + rand::rng().random_range(u8::from(i == 0)..10)))
        .collect();
    let base = moto(Credentials::new("testing", "testing", None, None, "demo"));
    let assumed = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/demo-payer"))
        .role_session_name("demo")
        .send()
        .await
        .context("moto does not answer AssumeRole")?;
    let c = assumed.credentials().context("no credentials")?;
    let payer = moto(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "demo-payer",
    ));
    let orgs = aws_sdk_organizations::Client::new(&payer);
    orgs.create_organization()
        .feature_set(OrganizationFeatureSet::All)
        .send()
        .await?;
    let root = orgs.list_roots().send().await?.roots()[0]
        .id()
        .context("no root")?
        .to_owned();
    let _ = orgs
        .enable_policy_type()
        .root_id(root)
        .policy_type(PolicyType::ServiceControlPolicy)
        .send()
        .await;
    let policy = orgs
        .create_policy()
        .name("deny-leaving-the-organization")
        .description("Member accounts stay in the organization")
        .r#type(PolicyType::ServiceControlPolicy)
        .content(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"organizations:LeaveOrganization","Resource":"*"}]}"#)
        .send()
        .await?;
    let scp = policy
        .policy()
        .and_then(|p| p.policy_summary())
        .and_then(|s| s.id())
        .context("no policy id")?;
    println!("export AWS_ACCESS_KEY_ID='{}'", c.access_key_id());
    println!("export AWS_SECRET_ACCESS_KEY='{}'", c.secret_access_key());
    println!("export AWS_SESSION_TOKEN='{}'", c.session_token());
    println!("export WORKER__BUSINESS_MODEL__SERVICE_CONTROL_POLICIES='[\"{scp}\"]'");
    eprintln!("demo: payer account {account} with an organization and SCP {scp} in moto");
    Ok(())
}

/// Publishes each order file and prints the result event of each, in order of arrival.
async fn publish(files: &[String]) -> anyhow::Result<()> {
    let settings = Settings::load(Some(std::path::Path::new("examples/demo.toml")))?;
    let amqp = &settings.amqp;
    let connection =
        Connection::connect(amqp.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    topology::declare(&connection, amqp, &settings.retry).await?;
    let events = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let bind = QueueBindOptions::default();
    channel
        .queue_bind(
            events.name().clone(),
            amqp.results_exchange.as_str().into(),
            "#".into(),
            bind,
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            events.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut waiting = Vec::new();
    for file in files {
        let body = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        let order: Value = serde_json::from_slice(&body)?;
        waiting.push(order["id"].as_str().unwrap_or_default().to_owned());
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions::default();
        let key = amqp.orders_routing_key.as_str().into();
        let confirm = channel
            .basic_publish(
                amqp.orders_exchange.as_str().into(),
                key,
                options,
                &body,
                properties,
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            bail!("the broker did not confirm {file}");
        }
        eprintln!("demo: published {file} ({})", order["id"]);
    }
    while !waiting.is_empty() {
        let delivery = tokio::time::timeout(Duration::from_secs(120), consumer.next())
            .await
            .context("no result event within 120 s")?
            .context("event stream closed")??;
        delivery.ack(BasicAckOptions::default()).await?;
        let mut event: Value = serde_json::from_slice(&delivery.data)?;
        let request_id = event["request_id"].as_str().unwrap_or_default().to_owned();
        let Some(index) = waiting.iter().position(|id| *id == request_id) else {
            continue; // an event of some other order
        };
        waiting.remove(index);
        // The demo prints the event, not the customer's password.
        for pointer in [
            "/access/initial_password",
            "/template/params/iam_initial_password",
        ] {
            if let Some(password) = event.pointer_mut(pointer) {
                *password = Value::String(format!(
                    "<{} characters, not shown>",
                    password.as_str().map_or(0, str::len)
                ));
            }
        }
        println!(
            "── {} for {request_id}",
            event["event"].as_str().unwrap_or("?")
        );
        println!("{}", serde_json::to_string_pretty(&event)?);
    }
    connection.close(200, "demo done".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, [])) if command == "setup" => setup().await,
        Some((command, files)) if command == "publish" && !files.is_empty() => publish(files).await,
        _ => bail!("usage: demo setup | demo publish ORDER.json…"),
    }
}
