//! [`Organizations`] and [`MemberIam`] over the AWS SDK, and the one place that classifies SDK
//! errors as transient or permanent.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_config::SdkConfig;
// Every call's `send()` future is boxed: an SDK call future is several kilobytes, and inline it
// sized every order's task for it, a thousand orders waiting for a slot included (heaptrack,
// docs/perf/rss.md). Boxed, it exists only while the call does.
use aws_sdk_iam::operation::create_login_profile::CreateLoginProfileError;
use aws_sdk_iam::operation::create_user::CreateUserError;
use aws_sdk_organizations::config::http::HttpResponse;
use aws_sdk_organizations::config::retry::RetryConfig;
use aws_sdk_organizations::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_organizations::operation::attach_policy::AttachPolicyError;
use aws_sdk_organizations::operation::close_account::CloseAccountError;
use aws_sdk_organizations::operation::create_account::CreateAccountError;
use aws_sdk_organizations::operation::detach_policy::DetachPolicyError;
use aws_sdk_organizations::operation::invite_account_to_organization::InviteAccountToOrganizationError;
use aws_sdk_organizations::operation::move_account::MoveAccountError;
use aws_sdk_organizations::operation::remove_account_from_organization::RemoveAccountFromOrganizationError;
use aws_sdk_organizations::types::ConstraintViolationExceptionReason;
use aws_sdk_organizations::types::{
    ActionType, CreateAccountState, CreateAccountStatus, HandshakeFilter, HandshakeParty,
    HandshakePartyType, HandshakeResourceType, IamUserAccessToBilling, PolicyType, Tag,
};
use aws_sdk_sts::config::SharedCredentialsProvider;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    FinalizerInterceptorContextRef, InterceptorContext,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use futures_lite::FutureExt as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{
    ASSET_TAG, AccessToBilling, AccountId, AwsError, AwsResult, CREDENTIALS_EVENT_TAG,
    CREDENTIALS_ISSUED, CREDENTIALS_TAG, CallLimits, Candidates, CreateState, CreateStatus,
    ExistingAccount, Handshake, HandshakeState, Invitation, MemberAccess, MemberIam, NewAccount,
    Organizations, Retry,
};
use crate::config::PayerSettings;
use crate::domain::arn::{PolicyArn, RoleArn};
use crate::domain::ids::{OuId, PolicyId};
use crate::domain::names::IamUserName;
use crate::observability::Metrics;

/// Error codes that mean "try again later", whatever the operation.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ConcurrentModificationException",
    "ServiceException",
    "ServiceFailure",
    "ServiceFailureException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "IDPCommunicationError",
];

/// Codes that, right after an account was created, mean its access role or the credentials
/// from it are not usable yet, and later that something (an SCP, a missing role) denies the
/// call: [`Retry::WhileNew`] on calls into a member account only.
const NOT_READY_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
];

/// The SDK's timeouts from `limits`, so a hung connection becomes a transient error instead of
/// an order that holds its consumer slot forever.
pub fn timeouts(limits: &CallLimits) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(limits.connect_timeout)
        .operation_attempt_timeout(limits.attempt_timeout)
        .operation_timeout(limits.operation_timeout)
        .build()
}

/// The SDK's retries from `limits`: the standard mode (exponential backoff with jitter, a
/// retry quota per client), at most `limits.max_attempts` attempts of a call. The clients add
/// [`RetryCodes`], so that `ConcurrentModificationException` is retried too.
pub fn retries(limits: &CallLimits) -> RetryConfig {
    RetryConfig::standard().with_max_attempts(limits.max_attempts.max(1))
}

/// The SDK configuration of the worker's AWS calls: credentials, region and endpoint from the
/// standard chain, `us-east-1` when no region is configured (Organizations is a global service
/// homed there), and the [`timeouts`] and [`retries`] of `limits`.
pub async fn load_config(limits: &CallLimits) -> SdkConfig {
    let region =
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts(limits))
        .retry_config(retries(limits))
        .load()
        .await
}

