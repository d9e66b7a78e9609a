//! Settings: one typed tree loaded from the built-in defaults (`config/default.toml`), an
//! optional file, then `WORKER__SECTION__KEY` environment variables; validated at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::arn::RoleArn;
use crate::domain::ids::{MarketplaceId, TierAccountId};
use crate::domain::model::email_rules::check_spam_template;
use crate::domain::model::{
    Applicable, Connections, Layer, LayerTree, MarketplaceSettings, ModelSettings, Place, Rules,
};
use crate::domain::names::RoleName;

/// The built-in defaults: the documented `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../config/default.toml");
/// The prefix of environment overrides; `__` separates the levels.
pub const ENV_PREFIX: &str = "WORKER__";

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read.
    #[error("configuration: {0}")]
    Load(String),
    /// A key nobody reads: most likely a typo.
    #[error("configuration key `{0}`: unknown key")]
    UnknownKey(String),
    /// A value that parses but cannot be used.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[worker]`.
    pub worker: WorkerSettings,
    /// `[amqp]`.
    pub amqp: AmqpSettings,
    /// `[retry]`.
    pub retry: RetrySettings,
    /// `[aws]`.
    pub aws: AwsSettings,
    /// `[business_model]`: the global defaults of the business model.
    pub business_model: ModelSettings,
    /// `[marketplaces."MP-…"]`.
    #[serde(default)]
    pub marketplaces: BTreeMap<String, MarketplaceSettings>,
    /// `[payers.NAME]`.
    #[serde(default)]
    pub payers: BTreeMap<String, PayerSettings>,
    /// `[connections]`: the payer of test and preview orders.
    #[serde(default)]
    pub connections: Connections,
    /// `[observability]`.
    pub observability: ObservabilitySettings,
}

/// `[worker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// How long SIGTERM waits for in-flight orders.
    pub shutdown_grace_seconds: u64,
}

/// The highest `amqp.delivery_limit`: the orders queue carries it as its `x-delivery-limit`
/// argument, so that a message that crashes the worker every time is dead-lettered after at most
/// this many deliveries even where no policy applies. The policy (`amqp.delivery_limit`) lowers
/// it; RabbitMQ applies the smaller of the two.
pub const DELIVERY_LIMIT_CEILING: u32 = 100;

/// The longest pause between reconnection rounds (`amqp.reconnect_pause_ms`): ten minutes, so
/// a worker never sits disconnected for long after its broker came back.
pub const RECONNECT_PAUSE_CEILING_MS: u64 = 600_000;

/// `[amqp]`: the broker and every name of the topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URL; may hold a password, so it is secret.
    #[serde(serialize_with = "redacted")]
    pub url: SecretString,
    /// Topic exchange the orders arrive on.
    pub orders_exchange: String,
    /// Routing key of new-account orders (`purchase`).
    pub orders_routing_key: String,
    /// Routing key of `change` requests, bound to the orders queue too.
    pub change_routing_key: String,
    /// Routing key of `suspend` requests, bound to the orders queue too.
    pub suspend_routing_key: String,
    /// Routing key of `resume` requests, bound to the orders queue too.
    pub resume_routing_key: String,
    /// Routing key of `cancel` requests, bound to the orders queue too.
    pub cancel_routing_key: String,
    /// The orders quorum queue.
    pub orders_queue: String,
    /// Exchange leading to the dead-letter queue.
    pub dead_letter_exchange: String,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// Prefix of the retry (delay) queues.
    pub retry_queue_prefix: String,
    /// Topic exchange of result events.
    pub results_exchange: String,
    /// Alternate exchange of the results exchange.
    pub unrouted_exchange: String,
    /// Queue keeping unrouted events.
    pub unrouted_queue: String,
    /// Unacknowledged orders one worker holds.
    pub prefetch: u16,
    /// The orders queue's delivery limit, set by a RabbitMQ policy (`check` compares).
    pub delivery_limit: u32,
    /// RabbitMQ's management API (`http://[user:password@]host[:port][/prefix]`), where `check`
    /// reads the policies in force; empty: `amqp.url`'s host, port 15672, its user. It may hold
    /// a password, so it is secret.
    #[serde(serialize_with = "redacted")]
    pub management_url: SecretString,
    /// The pause between two rounds of connection attempts once the broker was lost.
    pub reconnect_pause_ms: u64,
}

