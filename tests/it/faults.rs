//! A fault-injecting HTTP proxy in front of moto, for what moto cannot do: throttling a share of
//! calls, answering `ConcurrentModificationException` (on every Organizations call or on chosen
//! operations), keeping `CreateAccount` IN_PROGRESS for some polls or some time before it ends
//! SUCCEEDED or FAILED, delaying answers, refusing every IAM call or chosen IAM actions (as an
//! SCP that denies IAM actions in a member account would: moto evaluates no SCP), and losing the
//! answer of a `CreateAccount` it forwarded. Like AWS and unlike moto, it refuses a second
//! account with an email in use (`CreateAccount` answers IN_PROGRESS, its status ends FAILED
//! `EMAIL_ALREADY_EXISTS`). For cancels, it refuses `CloseAccount` for the close quota and
//! `RemoveAccountFromOrganization` within the 7-day wait, and shows a closed account
//! `PENDING_CLOSURE` for a while, as AWS does. It counts the calls per operation and the creations in progress at
//! once, and records the roles assumed and the login-profile calls. The worker reaches it
//! through `AWS_ENDPOINT_URL` (or the SDK config's endpoint), exactly as it would reach AWS.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::RngExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a `CreateAccount` request behaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Creation {
    /// As moto does: SUCCEEDED at once.
    Immediate,
    /// IN_PROGRESS for this many `DescribeCreateAccountStatus` polls, then `then`.
    InProgressFor { polls: u32, then: End },
    /// IN_PROGRESS until this long after the request, then `then`.
    Takes { duration: Duration, then: End },
}

/// How a scripted creation ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// moto creates the account; the status says SUCCEEDED once the script allows.
    Succeeded,
    /// Nothing is created; the status says FAILED with this `FailureReason`.
    Failed(String),
}

/// What to inject. The default injects nothing.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Share of all calls (0.0 to 1.0) answered with a throttling error, not forwarded.
    pub throttle_share: f64,
    /// Share of Organizations calls answered `ConcurrentModificationException`, not forwarded.
    pub concurrent_modification_share: f64,
    /// The Organizations operations that share applies to (e.g. `AttachPolicy`); empty: all.
    pub concurrent_modification_operations: Vec<&'static str>,
    /// Added before every forwarded answer (the call is executed first, as a slow AWS would).
    pub delay: Duration,
    /// How `CreateAccount` behaves.
    pub creation: Creation,
    /// Answer every IAM call (the worker makes them only inside member accounts) with
    /// `AccessDenied`, not forwarded.
    pub deny_iam: bool,
    /// Answer these IAM actions (e.g. `TagUser`) with `AccessDenied`, not forwarded.
    pub deny_iam_actions: Vec<&'static str>,
    /// Accept a `CreateAccount` whose email is in use, as moto does (AWS does not: by default
    /// the proxy ends such a creation FAILED `EMAIL_ALREADY_EXISTS`).
    pub allow_duplicate_emails: bool,
    /// `CreateAccount` requests whose answer is lost: forwarded (the account is made), then
    /// answered with a 500 that carries no error code, as a timeout after sending would.
    pub lost_create_answers: u32,
    /// How the invitations the proxy answers for (moto has no handshakes) end.
    pub invitations: Invitations,
    /// Accounts "in another organization": `InviteAccountToOrganization` refuses them with
    /// `HandshakeConstraintViolationException` reason `ALREADY_IN_AN_ORGANIZATION`.
    pub in_another_organization: Vec<String>,
    /// Answer `CloseAccount` with AWS's close quota refusal (`ConstraintViolationException`,
    /// reason `CLOSE_ACCOUNT_QUOTA_EXCEEDED`), not forwarded.
    pub close_quota_exceeded: bool,
    /// Answer this many `RemoveAccountFromOrganization` calls with AWS's refusal within 7 days
    /// of joining (`ConstraintViolationException`, reason `WAIT_PERIOD_ACTIVE`), not forwarded;
    /// the ones after are forwarded.
    pub removal_wait_period_refusals: u32,
    /// After a `CloseAccount` forwarded, show the account `PENDING_CLOSURE` in this many
    /// `DescribeAccount` answers, as AWS does for a while (moto closes it at once).
    pub pending_closure_describes: u32,
}