/// Error codes that the SDK retries, with backoff, besides those it knows itself (throttling
/// codes, 5xx, timeouts): another request modifying the same target, and throttling codes in
/// case a service's model does not call them so. Each is retried as throttling: the same call
/// succeeds once the other request is done or the rate is down.
const SDK_RETRIED_CODES: &[&str] = &[
    "ConcurrentModificationException",
    "TooManyRequestsException",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// A retry classifier on every client: an error answer whose code is in [`SDK_RETRIED_CODES`]
/// is retried by the SDK (within its attempts and retry quota) instead of failing the call.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryCodes;

impl ClassifyRetry for RetryCodes {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        if !matches!(ctx.output_or_error(), Some(Err(_))) {
            return RetryAction::NoActionIndicated;
        }
        match ctx.response().and_then(error_code) {
            Some(code) if SDK_RETRIED_CODES.contains(&code.as_str()) => {
                RetryAction::throttling_error()
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "RetryCodes"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// The error code of an error answer, read from the response itself, whatever the operation:
/// the `x-amzn-ErrorType` header or the `__type` field (JSON protocols, as Organizations
/// speaks), or the `<Code>` element (the query protocol of IAM and STS). A namespace
/// (`…#Code`) or a suffix (`Code:…`) is dropped.
fn error_code(response: &HttpResponse) -> Option<String> {
    if response.status().is_success() {
        return None;
    }
    let bare = |code: &str| {
        let code = code.split(':').next().unwrap_or(code);
        code.rsplit('#').next().unwrap_or(code).trim().to_owned()
    };
    if let Some(header) = response.headers().get("x-amzn-errortype") {
        return Some(bare(header));
    }
    let body = response.body().bytes()?;
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        return json
            .get("__type")
            .or_else(|| json.get("code"))
            .and_then(serde_json::Value::as_str)
            .map(bare);
    }
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(bare(&text[start..end]))
}

/// The SDK configuration of one payer: `base` itself without a `role_arn`; with one, `base`
/// acting as that role, assumed with `base`'s credentials. The role's credentials are fetched on
/// first use, cached, and refreshed before they expire (the SDK's identity cache), so building
/// this makes no call. `base` needs a time source, as [`load_config`] gives it.
pub async fn payer_config(base: &SdkConfig, role_arn: Option<&RoleArn>) -> SdkConfig {
    let Some(role_arn) = role_arn else {
        return base.clone();
    };
    let role = aws_config::sts::AssumeRoleProvider::builder(role_arn.as_str())
        .session_name("aws-account-worker")
        .configure(base)
        .build()
        .await;
    base.to_builder()
        .credentials_provider(SharedCredentialsProvider::new(role))
        .build()
}

/// One [`SdkOrganizations`] per `[payers.NAME]` entry, by name, each over its
/// [`payer_config`], with the call limits and retries of `limits`; `member` and `metrics` as in
/// [`SdkOrganizations::new`]. (The timeouts of `limits` are `base`'s, as [`load_config`] sets
/// them.)
pub async fn payers(
    base: &SdkConfig,
    payers: &BTreeMap<String, PayerSettings>,
    member: &MemberAccess,
    limits: &CallLimits,
    metrics: &Metrics,
) -> BTreeMap<String, SdkOrganizations> {
    let mut clients = BTreeMap::new();
    for (name, payer) in payers {
        let config = payer_config(base, payer.role_arn.as_ref()).await;
        clients.insert(
            name.clone(),
            SdkOrganizations::new(&config, member, limits, metrics),
        );
    }
    clients
}

/// Where a call went: the payer's organization, or a freshly created member account.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Payer,
    Member,
}

/// Classifies an SDK error: no response or a 5xx is transient; a service error is transient
/// when its code is in [`TRANSIENT_CODES`]; against a member account, one in
/// [`NOT_READY_CODES`] is [`Retry::WhileNew`].
fn classify<E>(operation: &'static str, target: Target, err: SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = match &err {
        SdkError::ServiceError(service) => {
            service.err().message().unwrap_or("no message").to_owned()
        }
        other => DisplayErrorContext(other).to_string(),
    };
    let (retry, code) = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (Retry::Transient, None)
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().map(str::to_owned);
            let known = |codes: &[&str]| code.as_deref().is_some_and(|c| codes.contains(&c));
            let retry = if service.raw().status().is_server_error() || known(TRANSIENT_CODES) {
                Retry::Transient
            } else if target == Target::Member && known(NOT_READY_CODES) {
                Retry::WhileNew
            } else {
                Retry::Permanent
            };
            (retry, code)
        }
        // Construction failures (e.g. no credentials or region) and whatever the SDK adds later.
        _ => (Retry::Permanent, None),
    };
    AwsError {
        retry,
        operation,
        code,
        message,
    }
}

/// Classifies a `CreateAccount` failure: as [`classify`], except that a
/// `ConstraintViolationException` for the account creation rate (too many creations at once or
/// in a day) is transient: nothing was requested, and the order tries again later.
fn create_account_error(err: SdkError<CreateAccountError, HttpResponse>) -> AwsError {
    let rate_limited = matches!(
        err.as_service_error(),
        Some(CreateAccountError::ConstraintViolationException(violation))
            if violation.reason() == Some(&ConstraintViolationExceptionReason::AccountCreationRateLimitExceeded)
    );
    let mut error = classify("CreateAccount", Target::Payer, err);
    if rate_limited {
        error.retry = Retry::Transient;
        error.code = Some("ACCOUNT_CREATION_RATE_LIMIT_EXCEEDED".to_owned());
    }
    error
}

/// Counts every AWS call in the metrics, by operation and outcome.
#[derive(Debug)]
struct CountCalls(Metrics);

