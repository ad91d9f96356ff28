//! Passwords: decides whether a new password may be used ([`check_policy`]) and turns
//! passwords into Argon2id hashes and checks them against stored hashes ([`PasswordHasher`],
//! implemented by [`Argon2id`]).
//!
//! The policy follows NIST SP 800-63B: a minimum length, no composition rules, and a check
//! against passwords known to be common (a list bundled from
//! `commands/data/common-passwords.txt`, whose header names its source and license). The
//! domain only ever sees the resulting [`PasswordHash`], an Argon2id PHC string.

use std::fmt;
use std::sync::LazyLock;

use argon2::password_hash::{
    self, PasswordHash as PhcHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use domain::identity::credentials::{NotAPasswordHash, PasswordHash};

/// The fewest characters (Unicode scalar values) a password may have.
pub const MIN_LENGTH: usize = 12;
/// The most characters a password may have; longer ones are refused to bound hashing cost.
pub const MAX_LENGTH: usize = 256;

/// OWASP's minimum Argon2id memory cost, in KiB (19 MiB).
const OWASP_M_KIB: u32 = 19_456;
/// OWASP's minimum Argon2id iteration count.
const OWASP_T: u32 = 2;
/// OWASP's Argon2id parallelism.
const OWASP_P: u32 = 1;
/// Random bytes of salt in each new hash.
const SALT_BYTES: usize = 16;
/// The Argon2 version written in PHC strings as `v=19` (0x13).
const ARGON2_VERSION_19: u32 = 0x13;

/// OWASP's minimum parameters, with Argon2's default 32-byte output.
const OWASP_PARAMS: Params = match Params::new(OWASP_M_KIB, OWASP_T, OWASP_P, None) {
    Ok(params) => params,
    Err(_) => panic!("OWASP's Argon2id parameters are valid Argon2 parameters"),
};

/// The bundled list of common passwords: one per line, `#` lines and blank lines ignored.
const COMMON_LIST: &str = include_str!("../../data/common-passwords.txt");

/// The common passwords, lowercased, sorted and without duplicates, for binary search.
static COMMON: LazyLock<Box<[String]>> = LazyLock::new(|| {
    let mut entries: Vec<String> = COMMON_LIST
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_lowercase)
        .collect();
    entries.sort_unstable();
    entries.dedup();
    entries.into_boxed_slice()
});

/// Why a new password is refused. Each message tells the user what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordRejected {
    /// The password has fewer than `min` characters.
    #[error("the password has {actual} characters; it needs at least {min}")]
    TooShort {
        /// The minimum, [`MIN_LENGTH`].
        min: usize,
        /// The number of characters the password has.
        actual: usize,
    },
    /// The password has more than `max` characters.
    #[error("the password has more than {max} characters; it may have at most {max}")]
    TooLong {
        /// The maximum, [`MAX_LENGTH`].
        max: usize,
    },
    /// The password is the account's email address or the part of it before the `@`.
    #[error(
        "the password is your email address or the part of it before the @; choose a password that is not your email address"
    )]
    MatchesEmail,
    /// The password is on the list of commonly used passwords.
    #[error(
        "the password is on a list of commonly used passwords that attackers try first; choose a different one"
    )]
    Common,
}

/// Checks a new password for the account with this email address.
///
/// The password must have [`MIN_LENGTH`] to [`MAX_LENGTH`] characters (Unicode scalar
/// values), must not be the email address or its local part (ignoring case and surrounding
/// whitespace), and must not be a common password ([`is_common`]). There are no rules about
/// character classes.
pub fn check_policy(password: &str, email: &str) -> Result<(), PasswordRejected> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(PasswordRejected::TooShort {
            min: MIN_LENGTH,
            actual: length,
        });
    }
    if length > MAX_LENGTH {
        return Err(PasswordRejected::TooLong { max: MAX_LENGTH });
    }
    if matches_email(password, email) {
        return Err(PasswordRejected::MatchesEmail);
    }
    if is_common(password) {
        return Err(PasswordRejected::Common);
    }
    Ok(())
}

