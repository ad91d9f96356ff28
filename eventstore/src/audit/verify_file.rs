//! The verification of an export, offline (docs/audit.md sections 5 to 7), and of the live
//! store's checkpoints.
//!
//! An export is read once, in order, in constant memory apart from one entry per chain.
//! Reading runs on a thread of its own, a few megabytes ahead, while this thread parses and
//! hashes. The platform writes each record in its canonical encoding, so the record's text
//! is hashed as it stands (borrowed from the read buffer, never parsed into a tree), and
//! only the link members are parsed out of it; a record whose text does not hash is parsed
//! and re-encoded (RFC 8785) before it is judged, so a re-serialized file still verifies.
//!
//! The verifier stops at the first failure and names the position (or the line) and one of
//! the reasons of section 5. Telling a missing event from a reordered one needs to know
//! whether a lower position follows: after such a failure the rest of the file is read for
//! that alone.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use prost::Message as _;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::reader::LogReader;
use crate::verify::FaultReason;

use super::checkpoint::CHECKPOINT_SPEC;
use super::export::{EXPORT_SPEC, Format, HASH_SPEC};
use super::key::PublicKey;
use super::{merkle, store};

/// How many bytes the reader thread reads ahead at a time.
const CHUNK: usize = 4 << 20;

/// Positions per window of stored checkpoints read by [`verify_store`].
const STORE_WINDOW: i64 = 1_000_000;

/// The largest protobuf item accepted (an event is a few kilobytes).
const MAX_ITEM: usize = 64 << 20;

const ZERO_HEX: Hex = [b'0'; 64];

/// A hash as 64 lower-case hex characters.
type Hex = [u8; 64];

/// Why verification failed (docs/audit.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// A line is not an item, or lacks a member; or the header's spec is unknown.
    Malformed,
    /// An event does not hash to its hash, or does not link to the hash before it.
    Edited,
    /// A position is missing, and no lower one follows.
    Missing,
    /// Positions go down.
    Reordered,
    /// The file was cut: no end record, an end record that disagrees, a checkpoint beyond
    /// the last event, or `to` not reached.
    Truncated,
    /// A validly signed checkpoint signs another hash than the file's.
    Rewritten,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A checkpoint's key is not trusted.
    UnknownKey,
}

impl Reason {
    /// The reason's name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Edited => "edited",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::Rewritten => "rewritten",
            Self::BadSignature => "bad-signature",
            Self::UnknownKey => "unknown-key",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A global position.
    Position(i64),
    /// A line of the file (an item, in the protobuf form), from 1.
    Line(u64),
}

/// The first failure of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub at: Location,
    /// Why.
    pub reason: Reason,
    /// What was found.
    pub detail: String,
}

impl Failure {
    fn at(position: i64, reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            at: Location::Position(position),
            reason,
            detail: detail.into(),
        }
    }

    fn malformed(line: u64, detail: impl Into<String>) -> Self {
        Self {
            at: Location::Line(line),
            reason: Reason::Malformed,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    /// `FAILED at position <P>: <reason>: <detail>`, or `at line <L>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Location::Position(position) => write!(f, "FAILED at position {position}")?,
            Location::Line(line) => write!(f, "FAILED at line {line}")?,
        }
        write!(f, ": {}: {}", self.reason, self.detail)
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The tenant of a tenant export.
    pub tenant: Option<String>,
    /// The header's `from`.
    pub from: i64,
    /// The header's `to`.
    pub to: i64,
    /// Events verified.
    pub events: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The position of the last checkpoint.
    pub last_checkpoint: Option<i64>,
    /// Events after the last checkpoint.
    pub unsigned_tail: u64,
    /// Whether the keys were pinned (`--public-key`), rather than the header's own.
    pub pinned: bool,
    /// The witness: checkpoints matched, and the latest position it holds.
    pub witness: Option<(u64, Option<i64>)>,
    /// Bytes read.
    pub bytes: u64,
}

impl Report {
    /// The lines printed on success (docs/audit.md section 7).
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "verified {} events, {} checkpoints, positions {}..{}",
            self.events, self.checkpoints, self.from, self.to
        )];
        lines.push(match self.last_checkpoint {
            None => format!(
                "unsigned tail: {} events (no checkpoint in the file)",
                self.unsigned_tail
            ),
            Some(position) => format!(
                "unsigned tail: {} events after the checkpoint at position {position}",
                self.unsigned_tail
            ),
        });
        if let Some(tenant) = &self.tenant {
            lines.push(format!("scope: tenant {tenant} (its chain only)"));
        }
        if !self.pinned {
            lines.push(
                "keys: the header's own, not pinned with --public-key: this proves only that the file is consistent with itself"
                    .to_owned(),
            );
        }
        if let Some((checked, latest)) = self.witness {
            let latest = latest.map_or_else(|| "none".to_owned(), |p| p.to_string());
            lines.push(format!(
                "witness: {checked} checkpoints matched, the latest witnessed position is {latest}"
            ));
        }
        lines
    }
}

/// The outcome of a verification that could read its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything holds.
    Verified(Report),
    /// The first failure.
    Failed(Failure),
}

/// Why a verification could not be carried out at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A bad argument: a key that is not a key, a witness file that is not one (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The input could not be read (exit 3).
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The failure.
        source: io::Error,
    },
    /// The database failed (exit 3).
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
}

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The trusted keys; when empty, the header's keys are used.
    pub keys: Vec<PublicKey>,
    /// A witness file of checkpoints (docs/audit.md section 8).
    pub witness: Option<PathBuf>,
    /// The format; guessed from the first bytes when `None`.
    pub format: Option<Format>,
}

/// Guesses the format from a file's first two bytes: NDJSON starts with `{` and a member
/// name; a protobuf item starts with a varint length and the header's tag (0x0a).
pub fn guess_format(first: &[u8]) -> Format {
    match first {
        [b'{', second, ..] if *second != 0x0a => Format::Ndjson,
        [b'{'] => Format::Ndjson,
        _ => Format::Protobuf,
    }
}

/// Verifies the export in `path`. `progress` is told how many bytes were read so far.
pub fn verify_path(
    path: &Path,
    options: &VerifyOptions,
    progress: impl FnMut(u64),
) -> Result<Outcome, VerifyError> {
    let io = |source| VerifyError::Io {
        what: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    verify_reader(file, options, progress)
}

/// Verifies an export read from `input`.
pub fn verify_reader(
    input: impl Read + Send + 'static,
    options: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<Outcome, VerifyError> {
    let witness = options.witness.as_deref().map(Witness::open).transpose()?;
    let mut verifier = Verifier::new(&options.keys, witness);
    let io = |source| VerifyError::Io {
        what: "the export".to_owned(),
        source,
    };
    let mut input = BufReader::with_capacity(1 << 16, input);
    let format = match options.format {
        Some(format) => format,
        None => guess_format(input.fill_buf().map_err(io)?),
    };
    let bytes = match format {
        Format::Ndjson => feed_ndjson(input, &mut verifier, &mut progress)?,
        Format::Protobuf => feed_protobuf(input, &mut verifier, &mut progress)?,
    };
    verifier.finish(bytes)
}

/// Reads NDJSON on a thread of its own, in chunks that end at a line's end, and feeds the
/// lines to the verifier. Returns the bytes read.
fn feed_ndjson(
    input: impl Read + Send + 'static,
    verifier: &mut Verifier,
    progress: &mut impl FnMut(u64),
) -> Result<u64, VerifyError> {
    let (chunks_tx, chunks) = mpsc::sync_channel::<io::Result<Vec<u8>>>(3);
    let (spare_tx, spare) = mpsc::sync_channel::<Vec<u8>>(4);
    let reader = std::thread::Builder::new()
        .name("audit-verify-read".to_owned())
        .spawn(move || read_chunks(input, &chunks_tx, &spare))
        .map_err(|source| VerifyError::Io {
            what: "the export (no reader thread)".to_owned(),
            source,
        })?;
    let mut line = 0_u64;
    let mut bytes = 0_u64;
    let mut outcome = Ok(());
    'chunks: for chunk in &chunks {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(source) => {
                outcome = Err(VerifyError::Io {
                    what: "the export".to_owned(),
                    source,
                });
                break;
            }
        };
        bytes += chunk.len() as u64;
        let mut rest = chunk.as_slice();
        while !rest.is_empty() {
            let (text, after) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], &rest[end + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            line += 1;
            if let Err(err) = verifier.feed(line, Item::Json(text)) {
                outcome = Err(err);
                break 'chunks;
            }
            if verifier.done() {
                break 'chunks;
            }
            rest = after;
        }
        progress(bytes);
        // The reader may have stopped; a buffer it does not take back is dropped.
        let _ = spare_tx.try_send(chunk);
    }
    drop(chunks);
    drop(spare_tx);
    let _ = reader.join();
    outcome.map(|()| bytes)
}