/// When the call `CountCalls` counts began, for the delivery's time outside the worker.
#[derive(Debug, Clone, Copy)]
struct CallStarted(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for CallStarted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    fn read_before_execution(
        &self,
        _: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(CallStarted(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        let outcome = match (context.output_or_error(), context.response()) {
            (Some(Ok(_)), _) => "ok",
            (_, Some(response)) if response.status().is_server_error() => "server_error",
            (_, Some(_)) => "client_error",
            (_, None) => "no_response",
        };
        self.0.aws_call(operation, outcome);
        if let Some(CallStarted(started)) = cfg.load::<CallStarted>() {
            crate::observability::spent_outside(started.elapsed());
        }
        Ok(())
    }
}

/// A payer's management account: its Organizations client, and STS with its credentials for
/// the way into member accounts.
#[derive(Clone, Debug)]
pub struct SdkOrganizations {
    config: SdkConfig,
    metrics: Metrics,
    organizations: aws_sdk_organizations::Client,
    sts: aws_sdk_sts::Client,
    member: MemberAccess,
    /// The retries of every client, the member accounts' IAM included.
    retries: RetryConfig,
    /// Bounds the calls in progress at once, and so the HTTP connections the client opens and
    /// keeps: without it, a worker with 1,000 orders in flight opened one per order.
    calls: Arc<Semaphore>,
}

impl SdkOrganizations {
    /// Clients over `config` (credentials, region, endpoint) that count their calls in
    /// `metrics`; `member` says which access role new accounts get (and the worker assumes),
    /// and whether their IAM users may see billing. At most `limits.in_flight_per_payer`
    /// Organizations and STS calls run at once (at least 1); more wait their turn. Every client
    /// retries as [`retries`] says, with [`RetryCodes`].
    pub fn new(
        config: &SdkConfig,
        member: &MemberAccess,
        limits: &CallLimits,
        metrics: &Metrics,
    ) -> Self {
        let retries = retries(limits);
        let organizations = aws_sdk_organizations::config::Builder::from(config)
            .interceptor(CountCalls(metrics.clone()))
            .retry_config(retries.clone())
            .retry_classifier(RetryCodes)
            .build();
        let sts = aws_sdk_sts::config::Builder::from(config)
            .interceptor(CountCalls(metrics.clone()))
            .retry_config(retries.clone())
            .retry_classifier(RetryCodes)
            .build();
        Self {
            config: config.clone(),
            metrics: metrics.clone(),
            organizations: aws_sdk_organizations::Client::from_conf(organizations),
            sts: aws_sdk_sts::Client::from_conf(sts),
            member: member.clone(),
            retries,
            calls: Arc::new(Semaphore::new(limits.in_flight_per_payer.max(1))),
        }
    }

    /// Waits for a turn to call AWS; the turn ends when the permit is dropped.
    async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed, so this always yields a permit. The wait is the
        // delivery's time outside the worker: it waits for other orders' AWS round trips.
        let started = std::time::Instant::now();
        let permit = self.calls.acquire().await.ok();
        crate::observability::spent_outside(started.elapsed());
        permit
    }
}

/// The Organizations tag `key` = `value` for `operation`'s request; a tag the SDK refuses to
/// build fails the call before it is sent.
fn tag(operation: &'static str, key: &str, value: &str) -> AwsResult<Tag> {
    Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| AwsError {
            retry: Retry::Permanent,
            operation,
            code: None,
            message: e.to_string(),
        })
}

/// An SDK timestamp as a `SystemTime`, when it is one.
fn system_time(time: &aws_smithy_types::DateTime) -> Option<std::time::SystemTime> {
    std::time::SystemTime::try_from(*time).ok()
}

fn status_of(
    status: Option<&aws_sdk_organizations::types::CreateAccountStatus>,
    operation: &'static str,
) -> AwsResult<CreateStatus> {
    let malformed = |what: &str| AwsError {
        retry: Retry::Transient,
        operation,
        code: None,
        message: format!("the answer has no {what}"),
    };
    let status = status.ok_or_else(|| malformed("CreateAccountStatus"))?;
    let request_id = status
        .id()
        .ok_or_else(|| malformed("create request id"))?
        .to_owned();
    let state = match status.state() {
        Some(CreateAccountState::Succeeded) => CreateState::Succeeded {
            account_id: status
                .account_id()
                .ok_or_else(|| malformed("account id"))?
                .to_owned(),
        },
        Some(CreateAccountState::Failed) => CreateState::Failed {
            reason: status
                .failure_reason()
                .map_or("UNKNOWN", |r| r.as_str())
                .to_owned(),
        },
        _ => CreateState::InProgress,
    };
    Ok(CreateStatus { request_id, state })
}

/// An SDK account as ours, with its asset tag.
fn existing(
    account: &aws_sdk_organizations::types::Account,
    asset_id: Option<String>,
) -> ExistingAccount {
    let status = account
        .state()
        .map(|state| state.as_str().to_owned())
        .or_else(|| account.status().map(|status| status.as_str().to_owned()))
        .unwrap_or_default();
    ExistingAccount {
        id: AccountId(account.id().unwrap_or_default().to_owned()),
        email: account.email().unwrap_or_default().to_owned(),
        asset_id,
        joined: account.joined_timestamp().and_then(system_time),
        name: account.name().map(str::to_owned),
        status,
    }
}

