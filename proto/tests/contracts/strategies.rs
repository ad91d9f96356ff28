//! Strategies for every domain event, variant by variant, from strategies for the value
//! types they are made of. Values are built through the domain's own constructors and
//! parsers, so every one is a value the domain could emit.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use commands::idempotency::IdempotencyEvent;
use domain::identity::api_key::ApiKeyEvent;
use domain::identity::credentials::{PasswordHash, SealedSecret, SecretHash};
use domain::identity::email_claim::EmailClaimEvent;
use domain::identity::principal::Principal;
use domain::identity::rbac::{BuiltinRole, Permission, PermissionSet, RoleName, RoleRef};
use domain::identity::service_account::ServiceAccountEvent;
use domain::identity::session::{EndReason, RevocationReason, SessionEvent};
use domain::identity::tenant::TenantEvent;
use domain::identity::user::UserEvent;
use domain::identity::values::{
    ApiKeyId, EmailIndex, PlanRef, ServiceAccountId, SessionId, TenantId, TenantName, UserId,
};
use domain::personal::{PersonalData, SubjectId};
use proptest::prelude::*;
use proto::TypedEvent;
use serde_json::Value;
use uuid::Uuid;

/// The largest integer the event log accepts (docs/hash-spec.md): counters and time steps
/// stay within it, as every value the log holds does.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any instant from year 1 to year 9999, to the nanosecond.
pub fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800_i64..=253_402_300_799, 0..1_000_000_000_u32)
        .prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).unwrap())
}

/// An instant as the log records it: to the microsecond.
pub fn recorded_at() -> impl Strategy<Value = DateTime<Utc>> {
    (0_i64..=253_402_300_799, 0..1_000_000_u32)
        .prop_map(|(seconds, micros)| DateTime::from_timestamp(seconds, micros * 1000).unwrap())
}

pub fn counter() -> impl Strategy<Value = u64> {
    0..=MAX_SAFE_INTEGER
}

pub fn tenant_id() -> impl Strategy<Value = TenantId> {
    uuid().prop_map(TenantId::from_uuid)
}

pub fn user_id() -> impl Strategy<Value = UserId> {
    uuid().prop_map(UserId::from_uuid)
}

pub fn session_id() -> impl Strategy<Value = SessionId> {
    uuid().prop_map(SessionId::from_uuid)
}

pub fn api_key_id() -> impl Strategy<Value = ApiKeyId> {
    uuid().prop_map(ApiKeyId::from_uuid)
}

pub fn service_account_id() -> impl Strategy<Value = ServiceAccountId> {
    uuid().prop_map(ServiceAccountId::from_uuid)
}

pub fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        user_id().prop_map(Principal::User),
        service_account_id().prop_map(Principal::ServiceAccount),
    ]
}

pub fn tenant_name() -> impl Strategy<Value = TenantName> {
    "[\\p{L}\\p{N}]([\\p{L}\\p{N} .&'-]{0,60}[\\p{L}\\p{N}])?"
        .prop_filter_map("a valid tenant name", |text| TenantName::parse(&text).ok())
}

pub fn plan() -> impl Strategy<Value = PlanRef> {
    "[a-z][a-z0-9-]{0,63}".prop_map(|text| PlanRef::parse(&text).unwrap())
}

pub fn role_name() -> impl Strategy<Value = RoleName> {
    "[a-z][a-z0-9-]{0,40}"
        .prop_filter_map("not a built-in name", |text| RoleName::parse(&text).ok())
}

pub fn role() -> impl Strategy<Value = RoleRef> {
    prop_oneof![
        proptest::sample::select(BuiltinRole::ALL).prop_map(RoleRef::Builtin),
        role_name().prop_map(RoleRef::Custom),
    ]
}

pub fn roles() -> impl Strategy<Value = BTreeSet<RoleRef>> {
    proptest::collection::btree_set(role(), 1..5)
}

pub fn permissions() -> impl Strategy<Value = PermissionSet> {
    proptest::sample::subsequence(Permission::ALL, 0..=Permission::ALL.len())
        .prop_map(|chosen| chosen.into_iter().collect())
}