fn read_chunks(
    mut input: impl Read,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&carry);
        carry.clear();
        let start = buf.len();
        let target = CHUNK.max(start * 2);
        buf.resize(target, 0);
        let mut filled = start;
        let mut eof = false;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let _ = chunks.send(Err(err));
                    return;
                }
            }
        }
        buf.truncate(filled);
        if eof {
            if !buf.is_empty() {
                let _ = chunks.send(Ok(buf));
            }
            return;
        }
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                carry.extend_from_slice(&buf[end + 1..]);
                buf.truncate(end + 1);
                if chunks.send(Ok(buf)).is_err() {
                    return;
                }
            }
            // A line longer than the buffer: read on with a larger one.
            None => carry = buf,
        }
    }
}

/// Reads varint-delimited `ExportItem`s and feeds them to the verifier.
fn feed_protobuf(
    mut input: impl io::BufRead,
    verifier: &mut Verifier,
    progress: &mut impl FnMut(u64),
) -> Result<u64, VerifyError> {
    let io = |source| VerifyError::Io {
        what: "the export".to_owned(),
        source,
    };
    let mut bytes = 0_u64;
    let mut item = 0_u64;
    let mut message = Vec::new();
    loop {
        let Some((length, read)) = read_varint(&mut input).map_err(io)? else {
            return Ok(bytes);
        };
        item += 1;
        bytes += read;
        let Some(length) = length.filter(|length| *length <= MAX_ITEM as u64) else {
            verifier.feed(
                item,
                Item::Bad(format!(
                    "the item's length prefix is not a varint of at most {MAX_ITEM} bytes"
                )),
            )?;
            return Ok(bytes);
        };
        message.clear();
        let got = (&mut input)
            .take(length)
            .read_to_end(&mut message)
            .map_err(io)?;
        bytes += got as u64;
        if (got as u64) < length {
            verifier.feed(
                item,
                Item::Bad(format!(
                    "the file ends inside an item ({got} of {length} bytes)"
                )),
            )?;
            return Ok(bytes);
        }
        let decoded = match proto::audit::v1::ExportItem::decode(message.as_slice()) {
            Ok(decoded) => Item::Proto(Box::new(decoded)),
            Err(err) => Item::Bad(format!("not a platform.audit.v1.ExportItem: {err}")),
        };
        verifier.feed(item, decoded)?;
        if verifier.done() {
            return Ok(bytes);
        }
        if item.is_multiple_of(1024) {
            progress(bytes);
        }
    }
}

/// A varint; `None` at a clean end of the input, `Some((None, n))` for a varint that does
/// not end within ten bytes or is cut by the end of the input.
fn read_varint(input: &mut impl io::BufRead) -> io::Result<Option<(Option<u64>, u64)>> {
    let mut value = 0_u64;
    let mut read = 0_u64;
    for shift in (0..70).step_by(7) {
        let mut byte = [0_u8];
        if input.read(&mut byte)? == 0 {
            return Ok(if read == 0 { None } else { Some((None, read)) });
        }
        read += 1;
        value |= u64::from(byte[0] & 0x7f) << shift.min(63);
        if byte[0] & 0x80 == 0 {
            return Ok(Some((Some(value), read)));
        }
    }
    Ok(Some((None, read)))
}

/// One item of the input.
enum Item<'a> {
    /// A line of NDJSON, without its `\n`.
    Json(&'a [u8]),
    /// A decoded protobuf item.
    Proto(Box<proto::audit::v1::ExportItem>),
    /// A protobuf item that could not be decoded.
    Bad(String),
}

/// The first members of any NDJSON item; for an event, all it needs.
#[derive(Deserialize)]
struct LineHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hash: Option<&'a RawValue>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

/// The members of a record that verification follows; the others are skipped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RecordLinks<'a> {
    aggregate_id: IgnoredAny,
    aggregate_type: IgnoredAny,
    event_id: IgnoredAny,
    event_type: IgnoredAny,
    event_version: IgnoredAny,
    global_position: i64,
    metadata: IgnoredAny,
    payload: IgnoredAny,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
    recorded_at: IgnoredAny,
    sequence: IgnoredAny,
    #[serde(borrow)]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tenant_prev_hash: Cow<'a, str>,
}

/// The links of a record, borrowed from its text when they need no unescaping.
struct Links<'a> {
    position: i64,
    tenant_id: Option<Cow<'a, str>>,
    prev_hash: Cow<'a, str>,
    tenant_prev_hash: Cow<'a, str>,
}

impl<'a> From<RecordLinks<'a>> for Links<'a> {
    fn from(record: RecordLinks<'a>) -> Self {
        Self {
            position: record.global_position,
            tenant_id: record.tenant_id,
            prev_hash: record.prev_hash,
            tenant_prev_hash: record.tenant_prev_hash,
        }
    }
}

impl Links<'_> {
    fn into_owned(self) -> Links<'static> {
        Links {
            position: self.position,
            tenant_id: self.tenant_id.map(|t| Cow::Owned(t.into_owned())),
            prev_hash: Cow::Owned(self.prev_hash.into_owned()),
            tenant_prev_hash: Cow::Owned(self.tenant_prev_hash.into_owned()),
        }
    }
}

const RECORD_MEMBERS: [&str; 13] = [
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
];

/// The header's members.
#[derive(Deserialize)]
struct HeaderLine {
    spec: String,
    hash_spec: serde_json::Value,
    scope: String,
    tenant_id: Option<String>,
    from: i64,
    to: i64,
    #[allow(dead_code)]
    exported_at: String,
    public_keys: Vec<serde_json::Value>,
}

/// A checkpoint's members (a log export's, a tenant export's, or a witness line's).
#[derive(Debug, Clone, Deserialize)]
struct CheckpointLine {
    position: i64,
    head_hash: String,
    tenants_root: String,
    signed_at: String,
    kid: String,
    signature: String,
    #[serde(default)]
    tenant_head: Option<TenantHead>,
    #[serde(default)]
    proof: Option<Proof>,
}

