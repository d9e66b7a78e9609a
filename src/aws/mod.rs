//! The AWS side, behind narrow traits that speak our types. The pipeline never sees an SDK
//! type; [`sdk`] implements the traits over the AWS SDK clients. [`probe`] holds the read-only
//! queries of `check`.

#[cfg(test)]
pub mod fake;
pub mod probe;
pub mod sdk;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::AwsSettings;
use crate::domain::arn::PolicyArn;
use crate::domain::ids::{OuId, PolicyId};
use crate::domain::names::{IamUserName, RoleName};
use crate::retry::Reason;

/// Whether retrying the same call later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Throttling, concurrent modification, 5xx, timeouts, connection errors, a new account not
    /// ready yet: try again later.
    Transient,
    /// Access denied, invalid input, constraint violations: the same call fails again.
    Permanent,
    /// Refused inside a member account (`AccessDenied` and the like): transient while the
    /// account is new (its access role is not usable at once), permanent once it is older
    /// than the readiness window. Provisioning decides which, knowing the account's age.
    WhileNew,
}

/// A failed AWS call, classified once, where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({}): {message}", code.as_deref().unwrap_or("no error code"))]
pub struct AwsError {
    /// Retry or not.
    pub retry: Retry,
    /// The API operation, e.g. `CreateAccount`.
    pub operation: &'static str,
    /// AWS's error code, when the service answered with one.
    pub code: Option<String>,
    /// What happened; never contains credentials or passwords.
    pub message: String,
}

impl AwsError {
    /// The code for `x-failure-reason`: AWS's error code, or
    /// [`Reason::AwsUnreachable`] when the service gave none (timeouts, connection errors).
    pub fn reason(&self) -> Reason {
        Reason::of_aws(self.code.as_deref())
    }
}

/// The result of every AWS call.
pub type AwsResult<T> = Result<T, AwsError>;

/// A `CreateAccount` request's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateState {
    /// Still running.
    InProgress,
    /// Done: the new account's id.
    Succeeded {
        /// 12 digits.
        account_id: String,
    },
    /// AWS gave up, with its `FailureReason`.
    Failed {
        /// E.g. `EMAIL_ALREADY_EXISTS`.
        reason: String,
    },
}

/// A `CreateAccount` request and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateStatus {
    /// `car-…`.
    pub request_id: String,
    /// Where it stands.
    pub state: CreateState,
}

/// What `CreateAccount` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// Root email.
    pub email: String,
    /// Account name.
    pub name: String,
    /// Tags put on the account (`connect:request-id`, …).
    pub tags: Vec<(String, String)>,
}

pub use crate::config::AccessToBilling;

/// How the worker makes and enters new member accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAccess {
    /// The role `CreateAccount` is asked to make (`RoleName`) and the worker assumes.
    pub role_name: RoleName,
    /// `CreateAccount`'s `IamUserAccessToBilling`.
    pub iam_user_access_to_billing: AccessToBilling,
}

impl MemberAccess {
    /// From `[aws]`: `member_role_name` and `iam_user_access_to_billing`.
    pub fn from_settings(aws: &AwsSettings) -> Self {
        Self {
            role_name: aws.member_role_name.clone(),
            iam_user_access_to_billing: aws.iam_user_access_to_billing,
        }
    }
}

/// Bounds on the worker's AWS calls (`[aws]` `sdk_*` and `max_calls_in_flight_per_payer`), so
/// that a hung connection becomes a transient error instead of an order that holds its consumer
/// slot forever, and so that many orders in flight do not open one connection each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// To open a connection.
    pub connect_timeout: Duration,
    /// For one attempt of a call (the SDK retries some failures itself).
    pub attempt_timeout: Duration,
    /// For a call in all, its attempts included.
    pub operation_timeout: Duration,
    /// Organizations and STS calls one payer's client makes at once (per process); more wait.
    pub in_flight_per_payer: usize,
    /// Attempts the SDK makes of one call on a transient error (the first included), with
    /// exponential backoff between them.
    pub max_attempts: u32,
}

