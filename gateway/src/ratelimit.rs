//! GCRA rate limits in Redis: per API key, user and IP, and on login and MFA attempts.
//!
//! Each bucket is one Redis key, `<prefix>:rl:<policy>:<sha256(subject) in hex>`, holding the
//! bucket's theoretical arrival time (TAT) in milliseconds. One Lua script reads the server's
//! clock (`TIME`), decides and moves the TAT atomically, so gateways on many machines share
//! one limit with no clock of their own involved. The subject is hashed: keys stay bounded
//! whatever the user typed, no e-mail address or IP is stored in Redis, and no subject can
//! reach into another policy's keys.
//!
//! The key decision is what happens when Redis cannot answer (unreachable, erroring, or slower
//! than a short timeout): each [`Policy`] has a [`FailMode`]. Login and MFA fail closed, so an
//! attacker cannot buy unlimited password guesses by taking Redis down; the gateway answers
//! `RATE_LIMITED`. API traffic fails open with a warning in the log, so a Redis outage does
//! not become an API outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

/// How long one check may wait on Redis before the policy's [`FailMode`] answers instead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed attempt to connect, how long checks answer by their fail mode at once
/// instead of trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// At most one warning about an unavailable Redis in this interval; the rest are counted.
const WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// The least a client is told to wait when the limiter itself is unavailable.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Generic cell rate algorithm, after the formulation of rwz/redis-gcra
/// (`vendor/perform_gcra_ratelimit.lua`, also the script of go-redis/redis_rate): with an
/// emission interval `T = period / rate` and a tolerance `burst * T`, a request is allowed when
/// `max(TAT, now) + T - burst * T <= now`, and then `max(TAT, now) + T` becomes the new TAT.
/// Differences: time is the server's `TIME` in milliseconds (Redis 7 replicates a script's
/// effects, not the script, so reading the clock is allowed), the TAT is stored with a `PX`
/// expiry at the moment the bucket is full again, the remaining count is rounded down, and a
/// denied request writes nothing.
///
/// KEYS[1]: the bucket. ARGV: rate (cells per period), period in ms, burst (cells).
/// Returns `{allowed (0|1), remaining, retry_after_ms, reset_after_ms}`.
const GCRA: &str = r"
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])

local emission = period / rate
local tolerance = emission * burst

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

local stored = redis.call('GET', key)
local tat = now
if stored then
  tat = math.max(tonumber(stored) or now, now)
end

local new_tat = tat + emission
local diff = now - (new_tat - tolerance)

if diff < 0 then
  return {0, 0, math.ceil(-diff), math.ceil(tat - now)}
end

local reset_after = math.max(math.ceil(new_tat - now), 1)
redis.call('SET', key, string.format('%.3f', new_tat), 'PX', string.format('%d', reset_after))
return {1, math.floor(diff / emission + 1e-9), 0, reset_after}
";

/// What a check answers when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Allow the request, and log a warning.
    Open,
    /// Refuse the request with [`RateLimitError::Unavailable`].
    Closed,
}

/// A named limit: `rate` requests per `period` sustained, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name, part of its keys: lowercase letters, digits and `_`.
    pub name: &'static str,
    /// Requests allowed per `period`, sustained.
    pub rate: u32,
    /// The period `rate` is counted over.
    pub period: Duration,
    /// Requests allowed at once from a full bucket.
    pub burst: u32,
    /// What a check answers when Redis cannot be asked.
    pub fail_mode: FailMode,
}

impl Policy {
    /// Checks that the policy can be enforced: a usable name, and a rate, period and burst
    /// above zero.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        let invalid = |reason| {
            Err(RateLimitError::InvalidPolicy {
                policy: self.name,
                reason,
            })
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return invalid("the name must be lowercase letters, digits and `_`");
        }
        if self.rate == 0 {
            return invalid("the rate must be at least 1");
        }
        if self.burst == 0 {
            return invalid("the burst must be at least 1");
        }
        match u64::try_from(self.period.as_millis()) {
            Ok(ms) if ms > 0 => Ok(()),
            _ => invalid("the period must be between 1 ms and u64::MAX ms"),
        }
    }

    /// The time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.rate.max(1)
    }
}

/// Login attempts per client IP: 10 a minute, 5 at once. Fails closed.
pub const LOGIN_PER_IP: Policy = Policy {
    name: "login_ip",
    rate: 10,
    period: Duration::from_secs(60),
    burst: 5,
    fail_mode: FailMode::Closed,
};

