//! Who is acting: the kinds of principal that can issue a command.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of principal behind a command, recorded with every event it produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ActorKind {
    /// A person signed in with a session.
    User,
    /// A machine identity acting with an API key.
    ServiceAccount,
    /// The platform itself: process managers, schedulers, webhooks from providers.
    System,
    /// Nobody is signed in (registration, login).
    Anonymous,
}

impl ActorKind {
    /// The stable name used in event metadata.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServiceAccount => "service_account",
            Self::System => "system",
            Self::Anonymous => "anonymous",
        }
    }
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no [`ActorKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown actor kind `{0}`: expected user, service_account, system or anonymous")]
pub struct UnknownActorKind(pub String);

impl FromStr for ActorKind {
    type Err = UnknownActorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Self::User),
            "service_account" => Ok(Self::ServiceAccount),
            "system" => Ok(Self::System),
            "anonymous" => Ok(Self::Anonymous),
            other => Err(UnknownActorKind(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_kind_survives_its_name() {
        for kind in [
            ActorKind::User,
            ActorKind::ServiceAccount,
            ActorKind::System,
            ActorKind::Anonymous,
        ] {
            assert_eq!(kind.as_str().parse::<ActorKind>(), Ok(kind));
        }
    }

    #[test]
    fn rejects_an_unknown_actor_kind_by_name() {
        let err = "robot".parse::<ActorKind>().unwrap_err();
        assert!(err.to_string().contains("robot"));
    }
}
