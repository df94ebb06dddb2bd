//! `paycache`: the cache crate every function shares.
//!
//! Modules follow the sections of the design (`shared/seed/cache-design.md`
//! in the steering repository): configuration, connection, keys,
//! cache-aside, … Each states its guarantee and why it holds.

pub mod app;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod balance;
pub mod breaker;
pub mod cache_aside;
pub mod cloudwatch;
pub mod config;
pub mod connection;
pub mod db;
pub mod events;
pub mod fraud;
pub mod health;
pub mod http;
pub mod invalidation;
pub mod keys;
pub mod money;
pub mod node_metrics;
pub mod profile;
pub mod pubsub;
pub mod ratelimit;
pub mod realtime;
pub mod routes;
pub mod secrets;
pub mod sessions;
pub mod telemetry;
mod tls;
pub mod transactions;
pub mod warming;

pub use app::{App, InitError, init_logging};
pub use cache_aside::{CacheAside, CacheStatus, Cached};
pub use config::Config;
pub use connection::{Redis, RedisUnavailable};
pub use keys::Keyspace;
/// The Lambda runtime the function mains run on (`event_function!`).
pub use lambda_http::lambda_runtime;
