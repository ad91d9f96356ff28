//! Identity and access: tenants, users, credentials, sessions, MFA, API keys, service
//! accounts and roles.

pub mod api_key;
pub mod credentials;
pub mod email_claim;
pub mod principal;
pub mod rbac;
pub mod service_account;
pub mod session;
pub mod tenant;
pub mod user;
pub mod values;
