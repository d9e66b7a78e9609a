//! Provisioning: the account, its SCPs and the customer's access, step by step, each step
//! safe to run again. What is known so far ([`Progress`]) travels with the order when it goes
//! back to the broker, so a retry never asks AWS for a second account.

use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::aws::{AccountId, AwsError, CreateState, MemberIam, NewAccount, Organizations, Retry};
use crate::domain::ids::PolicyId;
use crate::domain::model::{Access, Plan};
use crate::domain::names::IamUserName;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::password;

/// What an earlier attempt of this order already achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The `CreateAccount` request (`car-…`), once issued.
    pub create_request_id: Option<String>,
    /// The new account, once created.
    pub account_id: Option<String>,
}

/// How long one attempt waits for a creation in progress.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Between two `DescribeCreateAccountStatus` calls.
    pub interval: Duration,
    /// In all, before the order goes back to the broker to wait.
    pub patience: Duration,
}

/// A provisioned order.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The member account.
    pub account_id: String,
    /// The `CreateAccount` request that made it.
    pub create_request_id: String,
    /// The SCPs attached.
    pub service_control_policies: Vec<PolicyId>,
    /// How the customer signs in.
    pub access: Granted,
}

/// The access handed to the customer.
#[derive(Debug, Clone)]
pub enum Granted {
    /// An IAM user with an initial password (reset required).
    IamUser {
        /// The user name.
        user_name: IamUserName,
        /// The initial password; printed as `[REDACTED]`.
        password: SecretString,
    },
    /// The root user, after a password reset in the AWS console.
    RootUser,
}

/// Why provisioning stopped.
#[derive(Debug)]
pub enum ProvisionError {
    /// A business outcome: the order gets `aws.account.failed`.
    Rejected(Rejection),
    /// An AWS call failed; `progress` is what was achieved before it.
    Aws {
        /// The classified failure.
        error: AwsError,
        /// What to resume from.
        progress: Progress,
    },
}

/// Tags that tie the account to its Connect order.
fn tags(order: &PurchaseRequest) -> Vec<(String, String)> {
    vec![
        ("connect:request-id".into(), order.request_id.to_string()),
        ("connect:asset-id".into(), order.asset_id.to_string()),
        (
            "connect:marketplace-id".into(),
            order.marketplace_id.to_string(),
        ),
    ]
}

/// Provisions `plan` for `order`, resuming from `progress`.
///
/// # Errors
/// [`ProvisionError::Rejected`] when AWS ends the creation FAILED; [`ProvisionError::Aws`]
/// when a call fails, with the progress to resume from.
pub async fn provision<O: Organizations>(
    aws: &O,
    order: &PurchaseRequest,
    plan: &Plan,
    mut progress: Progress,
    polling: Polling,
) -> Result<Provisioned, ProvisionError> {
    let fail = |error, progress: &Progress| ProvisionError::Aws {
        error,
        progress: progress.clone(),
    };

    let account_id = match progress.account_id.clone() {
        Some(id) => id,
        None => {
            let status = match progress.create_request_id.clone() {
                Some(id) => aws.create_status(&id).await,
                None => {
                    let account = NewAccount {
                        email: plan.email.to_string(),
                        name: plan.account_name.to_string(),
                        tags: tags(order),
                    };
                    aws.create_account(&account).await
                }
            }
            .map_err(|e| fail(e, &progress))?;
            info!(create_request_id = %status.request_id, "account creation requested");
            progress.create_request_id = Some(status.request_id.clone());
            let account_id = wait_for_account(aws, status.request_id, status.state, polling)
                .await
                .map_err(|e| match e {
                    Waited::Failed(reason) => ProvisionError::Rejected(Rejection::new(
                        FailureCode::from_aws_reason(&reason),
                        format!("AWS could not create the account: {reason}"),
                    )),
                    Waited::Error(error) => fail(error, &progress),
                })?;
            info!(account_id, "account created");
            progress.account_id = Some(account_id.clone());
            account_id
        }
    };
    let account = AccountId(account_id.clone());

    for policy in &plan.service_control_policies {
        aws.attach_policy(policy, &account)
            .await
            .map_err(|e| fail(e, &progress))?;
        debug!(policy = %policy, "service control policy attached");
    }

    let access = match &plan.access {
        Access::RootUser => Granted::RootUser,
        Access::IamUser {
            user_name,
            policy_arns,
        } => {
            let member = aws.member(&account).await.map_err(|e| fail(e, &progress))?;
            let password = password::generate();
            member
                .create_user(user_name)
                .await
                .map_err(|e| fail(e, &progress))?;
            member
                .set_login_profile(user_name, &password)
                .await
                .map_err(|e| fail(e, &progress))?;
            for arn in policy_arns {
                member
                    .attach_user_policy(user_name, arn)
                    .await
                    .map_err(|e| fail(e, &progress))?;
            }
            info!(iam_user_name = %user_name, "IAM user ready");
            Granted::IamUser {
                user_name: user_name.clone(),
                password,
            }
        }
    };

    Ok(Provisioned {
        account_id,
        create_request_id: progress.create_request_id.unwrap_or_default(),
        service_control_policies: plan.service_control_policies.clone(),
        access,
    })
}

enum Waited {
    Failed(String),
    Error(AwsError),
}

/// Polls the creation until it ends or `polling.patience` runs out (then a transient error, so
/// the order waits in the broker instead of holding its consumer slot).
async fn wait_for_account<O: Organizations>(
    aws: &O,
    request_id: String,
    mut state: CreateState,
    polling: Polling,
) -> Result<String, Waited> {
    let deadline = Instant::now() + polling.patience;
    loop {
        match state {
            CreateState::Succeeded { account_id } => return Ok(account_id),
            CreateState::Failed { reason } => return Err(Waited::Failed(reason)),
            CreateState::InProgress if Instant::now() + polling.interval > deadline => {
                return Err(Waited::Error(AwsError {
                    retry: Retry::Transient,
                    operation: "DescribeCreateAccountStatus",
                    code: Some("CREATE_IN_PROGRESS".to_owned()),
                    message: format!("account creation {request_id} is still in progress"),
                }));
            }
            CreateState::InProgress => {
                tokio::time::sleep(polling.interval).await;
                state = aws
                    .create_status(&request_id)
                    .await
                    .map_err(Waited::Error)?
                    .state;
            }
        }
    }
}
