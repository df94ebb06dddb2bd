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
//!   it for a request refreshes it in the same command (`GETEX … PX`). Its
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
//! 1. **Redis** — the session (`GETEX`) and the blacklist (`EXISTS`), sent
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::AsyncCommands;
use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::delivery_queue::DeliveryQueue;
use crate::domain::identity::{Denied, Principal};
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::{Db, DbError};
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ClientId, ConnectionId, Jti, SessionId, UserId};

pub(crate) mod store;

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

static SIGN_IN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sessions/sign_in.lua")));
static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("sessions/end.lua")));
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("sessions/touch.lua")));

/// How often `ws-sender` sweeps pending sign-outs into Redis (see the
/// module documentation): the bound on how long an execution environment
/// that did not see an outage may still admit a token signed out during
/// it, once Redis is reachable from the sender.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Pending sign-outs read and applied per page of a sweep.
const SWEEP_PAGE: i64 = 500;

/// An execution environment's state of recovery from Redis outages.
#[derive(Debug, Default)]
pub struct Recovery {
    /// What [`outage_marks`] was when the last complete sweep began.
    swept: AtomicU64,
    /// Sign-outs this environment marked pending (they count as a failure
    /// seen: a sweep that began before the mark did not apply it).
    marked: AtomicU64,
    /// One sweep at a time.
    sweeping: tokio::sync::Mutex<()>,
}

/// Everything this environment saw that may have left Redis behind
/// PostgreSQL: its Redis calls that failed, and its own pending marks.
fn outage_marks(sessions: &Sessions) -> u64 {
    sessions
        .redis
        .failures()
        .wrapping_add(sessions.durable.failures())
        .wrapping_add(sessions.recovery.marked.load(Ordering::Acquire))
}

/// Whether Redis's session and blacklist answers may be trusted in this
/// execution environment: yes, unless it saw Redis fail (or marked a
/// sign-out pending) since its last complete sweep — then it sweeps now
/// ([`apply_pending`], one PostgreSQL query when nothing is pending) and
/// answers whether the sweep completed. While the breaker is cooling down
/// nothing is tried (no): PostgreSQL decides. Costs three atomic loads
/// when nothing failed (and no allocation: the sweep's future, large and
/// deep, is boxed and made only when needed).
pub async fn recovered(sessions: &Sessions) -> bool {
    match recovering(sessions) {
        None => true,
        Some(sweep) => sweep.await,
    }
}

/// A boxed future that decides [`recovered`] — `None` when nothing was
/// seen to fail (the common path, without a future to nest: the routes'
/// futures are near the compiler's layout depth).
fn recovering(
    sessions: &Sessions,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> {
    if outage_marks(sessions) == sessions.recovery.swept.load(Ordering::Acquire) {
        return None;
    }
    Some(Box::pin(recover(sessions)))
}

async fn recover(sessions: &Sessions) -> bool {
    let recovery = &sessions.recovery;
    if sessions.redis.breaker().denies() || sessions.durable.breaker().denies() {
        return false;
    }
    let _one = recovery.sweeping.lock().await;
    let seen = outage_marks(sessions);
    if seen == recovery.swept.load(Ordering::Acquire) {
        return true;
    }
    match apply_pending(sessions).await {
        Ok(report) if report.complete => {
            recovery.swept.store(seen, Ordering::Release);
            if report.sessions + report.tokens > 0 {
                tracing::info!(
                    sessions = report.sessions,
                    tokens = report.tokens,
                    "Redis told of sign-outs made while this environment could not reach it"
                );
            }
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not sweep pending sign-outs: PostgreSQL decides");
            false
        }
    }
}

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

/// Creates a session under a new random id: its row in PostgreSQL and, at
/// the same time, its entry and index entry in Redis (one script). The row
/// must be written; Redis may fail (the first request reloads it).
#[tracing::instrument(skip_all, fields(user_id = %session.user_id))]
pub async fn create(sessions: &Sessions, session: &Session) -> Result<SessionId, SessionError> {
    let raw = format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..));
    let id = SessionId::parse(&raw).map_err(|_| RedisUnavailable::Server)?;
    create_as(sessions, &id, session).await?;
    Ok(id)
}

