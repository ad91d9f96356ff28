//! The unit of work that every command runs in: load the aggregates it needs, let each
//! decide, and append everything they decided in one atomic write.
//!
//! cqrs-es's `CqrsFramework` executes a command against one aggregate. Some commands must
//! keep an invariant across aggregates (a registration claims the email address and creates
//! the user; a login opens a session and clears the user's failure count), so the platform
//! runs its commands in a [`UnitOfWork`] instead: it loads any number of aggregates through
//! an [`EventLog`], hands each its command through the aggregate's own `handle` (the same
//! cqrs-es `Aggregate` trait, so `TestFramework` tests the same code), collects the events
//! with the command's metadata, and commits them with one [`EventLog::append`], which the
//! event store makes all-or-nothing across aggregates. If any aggregate moved on in the
//! meantime the whole unit fails with [`CommandError::Conflict`], and
//! [`run`] runs the command again from the start, on fresh state.

use std::collections::HashMap;
use std::future::Future;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use domain::Tenanted;
use serde_json::Value;
use uuid::Uuid;

use crate::metadata::CommandMetadata;

/// Where a committed write landed: the global positions of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The position of the write's first event.
    pub first_position: i64,
    /// The position of its last event: a query can wait until a projection reaches it.
    pub last_position: i64,
}

/// Why the event log could not load or append.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An aggregate moved on since it was loaded; nothing was written.
    #[error("aggregate {aggregate_type}/{aggregate_id} changed concurrently")]
    Conflict {
        /// The aggregate's type.
        aggregate_type: String,
        /// The aggregate's id.
        aggregate_id: String,
    },
    /// The store is unreachable; nothing was written (or, for a load, nothing read).
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// Any other failure of the store, or events it cannot accept.
    #[error("the event store failed: {0}")]
    Failed(String),
}

/// The event log as the application layer needs it. The event store implements it.
pub trait EventLog: Send + Sync {
    /// The events of one aggregate, in sequence order.
    fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<Vec<SerializedEvent>, LogError>> + Send;

    /// Appends the events of several aggregates (one list per aggregate, each continuing
    /// that aggregate's sequence) atomically: all or none.
    fn append(
        &self,
        writes: Vec<Vec<SerializedEvent>>,
    ) -> impl Future<Output = Result<Committed, LogError>> + Send;

    /// The global position of one event, if it exists.
    fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> impl Future<Output = Result<Option<i64>, LogError>> + Send;
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The domain refused the command; nothing was written.
    #[error(transparent)]
    Refused(E),
    /// The actor lacks the permission the command needs; nothing was written.
    #[error("this needs the `{0}` permission")]
    Forbidden(domain::identity::rbac::Permission),
    /// The input does not parse; the message names the field.
    #[error("{0}")]
    BadInput(String),
    /// An aggregate changed concurrently, more often than retries allowed.
    #[error("{0}; try again")]
    Conflict(LogError),
    /// The store (or another service the command needs) failed; nothing was written.
    #[error("{0}")]
    Infrastructure(String),
}

impl<E> From<LogError> for CommandError<E> {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Conflict { .. } => Self::Conflict(err),
            other => Self::Infrastructure(other.to_string()),
        }
    }
}

/// An aggregate loaded into a unit of work, with the version it was loaded at.
#[derive(Debug)]
pub struct Loaded<A: Aggregate> {
    id: String,
    state: A,
    version: usize,
}

impl<A: Aggregate> Loaded<A> {
    /// The aggregate's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its current state, including what this unit of work decided so far.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// How many events it has in the log (0: it does not exist yet).
    pub fn version(&self) -> usize {
        self.version
    }
}

/// One command's work: the aggregates it loaded and the events they decided, waiting for
/// [`UnitOfWork::commit`].
#[derive(Debug)]
pub struct UnitOfWork<'a, L: EventLog> {
    log: &'a L,
    metadata: Value,
    /// Set when the metadata carries a client IP or a user agent that was not sealed:
    /// nothing is committed.
    unsealed_ip: bool,
    /// The tenant every event of the unit is recorded under: the metadata's, or else the
    /// one the aggregates name.
    tenant: Option<Uuid>,
    /// Pending events per aggregate, in the order aggregates first decided something.
    pending: Vec<Vec<SerializedEvent>>,
    slots: HashMap<(String, String), usize>,
}