/// An SDK handshake as ours.
fn handshake_of(
    handshake: Option<&aws_sdk_organizations::types::Handshake>,
    operation: &'static str,
) -> AwsResult<Handshake> {
    let handshake = handshake.ok_or_else(|| AwsError {
        retry: Retry::Transient,
        operation,
        code: None,
        message: "the answer has no handshake".to_owned(),
    })?;
    Ok(Handshake {
        id: handshake.id().unwrap_or_default().to_owned(),
        account: handshake
            .parties()
            .iter()
            .find(|party| party.r#type() == &HandshakePartyType::Account)
            .map(|party| party.id().to_owned()),
        state: HandshakeState::parse(handshake.state().map_or("", |s| s.as_str())),
        expires_at: handshake.expiration_timestamp().and_then(system_time),
        notes: handshake
            .resources()
            .iter()
            .find(|resource| resource.r#type() == Some(&HandshakeResourceType::Notes))
            .and_then(|resource| resource.value().map(str::to_owned)),
    })
}

/// A payer call whose effect may already be there: done when it succeeded, and when it failed
/// with an error that `already` says means the effect was there before (an SCP already
/// attached, one not attached to detach).
fn done_unless<O, E>(
    result: Result<O, SdkError<E, HttpResponse>>,
    operation: &'static str,
    already: impl Fn(&E) -> bool,
) -> AwsResult<()>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(&already) => Ok(()),
        Err(e) => Err(classify(operation, Target::Payer, e)),
    }
}

/// `error` with the constraint's `reason`, when it has one, as its code: the reason is what
/// tells a quota from a wait.
fn with_reason(mut error: AwsError, reason: Option<&str>) -> AwsError {
    if let Some(reason) = reason {
        error.code = Some(reason.to_owned());
    }
    error
}

impl SdkOrganizations {
    /// The account's `connect:asset-id` tag.
    /// The id of the first `CreateAccount` request in `state` that `wanted` picks:
    /// `ListCreateAccountStatus` filtered by state, page by page until one is found.
    async fn find_status(
        &self,
        state: CreateAccountState,
        wanted: impl Fn(&CreateAccountStatus) -> bool,
    ) -> AwsResult<Option<String>> {
        let _turn = self.turn().await;
        let mut pages = self
            .organizations
            .list_create_account_status()
            .states(state)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListCreateAccountStatus", Target::Payer, e))?;
            if let Some(status) = page.create_account_statuses().iter().find(|s| wanted(s)) {
                return Ok(status.id().map(str::to_owned));
            }
        }
        Ok(None)
    }

    async fn asset_tag(&self, account: &str) -> AwsResult<Option<String>> {
        let mut pages = self
            .organizations
            .list_tags_for_resource()
            .resource_id(account)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListTagsForResource", Target::Payer, e))?;
            if let Some(tag) = page.tags().iter().find(|t| t.key() == ASSET_TAG) {
                return Ok(Some(tag.value().to_owned()));
            }
        }
        Ok(None)
    }
}

impl Organizations for SdkOrganizations {
    type Member = SdkMemberIam;

