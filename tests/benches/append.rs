//! Append benchmark: commands/s and p50/p99 command latency at 1, 16 and 64 concurrent
//! writers, against the same local PostgreSQL with `synchronous_commit` on, for
//!
//! - (a) this repository's event store (`eventstore::platform_cqrs`, group-commit appender),
//! - (b) plain postgres-es 0.5 (`postgres_es::postgres_cqrs`) with its own schema,
//! - (c) the raw limit: one single-row INSERT per transaction.
//!
//! Every cell (system × writer count) runs in a fresh database. Each writer is a Tokio task
//! that works through wallets of its own, one after the other: it opens a wallet, makes
//! deposits into it, and moves on to the next after `BENCH_COMMANDS_PER_WALLET` commands, so
//! every aggregate stays small (as most are), no two writers ever touch the same aggregate,
//! and conflicts cannot happen. After ~1 s of warm-up the completed commands are counted and
//! their latencies recorded for a fixed time. At the end the databases are checked: the
//! number of events must equal the successful commands (one event each), and (a)'s hash
//! chain must verify. The `failures` column counts every
//! failed command of the cell, warm-up included; any failure or failed check exits with 1.
//!
//! Run with `cargo bench -p tests --bench append`. Environment:
//!
//! - `BENCH_SECONDS` measured seconds per cell (default 5);
//! - `BENCH_WARMUP_SECONDS` warm-up seconds per cell (default 1);
//! - `BENCH_WRITERS` writer counts, e.g. `1,16,64` (the default);
//! - `BENCH_SYSTEMS` systems, e.g. `a,b,c` (the default);
//! - `BENCH_COMMANDS_PER_WALLET` commands per wallet, the first of which opens it (default 4);
//! - `BENCH_POOL` connection-pool size, the same for every system (default 64);
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

use eventstore::PlatformCqrs;
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
    writers: Vec<usize>,
    systems: Vec<System>,
    commands_per_wallet: u64,
    pool_size: u32,
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
        Self {
            measure: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            writers,
            systems,
            commands_per_wallet,
            pool_size,
        }
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
        let server = self.server.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Like `TestDb`: the runtime we are on cannot be blocked on, so drop the database
        // from a thread with a runtime of its own. FORCE ends the pool's connections.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                drop(pool);
                if let Ok(mut conn) = server.connect().await {
                    let _ =
                        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                            .execute(&mut conn)
                            .await;
                }
            });
        });
        let _ = cleanup.join();
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

