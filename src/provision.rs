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
                    Waited::Failed(reason) => ProvisionError::Rejected(
                        Rejection::new(
                            FailureCode::from_aws_reason(&reason),
                            format!("AWS could not create the account: {reason}"),
                        )
                        .under(plan.model),
                    ),
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

#[cfg(test)]
mod tests {
    //! Provisioning against an explicit fake that scripts creation states and records calls.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::aws::{AwsResult, CreateStatus};
    use crate::domain::email::AccountEmail;
    use crate::domain::model::AccountModel;
    use crate::domain::names::AccountName;

    /// Scripted Organizations: `CreateAccount` answers the first state, each status poll the
    /// next; every call is recorded by name.
    #[derive(Clone, Default)]
    struct ScriptedOrganizations {
        states: Arc<Mutex<VecDeque<CreateState>>>,
        calls: Arc<Mutex<Vec<String>>>,
        fail_attach: Option<AwsError>,
    }

    impl ScriptedOrganizations {
        fn with_states(states: impl IntoIterator<Item = CreateState>) -> Self {
            Self {
                states: Arc::new(Mutex::new(states.into_iter().collect())),
                ..Self::default()
            }
        }

        fn record(&self, call: impl Into<String>) {
            self.calls.lock().expect("calls").push(call.into());
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("calls").clone()
        }

        fn next_status(&self) -> CreateStatus {
            let state = self
                .states
                .lock()
                .expect("states")
                .pop_front()
                .expect("a scripted state");
            CreateStatus {
                request_id: "car-test".into(),
                state,
            }
        }
    }

    impl Organizations for ScriptedOrganizations {
        type Member = ScriptedOrganizations;

        async fn create_account(&self, account: &NewAccount) -> AwsResult<CreateStatus> {
            self.record(format!("CreateAccount {}", account.email));
            Ok(self.next_status())
        }

        async fn create_status(&self, request_id: &str) -> AwsResult<CreateStatus> {
            self.record(format!("DescribeCreateAccountStatus {request_id}"));
            Ok(self.next_status())
        }

        async fn attach_policy(&self, policy: &PolicyId, account: &AccountId) -> AwsResult<()> {
            self.record(format!("AttachPolicy {policy} {account}"));
            self.fail_attach.clone().map_or(Ok(()), Err)
        }

        async fn member(&self, account: &AccountId) -> AwsResult<Self> {
            self.record(format!("AssumeRole {account}"));
            Ok(self.clone())
        }
    }

    impl MemberIam for ScriptedOrganizations {
        async fn create_user(&self, name: &IamUserName) -> AwsResult<()> {
            self.record(format!("CreateUser {name}"));
            Ok(())
        }

        async fn set_login_profile(&self, name: &IamUserName, _: &SecretString) -> AwsResult<()> {
            self.record(format!("CreateLoginProfile {name}"));
            Ok(())
        }

        async fn attach_user_policy(&self, name: &IamUserName, arn: &str) -> AwsResult<()> {
            self.record(format!("AttachUserPolicy {name} {arn}"));
            Ok(())
        }
    }

    fn order() -> PurchaseRequest {
        let body = serde_json::json!({
            "id": "PR-1-2", "type": "purchase",
            "asset": {"id": "AS-1", "marketplace": {"id": "MP-1"}, "tiers": {"customer": {"id": "TA-1", "name": "C"}}}
        });
        crate::domain::order::parse(body.to_string().as_bytes()).expect("valid order")
    }

    fn plan(access: Access) -> Plan {
        Plan {
            model: AccountModel::Ecam,
            email: AccountEmail::parse("c@customer.example").expect("email"),
            account_name: AccountName::derive(Some("C"), "AS-1", None, "C"),
            access,
            service_control_policies: vec![PolicyId::parse("p-abcd1234").expect("id")],
            payer: "default".into(),
            organizational_unit_id: None,
            template_id: None,
        }
    }

