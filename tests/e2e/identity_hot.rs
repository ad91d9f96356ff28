//! The identity hot model in Redis (`projections::identity_hot`), built from real identity
//! flows: it answers what the PostgreSQL identity model holds (a model built by other code
//! from the same log), and what the flows did; a redelivered batch changes nothing and two
//! workers never interleave; the runner fills it from the bus, and rebuilds it exactly after
//! Redis loses it, while readers are told to ask PostgreSQL; a poison event parks it
//! visibly; a new version rebuilds it and leaves no key of the old one behind.

use std::collections::BTreeMap;
use std::time::Duration;

use eventstore::LogReader;
use projections::identity_hot::{IdentityHot, IdentityHotModel, NAME};
use projections::redis::{Hash, Lookup, RedisModel, Stage};
use projections::{
    Applied, ApplyError, RedisProjection, RedisRunner, Retry, Target, apply_or_park_on, catch_up_on,
};
use serde_json::json;
use tests::{TestBus, TestDb, TestRedis};
use uuid::Uuid;

use crate::identity::{OWNER_PASSWORD, fixture};
use crate::identity_models::{World, all_events, append_raw, build, run_flows, uuid};
use crate::{head, quick_retry, rows, runner_config, spawn_relay};

type Dump = BTreeMap<String, Hash>;

/// An API key of the PostgreSQL model: id, tenant, owner, prefix, scopes, revoked, expiry.
type KeyRow = (Uuid, Uuid, String, String, Vec<String>, bool, Option<i64>);

fn model(db: &TestDb, redis: &TestRedis) -> RedisModel<IdentityHotModel> {
    RedisModel::new(
        db.app.clone(),
        redis.conn.clone(),
        &redis.prefix,
        IdentityHotModel,
    )
    .unwrap()
}

async fn dump<P: RedisProjection>(model: &RedisModel<P>) -> (i64, Dump) {
    model.dump().await.unwrap().expect("a live model")
}

fn found<T>(lookup: Lookup<T>) -> Option<T> {
    match lookup {
        Lookup::Found { value, .. } => value,
        Lookup::Unavailable => panic!("the hot model is unavailable"),
    }
}

