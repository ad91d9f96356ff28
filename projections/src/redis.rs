//! Redis read models: the [`RedisProjection`] trait, and applying events to one with its
//! checkpoint in one Lua call.
//!
//! A Redis model is a cache of the log that can always be rebuilt: losing Redis loses
//! nothing. Its keys are hashes under `{<prefix>:rm:<name>}:<generation>:`, and one hash,
//! `{<prefix>:rm:<name>}:meta`, names the live generation, the position it stands at and
//! the version of the projection that built it. The braces are a hash tag: a model lives in
//! one Redis Cluster slot, as its scripts need.
//!
//! A batch is planned in Rust (the projection reads what it needs through a [`Stage`] and
//! stages its writes), then committed by one Lua call that checks the model still stands
//! at the position and generation the plan was made from, performs every write and moves
//! the position, or does nothing. Events at or below the position are passed over, so a
//! redelivered message is harmless, and two workers on one model never interleave.
//!
//! A rebuild (after a version change, a lost or flushed Redis, a model left by another log,
//! or `platform replay`) fills a
//! new generation from the log in PostgreSQL, then swaps it in by rewriting `meta` in one
//! Lua call, and removes the old generation's keys. Readers go through `meta`, so they see
//! the old model or the new one, never a half-built one; while no live model exists, they
//! are told so and fall back to PostgreSQL.
//!
//! Parking and skips are recorded in PostgreSQL (`projection_checkpoints`,
//! `projection_skips`), as for PostgreSQL models, so an operator handles both the same way.
//! The position there mirrors Redis's for status lines; Redis's own is the one that counts.
//! A live model whose database has no record of it, or that stands beyond the log's head,
//! belongs to another log (a database recreated or restored under the same key prefix): a
//! worker builds it again from its own log rather than skip that log's first events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventstore::{LogReader, RecordedEvent};
use futures::TryStreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::pg::{self, ApplyError, Checkpoint, Parked, Rebuilt};
use crate::{Applied, BatchError, ProjectionError, Target};

/// A Redis hash as the model sees it: field to value.
pub type Hash = BTreeMap<String, String>;