impl CallLimits {
    /// The bounds `[aws]` sets.
    pub fn from_settings(aws: &AwsSettings) -> Self {
        Self {
            connect_timeout: Duration::from_millis(aws.sdk_connect_timeout_ms),
            attempt_timeout: Duration::from_secs(aws.sdk_attempt_timeout_seconds),
            operation_timeout: Duration::from_secs(aws.sdk_operation_timeout_seconds),
            in_flight_per_payer: usize::try_from(aws.max_calls_in_flight_per_payer)
                .unwrap_or(usize::MAX),
            max_attempts: aws.sdk_max_attempts,
        }
    }
}

impl Default for CallLimits {
    /// The defaults of `config/default.toml`: 5 s to connect, 20 s per attempt, 60 s in all,
    /// 16 calls at once per payer, 5 attempts.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(60),
            in_flight_per_payer: 16,
            max_attempts: 5,
        }
    }
}

/// The tag that ties an account to its Connect asset; the idempotency gate reads it.
pub const ASSET_TAG: &str = "connect:asset-id";

/// The tag on a customer's IAM user once the event carrying its initial password was confirmed
/// by the broker ([`CREDENTIALS_ISSUED`]): a later delivery leaves its login profile alone.
pub const CREDENTIALS_TAG: &str = "connect:credentials";
/// The value of [`CREDENTIALS_TAG`].
pub const CREDENTIALS_ISSUED: &str = "issued";
/// The tag naming the `event_id` of the event that gave the password out.
pub const CREDENTIALS_EVENT_TAG: &str = "connect:credentials-event-id";

/// A member account found in the payer's organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingAccount {
    /// 12 digits.
    pub id: AccountId,
    /// The account's root email.
    pub email: String,
    /// Its `connect:asset-id` tag: the Connect asset it was made for, if any.
    pub asset_id: Option<String>,
    /// When it joined the organization (for a created account: when it was created), as AWS
    /// says; `None` when AWS did not say.
    pub joined: Option<std::time::SystemTime>,
    /// Its name, when AWS gave it.
    pub name: Option<String>,
    /// Its state as AWS writes it (`ACTIVE`, `SUSPENDED`, `PENDING_CLOSURE`, `CLOSED`, …;
    /// `State`, else the older `Status`); empty when AWS did not say.
    pub status: String,
}

impl ExistingAccount {
    /// Whether the account is closed or on its way there (`PENDING_CLOSURE`, `SUSPENDED`,
    /// `CLOSED`): a closed account stays suspended in the organization for 90 days.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.status.as_str(),
            "PENDING_CLOSURE" | "SUSPENDED" | "CLOSED"
        )
    }
}

/// An invitation of an existing account into the payer's organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The account invited.
    pub account: AccountId,
    /// The handshake's notes, shown to the account's owner (at most 1,024 characters).
    pub notes: String,
    /// Tags AWS puts on the account when it joins (`connect:asset-id`, …).
    pub tags: Vec<(String, String)>,
}

/// Where an invitation stands (`HandshakeState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeState {
    /// `REQUESTED` or `OPEN`: waiting for the account's owner.
    Open,
    /// `ACCEPTED`: the account joined.
    Accepted,
    /// `DECLINED`.
    Declined,
    /// `CANCELED` (by the organization).
    Canceled,
    /// `EXPIRED`.
    Expired,
    /// Anything else, as AWS wrote it.
    Other(String),
}

impl HandshakeState {
    /// Reads AWS's `HandshakeState`.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "REQUESTED" | "OPEN" => Self::Open,
            "ACCEPTED" => Self::Accepted,
            "DECLINED" => Self::Declined,
            "CANCELED" => Self::Canceled,
            "EXPIRED" => Self::Expired,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// An invitation (handshake) as AWS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// `h-…`.
    pub id: String,
    /// The invited account (the party of type `ACCOUNT`), when AWS says.
    pub account: Option<String>,
    /// Where it stands.
    pub state: HandshakeState,
    /// When it expires, as AWS says.
    pub expires_at: Option<std::time::SystemTime>,
    /// Its notes (the `NOTES` resource), when it has them.
    pub notes: Option<String>,
}

