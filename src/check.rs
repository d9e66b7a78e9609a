//! `aws-account-worker check`: tries a deployment before it takes orders. Nine checks run in a
//! fixed order and each reports one [`Line`] (the organization check one per payer):
//! `ok   <check>: <detail>`, `FAIL <check>: <reason>; <what to do>`, or `skip <check>: <why not>`
//! when a check depends on one that failed (the topology needs the broker, the policies the topology; the organization
//! needs AWS credentials; the SCP ids need the organization). A skipped check is not a failure
//! of its own: the check it depends on already failed. The configuration itself was loaded and
//! validated before any of this runs: a configuration that does not load exits 2 naming the
//! key, as `run` does.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::aws::CallLimits;
use crate::aws::probe::{OrganizationInfo, Probe, ProbeError, ProbeFailure, SdkProbe};
use crate::broker::in_force::{self, QueueState};
use crate::broker::management::Management;
use crate::broker::{self, topology};
use crate::config::{ENV_PREFIX, Settings};
use crate::domain::arn::{POLICY_ARN_SHAPE, PolicyArn, RoleArn};

/// How long the broker check waits for the broker to answer, in its one attempt.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The checks, in the order they run.
pub const CHECKS: [&str; 9] = [
    CONFIGURATION,
    CONNECTIONS,
    IAM_NAMES,
    BROKER,
    TOPOLOGY,
    POLICIES,
    AWS_CREDENTIALS,
    ORGANIZATION,
    SCPS,
];
/// The configuration loads and is valid.
pub const CONFIGURATION: &str = "configuration";
/// Where each Connect connection type's orders go (`[connections]`).
pub const CONNECTIONS: &str = "connections";
/// The member role name and the IAM user policy ARNs are well-formed.
pub const IAM_NAMES: &str = "iam names";
/// The broker answers at `amqp.url`.
pub const BROKER: &str = "broker";
/// Every exchange and queue the worker uses exists.
pub const TOPOLOGY: &str = "topology";
/// The RabbitMQ policies in force on the worker's queues are the ones it expects.
pub const POLICIES: &str = "policies";
/// The SDK's credentials work (STS `GetCallerIdentity`).
pub const AWS_CREDENTIALS: &str = "aws credentials";
/// The caller manages an organization with all features and SCPs enabled.
pub const ORGANIZATION: &str = "organization";
/// Every configured SCP id exists.
pub const SCPS: &str = "service control policies";

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It passed.
    Ok,
    /// It failed: `check` exits 1.
    Fail,
    /// It did not run because a check it depends on failed.
    Skip,
}

/// One check's result, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// How it ended.
    pub status: Status,
    /// Which check, one of [`CHECKS`].
    pub check: &'static str,
    /// The detail (ok), the reason and what to do (FAIL), or why it did not run (skip).
    pub text: String,
}

impl Line {
    fn new(status: Status, check: &'static str, text: &str) -> Self {
        // One line per check, whatever a broker or AWS message holds.
        let text = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        Self {
            status,
            check,
            text,
        }
    }

    fn ok(check: &'static str, text: impl AsRef<str>) -> Self {
        Self::new(Status::Ok, check, text.as_ref())
    }

    fn fail(check: &'static str, reason: impl fmt::Display, action: impl fmt::Display) -> Self {
        Self::new(Status::Fail, check, &format!("{reason}; {action}"))
    }

    fn skip(check: &'static str, text: impl AsRef<str>) -> Self {
        Self::new(Status::Skip, check, text.as_ref())
    }

    /// The same line, naming the payer it is about.
    fn for_payer(self, payer: &str) -> Self {
        let text = format!("payer {payer}: {}", self.text);
        Self::new(self.status, self.check, &text)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        write!(f, "{tag} {}: {}", self.check, self.text)
    }
}

/// Every line of a run, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// One per check.
    pub lines: Vec<Line>,
}

impl Summary {
    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.count(Status::Fail)
    }

    /// How many checks did not run.
    pub fn skipped(&self) -> usize {
        self.count(Status::Skip)
    }

    fn count(&self, status: Status) -> usize {
        self.lines.iter().filter(|l| l.status == status).count()
    }

    /// The run as one JSON document (`check --format json`): `{"ok": bool, "failed": n,
    /// "skipped": n, "checks": [{"name", "status": "ok"|"fail"|"skip", "detail"}, ...]}`, the
    /// checks in the order they ran.
    pub fn to_json(&self) -> serde_json::Value {
        let checks: Vec<_> = self
            .lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "name": line.check,
                    "status": line.status.as_str(),
                    "detail": line.text,
                })
            })
            .collect();
        serde_json::json!({
            "ok": self.failed() == 0,
            "failed": self.failed(),
            "skipped": self.skipped(),
            "checks": checks,
        })
    }
}

