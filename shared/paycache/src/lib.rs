//! `paycache`: the cache crate every function shares.
//!
//! Modules follow the sections of the design (`shared/seed/cache-design.md`
//! in the steering repository), arranged in layers; imports point down:
//!
//! | layer | what | may import |
//! |---|---|---|
//! | [`edge`] | HTTP helpers and routes, event handlers, the authorizer | everything below |
//! | [`app`] | [`App`]: every capability, built once per execution environment | `domain`, `patterns`, `infra` |
//! | [`domain`] | profiles, balances, audit log, transactions, sessions, fraud, real-time, warming, health, node metrics, invalidation — each a small struct holding what it uses | `patterns`, `infra` |
//! | [`patterns`] | the design's caching patterns: cache-aside, rate limiting, Pub/Sub | `infra` |
//! | [`infra`] | configuration, Redis, PostgreSQL, secrets, AWS, TLS, telemetry, keys | nothing above |
//!
//! `tests/import_cycles.rs` checks both: no import cycle among the
//! modules, and no import up the layers. Each module states its guarantee
//! and why it holds. The modules are also re-exported at the crate root
//! (`paycache::balance`, `paycache::config`, …), the paths the functions and
//! tests use.

#![warn(missing_docs)]

pub mod app;
pub mod domain;
pub mod edge;
pub mod infra;
pub mod patterns;

pub use domain::{
    audit, balance, cloudwatch, delivery, fraud, health, identity, invalidation, money,
    node_metrics, profile, realtime, sessions, transactions, warming,
};
pub use edge::{auth, events, http, routes, signin};
pub use infra::{aws, breaker, config, connection, db, keys, secrets, telemetry};
pub use patterns::{cache_aside, pubsub, ratelimit};

pub use app::{App, InitError, init_logging};
pub use cache_aside::{CacheAside, CacheStatus, Cached};
pub use config::Config;
pub use connection::{Redis, RedisUnavailable};
pub use keys::Keyspace;
/// The Lambda runtime the function mains run on (`event_function!`).
pub use lambda_http::lambda_runtime;
