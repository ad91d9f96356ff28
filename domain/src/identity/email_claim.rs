//! The `EmailClaim` aggregate: the uniqueness of one email address within one tenant.
//!
//! There is one claim per (tenant, address), identified by [`claim_id`]: the tenant and the
//! address's keyed blind index ([`EmailIndex`]), never the address itself. The claim records
//! which user holds the address, if any.
//!
//! Consistency rules:
//! - at most one user holds an address in a tenant at a time;
//! - a holder claiming again is refused too (`already_claimed`), so that a retried
//!   registration is visible rather than silently accepted;
//! - only the holder releases the claim; a released claim can be claimed again, by anyone.
//!
//! The key decision: uniqueness is an aggregate of its own, decided by the event store's
//! optimistic concurrency rather than by a lookup in a projection (which lags and races). The
//! application layer appends to the claim (`EmailClaimed`) and to the user (`UserRegistered`,
//! or the email change) in ONE atomic write, each at the version it loaded. Of two concurrent
//! registrations of one address, both load the claim at the same version and both may pass
//! `handle`, but only the first write succeeds; the second fails on the claim's version, and
//! retried, is refused with `email_taken`. Changing a user's address claims the new address
//! and releases the old one in the same atomic write. The refusal never repeats the address
//! or its index, so a caller learns nothing it did not already send.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::values::{EmailIndex, TenantId, UserId};
use crate::refusal::{Refusal, RefusalKind};

/// The id of the claim on the address with blind index `index` in `tenant`:
/// `"{tenant}:{index}"`.
pub fn claim_id(tenant: TenantId, index: &EmailIndex) -> String {
    format!("{tenant}:{}", index.as_str())
}

/// What can be asked of an email claim.
#[derive(Clone, Debug, PartialEq)]
pub enum EmailClaimCommand {
    /// Claims the address for a user.
    Claim {
        /// The tenant; must match the claim's id.
        tenant_id: TenantId,
        /// The address's blind index; must match the claim's id.
        index: EmailIndex,
        /// The user who is to hold the address.
        user_id: UserId,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Gives the address up (the user changed address, or was removed or forgotten).
    Release {
        /// The user who holds the address.
        user_id: UserId,
        /// The time of the request.
        now: DateTime<Utc>,
    },
}

/// What happened to an email claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EmailClaimEvent {
    /// A user took the address.
    EmailClaimed {
        /// The tenant.
        tenant_id: TenantId,
        /// The address's blind index (a keyed hash, not the address).
        index: EmailIndex,
        /// Who holds the address now.
        user_id: UserId,
        /// When.
        claimed_at: DateTime<Utc>,
    },
    /// The holder gave the address up.
    EmailReleased {
        /// Who held it.
        user_id: UserId,
        /// When.
        released_at: DateTime<Utc>,
    },
}

impl DomainEvent for EmailClaimEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EmailClaimed { .. } => "EmailClaimed",
            Self::EmailReleased { .. } => "EmailReleased",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why an email claim refused a command. No message names the address or its index.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmailClaimError {
    /// Another user holds the address.
    #[error("this email address is already registered in this tenant")]
    EmailTaken,
    /// The user claiming the address already holds it.
    #[error("this user already holds this email address")]
    AlreadyClaimed,
    /// The tenant or index of a `Claim` differs from the ones this claim was made for (the
    /// command was sent to the wrong claim id).
    #[error("this claim is for another tenant or email address")]
    ClaimMismatch,
    /// `Release` by a user who does not hold the address.
    #[error("user {user_id} does not hold this email address")]
    NotHolder {
        /// The user who asked.
        user_id: UserId,
    },
}

impl Refusal for EmailClaimError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::EmailTaken | Self::AlreadyClaimed | Self::NotHolder { .. } => {
                RefusalKind::Conflict
            }
            Self::ClaimMismatch => RefusalKind::BadInput,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::EmailTaken => "email_taken",
            Self::AlreadyClaimed => "already_claimed",
            Self::ClaimMismatch => "claim_mismatch",
            Self::NotHolder { .. } => "not_holder",
        }
    }
}

/// The claim on one email address in one tenant. See the module documentation.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailClaim {
    tenant_id: Option<TenantId>,
    index: Option<EmailIndex>,
    holder: Option<UserId>,
}