/// `[retry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First retry delay.
    pub initial_delay_ms: u64,
    /// Largest retry delay.
    pub max_delay_ms: u64,
    /// Attempts before an order is dead-lettered.
    pub max_attempts: u32,
    /// Replays before `replay` keeps a message in the DLQ.
    pub max_replays: u32,
    /// How long an order that came back unsettled waits before a new `CreateAccount`.
    pub redelivered_create_delay_ms: u64,
    /// How long an order that found no creation slot (nor room to wait for one) waits in a
    /// retry queue before it looks again.
    pub creation_slot_busy_delay_ms: u64,
    /// How long after its first delivery an order that still retries or waits is dead-lettered
    /// (`ORDER_TOO_OLD`).
    pub max_order_age_seconds: u64,
}

/// `[aws]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The access role `CreateAccount` makes in new member accounts, assumed by the worker.
    pub member_role_name: RoleName,
    /// `CreateAccount`'s `IamUserAccessToBilling`.
    pub iam_user_access_to_billing: AccessToBilling,
    /// How long a new member account may refuse the worker (`AccessDenied`) before the refusal
    /// counts as permanent: its access role is not usable at once.
    pub member_account_ready_seconds: u64,
    /// CreateAccount requests in progress per payer organization, across all replicas.
    pub max_concurrent_creations: u32,
    /// How often orders waiting for a creation slot look for one another replica gave back.
    pub creation_slot_poll_ms: u64,
    /// Orders of one worker that may wait for a creation slot of one payer at once.
    pub max_waiting_for_slot: u32,
    /// The longest one delivery waits for a creation slot before going back to the broker.
    pub creation_slot_wait_seconds: u64,
    /// Poll interval of DescribeCreateAccountStatus.
    pub create_status_poll_ms: u64,
    /// How long one attempt waits for a creation in progress.
    pub create_status_wait_seconds: u64,
    /// How long an AWS call may take to connect.
    pub sdk_connect_timeout_ms: u64,
    /// How long one attempt of an AWS call may take (the SDK retries some failures itself).
    pub sdk_attempt_timeout_seconds: u64,
    /// How long an AWS call may take in all, its attempts included.
    pub sdk_operation_timeout_seconds: u64,
    /// Attempts the SDK makes of one call (the first included) on a transient error:
    /// throttling, `ConcurrentModificationException`, 5xx, timeouts.
    pub sdk_max_attempts: u32,
    /// Organizations and STS calls one worker makes at once to one payer; more wait.
    pub max_calls_in_flight_per_payer: u32,
}

/// `CreateAccount`'s `IamUserAccessToBilling` (`aws.iam_user_access_to_billing`): whether IAM
/// users of the new account may see its billing information (given the permissions). AWS's
/// own default is `ALLOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessToBilling {
    /// `ALLOW`.
    Allow,
    /// `DENY`.
    Deny,
}

/// The management API's port when `amqp.management_url` is empty.
pub const MANAGEMENT_DEFAULT_PORT: u16 = 15672;

/// Where RabbitMQ's management API is and whom to sign in as: `amqp.management_url` parsed,
/// or, when it is empty, `amqp.url`'s host on [`MANAGEMENT_DEFAULT_PORT`] with its user.
#[derive(Debug, Clone)]
pub struct ManagementEndpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The path prefix the API is served under (`""` or `/prefix`).
    pub prefix: String,
    /// `user:password`, for basic authentication.
    pub credentials: SecretString,
    /// The vhost of `amqp.url`.
    pub vhost: String,
}

/// The longest queue name AMQP allows: a short string, 255 bytes.
pub const QUEUE_NAME_MAX_BYTES: usize = 255;

/// The longest key an order lock is taken on: an account email (AWS allows 64 bytes) or an
/// asset id (a Connect id, at most 64 bytes as `domain::ids` parses it). Lock queues are
/// `<orders_queue>.busy.<key>`.
pub const LOCK_KEY_MAX_BYTES: usize = 64;