    async fn find_accounts(&self, wanted: &Candidates<'_>) -> AwsResult<Vec<ExistingAccount>> {
        let _turn = self.turn().await;
        let mut pages = self.organizations.list_accounts().into_paginator().send();
        let mut picked = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListAccounts", Target::Payer, e))?;
            picked.extend(
                page.accounts()
                    .iter()
                    .filter(|a| wanted.picks(a.email(), a.name()))
                    .cloned(),
            );
        }
        let mut found = Vec::with_capacity(picked.len());
        for account in picked {
            let asset_id = self.asset_tag(account.id().unwrap_or_default()).await?;
            found.push(existing(&account, asset_id));
        }
        Ok(found)
    }

    async fn find_request(&self, account: &AccountId) -> AwsResult<Option<String>> {
        self.find_status(CreateAccountState::Succeeded, |status| {
            status.account_id() == Some(account.0.as_str())
        })
        .await
    }

    async fn describe_account(&self, account: &AccountId) -> AwsResult<ExistingAccount> {
        let _turn = self.turn().await;
        let output = self
            .organizations
            .describe_account()
            .account_id(&account.0)
            .send()
            .boxed()
            .await
            .map_err(|e| classify("DescribeAccount", Target::Payer, e))?;
        let asset_id = self.asset_tag(&account.0).await?;
        let mut found = output
            .account()
            .map(|a| existing(a, asset_id.clone()))
            .unwrap_or_else(|| {
                existing(
                    &aws_sdk_organizations::types::Account::builder().build(),
                    asset_id,
                )
            });
        found.id = account.clone();
        Ok(found)
    }

    async fn find_creation(&self, account_name: &str) -> AwsResult<Option<String>> {
        self.find_status(CreateAccountState::InProgress, |status| {
            status.account_name() == Some(account_name)
        })
        .await
    }

    async fn create_account(&self, account: &NewAccount) -> AwsResult<CreateStatus> {
        let _turn = self.turn().await;
        let billing = match self.member.iam_user_access_to_billing {
            AccessToBilling::Allow => IamUserAccessToBilling::Allow,
            AccessToBilling::Deny => IamUserAccessToBilling::Deny,
        };
        let mut request = self
            .organizations
            .create_account()
            .email(&account.email)
            .account_name(&account.name)
            .role_name(self.member.role_name.as_str())
            .iam_user_access_to_billing(billing);
        for (key, value) in &account.tags {
            request = request.tags(tag("CreateAccount", key, value)?);
        }
        // CreateAccount is not idempotent: a retry after a lost answer would request a second
        // account. The SDK does not retry it; the order goes back to the broker instead, and
        // the idempotency gate looks for the first account before anything is requested again.
        let output = request
            .customize()
            .config_override(
                aws_sdk_organizations::config::Builder::default()
                    .retry_config(RetryConfig::disabled()),
            )
            .send()
            .boxed()
            .await
            .map_err(create_account_error)?;
        status_of(output.create_account_status(), "CreateAccount")
    }

    async fn create_status(&self, request_id: &str) -> AwsResult<CreateStatus> {
        let _turn = self.turn().await;
        let output = self
            .organizations
            .describe_create_account_status()
            .create_account_request_id(request_id)
            .send()
            .boxed()
            .await
            .map_err(|e| classify("DescribeCreateAccountStatus", Target::Payer, e))?;
        status_of(
            output.create_account_status(),
            "DescribeCreateAccountStatus",
        )
    }

    async fn attach_policy(&self, policy: &PolicyId, account: &AccountId) -> AwsResult<()> {
        let _turn = self.turn().await;
        let result = self
            .organizations
            .attach_policy()
            .policy_id(policy.as_str())
            .target_id(&account.0)
            .send()
            .boxed()
            .await;
        done_unless(result, "AttachPolicy", |e| {
            matches!(e, AttachPolicyError::DuplicatePolicyAttachmentException(_))
        })
    }

    async fn attached_policies(&self, account: &AccountId) -> AwsResult<Vec<String>> {
        let _turn = self.turn().await;
        let mut pages = self
            .organizations
            .list_policies_for_target()
            .target_id(&account.0)
            .filter(PolicyType::ServiceControlPolicy)
            .into_paginator()
            .send();
        let mut ids = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListPoliciesForTarget", Target::Payer, e))?;
            ids.extend(
                page.policies()
                    .iter()
                    .filter_map(|policy| policy.id().map(str::to_owned)),
            );
        }
        Ok(ids)
    }

    async fn place_account(&self, account: &AccountId, parent: &OuId) -> AwsResult<bool> {
        let parent = parent.as_str();
        let _turn = self.turn().await;
        let parents = self
            .organizations
            .list_parents()
            .child_id(&account.0)
            .send()
            .boxed()
            .await
            .map_err(|e| classify("ListParents", Target::Payer, e))?;
        let Some(current) = parents.parents().first().and_then(|p| p.id()) else {
            return Err(AwsError {
                retry: Retry::Transient,
                operation: "ListParents",
                code: None,
                message: format!("account {account} has no parent yet"),
            });
        };
        if current == parent {
            return Ok(false);
        }
        let moved = self
            .organizations
            .move_account()
            .account_id(&account.0)
            .source_parent_id(current)
            .destination_parent_id(parent)
            .send()
            .boxed()
            .await;
        match moved {
            Ok(_) => Ok(true),
            // Another delivery moved it between our two calls.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(MoveAccountError::DuplicateAccountException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify("MoveAccount", Target::Payer, e)),
        }
    }

    async fn detach_policy(&self, policy: &PolicyId, account: &AccountId) -> AwsResult<()> {
        let _turn = self.turn().await;
        let result = self
            .organizations
            .detach_policy()
            .policy_id(policy.as_str())
            .target_id(&account.0)
            .send()
            .await;
        done_unless(result, "DetachPolicy", |e| {
            matches!(e, DetachPolicyError::PolicyNotAttachedException(_))
        })
    }

    async fn close_account(&self, account: &AccountId) -> AwsResult<()> {
        let _turn = self.turn().await;
        let result = self
            .organizations
            .close_account()
            .account_id(&account.0)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(CloseAccountError::AccountAlreadyClosedException(_)) => Ok(()),
                Some(CloseAccountError::ConstraintViolationException(violation)) => {
                    let reason = violation.reason().map(|r| r.as_str().to_owned());
                    Err(with_reason(
                        classify("CloseAccount", Target::Payer, e),
                        reason.as_deref(),
                    ))
                }
                _ => Err(classify("CloseAccount", Target::Payer, e)),
            },
        }
    }

    async fn remove_account(&self, account: &AccountId) -> AwsResult<()> {
        let _turn = self.turn().await;
        let result = self
            .organizations
            .remove_account_from_organization()
            .account_id(&account.0)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let reason = match e.as_service_error() {
                    Some(RemoveAccountFromOrganizationError::ConstraintViolationException(
                        violation,
                    )) => violation.reason().map(|r| r.as_str().to_owned()),
                    _ => None,
                };
                Err(with_reason(
                    classify("RemoveAccountFromOrganization", Target::Payer, e),
                    reason.as_deref(),
                ))
            }
        }
    }

    async fn invite_account(&self, invitation: &Invitation) -> AwsResult<Handshake> {
        let _turn = self.turn().await;
        let party = HandshakeParty::builder()
            .id(&invitation.account.0)
            .r#type(HandshakePartyType::Account)
            .build()
            .map_err(|e| AwsError {
                retry: Retry::Permanent,
                operation: "InviteAccountToOrganization",
                code: None,
                message: e.to_string(),
            })?;
        let mut request = self
            .organizations
            .invite_account_to_organization()
            .target(party)
            .notes(&invitation.notes);
        for (key, value) in &invitation.tags {
            let tag = Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| AwsError {
                    retry: Retry::Permanent,
                    operation: "InviteAccountToOrganization",
                    code: None,
                    message: e.to_string(),
                })?;
            request = request.tags(tag);
        }
        match request.send().await {
            Ok(output) => handshake_of(output.handshake(), "InviteAccountToOrganization"),
            Err(e) => {
                let reason = match e.as_service_error() {
                    Some(
                        InviteAccountToOrganizationError::HandshakeConstraintViolationException(
                            violation,
                        ),
                    ) => violation.reason().map(|r| r.as_str().to_owned()),
                    Some(InviteAccountToOrganizationError::ConstraintViolationException(
                        violation,
                    )) => violation.reason().map(|r| r.as_str().to_owned()),
                    _ => None,
                };
                Err(with_reason(
                    classify("InviteAccountToOrganization", Target::Payer, e),
                    reason.as_deref(),
                ))
            }
        }
    }

    async fn describe_handshake(&self, id: &str) -> AwsResult<Handshake> {
        let _turn = self.turn().await;
        let output = self
            .organizations
            .describe_handshake()
            .handshake_id(id)
            .send()
            .await
            .map_err(|e| classify("DescribeHandshake", Target::Payer, e))?;
        handshake_of(output.handshake(), "DescribeHandshake")
    }

    async fn find_invitations(&self, account: &AccountId) -> AwsResult<Vec<Handshake>> {
        let _turn = self.turn().await;
        let mut pages = self
            .organizations
            .list_handshakes_for_organization()
            .filter(
                HandshakeFilter::builder()
                    .action_type(ActionType::InviteAccountToOrganization)
                    .build(),
            )
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| classify("ListHandshakesForOrganization", Target::Payer, e))?;
            for handshake in page.handshakes() {
                let handshake = handshake_of(Some(handshake), "ListHandshakesForOrganization")?;
                if handshake.account.as_deref() == Some(account.0.as_str()) {
                    found.push(handshake);
                }
            }
        }
        Ok(found)
    }

    async fn cancel_handshake(&self, id: &str) -> AwsResult<Handshake> {
        let _turn = self.turn().await;
        let output = self
            .organizations
            .cancel_handshake()
            .handshake_id(id)
            .send()
            .await
            .map_err(|e| classify("CancelHandshake", Target::Payer, e))?;
        handshake_of(output.handshake(), "CancelHandshake")
    }

    async fn tag_account(&self, account: &AccountId, tags: &[(String, String)]) -> AwsResult<()> {
        let _turn = self.turn().await;
        let mut request = self.organizations.tag_resource().resource_id(&account.0);
        for (key, value) in tags {
            request = request.tags(tag("TagResource", key, value)?);
        }
        request
            .send()
            .await
            .map_err(|e| classify("TagResource", Target::Payer, e))?;
        Ok(())
    }

    async fn member(&self, account: &AccountId) -> AwsResult<SdkMemberIam> {
        let _turn = self.turn().await;
        let role_arn = format!("arn:aws:iam::{account}:role/{}", self.member.role_name);
        let output = self
            .sts
            .assume_role()
            .role_arn(role_arn)
            .role_session_name("aws-account-worker")
            .send()
            .boxed()
            .await
            .map_err(|e| classify("AssumeRole", Target::Member, e))?;
        let credentials = output.credentials().ok_or_else(|| AwsError {
            retry: Retry::Transient,
            operation: "AssumeRole",
            code: None,
            message: "the answer has no credentials".to_owned(),
        })?;
        let credentials = aws_sdk_iam::config::Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            Some(credentials.session_token().to_owned()),
            None,
            "member-access-role",
        );
        let config = aws_sdk_iam::config::Builder::from(&self.config)
            .credentials_provider(credentials)
            .interceptor(CountCalls(self.metrics.clone()))
            .retry_config(self.retries.clone())
            .retry_classifier(RetryCodes)
            .build();
        Ok(SdkMemberIam {
            iam: aws_sdk_iam::Client::from_conf(config),
        })
    }
}