    fn iam_user() -> Access {
        Access::IamUser {
            user_name: IamUserName::parse("admin").expect("name"),
            policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()],
        }
    }

    const POLLING: Polling = Polling {
        interval: Duration::from_secs(2),
        patience: Duration::from_secs(10),
    };

    /// Provisions a root-user plan for the test order.
    async fn provision_root(
        aws: &ScriptedOrganizations,
        progress: Progress,
    ) -> Result<Provisioned, ProvisionError> {
        provision(aws, &order(), &plan(Access::RootUser), progress, POLLING).await
    }

    fn succeeded() -> CreateState {
        CreateState::Succeeded {
            account_id: "111122223333".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_until_succeeded_then_attaches_scps_and_makes_the_user() {
        let aws = ScriptedOrganizations::with_states([
            CreateState::InProgress,
            CreateState::InProgress,
            succeeded(),
        ]);
        let done = provision(
            &aws,
            &order(),
            &plan(iam_user()),
            Progress::default(),
            POLLING,
        )
        .await
        .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(done.create_request_id, "car-test");
        assert!(matches!(done.access, Granted::IamUser { .. }));
        assert_eq!(
            aws.calls(),
            [
                "CreateAccount c@customer.example",
                "DescribeCreateAccountStatus car-test",
                "DescribeCreateAccountStatus car-test",
                "AttachPolicy p-abcd1234 111122223333",
                "AssumeRole 111122223333",
                "CreateUser admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_creation_is_a_business_outcome_with_the_mapped_code() {
        let cases = [
            ("EMAIL_ALREADY_EXISTS", FailureCode::EmailAlreadyExists),
            ("INVALID_EMAIL", FailureCode::InvalidEmail),
            (
                "ACCOUNT_LIMIT_EXCEEDED",
                FailureCode::Aws("ACCOUNT_LIMIT_EXCEEDED".into()),
            ),
        ];
        for (reason, code) in cases {
            let failed = CreateState::Failed {
                reason: reason.into(),
            };
            let aws = ScriptedOrganizations::with_states([CreateState::InProgress, failed]);
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Rejected(rejection)) = err else {
                panic!("{reason}: expected a rejection, got {err:?}");
            };
            assert_eq!(rejection.code, code);
            assert_eq!(rejection.model, Some(AccountModel::Ecam));
            assert!(
                !aws.calls().iter().any(|c| c.starts_with("AttachPolicy")),
                "nothing after a failed creation"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_creation_goes_back_to_the_broker_with_its_request_id() {
        let aws =
            ScriptedOrganizations::with_states(std::iter::repeat_n(CreateState::InProgress, 10));
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected a transient error, got {err:?}");
        };
        assert_eq!(error.retry, Retry::Transient);
        assert_eq!(error.code.as_deref(), Some("CREATE_IN_PROGRESS"));
        assert_eq!(progress.create_request_id.as_deref(), Some("car-test"));
        let polls = aws
            .calls()
            .iter()
            .filter(|c| c.starts_with("Describe"))
            .count();
        assert_eq!(polls, 5, "at 2, 4, 6, 8 and 10 s: 10 s of patience");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_order_never_asks_for_a_second_account() {
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: None,
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(aws.calls()[0], "DescribeCreateAccountStatus car-test");

        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(aws.calls(), ["AttachPolicy p-abcd1234 111122223333"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_after_creation_keeps_the_account_in_the_progress() {
        let throttled = AwsError {
            retry: Retry::Transient,
            operation: "AttachPolicy",
            code: Some("TooManyRequestsException".into()),
            message: "slow down".into(),
        };
        let aws = ScriptedOrganizations {
            fail_attach: Some(throttled.clone()),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected an AWS error, got {err:?}");
        };
        assert_eq!(error, throttled);
        assert_eq!(progress.account_id.as_deref(), Some("111122223333"));
        assert_eq!(progress.create_request_id.as_deref(), Some("car-test"));
    }
}
