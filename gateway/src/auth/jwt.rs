//! Access tokens: JWTs of type `at+jwt` (RFC 9068) signed with EdDSA over Ed25519, and the
//! checks a token passes before the gateway believes it.
//!
//! This module knows the token's shape and its checks, and nothing about where keys come from:
//! [`crate::auth::keys::Keyring`] holds the keys, picks the signer, finds the verifying key by
//! `kid`, and calls in here with the time of its clock. Verification checks every part
//! explicitly, in this order, and stops at the first refusal:
//!
//! 1. the token is three base64url parts and at most [`MAX_TOKEN_LEN`] bytes;
//! 2. the header's `alg` is exactly `EdDSA` (so `none`, `HS256` keyed with the public key,
//!    `RS*`, `ES*` are refused before any key is touched), its `typ` is `at+jwt` (so a refresh
//!    token or any other JWT is refused), it has no `crit`, and its `kid` matches
//!    `[A-Za-z0-9_-]{1,64}` before it is looked up anywhere;
//! 3. the `kid` names a key of the keyring that still verifies;
//! 4. the signature verifies under that key (jsonwebtoken, told to accept EdDSA only);
//! 5. every claim is present with its type, `iss` and `aud` are exactly the configured ones,
//!    `exp`, `nbf` and `iat` hold at the keyring's clock within the leeway, and the token lives
//!    no longer than [`MAX_LIFETIME`].
//!
//! Every refusal is a [`TokenError`] with a stable [`TokenError::reason`]; the gateway answers
//! all of them alike (UNAUTHENTICATED) and logs the reason.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use domain::identity::principal::Principal;
use domain::identity::values::{ServiceAccountId, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The `typ` header of an access token (RFC 9068, section 2.1).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The one signature algorithm: EdDSA over Ed25519 (RFC 8037).
pub const ALGORITHM: &str = "EdDSA";

/// The longest an access token may live. Configuration cannot raise it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long an access token lives unless configured shorter.
pub const DEFAULT_LIFETIME: Duration = MAX_LIFETIME;

/// How far the clocks of the signer and the verifier may disagree, unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The largest leeway configuration may set.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// The longest text that can be an access token; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The longest key id.
pub const MAX_KID_LEN: usize = 64;

/// The claims every access token carries (`sid` is checked apart: users need it).
const REQUIRED_CLAIMS: [&str; 10] = [
    "iss", "aud", "sub", "tid", "pkind", "iat", "nbf", "exp", "jti", "mfa",
];

/// Whether `kid` is a well-formed key id: 1 to 64 of `[A-Za-z0-9_-]`. Checked before a key
/// id is looked up anywhere, so no path, quote or SQL character ever reaches a lookup.
pub fn is_well_formed_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Who issues access tokens, for whom, and for how long: the checked configuration of
/// signing and verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    issuer: String,
    audience: String,
    lifetime: Duration,
    leeway: Duration,
}

impl TokenPolicy {
    /// A policy for tokens issued by `issuer` for `audience`, living [`DEFAULT_LIFETIME`],
    /// with [`DEFAULT_LEEWAY`]. Neither may be empty.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, PolicyError> {
        let (issuer, audience) = (issuer.into(), audience.into());
        if issuer.trim().is_empty() {
            return Err(PolicyError::NoIssuer);
        }
        if audience.trim().is_empty() {
            return Err(PolicyError::NoAudience);
        }
        Ok(Self {
            issuer,
            audience,
            lifetime: DEFAULT_LIFETIME,
            leeway: DEFAULT_LEEWAY,
        })
    }

    /// The same policy with tokens living `lifetime`, in whole seconds: at least one second and
    /// at most [`MAX_LIFETIME`]. A longer lifetime is refused, not shortened.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Result<Self, PolicyError> {
        if lifetime > MAX_LIFETIME {
            return Err(PolicyError::LifetimeTooLong { lifetime });
        }
        if lifetime.as_secs() == 0 {
            return Err(PolicyError::LifetimeTooShort { lifetime });
        }
        self.lifetime = Duration::from_secs(lifetime.as_secs());
        Ok(self)
    }

    /// The same policy with a leeway of `leeway` (whole seconds, at most [`MAX_LEEWAY`]).
    pub fn with_leeway(mut self, leeway: Duration) -> Result<Self, PolicyError> {
        if leeway > MAX_LEEWAY {
            return Err(PolicyError::LeewayTooLong { leeway });
        }
        self.leeway = Duration::from_secs(leeway.as_secs());
        Ok(self)
    }

    /// The `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of every token.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How long a token lives.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// How far clocks may disagree when `exp`, `nbf` and `iat` are checked.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    fn lifetime_secs(&self) -> i64 {
        i64::try_from(self.lifetime.as_secs()).unwrap_or(0)
    }

    fn leeway_secs(&self) -> i64 {
        i64::try_from(self.leeway.as_secs()).unwrap_or(0)
    }
}