/// IAM in one member account, with the access role's temporary credentials.
#[derive(Clone, Debug)]
pub struct SdkMemberIam {
    iam: aws_sdk_iam::Client,
}

impl MemberIam for SdkMemberIam {
    async fn create_user(&self, name: &IamUserName) -> AwsResult<()> {
        match self
            .iam
            .create_user()
            .user_name(name.as_str())
            .send()
            .boxed()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(CreateUserError::EntityAlreadyExistsException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(classify("CreateUser", Target::Member, e)),
        }
    }

    async fn set_login_profile(
        &self,
        name: &IamUserName,
        password: &SecretString,
    ) -> AwsResult<()> {
        let created = self
            .iam
            .create_login_profile()
            .user_name(name.as_str())
            .password(password.expose_secret())
            .password_reset_required(true)
            .send()
            .boxed()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(CreateLoginProfileError::EntityAlreadyExistsException(_))
                ) =>
            {
                self.iam
                    .update_login_profile()
                    .user_name(name.as_str())
                    .password(password.expose_secret())
                    .password_reset_required(true)
                    .send()
                    .boxed()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify("UpdateLoginProfile", Target::Member, e))
            }
            Err(e) => Err(classify("CreateLoginProfile", Target::Member, e)),
        }
    }

    async fn attach_user_policy(
        &self,
        name: &IamUserName,
        policy_arn: &PolicyArn,
    ) -> AwsResult<()> {
        self.iam
            .attach_user_policy()
            .user_name(name.as_str())
            .policy_arn(policy_arn.as_str())
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| classify("AttachUserPolicy", Target::Member, e))
    }

    async fn credentials_issued(&self, name: &IamUserName) -> AwsResult<bool> {
        // A user has at most 50 tags: one page holds them all.
        let listed = self
            .iam
            .list_user_tags()
            .user_name(name.as_str())
            .max_items(100)
            .send()
            .boxed()
            .await
            .map_err(|e| classify("ListUserTags", Target::Member, e))?;
        Ok(listed
            .tags()
            .iter()
            .any(|t| t.key() == CREDENTIALS_TAG && t.value() == CREDENTIALS_ISSUED))
    }

    async fn mark_credentials_issued(&self, name: &IamUserName, event_id: &str) -> AwsResult<()> {
        let tag = |key: &str, value: &str| {
            aws_sdk_iam::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| AwsError {
                    retry: Retry::Permanent,
                    operation: "TagUser",
                    code: None,
                    message: e.to_string(),
                })
        };
        self.iam
            .tag_user()
            .user_name(name.as_str())
            .tags(tag(CREDENTIALS_TAG, CREDENTIALS_ISSUED)?)
            .tags(tag(CREDENTIALS_EVENT_TAG, event_id)?)
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| classify("TagUser", Target::Member, e))
    }
}

