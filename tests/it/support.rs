//! Test support: a per-test environment (unique broker names, a moto payer account with an
//! organization and an SCP), an in-process worker, and helpers to publish orders and await
//! events with a deadline.

use std::time::Duration;

use aws_account_worker::broker::management::{Management, encode};
use aws_account_worker::broker::topology;
use aws_account_worker::config::Settings;
use aws_account_worker::startup::Application;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_organizations::types::{OrganizationFeatureSet, PolicyType};
use aws_sdk_sts::config::{Credentials, Region, SharedCredentialsProvider};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use rand::RngExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The provider domain every test configures.
pub const PROVIDER_DOMAIN: &str = "provider.example";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
}

/// A moto without AWS managed policies: creating an account there costs moto 5 ms instead of
/// 100 ms. For tests that create many accounts and attach no managed policy (root-user orders).
pub fn moto_fast_endpoint() -> String {
    std::env::var("MOTO_FAST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5001".to_owned())
}

/// A local port that refuses connections for as long as this value lives: a socket bound to it
/// but never listening. A port freed right after `bind(0)` is often the next one the kernel
/// hands to another test that listens on port 0 (a worker's metrics, a fault proxy), which then
/// answers where the test expected a refusal; holding the port prevents that.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind a free port");
        let port = socket.local_addr().expect("bound").port();
        Self {
            _socket: socket,
            port,
        }
    }
}

/// Random decimal digits, the first not zero.
pub fn digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            char::from(
                b'0' + if i == 0 {
                    rng.random_range(1..10)
                } else {
                    rng.random_range(0..10)
                },
            )
        })
        .collect()
}

/// An AWS config for moto with the given credentials (and the clock that assuming a payer's
/// role needs, as the SDK's loader sets it).
pub fn moto_config(endpoint: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .time_source(aws_smithy_async::time::SystemTimeSource::new())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// Temporary credentials for `role_arn` (moto hands them out for any account).
pub async fn assume(config: &SdkConfig, role_arn: &str, session: &str) -> Credentials {
    let assumed = aws_sdk_sts::Client::new(config)
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(session)
        .send()
        .await
        .expect("moto answers AssumeRole (is moto running? scripts/services.sh starts it)");
    let c = assumed.credentials().expect("credentials");
    Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "test",
    )
}

/// A moto account of its own, with an organization (all features, SCPs enabled) and one SCP.
pub struct Payer {
    /// The moto it lives in.
    pub endpoint: String,
    pub account_id: String,
    pub credentials: Credentials,
    pub config: SdkConfig,
    pub scp_id: String,
}

impl Payer {
    pub async fn new() -> Self {
        Self::on(&moto_endpoint()).await
    }

