//! Projection benchmark: the read side's three figures, each with its baseline from the same
//! run, and each checked against what the benchmark wrote.
//!
//! 1. **Apply.** A log of identity events is written through the real identity commands
//!    (`commands::identity::Identity`: tenants with their owners, registrations, members,
//!    a custom role, a login with refreshes, an API key, a service account with a secret,
//!    renames; passwords hashed with Argon2id at Argon2's minimum cost). It is read into
//!    memory and applied, in batches of `BENCH_BATCH` events, to the identity read model
//!    (`projections::identity::IdentityModel`) with `projections::pg::apply_batch`, each
//!    batch one transaction with its checkpoint. The baseline applies the same batches as
//!    one multi-row `INSERT ... SELECT FROM UNNEST` of one row per event the model reads
//!    (position, event id, aggregate, event type, payload, time) into a plain table, with a
//!    checkpoint `UPDATE` in the same transaction. The two alternate over `BENCH_ROUNDS`
//!    rounds, each from an empty model; the median rates are compared. After every round
//!    the model must hold exactly what the commands did (tenants, users, memberships, roles,
//!    sessions, keys, accounts) and the plain table one row per event it reads.
//! 2. **Replay.** `BENCH_EVENTS` ledger entries (default 1,000,000) are appended through
//!    the event store's repository and appender, 100 per aggregate, from
//!    `BENCH_FILL_WRITERS` writers. A projection defined here (`ledger`: entries and amounts
//!    per aggregate, a batch folded in memory and written with one upsert) is rebuilt with
//!    `projections::pg::rebuild` over the whole log, pages of 2,000 events as `platform
//!    replay` reads them. The baseline streams the same rows and columns with one plain
//!    `SELECT ... ORDER BY global_position`, once before the rebuild and once after it; the
//!    faster of the two is the baseline. The rebuilt table must equal what was
//!    appended, aggregate by aggregate; the raw read must see positions 1..=N in order and
//!    the same total amount. Goal: replay ≥ 50,000 events/s.
//! 3. **Lag.** In a fresh database with a stream and subject prefix of its own, the relay
//!    (`eventstore::Relay`) and a `projections::PgRunner` of the ledger projection run over
//!    the real NATS; one append of one event is issued per tick of a `BENCH_RATE` per
//!    second interval (default 1,000) for `BENCH_LAG_SECONDS` (default 10) after an
//!    unmeasured second, each on a task of its own so that a slow append does not slow
//!    the rate. When an append returns, its position's commit instant is recorded; a poller
//!    reads `projections::pg::checkpoint` every millisecond on a connection of its own and
//!    records when each position first shows. The lag of a position is the difference;
//!    p50 and p99 are printed, with the commit-to-acked-on-the-stream part (the relay's
//!    acked position, sampled by the same poller) beside them. Afterwards the model must
//!    hold one entry per append, the checkpoint and the head must agree, and the stream
//!    must hold positions 1..=N in order. Goal: p99 ≤ 50 ms.
//!
//! The lag part runs second, before the replay fills its large log, and starts with a
//! `CHECKPOINT`, so that the database's background writing of earlier parts does not fall
//! into it; the report keeps the order above. Every part has a database of its own
//! (`tests::TestDb`); any failed check exits with 1.
//!
//! Run with `./dev bench projections` (`cargo bench -p tests --bench projections`).
//! Environment: `BENCH_TENANTS` tenants of the identity log (default 300),
//! `BENCH_CONCURRENCY` tenants written at once (default 8), `BENCH_BATCH` events per
//! applied batch (default 512, the runner's), `BENCH_ROUNDS` (default 3), `BENCH_EVENTS`
//! (default 1000000), `BENCH_FILL_WRITERS` (default 8), `BENCH_RATE` (default 1000),
//! `BENCH_LAG_SECONDS` (default 10), `BENCH_POLL_MS` the poller's period (default 1),
//! `BENCH_PARTS` (e.g. `apply,lag,replay`, the default).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commands::CommandMetadata;
use commands::bus::Outcome;
use commands::identity::{Identity, IdentityError, SystemClock};
use commands::privacy::MasterKey;
use cqrs_es::persist::SerializedEvent;
use domain::ActorKind;
use eventstore::{EventRepository, LogReader, PgSubjectKeys, ProtoEncoder, RecordedEvent, Relay};
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use projections::identity::IdentityModel;
use projections::identity_hot::IdentityHotModel;
use projections::pg::{self, Applied, ApplyError, PgProjection, Setup};
use projections::{PgRunner, RedisModel, RedisProjection as _, RunnerConfig, Target as _};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tests::{TestBus, TestDb, TestRedis};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Events read from the log per transaction by a replay, as `platform replay` reads them.
const REPLAY_PAGE: i64 = 2000;

/// Ledger entries per aggregate in the replay's log: one append each.
const ENTRIES_PER_LEDGER: usize = 100;

/// Users each tenant of the identity log registers and makes members.
const MEMBERS: usize = 3;

/// Refresh-token rotations of each tenant's session.
const REFRESHES: usize = 3;

const OWNER_PASSWORD: &str = "correct horse battery staple";

/// The custom role each tenant defines: permissions an owner holds.
const SUPPORT_LEAD: [&str; 3] = ["billing:manage", "sessions:read", "users:read"];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

/// The checks of a run: each with whether it held.
#[derive(Default)]
struct Checks(Vec<(bool, String)>);

impl Checks {
    fn check(&mut self, ok: bool, text: impl Into<String>) {
        self.0.push((ok, text.into()));
    }