/// Login attempts per account (see [`account_subject`]): 5 a minute, 5 at once. Fails closed.
pub const LOGIN_PER_ACCOUNT: Policy = Policy {
    name: "login_account",
    rate: 5,
    period: Duration::from_secs(60),
    burst: 5,
    fail_mode: FailMode::Closed,
};

/// MFA code attempts per user: 5 a minute, 5 at once. Fails closed.
pub const MFA_PER_USER: Policy = Policy {
    name: "mfa_user",
    rate: 5,
    period: Duration::from_secs(60),
    burst: 5,
    fail_mode: FailMode::Closed,
};

/// API requests per API key: 50 a second, 100 at once. Fails open.
pub const API_PER_KEY: Policy = Policy {
    name: "api_key",
    rate: 50,
    period: Duration::from_secs(1),
    burst: 100,
    fail_mode: FailMode::Open,
};

/// API requests per user: 20 a second, 40 at once. Fails open.
pub const API_PER_USER: Policy = Policy {
    name: "api_user",
    rate: 20,
    period: Duration::from_secs(1),
    burst: 40,
    fail_mode: FailMode::Open,
};

/// API requests per client IP: 30 a second, 60 at once. Fails open.
pub const API_PER_IP: Policy = Policy {
    name: "api_ip",
    rate: 30,
    period: Duration::from_secs(1),
    burst: 60,
    fail_mode: FailMode::Open,
};

/// The policies the gateway enforces; [`Default`] gives the constants of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Login attempts per client IP.
    pub login_per_ip: Policy,
    /// Login attempts per account.
    pub login_per_account: Policy,
    /// MFA code attempts per user.
    pub mfa_per_user: Policy,
    /// API requests per API key.
    pub api_per_key: Policy,
    /// API requests per user.
    pub api_per_user: Policy,
    /// API requests per client IP.
    pub api_per_ip: Policy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_per_ip: LOGIN_PER_IP,
            login_per_account: LOGIN_PER_ACCOUNT,
            mfa_per_user: MFA_PER_USER,
            api_per_key: API_PER_KEY,
            api_per_user: API_PER_USER,
            api_per_ip: API_PER_IP,
        }
    }
}

impl Limits {
    /// Every policy, in a fixed order.
    pub fn all(&self) -> [&Policy; 6] {
        [
            &self.login_per_ip,
            &self.login_per_account,
            &self.mfa_per_user,
            &self.api_per_key,
            &self.api_per_user,
            &self.api_per_ip,
        ]
    }

    /// Checks every policy (see [`Policy::validate`]) and that no two share a name, and so
    /// their keys.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        let all = self.all();
        for (i, policy) in all.iter().enumerate() {
            policy.validate()?;
            if all[..i].iter().any(|other| other.name == policy.name) {
                return Err(RateLimitError::InvalidPolicy {
                    policy: policy.name,
                    reason: "two policies share this name",
                });
            }
        }
        Ok(())
    }
}

/// The subject of [`LOGIN_PER_ACCOUNT`] for an e-mail address as typed: trimmed and
/// lowercased, so that changing the case of an address does not buy more attempts.
pub fn account_subject(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// How many more requests the bucket would allow right now.
    pub remaining: u32,
    /// When denied, how long until a request is allowed again; zero when allowed.
    pub retry_after: Duration,
    /// How long until the bucket is full again (the whole burst allowed).
    pub reset_after: Duration,
    /// True when Redis could not be asked and the policy failed open: the request is allowed
    /// unchecked.
    pub degraded: bool,
}

/// Why a check gave no [`Decision`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// Redis could not be asked and the policy fails closed: refuse the request, and tell the
    /// client to try again after `retry_after` (`RATE_LIMITED`).
    #[error("rate limit {policy} cannot be checked, so the request is refused")]
    Unavailable {
        /// The policy.
        policy: &'static str,
        /// A suggested wait for the client.
        retry_after: Duration,
        /// Why Redis could not be asked.
        #[source]
        cause: Unavailable,
    },
    /// The policy cannot be enforced: a configuration error (`INTERNAL`).
    #[error("rate limit {policy} is invalid: {reason}")]
    InvalidPolicy {
        /// The policy.
        policy: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl RateLimitError {
    /// What the client may be told: nothing internal.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "too many requests or the service is busy: try again later",
            Self::InvalidPolicy { .. } => "internal error",
        }
    }
}