impl EmailClaim {
    /// The tenant whose address this is, once claimed.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant_id
    }

    /// The user holding the address, if any.
    pub fn holder(&self) -> Option<UserId> {
        self.holder
    }
}

impl Aggregate for EmailClaim {
    const TYPE: &'static str = "EmailClaim";
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;
    type Services = ();

    async fn handle(
        &mut self,
        command: EmailClaimCommand,
        _service: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), EmailClaimError> {
        match command {
            EmailClaimCommand::Claim {
                tenant_id,
                index,
                user_id,
                now,
            } => {
                let other_tenant = self.tenant_id.is_some_and(|tenant| tenant != tenant_id);
                let other_index = self.index.as_ref().is_some_and(|known| *known != index);
                if other_tenant || other_index {
                    return Err(EmailClaimError::ClaimMismatch);
                }
                match self.holder {
                    Some(holder) if holder == user_id => {
                        return Err(EmailClaimError::AlreadyClaimed);
                    }
                    Some(_) => return Err(EmailClaimError::EmailTaken),
                    None => {}
                }
                let event = EmailClaimEvent::EmailClaimed {
                    tenant_id,
                    index,
                    user_id,
                    claimed_at: now,
                };
                sink.write(event, self).await;
            }
            EmailClaimCommand::Release { user_id, now } => {
                if self.holder != Some(user_id) {
                    return Err(EmailClaimError::NotHolder { user_id });
                }
                let event = EmailClaimEvent::EmailReleased {
                    user_id,
                    released_at: now,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: EmailClaimEvent) {
        match event {
            EmailClaimEvent::EmailClaimed {
                tenant_id,
                index,
                user_id,
                claimed_at: _,
            } => {
                self.tenant_id = Some(tenant_id);
                self.index = Some(index);
                self.holder = Some(user_id);
            }
            EmailClaimEvent::EmailReleased { .. } => {
                self.holder = None;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    type Framework = TestFramework<EmailClaim>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(minutes)
    }

    fn tenant() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(1))
    }

    fn index() -> EmailIndex {
        EmailIndex::from_digest([0xab; 32])
    }

    fn ada() -> UserId {
        UserId::from_uuid(Uuid::from_u128(10))
    }

    fn bob() -> UserId {
        UserId::from_uuid(Uuid::from_u128(11))
    }

    fn claim(user_id: UserId, minutes: i64) -> EmailClaimCommand {
        EmailClaimCommand::Claim {
            tenant_id: tenant(),
            index: index(),
            user_id,
            now: at(minutes),
        }
    }

    fn claimed(user_id: UserId, minutes: i64) -> EmailClaimEvent {
        EmailClaimEvent::EmailClaimed {
            tenant_id: tenant(),
            index: index(),
            user_id,
            claimed_at: at(minutes),
        }
    }

    fn released(user_id: UserId, minutes: i64) -> EmailClaimEvent {
        EmailClaimEvent::EmailReleased {
            user_id,
            released_at: at(minutes),
        }
    }

    fn replay(events: Vec<EmailClaimEvent>) -> EmailClaim {
        let mut claim = EmailClaim::default();
        for event in events {
            claim.apply(event);
        }
        claim
    }

    #[test]
    fn the_claim_id_is_the_tenant_and_the_index() {
        assert_eq!(
            claim_id(tenant(), &index()),
            format!("{}:{}", Uuid::from_u128(1), "ab".repeat(32))
        );
    }

    #[test]
    fn a_first_registration_claims_the_address() {
        Framework::with(())
            .given_no_previous_events()
            .when(claim(ada(), 0))
            .then_expect_events(vec![claimed(ada(), 0)]);
        assert_eq!(replay(vec![claimed(ada(), 0)]).holder(), Some(ada()));
    }

    #[test]
    fn a_second_registration_of_one_address_is_refused() {
        let error = Framework::with(())
            .given(vec![claimed(ada(), 0)])
            .when(claim(bob(), 1))
            .inspect_result()
            .unwrap_err();
        assert_eq!(error, EmailClaimError::EmailTaken);
        assert_eq!(error.kind(), RefusalKind::Conflict);
        assert_eq!(error.reason(), "email_taken");
        let message = error.to_string();
        assert_eq!(
            message,
            "this email address is already registered in this tenant"
        );
        assert!(!message.contains(index().as_str()));
    }

    #[test]
    fn claiming_again_by_the_holder_is_refused_so_a_retry_is_visible() {
        Framework::with(())
            .given(vec![claimed(ada(), 0)])
            .when(claim(ada(), 1))
            .then_expect_error(EmailClaimError::AlreadyClaimed);
    }

    #[test]
    fn a_released_address_can_be_claimed_again() {
        Framework::with(())
            .given(vec![claimed(ada(), 0), released(ada(), 5)])
            .when(claim(bob(), 6))
            .then_expect_events(vec![claimed(bob(), 6)]);
    }

    #[test]
    fn a_claim_refuses_a_command_meant_for_another_tenant_or_address() {
        let other_tenant = EmailClaimCommand::Claim {
            tenant_id: TenantId::from_uuid(Uuid::from_u128(2)),
            index: index(),
            user_id: bob(),
            now: at(6),
        };
        let other_index = EmailClaimCommand::Claim {
            tenant_id: tenant(),
            index: EmailIndex::from_digest([0xcd; 32]),
            user_id: bob(),
            now: at(6),
        };
        for command in [other_tenant, other_index] {
            Framework::with(())
                .given(vec![claimed(ada(), 0), released(ada(), 5)])
                .when(command)
                .then_expect_error(EmailClaimError::ClaimMismatch);
        }
    }

    #[test]
    fn the_holder_releases_the_address() {
        Framework::with(())
            .given(vec![claimed(ada(), 0)])
            .when(EmailClaimCommand::Release {
                user_id: ada(),
                now: at(5),
            })
            .then_expect_events(vec![released(ada(), 5)]);
        assert_eq!(
            replay(vec![claimed(ada(), 0), released(ada(), 5)]).holder(),
            None
        );
    }

    #[test]
    fn only_the_holder_releases_the_address() {
        Framework::with(())
            .given(vec![claimed(ada(), 0)])
            .when(EmailClaimCommand::Release {
                user_id: bob(),
                now: at(5),
            })
            .then_expect_error(EmailClaimError::NotHolder { user_id: bob() });
    }

    #[test]
    fn an_unheld_address_cannot_be_released() {
        for given in [vec![], vec![claimed(ada(), 0), released(ada(), 5)]] {
            Framework::with(())
                .given(given)
                .when(EmailClaimCommand::Release {
                    user_id: ada(),
                    now: at(6),
                })
                .then_expect_error(EmailClaimError::NotHolder { user_id: ada() });
        }
    }

    #[test]
    fn the_claimed_event_holds_the_index_not_the_address() {
        let json = serde_json::to_value(claimed(ada(), 0)).unwrap();
        assert_eq!(
            json["EmailClaimed"]["index"],
            serde_json::json!("ab".repeat(32))
        );
        let back: EmailClaimEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, claimed(ada(), 0));
        assert_eq!(back.event_type(), "EmailClaimed");
        assert_eq!(back.event_version(), "1");
    }

    fn command() -> impl Strategy<Value = EmailClaimCommand> {
        let user = prop_oneof![Just(ada()), Just(bob())];
        prop_oneof![
            (user.clone(), 0i64..60).prop_map(|(user, m)| claim(user, m)),
            (user, 0i64..60).prop_map(|(user_id, m)| EmailClaimCommand::Release {
                user_id,
                now: at(m),
            }),
        ]
    }

    proptest! {
        #[test]
        fn replaying_the_accepted_events_rebuilds_the_same_claim(
            commands in proptest::collection::vec(command(), 0..20)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut live = EmailClaim::default();
            let mut accepted = Vec::new();
            for command in commands {
                let before = live.clone();
                let sink = EventSink::default();
                match runtime.block_on(live.handle(command, &(), &sink)) {
                    Ok(()) => accepted.extend(runtime.block_on(sink.collect())),
                    Err(_) => prop_assert_eq!(&live, &before),
                }
            }
            prop_assert_eq!(replay(accepted), live);
        }
    }
}