    /// A payer in the moto at `endpoint`.
    pub async fn on(endpoint: &str) -> Self {
        let endpoint = endpoint.to_owned();
        let base = moto_config(
            &endpoint,
            Credentials::new("testing", "testing", None, None, "test"),
        );
        let account_id = digits(12);
        let credentials = assume(
            &base,
            &format!("arn:aws:iam::{account_id}:role/payer"),
            "test-payer",
        )
        .await;
        let config = moto_config(&endpoint, credentials.clone());
        let orgs = aws_sdk_organizations::Client::new(&config);
        orgs.create_organization()
            .feature_set(OrganizationFeatureSet::All)
            .send()
            .await
            .expect("create organization");
        let roots = orgs.list_roots().send().await.expect("list roots");
        let root = roots.roots()[0].id().expect("root id").to_owned();
        // moto may already have the type enabled; either way it is enabled afterwards.
        let _ = orgs
            .enable_policy_type()
            .root_id(&root)
            .policy_type(PolicyType::ServiceControlPolicy)
            .send()
            .await;
        let policy = orgs
            .create_policy()
            .name(format!("deny-leave-{account_id}"))
            .description("test SCP")
            .r#type(PolicyType::ServiceControlPolicy)
            .content(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"organizations:LeaveOrganization","Resource":"*"}]}"#)
            .send()
            .await
            .expect("create SCP");
        let scp_id = policy
            .policy()
            .and_then(|p| p.policy_summary())
            .and_then(|s| s.id())
            .expect("policy id")
            .to_owned();
        Self {
            endpoint,
            account_id,
            credentials,
            config,
            scp_id,
        }
    }

    pub fn organizations(&self) -> aws_sdk_organizations::Client {
        aws_sdk_organizations::Client::new(&self.config)
    }

    /// Member accounts (not the management account) with this email.
    pub async fn accounts_with_email(&self, email: &str) -> Vec<String> {
        self.member_accounts()
            .await
            .into_iter()
            .filter(|(_, e)| e.eq_ignore_ascii_case(email))
            .map(|(id, _)| id)
            .collect()
    }

    /// Every member account as (id, email).
    pub async fn member_accounts(&self) -> Vec<(String, String)> {
        let mut accounts = Vec::new();
        let mut pages = self.organizations().list_accounts().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list accounts");
            accounts.extend(
                page.accounts()
                    .iter()
                    .filter(|a| a.id() != Some(self.account_id.as_str()))
                    .map(|a| {
                        (
                            a.id().unwrap_or_default().to_owned(),
                            a.email().unwrap_or_default().to_owned(),
                        )
                    }),
            );
        }
        accounts
    }

    /// IAM inside a member account, through its access role, as a customer would see it.
    pub async fn member_iam(&self, account_id: &str) -> aws_sdk_iam::Client {
        let role = format!("arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole");
        let credentials = assume(&self.config, &role, "test-member").await;
        aws_sdk_iam::Client::new(&moto_config(&self.endpoint, credentials))
    }

    /// SCP ids attached directly to an account.
    pub async fn scps_of(&self, account_id: &str) -> Vec<String> {
        let listed = self
            .organizations()
            .list_policies_for_target()
            .target_id(account_id)
            .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
            .send()
            .await
            .expect("list policies for target");
        listed
            .policies()
            .iter()
            .filter_map(|p| p.id())
            .map(str::to_owned)
            .collect()
    }
}

/// One test's world: settings with unique names, a payer in moto, a broker connection that
/// listens to every result event.
pub struct TestEnv {
    /// The TOML the settings were loaded from (over the defaults).
    pub toml: String,
    pub settings: Settings,
    pub payer: Payer,
    pub aws: SdkConfig,
    /// The fault proxy (injecting nothing but AWS's refusal of an email in use) that `new`
    /// and `fast` put between the worker and moto; `None` with [`TestEnv::with_aws`].
    pub proxy: Option<crate::faults::FaultProxy>,
    /// A durable queue bound to every result event: it outlives a broker restart.
    events_queue: String,
    connection: Connection,
    channel: Channel,
    events: Consumer,
}

/// The `[amqp]` section with names unique to `id`.
pub fn amqp_section(id: &str) -> String {
    format!(
        r#"
        [amqp]
        url = "{url}"
        orders_exchange = "test.orders.{id}"
        orders_queue = "test-orders.{id}"
        dead_letter_exchange = "test-orders.{id}.dlx"
        dead_letter_queue = "test-orders.{id}.dlq"
        retry_queue_prefix = "test-orders.{id}.retry"
        results_exchange = "test.results.{id}"
        unrouted_exchange = "test.results.{id}.unrouted"
        unrouted_queue = "test.results.{id}.unrouted"
        prefetch = 8
        "#,
        url = amqp_url()
    )
}

impl TestEnv {
    /// An environment whose settings are the defaults, unique broker names, the provider
    /// domain, and `extra` (TOML; `{scp}` stands for the payer's SCP id).
    /// The worker reaches moto through a fault proxy that injects nothing, but refuses an email
    /// in use as AWS does (moto accepts duplicates).
    pub async fn new(extra: &str) -> Self {
        Self::proxied(extra, &moto_endpoint()).await
    }

    /// Like `new`, in the moto without managed policies (for root-user orders only).
    pub async fn fast(extra: &str) -> Self {
        Self::proxied(extra, &moto_fast_endpoint()).await
    }

