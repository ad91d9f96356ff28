//! Audit exports and their verification (docs/audit.md): an export of a log with signed
//! checkpoints verifies; every tampering of the tamper matrix is named, with the same reason
//! and position, by the platform's verifier and by the independent one
//! (`scripts/audit_verify.py`); a tenant's export holds none of another tenant's events and
//! verifies; the protobuf form verifies; `--db` finds a tampered row and a cut log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eventstore::audit::checkpoint::{Checkpoint, CheckpointItem};
use eventstore::audit::export::{Export, ExportRequest, Format};
use eventstore::audit::verify_file::{
    self, Location, Outcome, Reason, Report, VerifyOptions, verify_store,
};
use eventstore::audit::{Checkpointer, CheckpointerConfig, PublicKey, SigningKey};
use futures::TryStreamExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tests::{TestDb, TestStore};
use uuid::Uuid;

use crate::append;

/// A log of 18 events over two tenants and the platform chain, signed at 6 and 12: the
/// events at positions 1-2, 7-8 and 13-14 are tenant A's, 3-4, 9-10 and 15-16 tenant B's,
/// the others platform events; 13..=18 are the unsigned tail.
struct Fixture {
    db: TestDb,
    _store: TestStore,
    key: Arc<SigningKey>,
    a: Uuid,
    b: Uuid,
    scratch: Scratch,
}

async fn seeded() -> Fixture {
    let db = TestDb::new().await;
    let store = db.store();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let mut signer = Checkpointer::new(db.app.clone(), key.clone(), CheckpointerConfig::default());
    let chains = [Some(a), Some(b), None];
    for round in 0..3 {
        for (i, tenant) in chains.iter().enumerate() {
            append(
                &store.repository,
                &format!("ledger-{i}"),
                round * 2 + 1,
                2,
                *tenant,
            )
            .await
            .unwrap();
        }
        if round < 2 {
            let signed = signer
                .checkpoint_now()
                .await
                .unwrap()
                .expect("a checkpoint");
            assert_eq!(signed.position, (round as i64 + 1) * 6);
        }
    }
    let scratch = Scratch::new();
    Fixture {
        db,
        _store: store,
        key,
        a,
        b,
        scratch,
    }
}

impl Fixture {
    async fn export(&self, tenant: Option<Uuid>, format: Format) -> Vec<u8> {
        export_bytes(
            &self.db.app,
            &ExportRequest {
                tenant,
                format,
                page_size: 5,
                ..ExportRequest::default()
            },
        )
        .await
    }

    fn keys(&self) -> Vec<PublicKey> {
        vec![self.key.public().clone()]
    }

    /// Both verifiers on `file`, pinned to the signing key: they must agree. `None` when
    /// the file verifies.
    fn both(&self, file: &[u8]) -> Option<(Location, Reason)> {
        let ours = match verify(file, &self.keys()) {
            Outcome::Verified(_) => None,
            Outcome::Failed(failure) => Some((failure.at, failure.reason)),
        };
        let theirs = self.scratch.python(file, self.key.public());
        assert_eq!(ours, theirs, "the two verifiers disagree");
        ours
    }
}

async fn export_bytes(pool: &PgPool, request: &ExportRequest) -> Vec<u8> {
    let export = Export::prepare(pool, request).await.unwrap();
    let chunks: Vec<_> = export.into_stream().try_collect().await.unwrap();
    chunks.into_iter().flat_map(|chunk| chunk.bytes).collect()
}

fn verify(file: &[u8], keys: &[PublicKey]) -> Outcome {
    let options = VerifyOptions {
        keys: keys.to_vec(),
        ..VerifyOptions::default()
    };
    verify_file::verify_reader(std::io::Cursor::new(file.to_vec()), &options, |_| {}).unwrap()
}

fn verified(outcome: Outcome) -> Report {
    match outcome {
        Outcome::Verified(report) => report,
        Outcome::Failed(failure) => panic!("{failure}"),
    }
}