impl AmqpSettings {
    /// Every routing key bound to the orders queue: the purchase's, then those of `change`,
    /// `suspend`, `resume` and `cancel`, each once (the request's `type`, not its routing key,
    /// decides what is done).
    pub fn order_routing_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for key in [
            &self.orders_routing_key,
            &self.change_routing_key,
            &self.suspend_routing_key,
            &self.resume_routing_key,
            &self.cancel_routing_key,
        ] {
            if !keys.contains(&key.as_str()) {
                keys.push(key);
            }
        }
        keys
    }

    /// The name of the queue where orders wait `delay_ms` before their next attempt:
    /// `<retry_queue_prefix>.<delay>ms`.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.{delay_ms}ms", self.retry_queue_prefix)
    }

    /// The prefix of the order locks' queues, `<orders_queue>.busy` (a lock's queue is
    /// `<prefix>.<key>`).
    pub fn lock_prefix(&self) -> String {
        format!("{}.busy", self.orders_queue)
    }

    /// The prefix of the creation slots' queues, `<orders_queue>.slot` (a slot's queue is
    /// `<prefix>.<payer>.<i>`).
    pub fn slot_prefix(&self) -> String {
        format!("{}.slot", self.orders_queue)
    }

    /// The management API of `amqp.management_url`, or, when it is empty,
    /// `http://<amqp.url host>:15672`; signed in as the user of the management URL if it names
    /// one, else the user of `amqp.url`.
    ///
    /// # Errors
    /// A URL that is not `http://[user:password@]host[:port][/prefix]`, named by its key.
    pub fn management_endpoint(&self) -> Result<ManagementEndpoint, String> {
        let uri = lapin::uri::AMQPUri::from_str(self.url.expose_secret())
            .map_err(|_| "amqp.url is not an AMQP URL".to_owned())?;
        let amqp_credentials = format!(
            "{}:{}",
            uri.authority.userinfo.username, uri.authority.userinfo.password
        );
        let given = self.management_url.expose_secret().trim();
        if given.is_empty() {
            return Ok(ManagementEndpoint {
                host: uri.authority.host,
                port: MANAGEMENT_DEFAULT_PORT,
                prefix: String::new(),
                credentials: amqp_credentials.into(),
                vhost: uri.vhost,
            });
        }
        let invalid = || "amqp.management_url is not http://[user:password@]host[:port][/prefix]";
        let rest = given.strip_prefix("http://").ok_or_else(invalid)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((user, host)) => (user.to_owned(), host),
            None => (amqp_credentials, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| invalid())?),
            None => (host_port, 80),
        };
        if host.is_empty() || !credentials.contains(':') {
            return Err(invalid().to_owned());
        }
        Ok(ManagementEndpoint {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            credentials: credentials.into(),
            vhost: uri.vhost,
        })
    }
}

/// `[payers.NAME]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayerSettings {
    /// Role to assume to act as this payer's management account.
    pub role_arn: Option<RoleArn>,
}

/// `[observability]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySettings {
    /// Address of the metrics and health endpoints.
    pub listen: String,
}

impl Settings {
    /// What business-model resolution reads: the layers and `[connections]`.
    pub fn rules(&self) -> Rules {
        Rules {
            global: self.business_model.clone(),
            marketplaces: self.marketplaces.clone(),
            connections: self.connections.clone(),
        }
    }

    /// The business-model layers: `[business_model]` and `[marketplaces."MP-…"]`.
    pub fn layers(&self) -> LayerTree<'_> {
        LayerTree {
            global: &self.business_model,
            marketplaces: &self.marketplaces,
        }
    }
}

