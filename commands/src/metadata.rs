//! The metadata every command carries into the events it produces.
//!
//! cqrs-es stores metadata as a map of strings beside each event. [`CommandMetadata`] is the
//! typed view of that map: [`CommandMetadata::to_map`] produces it for
//! `CqrsFramework::execute_with_metadata`, and [`CommandMetadata::from_map`] reads it back.
//! The keys are part of the event record's contract (docs/event-store.md); the event store
//! also copies `tenant_id` into the `tenant_id` column of every event.

use std::collections::HashMap;
use std::net::IpAddr;

use domain::ActorKind;
use domain::personal::PersonalData;
use uuid::Uuid;

/// Metadata key: the id of the principal that issued the command.
pub const ACTOR_ID: &str = "actor_id";
/// Metadata key: the [`ActorKind`] of that principal.
pub const ACTOR_KIND: &str = "actor_kind";
/// Metadata key: the tenant the command acts in; absent for platform-level commands.
pub const TENANT_ID: &str = "tenant_id";
/// Metadata key: the id of the request that carried the command.
pub const REQUEST_ID: &str = "request_id";
/// Metadata key: the id shared by every command and event of one piece of work.
pub const CORRELATION_ID: &str = "correlation_id";
/// Metadata key: the id of the message (command or event) that caused this command.
pub const CAUSATION_ID: &str = "causation_id";
/// Metadata key: the caller's idempotency key, when the request had one.
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
/// Metadata key: the `User-Agent` of the request, when it had one (at most 256 characters),
/// sealed as personal data of the person the command concerns, like the client IP: it is
/// free text a client chooses, and with the IP it singles a person out.
pub const USER_AGENT: &str = "user_agent";
/// Metadata key: the IP address the request came from, when known, sealed as personal data
/// of the person the command concerns (a JSON `PersonalData` in the string).
pub const CLIENT_IP: &str = "client_ip";

/// The IP address a request came from. It is personal data: it reaches the log only
/// sealed under the key of the person the command concerns, which the application layer
/// does before the command runs; a plain address is never written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIp {
    /// As the request arrived; not yet sealed.
    Plain(IpAddr),
    /// Sealed, ready to be stored.
    Sealed(PersonalData),
}

/// The `User-Agent` a request carried. Personal data, handled like [`ClientIp`]: it reaches
/// the log only sealed under the key of the person the command concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAgent {
    /// As the request sent it (at most 256 characters are kept); not yet sealed.
    Plain(String),
    /// Sealed, ready to be stored.
    Sealed(PersonalData),
}

impl UserAgent {
    /// The most characters of a `User-Agent` that are kept.
    pub const MAX_CHARS: usize = 256;

    /// A request's `User-Agent`, cut to [`UserAgent::MAX_CHARS`].
    pub fn plain(text: &str) -> Self {
        Self::Plain(text.chars().take(Self::MAX_CHARS).collect())
    }
}

/// Who issued a command, for whom, and as part of what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandMetadata {
    /// The principal's id (a user, a service account, or a fixed id for the system).
    pub actor_id: String,
    /// What kind of principal it is.
    pub actor_kind: ActorKind,
    /// The tenant the command acts in, or `None` for a platform-level command.
    pub tenant_id: Option<Uuid>,
    /// The id of the request that carried the command.
    pub request_id: Uuid,
    /// Shared by every command and event of one piece of work; a new chain starts with the
    /// request id.
    pub correlation_id: Uuid,
    /// The command or event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The caller's idempotency key, if the request carried one.
    pub idempotency_key: Option<String>,
    /// Where the request came from, if known.
    pub client_ip: Option<ClientIp>,
    /// The software that sent the request, if it said.
    pub user_agent: Option<UserAgent>,
}

/// A metadata map that cannot be read as [`CommandMetadata`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A required key is absent.
    #[error("command metadata lacks `{0}`")]
    Missing(&'static str),
    /// A key holds a value of the wrong shape.
    #[error("command metadata `{key}` is not a valid {expected}: {value:?}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What the value should have been.
        expected: &'static str,
        /// What it was.
        value: String,
    },
}

impl CommandMetadata {
    /// Metadata for a command that starts a new piece of work: the correlation id is the
    /// request id, and nothing caused it.
    pub fn new(
        actor_id: impl Into<String>,
        actor_kind: ActorKind,
        tenant_id: Option<Uuid>,
    ) -> Self {
        let request_id = Uuid::now_v7();
        Self {
            actor_id: actor_id.into(),
            actor_kind,
            tenant_id,
            request_id,
            correlation_id: request_id,
            causation_id: None,
            idempotency_key: None,
            client_ip: None,
            user_agent: None,
        }
    }

