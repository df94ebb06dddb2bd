//! Sessions and token revocation: the design's `session:{session_id}` and
//! `blacklist:{token_jti}`, an index of each user's sessions, and their
//! source of truth in PostgreSQL.
//!
//! # Where they live
//! - **PostgreSQL** (`sessions`, `revoked_tokens`; [`store`]) is the source
//!   of truth, as for everything else the cache holds: a sign-in inserts
//!   its session row, a sign-out ends rows and records the revoked token.
//! - **Redis** serves the checks. A **session** holds the design's data
//!   (user, e-mail, roles, permissions, last activity, IP, device) with a
//!   sliding TTL (`CACHE_TTL_SESSION_DATA_SECS`, the idle timeout): reading
//!   it for a request refreshes it in the same request (`read.lua`; a tombstone keeps its
//!   own TTL). Its
//!   key carries its **user's** hash tag (`session:{user}:<sid>`; every
//!   token names both), so that the user's **session index**
//!   (`user_sessions:{user}`), their sessions and their WebSocket registry
//!   (`ws_conn:{user}`) share a slot: signing in writes the session and its
//!   index entry in one script, and signing out — of one session or of all —
//!   replaces the sessions with **tombstones** (`ended`, kept as long as a
//!   token of theirs could be valid) and takes their sockets out of the
//!   registry in one script ([`end`]). A **blacklist entry** revokes one
//!   token by its `jti` until the token's `exp` plus [`REVOCATION_GRACE`],
//!   the largest clock leeway a verifier here allows; blacklist entries live
//!   in the durable Redis (`noeviction`).
//!
//! # A request's check ([`authenticate`])
//! 1. **Redis** — the session (`read.lua`) and the blacklist (`EXISTS`), sent
//!    together with the route's other requests: one round-trip time, and
//!    **no PostgreSQL query** when the session is there.
//! 2. **Missing from Redis** (evicted: the cache group is `volatile-lru`;
//!    or idled out): PostgreSQL says whether the session is live, and a live
//!    one is put back — an eviction does not sign its user out.
//! 3. **Redis cannot answer** (error, timeout, breaker open): the same
//!    PostgreSQL statement decides — a signed-in caller is admitted, a
//!    signed-out token refused (401). It runs concurrently with the route's
//!    own database read (both start when Redis fails).
//!
//! A definite refusal always wins: a "revoked" from the blacklist, or a
//! tombstone, refuses whatever else failed.
//!
//! # Idle timeout without a write per request
//! While Redis holds a session its TTL is the idle timeout, exactly.
//! PostgreSQL learns of activity at most every `SESSION_ACTIVITY_SYNC_SECS`
//! (default 120 s) per session: the request that finds the session's last
//! recorded activity older than that sends the update **beside** itself —
//! the response never waits for it ([`sync_activity`]); while Redis is down,
//! the fallback statement records it. PostgreSQL counts a session as live
//! while its last recorded activity is within the idle timeout **plus** that
//! interval, so an active session is never refused early, and **an idle
//! session may outlive its timeout by at most `SESSION_ACTIVITY_SYNC_SECS`
//! when Redis no longer holds it** (an outage or an eviction).
//!
//! # A sign-out while Redis is down, and after
//! It is recorded in PostgreSQL (so the fallback refuses the token at
//! once) and marked **pending**: Redis, when it answers again, may still
//! hold the session and no blacklist entry, and must not be trusted until
//! it has been told. Three things tell it ([`apply_pending`], the
//! **sweep**, which writes the tombstones and blacklist entries and
//! queues the close of the sockets it takes out of the registry):
//! 1. **An execution environment that saw Redis fail** (any call failed
//!    for want of Redis since its last sweep, or it marked a sign-out
//!    pending itself) does not trust Redis's session or blacklist answer
//!    until it has swept: its next check sweeps first ([`recovered`]); until
//!    a sweep completes, PostgreSQL decides. So an environment that saw the
//!    outage never admits, from Redis, a token signed out during it.
//! 2. **`ws-sender`**, which runs all the time (every minute, until its
//!    deadline), sweeps every [`SWEEP_EVERY`]: an environment that did not
//!    see the outage — idle during it, or on the other side of a partition
//!    that hid it — may admit such a token from Redis until then (docs/
//!    security.md → A sign-out during a Redis outage).
//! 3. `audit-flush`, every minute: the backstop.
//!
//! The sign-out itself insists on reaching Redis ([`Redis::run_insisting`]:
//! past an open breaker, and again on a fresh connection), so that an
//! environment whose connection broke during an outage does not make the
//! sign-outs after it pending ones.
//!
//! [`Redis::run_insisting`]: crate::infra::connection::Redis::run_insisting

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::delivery_queue::DeliveryQueue;
use crate::infra::connection::{Redis, RedisUnavailable};
use crate::infra::db::{Db, DbError};
use crate::infra::keys::{ClientId, Keyspace, UserId};

