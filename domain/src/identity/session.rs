//! The `Session` aggregate: one sign-in of a user in a tenant, and the family of refresh tokens
//! that keeps it alive.
//!
//! A session is opened with a first refresh token (generation 1). Every refresh presents the
//! current token and replaces it by a new one of the next generation (rotation); the domain
//! only ever sees SHA-256 hashes of the tokens ([`SecretHash`]). A session ends once, for good:
//! by logout, by revocation, or by expiry; an ended session refuses every refresh.
//!
//! Consistency rules:
//! - only the current token of an active session refreshes it, and only before `expires_at`;
//! - a token of an earlier generation of this family (one that was already rotated away) is
//!   proof that the family leaked: somebody, the user or a thief, holds a copy of a token the
//!   other already used. The whole family is revoked (OAuth 2.0 Security BCP, refresh token
//!   rotation). There is no grace period: two racing refreshes with one token also revoke
//!   the session, and the user signs in again;
//! - any other token is refused without an event.
//!
//! The key decision: theft detection must be *recorded*, so a refresh with a reused token is
//! not a refusal. The command **succeeds** with `RefreshTokenReused` followed by
//! `SessionRevoked { reason: TokenReuse }`. The application layer MUST inspect the events
//! (with [`reuse_detected`]) and, when it returns `true`, answer the caller with an
//! authentication failure, never with new tokens.
//!
//! The hashes of all earlier generations are kept so that reuse is recognised. This is bounded
//! twice: a session refreshes only until its `expires_at` (normally once per access-token
//! lifetime), and at most [`MAX_REMEMBERED_GENERATIONS`] earlier hashes are kept, the oldest
//! dropped first. A token older than that is refused as unknown (`unknown_refresh_token`)
//! rather than recognised as reused.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::credentials::SecretHash;
use super::values::{SessionId, TenantId, UserId};
use crate::refusal::{Refusal, RefusalKind};

/// The generation of the refresh token a session is opened with.
pub const FIRST_GENERATION: u64 = 1;

/// How many hashes of earlier refresh-token generations a session remembers; the oldest are
/// dropped beyond this.
pub const MAX_REMEMBERED_GENERATIONS: usize = 10_000;

/// Why a session is revoked on request (the reasons a `Revoke` command may give).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The user ended this session from their list of sessions.
    UserRequest,
    /// An administrator of the tenant ended it.
    AdminRequest,
    /// The user or an administrator ended all of the user's sessions.
    AllSessionsRevoked,
    /// The user's password changed.
    PasswordChanged,
    /// The user was deactivated.
    UserDeactivated,
}

/// Why a session was revoked, as recorded in [`SessionEvent::SessionRevoked`]: a
/// [`RevokeReason`], or the detection of a reused refresh token, which only the aggregate
/// itself decides (no command can claim it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// The user ended this session from their list of sessions.
    UserRequest,
    /// An administrator of the tenant ended it.
    AdminRequest,
    /// The user or an administrator ended all of the user's sessions.
    AllSessionsRevoked,
    /// The user's password changed.
    PasswordChanged,
    /// The user was deactivated.
    UserDeactivated,
    /// A refresh token of an earlier generation was presented: the family leaked.
    TokenReuse,
}

impl From<RevokeReason> for RevocationReason {
    fn from(reason: RevokeReason) -> Self {
        match reason {
            RevokeReason::UserRequest => Self::UserRequest,
            RevokeReason::AdminRequest => Self::AdminRequest,
            RevokeReason::AllSessionsRevoked => Self::AllSessionsRevoked,
            RevokeReason::PasswordChanged => Self::PasswordChanged,
            RevokeReason::UserDeactivated => Self::UserDeactivated,
        }
    }
}

/// Why a session ended on the user's own initiative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The user signed out.
    Logout,
}