impl Status {
    /// `ok`, `fail` or `skip`, as JSON output names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// Runs every check with the AWS SDK configuration `run` uses and [`BROKER_TIMEOUT`], writing
/// each line to standard output as soon as it is known. `file` is the configuration file the
/// settings were loaded from, if any (it is named in the first line).
pub async fn run_and_print(settings: &Settings, file: Option<&Path>) -> Summary {
    run_with_sdk(settings, file, |line| {
        // A closed standard output (`check | head -1`) must not stop the checks.
        let _ = writeln!(std::io::stdout(), "{line}");
    })
    .await
}

/// Runs every check as [`run_and_print`] does, handing each line to `emit` instead of printing
/// it (`check --format json` prints the [`Summary`] once at the end).
pub async fn run_with_sdk(
    settings: &Settings,
    file: Option<&Path>,
    emit: impl FnMut(&Line),
) -> Summary {
    let aws = crate::aws::sdk::load_config(&CallLimits::from_settings(&settings.aws)).await;
    let mut payers = BTreeMap::new();
    for (name, payer) in &settings.payers {
        let config = crate::aws::sdk::payer_config(&aws, payer.role_arn.as_ref()).await;
        payers.insert(
            name.clone(),
            PayerProbe {
                role_arn: payer.role_arn.clone(),
                probe: SdkProbe::new(&config),
            },
        );
    }
    let probes = Probes {
        own: SdkProbe::new(&aws),
        payers,
    };
    run(settings, file, &probes, BROKER_TIMEOUT, emit).await
}

/// What `check` asks AWS through: the SDK's own credentials, and each payer's.
pub struct Probes<P> {
    /// With the SDK's own credentials.
    pub own: P,
    /// By `[payers.NAME]` name.
    pub payers: BTreeMap<String, PayerProbe<P>>,
}

/// One payer's view of AWS.
pub struct PayerProbe<P> {
    /// The role assumed for this payer; `None`: the SDK's own credentials.
    pub role_arn: Option<RoleArn>,
    /// With this payer's credentials.
    pub probe: P,
}

impl<P> Probes<P> {
    /// The payers, `default` first; and whether there is only `default`, without a role (then
    /// the lines name no payer).
    fn payers(&self) -> (Vec<(&String, &PayerProbe<P>)>, bool) {
        let mut payers: Vec<_> = self.payers.iter().collect();
        payers.sort_by_key(|(name, _)| name.as_str() != "default");
        let only_default = matches!(
            payers.as_slice(),
            [(name, payer)] if name.as_str() == "default" && payer.role_arn.is_none()
        );
        (payers, only_default)
    }
}

/// Runs the checks in order against the broker of `settings` and AWS through `probes`, handing
/// each line to `emit` as soon as it is known. The organization check prints one line per payer.
pub async fn run<P: Probe>(
    settings: &Settings,
    file: Option<&Path>,
    probes: &Probes<P>,
    broker_timeout: Duration,
    mut emit: impl FnMut(&Line),
) -> Summary {
    let mut summary = Summary::default();
    let mut report = |line: Line| {
        emit(&line);
        summary.lines.push(line);
    };

    report(configuration(file, &environment_keys()));
    report(connections(settings));
    report(iam_names(settings));
    broker_checks(settings, broker_timeout, &mut report).await;
    aws_checks(settings, probes, &mut report).await;
    summary
}

/// The broker, its topology and its policies; each check past a failed one is skipped.
async fn broker_checks(
    settings: &Settings,
    broker_timeout: Duration,
    report: &mut impl FnMut(Line),
) {
    let connection = match broker::connect_once(&settings.amqp.url, broker_timeout).await {
        Ok(connection) => {
            report(Line::ok(
                BROKER,
                format!("connected to {}", broker_address(settings)),
            ));
            connection
        }
        Err(e) => {
            report(Line::fail(
                BROKER,
                format!("cannot connect to {}: {e}", broker_address(settings)),
                "check amqp.url (WORKER__AMQP__URL): host, port, user, password and vhost, and that RabbitMQ runs and this host can reach it",
            ));
            let unreachable = "not checked: the broker is not reachable";
            report(Line::skip(TOPOLOGY, unreachable));
            report(Line::skip(POLICIES, unreachable));
            return;
        }
    };
    let topology = topology_line(&connection, settings).await;
    let complete = topology.status == Status::Ok;
    report(topology);
    // The answers are in; a close that fails changes nothing.
    let _ = connection.close(200, "check done".into()).await;
    report(if complete {
        policies_line(settings).await
    } else {
        Line::skip(POLICIES, "not checked: the topology is incomplete")
    });
}

/// The AWS credentials, each payer's organization, then the configured SCPs in the
/// organizations found.
async fn aws_checks<P: Probe>(
    settings: &Settings,
    probes: &Probes<P>,
    report: &mut impl FnMut(Line),
) {
    let identity = match probes.own.caller_identity().await {
        Ok(identity) => {
            report(Line::ok(
                AWS_CREDENTIALS,
                format!("account {}, {}", identity.account, identity.arn),
            ));
            Some(identity)
        }
        Err(e) => {
            report(Line::fail(AWS_CREDENTIALS, &e, credentials_hint(&e)));
            None
        }
    };

    let (payers, only_default) = probes.payers();
    let mut organizations = BTreeMap::new();
    for (name, payer) in &payers {
        let (line, organization) = match (&identity, &payer.role_arn) {
            (None, _) => (
                Line::skip(ORGANIZATION, "not checked: the AWS credentials do not work"),
                None,
            ),
            (Some(identity), None) => organization(&payer.probe, &identity.account).await,
            (Some(_), Some(role)) => assumed_organization(&payer.probe, role).await,
        };
        report(if only_default {
            line
        } else {
            line.for_payer(name)
        });
        organizations.insert(name.as_str(), organization);
    }

    let configured = configured_scps(settings);
    let mut lines = Vec::new();
    for (name, payer) in &payers {
        let Some(configured) = configured.get(name.as_str()).filter(|c| !c.is_empty()) else {
            continue;
        };
        let line = match organizations.get(name.as_str()).and_then(Option::as_ref) {
            Some(organization) => scps(&payer.probe, organization, configured).await,
            None if identity.is_none() => {
                Line::skip(SCPS, "not checked: the AWS credentials do not work")
            }
            None => Line::skip(SCPS, "not checked: no organization to look in"),
        };
        lines.push((name.as_str(), line));
    }
    report(match lines.as_slice() {
        [] => Line::ok(SCPS, "none configured"),
        [(_, line)] if only_default => line.clone(),
        _ => combined(SCPS, lines),
    });
}

/// The `WORKER__…` variables set in the environment (names only: values may be secret).
fn environment_keys() -> Vec<String> {
    let mut keys: Vec<String> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| {
            key.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
        })
        .collect();
    keys.sort();
    keys
}