/// How an invitation the proxy answers for behaves (moto has no handshakes): OPEN, then an
/// end. Each invitation follows the script in force when it was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Invitations {
    /// OPEN for this many `DescribeHandshake` calls of it, then `then`.
    OpenFor { describes: u32, then: Answer },
    /// OPEN until this long after it was sent, then `then`.
    Takes { duration: Duration, then: Answer },
}

/// How the account's owner answers an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ACCEPTED: the account joins with the invitation's tags (the proxy tags it in moto and
    /// stops hiding it).
    Accepted,
    /// DECLINED.
    Declined,
    /// EXPIRED.
    Expired,
}

impl Answer {
    fn state(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Declined => "DECLINED",
            Self::Expired => "EXPIRED",
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            throttle_share: 0.0,
            concurrent_modification_share: 0.0,
            concurrent_modification_operations: Vec::new(),
            delay: Duration::ZERO,
            creation: Creation::Immediate,
            deny_iam: false,
            deny_iam_actions: Vec::new(),
            allow_duplicate_emails: false,
            lost_create_answers: 0,
            // As AWS: open for 15 days, then expired.
            invitations: Invitations::Takes {
                duration: Duration::from_secs(15 * 24 * 3600),
                then: Answer::Expired,
            },
            in_another_organization: Vec::new(),
            close_quota_exceeded: false,
            removal_wait_period_refusals: 0,
            pending_closure_describes: 0,
        }
    }
}

/// What the proxy saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every call received.
    pub calls: u64,
    /// Calls answered with a throttling error.
    pub throttled: u64,
    /// Calls answered `ConcurrentModificationException`.
    pub concurrent_modifications: u64,
    /// `CreateAccount` requests accepted (forwarded or scripted).
    pub creations: u64,
    /// The most creations in progress at one time.
    pub max_in_progress: usize,
    /// The `RoleArn` of every `AssumeRole`, in order.
    pub assumed_roles: Vec<String>,
    /// `RoleName` and `IamUserAccessToBilling` of every `CreateAccount` request (empty when
    /// not sent), in order.
    pub create_options: Vec<(String, String)>,
    /// IAM calls answered `AccessDenied`, by action.
    pub denied_iam: Vec<String>,
    /// Every `CreateLoginProfile` and `UpdateLoginProfile` received, by action, in order.
    pub login_profile_calls: Vec<String>,
    /// Every call received, by operation (`ListAccounts`, `CreateAccount`, ...).
    pub operations: BTreeMap<String, u64>,
    /// `CreateAccount` requests refused for an email in use (FAILED `EMAIL_ALREADY_EXISTS`).
    pub duplicate_emails: u64,
    /// `CreateAccount` requests forwarded whose answer was lost.
    pub lost_answers: u64,
}

impl Stats {
    /// Calls of `operation` received.
    pub fn calls_of(&self, operation: &str) -> u64 {
        self.operations.get(operation).copied().unwrap_or(0)
    }
}

/// A scripted creation in progress.
struct Scripted {
    name: String,
    email: String,
    polls_left: u32,
    started: Instant,
    ends_at: Option<Instant>,
    end: End,
    finished: bool,
}

/// One scripted creation's time in progress, as the proxy (AWS) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// When `CreateAccount` was accepted.
    pub start: Instant,
    /// When it stopped being IN_PROGRESS (`None`: still in progress, or ended by polls and
    /// not polled since).
    pub end: Option<Instant>,
}

