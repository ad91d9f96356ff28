//! Every event survives domain -> protobuf (through its wire bytes) -> domain unchanged, and
//! every event's JSON payload decodes to the same typed event.

use std::collections::BTreeSet;

use cqrs_es::DomainEvent;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message;
use proto::{TypedEvent, v1};

use crate::strategies::*;

/// The domain event -> its message -> wire bytes -> message -> the domain event.
fn through_the_wire<D, M>(event: &D) -> D
where
    D: Clone + Into<M> + TryFrom<M, Error = proto::ConvertError>,
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let message: M = event.clone().into();
    let decoded = M::decode(message.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, message);
    D::try_from(decoded).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_tenant_event_survives_protobuf(event in tenant_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::TenantEvent>(&event), event);
    }

    #[test]
    fn a_user_event_survives_protobuf(event in user_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::UserEvent>(&event), event);
    }

    #[test]
    fn a_session_event_survives_protobuf(event in session_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::SessionEvent>(&event), event);
    }

    #[test]
    fn an_api_key_event_survives_protobuf(event in api_key_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::ApiKeyEvent>(&event), event);
    }

    #[test]
    fn a_service_account_event_survives_protobuf(event in service_account_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::ServiceAccountEvent>(&event), event);
    }

    #[test]
    fn an_email_claim_event_survives_protobuf(event in email_claim_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::EmailClaimEvent>(&event), event);
    }

    #[test]
    fn an_idempotency_event_survives_protobuf(event in idempotency_event()) {
        prop_assert_eq!(through_the_wire::<_, v1::IdempotencyEvent>(&event), event);
    }

    /// The payload `oneof` of the envelope carries any typed event, and the event's JSON as
    /// the log stores it decodes to the same event, with the record's names checked.
    #[test]
    fn any_event_survives_the_payload_oneof_and_its_json(event in typed_event()) {
        let payload = v1::event_envelope::Payload::from(event.clone());
        prop_assert_eq!(TypedEvent::try_from(payload).unwrap(), event.clone());

        let json = event.to_json().unwrap();
        let decoded = TypedEvent::from_json(
            event.aggregate_type(),
            &event.event_type(),
            &event.event_version(),
            &json,
        )
        .unwrap();
        prop_assert_eq!(decoded, Some(event));
    }
}

/// Collects the event types a strategy produces over many draws.
fn event_types<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    name: impl Fn(&T) -> String,
) -> BTreeSet<String> {
    let mut runner = TestRunner::deterministic();
    (0..4000)
        .map(|_| name(&strategy.new_tree(&mut runner).unwrap().current()))
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

/// The laws above hold for every variant only if the strategies draw every variant.
#[test]
fn the_strategies_draw_every_variant_of_every_event_enum() {
    assert_eq!(
        event_types(tenant_event(), DomainEvent::event_type),
        names(&[
            "TenantCreated",
            "TenantRenamed",
            "PlanChanged",
            "TenantSuspended",
            "TenantReactivated",
            "TenantClosed",
            "MemberAdded",
            "MemberRemoved",
            "RoleAssigned",
            "RoleUnassigned",
            "RoleDefined",
            "RoleRedefined",
            "RoleDeleted",
        ])
    );
    assert_eq!(
        event_types(user_event(), DomainEvent::event_type),
        names(&[
            "UserRegistered",
            "UserInvited",
            "InvitationAccepted",
            "EmailVerificationIssued",
            "EmailVerified",
            "EmailChanged",
            "PasswordChanged",
            "UserDeactivated",
            "LoginFailed",
            "AccountLocked",
            "LoginSucceeded",
            "TotpEnrollmentStarted",
            "TotpConfirmed",
            "TotpCodeUsed",
            "RecoveryCodeUsed",
            "MfaDisabled",
            "AllSessionsRevoked",
            "SubjectForgotten",
        ])
    );
    assert_eq!(
        event_types(session_event(), DomainEvent::event_type),
        names(&[
            "SessionOpened",
            "RefreshTokenRotated",
            "RefreshTokenReused",
            "SessionRevoked",
            "SessionEnded",
            "SessionExpired",
        ])
    );
    assert_eq!(
        event_types(api_key_event(), DomainEvent::event_type),
        names(&["ApiKeyCreated", "ApiKeyRevoked"])
    );
    assert_eq!(
        event_types(service_account_event(), DomainEvent::event_type),
        names(&[
            "ServiceAccountCreated",
            "ServiceAccountRenamed",
            "ServiceAccountDisabled",
            "ServiceAccountEnabled",
            "ClientSecretIssued",
            "ClientSecretRevoked",
        ])
    );
    assert_eq!(
        event_types(email_claim_event(), DomainEvent::event_type),
        names(&["EmailClaimed", "EmailReleased"])
    );
    assert_eq!(
        event_types(idempotency_event(), DomainEvent::event_type),
        names(&["CommandRecorded"])
    );
    let aggregates = event_types(typed_event(), |event| event.aggregate_type().to_owned());
    assert_eq!(aggregates, names(TypedEvent::AGGREGATE_TYPES));
}