pub fn personal_data() -> impl Strategy<Value = PersonalData> {
    (uuid(), "[A-Za-z0-9+/]{0,80}={0,2}").prop_map(|(subject, sealed)| {
        PersonalData::from_sealed(SubjectId::from_uuid(subject), sealed)
    })
}

pub fn email_index() -> impl Strategy<Value = EmailIndex> {
    any::<[u8; 32]>().prop_map(EmailIndex::from_digest)
}

pub fn password() -> impl Strategy<Value = PasswordHash> {
    ("[A-Za-z0-9+/]{8,22}", "[A-Za-z0-9+/]{16,43}").prop_map(|(salt, hash)| {
        PasswordHash::parse(format!("$argon2id$v=19$m=19456,t=2,p=1${salt}${hash}")).unwrap()
    })
}

pub fn secret_hash() -> impl Strategy<Value = SecretHash> {
    any::<[u8; 32]>().prop_map(SecretHash::from_bytes)
}

/// Free text: reasons, key and account names. Any Unicode but NUL, which the log refuses.
pub fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

pub fn tenant_event() -> impl Strategy<Value = TenantEvent> {
    prop_oneof![
        (tenant_id(), tenant_name(), plan(), user_id(), time()).prop_map(
            |(tenant_id, name, plan, owner, created_at)| TenantEvent::TenantCreated {
                tenant_id,
                name,
                plan,
                owner,
                created_at,
            }
        ),
        (tenant_name(), time())
            .prop_map(|(name, renamed_at)| TenantEvent::TenantRenamed { name, renamed_at }),
        (plan(), plan(), time()).prop_map(|(plan, previous, changed_at)| {
            TenantEvent::PlanChanged {
                plan,
                previous,
                changed_at,
            }
        }),
        (text(), time()).prop_map(|(reason, suspended_at)| TenantEvent::TenantSuspended {
            reason,
            suspended_at,
        }),
        time().prop_map(|reactivated_at| TenantEvent::TenantReactivated { reactivated_at }),
        (text(), time())
            .prop_map(|(reason, closed_at)| TenantEvent::TenantClosed { reason, closed_at }),
        (principal(), roles(), time()).prop_map(|(principal, roles, added_at)| {
            TenantEvent::MemberAdded {
                principal,
                roles,
                added_at,
            }
        }),
        (principal(), time()).prop_map(|(principal, removed_at)| TenantEvent::MemberRemoved {
            principal,
            removed_at,
        }),
        (principal(), role(), time()).prop_map(|(principal, role, assigned_at)| {
            TenantEvent::RoleAssigned {
                principal,
                role,
                assigned_at,
            }
        }),
        (principal(), role(), time()).prop_map(|(principal, role, unassigned_at)| {
            TenantEvent::RoleUnassigned {
                principal,
                role,
                unassigned_at,
            }
        }),
        (role_name(), permissions(), time()).prop_map(|(name, permissions, defined_at)| {
            TenantEvent::RoleDefined {
                name,
                permissions,
                defined_at,
            }
        }),
        (role_name(), permissions(), permissions(), time()).prop_map(
            |(name, permissions, previous, redefined_at)| TenantEvent::RoleRedefined {
                name,
                permissions,
                previous,
                redefined_at,
            }
        ),
        (role_name(), time())
            .prop_map(|(name, deleted_at)| TenantEvent::RoleDeleted { name, deleted_at }),
    ]
}