/// [`create`] under a given id (development tools, fixtures).
pub async fn create_as(
    sessions: &Sessions,
    id: &SessionId,
    session: &Session,
) -> Result<(), SessionError> {
    let (row, cached) = tokio::join!(
        store::insert(&sessions.db, id, session),
        cache(sessions, id, session, false)
    );
    row?;
    if let Err(why) = cached {
        tracing::warn!(
            reason = why.as_str(),
            "session recorded in PostgreSQL only; its first use reloads it into Redis"
        );
    }
    Ok(())
}

/// The Redis half of [`create`] alone (the sign-in before PostgreSQL held
/// sessions; its benchmark's baseline; `test-variants` only).
#[cfg(feature = "test-variants")]
pub async fn create_in_redis_only(
    sessions: &Sessions,
    session: &Session,
) -> Result<SessionId, RedisUnavailable> {
    let raw = format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..));
    let id = SessionId::parse(&raw).map_err(|_| RedisUnavailable::Server)?;
    cache(sessions, &id, session, false).await?;
    Ok(id)
}

/// Puts a session into Redis with its index entry: one script. `back`: a
/// session reloaded from PostgreSQL, written only if its key is empty.
async fn cache(
    sessions: &Sessions,
    id: &SessionId,
    session: &Session,
    back: bool,
) -> Result<(), RedisUnavailable> {
    let user = &session.user_id;
    let (key, index) = (
        sessions.keys.session(user, id),
        sessions.keys.user_sessions(user),
    );
    let json = serde_json::to_string(session).map_err(|_| RedisUnavailable::Server)?;
    let prefix = sessions.keys.session_prefix(user);
    let (ttl, index_ttl) = (millis(sessions.session_ttl), millis(sessions.index_ttl));
    let (k, i, j, p, sid) = (&key, &index, &json, &prefix, id.as_str());
    let mode = if back { "nx" } else { "set" };
    sessions
        .redis
        .run(|mut c| async move {
            let _: i64 = SIGN_IN
                .key(k)
                .key(i)
                .arg(j)
                .arg(ttl)
                .arg(sid)
                .arg(index_ttl)
                .arg(p)
                .arg(mode)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await
}

/// Cognito groups that grant permissions (the session keeps them): support
/// staff read any profile and any wallet.
pub const GROUP_PERMISSIONS: &[(&str, &[&str])] = &[(
    "support",
    &[
        crate::domain::identity::permissions::PROFILES_READ_ANY,
        crate::domain::identity::permissions::WALLETS_READ_ANY,
    ],
)];

/// Who signed in, as the issuer knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The user (the issuer's `sub`, which is the user id in PostgreSQL).
    pub user: UserId,
    /// Their e-mail address.
    pub email: String,
    /// Their groups at the issuer (Cognito groups).
    pub groups: Vec<String>,
    /// The IP address they signed in from, when known.
    pub ip_address: Option<String>,
    /// The device or client, when known.
    pub device_info: Option<String>,
}

/// Creates the session of a sign-in: the design's fields, roles from the
/// groups (`customer` when none), permissions from [`GROUP_PERMISSIONS`]
/// (see [`create`]). Every token issuance creates one (a refresh too: the
/// previous session idles out).
#[tracing::instrument(skip_all, fields(user_id = %sign_in.user))]
pub async fn sign_in(sessions: &Sessions, sign_in: &SignIn) -> Result<SessionId, SessionError> {
    let mut permissions: Vec<String> = GROUP_PERMISSIONS
        .iter()
        .filter(|(g, _)| sign_in.groups.iter().any(|x| x == g))
        .flat_map(|(_, p)| p.iter().map(|p| (*p).to_owned()))
        .collect();
    permissions.sort();
    permissions.dedup();
    let roles = if sign_in.groups.is_empty() {
        vec!["customer".to_owned()]
    } else {
        sign_in.groups.clone()
    };
    let session = Session {
        user_id: sign_in.user,
        email: sign_in.email.clone(),
        roles,
        permissions,
        last_activity: OffsetDateTime::now_utc(),
        ip_address: sign_in.ip_address.clone(),
        device_info: sign_in.device_info.clone(),
    };
    create(sessions, &session).await
}

/// Which of a user's sessions a sign-out ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// This sign-in: one session.
    One(SessionId),
    /// Every sign-in of the user.
    All,
}

