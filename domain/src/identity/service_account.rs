//! The `ServiceAccount` aggregate: a machine identity in one tenant. It holds roles like a
//! user does, and authenticates with API keys (see [`super::api_key`]) or with OAuth 2.0
//! client credentials: the client id is the account's id, and the client secret is stored
//! only as its SHA-256 hash ([`SecretHash`]).
//!
//! Consistency rules:
//! - an account is created once, with a name that is trimmed and 1 to 100 characters long;
//! - a disabled account can be neither renamed nor given a new client secret; it can still
//!   have secrets revoked (revocation must always be possible), and it can be enabled again;
//! - at most [`MAX_ACTIVE_SECRETS`] client secrets are active at once, so that a secret can be
//!   rotated with overlap (issue the new one, move the clients, revoke the old one) but
//!   secrets cannot pile up;
//! - a revoked secret stays revoked, and its id is never reused.
//!
//! The key decision: disabling an account does not revoke its secrets or its API keys; it
//! switches the account off as a whole. The application layer MUST check
//! [`ServiceAccount::is_enabled`] whenever the account authenticates, with a client secret
//! or with an API key, so that enabling the account again restores exactly what it had.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::credentials::SecretHash;
use super::principal::Principal;
use super::values::{ServiceAccountId, TenantId};
use crate::refusal::{Refusal, RefusalKind};

/// The longest account name accepted, in characters.
pub const MAX_NAME_LENGTH: usize = 100;

/// How many client secrets may be active at once.
pub const MAX_ACTIVE_SECRETS: usize = 2;