pub fn user_event() -> impl Strategy<Value = UserEvent> {
    prop_oneof![
        (
            user_id(),
            tenant_id(),
            personal_data(),
            email_index(),
            personal_data(),
            password(),
            time()
        )
            .prop_map(
                |(user_id, tenant_id, email, email_index, name, password, registered_at)| {
                    UserEvent::UserRegistered {
                        user_id,
                        tenant_id,
                        email,
                        email_index,
                        name,
                        password,
                        registered_at,
                    }
                }
            ),
        (
            user_id(),
            tenant_id(),
            personal_data(),
            email_index(),
            user_id(),
            secret_hash(),
            time(),
            time()
        )
            .prop_map(
                |(
                    user_id,
                    tenant_id,
                    email,
                    email_index,
                    invited_by,
                    invitation,
                    expires_at,
                    invited_at,
                )| UserEvent::UserInvited {
                    user_id,
                    tenant_id,
                    email,
                    email_index,
                    invited_by,
                    invitation,
                    expires_at,
                    invited_at,
                }
            ),
        (personal_data(), password(), time()).prop_map(|(name, password, accepted_at)| {
            UserEvent::InvitationAccepted {
                name,
                password,
                accepted_at,
            }
        }),
        (secret_hash(), time()).prop_map(|(token, expires_at)| {
            UserEvent::EmailVerificationIssued { token, expires_at }
        }),
        time().prop_map(|verified_at| UserEvent::EmailVerified { verified_at }),
        (personal_data(), email_index(), email_index(), time()).prop_map(
            |(email, email_index, previous_index, changed_at)| UserEvent::EmailChanged {
                email,
                email_index,
                previous_index,
                changed_at,
            }
        ),
        (password(), time()).prop_map(|(password, changed_at)| UserEvent::PasswordChanged {
            password,
            changed_at,
        }),
        time().prop_map(|deactivated_at| UserEvent::UserDeactivated { deactivated_at }),
        (time(), any::<u32>(), any::<bool>()).prop_map(
            |(at, consecutive_failures, while_locked)| UserEvent::LoginFailed {
                at,
                consecutive_failures,
                while_locked,
            }
        ),
        (time(), any::<u32>())
            .prop_map(|(until, lockout)| UserEvent::AccountLocked { until, lockout }),
        (session_id(), time(), any::<bool>()).prop_map(|(session_id, at, mfa_used)| {
            UserEvent::LoginSucceeded {
                session_id,
                at,
                mfa_used,
            }
        }),
        "[A-Za-z0-9+/=.:]{0,80}".prop_map(|sealed| UserEvent::TotpEnrollmentStarted {
            secret: SealedSecret::from_sealed(sealed),
        }),
        (
            counter(),
            proptest::collection::vec(secret_hash(), 0..12),
            time()
        )
            .prop_map(|(step, recovery_codes, confirmed_at)| {
                UserEvent::TotpConfirmed {
                    step,
                    recovery_codes,
                    confirmed_at,
                }
            }),
        counter().prop_map(|step| UserEvent::TotpCodeUsed { step }),
        secret_hash().prop_map(|code| UserEvent::RecoveryCodeUsed { code }),
        (counter(), time())
            .prop_map(|(step, disabled_at)| UserEvent::MfaDisabled { step, disabled_at }),
        time().prop_map(|at| UserEvent::AllSessionsRevoked { at }),
        (user_id(), time()).prop_map(|(user_id, forgotten_at)| UserEvent::SubjectForgotten {
            user_id,
            forgotten_at,
        }),
    ]
}

pub fn revocation_reason() -> impl Strategy<Value = RevocationReason> {
    proptest::sample::select(vec![
        RevocationReason::UserRequest,
        RevocationReason::AdminRequest,
        RevocationReason::AllSessionsRevoked,
        RevocationReason::PasswordChanged,
        RevocationReason::UserDeactivated,
        RevocationReason::TokenReuse,
    ])
}

pub fn session_event() -> impl Strategy<Value = SessionEvent> {
    prop_oneof![
        (
            session_id(),
            user_id(),
            tenant_id(),
            secret_hash(),
            time(),
            any::<bool>(),
            time()
        )
            .prop_map(
                |(session_id, user_id, tenant_id, refresh, expires_at, mfa, opened_at)| {
                    SessionEvent::SessionOpened {
                        session_id,
                        user_id,
                        tenant_id,
                        refresh,
                        expires_at,
                        mfa,
                        opened_at,
                    }
                }
            ),
        (counter(), secret_hash(), time()).prop_map(|(generation, refresh, rotated_at)| {
            SessionEvent::RefreshTokenRotated {
                generation,
                refresh,
                rotated_at,
            }
        }),
        (counter(), time()).prop_map(|(presented_generation, detected_at)| {
            SessionEvent::RefreshTokenReused {
                presented_generation,
                detected_at,
            }
        }),
        (revocation_reason(), time()).prop_map(|(reason, revoked_at)| {
            SessionEvent::SessionRevoked { reason, revoked_at }
        }),
        time().prop_map(|ended_at| SessionEvent::SessionEnded {
            reason: EndReason::Logout,
            ended_at,
        }),
        time().prop_map(|expired_at| SessionEvent::SessionExpired { expired_at }),
    ]
}