impl<'a, L: EventLog> UnitOfWork<'a, L> {
    /// A unit of work whose events carry `metadata`.
    pub fn new(log: &'a L, metadata: &CommandMetadata) -> Self {
        let map: serde_json::Map<String, Value> = metadata
            .to_map()
            .into_iter()
            .map(|(key, value)| (key, Value::String(value)))
            .collect();
        Self {
            log,
            metadata: Value::Object(map),
            unsealed_ip: matches!(
                metadata.client_ip,
                Some(crate::metadata::ClientIp::Plain(_))
            ) || matches!(
                metadata.user_agent,
                Some(crate::metadata::UserAgent::Plain(_))
            ),
            tenant: metadata.tenant_id,
            pending: Vec::new(),
            slots: HashMap::new(),
        }
    }

    /// Loads an aggregate by replaying its events.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, LogError> {
        let events = self.log.load(A::TYPE, id).await?;
        let mut state = A::default();
        let mut version = 0;
        for event in events {
            let decoded: A::Event = serde_json::from_value(event.payload).map_err(|err| {
                LogError::Failed(format!(
                    "event {} #{} of {}/{id} does not decode: {err}",
                    event.event_type,
                    event.sequence,
                    A::TYPE
                ))
            })?;
            state.apply(decoded);
            version = event.sequence;
        }
        Ok(Loaded {
            id: id.to_owned(),
            state,
            version,
        })
    }

    /// Lets the aggregate decide `command`. Its events are applied to the loaded state and
    /// kept for the commit; a refusal keeps nothing.
    ///
    /// Every event of the unit is recorded in the chain of the tenant the aggregates belong
    /// to. A command whose metadata names another tenant, or that would write to the
    /// aggregates of two tenants, is refused as bad input and decides nothing.
    pub async fn handle<A: Aggregate + Clone + Tenanted>(
        &mut self,
        aggregate: &mut Loaded<A>,
        command: A::Command,
        services: &A::Services,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        let mut state = aggregate.state.clone();
        let sink = EventSink::default();
        state
            .handle(command, services, &sink)
            .await
            .map_err(CommandError::Refused)?;
        let events = sink.collect().await;
        if !events.is_empty()
            && let Some(owner) = state.tenant_uuid()
        {
            match self.tenant {
                None => self.tenant = Some(owner),
                Some(tenant) if tenant == owner => {}
                Some(tenant) => {
                    return Err(CommandError::BadInput(format!(
                        "{}/{} belongs to tenant {owner}, not to tenant {tenant} that this command acts in",
                        A::TYPE,
                        aggregate.id
                    )));
                }
            }
        }
        let key = (A::TYPE.to_owned(), aggregate.id.clone());
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot,
            None => {
                self.pending.push(Vec::new());
                self.slots.insert(key, self.pending.len() - 1);
                self.pending.len() - 1
            }
        };
        let mut serialized = Vec::with_capacity(events.len());
        for event in &events {
            aggregate.version += 1;
            let payload = serde_json::to_value(event).map_err(|err| {
                CommandError::Infrastructure(format!(
                    "event {} of {} does not serialize: {err}",
                    event.event_type(),
                    A::TYPE
                ))
            })?;
            serialized.push(SerializedEvent::new(
                aggregate.id.clone(),
                aggregate.version,
                A::TYPE.to_owned(),
                event.event_type(),
                event.event_version(),
                payload,
                self.metadata.clone(),
            ));
        }
        aggregate.state = state;
        if let Some(pending) = self.pending.get_mut(slot) {
            pending.extend(serialized);
        }
        Ok(events)
    }

    /// Whether anything was decided.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(Vec::is_empty)
    }

    /// Appends everything decided, atomically. Returns `None` when nothing was decided.
    /// Refuses to write events whose metadata holds a client IP or a user agent that was
    /// not sealed.
    pub async fn commit(self) -> Result<Option<Committed>, LogError> {
        if self.unsealed_ip && !self.is_empty() {
            return Err(LogError::Failed(
                "the client IP and user agent must be sealed as personal data before events \
                 are written"
                    .into(),
            ));
        }
        let tenant = self.tenant.map(|tenant| Value::String(tenant.to_string()));
        let writes: Vec<Vec<SerializedEvent>> = self
            .pending
            .into_iter()
            .filter(|events| !events.is_empty())
            .map(|mut events| {
                if let Some(tenant) = &tenant {
                    for event in &mut events {
                        if let Value::Object(map) = &mut event.metadata {
                            map.insert(crate::metadata::TENANT_ID.to_owned(), tenant.clone());
                        }
                    }
                }
                events
            })
            .collect();
        if writes.is_empty() {
            return Ok(None);
        }
        self.log.append(writes).await.map(Some)
    }
}

/// What an idempotent command returns: its output the first time, the recorded result
/// when its key was already used for the same command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O, R> {
    /// The command ran now.
    Done(O),
    /// The key was used before for the same command; nothing was written this time.
    Replayed(R),
}