/// Why a [`TokenPolicy`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The issuer is empty.
    #[error("the access-token issuer is empty")]
    NoIssuer,
    /// The audience is empty.
    #[error("the access-token audience is empty")]
    NoAudience,
    /// The lifetime is over [`MAX_LIFETIME`].
    #[error("an access token may live at most 15 minutes, not {lifetime:?}")]
    LifetimeTooLong {
        /// The lifetime asked for.
        lifetime: Duration,
    },
    /// The lifetime is under a second.
    #[error("an access token must live at least a second, not {lifetime:?}")]
    LifetimeTooShort {
        /// The lifetime asked for.
        lifetime: Duration,
    },
    /// The leeway is over [`MAX_LEEWAY`].
    #[error("the access-token leeway may be at most 60 seconds, not {leeway:?}")]
    LeewayTooLong {
        /// The leeway asked for.
        leeway: Duration,
    },
}

/// What kind of principal a token speaks for (`pkind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person, logged in: the token belongs to a session.
    User,
    /// A machine, with client credentials.
    ServiceAccount,
}

/// What an access token grants: the principal, its tenant and session. The time claims, the
/// issuer, the audience and the token's id are added when it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    principal: Uuid,
    tenant: Uuid,
    session: Option<Uuid>,
    kind: PrincipalKind,
    mfa: bool,
}

impl AccessGrant {
    /// Access for user `user` of tenant `tenant` in session `session`; `mfa` says whether the
    /// session passed a second factor.
    pub fn user(user: Uuid, tenant: Uuid, session: Uuid, mfa: bool) -> Self {
        Self {
            principal: user,
            tenant,
            session: Some(session),
            kind: PrincipalKind::User,
            mfa,
        }
    }

    /// Access for service account `account` of tenant `tenant`, in `session` if it has one.
    pub fn service_account(account: Uuid, tenant: Uuid, session: Option<Uuid>) -> Self {
        Self {
            principal: account,
            tenant,
            session,
            kind: PrincipalKind::ServiceAccount,
            mfa: false,
        }
    }

    /// Access for `principal` of tenant `tenant`: a user needs a session, a service account
    /// may have one. `mfa` counts for users only; a service account's token never claims it.
    pub fn for_principal(
        principal: &Principal,
        tenant: Uuid,
        session: Option<Uuid>,
        mfa: bool,
    ) -> Result<Self, GrantError> {
        match principal {
            Principal::User(user) => {
                let session = session.ok_or(GrantError::UserWithoutSession)?;
                Ok(Self::user(user.as_uuid(), tenant, session, mfa))
            }
            Principal::ServiceAccount(account) => {
                Ok(Self::service_account(account.as_uuid(), tenant, session))
            }
        }
    }

    /// The principal's id (`sub`).
    pub fn principal(&self) -> Uuid {
        self.principal
    }

    /// The tenant's id (`tid`).
    pub fn tenant(&self) -> Uuid {
        self.tenant
    }

    /// The session's id (`sid`), if any.
    pub fn session(&self) -> Option<Uuid> {
        self.session
    }

