//! The keyring of access-token signing keys, kept in PostgreSQL (`signing_keys`) so that every
//! gateway process signs with the same key and verifies every other's tokens.
//!
//! Keys are Ed25519, made with ring. A private key is stored only sealed with the secrets key
//! derived from the platform's master key (purpose `jwt signing key:<kid>`), which never
//! reaches the database. Each process holds the keys in memory and reloads them with
//! [`Keyring::refresh`] every [`REFRESH_INTERVAL`]; signing and verifying never touch the
//! database.
//!
//! The key decision is how a rotation reaches every process without a window in which one of
//! them refuses a fresh token: [`rotate`] publishes the next key ahead of its use. The new key
//! verifies as soon as a process has loaded it, and only starts to sign at its `activated_at`,
//! [`ACTIVATION_DELAY`] later, the moment the previous key retires. Every process switches
//! signer on its own clock, refreshed or not. A retired key still verifies for the rotation's
//! overlap (at least [`MIN_OVERLAP`]: the longest token lifetime and the largest leeway), so
//! tokens it signed stay good until they expire; after that it verifies nothing, and its
//! private key is erased at the next rotation.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use commands::identity::{Clock, SystemClock};
use commands::privacy::{DataKey, MasterKey, PrivacyError, open_secret, seal_secret};
use domain::identity::credentials::SealedSecret;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::jwt::{
    self, ALGORITHM, AccessClaims, AccessGrant, IssuedToken, TokenError, TokenPolicy,
};

/// How often a gateway should call [`Keyring::refresh`].
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long after a rotation the new key starts to sign: two refresh intervals, so that every
/// process verifies its tokens before the first one is made.
pub const ACTIVATION_DELAY: Duration = Duration::from_secs(2 * REFRESH_INTERVAL.as_secs());

/// The shortest overlap a rotation accepts: a retired key verifies at least as long as a
/// token it signed just before retiring can live, with the largest leeway.
pub const MIN_OVERLAP: Duration =
    Duration::from_secs(jwt::MAX_LIFETIME.as_secs() + jwt::MAX_LEEWAY.as_secs());

/// The overlap an operator gets unless they choose: room for a process that misses a few
/// refreshes, and for clocks that disagree.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(30 * 60);

/// The longest overlap a rotation accepts. A rotation is also how a leaked key is replaced;
/// the old key should not verify for long after.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Serializes first-key creation and rotations across processes (`pg_advisory_xact_lock`).
const LOCK: &str = "platform signing keys";

/// The purpose a private key is sealed for: bound to its key id, so that a sealed key copied
/// to another row does not open.
fn purpose(kid: &str) -> String {
    format!("jwt signing key:{kid}")
}

/// Why the keyring could not be loaded, refreshed, rotated or used to sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// PostgreSQL failed.
    #[error("the signing-key store failed")]
    Database(#[from] sqlx::Error),
    /// A private key does not open: the master key is not the one it was sealed with, or the
    /// sealed text was altered.
    #[error("signing key {kid} does not open with the configured master key")]
    Unseal {
        /// The key's id.
        kid: String,
        /// What opening said.
        #[source]
        source: PrivacyError,
    },
    /// Sealing a new private key failed.
    #[error("sealing a new signing key failed")]
    Seal(#[source] PrivacyError),
    /// The operating system's random source failed while making a key.
    #[error("making an Ed25519 signing key failed")]
    Generate,
    /// A stored key is not one this gateway makes.
    #[error("stored signing key {kid} is corrupt: {problem}")]
    Corrupt {
        /// The key's id, as stored.
        kid: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The overlap asked of a rotation is outside [`MIN_OVERLAP`] ..= [`MAX_OVERLAP`].
    #[error(
        "a retired key must verify from {:?} to {:?} after its retirement, not {overlap:?}",
        MIN_OVERLAP,
        MAX_OVERLAP
    )]
    OverlapOutOfRange {
        /// The overlap asked for.
        overlap: Duration,
    },
    /// No key of the keyring signs at this moment.
    #[error("no signing key is active")]
    NoSigner,
    /// jsonwebtoken could not sign.
    #[error("signing an access token failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new key's id.
    pub kid: String,
    /// When the new key starts to sign (and the keys in `retired` stop).
    pub activates_at: DateTime<Utc>,
    /// The keys it retired.
    pub retired: Vec<RetiredKey>,
}