#[cfg(test)]
mod tests {
    //! The classification of `CreateAccount` failures that concern the creation limit, the
    //! timeouts taken from the settings, and a payer whose credentials cannot be had.

    use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
    use aws_sdk_organizations::types::error::{
        ConstraintViolationException, TooManyRequestsException,
    };
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn answer(error: CreateAccountError) -> AwsError {
        let raw = HttpResponse::new(400.try_into().expect("status"), SdkBody::from("{}"));
        create_account_error(SdkError::service_error(error, raw))
    }

    #[test]
    fn too_many_creations_are_tried_again_other_constraints_are_not() {
        let rate = ConstraintViolationException::builder()
            .reason(ConstraintViolationExceptionReason::AccountCreationRateLimitExceeded)
            .build();
        let error = answer(CreateAccountError::ConstraintViolationException(rate));
        assert_eq!(error.retry, Retry::Transient);
        assert_eq!(
            error.code.as_deref(),
            Some("ACCOUNT_CREATION_RATE_LIMIT_EXCEEDED")
        );

        let throttled = TooManyRequestsException::builder()
            .meta(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("TooManyRequestsException")
                    .build(),
            )
            .build();
        let error = answer(CreateAccountError::TooManyRequestsException(throttled));
        assert_eq!(error.retry, Retry::Transient, "{error:?}");

        let full = ConstraintViolationException::builder()
            .reason(ConstraintViolationExceptionReason::AccountNumberLimitExceeded)
            .build();
        let error = answer(CreateAccountError::ConstraintViolationException(full));
        assert_eq!(error.retry, Retry::Permanent);
    }