/// Check 1: the settings loaded, so they are valid; says where they came from.
fn configuration(file: Option<&Path>, environment: &[String]) -> Line {
    let mut sources = vec!["built-in defaults".to_owned()];
    if let Some(file) = file {
        sources.push(file.display().to_string());
    }
    if !environment.is_empty() {
        sources.push(format!("environment {}", environment.join(", ")));
    }
    Line::ok(CONFIGURATION, format!("valid ({})", sources.join(" + ")))
}

/// Check 2: where each connection type's orders go (the payers were validated with the
/// configuration, so this only says it).
fn connections(settings: &Settings) -> Line {
    use crate::domain::model::Routing;
    use crate::domain::order::ConnectionType;
    let connections = &settings.connections;
    let text: Vec<String> = [
        ConnectionType::Production,
        ConnectionType::Test,
        ConnectionType::Preview,
    ]
    .iter()
    .map(|kind| {
        let goes = match connections.route(kind) {
            Routing::Layers => "the payer its business-model layers choose".to_owned(),
            Routing::Payer { key, payer } => format!("payer {payer} (connections.{key})"),
            Routing::Refused => "refused, CONNECTION_NOT_ALLOWED, nothing created".to_owned(),
        };
        format!("{} -> {goes}", kind.as_str())
    })
    .collect();
    Line::ok(CONNECTIONS, text.join("; "))
}

/// Check 3: the member role name and every IAM user policy ARN of every layer, in the one
/// grammar of each that the configuration was validated with (so a configuration that loaded
/// passes; the check says what it holds).
fn iam_names(settings: &Settings) -> Line {
    let mut arns = 0;
    let mut bad = Vec::new();
    for (layer, _) in settings.layers().every() {
        for arn in layer.settings.iam_user_policy_arns.iter().flatten() {
            arns += 1;
            if let Err(e) = PolicyArn::parse(arn) {
                bad.push(format!(
                    "`{arn}` in {}.iam_user_policy_arns: {}",
                    layer.place.key(),
                    e.problem
                ));
            }
        }
    }
    if !bad.is_empty() {
        return Line::fail(
            IAM_NAMES,
            bad.join(", "),
            format!("write each as {POLICY_ARN_SHAPE}"),
        );
    }
    let plural = if arns == 1 { "" } else { "s" };
    Line::ok(
        IAM_NAMES,
        format!(
            "member role `{}`, {arns} IAM user policy ARN{plural} well-formed",
            settings.aws.member_role_name
        ),
    )
}

/// Where the broker is, without the password: `host:port, vhost V, user U`.
fn broker_address(settings: &Settings) -> String {
    broker::address(&settings.amqp.url)
}

/// Check 5: passive declares of every exchange and queue the worker uses.
async fn topology_line(connection: &lapin::Connection, settings: &Settings) -> Line {
    let expected = topology::names(&settings.amqp, &settings.retry);
    match topology::missing(connection, &settings.amqp, &settings.retry).await {
        Ok(missing) if missing.is_empty() => Line::ok(
            TOPOLOGY,
            format!(
                "all {} exchanges and {} queues present",
                expected.exchanges.len(),
                expected.queues.len()
            ),
        ),
        Ok(missing) => {
            let mut parts = Vec::new();
            if !missing.exchanges.is_empty() {
                parts.push(format!("exchanges {}", missing.exchanges.join(", ")));
            }
            if !missing.queues.is_empty() {
                parts.push(format!("queues {}", missing.queues.join(", ")));
            }
            Line::fail(
                TOPOLOGY,
                format!("missing {}", parts.join(" and ")),
                "start the worker once (it declares its topology at start-up), or import deploy/rabbitmq/definitions.json (it holds the default names)",
            )
        }
        Err(e) => Line::fail(
            TOPOLOGY,
            format!("cannot look for the exchanges and queues: {e}"),
            "check the broker user's permissions on the vhost",
        ),
    }
}

/// Check 5: the policies in force on every queue, read through the management API.
async fn policies_line(settings: &Settings) -> Line {
    let management = match Management::from_settings(&settings.amqp) {
        Ok(management) => management,
        Err(e) => return Line::fail(POLICIES, e, "fix amqp.management_url"),
    };
    let mut queues = Vec::new();
    for name in topology::names(&settings.amqp, &settings.retry).queues {
        match management.queue(&name).await {
            Ok(queue) => queues.push((name, queue.as_ref().map(QueueState::from_api))),
            Err(e) => {
                return Line::fail(
                    POLICIES,
                    format!(
                        "cannot read the policies through the management API at {}: {e}",
                        management.address()
                    ),
                    "enable the rabbitmq_management plugin, give the user the monitoring tag, or set amqp.management_url",
                );
            }
        }
    }
    match in_force::compare(&settings.amqp, &queues) {
        Ok(summary) => Line::ok(POLICIES, summary),
        Err(problems) => Line::fail(
            POLICIES,
            problems.join("; "),
            "apply the policies of deploy/rabbitmq/definitions.json (names, patterns, priority 10), with the values the configuration expects",
        ),
    }
}