    async fn proxied(extra: &str, endpoint: &str) -> Self {
        let proxy =
            crate::faults::FaultProxy::start(endpoint, crate::faults::Faults::default()).await;
        let payer = Payer::on(endpoint).await;
        let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
        let mut env = Self::with_aws(extra, payer, aws).await;
        env.proxy = Some(proxy);
        env
    }

    /// Like `new`, with the worker talking to AWS through `aws` instead of the payer's config.
    pub async fn with_aws(extra: &str, payer: Payer, aws: SdkConfig) -> Self {
        let id = digits(10);
        let toml = format!(
            "{amqp}\n{extra}\n",
            amqp = amqp_section(&id),
            extra = extra.replace("{scp}", &payer.scp_id)
        );
        let toml = if toml.contains("[business_model]") {
            toml.replacen(
                "[business_model]",
                &format!("[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\""),
                1,
            )
        } else {
            format!("{toml}\n[business_model]\nprovider_email_domain = \"{PROVIDER_DOMAIN}\"\n")
        };
        let settings =
            Settings::from_toml(&toml).unwrap_or_else(|e| panic!("test settings: {e}\n{toml}"));
        let events_queue = format!("test.events.{id}");
        let (connection, channel, events) = open_events(&settings, &events_queue).await;
        Self {
            toml,
            settings,
            payer,
            aws,
            proxy: None,
            events_queue,
            connection,
            channel,
            events,
        }
    }

    /// Opens a new connection for events after the broker restarted; events published in
    /// between wait in the durable events queue.
    pub async fn reconnect(&mut self) {
        let (connection, channel, events) = open_events(&self.settings, &self.events_queue).await;
        self.connection = connection;
        self.channel = channel;
        self.events = events;
    }

    /// Starts the worker in-process, as `main` does, with its observability endpoints on a
    /// free port; returns once it consumes.
    pub async fn spawn_worker(&self) -> WorkerHandle {
        self.spawn_worker_with(&self.settings).await
    }

    /// Like `spawn_worker`, with `settings` (this environment's, changed) instead.
    pub async fn spawn_worker_with(&self, settings: &Settings) -> WorkerHandle {
        let mut settings = settings.clone();
        settings.observability.listen = "127.0.0.1:0".to_owned();
        let stop = CancellationToken::new();
        let application = Application::start(&settings, &self.aws, stop.clone())
            .await
            .expect("worker starts");
        let address = application.address();
        let join = tokio::spawn(application.run());
        WorkerHandle {
            stop,
            join,
            address,
        }
    }

    /// Publishes an order body to the orders exchange, with confirm.
    pub async fn publish(&self, body: &[u8]) {
        self.publish_with_headers(body, FieldTable::default()).await;
    }

    /// Publishes an order body with `headers` (as a retry or a forger would) to the orders
    /// exchange, with confirm.
    pub async fn publish_with_headers(&self, body: &[u8], headers: FieldTable) {
        let amqp = &self.settings.amqp;
        let confirm = publish_order(
            &self.channel,
            (&amqp.orders_exchange, &amqp.orders_routing_key),
            body,
            headers,
        )
        .await
        .await
        .expect("confirm");
        assert!(confirm.is_ack(), "order publish not confirmed");
    }

    /// Publishes `request` to the orders exchange with `routing_key` (a later request's, e.g.
    /// `aws.account.suspend`), with confirm.
    pub async fn publish_routed(&self, routing_key: &str, request: &Value) {
        let confirm = publish_order(
            &self.channel,
            (&self.settings.amqp.orders_exchange, routing_key),
            request.to_string().as_bytes(),
            FieldTable::default(),
        )
        .await
        .await
        .expect("confirm");
        assert!(confirm.is_ack(), "request publish not confirmed");
    }

    pub async fn publish_json(&self, order: &Value) {
        self.publish(order.to_string().as_bytes()).await;
    }

    /// The next result event, or a panic at the deadline.
    pub async fn next_event(&mut self) -> Value {
        self.next_event_within(DEADLINE)
            .await
            .expect("an event within the deadline")
    }