#[derive(Debug, Clone, Deserialize)]
struct TenantHead {
    hash: String,
    position: i64,
    tenant_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Proof {
    leaf_index: u64,
    tree_size: u64,
    path: Vec<String>,
}

#[derive(Deserialize)]
struct EndLine {
    events: u64,
    checkpoints: u64,
    last_position: i64,
    last_hash: String,
}

/// The header, as the verification needs it.
struct Header {
    tenant: Option<String>,
    from: i64,
    to: i64,
}

/// A chain's last event.
#[derive(Clone, Copy)]
struct ChainState {
    hash: Hex,
    position: i64,
}

/// What to decide once the rest of the file has been looked at: whether a position below
/// `below` follows.
struct Pending {
    below: i64,
    if_lower: Failure,
    otherwise: Failure,
}

/// Where the verification stands.
enum Stage {
    Running,
    /// Reading the rest of the file for a lower position.
    LookingAhead(Pending),
    Finished(Failure),
}

/// The verification's state: everything it keeps between items.
struct Verifier {
    pinned: bool,
    keys: HashMap<String, PublicKey>,
    rejected: Vec<String>,
    header: Option<Header>,
    events: u64,
    checkpoints: u64,
    tail: u64,
    last_position: Option<i64>,
    last_hash: Hex,
    last_checkpoint: Option<i64>,
    expected: i64,
    prev: Hex,
    platform: Option<ChainState>,
    tenants: BTreeMap<String, ChainState>,
    ended: bool,
    witness: Option<Witness>,
    stage: Stage,
}

impl Verifier {
    fn new(keys: &[PublicKey], witness: Option<Witness>) -> Self {
        Self {
            pinned: !keys.is_empty(),
            keys: keys
                .iter()
                .map(|key| (key.kid.clone(), key.clone()))
                .collect(),
            rejected: Vec::new(),
            header: None,
            events: 0,
            checkpoints: 0,
            tail: 0,
            last_position: None,
            last_hash: ZERO_HEX,
            last_checkpoint: None,
            expected: 1,
            prev: ZERO_HEX,
            platform: None,
            tenants: BTreeMap::new(),
            ended: false,
            witness,
            stage: Stage::Running,
        }
    }

    fn done(&self) -> bool {
        matches!(self.stage, Stage::Finished(_))
    }

    fn from(&self) -> i64 {
        self.header.as_ref().map_or(1, |header| header.from)
    }

    fn is_log(&self) -> bool {
        self.header
            .as_ref()
            .is_none_or(|header| header.tenant.is_none())
    }

    /// The position a failure at the end concerns: the last one read.
    fn last_read(&self) -> i64 {
        self.last_position.unwrap_or(self.from() - 1)
    }

    /// Takes one item. A failure is kept in the stage; `Err` is for a witness file that
    /// cannot be read.
    fn feed(&mut self, line: u64, item: Item<'_>) -> Result<(), VerifyError> {
        match &self.stage {
            Stage::Finished(_) => Ok(()),
            Stage::LookingAhead(pending) => {
                if peek_position(&item).is_some_and(|position| position < pending.below)
                    && let Stage::LookingAhead(pending) =
                        std::mem::replace(&mut self.stage, Stage::Running)
                {
                    self.stage = Stage::Finished(pending.if_lower);
                }
                Ok(())
            }
            Stage::Running => {
                match self.item(line, item) {
                    Ok(()) => {}
                    Err(Stop::Fail(failure)) => self.stage = Stage::Finished(failure),
                    Err(Stop::LookAhead(pending)) => self.stage = Stage::LookingAhead(pending),
                    Err(Stop::Unusable(err)) => return Err(err),
                }
                Ok(())
            }
        }
    }

    fn finish(mut self, bytes: u64) -> Result<Outcome, VerifyError> {
        match std::mem::replace(&mut self.stage, Stage::Running) {
            Stage::Finished(failure) => return Ok(Outcome::Failed(failure)),
            Stage::LookingAhead(pending) => return Ok(Outcome::Failed(pending.otherwise)),
            Stage::Running => {}
        }
        if let Err(failure) = self.at_end() {
            return Ok(Outcome::Failed(failure));
        }
        let witness = match self.witness.take() {
            Some(mut witness) => {
                witness.drain()?;
                Some((witness.checked, witness.latest))
            }
            None => None,
        };
        let header = self.header.as_ref();
        Ok(Outcome::Verified(Report {
            tenant: header.and_then(|header| header.tenant.clone()),
            from: self.from(),
            to: header.map_or(0, |header| header.to),
            events: self.events,
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint,
            unsigned_tail: self.tail,
            pinned: self.pinned,
            witness,
            bytes,
        }))
    }

    fn at_end(&self) -> Result<(), Failure> {
        let Some(header) = &self.header else {
            return Err(Failure::malformed(1, "the file is empty: no header"));
        };
        if !self.ended {
            return Err(Failure::at(
                self.last_read(),
                Reason::Truncated,
                "the file ends without its end record",
            ));
        }
        if header.tenant.is_none() && self.last_read() != header.to {
            return Err(Failure::at(
                self.last_read(),
                Reason::Truncated,
                format!(
                    "the last event is at {}, the header's `to` is {}",
                    describe(self.last_position),
                    header.to
                ),
            ));
        }
        if header.tenant.is_some()
            && let Some(last) = self.last_position
            && last > header.to
        {
            return Err(Failure::at(
                last,
                Reason::Truncated,
                format!(
                    "the last event is at {last}, beyond the header's `to` {}",
                    header.to
                ),
            ));
        }
        Ok(())
    }

    fn item(&mut self, line: u64, item: Item<'_>) -> Result<(), Stop> {
        if self.ended {
            return Err(Stop::Fail(Failure::at(
                self.last_read(),
                Reason::Truncated,
                format!("line {line} follows the end record"),
            )));
        }
        match item {
            Item::Json(text) => self.json_item(line, text),
            Item::Proto(item) => self.proto_item(line, *item),
            Item::Bad(detail) => Err(Stop::Fail(Failure::malformed(line, detail))),
        }
    }

    fn json_item(&mut self, line: u64, text: &[u8]) -> Result<(), Stop> {
        let malformed = |detail: String| Stop::Fail(Failure::malformed(line, detail));
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(malformed("a blank line".to_owned()));
        }
        let head: LineHead<'_> = serde_json::from_slice(text)
            .map_err(|err| malformed(format!("not a JSON object: {err}")))?;
        let kind = head.kind.as_deref();
        if self.header.is_none() {
            if kind != Some("header") {
                return Err(malformed("the first line is not a header".to_owned()));
            }
            let header: HeaderLine = parse(text).map_err(malformed)?;
            return self.on_header(line, header);
        }
        match kind {
            Some("event") => {
                let hash = head
                    .hash
                    .ok_or_else(|| malformed("lacks the member `hash`".to_owned()))?;
                let hash: Cow<'_, str> = serde_json::from_str(hash.get())
                    .map_err(|_| malformed("`hash` is not a string".to_owned()))?;
                let record = head
                    .record
                    .ok_or_else(|| malformed("lacks the member `record`".to_owned()))?;
                self.on_event(line, hash.as_bytes(), record.get().as_bytes(), None)
            }
            Some("checkpoint") => {
                let checkpoint: CheckpointLine = parse(text).map_err(malformed)?;
                self.on_checkpoint(line, &checkpoint)
            }
            Some("end") => {
                let end: EndLine = parse(text).map_err(malformed)?;
                self.on_end(&end);
                Ok(())
            }
            Some("header") => Err(malformed("a header after the first line".to_owned())),
            Some(other) => Err(malformed(format!("not an item of a known type: {other:?}"))),
            None => Err(malformed("lacks the member `type`".to_owned())),
        }
    }