    /// What kind of principal (`pkind`).
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }
}

/// Why an [`AccessGrant`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// A user's access token must belong to a session.
    #[error("a user's access token needs a session")]
    UserWithoutSession,
}

/// The claims of an access token, as signed and as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Who issued the token.
    pub iss: String,
    /// Whom the token is for.
    pub aud: String,
    /// The principal's id.
    pub sub: Uuid,
    /// The tenant's id: the tenant of every request made with the token.
    pub tid: Uuid,
    /// The session's id; always present for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// What kind of principal `sub` is.
    pub pkind: PrincipalKind,
    /// When the token was issued, in seconds since the epoch.
    pub iat: i64,
    /// When the token starts to be valid, in seconds since the epoch.
    pub nbf: i64,
    /// When the token stops being valid, in seconds since the epoch.
    pub exp: i64,
    /// The token's own id.
    pub jti: Uuid,
    /// Whether the session passed a second factor.
    pub mfa: bool,
}

impl AccessClaims {
    /// The claims of a token granting `grant`, issued at `now` under `policy`, with id `jti`.
    pub fn issue(policy: &TokenPolicy, grant: &AccessGrant, now: DateTime<Utc>, jti: Uuid) -> Self {
        let iat = now.timestamp();
        Self {
            iss: policy.issuer.clone(),
            aud: policy.audience.clone(),
            sub: grant.principal,
            tid: grant.tenant,
            sid: grant.session,
            pkind: grant.kind,
            iat,
            nbf: iat,
            exp: iat.saturating_add(policy.lifetime_secs()),
            jti,
            mfa: grant.mfa,
        }
    }

    /// The principal the token speaks for: `sub`, of the kind `pkind` says.
    pub fn principal(&self) -> Principal {
        match self.pkind {
            PrincipalKind::User => Principal::User(UserId::from_uuid(self.sub)),
            PrincipalKind::ServiceAccount => {
                Principal::ServiceAccount(ServiceAccountId::from_uuid(self.sub))
            }
        }
    }

    /// When the token stops being valid.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.exp, 0)
    }
}

/// Why a token was refused. Every one means UNAUTHENTICATED to the caller; the
/// [`reason`](TokenError::reason) is for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a compact JWS, or its parts or claims do not decode as an access token's.
    #[error("malformed access token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not `EdDSA`.
    #[error("the access token's algorithm is not EdDSA")]
    BadAlgorithm,
    /// The header's `typ` is not `at+jwt`: another kind of token, or none.
    #[error("the token is not an access token (typ at+jwt)")]
    WrongType,
    /// The header has no `kid`, or one that is not 1 to 64 of `[A-Za-z0-9_-]`.
    #[error("the access token's key id is missing or ill-formed")]
    BadKeyId,
    /// No key of the keyring with this id verifies (never made, or removed).
    #[error("no verifying key has the id {0}")]
    UnknownKey(String),
    /// The signature does not verify under the key.
    #[error("the access token's signature does not verify")]
    BadSignature,
    /// A required claim is missing.
    #[error("the access token has no {0} claim")]
    MissingClaim(&'static str),
    /// `exp` has passed.
    #[error("the access token expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the access token was issued by someone else")]
    WrongIssuer,
    /// `aud` is not the configured audience.
    #[error("the access token is for someone else")]
    WrongAudience,
    /// The token lives longer than [`MAX_LIFETIME`], or its times are out of order.
    #[error("the access token's lifetime is not one this gateway issues")]
    BadLifetime,
}

impl TokenError {
    /// A short, stable name of the refusal, for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadAlgorithm => "bad_algorithm",
            Self::WrongType => "wrong_type",
            Self::BadKeyId => "bad_key_id",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadLifetime => "bad_lifetime",
        }
    }
}

/// A signed access token with the claims it carries.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS, to hand to the client.
    pub token: String,
    /// The id of the key that signed it.
    pub kid: String,
    /// Its claims (`exp` tells the client when to refresh).
    pub claims: AccessClaims,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"..")
            .field("kid", &self.kid)
            .field("claims", &self.claims)
            .finish()
    }
}