/// Why Redis could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// Connecting failed recently; no new attempt is made until a short backoff passes.
    #[error("not connected to Redis (the last attempt failed less than a second ago)")]
    NotConnected,
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    TimedOut(Duration),
    /// Redis answered something the script never returns.
    #[error("unexpected answer from the rate limit script: {0:?}")]
    BadReply([i64; 4]),
}

/// Checks requests against [`Policy`]s in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

struct Inner {
    prefix: String,
    /// Set when the connection is made on first use.
    client: Option<redis::Client>,
    conn: OnceCell<ConnectionManager>,
    last_connect_failure: Mutex<Option<Instant>>,
    script: redis::Script,
    last_warning: Mutex<Option<Instant>>,
    suppressed_warnings: AtomicU64,
}

impl RateLimiter {
    /// A limiter over an established connection, with keys under `<prefix>:rl:`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self::build(None, OnceCell::new_with(Some(conn)), prefix)
    }

    /// A limiter that connects on first use, and again after a failure, so the gateway
    /// starts while Redis is down. Until a connection is made, checks answer by their
    /// policy's [`FailMode`].
    pub fn lazy(client: redis::Client, prefix: &str) -> Self {
        Self::build(Some(client), OnceCell::new(), prefix)
    }

    fn build(
        client: Option<redis::Client>,
        conn: OnceCell<ConnectionManager>,
        prefix: &str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                prefix: prefix.to_owned(),
                client,
                conn,
                last_connect_failure: Mutex::new(None),
                script: redis::Script::new(GCRA),
                last_warning: Mutex::new(None),
                suppressed_warnings: AtomicU64::new(0),
            }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same limiter with another timeout on each check (the default is
    /// [`DEFAULT_TIMEOUT`]). It still shares the connection with its clones.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The Redis key of `subject`'s bucket under `policy`.
    pub fn key(&self, policy: &Policy, subject: &str) -> String {
        let digest = Sha256::digest(subject.as_bytes());
        format!(
            "{}:rl:{}:{}",
            self.inner.prefix,
            policy.name,
            hex::encode(digest)
        )
    }

    /// Counts one request by `subject` (an API key id, a user id, an IP, an account) against
    /// `policy`, and says whether it may go ahead. When Redis cannot be asked within the
    /// timeout, a policy that fails open allows the request ([`Decision::degraded`]) and one
    /// that fails closed returns [`RateLimitError::Unavailable`].
    #[tracing::instrument(level = "debug", skip(self, subject), fields(policy = policy.name))]
    pub async fn check(&self, policy: &Policy, subject: &str) -> Result<Decision, RateLimitError> {
        policy.validate()?;
        let key = self.key(policy, subject);
        let answer = match tokio::time::timeout(self.timeout, self.ask(policy, &key)).await {
            Ok(answer) => answer,
            Err(_) => {
                if self.inner.conn.get().is_none() {
                    // A connection attempt that hangs counts as a failed one: back off.
                    *lock(&self.inner.last_connect_failure) = Some(Instant::now());
                }
                Err(Unavailable::TimedOut(self.timeout))
            }
        };
        match answer {
            Ok(decision) => Ok(decision),
            Err(cause) => self.fail(policy, cause),
        }
    }

    async fn ask(&self, policy: &Policy, key: &str) -> Result<Decision, Unavailable> {
        let mut conn = self.connection().await?;
        let period_ms = u64::try_from(policy.period.as_millis()).unwrap_or(u64::MAX);
        let reply: [i64; 4] = self
            .inner
            .script
            .key(key)
            .arg(policy.rate)
            .arg(period_ms)
            .arg(policy.burst)
            .invoke_async(&mut conn)
            .await
            .map_err(Unavailable::Redis)?;
        let [allowed, remaining, retry_after_ms, reset_after_ms] = reply;
        let millis = |ms: i64| u64::try_from(ms).map(Duration::from_millis);
        match (
            allowed,
            u32::try_from(remaining),
            millis(retry_after_ms),
            millis(reset_after_ms),
        ) {
            (0 | 1, Ok(remaining), Ok(retry_after), Ok(reset_after)) => Ok(Decision {
                allowed: allowed == 1,
                remaining,
                retry_after,
                reset_after,
                degraded: false,
            }),
            _ => Err(Unavailable::BadReply(reply)),
        }
    }

    /// The connection, made now if it is the first use (or the last attempt failed and the
    /// backoff has passed).
    async fn connection(&self) -> Result<ConnectionManager, Unavailable> {
        if let Some(conn) = self.inner.conn.get() {
            return Ok(conn.clone());
        }
        let Some(client) = &self.inner.client else {
            return Err(Unavailable::NotConnected);
        };
        if lock(&self.inner.last_connect_failure).is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(Unavailable::NotConnected);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_number_of_retries(0);
        let made = self
            .inner
            .conn
            .get_or_try_init(|| client.get_connection_manager_with_config(config))
            .await;
        match made {
            Ok(conn) => Ok(conn.clone()),
            Err(error) => {
                *lock(&self.inner.last_connect_failure) = Some(Instant::now());
                Err(Unavailable::Redis(error))
            }
        }
    }

    fn fail(&self, policy: &Policy, cause: Unavailable) -> Result<Decision, RateLimitError> {
        self.warn(policy, &cause);
        match policy.fail_mode {
            FailMode::Open => Ok(Decision {
                allowed: true,
                remaining: 0,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
                degraded: true,
            }),
            FailMode::Closed => Err(RateLimitError::Unavailable {
                policy: policy.name,
                retry_after: policy.emission_interval().max(UNAVAILABLE_RETRY_AFTER),
                cause,
            }),
        }
    }

    /// Logs that Redis could not be asked, at most once per [`WARNING_INTERVAL`].
    fn warn(&self, policy: &Policy, cause: &Unavailable) {
        {
            let mut last = lock(&self.inner.last_warning);
            if last.is_some_and(|at| at.elapsed() < WARNING_INTERVAL) {
                self.inner
                    .suppressed_warnings
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(Instant::now());
        }
        let suppressed = self.inner.suppressed_warnings.swap(0, Ordering::Relaxed);
        let error: &dyn std::error::Error = cause;
        let fail_mode = match policy.fail_mode {
            FailMode::Open => "open: allowed unchecked",
            FailMode::Closed => "closed: refused",
        };
        tracing::warn!(
            policy = policy.name,
            fail_mode,
            suppressed,
            error = error_chain(error),
            "rate limiter cannot reach Redis"
        );
    }
}

/// The lock's guard; a panic elsewhere while it was held leaves only an instant behind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `error: cause: cause ...`, for the log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_are_valid_and_distinct() {
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn login_and_mfa_fail_closed_and_the_api_fails_open() {
        let limits = Limits::default();
        for policy in [
            limits.login_per_ip,
            limits.login_per_account,
            limits.mfa_per_user,
        ] {
            assert_eq!(policy.fail_mode, FailMode::Closed, "{}", policy.name);
        }
        for policy in [limits.api_per_key, limits.api_per_user, limits.api_per_ip] {
            assert_eq!(policy.fail_mode, FailMode::Open, "{}", policy.name);
        }
    }

    #[test]
    fn rejects_a_zero_rate_a_zero_burst_a_zero_period_and_a_bad_name() {
        let good = API_PER_IP;
        for bad in [
            Policy { rate: 0, ..good },
            Policy { burst: 0, ..good },
            Policy {
                period: Duration::from_micros(10),
                ..good
            },
            Policy {
                name: "api:ip",
                ..good
            },
            Policy { name: "", ..good },
        ] {
            assert!(
                matches!(bad.validate(), Err(RateLimitError::InvalidPolicy { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_two_policies_with_one_name() {
        let limits = Limits {
            api_per_user: Policy {
                name: "api_ip",
                ..API_PER_USER
            },
            ..Limits::default()
        };
        assert!(matches!(
            limits.validate(),
            Err(RateLimitError::InvalidPolicy {
                policy: "api_ip",
                ..
            })
        ));
    }

    #[test]
    fn an_account_subject_ignores_case_and_surrounding_space() {
        assert_eq!(
            account_subject("  Alice@Example.COM\n"),
            "alice@example.com"
        );
    }

    #[test]
    fn keys_are_bounded_and_never_contain_the_subject() {
        let client = redis::Client::open("redis://127.0.0.1:1/").expect("a valid URL");
        let limiter = RateLimiter::lazy(client, "p");
        let subject = format!("{}:evil\r\n{}", "x".repeat(10_000), "y");
        let key = limiter.key(&LOGIN_PER_IP, &subject);
        assert_eq!(key.len(), "p:rl:login_ip:".len() + 64);
        assert!(key.starts_with("p:rl:login_ip:"));
        assert!(!key.contains("evil"));
        assert_ne!(key, limiter.key(&LOGIN_PER_ACCOUNT, &subject));
    }
}
