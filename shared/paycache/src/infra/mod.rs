//! Infrastructure: configuration, the Redis connection (standalone or cluster, TLS, circuit breaker), PostgreSQL, secrets, the AWS SDK, TLS roots, telemetry, and the key space every layer above builds keys with. Imports nothing above it.

pub mod aws;
pub mod breaker;
pub mod config;
pub mod connection;
pub mod db;
pub mod fetch;
pub mod keys;
pub mod secrets;
pub mod sslmode;
pub mod telemetry;
pub(crate) mod tls;