/// What a sign-out ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// The sessions ended.
    pub sessions: Vec<SessionId>,
    /// The WebSocket connections those sessions opened, now out of the
    /// user's registry (still open until closed: see `realtime`).
    pub connections: Vec<ConnectionId>,
    /// Redis could not be told: the ending is recorded in PostgreSQL (the
    /// fallback refuses the sessions' tokens at once) and the minute sweep
    /// applies it to Redis.
    pub pending: bool,
}

/// Ends one session of `user`, or all of them: in PostgreSQL first (the
/// source of truth; its failure fails the sign-out), then in Redis — one
/// script that replaces the sessions with tombstones and takes the
/// connections they opened out of the user's registry — and queues those
/// connections' close for `ws-sender`. Idempotent. When Redis cannot be
/// told (after insisting: [`Redis::run_insisting`]), the ending is marked
/// pending for the sweep (module documentation).
///
/// [`Redis::run_insisting`]: crate::infra::connection::Redis::run_insisting
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn end(
    sessions: &Sessions,
    user: &UserId,
    ending: &Ending,
    reason: &str,
) -> Result<Ended, SessionError> {
    let one = match ending {
        Ending::One(s) => Some(s),
        Ending::All => None,
    };
    let mut ended = store::end(&sessions.db, user, one, reason).await?;
    if let Some(s) = one
        && !ended.contains(s)
    {
        ended.push(s.clone());
    }
    match end_in_redis(sessions, user, ending, &ended, Insist::Yes).await {
        Ok(e) => {
            queue_closes(sessions, &e.connections).await;
            Ok(e)
        }
        Err(why) => {
            tracing::warn!(
                reason = why.as_str(),
                "sign-out recorded in PostgreSQL; Redis is told by the next sweep"
            );
            mark_pending(sessions, &ended, None).await?;
            Ok(Ended {
                sessions: ended,
                connections: Vec::new(),
                pending: true,
            })
        }
    }
}

/// Marks endings or a revocation pending, and this environment as one
/// that must sweep before it trusts Redis again.
async fn mark_pending(
    sessions: &Sessions,
    ended: &[SessionId],
    jti: Option<&Jti>,
) -> Result<(), SessionError> {
    sessions.recovery.marked.fetch_add(1, Ordering::AcqRel);
    store::mark_pending(&sessions.db, ended, jti).await?;
    Ok(())
}

/// Queues the close of connections a sign-out took out of the registry
/// (they receive nothing more already; `ws-sender` closes them, retrying
/// until it succeeds). Not queued, they close at their next `ping`.
async fn queue_closes(sessions: &Sessions, connections: &[ConnectionId]) {
    if let Err(why) = sessions.queue.close(connections).await {
        tracing::warn!(
            reason = why.as_str(),
            connections = connections.len(),
            "could not queue the close of signed-out connections; they receive nothing and close at their next ping"
        );
    }
}