    fn proto_item(&mut self, line: u64, item: proto::audit::v1::ExportItem) -> Result<(), Stop> {
        use proto::audit::v1::export_item::Item as P;
        let malformed = |detail: &str| Stop::Fail(Failure::malformed(line, detail));
        let Some(item) = item.item else {
            return Err(malformed("an ExportItem with no item"));
        };
        if self.header.is_none() {
            let P::Header(header) = item else {
                return Err(malformed("the first item is not a header"));
            };
            let header = HeaderLine {
                spec: header.spec,
                hash_spec: header.hash_spec.into(),
                scope: header.scope,
                tenant_id: header.tenant_id,
                from: header.from,
                to: header.to,
                exported_at: header.exported_at,
                public_keys: header
                    .public_keys
                    .into_iter()
                    .map(|key| {
                        serde_json::json!({
                            "kid": key.kid,
                            "algorithm": key.algorithm,
                            "public_key": hex::encode(key.public_key),
                        })
                    })
                    .collect(),
            };
            return self.on_header(line, header);
        }
        match item {
            P::Header(_) => Err(malformed("a header after the first item")),
            P::Event(envelope) => {
                let hash = hex::encode(&envelope.hash);
                self.on_event(line, hash.as_bytes(), &envelope.canonical, Some(&envelope))
            }
            P::Checkpoint(checkpoint) => {
                let line_form = CheckpointLine {
                    position: checkpoint.position,
                    head_hash: hex::encode(checkpoint.head_hash),
                    tenants_root: hex::encode(checkpoint.tenants_root),
                    signed_at: checkpoint.signed_at,
                    kid: checkpoint.kid,
                    signature: hex::encode(checkpoint.signature),
                    tenant_head: checkpoint.tenant_head.map(|head| TenantHead {
                        hash: hex::encode(head.hash),
                        position: head.position,
                        tenant_id: head.tenant_id,
                    }),
                    proof: checkpoint.proof.map(|proof| Proof {
                        leaf_index: proof.leaf_index,
                        tree_size: proof.tree_size,
                        path: proof.path.iter().map(hex::encode).collect(),
                    }),
                };
                self.on_checkpoint(line, &line_form)
            }
            P::End(end) => {
                self.on_end(&EndLine {
                    events: end.events,
                    checkpoints: end.checkpoints,
                    last_position: end.last_position,
                    last_hash: hex::encode(end.last_hash),
                });
                Ok(())
            }
        }
    }

    fn on_header(&mut self, line: u64, header: HeaderLine) -> Result<(), Stop> {
        let malformed = |detail: String| Stop::Fail(Failure::malformed(line, detail));
        if header.spec != EXPORT_SPEC {
            return Err(malformed(format!("unknown spec {:?}", header.spec)));
        }
        if header.hash_spec.as_u64() != Some(u64::from(HASH_SPEC)) || !header.hash_spec.is_u64() {
            return Err(malformed(format!("unknown hash_spec {}", header.hash_spec)));
        }
        let tenant = match (header.scope.as_str(), header.tenant_id) {
            ("log", None) => None,
            ("tenant", Some(tenant)) => Some(tenant),
            ("log" | "tenant", _) => {
                return Err(malformed(
                    "tenant_id must be null in a log export and a tenant in a tenant export"
                        .to_owned(),
                ));
            }
            (other, _) => return Err(malformed(format!("unknown scope {other:?}"))),
        };
        if header.from < 1 {
            return Err(malformed("`from` is below 1".to_owned()));
        }
        if !self.pinned {
            for (index, key) in header.public_keys.iter().enumerate() {
                match serde_json::from_value::<PublicKey>(key.clone())
                    .map_err(|err| err.to_string())
                    .and_then(|key| key.checked().map_err(|err| err.to_string()))
                {
                    Ok(key) => {
                        self.keys.insert(key.kid.clone(), key);
                    }
                    Err(err) => self.rejected.push(format!("header key {index}: {err}")),
                }
            }
        }
        self.expected = header.from;
        self.prev = ZERO_HEX;
        self.header = Some(Header {
            tenant,
            from: header.from,
            to: header.to,
        });
        Ok(())
    }

    fn on_event(
        &mut self,
        line: u64,
        hash: &[u8],
        record: &[u8],
        envelope: Option<&proto::v1::EventEnvelope>,
    ) -> Result<(), Stop> {
        let malformed = |detail: String| Stop::Fail(Failure::malformed(line, detail));
        let log = self.is_log();
        let digest: [u8; 32] = Sha256::digest(record).into();
        let links: Links<'_> = if hex_eq(&digest, hash) {
            // The text is what was hashed: only the links are parsed out of it.
            serde_json::from_slice::<RecordLinks<'_>>(record)
                .map_err(|err| malformed(format!("the record: {err}")))?
                .into()
        } else {
            // Re-serialized, or edited: judge the record's canonical encoding.
            let value: serde_json::Value = serde_json::from_slice(record)
                .map_err(|err| malformed(format!("the record is not JSON: {err}")))?;
            let Some(members) = value.as_object() else {
                return Err(malformed("`record` is not an object".to_owned()));
            };
            if let Some(missing) = RECORD_MEMBERS
                .iter()
                .find(|name| !members.contains_key(**name))
            {
                return Err(malformed(format!("the record lacks `{missing}`")));
            }
            if members.len() != RECORD_MEMBERS.len() {
                let extra: Vec<&str> = members
                    .keys()
                    .map(String::as_str)
                    .filter(|name| !RECORD_MEMBERS.contains(name))
                    .collect();
                return Err(malformed(format!(
                    "the record has members beyond the 13: {extra:?}"
                )));
            }
            let canonical = serde_json_canonicalizer::to_vec(&value)
                .map_err(|err| malformed(format!("the record has no canonical encoding: {err}")))?;
            let computed: [u8; 32] = Sha256::digest(&canonical).into();
            if !hex_eq(&computed, hash) {
                let claimed = members.get("global_position").and_then(|p| p.as_i64());
                let at = match (log, claimed) {
                    (false, Some(claimed)) => claimed,
                    _ => self.expected,
                };
                return Err(Stop::Fail(Failure::at(
                    at,
                    Reason::Edited,
                    format!(
                        "the record hashes to {}, not to its hash {}",
                        hex::encode(computed),
                        String::from_utf8_lossy(hash)
                    ),
                )));
            }
            Links::from(
                serde_json::from_slice::<RecordLinks<'_>>(&canonical)
                    .map_err(|err| malformed(format!("the record: {err}")))?,
            )
            .into_owned()
        };
        let position = links.position;
        let tenant = links.tenant_id.as_deref();
        let prev_hash = to_hex(links.prev_hash.as_bytes());
        let tenant_prev = to_hex(links.tenant_prev_hash.as_bytes());
        let Some(hash) = to_hex(hash) else {
            return Err(malformed("`hash` is not 64 hex characters".to_owned()));
        };