/// A directory of its own for the files the Python verifier reads.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("platform-audit-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Runs `scripts/audit_verify.py` on `file` with `key` pinned: `None` when it
    /// verifies, else the position and reason of its `FAILED` line.
    fn python(&self, file: &[u8], key: &PublicKey) -> Option<(Location, Reason)> {
        self.python_with(file, key, &[])
    }

    /// [`Scratch::python`] with more arguments.
    fn python_with(
        &self,
        file: &[u8],
        key: &PublicKey,
        more: &[&std::ffi::OsStr],
    ) -> Option<(Location, Reason)> {
        let id = Uuid::now_v7();
        let (path, key_path) = (
            self.0.join(format!("{id}.ndjson")),
            self.0.join(format!("{id}.key.json")),
        );
        std::fs::write(&path, file).unwrap();
        std::fs::write(&key_path, serde_json::to_vec(key).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/audit_verify.py");
        let output = std::process::Command::new("python3")
            .arg(script)
            .arg(&path)
            .arg("--public-key")
            .arg(&key_path)
            .args(more)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.code() {
            Some(0) => None,
            Some(1) => Some(parse_failure(&stdout)),
            code => panic!(
                "the independent verifier exited {code:?}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `FAILED at position <P>: <reason>: …` or `FAILED at line <L>: …`.
fn parse_failure(line: &str) -> (Location, Reason) {
    let rest = line
        .trim()
        .strip_prefix("FAILED at ")
        .expect("a FAILED line");
    let (place, rest) = rest.split_once(": ").unwrap();
    let reason = rest.split(':').next().unwrap();
    let at = match place.split_once(' ').unwrap() {
        ("position", n) => Location::Position(n.parse().unwrap()),
        ("line", n) => Location::Line(n.parse().unwrap()),
        other => panic!("{other:?}"),
    };
    let reason = [
        Reason::Malformed,
        Reason::Edited,
        Reason::Missing,
        Reason::Reordered,
        Reason::Truncated,
        Reason::Rewritten,
        Reason::BadSignature,
        Reason::UnknownKey,
    ]
    .into_iter()
    .find(|known| known.as_str() == reason)
    .unwrap_or_else(|| panic!("unknown reason {reason:?}"));
    (at, reason)
}

/// The lines of an NDJSON file, without their ends.
fn lines(file: &[u8]) -> Vec<String> {
    let text = String::from_utf8(file.to_vec()).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut text = lines.join("\n");
    text.push('\n');
    text.into_bytes()
}

fn item(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

/// The index of the line of the event at `position`.
fn event_line(lines: &[String], position: i64) -> usize {
    lines
        .iter()
        .position(|line| {
            let item = item(line);
            item["type"] == "event" && item["record"]["global_position"] == position
        })
        .unwrap_or_else(|| panic!("no event at {position}"))
}

/// The index of the line of the checkpoint at `position`.
fn checkpoint_line(lines: &[String], position: i64) -> usize {
    lines
        .iter()
        .position(|line| {
            let item = item(line);
            item["type"] == "checkpoint" && item["position"] == position
        })
        .unwrap_or_else(|| panic!("no checkpoint at {position}"))
}

/// Changes one byte of `member`'s value in an event line, keeping the line valid JSON and
/// the value's type: the last digit of a number, the last character of a string, the first
/// value inside an object.
fn change_one_byte(line: &str, member: &str) -> String {
    let key = format!("\"{member}\":");
    // `hash` is the item's own member, before the record; `tenant_id` is also a key of
    // the metadata, so the record's members after the payload are found from the right.
    let at = match member {
        "prev_hash" | "recorded_at" | "sequence" | "tenant_id" | "tenant_prev_hash" => {
            line.rfind(&key)
        }
        _ => line.find(&key),
    }
    .unwrap_or_else(|| panic!("no {member} in {line}"))
        + key.len();
    let mut bytes = line.as_bytes().to_vec();
    let mut start = at;
    if bytes[start] == b'{' {
        // The first member's value inside the object.
        start = start + line[start..].find(':').unwrap() + 1;
    }
    let target = if bytes[start] == b'"' {
        start + 1 + line[start + 1..].find('"').unwrap() - 1
    } else {
        let end = line[start..]
            .find(|c: char| !c.is_ascii_digit() && c != '-')
            .unwrap();
        start + end - 1
    };
    bytes[target] = match bytes[target] {
        b'9' => b'0',
        digit @ b'0'..=b'8' => digit + 1,
        b'f' => b'a',
        b'z' => b'y',
        b'Z' => b'Y',
        letter if letter.is_ascii_alphabetic() => letter + 1,
        other => panic!("cannot change {:?} in {member}", other as char),
    };
    String::from_utf8(bytes).unwrap()
}

/// Replaces the first occurrence of `"member":"<old>"` with `"member":"<new>"`, from the
/// right for members after the payload.
fn set_string(line: &str, member: &str, new: &str) -> String {
    let key = format!("\"{member}\":\"");
    let at = line.rfind(&key).unwrap() + key.len();
    let end = at + line[at..].find('"').unwrap();
    format!("{}{new}{}", &line[..at], &line[end..])
}

#[tokio::test]
async fn an_export_of_a_signed_log_verifies_with_both_verifiers() {
    let f = seeded().await;
    let file = f.export(None, Format::Ndjson).await;
    let report = verified(verify(&file, &f.keys()));
    assert_eq!((report.from, report.to), (1, 18));
    assert_eq!((report.events, report.checkpoints), (18, 2));
    assert_eq!(
        (report.last_checkpoint, report.unsigned_tail),
        (Some(12), 6)
    );
    assert_eq!(f.both(&file), None);

    let lines = lines(&file);
    assert_eq!(lines.len(), 1 + 18 + 2 + 1);
    let header = item(&lines[0]);
    assert_eq!(header["scope"], "log");
    assert_eq!(header["public_keys"][0]["kid"], f.key.kid());
    // Each checkpoint right after its event; each record's text hashes to its hash as is.
    assert_eq!(checkpoint_line(&lines, 6), event_line(&lines, 6) + 1);
    assert_eq!(checkpoint_line(&lines, 12), event_line(&lines, 12) + 1);
    let line = &lines[event_line(&lines, 8)];
    let record = &line[line.find("\"record\":").unwrap() + 9..line.len() - 1];
    assert_eq!(
        hex::encode(Sha256::digest(record.as_bytes())),
        item(line)["hash"]
    );
    // Without pinned keys the header's are used, and the summary says so.
    let unpinned = verified(verify(&file, &[]));
    assert!(!unpinned.pinned);
    assert!(unpinned.summary().iter().any(|l| l.contains("not pinned")));
}

#[tokio::test]
async fn one_byte_changed_in_any_member_of_an_event_is_edited_at_its_position() {
    let f = seeded().await;
    let lines = lines(&f.export(None, Format::Ndjson).await);
    let at = event_line(&lines, 8);
    for member in [
        "aggregate_id",
        "aggregate_type",
        "event_id",
        "event_type",
        "event_version",
        "global_position",
        "metadata",
        "payload",
        "prev_hash",
        "recorded_at",
        "sequence",
        "tenant_id",
        "tenant_prev_hash",
        "hash",
    ] {
        let mut tampered = lines.clone();
        tampered[at] = change_one_byte(&lines[at], member);
        assert_ne!(tampered[at], lines[at], "{member}");
        assert_eq!(
            f.both(&join(&tampered)),
            Some((Location::Position(8), Reason::Edited)),
            "one byte of {member}"
        );
    }
}

#[tokio::test]
async fn a_deleted_event_is_missing_and_two_swapped_events_are_reordered() {
    let f = seeded().await;
    let lines = lines(&f.export(None, Format::Ndjson).await);

    let mut deleted = lines.clone();
    deleted.remove(event_line(&lines, 9));
    assert_eq!(
        f.both(&join(&deleted)),
        Some((Location::Position(9), Reason::Missing))
    );

    let mut swapped = lines.clone();
    swapped.swap(event_line(&lines, 8), event_line(&lines, 9));
    assert_eq!(
        f.both(&join(&swapped)),
        Some((Location::Position(8), Reason::Reordered))
    );
}

#[tokio::test]
async fn a_tail_deleted_after_a_checkpoint_is_truncated() {
    let f = seeded().await;
    let lines = lines(&f.export(None, Format::Ndjson).await);
    let signed = checkpoint_line(&lines, 12);

    // The tail cut, the end record left as it was.
    let mut cut: Vec<String> = lines[..=signed].to_vec();
    cut.push(lines.last().unwrap().clone());
    assert_eq!(
        f.both(&join(&cut)),
        Some((Location::Position(12), Reason::Truncated))
    );

    // The tail cut and the end record rewritten to match: the header's `to` is not reached.
    let mut consistent: Vec<String> = lines[..=signed].to_vec();
    let hash_12 = item(&lines[event_line(&lines, 12)])["hash"].clone();
    consistent.push(
        serde_json::json!({"type": "end", "events": 12, "checkpoints": 2,
                           "last_position": 12, "last_hash": hash_12})
        .to_string(),
    );
    assert_eq!(
        f.both(&join(&consistent)),
        Some((Location::Position(12), Reason::Truncated))
    );

    // No end record at all.
    assert_eq!(
        f.both(&join(&lines[..lines.len() - 1])),
        Some((Location::Position(18), Reason::Truncated))
    );
}

/// Edits the payload of the event at `from` and recomputes every hash and link after it,
/// as whoever can write the table but has no signing key would; the end record follows.
fn rewrite_chain_from(lines: &[String], from: i64) -> Vec<String> {
    let mut out = lines.to_vec();
    let mut prev: Option<String> = None;
    let mut chains: std::collections::HashMap<Value, String> = Default::default();
    for line in &mut out {
        let parsed = item(line);
        match parsed["type"].as_str() {
            Some("event") => {
                let position = parsed["record"]["global_position"].as_i64().unwrap();
                let tenant = parsed["record"]["tenant_id"].clone();
                if position >= from {
                    if position == from {
                        *line = change_one_byte(line, "payload");
                    }
                    if let Some(prev) = &prev {
                        *line = set_string(line, "prev_hash", prev);
                    }
                    if let Some(link) = chains.get(&tenant) {
                        *line = set_string(line, "tenant_prev_hash", link);
                    }
                    let record_at = line.find("\"record\":").unwrap() + 9;
                    let record = &line[record_at..line.len() - 1];
                    let hash = hex::encode(Sha256::digest(record.as_bytes()));
                    let hash_at = line.find("\"hash\":\"").unwrap() + 8;
                    *line = format!("{}{hash}{}", &line[..hash_at], &line[hash_at + 64..]);
                }
                let hash = item(line)["hash"].as_str().unwrap().to_owned();
                prev = Some(hash.clone());
                chains.insert(tenant, hash);
            }
            Some("end") => {
                *line = set_string(line, "last_hash", prev.as_deref().unwrap());
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn a_chain_rewritten_without_the_signing_key_is_rewritten_at_the_next_checkpoint() {
    let f = seeded().await;
    let lines = lines(&f.export(None, Format::Ndjson).await);
    let rewritten = rewrite_chain_from(&lines, 8);
    // Every hash and link holds up to the checkpoint, which signs the old head.
    assert_eq!(
        f.both(&join(&rewritten)),
        Some((Location::Position(12), Reason::Rewritten))
    );

    // Rewriting the checkpoint's head hash too breaks its signature.
    let mut also = rewritten.clone();
    let at = checkpoint_line(&also, 12);
    let new_head = item(&also[event_line(&also, 12)])["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    also[at] = set_string(&also[at], "head_hash", &new_head);
    assert_eq!(
        f.both(&join(&also)),
        Some((Location::Position(12), Reason::BadSignature))
    );

    // After the last checkpoint a rewrite cannot be told from the log: the unsigned tail.
    let tail = rewrite_chain_from(&lines, 14);
    let report = verified(verify(&join(&tail), &f.keys()));
    assert_eq!(report.unsigned_tail, 6);
    assert_eq!(f.both(&join(&tail)), None);
}

#[tokio::test]
async fn a_forged_signature_and_a_checkpoint_of_another_key_are_named() {
    let f = seeded().await;
    let lines = lines(&f.export(None, Format::Ndjson).await);

    let mut forged = lines.clone();
    let at = checkpoint_line(&lines, 6);
    forged[at] = change_one_byte(&lines[at], "signature");
    assert_eq!(
        f.both(&join(&forged)),
        Some((Location::Position(6), Reason::BadSignature))
    );

    // The same statement, signed by another key: the pinned key does not know it.
    let other = SigningKey::generate().unwrap().0;
    let at = checkpoint_line(&lines, 12);
    let original: CheckpointItem = serde_json::from_str(&lines[at]).unwrap();
    let original = Checkpoint::try_from(&original).unwrap();
    let resigned = Checkpoint::sign(
        &other,
        original.position,
        original.head_hash,
        original.tenants_root,
        original.signed_at,
    );
    let mut foreign = lines.clone();
    foreign[at] = serde_json::to_string(&resigned.to_item()).unwrap();
    assert_eq!(
        f.both(&join(&foreign)),
        Some((Location::Position(12), Reason::UnknownKey))
    );
    // Trusting the other key as well, the file verifies: it is the same log.
    let both_keys = [f.key.public().clone(), other.public().clone()];
    verified(verify(&join(&foreign), &both_keys));
}

#[tokio::test]
async fn a_tenant_export_holds_only_its_tenant_and_verifies_with_both_verifiers() {
    let f = seeded().await;
    let file = f.export(Some(f.a), Format::Ndjson).await;
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(
        !text.contains(&f.b.to_string()),
        "tenant B appears in A's export"
    );
    let lines = lines(&file);
    let positions: Vec<i64> = lines
        .iter()
        .map(|line| item(line))
        .filter(|item| item["type"] == "event")
        .map(|item| {
            assert_eq!(item["record"]["tenant_id"], f.a.to_string());
            item["record"]["global_position"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(positions, [1, 2, 7, 8, 13, 14]);
    // The latest checkpoint (12) names A's head at 8, right after it, with its proof.
    let at = checkpoint_line(&lines, 12);
    assert_eq!(at, event_line(&lines, 8) + 1);
    let checkpoint = item(&lines[at]);
    assert_eq!(checkpoint["tenant_head"]["position"], 8);
    assert_eq!(checkpoint["proof"]["tree_size"], 3);

    let report = verified(verify(&file, &f.keys()));
    assert_eq!(report.tenant, Some(f.a.to_string()));
    assert_eq!((report.events, report.checkpoints), (6, 1));
    assert_eq!(f.both(&file), None);

    // Tampering with it is found too: one of A's events deleted breaks A's chain; a
    // changed proof no longer reaches the signed root.
    let mut deleted = lines.clone();
    deleted.remove(event_line(&lines, 7));
    assert_eq!(
        f.both(&join(&deleted)),
        Some((Location::Position(8), Reason::Edited))
    );
    let mut bent = lines.clone();
    let path = checkpoint["proof"]["path"][0].as_str().unwrap();
    let mut changed = path.to_owned();
    changed.replace_range(0..1, if path.starts_with('0') { "1" } else { "0" });
    bent[at] = lines[at].replace(path, &changed);
    assert_eq!(
        f.both(&join(&bent)),
        Some((Location::Position(12), Reason::Rewritten))
    );

    let b = f.export(Some(f.b), Format::Ndjson).await;
    assert!(
        !String::from_utf8(b.clone())
            .unwrap()
            .contains(&f.a.to_string())
    );
    assert_eq!(f.both(&b), None);
}

#[tokio::test]
async fn the_protobuf_form_verifies_like_the_ndjson_form() {
    let f = seeded().await;
    let file = f.export(None, Format::Protobuf).await;
    assert_ne!(file[0], b'{');
    let report = verified(verify(&file, &f.keys()));
    assert_eq!((report.events, report.checkpoints), (18, 2));
    assert_eq!(report.unsigned_tail, 6);

    let tenant = f.export(Some(f.b), Format::Protobuf).await;
    let report = verified(verify(&tenant, &f.keys()));
    assert_eq!((report.events, report.checkpoints), (6, 1));

    // One byte of an event's canonical bytes changed.
    let needle = b"ledger-1#3";
    let at = file
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap();
    let mut tampered = file.clone();
    tampered[at] = b'L';
    let Outcome::Failed(failure) = verify(&tampered, &f.keys()) else {
        panic!("a tampered protobuf export verified");
    };
    assert_eq!(failure.reason, Reason::Edited);
}

#[tokio::test]
async fn an_export_of_a_range_verifies_and_times_name_positions() {
    let f = seeded().await;
    let request = ExportRequest {
        from: Some("5".parse().unwrap()),
        to: Some("12".parse().unwrap()),
        ..ExportRequest::default()
    };
    let file = export_bytes(&f.db.app, &request).await;
    let report = verified(verify(&file, &f.keys()));
    assert_eq!((report.from, report.to, report.events), (5, 12, 8));
    assert_eq!(report.checkpoints, 2);
    assert_eq!(f.both(&file), None);

    let later = ExportRequest {
        to: Some("2999-01-01T00:00:00Z".parse().unwrap()),
        from: Some("2000-01-01T00:00:00Z".parse().unwrap()),
        ..ExportRequest::default()
    };
    let export = Export::prepare(&f.db.app, &later).await.unwrap();
    assert_eq!((export.from(), export.to()), (1, 18));
    let beyond = ExportRequest {
        to: Some("19".parse().unwrap()),
        ..ExportRequest::default()
    };
    assert!(Export::prepare(&f.db.app, &beyond).await.is_err());
}

async fn as_superuser_without_triggers(admin: &PgPool, statements: &[&str]) {
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    sqlx::query("ALTER TABLE events ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn verifying_the_live_store_finds_a_tampered_row_and_a_cut_log() {
    let f = seeded().await;
    let report = verified(verify_store(&f.db.app, &f.keys()).await.unwrap());
    assert_eq!((report.events, report.checkpoints), (18, 2));
    assert_eq!(report.unsigned_tail, 6);
    // The store's own keys serve when none is pinned.
    verified(verify_store(&f.db.app, &[]).await.unwrap());
    let other = SigningKey::generate().unwrap().0;
    let Outcome::Failed(failure) = verify_store(&f.db.app, &[other.public().clone()])
        .await
        .unwrap()
    else {
        panic!("verified under a key that signed nothing");
    };
    assert_eq!(
        (failure.at, failure.reason),
        (Location::Position(6), Reason::UnknownKey)
    );

    as_superuser_without_triggers(
        &f.db.admin,
        &[
            r#"UPDATE events SET payload = '{"amount":1,"entry":"forged"}'::json
              WHERE global_position = 8"#,
        ],
    )
    .await;
    let Outcome::Failed(failure) = verify_store(&f.db.app, &f.keys()).await.unwrap() else {
        panic!("a tampered row verified");
    };
    assert_eq!(
        (failure.at, failure.reason),
        (Location::Position(8), Reason::Edited)
    );
}

#[tokio::test]
async fn a_log_cut_behind_a_checkpoint_is_truncated_in_the_live_store() {
    let f = seeded().await;
    // Cut the log after 10 and move the head there: the chain alone still verifies.
    as_superuser_without_triggers(
        &f.db.admin,
        &[
            "DELETE FROM events WHERE global_position > 10",
            "UPDATE log_head SET position = 10,
                    hash = (SELECT hash FROM events WHERE global_position = 10)",
        ],
    )
    .await;
    let chain = eventstore::LogReader::new(f.db.app.clone())
        .verify(1, None)
        .await
        .unwrap();
    assert!(chain.is_intact());
    let Outcome::Failed(failure) = verify_store(&f.db.app, &f.keys()).await.unwrap() else {
        panic!("a cut log verified");
    };
    assert_eq!(
        (failure.at, failure.reason),
        (Location::Position(12), Reason::Truncated)
    );
}

#[tokio::test]
async fn a_witness_file_confirms_the_checkpoints_and_catches_a_rewritten_one() {
    let db = TestDb::new().await;
    let store = db.store();
    let scratch = Scratch::new();
    let witness = scratch.0.join("witness.ndjson");
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let mut signer = Checkpointer::new(
        db.app.clone(),
        key.clone(),
        CheckpointerConfig {
            witness: Some(witness.clone()),
            ..CheckpointerConfig::default()
        },
    );
    for round in 0..2 {
        append(
            &store.repository,
            "ledger",
            round * 3 + 1,
            3,
            Some(Uuid::now_v7()),
        )
        .await
        .unwrap();
        signer
            .checkpoint_now()
            .await
            .unwrap()
            .expect("a checkpoint");
    }
    let file = export_bytes(&db.app, &ExportRequest::default()).await;
    let with_witness = |witness: &Path| {
        let options = VerifyOptions {
            keys: vec![key.public().clone()],
            witness: Some(witness.to_owned()),
            ..VerifyOptions::default()
        };
        verify_file::verify_reader(std::io::Cursor::new(file.clone()), &options, |_| {}).unwrap()
    };
    let report = verified(with_witness(&witness));
    assert_eq!(report.witness, Some((2, Some(6))));
    let args = [std::ffi::OsStr::new("--witness"), witness.as_os_str()];
    assert_eq!(scratch.python_with(&file, key.public(), &args), None);

    // The witness saw another head at 6 than the export holds (signed with the key: the
    // log was rewritten after it was witnessed).
    let text = std::fs::read_to_string(&witness).unwrap();
    let last = text.lines().last().unwrap();
    let forged = resigned_elsewhere(last, &key);
    let other = scratch.0.join("other-witness.ndjson");
    std::fs::write(&other, text.replace(last, &forged)).unwrap();
    let Outcome::Failed(failure) = with_witness(&other) else {
        panic!("a witness that disagrees verified");
    };
    assert_eq!(
        (failure.at, failure.reason),
        (Location::Position(6), Reason::Rewritten)
    );
    assert!(failure.detail.starts_with("witness line 2: "), "{failure}");
    let args = [std::ffi::OsStr::new("--witness"), other.as_os_str()];
    assert_eq!(
        scratch.python_with(&file, key.public(), &args),
        Some((Location::Position(6), Reason::Rewritten))
    );
}

/// The checkpoint of a witness line signed again over another head hash.
fn resigned_elsewhere(line: &str, key: &SigningKey) -> String {
    let item: CheckpointItem = serde_json::from_str(line).unwrap();
    let original = Checkpoint::try_from(&item).unwrap();
    let mut head = original.head_hash;
    head.0[0] ^= 0xff;
    let forged = Checkpoint::sign(
        key,
        original.position,
        head,
        original.tenants_root,
        original.signed_at,
    );
    serde_json::to_string(&forged.to_item()).unwrap()
}