/// What can be asked of a session.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionCommand {
    /// Opens the session after a successful sign-in.
    Open {
        /// The new session's id.
        session_id: SessionId,
        /// Who signed in.
        user_id: UserId,
        /// The tenant they signed in to.
        tenant_id: TenantId,
        /// The hash of the first refresh token (generation 1).
        refresh: SecretHash,
        /// When the session ends at the latest, whatever the refreshes.
        expires_at: DateTime<Utc>,
        /// Whether the sign-in passed a second factor.
        mfa: bool,
        /// The time of the sign-in.
        now: DateTime<Utc>,
    },
    /// Exchanges the presented refresh token for the next one.
    Refresh {
        /// The hash of the refresh token the caller presented.
        presented: SecretHash,
        /// The hash of the new refresh token, made by the application layer.
        next: SecretHash,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// The user signs out.
    Logout {
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Ends the session on behalf of the user, an administrator or a rule.
    Revoke {
        /// Why.
        reason: RevokeReason,
        /// The time of the request.
        now: DateTime<Utc>,
    },
    /// Records that the session ran out its lifetime.
    Expire {
        /// The time of the check; at or after `expires_at`.
        now: DateTime<Utc>,
    },
}

/// What happened to a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// A user signed in and the session began, with its first refresh token.
    SessionOpened {
        /// The session's id.
        session_id: SessionId,
        /// Who signed in.
        user_id: UserId,
        /// The tenant they signed in to.
        tenant_id: TenantId,
        /// The hash of the first refresh token (generation 1).
        refresh: SecretHash,
        /// When the session ends at the latest.
        expires_at: DateTime<Utc>,
        /// Whether the sign-in passed a second factor.
        mfa: bool,
        /// When.
        opened_at: DateTime<Utc>,
    },
    /// The current refresh token was exchanged for a new one.
    RefreshTokenRotated {
        /// The new token's generation (the previous one plus one).
        generation: u64,
        /// The hash of the new token.
        refresh: SecretHash,
        /// When.
        rotated_at: DateTime<Utc>,
    },
    /// A refresh token of an earlier generation was presented: the family leaked. Always
    /// followed by `SessionRevoked { reason: TokenReuse }`.
    RefreshTokenReused {
        /// The generation of the token that was presented again.
        presented_generation: u64,
        /// When.
        detected_at: DateTime<Utc>,
    },
    /// The session was ended by someone or something other than its user signing out.
    SessionRevoked {
        /// Why.
        reason: RevocationReason,
        /// When.
        revoked_at: DateTime<Utc>,
    },
    /// The user signed out.
    SessionEnded {
        /// Why.
        reason: EndReason,
        /// When.
        ended_at: DateTime<Utc>,
    },
    /// The session ran out its lifetime.
    SessionExpired {
        /// When this was recorded.
        expired_at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionOpened { .. } => "SessionOpened",
            Self::RefreshTokenRotated { .. } => "RefreshTokenRotated",
            Self::RefreshTokenReused { .. } => "RefreshTokenReused",
            Self::SessionRevoked { .. } => "SessionRevoked",
            Self::SessionEnded { .. } => "SessionEnded",
            Self::SessionExpired { .. } => "SessionExpired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Whether the events of a `Refresh` detected the reuse of a rotated refresh token. When it
/// is `true` the command "succeeded" only so that the revocation is recorded: the caller must
/// be answered with an authentication failure.
pub fn reuse_detected(events: &[SessionEvent]) -> bool {
    events
        .iter()
        .any(|event| matches!(event, SessionEvent::RefreshTokenReused { .. }))
}

/// Why a session refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// `Open` on a session that was already opened.
    #[error("this session was already opened; a new sign-in opens a new session")]
    AlreadyOpened,
    /// `Open` with an `expires_at` that is not after `now`.
    #[error("a session must expire after it opens, but it would expire at {expires_at}")]
    ExpiryNotInFuture {
        /// The refused expiry.
        expires_at: DateTime<Utc>,
    },
    /// A command other than `Open` on a session that was never opened.
    #[error("there is no such session")]
    NotOpened,
    /// `Refresh` on a session that was logged out, revoked or expired.
    #[error("the session has ended; sign in again")]
    Ended,
    /// `Refresh` at or after `expires_at`.
    #[error("the session expired at {expires_at}; sign in again")]
    Expired {
        /// When it expired.
        expires_at: DateTime<Utc>,
    },
    /// `Refresh` with a token that is neither the current one nor an earlier one.
    #[error("the refresh token is not valid for this session")]
    UnknownRefreshToken,
    /// `Refresh` whose new token is the current or an earlier token of the family (a fault
    /// of the caller, which must make a fresh random token).
    #[error("the new refresh token must be fresh, but it was already used in this session")]
    RefreshTokenNotFresh,
    /// `Logout`, `Revoke` or `Expire` on a session that has already ended.
    #[error("the session has already ended")]
    AlreadyEnded,
    /// `Expire` before `expires_at`.
    #[error("the session does not expire until {expires_at}")]
    NotExpired {
        /// When it expires.
        expires_at: DateTime<Utc>,
    },
}

impl Refusal for SessionError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::AlreadyOpened | Self::AlreadyEnded | Self::NotExpired { .. } => {
                RefusalKind::Conflict
            }
            Self::ExpiryNotInFuture { .. } | Self::RefreshTokenNotFresh => RefusalKind::BadInput,
            Self::NotOpened => RefusalKind::NotFound,
            Self::Ended | Self::Expired { .. } | Self::UnknownRefreshToken => {
                RefusalKind::Unauthenticated
            }
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyOpened => "already_opened",
            Self::ExpiryNotInFuture { .. } => "expiry_not_in_future",
            Self::NotOpened => "session_not_found",
            Self::Ended => "session_ended",
            Self::Expired { .. } => "session_expired",
            Self::UnknownRefreshToken => "unknown_refresh_token",
            Self::RefreshTokenNotFresh => "refresh_token_not_fresh",
            Self::AlreadyEnded => "already_ended",
            Self::NotExpired { .. } => "not_expired",
        }
    }
}

