//! What provisioning an order achieves: the progress an attempt leaves for the next one, and
//! the finished result (the account and the customer's access).

use secrecy::SecretString;

use super::ids::PolicyId;
use super::names::IamUserName;

/// What an earlier attempt of this order already achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The `CreateAccount` request (`car-…`), once issued.
    pub create_request_id: Option<String>,
    /// The new account, once created.
    pub account_id: Option<String>,
    /// Whether the account is in its OU (if it has one) and its SCPs are attached.
    pub policies_attached: bool,
    /// An earlier delivery of this order ended unsettled (its worker died, was stopped past
    /// its grace period, or lost the broker), so a `CreateAccount` it sent may still be on its
    /// way: no new one before the wait for it is over. Known from the delivery, not a header.
    pub maybe_in_flight: bool,
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
