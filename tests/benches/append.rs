//! Append benchmark: commands/s and p50/p99 command latency at 1, 16 and 64 concurrent
//! writers, against the same local PostgreSQL with `synchronous_commit` on, for
//!
//! - (a) this repository's event store (`eventstore::platform_cqrs`, group-commit appender),
//! - (b) plain postgres-es 0.5 (`postgres_es::postgres_cqrs`) with its own schema,
//! - (c) the raw limit: one single-row INSERT per transaction.
//!
//! Every cell (system × writer count) has a fresh database of its own. Each writer is a
//! Tokio task that works through wallets of its own, one after the other: it opens a wallet,
//! makes deposits into it, and moves on to the next after `BENCH_COMMANDS_PER_WALLET`
//! commands, so every aggregate stays small (as most are), no two writers ever touch the
//! same aggregate, and conflicts cannot happen.
//!
//! The systems of a writer count are interleaved, so that they meet the same machine
//! conditions on a noisy host: all of their databases are set up first, each system warms
//! up once for `BENCH_WARMUP_SECONDS` (not measured), and then `BENCH_ROUNDS` rounds run
//! every system for a slice of `BENCH_SECONDS / BENCH_ROUNDS` seconds, one after the other,
//! round `r` starting at system `r % n` so that none always goes first. Every slice opens
//! the system's connection pool afresh and connects `min(writers, BENCH_POOL)` connections
//! before its clock starts, runs the writers for an unmeasured 250 ms and then until the
//! slice ends, recording the latencies of the commands that start and complete inside the
//! measured part, and closes the pool again (so only one
//! benchmark pool is open at a time); an untimed 200 ms pause follows. Each writer's
//! commands continue across slices where they left off. A cell's histograms and counts are
//! merged over its rounds; its throughput is its measured commands over its measured
//! seconds. At the end the databases are checked: the number of events must equal the
//! successful commands (one event each), and (a)'s hash chain must verify. The `failures`
//! column counts every failed command of the cell, warm-up included; any failure or failed
//! check exits with 1.
//!
//! Run with `cargo bench -p tests --bench append`. Environment:
//!
//! - `BENCH_SECONDS` measured seconds per cell, over all rounds (default 5);
//! - `BENCH_ROUNDS` interleaved rounds the measured seconds are split into (default 5);
//! - `BENCH_WARMUP_SECONDS` warm-up seconds per cell, before the first round (default 1);
//! - `BENCH_WRITERS` writer counts, e.g. `1,16,64` (the default);
//! - `BENCH_SYSTEMS` systems, e.g. `a,b,c` (the default);
//! - `BENCH_COMMANDS_PER_WALLET` commands per wallet, the first of which opens it (default 4);
//! - `BENCH_POOL` connection-pool size, the same for every system (default 64);
//! - `BENCH_POOL_PING` `on` (sqlx's default, and what postgres-es users get) or `off`:
//!   whether a pool checkout pings the connection first (`test_before_acquire`). (a) loads
//!   and appends on connections of its own, so this changes what (b) and (c) pay;
//! - `PLATFORM_TEST_ADMIN_URL` the superuser URL (see `tests::admin_url`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{AppenderConfig, EventRepository, LogReader, PlatformCqrs};
use hdrhistogram::Histogram;
use postgres_es::PostgresCqrs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tests::TestDb;
use tests::example::{Wallet, WalletCommand};
use uuid::Uuid;

/// postgres-es 0.5's own schema: the `events` and `snapshots` tables of its `db/init.sql`.
const POSTGRES_ES_SCHEMA: [&str; 2] = [
    "CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)",
    "CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
)",
];

/// The raw limit's table: one row per transaction.
const RAW_SCHEMA: &str = "CREATE TABLE raw_appends (
    id      bigserial PRIMARY KEY,
    writer  integer   NOT NULL,
    n       bigint    NOT NULL,
    payload jsonb     NOT NULL
)";

const RAW_INSERT: &str = "INSERT INTO raw_appends (writer, n, payload) VALUES ($1, $2, $3)";

/// Connections of the pools that stay open for a whole writer count, only to set up and
/// check the databases: `TestDb`'s application pool and a `ScratchDb`'s pool.
const SETUP_POOL: u32 = 2;

