//! Role-based access control: the catalogue of permissions, the built-in roles, the names of
//! custom roles, and the union that gives a principal its effective permissions.
//!
//! The key design decision: a permission is a member of a closed enum, not a free string. Each
//! one is a `resource:action` pair with a stable string, and that string is what events, API
//! key scopes and the API carry; a string outside the catalogue is refused where it enters, so
//! a misspelt grant fails loudly instead of silently granting nothing. Because the catalogue is
//! closed and small (at most 64), a set of permissions is a `u64` bitset: `Copy`, and union and
//! subset checks are one instruction each. The bit positions are internal and never stored;
//! only the strings are. The catalogue is declared once, in the order of its strings, by
//! `permission_catalogue!`, which also builds `Permission::ALL`, so the list cannot miss a
//! variant and sets iterate and serialize in sorted order.
//!
//! Which permissions a request needs, and the rules around granting (no escalation, API key
//! scopes, the last owner) are enforced by the command layer with these types; they are
//! described in `docs/permissions.md`.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares [`Permission`] and its catalogue from one list of `Variant = "resource:action"`.
macro_rules! permission_catalogue {
    (
        $(#[$enum_meta:meta])*
        pub enum Permission {
            $( $(#[$meta:meta])* $variant:ident = $name:literal, )+
        }
    ) => {
        $(#[$enum_meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Permission {
            $( $(#[$meta])* $variant, )+
        }

        impl Permission {
            /// Every permission, in the order of their strings (which is declaration order).
            pub const ALL: &'static [Permission] = &[$(Self::$variant),+];

            /// The stable `resource:action` string, as stored in events and API key scopes.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

permission_catalogue! {
    /// One thing a principal may do in a tenant: a `resource:action` pair.
    ///
    /// The catalogue is closed: [`FromStr`] refuses any other string. The variants are listed
    /// in the order of their strings; keep it so when adding one. The strings are stored in
    /// events, so a string, once released, is never renamed or reused.
    pub enum Permission {
        /// Create API keys, with scopes no wider than the creator's own permissions.
        ApiKeysCreate = "api_keys:create",
        /// List the tenant's API keys (prefix, holder, scopes, last use), never their secrets.
        ApiKeysRead = "api_keys:read",
        /// Revoke any API key of the tenant.
        ApiKeysRevoke = "api_keys:revoke",
        /// Export the tenant's event log with its hash chain, for verification elsewhere.
        AuditExport = "audit:export",
        /// Read the tenant's audit trail: who did what, when, and from where.
        AuditRead = "audit:read",
        /// Manage the billing account: payment methods, billing contact, tax details, provider.
        BillingManage = "billing:manage",
        /// Read the billing account, the subscription and the payment status.
        BillingRead = "billing:read",
        /// Subscribe to the tenant's live stream of events.
        EventsSubscribe = "events:subscribe",
        /// Read and download the tenant's invoices.
        InvoicesRead = "invoices:read",
        /// Erase a person's personal data from the tenant (the right to be forgotten).
        PrivacyForget = "privacy:forget",
        /// Tear down provisioned cloud resources.
        ResourcesDeprovision = "resources:deprovision",
        /// Provision cloud resources, and resize or reconfigure existing ones.
        ResourcesProvision = "resources:provision",
        /// List cloud resources and read their provider, configuration and state.
        ResourcesRead = "resources:read",
        /// Assign roles to users and service accounts, and remove them.
        RolesAssign = "roles:assign",
        /// Define, change and delete the tenant's custom roles.
        RolesManage = "roles:manage",
        /// List the built-in and custom roles, their permissions and who holds them.
        RolesRead = "roles:read",
        /// Create, rename, disable and delete service accounts.
        ServiceAccountsManage = "service_accounts:manage",
        /// List service accounts and their roles.
        ServiceAccountsRead = "service_accounts:read",
        /// List the signed-in sessions of the tenant's users.
        SessionsRead = "sessions:read",
        /// End other users' sessions.
        SessionsRevoke = "sessions:revoke",
        /// Close the tenant for good.
        TenantsClose = "tenants:close",
        /// Choose or change the tenant's plan.
        TenantsManagePlan = "tenants:manage_plan",
        /// Read the tenant's profile, status and settings.
        TenantsRead = "tenants:read",
        /// Suspend the tenant, and reactivate it.
        TenantsSuspend = "tenants:suspend",
        /// Rename the tenant and change its settings.
        TenantsUpdate = "tenants:update",
        /// Read metered usage and its totals.
        UsageRead = "usage:read",
        /// Record usage for metering.
        UsageRecord = "usage:record",
        /// Deactivate users, so they can no longer sign in, and reactivate them.
        UsersDeactivate = "users:deactivate",
        /// Invite people to the tenant by email, and cancel pending invitations.
        UsersInvite = "users:invite",
        /// List the tenant's users and read their profiles and status.
        UsersRead = "users:read",
        /// Change other users' profile details.
        UsersUpdate = "users:update",
    }
}

// A `PermissionSet` is a `u64` with one bit per permission, at the variant's discriminant.
const _: () = assert!(
    Permission::ALL.len() <= 64,
    "PermissionSet holds at most 64 permissions in a u64"
);

impl Permission {
    /// The resource part, before the `:` (`users` in `users:invite`).
    pub fn resource(self) -> &'static str {
        self.as_str()
            .split_once(':')
            .map_or(self.as_str(), |(resource, _)| resource)
    }

    /// The action part, after the `:` (`invite` in `users:invite`).
    pub fn action(self) -> &'static str {
        self.as_str()
            .split_once(':')
            .map_or(self.as_str(), |(_, action)| action)
    }

    /// This permission's bit in a [`PermissionSet`]; the discriminant is below 64 (asserted
    /// above).
    const fn bit(self) -> u64 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Permission`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a known permission")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|permission| permission.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

impl TryFrom<&str> for Permission {
    type Error = UnknownPermission;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::new("a permission such as `users:invite`"))
    }
}

/// A set of permissions. Iterates, and serializes as an array of strings, in sorted order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u64);

impl PermissionSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// The empty set.
    pub const fn new() -> Self {
        Self::EMPTY
    }

    /// Every permission in the catalogue.
    pub const fn all() -> Self {
        Self::of(Permission::ALL)
    }

    /// The set of the given permissions (usable in `const`).
    pub const fn of(permissions: &[Permission]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < permissions.len() {
            bits |= permissions[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Whether the set holds `permission`.
    pub const fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Adds `permission`; returns whether it was new.
    pub fn insert(&mut self, permission: Permission) -> bool {
        let new = !self.contains(permission);
        self.0 |= permission.bit();
        new
    }

    /// Removes `permission`; returns whether it was there.
    pub fn remove(&mut self, permission: Permission) -> bool {
        let present = self.contains(permission);
        self.0 &= !permission.bit();
        present
    }

    /// How many permissions the set holds.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every permission of `self` is in `other`.
    pub const fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// The permissions in either set.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The permissions in both sets.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The permissions of `self` that are not in `other` (what is missing for
    /// `self.is_subset_of(other)`).
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The permissions, in the order of their strings.
    pub fn iter(self) -> Iter {
        Iter { bits: self.0 }
    }
}

/// The permissions of a [`PermissionSet`], in the order of their strings.
#[derive(Clone, Debug)]
pub struct Iter {
    bits: u64,
}

impl Iterator for Iter {
    type Item = Permission;

    fn next(&mut self) -> Option<Permission> {
        while self.bits != 0 {
            let index = self.bits.trailing_zeros() as usize;
            self.bits &= self.bits - 1;
            // Only bits of catalogue permissions are ever set, so this always finds one.
            if let Some(permission) = Permission::ALL.get(index) {
                return Some(*permission);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.bits.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter {}

impl IntoIterator for PermissionSet {
    type Item = Permission;
    type IntoIter = Iter;

    fn into_iter(self) -> Iter {
        self.iter()
    }
}

impl IntoIterator for &PermissionSet {
    type Item = Permission;
    type IntoIter = Iter;

    fn into_iter(self) -> Iter {
        self.iter()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        set.extend(iter);
        set
    }
}

impl Extend<Permission> for PermissionSet {
    fn extend<I: IntoIterator<Item = Permission>>(&mut self, iter: I) {
        for permission in iter {
            self.insert(permission);
        }
    }
}

impl From<Permission> for PermissionSet {
    fn from(permission: Permission) -> Self {
        Self(permission.bit())
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

impl Serialize for PermissionSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for PermissionSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SetVisitor;

        impl<'de> Visitor<'de> for SetVisitor {
            type Value = PermissionSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of permissions")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PermissionSet, A::Error> {
                let mut set = PermissionSet::EMPTY;
                while let Some(permission) = seq.next_element::<Permission>()? {
                    set.insert(permission);
                }
                Ok(set)
            }
        }

        deserializer.deserialize_seq(SetVisitor)
    }
}

/// A role every tenant has, with a fixed set of permissions. See `docs/permissions.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BuiltinRole {
    /// Everything, including closing the tenant, its plan and erasing personal data.
    Owner,
    /// Runs the tenant day to day: people, roles, keys, resources; reads billing.
    Admin,
    /// Pays for the tenant: billing account, plan and invoices.
    BillingAdmin,
    /// Runs the tenant's resources and reports their usage.
    Operator,
    /// Reads everything and exports the audit log; changes nothing.
    Auditor,
    /// The usual role of a person in the tenant: sees the tenant, its people and resources.
    Member,
    /// The narrowest role: sees the tenant, its people, resources and usage.
    Viewer,
}

impl BuiltinRole {
    /// Every built-in role, from the widest to the narrowest.
    pub const ALL: &'static [BuiltinRole] = &[
        Self::Owner,
        Self::Admin,
        Self::BillingAdmin,
        Self::Operator,
        Self::Auditor,
        Self::Member,
        Self::Viewer,
    ];

    /// The stable name, as stored in events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::BillingAdmin => "billing-admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    /// The role with this name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|role| role.as_str() == name)
    }

    /// What the role allows.
    pub fn permissions(self) -> PermissionSet {
        use Permission as P;
        match self {
            Self::Owner => PermissionSet::all(),
            // Everything but what ends or commits the tenant (closing, suspending, the plan,
            // paying) and the irreversible erasure of personal data.
            Self::Admin => PermissionSet::all().difference(PermissionSet::of(&[
                P::TenantsClose,
                P::TenantsSuspend,
                P::TenantsManagePlan,
                P::BillingManage,
                P::PrivacyForget,
            ])),
            Self::BillingAdmin => PermissionSet::of(&[
                P::TenantsRead,
                P::TenantsManagePlan,
                P::BillingRead,
                P::BillingManage,
                P::InvoicesRead,
                P::UsageRead,
            ]),
            Self::Operator => PermissionSet::of(&[
                P::TenantsRead,
                P::ResourcesRead,
                P::ResourcesProvision,
                P::ResourcesDeprovision,
                P::UsageRead,
                P::UsageRecord,
                P::ServiceAccountsRead,
                P::ApiKeysRead,
                P::EventsSubscribe,
            ]),
            // Every `*:read`, by rule, so a new read permission reaches auditors too.
            Self::Auditor => Permission::ALL
                .iter()
                .copied()
                .filter(|permission| permission.action() == "read")
                .chain([P::AuditExport, P::EventsSubscribe])
                .collect(),
            Self::Member => PermissionSet::of(&[
                P::TenantsRead,
                P::UsersRead,
                P::RolesRead,
                P::ResourcesRead,
                P::UsageRead,
                P::EventsSubscribe,
            ]),
            Self::Viewer => {
                PermissionSet::of(&[P::TenantsRead, P::UsersRead, P::ResourcesRead, P::UsageRead])
            }
        }
    }
}

impl fmt::Display for BuiltinRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`BuiltinRole`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a built-in role: expected owner, admin, billing-admin, operator, auditor, \
     member or viewer"
)]
pub struct UnknownBuiltinRole(pub String);

impl FromStr for BuiltinRole {
    type Err = UnknownBuiltinRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| UnknownBuiltinRole(s.to_owned()))
    }
}

impl Serialize for BuiltinRole {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BuiltinRole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::new("the name of a built-in role"))
    }
}