/// Checks every answer of the hot model against the PostgreSQL identity model's rows, and
/// against what the flows did.
async fn check_against_postgres(db: &TestDb, hot: &IdentityHot, w: &World) {
    let perms: Vec<(Uuid, String, Vec<String>)> = rows(
        &db.admin,
        "SELECT tenant_id, principal, permissions FROM rm_identity.effective_permissions",
    )
    .await;
    assert!(perms.len() > 5, "the flows made members");
    for (tenant, principal, permissions) in &perms {
        assert_eq!(
            found(hot.permissions(*tenant, principal).await.unwrap()).as_ref(),
            Some(permissions),
            "{principal} in {tenant}"
        );
    }
    // A service account removed from its tenant holds nothing there any more.
    let sa2 = format!("service_account:{}", w.accounts["sa2"]);
    assert_eq!(
        found(hot.permissions(uuid(&w.acme), &sa2).await.unwrap()),
        None
    );

    let tenants: Vec<(Uuid, String)> = rows(
        &db.admin,
        "SELECT tenant_id, status FROM rm_identity.tenants",
    )
    .await;
    assert_eq!(tenants.len(), 3);
    for (tenant, status) in tenants {
        assert_eq!(
            found(hot.tenant_status(tenant).await.unwrap()),
            Some(status)
        );
    }
    for (tenant, status) in [
        (&w.acme, "active"),
        (&w.globex, "suspended"),
        (&w.initech, "closed"),
    ] {
        assert_eq!(
            found(hot.tenant_status(uuid(tenant)).await.unwrap()).as_deref(),
            Some(status)
        );
    }

    let keys: Vec<KeyRow> = rows(
        &db.admin,
        "SELECT key_id, tenant_id, owner, display_prefix, scopes, revoked_at IS NOT NULL,
                (extract(epoch from expires_at) * 1000000)::bigint
           FROM rm_identity.api_keys",
    )
    .await;
    assert_eq!(keys.len(), 3);
    for (key, tenant, owner, prefix, scopes, revoked, expires) in keys {
        let held = found(hot.api_keys(&prefix).await.unwrap()).expect("keys under the prefix");
        let hot_key = held.iter().find(|k| k.key_id == key).expect("the key");
        assert_eq!(hot_key.tenant_id, tenant);
        assert_eq!(hot_key.owner, owner);
        assert_eq!(hot_key.scopes, scopes);
        assert_eq!(hot_key.status, if revoked { "revoked" } else { "active" });
        assert_eq!(hot_key.expires_at_us, expires);
        assert_eq!(hot_key.hash.len(), 64, "a SHA-256 in hex");
    }
    for (name, status) in [("k1", "active"), ("k2", "revoked"), ("k3", "active")] {
        let (id, prefix) = &w.keys[name];
        let held = found(hot.api_keys(prefix).await.unwrap()).unwrap();
        assert_eq!(
            held.iter()
                .find(|k| k.key_id == uuid(id))
                .map(|k| k.status.as_str()),
            Some(status),
            "{name}"
        );
    }

    let sessions: Vec<(Uuid, Uuid, Uuid, String, i64)> = rows(
        &db.admin,
        "SELECT session_id, user_id, tenant_id, status, generation FROM rm_identity.sessions",
    )
    .await;
    assert!(sessions.len() >= 5);
    for (session, user, tenant, status, generation) in sessions {
        let hot_session = found(hot.session(session).await.unwrap()).expect("the session");
        assert_eq!(hot_session.user_id, user);
        assert_eq!(hot_session.tenant_id, tenant);
        assert_eq!(hot_session.status, status, "session {session}");
        assert_eq!(i64::try_from(hot_session.generation).unwrap(), generation);
    }
    for (name, status) in [("s2", "ended"), ("s3", "revoked"), ("s4", "active")] {
        let session = found(hot.session(uuid(&w.sessions[name])).await.unwrap()).unwrap();
        assert_eq!(session.status, status, "{name}");
    }

    let users: Vec<(Uuid, Uuid, String, Option<i64>)> = rows(
        &db.admin,
        "SELECT user_id, tenant_id, status,
                (extract(epoch from sessions_valid_after) * 1000000)::bigint
           FROM rm_identity.users",
    )
    .await;
    for (user, tenant, status, valid_after) in users {
        let principal = found(hot.principal(&format!("user:{user}")).await.unwrap()).unwrap();
        assert_eq!(principal.tenant_id, tenant);
        assert_eq!(principal.status, status);
        assert_eq!(
            principal.sessions_valid_after_us, valid_after,
            "user {user}"
        );
    }
    let grace = found(hot.principal(&w.person("grace").principal()).await.unwrap()).unwrap();
    assert_eq!(
        grace.sessions_valid_after_us,
        Some(w.at("grace signed out everywhere"))
    );
    let mallory = found(
        hot.principal(&w.person("mallory").principal())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(mallory.status, "deactivated");

    let accounts: Vec<(Uuid, bool)> = rows(
        &db.admin,
        "SELECT account_id, enabled FROM rm_identity.service_accounts",
    )
    .await;
    assert_eq!(accounts.len(), 2);
    for (account, enabled) in accounts {
        let principal = found(
            hot.principal(&format!("service_account:{account}"))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            principal.status,
            if enabled { "enabled" } else { "disabled" }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_model_answers_what_the_postgres_model_holds_and_keeps_no_secret() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    let w = run_flows(&f).await;
    build(&db, 500).await;
    let model = model(&db, &redis);
    let reader = LogReader::new(db.app.clone());
    let hot = IdentityHot::new(redis.conn.clone(), &redis.prefix);
    assert_eq!(
        hot.tenant_status(uuid(&w.acme)).await.unwrap(),
        Lookup::Unavailable,
        "no model is built yet"
    );

    model.prepare(&reader, 50).await.unwrap();
    let (position, held) = dump(&model).await;
    assert_eq!(position, head(&db).await);
    check_against_postgres(&db, &hot, &w).await;

    let text = serde_json::to_string(&held).unwrap();
    for secret in &w.plaintext_secrets {
        assert!(!text.contains(secret.as_str()), "a secret in Redis");
    }
    for person in w.people.values() {
        assert!(!text.contains(&person.email), "an address in Redis");
        assert!(
            person.name.is_empty() || !text.contains(&person.name),
            "a name in Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_batch_changes_nothing_a_gap_applies_nothing_and_two_workers_agree() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    run_flows(&f).await;
    let events = all_events(&db).await;
    let model = model(&db, &redis);
    let reader = LogReader::new(db.app.clone());
    model
        .rebuild(&reader, Some(0), 100, |_, _| {})
        .await
        .unwrap();

    let retry = Retry::default();
    assert!(events.len() > 60);
    let first = apply_or_park_on(&model, &events[..40], retry)
        .await
        .unwrap();
    assert_eq!(first, Applied::Through { position: 40 });
    let after_first = dump(&model).await;
    let again = apply_or_park_on(&model, &events[..40], retry)
        .await
        .unwrap();
    assert_eq!(again, Applied::Through { position: 40 });
    assert_eq!(dump(&model).await, after_first);
    let gap = apply_or_park_on(&model, &events[60..], retry)
        .await
        .unwrap();
    assert_eq!(gap, Applied::Gap { from: 41, to: 60 });
    assert_eq!(dump(&model).await, after_first);

    // Two workers on one model, in batches of different sizes at once: every event applies
    // once, and the model equals one rebuilt from zero in a single pass.
    let second = self::model(&db, &redis);
    let (a, b) = tokio::join!(
        catch_up_on(&model, &reader, None, 7, retry),
        catch_up_on(&second, &reader, None, 13, retry),
    );
    let end = Applied::Through {
        position: head(&db).await,
    };
    assert_eq!((a.unwrap(), b.unwrap()), (end.clone(), end));
    let live = dump(&model).await;
    model
        .rebuild(&reader, None, 10_000, |_, _| {})
        .await
        .unwrap();
    assert_eq!(dump(&model).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_fills_the_model_from_the_bus_and_rebuilds_it_exactly_after_redis_loses_it() {
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    let (relay, _) = spawn_relay(&db, bus.client.clone(), bus.relay_config());
    let config = runner_config(&bus, Duration::from_millis(200));
    let spawn_runner = || {
        let runner: RedisRunner<IdentityHotModel> = RedisRunner::on(
            LogReader::new(db.app.clone()),
            bus.client.clone(),
            model(&db, &redis),
            config.clone(),
        );
        let stats = runner.stats();
        (tokio::spawn(runner.run(std::future::pending())), stats)
    };
    let (runner, stats) = spawn_runner();

    // The flows run while the runner follows the bus.
    let w = run_flows(&f).await;
    build(&db, 500).await;
    let model = model(&db, &redis);
    let end = head(&db).await;
    assert!(
        model
            .wait_for_position(end, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(stats.delivered() > 0, "nothing came through the bus");
    let hot = IdentityHot::new(redis.conn.clone(), &redis.prefix);
    check_against_postgres(&db, &hot, &w).await;
    let live = dump(&model).await;

    // Redis loses everything while no runner is there: readers are told to ask PostgreSQL.
    runner.abort();
    let _ = runner.await;
    redis.flush().await;
    assert_eq!(
        hot.tenant_status(uuid(&w.acme)).await.unwrap(),
        Lookup::Unavailable
    );
    assert!(model.dump().await.unwrap().is_none());

    // A runner rebuilds it from the log: exactly what was there.
    let (runner, _) = spawn_runner();
    assert!(
        model
            .wait_for_position(end, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(dump(&model).await, live);

    // And goes on from the bus: a key revoked now is revoked in Redis.
    let (k1, prefix) = &w.keys["k1"];
    let owner = crate::identity::as_user(&w.person("ada").id);
    let position = f
        .identity
        .revoke_api_key(&owner, &w.acme, k1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        model
            .wait_for_position(position, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let held = found(hot.api_keys(prefix).await.unwrap()).unwrap();
    assert_eq!(held[0].status, "revoked");
    runner.abort();
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_parks_the_hot_model_visibly_until_an_operator_skips_it() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    let w = run_flows(&f).await;
    let model = model(&db, &redis);
    let reader = LogReader::new(db.app.clone());
    model.prepare(&reader, 100).await.unwrap();
    let poison = append_raw(
        &db,
        "Tenant",
        &w.acme,
        "TenantRenamed",
        json!({"TenantRenamed": {"name": 42}}),
    )
    .await;
    // Other tenants' events go on after it.
    crate::identity_models::create_tenant(
        &f,
        "Hooli",
        "gavin@example.org",
        "Gavin Belson",
        OWNER_PASSWORD,
    )
    .await;
    let after = head(&db).await;
    let retry = quick_retry(2);
    let parked = catch_up_on(&model, &reader, None, 100, retry)
        .await
        .unwrap();
    let Applied::Parked(parked) = parked else {
        panic!("not parked: {parked:?}")
    };
    assert_eq!(parked.position, poison);
    assert!(parked.error.contains("does not decode"), "{}", parked.error);
    // Visible where operators look, and the model stops right before it.
    let checkpoint = projections::pg::checkpoint(&db.app, NAME)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.parked.map(|p| p.position), Some(poison));
    assert_eq!(model.position().await.unwrap(), Some(poison - 1));
    // Nothing moves while it is parked, however often it is asked.
    assert!(matches!(
        catch_up_on(&model, &reader, None, 100, retry)
            .await
            .unwrap(),
        Applied::Parked(_)
    ));
    // A rebuild cannot get past it either until it is skipped, and leaves the model as it was.
    assert!(model.rebuild(&reader, None, 100, |_, _| {}).await.is_err());
    assert_eq!(model.position().await.unwrap(), Some(poison - 1));

    projections::pg::skip(&db.app, NAME, poison, "ops@example.org")
        .await
        .unwrap();
    assert_eq!(
        catch_up_on(&model, &reader, None, 100, retry)
            .await
            .unwrap(),
        Applied::Through { position: after }
    );
    // The skip is on the record and a rebuild honours it.
    let rebuilt = model.rebuild(&reader, None, 100, |_, _| {}).await.unwrap();
    assert_eq!(rebuilt.position, after);
}

/// The identity hot model under another version number.
struct NextVersion;

impl RedisProjection for NextVersion {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        2
    }

    fn wants(&self, event: &eventstore::RecordedEvent) -> bool {
        IdentityHotModel.wants(event)
    }

    async fn apply(
        &self,
        stage: &mut Stage,
        events: &[&eventstore::RecordedEvent],
    ) -> Result<(), ApplyError> {
        IdentityHotModel.apply(stage, events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_rebuilds_the_model_and_leaves_no_key_of_the_old_one() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    run_flows(&f).await;
    let reader = LogReader::new(db.app.clone());
    let first = model(&db, &redis);
    first.prepare(&reader, 100).await.unwrap();
    let (_, held) = dump(&first).await;
    let keys_before = redis.keys().await.len();
    assert_eq!(keys_before, held.len() + 1, "the model's keys and its meta");

    let next = RedisModel::new(
        db.app.clone(),
        redis.conn.clone(),
        &redis.prefix,
        NextVersion,
    )
    .unwrap();
    // A reader of version 1 is told the model is of another version.
    assert_eq!(next.position().await.unwrap(), None);
    next.prepare(&reader, 100).await.unwrap();
    assert_eq!(next.position().await.unwrap(), Some(head(&db).await));
    assert_eq!(first.position().await.unwrap(), None);
    assert_eq!(dump(&next).await.1, held);
    assert_eq!(
        redis.keys().await.len(),
        keys_before,
        "no key of the old one"
    );
    let checkpoint = projections::pg::checkpoint(&db.app, NAME)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_left_by_another_database_under_the_same_prefix_is_built_again_from_this_log() {
    let redis = TestRedis::new().await;
    // A first database and its hot model.
    let gone = TestDb::new().await;
    let old = run_flows(&fixture(&gone)).await;
    model(&gone, &redis)
        .prepare(&LogReader::new(gone.app.clone()), 100)
        .await
        .unwrap();
    assert!(dump(&model(&gone, &redis)).await.0 > 0);
    drop(gone);

    // The database is made anew under the same Redis prefix, with a log of its own. The
    // model left in Redis is of the right version, but of another log: it is built again.
    let db = TestDb::new().await;
    let w = run_flows(&fixture(&db)).await;
    build(&db, 500).await;
    let fresh = model(&db, &redis);
    fresh
        .prepare(&LogReader::new(db.app.clone()), 100)
        .await
        .unwrap();
    assert_eq!(dump(&fresh).await.0, head(&db).await);
    let hot = IdentityHot::new(redis.conn.clone(), &redis.prefix);
    check_against_postgres(&db, &hot, &w).await;
    assert_eq!(
        found(hot.tenant_status(uuid(&old.acme)).await.unwrap()),
        None,
        "nothing of the other log is left"
    );

    // Started again over the same database, the model is its own and stays.
    let before = dump(&fresh).await;
    model(&db, &redis)
        .prepare(&LogReader::new(db.app.clone()), 100)
        .await
        .unwrap();
    assert_eq!(dump(&fresh).await, before);
}