/// `TestDb`'s admin pool.
const TESTDB_ADMIN_POOL: u32 = 4;

/// How long each measured slice runs before its clock starts.
const SLICE_RAMP: Duration = Duration::from_millis(250);

/// The untimed pause between two slices, for the closed pool's backends to go away.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Eventstore,
    PostgresEs,
    Raw,
}

impl System {
    fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "a" => Some(Self::Eventstore),
            "b" => Some(Self::PostgresEs),
            "c" => Some(Self::Raw),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Eventstore => "eventstore (a)",
            Self::PostgresEs => "postgres-es (b)",
            Self::Raw => "raw sqlx insert (c)",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    measure: Duration,
    warmup: Duration,
    rounds: usize,
    writers: Vec<usize>,
    systems: Vec<System>,
    commands_per_wallet: u64,
    pool_size: u32,
    pool_ping: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| abort(&format!("{name}={text:?} is not a valid value"))),
        _ => default,
    }
}

impl Config {
    fn from_env() -> Self {
        let seconds: f64 = env_or("BENCH_SECONDS", 5.0);
        let warmup: f64 = env_or("BENCH_WARMUP_SECONDS", 1.0);
        if !(seconds.is_finite() && seconds > 0.0 && warmup.is_finite() && warmup >= 0.0) {
            abort("BENCH_SECONDS must be above zero and BENCH_WARMUP_SECONDS not below zero");
        }
        let rounds: usize = env_or("BENCH_ROUNDS", 5);
        if rounds == 0 || u32::try_from(rounds).is_err() {
            abort("BENCH_ROUNDS must be above zero");
        }
        let writers: String = env_or("BENCH_WRITERS", "1,16,64".to_owned());
        let writers: Vec<usize> = writers
            .split(',')
            .map(|w| {
                w.trim()
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .unwrap_or_else(|| abort(&format!("BENCH_WRITERS: {w:?} is not a count")))
            })
            .collect();
        let systems: String = env_or("BENCH_SYSTEMS", "a,b,c".to_owned());
        let systems: Vec<System> = systems
            .split(',')
            .map(|s| {
                System::parse(s).unwrap_or_else(|| {
                    abort(&format!("BENCH_SYSTEMS: {s:?} is not one of a, b, c"))
                })
            })
            .collect();
        let commands_per_wallet: u64 = env_or("BENCH_COMMANDS_PER_WALLET", 4);
        let pool_size: u32 = env_or("BENCH_POOL", 64);
        if commands_per_wallet == 0 || pool_size == 0 {
            abort("BENCH_COMMANDS_PER_WALLET and BENCH_POOL must be above zero");
        }
        let pool_ping = match env_or("BENCH_POOL_PING", "on".to_owned()).as_str() {
            "on" => true,
            "off" => false,
            other => abort(&format!("BENCH_POOL_PING: {other:?} is neither on nor off")),
        };
        Self {
            measure: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            rounds,
            writers,
            systems,
            commands_per_wallet,
            pool_size,
            pool_ping,
        }
    }

    /// The measured time of one system in one round.
    fn slice(&self) -> Duration {
        self.measure / u32::try_from(self.rounds).unwrap_or(u32::MAX)
    }
}

fn abort(message: &str) -> ! {
    eprintln!("append benchmark aborted: {message}");
    std::process::exit(2);
}

/// The server every system runs against. Unless the URL names an `sslmode`, connections
/// are plain TCP, as pgbench's are: TLS over loopback would cost every system alike and
/// measure the cipher rather than the store.
fn server_options() -> PgConnectOptions {
    let url = tests::admin_url();
    let options: PgConnectOptions = url
        .parse()
        .unwrap_or_else(|err| abort(&format!("PLATFORM_TEST_ADMIN_URL is not a URL: {err}")));
    let options = if url.contains("sslmode=") {
        options
    } else {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    };
    options.log_statements(tracing::log::LevelFilter::Trace)
}

/// Checks that a connection of the given pool commits synchronously; aborts if not.
async fn require_synchronous_commit(pool: &PgPool, what: &str) {
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|err| abort(&format!("SHOW synchronous_commit on {what}: {err}")));
    if setting == "off" {
        abort(&format!(
            "synchronous_commit is off for {what}: the numbers would not mean durable appends"
        ));
    }
}

