//! A message that the domain would not accept is refused, naming the field.

use chrono::{DateTime, Utc};
use domain::identity::session::SessionEvent;
use domain::identity::tenant::TenantEvent;
use domain::identity::user::UserEvent;
use proto::{ConvertError, EventRecord, TypedEvent, v1};
use serde_json::json;
use uuid::Uuid;

fn tenant_created() -> v1::TenantCreated {
    let event = TenantEvent::TenantCreated {
        tenant_id: domain::identity::values::TenantId::from_uuid(Uuid::from_u128(1)),
        name: domain::identity::values::TenantName::parse("Acme").unwrap(),
        plan: domain::identity::values::PlanRef::parse("starter").unwrap(),
        owner: domain::identity::values::UserId::from_uuid(Uuid::from_u128(2)),
        created_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    };
    match v1::TenantEvent::from(event).event {
        Some(v1::tenant_event::Event::TenantCreated(message)) => message,
        other => panic!("{other:?}"),
    }
}

fn tenant(message: v1::TenantCreated) -> Result<TenantEvent, ConvertError> {
    TenantEvent::try_from(v1::TenantEvent {
        event: Some(v1::tenant_event::Event::TenantCreated(message)),
    })
}

#[test]
fn names_a_missing_time() {
    let message = v1::TenantCreated {
        created_at: None,
        ..tenant_created()
    };
    assert_eq!(
        tenant(message),
        Err(ConvertError::Missing("TenantCreated.created_at"))
    );
}

#[test]
fn names_a_missing_event_case() {
    assert_eq!(
        TenantEvent::try_from(v1::TenantEvent { event: None }),
        Err(ConvertError::Missing("TenantEvent.event"))
    );
}

#[test]
fn names_a_value_the_domain_refuses() {
    let err = tenant(v1::TenantCreated {
        plan: "Not A Slug".into(),
        ..tenant_created()
    })
    .unwrap_err();
    assert!(matches!(
        err,
        ConvertError::Invalid {
            field: "TenantCreated.plan",
            ..
        }
    ));
    let err = tenant(v1::TenantCreated {
        tenant_id: "acme".into(),
        ..tenant_created()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`TenantCreated.tenant_id` is invalid: \"acme\": tenant id is not a UUID"
    );
}

#[test]
fn refuses_a_digest_that_is_not_32_bytes() {
    let err = UserEvent::try_from(v1::UserEvent {
        event: Some(v1::user_event::Event::RecoveryCodeUsed(
            v1::RecoveryCodeUsed { code: vec![0; 31] },
        )),
    })
    .unwrap_err();
    assert_eq!(
        err,
        ConvertError::Invalid {
            field: "RecoveryCodeUsed.code",
            problem: "holds 31 bytes where a SHA-256 digest has 32".into(),
        }
    );
}

#[test]
fn refuses_an_unspecified_or_unknown_reason() {
    let revoked = |reason: i32| {
        SessionEvent::try_from(v1::SessionEvent {
            event: Some(v1::session_event::Event::SessionRevoked(
                v1::SessionRevoked {
                    reason,
                    revoked_at: Some(prost_types::Timestamp::default()),
                },
            )),
        })
    };
    assert_eq!(
        revoked(0),
        Err(ConvertError::Missing("SessionRevoked.reason"))
    );
    assert!(matches!(
        revoked(99),
        Err(ConvertError::Invalid {
            field: "SessionRevoked.reason",
            ..
        })
    ));
}

#[test]
fn refuses_a_principal_without_a_kind() {
    let err = TenantEvent::try_from(v1::TenantEvent {
        event: Some(v1::tenant_event::Event::MemberRemoved(v1::MemberRemoved {
            principal: Some(v1::Principal { kind: None }),
            removed_at: Some(prost_types::Timestamp::default()),
        })),
    })
    .unwrap_err();
    assert_eq!(err, ConvertError::Missing("MemberRemoved.principal"));
}

#[test]
fn refuses_an_unknown_permission_by_name() {
    let err = TenantEvent::try_from(v1::TenantEvent {
        event: Some(v1::tenant_event::Event::RoleDefined(v1::RoleDefined {
            name: "support".into(),
            permissions: vec!["tenants:read".into(), "moon:land".into()],
            defined_at: Some(prost_types::Timestamp::default()),
        })),
    })
    .unwrap_err();
    assert!(err.to_string().contains("moon:land"), "{err}");
}

#[test]
fn a_payload_that_is_not_the_named_event_is_refused() {
    let payload = json!({"EmailVerified": {"verified_at": "2026-11-22T01:04:41.123456Z"}});
    assert!(matches!(
        TypedEvent::from_json("User", "EmailVerified", "1", &payload),
        Ok(Some(TypedEvent::User(UserEvent::EmailVerified { .. })))
    ));
    let err = TypedEvent::from_json("User", "PasswordChanged", "1", &payload).unwrap_err();
    assert!(
        err.to_string().contains("it holds a EmailVerified event"),
        "{err}"
    );
    let err = TypedEvent::from_json("User", "EmailVerified", "2", &payload).unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    assert!(TypedEvent::from_json("Tenant", "EmailVerified", "1", &payload).is_err());
    assert_eq!(
        TypedEvent::from_json("Wallet", "Deposited", "1", &payload),
        Ok(None)
    );
}

#[test]
fn metadata_that_is_not_an_object_of_strings_is_refused() {
    let record = EventRecord {
        global_position: 1,
        event_id: Uuid::from_u128(1),
        aggregate_type: "Wallet".into(),
        aggregate_id: "w-1".into(),
        sequence: 1,
        event_type: "Opened".into(),
        event_version: "1".into(),
        tenant_id: None,
        recorded_at: DateTime::<Utc>::from_timestamp(0, 0).unwrap(),
        payload: json!({}),
        metadata: json!({"actor_id": 7}),
        prev_hash: [0; 32],
        tenant_prev_hash: [0; 32],
        hash: [0; 32],
    };
    let err = v1::EventEnvelope::from_record(record, Vec::new()).unwrap_err();
    assert!(matches!(
        err,
        ConvertError::Invalid {
            field: "EventRecord.metadata",
            ..
        }
    ));
}