/// A key retired by a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    /// The key's id.
    pub kid: String,
    /// When it stops signing.
    pub retires_at: DateTime<Utc>,
    /// When it stops verifying.
    pub removed_at: DateTime<Utc>,
}

impl fmt::Display for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} signs from {}", self.kid, time(self.activates_at))?;
        for retired in &self.retired {
            write!(
                f,
                "; key {} retires then and verifies until {}",
                retired.kid,
                time(retired.removed_at)
            )?;
        }
        Ok(())
    }
}

/// Where a key is in its life, at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published (it verifies), not signing yet.
    Pending,
    /// The key that signs (or one that would, were a newer one not active).
    Active,
    /// No longer signs; still verifies the tokens it signed.
    Retired,
    /// Verifies nothing any more.
    Removed,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Removed => "removed",
        })
    }
}

/// A stored signing key, as an operator sees it (never its private half).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    /// The key's id.
    pub kid: String,
    /// Its state when it was listed.
    pub state: KeyState,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it starts (or started) to sign.
    pub activated_at: DateTime<Utc>,
    /// When it stops (or stopped) signing.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it stops (or stopped) verifying.
    pub removed_at: Option<DateTime<Utc>>,
    /// Whether its sealed private key is still stored.
    pub has_private_key: bool,
}

impl fmt::Display for SigningKeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {:<7}  signs from {}",
            self.kid,
            self.state,
            time(self.activated_at)
        )?;
        if let Some(retired_at) = self.retired_at {
            write!(f, " to {}", time(retired_at))?;
        }
        if let Some(removed_at) = self.removed_at {
            write!(f, ", verifies until {}", time(removed_at))?;
        }
        Ok(())
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Every stored signing key, newest first, with its state now.
pub async fn list(pool: &PgPool) -> Result<Vec<SigningKeyInfo>, KeyError> {
    let now = Utc::now();
    let rows = sqlx::query(
        "SELECT kid, created_at, activated_at, retired_at, removed_at,
                private_key_sealed IS NOT NULL AS has_private_key
           FROM signing_keys
          ORDER BY activated_at DESC, kid DESC",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let activated_at: DateTime<Utc> = row.try_get("activated_at")?;
            let retired_at: Option<DateTime<Utc>> = row.try_get("retired_at")?;
            let removed_at: Option<DateTime<Utc>> = row.try_get("removed_at")?;
            let state = if removed_at.is_some_and(|removed| removed <= now) {
                KeyState::Removed
            } else if retired_at.is_some_and(|retired| retired <= now) {
                KeyState::Retired
            } else if activated_at > now {
                KeyState::Pending
            } else {
                KeyState::Active
            };
            Ok(SigningKeyInfo {
                kid: row.try_get("kid")?,
                state,
                created_at: row.try_get("created_at")?,
                activated_at,
                retired_at,
                removed_at,
                has_private_key: row.try_get("has_private_key")?,
            })
        })
        .collect()
}

/// Makes a new signing key, which starts to sign [`ACTIVATION_DELAY`] from now (at once if no
/// key signs now), and retires the key that signs until then: it still verifies for `overlap`
/// after that. Private keys of keys retired before now are erased.
pub async fn rotate(
    pool: &PgPool,
    master: &MasterKey,
    overlap: Duration,
) -> Result<Rotation, KeyError> {
    rotate_at(pool, master, overlap, Utc::now()).await
}