    #[allow(clippy::needless_pass_by_value)]
    fn expect_eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, found: T, expected: T) {
        let ok = found == expected;
        let text = if ok {
            format!("{what}: {found:?}")
        } else {
            format!("{what}: {found:?}, expected {expected:?}")
        };
        self.check(ok, text);
    }

    fn all_hold(&self) -> bool {
        self.0.iter().all(|(ok, _)| *ok)
    }
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(f64::NAN, f64::max)
}

// ---------------------------------------------------------------------------------------
// Shared: the ledger projection and its events.

/// Entries and amounts per ledger aggregate. A batch is folded in memory first and written
/// with one upsert, as a projection that cares about replay speed would.
struct LedgerTotals;

impl PgProjection for LedgerTotals {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn version(&self) -> i32 {
        1
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "Ledger"
    }

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE totals (
            aggregate_id  text PRIMARY KEY,
            entries       bigint NOT NULL,
            amount        bigint NOT NULL,
            last_position bigint NOT NULL
        )"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut folded: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
        for event in events {
            let Some(amount) = event.payload["amount"].as_i64() else {
                return Err(ApplyError::at(
                    event.global_position,
                    "the entry has no integer amount",
                ));
            };
            let row = folded
                .entry(event.aggregate_id.as_str())
                .or_insert((0, 0, 0));
            row.0 += 1;
            row.1 += amount;
            row.2 = event.global_position;
        }
        let mut ids = Vec::with_capacity(folded.len());
        let mut entries = Vec::with_capacity(folded.len());
        let mut amounts = Vec::with_capacity(folded.len());
        let mut positions = Vec::with_capacity(folded.len());
        for (id, (count, amount, position)) in folded {
            ids.push(id);
            entries.push(count);
            amounts.push(amount);
            positions.push(position);
        }
        sqlx::query(
            "INSERT INTO totals (aggregate_id, entries, amount, last_position)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (aggregate_id) DO UPDATE
                SET entries = totals.entries + EXCLUDED.entries,
                    amount = totals.amount + EXCLUDED.amount,
                    last_position = EXCLUDED.last_position",
        )
        .bind(ids)
        .bind(entries)
        .bind(amounts)
        .bind(positions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// `count` entries of the ledger `id`, from sequence 1; entry `i` books `100 + i`.
fn ledger_entries(id: &str, count: usize, tenant: Uuid) -> Vec<SerializedEvent> {
    let metadata =
        json!({"actor_id": "bench", "actor_kind": "system", "tenant_id": tenant.to_string()});
    (0..count)
        .map(|i| {
            SerializedEvent::new(
                id.to_owned(),
                i + 1,
                "Ledger".to_owned(),
                "EntryRecorded".to_owned(),
                "1".to_owned(),
                json!({"entry": format!("{id}#{i}"), "amount": 100 + i}),
                metadata.clone(),
            )
        })
        .collect()
}

/// What `count` entries of one ledger add up to.
fn ledger_amount(count: usize) -> i64 {
    (0..count as i64).map(|i| 100 + i).sum()
}

/// The ledger model's table, by aggregate: (entries, amount).
async fn ledger_totals(pool: &PgPool) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT aggregate_id, entries, amount FROM rm_ledger.totals")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, entries, amount)| (id, (entries, amount)))
        .collect()
}

async fn head(pool: &PgPool) -> i64 {
    LogReader::new(pool.clone()).head().await.unwrap().position
}

async fn checkpoint_of(pool: &PgPool, name: &str) -> i64 {
    pg::checkpoint(pool, name)
        .await
        .unwrap()
        .map_or(-1, |checkpoint| checkpoint.position)
}

// ---------------------------------------------------------------------------------------
// 1. Apply: the identity read model against raw multi-row inserts.

type IdentityService = Identity<EventRepository, PgSubjectKeys>;

fn anonymous() -> CommandMetadata {
    CommandMetadata::new("anonymous", ActorKind::Anonymous, None)
}

/// One tenant's life, through the identity commands: created, its owner verified, three
/// users registered and made members, a custom role defined and given to one of them, the
/// owner's login refreshed three times, an API key, a service account with a client
/// secret, and two renames.
async fn tenant_flow(id: &IdentityService, n: usize) -> Result<(), IdentityError> {
    let owner_email = format!("owner{n}@example.org");
    let (outcome, _) = id
        .create_tenant(
            &anonymous(),
            &format!("Tenant {n}"),
            "free",
            &owner_email,
            "Olive Owner",
            OWNER_PASSWORD,
        )
        .await?;
    let Outcome::Done(created) = outcome else {
        panic!("tenant {n} was replayed, not created");
    };
    let tenant = created.tenant_id.to_string();
    let owner_id = created.owner_id.to_string();
    let owner = CommandMetadata::new(owner_id.clone(), ActorKind::User, None);
    let token = created
        .verification_token
        .expect("a new owner's verification token");
    id.verify_email(&anonymous(), &owner_id, &token).await?;

    let mut members = Vec::with_capacity(MEMBERS);
    for m in 0..MEMBERS {
        let (outcome, _) = id
            .register(
                &anonymous(),
                &tenant,
                &format!("member{m}.of{n}@example.org"),
                "Mia Member",
                "members have long passphrases",
            )
            .await?;
        let Outcome::Done(registered) = outcome else {
            panic!("a registration in tenant {n} was replayed");
        };
        let principal = format!("user:{}", registered.user_id);
        id.add_member(&owner, &tenant, &principal, &["member"])
            .await?;
        members.push(principal);
    }
    id.define_role(&owner, &tenant, "support-lead", &SUPPORT_LEAD)
        .await?;
    id.assign_role(&owner, &tenant, &members[0], "support-lead")
        .await?;

    let (login, _) = id
        .login(&anonymous(), &tenant, &owner_email, OWNER_PASSWORD)
        .await?;
    let session = login.session_id.to_string();
    let mut refresh_token = login.refresh_token;
    for _ in 0..REFRESHES {
        let (refreshed, _) = id.refresh(&anonymous(), &session, &refresh_token).await?;
        refresh_token = refreshed.refresh_token;
    }

    id.create_api_key(&owner, &tenant, "ci deploys", &["users:read"], None)
        .await?;
    let (account, _) = id
        .create_service_account(&owner, &tenant, "deployer", &["viewer"])
        .await?;
    id.issue_client_secret(&owner, &tenant, &account.to_string())
        .await?;
    for version in 1..=2 {
        id.rename_tenant(&owner, &tenant, &format!("Tenant {n} v{version}"))
            .await?;
    }
    Ok(())
}

/// Writes the identity log of `tenants` tenants, `concurrency` at a time.
async fn write_identity_log(db: &TestDb, tenants: usize, concurrency: usize) {
    let store = db.store();
    let master = MasterKey::from_bytes([7; 32]);
    let identity = Arc::new(Identity::new(
        store.repository.clone(),
        PgSubjectKeys::new(db.app.clone(), master.key_wrapping_key()),
        Arc::new(tests::passwords::CheapArgon2id::new()),
        &master,
        Arc::new(SystemClock),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (identity, next) = (Arc::clone(&identity), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= tenants {
                    break;
                }
                if let Err(err) = tenant_flow(&identity, n).await {
                    panic!("tenant {n}: {err}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The baseline's plain tables, created by the owner and granted to the application role.
const RAW_SCHEMA: &str = "
CREATE SCHEMA bench_raw;
CREATE TABLE bench_raw.events (
    global_position bigint PRIMARY KEY,
    event_id        uuid NOT NULL,
    aggregate_type  text NOT NULL,
    aggregate_id    text NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL
);
CREATE TABLE bench_raw.checkpoint (name text PRIMARY KEY, position bigint NOT NULL);
INSERT INTO bench_raw.checkpoint VALUES ('raw', 0);
GRANT USAGE ON SCHEMA bench_raw TO platform_app;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA bench_raw TO platform_app;
";

const RAW_INSERT: &str = "
INSERT INTO bench_raw.events
       (global_position, event_id, aggregate_type, aggregate_id, event_type, payload,
        recorded_at)
SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::jsonb[], $7::timestamptz[])";

/// One batch of the baseline: the rows of the events the identity model reads, and the
/// checkpoint, in one transaction.
async fn raw_apply(pool: &PgPool, batch: &[RecordedEvent]) {
    let last = batch.last().expect("a non-empty batch").global_position;
    let wanted: Vec<&RecordedEvent> = batch.iter().filter(|e| IdentityModel.wants(e)).collect();
    let mut tx = pool.begin().await.unwrap();
    if !wanted.is_empty() {
        let positions: Vec<i64> = wanted.iter().map(|e| e.global_position).collect();
        let ids: Vec<Uuid> = wanted.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = wanted.iter().map(|e| e.aggregate_type.as_str()).collect();
        let aggregates: Vec<&str> = wanted.iter().map(|e| e.aggregate_id.as_str()).collect();
        let events: Vec<&str> = wanted.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<Value> = wanted.iter().map(|e| e.payload.clone()).collect();
        let times: Vec<DateTime<Utc>> = wanted.iter().map(|e| e.recorded_at).collect();
        sqlx::query(RAW_INSERT)
            .bind(positions)
            .bind(ids)
            .bind(types)
            .bind(aggregates)
            .bind(events)
            .bind(payloads)
            .bind(times)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE bench_raw.checkpoint SET position = $1 WHERE name = 'raw'")
        .bind(last)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Applies every batch to an empty identity model; returns the time the batches took.
async fn run_identity(db: &TestDb, batches: &[Vec<RecordedEvent>]) -> Duration {
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = 'identity'")
        .execute(&db.admin)
        .await
        .unwrap();
    assert_eq!(
        pg::setup(&db.app, &IdentityModel).await.unwrap(),
        Setup::Created
    );
    let started = Instant::now();
    for batch in batches {
        let last = batch.last().expect("a non-empty batch").global_position;
        match pg::apply_batch(&db.app, &IdentityModel, batch).await {
            Ok(Applied::Through { position }) if position == last => {}
            other => panic!("the identity model's batch through {last}: {other:?}"),
        }
    }
    started.elapsed()
}

/// Applies every batch to the empty plain table; returns the time the batches took.
async fn run_raw(db: &TestDb, batches: &[Vec<RecordedEvent>]) -> Duration {
    sqlx::raw_sql("TRUNCATE bench_raw.events; UPDATE bench_raw.checkpoint SET position = 0")
        .execute(&db.admin)
        .await
        .unwrap();
    let started = Instant::now();
    for batch in batches {
        raw_apply(&db.app, batch).await;
    }
    started.elapsed()
}

/// Applies every batch to an empty identity hot model in Redis, one Lua call per batch with
/// its position; returns the time the batches took.
async fn run_hot(db: &TestDb, redis: &TestRedis, batches: &[Vec<RecordedEvent>]) -> Duration {
    redis.flush().await;
    let model = hot_model(db, redis);
    // An empty live model at position 0, as a first start makes.
    model
        .rebuild(&LogReader::new(db.app.clone()), Some(0), 1, |_, _| {})
        .await
        .unwrap();
    let started = Instant::now();
    for batch in batches {
        let last = batch.last().expect("a non-empty batch").global_position;
        match model.apply_batch(batch).await {
            Ok(Applied::Through { position }) if position == last => {}
            other => panic!("the identity hot model's batch through {last}: {other:?}"),
        }
    }
    started.elapsed()
}

fn hot_model(db: &TestDb, redis: &TestRedis) -> RedisModel<IdentityHotModel> {
    RedisModel::new(
        db.app.clone(),
        redis.conn.clone(),
        &redis.prefix,
        IdentityHotModel,
    )
    .unwrap()
}

/// The Redis baseline: per batch, one pipeline of one `HSET` per event the model reads
/// (aggregate → position → event type) and the checkpoint's `SET`.
async fn run_raw_redis(redis: &TestRedis, batches: &[Vec<RecordedEvent>]) -> Duration {
    redis.flush().await;
    let mut conn = redis.conn.clone();
    let started = Instant::now();
    for batch in batches {
        let last = batch.last().expect("a non-empty batch").global_position;
        let mut pipe = redis::pipe();
        for event in batch.iter().filter(|e| IdentityHotModel.wants(e)) {
            pipe.hset(
                format!("{}:raw:{}", redis.prefix, event.aggregate_id),
                event.global_position,
                &event.event_type,
            )
            .ignore();
        }
        pipe.set(format!("{}:raw-checkpoint", redis.prefix), last)
            .ignore();
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    started.elapsed()
}

/// The identity hot model against what the flows of `tenants` tenants did.
async fn check_hot(
    db: &TestDb,
    redis: &TestRedis,
    tenants: usize,
    head: i64,
    round: usize,
    checks: &mut Checks,
) {
    let (position, held) = hot_model(db, redis)
        .dump()
        .await
        .unwrap()
        .expect("a live hot model");
    let fields = |prefix: &str| -> usize {
        held.iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(_, hash)| hash.len())
            .sum()
    };
    let keys = |test: &dyn Fn(&str) -> bool| held.keys().filter(|key| test(key)).count();
    let active_sessions = held
        .iter()
        .filter(|(key, hash)| {
            key.starts_with("session:") && hash.get("status").map(String::as_str) == Some("active")
        })
        .count();
    let found = vec![
        keys(&|key| key.starts_with("tenant:") && key.matches(':').count() == 1),
        keys(&|key| key.starts_with("principal:user:")),
        fields("perms:"),
        fields("apikey:"),
        active_sessions,
        keys(&|key| key.starts_with("principal:service_account:")),
        usize::try_from(position).unwrap(),
    ];
    let expected = vec![
        tenants,
        tenants * (1 + MEMBERS),
        tenants * (2 + MEMBERS),
        tenants,
        tenants,
        tenants,
        usize::try_from(head).unwrap(),
    ];
    checks.expect_eq(
        &format!(
            "apply round {round}: identity hot model [tenants, users, effective permissions, API keys, active sessions, service accounts, position]"
        ),
        found,
        expected,
    );
}

async fn check_raw_redis(
    redis: &TestRedis,
    wanted: usize,
    head: i64,
    round: usize,
    checks: &mut Checks,
) {
    let mut conn = redis.conn.clone();
    let mut fields = 0usize;
    for key in redis.keys().await {
        if key.starts_with(&format!("{}:raw:", redis.prefix)) {
            let n: usize = redis::cmd("HLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            fields += n;
        }
    }
    let position: i64 = redis::cmd("GET")
        .arg(format!("{}:raw-checkpoint", redis.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    checks.expect_eq(
        &format!("apply round {round}: raw Redis hashes [fields, checkpoint]"),
        (fields, position),
        (wanted, head),
    );
}

/// The identity model against what the flows of `tenants` tenants did.
async fn check_identity(db: &TestDb, tenants: i64, head: i64, round: usize, checks: &mut Checks) {
    let count = |sql: &'static str| {
        let pool = db.admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let members = i64::try_from(MEMBERS).unwrap();
    let found = vec![
        count("SELECT count(*) FROM rm_identity.tenants").await,
        count("SELECT count(*) FROM rm_identity.tenants WHERE name LIKE 'Tenant % v2'").await,
        count("SELECT count(*) FROM rm_identity.users").await,
        count("SELECT count(*) FROM rm_identity.users WHERE email_verified").await,
        count("SELECT count(*) FROM rm_identity.memberships").await,
        count("SELECT count(*) FROM rm_identity.memberships WHERE 'support-lead' = ANY (roles)")
            .await,
        count("SELECT count(*) FROM rm_identity.effective_permissions").await,
        count("SELECT count(*) FROM rm_identity.custom_roles").await,
        count("SELECT count(*) FROM rm_identity.sessions WHERE status = 'active'").await,
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM rm_identity.sessions WHERE generation = $1",
        )
        .bind(1 + i64::try_from(REFRESHES).unwrap())
        .fetch_one(&db.admin)
        .await
        .unwrap(),
        count("SELECT count(*) FROM rm_identity.api_keys").await,
        count(
            "SELECT count(*) FROM rm_identity.service_accounts
              WHERE cardinality(active_secret_ids) = 1",
        )
        .await,
        checkpoint_of(&db.app, "identity").await,
    ];
    let expected = vec![
        tenants,
        tenants,
        tenants * (1 + members),
        tenants,
        tenants * (2 + members),
        tenants,
        tenants * (2 + members),
        tenants,
        tenants,
        tenants,
        tenants,
        tenants,
        head,
    ];
    checks.expect_eq(
        &format!(
            "apply round {round}: identity model [tenants, renamed twice, users, verified, memberships, support leads, effective permissions, custom roles, active sessions, rotated {REFRESHES}x, API keys, accounts with a secret, checkpoint]"
        ),
        found,
        expected,
    );
}

async fn check_raw(db: &TestDb, wanted: &[i64], head: i64, round: usize, checks: &mut Checks) {
    let (rows, sum): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(global_position)::bigint FROM bench_raw.events")
            .fetch_one(&db.admin)
            .await
            .unwrap();
    let position: i64 = sqlx::query_scalar("SELECT position FROM bench_raw.checkpoint")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    checks.expect_eq(
        &format!("apply round {round}: raw table [rows, sum of positions, checkpoint]"),
        (rows, sum.unwrap_or(0), position),
        (wanted.len() as i64, wanted.iter().sum(), head),
    );
}

struct ApplyResult {
    tenants: usize,
    events: i64,
    wanted: usize,
    write_seconds: f64,
    batch: usize,
    rounds: usize,
    identity: Vec<f64>,
    raw: Vec<f64>,
    hot: Vec<f64>,
    raw_redis: Vec<f64>,
}

async fn apply_part(checks: &mut Checks) -> ApplyResult {
    let tenants = env("BENCH_TENANTS", 300).max(1);
    let concurrency = env("BENCH_CONCURRENCY", 8).max(1);
    let batch = env("BENCH_BATCH", 512).max(1);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let db = TestDb::new().await;
    eprintln!("apply: writing the identity log of {tenants} tenants through the commands ...");
    let started = Instant::now();
    write_identity_log(&db, tenants, concurrency).await;
    let write_seconds = started.elapsed().as_secs_f64();
    let events: Vec<RecordedEvent> = LogReader::new(db.app.clone())
        .read_from(1)
        .try_collect()
        .await
        .unwrap();
    let head = head(&db.app).await;
    checks.expect_eq(
        "apply: the log read back is 1..=head",
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.global_position == i as i64 + 1)
            && events.len() as i64 == head,
        true,
    );
    let wanted: Vec<i64> = events
        .iter()
        .filter(|e| IdentityModel.wants(e))
        .map(|e| e.global_position)
        .collect();
    let batches: Vec<Vec<RecordedEvent>> = events.chunks(batch).map(<[_]>::to_vec).collect();
    sqlx::raw_sql(RAW_SCHEMA).execute(&db.admin).await.unwrap();

    let mut identity = Vec::new();
    let mut raw = Vec::new();
    let (mut hot, mut raw_redis) = (Vec::new(), Vec::new());
    let redis = TestRedis::new().await;
    for round in 0..rounds {
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                eprintln!(
                    "apply: round {} of {rounds}, identity hot model ...",
                    round + 1
                );
                let took = run_hot(&db, &redis, &batches).await;
                hot.push(head as f64 / took.as_secs_f64());
                check_hot(&db, &redis, tenants, head, round + 1, checks).await;
            } else {
                eprintln!(
                    "apply: round {} of {rounds}, pipelined Redis writes ...",
                    round + 1
                );
                let took = run_raw_redis(&redis, &batches).await;
                raw_redis.push(head as f64 / took.as_secs_f64());
                check_raw_redis(&redis, wanted.len(), head, round + 1, checks).await;
            }
        }
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                eprintln!("apply: round {} of {rounds}, identity model ...", round + 1);
                let took = run_identity(&db, &batches).await;
                identity.push(head as f64 / took.as_secs_f64());
                check_identity(&db, tenants as i64, head, round + 1, checks).await;
            } else {
                eprintln!("apply: round {} of {rounds}, raw inserts ...", round + 1);
                let took = run_raw(&db, &batches).await;
                raw.push(head as f64 / took.as_secs_f64());
                check_raw(&db, &wanted, head, round + 1, checks).await;
            }
        }
    }
    ApplyResult {
        tenants,
        events: head,
        wanted: wanted.len(),
        write_seconds,
        batch,
        rounds,
        identity,
        raw,
        hot,
        raw_redis,
    }
}

// ---------------------------------------------------------------------------------------
// 2. Replay: a rebuild over a large log against a raw streaming read.

/// The ledgers the replay's log holds, by id: how many entries each.
async fn fill_ledgers(db: &TestDb, events: usize, writers: usize) -> BTreeMap<String, usize> {
    let mut sizes = vec![ENTRIES_PER_LEDGER; events / ENTRIES_PER_LEDGER];
    if !events.is_multiple_of(ENTRIES_PER_LEDGER) {
        sizes.push(events % ENTRIES_PER_LEDGER);
    }
    let plan: Vec<(String, usize)> = sizes
        .into_iter()
        .map(|size| (format!("ledger-{}", Uuid::now_v7()), size))
        .collect();
    let tenants: Vec<Uuid> = (0..16).map(|_| Uuid::now_v7()).collect();
    let plan = Arc::new(plan);
    let store = db.store();
    let mut tasks = Vec::with_capacity(writers);
    for writer in 0..writers {
        let (plan, tenants) = (Arc::clone(&plan), tenants.clone());
        let repository = store.repository.clone();
        tasks.push(tokio::spawn(async move {
            for index in (writer..plan.len()).step_by(writers) {
                let (id, size) = &plan[index];
                let entries = ledger_entries(id, *size, tenants[index % tenants.len()]);
                repository.append(&entries, None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    plan.iter().cloned().collect()
}

/// The columns `LogReader` reads, decoded into the same types.
type RawRow = (
    i64,
    Uuid,
    String,
    String,
    i64,
    String,
    String,
    Option<Uuid>,
    DateTime<Utc>,
    Value,
    Value,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

const RAW_READ: &str = "\
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash, hash
  FROM events
 ORDER BY global_position";

/// Streams the whole log with one query: rows, whether positions were 1..=rows in order,
/// and the amounts' sum.
async fn raw_read(pool: &PgPool) -> (Duration, i64, bool, i64) {
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, RawRow>(RAW_READ).fetch(pool);
    let (mut count, mut in_order, mut amount) = (0i64, true, 0i64);
    while let Some(row) = rows.try_next().await.unwrap() {
        count += 1;
        in_order &= row.0 == count;
        amount += row.9["amount"].as_i64().unwrap_or(0);
    }
    (started.elapsed(), count, in_order, amount)
}

struct ReplayResult {
    events: i64,
    fill_seconds: f64,
    rebuild: Vec<f64>,
    raw: Vec<f64>,
}

async fn replay_part(checks: &mut Checks) -> ReplayResult {
    let events = env("BENCH_EVENTS", 1_000_000).max(1);
    let writers = env("BENCH_FILL_WRITERS", 8).max(1);
    let db = TestDb::new().await;
    eprintln!("replay: appending {events} ledger entries from {writers} writers ...");
    let started = Instant::now();
    let plan = fill_ledgers(&db, events, writers).await;
    let fill_seconds = started.elapsed().as_secs_f64();
    let n = head(&db.app).await;
    checks.expect_eq("replay: the log's head", n, events as i64);
    let expected: BTreeMap<String, (i64, i64)> = plan
        .iter()
        .map(|(id, size)| (id.clone(), (*size as i64, ledger_amount(*size))))
        .collect();
    let expected_amount: i64 = expected.values().map(|(_, amount)| amount).sum();
    sqlx::query("VACUUM ANALYZE events")
        .execute(&db.admin)
        .await
        .unwrap();

    let mut rebuild = Vec::new();
    let mut raw = Vec::new();
    let reader = LogReader::new(db.app.clone());
    // The raw read first, then the replay, then the raw read again: neither meets a colder
    // cache than the other.
    for system in [0, 1, 0] {
        if system == 0 {
            eprintln!("replay: raw read ...");
            let (took, rows, in_order, amount) = raw_read(&db.app).await;
            raw.push(rows as f64 / took.as_secs_f64());
            checks.expect_eq(
                "replay: raw read [rows, positions 1..=N in order, total amount]",
                (rows, in_order, amount),
                (n, true, expected_amount),
            );
        } else {
            eprintln!("replay: rebuilding the ledger projection ...");
            let started = Instant::now();
            let rebuilt = pg::rebuild(
                &db.app,
                &LedgerTotals,
                &reader,
                None,
                REPLAY_PAGE,
                |_, _| {},
            )
            .await
            .unwrap();
            let took = started.elapsed();
            rebuild.push(rebuilt.events as f64 / took.as_secs_f64());
            checks.expect_eq(
                "replay: rebuild [events read, position, checkpoint]",
                (
                    rebuilt.events as i64,
                    rebuilt.position,
                    checkpoint_of(&db.app, "ledger").await,
                ),
                (n, n, n),
            );
            let totals = ledger_totals(&db.admin).await;
            let entries: i64 = totals.values().map(|(entries, _)| entries).sum();
            checks.expect_eq(
                "replay: rebuilt totals [ledgers, entries, equal to what was appended ledger by ledger]",
                (totals.len(), entries, totals == expected),
                (expected.len(), n, true),
            );
        }
    }
    ReplayResult {
        events: n,
        fill_seconds,
        rebuild,
        raw,
    }
}

// ---------------------------------------------------------------------------------------
// 3. Lag: commit to read-model-visible, through the relay, NATS and the runner.

/// Instants by position, as nanoseconds since `origin` plus one (0: not yet).
struct Instants(Vec<AtomicU64>);

impl Instants {
    fn new(len: usize) -> Self {
        Self((0..len).map(|_| AtomicU64::new(0)).collect())
    }

    fn set(&self, position: i64, origin: Instant) {
        if let Some(slot) = usize::try_from(position).ok().and_then(|p| self.0.get(p)) {
            let nanos = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            slot.store(nanos + 1, Ordering::Release);
        }
    }

    fn get(&self, position: usize) -> Option<u64> {
        match self.0.get(position)?.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(nanos - 1),
        }
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct LagResult {
    rate: usize,
    seconds: usize,
    measured: usize,
    achieved_rate: f64,
    visible: Histogram<u64>,
    acked: Histogram<u64>,
    committed_after_visible: usize,
    delivered: u64,
    healed: u64,
}

async fn lag_part(checks: &mut Checks) -> LagResult {
    let rate = env("BENCH_RATE", 1000).max(1);
    let seconds = env("BENCH_LAG_SECONDS", 10).max(1);
    let poll_every = Duration::from_millis(env("BENCH_POLL_MS", 1).max(1) as u64);
    let warmup_ticks = rate;
    let ticks = warmup_ticks + rate * seconds;
    let db = TestDb::new().await;
    // What earlier parts left for the checkpointer to write is written now, not during the
    // measurement.
    sqlx::query("CHECKPOINT").execute(&db.admin).await.unwrap();
    let bus = TestBus::new().await;
    let store = db.store();
    let repository = store.repository.clone();
    let tenant = Uuid::now_v7();
    let append_one = move |repository: EventRepository, id: String| async move {
        let entry = ledger_entries(&id, 1, tenant);
        repository
            .append(&entry, None)
            .await
            .map(|receipt| receipt.expect("an append's receipt").last_position)
    };

    // The relay first: it creates the stream the runner reads.
    let relay = Relay::new(
        db.app.clone(),
        bus.client.clone(),
        bus.relay_config(),
        ProtoEncoder,
    );
    let relay_stats = relay.stats();
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run(async move {
        let _ = relay_stopped.await;
    }));
    append_one(repository.clone(), "ledger-warm".to_owned())
        .await
        .unwrap();
    wait_until(
        "the relay's first ack",
        Duration::from_secs(30),
        async || relay_stats.acked_position() >= 1,
    )
    .await;

    let config = RunnerConfig {
        subject_prefix: bus.prefix.clone(),
        stream: bus.stream.clone(),
        page: REPLAY_PAGE,
        ..RunnerConfig::default()
    };
    let consumer = projections::runner::consumer_name(&config, LedgerTotals.name());
    let runner = PgRunner::new(db.app.clone(), bus.client.clone(), LedgerTotals, config);
    let runner_stats = runner.stats();
    let (stop_runner, runner_stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(runner.run(async move {
        let _ = runner_stopped.await;
    }));
    wait_until(
        "the runner's consumer",
        Duration::from_secs(30),
        async || match bus.jetstream.get_stream(&bus.stream).await {
            Ok(stream) => stream.consumer_info(&consumer).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
    wait_until(
        "the model at position 1",
        Duration::from_secs(30),
        async || checkpoint_of(&db.app, "ledger").await >= 1,
    )
    .await;

    // The poller: a connection of its own, a sample every `BENCH_POLL_MS` (1 ms).
    let origin = Instant::now();
    let slots = ticks + 2;
    let committed = Arc::new(Instants::new(slots));
    let visible = Arc::new(Instants::new(slots));
    let acked = Arc::new(Instants::new(slots));
    let measured_positions: Arc<Vec<AtomicBool>> =
        Arc::new((0..slots).map(|_| AtomicBool::new(false)).collect());
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poll_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.app.connect_options()).clone())
        .await
        .unwrap();
    let poller = {
        let (visible, acked, stop) = (
            Arc::clone(&visible),
            Arc::clone(&acked),
            Arc::clone(&stop_polling),
        );
        let relay_stats = Arc::clone(&relay_stats);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(poll_every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut seen, mut seen_acked) = (1i64, 1i64);
            while !stop.load(Ordering::Acquire) {
                interval.tick().await;
                let on_stream = relay_stats.acked_position();
                for position in seen_acked + 1..=on_stream {
                    acked.set(position, origin);
                }
                seen_acked = seen_acked.max(on_stream);
                let position = checkpoint_of(&poll_pool, "ledger").await;
                for position in seen + 1..=position {
                    visible.set(position, origin);
                }
                seen = seen.max(position);
            }
        })
    };

    // The load: one append per tick, each on a task of its own.
    eprintln!("lag: {rate} appends/s for 1 s of warm-up and {seconds} s measured ...");
    let mut interval = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate).unwrap());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(ticks);
    let mut measured_started = None;
    for tick in 0..ticks {
        interval.tick().await;
        let measured = tick >= warmup_ticks;
        if measured && measured_started.is_none() {
            measured_started = Some(Instant::now());
        }
        let (committed, measured_positions) =
            (Arc::clone(&committed), Arc::clone(&measured_positions));
        let append = append_one(repository.clone(), format!("ledger-{tick}"));
        tasks.push(tokio::spawn(async move {
            let position = append.await.unwrap();
            committed.set(position, origin);
            if let Some(flag) = usize::try_from(position)
                .ok()
                .and_then(|p| measured_positions.get(p))
            {
                flag.store(measured, Ordering::Relaxed);
            }
        }));
    }
    let issue_seconds = measured_started.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    let mut failed = 0;
    for task in tasks {
        failed += usize::from(task.await.is_err());
    }
    checks.expect_eq("lag: failed appends", failed, 0);
    let n = head(&db.app).await;
    checks.expect_eq("lag: the log's head", n, ticks as i64 + 1);
    wait_until(
        "the model at the head",
        Duration::from_secs(60),
        async || visible.get(usize::try_from(n).unwrap()).is_some(),
    )
    .await;
    stop_polling.store(true, Ordering::Release);
    poller.await.unwrap();
    let _ = stop_runner.send(());
    runner.await.unwrap();
    let _ = stop_relay.send(());
    relay.await.unwrap();

    let mut visible_lag = Histogram::<u64>::new(3).unwrap();
    let mut acked_lag = Histogram::<u64>::new(3).unwrap();
    let mut committed_after_visible = 0;
    let mut measured = 0;
    for position in 1..=usize::try_from(n).unwrap() {
        if !measured_positions[position].load(Ordering::Relaxed) {
            continue;
        }
        let commit = committed
            .get(position)
            .expect("every append's commit instant");
        let shown = visible.get(position).expect("every position shown");
        let on_stream = acked.get(position).expect("every position acked");
        committed_after_visible += usize::from(shown < commit);
        visible_lag
            .record(shown.saturating_sub(commit) / 1000)
            .unwrap();
        acked_lag
            .record(on_stream.saturating_sub(commit) / 1000)
            .unwrap();
        measured += 1;
    }
    checks.expect_eq("lag: measured appends", measured, rate * seconds);

    let totals = ledger_totals(&db.admin).await;
    let entries: i64 = totals.values().map(|(entries, _)| entries).sum();
    let amount: i64 = totals.values().map(|(_, amount)| amount).sum();
    checks.expect_eq(
        "lag: model [ledgers, entries, amount, checkpoint]",
        (
            totals.len() as i64,
            entries,
            amount,
            checkpoint_of(&db.app, "ledger").await,
        ),
        (n, n, 100 * n, n),
    );
    checks.expect_eq(
        "lag: the stream holds positions 1..=N in order",
        bus.positions(&bus.stream).await == (1..=n).collect::<Vec<_>>(),
        true,
    );
    checks.expect_eq(
        "lag: messages the runner rejected",
        runner_stats.rejected(),
        0,
    );
    LagResult {
        rate,
        seconds,
        measured,
        achieved_rate: (rate * seconds) as f64 / issue_seconds,
        visible: visible_lag,
        acked: acked_lag,
        committed_after_visible,
        delivered: runner_stats.delivered(),
        healed: runner_stats.healed(),
    }
}

// ---------------------------------------------------------------------------------------

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "apply,lag,replay".to_owned());
    let runs = |part: &str| parts.split(',').any(|p| p.trim() == part);
    let mut checks = Checks::default();

    let mut server = PgConnection::connect(&tests::admin_url())
        .await
        .expect("cannot reach PostgreSQL at PLATFORM_TEST_ADMIN_URL; run scripts/services.sh");
    let (version, synchronous_commit): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit')",
    )
    .fetch_one(&mut server)
    .await
    .unwrap();
    let _ = server.close().await;

    let apply = if runs("apply") {
        Some(apply_part(&mut checks).await)
    } else {
        None
    };
    let lag = if runs("lag") {
        Some(lag_part(&mut checks).await)
    } else {
        None
    };
    let replay = if runs("replay") {
        Some(replay_part(&mut checks).await)
    } else {
        None
    };

    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(
        out,
        "projections benchmark: PostgreSQL {version}, synchronous_commit={synchronous_commit}, {cores} cores"
    );
    if let Some(a) = &apply {
        let (identity, raw) = (median(&a.identity), median(&a.raw));
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "1. apply: {} events ({} read by the model) of {} tenants written through the identity commands in {:.1} s; batches of {}, {} rounds",
            a.events, a.wanted, a.tenants, a.write_seconds, a.batch, a.rounds
        );
        let _ = writeln!(
            out,
            "system                                    | median events/s | best events/s | vs raw inserts (median)"
        );
        let _ = writeln!(
            out,
            "identity model (pg::apply_batch)          | {identity:>15.0} | {:>13.0} | {:>6.2}x",
            best(&a.identity),
            identity / raw
        );
        let _ = writeln!(
            out,
            "raw UNNEST insert + checkpoint UPDATE     | {raw:>15.0} | {:>13.0} | {:>6.2}x",
            best(&a.raw),
            1.0
        );
        let (hot, raw_redis) = (median(&a.hot), median(&a.raw_redis));
        let _ = writeln!(
            out,
            "system                                    | median events/s | best events/s | vs pipelined writes (median)"
        );
        let _ = writeln!(
            out,
            "identity hot model (Redis, one Lua call)  | {hot:>15.0} | {:>13.0} | {:>6.2}x",
            best(&a.hot),
            hot / raw_redis
        );
        let _ = writeln!(
            out,
            "pipelined HSETs + checkpoint SET          | {raw_redis:>15.0} | {:>13.0} | {:>6.2}x",
            best(&a.raw_redis),
            1.0
        );
    }
    if let Some(r) = &replay {
        // One rebuild; the raw read ran before and after it, and the faster of the two is
        // the baseline.
        let (rebuild, raw) = (best(&r.rebuild), best(&r.raw));
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "2. replay: {} ledger events (appended in {:.1} s, {:.0} events/s); pages of {REPLAY_PAGE}",
            r.events,
            r.fill_seconds,
            r.events as f64 / r.fill_seconds
        );
        let _ = writeln!(
            out,
            "system                                    | events/s | vs raw read"
        );
        let _ = writeln!(
            out,
            "rebuild (pg::rebuild, ledger projection)  | {rebuild:>8.0} | {:>6.2}x",
            rebuild / raw
        );
        let reads: Vec<String> = r.raw.iter().map(|rate| format!("{rate:.0}")).collect();
        let _ = writeln!(
            out,
            "raw SELECT ... ORDER BY global_position   | {raw:>8.0} | {:>6.2}x  (faster of {})",
            1.0,
            reads.join(" and ")
        );
        let _ = writeln!(
            out,
            "goal: replay >= 50000 events/s: {rebuild:.0} -> {}",
            verdict(rebuild >= 50_000.0)
        );
    }
    if let Some(l) = &lag {
        let p99 = ms(&l.visible, 0.99);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "3. lag: {} appends/s for {} s ({} measured, {:.0}/s achieved); relay and runner over NATS",
            l.rate, l.seconds, l.measured, l.achieved_rate
        );
        let _ = writeln!(
            out,
            "from commit to                            | p50 ms | p99 ms | max ms"
        );
        let _ = writeln!(
            out,
            "read model visible (checkpoint)           | {:>6.2} | {p99:>6.2} | {:>6.2}",
            ms(&l.visible, 0.5),
            l.visible.max() as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "  of which acked on the stream (relay)    | {:>6.2} | {:>6.2} | {:>6.2}",
            ms(&l.acked, 0.5),
            ms(&l.acked, 0.99),
            l.acked.max() as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "(runner: {} messages delivered by the bus, {} catch-ups from PostgreSQL; {} positions showed before their append returned, counted as 0)",
            l.delivered, l.healed, l.committed_after_visible
        );
        let _ = writeln!(
            out,
            "goal: p99 <= 50 ms: {p99:.2} ms -> {}",
            verdict(p99 <= 50.0)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "checks:");
    for (ok, text) in &checks.0 {
        let _ = writeln!(out, "  [{}] {text}", if *ok { "ok  " } else { "FAIL" });
    }
    print!("{out}");
    if !checks.all_hold() {
        std::process::exit(1);
    }
}