/// What one writer did.
struct WriterStats {
    /// Latencies (µs) of the commands that completed inside the measured window.
    histogram: Histogram<u64>,
    measured_ok: u64,
    total_ok: u64,
    total_failed: u64,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

async fn writer_loop(
    target: Arc<Target>,
    writer: usize,
    per_wallet: u64,
    measure_from: Instant,
    measure_to: Instant,
) -> WriterStats {
    let mut stats = WriterStats {
        histogram: new_histogram(),
        measured_ok: 0,
        total_ok: 0,
        total_failed: 0,
        first_error: None,
    };
    let mut n: u64 = 0;
    loop {
        let started = Instant::now();
        let result = target.append(writer, n, per_wallet).await;
        let ended = Instant::now();
        n += 1;
        match result {
            Ok(()) => {
                stats.total_ok += 1;
                if ended >= measure_from && ended <= measure_to {
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
        if ended >= measure_to {
            return stats;
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

/// Runs the writers.
async fn drive(target: &Arc<Target>, writers: usize, config: &Config) -> Vec<WriterStats> {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let measure_to = measure_from + config.measure;
    let mut tasks = Vec::with_capacity(writers);
    for writer in 0..writers {
        tasks.push(tokio::spawn(writer_loop(
            Arc::clone(target),
            writer,
            config.commands_per_wallet,
            measure_from,
            measure_to,
        )));
    }
    let mut stats = Vec::with_capacity(writers);
    for task in tasks {
        stats.push(task.await.expect("writer task"));
    }
    stats
}

fn summarize(
    system: System,
    writers: usize,
    config: &Config,
    stats: &[WriterStats],
    check: Result<String, String>,
) -> Cell {
    let mut histogram = new_histogram();
    for writer in stats {
        histogram.add(&writer.histogram).expect("merge histograms");
    }
    let measured: u64 = stats.iter().map(|w| w.measured_ok).sum();
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
        throughput: measured as f64 / config.measure.as_secs_f64(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        measured,
        total_ok: stats.iter().map(|w| w.total_ok).sum(),
        failures: stats.iter().map(|w| w.total_failed).sum(),
        first_error: stats.iter().find_map(|w| w.first_error.clone()),
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

async fn run_eventstore(writers: usize, config: &Config) -> Cell {
    let db = TestDb::on(server_options(), config.pool_size).await;
    require_synchronous_commit(&db.app, "the event store's application pool").await;
    let tests::TestStore {
        repository,
        reader,
        task,
    } = db.store();
    let target = Arc::new(Target::Eventstore(eventstore::platform_cqrs::<Wallet>(
        repository,
        vec![],
        (),
    )));
    let stats = drive(&target, writers, config).await;
    // Every writer is done: dropping the framework drops the last sender, and the appender
    // task drains and ends.
    drop(target);
    task.join().await;

    let expected: u64 = stats.iter().map(|w| w.total_ok).sum();
    let events = count(&db.admin, "events").await;
    let check = match expect_count("events", events, expected) {
        Err(err) => Err(err),
        Ok(counted) => match reader.verify(1, None).await {
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
    };
    let cell = summarize(System::Eventstore, writers, config, &stats, check);
    drop(db);
    cell
}

async fn run_postgres_es(writers: usize, config: &Config, server: &PgConnectOptions) -> Cell {
    let db = ScratchDb::create(server, config.pool_size, &POSTGRES_ES_SCHEMA).await;
    require_synchronous_commit(&db.pool, "the postgres-es pool").await;
    let target = Arc::new(Target::PostgresEs(postgres_es::postgres_cqrs::<Wallet>(
        db.pool.clone(),
        vec![],
        (),
    )));
    let stats = drive(&target, writers, config).await;
    drop(target);
    let ok: u64 = stats.iter().map(|w| w.total_ok).sum();
    let events = count(&db.pool, "events").await;
    let check = expect_count("events", events, ok);
    summarize(System::PostgresEs, writers, config, &stats, check)
}

async fn run_raw(writers: usize, config: &Config, server: &PgConnectOptions) -> Cell {
    let db = ScratchDb::create(server, config.pool_size, &[RAW_SCHEMA]).await;
    require_synchronous_commit(&db.pool, "the raw insert pool").await;
    let target = Arc::new(Target::Raw(db.pool.clone()));
    let stats = drive(&target, writers, config).await;
    drop(target);
    let ok: u64 = stats.iter().map(|w| w.total_ok).sum();
    let rows = count(&db.pool, "raw_appends").await;
    let check = expect_count("rows", rows, ok);
    summarize(System::Raw, writers, config, &stats, check)
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
    // The pool, TestDb's admin pool (4) and our own admin connections.
    let needed = i64::from(config.pool_size) + 4 + 2;
    if max_connections < needed {
        abort(&format!(
            "max_connections is {max_connections}, but a cell needs up to {needed} connections; lower BENCH_POOL"
        ));
    }
    if max_connections - in_use < needed {
        eprintln!(
            "warning: {in_use} of {max_connections} connections are in use by others; a cell needs up to {needed}"
        );
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "append benchmark: synchronous_commit={synchronous_commit}, {} s per cell, PostgreSQL {}",
        config.measure.as_secs_f64(),
        version.split_whitespace().next().unwrap_or(&version)
    );
    println!(
        "(fsync={fsync}, max_connections={max_connections}, TLS {}, pool {} connections for every system, {} commands per wallet, {} s warm-up, {cores} cores, fresh database per cell)",
        if matches!(
            server_options().get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ) {
            "off"
        } else {
            "as the URL says"
        },
        config.pool_size,
        config.commands_per_wallet,
        config.warmup.as_secs_f64()
    );

    let mut cells = Vec::new();
    for &writers in &config.writers {
        for &system in &config.systems {
            eprintln!("running {writers} writers, {} ...", system.label());
            let cell = match system {
                System::Eventstore => run_eventstore(writers, &config).await,
                System::PostgresEs => run_postgres_es(writers, &config, &server).await,
                System::Raw => run_raw(writers, &config, &server).await,
            };
            cells.push(cell);
        }
    }

    let (table, all_checks_pass) = report(&cells, &config);
    print!("{table}");
    if !all_checks_pass {
        std::process::exit(1);
    }
}