/// The Redis half of [`end`]: `also` are sessions PostgreSQL ended (they
/// may be missing from the index).
async fn end_in_redis(
    sessions: &Sessions,
    user: &UserId,
    ending: &Ending,
    also: &[SessionId],
    insist: Insist,
) -> Result<Ended, RedisUnavailable> {
    let (index, registry) = (
        sessions.keys.user_sessions(user),
        sessions.keys.ws_connections(user),
    );
    let prefix = sessions.keys.session_prefix(user);
    let mode = match ending {
        Ending::One(_) => "one",
        Ending::All => "all",
    };
    let ids: Vec<&str> = also.iter().map(SessionId::as_str).collect();
    let ttl = millis(TOMBSTONE_TTL);
    let (i, r, p, ids) = (&index, &registry, &prefix, &ids);
    let script = |mut c: crate::infra::connection::RedisConnection| async move {
        END.key(i)
            .key(r)
            .arg(p)
            .arg(mode)
            .arg(ttl)
            .arg(ids)
            .invoke_async::<(Vec<String>, Vec<String>)>(&mut c)
            .await
    };
    let (ended, closed) = match insist {
        Insist::Yes => sessions.redis.run_insisting(script).await?,
        Insist::No => sessions.redis.run(script).await?,
    };
    Ok(Ended {
        sessions: ended
            .iter()
            .filter_map(|s| SessionId::parse(s).ok())
            .collect(),
        connections: closed
            .iter()
            .filter_map(|c| ConnectionId::parse(c).ok())
            .collect(),
        pending: false,
    })
}

/// The ids in `user`'s session index (tests and operations; ended sessions
/// may still be listed until the next sign-in prunes them).
pub async fn index(sessions: &Sessions, user: &UserId) -> Result<Vec<SessionId>, RedisUnavailable> {
    let key = sessions.keys.user_sessions(user);
    let k = &key;
    let ids: Vec<String> = sessions
        .redis
        .run(|mut c| async move { c.smembers(k).await })
        .await?;
    Ok(ids
        .iter()
        .filter_map(|s| SessionId::parse(s).ok())
        .collect())
}

/// Revokes a token until `expires_at` (its `exp`) plus
/// [`REVOCATION_GRACE`]: its row in PostgreSQL (required), its blacklist
/// entry in the durable Redis (marked pending for the sweep when Redis
/// fails). A token past that needs nothing: no verifier accepts it.
pub async fn blacklist(
    sessions: &Sessions,
    jti: &Jti,
    principal: &Principal,
    expires_at: OffsetDateTime,
    reason: &str,
) -> Result<(), SessionError> {
    let now = OffsetDateTime::now_utc();
    let until = expires_at + REVOCATION_GRACE;
    if until <= now {
        return Ok(());
    }
    let who = match principal {
        Principal::User { user, .. } => format!("user:{user}"),
        Principal::Service { client } => format!("svc:{client}"),
    };
    let reason: String = reason.chars().take(64).collect();
    store::revoke(&sessions.db, jti, &who, &reason, until).await?;
    if let Err(why) =
        blacklist_in_redis(sessions, jti, principal, until, &reason, Insist::Yes).await
    {
        tracing::warn!(
            reason = why.as_str(),
            "revocation recorded in PostgreSQL; Redis is told by the next sweep"
        );
        mark_pending(sessions, &[], Some(jti)).await?;
    }
    Ok(())
}

async fn blacklist_in_redis(
    sessions: &Sessions,
    jti: &Jti,
    principal: &Principal,
    until: OffsetDateTime,
    reason: &str,
    insist: Insist,
) -> Result<(), RedisUnavailable> {
    let now = OffsetDateTime::now_utc();
    let (user_id, client_id) = match principal {
        Principal::User { user, .. } => (Some(*user), None),
        Principal::Service { client } => (None, Some(client.clone())),
    };
    let entry = BlacklistEntry {
        user_id,
        client_id,
        blacklisted_at: now,
        reason: reason.to_owned(),
    };
    let json = serde_json::to_string(&entry).map_err(|_| RedisUnavailable::Server)?;
    let key = sessions.keys.blacklist(jti);
    let ms = u64::try_from((until - now).whole_milliseconds())
        .unwrap_or(u64::MAX)
        .max(1);
    let (k, j) = (key.as_str(), json.as_str());
    let set = |mut c: crate::infra::connection::RedisConnection| async move {
        redis::cmd("SET")
            .arg(k)
            .arg(j)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut c)
            .await
    };
    match insist {
        Insist::Yes => sessions.durable.run_insisting(set).await,
        Insist::No => sessions.durable.run(set).await,
    }
}