/// A read model in Redis: a named, versioned function of the ordered event log.
pub trait RedisProjection: Send + Sync + 'static {
    /// The projection's name: lowercase letters, digits and `_`, starting with a letter.
    fn name(&self) -> &'static str;

    /// The version of the projection's code and keys. A change rebuilds the model.
    fn version(&self) -> i32;

    /// Whether the projection reads `event`. The others still move the position.
    fn wants(&self, event: &RecordedEvent) -> bool;

    /// Stages the writes `events` make, in order. Reads through `stage` see the model as it
    /// stands plus the writes staged so far. A failure names the event when it is known.
    fn apply(
        &self,
        stage: &mut Stage,
        events: &[&RecordedEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// One write to a model's hash, by the key's name inside the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `HSET key field value`.
    Set {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// `HSET key field value`, only if the key exists (an expired key stays gone).
    SetIfExists {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// `HDEL key field`.
    Remove {
        /// The key.
        key: String,
        /// The field.
        field: String,
    },
    /// `DEL key`.
    Delete {
        /// The key.
        key: String,
    },
    /// `PEXPIREAT key at`: the key disappears at `at` (Unix milliseconds).
    ExpireAt {
        /// The key.
        key: String,
        /// When.
        at_ms: i64,
    },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Self::Set { key, .. }
            | Self::SetIfExists { key, .. }
            | Self::Remove { key, .. }
            | Self::Delete { key }
            | Self::ExpireAt { key, .. } => key,
        }
    }

    /// The write's effect on a staged copy of its hash. Expiry is not staged.
    fn stage(&self, hash: &mut Hash) {
        match self {
            Self::Set { field, value, .. } => {
                hash.insert(field.clone(), value.clone());
            }
            Self::SetIfExists { field, value, .. } => {
                if !hash.is_empty() {
                    hash.insert(field.clone(), value.clone());
                }
            }
            Self::Remove { field, .. } => {
                hash.remove(field);
            }
            Self::Delete { .. } => hash.clear(),
            Self::ExpireAt { .. } => {}
        }
    }
}

/// The model as a batch sees it while it is planned: what Redis holds, plus the writes
/// staged so far. Reads cost a round trip per key not yet seen ([`Stage::prefetch`] reads
/// many in one); writes cost nothing until the batch commits.
pub struct Stage {
    conn: ConnectionManager,
    space: String,
    seen: HashMap<String, Hash>,
    writes: Vec<Write>,
    failure: Option<redis::RedisError>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("space", &self.space)
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl Stage {
    fn new(conn: ConnectionManager, space: String) -> Self {
        Self {
            conn,
            space,
            seen: HashMap::new(),
            writes: Vec::new(),
            failure: None,
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.space)
    }

    fn failed(&mut self, err: redis::RedisError) -> ApplyError {
        let message = format!("Redis failed: {err}");
        self.failure = Some(err);
        ApplyError {
            position: None,
            message,
        }
    }

    /// Reads the hashes `keys` in one round trip, so later [`Stage::hash`] calls are free.
    pub async fn prefetch(&mut self, keys: &[String]) -> Result<(), ApplyError> {
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| !self.seen.contains_key(*key))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in &missing {
            pipe.hgetall(self.full(key));
        }
        let hashes: Vec<Hash> = match pipe.query_async(&mut self.conn).await {
            Ok(hashes) => hashes,
            Err(err) => return Err(self.failed(err)),
        };
        for (key, mut hash) in missing.into_iter().zip(hashes) {
            for write in self.writes.iter().filter(|write| write.key() == key) {
                write.stage(&mut hash);
            }
            self.seen.insert(key.clone(), hash);
        }
        Ok(())
    }

    /// The hash `key` as the batch sees it (empty when it does not exist).
    pub async fn hash(&mut self, key: &str) -> Result<&Hash, ApplyError> {
        if !self.seen.contains_key(key) {
            self.prefetch(&[key.to_owned()]).await?;
        }
        Ok(self.seen.entry(key.to_owned()).or_default())
    }

    /// One field of the hash `key`, as the batch sees it.
    pub async fn field(&mut self, key: &str, field: &str) -> Result<Option<String>, ApplyError> {
        Ok(self.hash(key).await?.get(field).cloned())
    }

    fn push(&mut self, write: Write) {
        if let Some(hash) = self.seen.get_mut(write.key()) {
            write.stage(hash);
        }
        self.writes.push(write);
    }

    /// Stages `HSET key field value`.
    pub fn set(&mut self, key: &str, field: &str, value: impl Into<String>) {
        self.push(Write::Set {
            key: key.to_owned(),
            field: field.to_owned(),
            value: value.into(),
        });
    }

    /// Stages `HSET key field value` if the key exists when the batch commits.
    pub fn set_if_exists(&mut self, key: &str, field: &str, value: impl Into<String>) {
        self.push(Write::SetIfExists {
            key: key.to_owned(),
            field: field.to_owned(),
            value: value.into(),
        });
    }

    /// Stages `HDEL key field`.
    pub fn remove(&mut self, key: &str, field: &str) {
        self.push(Write::Remove {
            key: key.to_owned(),
            field: field.to_owned(),
        });
    }

    /// Stages `DEL key`.
    pub fn delete(&mut self, key: &str) {
        self.push(Write::Delete {
            key: key.to_owned(),
        });
    }

    /// Stages `PEXPIREAT key at_ms`. A time in the past removes the key when the batch
    /// commits; staged reads do not see expiry.
    pub fn expire_at(&mut self, key: &str, at_ms: i64) {
        self.push(Write::ExpireAt {
            key: key.to_owned(),
            at_ms,
        });
    }

    /// The writes staged so far, in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }
}

/// Commits a batch: checks the slot (`KEYS[1]`) still names generation `ARGV[1]` at position
/// `ARGV[2]`, performs the writes (`ARGV[4..]`: an operation, the index of its key in `KEYS`,
/// then its arguments; `set` takes a count of field and value pairs) and moves the position
/// to `ARGV[3]`. Returns `{1}` when done, or `{0,
/// generation, position}` as found when the slot moved. Every operation is checked before
/// this script is called, so it cannot stop half-way.
const COMMIT: &str = r"
local generation = redis.call('HGET', KEYS[1], 'generation')
local position = redis.call('HGET', KEYS[1], 'position')
if generation ~= ARGV[1] or position ~= ARGV[2] then
  return {0, generation or '', position or ''}
end
local i = 4
while i <= #ARGV do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  if op == 'set' then
    local n = tonumber(ARGV[i + 2])
    redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + 2 * n))
    i = i + 3 + 2 * n
  elseif op == 'setx' then
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'hdel' then
    redis.call('HDEL', key, ARGV[i + 2])
    i = i + 3
  elseif op == 'del' then
    redis.call('DEL', key)
    i = i + 2
  else
    redis.call('PEXPIREAT', key, ARGV[i + 2])
    i = i + 3
  end
