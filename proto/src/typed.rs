//! The domain side of the envelope's typed payload: one event of any aggregate the contracts
//! cover, and its JSON form as the log stores it.

use commands::idempotency::{IdempotencyEvent, IdempotencyRecord};
use cqrs_es::{Aggregate, DomainEvent};
use domain::identity::api_key::{ApiKey, ApiKeyEvent};
use domain::identity::email_claim::{EmailClaim, EmailClaimEvent};
use domain::identity::service_account::{ServiceAccount, ServiceAccountEvent};
use domain::identity::session::{Session, SessionEvent};
use domain::identity::tenant::{Tenant, TenantEvent};
use domain::identity::user::{User, UserEvent};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ConvertError;
use crate::v1::event_envelope::Payload;

/// An event of one of the aggregates that `platform.events.v1` types.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TypedEvent {
    /// An event of a `Tenant`.
    Tenant(TenantEvent),
    /// An event of a `User`.
    User(UserEvent),
    /// An event of a `Session`.
    Session(SessionEvent),
    /// An event of an `ApiKey`.
    ApiKey(ApiKeyEvent),
    /// An event of a `ServiceAccount`.
    ServiceAccount(ServiceAccountEvent),
    /// An event of an `EmailClaim`.
    EmailClaim(EmailClaimEvent),
    /// An event of an `IdempotencyRecord`.
    Idempotency(IdempotencyEvent),
}

impl TypedEvent {
    /// The aggregate types whose events have typed messages.
    pub const AGGREGATE_TYPES: &'static [&'static str] = &[
        Tenant::TYPE,
        User::TYPE,
        Session::TYPE,
        ApiKey::TYPE,
        ServiceAccount::TYPE,
        EmailClaim::TYPE,
        IdempotencyRecord::TYPE,
    ];

    /// The aggregate type this event belongs to, as the log's `aggregate_type` names it.
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            Self::Tenant(_) => Tenant::TYPE,
            Self::User(_) => User::TYPE,
            Self::Session(_) => Session::TYPE,
            Self::ApiKey(_) => ApiKey::TYPE,
            Self::ServiceAccount(_) => ServiceAccount::TYPE,
            Self::EmailClaim(_) => EmailClaim::TYPE,
            Self::Idempotency(_) => IdempotencyRecord::TYPE,
        }
    }

    /// The event's type name, as the log's `event_type` names it.
    pub fn event_type(&self) -> String {
        match self {
            Self::Tenant(event) => event.event_type(),
            Self::User(event) => event.event_type(),
            Self::Session(event) => event.event_type(),
            Self::ApiKey(event) => event.event_type(),
            Self::ServiceAccount(event) => event.event_type(),
            Self::EmailClaim(event) => event.event_type(),
            Self::Idempotency(event) => event.event_type(),
        }
    }

    /// The event's schema version, as the log's `event_version` names it.
    pub fn event_version(&self) -> String {
        match self {
            Self::Tenant(event) => event.event_version(),
            Self::User(event) => event.event_version(),
            Self::Session(event) => event.event_version(),
            Self::ApiKey(event) => event.event_version(),
            Self::ServiceAccount(event) => event.event_version(),
            Self::EmailClaim(event) => event.event_version(),
            Self::Idempotency(event) => event.event_version(),
        }
    }

    /// Decodes a record's JSON payload. `Ok(None)` for an aggregate type the contracts do
    /// not type; an error if the payload is not an event of the aggregate type, the event
    /// type and the version that the record names.
    pub fn from_json(
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &Value,
    ) -> Result<Option<Self>, ConvertError> {
        let decoded = match aggregate_type {
            Tenant::TYPE => TenantEvent::deserialize(payload).map(Self::Tenant),
            User::TYPE => UserEvent::deserialize(payload).map(Self::User),
            Session::TYPE => SessionEvent::deserialize(payload).map(Self::Session),
            ApiKey::TYPE => ApiKeyEvent::deserialize(payload).map(Self::ApiKey),
            ServiceAccount::TYPE => {
                ServiceAccountEvent::deserialize(payload).map(Self::ServiceAccount)
            }
            EmailClaim::TYPE => EmailClaimEvent::deserialize(payload).map(Self::EmailClaim),
            IdempotencyRecord::TYPE => {
                IdempotencyEvent::deserialize(payload).map(Self::Idempotency)
            }
            _ => return Ok(None),
        };
        Self::checked(aggregate_type, event_type, event_version, decoded)
    }

    /// [`TypedEvent::from_json`] from the payload's JSON text, decoded straight into the
    /// domain event without an intermediate `Value`.
    pub fn from_json_text(
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &str,
    ) -> Result<Option<Self>, ConvertError> {
        let mut reader = serde_json::Deserializer::from_str(payload);
        let decoded = match aggregate_type {
            Tenant::TYPE => TenantEvent::deserialize(&mut reader).map(Self::Tenant),
            User::TYPE => UserEvent::deserialize(&mut reader).map(Self::User),
            Session::TYPE => SessionEvent::deserialize(&mut reader).map(Self::Session),
            ApiKey::TYPE => ApiKeyEvent::deserialize(&mut reader).map(Self::ApiKey),
            ServiceAccount::TYPE => {
                ServiceAccountEvent::deserialize(&mut reader).map(Self::ServiceAccount)
            }
            EmailClaim::TYPE => EmailClaimEvent::deserialize(&mut reader).map(Self::EmailClaim),
            IdempotencyRecord::TYPE => {
                IdempotencyEvent::deserialize(&mut reader).map(Self::Idempotency)
            }
            _ => return Ok(None),
        };
        let decoded = decoded.and_then(|event| reader.end().map(|()| event));
        Self::checked(aggregate_type, event_type, event_version, decoded)
    }

    fn checked(
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        decoded: Result<Self, serde_json::Error>,
    ) -> Result<Option<Self>, ConvertError> {
        let problem = |problem: String| ConvertError::Payload {
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
            event_version: event_version.to_owned(),
            problem,
        };
        let event = decoded.map_err(|err| problem(err.to_string()))?;
        let actual = event.event_type();
        if actual != event_type {
            return Err(problem(format!("it holds a {actual} event")));
        }
        let version = event.event_version();
        if version != event_version {
            return Err(problem(format!(
                "these contracts know version {version} of it"
            )));
        }
        Ok(Some(event))
    }

    /// The JSON payload as the log stores it: serde's form of the domain event.
    pub fn to_json(&self) -> Result<Value, ConvertError> {
        match self {
            Self::Tenant(event) => serde_json::to_value(event),
            Self::User(event) => serde_json::to_value(event),
            Self::Session(event) => serde_json::to_value(event),
            Self::ApiKey(event) => serde_json::to_value(event),
            Self::ServiceAccount(event) => serde_json::to_value(event),
            Self::EmailClaim(event) => serde_json::to_value(event),
            Self::Idempotency(event) => serde_json::to_value(event),
        }
        .map_err(|err| ConvertError::Payload {
            aggregate_type: self.aggregate_type().to_owned(),
            event_type: self.event_type(),
            event_version: self.event_version(),
            problem: err.to_string(),
        })
    }
}