/// Signs `claims` with `key` under key id `kid`: header `{"alg":"EdDSA","typ":"at+jwt","kid"}`.
pub(crate) fn encode(
    kid: &str,
    key: &EncodingKey,
    claims: &AccessClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TOKEN_TYPE.to_owned());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key)
}

/// Verifies `token` at `now` under `policy`, with the key `key_for` finds for its `kid` (called
/// only with a well-formed key id, and only for a token whose header passed).
pub(crate) fn decode<'k>(
    token: &str,
    policy: &TokenPolicy,
    now: DateTime<Utc>,
    key_for: impl FnOnce(&str) -> Option<&'k DecodingKey>,
) -> Result<AccessClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than any access token"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let kid = check_header(header)?;
    let key = key_for(&kid).ok_or(TokenError::UnknownKey(kid))?;
    let verified = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation(policy))
        .map_err(|err| library_refusal(err.kind()))?;
    check_claims(verified.claims, policy, now)
}

/// Checks the header on its own, before any key is looked up; returns the key id.
fn check_header(segment: &str) -> Result<String, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed("the header is not unpadded base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALGORITHM => {}
        _ => return Err(TokenError::BadAlgorithm),
    }
    match header.get("typ") {
        // Media types are case-insensitive; RFC 9068 allows the long form too.
        Some(Value::String(typ))
            if typ.eq_ignore_ascii_case(TOKEN_TYPE)
                || typ.eq_ignore_ascii_case("application/at+jwt") => {}
        _ => return Err(TokenError::WrongType),
    }
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "the header names critical extensions this gateway does not know",
        ));
    }
    match header.get("kid") {
        Some(Value::String(kid)) if is_well_formed_kid(kid) => Ok(kid.clone()),
        _ => Err(TokenError::BadKeyId),
    }
}

/// jsonwebtoken's part: EdDSA only, the signature, and (again) `iss` and `aud`. Presence and
/// types of the claims, and time against the keyring's clock, are [`check_claims`]'s: the
/// library would call a claim of the wrong type missing, and reads the system clock.
fn validation(policy: &TokenPolicy) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.algorithms = vec![Algorithm::EdDSA];
    validation.set_required_spec_claims::<&str>(&[]);
    validation.set_issuer(&[policy.issuer()]);
    validation.set_audience(&[policy.audience()]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation
}

fn library_refusal(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::BadAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(
            REQUIRED_CLAIMS
                .iter()
                .find(|name| **name == claim.as_str())
                .copied()
                .unwrap_or("registered"),
        ),
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not unpadded base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            TokenError::Malformed("a part is not the JSON of an access token")
        }
        _ => TokenError::Malformed("the token does not decode"),
    }
}