        if let Some(envelope) = envelope {
            let same = u64::try_from(position).ok() == Some(envelope.global_position)
                && envelope.prev_hash.len() == 32
                && prev_hash == to_hex(hex::encode(&envelope.prev_hash).as_bytes())
                && tenant_prev == to_hex(hex::encode(&envelope.tenant_prev_hash).as_bytes())
                && envelope.tenant_id.as_deref() == tenant;
            if !same {
                return Err(Stop::Fail(Failure::at(
                    position,
                    Reason::Edited,
                    "the envelope's position, links or tenant differ from its canonical record",
                )));
            }
        }

        let from = self.from();
        if log {
            if position > self.expected {
                let expected = self.expected;
                return Err(Stop::LookAhead(Pending {
                    below: position,
                    if_lower: Failure::at(
                        expected,
                        Reason::Reordered,
                        format!(
                            "expected position {expected}, found {position} and a lower one after it"
                        ),
                    ),
                    otherwise: Failure::at(
                        expected,
                        Reason::Missing,
                        format!("expected position {expected}, found {position}"),
                    ),
                }));
            }
            if position < self.expected {
                return Err(Stop::Fail(Failure::at(
                    self.expected,
                    Reason::Reordered,
                    format!("expected position {}, found {position}", self.expected),
                )));
            }
            if (from == 1 || self.events > 0) && prev_hash != Some(self.prev) {
                return Err(Stop::Fail(Failure::at(
                    position,
                    Reason::Edited,
                    format!(
                        "prev_hash {} does not link to the hash of position {}, {}",
                        links.prev_hash,
                        position - 1,
                        show(&self.prev)
                    ),
                )));
            }
        } else {
            let floor = self.last_position.map_or(from, |last| last + 1);
            if position < floor {
                return Err(Stop::Fail(Failure::at(
                    position,
                    Reason::Reordered,
                    format!("position {position} where positions must increase from {floor}"),
                )));
            }
            let own = self.header.as_ref().and_then(|h| h.tenant.as_deref());
            if tenant != own {
                return Err(Stop::Fail(Failure::at(
                    position,
                    Reason::Edited,
                    format!(
                        "the event is of tenant {}, not {}",
                        tenant.unwrap_or("null"),
                        own.unwrap_or("null")
                    ),
                )));
            }
        }

        let chain = match tenant {
            None => self.platform,
            Some(tenant) => self.tenants.get(tenant).copied(),
        };
        let link = match chain {
            Some(chain) => Some(chain.hash),
            None if from == 1 => Some(ZERO_HEX),
            None => None,
        };
        if let Some(link) = link
            && tenant_prev != Some(link)
        {
            let edited = Failure::at(
                position,
                Reason::Edited,
                format!(
                    "tenant_prev_hash {} does not link to its chain's last hash {}",
                    links.tenant_prev_hash,
                    show(&link)
                ),
            );
            if log {
                return Err(Stop::Fail(edited));
            }
            // In a tenant export positions have gaps, so a swap shows first as a broken link.
            return Err(Stop::LookAhead(Pending {
                below: position,
                if_lower: Failure::at(
                    position,
                    Reason::Reordered,
                    format!("position {position} is followed by a lower one"),
                ),
                otherwise: edited,
            }));
        }

        let state = ChainState { hash, position };
        match tenant {
            None => self.platform = Some(state),
            Some(tenant) => match self.tenants.get_mut(tenant) {
                Some(chain) => *chain = state,
                None => {
                    self.tenants.insert(tenant.to_owned(), state);
                }
            },
        }
        self.prev = hash;
        self.last_hash = hash;
        self.last_position = Some(position);
        self.expected = position + 1;
        self.events += 1;
        self.tail += 1;
        self.check_witness(position)
    }

    fn check_witness(&mut self, position: i64) -> Result<(), Stop> {
        let Some(witness) = self.witness.as_mut() else {
            return Ok(());
        };
        let found = witness.at(position).map_err(Stop::Unusable)?;
        for (line, checkpoint) in found {
            let prefix = format!("witness line {line}: ");
            self.check_signed(&checkpoint, &prefix)?;
            self.check_log_head(&checkpoint, &prefix)?;
            if let Some(witness) = self.witness.as_mut() {
                witness.checked += 1;
            }
        }
        Ok(())
    }

    /// A trusted key, and a signature that verifies under it.
    fn check_signed(&self, item: &CheckpointLine, prefix: &str) -> Result<(), Stop> {
        let Some(key) = self.keys.get(&item.kid) else {
            let mut trusted: Vec<&str> = self.keys.keys().map(String::as_str).collect();
            trusted.sort_unstable();
            let trusted = if trusted.is_empty() {
                "none".to_owned()
            } else {
                trusted.join(", ")
            };
            let note = if self.pinned {
                String::new()
            } else if self.rejected.is_empty() {
                "; the header's keys".to_owned()
            } else {
                format!(
                    "; the header's keys (rejected: {})",
                    self.rejected.join("; ")
                )
            };
            return Err(Stop::Fail(Failure::at(
                item.position,
                Reason::UnknownKey,
                format!(
                    "{prefix}kid {} is not a trusted key (trusted: {trusted}{note})",
                    item.kid
                ),
            )));
        };
        let message = signed_message(item);
        let signature = is_hex(&item.signature, 128)
            .then(|| hex::decode(&item.signature).ok())
            .flatten();
        if !signature.is_some_and(|signature| key.verifies(&message, &signature)) {
            return Err(Stop::Fail(Failure::at(
                item.position,
                Reason::BadSignature,
                format!(
                    "{prefix}the signature does not verify under key {}",
                    item.kid
                ),
            )));
        }
        Ok(())
    }

    /// A log checkpoint (or a witnessed one) names the event just read, and its hash; from
    /// position 1 every chain's head is known, so its tenants root is recomputed as well.
    fn check_log_head(&self, item: &CheckpointLine, prefix: &str) -> Result<(), Stop> {
        let position = item.position;
        let last = self.last_position;
        if last.is_none_or(|last| position > last) {
            return Err(Stop::Fail(Failure::at(
                position,
                Reason::Truncated,
                format!(
                    "{prefix}the checkpoint names position {position}, beyond the last event read ({})",
                    describe(last)
                ),
            )));
        }
        if last.is_some_and(|last| position < last) {
            return Err(Stop::Fail(Failure::at(
                position,
                Reason::Reordered,
                format!(
                    "{prefix}the checkpoint of position {position} follows the event at {}",
                    describe(last)
                ),
            )));
        }
        if item.head_hash.as_bytes() != self.last_hash {
            return Err(Stop::Fail(Failure::at(
                position,
                Reason::Rewritten,
                format!(
                    "{prefix}the checkpoint signs head {}, the event at {position} is {}",
                    item.head_hash,
                    show(&self.last_hash)
                ),
            )));
        }
        if self.is_log() && self.from() == 1 {
            let root = self.tenants_root();
            if root.to_hex() != item.tenants_root {
                return Err(Stop::Fail(Failure::at(
                    position,
                    Reason::Rewritten,
                    format!(
                        "{prefix}the checkpoint signs tenants_root {}, the chains' heads make {root}",
                        item.tenants_root
                    ),
                )));
            }
        }
        Ok(())
    }

    /// The tenant heads tree of the chains read so far (docs/audit.md section 3).
    fn tenants_root(&self) -> crate::canonical::Digest32 {
        let platform = self.platform.map(|chain| leaf_hash(None, &chain));
        let leaves: Vec<_> = platform
            .into_iter()
            .chain(
                self.tenants
                    .iter()
                    .map(|(tenant, chain)| leaf_hash(Some(tenant), chain)),
            )
            .collect();
        merkle::root(&leaves)
    }

    fn on_checkpoint(&mut self, line: u64, item: &CheckpointLine) -> Result<(), Stop> {
        let log = self.is_log();
        let (head, proof) = if log {
            (None, None)
        } else {
            let malformed = |member: &str| {
                Stop::Fail(Failure::malformed(
                    line,
                    format!("lacks the member `{member}`"),
                ))
            };
            (
                Some(
                    item.tenant_head
                        .as_ref()
                        .ok_or_else(|| malformed("tenant_head"))?,
                ),
                Some(item.proof.as_ref().ok_or_else(|| malformed("proof"))?),
            )
        };
        self.check_signed(item, "")?;
        match (head, proof) {
            (Some(head), Some(proof)) => self.check_tenant_head(item, head, proof)?,
            _ => self.check_log_head(item, "")?,
        }
        self.checkpoints += 1;
        self.tail = 0;
        self.last_checkpoint = Some(item.position);
        Ok(())
    }

    fn check_tenant_head(
        &self,
        item: &CheckpointLine,
        head: &TenantHead,
        proof: &Proof,
    ) -> Result<(), Stop> {
        let position = item.position;
        let own = self.header.as_ref().and_then(|h| h.tenant.as_deref());
        if head.tenant_id.as_deref() != own {
            return Err(Stop::Fail(Failure::at(
                position,
                Reason::Rewritten,
                format!(
                    "the checkpoint's tenant_head is of tenant {}, not {}",
                    head.tenant_id.as_deref().unwrap_or("null"),
                    own.unwrap_or("null")
                ),
            )));
        }
        let last = self.last_position;
        if last.is_none_or(|last| head.position > last) {
            return Err(Stop::Fail(Failure::at(
                head.position,
                Reason::Truncated,
                format!(
                    "the tenant_head names position {}, beyond the tenant's last event read ({})",
                    head.position,
                    describe(last)
                ),
            )));
        }
        if last.is_some_and(|last| head.position < last) {
            return Err(Stop::Fail(Failure::at(
                head.position,
                Reason::Reordered,
                format!(
                    "the checkpoint of the tenant's event at {} follows its event at {}",
                    head.position,
                    describe(last)
                ),
            )));
        }
        if head.hash.as_bytes() != self.last_hash || head.position > position {
            return Err(Stop::Fail(Failure::at(
                head.position,
                Reason::Rewritten,
                format!(
                    "the tenant_head ({} at {}) is not the tenant's event at {} ({}) at or before the checkpoint's position {position}",
                    head.hash,
                    head.position,
                    describe(last),
                    show(&self.last_hash)
                ),
            )));
        }
        let path: Option<Vec<_>> = proof.path.iter().map(|p| digest_of(p)).collect();
        let leaf = to_hex(head.hash.as_bytes()).map(|hash| {
            leaf_hash(
                own,
                &ChainState {
                    hash,
                    position: head.position,
                },
            )
        });
        let root = digest_of(&item.tenants_root);
        let reaches = match (path, leaf, root) {
            (Some(path), Some(leaf), Some(root)) => {
                merkle::verify_inclusion(&leaf, proof.leaf_index, proof.tree_size, &path, &root)
            }
            _ => false,
        };
        if !reaches {
            return Err(Stop::Fail(Failure::at(
                position,
                Reason::Rewritten,
                format!(
                    "the proof of the tenant's head does not reach the signed tenants_root {}",
                    item.tenants_root
                ),
            )));
        }
        Ok(())
    }

    fn on_end(&mut self, end: &EndLine) {
        let read_last = self.last_position.unwrap_or(0);
        let mut wrong = Vec::new();
        if end.events != self.events {
            wrong.push(format!("events {} (read {})", end.events, self.events));
        }
        if end.checkpoints != self.checkpoints {
            wrong.push(format!(
                "checkpoints {} (read {})",
                end.checkpoints, self.checkpoints
            ));
        }
        if end.last_position != read_last {
            wrong.push(format!(
                "last_position {} (read {read_last})",
                end.last_position
            ));
        }
        if end.last_hash.as_bytes() != self.last_hash {
            wrong.push(format!(
                "last_hash {} (read {})",
                end.last_hash,
                show(&self.last_hash)
            ));
        }
        if wrong.is_empty() {
            self.ended = true;
        } else {
            self.stage = Stage::Finished(Failure::at(
                self.last_read(),
                Reason::Truncated,
                format!(
                    "the end record disagrees with the file: {}",
                    wrong.join(", ")
                ),
            ));
        }
    }
}

