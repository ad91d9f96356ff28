//! Who can hold roles in a tenant: its users and its service accounts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, ServiceAccountId, UserId};

/// A principal of a tenant. Serialized as `user:<uuid>` or `service_account:<uuid>`, so that
/// it can key a JSON map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Principal {
    /// A person.
    User(UserId),
    /// A machine identity.
    ServiceAccount(ServiceAccountId),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::ServiceAccount(id) => write!(f, "service_account:{id}"),
        }
    }
}

impl FromStr for Principal {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("user", id)) => id.parse().map(Self::User),
            Some(("service_account", id)) => id.parse().map(Self::ServiceAccount),
            _ => Err(InvalidValue::new(
                "principal",
                "must be `user:<uuid>` or `service_account:<uuid>`",
            )),
        }
    }
}

impl TryFrom<String> for Principal {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Principal> for String {
    fn from(principal: Principal) -> Self {
        principal.to_string()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_principal_survives_its_string_form() {
        let id = Uuid::now_v7();
        for principal in [
            Principal::User(UserId::from_uuid(id)),
            Principal::ServiceAccount(ServiceAccountId::from_uuid(id)),
        ] {
            assert_eq!(
                principal.to_string().parse::<Principal>().unwrap(),
                principal
            );
        }
        assert!("group:1".parse::<Principal>().is_err());
        assert_eq!(
            "user:nope".parse::<Principal>().unwrap_err().to_string(),
            "user id is not a UUID"
        );
    }
}
