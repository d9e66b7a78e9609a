//! Provisioning: the account, the customer's access, then the account's OU and SCPs; each step
//! safe to run again. What is known so far ([`Progress`]) travels with the order when it goes
//! back to the broker, so a retry never asks AWS for a second account.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::aws::{
    ASSET_TAG, AccountId, AwsError, CreateState, CreateStatus, ExistingAccount, MemberIam,
    NewAccount, Organizations, Retry,
};
use crate::domain::arn::PolicyArn;
use crate::domain::model::{Access, Plan};
use crate::domain::names::IamUserName;
use crate::domain::order::PurchaseRequest;
use crate::domain::outcome::{FailureCode, Rejection};
use crate::domain::password;
use crate::domain::progress::{Granted, Progress, Provisioned};
use crate::slots::{CreationSlots, NoSlot, Slot};

/// How long provisioning waits on AWS: for a creation in progress, and for a new account.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Between two `DescribeCreateAccountStatus` calls.
    pub interval: Duration,
    /// In all, before the order goes back to the broker to wait.
    pub patience: Duration,
    /// The readiness window: a member account younger than this that refuses the worker
    /// ([`Retry::WhileNew`]) is not ready yet; an older one denies the call for good.
    pub member_ready: Duration,
}

/// Why provisioning stopped.
#[derive(Debug)]
pub enum ProvisionError {
    /// A business outcome: the order gets `aws.account.failed`.
    Rejected(Rejection),
    /// The gate found nothing, but an earlier delivery may have a `CreateAccount` in flight
    /// ([`Progress::maybe_in_flight`]): look again after a wait, before requesting an account.
    NotYet,
    /// The gate found nothing, but no creation slot of the payer came free for this delivery:
    /// nothing was requested, the order tries again later.
    NoSlot(NoSlot),
    /// An AWS call failed; `progress` is what was achieved before it.
    Aws {
        /// The classified failure.
        error: AwsError,
        /// What to resume from.
        progress: Progress,
    },
}

/// Tags that tie the account to its Connect order; the idempotency gate reads the asset id.
fn tags(order: &PurchaseRequest) -> Vec<(String, String)> {
    vec![
        ("connect:request-id".into(), order.request_id.to_string()),
        (ASSET_TAG.into(), order.asset_id.to_string()),
        (
            "connect:marketplace-id".into(),
            order.marketplace_id.to_string(),
        ),
    ]
}

/// An AWS call failed; `progress` is what to resume from.
fn failed(error: AwsError, progress: &Progress) -> ProvisionError {
    ProvisionError::Aws {
        error,
        progress: progress.clone(),
    }
}

/// Provisions `plan` for `order`, resuming from `progress`. Every step is safe to run again:
/// the account is looked for before it is requested, and the later steps accept what is
/// already there. `CreateAccount` waits for a slot of the payer's organization from `slots`
/// and holds it until the creation ends (see [`keep_until_done`] for a creation that outlasts
/// the attempt).
///
/// # Errors
/// [`ProvisionError::Rejected`] for a business outcome (AWS ended the creation FAILED, the
/// email belongs to another account); [`ProvisionError::Aws`] when a call fails, with the
/// progress to resume from; [`ProvisionError::NoSlot`] when no creation slot came.
pub async fn provision<O: Organizations>(
    aws: &Arc<O>,
    slots: &impl CreationSlots,
    order: &PurchaseRequest,
    plan: &Plan,
    mut progress: Progress,
    polling: Polling,
) -> Result<Provisioned, ProvisionError> {
    let account_id = match progress.account_id.clone() {
        Some(id) => id,
        None => {
            let id = find_or_create(aws, slots, order, plan, &mut progress, polling).await?;
            progress.account_id = Some(id.clone());
            id
        }
    };
    let account = AccountId(account_id.clone());

    // The customer's access first, then the account's place and SCPs: an SCP that denies IAM
    // actions (attached here or inherited from the OU) must not block the worker's own setup.
    let access = match &plan.access {
        Access::RootUser => Granted::RootUser,
        Access::IamUser {
            user_name,
            policy_arns,
        } => match iam_user(aws.as_ref(), &account, user_name, policy_arns).await {
            Ok(password) => Granted::IamUser {
                user_name: user_name.clone(),
                password,
            },
            Err(error) => {
                let error = settle_refusal(aws.as_ref(), &account, error, polling).await;
                return Err(failed(error, &progress));
            }
        },
    };

    // The account's place and its SCPs are one step: `policies_attached` says both are done.
    if !progress.policies_attached {
        if let Some(parent) = &plan.organizational_unit_id {
            let moved = aws
                .place_account(&account, parent)
                .await
                .map_err(|e| failed(e, &progress))?;
            if moved {
                info!(organizational_unit_id = %parent, "account moved to its organizational unit");
            }
        }
        for policy in &plan.service_control_policies {
            aws.attach_policy(policy, &account)
                .await
                .map_err(|e| failed(e, &progress))?;
            debug!(policy = %policy, "service control policy attached");
        }
        progress.policies_attached = true;
    }

    Ok(Provisioned {
        account_id,
        create_request_id: progress.create_request_id.unwrap_or_default(),
        service_control_policies: plan.service_control_policies.clone(),
        access,
    })
}