/// A scratch database of (b) or (c), created over the admin connection and dropped with
/// `DROP DATABASE ... WITH (FORCE)`, also if the benchmark panics.
struct ScratchDb {
    name: String,
    server: PgConnectOptions,
    pool: PgPool,
}

impl ScratchDb {
    async fn create(server: &PgConnectOptions, pool_size: u32, schema: &[&str]) -> Self {
        let name = format!("bench_{}", Uuid::new_v4().simple());
        let mut conn = server
            .connect()
            .await
            .unwrap_or_else(|err| abort(&format!("cannot reach PostgreSQL: {err}")));
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut conn)
            .await
            .expect("create benchmark database");
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .connect_with(server.clone().database(&name))
            .await
            .expect("connect to benchmark database");
        let db = Self {
            name,
            server: server.clone(),
            pool,
        };
        for statement in schema {
            sqlx::query(statement)
                .execute(&db.pool)
                .await
                .expect("create benchmark schema");
        }
        db
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        tests::drop_database(&self.server, &self.name);
    }
}

/// What a writer sends its commands to.
enum Target {
    Eventstore(PlatformCqrs<Wallet>),
    PostgresEs(PostgresCqrs<Wallet>),
    Raw(PgPool),
}

impl Target {
    /// One measured operation: command `n` of a writer (for (a) and (b), an `Open` for the
    /// first command on each wallet and a `Deposit` after it), or for (c) one single-row
    /// insert transaction.
    async fn append(&self, writer: usize, n: u64, per_wallet: u64) -> Result<(), String> {
        let wallet = format!("wallet-{writer:03}-{:07}", n / per_wallet);
        let command = if n.is_multiple_of(per_wallet) {
            WalletCommand::Open {
                owner: format!("owner of {wallet}"),
            }
        } else {
            WalletCommand::Deposit {
                amount: i64::try_from(n % 100).unwrap_or(0) + 1,
            }
        };
        match self {
            Self::Eventstore(cqrs) => Box::pin(cqrs.execute(&wallet, command))
                .await
                .map_err(|err| err.to_string()),
            Self::PostgresEs(cqrs) => Box::pin(cqrs.execute(&wallet, command))
                .await
                .map_err(|err| err.to_string()),
            Self::Raw(pool) => {
                let result: Result<(), sqlx::Error> = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(RAW_INSERT)
                        .bind(i32::try_from(writer).unwrap_or(i32::MAX))
                        .bind(i64::try_from(n).unwrap_or(i64::MAX))
                        .bind(serde_json::to_value(&command).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                }
                .await;
                result.map_err(|err| err.to_string())
            }
        }
    }
}

/// What one writer did, or (merged) what all writers of a system did.
struct WriterStats {
    /// Latencies (µs) of the commands that completed inside a measured slice.
    histogram: Histogram<u64>,
    measured_ok: u64,
    total_ok: u64,
    total_failed: u64,
    first_error: Option<String>,
}

impl WriterStats {
    fn new() -> Self {
        Self {
            histogram: new_histogram(),
            measured_ok: 0,
            total_ok: 0,
            total_failed: 0,
            first_error: None,
        }
    }

