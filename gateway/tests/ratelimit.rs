//! The GCRA rate limiter against a real Redis: bursts, refills, isolation of subjects,
//! policies and prefixes, atomicity under concurrent checks, and the fail modes when Redis is
//! down or hangs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gateway::ratelimit::{
    API_PER_IP, API_PER_KEY, FailMode, LOGIN_PER_ACCOUNT, LOGIN_PER_IP, MFA_PER_USER, Policy,
    RateLimitError, RateLimiter, Unavailable,
};
use tests::TestRedis;

/// 10 a second, 3 at once: a request every 100 ms once the burst is spent.
const FAST: Policy = Policy {
    name: "test_fast",
    rate: 10,
    period: Duration::from_secs(1),
    burst: 3,
    fail_mode: FailMode::Closed,
};

/// 1 a minute, 5 at once: nothing refills while a test runs.
const SLOW: Policy = Policy {
    name: "test_slow",
    rate: 1,
    period: Duration::from_secs(60),
    burst: 5,
    fail_mode: FailMode::Closed,
};

fn limiter(redis: &TestRedis) -> RateLimiter {
    RateLimiter::new(redis.conn.clone(), &redis.prefix)
}

/// A limiter on a port where nothing listens.
fn dead_limiter() -> RateLimiter {
    tests::init_logging();
    let client = redis::Client::open("redis://127.0.0.1:1/").expect("a valid URL");
    RateLimiter::lazy(client, "dead")
}

async fn allowed(limiter: &RateLimiter, policy: &Policy, subject: &str) -> bool {
    limiter
        .check(policy, subject)
        .await
        .expect("Redis answers")
        .allowed
}

#[tokio::test]
async fn allows_the_burst_then_denies_with_a_retry_after() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    for expected_remaining in [2, 1, 0] {
        let decision = limiter.check(&FAST, "alice").await.expect("Redis answers");
        assert!(decision.allowed);
        assert!(!decision.degraded);
        assert_eq!(decision.remaining, expected_remaining);
        assert_eq!(decision.retry_after, Duration::ZERO);
        assert!(decision.reset_after > Duration::ZERO);
    }
    let denied = limiter.check(&FAST, "alice").await.expect("Redis answers");
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert!(denied.retry_after > Duration::ZERO);
    assert!(denied.retry_after <= FAST.emission_interval());
    assert!(denied.reset_after >= denied.retry_after);
}

#[tokio::test]
async fn allows_again_after_waiting_the_retry_after() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    for _ in 0..FAST.burst {
        assert!(allowed(&limiter, &FAST, "bob").await);
    }
    let denied = limiter.check(&FAST, "bob").await.expect("Redis answers");
    assert!(!denied.allowed);
    // A denied request costs nothing: asking again does not push the wait further out.
    assert!(!allowed(&limiter, &FAST, "bob").await);

    tokio::time::sleep(denied.retry_after).await;
    let again = limiter.check(&FAST, "bob").await.expect("Redis answers");
    assert!(again.allowed, "{again:?} after {denied:?}");
    assert_eq!(again.remaining, 0);
    assert!(!allowed(&limiter, &FAST, "bob").await);
}

#[tokio::test]
async fn refills_the_whole_burst_after_the_reset_after() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let mut last = None;
    for _ in 0..FAST.burst {
        last = Some(limiter.check(&FAST, "carol").await.expect("Redis answers"));
    }
    let last = last.expect("at least one check");
    tokio::time::sleep(last.reset_after).await;
    for _ in 0..FAST.burst {
        assert!(allowed(&limiter, &FAST, "carol").await);
    }
}

#[tokio::test]
async fn keeps_subjects_apart() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    for _ in 0..SLOW.burst {
        assert!(allowed(&limiter, &SLOW, "203.0.113.7").await);
    }
    assert!(!allowed(&limiter, &SLOW, "203.0.113.7").await);
    assert!(allowed(&limiter, &SLOW, "203.0.113.8").await);
}

