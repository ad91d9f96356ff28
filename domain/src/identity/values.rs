//! The value types of identity, parsed once at the edge: ids, email addresses, names and
//! plan references. A value of one of these types is valid by construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an id made by the caller (the application layer makes UUID v7s).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The id.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text.trim())
                    .map(Self)
                    .map_err(|_| InvalidValue::new($what, "is not a UUID"))
            }
        }
    };
}

id_type!(
    /// A tenant (an organisation).
    TenantId,
    "tenant id"
);
id_type!(
    /// A user: a person, in one tenant.
    UserId,
    "user id"
);
id_type!(
    /// A login session and its refresh-token family.
    SessionId,
    "session id"
);
id_type!(
    /// An API key.
    ApiKeyId,
    "API key id"
);
id_type!(
    /// A service account: a machine identity in one tenant.
    ServiceAccountId,
    "service account id"
);

/// A value that does not parse; the message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidValue {
    /// The field, as a user would call it (`email`, `tenant name`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidValue {
    /// A parse failure of `field`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// An email address, trimmed and lowercased. Two addresses that differ only in case are the
/// same address here (the uniqueness rule relies on it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// The longest address accepted (RFC 5321's limit on a forward path).
    pub const MAX_LENGTH: usize = 254;

    /// Parses an address of the form `local@domain`: one `@`, a local part of 1 to 64
    /// printable characters without spaces, and a domain of at least two dot-separated
    /// labels of letters, digits and inner hyphens.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        let bad = |problem: &str| InvalidValue::new("email", problem);
        let address = input.trim().to_lowercase();
        if address.is_empty() {
            return Err(bad("is empty"));
        }
        if address.chars().count() > Self::MAX_LENGTH {
            return Err(bad("is longer than 254 characters"));
        }
        let Some((local, domain)) = address.split_once('@') else {
            return Err(bad("has no `@`"));
        };
        if domain.contains('@') {
            return Err(bad("has more than one `@`"));
        }
        if local.is_empty() {
            return Err(bad("has nothing before the `@`"));
        }
        if local.chars().count() > 64 {
            return Err(bad("has more than 64 characters before the `@`"));
        }
        if local.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '"' | '(' | ')' | ',' | ':' | ';' | '<' | '>' | '[' | '\\' | ']'
                )
        }) {
            return Err(bad("has a space or a character not allowed before the `@`"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(bad("has a misplaced `.` before the `@`"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(bad("has a domain without a `.`"));
        }
        for label in &labels {
            let valid = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(bad(
                    "has a domain part that is not letters, digits and inner hyphens",
                ));
            }
        }
        Ok(Self(address))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map_or("", |(local, _)| local)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Personal data: kept out of logs.
        f.write_str("Email(..)")
    }
}

/// A text field with bounds: trimmed, 1 to `max` characters, no control characters.
fn bounded_text(field: &'static str, input: &str, max: usize) -> Result<String, InvalidValue> {
    let text = input.trim();
    if text.is_empty() {
        return Err(InvalidValue::new(field, "is empty"));
    }
    let length = text.chars().count();
    if length > max {
        return Err(InvalidValue::new(
            field,
            format!("has {length} characters; at most {max} are allowed"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidValue::new(field, "contains a control character"));
    }
    Ok(text.to_owned())
}

/// A person's display name.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    /// Trimmed, 1 to 200 characters, no control characters.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        bounded_text("name", input, 200).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonName(..)")
    }
}

/// A tenant's (an organisation's) name. Not personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    /// Trimmed, 1 to 100 characters, no control characters.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        bounded_text("tenant name", input, 100).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantName {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantName> for String {
    fn from(name: TenantName) -> Self {
        name.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to a billing plan: a lowercase slug such as `free` or `team-2026`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanRef(String);

impl PlanRef {
    /// 1 to 64 characters: lowercase ASCII letters, digits and hyphens, starting with a
    /// letter.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        let text = input.trim();
        let valid = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidValue::new(
                "plan",
                "must be 1 to 64 lowercase letters, digits and hyphens, starting with a letter",
            ))
        }
    }

    /// The plan's slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlanRef {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PlanRef> for String {
    fn from(plan: PlanRef) -> Self {
        plan.0
    }
}

impl fmt::Display for PlanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keyed blind index of a normalised email address within a tenant: what uniqueness and
/// login-by-email look up, without the address itself. Made by the `commands` crate
/// (HMAC-SHA-256 under a configured key); 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailIndex(String);

impl EmailIndex {
    /// Accepts 64 lowercase hex digits.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        if input.len() == 64
            && input
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            Ok(Self(input.to_owned()))
        } else {
            Err(InvalidValue::new(
                "email index",
                "is not 64 lowercase hex digits",
            ))
        }
    }

    /// The index from its digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailIndex {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailIndex> for String {
    fn from(index: EmailIndex) -> Self {
        index.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_trimmed_and_lowercased() {
        let email = Email::parse("  Ada.Lovelace@Example.ORG ").unwrap();
        assert_eq!(email.as_str(), "ada.lovelace@example.org");
        assert_eq!(email.local_part(), "ada.lovelace");
    }

    #[test]
    fn an_email_refusal_names_the_problem() {
        for (input, problem) in [
            ("", "is empty"),
            ("ada", "has no `@`"),
            ("a@b@example.org", "has more than one `@`"),
            ("@example.org", "has nothing before the `@`"),
            ("ada lovelace@example.org", "has a space"),
            ("ada@localhost", "has a domain without a `.`"),
            ("ada@-example.org", "has a domain part"),
            ("ada@exa_mple.org", "has a domain part"),
            (".ada@example.org", "misplaced `.`"),
        ] {
            let err = Email::parse(input).unwrap_err();
            assert_eq!(err.field, "email");
            assert!(
                err.to_string().contains(problem),
                "{input:?}: {err} lacks {problem:?}"
            );
        }
        let long = format!("{}@example.org", "a".repeat(65));
        assert!(Email::parse(&long).unwrap_err().problem.contains("64"));
    }

    #[test]
    fn the_debug_form_of_personal_values_hides_them() {
        let email = Email::parse("ada@example.org").unwrap();
        assert!(!format!("{email:?}").contains("ada"));
        let name = PersonName::parse("Ada").unwrap();
        assert!(!format!("{name:?}").contains("Ada"));
    }

    #[test]
    fn names_are_bounded_and_trimmed() {
        assert_eq!(TenantName::parse(" Acme ").unwrap().as_str(), "Acme");
        assert!(TenantName::parse("   ").is_err());
        let err = TenantName::parse(&"x".repeat(101)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant name has 101 characters; at most 100 are allowed"
        );
        assert!(PersonName::parse("Ada\u{7}").is_err());
    }

    #[test]
    fn a_plan_reference_is_a_lowercase_slug() {
        assert_eq!(PlanRef::parse("team-2026").unwrap().as_str(), "team-2026");
        for bad in ["", "Team", "2026", "team_2026", &"a".repeat(65)] {
            assert!(PlanRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_names_itself_when_it_does_not_parse() {
        let err = "nope".parse::<TenantId>().unwrap_err();
        assert_eq!(err.to_string(), "tenant id is not a UUID");
    }
}
