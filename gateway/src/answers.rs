//! Answers to queries, remembered for a moment.
//!
//! A query's answer depends on who asks (tenant, principal, credential, effective
//! permissions), on the request (the query, its variables and operation name: the request
//! body), and on the read models of the asker's tenant. An answer is kept under the first two
//! and stamped with the tenant's generation ([`crate::freshness`]) taken before the query ran;
//! it is served again while that generation holds and its time to live, counted from the
//! stamp, has not passed. Only answers without errors to requests whose every operation is a
//! query are kept: a mutation or a subscription never is, and neither is an answer that
//! depends on the request (an error carries the request id). Nor are answers that read what
//! no event of the tenant announces ([`is_volatile`]): the past as of a time (`asOf`, whose
//! position follows the whole log's head) and API keys' last use (written outside the log).
//!
//! The question keeps its own copy of the body: a slice of the connection's read buffer would
//! keep the whole buffer alive.
//!
//! The memory is bounded in bytes (each answer weighs its body and its key); the least useful
//! answers go first.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use domain::identity::principal::Principal;
use domain::identity::rbac::PermissionSet;
use quick_cache::Weighter;
use uuid::Uuid;

use crate::auth::Credential;
use crate::freshness::{Freshness, Stamp};

/// Fields whose answers no event of the tenant announces a change of.
const VOLATILE: [&str; 2] = ["asOf", "lastUsedAt"];

/// Whether a query names a field or argument whose answer may change with no event of the
/// asker's tenant: such answers are not remembered. A name in a comment or a string counts
/// too, which only remembers less.
pub fn is_volatile(query: &str) -> bool {
    VOLATILE.iter().any(|name| query.contains(name))
}
/// Who asked what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    /// The asker's tenant.
    pub tenant: Uuid,
    /// The asker.
    pub principal: Principal,
    /// How the asker proved who it is (a session, or an API key and its scopes).
    pub credential: Credential,
    /// The asker's effective permissions (narrowed to an API key's scopes).
    pub permissions: PermissionSet,
    /// The request body.
    pub body: Bytes,
}

/// A remembered answer.
#[derive(Debug)]
pub struct Answer {
    /// The response body.
    pub body: Bytes,
    stamp: Stamp,
}

#[derive(Clone)]
struct BySize;

impl Weighter<Question, Arc<Answer>> for BySize {
    fn weight(&self, question: &Question, answer: &Arc<Answer>) -> u64 {
        (question.body.len() + answer.body.len() + 160) as u64
    }
}

/// Answers to queries, bounded in bytes.
#[derive(Clone)]
pub struct Answers {
    cache: Arc<quick_cache::sync::Cache<Question, Arc<Answer>, BySize>>,
    freshness: Freshness,
    ttl: Duration,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("answers", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// An answer's size is only known once it is made; this is the guess the cache sizes its
/// tables with.
const TYPICAL_ANSWER: u64 = 2_048;

impl Answers {
    /// Answers of at most `bytes` in all, each served for at most `ttl`; `None` when either
    /// is zero (remembering nothing).
    pub fn new(bytes: u64, ttl: Duration, freshness: Freshness) -> Option<Self> {
        if bytes == 0 || ttl.is_zero() {
            return None;
        }
        let items = usize::try_from((bytes / TYPICAL_ANSWER).max(16)).unwrap_or(usize::MAX);
        Some(Self {
            cache: Arc::new(quick_cache::sync::Cache::with_weighter(
                items, bytes, BySize,
            )),
            freshness,
            ttl,
        })
    }

    /// The answer to `question`, if one is remembered and still holds.
    pub fn recall(&self, question: &Question) -> Option<Bytes> {
        let answer = self.cache.get(question)?;
        if answer.stamp.age() < self.ttl && self.freshness.holds(&answer.stamp) {
            Some(answer.body.clone())
        } else {
            None
        }
    }

    /// The stamp to keep an answer to a query of `tenant` with: taken before the query runs.
    pub fn stamp(&self, tenant: Uuid) -> Option<Stamp> {
        self.freshness.stamp(tenant)
    }

    /// Keeps `body` as the answer to `question`, read under `stamp`, unless the stamp no
    /// longer holds (a change came while the query ran).
    pub fn keep(&self, question: Question, stamp: Stamp, body: Bytes) {
        if self.freshness.holds(&stamp) && stamp.age() < self.ttl {
            self.cache
                .insert(question, Arc::new(Answer { body, stamp }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_about_the_past_or_key_use_are_volatile() {
        assert!(is_volatile("{ tenant(asOf: { position: 3 }) { name } }"));
        assert!(is_volatile("{ apiKeys { edges { node { lastUsedAt } } } }"));
        assert!(!is_volatile("{ me { principal } tenant { name } }"));
    }
}