/// Whether the password, ignoring case and surrounding whitespace, is on the bundled list of
/// common passwords.
///
/// The list holds only passwords of [`MIN_LENGTH`] or more characters: shorter ones are
/// refused by the length rule whether common or not.
pub fn is_common(password: &str) -> bool {
    let candidate = password.trim().to_lowercase();
    COMMON.binary_search(&candidate).is_ok()
}

/// Whether the password is the email address or its local part, ignoring case and
/// surrounding whitespace.
fn matches_email(password: &str, email: &str) -> bool {
    let password = password.trim().to_lowercase();
    let email = email.trim().to_lowercase();
    if password == email {
        return true;
    }
    email
        .rsplit_once('@')
        .is_some_and(|(local, _domain)| password == local)
}

/// What went wrong while hashing a password or checking one against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashingError {
    /// A cost parameter given to [`Argon2id::with_params`] is below OWASP's minimum.
    #[error("Argon2id {name} = {value} is below OWASP's minimum of {minimum}")]
    ParameterBelowMinimum {
        /// The parameter, e.g. `m (memory, KiB)`.
        name: &'static str,
        /// The value asked for.
        value: u32,
        /// OWASP's minimum.
        minimum: u32,
    },
    /// A parallelism other than 1 was given to [`Argon2id::with_params`].
    #[error("Argon2id parallelism p = {0} is not supported; this hasher runs with p = 1")]
    ParallelismNotOne(u32),
    /// Argon2 refused the parameters.
    #[error("Argon2 refused the parameters: {0}")]
    InvalidParameters(argon2::Error),
    /// The operating system's random number generator failed to give a salt.
    #[error("could not get random bytes for a salt: {0}")]
    Random(getrandom::Error),
    /// Argon2 failed to hash or verify.
    #[error("Argon2id failed: {0}")]
    Argon2(password_hash::Error),
    /// The hash Argon2 produced is not one the domain accepts (a bug, not a user error).
    #[error("the new hash is not a valid password hash: {0}")]
    Unrepresentable(NotAPasswordHash),
    /// The stored hash cannot be read as a PHC string with Argon2 parameters.
    #[error("the stored password hash cannot be read: {0}")]
    MalformedStoredHash(password_hash::Error),
    /// The stored hash lacks its salt or its hash value.
    #[error("the stored password hash has no {0}")]
    IncompleteStoredHash(&'static str),
    /// The stored hash was made by another algorithm or another version of Argon2.
    #[error(
        "the stored password hash uses {algorithm} version {version}; only argon2id version 19 is accepted"
    )]
    StoredHashNotArgon2id {
        /// The algorithm named in the hash.
        algorithm: String,
        /// The version named in the hash, or `none`.
        version: String,
    },
    /// A cost parameter of the stored hash is below OWASP's minimum; the hash is refused
    /// rather than trusted, so a downgraded hash cannot be used to sign in.
    #[error("the stored password hash has {name} = {value}, below OWASP's minimum of {minimum}")]
    StoredHashTooWeak {
        /// The parameter, e.g. `m (memory, KiB)`.
        name: &'static str,
        /// The value in the stored hash.
        value: u32,
        /// OWASP's minimum.
        minimum: u32,
    },
}

/// Hashes passwords and checks passwords against stored hashes.
///
/// Both operations are deliberately slow (tens of milliseconds and about 19 MiB of memory
/// at OWASP's parameters) and block the calling thread: callers on an async runtime must run
/// them on a blocking thread (e.g. `tokio::task::spawn_blocking`), never on the runtime's
/// worker threads. Tests can use a cheaper implementation of this trait.
pub trait PasswordHasher: Send + Sync + fmt::Debug {
    /// A new hash of the password, with a fresh random salt.
    fn hash(&self, password: &str) -> Result<PasswordHash, HashingError>;