/// What can be asked of a service account.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceAccountCommand {
    /// Creates the account.
    Create {
        /// The new account's id (also its OAuth client id).
        account_id: ServiceAccountId,
        /// The tenant it belongs to.
        tenant_id: TenantId,
        /// Its name; trimmed.
        name: String,
        /// Who creates it.
        created_by: Principal,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Renames the account. Renaming to the current name succeeds without an event.
    Rename {
        /// The new name; trimmed.
        name: String,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Switches the account off: it can no longer authenticate.
    Disable {
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Switches a disabled account on again.
    Enable {
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Adds a client secret.
    IssueClientSecret {
        /// The new secret's id, made by the application layer.
        secret_id: Uuid,
        /// The SHA-256 hash of the secret.
        hash: SecretHash,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Revokes a client secret for good.
    RevokeClientSecret {
        /// The secret's id.
        secret_id: Uuid,
        /// The time of the request.
        now: DateTime<Utc>,
    },
}

/// What happened to a service account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServiceAccountEvent {
    /// A service account was created, enabled.
    ServiceAccountCreated {
        /// The account's id (also its OAuth client id).
        account_id: ServiceAccountId,
        /// The tenant it belongs to.
        tenant_id: TenantId,
        /// Its name, trimmed.
        name: String,
        /// Who created it.
        created_by: Principal,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// The account was renamed.
    ServiceAccountRenamed {
        /// The new name, trimmed.
        name: String,
        /// When.
        renamed_at: DateTime<Utc>,
    },
    /// The account was switched off.
    ServiceAccountDisabled {
        /// When.
        disabled_at: DateTime<Utc>,
    },
    /// The account was switched on again.
    ServiceAccountEnabled {
        /// When.
        enabled_at: DateTime<Utc>,
    },
    /// A client secret was issued.
    ClientSecretIssued {
        /// The secret's id.
        secret_id: Uuid,
        /// The SHA-256 hash of the secret.
        hash: SecretHash,
        /// When.
        issued_at: DateTime<Utc>,
    },
    /// A client secret was revoked.
    ClientSecretRevoked {
        /// The secret's id.
        secret_id: Uuid,
        /// When.
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for ServiceAccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ServiceAccountCreated { .. } => "ServiceAccountCreated",
            Self::ServiceAccountRenamed { .. } => "ServiceAccountRenamed",
            Self::ServiceAccountDisabled { .. } => "ServiceAccountDisabled",
            Self::ServiceAccountEnabled { .. } => "ServiceAccountEnabled",
            Self::ClientSecretIssued { .. } => "ClientSecretIssued",
            Self::ClientSecretRevoked { .. } => "ClientSecretRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a service account refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceAccountError {
    /// `Create` on an account that already exists.
    #[error("this service account was already created")]
    AlreadyCreated,
    /// The name is empty once trimmed.
    #[error("a service account needs a name")]
    EmptyName,
    /// The name is too long.
    #[error("the service account's name has {length} characters; at most 100 are allowed")]
    NameTooLong {
        /// Its length in characters, once trimmed.
        length: usize,
    },
    /// The name contains a control character.
    #[error("the service account's name contains a control character")]
    NameHasControlCharacter,
    /// A command other than `Create` on an account that does not exist.
    #[error("there is no such service account")]
    NotFound,
    /// `Rename` or `IssueClientSecret` on a disabled account.
    #[error("the service account is disabled; enable it first")]
    Disabled,
    /// `Disable` on a disabled account.
    #[error("the service account is already disabled")]
    AlreadyDisabled,
    /// `Enable` on an enabled account.
    #[error("the service account is already enabled")]
    AlreadyEnabled,
    /// `IssueClientSecret` with the id of a secret the account already had.
    #[error("client secret {secret_id} already exists")]
    SecretIdTaken {
        /// The id.
        secret_id: Uuid,
    },
    /// `IssueClientSecret` while two secrets are active.
    #[error(
        "the service account already has 2 active client secrets; revoke one before issuing another"
    )]
    TooManySecrets,
    /// `RevokeClientSecret` with an id the account never had.
    #[error("the service account has no client secret {secret_id}")]
    UnknownSecret {
        /// The id.
        secret_id: Uuid,
    },
    /// `RevokeClientSecret` on a secret already revoked.
    #[error("client secret {secret_id} is already revoked")]
    SecretAlreadyRevoked {
        /// The id.
        secret_id: Uuid,
    },
}

impl Refusal for ServiceAccountError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::EmptyName | Self::NameTooLong { .. } | Self::NameHasControlCharacter => {
                RefusalKind::BadInput
            }
            Self::NotFound | Self::UnknownSecret { .. } => RefusalKind::NotFound,
            Self::AlreadyCreated
            | Self::Disabled
            | Self::AlreadyDisabled
            | Self::AlreadyEnabled
            | Self::SecretIdTaken { .. }
            | Self::TooManySecrets
            | Self::SecretAlreadyRevoked { .. } => RefusalKind::Conflict,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyCreated => "already_created",
            Self::EmptyName => "name_empty",
            Self::NameTooLong { .. } => "name_too_long",
            Self::NameHasControlCharacter => "name_has_control_character",
            Self::NotFound => "service_account_not_found",
            Self::Disabled => "account_disabled",
            Self::AlreadyDisabled => "already_disabled",
            Self::AlreadyEnabled => "already_enabled",
            Self::SecretIdTaken { .. } => "secret_id_taken",
            Self::TooManySecrets => "too_many_secrets",
            Self::UnknownSecret { .. } => "unknown_secret",
            Self::SecretAlreadyRevoked { .. } => "secret_already_revoked",
        }
    }
}

/// Trims an account name and checks its bounds.
fn account_name(input: &str) -> Result<String, ServiceAccountError> {
    let name = input.trim();
    if name.is_empty() {
        return Err(ServiceAccountError::EmptyName);
    }
    let length = name.chars().count();
    if length > MAX_NAME_LENGTH {
        return Err(ServiceAccountError::NameTooLong { length });
    }
    if name.chars().any(char::is_control) {
        return Err(ServiceAccountError::NameHasControlCharacter);
    }
    Ok(name.to_owned())
}

/// A client secret of the account, by its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSecret {
    secret_id: Uuid,
    hash: SecretHash,
    issued_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

/// A service account. See the module documentation.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccount {
    account_id: Option<ServiceAccountId>,
    tenant_id: Option<TenantId>,
    name: String,
    created_by: Option<Principal>,
    enabled: bool,
    secrets: Vec<ClientSecret>,
}