/// Makes the customer's IAM user in the new account, through its access role: the user, a
/// login profile with a new initial password (reset required), and the user's policies.
async fn iam_user<O: Organizations>(
    aws: &O,
    account: &AccountId,
    user_name: &IamUserName,
    policy_arns: &[PolicyArn],
) -> Result<SecretString, AwsError> {
    let member = aws.member(account).await?;
    let password = password::generate();
    member.create_user(user_name).await?;
    member.set_login_profile(user_name, &password).await?;
    for arn in policy_arns {
        member.attach_user_policy(user_name, arn).await?;
    }
    info!(iam_user_name = %user_name, "IAM user ready");
    Ok(password)
}

/// The code of a refusal inside a member account past its readiness window.
pub const MEMBER_ACCESS_DENIED: &str = "MEMBER_ACCESS_DENIED";

/// Settles a [`Retry::WhileNew`] refusal inside `account` by the account's age (AWS's
/// `JoinedTimestamp`); any other error is returned as it is.
async fn settle_refusal<O: Organizations>(
    aws: &O,
    account: &AccountId,
    error: AwsError,
    polling: Polling,
) -> AwsError {
    if error.retry != Retry::WhileNew {
        return error;
    }
    let age = match aws.describe_account(account).await {
        Ok(found) => found
            .joined
            .and_then(|joined| std::time::SystemTime::now().duration_since(joined).ok()),
        Err(e) => {
            debug!(error = %e, "the refusing account's age could not be read: treated as new");
            None
        }
    };
    member_refusal(error, account, age, polling.member_ready)
}

/// A refusal inside a member account, decided by the account's `age` (unknown: new): transient
/// inside the readiness `window` (a brand-new account's access role is not usable at once),
/// permanent past it, with a message naming the step that was refused and what may deny it.
pub fn member_refusal(
    error: AwsError,
    account: &AccountId,
    age: Option<Duration>,
    window: Duration,
) -> AwsError {
    match age {
        Some(age) if age >= window => AwsError {
            retry: Retry::Permanent,
            code: Some(MEMBER_ACCESS_DENIED.to_owned()),
            message: format!(
                "step {operation} in member account {account} was refused ({code}: {message}) {age} s after the account joined the organization, past the readiness window of {window} s (aws.member_account_ready_seconds): something denies the access role there, most likely a service control policy on the organization's root or on the account's OU that denies IAM actions (the worker attaches its own SCPs only after this step), or an account without the role aws.member_role_name; fix that, then replay the order",
                operation = error.operation,
                code = error.code.as_deref().unwrap_or("no error code"),
                message = error.message,
                age = age.as_secs(),
                window = window.as_secs(),
            ),
            ..error
        },
        _ => AwsError {
            retry: Retry::Transient,
            ..error
        },
    }
}

/// Where the account of an order comes from.
enum Source {
    /// A `CreateAccount` request of this order's, from an earlier attempt or just issued.
    Own(CreateStatus),
    /// A request in progress for the order's account name that no progress of ours named
    /// (an attempt that crashed before it could record it, or a copy of the order).
    Adopted(CreateStatus),
}

