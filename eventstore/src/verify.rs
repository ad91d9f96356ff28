//! Chain verification: recompute every hash and link over a range of the log, and name the
//! first position that fails and why.
//!
//! At each position, in this order: the event must exist (a deleted event leaves a gap);
//! its `prev_hash` must be the hash of the event before it; its `tenant_prev_hash` must be
//! the hash of the previous event of its tenant; and its hash must be SHA-256 of its
//! canonical encoding. When the range reaches the head, the head must name the last event.
//! A hash chain alone cannot tell a log whose tail was cut *and* whose head was rewritten
//! from a shorter honest log: signed checkpoints cover that.

use std::collections::HashMap;
use std::fmt;

use futures::TryStreamExt;
use sqlx::Row;
use uuid::Uuid;

use crate::canonical::{CanonicalError, Digest32, ZERO_HASH};
use crate::error::StoreError;
use crate::reader::{LogHead, LogReader};
use crate::record::{RecordedEvent, digest_column};

/// The first fault found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFault {
    /// The first position that fails.
    pub position: i64,
    /// Why it fails.
    pub reason: FaultReason,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "position {}: {}", self.position, self.reason)
    }
}

/// Why a position fails verification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultReason {
    /// No event holds this position; `next_present` is the next position that exists.
    Missing {
        /// The next position found after the gap, if any.
        next_present: Option<i64>,
    },
    /// `prev_hash` is not the hash of the previous event.
    PrevHashMismatch {
        /// The previous event's hash.
        expected: Digest32,
        /// What this event holds.
        stored: Digest32,
    },
    /// `tenant_prev_hash` is not the hash of the tenant's previous event.
    TenantPrevHashMismatch {
        /// The tenant, or `None` for the platform-level chain.
        tenant_id: Option<Uuid>,
        /// The hash of the tenant's previous event (zero for its first).
        expected: Digest32,
        /// What this event holds.
        stored: Digest32,
    },
    /// The stored hash is not the hash of the event's content.
    HashMismatch {
        /// SHA-256 of the canonical encoding of the stored columns.
        computed: Digest32,
        /// The stored hash.
        stored: Digest32,
    },
    /// The stored columns cannot be encoded (they break the encoding's rules).
    Unencodable(CanonicalError),
    /// Events exist beyond the position the log head names: the head was moved back.
    BeyondHead {
        /// The position the head names.
        head_position: i64,
        /// The last position present in the table.
        last_position: i64,
    },
    /// The log head does not name the last event: it was moved, or the tail was altered.
    HeadMismatch {
        /// The head's hash.
        head_hash: Digest32,
        /// The hash of the event at the head's position.
        event_hash: Digest32,
    },
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing {
                next_present: Some(next),
            } => write!(f, "event missing (the next event present is at {next})"),
            Self::Missing { next_present: None } => {
                write!(f, "event missing (no event follows)")
            }
            Self::PrevHashMismatch { expected, stored } => write!(
                f,
                "prev_hash {stored} does not link to the previous event's hash {expected}"
            ),
            Self::TenantPrevHashMismatch {
                tenant_id,
                expected,
                stored,
            } => {
                let tenant = tenant_id.map_or_else(|| "platform".to_owned(), |t| t.to_string());
                write!(
                    f,
                    "tenant_prev_hash {stored} does not link to the previous event of tenant {tenant}, whose hash is {expected}"
                )
            }
            Self::HashMismatch { computed, stored } => write!(
                f,
                "content altered: stored hash {stored}, but the content hashes to {computed}"
            ),
            Self::Unencodable(err) => write!(f, "content cannot be encoded: {err}"),
            Self::BeyondHead {
                head_position,
                last_position,
            } => write!(
                f,
                "events up to {last_position} exist beyond the log head at {head_position}"
            ),
            Self::HeadMismatch {
                head_hash,
                event_hash,
            } => write!(
                f,
                "the log head's hash {head_hash} is not this event's hash {event_hash}"
            ),
        }
    }
}

/// The result of verifying a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The first position checked.
    pub from: i64,
    /// The last position of the range.
    pub to: i64,
    /// How many events passed every check.
    pub verified: u64,
    /// The hash of the last event that passed, or [`ZERO_HASH`].
    pub last_hash: Digest32,
    /// The first fault, if any. Verification stops there.
    pub fault: Option<ChainFault>,
}

impl Verification {
    /// Whether the whole range verified.
    pub fn is_intact(&self) -> bool {
        self.fault.is_none()
    }
}

