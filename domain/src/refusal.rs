//! How the domain says no: every aggregate's error is a typed refusal with a stable code and
//! a class that the gateway maps onto `extensions.code`.

/// The class of a refusal, as a caller should react to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The input is malformed or breaks a rule about its own content (a weak password).
    BadInput,
    /// The thing the command is about does not exist (or is not visible to the caller).
    NotFound,
    /// The command conflicts with the current state (the email is taken, the tenant is
    /// closed, the last owner cannot leave).
    Conflict,
    /// The caller may not do this (not enough permissions, a scope beyond the creator's).
    Forbidden,
    /// The credentials presented do not prove who the caller is (a wrong password, a
    /// reused refresh token, a locked account).
    Unauthenticated,
}

impl RefusalKind {
    /// The GraphQL `extensions.code` of this class.
    pub const fn graphql_code(self) -> &'static str {
        match self {
            Self::BadInput => "BAD_USER_INPUT",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::Forbidden => "FORBIDDEN",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A domain error: why an aggregate refused a command.
pub trait Refusal: std::error::Error {
    /// The class of the refusal.
    fn kind(&self) -> RefusalKind;
    /// A stable, machine-readable reason, in `snake_case` (`email_taken`, `last_owner`).
    fn reason(&self) -> &'static str;
}