    /// Whether the password is the one the stored hash was made from: `Ok(false)` for a
    /// wrong password, an error if the stored hash cannot be trusted or checked.
    fn verify(&self, password: &str, hash: &PasswordHash) -> Result<bool, HashingError>;
}

/// Argon2id (version 19) with fixed cost parameters, never below OWASP's minimum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argon2id {
    params: Params,
}

impl Argon2id {
    /// OWASP's minimum for Argon2id: m = 19 MiB (19456 KiB), t = 2, p = 1.
    pub fn owasp() -> Self {
        Self {
            params: OWASP_PARAMS,
        }
    }

    /// Stronger settings; refuses anything below OWASP's minimum (m < 19456 or t < 2 or
    /// p != 1) with an error naming the parameter.
    pub fn with_params(m_kib: u32, t: u32, p: u32) -> Result<Self, HashingError> {
        if m_kib < OWASP_M_KIB {
            return Err(HashingError::ParameterBelowMinimum {
                name: M_NAME,
                value: m_kib,
                minimum: OWASP_M_KIB,
            });
        }
        if t < OWASP_T {
            return Err(HashingError::ParameterBelowMinimum {
                name: T_NAME,
                value: t,
                minimum: OWASP_T,
            });
        }
        if p != OWASP_P {
            return Err(HashingError::ParallelismNotOne(p));
        }
        let params = Params::new(m_kib, t, p, None).map_err(HashingError::InvalidParameters)?;
        Ok(Self { params })
    }

    /// Whether a stored hash should be replaced by a new hash from this hasher (after the
    /// user next signs in with the right password): true if its memory or iteration cost is
    /// below this hasher's, its parallelism differs, or it cannot be trusted at all.
    pub fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        let Ok(phc) = PhcHash::new(hash.as_str()) else {
            return true;
        };
        let Ok(stored) = trusted_params(&phc) else {
            return true;
        };
        stored.m_cost() < self.params.m_cost()
            || stored.t_cost() < self.params.t_cost()
            || stored.p_cost() != self.params.p_cost()
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }
}

impl PasswordHasher for Argon2id {
    fn hash(&self, password: &str) -> Result<PasswordHash, HashingError> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(HashingError::Random)?;
        let salt = SaltString::encode_b64(&salt).map_err(HashingError::Argon2)?;
        let phc = self
            .argon2()
            .hash_password(password.as_bytes(), &salt)
            .map_err(HashingError::Argon2)?;
        PasswordHash::parse(phc.to_string()).map_err(HashingError::Unrepresentable)
    }

    fn verify(&self, password: &str, hash: &PasswordHash) -> Result<bool, HashingError> {
        let phc = PhcHash::new(hash.as_str()).map_err(HashingError::MalformedStoredHash)?;
        trusted_params(&phc)?;
        if phc.salt.is_none() {
            return Err(HashingError::IncompleteStoredHash("salt"));
        }
        if phc.hash.is_none() {
            return Err(HashingError::IncompleteStoredHash("hash value"));
        }
        // Argon2 recomputes the hash with the stored parameters and salt and compares the
        // outputs in constant time.
        match self.argon2().verify_password(password.as_bytes(), &phc) {
            Ok(()) => Ok(true),
            Err(password_hash::Error::Password) => Ok(false),
            Err(other) => Err(HashingError::Argon2(other)),
        }
    }
}

/// Parameter name of the memory cost, as shown in errors.
const M_NAME: &str = "m (memory, KiB)";
/// Parameter name of the iteration count, as shown in errors.
const T_NAME: &str = "t (iterations)";