/// The idempotency gate, then `CreateAccount` only if the gate found nothing, in a creation
/// slot; then waits for the creation. Returns the account id; records the create request id in
/// `progress`.
async fn find_or_create<O: Organizations>(
    aws: &Arc<O>,
    slots: &impl CreationSlots,
    order: &PurchaseRequest,
    plan: &Plan,
    progress: &mut Progress,
    polling: Polling,
) -> Result<String, ProvisionError> {
    // Held from right before `CreateAccount` until the creation ends; dropping it gives it back.
    let mut slot: Option<Slot> = None;
    let source = match progress.create_request_id.clone() {
        Some(id) => Source::Own(
            aws.create_status(&id)
                .await
                .map_err(|e| failed(e, progress))?,
        ),
        // A new order that could not wait for a slot anyway goes back before calling AWS (not
        // one whose earlier delivery may have a `CreateAccount` in flight: it waits in NotYet).
        None if !progress.maybe_in_flight && slots.room_to_wait(&plan.payer).is_err() => {
            return Err(ProvisionError::NoSlot(
                slots
                    .room_to_wait(&plan.payer)
                    .err()
                    .unwrap_or(NoSlot::TooManyWaiting(0)),
            ));
        }
        None => match gate(aws.as_ref(), order, plan).await? {
            Gate::Account(id) => {
                info!(account_id = %id, "the order's account already exists: resuming");
                return Ok(id);
            }
            Gate::Creation(id) => {
                info!(create_request_id = %id, "the order's account is being created: following it");
                Source::Adopted(
                    aws.create_status(&id)
                        .await
                        .map_err(|e| failed(e, progress))?,
                )
            }
            Gate::Nothing if progress.maybe_in_flight => return Err(ProvisionError::NotYet),
            Gate::Nothing => {
                let taken = slots
                    .acquire(&plan.payer)
                    .await
                    .map_err(ProvisionError::NoSlot)?;
                let account = NewAccount {
                    email: plan.email.to_string(),
                    name: plan.account_name.to_string(),
                    tags: tags(order),
                };
                let status = aws
                    .create_account(&account)
                    .await
                    .map_err(|e| failed(e, progress))?;
                info!(create_request_id = %status.request_id, "account creation requested");
                slot = Some(taken);
                Source::Own(status)
            }
        },
    };
    let (status, adopted) = match source {
        Source::Own(status) => {
            progress.create_request_id = Some(status.request_id.clone());
            (status, false)
        }
        // An adopted request is not recorded: should the wait run out, the next attempt goes
        // through the gate again rather than trust a request it never checked.
        Source::Adopted(status) => (status, true),
    };
    let request_id = status.request_id.clone();
    match wait_for_account(aws.as_ref(), request_id.clone(), status.state, polling).await {
        Ok(account_id) if adopted => {
            let account = aws
                .describe_account(&AccountId(account_id.clone()))
                .await
                .map_err(|e| failed(e, progress))?;
            if is_ours(&account, order, plan) {
                progress.create_request_id = Some(request_id);
                info!(account_id, "account created");
                Ok(account_id)
            } else {
                Err(failed(
                    AwsError {
                        retry: Retry::Transient,
                        operation: "CreateAccount",
                        code: Some("ACCOUNT_NAME_IN_USE".to_owned()),
                        message: format!(
                            "creation {request_id} for the account name {} made an account for another order",
                            plan.account_name
                        ),
                    },
                    progress,
                ))
            }
        }
        Ok(account_id) => {
            info!(account_id, "account created");
            Ok(account_id)
        }
        Err(Waited::Failed(reason))
            if reason == "EMAIL_ALREADY_EXISTS" || reason == CONCURRENT_ACCOUNT_MODIFICATION =>
        {
            // The email's account may be this order's own (a request sent twice whose first
            // copy won): look again before telling the customer.
            match aws
                .find_account(plan.email.as_str())
                .await
                .map_err(|e| failed(e, progress))?
            {
                Some(account) if is_ours(&account, order, plan) => {
                    info!(account_id = %account.id, "the email's account is this order's: resuming");
                    Ok(account.id.0)
                }
                // "You already submitted a request with the same information": the other
                // request is still under way; the next attempt's gate follows it.
                _ if reason == CONCURRENT_ACCOUNT_MODIFICATION => {
                    Err(try_again(&reason, &request_id))
                }
                _ => Err(rejected_by_aws(&reason, plan)),
            }
        }
        Err(Waited::Failed(reason)) if reason == INTERNAL_FAILURE => {
            Err(try_again(&reason, &request_id))
        }
        Err(Waited::Failed(reason)) => Err(rejected_by_aws(&reason, plan)),
        Err(Waited::Error(error)) => {
            // Still in progress (or unknown) at AWS: the slot stays taken until it ends.
            if let Some(slot) = slot {
                keep_until_done(Arc::clone(aws), request_id, slot, polling.interval);
            }
            Err(failed(error, progress))
        }
    }
}

/// Status polls that may fail in a row before a watched slot is given back anyway.
const WATCH_ERRORS: u32 = 30;

/// Keeps `slot` taken while the creation `request_id` is in progress at AWS, after its order
/// went back to the broker to wait: a small task polls the status every `interval` and gives
/// the slot back once the creation ends (or the status cannot be read `WATCH_ERRORS` times in
/// a row). Should the process die first, the slot comes back with its broker connection while
/// the creation may still run: the limit then briefly undercounts, and AWS's own refusal is
/// a transient error.
pub fn keep_until_done<O: Organizations>(
    aws: Arc<O>,
    request_id: String,
    slot: Slot,
    interval: Duration,
) {
    tokio::spawn(async move {
        let mut errors = 0;
        while errors < WATCH_ERRORS {
            tokio::time::sleep(interval).await;
            match aws.create_status(&request_id).await {
                Ok(status) if status.state == CreateState::InProgress => errors = 0,
                Ok(_) => break,
                Err(e) => {
                    errors += 1;
                    debug!(create_request_id = %request_id, error = %e, "polling a watched creation failed");
                }
            }
        }
        if errors >= WATCH_ERRORS {
            warn!(create_request_id = %request_id, "a creation's status could not be read: its slot is given back");
        }
        drop(slot);
    });
}