/// Whether a write to Redis insists (a sign-out: past an open breaker,
/// and again on a fresh connection) or not (the sweep, which runs again).
#[derive(Debug, Clone, Copy)]
enum Insist {
    Yes,
    No,
}

/// What Redis holds under a session's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The session.
    Session(Session),
    /// A tombstone: the session was ended.
    Ended,
    /// Nothing: never stored, evicted, or idled out.
    Missing,
}

impl Held {
    /// The session, if one is held.
    pub fn into_session(self) -> Option<Session> {
        match self {
            Self::Session(s) => Some(s),
            _ => None,
        }
    }
}

/// What a request's credentials look like in Redis: each read's own
/// answer, so that a "revoked" wins even when the other read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// The session (its TTL refreshed by this read).
    pub session: Result<Held, RedisUnavailable>,
    /// Whether the token's `jti` is blacklisted.
    pub revoked: Result<bool, RedisUnavailable>,
}

/// What the credentials say of a user's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed in: the session.
    Valid(Session),
    /// Refused, whatever else failed: a definite "revoked", an ended
    /// session or another user's always wins.
    Refused(Denied),
    /// Redis does not hold the session (it was never stored there, was
    /// evicted or idled out): PostgreSQL decides.
    Missing,
    /// Redis could not say (and said nothing that refuses).
    Unknown(RedisUnavailable),
}

impl CredentialState {
    /// The verdict for `user`'s request.
    pub fn verdict(self, user: &UserId) -> Verdict {
        if let Ok(true) = self.revoked {
            return Verdict::Refused(Denied::Revoked);
        }
        match self.session {
            Ok(Held::Ended) => Verdict::Refused(Denied::NoSession),
            Ok(Held::Session(s)) if s.user_id != *user => Verdict::Refused(Denied::SessionMismatch),
            Ok(held) => match (held, self.revoked) {
                (_, Err(why)) => Verdict::Unknown(why),
                (Held::Session(s), Ok(_)) => Verdict::Valid(s),
                _ => Verdict::Missing,
            },
            Err(why) => Verdict::Unknown(why),
        }
    }
}

/// Reads the session (refreshing its sliding TTL) and checks the token's
/// blacklist entry, both requests at once — Redis only.
#[tracing::instrument(skip_all)]
pub async fn check(
    sessions: &Sessions,
    user: &UserId,
    session: &SessionId,
    jti: &Jti,
) -> CredentialState {
    let (skey, bkey) = (
        sessions.keys.session(user, session),
        sessions.keys.blacklist(jti),
    );
    let ttl = millis(sessions.session_ttl);
    let (sk, bk) = (&skey, &bkey);
    let (s, b) = tokio::join!(
        sessions.redis.run(|mut c| async move {
            let v: Option<String> = redis::cmd("GETEX")
                .arg(sk)
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await?;
            Ok(v)
        }),
        sessions.durable.run(|mut c| async move {
            let n: i64 = c.exists(bk).await?;
            Ok(n)
        }),
    );
    CredentialState {
        session: s.map(|v| match v {
            None => Held::Missing,
            Some(raw) if raw == TOMBSTONE => Held::Ended,
            // Unreadable data is no session.
            Some(raw) => serde_json::from_str::<Session>(&raw)
                .map(Held::Session)
                .unwrap_or(Held::Ended),
        }),
        revoked: b.map(|n| n > 0),
    }
}

