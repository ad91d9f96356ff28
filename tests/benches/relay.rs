//! Relay benchmark: events/s from the log in PostgreSQL into a JetStream stream, against the
//! baseline of a raw async-nats publish loop sending the same messages (same subjects,
//! headers and bodies, read into memory first) with the same bound on acks in flight.
//!
//! Each round fills nothing new: the log of `BENCH_EVENTS` events is appended once; each
//! system then publishes all of it into a fresh stream of its own (file storage, the same
//! duplicate window), and the clock stops when the last ack arrives; the stream is checked
//! and deleted before the next run. The systems alternate
//! over `BENCH_ROUNDS` rounds, starting with a different one each round, and the best and
//! median rates are printed with their ratio. At the end every stream must hold exactly
//! positions 1..=N in order, or the benchmark exits with 1.
//!
//! Both systems find their stream made before their clock starts, as a relay does in
//! production after its first start. The relay's clock still includes the rest of its start
//! (its connections, the lock, the checkpoint); 100,000 events make that a small part of it.
//! The time to read and encode the log, on its own, is printed too: it is the relay's work
//! that the baseline does not do.
//!
//! Run with `cargo bench -p tests --bench relay`. Environment: `BENCH_EVENTS` (default
//! 100000), `BENCH_ROUNDS` (default 3), `BENCH_IN_FLIGHT` (default 256).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use eventstore::relay::{EncodeEvent, ensure_stream, headers_of};
use eventstore::{LogReader, ProtoEncoder, RecordedEvent, Relay, RelayConfig};
use futures::TryStreamExt;
use serde_json::json;
use tests::{TestBus, TestDb};
use uuid::Uuid;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn fill(db: &TestDb, events: usize) {
    let store = db.store();
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let repository = store.repository.clone();
        let per_writer = events / 16 + usize::from(writer < events % 16);
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            while written < per_writer {
                let count = (per_writer - written).min(10);
                let id = format!("bench-{}", Uuid::now_v7());
                let tenant = Uuid::now_v7();
                let batch: Vec<_> = (0..count)
                    .map(|i| {
                        cqrs_es::persist::SerializedEvent::new(
                            id.clone(),
                            i + 1,
                            "Ledger".to_owned(),
                            "EntryRecorded".to_owned(),
                            "1".to_owned(),
                            json!({"entry": format!("{id}#{i}"), "amount": 100 + i}),
                            json!({"actor_id": "bench", "actor_kind": "system", "tenant_id": tenant.to_string()}),
                        )
                    })
                    .collect();
                repository.append(&batch, None).await.unwrap();
                written += count;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The relay, from start to the last ack of `total` events.
async fn run_relay(db: &TestDb, bus: &TestBus, config: RelayConfig, total: i64) -> Duration {
    sqlx::query("DELETE FROM relay_checkpoints")
        .execute(&db.admin)
        .await
        .unwrap();
    ensure_stream(&jetstream::new(bus.client.clone()), &config)
        .await
        .unwrap();
    let relay = Relay::new(db.app.clone(), bus.client.clone(), config, ProtoEncoder);
    let stats = relay.stats();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(std::future::pending()));
    while stats.acked_position() < total {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    task.abort();
    let _ = task.await;
    elapsed
}

/// A raw publish loop over messages prepared in memory, with at most `in_flight` acks.
async fn run_raw(
    bus: &TestBus,
    config: &RelayConfig,
    messages: &[(String, async_nats::HeaderMap, bytes::Bytes)],
    in_flight: usize,
) -> Duration {
    let context = jetstream::new(bus.client.clone());
    ensure_stream(&context, config).await.unwrap();
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(in_flight);
    for (subject, headers, body) in messages {
        if acks.len() >= in_flight {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
            ack.await.unwrap();
        }
        acks.push_back(
            context
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let total = env("BENCH_EVENTS", 100_000);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let in_flight = env("BENCH_IN_FLIGHT", 256).max(1);
    let db = TestDb::new().await;
    let bus = TestBus::new().await;
    fill(&db, total).await;
    let total = total as i64;

    let read_started = Instant::now();
    let events: Vec<RecordedEvent> = LogReader::new(db.app.clone())
        .read_from(1)
        .try_collect()
        .await
        .unwrap();
    let read = read_started.elapsed();
    let base = bus.relay_config();
    let encode_started = Instant::now();
    let prepared: Vec<_> = events
        .iter()
        .map(|event| {
            (
                base.subject_of(event),
                headers_of(event, ProtoEncoder.content_type()),
                bytes::Bytes::from(ProtoEncoder.encode(event).unwrap()),
            )
        })
        .collect();
    let encode = encode_started.elapsed();
    let per_event = |spent: Duration| spent.as_secs_f64() * 1e6 / total as f64;
    println!(
        "reading the log: {:.2} µs/event; encoding (subject, headers, envelope): {:.2} µs/event",
        per_event(read),
        per_event(encode)
    );

    // This process's CPU time in each system's runs (the relay's, or the publish loop's),
    // apart from the NATS server's and PostgreSQL's.
    let mut cpu_spent = [Duration::ZERO; 2];
    let mut relay_rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut ok = true;
    for round in 0..rounds {
        for turn in 0..2 {
            let system = (round + turn) % 2;
            let config = RelayConfig {
                stream: format!("{}_{round}_{system}", bus.stream),
                max_in_flight: in_flight,
                page_size: 1000,
                ..base.clone()
            };
            let cpu_before = process_cpu();
            let elapsed = if system == 0 {
                run_relay(&db, &bus, config.clone(), total).await
            } else {
                run_raw(&bus, &config, &prepared, in_flight).await
            };
            let cpu = process_cpu().saturating_sub(cpu_before);
            cpu_spent[system] += cpu;
            // Every run fills a stream of its own over the same subjects: check it, then make
            // room for the next.
            let found = bus.positions(&config.stream).await;
            if found != (1..=total).collect::<Vec<_>>() {
                eprintln!(
                    "stream {} does not hold 1..={total} in order",
                    config.stream
                );
                ok = false;
            }
            let _ = bus.jetstream.delete_stream(&config.stream).await;
            let rate = total as f64 / elapsed.as_secs_f64();
            if system == 0 {
                relay_rates.push(rate);
            } else {
                raw_rates.push(rate);
            }
        }
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let (relay_best, raw_best) = (best(&relay_rates), best(&raw_rates));
    let (relay_median, raw_median) = (median(&mut relay_rates), median(&mut raw_rates));
    println!("relay benchmark: {total} events, {rounds} rounds, {in_flight} acks in flight");
    println!("system                  | median events/s | best events/s | vs raw publish (median)");
    println!(
        "relay (PostgreSQL->NATS) | {relay_median:>15.0} | {relay_best:>13.0} | {:>6.2}x",
        relay_median / raw_median
    );
    println!(
        "raw JetStream publish    | {raw_median:>15.0} | {raw_best:>13.0} | {:>6.2}x",
        1.0
    );
    let per_event_cpu =
        |spent: Duration| spent.as_secs_f64() * 1e6 / (total as f64 * rounds as f64);
    println!(
        "this process's CPU per event: relay {:.2} µs, raw publish loop {:.2} µs",
        per_event_cpu(cpu_spent[0]),
        per_event_cpu(cpu_spent[1])
    );
    if !ok {
        std::process::exit(1);
    }
}

/// The CPU time (user and system) this process has used, from `/proc/self/stat` (in clock
/// ticks of 10 ms; zero where there is no procfs).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|field| field.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}