/// [`rotate`], as if it were `now` (a test's clock, or a clock shared with a keyring).
pub async fn rotate_at(
    pool: &PgPool,
    master: &MasterKey,
    overlap: Duration,
    now: DateTime<Utc>,
) -> Result<Rotation, KeyError> {
    // PostgreSQL keeps microseconds: what is compared later is what is stored now.
    let now = now.trunc_subsecs(6);
    let out_of_range = || KeyError::OverlapOutOfRange { overlap };
    if !(MIN_OVERLAP..=MAX_OVERLAP).contains(&overlap) {
        return Err(out_of_range());
    }
    let overlap_delta = TimeDelta::from_std(overlap).map_err(|_| out_of_range())?;
    let delay = TimeDelta::from_std(ACTIVATION_DELAY).unwrap_or(TimeDelta::zero());
    let key = NewKey::generate(&master.secrets_key())?;

    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let (latest, signs_now): (Option<DateTime<Utc>>, bool) = sqlx::query_as(
        "SELECT max(activated_at),
                coalesce(bool_or(activated_at <= $1 AND (retired_at IS NULL OR retired_at > $1)
                                 AND private_key_sealed IS NOT NULL), false)
           FROM signing_keys",
    )
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    // Activations only move forward, so that the newest active key is the signer everywhere.
    let mut activates_at = if signs_now { now + delay } else { now };
    if let Some(latest) = latest
        && latest >= activates_at
    {
        activates_at = latest + TimeDelta::milliseconds(1);
    }
    key.insert(&mut tx, activates_at).await?;
    let removed_at = activates_at + overlap_delta;
    let retired: Vec<String> = sqlx::query_scalar(
        "UPDATE signing_keys SET retired_at = $1, removed_at = $2
          WHERE retired_at IS NULL AND kid <> $3
          RETURNING kid",
    )
    .bind(activates_at)
    .bind(removed_at)
    .bind(&key.kid)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE signing_keys SET private_key_sealed = NULL
          WHERE private_key_sealed IS NOT NULL AND retired_at <= $1",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    tracing::info!(kid = %key.kid, %activates_at, retired = ?retired, "signing key rotated");
    Ok(Rotation {
        kid: key.kid,
        activates_at,
        retired: retired
            .into_iter()
            .map(|kid| RetiredKey {
                kid,
                retires_at: activates_at,
                removed_at,
            })
            .collect(),
    })
}

/// The access-token keyring of one gateway process: signs with the current key, verifies with
/// every key that still verifies, publishes them as a JWKS. Cheap to clone; clones share keys.
#[derive(Clone)]
pub struct Keyring {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    secrets: DataKey,
    policy: TokenPolicy,
    clock: Arc<dyn Clock>,
    keys: RwLock<Arc<KeySet>>,
    /// Tokens whose signature checked out, with the key id that checked it.
    verified: VerifiedTokens,
}

/// How many verified tokens a keyring remembers.
const VERIFIED_TOKENS: usize = 16_384;