/// A user's request's whole check (the module documentation): Redis,
/// then PostgreSQL when Redis does not hold the session or cannot answer.
/// `Err(Denied::RevocationUnavailable)` when neither can answer.
pub async fn authenticate(
    sessions: &Sessions,
    user: &UserId,
    session: &SessionId,
    jti: &Jti,
    token_expires_at: OffsetDateTime,
) -> Result<Session, Denied> {
    let trusted = match recovering(sessions) {
        None => true,
        Some(sweep) => sweep.await,
    };
    let verdict = if trusted {
        check(sessions, user, session, jti).await.verdict(user)
    } else {
        // Redis may not know of sign-outs made while this environment
        // could not reach it.
        Verdict::Unknown(RedisUnavailable::Connection)
    };
    match verdict {
        Verdict::Valid(s) => {
            sync_activity(sessions, session, &s);
            Ok(s)
        }
        Verdict::Refused(why) => Err(why),
        Verdict::Missing if redis_only(sessions) => Err(Denied::NoSession),
        Verdict::Missing => {
            let found = from_database(sessions, user, session, jti).await?;
            // Put back (evicted) or mark over (idled out), for the token's
            // next requests; best effort.
            match &found {
                Ok(s) => {
                    if let Err(why) = cache(sessions, session, s, true).await {
                        tracing::warn!(reason = why.as_str(), "could not put a session back");
                    }
                }
                Err(_) => {
                    let until = token_expires_at + REVOCATION_GRACE;
                    tombstone(sessions, user, session, until).await;
                }
            }
            found
        }
        Verdict::Unknown(why) => {
            if redis_only(sessions) {
                return Err(Denied::RevocationUnavailable);
            }
            tracing::warn!(
                reason = why.as_str(),
                "Redis cannot check the session: PostgreSQL decides"
            );
            from_database(sessions, user, session, jti).await?
        }
    }
}

/// The PostgreSQL check of a user's request (one statement).
async fn from_database(
    sessions: &Sessions,
    user: &UserId,
    session: &SessionId,
    jti: &Jti,
) -> Result<Result<Session, Denied>, Denied> {
    let found = store::check(
        &sessions.db,
        user,
        session,
        jti,
        sessions.session_ttl,
        sessions.activity_sync,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "neither Redis nor PostgreSQL can check the session");
        Denied::RevocationUnavailable
    })?;
    Ok(match found {
        store::Found::Live(s) => Ok(s),
        store::Found::Revoked => Err(Denied::Revoked),
        store::Found::Over => Err(Denied::NoSession),
    })
}

/// A tombstone for a session PostgreSQL says is over (best effort).
async fn tombstone(sessions: &Sessions, user: &UserId, session: &SessionId, until: OffsetDateTime) {
    let left = until - OffsetDateTime::now_utc();
    let Ok(ms) = u64::try_from(left.whole_milliseconds()) else {
        return;
    };
    let key = sessions.keys.session(user, session);
    let k = &key;
    let set = sessions
        .redis
        .run(|mut c| async move {
            // NX: a session put back meanwhile (a new sign-in cannot reuse
            // the id) is not overwritten.
            let _: Option<String> = redis::cmd("SET")
                .arg(k)
                .arg(TOMBSTONE)
                .arg("PX")
                .arg(ms.max(1))
                .arg("NX")
                .query_async(&mut c)
                .await?;
            Ok(())
        })
        .await;
    if let Err(why) = set {
        tracing::debug!(reason = why.as_str(), "could not mark an ended session");
    }
}

