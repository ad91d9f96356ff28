//! The `ApiKey` aggregate: a long-lived credential of a principal (a user or a service
//! account) in one tenant, limited to a set of scopes.
//!
//! Only the SHA-256 hash of the key is ever stored ([`SecretHash`]); the key itself is shown
//! once, to its creator, by the application layer. A short `display_prefix` (the key's first
//! characters, such as `pk_3f9a`) is kept so that people can tell keys apart in listings; it
//! is far too short to use the key.
//!
//! Consistency rules:
//! - a key is created once, with a non-empty name (trimmed, at most 100 characters), at least
//!   one scope, and an expiry (if any) in the future;
//! - nobody grants what they do not hold: the scopes must be a subset of the *creator's*
//!   effective permissions at creation (`docs/permissions.md`, rule 6), which the application
//!   layer computes and passes in `creator_permissions`; a key made for a service account is
//!   checked against its creator, never the account;
//! - a revoked key stays revoked; an expired key is unusable without any event.
//!
//! The key decision: the last use of a key is NOT an event. It is gathered in memory where
//! keys are checked and written in batches to a table outside the log (`api_key_usage`, see
//! `eventstore::KeyUsage`), so that the event log records decisions, not per-request noise.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::credentials::SecretHash;
use super::principal::Principal;
use super::rbac::PermissionSet;
use super::values::{ApiKeyId, TenantId};
use crate::refusal::{Refusal, RefusalKind};

/// The longest key name accepted, in characters.
pub const MAX_NAME_LENGTH: usize = 100;

/// The longest display prefix accepted, in characters.
pub const MAX_DISPLAY_PREFIX_LENGTH: usize = 32;

/// What can be asked of an API key.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiKeyCommand {
    /// Creates the key.
    Create {
        /// The new key's id.
        key_id: ApiKeyId,
        /// The tenant the key acts in.
        tenant_id: TenantId,
        /// Whom the key acts as.
        owner: Principal,
        /// A name for people to recognise the key by; trimmed.
        name: String,
        /// The SHA-256 hash of the key.
        hash: SecretHash,
        /// The first characters of the key, shown in listings.
        display_prefix: String,
        /// What the key may do; never more than `creator_permissions`.
        scopes: PermissionSet,
        /// The effective permissions of the principal creating the key, in this tenant.
        creator_permissions: PermissionSet,
        /// When the key stops working, if ever.
        expires_at: Option<DateTime<Utc>>,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Revokes the key for good.
    Revoke {
        /// The time of the request.
        now: DateTime<Utc>,
    },
}

