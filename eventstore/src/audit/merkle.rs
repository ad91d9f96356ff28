//! The tenant heads tree: a Merkle tree (RFC 9162 section 2.1) over every chain's latest
//! event at a checkpoint, so that one tenant's export can be tied to the signed log
//! without anyone else's events (docs/audit.md section 3).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::canonical::Digest32;

/// One chain's latest event at a checkpoint: a leaf of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChainHead {
    /// The tenant, or `None` for the platform-level chain. Leaves are ordered by this
    /// (`None` first, then tenants by their UUID, whose byte order is their text's order).
    pub tenant_id: Option<Uuid>,
    /// The global position of the chain's latest event.
    pub position: i64,
    /// That event's hash.
    pub hash: Digest32,
}

impl ChainHead {
    /// The leaf's data: the JCS encoding of `{"hash", "position", "tenant_id"}`.
    pub fn leaf_data(&self) -> String {
        let tenant = self
            .tenant_id
            .map_or_else(|| "null".to_owned(), |id| format!("\"{id}\""));
        format!(
            "{{\"hash\":\"{}\",\"position\":{},\"tenant_id\":{tenant}}}",
            self.hash, self.position
        )
    }

    /// `SHA-256(0x00 ‖ data)`.
    pub fn leaf_hash(&self) -> Digest32 {
        let mut hasher = Sha256::new();
        hasher.update([0_u8]);
        hasher.update(self.leaf_data().as_bytes());
        Digest32(hasher.finalize().into())
    }

    /// The head as an export's `tenant_head` member.
    pub fn to_item(&self) -> ChainHeadItem {
        ChainHeadItem {
            tenant_id: self.tenant_id,
            position: self.position,
            hash: self.hash.to_hex(),
        }
    }
}

/// A chain head as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHeadItem {
    /// The tenant, or `null`.
    pub tenant_id: Option<Uuid>,
    /// The event's global position.
    pub position: i64,
    /// The event's hash, hex.
    pub hash: String,
}

fn node_hash(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update([1_u8]);
    hasher.update(left.0);
    hasher.update(right.0);
    Digest32(hasher.finalize().into())
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle tree hash of leaf hashes, in order (RFC 9162 MTH).
pub fn root(leaves: &[Digest32]) -> Digest32 {
    match leaves {
        [] => Digest32(Sha256::digest([]).into()),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof (audit path) of leaf `index` (RFC 9162 section 2.1.3.1), or `None`
/// when `index` is out of range.
pub fn inclusion_proof(leaves: &[Digest32], index: usize) -> Option<Vec<Digest32>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut slice = leaves;
    let mut index = index;
    // Walk down from the root, collecting the sibling subtree of each step; the path lists
    // them from the leaf upwards.
    while slice.len() > 1 {
        let k = split(slice.len());
        if index < k {
            path.push(root(&slice[k..]));
            slice = &slice[..k];
        } else {
            path.push(root(&slice[..k]));
            slice = &slice[k..];
            index -= k;
        }
    }
    path.reverse();
    Some(path)
}

/// Checks an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Digest32,
    index: u64,
    tree_size: u64,
    path: &[Digest32],
    root: &Digest32,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fn_, mut sn) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Digest32> {
        (0..n)
            .map(|i| Digest32(Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    #[test]
    fn the_leaf_data_is_jcs() {
        let head = ChainHead {
            tenant_id: Some(Uuid::nil()),
            position: 12,
            hash: Digest32([0xcd; 32]),
        };
        let value: serde_json::Value = serde_json::from_str(&head.leaf_data()).unwrap();
        assert_eq!(
            serde_json_canonicalizer::to_string(&value).unwrap(),
            head.leaf_data()
        );
        let platform = ChainHead {
            tenant_id: None,
            ..head
        };
        assert!(platform.leaf_data().ends_with("\"tenant_id\":null}"));
        assert!(platform < head, "the platform chain sorts first");
    }

    #[test]
    fn a_tree_of_three_is_built_as_rfc_9162_says() {
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        assert_eq!(root(&l[..1]), l[0]);
    }

    proptest! {
        #[test]
        fn every_leaf_proves_its_inclusion_and_no_other_leaf_does(n in 1_usize..70, pick in 0_usize..70) {
            let l = leaves(n);
            let index = pick % n;
            let r = root(&l);
            let path = inclusion_proof(&l, index).unwrap();
            prop_assert!(verify_inclusion(&l[index], index as u64, n as u64, &path, &r));
            let other = (index + 1) % n;
            if other != index {
                prop_assert!(!verify_inclusion(&l[other], index as u64, n as u64, &path, &r));
                prop_assert!(!verify_inclusion(&l[index], other as u64, n as u64, &path, &r));
            }
            if let Some((first, rest)) = path.split_first() {
                let mut bent = vec![Digest32([0x55; 32])];
                bent.extend_from_slice(rest);
                prop_assert!(*first == bent[0] || !verify_inclusion(&l[index], index as u64, n as u64, &bent, &r));
            }
        }
    }
}
