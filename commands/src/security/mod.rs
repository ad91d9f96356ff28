//! The secrets of identity: password hashing and policy, TOTP, recovery codes and API keys.
//!
//! Everything here works on values the domain already understands (`domain::identity`
//! credential types): this module makes and checks them, the domain stores only what is
//! safe to store (hashes, and secrets sealed with a key).

pub mod api_key;
pub mod password;
pub mod recovery;
pub mod totp;