/// What happened to an API key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    /// An API key was created.
    ApiKeyCreated {
        /// The key's id.
        key_id: ApiKeyId,
        /// The tenant the key acts in.
        tenant_id: TenantId,
        /// Whom the key acts as.
        owner: Principal,
        /// The key's name, trimmed.
        name: String,
        /// The SHA-256 hash of the key.
        hash: SecretHash,
        /// The first characters of the key, shown in listings.
        display_prefix: String,
        /// What the key may do.
        scopes: PermissionSet,
        /// When the key stops working, if ever.
        expires_at: Option<DateTime<Utc>>,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// The key was revoked.
    ApiKeyRevoked {
        /// When.
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyCreated { .. } => "ApiKeyCreated",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The permissions of a set as `a:b, c:d`.
fn list(set: &PermissionSet) -> String {
    set.iter()
        .map(|permission| permission.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why an API key refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// `Create` on a key that already exists.
    #[error("this API key was already created")]
    AlreadyCreated,
    /// The name is empty once trimmed.
    #[error("an API key needs a name")]
    EmptyName,
    /// The name is too long.
    #[error("the API key's name has {length} characters; at most 100 are allowed")]
    NameTooLong {
        /// Its length in characters, once trimmed.
        length: usize,
    },
    /// The name contains a control character.
    #[error("the API key's name contains a control character")]
    NameHasControlCharacter,
    /// The display prefix is empty, too long, or not printable ASCII without spaces.
    #[error("the API key's display prefix must be 1 to 32 printable ASCII characters")]
    InvalidDisplayPrefix,
    /// No scopes: the key could do nothing.
    #[error("an API key needs at least one scope")]
    NoScopes,
    /// The expiry is not after `now`.
    #[error("an API key must expire in the future, but it would expire at {expires_at}")]
    ExpiryNotInFuture {
        /// The refused expiry.
        expires_at: DateTime<Utc>,
    },
    /// The scopes hold permissions the creator lacks.
    #[error(
        "an API key cannot carry scopes its creator lacks; missing: {}",
        list(.missing)
    )]
    ScopeBeyondCreator {
        /// The scopes the creator does not hold.
        missing: PermissionSet,
    },
    /// A command other than `Create` on a key that does not exist.
    #[error("there is no such API key")]
    NotFound,
    /// `Revoke` on a key that is already revoked.
    #[error("this API key is already revoked")]
    AlreadyRevoked,
}

impl Refusal for ApiKeyError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::AlreadyCreated | Self::AlreadyRevoked => RefusalKind::Conflict,
            Self::EmptyName
            | Self::NameTooLong { .. }
            | Self::NameHasControlCharacter
            | Self::InvalidDisplayPrefix
            | Self::NoScopes
            | Self::ExpiryNotInFuture { .. } => RefusalKind::BadInput,
            Self::ScopeBeyondCreator { .. } => RefusalKind::Forbidden,
            Self::NotFound => RefusalKind::NotFound,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyCreated => "already_created",
            Self::EmptyName => "name_empty",
            Self::NameTooLong { .. } => "name_too_long",
            Self::NameHasControlCharacter => "name_has_control_character",
            Self::InvalidDisplayPrefix => "invalid_display_prefix",
            Self::NoScopes => "no_scopes",
            Self::ExpiryNotInFuture { .. } => "expiry_not_in_future",
            Self::ScopeBeyondCreator { .. } => "scope_beyond_creator",
            Self::NotFound => "api_key_not_found",
            Self::AlreadyRevoked => "already_revoked",
        }
    }
}

/// Trims a key name and checks its bounds.
fn key_name(input: &str) -> Result<String, ApiKeyError> {
    let name = input.trim();
    if name.is_empty() {
        return Err(ApiKeyError::EmptyName);
    }
    let length = name.chars().count();
    if length > MAX_NAME_LENGTH {
        return Err(ApiKeyError::NameTooLong { length });
    }
    if name.chars().any(char::is_control) {
        return Err(ApiKeyError::NameHasControlCharacter);
    }
    Ok(name.to_owned())
}