#[tokio::test]
async fn keeps_policies_apart_for_one_subject() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let other = Policy {
        name: "test_other",
        ..SLOW
    };
    for _ in 0..SLOW.burst {
        assert!(allowed(&limiter, &SLOW, "dave").await);
    }
    assert!(!allowed(&limiter, &SLOW, "dave").await);
    assert!(allowed(&limiter, &other, "dave").await);
}

#[tokio::test]
async fn keeps_prefixes_apart() {
    let first = TestRedis::new().await;
    let second = TestRedis::new().await;
    let (one, two) = (limiter(&first), limiter(&second));
    for _ in 0..SLOW.burst {
        assert!(allowed(&one, &SLOW, "erin").await);
    }
    assert!(!allowed(&one, &SLOW, "erin").await);
    assert!(allowed(&two, &SLOW, "erin").await);
}

#[tokio::test]
async fn admits_exactly_the_burst_under_concurrent_checks() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let limiter = limiter.clone();
        checks.spawn(async move { limiter.check(&SLOW, "frank").await });
    }
    let mut admitted = 0;
    while let Some(decision) = checks.join_next().await {
        if decision
            .expect("the check ran")
            .expect("Redis answers")
            .allowed
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, SLOW.burst);
}

#[tokio::test]
async fn stores_one_expiring_key_per_bucket_without_the_subject() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let subject = "Mallory@Example.com:rl:test_slow:x";
    assert!(allowed(&limiter, &SLOW, subject).await);
    let keys = redis.keys().await;
    assert_eq!(keys, vec![limiter.key(&SLOW, subject)]);
    assert!(!keys[0].contains("Mallory"));
    let mut conn = redis.conn.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
}

#[tokio::test]
async fn fails_closed_for_login_and_mfa_when_redis_is_down() {
    let limiter = dead_limiter();
    for policy in [LOGIN_PER_IP, LOGIN_PER_ACCOUNT, MFA_PER_USER] {
        match limiter.check(&policy, "grace@example.com").await {
            Err(error @ RateLimitError::Unavailable { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO);
                assert!(!error.public_message().contains("Redis"));
            }
            other => panic!("{}: expected a refusal, got {other:?}", policy.name),
        }
    }
}

#[tokio::test]
async fn fails_open_for_the_api_when_redis_is_down() {
    let limiter = dead_limiter();
    for policy in [API_PER_KEY, API_PER_IP] {
        let decision = limiter
            .check(&policy, "198.51.100.1")
            .await
            .expect("the API fails open");
        assert!(decision.allowed);
        assert!(decision.degraded);
    }
}

#[tokio::test]
async fn fails_closed_when_redis_hangs() {
    tests::init_logging();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let hold = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a valid URL");
    let limiter = RateLimiter::lazy(client, "hung").with_timeout(Duration::from_millis(100));

    let refused = limiter.check(&LOGIN_PER_IP, "203.0.113.9").await;
    assert!(
        matches!(
            refused,
            Err(RateLimitError::Unavailable {
                cause: Unavailable::TimedOut(_) | Unavailable::Redis(_),
                ..
            })
        ),
        "{refused:?}"
    );
    let open = limiter
        .check(&API_PER_IP, "203.0.113.9")
        .await
        .expect("the API fails open");
    assert!(open.allowed && open.degraded);
    hold.abort();
}

#[tokio::test]
async fn a_lazy_limiter_works_once_redis_is_there() {
    let redis = TestRedis::new().await;
    let client = redis::Client::open(tests::redis_url()).expect("a valid URL");
    let limiter = RateLimiter::lazy(client, &redis.prefix);
    let decision = limiter.check(&SLOW, "heidi").await.expect("Redis answers");
    assert!(decision.allowed && !decision.degraded);
    assert_eq!(decision.remaining, SLOW.burst - 1);
}

#[tokio::test]
async fn refuses_an_invalid_policy_whatever_its_fail_mode() {
    let limiter = dead_limiter();
    let zero = Policy {
        rate: 0,
        fail_mode: FailMode::Open,
        ..API_PER_IP
    };
    assert!(matches!(
        limiter.check(&zero, "ivan").await,
        Err(RateLimitError::InvalidPolicy { .. })
    ));
}
