//! Audit: signed checkpoints of the log, and the keys that sign them (docs/audit.md).
//!
//! A hash chain proves nothing against whoever can rewrite the whole table. A checkpoint
//! signs (position, head hash, tenant heads root, time) with an Ed25519 key that only the
//! signing process holds; an auditor who trusts the public key can then tell the log that
//! was signed from any rewrite of it, and a tenant can tie its own chain to the signed log
//! through the tenant heads tree, without anyone else's events.
//!
//! - `key`: the signing key (PKCS#8 PEM) and public keys, with their ids;
//! - `checkpoint`: the signed message and its JSON item form;
//! - `merkle`: the tenant heads tree and its inclusion proofs (RFC 9162);
//! - `store`: checkpoints, keys and chain heads in PostgreSQL;
//! - `checkpointer`: the task that signs every N events or T seconds;
//! - `export`: the export of the log or of one tenant's events, streamed in pages;
//! - `verify_file`: the offline verification of an export, in one pass, and of the live
//!   store's checkpoints.

pub mod checkpoint;
pub mod checkpointer;
pub mod export;
pub mod key;
pub mod merkle;
pub mod store;
pub mod verify_file;

pub use checkpoint::{Checkpoint, CheckpointItem};
pub use checkpointer::{CheckpointError, Checkpointer, CheckpointerConfig};
pub use export::{Bound, Export, ExportError, ExportRequest, Format};
pub use key::{KeyError, PublicKey, SigningKey};
pub use merkle::ChainHead;