/// Records the session's activity in PostgreSQL when the last record is
/// older than `SESSION_ACTIVITY_SYNC_SECS`: sent beside the request (a
/// task of its own; the response does not wait), then noted in the Redis
/// copy — unless a sign-out replaced it with a tombstone meanwhile. A sync
/// lost to a frozen or ended execution environment is made by the next
/// request that sees the record still old.
pub fn sync_activity(sessions: &Sessions, id: &SessionId, session: &Session) {
    let due = OffsetDateTime::now_utc() - session.last_activity
        >= time::Duration::try_from(sessions.activity_sync).unwrap_or(time::Duration::ZERO);
    if !due {
        return;
    }
    let (sessions, id, mut session) = (sessions.clone(), id.clone(), session.clone());
    tokio::spawn(async move {
        let user = session.user_id;
        match store::touch(&sessions.db, &user, &id).await {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "activity sync failed; the next request retries");
                return;
            }
        }
        session.last_activity = OffsetDateTime::now_utc();
        let Ok(json) = serde_json::to_string(&session) else {
            return;
        };
        let key = sessions.keys.session(&user, &id);
        let (k, j) = (&key, &json);
        let noted = sessions
            .redis
            .run(|mut c| async move {
                let _: i64 = TOUCH.key(k).arg(j).invoke_async(&mut c).await?;
                Ok(())
            })
            .await;
        if let Err(why) = noted {
            tracing::debug!(reason = why.as_str(), "activity sync not noted in Redis");
        }
    });
}

/// Whether the token `jti` is revoked (a service's token: no session to
/// read): the durable Redis, or PostgreSQL when Redis cannot answer.
/// `Err(RevocationUnavailable)` when neither can.
pub async fn is_revoked(sessions: &Sessions, jti: &Jti) -> Result<bool, Denied> {
    let trusted = match recovering(sessions) {
        None => true,
        Some(sweep) => sweep.await,
    };
    // Untrusted: Redis may not know of revocations made while this
    // environment could not reach it (PostgreSQL decides, said once by
    // `recovered`).
    let answer = if trusted {
        is_blacklisted(sessions, jti).await
    } else {
        Err(RedisUnavailable::BreakerOpen)
    };
    match answer {
        Ok(b) => Ok(b),
        Err(_) if redis_only(sessions) => Err(Denied::RevocationUnavailable),
        Err(why) => {
            if trusted {
                tracing::warn!(
                    reason = why.as_str(),
                    "Redis cannot check the token: PostgreSQL decides"
                );
            }
            store::is_revoked(&sessions.db, jti).await.map_err(|e| {
                tracing::error!(error = %e, "neither Redis nor PostgreSQL can check the token");
                Denied::RevocationUnavailable
            })
        }
    }
}

/// Whether the token `jti` is blacklisted in Redis; one round trip to the
/// durable Redis.
pub async fn is_blacklisted(sessions: &Sessions, jti: &Jti) -> Result<bool, RedisUnavailable> {
    let key = sessions.keys.blacklist(jti);
    let k = &key;
    let n: i64 = sessions
        .durable
        .run(|mut c| async move { c.exists(k).await })
        .await?;
    Ok(n > 0)
}

/// Of these sessions Redis does not hold, the live ones (PostgreSQL says
/// so), put back into Redis (the real-time checks: `realtime`).
pub async fn reload(
    sessions: &Sessions,
    missing: &[(UserId, SessionId)],
) -> Result<Vec<(UserId, SessionId)>, SessionError> {
    let live = store::live_among(
        &sessions.db,
        missing,
        sessions.session_ttl,
        sessions.activity_sync,
    )
    .await?;
    let mut out = Vec::new();
    for (id, s) in live {
        if let Err(why) = cache(sessions, &id, &s, true).await {
            tracing::warn!(reason = why.as_str(), "could not put a session back");
        }
        out.push((s.user_id, id));
    }
    Ok(out)
}

/// What the sweep applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Sessions ended while Redis was unavailable, now tombstoned there.
    pub sessions: u64,
    /// Tokens revoked while Redis was unavailable, now blacklisted there.
    pub tokens: u64,
    /// Connections those sessions had opened, taken out of the registry
    /// and queued to be closed.
    pub connections: u64,
    /// Everything pending was applied (nothing failed).
    pub complete: bool,
}