/// Tokens whose signature checked out: the whole token is the key, so a token that differs in
/// any byte is checked in full. A remembered token is still checked against the time and
/// against its key still verifying, on every use.
type VerifiedTokens = quick_cache::sync::Cache<Box<str>, Arc<(String, AccessClaims)>>;

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys();
        f.debug_struct("Keyring")
            .field("policy", &self.shared.policy)
            .field(
                "kids",
                &keys
                    .keys
                    .iter()
                    .map(|key| key.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Loads the keyring from `pool`, opening private keys with `master`'s secrets key. If no
    /// key signs yet, makes the first one; processes that start together make only one.
    pub async fn load(
        pool: &PgPool,
        master: &MasterKey,
        policy: TokenPolicy,
    ) -> Result<Self, KeyError> {
        Self::load_with_clock(pool, master, policy, Arc::new(SystemClock)).await
    }

    /// [`Keyring::load`], with the time from `clock`.
    pub async fn load_with_clock(
        pool: &PgPool,
        master: &MasterKey,
        policy: TokenPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, KeyError> {
        let secrets = master.secrets_key();
        ensure_signer(pool, &secrets, clock.now()).await?;
        let keys = read_keys(pool, &secrets, &KeySet::default(), clock.now()).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                pool: pool.clone(),
                secrets,
                policy,
                clock,
                keys: RwLock::new(Arc::new(keys)),
                verified: VerifiedTokens::new(VERIFIED_TOKENS),
            }),
        })
    }

    /// Reloads the keys from the database, so that a rotation made anywhere is seen here. On
    /// failure the keys loaded before stay in use.
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let shared = &self.shared;
        let keys = read_keys(
            &shared.pool,
            &shared.secrets,
            &self.keys(),
            shared.clock.now(),
        )
        .await?;
        *shared.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// Signs an access token granting `grant`, with the key that signs now.
    pub fn sign(&self, grant: &AccessGrant) -> Result<IssuedToken, KeyError> {
        let now = self.shared.clock.now();
        let keys = self.keys();
        let (kid, key) = keys.signer(now).ok_or(KeyError::NoSigner)?;
        let claims = AccessClaims::issue(&self.shared.policy, grant, now, Uuid::new_v4());
        let token = jwt::encode(kid, key, &claims).map_err(KeyError::Sign)?;
        Ok(IssuedToken {
            token,
            kid: kid.to_owned(),
            claims,
        })
    }

    /// Verifies an access token: see [`crate::auth::jwt`] for every check, in order. The
    /// Ed25519 check of a token seen before is not repeated: its claims are checked against
    /// the time, and its key must still verify.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = self.shared.clock.now();
        let keys = self.keys();
        let policy = &self.shared.policy;
        if let Some(known) = self.shared.verified.get(token) {
            let (kid, claims) = known.as_ref();
            if keys.verifier(kid, now).is_some() {
                jwt::check_time(claims, policy, now)?;
                return Ok(claims.clone());
            }
        }
        let mut used = None;
        let claims = jwt::decode(token, policy, now, |kid| {
            used = Some(kid.to_owned());
            keys.verifier(kid, now)
        })?;
        if let Some(kid) = used {
            self.shared
                .verified
                .insert(token.into(), Arc::new((kid, claims.clone())));
        }
        Ok(claims)
    }

    /// The JSON Web Key Set of every key that still verifies, newest first, for
    /// `/.well-known/jwks.json`: a key is published from its creation, before it signs.
    pub fn jwks(&self) -> Value {
        let now = self.shared.clock.now();
        let keys = self.keys();
        let keys: Vec<Value> = keys
            .keys
            .iter()
            .filter(|key| key.verifies_at(now))
            .map(|key| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": key.x,
                    "kid": key.kid,
                    "alg": ALGORITHM,
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The id of the key that signs now, if one does.
    pub fn signing_kid(&self) -> Option<String> {
        let now = self.shared.clock.now();
        self.keys().signer(now).map(|(kid, _)| kid.to_owned())
    }

    /// The policy tokens are signed and verified under.
    pub fn policy(&self) -> &TokenPolicy {
        &self.shared.policy
    }

    fn keys(&self) -> Arc<KeySet> {
        // Only whole sets are ever swapped in, so a poisoned lock still holds a good one.
        Arc::clone(
            &self
                .shared
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// The keys loaded at one refresh, newest activation first.
#[derive(Default)]
struct KeySet {
    keys: Vec<LoadedKey>,
}

impl KeySet {
    /// The newest key active at `now`.
    fn signer(&self, now: DateTime<Utc>) -> Option<(&str, &EncodingKey)> {
        self.keys.iter().find_map(|key| match &key.signing {
            Some(signing) if key.signs_at(now) => Some((key.kid.as_str(), signing)),
            _ => None,
        })
    }

    /// The key `kid`, if it verifies at `now`.
    fn verifier(&self, kid: &str, now: DateTime<Utc>) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|key| key.kid == kid && key.verifies_at(now))
            .map(|key| &key.decoding)
    }

    fn find(&self, kid: &str) -> Option<&LoadedKey> {
        self.keys.iter().find(|key| key.kid == kid)
    }
}

struct LoadedKey {
    kid: String,
    public_key: [u8; 32],
    /// The public key in base64url, as the JWKS gives it.
    x: String,
    decoding: DecodingKey,
    /// Present while the key signs now or will.
    signing: Option<EncodingKey>,
    activated_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    removed_at: Option<DateTime<Utc>>,
}

impl LoadedKey {
    fn signs_at(&self, now: DateTime<Utc>) -> bool {
        self.activated_at <= now && self.retired_at.is_none_or(|retired| now < retired)
    }

    fn verifies_at(&self, now: DateTime<Utc>) -> bool {
        self.removed_at.is_none_or(|removed| now < removed)
    }
}

/// Makes the first key if no key signs at `now`, under the lock, so that processes starting
/// together make only one.
async fn ensure_signer(
    pool: &PgPool,
    secrets: &DataKey,
    now: DateTime<Utc>,
) -> Result<(), KeyError> {
    let now = now.trunc_subsecs(6);
    if signs_at(pool, now).await? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    if !signs_at(&mut *tx, now).await? {
        let key = NewKey::generate(secrets)?;
        key.insert(&mut tx, now).await?;
        tracing::info!(kid = %key.kid, "first signing key made");
    }
    tx.commit().await?;
    Ok(())
}

async fn signs_at<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    now: DateTime<Utc>,
) -> Result<bool, KeyError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM signing_keys
                         WHERE activated_at <= $1 AND (retired_at IS NULL OR retired_at > $1)
                           AND private_key_sealed IS NOT NULL)",
    )
    .bind(now)
    .fetch_one(executor)
    .await?)
}