    /// The string map that cqrs-es stores beside each event. Absent optional values are left
    /// out rather than stored empty, and so are a client IP and a user agent that are not
    /// sealed: neither reaches the log in plaintext (the command bus refuses to commit with
    /// one).
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(8);
        map.insert(ACTOR_ID.to_owned(), self.actor_id.clone());
        map.insert(ACTOR_KIND.to_owned(), self.actor_kind.as_str().to_owned());
        if let Some(tenant) = self.tenant_id {
            map.insert(TENANT_ID.to_owned(), tenant.to_string());
        }
        map.insert(REQUEST_ID.to_owned(), self.request_id.to_string());
        map.insert(CORRELATION_ID.to_owned(), self.correlation_id.to_string());
        if let Some(causation) = self.causation_id {
            map.insert(CAUSATION_ID.to_owned(), causation.to_string());
        }
        if let Some(key) = &self.idempotency_key {
            map.insert(IDEMPOTENCY_KEY.to_owned(), key.clone());
        }
        if let Some(UserAgent::Sealed(sealed)) = &self.user_agent
            && let Ok(json) = serde_json::to_string(sealed)
        {
            map.insert(USER_AGENT.to_owned(), json);
        }
        if let Some(ClientIp::Sealed(sealed)) = &self.client_ip
            && let Ok(json) = serde_json::to_string(sealed)
        {
            map.insert(CLIENT_IP.to_owned(), json);
        }
        map
    }

    /// Reads the typed metadata back from a stored map.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let required = |key: &'static str| map.get(key).ok_or(MetadataError::Missing(key));
        let uuid = |key: &'static str, value: &String| {
            Uuid::parse_str(value).map_err(|_| MetadataError::Invalid {
                key,
                expected: "UUID",
                value: value.clone(),
            })
        };
        let actor_kind = required(ACTOR_KIND)?;
        Ok(Self {
            actor_id: required(ACTOR_ID)?.clone(),
            actor_kind: actor_kind.parse().map_err(|_| MetadataError::Invalid {
                key: ACTOR_KIND,
                expected: "actor kind",
                value: actor_kind.clone(),
            })?,
            tenant_id: map.get(TENANT_ID).map(|v| uuid(TENANT_ID, v)).transpose()?,
            request_id: uuid(REQUEST_ID, required(REQUEST_ID)?)?,
            correlation_id: uuid(CORRELATION_ID, required(CORRELATION_ID)?)?,
            causation_id: map
                .get(CAUSATION_ID)
                .map(|v| uuid(CAUSATION_ID, v))
                .transpose()?,
            idempotency_key: map.get(IDEMPOTENCY_KEY).cloned(),
            user_agent: map
                .get(USER_AGENT)
                .map(|v| {
                    serde_json::from_str::<PersonalData>(v)
                        .map(UserAgent::Sealed)
                        .map_err(|_| MetadataError::Invalid {
                            key: USER_AGENT,
                            expected: "sealed user agent",
                            value: v.clone(),
                        })
                })
                .transpose()?,
            client_ip: map
                .get(CLIENT_IP)
                .map(|v| {
                    serde_json::from_str::<PersonalData>(v)
                        .map(ClientIp::Sealed)
                        .map_err(|_| MetadataError::Invalid {
                            key: CLIENT_IP,
                            expected: "sealed IP address",
                            value: v.clone(),
                        })
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_survives_the_string_map() {
        let mut meta = CommandMetadata::new("user-1", ActorKind::User, Some(Uuid::now_v7()));
        meta.causation_id = Some(Uuid::now_v7());
        meta.idempotency_key = Some("key-1".into());
        meta.user_agent = Some(UserAgent::Sealed(PersonalData::from_sealed(
            domain::personal::SubjectId::from_uuid(Uuid::now_v7()),
            "c2VhbGVkIGFnZW50".into(),
        )));
        meta.client_ip = Some(ClientIp::Sealed(PersonalData::from_sealed(
            domain::personal::SubjectId::from_uuid(Uuid::now_v7()),
            "c2VhbGVk".into(),
        )));
        assert_eq!(CommandMetadata::from_map(&meta.to_map()), Ok(meta));
    }

    #[test]
    fn a_plain_client_ip_is_never_written() {
        let mut meta = CommandMetadata::new("user-1", ActorKind::User, None);
        meta.client_ip = Some(ClientIp::Plain("192.0.2.7".parse().unwrap()));
        let map = meta.to_map();
        assert!(!map.contains_key(CLIENT_IP));
        assert!(!map.values().any(|v| v.contains("192.0.2.7")));
    }

    #[test]
    fn a_plain_user_agent_is_never_written() {
        let mut meta = CommandMetadata::new("user-1", ActorKind::User, None);
        meta.user_agent = Some(UserAgent::plain("curl/8.5.0 (ada@example.org)"));
        let map = meta.to_map();
        assert!(!map.contains_key(USER_AGENT));
        assert!(
            !map.values()
                .any(|v| v.contains("curl") || v.contains("ada@"))
        );
    }

    #[test]
    fn a_user_agent_is_cut_to_256_characters() {
        let long = "x".repeat(300);
        assert_eq!(UserAgent::plain(&long), UserAgent::Plain("x".repeat(256)));
    }

    #[test]
    fn platform_level_metadata_has_no_tenant_key() {
        let meta = CommandMetadata::new("system", ActorKind::System, None);
        let map = meta.to_map();
        assert!(!map.contains_key(TENANT_ID));
        assert_eq!(CommandMetadata::from_map(&map), Ok(meta));
    }

    #[test]
    fn names_the_key_that_is_not_a_uuid() {
        let mut map = CommandMetadata::new("u", ActorKind::User, None).to_map();
        map.insert(TENANT_ID.into(), "acme".into());
        let err = CommandMetadata::from_map(&map).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command metadata `tenant_id` is not a valid UUID: \"acme\""
        );
    }

    #[test]
    fn names_the_missing_key() {
        let mut map = CommandMetadata::new("u", ActorKind::User, None).to_map();
        map.remove(ACTOR_ID);
        assert_eq!(
            CommandMetadata::from_map(&map),
            Err(MetadataError::Missing(ACTOR_ID))
        );
    }
}