    #[test]
    fn the_timeouts_are_the_limits() {
        let limits = CallLimits {
            connect_timeout: std::time::Duration::from_millis(1500),
            attempt_timeout: std::time::Duration::from_secs(7),
            operation_timeout: std::time::Duration::from_secs(30),
            in_flight_per_payer: 2,
            max_attempts: 7,
        };
        let timeouts = timeouts(&limits);
        assert_eq!(timeouts.connect_timeout(), Some(limits.connect_timeout));
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(limits.attempt_timeout)
        );
        assert_eq!(timeouts.operation_timeout(), Some(limits.operation_timeout));
        assert_eq!(retries(&limits).max_attempts(), 7);
        assert_eq!(
            retries(&limits).mode(),
            aws_smithy_types::retry::RetryMode::Standard
        );
    }

    /// What [`RetryCodes`] makes of an error answer of `status` with `headers` and `body`.
    fn classified(status: u16, headers: &[(&str, &str)], body: &str) -> RetryAction {
        use aws_smithy_runtime_api::client::interceptors::context::{Error, Input};
        use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
        let mut response = HttpResponse::new(
            status.try_into().expect("status"),
            SdkBody::from(body.to_owned()),
        );
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(name.to_string(), value.to_string());
        }
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        ctx.set_response(response);
        ctx.set_output_or_error(Err(OrchestratorError::operation(Error::doesnt_matter())));
        RetryCodes.classify_retry(&ctx)
    }

    #[test]
    fn concurrent_modification_and_throttling_are_retried_in_the_sdk_other_errors_are_not() {
        let retried = RetryAction::throttling_error();
        let none = RetryAction::NoActionIndicated;
        let cme = "ConcurrentModificationException";
        // (status, headers, body, expected): Organizations (JSON) and IAM/STS (query, XML).
        type Case<'a> = (u16, Vec<(&'a str, &'a str)>, String, &'a RetryAction);
        let cases: [Case<'_>; 9] = [
            (400, vec![("x-amzn-errortype", cme)], "{}".into(), &retried),
            (400, vec![], format!(r#"{{"__type":"{cme}","Message":"busy"}}"#), &retried),
            (400, vec![], format!(r#"{{"__type":"com.amazonaws.organizations#{cme}"}}"#), &retried),
            (400, vec![("x-amzn-errortype", "TooManyRequestsException:http://internal")], "{}".into(), &retried),
            (
                400,
                vec![],
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>".into(),
                &retried,
            ),
            (
                409,
                vec![],
                format!("<ErrorResponse><Error><Code>{cme}</Code></Error></ErrorResponse>"),
                &retried,
            ),
            (400, vec![], r#"{"__type":"AccessDeniedException"}"#.into(), &none),
            (
                400,
                vec![],
                "<ErrorResponse><Error><Code>EntityAlreadyExists</Code></Error></ErrorResponse>".into(),
                &none,
            ),
            (400, vec![], "not a known shape".into(), &none),
        ];
        for (status, headers, body, expected) in cases {
            assert_eq!(
                &classified(status, &headers, &body),
                expected,
                "{headers:?} {body}"
            );
        }
        // A success is never retried.
        let mut ctx = InterceptorContext::new(
            aws_smithy_runtime_api::client::interceptors::context::Input::doesnt_matter(),
        );
        ctx.set_response(HttpResponse::new(
            200.try_into().expect("status"),
            SdkBody::from("{}"),
        ));
        ctx.set_output_or_error(Ok(
            aws_smithy_runtime_api::client::interceptors::context::Output::doesnt_matter(),
        ));
        assert_eq!(RetryCodes.classify_retry(&ctx), none);
    }

    /// Credentials that never come, as from a payer role that cannot be assumed.
    #[derive(Debug)]
    struct Refused;

    impl ProvideCredentials for Refused {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::provider_error(
                "AccessDenied: not authorized to perform sts:AssumeRole",
            )))
        }
    }

    #[tokio::test]
    async fn a_payer_without_credentials_fails_its_calls_before_sending_them() {
        let config = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            // Nothing listens there; the call must not get that far.
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(SharedCredentialsProvider::new(Refused))
            .build();
        let member = MemberAccess {
            role_name: crate::domain::names::RoleName::parse("OrganizationAccountAccessRole")
                .expect("role name"),
            iam_user_access_to_billing: AccessToBilling::Allow,
        };
        let payer = SdkOrganizations::new(
            &config,
            &member,
            &CallLimits::default(),
            &Metrics::default(),
        );
        let error = payer
            .find_accounts(&Candidates {
                email: "someone@example.com",
                account_name: "Someone",
                asset_id: "AS-1",
            })
            .await
            .expect_err("no credentials");
        assert_eq!(error.operation, "ListAccounts");
        assert_eq!(error.retry, Retry::Transient, "{error:?}");
        assert_eq!(error.reason().as_str(), "AWS_UNREACHABLE", "{error:?}");
        assert!(error.message.contains("sts:AssumeRole"), "{error:?}");
    }
}