end
redis.call('HSET', KEYS[1], 'position', ARGV[3])
return {1}
";

/// The most field and value pairs one `HSET` of the commit script sets (Lua's `unpack`
/// has a stack limit).
const MAX_FIELDS_PER_HSET: usize = 256;

/// Swaps a finished build in: checks the build slot (`KEYS[2]`) names generation `ARGV[1]`
/// at position `ARGV[2]`, makes it the live one in `meta` (`KEYS[1]`) with version
/// `ARGV[3]`, removes the build slot, and returns the generation it replaced ('' if none).
const SWAP: &str = r"
local generation = redis.call('HGET', KEYS[2], 'generation')
local position = redis.call('HGET', KEYS[2], 'position')
if generation ~= ARGV[1] or position ~= ARGV[2] then
  return {0, generation or '', position or ''}
end
local old = redis.call('HGET', KEYS[1], 'generation') or ''
redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'position', ARGV[2], 'version', ARGV[3])
redis.call('DEL', KEYS[2])
return {1, old}
";

/// Reads one hash (or one field of it) of the live model: `KEYS[1]` is `meta`, `ARGV[1]` the
/// version the reader understands, `ARGV[2]` the key inside the generation, `ARGV[3]` a field
/// or ''. Returns `{0}` when there is no live model of that version, else `{1, position,
/// value}` (the field's value, or the hash as a flat list).
const READ: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'generation', 'position', 'version')
if not meta[1] or meta[3] ~= ARGV[1] then
  return {0}
end
local key = string.sub(KEYS[1], 1, -5) .. meta[1] .. ':' .. ARGV[2]
if ARGV[3] == '' then
  return {1, meta[2], redis.call('HGETALL', key)}
end
return {1, meta[2], redis.call('HGET', key, ARGV[3]) or false}
";

/// Why a build stopped.
#[derive(Debug)]
enum BuildFailure {
    /// Redis, PostgreSQL or the log failed, or another build took over.
    Store(ProjectionError),
    /// The projection failed on the event at `position`.
    Event { position: i64, error: String },
}

impl From<ProjectionError> for BuildFailure {
    fn from(err: ProjectionError) -> Self {
        Self::Store(err)
    }
}

/// Which checkpoint a batch moves: the live model's, or a build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Live,
    Build,
}

/// Where a slot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotState {
    generation: String,
    position: i64,
    version: Option<i32>,
}

/// A Redis projection's model: its keys in one Redis, its records in PostgreSQL. It is the
/// runner's [`Target`] for a Redis projection, and what reads the live model.
pub struct RedisModel<P> {
    pool: PgPool,
    conn: ConnectionManager,
    projection: Arc<P>,
    base: String,
    commit: redis::Script,
    swap: redis::Script,
    mirrored: Mutex<Option<Instant>>,
    mirrored_position: AtomicI64,
}

impl<P> std::fmt::Debug for RedisModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisModel")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// How often a Redis model's position is copied to `projection_checkpoints` while it runs.
const MIRROR_EVERY: Duration = Duration::from_secs(1);

/// The keys of a model named `name` under the key prefix `prefix` start with this.
pub fn model_base(prefix: &str, name: &str) -> String {
    format!("{{{prefix}:rm:{name}}}")
}

fn redis_error(err: &redis::RedisError) -> ProjectionError {
    ProjectionError::Redis(err.to_string())
}

