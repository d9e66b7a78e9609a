//! A scripted [`Organizations`] and [`MemberIam`] for unit tests: creation states come from a
//! script, every call is recorded by name, and chosen calls answer what a test sets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use secrecy::SecretString;

use super::{
    AccountId, AwsError, AwsResult, Candidates, CreateState, CreateStatus, ExistingAccount,
    Handshake, HandshakeState, Invitation, MemberIam, NewAccount, Organizations, Retry,
};
use crate::domain::arn::PolicyArn;
use crate::domain::ids::{OuId, PolicyId};
use crate::domain::names::IamUserName;

/// Scripted Organizations: `CreateAccount` answers the first state, each status poll the
/// next; every call is recorded by name. It is also its own member account's IAM.
#[derive(Clone, Default)]
pub struct ScriptedOrganizations {
    /// The creation states still to answer, in order (every create request is `car-test`).
    pub states: Arc<Mutex<VecDeque<CreateState>>>,
    /// Every call so far, e.g. `CreateAccount c@customer.example`.
    pub calls: Arc<Mutex<Vec<String>>>,
    /// What `AttachPolicy` answers instead of success.
    pub fail_attach: Option<AwsError>,
    /// SCPs attached to the account before this fake saw any call (`ListPoliciesForTarget`
    /// lists them with those it attached).
    pub attached_before: Vec<String>,
    /// What `ListAccounts` picks, whatever the order.
    pub existing: Option<ExistingAccount>,
    /// What `ListCreateAccountStatus` SUCCEEDED finds for any account.
    pub listed_request: Option<String>,
    /// What `ListCreateAccountStatus` finds in progress for any name.
    pub in_progress: Option<String>,
    /// What `DescribeAccount` answers; unset, the account asked for, tagged for the test
    /// order's asset `AS-1`.
    pub described: Option<ExistingAccount>,
    /// Where `ListParents` finds the account.
    pub parent: Arc<Mutex<String>>,
    /// What `CreateUser` answers instead of success.
    pub refuse_user: Option<AwsError>,
    /// What `AttachPolicy` of this one SCP answers instead of success.
    pub fail_attach_of: Option<(String, AwsError)>,
    /// Whether the IAM user has a login profile (set by `CreateLoginProfile`).
    pub login_profile: Arc<Mutex<bool>>,
    /// The event id the IAM user's credentials tag names, once `TagUser` marked it.
    pub issued_in: Arc<Mutex<Option<String>>>,
    /// `CreateAccount` requests still to lose: each is counted, then answered with no answer
    /// (a timeout), as a request that reached AWS and whose answer was lost.
    pub lost_creates: Arc<Mutex<u32>>,
    /// What `DescribeAccount`, `CloseAccount`, `RemoveAccountFromOrganization` and
    /// `InviteAccountToOrganization` answer instead of success, by operation name.
    pub refuse: Arc<Mutex<std::collections::BTreeMap<&'static str, AwsError>>>,
    /// The invitations the organization lists (`ListHandshakesForOrganization`), and what
    /// `DescribeHandshake` finds; `InviteAccountToOrganization` adds an open one.
    pub handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// Whether `DescribeAccount` answers `AccountNotFoundException` (the account is not a
    /// member of the organization) instead of [`Self::described`].
    pub not_member: Arc<Mutex<bool>>,
    /// The state `DescribeAccount` shows once a `CloseAccount` of the account succeeded;
    /// unset, `SUSPENDED` (closed at once, as moto does).
    pub status_after_close: Option<String>,
}

impl ScriptedOrganizations {
    /// A fake whose creation passes through `states`, one per `CreateAccount` or status poll.
    pub fn with_states(states: impl IntoIterator<Item = CreateState>) -> Self {
        Self {
            states: Arc::new(Mutex::new(states.into_iter().collect())),
            ..Self::default()
        }
    }

