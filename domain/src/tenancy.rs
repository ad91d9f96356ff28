//! Which tenant an aggregate belongs to.
//!
//! Every event is recorded in the hash chain of one tenant, or in the platform-level chain.
//! The aggregate is the authority on which: a session belongs to its user's tenant whoever
//! ends it, and a tenant's own events belong to it from the moment it is created. The
//! application layer stamps each event with the tenant its aggregate names, and refuses a
//! command whose metadata names another tenant.

use uuid::Uuid;

/// An aggregate that may belong to a tenant.
pub trait Tenanted {
    /// The tenant this aggregate belongs to, once its state says so; `None` for an
    /// aggregate that belongs to no tenant (or has not been created).
    fn tenant_uuid(&self) -> Option<Uuid>;
}

impl Tenanted for crate::identity::tenant::Tenant {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.id().map(|id| id.as_uuid())
    }
}

impl Tenanted for crate::identity::user::User {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.tenant().map(|id| id.as_uuid())
    }
}

impl Tenanted for crate::identity::session::Session {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.tenant().map(|id| id.as_uuid())
    }
}

impl Tenanted for crate::identity::api_key::ApiKey {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.tenant().map(|id| id.as_uuid())
    }
}

impl Tenanted for crate::identity::service_account::ServiceAccount {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.tenant().map(|id| id.as_uuid())
    }
}

impl Tenanted for crate::identity::email_claim::EmailClaim {
    fn tenant_uuid(&self) -> Option<Uuid> {
        self.tenant().map(|id| id.as_uuid())
    }
}
