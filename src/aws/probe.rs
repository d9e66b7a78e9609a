//! The read-only AWS queries of `check` (STS `GetCallerIdentity`, Organizations
//! `DescribeOrganization`, `ListRoots`, `DescribePolicy`) behind [`Probe`], which speaks our
//! types, and [`SdkProbe`], its implementation over the AWS SDK.

use std::fmt;
use std::future::Future;

use aws_config::SdkConfig;
use aws_sdk_organizations::config::http::HttpResponse;
use aws_sdk_organizations::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_organizations::types::{PolicyType, PolicyTypeStatus};

/// How an AWS query failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// No answer: a timeout, a refused or reset connection, an unreadable response.
    Unreachable,
    /// The service answered with an error code (e.g. `InvalidClientTokenId`,
    /// `AWSOrganizationsNotInUseException`), or with an HTTP status and no code (`HTTP 500`).
    Service(String),
    /// The request was never sent (e.g. no credentials or no region found by the SDK).
    NotSent,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("no answer from AWS"),
            Self::Service(code) => f.write_str(code),
            Self::NotSent => f.write_str("not sent"),
        }
    }
}

/// A failed AWS query; carries no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({failure}): {message}")]
pub struct ProbeError {
    /// The API operation, e.g. `GetCallerIdentity`.
    pub operation: &'static str,
    /// What kind of failure.
    pub failure: ProbeFailure,
    /// What AWS or the SDK said.
    pub message: String,
}

impl ProbeError {
    /// True when AWS answered with the error `code`.
    pub fn is_code(&self, code: &str) -> bool {
        matches!(&self.failure, ProbeFailure::Service(c) if c == code)
    }
}

/// Who the SDK's credentials are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// 12 digits.
    pub account: String,
    /// The caller's ARN (a user, a role session, …).
    pub arn: String,
}

/// The organization the caller's account belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationInfo {
    /// `o-…`.
    pub id: String,
    /// `ALL` or `CONSOLIDATED_BILLING`.
    pub feature_set: String,
    /// The management (payer) account's id.
    pub management_account: String,
}

/// One root of the organization and where its SCP policy type stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// `r-…`.
    pub id: String,
    /// The `SERVICE_CONTROL_POLICY` type's status on this root (`ENABLED`, `PENDING_ENABLE`,
    /// `PENDING_DISABLE`), or `None` when it is not enabled.
    pub scp_status: Option<String>,
}

impl RootInfo {
    /// True when SCPs can be attached under this root.
    pub fn scps_enabled(&self) -> bool {
        self.scp_status.as_deref() == Some(PolicyTypeStatus::Enabled.as_str())
    }
}

/// A policy found by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its name.
    pub name: String,
    /// Its type, e.g. `SERVICE_CONTROL_POLICY` or `TAG_POLICY`.
    pub kind: String,
}

impl PolicyInfo {
    /// True for a service control policy.
    pub fn is_scp(&self) -> bool {
        self.kind == PolicyType::ServiceControlPolicy.as_str()
    }
}

/// The read-only questions `check` asks AWS.
pub trait Probe: Send + Sync {
    /// `GetCallerIdentity`.
    fn caller_identity(&self) -> impl Future<Output = Result<CallerIdentity, ProbeError>> + Send;

    /// `DescribeOrganization`; `AWSOrganizationsNotInUseException` when the account is in none.
    fn organization(&self) -> impl Future<Output = Result<OrganizationInfo, ProbeError>> + Send;

    /// `ListRoots`, every page.
    fn roots(&self) -> impl Future<Output = Result<Vec<RootInfo>, ProbeError>> + Send;

    /// `DescribePolicy`; `None` when there is no policy with that id
    /// (`PolicyNotFoundException`).
    fn policy(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PolicyInfo>, ProbeError>> + Send;
}

/// [`Probe`] over the AWS SDK, with the configuration `run` uses.
#[derive(Clone, Debug)]
pub struct SdkProbe {
    sts: aws_sdk_sts::Client,
    organizations: aws_sdk_organizations::Client,
}

impl SdkProbe {
    /// Clients over `config` (credentials, region, endpoint, timeouts).
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(config),
            organizations: aws_sdk_organizations::Client::new(config),
        }
    }
}

/// An error and its sources on one line, each cause once: `dispatch failure: io error: …:
/// Connection refused (os error 111)`.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Our error for an SDK error: no answer, an error code, or a request never sent.
fn probe_error<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> ProbeError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (failure, message) = match err {
        SdkError::ServiceError(service) => (
            ProbeFailure::Service(service.err().code().map_or_else(
                || format!("HTTP {}", service.raw().status().as_u16()),
                str::to_owned,
            )),
            service.err().message().unwrap_or("no message").to_owned(),
        ),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            (ProbeFailure::Unreachable, causes(err))
        }
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            (ProbeFailure::Unreachable, causes(err))
        }
        // No credentials in the chain (a dispatch failure of kind "other"), construction
        // failures (no region), and whatever the SDK adds later.
        _ => (ProbeFailure::NotSent, causes(err)),
    };
    ProbeError {
        operation,
        failure,
        message,
    }
}

impl Probe for SdkProbe {
    async fn caller_identity(&self) -> Result<CallerIdentity, ProbeError> {
        let output = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| probe_error("GetCallerIdentity", &e))?;
        Ok(CallerIdentity {
            account: output.account().unwrap_or_default().to_owned(),
            arn: output.arn().unwrap_or_default().to_owned(),
        })
    }

    async fn organization(&self) -> Result<OrganizationInfo, ProbeError> {
        let output = self
            .organizations
            .describe_organization()
            .send()
            .await
            .map_err(|e| probe_error("DescribeOrganization", &e))?;
        let organization = output.organization();
        Ok(OrganizationInfo {
            id: organization
                .and_then(|o| o.id())
                .unwrap_or_default()
                .to_owned(),
            feature_set: organization
                .and_then(|o| o.feature_set())
                .map_or("unknown", |f| f.as_str())
                .to_owned(),
            management_account: organization
                .and_then(|o| o.master_account_id())
                .unwrap_or_default()
                .to_owned(),
        })
    }

    async fn roots(&self) -> Result<Vec<RootInfo>, ProbeError> {
        let mut roots = Vec::new();
        let mut pages = self.organizations.list_roots().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| probe_error("ListRoots", &e))?;
            roots.extend(page.roots().iter().map(|root| {
                RootInfo {
                    id: root.id().unwrap_or_default().to_owned(),
                    scp_status: root
                        .policy_types()
                        .iter()
                        .find(|t| t.r#type() == Some(&PolicyType::ServiceControlPolicy))
                        .and_then(|t| t.status())
                        .map(|s| s.as_str().to_owned()),
                }
            }));
        }
        Ok(roots)
    }

    async fn policy(&self, id: &str) -> Result<Option<PolicyInfo>, ProbeError> {
        match self
            .organizations
            .describe_policy()
            .policy_id(id)
            .send()
            .await
        {
            Ok(output) => {
                let summary = output.policy().and_then(|p| p.policy_summary());
                Ok(Some(PolicyInfo {
                    name: summary
                        .and_then(|s| s.name())
                        .unwrap_or_default()
                        .to_owned(),
                    kind: summary
                        .and_then(|s| s.r#type())
                        .map_or("unknown", |t| t.as_str())
                        .to_owned(),
                }))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_policy_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(probe_error("DescribePolicy", &e)),
        }
    }
}