/// A refresh token that was rotated away, remembered to recognise its reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RotatedToken {
    generation: u64,
    hash: SecretHash,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ending {
    LoggedOut {
        at: DateTime<Utc>,
    },
    Revoked {
        reason: RevocationReason,
        at: DateTime<Utc>,
    },
    Expired {
        at: DateTime<Utc>,
    },
}

/// A login session and its refresh-token family. See the module documentation.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    session_id: Option<SessionId>,
    user_id: Option<UserId>,
    tenant_id: Option<TenantId>,
    opened_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    mfa: bool,
    generation: u64,
    current: Option<SecretHash>,
    earlier: VecDeque<RotatedToken>,
    ended: Option<Ending>,
}

impl Session {
    /// The user signed in, once opened.
    pub fn user(&self) -> Option<UserId> {
        self.user_id
    }

    /// The tenant signed in to, once opened.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant_id
    }

    /// When the session was opened.
    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at
    }

    /// Whether the session was opened, has not ended, and `now` is before its expiry.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.ended.is_none() && self.expires_at.is_some_and(|expires_at| now < expires_at)
    }

    /// Whether the session was logged out, revoked or expired.
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// The generation of the current refresh token (0 before the session is opened).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the session ends at the latest, once opened.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Whether the sign-in passed a second factor.
    pub fn mfa(&self) -> bool {
        self.mfa
    }

    /// How many earlier generations are remembered (at most
    /// [`MAX_REMEMBERED_GENERATIONS`]).
    pub fn remembered_generations(&self) -> usize {
        self.earlier.len()
    }

    /// The generation of `hash` if it is a remembered, rotated-away token of this family.
    fn earlier_generation_of(&self, hash: &SecretHash) -> Option<u64> {
        self.earlier
            .iter()
            .find(|token| token.hash == *hash)
            .map(|token| token.generation)
    }

    /// Refuses a command that ends the session when it is not open.
    fn check_can_end(&self) -> Result<DateTime<Utc>, SessionError> {
        let expires_at = self.expires_at.ok_or(SessionError::NotOpened)?;
        if self.ended.is_some() {
            return Err(SessionError::AlreadyEnded);
        }
        Ok(expires_at)
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _service: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        match command {
            SessionCommand::Open {
                session_id,
                user_id,
                tenant_id,
                refresh,
                expires_at,
                mfa,
                now,
            } => {
                if self.session_id.is_some() {
                    return Err(SessionError::AlreadyOpened);
                }
                if expires_at <= now {
                    return Err(SessionError::ExpiryNotInFuture { expires_at });
                }
                let event = SessionEvent::SessionOpened {
                    session_id,
                    user_id,
                    tenant_id,
                    refresh,
                    expires_at,
                    mfa,
                    opened_at: now,
                };
                sink.write(event, self).await;
            }
            SessionCommand::Refresh {
                presented,
                next,
                now,
            } => {
                let (Some(expires_at), Some(current)) = (self.expires_at, self.current) else {
                    return Err(SessionError::NotOpened);
                };
                if self.ended.is_some() {
                    return Err(SessionError::Ended);
                }
                if now >= expires_at {
                    return Err(SessionError::Expired { expires_at });
                }
                if presented == current {
                    if next == current || self.earlier_generation_of(&next).is_some() {
                        return Err(SessionError::RefreshTokenNotFresh);
                    }
                    let event = SessionEvent::RefreshTokenRotated {
                        generation: self.generation.saturating_add(1),
                        refresh: next,
                        rotated_at: now,
                    };
                    sink.write(event, self).await;
                } else if let Some(presented_generation) = self.earlier_generation_of(&presented) {
                    let reused = SessionEvent::RefreshTokenReused {
                        presented_generation,
                        detected_at: now,
                    };
                    let revoked = SessionEvent::SessionRevoked {
                        reason: RevocationReason::TokenReuse,
                        revoked_at: now,
                    };
                    sink.write(reused, self).await;
                    sink.write(revoked, self).await;
                } else {
                    return Err(SessionError::UnknownRefreshToken);
                }
            }
            SessionCommand::Logout { now } => {
                self.check_can_end()?;
                let event = SessionEvent::SessionEnded {
                    reason: EndReason::Logout,
                    ended_at: now,
                };
                sink.write(event, self).await;
            }
            SessionCommand::Revoke { reason, now } => {
                self.check_can_end()?;
                let event = SessionEvent::SessionRevoked {
                    reason: reason.into(),
                    revoked_at: now,
                };
                sink.write(event, self).await;
            }
            SessionCommand::Expire { now } => {
                let expires_at = self.check_can_end()?;
                if now < expires_at {
                    return Err(SessionError::NotExpired { expires_at });
                }
                sink.write(SessionEvent::SessionExpired { expired_at: now }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::SessionOpened {
                session_id,
                user_id,
                tenant_id,
                refresh,
                expires_at,
                mfa,
                opened_at,
            } => {
                self.session_id = Some(session_id);
                self.opened_at = Some(opened_at);
                self.user_id = Some(user_id);
                self.tenant_id = Some(tenant_id);
                self.expires_at = Some(expires_at);
                self.mfa = mfa;
                self.generation = FIRST_GENERATION;
                self.current = Some(refresh);
                self.earlier.clear();
                self.ended = None;
            }
            SessionEvent::RefreshTokenRotated {
                generation,
                refresh,
                rotated_at: _,
            } => {
                if let Some(previous) = self.current.replace(refresh) {
                    self.earlier.push_back(RotatedToken {
                        generation: self.generation,
                        hash: previous,
                    });
                    while self.earlier.len() > MAX_REMEMBERED_GENERATIONS {
                        self.earlier.pop_front();
                    }
                }
                self.generation = generation;
            }
            // The state change is the `SessionRevoked` that always follows.
            SessionEvent::RefreshTokenReused { .. } => {}
            SessionEvent::SessionRevoked { reason, revoked_at } => {
                self.ended = Some(Ending::Revoked {
                    reason,
                    at: revoked_at,
                });
            }
            SessionEvent::SessionEnded {
                reason: EndReason::Logout,
                ended_at,
            } => {
                self.ended = Some(Ending::LoggedOut { at: ended_at });
            }
            SessionEvent::SessionExpired { expired_at } => {
                self.ended = Some(Ending::Expired { at: expired_at });
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

    type Framework = TestFramework<Session>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(minutes)
    }

    fn expiry() -> DateTime<Utc> {
        at(60)
    }

    fn h(n: u8) -> SecretHash {
        SecretHash::from_bytes([n; 32])
    }

    fn session_id() -> SessionId {
        SessionId::from_uuid(Uuid::from_u128(1))
    }

    fn user_id() -> UserId {
        UserId::from_uuid(Uuid::from_u128(2))
    }

    fn tenant_id() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(3))
    }

    fn open() -> SessionCommand {
        SessionCommand::Open {
            session_id: session_id(),
            user_id: user_id(),
            tenant_id: tenant_id(),
            refresh: h(1),
            expires_at: expiry(),
            mfa: true,
            now: t0(),
        }
    }

    fn opened() -> SessionEvent {
        SessionEvent::SessionOpened {
            session_id: session_id(),
            user_id: user_id(),
            tenant_id: tenant_id(),
            refresh: h(1),
            expires_at: expiry(),
            mfa: true,
            opened_at: t0(),
        }
    }

    fn rotated(generation: u64, n: u8) -> SessionEvent {
        SessionEvent::RefreshTokenRotated {
            generation,
            refresh: h(n),
            rotated_at: at(i64::from(n)),
        }
    }

    fn refresh(presented: u8, next: u8, minutes: i64) -> SessionCommand {
        SessionCommand::Refresh {
            presented: h(presented),
            next: h(next),
            now: at(minutes),
        }
    }

    fn replay(events: Vec<SessionEvent>) -> Session {
        let mut session = Session::default();
        for event in events {
            session.apply(event);
        }
        session
    }

    #[test]
    fn a_sign_in_opens_a_session_with_the_first_generation() {
        Framework::with(())
            .given_no_previous_events()
            .when(open())
            .then_expect_events(vec![opened()]);
        let session = replay(vec![opened()]);
        assert_eq!(session.generation(), FIRST_GENERATION);
        assert_eq!(session.user(), Some(user_id()));
        assert_eq!(session.tenant(), Some(tenant_id()));
        assert_eq!(session.expires_at(), Some(expiry()));
        assert!(session.mfa());
        assert!(session.is_active(at(59)));
        assert!(!session.is_active(expiry()));
    }

    #[test]
    fn a_session_is_opened_only_once() {
        Framework::with(())
            .given(vec![opened()])
            .when(open())
            .then_expect_error(SessionError::AlreadyOpened);
    }

    #[test]
    fn a_session_cannot_open_already_expired() {
        let mut command = open();
        if let SessionCommand::Open { expires_at, .. } = &mut command {
            *expires_at = t0();
        }
        Framework::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(SessionError::ExpiryNotInFuture { expires_at: t0() });
    }

    #[test]
    fn the_current_refresh_token_is_rotated_to_the_next_generation() {
        Framework::with(())
            .given(vec![opened()])
            .when(refresh(1, 2, 2))
            .then_expect_events(vec![rotated(2, 2)]);
        Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(2, 3, 3))
            .then_expect_events(vec![rotated(3, 3)]);
        assert_eq!(replay(vec![opened(), rotated(2, 2)]).generation(), 2);
    }

    #[test]
    fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
        let events = Framework::with(())
            .given(vec![opened(), rotated(2, 2), rotated(3, 3)])
            .when(refresh(2, 9, 10))
            .inspect_result()
            .unwrap();
        assert_eq!(
            events,
            vec![
                SessionEvent::RefreshTokenReused {
                    presented_generation: 2,
                    detected_at: at(10),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::TokenReuse,
                    revoked_at: at(10),
                },
            ]
        );
        assert!(reuse_detected(&events));
        let mut history = vec![opened(), rotated(2, 2), rotated(3, 3)];
        history.extend(events);
        let session = replay(history);
        assert!(session.is_ended());
        assert!(!session.is_active(at(11)));
    }

    #[test]
    fn reusing_the_very_first_refresh_token_is_detected_as_generation_one() {
        let events = Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(1, 9, 10))
            .inspect_result()
            .unwrap();
        assert!(matches!(
            events.first(),
            Some(SessionEvent::RefreshTokenReused {
                presented_generation: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_plain_rotation_is_not_reported_as_reuse() {
        assert!(!reuse_detected(&[rotated(2, 2)]));
        assert!(!reuse_detected(&[]));
    }

    #[test]
    fn after_a_reuse_even_the_current_token_is_refused() {
        Framework::with(())
            .given(vec![
                opened(),
                rotated(2, 2),
                SessionEvent::RefreshTokenReused {
                    presented_generation: 1,
                    detected_at: at(3),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::TokenReuse,
                    revoked_at: at(3),
                },
            ])
            .when(refresh(2, 3, 4))
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn an_unknown_refresh_token_is_refused_without_an_event() {
        Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(7, 8, 3))
            .then_expect_error(SessionError::UnknownRefreshToken);
    }

    #[test]
    fn a_refresh_at_the_expiry_is_refused() {
        Framework::with(())
            .given(vec![opened()])
            .when(refresh(1, 2, 60))
            .then_expect_error(SessionError::Expired {
                expires_at: expiry(),
            });
    }

    #[test]
    fn a_reused_token_after_the_expiry_is_refused_as_expired() {
        Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(1, 3, 61))
            .then_expect_error(SessionError::Expired {
                expires_at: expiry(),
            });
    }

    #[test]
    fn a_logged_out_session_refuses_to_refresh() {
        Framework::with(())
            .given(vec![
                opened(),
                SessionEvent::SessionEnded {
                    reason: EndReason::Logout,
                    ended_at: at(5),
                },
            ])
            .when(refresh(1, 2, 6))
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn a_revoked_or_expired_session_refuses_to_refresh() {
        for ending in [
            SessionEvent::SessionRevoked {
                reason: RevocationReason::AdminRequest,
                revoked_at: at(5),
            },
            SessionEvent::SessionExpired { expired_at: at(60) },
        ] {
            Framework::with(())
                .given(vec![opened(), ending])
                .when(refresh(1, 2, 6))
                .then_expect_error(SessionError::Ended);
        }
    }

    #[test]
    fn a_session_that_was_never_opened_refuses_everything() {
        for command in [
            refresh(1, 2, 1),
            SessionCommand::Logout { now: at(1) },
            SessionCommand::Revoke {
                reason: RevokeReason::UserRequest,
                now: at(1),
            },
            SessionCommand::Expire { now: at(61) },
        ] {
            Framework::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(SessionError::NotOpened);
        }
    }

    #[test]
    fn a_new_refresh_token_must_not_repeat_one_of_the_family() {
        Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(2, 2, 3))
            .then_expect_error(SessionError::RefreshTokenNotFresh);
        Framework::with(())
            .given(vec![opened(), rotated(2, 2)])
            .when(refresh(2, 1, 3))
            .then_expect_error(SessionError::RefreshTokenNotFresh);
    }

    #[test]
    fn logging_out_ends_the_session() {
        Framework::with(())
            .given(vec![opened()])
            .when(SessionCommand::Logout { now: at(5) })
            .then_expect_events(vec![SessionEvent::SessionEnded {
                reason: EndReason::Logout,
                ended_at: at(5),
            }]);
    }

    #[test]
    fn logging_out_twice_is_refused() {
        Framework::with(())
            .given(vec![
                opened(),
                SessionEvent::SessionEnded {
                    reason: EndReason::Logout,
                    ended_at: at(5),
                },
            ])
            .when(SessionCommand::Logout { now: at(6) })
            .then_expect_error(SessionError::AlreadyEnded);
    }

    #[test]
    fn a_session_can_be_revoked_for_each_reason() {
        for reason in [
            RevokeReason::UserRequest,
            RevokeReason::AdminRequest,
            RevokeReason::AllSessionsRevoked,
            RevokeReason::PasswordChanged,
            RevokeReason::UserDeactivated,
        ] {
            Framework::with(())
                .given(vec![opened()])
                .when(SessionCommand::Revoke { reason, now: at(5) })
                .then_expect_events(vec![SessionEvent::SessionRevoked {
                    reason: reason.into(),
                    revoked_at: at(5),
                }]);
        }
    }

    #[test]
    fn an_ended_session_cannot_be_revoked() {
        Framework::with(())
            .given(vec![
                opened(),
                SessionEvent::SessionExpired { expired_at: at(60) },
            ])
            .when(SessionCommand::Revoke {
                reason: RevokeReason::PasswordChanged,
                now: at(61),
            })
            .then_expect_error(SessionError::AlreadyEnded);
    }

    #[test]
    fn a_session_past_its_expiry_is_expired() {
        Framework::with(())
            .given(vec![opened()])
            .when(SessionCommand::Expire { now: at(60) })
            .then_expect_events(vec![SessionEvent::SessionExpired { expired_at: at(60) }]);
    }

    #[test]
    fn a_session_cannot_be_expired_early() {
        Framework::with(())
            .given(vec![opened()])
            .when(SessionCommand::Expire { now: at(59) })
            .then_expect_error(SessionError::NotExpired {
                expires_at: expiry(),
            });
    }

    #[test]
    fn an_ended_session_cannot_be_expired() {
        Framework::with(())
            .given(vec![
                opened(),
                SessionEvent::SessionEnded {
                    reason: EndReason::Logout,
                    ended_at: at(5),
                },
            ])
            .when(SessionCommand::Expire { now: at(61) })
            .then_expect_error(SessionError::AlreadyEnded);
    }

    #[test]
    fn the_remembered_history_is_capped_and_drops_the_oldest() {
        let extra = 5u64;
        let mut session = replay(vec![opened()]);
        let total = MAX_REMEMBERED_GENERATIONS as u64 + extra;
        for generation in 2..=total + 1 {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&generation.to_be_bytes());
            session.apply(SessionEvent::RefreshTokenRotated {
                generation,
                refresh: SecretHash::from_bytes(bytes),
                rotated_at: at(1),
            });
        }
        assert_eq!(session.remembered_generations(), MAX_REMEMBERED_GENERATIONS);
        assert_eq!(session.generation(), total + 1);
        // Generation 1 (h(1)) and the next few were dropped: unknown, not reuse.
        assert_eq!(session.earlier_generation_of(&h(1)), None);
        let mut oldest = [0u8; 32];
        oldest[..8].copy_from_slice(&(extra + 1).to_be_bytes());
        assert_eq!(
            session.earlier_generation_of(&SecretHash::from_bytes(oldest)),
            Some(extra + 1)
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sink = EventSink::default();
        let result = runtime.block_on(session.handle(refresh(1, 200, 2), &(), &sink));
        assert_eq!(result, Err(SessionError::UnknownRefreshToken));
    }

    #[test]
    fn refusals_have_stable_reasons_and_kinds() {
        assert_eq!(SessionError::Ended.reason(), "session_ended");
        assert_eq!(SessionError::Ended.kind(), RefusalKind::Unauthenticated);
        assert_eq!(
            SessionError::Expired {
                expires_at: expiry()
            }
            .reason(),
            "session_expired"
        );
        assert_eq!(
            SessionError::UnknownRefreshToken.kind(),
            RefusalKind::Unauthenticated
        );
        assert_eq!(SessionError::AlreadyEnded.kind(), RefusalKind::Conflict);
        let not_expired = SessionError::NotExpired {
            expires_at: expiry(),
        };
        assert_eq!(not_expired.reason(), "not_expired");
        assert_eq!(not_expired.kind(), RefusalKind::Conflict);
    }

    #[test]
    fn events_are_stored_as_json_with_hashes_only() {
        let json = serde_json::to_value(opened()).unwrap();
        assert_eq!(
            json["SessionOpened"]["refresh"],
            serde_json::json!(h(1).to_string())
        );
        let revoked = SessionEvent::SessionRevoked {
            reason: RevocationReason::TokenReuse,
            revoked_at: at(1),
        };
        let json = serde_json::to_string(&revoked).unwrap();
        assert!(json.contains("\"token_reuse\""), "{json}");
        let back: SessionEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, revoked);
        assert_eq!(revoked.event_type(), "SessionRevoked");
        assert_eq!(revoked.event_version(), "1");
    }

    fn command() -> impl Strategy<Value = SessionCommand> {
        let minute = 0i64..75;
        prop_oneof![
            (any::<bool>(), 0i64..3).prop_map(|(mfa, offset)| SessionCommand::Open {
                session_id: session_id(),
                user_id: user_id(),
                tenant_id: tenant_id(),
                refresh: h(1),
                expires_at: at(60 - offset * 30),
                mfa,
                now: t0(),
            }),
            (1u8..6, 1u8..6, minute.clone()).prop_map(|(p, n, m)| refresh(p, n, m)),
            (1u8..6, 1u8..6, minute.clone()).prop_map(|(p, n, m)| refresh(p, n, m)),
            minute
                .clone()
                .prop_map(|m| SessionCommand::Logout { now: at(m) }),
            (0usize..5, minute.clone()).prop_map(|(r, m)| SessionCommand::Revoke {
                reason: [
                    RevokeReason::UserRequest,
                    RevokeReason::AdminRequest,
                    RevokeReason::AllSessionsRevoked,
                    RevokeReason::PasswordChanged,
                    RevokeReason::UserDeactivated,
                ][r],
                now: at(m),
            }),
            minute.prop_map(|m| SessionCommand::Expire { now: at(m) }),
        ]
    }

    proptest! {
        #[test]
        fn replaying_the_accepted_events_rebuilds_the_same_session(
            commands in proptest::collection::vec(command(), 0..30)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut live = Session::default();
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
