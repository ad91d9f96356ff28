//! `platform project`, `platform replay` and `platform projections`: the projection workers
//! and what an operator does with them.
//!
//! The catalog below is every read model this binary builds. A worker follows its
//! projection's durable consumer; a replay rebuilds a model from the log into shadow tables
//! and swaps them in under the checkpoint's lock, so a worker running elsewhere carries on
//! from where the rebuild stopped, with no gap and no duplicate.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use eventstore::LogReader;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use projections::identity::IdentityModel;
use projections::identity_hot::IdentityHotModel;
use projections::{PgRunner, RedisModel, RedisRunner, RunnerConfig, pg};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::cli::{ProjectArgs, ProjectionsArgs, ProjectionsCommand, ReplayArgs};
use crate::serve::{
    Running, app_pool, check_nats, connect_nats, connect_redis, say, shutdown_signal, stream_name,
};

/// Every projection this binary runs, by name: the PostgreSQL identity model and the Redis
/// identity hot model.
pub const CATALOG: [&str; 2] = ["identity", projections::identity_hot::NAME];

/// Events read from the log per transaction when a model is rebuilt or catches up.
const PAGE: i64 = 2000;

/// The projections named, checked against the catalog; all of them when none is named.
fn select(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(CATALOG.to_vec());
    }
    names
        .iter()
        .map(|name| {
            CATALOG
                .iter()
                .find(|known| *known == name)
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "there is no projection `{name}`; the projections are: {}",
                        CATALOG.join(", ")
                    )
                })
        })
        .collect()
}

/// Runs the projection workers until interrupted.
pub async fn project(args: &ProjectArgs) -> Result<()> {
    let names = select(&args.projections)?;
    let pool = app_pool(&args.bus.database_url).await?;
    check_nats(&args.bus.nats_url).await?;
    let redis = connect_redis(&args.redis.redis_url).await?;
    let workers = start_projections(
        &pool,
        &args.bus.nats_url,
        &args.bus.nats_prefix,
        &redis,
        &args.redis.redis_prefix,
        &names,
    )
    .await?;
    say("platform: ready; press Ctrl-C to stop");
    shutdown_signal().await;
    say("platform: stopping");
    for worker in workers {
        worker.stop().await;
    }
    pool.close().await;
    Ok(())
}