/// Applies to Redis the sign-outs and revocations recorded while it was
/// unavailable — every one pending, page by page — and queues the close
/// of the connections their sessions had opened. Run by an execution environment that saw Redis
/// fail ([`recovered`]), by `ws-sender` every [`SWEEP_EVERY`] and by
/// `audit-flush` every minute. One PostgreSQL query when nothing is
/// pending; otherwise per page one query, one script per user (sent at
/// once), one `SET` per token and one update.
pub async fn apply_pending(sessions: &Sessions) -> Result<SweepReport, SessionError> {
    let mut report = SweepReport {
        complete: true,
        ..SweepReport::default()
    };
    loop {
        let pending = store::pending(&sessions.db, SWEEP_PAGE).await?;
        let full = pending.sessions.len() as i64 >= SWEEP_PAGE
            || pending.tokens.len() as i64 >= SWEEP_PAGE;
        let mut by_user: Vec<(UserId, Vec<SessionId>)> = Vec::new();
        for (user, sid) in pending.sessions {
            match by_user.iter_mut().find(|(u, _)| *u == user) {
                Some((_, list)) => list.push(sid),
                None => by_user.push((user, vec![sid])),
            }
        }
        let ended = futures_util::future::join_all(by_user.iter().map(|(user, ids)| async move {
            // `One` per id keeps the user's other sessions (signed in
            // since) untouched.
            let mut closed = Vec::new();
            for id in ids {
                let e = end_in_redis(
                    sessions,
                    user,
                    &Ending::One(id.clone()),
                    std::slice::from_ref(id),
                    Insist::No,
                )
                .await?;
                closed.extend(e.connections);
            }
            Ok::<_, RedisUnavailable>(closed)
        }))
        .await;
        let mut done_sessions = Vec::new();
        let mut closed = Vec::new();
        for ((_, ids), result) in by_user.iter().zip(ended) {
            match result {
                Ok(c) => {
                    done_sessions.extend(ids.iter().cloned());
                    closed.extend(c);
                }
                Err(_) => report.complete = false,
            }
        }
        queue_closes(sessions, &closed).await;
        let revoked =
            futures_util::future::join_all(pending.tokens.iter().map(|(jti, until)| async move {
                let principal = Principal::Service {
                    client: ClientId::parse("revoked").map_err(|_| RedisUnavailable::Server)?,
                };
                blacklist_in_redis(sessions, jti, &principal, *until, "logout", Insist::No).await
            }))
            .await;
        let mut done_tokens = Vec::new();
        for ((jti, _), result) in pending.tokens.iter().zip(revoked) {
            match result {
                Ok(()) => done_tokens.push(jti.clone()),
                Err(_) => report.complete = false,
            }
        }
        store::applied(&sessions.db, &done_sessions, &done_tokens).await?;
        report.sessions += done_sessions.len() as u64;
        report.tokens += done_tokens.len() as u64;
        report.connections += closed.len() as u64;
        // A page with failures stops the sweep (the next one retries it).
        if !full || !report.complete {
            return Ok(report);
        }
    }
}

/// Deletes the revocations no verifier could need any more (past their
/// token's `exp` plus [`REVOCATION_GRACE`]); `audit-flush`, every minute.
pub async fn delete_expired_revocations(sessions: &Sessions) -> Result<u64, SessionError> {
    Ok(store::delete_expired(&sessions.db).await?)
}

/// The remaining lifetime of a blacklist entry (tests and operations).
pub async fn blacklist_ttl(
    sessions: &Sessions,
    jti: &Jti,
) -> Result<Option<Duration>, RedisUnavailable> {
    let key = sessions.keys.blacklist(jti);
    let k = &key;
    let ms: i64 = sessions
        .durable
        .run(|mut c| async move { redis::cmd("PTTL").arg(k).query_async(&mut c).await })
        .await?;
    Ok(u64::try_from(ms).ok().map(Duration::from_millis))
}