/// Whether claims hold at `now`: not expired, and not before their time, within the leeway.
pub(crate) fn check_time(
    claims: &AccessClaims,
    policy: &TokenPolicy,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    let (now, leeway) = (now.timestamp(), policy.leeway_secs());
    if now.saturating_sub(leeway) >= claims.exp {
        return Err(TokenError::Expired);
    }
    if now.saturating_add(leeway) < claims.nbf || now.saturating_add(leeway) < claims.iat {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// The claims, typed, checked against the policy and the time.
fn check_claims(
    claims: Map<String, Value>,
    policy: &TokenPolicy,
    now: DateTime<Utc>,
) -> Result<AccessClaims, TokenError> {
    if let Some(missing) = REQUIRED_CLAIMS
        .iter()
        .find(|name| claims.get(**name).is_none_or(Value::is_null))
    {
        return Err(TokenError::MissingClaim(missing));
    }
    let claims: AccessClaims = serde_json::from_value(Value::Object(claims))
        .map_err(|_| TokenError::Malformed("the claims do not have an access token's types"))?;
    if claims.pkind == PrincipalKind::User && claims.sid.is_none() {
        return Err(TokenError::MissingClaim("sid"));
    }
    if claims.iss != policy.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if claims.aud != policy.audience {
        return Err(TokenError::WrongAudience);
    }
    check_time(&claims, policy, now)?;
    let max_lifetime = i64::try_from(MAX_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    if claims.nbf > claims.exp
        || claims.iat > claims.exp
        || claims.exp.saturating_sub(claims.iat) > max_lifetime
    {
        return Err(TokenError::BadLifetime);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::cell::Cell;

    use hmac::{Hmac, Mac};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;
    use sha2::Sha256;

    use super::*;

    const KID: &str = "k1";

    struct TestKey {
        pair: Ed25519KeyPair,
        encoding: EncodingKey,
        decoding: DecodingKey,
        public: Vec<u8>,
    }

    fn key() -> TestKey {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(document.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        TestKey {
            encoding: EncodingKey::from_ed_der(document.as_ref()),
            decoding: DecodingKey::from_ed_der(&public),
            public,
            pair,
        }
    }

    fn policy() -> TokenPolicy {
        TokenPolicy::new("https://platform.test", "platform-api").unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn grant() -> AccessGrant {
        AccessGrant::user(Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), true)
    }

    fn claims() -> AccessClaims {
        AccessClaims::issue(&policy(), &grant(), now(), Uuid::new_v4())
    }

    fn claims_json() -> Value {
        serde_json::to_value(claims()).unwrap()
    }

    fn header() -> Value {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": KID})
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    /// A token with any header and claims, signed by `sign` over `header.claims`.
    fn forge(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let signature = URL_SAFE_NO_PAD.encode(sign(message.as_bytes()));
        format!("{message}.{signature}")
    }

    /// A token with any header and claims, properly signed with `key`.
    fn signed(key: &TestKey, header: &Value, claims: &Value) -> String {
        forge(header, claims, |message| {
            key.pair.sign(message).as_ref().to_vec()
        })
    }

    fn verify(key: &TestKey, token: &str) -> Result<AccessClaims, TokenError> {
        verify_at(key, token, now())
    }

    fn verify_at(
        key: &TestKey,
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenError> {
        decode(token, &policy(), at, |kid| {
            (kid == KID).then_some(&key.decoding)
        })
    }

    fn with(mut value: Value, field: &str, to: Value) -> Value {
        value[field] = to;
        value
    }

    fn without(mut value: Value, field: &str) -> Value {
        value.as_object_mut().unwrap().remove(field);
        value
    }

    #[test]
    fn a_signed_token_verifies_and_gives_back_its_claims() {
        let key = key();
        let claims = claims();
        let token = encode(KID, &key.encoding, &claims).unwrap();
        assert_eq!(verify(&key, &token), Ok(claims));
    }

    #[test]
    fn a_signed_token_has_the_access_token_header() {
        let key = key();
        let token = encode(KID, &key.encoding, &claims()).unwrap();
        let header = token.split('.').next().unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "at+jwt", "kid": KID}));
    }

    #[test]
    fn a_service_account_token_may_have_no_session() {
        let key = key();
        let grant = AccessGrant::service_account(Uuid::new_v4(), Uuid::new_v4(), None);
        let claims = AccessClaims::issue(&policy(), &grant, now(), Uuid::new_v4());
        let token = encode(KID, &key.encoding, &claims).unwrap();
        let verified = verify(&key, &token).unwrap();
        assert_eq!(verified.pkind, PrincipalKind::ServiceAccount);
        assert_eq!(verified.sid, None);
        assert!(!verified.mfa);
    }

    #[test]
    fn the_long_media_type_of_an_access_token_is_accepted() {
        let key = key();
        let token = signed(
            &key,
            &with(header(), "typ", json!("application/AT+JWT")),
            &claims_json(),
        );
        assert!(verify(&key, &token).is_ok());
    }

    #[test]
    fn rejects_alg_none() {
        let key = key();
        for none in ["none", "None", "NONE"] {
            let token = forge(&with(header(), "alg", json!(none)), &claims_json(), |_| {
                Vec::new()
            });
            assert_eq!(
                verify(&key, &token),
                Err(TokenError::BadAlgorithm),
                "{none}"
            );
        }
    }

    #[test]
    fn rejects_hs256_keyed_with_the_public_key() {
        let key = key();
        let jwk_x = URL_SAFE_NO_PAD.encode(&key.public);
        for secret in [key.public.clone(), jwk_x.into_bytes()] {
            let token = forge(
                &with(header(), "alg", json!("HS256")),
                &claims_json(),
                |message| {
                    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
                    mac.update(message);
                    mac.finalize().into_bytes().to_vec()
                },
            );
            assert_eq!(verify(&key, &token), Err(TokenError::BadAlgorithm));
        }
    }

    #[test]
    fn the_library_alone_also_refuses_hs256_keyed_with_the_public_key() {
        let key = key();
        let token = forge(
            &with(header(), "alg", json!("HS256")),
            &claims_json(),
            |message| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.public).unwrap();
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            },
        );
        let refused = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &key.decoding,
            &validation(&policy()),
        );
        assert!(matches!(
            refused.unwrap_err().kind(),
            ErrorKind::InvalidAlgorithm
        ));
    }

    #[test]
    fn rejects_every_other_algorithm() {
        let key = key();
        for alg in [
            "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "eddsa", "Ed25519",
        ] {
            let token = signed(&key, &with(header(), "alg", json!(alg)), &claims_json());
            assert_eq!(verify(&key, &token), Err(TokenError::BadAlgorithm), "{alg}");
        }
        let token = signed(&key, &without(header(), "alg"), &claims_json());
        assert_eq!(verify(&key, &token), Err(TokenError::BadAlgorithm));
    }

    #[test]
    fn rejects_an_unknown_key_id() {
        let key = key();
        let token = signed(&key, &with(header(), "kid", json!("k2")), &claims_json());
        assert_eq!(
            verify(&key, &token),
            Err(TokenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn rejects_ill_formed_key_ids_before_any_lookup() {
        let key = key();
        let long = "k".repeat(MAX_KID_LEN + 1);
        for kid in [
            json!("../../etc/passwd"),
            json!("' OR 1=1 --"),
            json!("k1; DROP TABLE signing_keys"),
            json!(""),
            json!(long),
            json!("k\u{0}1"),
            json!(1),
            json!(["k1"]),
            Value::Null,
        ] {
            let token = signed(&key, &with(header(), "kid", kid.clone()), &claims_json());
            let looked_up = Cell::new(false);
            let refused = decode(&token, &policy(), now(), |_| {
                looked_up.set(true);
                Some(&key.decoding)
            });
            assert_eq!(refused, Err(TokenError::BadKeyId), "{kid}");
            assert!(!looked_up.get(), "{kid} was looked up");
        }
        let token = signed(&key, &without(header(), "kid"), &claims_json());
        assert_eq!(verify(&key, &token), Err(TokenError::BadKeyId));
    }

    #[test]
    fn key_ids_are_well_formed_only_in_the_safe_alphabet() {
        assert!(is_well_formed_kid("0192f0c4a1b27c3e9d5f6a7b8c9d0e1f"));
        assert!(is_well_formed_kid("key_2026-11-A"));
        assert!(is_well_formed_kid(&"a".repeat(MAX_KID_LEN)));
        for kid in ["", "a/b", "a.b", "a b", "a'b", "a%2e", "é"] {
            assert!(!is_well_formed_kid(kid), "{kid}");
        }
    }

    #[test]
    fn rejects_an_expired_token_beyond_the_leeway_only() {
        let key = key();
        let token = encode(KID, &key.encoding, &claims()).unwrap();
        let exp = now() + chrono::Duration::seconds(policy().lifetime_secs());
        assert!(verify_at(&key, &token, exp + chrono::Duration::seconds(4)).is_ok());
        assert_eq!(
            verify_at(&key, &token, exp + chrono::Duration::seconds(5)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn rejects_a_token_not_valid_yet() {
        let key = key();
        let token = encode(KID, &key.encoding, &claims()).unwrap();
        assert!(verify_at(&key, &token, now() - chrono::Duration::seconds(5)).is_ok());
        assert_eq!(
            verify_at(&key, &token, now() - chrono::Duration::seconds(6)),
            Err(TokenError::NotYetValid)
        );
        let later = now().timestamp() + 60;
        let nbf_later = with(claims_json(), "nbf", json!(later));
        let token = signed(&key, &header(), &nbf_later);
        assert_eq!(verify(&key, &token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn rejects_a_token_issued_in_the_future() {
        let key = key();
        let iat_later = with(claims_json(), "iat", json!(now().timestamp() + 60));
        let token = signed(&key, &header(), &iat_later);
        assert_eq!(verify(&key, &token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn rejects_a_token_that_lives_longer_than_fifteen_minutes() {
        let key = key();
        let long = with(claims_json(), "exp", json!(now().timestamp() + 15 * 60 + 1));
        let token = signed(&key, &header(), &long);
        assert_eq!(verify(&key, &token), Err(TokenError::BadLifetime));
    }

    #[test]
    fn rejects_the_wrong_audience() {
        let key = key();
        for aud in [json!("another-api"), json!(["another-api"]), json!("")] {
            let token = signed(&key, &header(), &with(claims_json(), "aud", aud.clone()));
            assert_eq!(
                verify(&key, &token),
                Err(TokenError::WrongAudience),
                "{aud}"
            );
        }
    }

    #[test]
    fn rejects_an_audience_list_even_with_ours_in_it() {
        let key = key();
        let token = signed(
            &key,
            &header(),
            &with(claims_json(), "aud", json!(["platform-api", "another-api"])),
        );
        assert_eq!(
            verify(&key, &token).map_err(|err| err.reason()),
            Err("malformed")
        );
    }

    #[test]
    fn rejects_the_wrong_issuer() {
        let key = key();
        for iss in [json!("https://evil.test"), json!(["https://evil.test"])] {
            let token = signed(&key, &header(), &with(claims_json(), "iss", iss.clone()));
            assert_eq!(verify(&key, &token), Err(TokenError::WrongIssuer), "{iss}");
        }
    }

    #[test]
    fn rejects_a_refresh_token_and_any_other_type() {
        let key = key();
        for typ in [
            json!("refresh+jwt"),
            json!("JWT"),
            json!("id_token+jwt"),
            json!(1),
        ] {
            let token = signed(&key, &with(header(), "typ", typ.clone()), &claims_json());
            assert_eq!(verify(&key, &token), Err(TokenError::WrongType), "{typ}");
        }
    }

    #[test]
    fn rejects_a_token_without_a_type() {
        let key = key();
        let token = signed(&key, &without(header(), "typ"), &claims_json());
        assert_eq!(verify(&key, &token), Err(TokenError::WrongType));
    }

    #[test]
    fn rejects_critical_header_extensions() {
        let key = key();
        let header = with(header(), "crit", json!(["exp"]));
        let token = signed(&key, &header, &claims_json());
        assert_eq!(
            verify(&key, &token).map_err(|err| err.reason()),
            Err("malformed")
        );
    }

    #[test]
    fn rejects_a_tampered_payload() {
        let key = key();
        let token = encode(KID, &key.encoding, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = claims_json();
        claims["tid"] = json!(Uuid::new_v4());
        let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
        assert_eq!(verify(&key, &tampered), Err(TokenError::BadSignature));
    }

    #[test]
    fn rejects_a_token_signed_by_another_key_under_our_kid() {
        let (ours, theirs) = (key(), key());
        let token = encode(KID, &theirs.encoding, &claims()).unwrap();
        assert_eq!(verify(&ours, &token), Err(TokenError::BadSignature));
    }

    #[test]
    fn rejects_a_token_missing_a_claim() {
        let key = key();
        for claim in REQUIRED_CLAIMS {
            let token = signed(&key, &header(), &without(claims_json(), claim));
            assert_eq!(
                verify(&key, &token),
                Err(TokenError::MissingClaim(claim)),
                "{claim}"
            );
        }
        let token = signed(&key, &header(), &without(claims_json(), "sid"));
        assert_eq!(verify(&key, &token), Err(TokenError::MissingClaim("sid")));
    }

    #[test]
    fn rejects_claims_of_the_wrong_type() {
        let key = key();
        for (claim, value) in [
            ("exp", json!("1800000900")),
            ("exp", json!(1_800_000_900.5)),
            ("sub", json!("alice")),
            ("pkind", json!("admin")),
            ("mfa", json!("true")),
        ] {
            let token = signed(&key, &header(), &with(claims_json(), claim, value.clone()));
            assert_eq!(
                verify(&key, &token).map_err(|err| err.reason()),
                Err("malformed"),
                "{claim}: {value}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_compact_jws() {
        let key = key();
        let token = encode(KID, &key.encoding, &claims()).unwrap();
        for text in [
            String::new(),
            "abc".to_owned(),
            format!("{token}.extra"),
            token.replacen('.', "", 1),
            format!("={token}"),
            "a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                verify(&key, &text).map_err(|err| err.reason()),
                Err("malformed"),
                "{text}"
            );
        }
    }

    #[test]
    fn every_refusal_has_its_own_stable_reason() {
        let reasons = [
            TokenError::Malformed("x").reason(),
            TokenError::BadAlgorithm.reason(),
            TokenError::WrongType.reason(),
            TokenError::BadKeyId.reason(),
            TokenError::UnknownKey("k".into()).reason(),
            TokenError::BadSignature.reason(),
            TokenError::MissingClaim("exp").reason(),
            TokenError::Expired.reason(),
            TokenError::NotYetValid.reason(),
            TokenError::WrongIssuer.reason(),
            TokenError::WrongAudience.reason(),
            TokenError::BadLifetime.reason(),
        ];
        assert_eq!(
            reasons,
            [
                "malformed",
                "bad_algorithm",
                "wrong_type",
                "bad_key_id",
                "unknown_key",
                "bad_signature",
                "missing_claim",
                "expired",
                "not_yet_valid",
                "wrong_issuer",
                "wrong_audience",
                "bad_lifetime",
            ]
        );
    }

    #[test]
    fn the_lifetime_defaults_to_fifteen_minutes_and_cannot_exceed_it() {
        assert_eq!(policy().lifetime(), Duration::from_secs(900));
        assert_eq!(policy().leeway(), Duration::from_secs(5));
        let five = policy().with_lifetime(Duration::from_secs(300)).unwrap();
        assert_eq!(five.lifetime(), Duration::from_secs(300));
        assert!(matches!(
            policy().with_lifetime(Duration::from_secs(901)),
            Err(PolicyError::LifetimeTooLong { .. })
        ));
        assert!(matches!(
            policy().with_lifetime(Duration::from_millis(500)),
            Err(PolicyError::LifetimeTooShort { .. })
        ));
        assert!(matches!(
            policy().with_leeway(Duration::from_secs(61)),
            Err(PolicyError::LeewayTooLong { .. })
        ));
        assert_eq!(TokenPolicy::new(" ", "api"), Err(PolicyError::NoIssuer));
        assert_eq!(TokenPolicy::new("iss", ""), Err(PolicyError::NoAudience));
    }

    #[test]
    fn a_token_lives_as_long_as_the_policy_says() {
        let policy = policy().with_lifetime(Duration::from_secs(120)).unwrap();
        let claims = AccessClaims::issue(&policy, &grant(), now(), Uuid::new_v4());
        assert_eq!(
            (claims.iat, claims.nbf),
            (now().timestamp(), now().timestamp())
        );
        assert_eq!(claims.exp - claims.iat, 120);
        assert_eq!(
            claims.expires_at(),
            Some(now() + chrono::Duration::seconds(120))
        );
    }
}