// The concerns, one file each (the whole is described above).
mod check;
mod fallback;
mod sign_in;
mod sign_out;
pub(crate) mod store;
mod sweep;

pub use check::{
    CredentialState, Held, Verdict, authenticate, check, is_blacklisted, is_revoked, sync_activity,
};
pub use fallback::reload;
#[cfg(feature = "test-variants")]
pub use sign_in::create_in_redis_only;
pub use sign_in::{GROUP_PERMISSIONS, SignIn, create, create_as, sign_in};
pub use sign_out::{Ended, Ending, blacklist, blacklist_ttl, end, index};
pub use sweep::{
    Recovery, SWEEP_EVERY, SweepReport, apply_pending, delete_expired_revocations, recovered,
};

/// A blacklist entry outlives its token's `exp` by this much: the largest
/// clock leeway any verifier here accepts (`AUTH_LEEWAY_SECS` is at most
/// 300 s; the routes allow 5 s; API Gateway's JWT authorizer none).
pub const REVOCATION_GRACE: Duration = Duration::from_secs(300);

/// How long a tombstone (an ended session) stays in Redis: as long as a
/// token naming it could still be valid — Cognito's longest access-token
/// validity (a day) plus [`REVOCATION_GRACE`]. Evicted earlier, PostgreSQL
/// still says "ended".
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(86_400 + 300);

/// The value of an ended session's key.
pub(crate) const TOMBSTONE: &str = "ended";

/// What sessions and revocation use: the cache Redis for sessions and
/// their index, the durable one for blacklist entries, PostgreSQL for
/// both's source of truth, and the timings.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) durable: Redis,
    pub(crate) db: Db,
    pub(crate) session_ttl: Duration,
    pub(crate) index_ttl: Duration,
    pub(crate) activity_sync: Duration,
    /// Where the close of the sockets a sign-out ends is queued.
    pub(crate) queue: DeliveryQueue,
    /// This execution environment's recovery from Redis outages (shared
    /// by every clone: one per environment).
    pub(crate) recovery: Arc<Recovery>,
    /// The design before PostgreSQL held sessions, for the tests that
    /// prove the fallback (`test-variants` only: never in a function).
    #[cfg(feature = "test-variants")]
    pub variants: SessionVariants,
}

/// A real alternative design, for the tests that prove the one built
/// (`test-variants` only).
#[cfg(feature = "test-variants")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionVariants {
    /// Redis alone decides, as before PostgreSQL became the sessions'
    /// source of truth: Redis unable to answer is a 503, a session Redis
    /// does not hold is no session.
    pub redis_only: bool,
}

/// Whether this is the tests' Redis-only design ([`SessionVariants`]);
/// always false in a function.
fn redis_only(sessions: &Sessions) -> bool {
    #[cfg(feature = "test-variants")]
    {
        sessions.variants.redis_only
    }
    #[cfg(not(feature = "test-variants"))]
    {
        let _ = sessions;
        false
    }
}

/// The design's session data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The signed-in user.
    pub user_id: UserId,
    /// Their e-mail address.
    pub email: String,
    /// Their roles (`customer`, `service`, …).
    pub roles: Vec<String>,
    /// Their permissions.
    pub permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    /// The activity PostgreSQL has recorded last (sign-in, then at most
    /// every `SESSION_ACTIVITY_SYNC_SECS`).
    pub last_activity: OffsetDateTime,
    /// The IP address it was created from, when known.
    pub ip_address: Option<String>,
    /// The device it was created on, when known.
    pub device_info: Option<String>,
}

/// The design's blacklist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlacklistEntry {
    /// The user, for a user's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The client, for a service's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    #[serde(with = "time::serde::rfc3339")]
    pub blacklisted_at: OffsetDateTime,
    pub reason: String,
}

/// Why a session could not be stored or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// PostgreSQL (the source of truth) failed: nothing was recorded.
    #[error("the session store is unavailable")]
    Database(#[from] DbError),
    /// Redis failed where it had to answer (tests, operations).
    #[error("Redis is unavailable: {0}")]
    Redis(#[from] RedisUnavailable),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
