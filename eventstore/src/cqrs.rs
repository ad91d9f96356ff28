//! Ready-made cqrs-es frameworks over the [`EventRepository`].

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, CqrsFramework, Query};

use crate::repository::EventRepository;

/// A cqrs-es framework whose events live in the platform's event log.
pub type PlatformCqrs<A> = CqrsFramework<A, PersistedEventStore<EventRepository, A>>;

/// A framework that loads aggregates by replaying all of their events.
pub fn platform_cqrs<A: Aggregate>(
    repository: EventRepository,
    queries: Vec<Box<dyn Query<A>>>,
    services: A::Services,
) -> PlatformCqrs<A> {
    CqrsFramework::new(
        PersistedEventStore::new_event_store(repository),
        queries,
        services,
    )
}

/// A framework that stores a snapshot every `snapshot_size` events, in the same transaction
/// as the events, and loads aggregates from the snapshot plus the events after it.
pub fn platform_snapshot_cqrs<A: Aggregate>(
    repository: EventRepository,
    queries: Vec<Box<dyn Query<A>>>,
    snapshot_size: usize,
    services: A::Services,
) -> PlatformCqrs<A> {
    CqrsFramework::new(
        PersistedEventStore::new_snapshot_store(repository, snapshot_size.max(1)),
        queries,
        services,
    )
}