pub fn api_key_event() -> impl Strategy<Value = ApiKeyEvent> {
    prop_oneof![
        (
            api_key_id(),
            tenant_id(),
            principal(),
            text(),
            secret_hash(),
            "[a-z]{2,6}_[a-z]{4}_[A-Za-z0-9]{0,8}",
            permissions(),
            proptest::option::of(time()),
            time()
        )
            .prop_map(
                |(
                    key_id,
                    tenant_id,
                    owner,
                    name,
                    hash,
                    display_prefix,
                    scopes,
                    expires_at,
                    created_at,
                )| ApiKeyEvent::ApiKeyCreated {
                    key_id,
                    tenant_id,
                    owner,
                    name,
                    hash,
                    display_prefix,
                    scopes,
                    expires_at,
                    created_at,
                }
            ),
        time().prop_map(|revoked_at| ApiKeyEvent::ApiKeyRevoked { revoked_at }),
    ]
}

pub fn service_account_event() -> impl Strategy<Value = ServiceAccountEvent> {
    prop_oneof![
        (
            service_account_id(),
            tenant_id(),
            text(),
            principal(),
            time()
        )
            .prop_map(|(account_id, tenant_id, name, created_by, created_at)| {
                ServiceAccountEvent::ServiceAccountCreated {
                    account_id,
                    tenant_id,
                    name,
                    created_by,
                    created_at,
                }
            }),
        (text(), time()).prop_map(|(name, renamed_at)| {
            ServiceAccountEvent::ServiceAccountRenamed { name, renamed_at }
        }),
        time().prop_map(|disabled_at| ServiceAccountEvent::ServiceAccountDisabled { disabled_at }),
        time().prop_map(|enabled_at| ServiceAccountEvent::ServiceAccountEnabled { enabled_at }),
        (uuid(), secret_hash(), time()).prop_map(|(secret_id, hash, issued_at)| {
            ServiceAccountEvent::ClientSecretIssued {
                secret_id,
                hash,
                issued_at,
            }
        }),
        (uuid(), time()).prop_map(|(secret_id, revoked_at)| {
            ServiceAccountEvent::ClientSecretRevoked {
                secret_id,
                revoked_at,
            }
        }),
    ]
}

pub fn email_claim_event() -> impl Strategy<Value = EmailClaimEvent> {
    prop_oneof![
        (tenant_id(), email_index(), user_id(), time()).prop_map(
            |(tenant_id, index, user_id, claimed_at)| EmailClaimEvent::EmailClaimed {
                tenant_id,
                index,
                user_id,
                claimed_at,
            }
        ),
        (user_id(), time()).prop_map(|(user_id, released_at)| EmailClaimEvent::EmailReleased {
            user_id,
            released_at,
        }),
    ]
}

/// A JSON value as a command's recorded result can be: no non-integer numbers (the
/// platform's events hold none), integers within the log's range.
pub fn json() -> impl Strategy<Value = Value> {
    let safe = MAX_SAFE_INTEGER as i64;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-safe..=safe).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

pub fn idempotency_event() -> impl Strategy<Value = IdempotencyEvent> {
    ("[0-9a-f]{64}", json()).prop_map(|(fingerprint, result)| IdempotencyEvent::CommandRecorded {
        fingerprint,
        result,
    })
}

/// An event of any aggregate the contracts type.
pub fn typed_event() -> impl Strategy<Value = TypedEvent> {
    prop_oneof![
        tenant_event().prop_map(TypedEvent::Tenant),
        user_event().prop_map(TypedEvent::User),
        session_event().prop_map(TypedEvent::Session),
        api_key_event().prop_map(TypedEvent::ApiKey),
        service_account_event().prop_map(TypedEvent::ServiceAccount),
        email_claim_event().prop_map(TypedEvent::EmailClaim),
        idempotency_event().prop_map(TypedEvent::Idempotency),
    ]
}