    fn record(&self, call: impl Into<String>) {
        self.calls.lock().expect("calls").push(call.into());
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// What `operation` answers: the refusal set for it, else success.
    fn refused(&self, operation: &'static str) -> AwsResult<()> {
        self.refuse
            .lock()
            .expect("refusals")
            .get(operation)
            .cloned()
            .map_or(Ok(()), Err)
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

    async fn find_accounts(&self, wanted: &Candidates<'_>) -> AwsResult<Vec<ExistingAccount>> {
        self.record(format!("ListAccounts {}", wanted.email));
        Ok(self.existing.clone().into_iter().collect())
    }

    async fn find_request(&self, account: &AccountId) -> AwsResult<Option<String>> {
        self.record(format!("ListCreateAccountStatus SUCCEEDED {account}"));
        Ok(self.listed_request.clone())
    }

    async fn describe_account(&self, account: &AccountId) -> AwsResult<ExistingAccount> {
        self.record(format!("DescribeAccount {account}"));
        self.refused("DescribeAccount")?;
        let calls = self.calls();
        let done = |operation: &'static str| {
            self.refused(operation).is_ok() && calls.contains(&format!("{operation} {account}"))
        };
        if *self.not_member.lock().expect("membership") || done("RemoveAccountFromOrganization") {
            return Err(AwsError {
                retry: Retry::Permanent,
                operation: "DescribeAccount",
                code: Some("AccountNotFoundException".into()),
                message: format!("{account} is not a member of the organization"),
            });
        }
        let mut found = self.described.clone().unwrap_or_else(|| ExistingAccount {
            id: account.clone(),
            email: "c@customer.example".into(),
            asset_id: Some("AS-1".into()),
            joined: None,
            name: None,
            status: "ACTIVE".into(),
        });
        if done("CloseAccount") {
            found.status = self
                .status_after_close
                .clone()
                .unwrap_or_else(|| "SUSPENDED".into());
        }
        Ok(found)
    }

    async fn find_creation(&self, name: &str) -> AwsResult<Option<String>> {
        self.record(format!("ListCreateAccountStatus {name}"));
        Ok(self.in_progress.clone())
    }

    async fn create_account(&self, account: &NewAccount) -> AwsResult<CreateStatus> {
        self.record(format!("CreateAccount {}", account.email));
        let mut lost = self.lost_creates.lock().expect("lost");
        if *lost > 0 {
            *lost -= 1;
            return Err(AwsError {
                retry: Retry::Transient,
                operation: "CreateAccount",
                code: None,
                message: "timed out".into(),
            });
        }
        drop(lost);
        Ok(self.next_status())
    }

    async fn create_status(&self, request_id: &str) -> AwsResult<CreateStatus> {
        self.record(format!("DescribeCreateAccountStatus {request_id}"));
        if self.states.lock().expect("states").is_empty() {
            // No creation left in the script: a request AWS does not know.
            return Err(AwsError {
                retry: Retry::Permanent,
                operation: "DescribeCreateAccountStatus",
                code: Some("CreateAccountStatusNotFoundException".into()),
                message: format!("no creation {request_id}"),
            });
        }
        Ok(self.next_status())
    }

    async fn attach_policy(&self, policy: &PolicyId, account: &AccountId) -> AwsResult<()> {
        self.record(format!("AttachPolicy {policy} {account}"));
        if let Some((only, error)) = &self.fail_attach_of
            && only == policy.as_str()
        {
            return Err(error.clone());
        }
        self.fail_attach.clone().map_or(Ok(()), Err)
    }

    async fn attached_policies(&self, account: &AccountId) -> AwsResult<Vec<String>> {
        self.record(format!("ListPoliciesForTarget {account}"));
        let suffix = format!(" {account}");
        let mut attached = self.attached_before.clone();
        for call in self.calls() {
            if let Some(policy) = call
                .strip_prefix("AttachPolicy ")
                .and_then(|rest| rest.strip_suffix(&suffix))
                && !attached.iter().any(|p| p == policy)
            {
                attached.push(policy.to_owned());
            }
            if let Some(policy) = call
                .strip_prefix("DetachPolicy ")
                .and_then(|rest| rest.strip_suffix(&suffix))
            {
                attached.retain(|p| p != policy);
            }
        }
        Ok(attached)
    }

    async fn place_account(&self, account: &AccountId, parent: &OuId) -> AwsResult<bool> {
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

    async fn detach_policy(&self, policy: &PolicyId, account: &AccountId) -> AwsResult<()> {
        self.record(format!("DetachPolicy {policy} {account}"));
        Ok(())
    }

    async fn close_account(&self, account: &AccountId) -> AwsResult<()> {
        self.record(format!("CloseAccount {account}"));
        self.refused("CloseAccount")
    }

    async fn remove_account(&self, account: &AccountId) -> AwsResult<()> {
        self.record(format!("RemoveAccountFromOrganization {account}"));
        self.refused("RemoveAccountFromOrganization")
    }

    async fn invite_account(&self, invitation: &Invitation) -> AwsResult<Handshake> {
        self.record(format!(
            "InviteAccountToOrganization {}",
            invitation.account
        ));
        self.refused("InviteAccountToOrganization")?;
        let mut handshakes = self.handshakes.lock().expect("handshakes");
        let handshake = Handshake {
            id: format!("h-test{}", handshakes.len()),
            account: Some(invitation.account.0.clone()),
            state: HandshakeState::Open,
            expires_at: None,
            notes: Some(invitation.notes.clone()),
        };
        handshakes.push(handshake.clone());
        Ok(handshake)
    }

    async fn describe_handshake(&self, id: &str) -> AwsResult<Handshake> {
        self.record(format!("DescribeHandshake {id}"));
        self.handshakes
            .lock()
            .expect("handshakes")
            .iter()
            .find(|h| h.id == id)
            .cloned()
            .ok_or_else(|| AwsError {
                retry: Retry::Permanent,
                operation: "DescribeHandshake",
                code: Some("HandshakeNotFoundException".into()),
                message: format!("no handshake {id}"),
            })
    }

    async fn find_invitations(&self, account: &AccountId) -> AwsResult<Vec<Handshake>> {
        self.record(format!("ListHandshakesForOrganization {account}"));
        Ok(self
            .handshakes
            .lock()
            .expect("handshakes")
            .iter()
            .filter(|h| h.account.as_deref() == Some(account.0.as_str()))
            .cloned()
            .collect())
    }

    async fn cancel_handshake(&self, id: &str) -> AwsResult<Handshake> {
        self.record(format!("CancelHandshake {id}"));
        let mut handshakes = self.handshakes.lock().expect("handshakes");
        let handshake = handshakes
            .iter_mut()
            .find(|h| h.id == id)
            .ok_or_else(|| AwsError {
                retry: Retry::Permanent,
                operation: "CancelHandshake",
                code: Some("HandshakeNotFoundException".into()),
                message: format!("no handshake {id}"),
            })?;
        handshake.state = HandshakeState::Canceled;
        Ok(handshake.clone())
    }

    async fn tag_account(&self, account: &AccountId, tags: &[(String, String)]) -> AwsResult<()> {
        let keys: Vec<&str> = tags.iter().map(|(key, _)| key.as_str()).collect();
        self.record(format!("TagResource {account} {}", keys.join(",")));
        Ok(())
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
        let mut profile = self.login_profile.lock().expect("login profile");
        if *profile {
            self.record(format!("UpdateLoginProfile {name}"));
        } else {
            self.record(format!("CreateLoginProfile {name}"));
            *profile = true;
        }
        Ok(())
    }

    async fn credentials_issued(&self, name: &IamUserName) -> AwsResult<bool> {
        self.record(format!("ListUserTags {name}"));
        Ok(self.issued_in.lock().expect("issued").is_some())
    }

    async fn mark_credentials_issued(&self, name: &IamUserName, event_id: &str) -> AwsResult<()> {
        self.record(format!("TagUser {name}"));
        *self.issued_in.lock().expect("issued") = Some(event_id.to_owned());
        Ok(())
    }

    async fn attach_user_policy(&self, name: &IamUserName, arn: &PolicyArn) -> AwsResult<()> {
        self.record(format!("AttachUserPolicy {name} {arn}"));
        Ok(())
    }
}
