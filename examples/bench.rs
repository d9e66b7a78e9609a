//! The benchmark behind `scripts/bench.sh`: release builds of the worker as separate processes
//! against RabbitMQ and the fast moto, the test fault proxy for simulated creation times, and
//! one `name value` line per figure on standard output. It measures; it asserts no timing.
//!
//! `bench` runs every phase; `bench raw-lapin COUNT SIZE` is the bare lapin loop it compares
//! the worker with (consume → publish with confirm → ack), run as a process of its own;
//! `bench raw-sdk COUNT` the two AWS calls of a new order through the SDK alone, and
//! `bench raw-http COUNT` the same calls signed by hand on a bare hyper client (docs/perf/cpu.md).
//! With `BENCH_PERF=1` it runs only the one-worker phase under `perf record`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_account_worker::broker::topology;
use aws_account_worker::config::Settings;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_organizations::types::OrganizationFeatureSet;
use aws_sdk_sts::config::{Credentials, Region, SharedCredentialsProvider};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[path = "../tests/it/faults.rs"]
#[allow(dead_code)]
mod faults;

use faults::{Creation, End, FaultProxy, Faults, Span};

/// What the fault proxy needs from the tests' support module.
mod support {
    use rand::RngExt;

    /// Random decimal digits, the first not zero.
    pub fn digits(n: usize) -> String {
        let mut rng = rand::rng();
        (0..n)
            .map(|i| char::from(b'0' + rng.random_range(u8::from(i == 0)..10)))
            .collect()
    }
}

use support::digits;

/// The worker binary (release), next to this example's directory.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/release");
    dir.join("aws-account-worker")
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn moto_endpoint() -> String {
    std::env::var("MOTO_FAST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5001".into())
}

fn moto(endpoint: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// A fresh payer account in moto with an organization: its credentials.
async fn payer() -> anyhow::Result<Credentials> {
    let base = moto(
        &moto_endpoint(),
        Credentials::new("testing", "testing", None, None, "bench"),
    );
    let account = digits(12);
    let assumed = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/bench-payer"))
        .role_session_name("bench")
        .send()
        .await
        .context("moto does not answer AssumeRole")?;
    let c = assumed.credentials().context("no credentials")?;
    let credentials = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "bench-payer",
    );
    aws_sdk_organizations::Client::new(&moto(&moto_endpoint(), credentials.clone()))
        .create_organization()
        .feature_set(OrganizationFeatureSet::All)
        .send()
        .await?;
    Ok(credentials)
}

/// An ECAM order whose customer signs in as root (no IAM user), with fresh ids.
fn root_order() -> Value {
    let email = format!("root-{}@customer.example", digits(10));
    let param = |id: &str, value: &str| json!({"id": id, "name": id, "value": value});
    json!({
        "id": format!("PR-{}-{}-000", digits(4), digits(4)),
        "type": "purchase",
        "status": "pending",
        "assignee": "",
        "asset": {
            "id": format!("AS-{}-{}-{}", digits(4), digits(4), digits(4)),
            "marketplace": {"id": "MP-91673"},
            "product": {"id": "PRD-561-716-033"},
            "tiers": {
                "customer": {"id": "TA-0-7304-8514-7852", "name": "Hospitaller", "external_id": "1234567"},
                "tier1": {"id": "TA-0-9046-4815-5226", "name": "Reseller"},
                "tier2": {}
            },
            "params": [param("aws_account_email", &email)],
            "configuration": {"params": [
                param("awsAccountModel", "ECAM"),
                param("provideRootUserForECAM", "Yes")
            ]}
        }
    })
}

/// One phase's broker names, configuration, payer and event consumer.
struct Run {
    settings: Settings,
    config: tempfile::NamedTempFile,
    credentials: Credentials,
    connection: Connection,
    channel: Channel,
    events: Consumer,
    events_queue: String,
}