/// An API key. See the module documentation.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    key_id: Option<ApiKeyId>,
    tenant_id: Option<TenantId>,
    owner: Option<Principal>,
    name: String,
    hash: Option<SecretHash>,
    display_prefix: String,
    scopes: PermissionSet,
    expires_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// The tenant the key acts in, once created.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant_id
    }

    /// Whom the key acts as, once created.
    pub fn owner(&self) -> Option<Principal> {
        self.owner
    }

    /// What the key may do (empty before creation).
    pub fn scopes(&self) -> PermissionSet {
        self.scopes
    }

    /// The SHA-256 hash of the key, once created.
    pub fn hash(&self) -> Option<SecretHash> {
        self.hash
    }

    /// The key's name (empty before creation).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first characters of the key (empty before creation).
    pub fn display_prefix(&self) -> &str {
        &self.display_prefix
    }

    /// When the key stops working, if ever.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Whether the key was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the key authenticates at `now`: created, not revoked, not expired.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.created_at.is_some()
            && self.revoked_at.is_none()
            && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = "ApiKey";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ApiKeyCommand,
        _service: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ApiKeyError> {
        match command {
            ApiKeyCommand::Create {
                key_id,
                tenant_id,
                owner,
                name,
                hash,
                display_prefix,
                scopes,
                creator_permissions,
                expires_at,
                now,
            } => {
                if self.created_at.is_some() {
                    return Err(ApiKeyError::AlreadyCreated);
                }
                let name = key_name(&name)?;
                let prefix_length = display_prefix.chars().count();
                if prefix_length == 0
                    || prefix_length > MAX_DISPLAY_PREFIX_LENGTH
                    || !display_prefix.chars().all(|c| c.is_ascii_graphic())
                {
                    return Err(ApiKeyError::InvalidDisplayPrefix);
                }
                if scopes.is_empty() {
                    return Err(ApiKeyError::NoScopes);
                }
                if let Some(expires_at) = expires_at.filter(|expires_at| *expires_at <= now) {
                    return Err(ApiKeyError::ExpiryNotInFuture { expires_at });
                }
                if !scopes.is_subset_of(creator_permissions) {
                    return Err(ApiKeyError::ScopeBeyondCreator {
                        missing: scopes.difference(creator_permissions),
                    });
                }
                let event = ApiKeyEvent::ApiKeyCreated {
                    key_id,
                    tenant_id,
                    owner,
                    name,
                    hash,
                    display_prefix,
                    scopes,
                    expires_at,
                    created_at: now,
                };
                sink.write(event, self).await;
            }
            ApiKeyCommand::Revoke { now } => {
                if self.created_at.is_none() {
                    return Err(ApiKeyError::NotFound);
                }
                if self.revoked_at.is_some() {
                    return Err(ApiKeyError::AlreadyRevoked);
                }
                sink.write(ApiKeyEvent::ApiKeyRevoked { revoked_at: now }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyCreated {
                key_id,
                tenant_id,
                owner,
                name,
                hash,
                display_prefix,
                scopes,
                expires_at,
                created_at,
            } => {
                self.key_id = Some(key_id);
                self.tenant_id = Some(tenant_id);
                self.owner = Some(owner);
                self.name = name;
                self.hash = Some(hash);
                self.display_prefix = display_prefix;
                self.scopes = scopes;
                self.expires_at = expires_at;
                self.created_at = Some(created_at);
            }
            ApiKeyEvent::ApiKeyRevoked { revoked_at } => {
                self.revoked_at = Some(revoked_at);
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
    use uuid::Uuid;

    use super::super::rbac::Permission;
    use super::super::values::{ServiceAccountId, UserId};
    use super::*;

    type Framework = TestFramework<ApiKey>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
    }

    fn at(days: i64) -> DateTime<Utc> {
        t0() + Duration::days(days)
    }

    fn key_id() -> ApiKeyId {
        ApiKeyId::from_uuid(Uuid::from_u128(1))
    }

    fn tenant_id() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(2))
    }

    fn owner() -> Principal {
        Principal::ServiceAccount(ServiceAccountId::from_uuid(Uuid::from_u128(3)))
    }

    fn scopes() -> PermissionSet {
        PermissionSet::of(&[Permission::ResourcesRead, Permission::UsageRecord])
    }

    fn creator() -> PermissionSet {
        PermissionSet::of(&[
            Permission::ApiKeysCreate,
            Permission::ResourcesRead,
            Permission::UsageRecord,
        ])
    }

    fn hash() -> SecretHash {
        SecretHash::from_bytes([7; 32])
    }

    fn create() -> ApiKeyCommand {
        ApiKeyCommand::Create {
            key_id: key_id(),
            tenant_id: tenant_id(),
            owner: owner(),
            name: "  CI deploys ".to_owned(),
            hash: hash(),
            display_prefix: "pk_3f9a".to_owned(),
            scopes: scopes(),
            creator_permissions: creator(),
            expires_at: Some(at(90)),
            now: t0(),
        }
    }

    fn created() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyCreated {
            key_id: key_id(),
            tenant_id: tenant_id(),
            owner: owner(),
            name: "CI deploys".to_owned(),
            hash: hash(),
            display_prefix: "pk_3f9a".to_owned(),
            scopes: scopes(),
            expires_at: Some(at(90)),
            created_at: t0(),
        }
    }

    fn revoked() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyRevoked { revoked_at: at(1) }
    }

    fn create_with(change: impl FnOnce(&mut ApiKeyCommand)) -> ApiKeyCommand {
        let mut command = create();
        change(&mut command);
        command
    }

    fn replay(events: Vec<ApiKeyEvent>) -> ApiKey {
        let mut key = ApiKey::default();
        for event in events {
            key.apply(event);
        }
        key
    }

    #[test]
    fn a_key_is_created_with_a_trimmed_name_and_only_its_hash() {
        Framework::with(())
            .given_no_previous_events()
            .when(create())
            .then_expect_events(vec![created()]);
        let key = replay(vec![created()]);
        assert_eq!(key.tenant(), Some(tenant_id()));
        assert_eq!(key.owner(), Some(owner()));
        assert_eq!(key.scopes(), scopes());
        assert_eq!(key.hash(), Some(hash()));
        assert_eq!(key.name(), "CI deploys");
        assert_eq!(key.display_prefix(), "pk_3f9a");
        assert!(key.is_usable(at(89)));
    }

    #[test]
    fn a_key_without_expiry_stays_usable() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { expires_at, .. } = c {
                *expires_at = None;
            }
        });
        let events = Framework::with(())
            .given_no_previous_events()
            .when(command)
            .inspect_result()
            .unwrap();
        assert!(replay(events).is_usable(at(10_000)));
    }

    #[test]
    fn a_key_is_created_only_once() {
        Framework::with(())
            .given(vec![created()])
            .when(create())
            .then_expect_error(ApiKeyError::AlreadyCreated);
    }

    #[test]
    fn a_key_needs_at_least_one_scope() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { scopes, .. } = c {
                *scopes = PermissionSet::EMPTY;
            }
        });
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::NoScopes);
    }

    #[test]
    fn a_key_cannot_carry_a_scope_its_creator_lacks() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { scopes, .. } = c {
                scopes.insert(Permission::RolesAssign);
                scopes.insert(Permission::TenantsClose);
            }
        });
        let error = Framework::with(())
            .given_no_previous_events()
            .when(command)
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            error,
            ApiKeyError::ScopeBeyondCreator {
                missing: PermissionSet::of(&[Permission::RolesAssign, Permission::TenantsClose]),
            }
        );
        assert_eq!(error.kind(), RefusalKind::Forbidden);
        assert_eq!(error.reason(), "scope_beyond_creator");
        assert_eq!(
            error.to_string(),
            "an API key cannot carry scopes its creator lacks; missing: roles:assign, tenants:close"
        );
    }

    #[test]
    fn a_key_for_a_user_is_checked_against_its_creator_too() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create {
                owner,
                creator_permissions,
                ..
            } = c
            {
                *owner = Principal::User(UserId::from_uuid(Uuid::from_u128(9)));
                *creator_permissions = PermissionSet::from(Permission::ResourcesRead);
            }
        });
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::ScopeBeyondCreator {
                missing: PermissionSet::from(Permission::UsageRecord),
            });
    }

    #[test]
    fn a_key_cannot_expire_in_the_past() {
        for past in [t0(), at(-1)] {
            let command = create_with(|c| {
                if let ApiKeyCommand::Create { expires_at, .. } = c {
                    *expires_at = Some(past);
                }
            });
            Framework::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ApiKeyError::ExpiryNotInFuture { expires_at: past });
        }
    }

    #[test]
    fn a_key_needs_a_name() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { name, .. } = c {
                *name = "   ".to_owned();
            }
        });
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::EmptyName);
    }

    #[test]
    fn a_key_name_over_a_hundred_characters_is_refused() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { name, .. } = c {
                *name = format!(" {} ", "é".repeat(101));
            }
        });
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::NameTooLong { length: 101 });
        let exactly = create_with(|c| {
            if let ApiKeyCommand::Create { name, .. } = c {
                *name = "é".repeat(100);
            }
        });
        assert!(
            Framework::with(())
                .given_no_previous_events()
                .when(exactly)
                .inspect_result()
                .is_ok()
        );
    }

    #[test]
    fn a_key_name_with_a_control_character_is_refused() {
        let command = create_with(|c| {
            if let ApiKeyCommand::Create { name, .. } = c {
                *name = "CI\ndeploys".to_owned();
            }
        });
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::NameHasControlCharacter);
    }

    #[test]
    fn a_key_needs_a_short_printable_display_prefix() {
        for bad in ["", "pk 3f", &"a".repeat(33), "pk_é"] {
            let command = create_with(|c| {
                if let ApiKeyCommand::Create { display_prefix, .. } = c {
                    *display_prefix = bad.to_owned();
                }
            });
            Framework::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ApiKeyError::InvalidDisplayPrefix);
        }
    }

    #[test]
    fn a_key_is_revoked() {
        Framework::with(())
            .given(vec![created()])
            .when(ApiKeyCommand::Revoke { now: at(1) })
            .then_expect_events(vec![revoked()]);
        let key = replay(vec![created(), revoked()]);
        assert!(key.is_revoked());
        assert!(!key.is_usable(at(2)));
    }

    #[test]
    fn a_key_that_does_not_exist_cannot_be_revoked() {
        Framework::with(())
            .given_no_previous_events()
            .when(ApiKeyCommand::Revoke { now: at(1) })
            .then_expect_error(ApiKeyError::NotFound);
    }

    #[test]
    fn a_key_is_revoked_only_once() {
        Framework::with(())
            .given(vec![created(), revoked()])
            .when(ApiKeyCommand::Revoke { now: at(2) })
            .then_expect_error(ApiKeyError::AlreadyRevoked);
    }

    #[test]
    fn an_expired_key_is_unusable_without_any_event() {
        let key = replay(vec![created()]);
        assert!(key.is_usable(at(90) - Duration::seconds(1)));
        assert!(!key.is_usable(at(90)));
        assert!(!ApiKey::default().is_usable(t0()));
    }

    #[test]
    fn the_created_event_holds_the_hash_and_scopes_as_strings() {
        let json = serde_json::to_value(created()).unwrap();
        let body = &json["ApiKeyCreated"];
        assert_eq!(body["hash"], serde_json::json!(hash().to_string()));
        assert_eq!(
            body["scopes"],
            serde_json::json!(["resources:read", "usage:record"])
        );
        assert_eq!(
            body["owner"],
            serde_json::json!(format!("service_account:{}", Uuid::from_u128(3)))
        );
        let back: ApiKeyEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, created());
        assert_eq!(created().event_type(), "ApiKeyCreated");
    }

    fn command() -> impl Strategy<Value = ApiKeyCommand> {
        prop_oneof![
            (0usize..4, any::<bool>(), proptest::option::of(-1i64..3)).prop_map(
                |(n, wide, expiry)| {
                    let names = ["CI", "  deploys  ", "", "x\u{7}"];
                    let mut scopes = scopes();
                    if wide {
                        scopes.insert(Permission::TenantsClose);
                    }
                    ApiKeyCommand::Create {
                        key_id: key_id(),
                        tenant_id: tenant_id(),
                        owner: owner(),
                        name: names[n].to_owned(),
                        hash: hash(),
                        display_prefix: "pk_1".to_owned(),
                        scopes,
                        creator_permissions: creator(),
                        expires_at: expiry.map(at),
                        now: t0(),
                    }
                }
            ),
            (0i64..5).prop_map(|d| ApiKeyCommand::Revoke { now: at(d) }),
        ]
    }

    proptest! {
        #[test]
        fn replaying_the_accepted_events_rebuilds_the_same_key(
            commands in proptest::collection::vec(command(), 0..12)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut live = ApiKey::default();
            let mut accepted = Vec::new();
            for command in commands {
                let before = live.clone();
                let sink = EventSink::default();
                match runtime.block_on(live.handle(command, &(), &sink)) {
                    Ok(()) => accepted.extend(runtime.block_on(sink.collect())),
                    Err(_) => prop_assert_eq!(&live, &before),
                }
            }
            prop_assert_eq!(replay(accepted), live);
        }
    }
}
