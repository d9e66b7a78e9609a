//! What provisioning an order achieves: the progress an attempt leaves for the next one, and
//! the finished result (the account and the customer's access).

use std::collections::BTreeSet;

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
    /// The SCPs attached so far, each once its `AttachPolicy` succeeded: a retry attaches only
    /// the others. Read from a message, only ids of the order's plan count.
    pub policies_attached: BTreeSet<PolicyId>,
    /// Whether the whole placement step is done: the account is in its OU (if it has one) and
    /// all its SCPs are attached (`x-step: policies-attached`).
    pub placed: bool,
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
    /// The invitation (`h-…`) an existing-account purchase follows, once its
    /// `aws.account.invited` event went out (`x-handshake-id`). A hint: followed only once
    /// `DescribeHandshake` shows it invites the request's account for its asset.
    pub handshake_id: Option<String>,
    /// A cancel removed the account from the organization (`x-step: removed`): a delivery
    /// that finds it gone reports it removed.
    pub removed: bool,
    /// The last delivery of this order found its asset's lock held (it went to a retry queue
    /// with `ORDER_BUSY`): this one takes its lock before it waits for a creation slot, so that
    /// a duplicate does not take a slot only to find the lock held again. Read from
    /// `x-failure-reason`; forged, it only changes the order of the lock and the slot.
    pub lock_was_busy: bool,
}

impl Progress {
    /// Whether an order with this progress is new to the gate: no account, creation or earlier
    /// `CreateAccount` to look for. Such an order asks for a creation slot once the creations
    /// in progress show none under its name.
    pub fn is_fresh(&self) -> bool {
        self.account_id.is_none()
            && self.create_request_id.is_none()
            && !self.maybe_in_flight
            && !self.create_sent
            && self.email_looks == 0
    }
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
    /// An IAM user with a new initial password (reset required), to be given out once: once
    /// the event carrying it is confirmed, the user is tagged as having had it given out.
    IamUser {
        /// The user name.
        user_name: IamUserName,
        /// The initial password; printed as `[REDACTED]`.
        password: SecretString,
    },
    /// An IAM user whose password an earlier delivery gave out (the user is marked so): its
    /// login profile is left as it is, and no password is reported.
    AlreadyIssued {
        /// The user name.
        user_name: IamUserName,
    },
    /// The root user, after a password reset in the AWS console.
    RootUser,
}
