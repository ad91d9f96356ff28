//! Conversions between the domain's events and their messages: `From` a domain event to its
//! message, which always succeeds, and `TryFrom` a message to the domain event, which checks
//! every field as the domain's own parsers do and names the first one that fails.

mod api_key;
mod email_claim;
mod idempotency;
mod service_account;
mod session;
mod tenant;
mod user;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use domain::identity::credentials::SecretHash;
use domain::identity::principal::Principal;
use domain::identity::rbac::{PermissionSet, RoleRef};
use domain::personal::{PersonalData, SubjectId};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::error::ConvertError;
use crate::v1;

/// A time as a protobuf timestamp. Every instant the domain records (from 1970 to 9999, and
/// earlier) fits; the nanoseconds are kept whole.
pub(crate) fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // Below 2 * 10^9 (chrono counts a leap second in the nanoseconds), so within i32.
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A required time.
pub(crate) fn time(
    field: &'static str,
    value: Option<Timestamp>,
) -> Result<DateTime<Utc>, ConvertError> {
    let value = value.ok_or(ConvertError::Missing(field))?;
    let nanos = u32::try_from(value.nanos)
        .map_err(|_| ConvertError::invalid(field, format!("has negative nanos {}", value.nanos)))?;
    DateTime::from_timestamp(value.seconds, nanos).ok_or_else(|| {
        ConvertError::invalid(
            field,
            format!(
                "{}s {}ns is not a representable time",
                value.seconds, value.nanos
            ),
        )
    })
}

/// An optional time: absent stays absent.
pub(crate) fn optional_time(
    field: &'static str,
    value: Option<Timestamp>,
) -> Result<Option<DateTime<Utc>>, ConvertError> {
    value.map(|value| time(field, Some(value))).transpose()
}

/// A value parsed from its text form by the domain's own parser.
pub(crate) fn parse<T>(field: &'static str, text: &str) -> Result<T, ConvertError>
where
    T: FromStr,
    T::Err: Display,
{
    text.parse()
        .map_err(|err: T::Err| ConvertError::invalid(field, format!("{text:?}: {err}")))
}

/// A value made from an owned string by the domain's own `TryFrom<String>`.
pub(crate) fn from_string<T>(field: &'static str, text: String) -> Result<T, ConvertError>
where
    T: TryFrom<String>,
    T::Error: Display,
{
    let shown = format!("{text:?}");
    T::try_from(text).map_err(|err| ConvertError::invalid(field, format!("{shown}: {err}")))
}

/// A UUID in any of its text forms.
pub(crate) fn uuid(field: &'static str, text: &str) -> Result<Uuid, ConvertError> {
    Uuid::try_parse(text).map_err(|err| ConvertError::invalid(field, format!("{text:?}: {err}")))
}

/// A SHA-256 digest of a secret: exactly 32 bytes.
pub(crate) fn secret_hash(field: &'static str, bytes: &[u8]) -> Result<SecretHash, ConvertError> {
    <[u8; 32]>::try_from(bytes)
        .map(SecretHash::from_bytes)
        .map_err(|_| {
            ConvertError::invalid(
                field,
                format!("holds {} bytes where a SHA-256 digest has 32", bytes.len()),
            )
        })
}

/// The bytes of a secret's digest.
pub(crate) fn secret_hash_bytes(hash: &SecretHash) -> Vec<u8> {
    hash.as_bytes().to_vec()
}

/// A sealed personal field as its message: the sealed form, never opened.
pub(crate) fn sealed_message(data: &PersonalData) -> v1::SealedPersonalData {
    v1::SealedPersonalData {
        subject: data.subject().to_string(),
        sealed: data.sealed().to_owned(),
    }
}

/// A required sealed personal field.
pub(crate) fn sealed(
    field: &'static str,
    value: Option<v1::SealedPersonalData>,
) -> Result<PersonalData, ConvertError> {
    let value = value.ok_or(ConvertError::Missing(field))?;
    let subject = SubjectId::from_uuid(uuid(field, &value.subject)?);
    Ok(PersonalData::from_sealed(subject, value.sealed))
}

/// A principal as its message.
pub(crate) fn principal_message(principal: Principal) -> v1::Principal {
    use v1::principal::Kind;
    let kind = match principal {
        Principal::User(id) => Kind::UserId(id.to_string()),
        Principal::ServiceAccount(id) => Kind::ServiceAccountId(id.to_string()),
    };
    v1::Principal { kind: Some(kind) }
}

/// A required principal.
pub(crate) fn principal(
    field: &'static str,
    value: Option<v1::Principal>,
) -> Result<Principal, ConvertError> {
    use v1::principal::Kind;
    match value.and_then(|value| value.kind) {
        Some(Kind::UserId(id)) => parse(field, &id).map(Principal::User),
        Some(Kind::ServiceAccountId(id)) => parse(field, &id).map(Principal::ServiceAccount),
        None => Err(ConvertError::Missing(field)),
    }
}

/// A permission set as its sorted `resource:action` strings.
pub(crate) fn permission_strings(permissions: PermissionSet) -> Vec<String> {
    permissions
        .iter()
        .map(|permission| permission.as_str().to_owned())
        .collect()
}

/// A permission set from its strings; every string must name a permission.
pub(crate) fn permissions(
    field: &'static str,
    names: &[String],
) -> Result<PermissionSet, ConvertError> {
    names.iter().map(|name| parse(field, name)).collect()
}

/// A set of roles as their sorted names.
pub(crate) fn role_strings(roles: &BTreeSet<RoleRef>) -> Vec<String> {
    roles.iter().map(|role| role.as_str().to_owned()).collect()
}

/// A set of roles from their names.
pub(crate) fn roles(
    field: &'static str,
    names: &[String],
) -> Result<BTreeSet<RoleRef>, ConvertError> {
    names.iter().map(|name| parse(field, name)).collect()
}

/// The case of a `oneof` that must be set.
pub(crate) fn case<T>(field: &'static str, value: Option<T>) -> Result<T, ConvertError> {
    value.ok_or(ConvertError::Missing(field))
}