/// The most spans that overlap at one instant.
pub fn max_overlap(spans: &[Span]) -> usize {
    let mut edges: Vec<(Instant, i64)> = Vec::new();
    for span in spans {
        edges.push((span.start, 1));
        if let Some(end) = span.end {
            edges.push((end, -1));
        }
    }
    // Ends sort before starts at the same instant: a slot given back is free at once.
    edges.sort();
    let (mut now, mut max) = (0_i64, 0_i64);
    for (_, step) in edges {
        now += step;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

impl Scripted {
    fn in_progress(&self, now: Instant) -> bool {
        !self.finished && self.ends_at.is_none_or(|end| now < end)
    }
}

#[derive(Default)]
struct Book {
    stats: Stats,
    scripted: HashMap<String, Scripted>,
    /// Creations refused for an email in use, by request id: their account name.
    refused: HashMap<String, String>,
    /// `CreateAccount` answers lost so far.
    lost: u32,
    /// The invitations sent through the proxy, in order.
    handshakes: Vec<Invited>,
    /// Member accounts the worker must not see (an existing account before it joins).
    hidden: std::collections::HashSet<String>,
    /// `RemoveAccountFromOrganization` calls refused for the wait period so far.
    removals_refused: u32,
    /// `DescribeAccount` answers still to show `PENDING_CLOSURE`, by account.
    pending_closure: HashMap<String, u32>,
}

/// An invitation the proxy answers for.
struct Invited {
    id: String,
    account: String,
    notes: String,
    tags: Value,
    state: &'static str,
    requested: f64,
    expires: f64,
    sent: Instant,
    describes: u32,
    script: Invitations,
    /// Whether its ACCEPTED was carried out in moto (tags put on, the account shown).
    joined: bool,
}

impl Invited {
    /// Moves it along its script: one more `DescribeHandshake` if `described`.
    fn advance(&mut self, described: bool) {
        if self.state != "OPEN" {
            return;
        }
        if described {
            self.describes += 1;
        }
        match &self.script {
            Invitations::OpenFor { describes, then } if self.describes > *describes => {
                self.state = then.state();
            }
            Invitations::Takes { duration, then } if self.sent.elapsed() >= *duration => {
                self.state = then.state();
            }
            _ => {}
        }
    }

    /// As AWS writes a handshake.
    fn json(&self, org: &str) -> Value {
        json!({
            "Id": self.id,
            "Arn": format!("arn:aws:organizations::000000000000:handshake/{org}/invite/{}", self.id),
            "Parties": [
                {"Id": self.account, "Type": "ACCOUNT"},
                {"Id": org, "Type": "ORGANIZATION"},
            ],
            "State": self.state,
            "RequestedTimestamp": self.requested,
            "ExpirationTimestamp": self.expires,
            "Action": "INVITE",
            "Resources": [
                {"Type": "NOTES", "Value": self.notes},
                {"Type": "ORGANIZATION", "Value": org},
            ],
        })
    }
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Mutex<Faults>,
    book: Mutex<Book>,
}

/// The running proxy; it stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the AWS endpoint to give the worker.
    pub endpoint: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy to `upstream` (moto) injecting `faults`.
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            faults: Mutex::new(faults),
            book: Mutex::default(),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            state,
            task,
        }
    }

    /// Changes the faults injected from now on.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.state.faults));
    }

    /// What the proxy saw so far.
    pub fn stats(&self) -> Stats {
        lock(&self.state.book).stats.clone()
    }

    /// Hides a member account from the worker until its invitation is accepted:
    /// `DescribeAccount` and the calls naming it answer as for an account outside the
    /// organization, `ListAccounts` leaves it out.
    pub fn hide(&self, account: &str) {
        lock(&self.state.book).hidden.insert(account.to_owned());
    }

    /// The invitations sent so far, as (id, account, state).
    pub fn invitations(&self) -> Vec<(String, String, String)> {
        lock(&self.state.book)
            .handshakes
            .iter()
            .map(|h| (h.id.clone(), h.account.clone(), h.state.to_owned()))
            .collect()
    }

    /// Scripted creations in progress now.
    pub fn in_progress(&self) -> usize {
        let now = Instant::now();
        lock(&self.state.book)
            .scripted
            .values()
            .filter(|s| s.in_progress(now))
            .count()
    }

    /// Every scripted creation's time in progress, in no particular order.
    pub fn spans(&self) -> Vec<Span> {
        lock(&self.state.book)
            .scripted
            .values()
            .map(|s| Span {
                start: s.started,
                end: s.ends_at,
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The operation and protocol of a request: Organizations speaks JSON (`X-Amz-Target`),
/// STS and IAM speak the query protocol (`Action=` in a form body).
fn operation(request: &hyper::http::request::Parts, body: &[u8]) -> (String, bool) {
    if let Some(target) = request
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let op = target.rsplit('.').next().unwrap_or(target);
        return (op.to_owned(), true);
    }
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("Unknown");
    (action.to_owned(), false)
}

/// The value of `key` in a form body, percent-decoded.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let form = String::from_utf8_lossy(body);
    let raw = form
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// Whether a request is signed for IAM (its credential scope ends `/iam/aws4_request`).
fn is_iam(request: &hyper::http::request::Parts) -> bool {
    request
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|auth| auth.contains("/iam/aws4_request"))
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn json_answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/x-amz-json-1.1", body.to_string())
}

/// An AWS error in the request's protocol.
fn error(json: bool, code: &str, message: &str) -> Response<Full<Bytes>> {
    if json {
        let mut response = json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"__type": code, "Message": message}),
        );
        if let Ok(value) = code.parse() {
            response.headers_mut().insert("x-amzn-errortype", value);
        }
        response
    } else {
        respond(
            StatusCode::BAD_REQUEST,
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
            ),
        )
    }
}