/// A command that can be made idempotent: it is serializable (for its fingerprint) and
/// says which part of its output to record for a replay.
pub trait Idempotent<L: EventLog>: Command<L> + serde::Serialize {
    /// What a replay returns. Never a secret: it is stored in the log.
    type Recorded: serde::Serialize + serde::de::DeserializeOwned + Send;

    /// The part of the output to record.
    fn record(output: &Self::Output) -> Self::Recorded;
}

/// Runs `command` like [`run`], honouring the metadata's idempotency key: the first use of
/// a key records the command's fingerprint and result in the same atomic write as its
/// events, last; a later use with the same command returns the recorded result, with the
/// last position of that write (as both first and last position), and writes nothing; a later use with another command is refused
/// with [`CommandError::BadInput`]. Without a key this is [`run`].
pub async fn run_idempotent<L: EventLog, C: Idempotent<L>>(
    log: &L,
    metadata: &CommandMetadata,
    command: &C,
) -> Result<(Outcome<C::Output, C::Recorded>, Option<Committed>), CommandError<C::Error>> {
    use crate::idempotency::{self, IdempotencyRecord, Record};

    let Some(key) = metadata.idempotency_key.as_deref() else {
        let (output, committed) = run(log, metadata, command).await?;
        return Ok((Outcome::Done(output), committed));
    };
    idempotency::check_key(key).map_err(CommandError::BadInput)?;
    let fingerprint = idempotency::fingerprint(command).map_err(|err| {
        CommandError::Infrastructure(format!("the command does not serialize: {err}"))
    })?;
    let record_id = idempotency::record_id(&metadata.actor_id, key);
    let mut attempt = 1;
    loop {
        let mut work = UnitOfWork::new(log, metadata);
        let mut record = work.load::<IdempotencyRecord>(&record_id).await?;
        if let Some(recorded) = record.state().recorded() {
            if recorded.fingerprint != fingerprint {
                return Err(CommandError::BadInput(
                    "this idempotency key was already used for a different request".to_owned(),
                ));
            }
            let replayed: C::Recorded =
                serde_json::from_value(recorded.result.clone()).map_err(|err| {
                    CommandError::Infrastructure(format!(
                        "the recorded result of idempotency key {key:?} does not decode: {err}"
                    ))
                })?;
            let position = log
                .position_of(IdempotencyRecord::TYPE, &record_id, record.version())
                .await?;
            let committed = position.map(|position| Committed {
                first_position: position,
                last_position: position,
            });
            return Ok((Outcome::Replayed(replayed), committed));
        }
        let output = command.decide(&mut work).await?;
        let result = serde_json::to_value(C::record(&output)).map_err(|err| {
            CommandError::Infrastructure(format!("the result does not serialize: {err}"))
        })?;
        // The record is written last, so its position is the write's last position.
        work.handle(
            &mut record,
            Record {
                fingerprint: fingerprint.clone(),
                result,
            },
            &(),
        )
        .await
        .map_err(|_| CommandError::Infrastructure("the idempotency record refused".into()))?;
        match work.commit().await {
            Ok(committed) => return Ok((Outcome::Done(output), committed)),
            Err(LogError::Conflict { .. }) if attempt < MAX_ATTEMPTS => attempt += 1,
            Err(err) => return Err(err.into()),
        }
    }
}

/// How many times [`run`] tries a command whose aggregates keep changing under it.
pub const MAX_ATTEMPTS: usize = 5;

/// A command written against a unit of work: it loads, decides, and returns its output;
/// [`run`] commits.
pub trait Command<L: EventLog>: Sync {
    /// What the command returns to its caller.
    type Output: Send;
    /// The domain's refusal.
    type Error: Send;

    /// Loads what it needs and lets the aggregates decide. Runs again, from the start, when
    /// the commit meets a concurrent change.
    fn decide(
        &self,
        work: &mut UnitOfWork<'_, L>,
    ) -> impl Future<Output = Result<Self::Output, CommandError<Self::Error>>> + Send;
}

/// Runs `command` in a unit of work and commits it, retrying on concurrent changes up to
/// [`MAX_ATTEMPTS`] times. Returns the output and where its events landed (`None` when it
/// decided nothing).
pub async fn run<L: EventLog, C: Command<L>>(
    log: &L,
    metadata: &CommandMetadata,
    command: &C,
) -> Result<(C::Output, Option<Committed>), CommandError<C::Error>> {
    let mut attempt = 1;
    loop {
        let mut work = UnitOfWork::new(log, metadata);
        let output = command.decide(&mut work).await?;
        match work.commit().await {
            Ok(committed) => return Ok((output, committed)),
            Err(LogError::Conflict { .. }) if attempt < MAX_ATTEMPTS => attempt += 1,
            Err(err) => return Err(err.into()),
        }
    }
}
