//! What provisioning an order achieves: the progress an attempt leaves for the next one, and
//! the finished result (the account and the customer's access).

use secrecy::SecretString;

use super::ids::PolicyId;
use super::names::IamUserName;

/// What an earlier attempt of this order already achieved, as its headers say. Read from a
/// message, the ids are hints, never trusted: provisioning acts on them only once AWS shows
/// they are this order's (the account's `connect:asset-id` tag).
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
    /// A `CreateAccount` of an earlier attempt was sent but got no answer (a timeout, a lost
    /// connection): it may have made the account, so the order looks for it (after a wait)
    /// before it asks again.
    pub create_sent: bool,
    /// How often AWS refused the order's creation with `EMAIL_ALREADY_EXISTS` while no
    /// account with its email could be seen yet (looked at again a bounded number of times).
    pub email_looks: u32,
}

/// A provisioned order.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The member account.
    pub account_id: String,
    /// The `CreateAccount` request that made it; `None` when AWS no longer lists it (an
    /// account resumed from an earlier delivery).
    pub create_request_id: Option<String>,
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