/// `value`, set at `key`, must not be 0.
fn at_least_one(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

fn redacted<S: Serializer>(_: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("[REDACTED]")
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment, and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// The built-in defaults with `toml` laid over them (no environment): for tests and tools.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let load = load_error;
        let settings: Self = figment.extract().map_err(load)?;
        let given: Dict = figment.extract().map_err(load)?;
        let known = Value::serialize(&settings).map_err(load)?;
        if let Some(key) = unknown_key(&given, &known, "") {
            return Err(ConfigError::UnknownKey(key));
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value that parses but may still be unusable.
    ///
    /// # Errors
    /// The first problem, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp()?;
        self.validate_retry()?;
        self.validate_queue_names()?;
        self.validate_aws()?;
        self.validate_call_limits()?;
        SocketAddr::from_str(&self.observability.listen)
            .map_err(|_| invalid("observability.listen", "not an address (host:port)"))?;
        self.validate_business_model()
    }

    /// `[amqp]`: a URL, names of 1 to 255 bytes (AMQP's bound; the names composed from them are
    /// checked apart), the limits in their ranges.
    fn validate_amqp(&self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        lapin::uri::AMQPUri::from_str(amqp.url.expose_secret()).map_err(|_| {
            invalid(
                "amqp.url",
                "not an AMQP URL (amqp://user:password@host:port/vhost)",
            )
        })?;
        for (key, name) in [
            ("orders_exchange", &amqp.orders_exchange),
            ("orders_routing_key", &amqp.orders_routing_key),
            ("change_routing_key", &amqp.change_routing_key),
            ("suspend_routing_key", &amqp.suspend_routing_key),
            ("resume_routing_key", &amqp.resume_routing_key),
            ("cancel_routing_key", &amqp.cancel_routing_key),
            ("orders_queue", &amqp.orders_queue),
            ("dead_letter_exchange", &amqp.dead_letter_exchange),
            ("dead_letter_queue", &amqp.dead_letter_queue),
            ("retry_queue_prefix", &amqp.retry_queue_prefix),
            ("results_exchange", &amqp.results_exchange),
            ("unrouted_exchange", &amqp.unrouted_exchange),
            ("unrouted_queue", &amqp.unrouted_queue),
        ] {
            if name.trim().is_empty() || name.len() > QUEUE_NAME_MAX_BYTES {
                return Err(invalid(
                    format!("amqp.{key}"),
                    format!("must be a name of 1 to {QUEUE_NAME_MAX_BYTES} bytes"),
                ));
            }
        }
        at_least_one("amqp.prefetch", u64::from(amqp.prefetch))?;
        at_least_one("amqp.delivery_limit", u64::from(amqp.delivery_limit))?;
        if amqp.delivery_limit > DELIVERY_LIMIT_CEILING {
            return Err(invalid(
                "amqp.delivery_limit",
                format!(
                    "must be at most {DELIVERY_LIMIT_CEILING}: the orders queue is declared with that ceiling, which a policy can lower but not lift"
                ),
            ));
        }
        amqp.management_endpoint().map_err(|_| {
            invalid(
                "amqp.management_url",
                "not http://[user:password@]host[:port][/prefix]",
            )
        })?;
        if !(1..=RECONNECT_PAUSE_CEILING_MS).contains(&amqp.reconnect_pause_ms) {
            return Err(invalid(
                "amqp.reconnect_pause_ms",
                format!("must be between 1 and {RECONNECT_PAUSE_CEILING_MS}"),
            ));
        }
        Ok(())
    }

    /// `[retry]`: delays and counts of at least 1, the largest delay not below the first.
    fn validate_retry(&self) -> Result<(), ConfigError> {
        let retry = &self.retry;
        at_least_one("retry.initial_delay_ms", retry.initial_delay_ms)?;
        if retry.max_delay_ms < retry.initial_delay_ms {
            return Err(invalid(
                "retry.max_delay_ms",
                "must not be less than retry.initial_delay_ms",
            ));
        }
        at_least_one(
            "retry.creation_slot_busy_delay_ms",
            retry.creation_slot_busy_delay_ms,
        )?;
        at_least_one("retry.max_attempts", u64::from(retry.max_attempts))?;
        at_least_one("retry.max_order_age_seconds", retry.max_order_age_seconds)?;
        if retry.max_replays == 0 {
            return Err(invalid(
                "retry.max_replays",
                "must be at least 1 (0 would keep every dead letter from replay)",
            ));
        }
        Ok(())
    }

    /// The queue names the worker composes (retry queues, order locks, creation slots) within
    /// AMQP's 255 bytes, for the longest delay, lock key and slot index they can take; a name
    /// over it names the key that makes it.
    fn validate_queue_names(&self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        let retry = &self.retry;
        let longest_delay = retry
            .max_delay_ms
            .max(retry.redelivered_create_delay_ms)
            .max(retry.initial_delay_ms);
        let lock_key = "k".repeat(LOCK_KEY_MAX_BYTES);
        let last_slot = self.aws.max_concurrent_creations.saturating_sub(1);
        let mut composed = vec![
            (
                "amqp.retry_queue_prefix",
                "a retry queue",
                amqp.retry_queue(longest_delay),
            ),
            (
                "amqp.orders_queue",
                "an order lock's queue",
                format!("{}.{lock_key}", amqp.lock_prefix()),
            ),
        ];
        for payer in self.payers.keys() {
            composed.push((
                "amqp.orders_queue",
                "a creation slot's queue",
                format!("{}.{payer}.{last_slot}", amqp.slot_prefix()),
            ));
        }
        for (key, what, name) in composed {
            if name.len() > QUEUE_NAME_MAX_BYTES {
                return Err(invalid(
                    key,
                    format!(
                        "too long: {what} would be named `{name}`, {} bytes, over AMQP's {QUEUE_NAME_MAX_BYTES}",
                        name.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[aws]`'s creation slots and polling: each at least 1.
    fn validate_aws(&self) -> Result<(), ConfigError> {
        let aws = &self.aws;
        for (key, value) in [
            (
                "aws.max_concurrent_creations",
                u64::from(aws.max_concurrent_creations),
            ),
            ("aws.creation_slot_poll_ms", aws.creation_slot_poll_ms),
            (
                "aws.max_waiting_for_slot",
                u64::from(aws.max_waiting_for_slot),
            ),
            (
                "aws.creation_slot_wait_seconds",
                aws.creation_slot_wait_seconds,
            ),
            ("aws.create_status_poll_ms", aws.create_status_poll_ms),
        ] {
            at_least_one(key, value)?;
        }
        Ok(())
    }

    /// The SDK's timeouts and the calls in flight: none zero, none absurd, and one attempt no
    /// longer than the whole call.
    fn validate_call_limits(&self) -> Result<(), ConfigError> {
        let aws = &self.aws;
        for (key, value, most) in [
            ("sdk_connect_timeout_ms", aws.sdk_connect_timeout_ms, 60_000),
            (
                "sdk_attempt_timeout_seconds",
                aws.sdk_attempt_timeout_seconds,
                600,
            ),
            (
                "sdk_operation_timeout_seconds",
                aws.sdk_operation_timeout_seconds,
                3_600,
            ),
            (
                "max_calls_in_flight_per_payer",
                u64::from(aws.max_calls_in_flight_per_payer),
                1_024,
            ),
            ("sdk_max_attempts", u64::from(aws.sdk_max_attempts), 20),
        ] {
            if !(1..=most).contains(&value) {
                return Err(invalid(
                    format!("aws.{key}"),
                    format!("must be between 1 and {most}"),
                ));
            }
        }
        if aws.sdk_attempt_timeout_seconds > aws.sdk_operation_timeout_seconds {
            return Err(invalid(
                "aws.sdk_attempt_timeout_seconds",
                "must not exceed aws.sdk_operation_timeout_seconds (the whole call's bound)",
            ));
        }
        Ok(())
    }

    fn validate_business_model(&self) -> Result<(), ConfigError> {
        let global = &self.business_model;
        for (key, missing) in [
            ("account_model", global.account_model.is_none()),
            (
                "provider_email_domain",
                global
                    .provider_email_domain
                    .as_deref()
                    .is_none_or(str::is_empty),
            ),
            ("spam_email_template", global.spam_email_template.is_none()),
        ] {
            if missing {
                return Err(invalid(format!("business_model.{key}"), "must be set"));
            }
        }
        for (kind, payer) in [
            ("test", &self.connections.test),
            ("preview", &self.connections.preview),
        ] {
            if let Some(payer) = payer {
                self.payer_exists(&format!("connections.{kind}"), payer)?;
            }
        }
        for (layer, applicable) in self.layers().every() {
            let path = layer.place.key();
            match layer.place {
                Place::Global => {}
                Place::Marketplace(id) => {
                    MarketplaceId::parse(id).map_err(|e| invalid(&path, e.to_string()))?;
                }
                Place::Opco { account, .. } => {
                    TierAccountId::parse(account).map_err(|e| invalid(&path, e.to_string()))?;
                }
            }
            layer
                .settings
                .validate()
                .map_err(|issue| invalid(format!("{path}.{}", issue.key), issue.message))?;
            if let Some(payer) = layer.settings.payer.as_deref() {
                self.payer_exists(&format!("{path}.payer"), payer)?;
            }
            check_spam_email(layer, &applicable)?;
        }
        Ok(())
    }

    /// `payer`, set at `key`, must name a `[payers.NAME]` entry.
    fn payer_exists(&self, key: &str, payer: &str) -> Result<(), ConfigError> {
        if self.payers.contains_key(payer) {
            return Ok(());
        }
        let known: Vec<&str> = self.payers.keys().map(String::as_str).collect();
        Err(invalid(
            key,
            format!(
                "payer `{payer}` has no [payers.{payer}] entry (configured: {})",
                known.join(", ")
            ),
        ))
    }
}

/// The SPAM email rendered where `layer` applies, when the layer sets its template or its
/// domain, must be an address on the provider domain; the other values come from the layers
/// that apply with it. (An OPCO override of a marketplace that is not `multi_payer` applies
/// nowhere: its values are checked on their own only.)
fn check_spam_email(layer: Layer<'_>, applicable: &Applicable<'_>) -> Result<(), ConfigError> {
    let own = layer.settings;
    if own.spam_email_template.is_none() && own.provider_email_domain.is_none() {
        return Ok(());
    }
    if !applicable.includes(&layer.place) {
        return Ok(());
    }
    let template = applicable.pick(|s| s.spam_email_template.as_deref());
    let domain = applicable.pick(|s| s.provider_email_domain.as_deref());
    let (Some((template, _)), Some((domain, _))) = (template, domain) else {
        return Ok(());
    };
    check_spam_template(template, domain).map_err(|message| {
        invalid(
            format!("{}.spam_email_template", layer.place.key()),
            message,
        )
    })
}

/// A loading error, naming the key and where its value came from when figment knows them.
fn load_error(error: figment::Error) -> ConfigError {
    let source = error
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    let message = format!("{} (from {source})", error.kind);
    if error.path.is_empty() {
        return ConfigError::Load(message);
    }
    let key = error.path.join(".");
    // Environment keys are matched lower-cased; figment reports them as written.
    let from_env = source.contains("environment");
    invalid(if from_env { key.to_lowercase() } else { key }, message)
}

/// The first key (dotted path) present in `given` but not in `known`.
fn unknown_key(given: &Dict, known: &Value, path: &str) -> Option<String> {
    let known = known.as_dict();
    given.iter().find_map(|(key, value)| {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match known.and_then(|k| k.get(key)) {
            None => Some(full),
            Some(known_value) => match value {
                Value::Dict(_, inner) => unknown_key(inner, known_value, &full),
                _ => None,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [business_model]
        provider_email_domain = "provider.com"
    "#;

    /// The error for `toml` laid over a valid file; `[business_model]` cases bring their own.
    fn error_of(toml: &str) -> String {
        let text = if toml.contains("[business_model]") {
            format!("{toml}\nprovider_email_domain = \"provider.com\"")
        } else {
            format!("{VALID}\n{toml}")
        };
        Settings::from_toml(&text).expect_err("invalid").to_string()
    }

    #[test]
    fn defaults_plus_the_provider_domain_are_valid() {
        let settings = Settings::from_toml(VALID).expect("valid");
        assert_eq!(settings.amqp.orders_queue, "aws-account-orders");
        assert_eq!(settings.retry.max_attempts, 8);
        assert_eq!(settings.aws.max_concurrent_creations, 5);
        assert_eq!(settings.business_model.payer.as_deref(), Some("default"));
    }

    #[test]
    fn composed_queue_names_fit_in_255_bytes_or_name_their_key() {
        let long = |n: usize| "q".repeat(n);
        // Each base name is within AMQP's 255 bytes; what is composed from it is not.
        #[rustfmt::skip]
        let cases = [
            // `.busy.` and a 64-byte lock key after 190 bytes: 260.
            (format!("[amqp]\norders_queue = \"{}\"", long(190)), "amqp.orders_queue", "an order lock's queue"),
            // `.300000ms` after 250 bytes.
            (format!("[amqp]\nretry_queue_prefix = \"{}\"", long(250)), "amqp.retry_queue_prefix", "a retry queue"),
            // A long payer name in a slot's queue.
            (format!("[payers.{}]", long(240)), "amqp.orders_queue", "a creation slot's queue"),
        ];
        for (toml, key, what) in cases {
            let err = error_of(&toml);
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
            assert!(err.contains(what) && err.contains("255"), "{err}");
        }
        // The longest names that fit: 255 bytes exactly.
        let fits = format!(
            "[amqp]\norders_queue = \"{}\"",
            long(255 - ".busy.".len() - 64)
        );
        Settings::from_toml(&format!("{VALID}\n{fits}")).expect("a lock queue of 255 bytes");
    }

    #[test]
    fn the_built_in_defaults_require_a_provider_domain() {
        let err = Settings::from_toml("").expect_err("no domain").to_string();
        assert!(
            err.contains("business_model.provider_email_domain"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[amqp]\nprefetch = 0", "amqp.prefetch"),
            ("[amqp]\ndelivery_limit = 0", "amqp.delivery_limit"),
            ("[amqp]\ndelivery_limit = 101", "amqp.delivery_limit"),
            ("[amqp]\nprefetch = \"many\"", "prefetch"),
            ("[amqp]\nurl = \"http://x\"", "amqp.url"),
            ("[amqp]\nprefech = 3", "amqp.prefech"),
            (
                "[retry]\nmax_delay_ms = 10\ninitial_delay_ms = 100",
                "retry.max_delay_ms",
            ),
            ("[retry]\nmax_replays = 0", "retry.max_replays"),
            (
                "[retry]\nmax_order_age_seconds = 0",
                "retry.max_order_age_seconds",
            ),
            (
                "[aws]\nmember_role_name = \"bad role\"",
                "aws.member_role_name",
            ),
            (
                "[observability]\nlisten = \"nowhere\"",
                "observability.listen",
            ),
            (
                "[business_model]\nservice_control_policies = [\"x\"]",
                "business_model.service_control_policies",
            ),
            (
                "[business_model]\nspam_email_template = \"{customer_id}@other.com\"",
                "business_model.spam_email_template",
            ),
            (
                "[marketplaces.\"MP-1\"]\naccount_model = \"HYBRID\"",
                "marketplaces.MP-1",
            ),
            (
                "[marketplaces.\"MP-1\"]\naccuont_model = \"ECAM\"",
                "marketplaces.MP-1.accuont_model",
            ),
            (
                "[marketplaces.\"XX-1\"]\naccount_model = \"ECAM\"",
                "marketplaces.\"XX-1\"",
            ),
            (
                "[marketplaces.\"MP-1\".opcos.\"TA-1\"]\nservice_control_policies = [\"p-x\"]",
                "marketplaces.\"MP-1\".opcos.\"TA-1\".service_control_policies",
            ),
            (
                "[marketplaces.\"MP-1\".opcos.\"TA-1\"]\nsurprise = 1",
                "marketplaces.MP-1.opcos.TA-1.surprise",
            ),
            (
                "[payers.b]\nrole_arn = \"arn:aws:iam::1:role/x\"",
                "payers.b.role_arn",
            ),
            (
                "[payers.b]\nrole_arn = \"arn:aws:iam::111122223333:user/x\"",
                "payers.b.role_arn",
            ),
            (
                "[payers.b]\nrole_arn = \"arn:aws:iam::111122223333:role/bad name\"",
                "payers.b.role_arn",
            ),
            (
                "[payers.b]\nrole_ar = \"arn:aws:iam::111122223333:role/x\"",
                "payers.b.role_ar",
            ),
            (
                "[business_model]\npayer = \"nobody\"",
                "business_model.payer",
            ),
            ("[connections]\ntest = \"sandbox\"", "connections.test"),
            ("[connections]\npreview = \"nobody\"", "connections.preview"),
            (
                "[connections]\nstaging = \"default\"",
                "connections.staging",
            ),
            (
                "[aws]\niam_user_access_to_billing = \"MAYBE\"",
                "iam_user_access_to_billing",
            ),
            (
                "[marketplaces.\"MP-1\"]\npayer = \"b\"",
                "marketplaces.\"MP-1\".payer",
            ),
            (
                "[payers.b]\n[marketplaces.\"MP-1\".opcos.\"TA-1\"]\npayer = \"c\"",
                "marketplaces.\"MP-1\".opcos.\"TA-1\".payer",
            ),
            (
                "[business_model]\norganizational_unit_id = \"ou-ab12\"",
                "business_model.organizational_unit_id",
            ),
            (
                "[marketplaces.\"MP-1\"]\norganizational_unit_id = \"OU-AB12-CDEF3456\"",
                "marketplaces.\"MP-1\".organizational_unit_id",
            ),
            (
                "[marketplaces.\"MP-1\"]\niam_user_template_id = \"TL-12a-345\"",
                "marketplaces.\"MP-1\".iam_user_template_id",
            ),
            (
                "[marketplaces.\"MP-1\".opcos.\"TA-1\"]\nroot_user_template_id = \"TL-\"",
                "marketplaces.\"MP-1\".opcos.\"TA-1\".root_user_template_id",
            ),
            (
                "[aws]\nsdk_connect_timeout_ms = 0",
                "aws.sdk_connect_timeout_ms",
            ),
            ("[aws]\nsdk_max_attempts = 0", "aws.sdk_max_attempts"),
            ("[aws]\nsdk_max_attempts = 21", "aws.sdk_max_attempts"),
            (
                "[aws]\nsdk_connect_timeout_ms = 600000",
                "aws.sdk_connect_timeout_ms",
            ),
            (
                "[aws]\nsdk_attempt_timeout_seconds = 0",
                "aws.sdk_attempt_timeout_seconds",
            ),
            (
                "[aws]\nsdk_attempt_timeout_seconds = 90",
                "aws.sdk_attempt_timeout_seconds",
            ),
            (
                "[aws]\nsdk_operation_timeout_seconds = 0",
                "aws.sdk_operation_timeout_seconds",
            ),
            (
                "[aws]\nsdk_operation_timeout_seconds = 86400",
                "aws.sdk_operation_timeout_seconds",
            ),
            (
                "[aws]\nmax_calls_in_flight_per_payer = 0",
                "aws.max_calls_in_flight_per_payer",
            ),
            (
                "[aws]\nmax_calls_in_flight_per_payer = 100000",
                "aws.max_calls_in_flight_per_payer",
            ),
            (
                "[aws]\nmax_calls_in_flight_per_payer = -1",
                "max_calls_in_flight_per_payer",
            ),
        ];
        for (toml, key) in cases {
            let err = error_of(toml);
            assert!(err.contains(key), "{toml:?}: {err}");
        }
    }

    #[test]
    fn marketplace_and_opco_sections_load() {
        let settings = Settings::from_toml(&format!(
            "{VALID}\n[marketplaces.\"MP-91673\"]\nmulti_payer = true\naccount_model = \"ECAM\"\n\
             [marketplaces.\"MP-91673\".opcos.\"TA-0-1\"]\nservice_control_policies = [\"p-abcd1234\"]"
        ))
        .expect("valid");
        let section = &settings.marketplaces["MP-91673"];
        assert!(section.multi_payer);
        assert_eq!(
            section.settings.account_model,
            Some(crate::domain::model::AccountModel::Ecam)
        );
        assert_eq!(
            section.opcos["TA-0-1"].service_control_policies,
            Some(vec!["p-abcd1234".to_owned()])
        );
    }

    #[test]
    fn payers_with_roles_and_their_placement_load() {
        let settings = Settings::from_toml(&format!(
            "{VALID}\norganizational_unit_id = \"ou-ab12-cdef3456\"\n\
             iam_user_template_id = \"TL-111-222-333\"\n\
             [payers.b]\nrole_arn = \"arn:aws:iam::111122223333:role/vending/AccountVending\"\n\
             [marketplaces.\"MP-91673\"]\nmulti_payer = true\nroot_user_template_id = \"TL-444-555\"\n\
             [marketplaces.\"MP-91673\".opcos.\"TA-0-1\"]\npayer = \"b\"\norganizational_unit_id = \"r-ab12\""
        ))
        .expect("valid");
        assert_eq!(
            settings.payers.keys().collect::<Vec<_>>(),
            ["b", "default"],
            "the built-in default payer stays"
        );
        assert_eq!(
            settings.marketplaces["MP-91673"].opcos["TA-0-1"]
                .payer
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn connections_name_payers() {
        let settings = Settings::from_toml(&format!(
            "{VALID}\n[payers.sandbox]\n[connections]\ntest = \"sandbox\"\npreview = \"default\""
        ))
        .expect("valid");
        assert_eq!(settings.connections.test.as_deref(), Some("sandbox"));
        assert_eq!(
            settings.rules().connections.preview.as_deref(),
            Some("default")
        );
        let defaults = Settings::from_toml(VALID).expect("valid");
        assert_eq!(defaults.connections, Connections::default());
        assert_eq!(
            defaults.aws.iam_user_access_to_billing,
            AccessToBilling::Allow
        );
        assert_eq!(defaults.aws.member_account_ready_seconds, 300);
    }

    #[test]
    fn the_url_never_prints() {
        let settings = Settings::from_toml(VALID).expect("valid");
        assert!(!format!("{settings:?}").contains("guest:guest"));
    }
}