impl From<TypedEvent> for Payload {
    fn from(event: TypedEvent) -> Self {
        match event {
            TypedEvent::Tenant(event) => Self::Tenant(event.into()),
            TypedEvent::User(event) => Self::User(event.into()),
            TypedEvent::Session(event) => Self::Session(event.into()),
            TypedEvent::ApiKey(event) => Self::ApiKey(event.into()),
            TypedEvent::ServiceAccount(event) => Self::ServiceAccount(event.into()),
            TypedEvent::EmailClaim(event) => Self::EmailClaim(event.into()),
            TypedEvent::Idempotency(event) => Self::Idempotency(event.into()),
        }
    }
}

impl TryFrom<Payload> for TypedEvent {
    type Error = ConvertError;

    fn try_from(payload: Payload) -> Result<Self, ConvertError> {
        Ok(match payload {
            Payload::Tenant(event) => Self::Tenant(event.try_into()?),
            Payload::User(event) => Self::User(event.try_into()?),
            Payload::Session(event) => Self::Session(event.try_into()?),
            Payload::ApiKey(event) => Self::ApiKey(event.try_into()?),
            Payload::ServiceAccount(event) => Self::ServiceAccount(event.try_into()?),
            Payload::EmailClaim(event) => Self::EmailClaim(event.try_into()?),
            Payload::Idempotency(event) => Self::Idempotency(event.try_into()?),
        })
    }
}