/// Why an item stops the verification.
enum Stop {
    Fail(Failure),
    LookAhead(Pending),
    Unusable(VerifyError),
}

fn parse<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(text).map_err(|err| err.to_string())
}

/// The global position of an event item, if it has one; errors are passed over.
fn peek_position(item: &Item<'_>) -> Option<i64> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "type")]
        kind: Option<String>,
        record: Option<PeekRecord>,
    }
    #[derive(Deserialize)]
    struct PeekRecord {
        global_position: Option<i64>,
    }
    match item {
        Item::Json(text) => {
            let peek: Peek = serde_json::from_slice(text).ok()?;
            if peek.kind.as_deref() != Some("event") {
                return None;
            }
            peek.record?.global_position
        }
        Item::Proto(item) => match &item.item {
            Some(proto::audit::v1::export_item::Item::Event(envelope)) => {
                serde_json::from_slice::<PeekRecord>(&envelope.canonical)
                    .ok()?
                    .global_position
            }
            _ => None,
        },
        Item::Bad(_) => None,
    }
}

/// The signed message rebuilt from a checkpoint item's members: their JCS encoding.
fn signed_message(item: &CheckpointLine) -> Vec<u8> {
    let string = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    format!(
        "{{\"head_hash\":{},\"kid\":{},\"position\":{},\"signed_at\":{},\"spec\":\"{CHECKPOINT_SPEC}\",\"tenants_root\":{}}}",
        string(&item.head_hash),
        string(&item.kid),
        item.position,
        string(&item.signed_at),
        string(&item.tenants_root),
    )
    .into_bytes()
}

fn leaf_hash(tenant: Option<&str>, chain: &ChainState) -> crate::canonical::Digest32 {
    let tenant = tenant.map_or_else(
        || "null".to_owned(),
        |tenant| serde_json::Value::String(tenant.to_owned()).to_string(),
    );
    let data = format!(
        "{{\"hash\":\"{}\",\"position\":{},\"tenant_id\":{tenant}}}",
        show(&chain.hash),
        chain.position
    );
    let mut hasher = Sha256::new();
    hasher.update([0_u8]);
    hasher.update(data.as_bytes());
    crate::canonical::Digest32(hasher.finalize().into())
}

/// Whether `text` is exactly the lower-case hex of `digest`.
fn hex_eq(digest: &[u8; 32], text: &[u8]) -> bool {
    let mut out = [0_u8; 64];
    hex::encode_to_slice(digest, &mut out).is_ok() && out.as_slice() == text
}

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 64 lower-case hex characters as a [`Hex`]; `None` for anything else, which then links to
/// nothing.
fn to_hex(text: &[u8]) -> Option<Hex> {
    let hex: Hex = text.try_into().ok()?;
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(hex)
}

fn digest_of(text: &str) -> Option<crate::canonical::Digest32> {
    if !is_hex(text, 64) {
        return None;
    }
    hex::decode(text)
        .ok()
        .and_then(|bytes| crate::canonical::Digest32::from_slice(&bytes))
}

