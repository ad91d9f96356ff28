//! The composition root: the `platform` binary's commands, configuration and start-up.
//!
//! Every role of the platform (gateway, relay, projection workers) runs from this one binary,
//! alone or all together in `platform serve`. Its key decision is where configuration comes
//! from: a flag, else a `PLATFORM_*` environment variable, else a default that works on a
//! machine where PostgreSQL, NATS and Redis run locally, so that a clean clone starts with
//! no configuration at all. Only this crate knows HTTP and GraphQL.

pub mod answers;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod error;
pub mod feed;
pub mod freshness;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod operate;
pub mod ratelimit;
pub mod serve;
