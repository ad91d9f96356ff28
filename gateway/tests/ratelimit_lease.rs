//! Leased GCRA checks against a real Redis: a fast policy is mostly answered in-process, yet
//! never allows more than its limit; a slow one asks Redis on every check; and a leased
//! policy still answers by its fail mode when Redis is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use gateway::ratelimit::{Decision, FailMode, Policy, RateLimitError, RateLimiter};
use tests::TestRedis;

/// 100,000 a second, 10,000 at once: leases of 1,000 cells.
const HIGH: Policy = Policy {
    name: "test_lease_high",
    rate: 100_000,
    period: Duration::from_secs(1),
    burst: 10_000,
    fail_mode: FailMode::Closed,
};

/// 1,000 a second, 50 at once: leases of 10 cells, and a burst spent within a few leases.
const TIGHT: Policy = Policy {
    name: "test_lease_tight",
    rate: 1_000,
    period: Duration::from_secs(1),
    burst: 50,
    fail_mode: FailMode::Closed,
};

/// 20 a second, 3 at once: no leases.
const LOW: Policy = Policy {
    name: "test_lease_low",
    rate: 20,
    period: Duration::from_secs(1),
    burst: 3,
    fail_mode: FailMode::Closed,
};

fn limiter(redis: &TestRedis) -> RateLimiter {
    RateLimiter::new(redis.conn.clone(), &redis.prefix)
}

/// The most Redis round trips `checks` checks of one bucket of `policy` may take in
/// `elapsed`: one per lease used up, one per lease that expired before it was (leases follow
/// one another, so at most one per lease life), and a couple for the lease in use at the end.
fn most_round_trips(policy: &Policy, checks: u64, elapsed: Duration) -> u64 {
    let cells = policy.lease_size();
    let life = policy.emission_interval() * cells;
    let expired = u64::try_from(elapsed.as_nanos() / life.as_nanos()).expect("a short test");
    checks / u64::from(cells) + expired + 2
}

/// The most a GCRA bucket can grant in `elapsed` from a full bucket: the burst, the cells
/// refilled meanwhile, and one for rounding.
fn most_allowed(policy: &Policy, elapsed: Duration) -> u64 {
    let refilled = elapsed.as_nanos() / policy.emission_interval().as_nanos();
    u64::from(policy.burst) + u64::try_from(refilled).expect("a short test") + 1
}

/// Counts the allowed decisions, and checks that every refusal says when to come back.
fn count_allowed(decisions: &[Decision]) -> u64 {
    let mut allowed = 0;
    for decision in decisions {
        assert!(!decision.degraded, "{decision:?}");
        if decision.allowed {
            allowed += 1;
        } else {
            assert!(decision.retry_after > Duration::ZERO, "{decision:?}");
            assert_eq!(decision.remaining, 0, "{decision:?}");
        }
    }
    allowed
}

#[tokio::test]
async fn a_high_rate_policy_answers_most_checks_from_a_lease() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let checks = 5_000;
    let started = Instant::now();
    for _ in 0..checks {
        let decision = limiter.check(&HIGH, "alice").await.expect("Redis answers");
        assert!(decision.allowed && !decision.degraded, "{decision:?}");
    }
    let (asks, elapsed) = (limiter.asks(), started.elapsed());
    assert!(asks >= 1);
    assert!(
        asks <= most_round_trips(&HIGH, checks, elapsed),
        "{asks} round trips for {checks} checks in {elapsed:?}"
    );
    redis.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_one_bucket_share_its_lease() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let checks = 2_000;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..checks {
        let limiter = limiter.clone();
        tasks.spawn(async move { limiter.check(&HIGH, "bob").await });
    }
    while let Some(decision) = tasks.join_next().await {
        let decision = decision.expect("the check ran").expect("Redis answers");
        assert!(decision.allowed && !decision.degraded, "{decision:?}");
    }
    let (asks, elapsed) = (limiter.asks(), started.elapsed());
    assert!(
        asks <= most_round_trips(&HIGH, checks, elapsed),
        "{asks} round trips for {checks} checks in {elapsed:?}"
    );
    redis.flush().await;
}

#[tokio::test]
async fn leases_never_allow_more_than_the_limit() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let started = Instant::now();
    let mut decisions = Vec::new();
    for _ in 0..200 {
        decisions.push(limiter.check(&TIGHT, "carol").await.expect("Redis answers"));
    }
    let elapsed = started.elapsed();

    let allowed = count_allowed(&decisions);
    assert!(
        allowed <= most_allowed(&TIGHT, elapsed),
        "{allowed} allowed in {elapsed:?}"
    );
    // A full bucket allows the whole burst, leases or not.
    assert!(decisions[..50].iter().all(|decision| decision.allowed));
    assert!(decisions.iter().any(|decision| !decision.allowed));
    redis.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leases_never_allow_more_than_the_limit() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let limiter = limiter.clone();
        tasks.spawn(async move { limiter.check(&TIGHT, "dave").await });
    }
    let mut decisions = Vec::new();
    while let Some(decision) = tasks.join_next().await {
        decisions.push(decision.expect("the check ran").expect("Redis answers"));
    }
    let elapsed = started.elapsed();

    let allowed = count_allowed(&decisions);
    assert!(
        allowed <= most_allowed(&TIGHT, elapsed),
        "{allowed} allowed in {elapsed:?}"
    );
    assert!(allowed >= u64::from(TIGHT.burst));
    redis.flush().await;
}

#[tokio::test]
async fn judges_a_client_near_its_limit_one_cell_at_a_time() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    // Leases of 10 cells from a burst of 15: the second lease cannot be had whole.
    let uneven = Policy { burst: 15, ..TIGHT };
    assert_eq!(uneven.lease_size(), 10);
    for i in 0..uneven.burst {
        let decision = limiter.check(&uneven, "erin").await.expect("Redis answers");
        assert!(decision.allowed, "check {i}: {decision:?}");
    }
    redis.flush().await;
}

#[tokio::test]
async fn a_low_rate_policy_asks_redis_on_every_check() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    assert!(LOW.lease_size() <= 1);
    let mut allowed = 0;
    for i in 0..2 * u64::from(LOW.burst) {
        if limiter
            .check(&LOW, "frank")
            .await
            .expect("Redis answers")
            .allowed
        {
            allowed += 1;
        }
        assert_eq!(limiter.asks(), i + 1);
    }
    assert_eq!(allowed, LOW.burst);
    redis.flush().await;
}

#[tokio::test]
async fn a_leased_policy_answers_by_its_fail_mode_when_redis_is_down() {
    tests::init_logging();
    let client = redis::Client::open("redis://127.0.0.1:1/").expect("a valid URL");
    let limiter = RateLimiter::lazy(client, "dead");
    let open = Policy {
        fail_mode: FailMode::Open,
        ..HIGH
    };
    for _ in 0..3 {
        assert!(matches!(
            limiter.check(&HIGH, "grace").await,
            Err(RateLimitError::Unavailable { .. })
        ));
        let decision = limiter.check(&open, "grace").await.expect("fails open");
        assert!(decision.allowed && decision.degraded);
    }
    assert_eq!(limiter.asks(), 0, "no script call reached Redis");
}