/// The name of a tenant's custom role: 1 to 64 lowercase ASCII letters, digits and hyphens,
/// starting with a letter, and not the name of a built-in role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

/// Why a string is not a [`RoleName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRoleName {
    /// The name is empty.
    #[error("a role name cannot be empty")]
    Empty,
    /// The name is longer than [`RoleName::MAX_CHARS`].
    #[error("a role name has at most 64 characters; this one has {chars}")]
    TooLong {
        /// How many characters it has.
        chars: usize,
    },
    /// The name holds an uppercase letter.
    #[error("a role name is lowercase; `{0}` is an uppercase letter")]
    Uppercase(char),
    /// The name holds something other than lowercase ASCII letters, digits and hyphens.
    #[error("a role name holds only lowercase ASCII letters, digits and hyphens, not `{0}`")]
    InvalidCharacter(char),
    /// The name starts with a digit or a hyphen.
    #[error("a role name starts with a letter, not `{0}`")]
    NotStartingWithLetter(char),
    /// The name is that of a built-in role.
    #[error("`{0}` is the name of a built-in role")]
    BuiltinName(BuiltinRole),
}

impl RoleName {
    /// The longest name, in characters.
    pub const MAX_CHARS: usize = 64;

    /// Checks `name` against the rules, first to last: not empty, not too long, only allowed
    /// characters, a letter first, not a built-in name.
    pub fn parse(name: &str) -> Result<Self, InvalidRoleName> {
        let Some(first) = name.chars().next() else {
            return Err(InvalidRoleName::Empty);
        };
        let chars = name.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(InvalidRoleName::TooLong { chars });
        }
        if let Some(c) = name.chars().find(|c| c.is_uppercase()) {
            return Err(InvalidRoleName::Uppercase(c));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(InvalidRoleName::InvalidCharacter(c));
        }
        if !first.is_ascii_lowercase() {
            return Err(InvalidRoleName::NotStartingWithLetter(first));
        }
        if let Some(role) = BuiltinRole::from_name(name) {
            return Err(InvalidRoleName::BuiltinName(role));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RoleName {
    type Err = InvalidRoleName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for RoleName {
    type Error = InvalidRoleName;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl Serialize for RoleName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::new("the name of a custom role"))
    }
}

/// A role as it is assigned: a built-in role or one of the tenant's custom roles. Written as
/// the plain name; the two never collide, since a custom role cannot take a built-in name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleRef {
    /// A built-in role.
    Builtin(BuiltinRole),
    /// A custom role of the tenant, by name.
    Custom(RoleName),
}

