//! A password hasher for tests and benchmarks that write many accounts.

use argon2::password_hash::{
    self, PasswordHash as Phc, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use commands::security::password::{HashingError, PasswordHasher};
use domain::identity::credentials::PasswordHash;
use uuid::Uuid;

/// Argon2id (version 19) at Argon2's minimum cost: the same algorithm and PHC strings as
/// production, at a small fraction of the work. Production's hasher refuses its hashes.
#[derive(Debug)]
pub struct CheapArgon2id(Params);

impl CheapArgon2id {
    /// The hasher.
    pub fn new() -> Self {
        Self(Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None).unwrap())
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.0.clone())
    }
}

impl PasswordHasher for CheapArgon2id {
    fn hash(&self, password: &str) -> Result<PasswordHash, HashingError> {
        let salt =
            SaltString::encode_b64(Uuid::new_v4().as_bytes()).map_err(HashingError::Argon2)?;
        let phc = self
            .argon2()
            .hash_password(password.as_bytes(), &salt)
            .map_err(HashingError::Argon2)?;
        PasswordHash::parse(phc.to_string()).map_err(HashingError::Unrepresentable)
    }

    fn verify(&self, password: &str, hash: &PasswordHash) -> Result<bool, HashingError> {
        let phc = Phc::new(hash.as_str()).map_err(HashingError::MalformedStoredHash)?;
        match self.argon2().verify_password(password.as_bytes(), &phc) {
            Ok(()) => Ok(true),
            Err(password_hash::Error::Password) => Ok(false),
            Err(other) => Err(HashingError::Argon2(other)),
        }
    }
}

impl Default for CheapArgon2id {
    fn default() -> Self {
        Self::new()
    }
}