/// True for an answer without an error code and with a 5xx status.
fn is_server_error(error: &ProbeError) -> bool {
    matches!(&error.failure, ProbeFailure::Service(code) if code.starts_with("HTTP 5"))
}

/// What to do when AWS gave no answer.
const UNREACHABLE_HINT: &str =
    "check the network path to AWS, the region, and AWS_ENDPOINT_URL if it is set";

/// What to do when AWS answered with a server error and no error code.
const SERVER_ERROR_HINT: &str =
    "AWS (or AWS_ENDPOINT_URL, if it is set) failed on its side: try again later";

/// What to do about failed credentials.
fn credentials_hint(error: &ProbeError) -> &'static str {
    if is_server_error(error) {
        return SERVER_ERROR_HINT;
    }
    match error.failure {
        ProbeFailure::Unreachable => UNREACHABLE_HINT,
        ProbeFailure::Service(_) => {
            "check the credentials the SDK finds (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE, web identity, instance role)"
        }
        ProbeFailure::NotSent => {
            "give the SDK credentials and a region (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, instance role)"
        }
    }
}

/// What to do about a failed Organizations call.
fn organizations_hint(error: &ProbeError) -> &'static str {
    match error.failure {
        ProbeFailure::Unreachable => UNREACHABLE_HINT,
        _ if is_server_error(error) => SERVER_ERROR_HINT,
        _ => {
            "allow the calls of deploy/iam/payer-policy.json (statement CheckTheOrganization) to the worker's credentials"
        }
    }
}

/// Check 7: the caller's organization has all features, the caller is its management account,
/// and SCPs are enabled on its root. Returns the organization when it exists, for check 7.
async fn organization<P: Probe>(probe: &P, caller: &str) -> (Line, Option<OrganizationInfo>) {
    let organization = match probe.organization().await {
        Ok(organization) => organization,
        Err(e) if e.is_code("AWSOrganizationsNotInUseException") => {
            return (
                Line::fail(
                    ORGANIZATION,
                    format!("account {caller} is not in an organization ({e})"),
                    "use the credentials of the payer's management account, or create its organization with all features",
                ),
                None,
            );
        }
        Err(e) => return (Line::fail(ORGANIZATION, &e, organizations_hint(&e)), None),
    };
    let mut problems: Vec<(String, String)> = Vec::new();
    if organization.feature_set != "ALL" {
        problems.push((
            format!("feature set is {}, not ALL", organization.feature_set),
            "enable all features in the organization (SCPs need them)".to_owned(),
        ));
    }
    if organization.management_account != caller {
        problems.push((
            format!(
                "account {caller} is a member, not the management account {}",
                organization.management_account
            ),
            "use the management account's credentials (only it can call CreateAccount)".to_owned(),
        ));
    }
    let mut root_id = None;
    match probe.roots().await {
        Ok(roots) => match roots.first() {
            Some(root) if root.scps_enabled() => root_id = Some(root.id.clone()),
            Some(root) => problems.push((
                format!(
                    "the SERVICE_CONTROL_POLICY type is {} on root {}",
                    root.scp_status.as_deref().unwrap_or("not enabled"),
                    root.id
                ),
                format!(
                    "enable it: aws organizations enable-policy-type --root-id {} --policy-type SERVICE_CONTROL_POLICY",
                    root.id
                ),
            )),
            None => problems.push((
                "ListRoots lists no root".to_owned(),
                "check the organization in the AWS console".to_owned(),
            )),
        },
        Err(e) => problems.push((e.to_string(), organizations_hint(&e).to_owned())),
    }
    let line = match root_id {
        Some(root) if problems.is_empty() => Line::ok(
            ORGANIZATION,
            format!(
                "{}, management account {}, all features, SCPs enabled on root {root}",
                organization.id, organization.management_account
            ),
        ),
        _ => {
            let (reasons, actions): (Vec<String>, Vec<String>) = problems.into_iter().unzip();
            Line::fail(
                ORGANIZATION,
                format!("{}: {}", organization.id, reasons.join(" and ")),
                actions.join(", then "),
            )
        }
    };
    (line, Some(organization))
}

/// Check 7 for a payer with a role: the role can be assumed (`GetCallerIdentity` with its
/// credentials), then the organization as seen by the assumed role.
async fn assumed_organization<P: Probe>(
    probe: &P,
    role: &RoleArn,
) -> (Line, Option<OrganizationInfo>) {
    match probe.caller_identity().await {
        Ok(assumed) => {
            let (line, organization) = organization(probe, &assumed.account).await;
            let text = format!("role {role}: {}", line.text);
            (Line::new(line.status, line.check, &text), organization)
        }
        Err(e) => (
            Line::fail(
                ORGANIZATION,
                format!("cannot assume the role {role}: {e}"),
                "allow the worker's identity sts:AssumeRole on it (deploy/iam/payer-policy.json, AssumeTheRolesOfOtherPayers) and trust that identity in the role's trust policy",
            ),
            None,
        ),
    }
}

