//! Audit benchmark: in one run on the same export file, the export's MB/s and events/s, the
//! verifier's MB/s and events/s, and `sha256sum` on the file as the hashing limit.
//!
//! A log of `BENCH_EVENTS` events over `BENCH_TENANTS` tenants (and platform events) is
//! appended once, with a checkpoint signed every 1,000 events. Each round then exports the
//! whole log to a file (NDJSON, the default format), verifies that file with the signing
//! key pinned, and runs `sha256sum` on it; the protobuf form is exported and verified too.
//! Every verification must succeed with every event and checkpoint counted, or the
//! benchmark exits with 1. The median and best of `BENCH_ROUNDS` rounds are printed, with
//! the verifier's speed as a share of `sha256sum`'s.
//!
//! Run with `./dev bench audit` (or `cargo bench -p tests --bench audit`). Environment:
//! `BENCH_EVENTS` (default 200000), `BENCH_TENANTS` (default 100), `BENCH_ROUNDS`
//! (default 3). Set `BENCH_PYTHON=1` to time the independent verifier once as well.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::audit::export::{Export, ExportRequest, Format};
use eventstore::audit::verify_file::{self, Outcome, VerifyOptions};
use eventstore::audit::{Checkpointer, CheckpointerConfig, SigningKey};
use futures::TryStreamExt as _;
use serde_json::json;
use tests::TestDb;
use uuid::Uuid;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Appends `events` in blocks of 1,000 (16 concurrent writers each), signing each block.
async fn fill(db: &TestDb, events: usize, tenants: usize, key: &Arc<SigningKey>) -> u64 {
    let store = db.store();
    let tenant_ids: Vec<Uuid> = (0..tenants).map(|_| Uuid::now_v7()).collect();
    let mut signer = Checkpointer::new(db.app.clone(), key.clone(), CheckpointerConfig::default());
    let mut checkpoints = 0;
    let mut written = 0;
    while written < events {
        let block = (events - written).min(1_000);
        let mut tasks = Vec::new();
        for writer in 0..16 {
            let repository = store.repository.clone();
            let per_writer = block / 16 + usize::from(writer < block % 16);
            let tenant = (writer > 0).then(|| tenant_ids[(written / 16 + writer) % tenants]);
            tasks.push(tokio::spawn(async move {
                let mut done = 0;
                while done < per_writer {
                    let count = (per_writer - done).min(5);
                    let id = format!("bench-{}", Uuid::now_v7());
                    let batch: Vec<_> = (0..count)
                        .map(|i| {
                            let request = Uuid::now_v7().to_string();
                            cqrs_es::persist::SerializedEvent::new(
                                id.clone(),
                                i + 1,
                                "Ledger".to_owned(),
                                "EntryRecorded".to_owned(),
                                "1".to_owned(),
                                json!({
                                    "entry": format!("{id}#{i}"),
                                    "amount": 100 + i,
                                    "currency": "NGN",
                                    "description": "Monthly subscription, standard plan, 12 seats",
                                    "lines": [{"sku": "seat", "quantity": 12, "unit_amount": 1500},
                                              {"sku": "support", "quantity": 1, "unit_amount": 4900}],
                                }),
                                metadata(tenant, &request),
                            )
                        })
                        .collect();
                    repository.append(&batch, None).await.unwrap();
                    done += count;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        written += block;
        if signer.checkpoint_now().await.unwrap().is_some() {
            checkpoints += 1;
        }
    }
    checkpoints
}

/// Command metadata as the platform writes it: an object of strings.
fn metadata(tenant: Option<Uuid>, request: &str) -> serde_json::Value {
    let mut metadata = json!({
        "actor_id": format!("user-{}", Uuid::now_v7()),
        "actor_kind": "user",
        "request_id": request,
        "correlation_id": request,
        "client_ip": "203.0.113.7",
    });
    if let Some(tenant) = tenant {
        metadata["tenant_id"] = tenant.to_string().into();
    }
    metadata
}

/// Exports the whole log into `path`; returns the time and the bytes written.
async fn export(db: &TestDb, format: Format, path: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let export = Export::prepare(
        &db.app,
        &ExportRequest {
            format,
            ..ExportRequest::default()
        },
    )
    .await
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut chunks = std::pin::pin!(export.into_stream());
    let mut bytes = 0;
    while let Some(chunk) = chunks.try_next().await.unwrap() {
        out.write_all(&chunk.bytes).unwrap();
        bytes = chunk.progress.bytes;
    }
    out.flush().unwrap();
    (started.elapsed(), bytes)
}

/// Verifies `path`; exits with 1 unless every event and checkpoint verifies.
fn verify(path: &Path, key: &SigningKey, events: u64, checkpoints: u64) -> Duration {
    let options = VerifyOptions {
        keys: vec![key.public().clone()],
        ..VerifyOptions::default()
    };
    let started = Instant::now();
    let outcome = verify_file::verify_path(path, &options, |_| {}).unwrap();
    let took = started.elapsed();
    match outcome {
        Outcome::Verified(report)
            if report.events == events && report.checkpoints == checkpoints => {}
        other => {
            eprintln!("verification of {} did not hold: {other:?}", path.display());
            std::process::exit(1);
        }
    }
    took
}

fn sha256sum(path: &Path) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new("sha256sum")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sha256sum runs");
    assert!(status.success());
    started.elapsed()
}

#[allow(clippy::cast_precision_loss)]
fn rate(amount: u64, took: Duration) -> f64 {
    amount as f64 / took.as_secs_f64()
}

/// The median and the best (shortest) of `times`.
fn median_best(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0])
}

struct Row {
    name: &'static str,
    times: Vec<Duration>,
    bytes: u64,
    events: u64,
}

impl Row {
    fn print(&mut self) -> (f64, f64) {
        let (median, best) = median_best(&mut self.times);
        let (median_mb, best_mb) = (rate(self.bytes, median) / 1e6, rate(self.bytes, best) / 1e6);
        println!(
            "{:<26} | {:>10.1} | {:>8.1} | {:>13.0} | {:>9.3}",
            self.name,
            median_mb,
            best_mb,
            rate(self.events, median),
            median.as_secs_f64()
        );
        (median_mb, best_mb)
    }
}

#[tokio::main]
async fn main() {
    let events = env("BENCH_EVENTS", 200_000);
    let tenants = env("BENCH_TENANTS", 100).max(1);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let db = TestDb::new().await;
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let filling = Instant::now();
    let checkpoints = fill(&db, events, tenants, &key).await;
    eprintln!(
        "filled {events} events and {checkpoints} checkpoints in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    let dir: PathBuf =
        std::env::temp_dir().join(format!("platform-audit-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ndjson, protobuf) = (dir.join("export.ndjson"), dir.join("export.pb"));
    let total = events as u64;

    let mut rows = [
        ("export, NDJSON", Vec::new()),
        ("verify, NDJSON", Vec::new()),
        ("sha256sum of the NDJSON", Vec::new()),
        ("export, protobuf", Vec::new()),
        ("verify, protobuf", Vec::new()),
    ];
    let (mut ndjson_bytes, mut protobuf_bytes) = (0, 0);
    for round in 0..rounds {
        let (took, bytes) = export(&db, Format::Ndjson, &ndjson).await;
        rows[0].1.push(took);
        ndjson_bytes = bytes;
        rows[1].1.push(verify(&ndjson, &key, total, checkpoints));
        rows[2].1.push(sha256sum(&ndjson));
        let (took, bytes) = export(&db, Format::Protobuf, &protobuf).await;
        rows[3].1.push(took);
        protobuf_bytes = bytes;
        rows[4].1.push(verify(&protobuf, &key, total, checkpoints));
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!(
        "audit benchmark: {events} events over {tenants} tenants and the platform, {checkpoints} checkpoints, {rounds} rounds"
    );
    println!(
        "NDJSON file {:.1} MB ({} bytes/event), protobuf file {:.1} MB",
        ndjson_bytes as f64 / 1e6,
        ndjson_bytes / total.max(1),
        protobuf_bytes as f64 / 1e6
    );
    println!("step                       | median MB/s | best MB/s | median events/s | median s");
    let mut measured = Vec::new();
    for (index, (name, times)) in rows.into_iter().enumerate() {
        let bytes = if index < 3 {
            ndjson_bytes
        } else {
            protobuf_bytes
        };
        let mut row = Row {
            name,
            times,
            bytes,
            events: total,
        };
        measured.push(row.print());
    }
    let (verify_mb, sha_mb) = (measured[1].0, measured[2].0);
    println!(
        "verify / sha256sum (median): {:.2}; export / verify: {:.2}",
        verify_mb / sha_mb,
        measured[0].0 / verify_mb
    );

    if std::env::var("BENCH_PYTHON").is_ok_and(|v| v == "1") {
        let key_path = dir.join("key.json");
        std::fs::write(&key_path, serde_json::to_vec(key.public()).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/audit_verify.py");
        let started = Instant::now();
        let status = std::process::Command::new("python3")
            .arg(script)
            .arg(&ndjson)
            .arg("--public-key")
            .arg(&key_path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        let took = started.elapsed();
        println!(
            "independent verifier (Python): {:.1} MB/s, exit {:?}",
            rate(ndjson_bytes, took) / 1e6,
            status.code()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