    /// Adds what another writer (or slice) did.
    fn absorb(&mut self, other: Self) {
        self.histogram
            .add(&other.histogram)
            .expect("merge histograms");
        self.measured_ok += other.measured_ok;
        self.total_ok += other.total_ok;
        self.total_failed += other.total_failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// Runs commands `first_n`, `first_n + 1`, ... of one writer until one completes at or
/// after `until`; if `measured`, records the latencies of those that complete before.
/// Returns what it did and the next command number, where the next slice continues.
async fn writer_loop(
    target: Arc<Target>,
    writer: usize,
    per_wallet: u64,
    first_n: u64,
    measured: bool,
    from: Instant,
    until: Instant,
) -> (WriterStats, u64) {
    let mut stats = WriterStats::new();
    let mut n = first_n;
    loop {
        let started = Instant::now();
        let result = target.append(writer, n, per_wallet).await;
        let ended = Instant::now();
        n += 1;
        match result {
            Ok(()) => {
                stats.total_ok += 1;
                if measured && started >= from && ended <= until {
                    stats.measured_ok += 1;
                    let micros = u64::try_from(ended.duration_since(started).as_micros())
                        .unwrap_or(u64::MAX);
                    stats.histogram.saturating_record(micros.max(1));
                }
            }
            Err(err) => {
                stats.total_failed += 1;
                stats.first_error.get_or_insert(err);
            }
        }
        if ended >= until {
            return (stats, n);
        }
    }
}

/// The result of one cell.
struct Cell {
    writers: usize,
    system: System,
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    measured: u64,
    total_ok: u64,
    failures: u64,
    first_error: Option<String>,
    /// Whether the database holds exactly what the writers were told was committed.
    check: Result<String, String>,
}

impl Cell {
    fn valid(&self) -> bool {
        self.failures == 0 && self.check.is_ok()
    }
}

/// The database a system writes to, alive for all rounds of a writer count.
enum SubjectDb {
    Eventstore(TestDb),
    Scratch(ScratchDb),
}

/// One system at one writer count: its database, where each writer's commands continue,
/// and what all of its slices did.
struct Subject {
    system: System,
    db: SubjectDb,
    next_n: Vec<u64>,
    stats: WriterStats,
}

/// A system's pool and target, open for one slice.
struct Slice {
    target: Arc<Target>,
    pool: PgPool,
    tasks: Option<(eventstore::AppenderTask, eventstore::LoaderTask)>,
}

impl Subject {
    async fn create(system: System, writers: usize, server: &PgConnectOptions) -> Self {
        let db = match system {
            System::Eventstore => {
                SubjectDb::Eventstore(TestDb::on(server.clone(), SETUP_POOL).await)
            }
            System::PostgresEs => {
                SubjectDb::Scratch(ScratchDb::create(server, SETUP_POOL, &POSTGRES_ES_SCHEMA).await)
            }
            System::Raw => {
                SubjectDb::Scratch(ScratchDb::create(server, SETUP_POOL, &[RAW_SCHEMA]).await)
            }
        };
        Self {
            system,
            db,
            next_n: vec![0; writers],
            stats: WriterStats::new(),
        }
    }

    /// Opens a fresh pool and target, and connects `min(writers, pool)` connections, so
    /// no connection is set up on the slice's clock.
    async fn open(&self, writers: usize, config: &Config, server: &PgConnectOptions) -> Slice {
        let (options, what) = match &self.db {
            SubjectDb::Eventstore(db) => (
                server.clone().database(&db.name).username(tests::APP_ROLE),
                "the event store's application pool",
            ),
            SubjectDb::Scratch(db) => (
                server.clone().database(&db.name),
                match self.system {
                    System::PostgresEs => "the postgres-es pool",
                    _ => "the raw insert pool",
                },
            ),
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .test_before_acquire(config.pool_ping)
            .connect_with(options)
            .await
            .unwrap_or_else(|err| abort(&format!("cannot open {what}: {err}")));
        require_synchronous_commit(&pool, what).await;
        let warm = writers.min(usize::try_from(config.pool_size).unwrap_or(usize::MAX));
        let connections = futures::future::try_join_all((0..warm).map(|_| pool.acquire()))
            .await
            .unwrap_or_else(|err| abort(&format!("cannot connect {warm} of {what}: {err}")));
        drop(connections);
        let (target, tasks) = match self.system {
            System::Eventstore => {
                let (appender, task) =
                    eventstore::Appender::spawn(pool.clone(), AppenderConfig::default());
                let (loader, loader_task) =
                    eventstore::Loader::spawn(&pool, eventstore::LoaderConfig::default());
                let repository = EventRepository::new(pool.clone(), appender, loader);
                (
                    Target::Eventstore(eventstore::platform_cqrs::<Wallet>(repository, vec![], ())),
                    Some((task, loader_task)),
                )
            }
            System::PostgresEs => (
                Target::PostgresEs(postgres_es::postgres_cqrs::<Wallet>(
                    pool.clone(),
                    vec![],
                    (),
                )),
                None,
            ),
            System::Raw => (Target::Raw(pool.clone()), None),
        };
        Slice {
            target: Arc::new(target),
            pool,
            tasks,
        }
    }

    /// Runs one slice of `duration`: opens the pool, spawns the writers (each continuing
    /// at its next command), keeps what they did, and closes the pool again.
    async fn run_slice(
        &mut self,
        writers: usize,
        config: &Config,
        server: &PgConnectOptions,
        duration: Duration,
        measured: bool,
    ) {
        let Slice {
            target,
            pool,
            tasks: store_tasks,
        } = self.open(writers, config, server).await;
        // The first moments of a slice (a fresh pool, a fresh appender, every writer starting
        // at once) are not measured: they would measure the slicing, not the system.
        let from = Instant::now() + if measured { SLICE_RAMP } else { Duration::ZERO };
        let until = from + duration;
        let mut tasks = Vec::with_capacity(writers);
        for (writer, &first_n) in self.next_n.iter().enumerate() {
            tasks.push(tokio::spawn(writer_loop(
                Arc::clone(&target),
                writer,
                config.commands_per_wallet,
                first_n,
                measured,
                from,
                until,
            )));
        }
        for (writer, task) in tasks.into_iter().enumerate() {
            let (stats, next_n) = task.await.expect("writer task");
            self.next_n[writer] = next_n;
            self.stats.absorb(stats);
        }
        // Every writer is done: for (a), dropping the framework drops the last sender, and
        // the appender and loader tasks drain and end.
        drop(target);
        if let Some((appender, loader)) = store_tasks {
            appender.join().await;
            loader.join().await;
        }
        pool.close().await;
    }

    /// Checks the database against what the writers were told was committed, and drops it.
    async fn finish(self, writers: usize, measured_time: Duration) -> Cell {
        let expected = self.stats.total_ok;
        let check = match &self.db {
            SubjectDb::Eventstore(db) => {
                let events = count(&db.admin, "events").await;
                match expect_count("events", events, expected) {
                    Err(err) => Err(err),
                    Ok(counted) => match LogReader::new(db.app.clone()).verify(1, None).await {
                        Err(err) => Err(format!("{counted}; verify(1, None) failed: {err}")),
                        Ok(v) if !v.is_intact() => Err(format!(
                            "{counted}; chain NOT intact: {:?}",
                            v.fault.map(|f| (f.position, f.reason))
                        )),
                        Ok(v) if v.verified != expected || v.to != events => Err(format!(
                            "{counted}; verify checked {} events up to {}, expected {expected}",
                            v.verified, v.to
                        )),
                        Ok(v) => Ok(format!("{counted}; chain intact, {} verified", v.verified)),
                    },
                }
            }
            SubjectDb::Scratch(db) if self.system == System::Raw => {
                expect_count("rows", count(&db.pool, "raw_appends").await, expected)
            }
            SubjectDb::Scratch(db) => {
                expect_count("events", count(&db.pool, "events").await, expected)
            }
        };
        let cell = summarize(self.system, writers, measured_time, &self.stats, check);
        drop(self.db);
        cell
    }
}

/// Runs every selected system at one writer count, interleaved: a warm-up slice each, then
/// `rounds` rounds in which each system runs for its slice in turn, round `r` starting at
/// system `r % n`.
async fn run_writer_count(writers: usize, config: &Config, server: &PgConnectOptions) -> Vec<Cell> {
    let mut subjects = Vec::with_capacity(config.systems.len());
    for &system in &config.systems {
        subjects.push(Subject::create(system, writers, server).await);
    }
    if !config.warmup.is_zero() {
        for subject in &mut subjects {
            eprintln!(
                "{writers} writers: warming up {} ...",
                subject.system.label()
            );
            subject
                .run_slice(writers, config, server, config.warmup, false)
                .await;
            tokio::time::sleep(SETTLE).await;
        }
    }
    let slice = config.slice();
    let n = subjects.len();
    for round in 0..config.rounds {
        eprintln!(
            "{writers} writers: round {} of {} ...",
            round + 1,
            config.rounds
        );
        for i in 0..n {
            let subject = &mut subjects[(round + i) % n];
            subject
                .run_slice(writers, config, server, slice, true)
                .await;
            tokio::time::sleep(SETTLE).await;
        }
    }
    let measured_time = slice * u32::try_from(config.rounds).unwrap_or(u32::MAX);
    let mut cells = Vec::with_capacity(n);
    for subject in subjects {
        cells.push(subject.finish(writers, measured_time).await);
    }
    cells
}

fn summarize(
    system: System,
    writers: usize,
    measured_time: Duration,
    stats: &WriterStats,
    check: Result<String, String>,
) -> Cell {
    let histogram = &stats.histogram;
    let ms = |q: f64| {
        if histogram.is_empty() {
            f64::NAN
        } else {
            histogram.value_at_quantile(q) as f64 / 1000.0
        }
    };
    Cell {
        writers,
        system,
        throughput: stats.measured_ok as f64 / measured_time.as_secs_f64(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        measured: stats.measured_ok,
        total_ok: stats.total_ok,
        failures: stats.total_failed,
        first_error: stats.first_error.clone(),
        check,
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

fn expect_count(what: &str, found: i64, expected: u64) -> Result<String, String> {
    if u64::try_from(found).ok() == Some(expected) {
        Ok(format!("{what}: {found} as expected"))
    } else {
        Err(format!("{what}: {found}, expected {expected}"))
    }
}

fn ratio(numerator: f64, denominator: f64) -> String {
    if numerator.is_finite() && denominator.is_finite() && denominator > 0.0 {
        format!("{:.2}x", numerator / denominator)
    } else {
        "n/a".to_owned()
    }
}

fn find(cells: &[Cell], writers: usize, system: System) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.writers == writers && c.system == system)
}

/// Renders the table, the (a)/(c) ratios, the checks and the goal verdict.
fn report(cells: &[Cell], config: &Config) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "writers | system              | commands/s | p50 ms | p99 ms | failures | vs postgres-es (throughput) | p99 vs postgres-es"
    );
    for cell in cells {
        let base = find(cells, cell.writers, System::PostgresEs);
        let (vs_tput, vs_p99) = match base {
            Some(b) if cell.system != System::PostgresEs => (
                ratio(cell.throughput, b.throughput),
                ratio(cell.p99_ms, b.p99_ms),
            ),
            Some(_) => ("1.00x".to_owned(), "1.00x".to_owned()),
            None => ("n/a".to_owned(), "n/a".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:>7} | {:<19} | {:>10.0} | {:>6.2} | {:>6.2} | {:>8} | {:>27} | {:>18}",
            cell.writers,
            cell.system.label(),
            cell.throughput,
            cell.p50_ms,
            cell.p99_ms,
            cell.failures,
            vs_tput,
            vs_p99
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "eventstore (a) vs raw sqlx insert (c):");
    for &writers in &config.writers {
        if let (Some(a), Some(c)) = (
            find(cells, writers, System::Eventstore),
            find(cells, writers, System::Raw),
        ) {
            let _ = writeln!(
                out,
                "  {writers:>3} writers: throughput {} of (c), p50 {} of (c), p99 {} of (c)",
                ratio(a.throughput, c.throughput),
                ratio(a.p50_ms, c.p50_ms),
                ratio(a.p99_ms, c.p99_ms)
            );
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "checks:");
    let mut all_checks_pass = true;
    for cell in cells {
        let (mark, text) = match &cell.check {
            Ok(text) => ("ok  ", text.clone()),
            Err(text) => {
                all_checks_pass = false;
                ("FAIL", text.clone())
            }
        };
        let load = if cell.system == System::Raw {
            String::new()
        } else {
            format!(
                ", {} wallets",
                cell.total_ok.div_ceil(config.commands_per_wallet)
            )
        };
        let _ = writeln!(
            out,
            "  [{mark}] {:>3} writers {:<19}: {} measured, {} ok in total (incl. warm-up){load}; {text}",
            cell.writers,
            cell.system.label(),
            cell.measured,
            cell.total_ok,
        );
        if let Some(err) = &cell.first_error {
            all_checks_pass = false;
            let _ = writeln!(out, "         {} failures, first: {err}", cell.failures);
        }
    }

    let _ = writeln!(out);
    let mut verdicts = Vec::new();
    let pair = |writers| match (
        find(cells, writers, System::Eventstore),
        find(cells, writers, System::PostgresEs),
    ) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    match pair(64) {
        Some((a, b)) => {
            let tput = a.throughput / b.throughput;
            let p99 = a.p99_ms / b.p99_ms;
            let met = a.valid() && b.valid() && tput >= 3.0 && p99 <= 0.5;
            verdicts.push(Some(met));
            let _ = writeln!(
                out,
                "goal 64 writers: (a) >= 3x (b) throughput and p99(a) <= 0.5x p99(b): {:.2}x throughput, {:.2}x p99 -> {}",
                tput,
                p99,
                if met { "met" } else { "NOT met" }
            );
        }
        None => {
            verdicts.push(None);
            let _ = writeln!(out, "goal 64 writers: not evaluated (needs a and b at 64)");
        }
    }
    match pair(1) {
        Some((a, b)) => {
            let tput = a.throughput / b.throughput;
            let met = a.valid() && b.valid() && tput >= 0.8;
            verdicts.push(Some(met));
            let _ = writeln!(
                out,
                "goal 1 writer:   (a) >= 0.8x (b) throughput: {:.2}x -> {}",
                tput,
                if met { "met" } else { "NOT met" }
            );
        }
        None => {
            verdicts.push(None);
            let _ = writeln!(out, "goal 1 writer:   not evaluated (needs a and b at 1)");
        }
    }
    let verdict = if verdicts.contains(&Some(false)) {
        "goal NOT met"
    } else if verdicts.iter().all(|v| *v == Some(true)) {
        "goal met"
    } else {
        "goal not evaluated: run all of a,b at 1 and 64 writers"
    };
    let _ = writeln!(
        out,
        "verdict: {verdict}{}",
        if all_checks_pass {
            ""
        } else {
            " (some cells failed their checks: see above)"
        }
    );
    (out, all_checks_pass)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let config = Config::from_env();
    let server = server_options();
    let mut admin: PgConnection = server.connect().await.unwrap_or_else(|err| {
        abort(&format!(
            "cannot reach PostgreSQL at {} ({err}); run scripts/services.sh",
            tests::admin_url()
        ))
    });
    let show = |row: Result<String, sqlx::Error>| row.unwrap_or_else(|err| abort(&err.to_string()));
    let synchronous_commit = show(
        sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut admin)
            .await,
    );
    if synchronous_commit == "off" {
        abort("synchronous_commit is off: turn it on, the benchmark measures durable appends");
    }
    let fsync = show(sqlx::query_scalar("SHOW fsync").fetch_one(&mut admin).await);
    let version = show(
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await,
    );
    let max_connections: i64 = show(
        sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&mut admin)
            .await,
    )
    .parse()
    .unwrap_or(0);
    let in_use: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap_or(0);
    let _ = admin.close().await;
    // At a writer count, every system's database stays open with its small setup pools
    // (TestDb's admin and application pools, a ScratchDb's pool), but only one system's
    // benchmark pool is open at a time (a slice closes it before the next opens); plus our
    // own admin connections.
    let setup: u32 = config
        .systems
        .iter()
        .map(|system| match system {
            System::Eventstore => TESTDB_ADMIN_POOL + SETUP_POOL,
            System::PostgresEs | System::Raw => SETUP_POOL,
        })
        .sum();
    let needed = i64::from(config.pool_size) + i64::from(setup) + 2;
    if max_connections < needed {
        abort(&format!(
            "max_connections is {max_connections}, but a writer count needs up to {needed} connections; lower BENCH_POOL"
        ));
    }
    if max_connections - in_use < needed {
        eprintln!(
            "warning: {in_use} of {max_connections} connections are in use by others; a writer count needs up to {needed}"
        );
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "append benchmark: synchronous_commit={synchronous_commit}, {} s per cell in {} interleaved rounds of {} s, PostgreSQL {}",
        config.measure.as_secs_f64(),
        config.rounds,
        config.slice().as_secs_f64(),
        version.split_whitespace().next().unwrap_or(&version)
    );
    println!(
        "(fsync={fsync}, max_connections={max_connections}, TLS {}, pool {} connections for every system, pool ping {}, {} commands per wallet, {} s warm-up per system, {cores} cores, fresh database per cell, pool reopened per slice)",
        if matches!(
            server_options().get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ) {
            "off"
        } else {
            "as the URL says"
        },
        config.pool_size,
        if config.pool_ping { "on" } else { "off" },
        config.commands_per_wallet,
        config.warmup.as_secs_f64()
    );

    let mut cells = Vec::new();
    for &writers in &config.writers {
        cells.extend(run_writer_count(writers, &config, &server).await);
    }

    let (table, all_checks_pass) = report(&cells, &config);
    print!("{table}");
    if !all_checks_pass {
        std::process::exit(1);
    }
}