/// A `FailureReason` after which nothing was created and a new request may succeed.
const INTERNAL_FAILURE: &str = "INTERNAL_FAILURE";
/// A `FailureReason` meaning another request with the same information is under way.
const CONCURRENT_ACCOUNT_MODIFICATION: &str = "CONCURRENT_ACCOUNT_MODIFICATION";

/// A creation that ended FAILED for a reason that is not the order's: nothing was created, so
/// the next attempt starts again from the gate (its progress forgets the failed request).
fn try_again(reason: &str, request_id: &str) -> ProvisionError {
    ProvisionError::Aws {
        error: AwsError {
            retry: Retry::Transient,
            operation: "CreateAccount",
            code: Some(reason.to_owned()),
            message: format!("account creation {request_id} failed with {reason}; trying again"),
        },
        progress: Progress::default(),
    }
}

fn rejected_by_aws(reason: &str, plan: &Plan) -> ProvisionError {
    ProvisionError::Rejected(
        Rejection::new(
            FailureCode::from_aws_reason(reason),
            format!("AWS could not create the account: {reason}"),
        )
        .under(plan.model),
    )
}

/// Whether `account` was made for this order: its email and its asset tag match.
fn is_ours(account: &ExistingAccount, order: &PurchaseRequest, plan: &Plan) -> bool {
    account.email.eq_ignore_ascii_case(plan.email.as_str())
        && account.asset_id.as_deref() == Some(order.asset_id.as_str())
}

/// What the idempotency gate found.
enum Gate {
    /// The order's account exists.
    Account(String),
    /// A creation is in progress for the order's account name.
    Creation(String),
    /// Nothing: the account may be requested.
    Nothing,
}