fn status_body(id: &str, name: &str, state: &str, extra: Value) -> Value {
    let mut status = json!({"Id": id, "AccountName": name, "State": state});
    if let (Some(status), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
        status.extend(extra.clone());
    }
    json!({"CreateAccountStatus": status})
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
        };
        let (op, json) = operation(&parts, &body);
        let faults = lock(&self.faults).clone();
        let conflicting = json
            && (faults.concurrent_modification_operations.is_empty()
                || faults
                    .concurrent_modification_operations
                    .contains(&op.as_str()));
        let (throttle, conflict) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(faults.throttle_share.clamp(0.0, 1.0)),
                conflicting
                    && rng.random_bool(faults.concurrent_modification_share.clamp(0.0, 1.0)),
            )
        };
        if matches!(op.as_str(), "CreateLoginProfile" | "UpdateLoginProfile") {
            lock(&self.book).stats.login_profile_calls.push(op.clone());
        }
        {
            let mut book = lock(&self.book);
            book.stats.calls += 1;
            *book.stats.operations.entry(op.clone()).or_default() += 1;
            if throttle {
                book.stats.throttled += 1;
            } else if conflict {
                book.stats.concurrent_modifications += 1;
            }
        }
        if throttle {
            let code = if json {
                "TooManyRequestsException"
            } else {
                "Throttling"
            };
            return error(json, code, "Rate exceeded");
        }
        if conflict {
            return error(
                json,
                "ConcurrentModificationException",
                "The target of the operation is being modified by another request",
            );
        }
        if op == "CreateAccount" {
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            let text = |key: &str| request[key].as_str().unwrap_or_default().to_owned();
            lock(&self.book)
                .stats
                .create_options
                .push((text("RoleName"), text("IamUserAccessToBilling")));
        }
        if op == "AssumeRole"
            && let Some(role) = form_value(&body, "RoleArn")
        {
            lock(&self.book).stats.assumed_roles.push(role);
        }
        let denied = faults.deny_iam || faults.deny_iam_actions.contains(&op.as_str());
        if denied && is_iam(&parts) {
            lock(&self.book).stats.denied_iam.push(op.clone());
            return error(
                false,
                "AccessDenied",
                &format!(
                    "User is not authorized to perform: iam:{op} with an explicit deny in a service control policy"
                ),
            );
        }
        if op == "CreateAccount"
            && !faults.allow_duplicate_emails
            && let Some(refused) = self.refuse_email_in_use(&parts, &body).await
        {
            return refused;
        }
        if let Some(answer) = self.lifecycle(&faults, &op, &parts, &body).await {
            return answer;
        }
        let answer = match (op.as_str(), &faults.creation) {
            ("CreateAccount", _) if self.lose_answer(faults.lost_create_answers) => {
                let answer = self.forward(&parts, body).await;
                if answer.status().is_success() {
                    let mut book = lock(&self.book);
                    book.stats.creations += 1;
                    book.stats.lost_answers += 1;
                }
                respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "")
            }
            ("CreateAccount", Creation::Immediate) => {
                let answer = self.forward(&parts, body).await;
                if answer.status().is_success() {
                    let mut book = lock(&self.book);
                    book.stats.creations += 1;
                    book.stats.max_in_progress = book.stats.max_in_progress.max(1);
                }
                answer
            }
            ("CreateAccount", scripted) => self.create_scripted(&parts, body, scripted).await,
            ("DescribeCreateAccountStatus", _) => self.describe(&parts, body).await,
            ("ListCreateAccountStatus", _) => self.list_in_progress(&parts, body).await,
            (
                "InviteAccountToOrganization"
                | "DescribeHandshake"
                | "ListHandshakesForOrganization"
                | "CancelHandshake",
                _,
            ) => self.handshake(&op, &parts, &body, &faults).await,
            _ if json && !lock(&self.book).hidden.is_empty() => {
                self.hiding(&op, &parts, body).await
            }
            _ => self.forward(&parts, body).await,
        };
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        answer
    }

    /// What AWS answers to a cancel's calls and moto does not: the close quota, the 7-day
    /// wait before a removal, an account `PENDING_CLOSURE` for a while after `CloseAccount`.
    /// `None`: not one of those; handled as any other call.
    async fn lifecycle(
        &self,
        faults: &Faults,
        op: &str,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
    ) -> Option<Response<Full<Bytes>>> {
        let account = || {
            serde_json::from_slice::<Value>(body).unwrap_or_default()["AccountId"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let constraint = |reason: &str, message: &str| {
            let mut response = json_answer(
                StatusCode::BAD_REQUEST,
                &json!({"__type": "ConstraintViolationException", "Message": message, "Reason": reason}),
            );
            response.headers_mut().insert(
                "x-amzn-errortype",
                hyper::header::HeaderValue::from_static("ConstraintViolationException"),
            );
            response
        };
        match op {
            "CloseAccount" if faults.close_quota_exceeded => Some(constraint(
                "CLOSE_ACCOUNT_QUOTA_EXCEEDED",
                "You have exceeded close account quota for the past 30 days.",
            )),
            "CloseAccount" if faults.pending_closure_describes > 0 => {
                let answer = self.forward(parts, body.clone()).await;
                if answer.status().is_success() {
                    lock(&self.book)
                        .pending_closure
                        .insert(account(), faults.pending_closure_describes);
                }
                Some(answer)
            }
            "RemoveAccountFromOrganization" => {
                let refuse = {
                    let mut book = lock(&self.book);
                    let refuse = book.removals_refused < faults.removal_wait_period_refusals;
                    if refuse {
                        book.removals_refused += 1;
                    }
                    refuse
                };
                refuse.then(|| {
                    constraint(
                        "WAIT_PERIOD_ACTIVE",
                        "You cannot remove an account from the organization within 7 days of its joining.",
                    )
                })
            }
            "DescribeAccount" => {
                let id = account();
                let pending = {
                    let mut book = lock(&self.book);
                    match book.pending_closure.get_mut(&id) {
                        Some(left) if *left > 0 => {
                            *left -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                if !pending {
                    return None;
                }
                let answer = self.forward(parts, body.clone()).await;
                if !answer.status().is_success() {
                    return Some(answer);
                }
                let Ok(collected) = answer.into_body().collect().await;
                let mut described: Value =
                    serde_json::from_slice(&collected.to_bytes()).unwrap_or_default();
                for key in ["Status", "State"] {
                    described["Account"][key] = json!("PENDING_CLOSURE");
                }
                Some(json_answer(StatusCode::OK, &described))
            }
            _ => None,
        }
    }

    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(format!("{}{path}", self.upstream));
        for (name, value) in &parts.headers {
            if name != HOST && name != CONNECTION {
                builder = builder.header(name, value);
            }
        }
        let Ok(request) = builder.body(Full::new(body)) else {
            return respond(StatusCode::BAD_GATEWAY, "text/plain", "bad request");
        };
        let answer = match self.client.request(request).await {
            Ok(answer) => answer,
            Err(e) => return respond(StatusCode::BAD_GATEWAY, "text/plain", e.to_string()),
        };
        let (mut answer_parts, answer_body) = answer.into_parts();
        let bytes = match answer_body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return respond(StatusCode::BAD_GATEWAY, "text/plain", e.to_string()),
        };
        for header in [CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING] {
            answer_parts.headers.remove(header);
        }
        Response::from_parts(answer_parts, Full::new(bytes))
    }

    /// `CreateAccount` under a script: forwarded when it is to succeed (moto creates the
    /// account), invented when it is to fail; either way the answer says IN_PROGRESS.
    async fn create_scripted(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        creation: &Creation,
    ) -> Response<Full<Bytes>> {
        let (polls, ends_at, end) = match creation {
            Creation::Immediate => (0, None, End::Succeeded),
            Creation::InProgressFor { polls, then } => (*polls, None, then.clone()),
            Creation::Takes { duration, then } => {
                (0, Some(Instant::now() + *duration), then.clone())
            }
        };
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let name = request["AccountName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let email = request["Email"].as_str().unwrap_or_default().to_owned();
        let id = match &end {
            End::Succeeded => {
                let answer = self.forward(parts, body).await;
                if !answer.status().is_success() {
                    return answer;
                }
                let Ok(collected) = answer.into_body().collect().await;
                let created: Value =
                    serde_json::from_slice(&collected.to_bytes()).unwrap_or_default();
                created["CreateAccountStatus"]["Id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }
            End::Failed(_) => format!("car-{}", crate::support::digits(10)),
        };
        let mut book = lock(&self.book);
        book.scripted.insert(
            id.clone(),
            Scripted {
                name: name.clone(),
                email,
                polls_left: polls,
                started: Instant::now(),
                ends_at,
                end,
                finished: false,
            },
        );
        book.stats.creations += 1;
        let now = Instant::now();
        let in_progress = book
            .scripted
            .values()
            .filter(|s| s.in_progress(now))
            .count();
        book.stats.max_in_progress = book.stats.max_in_progress.max(in_progress);
        json_answer(
            StatusCode::OK,
            &status_body(&id, &name, "IN_PROGRESS", json!({})),
        )
    }

    /// `DescribeCreateAccountStatus`: IN_PROGRESS while the script says so, then its end.
    async fn describe(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = request["CreateAccountRequestId"]
            .as_str()
            .unwrap_or_default();
        if let Some(name) = lock(&self.book).refused.get(id).cloned() {
            return json_answer(
                StatusCode::OK,
                &status_body(
                    id,
                    &name,
                    "FAILED",
                    json!({"FailureReason": "EMAIL_ALREADY_EXISTS"}),
                ),
            );
        }
        let seen = {
            let mut book = lock(&self.book);
            book.scripted.get_mut(id).map(|scripted| {
                let waiting = match scripted.ends_at {
                    Some(end) => Instant::now() < end,
                    None => scripted.polls_left > 0,
                };
                if waiting {
                    scripted.polls_left = scripted.polls_left.saturating_sub(1);
                } else if !scripted.finished {
                    scripted.finished = true;
                    scripted.ends_at.get_or_insert_with(Instant::now);
                }
                (waiting, scripted.end.clone(), scripted.name.clone())
            })
        };
        match seen {
            None | Some((false, End::Succeeded, _)) => self.forward(parts, body).await,
            Some((true, _, name)) => json_answer(
                StatusCode::OK,
                &status_body(id, &name, "IN_PROGRESS", json!({})),
            ),
            Some((false, End::Failed(reason), name)) => json_answer(
                StatusCode::OK,
                &status_body(id, &name, "FAILED", json!({"FailureReason": reason})),
            ),
        }
    }

    /// Whether this `CreateAccount` is one whose answer is to be lost (counting it if so).
    fn lose_answer(&self, to_lose: u32) -> bool {
        let mut book = lock(&self.book);
        if book.lost < to_lose {
            book.lost += 1;
            true
        } else {
            false
        }
    }

    /// As AWS: a `CreateAccount` whose email is used by an account of the organization (moto
    /// asked) or by a creation the proxy let through that is in progress or succeeded is
    /// accepted IN_PROGRESS, and its status ends FAILED `EMAIL_ALREADY_EXISTS`; nothing is
    /// forwarded. `None` when the email is free.
    async fn refuse_email_in_use(
        &self,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
    ) -> Option<Response<Full<Bytes>>> {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let email = request["Email"].as_str()?.to_owned();
        let name = request["AccountName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let now = Instant::now();
        let scripted = lock(&self.book).scripted.values().any(|s| {
            s.email.eq_ignore_ascii_case(&email) && (s.in_progress(now) || s.end == End::Succeeded)
        });
        if !scripted && !self.moto_has_email(parts, &email).await {
            return None;
        }
        let id = format!("car-{}", crate::support::digits(10));
        {
            let mut book = lock(&self.book);
            book.refused.insert(id.clone(), name.clone());
            book.stats.duplicate_emails += 1;
        }
        Some(json_answer(
            StatusCode::OK,
            &status_body(&id, &name, "IN_PROGRESS", json!({})),
        ))
    }

    /// Whether an account of the caller's organization in moto has `email`: `ListAccounts`,
    /// every page, signed as the caller's request was (moto reads the account from it).
    async fn moto_has_email(&self, parts: &hyper::http::request::Parts, email: &str) -> bool {
        let mut token: Option<String> = None;
        loop {
            let body = match &token {
                Some(token) => json!({"NextToken": token}),
                None => json!({}),
            };
            let Some(page) = self.call_moto(parts, "ListAccounts", &body).await else {
                return false;
            };
            let accounts = page["Accounts"].as_array().cloned().unwrap_or_default();
            if accounts.iter().any(|a| {
                a["Email"]
                    .as_str()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
            }) {
                return true;
            }
            match page["NextToken"].as_str() {
                Some(next) if !next.is_empty() && token.as_deref() != Some(next) => {
                    token = Some(next.to_owned());
                }
                _ => return false,
            }
        }
    }

    /// `ListCreateAccountStatus`: moto's answer, plus the scripted creations in progress when
    /// IN_PROGRESS is asked for (moto never has any).
    async fn list_in_progress(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let wants_in_progress = request["States"]
            .as_array()
            .is_some_and(|states| states.iter().any(|s| s == "IN_PROGRESS"));
        if !wants_in_progress {
            return self.forward(parts, body).await;
        }
        let now = Instant::now();
        let statuses: Vec<Value> = lock(&self.book)
            .scripted
            .iter()
            .filter(|(_, s)| s.in_progress(now))
            .map(|(id, s)| {
                status_body(id, &s.name, "IN_PROGRESS", json!({}))["CreateAccountStatus"].clone()
            })
            .collect();
        json_answer(StatusCode::OK, &json!({"CreateAccountStatuses": statuses}))
    }
}

/// An AWS error answer with a constraint's `Reason` (JSON protocol).
fn refusal(code: &str, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = json_answer(
        StatusCode::BAD_REQUEST,
        &json!({"__type": code, "Message": message, "Reason": reason}),
    );
    if let Ok(value) = code.parse() {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

/// Seconds since the epoch, as AWS's JSON timestamps.
fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The error an Organizations call naming an account outside the organization gets.
fn not_found_code(op: &str) -> &'static str {
    match op {
        "ListParents" => "ChildNotFoundException",
        "ListTagsForResource"
        | "TagResource"
        | "UntagResource"
        | "ListPoliciesForTarget"
        | "AttachPolicy"
        | "DetachPolicy" => "TargetNotFoundException",
        _ => "AccountNotFoundException",
    }
}

impl State {
    /// Calls moto's Organizations `operation` with `body`, signed as the caller's request was
    /// (moto reads the account from it); the answer, if it was a JSON success.
    async fn call_moto(
        &self,
        parts: &hyper::http::request::Parts,
        operation: &str,
        body: &Value,
    ) -> Option<Value> {
        let mut builder = Request::builder()
            .method(hyper::Method::POST)
            .uri(format!("{}/", self.upstream));
        for (name, value) in &parts.headers {
            if name != HOST
                && name != CONNECTION
                && name != CONTENT_LENGTH
                && name != "x-amz-target"
            {
                builder = builder.header(name, value);
            }
        }
        let builder = builder.header(
            "x-amz-target",
            format!("AWSOrganizationsV20161128.{operation}"),
        );
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .ok()?;
        let answer = self.client.request(request).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let collected = answer.into_body().collect().await.ok()?;
        serde_json::from_slice(&collected.to_bytes()).ok()
    }

    /// An Organizations call while some accounts are hidden: one naming a hidden account
    /// answers as AWS does for an account outside the organization; `ListAccounts` (and
    /// `ListAccountsForParent`) leave them out.
    async fn hiding(
        &self,
        op: &str,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let hidden = lock(&self.book).hidden.clone();
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let names_hidden = ["AccountId", "ChildId", "TargetId", "ResourceId"]
            .iter()
            .filter_map(|key| request[*key].as_str())
            .any(|id| hidden.contains(id));
        if names_hidden {
            return error(
                true,
                not_found_code(op),
                "You specified an account that doesn't exist.",
            );
        }
        if !matches!(op, "ListAccounts" | "ListAccountsForParent") {
            return self.forward(parts, body).await;
        }
        let answer = self.forward(parts, body).await;
        if !answer.status().is_success() {
            return answer;
        }
        let Ok(collected) = answer.into_body().collect().await;
        let mut page: Value = serde_json::from_slice(&collected.to_bytes()).unwrap_or_default();
        if let Some(accounts) = page["Accounts"].as_array_mut() {
            accounts.retain(|a| a["Id"].as_str().is_none_or(|id| !hidden.contains(id)));
        }
        json_answer(StatusCode::OK, &page)
    }

    /// `InviteAccountToOrganization`, `DescribeHandshake`, `ListHandshakesForOrganization` and
    /// `CancelHandshake`, answered as AWS does (moto has none of them).
    async fn handshake(
        &self,
        op: &str,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
        faults: &Faults,
    ) -> Response<Full<Bytes>> {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let org = self
            .call_moto(parts, "DescribeOrganization", &json!({}))
            .await
            .and_then(|o| o["Organization"]["Id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "o-proxy".to_owned());
        let answer = {
            let mut book = lock(&self.book);
            for invited in &mut book.handshakes {
                let described = op == "DescribeHandshake"
                    && request["HandshakeId"].as_str() == Some(invited.id.as_str());
                invited.advance(described);
            }
            match op {
                "InviteAccountToOrganization" => {
                    let account = request["Target"]["Id"].as_str().unwrap_or_default();
                    if faults.in_another_organization.iter().any(|a| a == account) {
                        return refusal(
                            "HandshakeConstraintViolationException",
                            "ALREADY_IN_AN_ORGANIZATION",
                            "The account is already a member of an organization.",
                        );
                    }
                    if book
                        .handshakes
                        .iter()
                        .any(|h| h.account == account && h.state == "OPEN")
                    {
                        return error(
                            true,
                            "DuplicateHandshakeException",
                            "A handshake with the same action and target already exists.",
                        );
                    }
                    let now = epoch_now();
                    let invited = Invited {
                        id: format!("h-{}", crate::support::digits(10)),
                        account: account.to_owned(),
                        notes: request["Notes"].as_str().unwrap_or_default().to_owned(),
                        tags: request["Tags"].clone(),
                        state: "OPEN",
                        requested: now,
                        expires: now + 15.0 * 24.0 * 3600.0,
                        sent: Instant::now(),
                        describes: 0,
                        script: faults.invitations.clone(),
                        joined: false,
                    };
                    let answer = json!({"Handshake": invited.json(&org)});
                    book.handshakes.push(invited);
                    answer
                }
                "ListHandshakesForOrganization" => {
                    let all: Vec<Value> = book.handshakes.iter().map(|h| h.json(&org)).collect();
                    json!({"Handshakes": all})
                }
                _ => {
                    let id = request["HandshakeId"].as_str().unwrap_or_default();
                    let Some(invited) = book.handshakes.iter_mut().find(|h| h.id == id) else {
                        return error(
                            true,
                            "HandshakeNotFoundException",
                            "We can't find a handshake with the HandshakeId that you specified.",
                        );
                    };
                    if op == "CancelHandshake" && invited.state == "OPEN" {
                        invited.state = "CANCELED";
                    }
                    json!({"Handshake": invited.json(&org)})
                }
            }
        };
        self.join_accepted(parts).await;
        json_answer(StatusCode::OK, &answer)
    }

    /// Carries out in moto what an ACCEPTED invitation does at AWS: the invitation's tags are
    /// put on the account (`TagResource`, by the proxy itself), then it is no longer hidden.
    async fn join_accepted(&self, parts: &hyper::http::request::Parts) {
        let joining: Vec<(String, Value)> = {
            let mut book = lock(&self.book);
            book.handshakes
                .iter_mut()
                .filter(|h| h.state == "ACCEPTED" && !h.joined)
                .map(|h| {
                    h.joined = true;
                    (h.account.clone(), h.tags.clone())
                })
                .collect()
        };
        for (account, tags) in joining {
            if tags.as_array().is_some_and(|t| !t.is_empty()) {
                let tagged = self
                    .call_moto(
                        parts,
                        "TagResource",
                        &json!({"ResourceId": account, "Tags": tags}),
                    )
                    .await;
                assert!(tagged.is_some(), "moto tags the account {account}");
            }
            lock(&self.book).hidden.remove(&account);
        }
    }
}