fn show(hex: &Hex) -> &str {
    std::str::from_utf8(hex).unwrap_or("?")
}

fn describe(position: Option<i64>) -> String {
    position.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

/// A witness file's checkpoints, read alongside the export in increasing position.
struct Witness {
    path: PathBuf,
    lines: io::Lines<BufReader<File>>,
    line: u64,
    checked: u64,
    latest: Option<i64>,
    next: Option<(u64, CheckpointLine)>,
}

impl Witness {
    fn open(path: &Path) -> Result<Self, VerifyError> {
        let file = File::open(path).map_err(|source| VerifyError::Io {
            what: format!("the witness file {}", path.display()),
            source,
        })?;
        let mut witness = Self {
            path: path.to_owned(),
            lines: BufReader::new(file).lines(),
            line: 0,
            checked: 0,
            latest: None,
            next: None,
        };
        witness.advance()?;
        Ok(witness)
    }

    fn advance(&mut self) -> Result<(), VerifyError> {
        self.next = None;
        for text in self.lines.by_ref() {
            self.line += 1;
            let text = text.map_err(|source| VerifyError::Io {
                what: format!("the witness file {}", self.path.display()),
                source,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let usage = |detail: String| {
                VerifyError::Usage(format!(
                    "--witness {} line {}: {detail}",
                    self.path.display(),
                    self.line
                ))
            };
            #[derive(Deserialize)]
            struct Kind {
                #[serde(rename = "type")]
                kind: Option<String>,
            }
            let kind: Kind = serde_json::from_str(&text)
                .map_err(|err| usage(format!("not a JSON object: {err}")))?;
            if kind.kind.as_deref() != Some("checkpoint") {
                return Err(usage("not a checkpoint item".to_owned()));
            }
            let item: CheckpointLine =
                serde_json::from_str(&text).map_err(|err| usage(err.to_string()))?;
            if self.latest.is_some_and(|latest| item.position < latest) {
                return Err(usage(
                    "positions go down: the witness must be in the order it was written".to_owned(),
                ));
            }
            self.latest = Some(item.position);
            self.next = Some((self.line, item));
            return Ok(());
        }
        Ok(())
    }

    /// The witnessed checkpoints at `position`, passing over those below it.
    fn at(&mut self, position: i64) -> Result<Vec<(u64, CheckpointLine)>, VerifyError> {
        let mut found = Vec::new();
        while let Some((line, item)) = self.next.take() {
            if item.position > position {
                self.next = Some((line, item));
                break;
            }
            if item.position == position {
                found.push((line, item));
            }
            self.advance()?;
        }
        Ok(found)
    }

    fn drain(&mut self) -> Result<(), VerifyError> {
        while self.next.is_some() {
            self.advance()?;
        }
        Ok(())
    }
}

/// Verifies the live store: the chain over the whole table and the log head
/// ([`LogReader::verify`]), then every stored checkpoint: a trusted key (`keys`, or the
/// store's own `audit_keys` when empty), its signature, and the hash of the event at its
/// position; the latest checkpoint's tenants root is recomputed from the table. The first
/// failure by position is the outcome.
pub async fn verify_store(pool: &PgPool, keys: &[PublicKey]) -> Result<Outcome, VerifyError> {
    let reader = LogReader::new(pool.clone());
    let chain = reader.verify(1, None).await?;
    let mut failure = chain.fault.as_ref().map(|fault| {
        let reason = match &fault.reason {
            FaultReason::Missing { .. } => Reason::Missing,
            FaultReason::BeyondHead { .. } => Reason::Truncated,
            _ => Reason::Edited,
        };
        Failure::at(fault.position, reason, fault.reason.to_string())
    });
    let pinned = !keys.is_empty();
    let trusted: HashMap<String, PublicKey> = if pinned {
        keys.iter()
            .map(|key| (key.kid.clone(), key.clone()))
            .collect()
    } else {
        store::public_keys(pool)
            .await?
            .into_iter()
            .map(|key| (key.kid.clone(), key))
            .collect()
    };
    let head = reader.head().await?;
    let mut checkpoints = 0_u64;
    let mut last_checkpoint: Option<super::Checkpoint> = None;
    let highest: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM audit_checkpoints")
        .fetch_one(pool)
        .await
        .map_err(crate::error::StoreError::from)?;
    let failed_at = |failure: &Option<Failure>| match failure.as_ref().map(|f| f.at) {
        Some(Location::Position(position)) => position,
        _ => i64::MAX,
    };
    // Read in windows of positions, so that memory holds a bounded number of checkpoints.
    let mut after = 0_i64;
    'windows: while after < highest.unwrap_or(0) && after < failed_at(&failure) {
        let window =
            store::checkpoints_between(pool, after + 1, after.saturating_add(STORE_WINDOW)).await?;
        after = after.saturating_add(STORE_WINDOW);
        for checkpoint in window {
            if checkpoint.position >= failed_at(&failure) {
                break 'windows;
            }
            if let Some(found) = check_stored(pool, &trusted, &checkpoint, head.position).await? {
                failure = Some(found);
                break 'windows;
            }
            checkpoints += 1;
            last_checkpoint = Some(checkpoint);
        }
    }
    if failure.is_none()
        && let Some(checkpoint) = &last_checkpoint
    {
        let heads = store::chain_heads_at(pool, checkpoint.position).await?;
        let leaves: Vec<_> = heads.iter().map(merkle::ChainHead::leaf_hash).collect();
        let root = merkle::root(&leaves);
        if root != checkpoint.tenants_root {
            failure = Some(Failure::at(
                checkpoint.position,
                Reason::Rewritten,
                format!(
                    "the checkpoint signs tenants_root {}, the chains' heads in the table make {root}",
                    checkpoint.tenants_root
                ),
            ));
        }
    }
    if let Some(failure) = failure {
        return Ok(Outcome::Failed(failure));
    }
    let last = last_checkpoint.as_ref().map(|c| c.position);
    Ok(Outcome::Verified(Report {
        tenant: None,
        from: 1,
        to: chain.to,
        events: chain.verified,
        checkpoints,
        last_checkpoint: last,
        unsigned_tail: u64::try_from(head.position - last.unwrap_or(0)).unwrap_or(0),
        pinned,
        witness: None,
        bytes: 0,
    }))
}

async fn check_stored(
    pool: &PgPool,
    trusted: &HashMap<String, PublicKey>,
    checkpoint: &super::Checkpoint,
    head: i64,
) -> Result<Option<Failure>, VerifyError> {
    let position = checkpoint.position;
    let Some(key) = trusted.get(&checkpoint.kid) else {
        return Ok(Some(Failure::at(
            position,
            Reason::UnknownKey,
            format!("kid {} is not a trusted key", checkpoint.kid),
        )));
    };
    if !checkpoint.verifies_under(key) {
        return Ok(Some(Failure::at(
            position,
            Reason::BadSignature,
            format!("the signature does not verify under key {}", checkpoint.kid),
        )));
    }
    if position > head {
        return Ok(Some(Failure::at(
            position,
            Reason::Truncated,
            format!("the checkpoint names position {position}, beyond the log head at {head}"),
        )));
    }
    let Some(hash) = super::store::hash_at(pool, position).await? else {
        return Ok(Some(Failure::at(
            position,
            Reason::Truncated,
            format!("the checkpoint names position {position}, which holds no event"),
        )));
    };
    if hash != checkpoint.head_hash {
        return Ok(Some(Failure::at(
            position,
            Reason::Rewritten,
            format!(
                "the checkpoint signs head {}, the event at {position} is {hash}",
                checkpoint.head_hash
            ),
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::audit::SigningKey;
    use crate::audit::checkpoint::Checkpoint;
    use crate::audit::merkle::ChainHead;
    use crate::canonical::{CanonicalEvent, Digest32, EventFields, Links as Linked, ZERO_HASH};

    /// A log export of `tenants.len()` events, signed at `signed_at` positions, as lines.
    fn export(tenants: &[Option<Uuid>], signed_at: &[i64], key: &SigningKey) -> Vec<String> {
        let mut lines = vec![
            json!({"type": "header", "spec": EXPORT_SPEC, "hash_spec": 1, "scope": "log",
                   "tenant_id": null, "from": 1, "to": tenants.len(),
                   "exported_at": "2026-12-01T08:00:00.000000Z",
                   "public_keys": [key.public()]})
            .to_string(),
        ];
        let mut prev = ZERO_HASH;
        let mut heads: BTreeMap<Option<Uuid>, ChainHead> = BTreeMap::new();
        let mut checkpoints = 0;
        for (i, tenant) in tenants.iter().enumerate() {
            let position = i as i64 + 1;
            let payload = json!({"n": position, "note": "caf\u{e9} \"q\""});
            let metadata = json!({"actor_id": "test"});
            let id = format!("agg-{}", i % 3);
            let event = CanonicalEvent::new(&EventFields {
                event_id: Uuid::from_u128(position as u128),
                aggregate_type: "Ledger",
                aggregate_id: &id,
                sequence: position,
                event_type: "EntryRecorded",
                event_version: "1",
                tenant_id: *tenant,
                payload: &payload,
                metadata: &metadata,
            })
            .unwrap();
            let links = Linked {
                global_position: position,
                prev_hash: prev,
                recorded_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                tenant_prev_hash: heads.get(tenant).map_or(ZERO_HASH, |head| head.hash),
            };
            let hash = event.hash(&links);
            let record = String::from_utf8(event.bytes(&links)).unwrap();
            lines.push(format!(
                "{{\"type\":\"event\",\"hash\":\"{hash}\",\"record\":{record}}}"
            ));
            prev = hash;
            heads.insert(
                *tenant,
                ChainHead {
                    tenant_id: *tenant,
                    position,
                    hash,
                },
            );
            if signed_at.contains(&position) {
                let leaves: Vec<_> = heads.values().map(ChainHead::leaf_hash).collect();
                let checkpoint =
                    Checkpoint::sign(key, position, hash, merkle::root(&leaves), Utc::now());
                lines.push(serde_json::to_string(&checkpoint.to_item()).unwrap());
                checkpoints += 1;
            }
        }
        lines.push(
            json!({"type": "end", "events": tenants.len(), "checkpoints": checkpoints,
                   "last_position": tenants.len(), "last_hash": prev.to_hex()})
            .to_string(),
        );
        lines
    }

    fn verify(lines: &[String], keys: &[PublicKey]) -> Outcome {
        let mut text = lines.join("\n");
        text.push('\n');
        let options = VerifyOptions {
            keys: keys.to_vec(),
            ..VerifyOptions::default()
        };
        verify_reader(io::Cursor::new(text.into_bytes()), &options, |_| {}).unwrap()
    }

    fn failure(outcome: Outcome) -> (Location, Reason) {
        match outcome {
            Outcome::Failed(failure) => (failure.at, failure.reason),
            Outcome::Verified(report) => panic!("verified: {report:?}"),
        }
    }

    fn log() -> (Vec<String>, SigningKey) {
        let (a, b) = (Some(Uuid::from_u128(0xa)), Some(Uuid::from_u128(0xb)));
        let key = SigningKey::generate().unwrap().0;
        let lines = export(&[a, b, None, a, a, b, None, a, b, a], &[4, 8], &key);
        (lines, key)
    }

    #[test]
    fn a_whole_export_verifies_and_reports_its_unsigned_tail() {
        let (lines, key) = log();
        let Outcome::Verified(report) = verify(&lines, &[key.public().clone()]) else {
            panic!("not verified");
        };
        assert_eq!((report.events, report.checkpoints), (10, 2));
        assert_eq!((report.last_checkpoint, report.unsigned_tail), (Some(8), 2));
        assert!(report.pinned);
        assert_eq!(
            report.summary()[0],
            "verified 10 events, 2 checkpoints, positions 1..10"
        );
    }

    #[test]
    fn a_re_serialized_export_still_verifies() {
        let (lines, _key) = log();
        let pretty: Vec<String> = lines
            .iter()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                // Members in another order and escaped non-ASCII: the same JSON, other bytes.
                let text = serde_json::to_string(&value).unwrap();
                text.replace('\u{e9}', "\\u00e9").replacen("{", "{ ", 1)
            })
            .collect();
        assert!(matches!(verify(&pretty, &[]), Outcome::Verified(_)));
    }

    #[test]
    fn a_deleted_event_is_missing_and_a_swap_is_reordered() {
        let (lines, key) = log();
        let keys = [key.public().clone()];
        let mut deleted = lines.clone();
        deleted.remove(3); // position 3
        assert_eq!(
            failure(verify(&deleted, &keys)),
            (Location::Position(3), Reason::Missing)
        );
        let mut swapped = lines.clone();
        swapped.swap(2, 3); // positions 2 and 3
        assert_eq!(
            failure(verify(&swapped, &keys)),
            (Location::Position(2), Reason::Reordered)
        );
    }

    #[test]
    fn an_edited_record_a_cut_file_and_another_key_are_named() {
        let (lines, key) = log();
        let keys = [key.public().clone()];
        let mut edited = lines.clone();
        // Lines: the header, events 1 to 4, the checkpoint of 4, events 5, 6, ...
        assert!(edited[7].contains("\"n\":6"));
        edited[7] = edited[7].replacen("\"n\":6", "\"n\":7", 1);
        assert_eq!(
            failure(verify(&edited, &keys)),
            (Location::Position(6), Reason::Edited)
        );
        let mut cut = lines.clone();
        cut.pop();
        assert_eq!(
            failure(verify(&cut, &keys)),
            (Location::Position(10), Reason::Truncated)
        );
        let other = SigningKey::generate().unwrap().0;
        assert_eq!(
            failure(verify(&lines, &[other.public().clone()])),
            (Location::Position(4), Reason::UnknownKey)
        );
        assert_eq!(
            failure(verify(&["{\"type\":\"event\"}".to_owned()], &keys)),
            (Location::Line(1), Reason::Malformed)
        );
    }

    #[test]
    fn a_record_lacking_a_member_is_malformed() {
        let links: Result<RecordLinks<'_>, _> = serde_json::from_str(
            r#"{"aggregate_id":"a","aggregate_type":"b","event_id":"c","event_type":"d","event_version":"1","global_position":1,"metadata":{},"prev_hash":"00","recorded_at":"x","sequence":1,"tenant_id":null,"tenant_prev_hash":"00"}"#,
        );
        assert!(links.is_err(), "payload is missing");
    }

    #[test]
    fn the_format_is_guessed_from_the_first_bytes() {
        assert_eq!(guess_format(b"{\"type\""), Format::Ndjson);
        assert_eq!(guess_format(&[0x7b, 0x0a]), Format::Protobuf);
        assert_eq!(guess_format(&[0x85, 0x01, 0x0a]), Format::Protobuf);
        let _ = Digest32::default();
    }
}
