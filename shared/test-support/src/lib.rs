//! Real services for tests: `redis-server` processes (standalone and a
//! 3-primary/3-replica cluster) and PostgreSQL schemas — no mocks — and the
//! fixtures the tests build on them: a [`world::World`] (an `App` on its
//! own key prefix and schema), tokens and claims ([`tokens`]), and the
//! real-time rig ([`realtime`]: the local WebSocket gateway and clients).
//!
//! Isolation: every test gets its own key prefix and its own PostgreSQL
//! schema, so tests run in parallel against shared servers and never see each
//! other's state. Tests that stop, pause or kill Redis start their own
//! [`RedisServer`].
//!
//! Shared servers come from the environment `make test` sets up:
//! - `PAYCACHE_TEST_REDIS_URL`: a standalone Redis;
//! - `PAYCACHE_TEST_CLUSTER_URLS`: comma-separated seed nodes of a cluster;
//! - `PAYCACHE_TEST_PG`: a libpq key/value connection string to a database
//!   the tests may create schemas in.
//!
//! Without the Redis variables a test starts private servers (slower, same
//! behaviour). Without `PAYCACHE_TEST_PG` a test fails and says to run
//! `make test`, which starts PostgreSQL.
#![allow(clippy::unwrap_used)]

// One file per concern.
pub mod logs;
mod postgres;
mod proxy;
pub mod realtime;
mod scratch;
mod servers;
pub mod tokens;
pub mod world;

pub use postgres::{TestDb, config, insert_transaction, insert_user, insert_wallet, seed_user_id};
pub use proxy::HoldingProxy;
pub use scratch::{TempDir, random_u32, random_uuid};
pub use servers::{
    CommandMonitor, RawRedis, RedisCluster, RedisServer, TestRedis, command_calls,
    free_cluster_port, free_port, standalone_redis,
};
