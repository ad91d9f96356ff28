//! Subscriptions: the caller's tenant's events, live, resumable from a position.
//!
//! `events(filter, fromPosition)` catches up from PostgreSQL and then follows JetStream
//! (see [`crate::feed`]): every event after `fromPosition` arrives once, in log order, with
//! no gap at the switch. A client that reconnects passes the last position it saw.

use std::pin::Pin;

use async_graphql::{Context, InputObject, Json, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use domain::identity::rbac::Permission;
use eventstore::RecordedEvent;
use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::Request;
use crate::error::ApiError;
use crate::feed::{FeedError, Scope};

/// The root of every subscription.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

/// Which events to stream.
#[derive(Debug, Default, InputObject)]
pub struct EventFilter {
    /// Only these aggregate types (for example `User`); all when absent.
    pub aggregate_types: Option<Vec<String>>,
    /// Only these event types (for example `UserRegistered`); all when absent.
    pub event_types: Option<Vec<String>>,
}

/// An event of the log, as the hash chain records it.
#[derive(Debug, Clone, SimpleObject)]
pub struct Event {
    /// Its position in the global log: resume from here.
    pub position: i64,
    /// Its id.
    pub event_id: Uuid,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Its sequence within the aggregate.
    pub sequence: i64,
    /// Its type.
    pub event_type: String,
    /// The version of its payload's schema.
    pub event_version: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Its payload. Personal fields are sealed.
    pub payload: Json<serde_json::Value>,
    /// Its hash, hex.
    pub hash: String,
}

impl From<RecordedEvent> for Event {
    fn from(event: RecordedEvent) -> Self {
        Self {
            position: event.global_position,
            event_id: event.event_id,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            recorded_at: event.recorded_at,
            payload: Json(event.payload),
            hash: event.hash.to_hex(),
        }
    }
}

/// The stream a subscription yields.
type Events = Pin<Box<dyn Stream<Item = Result<RecordedEvent, FeedError>> + Send>>;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The tenant's events after `fromPosition` (0: from the beginning), then live. Needs
    /// `events:subscribe`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] filter: EventFilter,
        #[graphql(default)] from_position: i64,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Event>> + use<>> {
        let request = Request::of(ctx)?;
        let caller = request.require(Permission::EventsSubscribe).await?;
        if from_position < 0 {
            return Err(ApiError::bad_input("fromPosition", "must not be negative").into());
        }
        let scope = Scope {
            tenant: Some(caller.tenant_id),
            aggregate_types: filter.aggregate_types,
            event_types: filter.event_types,
        };
        // The feed's stream is 'static; boxing it lets this one not borrow the context.
        let events: Events = Box::pin(request.services.feed.subscribe(scope, from_position));
        Ok(events.map(|item| {
            item.map(Event::from)
                .map_err(|err| ApiError::internal(err).into())
        }))
    }
}