/// Looks for the order's account before any `CreateAccount`: first a creation in progress for
/// its account name, then an account with its email (in this order, so that a creation that
/// ends between the two looks is still seen). An account with the email that is not this
/// order's is `EMAIL_ALREADY_EXISTS`.
async fn gate<O: Organizations>(
    aws: &O,
    order: &PurchaseRequest,
    plan: &Plan,
) -> Result<Gate, ProvisionError> {
    let fail = |error| failed(error, &Progress::default());
    if let Some(id) = aws
        .find_creation(plan.account_name.as_str())
        .await
        .map_err(fail)?
    {
        return Ok(Gate::Creation(id));
    }
    match aws.find_account(plan.email.as_str()).await.map_err(fail)? {
        Some(account) if is_ours(&account, order, plan) => Ok(Gate::Account(account.id.0)),
        Some(account) => Err(ProvisionError::Rejected(
            Rejection::new(
                FailureCode::EmailAlreadyExists,
                format!(
                    "the email {} belongs to account {}, which was not made for this order",
                    plan.email, account.id
                ),
            )
            .under(plan.model),
        )),
        None => Ok(Gate::Nothing),
    }
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
    use crate::domain::ids::PolicyId;
    use crate::domain::model::AccountModel;
    use crate::domain::names::AccountName;
    use crate::slots::{Local, Unlimited};

    /// Scripted Organizations: `CreateAccount` answers the first state, each status poll the
    /// next; every call is recorded by name.
    #[derive(Clone, Default)]
    struct ScriptedOrganizations {
        states: Arc<Mutex<VecDeque<CreateState>>>,
        calls: Arc<Mutex<Vec<String>>>,
        fail_attach: Option<AwsError>,
        /// What `ListAccounts` finds for any email.
        existing: Option<ExistingAccount>,
        /// What `ListCreateAccountStatus` finds in progress for any name.
        in_progress: Option<String>,
        /// What `DescribeAccount` answers.
        described: Option<ExistingAccount>,
        /// Where `ListParents` finds the account.
        parent: Arc<Mutex<String>>,
        /// What `CreateUser` answers instead of success.
        refuse_user: Option<AwsError>,
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

        async fn find_account(&self, email: &str) -> AwsResult<Option<ExistingAccount>> {
            self.record(format!("ListAccounts {email}"));
            Ok(self.existing.clone())
        }

        async fn describe_account(&self, account: &AccountId) -> AwsResult<ExistingAccount> {
            self.record(format!("DescribeAccount {account}"));
            Ok(self.described.clone().expect("a scripted account"))
        }

        async fn find_creation(&self, name: &str) -> AwsResult<Option<String>> {
            self.record(format!("ListCreateAccountStatus {name}"));
            Ok(self.in_progress.clone())
        }

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

        async fn place_account(
            &self,
            account: &AccountId,
            parent: &crate::domain::ids::OuId,
        ) -> AwsResult<bool> {
            let parent = parent.as_str();
            self.record(format!("ListParents {account}"));
            let here = self.parent.lock().expect("parent").clone();
            if here == parent {
                return Ok(false);
            }
            self.record(format!("MoveAccount {account} {here} {parent}"));
            *self.parent.lock().expect("parent") = parent.to_owned();
            Ok(true)
        }

        async fn member(&self, account: &AccountId) -> AwsResult<Self> {
            self.record(format!("AssumeRole {account}"));
            Ok(self.clone())
        }
    }

    impl MemberIam for ScriptedOrganizations {
        async fn create_user(&self, name: &IamUserName) -> AwsResult<()> {
            self.record(format!("CreateUser {name}"));
            self.refuse_user.clone().map_or(Ok(()), Err)
        }

        async fn set_login_profile(&self, name: &IamUserName, _: &SecretString) -> AwsResult<()> {
            self.record(format!("CreateLoginProfile {name}"));
            Ok(())
        }

        async fn attach_user_policy(&self, name: &IamUserName, arn: &PolicyArn) -> AwsResult<()> {
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
            provider_email_domain: "provider.example".into(),
            account_name: AccountName::derive(Some("C"), "AS-1", None, "C"),
            access,
            service_control_policies: vec![PolicyId::parse("p-abcd1234").expect("id")],
            payer: "default".into(),
            organizational_unit_id: None,
            template_id: None,
            connection: crate::domain::order::ConnectionType::Production,
            origins: std::collections::BTreeMap::new(),
        }
    }

    fn iam_user() -> Access {
        Access::IamUser {
            user_name: IamUserName::parse("admin").expect("name"),
            policy_arns: vec![
                PolicyArn::parse("arn:aws:iam::aws:policy/ReadOnlyAccess").expect("ARN"),
            ],
        }
    }

    const POLLING: Polling = Polling {
        interval: Duration::from_secs(2),
        patience: Duration::from_secs(10),
        member_ready: Duration::from_secs(300),
    };

    /// Provisions a root-user plan for the test order.
    async fn provision_root(
        aws: &ScriptedOrganizations,
        progress: Progress,
    ) -> Result<Provisioned, ProvisionError> {
        provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan(Access::RootUser),
            progress,
            POLLING,
        )
        .await
    }

    fn succeeded() -> CreateState {
        CreateState::Succeeded {
            account_id: "111122223333".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_until_succeeded_then_makes_the_user_then_attaches_scps() {
        let aws = ScriptedOrganizations::with_states([
            CreateState::InProgress,
            CreateState::InProgress,
            succeeded(),
        ]);
        let done = provision(
            &Arc::new(aws.clone()),
            &Unlimited,
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
                "ListCreateAccountStatus C",
                "ListAccounts c@customer.example",
                "CreateAccount c@customer.example",
                "DescribeCreateAccountStatus car-test",
                "DescribeCreateAccountStatus car-test",
                "AssumeRole 111122223333",
                "CreateUser admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
                "AttachPolicy p-abcd1234 111122223333",
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
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(aws.calls()[0], "DescribeCreateAccountStatus car-test");
        assert!(!aws.calls().iter().any(|c| c.starts_with("CreateAccount")));

        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
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

    fn account(asset_id: Option<&str>) -> ExistingAccount {
        ExistingAccount {
            id: AccountId("111122223333".into()),
            email: "C@Customer.example".into(),
            asset_id: asset_id.map(str::to_owned),
            joined: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_iam_user_is_made_before_the_ou_and_the_scps() {
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        *aws.parent.lock().expect("parent") = "r-root".to_owned();
        let plan = Plan {
            organizational_unit_id: Some(
                crate::domain::ids::OuId::parse("ou-root-opco0001").expect("OU id"),
            ),
            ..plan(iam_user())
        };
        provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan,
            Progress::default(),
            POLLING,
        )
        .await
        .expect("provisioned");
        let calls = aws.calls();
        let after_creation: Vec<&str> = calls[3..].iter().map(String::as_str).collect();
        assert_eq!(
            after_creation,
            [
                "AssumeRole 111122223333",
                "CreateUser admin",
                "CreateLoginProfile admin",
                "AttachUserPolicy admin arn:aws:iam::aws:policy/ReadOnlyAccess",
                "ListParents 111122223333",
                "MoveAccount 111122223333 r-root ou-root-opco0001",
                "AttachPolicy p-abcd1234 111122223333",
            ]
        );
    }

    fn refusal(retry: Retry) -> AwsError {
        AwsError {
            retry,
            operation: "CreateUser",
            code: Some("AccessDenied".into()),
            message: "explicit deny in a service control policy".into(),
        }
    }

    #[test]
    fn a_refusal_in_a_member_account_is_permanent_only_past_the_readiness_window() {
        let account = AccountId("111122223333".into());
        let window = Duration::from_secs(300);
        // (age of the account, retry)
        let cases = [
            (None, Retry::Transient),
            (Some(Duration::ZERO), Retry::Transient),
            (Some(Duration::from_secs(299)), Retry::Transient),
            (Some(Duration::from_secs(300)), Retry::Permanent),
            (Some(Duration::from_secs(86_400)), Retry::Permanent),
        ];
        for (age, retry) in cases {
            let error = member_refusal(refusal(Retry::WhileNew), &account, age, window);
            assert_eq!(error.retry, retry, "{age:?}");
            if retry == Retry::Permanent {
                assert_eq!(error.code.as_deref(), Some(MEMBER_ACCESS_DENIED));
                assert!(
                    error.message.contains("step CreateUser"),
                    "{}",
                    error.message
                );
                assert!(
                    error.message.contains("service control policy"),
                    "{}",
                    error.message
                );
                assert!(error.message.contains("111122223333"), "{}", error.message);
            } else {
                assert_eq!(error.code.as_deref(), Some("AccessDenied"));
            }
        }
        let window = Duration::ZERO;
        let error = member_refusal(
            refusal(Retry::WhileNew),
            &account,
            Some(Duration::ZERO),
            window,
        );
        assert_eq!(error.retry, Retry::Permanent, "0: never waited out");
    }

    #[tokio::test(start_paused = true)]
    async fn provisioning_asks_the_accounts_age_of_a_refusal_and_attaches_no_scp() {
        let joined = |ago: u64| Some(std::time::SystemTime::now() - Duration::from_secs(ago));
        for (ago, retry) in [(3600, Retry::Permanent), (10, Retry::Transient)] {
            let aws = ScriptedOrganizations {
                refuse_user: Some(refusal(Retry::WhileNew)),
                described: Some(ExistingAccount {
                    joined: joined(ago),
                    ..account(Some("AS-1"))
                }),
                ..ScriptedOrganizations::default()
            };
            let progress = Progress {
                create_request_id: Some("car-test".into()),
                account_id: Some("111122223333".into()),
                ..Progress::default()
            };
            let err = provision(
                &Arc::new(aws.clone()),
                &Unlimited,
                &order(),
                &plan(iam_user()),
                progress,
                POLLING,
            )
            .await;
            let Err(ProvisionError::Aws { error, progress }) = err else {
                panic!("expected an AWS error, got {err:?}");
            };
            assert_eq!(error.retry, retry, "{ago} s old");
            assert_eq!(progress.account_id.as_deref(), Some("111122223333"));
            assert!(
                !aws.calls().iter().any(|c| c.starts_with("AttachPolicy")),
                "no SCP before the user: {:?}",
                aws.calls()
            );
            // Other errors are not looked into.
            let throttled = AwsError {
                retry: Retry::Transient,
                ..refusal(Retry::Transient)
            };
            let aws = ScriptedOrganizations {
                refuse_user: Some(throttled.clone()),
                ..ScriptedOrganizations::default()
            };
            let progress = Progress {
                account_id: Some("111122223333".into()),
                ..Progress::default()
            };
            let err = provision(
                &Arc::new(aws.clone()),
                &Unlimited,
                &order(),
                &plan(iam_user()),
                progress,
                POLLING,
            )
            .await;
            assert!(
                matches!(&err, Err(ProvisionError::Aws { error, .. }) if *error == throttled),
                "{err:?}"
            );
            assert!(!aws.calls().iter().any(|c| c.starts_with("DescribeAccount")));
        }
    }

    fn created(aws: &ScriptedOrganizations) -> usize {
        aws.calls()
            .iter()
            .filter(|c| c.starts_with("CreateAccount"))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_resumes_an_account_already_made_for_the_order() {
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(created(&aws), 0);
        assert!(
            aws.calls()
                .contains(&"AttachPolicy p-abcd1234 111122223333".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_refuses_an_email_whose_account_is_another_orders() {
        for other in [Some("AS-2"), None] {
            let aws = ScriptedOrganizations {
                existing: Some(account(other)),
                ..ScriptedOrganizations::default()
            };
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Rejected(rejection)) = err else {
                panic!("{other:?}: expected a rejection, got {err:?}");
            };
            assert_eq!(rejection.code, FailureCode::EmailAlreadyExists);
            assert_eq!(
                rejection.model,
                Some(AccountModel::Ecam),
                "inquire under ECAM"
            );
            assert_eq!(created(&aws), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_follows_a_creation_in_progress_and_checks_whose_it_is() {
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::InProgress, succeeded()])
        };
        let done = provision_root(&aws, Progress::default())
            .await
            .expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
        assert_eq!(done.create_request_id, "car-test");
        assert_eq!(created(&aws), 0);

        // The same name, another order's account: not ours, and not recorded as ours.
        let aws = ScriptedOrganizations {
            in_progress: Some("car-test".into()),
            described: Some(account(Some("AS-2"))),
            ..ScriptedOrganizations::with_states([succeeded()])
        };
        let err = provision_root(&aws, Progress::default()).await;
        let Err(ProvisionError::Aws { error, progress }) = err else {
            panic!("expected a transient error, got {err:?}");
        };
        assert_eq!(error.retry, Retry::Transient);
        assert_eq!(error.code.as_deref(), Some("ACCOUNT_NAME_IN_USE"));
        assert_eq!(progress, Progress::default());
        assert_eq!(created(&aws), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn email_already_exists_for_the_orders_own_account_resumes_it() {
        let failed = CreateState::Failed {
            reason: "EMAIL_ALREADY_EXISTS".into(),
        };
        // The gate saw nothing; the creation failed because a copy of the order won the race.
        let aws = ScriptedOrganizations::with_states([failed]);
        let aws = ScriptedOrganizations {
            existing: None,
            ..aws
        };
        assert!(matches!(
            provision_root(&aws, Progress::default()).await,
            Err(ProvisionError::Rejected(_))
        ));

        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::Failed {
                reason: "EMAIL_ALREADY_EXISTS".into(),
            }])
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        let done = provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_is_moved_to_its_ou_once_before_the_scps() {
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        *aws.parent.lock().expect("parent") = "r-root".to_owned();
        let plan = Plan {
            organizational_unit_id: Some(
                crate::domain::ids::OuId::parse("ou-root-opco0001").expect("OU id"),
            ),
            ..plan(Access::RootUser)
        };
        provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan,
            Progress::default(),
            POLLING,
        )
        .await
        .expect("provisioned");
        let calls = aws.calls();
        let after_creation: Vec<&str> = calls[3..].iter().map(String::as_str).collect();
        assert_eq!(
            after_creation,
            [
                "ListParents 111122223333",
                "MoveAccount 111122223333 r-root ou-root-opco0001",
                "AttachPolicy p-abcd1234 111122223333",
            ]
        );

        // Delivered again after a failure before the SCPs: it is there, so it stays.
        let aws = ScriptedOrganizations {
            parent: Arc::new(Mutex::new("ou-root-opco0001".into())),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            ..Progress::default()
        };
        provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan,
            progress.clone(),
            POLLING,
        )
        .await
        .expect("provisioned");
        assert_eq!(
            aws.calls(),
            [
                "ListParents 111122223333",
                "AttachPolicy p-abcd1234 111122223333"
            ]
        );

        // Once the SCPs are attached, the placement is done too.
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            policies_attached: true,
            ..progress
        };
        provision(
            &Arc::new(aws.clone()),
            &Unlimited,
            &order(),
            &plan,
            progress,
            POLLING,
        )
        .await
        .expect("provisioned");
        assert_eq!(aws.calls(), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn attached_policies_are_not_attached_again() {
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            account_id: Some("111122223333".into()),
            policies_attached: true,
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(aws.calls(), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_unsettled_delivery_nothing_found_means_not_yet() {
        let aws = ScriptedOrganizations::default();
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision_root(&aws, progress).await;
        assert!(matches!(err, Err(ProvisionError::NotYet)), "{err:?}");
        assert_eq!(
            created(&aws),
            0,
            "no CreateAccount while one may be in flight"
        );

        // What the gate finds is used at once, unsettled or not.
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let progress = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        provision_root(&aws, progress).await.expect("provisioned");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_that_are_not_the_orders_are_tried_again_from_the_gate() {
        for reason in ["INTERNAL_FAILURE", "CONCURRENT_ACCOUNT_MODIFICATION"] {
            let aws = ScriptedOrganizations::with_states([CreateState::Failed {
                reason: reason.into(),
            }]);
            let err = provision_root(&aws, Progress::default()).await;
            let Err(ProvisionError::Aws { error, progress }) = err else {
                panic!("{reason}: expected a transient error, got {err:?}");
            };
            assert_eq!(error.retry, Retry::Transient, "{reason}");
            assert_eq!(error.code.as_deref(), Some(reason));
            assert_eq!(
                progress,
                Progress::default(),
                "{reason}: the failed request is forgotten"
            );
        }
        // CONCURRENT_ACCOUNT_MODIFICATION whose account turns out to be the order's: resumed.
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::with_states([CreateState::Failed {
                reason: "CONCURRENT_ACCOUNT_MODIFICATION".into(),
            }])
        };
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        let done = provision_root(&aws, progress).await.expect("provisioned");
        assert_eq!(done.account_id, "111122223333");
    }

    /// Slots that never hand one out; `full` also says so before the gate.
    struct Refusing {
        full: bool,
    }

    impl CreationSlots for Refusing {
        async fn acquire(&self, _: &str) -> Result<Slot, NoSlot> {
            Err(NoSlot::TooManyWaiting(32))
        }

        fn room_to_wait(&self, _: &str) -> Result<(), NoSlot> {
            if self.full {
                Err(NoSlot::TooManyWaiting(32))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn create_account_waits_for_a_slot_of_the_payer() {
        let slots = Local::new(1);
        let taken = slots.acquire("default").await.expect("slot");
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let shared = Arc::new(aws.clone());
        let (order, plan) = (order(), plan(Access::RootUser));
        let provisioning = provision(&shared, &slots, &order, &plan, Progress::default(), POLLING);
        let mut provisioning = std::pin::pin!(provisioning);
        let waited = tokio::time::timeout(Duration::from_secs(60), provisioning.as_mut()).await;
        assert!(waited.is_err(), "no slot, no creation");
        assert_eq!(created(&aws), 0, "the gate ran, CreateAccount did not");
        drop(taken);
        provisioning
            .await
            .expect("provisioned once the slot came back");
        assert_eq!(created(&aws), 1);
        assert_eq!(
            slots.available("default"),
            1,
            "given back when the creation ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_gate_finds_needs_no_slot() {
        let slots = Local::new(1);
        let _taken = slots.acquire("default").await.expect("slot");
        let aws = ScriptedOrganizations {
            existing: Some(account(Some("AS-1"))),
            ..ScriptedOrganizations::default()
        };
        let (order, plan) = (order(), plan(Access::RootUser));
        provision(
            &Arc::new(aws),
            &slots,
            &order,
            &plan,
            Progress::default(),
            POLLING,
        )
        .await
        .expect("provisioned without a slot");

        // Nor does following a create request id of an earlier attempt.
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let progress = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision(&Arc::new(aws), &slots, &order, &plan, progress, POLLING)
            .await
            .expect("provisioned without a slot");
    }

    #[tokio::test(start_paused = true)]
    async fn no_slot_means_later_and_nothing_requested() {
        let aws = ScriptedOrganizations::default();
        let (order, plan) = (order(), plan(Access::RootUser));
        let refusing = Refusing { full: false };
        let fresh = Progress::default;
        let err = provision(
            &Arc::new(aws.clone()),
            &refusing,
            &order,
            &plan,
            fresh(),
            POLLING,
        )
        .await;
        assert!(
            matches!(err, Err(ProvisionError::NoSlot(NoSlot::TooManyWaiting(32)))),
            "{err:?}"
        );
        assert_eq!(created(&aws), 0);

        // With no room to wait, a new order goes back before it calls AWS at all ...
        let aws = ScriptedOrganizations::default();
        let full = Refusing { full: true };
        let err = provision(
            &Arc::new(aws.clone()),
            &full,
            &order,
            &plan,
            fresh(),
            POLLING,
        )
        .await;
        assert!(matches!(err, Err(ProvisionError::NoSlot(_))), "{err:?}");
        assert_eq!(aws.calls(), Vec::<String>::new());

        // ... but one whose earlier delivery may have a CreateAccount in flight goes through
        // the gate (and waits in NotYet), and a known request id needs no slot.
        let maybe = Progress {
            maybe_in_flight: true,
            ..Progress::default()
        };
        let err = provision(&Arc::new(aws.clone()), &full, &order, &plan, maybe, POLLING).await;
        assert!(matches!(err, Err(ProvisionError::NotYet)), "{err:?}");
        let aws = ScriptedOrganizations::with_states([succeeded()]);
        let known = Progress {
            create_request_id: Some("car-test".into()),
            ..Progress::default()
        };
        provision(&Arc::new(aws), &full, &order, &plan, known, POLLING)
            .await
            .expect("provisioned without a slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_creation_that_outlasts_the_attempt_keeps_its_slot_until_aws_ends_it() {
        let slots = Local::new(1);
        // CreateAccount and the attempt's 5 polls see IN_PROGRESS; so do the watcher's first
        // 3 polls; the 4th sees it succeeded.
        let aws = ScriptedOrganizations::with_states(
            std::iter::repeat_n(CreateState::InProgress, 9).chain([succeeded()]),
        );
        let (order, plan) = (order(), plan(Access::RootUser));
        let err = provision(
            &Arc::new(aws.clone()),
            &slots,
            &order,
            &plan,
            Progress::default(),
            POLLING,
        )
        .await;
        assert!(matches!(err, Err(ProvisionError::Aws { .. })), "{err:?}");
        assert_eq!(
            slots.available("default"),
            0,
            "still held while AWS creates"
        );
        tokio::time::sleep(POLLING.interval * 3 + Duration::from_millis(1)).await;
        assert_eq!(
            slots.available("default"),
            0,
            "3 polls later, still in progress"
        );
        tokio::time::sleep(POLLING.interval).await;
        tokio::task::yield_now().await;
        assert_eq!(slots.available("default"), 1, "given back once it ended");
    }
}