/// Starts a worker for each of `names`, following the stream of `prefix`; Redis models
/// live under the key prefix `redis_prefix`.
pub async fn start_projections(
    pool: &PgPool,
    nats_url: &str,
    prefix: &str,
    redis: &ConnectionManager,
    redis_prefix: &str,
    names: &[&'static str],
) -> Result<Vec<Running>> {
    let client = connect_nats(nats_url).await?;
    let config = RunnerConfig {
        subject_prefix: prefix.to_owned(),
        stream: stream_name(prefix),
        page: PAGE,
        ..RunnerConfig::default()
    };
    let mut workers = Vec::with_capacity(names.len());
    for &name in names {
        say(&format!(
            "projection {name}: following {} through consumer {}",
            config.stream,
            projections::runner::consumer_name(&config, name)
        ));
        let worker = match name {
            "identity" => {
                let runner =
                    PgRunner::new(pool.clone(), client.clone(), IdentityModel, config.clone());
                Running::spawn(move |stopped| runner.run(stopped))
            }
            projections::identity_hot::NAME => {
                let model = hot_model(pool, redis, redis_prefix)?;
                let runner: RedisRunner<IdentityHotModel> = RedisRunner::on(
                    LogReader::new(pool.clone()),
                    client.clone(),
                    model,
                    config.clone(),
                );
                Running::spawn(move |stopped| runner.run(stopped))
            }
            other => anyhow::bail!("there is no projection `{other}`"),
        };
        workers.push(worker);
    }
    Ok(workers)
}

fn hot_model(
    pool: &PgPool,
    redis: &ConnectionManager,
    prefix: &str,
) -> Result<RedisModel<IdentityHotModel>> {
    RedisModel::new(pool.clone(), redis.clone(), prefix, IdentityHotModel)
        .with_context(|| format!("--redis-prefix `{prefix}`"))
}

/// Rebuilds the projections asked for, one after another, and says what each did.
pub async fn replay(args: &ReplayArgs) -> Result<()> {
    let names = select(args.projection.as_slice())?;
    let pool = app_pool(&args.database_url).await?;
    let reader = LogReader::new(pool.clone());
    let head = reader
        .head()
        .await
        .context("the application role cannot read the event log; run `platform migrate`")?
        .position;
    let to = match args.to_position {
        None => head,
        Some(to) if (0..=head).contains(&to) => to,
        Some(to) => anyhow::bail!(
            "--to-position {to} is outside the log, which holds positions 1 to {head}"
        ),
    };
    for name in names {
        let bar = progress_bar(name, to);
        let started = Instant::now();
        let rebuilt = match name {
            "identity" => {
                pg::rebuild(
                    &pool,
                    &IdentityModel,
                    &reader,
                    Some(to),
                    PAGE,
                    |position, _| {
                        bar.set_position(u64::try_from(position).unwrap_or(0));
                    },
                )
                .await
            }
            projections::identity_hot::NAME => {
                let redis = connect_redis(&args.redis.redis_url).await?;
                hot_model(&pool, &redis, &args.redis.redis_prefix)?
                    .rebuild(&reader, Some(to), PAGE, |position, _| {
                        bar.set_position(u64::try_from(position).unwrap_or(0));
                    })
                    .await
            }
            other => anyhow::bail!("there is no projection `{other}`"),
        };
        bar.finish_and_clear();
        let rebuilt = rebuilt.with_context(|| format!("replaying projection `{name}`"))?;
        let took = started.elapsed();
        say(&format!(
            "replay {name}: {} events read, the model stands at position {} (log head {head}); {:.1} s, {} events/s",
            rebuilt.events,
            rebuilt.position,
            took.as_secs_f64(),
            per_second(rebuilt.events, took)
        ));
    }
    pool.close().await;
    Ok(())
}

fn per_second(events: u64, took: Duration) -> u64 {
    let seconds = took.as_secs_f64();
    if seconds > 0.0 {
        // Display only: a rate far beyond u64 cannot occur.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = (events as f64 / seconds) as u64;
        rate
    } else {
        events
    }
}

/// A bar on the terminal's standard error; nothing when it is not a terminal.
fn progress_bar(name: &str, to: i64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(to).unwrap_or(0)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(format!("replay {name}"));
    bar
}

/// `platform projections status|resume|skip`.
pub async fn projections(args: &ProjectionsArgs) -> Result<()> {
    let pool = app_pool(&args.database_url).await?;
    match &args.command {
        ProjectionsCommand::Status => status(&pool).await?,
        ProjectionsCommand::Resume { name } => {
            if pg::resume(&pool, name).await? {
                say(&format!(
                    "projection {name}: resumed; it tries the parked event again"
                ));
            } else {
                anyhow::bail!("projection `{name}` is not parked; nothing to resume");
            }
        }
        ProjectionsCommand::Skip { name, position, by } => {
            pg::skip(&pool, name, *position, by).await?;
            say(&format!(
                "projection {name}: the event at position {position} is skipped for good (recorded as skipped by {by}); the projection carries on after it"
            ));
        }
    }
    pool.close().await;
    Ok(())
}

type StatusRow = (
    String,
    i32,
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
);

async fn status(pool: &PgPool) -> Result<()> {
    let head = LogReader::new(pool.clone()).head().await?.position;
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT name, version, position, status, parked_position, parked_error, parked_at
           FROM projection_checkpoints ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    say(&format!("log head: position {head}"));
    say(&format!(
        "{:<24} {:>7} {:>12} {:>10}  STATUS",
        "PROJECTION", "VERSION", "POSITION", "LAG"
    ));
    for (name, version, position, state, parked_position, parked_error, parked_at) in &rows {
        say(&format!(
            "{name:<24} {version:>7} {position:>12} {:>10}  {state}",
            head.saturating_sub(*position)
        ));
        if let Some(parked) = parked_position {
            say(&format!(
                "  parked on the event at position {parked} since {}: {}",
                parked_at.map_or_else(|| "?".to_owned(), |at| at.to_rfc3339()),
                parked_error.as_deref().unwrap_or("")
            ));
            say(&format!(
                "  after a fix: `platform projections resume {name}`; to give up on the event: `platform projections skip {name} --position {parked}`"
            ));
        }
    }
    for name in CATALOG {
        if !rows.iter().any(|row| row.0 == name) {
            say(&format!(
                "{name:<24} {:>7} {:>12} {:>10}  not set up yet",
                "-", "-", "-"
            ));
        }
    }
    let skips: Vec<(String, i64, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT name, position, error, skipped_by, skipped_at FROM projection_skips ORDER BY skipped_at",
    )
    .fetch_all(pool)
    .await?;
    for (name, position, error, by, at) in skips {
        say(&format!(
            "skipped: {name} at position {position} by {by} on {}: {error}",
            at.to_rfc3339()
        ));
    }
    Ok(())
}