impl ServiceAccount {
    /// The tenant the account belongs to, once created.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant_id
    }

    /// The account's name (empty before creation).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who created the account.
    pub fn created_by(&self) -> Option<Principal> {
        self.created_by
    }

    /// Whether the account exists and is enabled: whether it may authenticate.
    pub fn is_enabled(&self) -> bool {
        self.account_id.is_some() && self.enabled
    }

    /// The active client secrets, as (secret id, hash), oldest first.
    pub fn active_secrets(&self) -> Vec<(Uuid, SecretHash)> {
        self.secrets
            .iter()
            .filter(|secret| secret.revoked_at.is_none())
            .map(|secret| (secret.secret_id, secret.hash))
            .collect()
    }

    /// Refuses when the account does not exist.
    fn check_exists(&self) -> Result<(), ServiceAccountError> {
        if self.account_id.is_none() {
            return Err(ServiceAccountError::NotFound);
        }
        Ok(())
    }

    /// Refuses when the account does not exist or is disabled.
    fn check_enabled(&self) -> Result<(), ServiceAccountError> {
        self.check_exists()?;
        if !self.enabled {
            return Err(ServiceAccountError::Disabled);
        }
        Ok(())
    }
}

impl Aggregate for ServiceAccount {
    const TYPE: &'static str = "ServiceAccount";
    type Command = ServiceAccountCommand;
    type Event = ServiceAccountEvent;
    type Error = ServiceAccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ServiceAccountCommand,
        _service: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ServiceAccountError> {
        let event = match command {
            ServiceAccountCommand::Create {
                account_id,
                tenant_id,
                name,
                created_by,
                now,
            } => {
                if self.account_id.is_some() {
                    return Err(ServiceAccountError::AlreadyCreated);
                }
                ServiceAccountEvent::ServiceAccountCreated {
                    account_id,
                    tenant_id,
                    name: account_name(&name)?,
                    created_by,
                    created_at: now,
                }
            }
            ServiceAccountCommand::Rename { name, now } => {
                self.check_enabled()?;
                let name = account_name(&name)?;
                if name == self.name {
                    return Ok(());
                }
                ServiceAccountEvent::ServiceAccountRenamed {
                    name,
                    renamed_at: now,
                }
            }
            ServiceAccountCommand::Disable { now } => {
                self.check_exists()?;
                if !self.enabled {
                    return Err(ServiceAccountError::AlreadyDisabled);
                }
                ServiceAccountEvent::ServiceAccountDisabled { disabled_at: now }
            }
            ServiceAccountCommand::Enable { now } => {
                self.check_exists()?;
                if self.enabled {
                    return Err(ServiceAccountError::AlreadyEnabled);
                }
                ServiceAccountEvent::ServiceAccountEnabled { enabled_at: now }
            }
            ServiceAccountCommand::IssueClientSecret {
                secret_id,
                hash,
                now,
            } => {
                self.check_enabled()?;
                if self
                    .secrets
                    .iter()
                    .any(|secret| secret.secret_id == secret_id)
                {
                    return Err(ServiceAccountError::SecretIdTaken { secret_id });
                }
                let active = self
                    .secrets
                    .iter()
                    .filter(|secret| secret.revoked_at.is_none())
                    .count();
                if active >= MAX_ACTIVE_SECRETS {
                    return Err(ServiceAccountError::TooManySecrets);
                }
                ServiceAccountEvent::ClientSecretIssued {
                    secret_id,
                    hash,
                    issued_at: now,
                }
            }
            ServiceAccountCommand::RevokeClientSecret { secret_id, now } => {
                self.check_exists()?;
                let Some(secret) = self
                    .secrets
                    .iter()
                    .find(|secret| secret.secret_id == secret_id)
                else {
                    return Err(ServiceAccountError::UnknownSecret { secret_id });
                };
                if secret.revoked_at.is_some() {
                    return Err(ServiceAccountError::SecretAlreadyRevoked { secret_id });
                }
                ServiceAccountEvent::ClientSecretRevoked {
                    secret_id,
                    revoked_at: now,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ServiceAccountEvent) {
        match event {
            ServiceAccountEvent::ServiceAccountCreated {
                account_id,
                tenant_id,
                name,
                created_by,
                created_at: _,
            } => {
                self.account_id = Some(account_id);
                self.tenant_id = Some(tenant_id);
                self.name = name;
                self.created_by = Some(created_by);
                self.enabled = true;
            }
            ServiceAccountEvent::ServiceAccountRenamed {
                name,
                renamed_at: _,
            } => {
                self.name = name;
            }
            ServiceAccountEvent::ServiceAccountDisabled { disabled_at: _ } => {
                self.enabled = false;
            }
            ServiceAccountEvent::ServiceAccountEnabled { enabled_at: _ } => {
                self.enabled = true;
            }
            ServiceAccountEvent::ClientSecretIssued {
                secret_id,
                hash,
                issued_at,
            } => {
                self.secrets.push(ClientSecret {
                    secret_id,
                    hash,
                    issued_at,
                    revoked_at: None,
                });
            }
            ServiceAccountEvent::ClientSecretRevoked {
                secret_id,
                revoked_at,
            } => {
                if let Some(secret) = self
                    .secrets
                    .iter_mut()
                    .find(|secret| secret.secret_id == secret_id)
                {
                    secret.revoked_at = Some(revoked_at);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;

    use super::super::values::UserId;
    use super::*;

    type Framework = TestFramework<ServiceAccount>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
    }

    fn at(hours: i64) -> DateTime<Utc> {
        t0() + Duration::hours(hours)
    }

    fn account_id() -> ServiceAccountId {
        ServiceAccountId::from_uuid(Uuid::from_u128(1))
    }

    fn tenant_id() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(2))
    }

    fn admin() -> Principal {
        Principal::User(UserId::from_uuid(Uuid::from_u128(3)))
    }

    fn secret(n: u8) -> Uuid {
        Uuid::from_u128(100 + u128::from(n))
    }

    fn h(n: u8) -> SecretHash {
        SecretHash::from_bytes([n; 32])
    }

    fn created() -> ServiceAccountEvent {
        ServiceAccountEvent::ServiceAccountCreated {
            account_id: account_id(),
            tenant_id: tenant_id(),
            name: "billing-sync".to_owned(),
            created_by: admin(),
            created_at: t0(),
        }
    }

    fn disabled() -> ServiceAccountEvent {
        ServiceAccountEvent::ServiceAccountDisabled { disabled_at: at(1) }
    }

    fn issued(n: u8) -> ServiceAccountEvent {
        ServiceAccountEvent::ClientSecretIssued {
            secret_id: secret(n),
            hash: h(n),
            issued_at: at(i64::from(n)),
        }
    }

    fn revoked(n: u8) -> ServiceAccountEvent {
        ServiceAccountEvent::ClientSecretRevoked {
            secret_id: secret(n),
            revoked_at: at(10 + i64::from(n)),
        }
    }

    fn issue(n: u8) -> ServiceAccountCommand {
        ServiceAccountCommand::IssueClientSecret {
            secret_id: secret(n),
            hash: h(n),
            now: at(i64::from(n)),
        }
    }

    fn revoke(n: u8) -> ServiceAccountCommand {
        ServiceAccountCommand::RevokeClientSecret {
            secret_id: secret(n),
            now: at(10 + i64::from(n)),
        }
    }

    fn create(name: &str) -> ServiceAccountCommand {
        ServiceAccountCommand::Create {
            account_id: account_id(),
            tenant_id: tenant_id(),
            name: name.to_owned(),
            created_by: admin(),
            now: t0(),
        }
    }

    fn rename(name: &str) -> ServiceAccountCommand {
        ServiceAccountCommand::Rename {
            name: name.to_owned(),
            now: at(2),
        }
    }

    fn replay(events: Vec<ServiceAccountEvent>) -> ServiceAccount {
        let mut account = ServiceAccount::default();
        for event in events {
            account.apply(event);
        }
        account
    }

    #[test]
    fn a_service_account_is_created_enabled_with_a_trimmed_name() {
        Framework::with(())
            .given_no_previous_events()
            .when(create("  billing-sync "))
            .then_expect_events(vec![created()]);
        let account = replay(vec![created()]);
        assert!(account.is_enabled());
        assert_eq!(account.tenant(), Some(tenant_id()));
        assert_eq!(account.name(), "billing-sync");
        assert_eq!(account.created_by(), Some(admin()));
        assert!(account.active_secrets().is_empty());
    }

    #[test]
    fn a_service_account_is_created_only_once() {
        Framework::with(())
            .given(vec![created()])
            .when(create("other"))
            .then_expect_error(ServiceAccountError::AlreadyCreated);
    }

    #[test]
    fn a_service_account_needs_a_name_of_at_most_a_hundred_characters() {
        Framework::with(())
            .given_no_previous_events()
            .when(create("   "))
            .then_expect_error(ServiceAccountError::EmptyName);
        Framework::with(())
            .given_no_previous_events()
            .when(create(&"x".repeat(101)))
            .then_expect_error(ServiceAccountError::NameTooLong { length: 101 });
        Framework::with(())
            .given_no_previous_events()
            .when(create("bill\ting"))
            .then_expect_error(ServiceAccountError::NameHasControlCharacter);
    }

    #[test]
    fn a_service_account_is_renamed() {
        Framework::with(())
            .given(vec![created()])
            .when(rename(" ledger-sync "))
            .then_expect_events(vec![ServiceAccountEvent::ServiceAccountRenamed {
                name: "ledger-sync".to_owned(),
                renamed_at: at(2),
            }]);
    }

    #[test]
    fn renaming_to_the_current_name_records_nothing() {
        Framework::with(())
            .given(vec![created()])
            .when(rename("billing-sync "))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_rename_to_an_invalid_name_is_refused() {
        Framework::with(())
            .given(vec![created()])
            .when(rename(""))
            .then_expect_error(ServiceAccountError::EmptyName);
    }

    #[test]
    fn a_disabled_account_cannot_be_renamed() {
        Framework::with(())
            .given(vec![created(), disabled()])
            .when(rename("ledger-sync"))
            .then_expect_error(ServiceAccountError::Disabled);
    }

    #[test]
    fn an_account_that_does_not_exist_refuses_everything_but_creation() {
        for command in [
            rename("x"),
            ServiceAccountCommand::Disable { now: at(1) },
            ServiceAccountCommand::Enable { now: at(1) },
            issue(1),
            revoke(1),
        ] {
            Framework::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ServiceAccountError::NotFound);
        }
    }

    #[test]
    fn an_account_is_disabled_and_enabled_again() {
        Framework::with(())
            .given(vec![created()])
            .when(ServiceAccountCommand::Disable { now: at(1) })
            .then_expect_events(vec![disabled()]);
        assert!(!replay(vec![created(), disabled()]).is_enabled());
        let enabled = ServiceAccountEvent::ServiceAccountEnabled { enabled_at: at(3) };
        Framework::with(())
            .given(vec![created(), disabled()])
            .when(ServiceAccountCommand::Enable { now: at(3) })
            .then_expect_events(vec![enabled.clone()]);
        assert!(replay(vec![created(), disabled(), enabled]).is_enabled());
    }

    #[test]
    fn a_disabled_account_cannot_be_disabled_again() {
        Framework::with(())
            .given(vec![created(), disabled()])
            .when(ServiceAccountCommand::Disable { now: at(2) })
            .then_expect_error(ServiceAccountError::AlreadyDisabled);
    }

    #[test]
    fn an_enabled_account_cannot_be_enabled_again() {
        Framework::with(())
            .given(vec![created()])
            .when(ServiceAccountCommand::Enable { now: at(2) })
            .then_expect_error(ServiceAccountError::AlreadyEnabled);
    }

    #[test]
    fn a_client_secret_is_issued_by_its_hash() {
        Framework::with(())
            .given(vec![created()])
            .when(issue(1))
            .then_expect_events(vec![issued(1)]);
        assert_eq!(
            replay(vec![created(), issued(1)]).active_secrets(),
            vec![(secret(1), h(1))]
        );
    }

    #[test]
    fn two_secrets_may_overlap_for_a_rotation_but_not_three() {
        Framework::with(())
            .given(vec![created(), issued(1)])
            .when(issue(2))
            .then_expect_events(vec![issued(2)]);
        Framework::with(())
            .given(vec![created(), issued(1), issued(2)])
            .when(issue(3))
            .then_expect_error(ServiceAccountError::TooManySecrets);
        Framework::with(())
            .given(vec![created(), issued(1), issued(2), revoked(1)])
            .when(issue(3))
            .then_expect_events(vec![issued(3)]);
    }

    #[test]
    fn a_secret_id_is_never_reused() {
        Framework::with(())
            .given(vec![created(), issued(1), revoked(1)])
            .when(issue(1))
            .then_expect_error(ServiceAccountError::SecretIdTaken {
                secret_id: secret(1),
            });
    }

    #[test]
    fn a_disabled_account_gets_no_new_secret() {
        Framework::with(())
            .given(vec![created(), disabled()])
            .when(issue(1))
            .then_expect_error(ServiceAccountError::Disabled);
    }

    #[test]
    fn a_client_secret_is_revoked() {
        Framework::with(())
            .given(vec![created(), issued(1), issued(2)])
            .when(revoke(1))
            .then_expect_events(vec![revoked(1)]);
        assert_eq!(
            replay(vec![created(), issued(1), issued(2), revoked(1)]).active_secrets(),
            vec![(secret(2), h(2))]
        );
    }

    #[test]
    fn a_disabled_account_can_still_have_a_secret_revoked() {
        Framework::with(())
            .given(vec![created(), issued(1), disabled()])
            .when(revoke(1))
            .then_expect_events(vec![revoked(1)]);
    }

    #[test]
    fn an_unknown_secret_cannot_be_revoked() {
        Framework::with(())
            .given(vec![created(), issued(1)])
            .when(revoke(2))
            .then_expect_error(ServiceAccountError::UnknownSecret {
                secret_id: secret(2),
            });
    }

    #[test]
    fn a_secret_is_revoked_only_once() {
        Framework::with(())
            .given(vec![created(), issued(1), revoked(1)])
            .when(revoke(1))
            .then_expect_error(ServiceAccountError::SecretAlreadyRevoked {
                secret_id: secret(1),
            });
    }

    #[test]
    fn refusals_have_stable_reasons_and_kinds() {
        let too_many = ServiceAccountError::TooManySecrets;
        assert_eq!(too_many.reason(), "too_many_secrets");
        assert_eq!(too_many.kind(), RefusalKind::Conflict);
        assert_eq!(ServiceAccountError::Disabled.reason(), "account_disabled");
        assert_eq!(
            ServiceAccountError::UnknownSecret {
                secret_id: secret(1)
            }
            .kind(),
            RefusalKind::NotFound
        );
        assert_eq!(ServiceAccountError::EmptyName.kind(), RefusalKind::BadInput);
    }

    #[test]
    fn the_issued_event_holds_only_the_hash() {
        let json = serde_json::to_value(issued(1)).unwrap();
        assert_eq!(
            json["ClientSecretIssued"]["hash"],
            serde_json::json!(h(1).to_string())
        );
        let back: ServiceAccountEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, issued(1));
        assert_eq!(issued(1).event_type(), "ClientSecretIssued");
        assert_eq!(issued(1).event_version(), "1");
    }

    fn command() -> impl Strategy<Value = ServiceAccountCommand> {
        let names = prop_oneof![
            Just("billing-sync".to_owned()),
            Just(" ledger ".to_owned()),
            Just(String::new()),
        ];
        prop_oneof![
            names.clone().prop_map(|name| create(&name)),
            names.prop_map(|name| rename(&name)),
            (0i64..5).prop_map(|h| ServiceAccountCommand::Disable { now: at(h) }),
            (0i64..5).prop_map(|h| ServiceAccountCommand::Enable { now: at(h) }),
            (1u8..5).prop_map(issue),
            (1u8..5).prop_map(revoke),
        ]
    }

    proptest! {
        #[test]
        fn replaying_the_accepted_events_rebuilds_the_same_account(
            commands in proptest::collection::vec(command(), 0..25)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut live = ServiceAccount::default();
            let mut accepted = Vec::new();
            for command in commands {
                let before = live.clone();
                let sink = EventSink::default();
                match runtime.block_on(live.handle(command, &(), &sink)) {
                    Ok(()) => accepted.extend(runtime.block_on(sink.collect())),
                    Err(_) => prop_assert_eq!(&live, &before),
                }
                prop_assert!(live.active_secrets().len() <= MAX_ACTIVE_SECRETS);
            }
            prop_assert_eq!(replay(accepted), live);
        }
    }
}