    /// The next result event, or `None` after `limit` (only the wait for a delivery is timed,
    /// so a cut-short wait loses no event).
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Value> {
        let delivery = tokio::time::timeout(limit, self.events.next())
            .await
            .ok()?
            .expect("event stream open")
            .expect("event delivery");
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack event");
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json"),
            "events are JSON"
        );
        assert_eq!(
            *delivery.properties.delivery_mode(),
            Some(2),
            "events are persistent"
        );
        let event: Value = serde_json::from_slice(&delivery.data).expect("event body is JSON");
        assert_eq!(
            event["event"].as_str(),
            Some(delivery.routing_key.as_str()),
            "routing key is the event name"
        );
        Some(event)
    }

    /// Takes every message now in the dead-letter queue: (headers, body).
    pub async fn drain_dlq(&self) -> Vec<(FieldTable, Vec<u8>)> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.settings.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            messages.push((headers, message.delivery.data.clone()));
        }
        messages
    }

    /// Stops the worker, which must end cleanly, and deletes this test's queues and exchanges.
    pub async fn finish(self, worker: WorkerHandle) {
        worker.stop().await;
        self.cleanup().await;
    }

    /// Deletes this test's queues and exchanges.
    pub async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = topology::delete(&self.channel, &self.settings.amqp, &self.settings.retry).await;
        remove_policies(&self.settings).await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// The management API of the test broker, as the settings' user.
pub fn management(settings: &Settings) -> Management {
    Management::from_settings(&settings.amqp).expect("management API settings")
}

/// Puts policy `name` (priority `priority`, applying to queues) on the test broker's vhost and
/// waits until queue `queue` is under it. Names and patterns are a test's own.
pub async fn put_policy(
    settings: &Settings,
    name: &str,
    pattern: &str,
    priority: i64,
    definition: &Value,
    queue: &str,
) {
    let api = management(settings);
    let body = json!({"pattern": pattern, "definition": definition, "priority": priority,
                      "apply-to": "queues"});
    let path = format!("/policies/{}/{}", encode(&api.vhost), encode(name));
    let (status, answer) = api
        .request("PUT", &path, Some(&body))
        .await
        .expect("the management API answers (scripts/services.sh enables it)");
    assert!(
        status == 201 || status == 204,
        "PUT {path}: {status} {answer}"
    );
    wait_for_policy(settings, queue, Some(name)).await;
}

/// Waits until the management API shows queue `queue` under policy `name` (`None`: under
/// none). The API shows a policy change a few seconds late (it comes with the statistics).
pub async fn wait_for_policy(settings: &Settings, queue: &str, name: Option<&str>) {
    let api = management(settings);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let state = api.queue(queue).await.expect("queue state");
        let applied = state
            .as_ref()
            .and_then(|q| q["policy"].as_str())
            .filter(|p| !p.is_empty());
        if applied == name {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} never came under policy {name:?}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes policy `name` from the test broker's vhost (absent is fine).
pub async fn delete_policy(settings: &Settings, name: &str) {
    let api = management(settings);
    let path = format!("/policies/{}/{}", encode(&api.vhost), encode(name));
    let _ = api.request("DELETE", &path, None).await;
}

/// Applies the worker's own policies (`topology::policies`) for this test's queues, as
/// deploy/rabbitmq/definitions.json does for the default names.
pub async fn apply_policies(settings: &Settings) {
    for policy in topology::policies(&settings.amqp) {
        put_policy(
            settings,
            &policy.name,
            &policy.pattern,
            topology::POLICY_PRIORITY,
            &Value::Object(policy.definition.clone()),
            &policy.queue,
        )
        .await;
    }
}

/// Deletes the worker's policies for this test's queues.
pub async fn remove_policies(settings: &Settings) {
    for policy in topology::policies(&settings.amqp) {
        delete_policy(settings, &policy.name).await;
    }
}

/// The root of a payer's organization.
pub async fn root_of(payer: &Payer) -> String {
    let roots = payer
        .organizations()
        .list_roots()
        .send()
        .await
        .expect("list roots");
    roots.roots()[0].id().expect("root id").to_owned()
}

/// A new OU under the root of the payer's organization.
pub async fn new_ou(payer: &Payer) -> String {
    let ou = payer
        .organizations()
        .create_organizational_unit()
        .parent_id(root_of(payer).await)
        .name(format!("opco-{}", digits(6)))
        .send()
        .await
        .expect("create OU");
    ou.organizational_unit()
        .and_then(|o| o.id())
        .expect("OU id")
        .to_owned()
}

/// Where the account sits in the payer's organization (ListParents).
pub async fn parent_of(payer: &Payer, account_id: &str) -> String {
    let parents = payer
        .organizations()
        .list_parents()
        .child_id(account_id)
        .send()
        .await
        .expect("list parents");
    parents.parents()[0].id().expect("parent id").to_owned()
}

/// Publishes `body` with `headers` on `channel` to `(exchange, routing key)` as an order is
/// published (persistent JSON); returns the confirm to wait for (on a channel in confirm mode).
pub async fn publish_order(
    channel: &Channel,
    (exchange, routing_key): (&str, &str),
    body: &[u8],
    headers: FieldTable,
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
        .await
        .expect("publish")
}

/// A header as text.
pub fn header_text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The in-process worker.
pub struct WorkerHandle {
    stop: CancellationToken,
    join: JoinHandle<()>,
    /// Where its `/metrics`, `/healthz` and `/readyz` answer.
    pub address: std::net::SocketAddr,
}

impl WorkerHandle {
    /// Stops it the way SIGTERM does, and waits for it to end.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.join)
            .await
            .expect("worker stops in time")
            .expect("worker task");
    }

    /// GETs `path` from its observability endpoints: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.address, path).await
    }
}

