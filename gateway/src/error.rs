//! The gateway's one error type. Each error carries a stable `extensions.code` (the list in
//! the design: UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, CONFLICT, BAD_USER_INPUT,
//! RATE_LIMITED, INTERNAL), a message for a person, and where it helps a machine-readable
//! `reason` and the input `field`. An internal failure reaches the client as "internal
//! error" and the request id; its cause goes to the log, never to the client.

use std::time::Duration;

use async_graphql::ErrorExtensions;
use commands::identity::IdentityError;
use domain::RefusalKind;

/// The class of an error, as `extensions.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No credential, or one that does not prove who the caller is.
    Unauthenticated,
    /// The caller is known but lacks the permission.
    Forbidden,
    /// No such thing, or not the caller's to see.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// The input is malformed or breaks a rule.
    BadUserInput,
    /// Too many requests; try again later.
    RateLimited,
    /// Something failed inside the platform.
    Internal,
}

impl Code {
    /// The code as clients see it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::RateLimited => "RATE_LIMITED",
            Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status of a request that failed as a whole with this code.
    pub const fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::BadUserInput => 400,
            Self::RateLimited => 429,
            Self::Internal => 500,
        }
    }
}

/// An error as the gateway answers it.
///
/// It deliberately does not implement `Display`: async-graphql turns any `Display` error
/// into a bare message, and an `ApiError` must keep its `extensions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Its class.
    pub code: Code,
    /// What happened, for a person. Never holds SQL, a stack or a host name.
    pub message: String,
    /// A stable, machine-readable reason, when there is one.
    pub reason: Option<&'static str>,
    /// The input field at fault, when there is one.
    pub field: Option<String>,
    /// When to try again, for RATE_LIMITED.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error of class `code` with `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            field: None,
            retry_after: None,
        }
    }

    /// The same error with a machine-readable reason.
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// No credential, or a credential that proves nothing.
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message).with_reason(reason)
    }

    /// The caller lacks `permission`.
    pub fn forbidden(permission: &str) -> Self {
        Self::new(
            Code::Forbidden,
            format!("this needs the `{permission}` permission"),
        )
        .with_reason("missing_permission")
    }

    /// Nothing the caller may see has that id.
    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("no such {what}")).with_reason("not_found")
    }

    /// The input `field` is wrong: `message` says how.
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Self {
            field: Some(field),
            ..Self::new(Code::BadUserInput, message).with_reason("bad_input")
        }
    }

    /// Too many requests under `policy`; try again after `retry_after`.
    pub fn rate_limited(policy: &str, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                Code::RateLimited,
                format!(
                    "too many requests ({policy}); try again in {} ms",
                    retry_after.as_millis().max(1)
                ),
            )
            .with_reason("rate_limited")
        }
    }

    /// An internal failure. The cause is logged here, with the request id the client sees;
    /// the client gets only "internal error".
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(Code::Internal, "internal error")
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> Self {
        match err {
            IdentityError::BadInput { field, message } => Self::bad_input(field, message),
            IdentityError::Refused {
                kind,
                reason,
                message,
            } => Self::new(code_of(kind), message).with_reason(reason),
            IdentityError::Forbidden(permission) => Self::forbidden(permission.as_str()),
            IdentityError::Unauthenticated { reason, message } => {
                Self::unauthenticated(reason, message)
            }
            IdentityError::Conflict(message) => {
                Self::new(Code::Conflict, message).with_reason("concurrent_change")
            }
            IdentityError::Infrastructure(cause) => Self::internal(cause),
            other => Self::internal(other),
        }
    }
}

/// The code of a domain refusal.
pub fn code_of(kind: RefusalKind) -> Code {
    match kind {
        RefusalKind::BadInput => Code::BadUserInput,
        RefusalKind::NotFound => Code::NotFound,
        RefusalKind::Conflict => Code::Conflict,
        RefusalKind::Forbidden => Code::Forbidden,
        RefusalKind::Unauthenticated => Code::Unauthenticated,
        _ => Code::Conflict,
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        async_graphql::Error::new(err.message.clone()).extend_with(|_, extensions| {
            extensions.set("code", err.code.as_str());
            if let Some(reason) = err.reason {
                extensions.set("reason", reason);
            }
            if let Some(field) = &err.field {
                extensions.set("field", field.as_str());
            }
            if let Some(retry_after) = err.retry_after {
                extensions.set(
                    "retryAfterMs",
                    u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                );
            }
        })
    }
}

/// The result of a resolver.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_tells_the_client_nothing_but_that() {
        let err = ApiError::internal("connection to db.internal:5432 refused: SELECT * FROM users");
        assert_eq!(err.code, Code::Internal);
        assert_eq!(err.message, "internal error");
        let graphql: async_graphql::Error = err.into();
        assert_eq!(graphql.message, "internal error");
    }

    #[test]
    fn refusals_keep_their_class_and_reason() {
        let err: ApiError = IdentityError::Refused {
            kind: RefusalKind::NotFound,
            reason: "tenant_not_found",
            message: "no such tenant".into(),
        }
        .into();
        assert_eq!(err.code, Code::NotFound);
        assert_eq!(err.reason, Some("tenant_not_found"));
        let graphql: async_graphql::Error = err.into();
        let extensions = graphql.extensions.expect("extensions");
        assert_eq!(
            extensions.get("code"),
            Some(&async_graphql::Value::from("NOT_FOUND"))
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let err: ApiError = IdentityError::BadInput {
            field: "email",
            message: "is not an email address".into(),
        }
        .into();
        assert_eq!(err.code, Code::BadUserInput);
        assert_eq!(err.field.as_deref(), Some("email"));
        assert!(err.message.starts_with("email:"), "{}", err.message);
    }
}