async fn lock(conn: &mut PgConnection) -> Result<(), KeyError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Reads every key that verifies at `now`. Private keys that signed before (in `previous`) are
/// reused; others are opened, and checked against their public key.
async fn read_keys(
    pool: &PgPool,
    secrets: &DataKey,
    previous: &KeySet,
    now: DateTime<Utc>,
) -> Result<KeySet, KeyError> {
    let rows = sqlx::query(
        "SELECT kid, algorithm, public_key, private_key_sealed, activated_at, retired_at, removed_at
           FROM signing_keys
          WHERE removed_at IS NULL OR removed_at > $1
          ORDER BY activated_at DESC, kid DESC",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let keys = rows
        .iter()
        .map(|row| loaded_key(row, secrets, previous, now))
        .collect::<Result<_, _>>()?;
    Ok(KeySet { keys })
}

fn loaded_key(
    row: &PgRow,
    secrets: &DataKey,
    previous: &KeySet,
    now: DateTime<Utc>,
) -> Result<LoadedKey, KeyError> {
    let kid: String = row.try_get("kid")?;
    let corrupt = |problem| KeyError::Corrupt {
        kid: kid.clone(),
        problem,
    };
    if !jwt::is_well_formed_kid(&kid) {
        return Err(corrupt("its id is not well-formed"));
    }
    if row.try_get::<String, _>("algorithm")? != ALGORITHM {
        return Err(corrupt("its algorithm is not EdDSA"));
    }
    let public_key: [u8; 32] = row
        .try_get::<Vec<u8>, _>("public_key")?
        .try_into()
        .map_err(|_| corrupt("its public key is not 32 bytes"))?;
    let sealed: Option<String> = row.try_get("private_key_sealed")?;
    let activated_at: DateTime<Utc> = row.try_get("activated_at")?;
    let retired_at: Option<DateTime<Utc>> = row.try_get("retired_at")?;
    let removed_at: Option<DateTime<Utc>> = row.try_get("removed_at")?;

    let will_sign = retired_at.is_none_or(|retired| now < retired);
    let signing = match sealed {
        Some(sealed) if will_sign => Some(match previous.find(&kid) {
            Some(LoadedKey {
                signing: Some(signing),
                public_key: known,
                ..
            }) if *known == public_key => signing.clone(),
            _ => open_private_key(&kid, &public_key, sealed, secrets)?,
        }),
        _ => None,
    };
    Ok(LoadedKey {
        x: URL_SAFE_NO_PAD.encode(public_key),
        // jsonwebtoken 9 takes the raw 32-byte Ed25519 public key here, as ring does.
        decoding: DecodingKey::from_ed_der(&public_key),
        kid,
        public_key,
        signing,
        activated_at,
        retired_at,
        removed_at,
    })
}

fn open_private_key(
    kid: &str,
    public_key: &[u8; 32],
    sealed: String,
    secrets: &DataKey,
) -> Result<EncodingKey, KeyError> {
    let document = open_secret(secrets, &purpose(kid), &SealedSecret::from_sealed(sealed))
        .map_err(|source| KeyError::Unseal {
            kid: kid.to_owned(),
            source,
        })?;
    let pair =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&document).map_err(|_| KeyError::Corrupt {
            kid: kid.to_owned(),
            problem: "its private key is not an Ed25519 PKCS#8 document",
        })?;
    if pair.public_key().as_ref() != public_key.as_slice() {
        return Err(KeyError::Corrupt {
            kid: kid.to_owned(),
            problem: "its private key does not match its public key",
        });
    }
    Ok(EncodingKey::from_ed_der(&document))
}

/// A freshly made key, sealed, ready to insert.
struct NewKey {
    kid: String,
    public_key: [u8; 32],
    sealed: SealedSecret,
}

