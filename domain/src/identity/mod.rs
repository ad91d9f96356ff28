//! Identity and access: tenants, users, credentials, sessions, MFA, API keys, service
//! accounts and roles.

pub mod credentials;
pub mod principal;
pub mod rbac;
pub mod values;