/// One line for several payers' lines of `check`: the worst status, each payer's text.
fn combined(check: &'static str, lines: Vec<(&str, Line)>) -> Line {
    let status = if lines.iter().any(|(_, l)| l.status == Status::Fail) {
        Status::Fail
    } else if lines.iter().any(|(_, l)| l.status == Status::Skip) {
        Status::Skip
    } else {
        Status::Ok
    };
    let text: Vec<String> = lines
        .into_iter()
        .map(|(payer, line)| format!("payer {payer}: {}", line.text))
        .collect();
    Line::new(status, check, &text.join(" | "))
}

/// Every distinct SCP id an order can get from the configuration (`service_control_policies`
/// and the deny-all `suspend_policy_id`), by the payer whose
/// organization it must exist in, with the keys that name it. Each place an order can resolve
/// at (the global defaults, each marketplace, each OPCO) takes its SCPs and its payer from the
/// layers that apply there, as resolution does (the same [`LayerTree`] walk: an OPCO override
/// applies only where its marketplace is `multi_payer`).
///
/// [`LayerTree`]: crate::domain::model::LayerTree
fn configured_scps(settings: &Settings) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut by_payer: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (_, applicable) in settings.layers().every() {
        let payer = applicable
            .pick(|s| s.payer.clone())
            .map_or_else(|| "default".to_owned(), |(payer, _)| payer);
        let attached = applicable
            .find(|s| s.service_control_policies.as_ref())
            .map(|(ids, layer)| {
                let key = format!("{}.service_control_policies", layer.place.key());
                (ids.clone(), key)
            });
        // The deny-all SCP of suspended accounts must be one too (section 10).
        let suspend = applicable
            .find(|s| s.suspend_policy_id.as_ref())
            .map(|(id, layer)| {
                let key = format!("{}.suspend_policy_id", layer.place.key());
                (vec![id.clone()], key)
            });
        for (ids, key) in attached.into_iter().chain(suspend) {
            for id in ids {
                let keys = by_payer
                    .entry(payer.clone())
                    .or_default()
                    .entry(id)
                    .or_default();
                if !keys.contains(&key) {
                    keys.push(key.clone());
                }
            }
        }
    }
    by_payer
}