impl<P: RedisProjection> RedisModel<P> {
    /// `projection`'s model in the Redis behind `conn`, under the key prefix `prefix`, with
    /// its records in `pool`.
    pub fn new(
        pool: PgPool,
        conn: ConnectionManager,
        prefix: &str,
        projection: P,
    ) -> Result<Self, ProjectionError> {
        pg::check_name(projection.name())?;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ProjectionError::Redis(format!(
                "the key prefix `{prefix}` must be letters, digits, `_` or `-`"
            )));
        }
        Ok(Self {
            base: model_base(prefix, projection.name()),
            pool,
            conn,
            projection: Arc::new(projection),
            commit: redis::Script::new(COMMIT),
            swap: redis::Script::new(SWAP),
            mirrored: Mutex::new(None),
            mirrored_position: AtomicI64::new(-1),
        })
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The key of the hash naming the live generation, its position and version.
    pub fn meta_key(&self) -> String {
        format!("{}:meta", self.base)
    }

    fn slot_key(&self, slot: Slot) -> String {
        match slot {
            Slot::Live => self.meta_key(),
            Slot::Build => format!("{}:build", self.base),
        }
    }

    fn space(&self, generation: &str) -> String {
        format!("{}:{generation}:", self.base)
    }

    async fn slot(&self, slot: Slot) -> Result<Option<SlotState>, ProjectionError> {
        let mut conn = self.conn.clone();
        let hash: Hash = conn
            .hgetall(self.slot_key(slot))
            .await
            .map_err(|err| redis_error(&err))?;
        let Some(generation) = hash.get("generation") else {
            return Ok(None);
        };
        let position = hash
            .get("position")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                ProjectionError::Redis(format!(
                    "{} holds no position; delete it to rebuild the model",
                    self.slot_key(slot)
                ))
            })?;
        Ok(Some(SlotState {
            generation: generation.clone(),
            position,
            version: hash.get("version").and_then(|v| v.parse().ok()),
        }))
    }

    /// The live model's position, if there is a live model of this projection's version.
    pub async fn position(&self) -> Result<Option<i64>, ProjectionError> {
        Ok(self
            .slot(Slot::Live)
            .await?
            .filter(|state| state.version == Some(self.projection.version()))
            .map(|state| state.position))
    }

    /// Waits until the live model has applied `position`, or `timeout` passes.
    pub async fn wait_for_position(
        &self,
        position: i64,
        timeout: Duration,
    ) -> Result<bool, ProjectionError> {
        crate::poll_until(timeout, || async {
            Ok(self.position().await?.is_some_and(|at| at >= position))
        })
        .await
    }

    /// Applies `events` to `slot`: stages them from the slot's generation and commits them
    /// with the slot's position in one Lua call. Retried when another worker moved the slot
    /// between the plan and the commit.
    async fn apply_to(
        &self,
        slot: Slot,
        events: &[RecordedEvent],
        skipped: &[i64],
    ) -> Result<Applied, BatchError> {
        loop {
            let Some(state) = self.slot(slot).await.map_err(BatchError::Store)? else {
                return Err(BatchError::Store(match slot {
                    Slot::Live => self.lost(),
                    Slot::Build => ProjectionError::NotSetUp(self.projection.name().to_owned()),
                }));
            };
            let (wanted, last) = match crate::fresh_part(
                events,
                state.position,
                |event| self.projection.wants(event),
                skipped,
            ) {
                Ok(part) => part,
                Err(answer) => return Ok(answer),
            };
            let mut stage = Stage::new(self.conn.clone(), self.space(&state.generation));
            if !wanted.is_empty() {
                let outcome = self.projection.apply(&mut stage, &wanted).await;
                if let Some(err) = stage.failure.take() {
                    return Err(BatchError::Store(redis_error(&err)));
                }
                outcome.map_err(BatchError::Apply)?;
            }
            if self.commit(slot, &state, last, &stage).await? {
                return Ok(Applied::Through { position: last });
            }
            tracing::debug!(
                projection = self.projection.name(),
                "the model moved while a batch was planned; planning it again"
            );
        }
    }

    /// Runs the commit script; `false` when the slot moved since `state` was read.
    async fn commit(
        &self,
        slot: Slot,
        state: &SlotState,
        last: i64,
        stage: &Stage,
    ) -> Result<bool, BatchError> {
        let mut invocation = self.commit.prepare_invoke();
        invocation.key(self.slot_key(slot));
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut keys: Vec<&str> = Vec::new();
        for write in stage.writes() {
            if !index.contains_key(write.key()) {
                keys.push(write.key());
                index.insert(write.key(), keys.len() + 1);
            }
        }
        for key in &keys {
            invocation.key(stage.full(key));
        }
        invocation
            .arg(&state.generation)
            .arg(state.position)
            .arg(last);
        let writes = stage.writes();
        let mut next = 0;
        while let Some(write) = writes.get(next) {
            let at = index.get(write.key()).copied().unwrap_or(1);
            next += 1;
            match write {
                Write::Set { key, field, value } => {
                    // A run of sets of one key is one HSET.
                    let mut pairs = vec![(field, value)];
                    while let Some(Write::Set {
                        key: same,
                        field,
                        value,
                    }) = writes.get(next)
                    {
                        if same != key || pairs.len() >= MAX_FIELDS_PER_HSET {
                            break;
                        }
                        pairs.push((field, value));
                        next += 1;
                    }
                    invocation.arg("set").arg(at).arg(pairs.len());
                    for (field, value) in pairs {
                        invocation.arg(field).arg(value);
                    }
                }
                Write::SetIfExists { field, value, .. } => {
                    invocation.arg("setx").arg(at).arg(field).arg(value);
                }
                Write::Remove { field, .. } => {
                    invocation.arg("hdel").arg(at).arg(field);
                }
                Write::Delete { .. } => {
                    invocation.arg("del").arg(at);
                }
                Write::ExpireAt { at_ms, .. } => {
                    invocation.arg("pexpireat").arg(at).arg(at_ms);
                }
            }
        }
        let mut conn = self.conn.clone();
        let answer: Vec<redis::Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|err| BatchError::Store(redis_error(&err)))?;
        Ok(matches!(answer.first(), Some(redis::Value::Int(1))))
    }

    /// Copies the live position to `projection_checkpoints`, at most every second unless
    /// `now` is set, for status lines and lag metrics.
    async fn mirror(&self, position: i64, now: bool) -> Result<(), ProjectionError> {
        if self.mirrored_position.load(Ordering::Relaxed) == position {
            return Ok(());
        }
        {
            let Ok(mut last) = self.mirrored.lock() else {
                return Ok(());
            };
            if !now && last.is_some_and(|at| at.elapsed() < MIRROR_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        sqlx::query(
            "UPDATE projection_checkpoints SET position = $2, version = $3, updated_at = now()
              WHERE name = $1",
        )
        .bind(self.projection.name())
        .bind(position)
        .bind(self.projection.version())
        .execute(&self.pool)
        .await?;
        self.mirrored_position.store(position, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure the projection has its record in `projection_checkpoints`, and says
    /// whether this call made it.
    async fn record(&self) -> Result<(Checkpoint, bool), ProjectionError> {
        let made: Option<String> = sqlx::query_scalar(
            "INSERT INTO projection_checkpoints (name, version, position) VALUES ($1, $2, 0)
             ON CONFLICT (name) DO NOTHING RETURNING name",
        )
        .bind(self.projection.name())
        .bind(self.projection.version())
        .fetch_optional(&self.pool)
        .await?;
        let record = pg::checkpoint(&self.pool, self.projection.name())
            .await?
            .ok_or_else(|| ProjectionError::NotSetUp(self.projection.name().to_owned()))?;
        Ok((record, made.is_some()))
    }

    /// Why a live model of this version does not belong to the log in `reader`, if it does
    /// not: it stands beyond the log's head, or it has applied events while this database
    /// had never heard of the projection. Either way the database was recreated or restored
    /// under the same key prefix, and the model must be built again from this log.
    async fn foreign(
        &self,
        live: &SlotState,
        reader: &LogReader,
        new_record: bool,
    ) -> Result<Option<String>, ProjectionError> {
        if live.position == 0 {
            return Ok(None);
        }
        if new_record {
            return Ok(Some(format!(
                "it stands at position {}, but this database has no record of it",
                live.position
            )));
        }
        let head = reader.head().await.map_err(ProjectionError::from)?.position;
        Ok((live.position > head).then(|| {
            format!(
                "it stands at position {}, beyond this log's head at {head}",
                live.position
            )
        }))
    }

    /// Rebuilds the model from the log into a new generation, through `to` (or the head of
    /// the log), then swaps it in and removes every other generation's keys. Events an
    /// operator skipped stay skipped. `progress` is called after every page with the position
    /// reached and the target. On failure, the live model is untouched.
    pub async fn rebuild(
        &self,
        reader: &LogReader,
        to: Option<i64>,
        page: i64,
        progress: impl FnMut(i64, i64) + Send,
    ) -> Result<Rebuilt, ProjectionError> {
        self.build(reader, to, page, progress)
            .await
            .map_err(|failure| match failure {
                BuildFailure::Store(err) => err,
                BuildFailure::Event { position, error } => ProjectionError::Rebuild {
                    name: self.projection.name().to_owned(),
                    problem: format!("the event at position {position} failed: {error}"),
                },
            })
    }

    async fn build(
        &self,
        reader: &LogReader,
        to: Option<i64>,
        page: i64,
        mut progress: impl FnMut(i64, i64) + Send,
    ) -> Result<Rebuilt, BuildFailure> {
        let skipped = self.record().await?.0.skipped;
        let generation = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let build = self.slot_key(Slot::Build);
        let mut conn = self.conn.clone();
        let () = conn
            .hset_multiple(
                &build,
                &[("generation", generation.as_str()), ("position", "0")],
            )
            .await
            .map_err(|err| redis_error(&err))?;
        let target = match to {
            Some(to) => to,
            None => reader.head().await.map_err(ProjectionError::from)?.position,
        };
        let mut position = 0;
        let mut events = 0u64;
        let built: Result<(), BuildFailure> = async {
            while position < target {
                let last = target.min(position.saturating_add(page.max(1)));
                let batch: Vec<RecordedEvent> = reader
                    .read_range(position + 1, last)
                    .try_collect()
                    .await
                    .map_err(ProjectionError::from)?;
                if batch.is_empty() {
                    break;
                }
                events += batch.len() as u64;
                position = self.build_page(&batch, &skipped).await?;
                progress(position, target);
            }
            Ok(())
        }
        .await;
        if let Err(failure) = built {
            self.remove_generation(&generation).await;
            let _: Result<(), _> = conn.del(&build).await;
            return Err(failure);
        }
        let answer: Vec<redis::Value> = self
            .swap
            .key(self.meta_key())
            .key(&build)
            .arg(&generation)
            .arg(position)
            .arg(self.projection.version())
            .invoke_async(&mut conn)
            .await
            .map_err(|err| redis_error(&err))?;
        if !matches!(answer.first(), Some(redis::Value::Int(1))) {
            self.remove_generation(&generation).await;
            return Err(self.interrupted().into());
        }
        self.remove_other_generations(&generation).await?;
        sqlx::query(
            "UPDATE projection_checkpoints
                SET version = $2, position = $3, status = 'running', parked_position = NULL,
                    parked_error = NULL, parked_at = NULL, updated_at = now()
              WHERE name = $1",
        )
        .bind(self.projection.name())
        .bind(self.projection.version())
        .bind(position)
        .execute(&self.pool)
        .await
        .map_err(ProjectionError::from)?;
        self.mirrored_position.store(position, Ordering::Relaxed);
        Ok(Rebuilt { events, position })
    }

    /// Applies one page of the log to the build; on a failure, finds the event that fails by
    /// applying the page's events one at a time. Returns the build's position.
    async fn build_page(
        &self,
        batch: &[RecordedEvent],
        skipped: &[i64],
    ) -> Result<i64, BuildFailure> {
        let whole = match self.apply_to(Slot::Build, batch, skipped).await {
            Ok(applied) => applied,
            Err(BatchError::Apply(_)) => {
                let mut position = 0;
                for event in batch {
                    position = match self
                        .apply_to(Slot::Build, std::slice::from_ref(event), skipped)
                        .await
                    {
                        Ok(Applied::Through { position }) => position,
                        Ok(_) => return Err(self.interrupted().into()),
                        Err(BatchError::Apply(err)) => {
                            return Err(BuildFailure::Event {
                                position: event.global_position,
                                error: err.to_string(),
                            });
                        }
                        Err(BatchError::Store(err)) => return Err(self.store(err).into()),
                    };
                }
                Applied::Through { position }
            }
            Err(BatchError::Store(err)) => return Err(self.store(err).into()),
        };
        match whole {
            Applied::Through { position } => Ok(position),
            Applied::Gap { .. } | Applied::Parked(_) => Err(self.interrupted().into()),
        }
    }

    /// The live model is gone from under a worker: Redis lost or flushed it, or another
    /// version's worker rebuilt it.
    fn lost(&self) -> ProjectionError {
        ProjectionError::ModelLost(self.projection.name().to_owned())
    }

    fn interrupted(&self) -> ProjectionError {
        ProjectionError::Rebuild {
            name: self.projection.name().to_owned(),
            problem: "another rebuild of this model started meanwhile".to_owned(),
        }
    }

    /// A store failure during a build; a vanished build slot means another build took over.
    fn store(&self, err: ProjectionError) -> ProjectionError {
        match err {
            ProjectionError::NotSetUp(_) => self.interrupted(),
            other => other,
        }
    }

    /// Removes the keys of a failed build; a leftover is removed by the next rebuild.
    async fn remove_generation(&self, generation: &str) {
        if let Err(err) = self
            .remove_matching(&format!("{}*", self.space(generation)), |_| true)
            .await
        {
            tracing::warn!(
                projection = self.projection.name(),
                "could not remove an abandoned build: {err}"
            );
        }
    }

    /// Removes every key of the model but `meta`, the build slot and `keep`'s.
    async fn remove_other_generations(&self, keep: &str) -> Result<u64, ProjectionError> {
        let keep = self.space(keep);
        let (meta, build) = (self.meta_key(), self.slot_key(Slot::Build));
        self.remove_matching(&format!("{}:*", self.base), |key| {
            !key.starts_with(&keep) && key != meta && key != build
        })
        .await
    }

    async fn remove_matching(
        &self,
        pattern: &str,
        remove: impl Fn(&str) -> bool,
    ) -> Result<u64, ProjectionError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|err| redis_error(&err))?;
            let doomed: Vec<&String> = keys.iter().filter(|key| remove(key)).collect();
            if !doomed.is_empty() {
                let n: u64 = conn.unlink(doomed).await.map_err(|err| redis_error(&err))?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Every key of the live model with its hash, by its name inside the generation, and the
    /// position the model stands at: for comparing models and for tests. `None` when there is
    /// no live model.
    pub async fn dump(&self) -> Result<Option<(i64, BTreeMap<String, Hash>)>, ProjectionError> {
        let Some(state) = self.slot(Slot::Live).await? else {
            return Ok(None);
        };
        let space = self.space(&state.generation);
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{space}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|err| redis_error(&err))?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut model = BTreeMap::new();
        for key in keys {
            let hash: Hash = conn.hgetall(&key).await.map_err(|err| redis_error(&err))?;
            if !hash.is_empty() {
                model.insert(key[space.len()..].to_owned(), hash);
            }
        }
        Ok(Some((state.position, model)))
    }
}

impl<P: RedisProjection> Target for RedisModel<P> {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Rebuilds the model when Redis holds no live model of this version: a first start, a
    /// new version, or a lost or flushed Redis. Nothing is rebuilt while the projection is
    /// parked; a rebuild that fails on an event parks it there.
    async fn prepare(&self, reader: &LogReader, page: i64) -> Result<(), ProjectionError> {
        let (record, new_record) = self.record().await?;
        if let Some(parked) = record.parked {
            return Err(ProjectionError::Parked {
                name: self.projection.name().to_owned(),
                parked,
            });
        }
        let live = self.slot(Slot::Live).await?;
        let reason = match live {
            Some(state) if state.version == Some(self.projection.version()) => {
                match self.foreign(&state, reader, new_record).await? {
                    None => return Ok(()),
                    Some(reason) => {
                        tracing::warn!(
                            projection = self.projection.name(),
                            "the Redis model belongs to another log ({reason}): the database was recreated or restored under the same key prefix; building it again from this log"
                        );
                        reason
                    }
                }
            }
            Some(SlotState {
                version: Some(built),
                ..
            }) => format!(
                "it was built by version {built}, this is version {}",
                self.projection.version()
            ),
            _ => "Redis holds none".to_owned(),
        };
        tracing::info!(
            projection = self.projection.name(),
            "building the Redis model from the log: {reason}"
        );
        match self.build(reader, None, page, |_, _| {}).await {
            Ok(_) => Ok(()),
            Err(BuildFailure::Store(err)) => Err(err),
            Err(BuildFailure::Event { position, error }) => {
                pg::park(&self.pool, self.projection.name(), position, &error).await?;
                Err(ProjectionError::Parked {
                    name: self.projection.name().to_owned(),
                    parked: Parked { position, error },
                })
            }
        }
    }

    async fn checkpoint(&self) -> Result<Checkpoint, ProjectionError> {
        // The record exists once the model was prepared; only a missing one is written.
        let record = match pg::checkpoint(&self.pool, self.projection.name()).await? {
            Some(record) => record,
            None => self.record().await?.0,
        };
        let live = self.slot(Slot::Live).await?;
        let Some(live) = live.filter(|state| state.version == Some(self.projection.version()))
        else {
            return Err(self.lost());
        };
        self.mirror(live.position, true).await?;
        Ok(Checkpoint {
            version: self.projection.version(),
            position: live.position,
            parked: record.parked,
            skipped: record.skipped,
        })
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<Applied, BatchError> {
        let record = pg::checkpoint(&self.pool, self.projection.name())
            .await
            .map_err(BatchError::Store)?
            .ok_or_else(|| {
                BatchError::Store(ProjectionError::NotSetUp(self.projection.name().to_owned()))
            })?;
        if let Some(parked) = record.parked {
            return Ok(Applied::Parked(Parked {
                position: parked.position,
                error: parked.error,
            }));
        }
        let applied = self.apply_to(Slot::Live, events, &record.skipped).await?;
        if let Applied::Through { position } = applied {
            self.mirror(position, false)
                .await
                .map_err(BatchError::Store)?;
        }
        Ok(applied)
    }
}

/// What a read of a live Redis model found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Redis holds no live model of the reader's version (being built, lost, or of another
    /// version): ask PostgreSQL.
    Unavailable,
    /// The model, standing at `position`, holds `value` (`None`: it holds nothing there).
    Found {
        /// The log position the model stands at.
        position: i64,
        /// What it holds.
        value: Option<T>,
    },
}

/// Reads one live Redis model: one round trip per read, which sees the live generation only.
#[derive(Clone)]
pub struct ModelReader {
    conn: ConnectionManager,
    meta: String,
    version: String,
    read: Arc<redis::Script>,
}

impl std::fmt::Debug for ModelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelReader")
            .field("meta", &self.meta)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ModelReader {
    /// A reader of the model `name` at `version`, under the key prefix `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str, name: &str, version: i32) -> Self {
        Self {
            conn,
            meta: format!("{}:meta", model_base(prefix, name)),
            version: version.to_string(),
            read: Arc::new(redis::Script::new(READ)),
        }
    }

    async fn read(&self, key: &str, field: &str) -> Result<redis::Value, ProjectionError> {
        let mut conn = self.conn.clone();
        self.read
            .key(&self.meta)
            .arg(&self.version)
            .arg(key)
            .arg(field)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| redis_error(&err))
    }

    /// The hash `key` of the live model.
    pub async fn hash(&self, key: &str) -> Result<Lookup<Hash>, ProjectionError> {
        let answer = self.read(key, "").await?;
        Self::found(&answer, |value| {
            let hash: Hash = redis::from_redis_value(&value).ok()?;
            (!hash.is_empty()).then_some(hash)
        })
    }

    /// The position the live model stands at; `None` when Redis holds no live model of
    /// this version.
    pub async fn position(&self) -> Result<Option<i64>, ProjectionError> {
        let answer = self.read("", "position").await?;
        Ok(match Self::found(&answer, |_| Some(()))? {
            Lookup::Found { position, .. } => Some(position),
            Lookup::Unavailable => None,
        })
    }

    /// One field of the hash `key` of the live model.
    pub async fn field(&self, key: &str, field: &str) -> Result<Lookup<String>, ProjectionError> {
        if field.is_empty() {
            return Err(ProjectionError::Redis(
                "a field name cannot be empty".into(),
            ));
        }
        let answer = self.read(key, field).await?;
        Self::found(&answer, |value| redis::from_redis_value(&value).ok())
    }

    fn found<T>(
        answer: &redis::Value,
        value: impl FnOnce(redis::Value) -> Option<T>,
    ) -> Result<Lookup<T>, ProjectionError> {
        let parts: Vec<redis::Value> = redis::from_redis_value(answer)
            .map_err(|err| ProjectionError::Redis(format!("unexpected answer: {err}")))?;
        let mut parts = parts.into_iter();
        match parts.next() {
            Some(redis::Value::Int(1)) => {
                let position: i64 = parts
                    .next()
                    .and_then(|p| redis::from_redis_value(&p).ok())
                    .ok_or_else(|| ProjectionError::Redis("the model holds no position".into()))?;
                Ok(Lookup::Found {
                    position,
                    value: parts.next().and_then(value),
                })
            }
            _ => Ok(Lookup::Unavailable),
        }
    }
}