impl Run {
    /// Unique names, `prefetch`, and `extra` TOML over the defaults.
    async fn prepare(prefetch: u32, extra: &str) -> anyhow::Result<Self> {
        let id = digits(10);
        let toml = format!(
            r#"
[amqp]
url = "{url}"
orders_exchange = "bench.orders.{id}"
orders_queue = "bench-orders.{id}"
dead_letter_exchange = "bench-orders.{id}.dlx"
dead_letter_queue = "bench-orders.{id}.dlq"
retry_queue_prefix = "bench-orders.{id}.retry"
results_exchange = "bench.results.{id}"
unrouted_exchange = "bench.results.{id}.unrouted"
unrouted_queue = "bench.results.{id}.unrouted"
prefetch = {prefetch}

[retry]
initial_delay_ms = 200
max_delay_ms = 2000
max_attempts = 20

[business_model]
provider_email_domain = "provider.example"
{extra}
"#,
            url = amqp_url()
        );
        let settings = Settings::from_toml(&toml)?;
        let mut config = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut config, toml.as_bytes())?;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare(&connection, &settings.amqp, &settings.retry).await?;
        let events_queue = format!("bench.events.{id}");
        channel
            .queue_declare(
                events_queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                events_queue.as_str().into(),
                settings.amqp.results_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let events = channel
            .basic_consume(
                events_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            settings,
            config,
            credentials: payer().await?,
            connection,
            channel,
            events,
            events_queue,
        })
    }

    /// Publishes `count` root-user orders with confirms; the size of the last body.
    async fn publish(&self, count: usize) -> anyhow::Result<usize> {
        let amqp = &self.settings.amqp;
        let mut size = 0;
        for _ in 0..count {
            let body = root_order().to_string();
            size = body.len();
            let confirm = self
                .channel
                .basic_publish(
                    amqp.orders_exchange.as_str().into(),
                    amqp.orders_routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                bail!("an order was not confirmed");
            }
        }
        Ok(size)
    }

    /// Waits for `count` provisioned events; any other event is an error.
    async fn provisioned(&mut self, count: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for seen in 0..count {
            let next = tokio::time::timeout_at(deadline, self.events.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                bail!("{seen} of {count} orders provisioned within {limit:?}");
            };
            let event: Value = serde_json::from_slice(&delivery.data)?;
            if event["event"] != "aws.account.provisioned" {
                bail!("not provisioned: {event}");
            }
        }
        Ok(())
    }

    /// Starts a worker process against `endpoint`, with its endpoints on `port`.
    fn spawn(&self, endpoint: &str, port: u16, name: &str) -> anyhow::Result<Child> {
        std::fs::create_dir_all("target/bench")?;
        let log = std::fs::File::create(format!("target/bench/{name}.log"))?;
        let config = self.config.path().to_str().context("path")?;
        // BENCH_PERF=1 records a CPU profile of each worker (target/bench/<name>.perf).
        let mut command = if std::env::var_os("BENCH_PERF").is_some() {
            let mut perf = Command::new("perf");
            // DWARF call graphs: the release build keeps no frame pointers, so `-g` alone
            // loses every user-space caller.
            perf.args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
                .arg(format!("target/bench/{name}.perf"))
                .arg("--")
                .arg(worker_binary());
            perf
        } else if std::env::var_os("BENCH_HEAPTRACK").is_some() {
            // BENCH_HEAPTRACK=1: a heap profile of each worker (target/bench/<name>.heaptrack.*).
            let mut heaptrack = Command::new("heaptrack");
            heaptrack
                .arg("-o")
                .arg(format!("target/bench/{name}.heaptrack"))
                .arg(worker_binary());
            heaptrack
        } else {
            Command::new(worker_binary())
        };
        let child = command
            .args(["--config", config, "run"])
            .env("WORKER__OBSERVABILITY__LISTEN", format!("127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", self.credentials.access_key_id())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                self.credentials.secret_access_key(),
            )
            .env(
                "AWS_SESSION_TOKEN",
                self.credentials.session_token().unwrap_or_default(),
            )
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the worker (built with --release?)")?;
        Ok(child)
    }

    /// Deletes the phase's queues and exchanges.
    async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = topology::delete(&self.channel, &self.settings.amqp, &self.settings.retry).await;
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// A free local port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP/1.1 GET on loopback: (status, body); `None` when nothing listens yet.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Waits until the worker on `port` is ready (consuming).
async fn ready(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(port, "/readyz").await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the worker exited with {status}; see target/bench/*.log");
        }
        if Instant::now() > deadline {
            bail!("the worker was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The sum of the worker's metric lines starting with `name` (any labels).
async fn metric(port: u16, name: &str) -> f64 {
    let Some((200, body)) = http_get(port, "/metrics").await else {
        return f64::NAN;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The metric lines starting with `name`, as (labels, value).
async fn metric_lines(port: u16, name: &str) -> Vec<(String, f64)> {
    let Some((200, body)) = http_get(port, "/metrics").await else {
        return Vec::new();
    };
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// CPU time (user + system) of process `pid`, in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 1000.0 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 on Linux.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib / 1024.0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn figure(name: &str, value: f64) {
    println!("{name} {value:.3}");
}

/// `ready_ms`: from process start to consuming, the median of three starts.
async fn ready_ms() -> anyhow::Result<()> {
    let run = Run::prepare(64, "").await?;
    let mut samples = Vec::new();
    for i in 0..3 {
        let port = free_port()?;
        let started = Instant::now();
        let mut child = run.spawn(&moto_endpoint(), port, &format!("ready-{i}"))?;
        ready(port, &mut child).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        stop(child);
    }
    samples.sort_by(f64::total_cmp);
    figure("ready_ms", samples[1]);
    run.cleanup().await;
    Ok(())
}

/// End to end against plain moto with `workers` workers: orders per second, and for one
/// worker its CPU per order and where its AWS calls went.
async fn throughput(workers: usize, orders: usize) -> anyhow::Result<Option<(f64, usize)>> {
    let mut run = Run::prepare(64, "").await?;
    let size = run.publish(orders).await?;
    let mut children = Vec::new();
    for i in 0..workers {
        let port = free_port()?;
        let child = run.spawn(&moto_endpoint(), port, &format!("moto{workers}-{i}"))?;
        children.push((port, child));
    }
    let started = Instant::now();
    let mut cpu_before = 0.0;
    for (port, child) in &mut children {
        ready(*port, child).await?;
        cpu_before += cpu_ms(child.id())?;
    }
    run.provisioned(orders, Duration::from_secs(600)).await?;
    let took = started.elapsed().as_secs_f64();
    let mut cpu_after = 0.0;
    for (_, child) in &children {
        cpu_after += cpu_ms(child.id())?;
    }
    figure(
        &format!("orders_per_s_moto_{workers}"),
        orders as f64 / took,
    );
    let per_order = if workers == 1 {
        let port = children[0].0;
        let mut calls = BTreeMap::new();
        for (labels, value) in metric_lines(port, "aws_account_worker_aws_calls_total").await {
            calls.insert(labels, value);
        }
        for (labels, value) in calls {
            let operation = label(&labels, "operation");
            let outcome = label(&labels, "outcome");
            figure(
                &format!("aws_calls_per_order_{operation}_{outcome}"),
                value / orders as f64,
            );
        }
        Some(((cpu_after - cpu_before) / orders as f64, size))
    } else {
        None
    };
    for (_, child) in children {
        stop(child);
    }
    run.cleanup().await;
    Ok(per_order)
}

/// The value of `name` in a metric line's labels (`{a="x",b="y"}`), `?` if absent.
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("?")
}

/// Creates `count` accounts in the organization of `credentials` straight in moto, 16 at a
/// time, so that the worker meets an organization of that size.
async fn populate(credentials: &Credentials, count: usize) -> anyhow::Result<()> {
    let client = aws_sdk_organizations::Client::new(&moto(&moto_endpoint(), credentials.clone()));
    let prefix = digits(8);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..count {
        if pending.len() >= 16 {
            pending.join_next().await.context("a creation task")???;
        }
        let client = client.clone();
        let prefix = prefix.clone();
        pending.spawn(async move {
            client
                .create_account()
                .email(format!("filler-{prefix}-{i}@bench.example"))
                .account_name(format!("filler-{prefix}-{i}"))
                .send()
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        });
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(())
}

/// `aws_calls_per_order_<size>_<operation>` and `aws_reads_per_order_<size>`: one worker's AWS
/// calls per order (every outcome) in an organization that already holds `size` accounts.
async fn calls_at_size(size: usize, orders: usize) -> anyhow::Result<()> {
    let mut run = Run::prepare(64, "").await?;
    populate(&run.credentials, size).await?;
    run.publish(orders).await?;
    let port = free_port()?;
    let mut child = run.spawn(&moto_endpoint(), port, &format!("org-{size}"))?;
    ready(port, &mut child).await?;
    run.provisioned(orders, Duration::from_secs(600)).await?;
    let mut calls: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, value) in metric_lines(port, "aws_account_worker_aws_calls_total").await {
        *calls
            .entry(label(&labels, "operation").to_owned())
            .or_default() += value;
    }
    let mut reads = 0.0;
    for (operation, value) in &calls {
        figure(
            &format!("aws_calls_per_order_{size}_{operation}"),
            value / orders as f64,
        );
        if ["List", "Describe", "Get"]
            .iter()
            .any(|read| operation.starts_with(read))
        {
            reads += value;
        }
    }
    figure(
        &format!("aws_reads_per_order_{size}"),
        reads / orders as f64,
    );
    stop(child);
    run.cleanup().await;
    Ok(())
}

/// `overhead_ms_p50` / `overhead_ms_p99`: one worker taking `orders` orders at once (all in
/// flight, waiting for a slot rather than going back to the broker), against moto without the
/// fault proxy: per delivery, the time it spent in the worker beyond its AWS calls and its
/// slot wait (`order_overhead_seconds`), percentiles read from the histogram's buckets.
async fn overhead(orders: usize) -> anyhow::Result<()> {
    let prefetch = u32::try_from(orders + 1)?;
    let mut run =
        Run::prepare(prefetch, &format!("[aws]\nmax_waiting_for_slot = {orders}")).await?;
    run.publish(orders).await?;
    let port = free_port()?;
    let mut child = run.spawn(&moto_endpoint(), port, "overhead")?;
    ready(port, &mut child).await?;
    run.provisioned(orders, Duration::from_secs(600)).await?;
    // The last delivery's histogram entry lands as its task ends, just after the event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let buckets = loop {
        let lines = metric_lines(port, "aws_account_worker_order_overhead_seconds_bucket").await;
        let count = lines.last().map_or(0.0, |(_, n)| *n);
        if count >= orders as f64 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let buckets: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(labels, n)| (label(labels, "le").parse().unwrap_or(f64::INFINITY), *n))
        .collect();
    figure("overhead_ms_p50", percentile(&buckets, 0.50) * 1000.0);
    figure("overhead_ms_p99", percentile(&buckets, 0.99) * 1000.0);
    stop(child);
    run.cleanup().await;
    Ok(())
}

/// The `q` quantile of a cumulative histogram (`(upper bound, count)`, ascending),
/// interpolated linearly inside its bucket.
fn percentile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if !bound.is_finite() {
                return lower.0;
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return lower.0 + share * (bound - lower.0);
        }
        lower = (bound, count);
    }
    lower.0
}

/// `raw-lapin COUNT SIZE`: the bare loop, in this process; prints its CPU per message.
async fn raw_lapin(count: usize, size: usize) -> anyhow::Result<()> {
    let id = digits(10);
    let (input, output) = (format!("bench.raw.{id}.in"), format!("bench.raw.{id}.out"));
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for queue in [&input, &output] {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await?;
    }
    let body = vec![b'x'; size];
    let persistent = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    for _ in 0..count {
        channel
            .basic_publish(
                "".into(),
                input.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                persistent.clone(),
            )
            .await?
            .await?;
    }
    let consuming = connection.create_channel().await?;
    consuming.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = consuming
        .basic_consume(
            input.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let before = cpu_ms(std::process::id())?;
    for _ in 0..count {
        let delivery = consumer.next().await.context("consumer ended")??;
        channel
            .basic_publish(
                "".into(),
                output.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                persistent.clone(),
            )
            .await?
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    print_own_cpu_per(before, count)?;
    for queue in [&input, &output] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    Ok(())
}

/// Prints this process's CPU since `before` (from `cpu_ms`) per one of `count` repetitions, in
/// milliseconds: the one figure `own_process` reads back.
fn print_own_cpu_per(before: f64, count: usize) -> anyhow::Result<()> {
    let after = cpu_ms(std::process::id())?;
    println!("{}", (after - before) / count as f64);
    Ok(())
}

/// Runs this binary as a process of its own with `args` (`raw-lapin …`, `raw-sdk …`): the one
/// figure it prints.
fn own_process(args: &[String]) -> anyhow::Result<f64> {
    let output = Command::new(std::env::current_exe()?).args(args).output()?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// The AWS calls of one new order alone, with the worker's SDK settings and none of its
/// code: `ListCreateAccountStatus` then `CreateAccount`, `count` times one after the other,
/// against a fresh payer in the same moto. Prints this process's CPU per pair in milliseconds.
async fn raw_sdk(count: usize) -> anyhow::Result<()> {
    let credentials = payer().await?;
    let limits = aws_account_worker::aws::CallLimits::default();
    let config = aws_sdk_organizations::config::Builder::from(&moto(&moto_endpoint(), credentials))
        .timeout_config(aws_account_worker::aws::sdk::timeouts(&limits))
        .retry_config(aws_account_worker::aws::sdk::retries(&limits))
        .build();
    let organizations = aws_sdk_organizations::Client::from_conf(config);
    let before = cpu_ms(std::process::id())?;
    for _ in 0..count {
        let id = digits(12);
        organizations
            .list_create_account_status()
            .states(aws_sdk_organizations::types::CreateAccountState::InProgress)
            .send()
            .await?;
        organizations
            .create_account()
            .email(format!("raw-{id}@provider.example"))
            .account_name(format!("raw {id}"))
            .role_name("OrganizationAccountAccessRole")
            // As the worker sends it: the SDK never retries a CreateAccount.
            .customize()
            .config_override(
                aws_sdk_organizations::config::Builder::default()
                    .retry_config(aws_sdk_organizations::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await?;
    }
    print_own_cpu_per(before, count)
}

/// The same two calls as `raw_sdk`, without the SDK: each request built by hand (the JSON
/// protocol Organizations speaks), signed with `aws-sigv4` (the SDK's own signer) and sent on
/// one pooled hyper client. What the calls would cost through the thinnest client possible;
/// prints this process's CPU per pair in milliseconds.
async fn raw_http(count: usize) -> anyhow::Result<()> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4::SigningParams;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;

    let credentials = payer().await?;
    let identity = credentials.into();
    let endpoint = moto_endpoint();
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let call = async |target: &str, body: String| -> anyhow::Result<()> {
        let body = bytes::Bytes::from(body);
        let mut request = hyper::Request::post(format!("{endpoint}/"))
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                format!("AWSOrganizationsV20161128.{target}"),
            )
            .body(Full::new(body.clone()))?;
        let params = SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("organizations")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let signable = SignableRequest::new(
            "POST",
            request.uri().to_string(),
            request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or(""))),
            SignableBody::Bytes(&body),
        )?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        instructions.apply_to_request_http1x(&mut request);
        let response = client.request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{target}: {status}: {}", String::from_utf8_lossy(&answer));
        }
        serde_json::from_slice::<Value>(&answer)?;
        Ok(())
    };
    let before = cpu_ms(std::process::id())?;
    for _ in 0..count {
        let id = digits(12);
        call(
            "ListCreateAccountStatus",
            json!({"States": ["IN_PROGRESS"]}).to_string(),
        )
        .await?;
        call(
            "CreateAccount",
            json!({
                "Email": format!("raw-{id}@provider.example"),
                "AccountName": format!("raw {id}"),
                "RoleName": "OrganizationAccountAccessRole",
            })
            .to_string(),
        )
        .await?;
    }
    print_own_cpu_per(before, count)
}

/// `rss_mib_1000_in_flight`: one worker holding 1,000 orders, 5 creating (for 10 minutes) and
/// 995 waiting for a creation slot.
async fn rss_1000() -> anyhow::Result<()> {
    let faults = Faults {
        creation: Creation::Takes {
            duration: Duration::from_secs(600),
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&moto_endpoint(), faults).await;
    let run = Run::prepare(
        1000,
        "[aws]\nmax_waiting_for_slot = 1000\ncreation_slot_wait_seconds = 900",
    )
    .await?;
    run.publish(1000).await?;
    let port = free_port()?;
    let mut child = run.spawn(&proxy.endpoint, port, "rss")?;
    ready(port, &mut child).await?;
    figure("rss_mib_ready", rss_mib(child.id())?);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let in_flight = metric(port, "aws_account_worker_orders_in_flight").await;
        if in_flight >= 1000.0 && proxy.stats().creations >= 5 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {in_flight} orders in flight after 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the 995 reach their wait for a slot.
    tokio::time::sleep(Duration::from_secs(5)).await;
    figure("rss_mib_1000_in_flight", rss_mib(child.id())?);
    let _ = child.kill();
    let _ = child.wait();
    run.cleanup().await;
    Ok(())
}

/// `slot_utilization_<replicas>`: `replicas` workers, `orders` orders, each creation 20 s: the
/// share of the 5 slots busy between the first creation and the last one's start (the
/// backlog); `slot_max_in_progress_<replicas>` is the most creations in progress at once.
async fn utilization(replicas: usize, orders: usize) -> anyhow::Result<()> {
    let faults = Faults {
        creation: Creation::Takes {
            duration: Duration::from_secs(20),
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&moto_endpoint(), faults).await;
    let mut run = Run::prepare(64, "[aws]\ncreate_status_poll_ms = 750").await?;
    run.publish(orders).await?;
    let mut children = Vec::new();
    for i in 0..replicas {
        let port = free_port()?;
        children.push(run.spawn(&proxy.endpoint, port, &format!("slots{replicas}-{i}"))?);
    }
    run.provisioned(orders, Duration::from_secs(900)).await?;
    let spans = proxy.spans();
    figure(
        &format!("slot_utilization_{replicas}"),
        busy_share(&spans, 5),
    );
    figure(
        &format!("slot_max_in_progress_{replicas}"),
        proxy.stats().max_in_progress as f64,
    );
    for child in children {
        stop(child);
    }
    run.cleanup().await;
    Ok(())
}

/// The share of `slots` busy from the first creation's start to the last one's.
fn busy_share(spans: &[Span], slots: usize) -> f64 {
    let (Some(first), Some(last)) = (
        spans.iter().map(|s| s.start).min(),
        spans.iter().map(|s| s.start).max(),
    ) else {
        return 0.0;
    };
    let period = (last - first).as_secs_f64();
    let busy: f64 = spans
        .iter()
        .map(|s| {
            let end = s.end.unwrap_or(last).min(last);
            end.saturating_duration_since(s.start).as_secs_f64()
        })
        .sum();
    busy / (slots as f64 * period)
}

/// The count in environment variable `name`, else `default`.
fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The floor loops, each run by the cpu phase as a process of its own (or by hand).
    let number = |i: usize, name: &str| -> anyhow::Result<usize> {
        Ok(args.get(i).with_context(|| name.to_owned())?.parse()?)
    };
    match args.first().map(String::as_str) {
        Some("raw-lapin") => return raw_lapin(number(1, "COUNT")?, number(2, "SIZE")?).await,
        Some("raw-sdk") => return raw_sdk(number(1, "COUNT")?).await,
        Some("raw-http") => return raw_http(number(1, "COUNT")?).await,
        _ => {}
    }
    let orders = count("BENCH_ORDERS", 150);
    if std::env::var_os("BENCH_PERF").is_some() {
        // Only the one-worker run, for its profile (the figures include perf's own cost).
        throughput(1, orders).await?;
        return Ok(());
    }
    // BENCH_ONLY=ready,cpu,moto3,rss,slots,orgs,overhead runs only those phases.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |phase: &str| only.is_empty() || only.split(',').any(|p| p == phase);
    if runs("ready") {
        ready_ms().await?;
    }
    if runs("cpu") {
        let Some((worker_cpu, size)) = throughput(1, orders).await? else {
            bail!("no CPU figure");
        };
        let raw = own_process(&[
            "raw-lapin".into(),
            orders.max(1000).to_string(),
            size.to_string(),
        ])?;
        figure("worker_cpu_ms_per_order", worker_cpu);
        figure("raw_lapin_cpu_ms_per_message", raw);
        figure("cpu_ratio", worker_cpu / raw);
        // The two AWS calls of an order through the SDK alone, and with the raw lapin loop the
        // part of an order's CPU that the worker's own code does not spend.
        let sdk = own_process(&["raw-sdk".into(), orders.max(300).to_string()])?;
        figure("raw_sdk_cpu_ms_per_order", sdk);
        figure("raw_floor_cpu_ms_per_order", raw + sdk);
        figure("worker_cpu_over_floor_ms_per_order", worker_cpu - raw - sdk);
    }
    if runs("moto3") {
        throughput(3, orders).await?;
    }
    if runs("rss") {
        rss_1000().await?;
    }
    if runs("overhead") {
        overhead(100).await?;
    }
    if runs("slots") {
        // 40 orders per run (8 rounds of 5 creations of 20 s), with 3 and with 10 replicas,
        // so that the whole bench ends in about 10 minutes on 2 cores.
        let slot_orders = count("BENCH_SLOT_ORDERS", 40);
        figure("slot_orders", slot_orders as f64);
        utilization(3, slot_orders).await?;
        utilization(10, slot_orders).await?;
    }
    // Last: the 6,000 accounts it creates stay in moto and slow down whatever uses it next.
    if runs("orgs") {
        // Fewer orders than the CPU phase: each size first fills the organization.
        let org_orders = count("BENCH_ORG_ORDERS", 30);
        figure("org_orders", org_orders as f64);
        for size in [0, 1000, 5000] {
            calls_at_size(size, org_orders).await?;
        }
    }
    Ok(())
}