impl LogReader {
    /// Verifies the events from `from` to `to` (both included), or to the current head when
    /// `to` is `None`. Returns the first fault; a `from` above 1 is linked to the stored
    /// hash of the event before it.
    pub async fn verify(&self, from: i64, to: Option<i64>) -> Result<Verification, StoreError> {
        let from = from.max(1);
        // The head and the last position present, read in one snapshot.
        let row = sqlx::query(
            "SELECT h.position, h.hash, (SELECT max(global_position) FROM events) AS last \
               FROM log_head h",
        )
        .fetch_one(self.pool())
        .await?;
        let head = LogHead {
            position: row.try_get("position")?,
            hash: digest_column(&row, "hash")?,
        };
        let last: Option<i64> = row.try_get("last")?;
        let to = to.unwrap_or(head.position);
        let mut report = Verification {
            from,
            to,
            verified: 0,
            last_hash: ZERO_HASH,
            fault: None,
        };
        if from > to {
            return Ok(report);
        }

        let mut prev = if from == 1 {
            ZERO_HASH
        } else {
            match self.stored_hash_at(from - 1).await? {
                Some(hash) => hash,
                None => {
                    report.fault = Some(ChainFault {
                        position: from - 1,
                        reason: FaultReason::Missing {
                            next_present: Some(from),
                        },
                    });
                    return Ok(report);
                }
            }
        };
        let mut tenant_heads: HashMap<Option<Uuid>, Digest32> = HashMap::new();
        let mut expected = from;
        let mut events = std::pin::pin!(self.read_range(from, to));
        while let Some(event) = events.try_next().await? {
            if event.global_position != expected {
                report.fault = Some(ChainFault {
                    position: expected,
                    reason: FaultReason::Missing {
                        next_present: Some(event.global_position),
                    },
                });
                return Ok(report);
            }
            let tenant_prev = match tenant_heads.get(&event.tenant_id) {
                Some(hash) => *hash,
                None => self.tenant_hash_before(event.tenant_id, from).await?,
            };
            if let Some(reason) = check(&event, prev, tenant_prev) {
                report.fault = Some(ChainFault {
                    position: event.global_position,
                    reason,
                });
                return Ok(report);
            }
            prev = event.hash;
            tenant_heads.insert(event.tenant_id, event.hash);
            report.verified += 1;
            report.last_hash = event.hash;
            expected += 1;
        }
        if expected <= to {
            report.fault = Some(ChainFault {
                position: expected,
                reason: FaultReason::Missing { next_present: None },
            });
            return Ok(report);
        }
        if to == head.position
            && let Some(last) = last.filter(|last| *last > head.position)
        {
            report.fault = Some(ChainFault {
                position: head.position + 1,
                reason: FaultReason::BeyondHead {
                    head_position: head.position,
                    last_position: last,
                },
            });
            return Ok(report);
        }
        if to == head.position && report.verified > 0 && head.hash != prev {
            report.fault = Some(ChainFault {
                position: to,
                reason: FaultReason::HeadMismatch {
                    head_hash: head.hash,
                    event_hash: prev,
                },
            });
        }
        Ok(report)
    }

    async fn stored_hash_at(&self, position: i64) -> Result<Option<Digest32>, StoreError> {
        let row = sqlx::query("SELECT hash FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_optional(self.pool())
            .await?;
        row.map(|row| digest_column(&row, "hash")).transpose()
    }

    /// The hash of the tenant's last event before `before`, or zero if it has none.
    async fn tenant_hash_before(
        &self,
        tenant_id: Option<Uuid>,
        before: i64,
    ) -> Result<Digest32, StoreError> {
        if before <= 1 {
            return Ok(ZERO_HASH);
        }
        let row = match tenant_id {
            Some(tenant) => {
                sqlx::query(
                    "SELECT hash FROM events WHERE tenant_id = $1 AND global_position < $2 \
                     ORDER BY global_position DESC LIMIT 1",
                )
                .bind(tenant)
                .bind(before)
                .fetch_optional(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT hash FROM events WHERE tenant_id IS NULL AND global_position < $1 \
                     ORDER BY global_position DESC LIMIT 1",
                )
                .bind(before)
                .fetch_optional(self.pool())
                .await?
            }
        };
        Ok(row
            .map(|row| digest_column(&row, "hash"))
            .transpose()?
            .unwrap_or(ZERO_HASH))
    }
}

/// The checks of one event against the links the chain expects.
fn check(event: &RecordedEvent, prev: Digest32, tenant_prev: Digest32) -> Option<FaultReason> {
    if event.prev_hash != prev {
        return Some(FaultReason::PrevHashMismatch {
            expected: prev,
            stored: event.prev_hash,
        });
    }
    if event.tenant_prev_hash != tenant_prev {
        return Some(FaultReason::TenantPrevHashMismatch {
            tenant_id: event.tenant_id,
            expected: tenant_prev,
            stored: event.tenant_prev_hash,
        });
    }
    match event.compute_hash() {
        Err(err) => Some(FaultReason::Unencodable(err)),
        Ok(computed) if computed != event.hash => Some(FaultReason::HashMismatch {
            computed,
            stored: event.hash,
        }),
        Ok(_) => None,
    }
}