impl RoleRef {
    /// A built-in role's name if it is one, else a custom role's name (checked as a
    /// [`RoleName`]).
    pub fn parse(name: &str) -> Result<Self, InvalidRoleName> {
        match BuiltinRole::from_name(name) {
            Some(role) => Ok(Self::Builtin(role)),
            None => RoleName::parse(name).map(Self::Custom),
        }
    }

    /// The role's name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Builtin(role) => role.as_str(),
            Self::Custom(name) => name.as_str(),
        }
    }
}

impl From<BuiltinRole> for RoleRef {
    fn from(role: BuiltinRole) -> Self {
        Self::Builtin(role)
    }
}

impl From<RoleName> for RoleRef {
    fn from(name: RoleName) -> Self {
        Self::Custom(name)
    }
}

impl fmt::Display for RoleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoleRef {
    type Err = InvalidRoleName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for RoleRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RoleRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::new("the name of a role"))
    }
}

/// The permissions of a principal holding these built-in roles and custom roles (given by
/// their permission sets): the union. Roles only add; nothing denies.
pub fn effective_permissions<'a>(
    builtin: impl IntoIterator<Item = BuiltinRole>,
    custom: impl IntoIterator<Item = &'a PermissionSet>,
) -> PermissionSet {
    let builtin = builtin.into_iter().fold(PermissionSet::EMPTY, |set, role| {
        set.union(role.permissions())
    });
    custom
        .into_iter()
        .fold(builtin, |set, role| set.union(*role))
}