/// Check 8: `DescribePolicy` of every configured SCP id.
async fn scps<P: Probe>(
    probe: &P,
    organization: &OrganizationInfo,
    configured: &BTreeMap<String, Vec<String>>,
) -> Line {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut wrong_type = Vec::new();
    let mut errors = Vec::new();
    for (id, keys) in configured {
        let keys = keys.join(", ");
        match probe.policy(id).await {
            Ok(Some(policy)) if policy.is_scp() => found.push(format!("{id} ({})", policy.name)),
            Ok(Some(policy)) => wrong_type.push(format!(
                "{id} is a {}, not a service control policy (in {keys})",
                policy.kind
            )),
            Ok(None) => missing.push(format!("{id} (in {keys})")),
            Err(e) => errors.push((format!("{id}: {e}"), organizations_hint(&e))),
        }
    }
    if missing.is_empty() && wrong_type.is_empty() && errors.is_empty() {
        let plural = if found.len() == 1 { "" } else { "s" };
        return Line::ok(
            SCPS,
            format!("{} SCP{plural} found: {}", found.len(), found.join(", ")),
        );
    }
    let mut reasons = Vec::new();
    let mut actions = Vec::new();
    if !missing.is_empty() {
        reasons.push(format!(
            "not found in {}: {}",
            organization.id,
            missing.join(", ")
        ));
        actions.push(
            "create them in the payer's organization or fix the ids where they are configured",
        );
    }
    if !wrong_type.is_empty() {
        reasons.push(wrong_type.join(", "));
        actions.push("configure service control policy ids only");
    }
    if !errors.is_empty() {
        let (messages, hints): (Vec<String>, Vec<&str>) = errors.into_iter().unzip();
        reasons.push(format!("cannot describe {}", messages.join(", ")));
        if let Some(hint) = hints.first() {
            actions.push(hint);
        }
    }
    Line::fail(SCPS, reasons.join(" and "), actions.join(", and "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::probe::{CallerIdentity, PolicyInfo, RootInfo};

    #[test]
    fn lines_start_with_a_five_character_status() {
        let lines = [
            Line::ok(BROKER, "connected"),
            Line::fail(BROKER, "down\n  and out", "start it"),
            Line::skip(TOPOLOGY, "not checked"),
        ];
        let printed: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "ok   broker: connected",
                "FAIL broker: down and out; start it",
                "skip topology: not checked"
            ]
        );
    }

    /// Every layer of `settings`, mutably.
    fn layers_mut(settings: &mut Settings) -> Vec<&mut crate::domain::model::ModelSettings> {
        let mut layers = vec![&mut settings.business_model];
        for section in settings.marketplaces.values_mut() {
            layers.push(&mut section.settings);
            layers.extend(section.opcos.values_mut());
        }
        layers
    }

    /// Configuration and `check` read an ARN with one grammar, wherever it is placed: start-up
    /// validation accepts exactly what the IAM names check accepts. (Before, configuration took
    /// `Admin Access`, an `awsx` partition and an empty name segment, which `check` refused.)
    #[test]
    fn configuration_and_check_agree_on_every_arn_and_layer() {
        const PLACEHOLDER: &str = "arn:aws:iam::aws:policy/Placeholder";
        let placements = [
            "",
            "[marketplaces.\"MP-1\"]\n",
            "[marketplaces.\"MP-1\"]\nmulti_payer = true\n[marketplaces.\"MP-1\".opcos.\"TA-1\"]\n",
            "[marketplaces.\"MP-1\".opcos.\"TA-1\"]\n",
        ];
        let arns = [
            ("arn:aws:iam::aws:policy/AdministratorAccess", true),
            ("arn:aws:iam::123456789012:policy/team/ReadOnly", true),
            ("arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess", true),
            ("arn:aws:iam::aws:policy/Admin Access", false),
            ("arn:awsx:iam::aws:policy/Admin", false),
            ("arn:aws:iam::aws:policy/team/", false),
            ("arn:aws:iam::aws:policy/Ädmin", false),
            ("arn:aws:iam::12345:policy/Admin", false),
            ("arn:aws:iam:us-east-1:aws:policy/Admin", false),
            ("arn:aws:iam::111122223333:role/AccountVending", false),
            ("AdministratorAccess", false),
        ];
        for placement in placements {
            for (arn, good) in arns {
                let toml = format!("{placement}iam_user_policy_arns = [\"{arn}\"]\n");
                let loads = Settings::from_toml(&format!(
                    "[business_model]\nprovider_email_domain = \"provider.example\"\n{toml}"
                ))
                .is_ok();
                let mut settings = self::settings(&format!(
                    "{placement}iam_user_policy_arns = [\"{PLACEHOLDER}\"]\n"
                ));
                for layer in layers_mut(&mut settings) {
                    for item in layer.iam_user_policy_arns.iter_mut().flatten() {
                        if item == PLACEHOLDER {
                            arn.clone_into(item);
                        }
                    }
                }
                let validates = settings.validate().is_ok();
                let checked = iam_names(&settings).status == Status::Ok;
                assert_eq!((loads, validates, checked), (good, good, good), "{toml}");
            }
        }
        for (role_arn, good) in [
            ("arn:aws:iam::111122223333:role/AccountVending", true),
            (
                "arn:aws:iam::111122223333:role/vending/AccountVending",
                true,
            ),
            ("arn:awsx:iam::111122223333:role/AccountVending", false),
            ("arn:aws:iam::1:role/x", false),
            ("arn:aws:iam::aws:policy/AdministratorAccess", false),
        ] {
            let loads = Settings::from_toml(&format!(
                "[business_model]\nprovider_email_domain = \"provider.example\"\n[payers.b]\nrole_arn = \"{role_arn}\"\n"
            ))
            .is_ok();
            assert_eq!(loads, good, "{role_arn}");
            assert_eq!(RoleArn::parse(role_arn).is_ok(), good, "{role_arn}");
        }
    }

    /// `check` looks for an SCP in exactly the payers where an order can get it, as resolution
    /// decides: an OPCO override counts only where its marketplace is `multi_payer`. (Before,
    /// `check` took every OPCO override, and looked for its SCP in its payer.)
    #[test]
    fn check_and_resolution_agree_on_the_layers_that_apply() {
        use crate::domain::order::parse;
        let order = |marketplace: &str, tier1: &str| {
            let body = serde_json::json!({
                "id": "PR-1-2", "type": "purchase",
                "asset": {"id": "AS-1", "marketplace": {"id": marketplace}, "tiers": {
                    "customer": {"id": "TA-0-1", "name": "C"}, "tier1": {"id": tier1}
                }}
            });
            parse(body.to_string().as_bytes()).expect("valid order")
        };
        for multi_payer in [false, true] {
            for market_scps in [None, Some("p-market01")] {
                let market_scps = market_scps.map_or_else(String::new, |id| {
                    format!("service_control_policies = [\"{id}\"]\n")
                });
                let settings = settings(&format!(
                    "service_control_policies = [\"p-global01\"]\n\
                     [payers.b]\n\
                     [marketplaces.\"MP-1\"]\nmulti_payer = {multi_payer}\n{market_scps}\
                     [marketplaces.\"MP-1\".opcos.\"TA-1\"]\npayer = \"b\"\nservice_control_policies = [\"p-opco0001\"]\n\
                     [marketplaces.\"MP-1\".opcos.\"TA-2\"]\npayer = \"b\"\n"
                ));
                let rules = settings.rules();
                let mut resolved = std::collections::BTreeSet::new();
                for (marketplace, tier1) in [
                    ("MP-9", "TA-9"),
                    ("MP-1", "TA-9"),
                    ("MP-1", "TA-1"),
                    ("MP-1", "TA-2"),
                ] {
                    let plan = rules.resolve(&order(marketplace, tier1)).expect("plan");
                    for id in &plan.service_control_policies {
                        resolved.insert((plan.payer.clone(), id.as_str().to_owned()));
                    }
                }
                let checked: std::collections::BTreeSet<_> = configured_scps(&settings)
                    .into_iter()
                    .flat_map(|(payer, ids)| ids.into_keys().map(move |id| (payer.clone(), id)))
                    .collect();
                assert_eq!(
                    checked, resolved,
                    "multi_payer {multi_payer}, {market_scps}"
                );
            }
        }
    }

    #[test]
    fn the_connections_line_says_where_each_type_goes() {
        let line = connections(&settings(
            "[payers.sandbox]\n[connections]\ntest = \"sandbox\"",
        ));
        assert_eq!(line.status, Status::Ok);
        assert_eq!(
            line.text,
            "production -> the payer its business-model layers choose; \
             test -> payer sandbox (connections.test); \
             preview -> refused, CONNECTION_NOT_ALLOWED, nothing created"
        );
    }

    fn settings(extra: &str) -> Settings {
        Settings::from_toml(&format!(
            "[business_model]\nprovider_email_domain = \"provider.example\"\n{extra}"
        ))
        .expect("valid settings")
    }

    #[test]
    fn scps_are_gathered_from_every_layer_with_their_keys() {
        let settings = settings(
            "service_control_policies = [\"p-aaaaaaaa\"]\n\
             [marketplaces.\"MP-1\"]\nmulti_payer = true\nservice_control_policies = [\"p-aaaaaaaa\", \"p-bbbbbbbb\"]\n\
             [marketplaces.\"MP-1\".opcos.\"TA-1\"]\nservice_control_policies = [\"p-cccccccc\"]\n",
        );
        let by_payer = configured_scps(&settings);
        assert_eq!(by_payer.keys().collect::<Vec<_>>(), ["default"]);
        let ids = &by_payer["default"];
        assert_eq!(
            ids["p-aaaaaaaa"],
            [
                "business_model.service_control_policies",
                "marketplaces.\"MP-1\".service_control_policies"
            ]
        );
        assert_eq!(
            ids["p-cccccccc"],
            ["marketplaces.\"MP-1\".opcos.\"TA-1\".service_control_policies"]
        );
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn the_suspend_policy_is_checked_as_an_scp_of_every_payer_that_uses_it() {
        let settings = settings(
            "service_control_policies = [\"p-aaaaaaaa\"]\nsuspend_policy_id = \"p-deny0001\"\n\
             [payers.b]\nrole_arn = \"arn:aws:iam::111122223333:role/AccountVending\"\n\
             [marketplaces.\"MP-1\"]\npayer = \"b\"\nsuspend_policy_id = \"p-aaaaaaaa\"\n",
        );
        let by_payer = configured_scps(&settings);
        assert_eq!(
            by_payer["default"]["p-deny0001"],
            ["business_model.suspend_policy_id"]
        );
        assert_eq!(
            by_payer["b"]["p-aaaaaaaa"],
            [
                "business_model.service_control_policies",
                "marketplaces.\"MP-1\".suspend_policy_id"
            ]
        );
        assert!(
            !by_payer["b"].contains_key("p-deny0001"),
            "MP-1 suspends with its own policy"
        );
    }

    #[test]
    fn scps_are_looked_for_in_the_payer_of_every_place_that_gets_them() {
        let settings = settings(
            "service_control_policies = [\"p-aaaaaaaa\"]\n\
             [payers.b]\nrole_arn = \"arn:aws:iam::111122223333:role/AccountVending\"\n\
             [marketplaces.\"MP-1\"]\nmulti_payer = true\n\
             [marketplaces.\"MP-1\".opcos.\"TA-1\"]\npayer = \"b\"\nservice_control_policies = [\"p-bbbbbbbb\"]\n\
             [marketplaces.\"MP-2\"]\npayer = \"b\"\n",
        );
        let by_payer = configured_scps(&settings);
        let global = vec!["business_model.service_control_policies".to_owned()];
        assert_eq!(
            by_payer["default"],
            BTreeMap::from([("p-aaaaaaaa".to_owned(), global.clone())])
        );
        assert_eq!(
            by_payer["b"],
            BTreeMap::from([
                ("p-aaaaaaaa".to_owned(), global),
                (
                    "p-bbbbbbbb".to_owned(),
                    vec![
                        "marketplaces.\"MP-1\".opcos.\"TA-1\".service_control_policies".to_owned()
                    ]
                ),
            ]),
            "MP-2's orders get the global SCP in b"
        );
    }

    #[test]
    fn payer_lines_combine_with_the_worst_status() {
        let line = combined(
            SCPS,
            vec![
                ("default", Line::ok(SCPS, "1 SCP found: p-a (x)")),
                ("b", Line::fail(SCPS, "not found in o-b: p-b", "create it")),
            ],
        );
        assert_eq!(
            line.to_string(),
            "FAIL service control policies: payer default: 1 SCP found: p-a (x) | payer b: not found in o-b: p-b; create it"
        );
    }

    #[test]
    fn a_bad_arn_in_a_marketplace_is_named_with_its_key() {
        // Such settings no longer load (configuration reads ARNs as `check` does): laid in
        // after loading, as a settings value built by hand could hold it.
        let mut settings = settings("[marketplaces.\"MP-1\"]\n");
        if let Some(section) = settings.marketplaces.get_mut("MP-1") {
            section.settings.iam_user_policy_arns =
                Some(vec!["arn:aws:iam::aws:policy/Admin Access".to_owned()]);
        }
        let line = iam_names(&settings);
        assert_eq!(line.status, Status::Fail);
        assert!(
            line.text
                .contains("marketplaces.\"MP-1\".iam_user_policy_arns"),
            "{line}"
        );
        let ok = iam_names(&self::settings(""));
        assert_eq!(
            ok.to_string(),
            "ok   iam names: member role `OrganizationAccountAccessRole`, 1 IAM user policy ARN well-formed"
        );
    }

    #[test]
    fn the_configuration_line_names_its_sources_not_values() {
        let line = configuration(
            Some(Path::new("/etc/worker.toml")),
            &["WORKER__AMQP__URL".to_owned()],
        );
        assert_eq!(
            line.to_string(),
            "ok   configuration: valid (built-in defaults + /etc/worker.toml + environment WORKER__AMQP__URL)"
        );
    }

    /// A scripted AWS for the organization and SCP checks.
    struct Fake {
        organization: Result<OrganizationInfo, ProbeError>,
        roots: Vec<RootInfo>,
        policies: BTreeMap<String, PolicyInfo>,
    }

    impl Fake {
        fn healthy() -> Self {
            Self {
                organization: Ok(OrganizationInfo {
                    id: "o-abcdefghij".to_owned(),
                    feature_set: "ALL".to_owned(),
                    management_account: "111122223333".to_owned(),
                }),
                roots: vec![RootInfo {
                    id: "r-ab12".to_owned(),
                    scp_status: Some("ENABLED".to_owned()),
                }],
                policies: BTreeMap::from([(
                    "p-aaaaaaaa".to_owned(),
                    PolicyInfo {
                        name: "deny-leave".to_owned(),
                        kind: "SERVICE_CONTROL_POLICY".to_owned(),
                    },
                )]),
            }
        }
    }

    impl Probe for Fake {
        async fn caller_identity(&self) -> Result<CallerIdentity, ProbeError> {
            Ok(CallerIdentity {
                account: "111122223333".to_owned(),
                arn: "arn:aws:iam::111122223333:user/worker".to_owned(),
            })
        }

        async fn organization(&self) -> Result<OrganizationInfo, ProbeError> {
            self.organization.clone()
        }

        async fn roots(&self) -> Result<Vec<RootInfo>, ProbeError> {
            Ok(self.roots.clone())
        }

        async fn policy(&self, id: &str) -> Result<Option<PolicyInfo>, ProbeError> {
            Ok(self.policies.get(id).cloned())
        }
    }

    #[tokio::test]
    async fn a_healthy_organization_passes() {
        let (line, organization) = organization(&Fake::healthy(), "111122223333").await;
        assert_eq!(
            line.to_string(),
            "ok   organization: o-abcdefghij, management account 111122223333, all features, SCPs enabled on root r-ab12"
        );
        assert!(organization.is_some());
    }

    #[tokio::test]
    async fn every_organization_problem_is_named_on_one_line() {
        let mut fake = Fake::healthy();
        if let Ok(organization) = &mut fake.organization {
            organization.feature_set = "CONSOLIDATED_BILLING".to_owned();
        }
        fake.roots[0].scp_status = None;
        let (line, organization) = organization(&fake, "999988887777").await;
        assert_eq!(line.status, Status::Fail);
        for part in [
            "feature set is CONSOLIDATED_BILLING, not ALL",
            "account 999988887777 is a member, not the management account 111122223333",
            "the SERVICE_CONTROL_POLICY type is not enabled on root r-ab12",
            "enable-policy-type --root-id r-ab12",
        ] {
            assert!(line.text.contains(part), "{part}: {line}");
        }
        assert!(organization.is_some(), "the SCP ids can still be looked up");
    }

    #[tokio::test]
    async fn no_organization_fails_and_gives_none() {
        let mut fake = Fake::healthy();
        fake.organization = Err(ProbeError {
            operation: "DescribeOrganization",
            failure: ProbeFailure::Service("AWSOrganizationsNotInUseException".to_owned()),
            message: "Your account is not a member of an organization.".to_owned(),
        });
        let (line, organization) = organization(&fake, "111122223333").await;
        assert!(
            line.to_string()
                .starts_with("FAIL organization: account 111122223333 is not in an organization"),
            "{line}"
        );
        assert!(organization.is_none());
    }

    #[tokio::test]
    async fn scps_name_the_missing_and_the_wrong_type_with_their_keys() {
        let mut fake = Fake::healthy();
        fake.policies.insert(
            "p-tagtagtag".to_owned(),
            PolicyInfo {
                name: "tags".to_owned(),
                kind: "TAG_POLICY".to_owned(),
            },
        );
        let organization = fake.organization.clone().expect("organization");
        let configured = BTreeMap::from([
            (
                "p-aaaaaaaa".to_owned(),
                vec!["business_model.service_control_policies".to_owned()],
            ),
            (
                "p-doesnotexist".to_owned(),
                vec!["marketplaces.\"MP-1\".service_control_policies".to_owned()],
            ),
            (
                "p-tagtagtag".to_owned(),
                vec!["business_model.service_control_policies".to_owned()],
            ),
        ]);
        let line = scps(&fake, &organization, &configured).await;
        assert_eq!(line.status, Status::Fail);
        assert!(
            line.text.contains(
                "not found in o-abcdefghij: p-doesnotexist (in marketplaces.\"MP-1\".service_control_policies)"
            ),
            "{line}"
        );
        assert!(
            line.text
                .contains("p-tagtagtag is a TAG_POLICY, not a service control policy"),
            "{line}"
        );
        let only_good = BTreeMap::from([(
            "p-aaaaaaaa".to_owned(),
            vec!["business_model.service_control_policies".to_owned()],
        )]);
        assert_eq!(
            scps(&fake, &organization, &only_good).await.to_string(),
            "ok   service control policies: 1 SCP found: p-aaaaaaaa (deny-leave)"
        );
    }
}
