//! Real-time connections: the design's `ws_conn:{user_id}` and
//! `ws_meta:{connection_id}`, and `ws_all` (every connection, for
//! announcements).
//!
//! **A connection lives no longer than the sign-in that opened it.** Each
//! entry names the session (`sid`) and the token expiry (`exp`) of the
//! `$connect` that opened it:
//!
//! - `ws_conn:{user}` is a **hash** `connection id → "<sid> <exp>"` (the
//!   design's set of ids, with what the liveness check needs). It carries
//!   the user's hash tag, as the user's sessions do, so one script
//!   ([`live`]) tells which of a user's connections may still receive
//!   frames — token not expired, session still there — and takes the
//!   others out: one round trip per user, however many connections.
//! - `ws_all:{a<s>}` is a hash `connection id → "<user> <sid> <exp>"`
//!   (with `ws_all:{a<s>}:ids`, the ids in a sorted set, for paging in id
//!   order with an exact cursor), in [`REGISTRY_SHARDS`] shards (a connection's shard is a hash of its
//!   id), each its own slot: an announcement is fanned out shard by shard,
//!   in parallel, by as many senders as hold the partitions.
//! - `ws_conn:{user}:resume` holds the connections still catching up
//!   after a reconnect (`"<connection> <wallet>" → version`, docs/realtime.md →
//!   Reconnecting): until a connection's catch-up is sent, new frames of
//!   that wallet skip it, so that it receives the missed versions first.
//! - `ws_meta:{connection}` keeps the design's fields (who, since when,
//!   last ping, client) plus the session and expiry.
//!
//! Registry entries have the design's 2-hour TTL, which `ping` refreshes —
//! only while the sign-in lives ([`ping`]). What takes a connection out of
//! the registry (a sign-out, an expired token, an ended session found by a
//! sender or a ping) also has it **closed**: `DELETE @connections/{id}`,
//! sent by `ws-sender` (`crate::domain::delivery`).
//!
//! The registry's keys have different hash tags (a user, a connection, the
//! one `ws_all`), so each operation sends its requests at once: one
//! round-trip time.

use crate::domain::sessions::Sessions;
use crate::infra::config::{ConnectionLimits, TtlConfig};
use crate::infra::connection::Redis;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{KeyFamily, SessionId, UserId};
pub use crate::infra::keys::{REGISTRY_SHARDS, shard_of};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

// One file per concern.
mod lifecycle;
mod liveness;

pub use lifecycle::{ConnectRefused, Ping, caught_up, connect, disconnect, forget, meta, ping};
#[cfg(feature = "test-variants")]
pub use liveness::registered;
pub use liveness::{Liveness, connections, entries, everyone_page, live};

/// What the connection registry uses: Redis, the registry's TTL, and the
/// sessions (a connection lives while its session does).
#[derive(Debug, Clone)]
pub struct Connections {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) ttl: TtlConfig,
    pub(crate) sessions: Sessions,
    pub(crate) limits: ConnectionLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The design's `ws_meta:{connection_id}`, plus the sign-in it belongs to.
pub struct ConnectionMeta {
    /// Who connected.
    pub user_id: UserId,
    #[serde(with = "time::serde::rfc3339")]
    /// When they connected.
    pub connected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    /// Their last `ping`.
    pub last_ping: OffsetDateTime,
    /// The client's `User-Agent`, truncated to 256 characters.
    pub client_info: Option<String>,
    /// The session the connecting token named.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The connecting token's `exp` (Unix seconds): nothing is sent after.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The sign-in a connection belongs to, as the `$connect` authorizer
/// verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user.
    pub user: UserId,
    /// Their session (`sid`).
    pub session: SessionId,
    /// The token's `exp`.
    pub expires_at: OffsetDateTime,
}

fn ttl_ms(connections: &Connections) -> u64 {
    let ttl = connections
        .ttl
        .of(KeyFamily::WsMeta)
        .unwrap_or(Duration::from_secs(7200));
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}