/// Deserializes a string through the type's [`FromStr`], keeping its error message.
struct ParseVisitor<T> {
    expecting: &'static str,
    parsed: PhantomData<T>,
}

impl<T> ParseVisitor<T> {
    const fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            parsed: PhantomData,
        }
    }
}

impl<T> Visitor<'_> for ParseVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::de::value::{Error as ValueError, SeqDeserializer, StrDeserializer};

    use super::*;
    use tree::{Tree, to_tree};

    use Permission as P;

    fn set(permissions: &[Permission]) -> PermissionSet {
        PermissionSet::of(permissions)
    }

    fn is_snake_case(part: &str) -> bool {
        part.starts_with(|c: char| c.is_ascii_lowercase())
            && !part.ends_with('_')
            && !part.contains("__")
            && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    #[test]
    fn every_permission_string_round_trips_and_reads_resource_colon_action() {
        for &permission in Permission::ALL {
            let s = permission.as_str();
            assert_eq!(s.parse::<Permission>(), Ok(permission));
            assert_eq!(Permission::try_from(s), Ok(permission));
            assert_eq!(permission.to_string(), s);
            assert_eq!(s.matches(':').count(), 1, "{s}");
            assert_eq!(
                format!("{}:{}", permission.resource(), permission.action()),
                s
            );
            assert!(is_snake_case(permission.resource()), "{s}");
            assert!(is_snake_case(permission.action()), "{s}");
        }
    }

    #[test]
    fn the_catalogue_lists_every_permission_once_in_the_order_of_its_strings() {
        // The macro builds ALL from the same list as the enum, so no variant can be missing;
        // this checks that ALL follows declaration order with no gap (the bitset relies on
        // it) and that the strings are strictly increasing (no duplicates, sorted sets).
        for (index, &permission) in Permission::ALL.iter().enumerate() {
            assert_eq!(permission as usize, index);
        }
        for pair in Permission::ALL.windows(2) {
            assert!(pair[0].as_str() < pair[1].as_str(), "{pair:?}");
        }
        assert_eq!(PermissionSet::all().len(), Permission::ALL.len());
    }

    #[test]
    fn the_permissions_named_by_the_specification_keep_their_strings() {
        assert_eq!(P::UsersInvite.as_str(), "users:invite");
        assert_eq!(P::BillingRead.as_str(), "billing:read");
        assert_eq!(P::ResourcesProvision.as_str(), "resources:provision");
        assert_eq!(P::AuditExport.as_str(), "audit:export");
    }

    #[test]
    fn an_unknown_permission_is_refused_with_its_string_named() {
        for unknown in ["users:delete", "Users:invite", "users:invite ", "users", ""] {
            let err = unknown.parse::<Permission>().unwrap_err();
            assert_eq!(err, UnknownPermission(unknown.to_owned()));
            assert_eq!(
                err.to_string(),
                format!("`{unknown}` is not a known permission")
            );
        }
        let err = Permission::deserialize(StrDeserializer::<ValueError>::new("users:delete"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`users:delete` is not a known permission")
        );
    }

    #[test]
    fn owner_holds_every_permission() {
        assert_eq!(BuiltinRole::Owner.permissions(), PermissionSet::all());
    }

    #[test]
    fn every_built_in_role_holds_a_subset_of_the_owners_permissions() {
        let owner = BuiltinRole::Owner.permissions();
        for &role in BuiltinRole::ALL {
            assert!(role.permissions().is_subset_of(owner), "{role}");
            assert!(!role.permissions().is_empty(), "{role}");
        }
    }

    #[test]
    fn viewer_holds_strictly_less_than_member() {
        let viewer = BuiltinRole::Viewer.permissions();
        let member = BuiltinRole::Member.permissions();
        assert!(viewer.is_subset_of(member));
        assert_ne!(viewer, member);
    }

    #[test]
    fn auditor_can_export_the_audit_log_but_write_nothing() {
        let auditor = BuiltinRole::Auditor.permissions();
        assert!(auditor.contains(P::AuditExport));
        assert!(auditor.contains(P::AuditRead));
        for permission in auditor {
            assert!(
                matches!(permission.action(), "read" | "export" | "subscribe"),
                "{permission}"
            );
        }
        for &permission in Permission::ALL {
            if permission.action() == "read" {
                assert!(auditor.contains(permission), "{permission}");
            }
        }
    }

    #[test]
    fn billing_admin_cannot_provision_resources() {
        let billing_admin = BuiltinRole::BillingAdmin.permissions();
        assert!(!billing_admin.contains(P::ResourcesProvision));
        assert!(billing_admin.contains(P::BillingManage));
        assert!(billing_admin.contains(P::InvoicesRead));
    }

    #[test]
    fn admin_cannot_close_the_tenant_change_its_plan_or_pay() {
        let admin = BuiltinRole::Admin.permissions();
        for withheld in [
            P::TenantsClose,
            P::TenantsSuspend,
            P::TenantsManagePlan,
            P::BillingManage,
            P::PrivacyForget,
        ] {
            assert!(!admin.contains(withheld), "{withheld}");
        }
        for held in [
            P::UsersInvite,
            P::RolesManage,
            P::RolesAssign,
            P::ApiKeysCreate,
            P::ResourcesProvision,
            P::BillingRead,
            P::InvoicesRead,
        ] {
            assert!(admin.contains(held), "{held}");
        }
    }

    #[test]
    fn only_the_owner_can_close_the_tenant_or_erase_personal_data() {
        for &role in BuiltinRole::ALL {
            let permissions = role.permissions();
            let owner = role == BuiltinRole::Owner;
            assert_eq!(permissions.contains(P::TenantsClose), owner, "{role}");
            assert_eq!(permissions.contains(P::PrivacyForget), owner, "{role}");
        }
    }

    #[test]
    fn every_built_in_role_name_round_trips_and_an_unknown_one_is_refused() {
        for &role in BuiltinRole::ALL {
            assert_eq!(role.as_str().parse::<BuiltinRole>(), Ok(role));
            assert_eq!(to_tree(&role).unwrap(), Tree::Str(role.as_str().to_owned()));
            let back = BuiltinRole::deserialize(StrDeserializer::<ValueError>::new(role.as_str()));
            assert_eq!(back, Ok(role));
        }
        let err = "superuser".parse::<BuiltinRole>().unwrap_err();
        assert!(
            err.to_string()
                .contains("`superuser` is not a built-in role")
        );
    }

    #[test]
    fn role_name_accepts_lowercase_letters_digits_and_hyphens_after_a_letter() {
        for name in ["a", "support-lead", "tier-2", "x".repeat(64).as_str()] {
            assert_eq!(RoleName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn role_name_rejects_an_empty_name() {
        assert_eq!(RoleName::parse(""), Err(InvalidRoleName::Empty));
    }

    #[test]
    fn role_name_rejects_more_than_64_characters() {
        assert_eq!(
            RoleName::parse(&"x".repeat(65)),
            Err(InvalidRoleName::TooLong { chars: 65 })
        );
    }

    #[test]
    fn role_name_rejects_uppercase_letters() {
        assert_eq!(
            RoleName::parse("Support"),
            Err(InvalidRoleName::Uppercase('S'))
        );
        assert_eq!(
            RoleName::parse("support-LEAD"),
            Err(InvalidRoleName::Uppercase('L'))
        );
    }

    #[test]
    fn role_name_rejects_other_characters() {
        for (name, bad) in [("support lead", ' '), ("support_lead", '_'), ("rôle", 'ô')] {
            assert_eq!(
                RoleName::parse(name),
                Err(InvalidRoleName::InvalidCharacter(bad))
            );
        }
    }

    #[test]
    fn role_name_rejects_a_leading_digit_or_hyphen() {
        assert_eq!(
            RoleName::parse("2nd-line"),
            Err(InvalidRoleName::NotStartingWithLetter('2'))
        );
        assert_eq!(
            RoleName::parse("-ops"),
            Err(InvalidRoleName::NotStartingWithLetter('-'))
        );
    }

    #[test]
    fn role_name_rejects_a_built_in_name() {
        for &role in BuiltinRole::ALL {
            assert_eq!(
                RoleName::parse(role.as_str()),
                Err(InvalidRoleName::BuiltinName(role))
            );
        }
    }

    #[test]
    fn role_ref_survives_serde_as_a_plain_string_for_both_kinds() {
        let custom = RoleRef::Custom(RoleName::parse("support-lead").unwrap());
        for (role, name) in [
            (RoleRef::Builtin(BuiltinRole::BillingAdmin), "billing-admin"),
            (custom, "support-lead"),
        ] {
            assert_eq!(to_tree(&role).unwrap(), Tree::Str(name.to_owned()));
            let back = RoleRef::deserialize(StrDeserializer::<ValueError>::new(name));
            assert_eq!(back, Ok(role.clone()));
            assert_eq!(name.parse::<RoleRef>(), Ok(role));
        }
        let err = RoleRef::deserialize(StrDeserializer::<ValueError>::new("Support")).unwrap_err();
        assert!(err.to_string().contains("lowercase"));
    }

    #[test]
    fn permission_set_serializes_as_a_sorted_array_of_strings() {
        let permissions: PermissionSet = [P::UsersInvite, P::AuditExport, P::BillingRead]
            .into_iter()
            .collect();
        let expected = ["audit:export", "billing:read", "users:invite"];
        assert_eq!(
            to_tree(&permissions).unwrap(),
            Tree::Seq(
                expected
                    .iter()
                    .map(|s| Tree::Str((*s).to_owned()))
                    .collect()
            )
        );
        let unsorted = SeqDeserializer::<_, ValueError>::new(
            [
                "users:invite",
                "billing:read",
                "audit:export",
                "users:invite",
            ]
            .into_iter(),
        );
        assert_eq!(PermissionSet::deserialize(unsorted), Ok(permissions));
        assert_eq!(
            format!("{permissions:?}"),
            r#"{"audit:export", "billing:read", "users:invite"}"#
        );
    }

    #[test]
    fn permission_set_deserialization_refuses_an_unknown_permission() {
        let seq = SeqDeserializer::<_, ValueError>::new(["users:read", "users:nuke"].into_iter());
        let err = PermissionSet::deserialize(seq).unwrap_err();
        assert!(
            err.to_string()
                .contains("`users:nuke` is not a known permission")
        );
    }

    #[test]
    fn permission_set_inserts_removes_and_compares() {
        let mut permissions = PermissionSet::new();
        assert!(permissions.insert(P::UsageRead));
        assert!(!permissions.insert(P::UsageRead));
        assert!(permissions.insert(P::UsageRecord));
        assert_eq!(permissions.len(), 2);
        assert!(set(&[P::UsageRead]).is_subset_of(permissions));
        assert!(!permissions.is_subset_of(set(&[P::UsageRead])));
        assert!(PermissionSet::EMPTY.is_subset_of(permissions));
        assert_eq!(
            permissions.difference(set(&[P::UsageRead])),
            set(&[P::UsageRecord])
        );
        assert_eq!(
            permissions.intersection(set(&[P::UsageRead, P::TenantsRead])),
            set(&[P::UsageRead])
        );
        assert!(permissions.remove(P::UsageRead));
        assert!(!permissions.remove(P::UsageRead));
        assert_eq!(permissions.iter().collect::<Vec<_>>(), [P::UsageRecord]);
        assert_eq!(permissions.iter().len(), 1);
    }

    #[test]
    fn effective_permissions_are_the_union_of_the_assigned_roles() {
        let on_call = set(&[P::SessionsRevoke, P::UsageRead]);
        let effective =
            effective_permissions([BuiltinRole::Viewer, BuiltinRole::BillingAdmin], [&on_call]);
        let expected = BuiltinRole::Viewer
            .permissions()
            .union(BuiltinRole::BillingAdmin.permissions())
            .union(on_call);
        assert_eq!(effective, expected);
        assert!(effective.contains(P::SessionsRevoke));
        assert_eq!(
            effective_permissions([], std::iter::empty()),
            PermissionSet::EMPTY
        );
    }

    /// The tables of `docs/permissions.md`, read at compile time: the catalogue and the role
    /// matrix must say what the code says.
    #[test]
    fn the_documented_catalogue_and_role_matrix_match_the_code() {
        let doc = include_str!("../../../docs/permissions.md");
        let mut catalogue = Vec::new();
        let mut matrix: BTreeMap<BuiltinRole, Vec<Permission>> = BTreeMap::new();
        let mut columns: Vec<BuiltinRole> = Vec::new();
        for line in doc.lines().filter(|line| line.starts_with('|')) {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if cells.first() == Some(&"Permission") && cells.len() > 2 {
                columns = cells[1..]
                    .iter()
                    .map(|name| name.trim_matches('`').parse().unwrap())
                    .collect();
                continue;
            }
            let Some(name) = cells
                .first()
                .and_then(|c| c.strip_prefix('`'))
                .and_then(|c| c.strip_suffix('`'))
            else {
                continue;
            };
            let permission: Permission = name.parse().unwrap();
            if cells.len() == 2 {
                catalogue.push(permission);
            } else {
                assert_eq!(cells.len(), columns.len() + 1, "{line}");
                for (role, cell) in columns.iter().zip(&cells[1..]) {
                    match *cell {
                        "✓" => matrix.entry(*role).or_default().push(permission),
                        "" => {}
                        other => panic!("unexpected cell `{other}` in {line}"),
                    };
                }
            }
        }
        assert_eq!(catalogue, Permission::ALL, "the catalogue table");
        assert_eq!(columns, BuiltinRole::ALL, "the matrix columns");
        for &role in BuiltinRole::ALL {
            let documented: PermissionSet = matrix
                .remove(&role)
                .unwrap_or_default()
                .into_iter()
                .collect();
            assert_eq!(
                documented,
                role.permissions(),
                "the matrix column of {role}"
            );
        }
    }

    /// A serializer into strings and sequences, enough to see what serde writes for these
    /// types without a data format crate.
    mod tree {
        use serde::Serialize;
        use serde::de::value::Error;
        use serde::ser::{self, Error as _, Impossible, SerializeSeq};

        #[derive(Debug, PartialEq)]
        pub enum Tree {
            Str(String),
            Seq(Vec<Tree>),
        }

        pub fn to_tree<T: Serialize + ?Sized>(value: &T) -> Result<Tree, Error> {
            value.serialize(TreeSerializer)
        }

        struct TreeSerializer;

        pub struct SeqBuilder(Vec<Tree>);

        macro_rules! unsupported {
            ($($method:ident($($ty:ty),*);)*) => {
                $(fn $method(self, $(_: $ty),*) -> Result<Tree, Error> {
                    Err(Error::custom(concat!(stringify!($method), " is not supported")))
                })*
            };
        }

        fn unsupported<T>() -> Result<T, Error> {
            Err(Error::custom("only strings and sequences are supported"))
        }

        impl ser::Serializer for TreeSerializer {
            type Ok = Tree;
            type Error = Error;
            type SerializeSeq = SeqBuilder;
            type SerializeTuple = Impossible<Tree, Error>;
            type SerializeTupleStruct = Impossible<Tree, Error>;
            type SerializeTupleVariant = Impossible<Tree, Error>;
            type SerializeMap = Impossible<Tree, Error>;
            type SerializeStruct = Impossible<Tree, Error>;
            type SerializeStructVariant = Impossible<Tree, Error>;

            fn serialize_str(self, v: &str) -> Result<Tree, Error> {
                Ok(Tree::Str(v.to_owned()))
            }

            fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, Error> {
                Ok(SeqBuilder(Vec::with_capacity(len.unwrap_or(0))))
            }

            unsupported! {
                serialize_bool(bool);
                serialize_i8(i8);
                serialize_i16(i16);
                serialize_i32(i32);
                serialize_i64(i64);
                serialize_u8(u8);
                serialize_u16(u16);
                serialize_u32(u32);
                serialize_u64(u64);
                serialize_f32(f32);
                serialize_f64(f64);
                serialize_char(char);
                serialize_bytes(&[u8]);
                serialize_none();
                serialize_unit();
                serialize_unit_struct(&'static str);
                serialize_unit_variant(&'static str, u32, &'static str);
            }

            fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Tree, Error> {
                unsupported()
            }

            fn serialize_newtype_struct<T: Serialize + ?Sized>(
                self,
                _: &'static str,
                _: &T,
            ) -> Result<Tree, Error> {
                unsupported()
            }

            fn serialize_newtype_variant<T: Serialize + ?Sized>(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: &T,
            ) -> Result<Tree, Error> {
                unsupported()
            }

            fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
                unsupported()
            }

            fn serialize_tuple_struct(
                self,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeTupleStruct, Error> {
                unsupported()
            }

            fn serialize_tuple_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeTupleVariant, Error> {
                unsupported()
            }

            fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
                unsupported()
            }

            fn serialize_struct(
                self,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeStruct, Error> {
                unsupported()
            }

            fn serialize_struct_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeStructVariant, Error> {
                unsupported()
            }
        }

        impl SerializeSeq for SeqBuilder {
            type Ok = Tree;
            type Error = Error;

            fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.0.push(to_tree(value)?);
                Ok(())
            }

            fn end(self) -> Result<Tree, Error> {
                Ok(Tree::Seq(self.0))
            }
        }
    }
}