/// Connects to the broker, declares the durable events queue bound to every result event,
/// and consumes it.
async fn open_events(settings: &Settings, queue: &str) -> (Connection, Channel, Consumer) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers (scripts/services.sh starts it)");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    topology::declare(&connection, &settings.amqp, &settings.retry)
        .await
        .expect("topology");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("events queue");
    channel
        .queue_bind(
            queue.into(),
            settings.amqp.results_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind events queue");
    let events = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume events");
    (connection, channel, events)
}

/// A Connect purchase request with fresh ids, the given ordering and configuration parameters.
pub fn order(ordering: &[(&str, &str)], configuration: &[(&str, &str)]) -> Value {
    order_for(
        "MP-91673",
        Some("TA-0-9046-4815-5226"),
        ordering,
        configuration,
    )
}

/// Like `order`, for a marketplace and tier1 of the caller's choice.
pub fn order_for(
    marketplace: &str,
    tier1: Option<&str>,
    ordering: &[(&str, &str)],
    configuration: &[(&str, &str)],
) -> Value {
    let params = |pairs: &[(&str, &str)]| -> Value {
        pairs
            .iter()
            .map(|(id, value)| json!({"id": id, "name": id, "value": value}))
            .collect()
    };
    let tier1 = tier1.map_or_else(|| json!({}), |id| json!({"id": id, "name": "Reseller"}));
    json!({
        "id": format!("PR-{}-{}-000", digits(4), digits(4)),
        "type": "purchase",
        "status": "pending",
        "assignee": "",
        "asset": {
            "id": format!("AS-{}-{}-{}", digits(4), digits(4), digits(4)),
            "marketplace": {"id": marketplace},
            "product": {"id": "PRD-561-716-033"},
            "tiers": {
                "customer": {"id": "TA-0-7304-8514-7852", "name": "Hospitaller", "external_id": "1234567"},
                "tier1": tier1,
                "tier2": {}
            },
            "params": params(ordering),
            "configuration": {"params": params(configuration)}
        }
    })
}

/// The worker binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_aws-account-worker");

/// A temporary file holding `text`.
pub fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
    file
}

/// The worker as a process of its own, for signals (SIGTERM, SIGKILL); its logs go to a file.
pub struct WorkerProcess {
    child: std::process::Child,
    pub logs: tempfile::NamedTempFile,
}

impl WorkerProcess {
    /// Starts `aws-account-worker --config <config> run` against the AWS `endpoint` with the
    /// payer's credentials. Returns at once: the worker connects in the background.
    pub async fn spawn(env: &TestEnv, config: &tempfile::NamedTempFile, endpoint: &str) -> Self {
        // Tests run in parallel: each worker's endpoints on a port of their own.
        Self::spawn_listening(env, config, endpoint, "127.0.0.1:0").await
    }