impl NewKey {
    fn generate(secrets: &DataKey) -> Result<Self, KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let pair = Ed25519KeyPair::from_pkcs8(document.as_ref()).map_err(|_| KeyError::Generate)?;
        let public_key: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Generate)?;
        // Time-ordered, 32 hex digits: well-formed, and sorts by creation.
        let kid = Uuid::now_v7().simple().to_string();
        let sealed =
            seal_secret(secrets, &purpose(&kid), document.as_ref()).map_err(KeyError::Seal)?;
        Ok(Self {
            kid,
            public_key,
            sealed,
        })
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        activated_at: DateTime<Utc>,
    ) -> Result<(), KeyError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_key, private_key_sealed, activated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&self.kid)
        .bind(ALGORITHM)
        .bind(self.public_key.as_slice())
        .bind(self.sealed.as_str())
        .bind(activated_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn key(
        kid: &str,
        activated: i64,
        retired: Option<i64>,
        removed: Option<i64>,
        signing: bool,
    ) -> LoadedKey {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(document.as_ref()).unwrap();
        let public_key: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        LoadedKey {
            kid: kid.to_owned(),
            public_key,
            x: URL_SAFE_NO_PAD.encode(public_key),
            decoding: DecodingKey::from_ed_der(&public_key),
            signing: signing.then(|| EncodingKey::from_ed_der(document.as_ref())),
            activated_at: at(activated),
            retired_at: retired.map(at),
            removed_at: removed.map(at),
        }
    }

    /// Old key `a` signs until 60, `b` from 60; `a` verifies until 1000.
    fn rotated() -> KeySet {
        KeySet {
            keys: vec![
                key("b", 60, None, None, true),
                key("a", 0, Some(60), Some(1000), true),
            ],
        }
    }

    fn signer(keys: &KeySet, now: i64) -> Option<&str> {
        keys.signer(at(now)).map(|(kid, _)| kid)
    }

    #[test]
    fn the_old_key_signs_until_the_new_one_activates() {
        let keys = rotated();
        assert_eq!(signer(&keys, 0), Some("a"));
        assert_eq!(signer(&keys, 59), Some("a"));
        assert_eq!(signer(&keys, 60), Some("b"));
        assert_eq!(signer(&keys, 5000), Some("b"));
    }

    #[test]
    fn a_key_published_ahead_verifies_before_it_signs() {
        let keys = rotated();
        assert!(keys.verifier("b", at(1)).is_some());
        assert_eq!(signer(&keys, 1), Some("a"));
    }

    #[test]
    fn a_retired_key_verifies_until_its_removal_and_not_after() {
        let keys = rotated();
        assert!(keys.verifier("a", at(999)).is_some());
        assert!(keys.verifier("a", at(1000)).is_none());
        assert!(keys.verifier("b", at(1000)).is_some());
        assert!(keys.verifier("c", at(0)).is_none());
    }

    #[test]
    fn a_key_without_its_private_half_never_signs() {
        let keys = KeySet {
            keys: vec![key("a", 0, None, None, false)],
        };
        assert_eq!(signer(&keys, 10), None);
    }

    #[test]
    fn the_overlap_covers_the_longest_token_and_leeway() {
        assert!(MIN_OVERLAP >= jwt::MAX_LIFETIME + jwt::MAX_LEEWAY);
        assert!(ACTIVATION_DELAY >= 2 * REFRESH_INTERVAL);
        assert!((MIN_OVERLAP..=MAX_OVERLAP).contains(&DEFAULT_OVERLAP));
    }

    #[test]
    fn a_sealed_key_is_bound_to_its_id() {
        let secrets = MasterKey::from_bytes([7; 32]).secrets_key();
        let key = NewKey::generate(&secrets).unwrap();
        assert!(jwt::is_well_formed_kid(&key.kid));
        let opened = open_private_key(
            &key.kid,
            &key.public_key,
            key.sealed.as_str().to_owned(),
            &secrets,
        );
        assert!(opened.is_ok());
        let moved = open_private_key(
            "another",
            &key.public_key,
            key.sealed.as_str().to_owned(),
            &secrets,
        );
        assert!(matches!(moved, Err(KeyError::Unseal { .. })));
        let other = NewKey::generate(&secrets).unwrap();
        let swapped = open_private_key(
            &key.kid,
            &other.public_key,
            key.sealed.as_str().to_owned(),
            &secrets,
        );
        assert!(matches!(swapped, Err(KeyError::Corrupt { .. })));
    }
}
