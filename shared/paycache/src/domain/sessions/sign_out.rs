//! Signing out — one session or all of a user's — and revoking tokens: in
//! PostgreSQL first (the source of truth), then in Redis (tombstones and
//! the sockets out of the registry in one script; the blacklist entry),
//! insisting past an open breaker; what Redis could not be told is marked
//! pending for the sweep, and the ended sockets' close is queued.

use super::store;
use redis::AsyncCommands;

use super::BlacklistEntry;
use super::REVOCATION_GRACE;
use super::SessionError;
use super::Sessions;
use super::TOMBSTONE_TTL;
use super::millis;
use crate::domain::identity::Principal;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::Jti;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use redis::Script;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

pub(super) static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("end.lua")));

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
pub(super) async fn mark_pending(
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
pub(super) async fn queue_closes(sessions: &Sessions, connections: &[ConnectionId]) {
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
pub(super) async fn end_in_redis(
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

pub(super) async fn blacklist_in_redis(
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
pub(super) enum Insist {
    Yes,
    No,
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