    /// Like `spawn`, with `/metrics`, `/healthz` and `/readyz` on `listen`.
    pub async fn spawn_listening(
        env: &TestEnv,
        config: &tempfile::NamedTempFile,
        endpoint: &str,
        listen: &str,
    ) -> Self {
        Self::launch(env, config, endpoint, listen, false).await
    }

    /// Like `spawn`, logging everything (`RUST_LOG=trace`) as JSON (`--log-format json`).
    pub async fn spawn_traced(
        env: &TestEnv,
        config: &tempfile::NamedTempFile,
        endpoint: &str,
    ) -> Self {
        Self::launch(env, config, endpoint, "127.0.0.1:0", true).await
    }

    async fn launch(
        env: &TestEnv,
        config: &tempfile::NamedTempFile,
        endpoint: &str,
        listen: &str,
        traced: bool,
    ) -> Self {
        use aws_credential_types::provider::ProvideCredentials;
        let credentials = env
            .payer
            .credentials
            .provide_credentials()
            .await
            .expect("payer credentials");
        let logs = tempfile::NamedTempFile::new().expect("log file");
        let mut args = vec!["--config", config.path().to_str().expect("path")];
        if traced {
            args.extend(["--log-format", "json"]);
        }
        args.push("run");
        let child = std::process::Command::new(BIN)
            .args(args)
            .env("RUST_LOG", if traced { "trace" } else { "info" })
            .env("WORKER__OBSERVABILITY__LISTEN", listen)
            .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
            .env(
                "AWS_SESSION_TOKEN",
                credentials.session_token().unwrap_or_default(),
            )
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(logs.reopen().expect("log file"))
            .stderr(logs.reopen().expect("log file"))
            .spawn()
            .expect("spawn worker");
        Self { child, logs }
    }

    /// Sends `signal` (`KILL`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits for the process to exit, at most `limit`; its exit code.
    pub async fn exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker did not exit within {limit:?}; logs: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of its logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let logs = std::fs::read_to_string(self.logs.path()).unwrap_or_default();
        logs[logs.len().saturating_sub(3000)..].to_owned()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ECAM order whose customer signs in as root: the quickest order to provision in moto
/// (no IAM user, so no managed policies loaded into the new account).
pub fn root_order() -> Value {
    order(
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

/// Provisioned events by request id, collected until every one of `request_ids` has one; every
/// event of another kind fails the test.
pub async fn provisioned_events(
    env: &mut TestEnv,
    request_ids: &[String],
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut seen = std::collections::BTreeMap::new();
    while request_ids.iter().any(|id| !seen.contains_key(id)) {
        collect(&mut seen, env.next_event().await);
    }
    seen
}

/// Files a provisioned event under its request id; an event of another kind fails the test.
pub fn collect(events: &mut std::collections::BTreeMap<String, Vec<Value>>, event: Value) {
    assert_eq!(event["event"], "aws.account.provisioned", "{event}");
    let id = event["request_id"].as_str().expect("request id").to_owned();
    events.entry(id).or_default().push(event);
}

/// Asserts that every order got one account: one member account per email, each event of an
/// order names the same account, and there is no other account.
pub async fn assert_one_account_per_order(
    env: &TestEnv,
    events: &std::collections::BTreeMap<String, Vec<Value>>,
) {
    let accounts = env.payer.member_accounts().await;
    let mut per_email: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, email) in &accounts {
        per_email
            .entry(email.to_ascii_lowercase())
            .or_default()
            .push(id.clone());
    }
    let duplicated: Vec<_> = per_email.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "emails with more than one account: {duplicated:?}"
    );
    assert_eq!(
        accounts.len(),
        events.len(),
        "one account per order, no other"
    );
    for (request_id, order_events) in events {
        let email = order_events[0]["account"]["email"].as_str().expect("email");
        let ids = &per_email[&email.to_ascii_lowercase()];
        for event in order_events {
            assert_eq!(
                event["account"]["id"].as_str(),
                Some(ids[0].as_str()),
                "{request_id}: every event names the order's one account"
            );
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the observability endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