/// The parameters of a stored hash, if it is Argon2id version 19 with at least OWASP's
/// memory and iteration costs.
fn trusted_params(phc: &PhcHash<'_>) -> Result<Params, HashingError> {
    if phc.algorithm != argon2::ARGON2ID_IDENT || phc.version != Some(ARGON2_VERSION_19) {
        return Err(HashingError::StoredHashNotArgon2id {
            algorithm: phc.algorithm.to_string(),
            version: phc
                .version
                .map_or_else(|| "none".to_owned(), |version| version.to_string()),
        });
    }
    let params = Params::try_from(phc).map_err(HashingError::MalformedStoredHash)?;
    if params.m_cost() < OWASP_M_KIB {
        return Err(HashingError::StoredHashTooWeak {
            name: M_NAME,
            value: params.m_cost(),
            minimum: OWASP_M_KIB,
        });
    }
    if params.t_cost() < OWASP_T {
        return Err(HashingError::StoredHashTooWeak {
            name: T_NAME,
            value: params.t_cost(),
            minimum: OWASP_T,
        });
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A real Argon2id PHC string made with cheap parameters (m = 4096 KiB, t = 2, p = 1),
    /// below OWASP's minimum, as an attacker or an old configuration might have stored it.
    fn weak_phc(password: &str) -> String {
        let params = Params::new(4096, 2, 1, None).unwrap();
        let salt = SaltString::encode_b64(&[7u8; SALT_BYTES]).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    /// A syntactically valid stored hash with the given version and parameter fields (e.g.
    /// `v=19`, `m=19456,t=2,p=1`): a 16-byte salt and a 32-byte hash value of zeros, which
    /// match no password. Cheap: nothing is hashed.
    fn stored_with(version: &str, params: &str) -> PasswordHash {
        let salt = "A".repeat(22);
        let hash = "A".repeat(43);
        PasswordHash::parse(format!("$argon2id${version}${params}${salt}${hash}")).unwrap()
    }

    #[test]
    fn rejects_a_password_shorter_than_twelve_characters() {
        assert_eq!(
            check_policy("abcdefghi", "alice@example.com"),
            Err(PasswordRejected::TooShort { min: 12, actual: 9 })
        );
        assert_eq!(
            check_policy("k7#vQ2!mZp9", "alice@example.com"),
            Err(PasswordRejected::TooShort {
                min: 12,
                actual: 11
            })
        );
        // Characters, not bytes: eleven two-byte characters are still too short.
        assert_eq!(
            check_policy("ééééééééééé", "alice@example.com"),
            Err(PasswordRejected::TooShort {
                min: 12,
                actual: 11
            })
        );
        assert_eq!(check_policy("k7#vQ2!mZp9w", "alice@example.com"), Ok(()));
    }

    #[test]
    fn the_too_short_message_says_how_many_characters_are_needed() {
        let rejected = check_policy("abcdefghi", "alice@example.com").unwrap_err();
        assert_eq!(
            rejected.to_string(),
            "the password has 9 characters; it needs at least 12"
        );
    }

    #[test]
    fn rejects_a_password_longer_than_256_characters() {
        let longest = "k7#vQ2!m".repeat(32);
        assert_eq!(longest.chars().count(), MAX_LENGTH);
        assert_eq!(check_policy(&longest, "alice@example.com"), Ok(()));
        let too_long = format!("{longest}x");
        assert_eq!(
            check_policy(&too_long, "alice@example.com"),
            Err(PasswordRejected::TooLong { max: 256 })
        );
    }

    #[test]
    fn rejects_the_email_address_as_password_in_any_case() {
        let email = "Alice.Wonderland@Example.com";
        for password in [
            "alice.wonderland@example.com",
            "ALICE.WONDERLAND@EXAMPLE.COM",
            "  alice.Wonderland@example.COM ",
        ] {
            assert_eq!(
                check_policy(password, email),
                Err(PasswordRejected::MatchesEmail),
                "{password:?}"
            );
        }
    }

    #[test]
    fn rejects_the_local_part_of_the_email_address() {
        assert_eq!(
            check_policy("ALICE.wonderland", " alice.wonderland@example.com "),
            Err(PasswordRejected::MatchesEmail)
        );
        // Containing the local part is allowed; only equality is refused.
        assert_eq!(
            check_policy("alice.wonderland.k7#v", "alice.wonderland@example.com"),
            Ok(())
        );
    }

    #[test]
    fn rejects_a_password_on_the_common_list() {
        for password in ["password1234", "PassWord1234", "qwertyuiopasdfghjkl"] {
            assert!(is_common(password), "{password:?}");
            assert_eq!(
                check_policy(password, "alice@example.com"),
                Err(PasswordRejected::Common),
                "{password:?}"
            );
        }
    }

    #[test]
    fn accepts_a_long_uncommon_password() {
        let password = "violet tram under 7 lanterns";
        assert!(!is_common(password));
        assert_eq!(check_policy(password, "alice@example.com"), Ok(()));
    }

    #[test]
    fn the_common_list_is_loaded_and_sorted_without_short_entries() {
        let list = &*COMMON;
        assert!(list.len() >= 9_000, "only {} entries", list.len());
        assert!(
            list.windows(2).all(|pair| pair[0] < pair[1]),
            "not sorted or has duplicates"
        );
        for entry in list {
            assert!(entry.chars().count() >= MIN_LENGTH, "{entry:?} is short");
            assert_eq!(*entry, entry.to_lowercase());
            assert!(!entry.starts_with('#'));
        }
        // The file itself is kept sorted, so a reader can check it by eye.
        let in_file: Vec<&str> = COMMON_LIST
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        assert_eq!(in_file.len(), list.len());
        assert!(in_file.iter().zip(list.iter()).all(|(a, b)| *a == b));
    }

    #[test]
    fn a_phc_round_trip_verifies_the_right_password_and_refuses_a_wrong_one() {
        let hasher = Argon2id::owasp();
        let hash = hasher.hash("violet tram under 7 lanterns").unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$"));
        assert_eq!(
            hasher.verify("violet tram under 7 lanterns", &hash),
            Ok(true)
        );
        assert_eq!(
            hasher.verify("violet tram under 7 lantern", &hash),
            Ok(false)
        );
    }

    #[test]
    fn the_hash_records_owasp_parameters() {
        let hash = Argon2id::owasp()
            .hash("violet tram under 7 lanterns")
            .unwrap();
        let phc = PhcHash::new(hash.as_str()).unwrap();
        assert_eq!(phc.algorithm.as_str(), "argon2id");
        assert_eq!(phc.version, Some(19));
        assert_eq!(phc.params.get_decimal("m"), Some(19_456));
        assert_eq!(phc.params.get_decimal("t"), Some(2));
        assert_eq!(phc.params.get_decimal("p"), Some(1));
        let mut salt = [0u8; 64];
        assert_eq!(phc.salt.unwrap().decode_b64(&mut salt).unwrap().len(), 16);
        assert_eq!(phc.hash.unwrap().len(), 32);
        assert!(!Argon2id::owasp().needs_rehash(&hash));
    }

    #[test]
    fn two_hashes_of_one_password_differ() {
        let hasher = Argon2id::owasp();
        let first = hasher.hash("violet tram under 7 lanterns").unwrap();
        let second = hasher.hash("violet tram under 7 lanterns").unwrap();
        assert_ne!(first.as_str(), second.as_str());
        let salt_of = |hash: &PasswordHash| hash.as_str().split('$').nth(4).unwrap().to_owned();
        assert_ne!(salt_of(&first), salt_of(&second));
    }

    #[test]
    fn refuses_parameters_below_owasp() {
        assert_eq!(
            Argon2id::with_params(19_455, 2, 1),
            Err(HashingError::ParameterBelowMinimum {
                name: "m (memory, KiB)",
                value: 19_455,
                minimum: 19_456
            })
        );
        assert_eq!(
            Argon2id::with_params(65_536, 1, 1),
            Err(HashingError::ParameterBelowMinimum {
                name: "t (iterations)",
                value: 1,
                minimum: 2
            })
        );
        assert_eq!(
            Argon2id::with_params(65_536, 3, 4),
            Err(HashingError::ParallelismNotOne(4))
        );
        assert_eq!(Argon2id::with_params(19_456, 2, 1), Ok(Argon2id::owasp()));
        assert!(Argon2id::with_params(65_536, 3, 1).is_ok());
    }

    #[test]
    fn refuses_to_verify_against_a_weaker_stored_hash() {
        let weak = PasswordHash::parse(weak_phc("violet tram under 7 lanterns")).unwrap();
        assert!(weak.as_str().contains("m=4096,t=2,p=1"));
        // Even the right password is not accepted against a downgraded hash.
        assert_eq!(
            Argon2id::owasp().verify("violet tram under 7 lanterns", &weak),
            Err(HashingError::StoredHashTooWeak {
                name: "m (memory, KiB)",
                value: 4096,
                minimum: 19_456
            })
        );
        let one_pass = stored_with("v=19", "m=19456,t=1,p=1");
        assert_eq!(
            Argon2id::owasp().verify("violet tram under 7 lanterns", &one_pass),
            Err(HashingError::StoredHashTooWeak {
                name: "t (iterations)",
                value: 1,
                minimum: 2
            })
        );
    }

    #[test]
    fn refuses_to_verify_against_an_older_argon2_version() {
        let old = stored_with("v=16", "m=19456,t=2,p=1");
        assert_eq!(
            Argon2id::owasp().verify("violet tram under 7 lanterns", &old),
            Err(HashingError::StoredHashNotArgon2id {
                algorithm: "argon2id".to_owned(),
                version: "16".to_owned()
            })
        );
    }

    #[test]
    fn refuses_to_verify_against_an_unreadable_stored_hash() {
        let garbage = PasswordHash::parse("$argon2id$v=19$m=19456,t=2,p=1$!!$??").unwrap();
        assert!(matches!(
            Argon2id::owasp().verify("violet tram under 7 lanterns", &garbage),
            Err(HashingError::MalformedStoredHash(_))
        ));
        assert!(Argon2id::owasp().needs_rehash(&garbage));
    }

    #[test]
    fn needs_rehash_when_the_stored_parameters_are_weaker_than_the_hashers() {
        let owasp_level = stored_with("v=19", "m=19456,t=2,p=1");
        let stronger = Argon2id::with_params(65_536, 3, 1).unwrap();
        assert!(!Argon2id::owasp().needs_rehash(&owasp_level));
        assert!(stronger.needs_rehash(&owasp_level));
        assert!(!stronger.needs_rehash(&stored_with("v=19", "m=65536,t=3,p=1")));
        assert!(stronger.needs_rehash(&stored_with("v=19", "m=65536,t=2,p=1")));
        assert!(Argon2id::owasp().needs_rehash(&stored_with("v=19", "m=4096,t=2,p=1")));
    }

    proptest! {
        #[test]
        fn a_long_uncommon_password_passes_unless_it_is_the_email(
            base in "[a-zA-Z0-9]{12,40}",
            suffix in "[a-zA-Z0-9!@#$%^&*._-]{0,8}",
            local in "[a-z][a-z0-9.]{0,19}",
            password_is_the_local_part in any::<bool>(),
        ) {
            let password = format!("{base}{suffix}");
            prop_assume!(!is_common(&password));
            let local = if password_is_the_local_part { password.clone() } else { local };
            let email = format!("{local}@example.com");
            let is_email = password.to_lowercase() == email.to_lowercase()
                || password.to_lowercase() == local.to_lowercase();
            let expected = if is_email { Err(PasswordRejected::MatchesEmail) } else { Ok(()) };
            prop_assert_eq!(check_policy(&password, &email), expected);
        }
    }
}