/// Which accounts of the organization may be an order's, on the gate's rare path: its email,
/// its account name, or a name that contains its asset id (an account made for the asset under
/// another email or name). Only their tags say which, if any, is the order's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidates<'a> {
    /// The order's account email.
    pub email: &'a str,
    /// The order's account name.
    pub account_name: &'a str,
    /// The order's asset id.
    pub asset_id: &'a str,
}

impl Candidates<'_> {
    /// Whether an account with `email` and `name` (as `ListAccounts` gives them) is a
    /// candidate: the same email (compared case-insensitively), the same name, or a name that
    /// contains the asset id.
    pub fn picks(&self, email: Option<&str>, name: Option<&str>) -> bool {
        let asset = self.asset_id.to_ascii_lowercase();
        email.is_some_and(|e| e.eq_ignore_ascii_case(self.email))
            || name
                .is_some_and(|n| n == self.account_name || n.to_ascii_lowercase().contains(&asset))
    }
}

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountId(pub String);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The payer's management account: AWS Organizations, and the way into member accounts.
pub trait Organizations: Send + Sync + 'static {
    /// IAM inside one member account.
    type Member: MemberIam;

    /// `CreateAccount`.
    fn create_account(
        &self,
        account: &NewAccount,
    ) -> impl Future<Output = AwsResult<CreateStatus>> + Send;

    /// `DescribeCreateAccountStatus`.
    fn create_status(
        &self,
        request_id: &str,
    ) -> impl Future<Output = AwsResult<CreateStatus>> + Send;

    /// The rare path of the gate: walks the whole organization (`ListAccounts`) for the
    /// accounts that `wanted` picks, and reads only their `connect:asset-id` tags
    /// (`ListTagsForResource`). Its cost grows with the organization: only for an order whose
    /// creation AWS refused with `EMAIL_ALREADY_EXISTS`, or whose earlier `CreateAccount` may
    /// have been sent unanswered.
    fn find_accounts(
        &self,
        wanted: &Candidates<'_>,
    ) -> impl Future<Output = AwsResult<Vec<ExistingAccount>>> + Send;

    /// The `CreateAccount` request that made `account`, if AWS still lists it:
    /// `ListCreateAccountStatus` with state `SUCCEEDED` (rare path only).
    fn find_request(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<Option<String>>> + Send;

    /// One member account, with its `connect:asset-id` tag: `DescribeAccount`, then
    /// `ListTagsForResource`.
    fn describe_account(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<ExistingAccount>> + Send;

    /// The `CreateAccount` request still in progress for an account named `account_name`, if
    /// any: `ListCreateAccountStatus` with state `IN_PROGRESS`.
    fn find_creation(
        &self,
        account_name: &str,
    ) -> impl Future<Output = AwsResult<Option<String>>> + Send;

    /// `AttachPolicy` of an SCP to an account; one already attached counts as done.
    fn attach_policy(
        &self,
        policy: &PolicyId,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<()>> + Send;

    /// The SCPs attached to the account itself (not inherited): `ListPoliciesForTarget` with the
    /// filter `SERVICE_CONTROL_POLICY`, every page.
    fn attached_policies(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<Vec<String>>> + Send;

    /// Moves the account under `parent` (an OU or root id) unless it is there already:
    /// `ListParents`, then `MoveAccount` from its current parent. An account already under
    /// `parent` (found so, or `DuplicateAccountException`) counts as done. Returns whether it
    /// was moved.
    fn place_account(
        &self,
        account: &AccountId,
        parent: &OuId,
    ) -> impl Future<Output = AwsResult<bool>> + Send;

    /// `DetachPolicy` of an SCP from an account; one not attached counts as done.
    fn detach_policy(
        &self,
        policy: &PolicyId,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<()>> + Send;

    /// `CloseAccount`. A refusal for AWS's close quota comes back with the code
    /// `CLOSE_ACCOUNT_QUOTA_EXCEEDED` (the `ConstraintViolationException`'s reason); an account
    /// already closed (`AccountAlreadyClosedException`) counts as done.
    fn close_account(&self, account: &AccountId) -> impl Future<Output = AwsResult<()>> + Send;

    /// `RemoveAccountFromOrganization`. A refusal within 7 days of the account joining comes
    /// back with the code `WAIT_PERIOD_ACTIVE` (the `ConstraintViolationException`'s reason);
    /// other constraint reasons likewise carry their reason as the code.
    fn remove_account(&self, account: &AccountId) -> impl Future<Output = AwsResult<()>> + Send;

    /// `InviteAccountToOrganization`. A refusal comes back with the
    /// `HandshakeConstraintViolationException`'s reason as the code
    /// (`ALREADY_IN_AN_ORGANIZATION`, …), or `DuplicateHandshakeException` for an invitation
    /// already open.
    fn invite_account(
        &self,
        invitation: &Invitation,
    ) -> impl Future<Output = AwsResult<Handshake>> + Send;

    /// `DescribeHandshake`.
    fn describe_handshake(&self, id: &str) -> impl Future<Output = AwsResult<Handshake>> + Send;

    /// The organization's invitations of `account`, open or recently closed:
    /// `ListHandshakesForOrganization` (action `INVITE`), every page.
    fn find_invitations(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = AwsResult<Vec<Handshake>>> + Send;

    /// `CancelHandshake`.
    fn cancel_handshake(&self, id: &str) -> impl Future<Output = AwsResult<Handshake>> + Send;

    /// `TagResource` of a member account: adds `tags` (an account that joined by invitation
    /// whose invitation's tags are missing).
    fn tag_account(
        &self,
        account: &AccountId,
        tags: &[(String, String)],
    ) -> impl Future<Output = AwsResult<()>> + Send;

    /// `AssumeRole` into the member account's access role.
    fn member(&self, account: &AccountId) -> impl Future<Output = AwsResult<Self::Member>> + Send;
}

/// IAM inside a member account, reached with its access role.
pub trait MemberIam: Send + Sync {
    /// `CreateUser`; a user already there counts as done.
    fn create_user(&self, name: &IamUserName) -> impl Future<Output = AwsResult<()>> + Send;

    /// `CreateLoginProfile` with a password that must be reset at first sign-in; when the user
    /// already has one, its password is replaced (`UpdateLoginProfile`).
    fn set_login_profile(
        &self,
        name: &IamUserName,
        password: &SecretString,
    ) -> impl Future<Output = AwsResult<()>> + Send;

    /// `AttachUserPolicy` (idempotent in IAM).
    fn attach_user_policy(
        &self,
        name: &IamUserName,
        policy_arn: &PolicyArn,
    ) -> impl Future<Output = AwsResult<()>> + Send;

    /// Whether the user's password was given out: its [`CREDENTIALS_TAG`] says
    /// [`CREDENTIALS_ISSUED`] (`ListUserTags`).
    fn credentials_issued(
        &self,
        name: &IamUserName,
    ) -> impl Future<Output = AwsResult<bool>> + Send;

    /// Marks the user's password as given out, in the event `event_id`: `TagUser` with
    /// [`CREDENTIALS_TAG`] and [`CREDENTIALS_EVENT_TAG`].
    fn mark_credentials_issued(
        &self,
        name: &IamUserName,
        event_id: &str,
    ) -> impl Future<Output = AwsResult<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const VALID: &str = "[business_model]\nprovider_email_domain = \"provider.com\"";

    #[test]
    fn the_call_limits_default_to_the_former_constants() {
        let settings = Settings::from_toml(VALID).expect("valid");
        assert_eq!(
            CallLimits::from_settings(&settings.aws),
            CallLimits::default()
        );
        let settings = Settings::from_toml(&format!(
            "{VALID}\n[aws]\nsdk_connect_timeout_ms = 1500\nsdk_attempt_timeout_seconds = 30\n\
             sdk_operation_timeout_seconds = 90\nmax_calls_in_flight_per_payer = 4\n\
             sdk_max_attempts = 3"
        ))
        .expect("valid");
        assert_eq!(
            CallLimits::from_settings(&settings.aws),
            CallLimits {
                connect_timeout: std::time::Duration::from_millis(1500),
                attempt_timeout: std::time::Duration::from_secs(30),
                operation_timeout: std::time::Duration::from_secs(90),
                in_flight_per_payer: 4,
                max_attempts: 3,
            }
        );
    }
}
