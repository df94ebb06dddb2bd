//! Sessions and revocations in PostgreSQL, their source of truth
//! (`migrations/0003_sessions.sql`). Each function is one statement.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::Session;
use crate::infra::db::{Db, DbError};
use crate::infra::keys::{Jti, SessionId, UserId};

fn query_error(e: tokio_postgres::Error) -> DbError {
    DbError::Query(e)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Records a sign-in's session.
pub(crate) async fn insert(db: &Db, id: &SessionId, s: &Session) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO sessions (session_id, user_id, email, roles, permissions, ip_address,
                                   device_info, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (session_id) DO NOTHING",
            &[
                &id.as_str(),
                &s.user_id.as_uuid(),
                &s.email,
                &s.roles,
                &s.permissions,
                &s.ip_address,
                &s.device_info,
                &s.last_activity,
            ],
        )
        .await?;
    Ok(())
}

/// What PostgreSQL says of a request's session and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Live: not ended, active within the idle timeout (plus the sync
    /// interval); with the session's data.
    Live(Session),
    /// Signed out, idled out, or no such session of this user.
    Over,
    /// The token is revoked (whatever its session says).
    Revoked,
}

/// The session `id` of `user` and the token `jti`, in one statement; when
/// the session is live and its last recorded activity is older than
/// `sync`, that activity is moved to now in the same statement (how
/// PostgreSQL learns of activity while Redis cannot: at most once per
/// `sync` per session, not per request).
pub(crate) async fn check(
    db: &Db,
    user: &UserId,
    id: &SessionId,
    jti: &Jti,
    idle: Duration,
    sync: Duration,
) -> Result<Found, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "WITH touched AS (
                 UPDATE sessions SET last_seen_at = now()
                  WHERE session_id = $1 AND user_id = $2 AND ended_at IS NULL
                    AND last_seen_at > now() - make_interval(secs => $4)
                    AND last_seen_at < now() - make_interval(secs => $5)
                 RETURNING session_id)
             SELECT s.email, s.roles, s.permissions, s.ip_address, s.device_info,
                    s.last_seen_at,
                    s.ended_at IS NULL AND s.last_seen_at > now() - make_interval(secs => $4) AS live,
                    EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = $3 AND r.expires_at > now()) AS revoked
               FROM (SELECT 1) AS one
               LEFT JOIN sessions s ON s.session_id = $1 AND s.user_id = $2",
            &[
                &id.as_str(),
                &user.as_uuid(),
                &jti.as_str(),
                &secs(idle + sync),
                &secs(sync),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Found::Over);
    };
    let revoked: bool = row.try_get("revoked").map_err(query_error)?;
    if revoked {
        return Ok(Found::Revoked);
    }
    let live: Option<bool> = row.try_get("live").map_err(query_error)?;
    if live != Some(true) {
        return Ok(Found::Over);
    }
    Ok(Found::Live(Session {
        user_id: *user,
        email: row.try_get("email").map_err(query_error)?,
        roles: row.try_get("roles").map_err(query_error)?,
        permissions: row.try_get("permissions").map_err(query_error)?,
        last_activity: row.try_get("last_seen_at").map_err(query_error)?,
        ip_address: row.try_get("ip_address").map_err(query_error)?,
        device_info: row.try_get("device_info").map_err(query_error)?,
    }))
}

/// Of these sessions, the live ones, with their data.
pub(crate) async fn live_among(
    db: &Db,
    ids: &[(UserId, SessionId)],
    idle: Duration,
    sync: Duration,
) -> Result<Vec<(SessionId, Session)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sids: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
    let users: Vec<Uuid> = ids.iter().map(|(u, _)| u.as_uuid()).collect();
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT s.session_id, s.user_id, s.email, s.roles, s.permissions, s.ip_address,
                    s.device_info, s.last_seen_at
               FROM sessions s
               JOIN unnest($1::text[], $2::uuid[]) AS w(session_id, user_id)
                 ON s.session_id = w.session_id AND s.user_id = w.user_id
              WHERE s.ended_at IS NULL AND s.last_seen_at > now() - make_interval(secs => $3)",
            &[&sids, &users, &secs(idle + sync)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let sid: String = row.try_get("session_id").map_err(query_error)?;
            let user: Uuid = row.try_get("user_id").map_err(query_error)?;
            Ok((
                SessionId::parse(&sid).map_err(|_| DbError::Unavailable)?,
                Session {
                    user_id: UserId::parse(&user.to_string()).map_err(|_| DbError::Unavailable)?,
                    email: row.try_get("email").map_err(query_error)?,
                    roles: row.try_get("roles").map_err(query_error)?,
                    permissions: row.try_get("permissions").map_err(query_error)?,
                    last_activity: row.try_get("last_seen_at").map_err(query_error)?,
                    ip_address: row.try_get("ip_address").map_err(query_error)?,
                    device_info: row.try_get("device_info").map_err(query_error)?,
                },
            ))
        })
        .collect()
}

/// Whether the token `jti` is revoked (a service's token has no session).
pub(crate) async fn is_revoked(db: &Db, jti: &Jti) -> Result<bool, DbError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1 AND expires_at > now())",
            &[&jti.as_str()],
        )
        .await?;
    row.try_get(0).map_err(query_error)
}

/// Ends one session of `user`, or all of them (`one` = `None`); returns the
/// sessions ended by this call and by earlier ones still within `recent`
/// (so that a retried sign-out still tombstones them in Redis).
pub(crate) async fn end(
    db: &Db,
    user: &UserId,
    one: Option<&SessionId>,
    reason: &str,
) -> Result<Vec<SessionId>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "UPDATE sessions SET ended_at = coalesce(ended_at, now()),
                                 ended_reason = coalesce(ended_reason, $3)
              WHERE user_id = $1 AND ($2::text IS NULL OR session_id = $2)
                AND (ended_at IS NULL OR $2::text IS NOT NULL)
             RETURNING session_id",
            &[&user.as_uuid(), &one.map(SessionId::as_str), &reason],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let sid: String = r.try_get(0).map_err(query_error)?;
            SessionId::parse(&sid).map_err(|_| DbError::Unavailable)
        })
        .collect()
}

/// Records a revoked token until `until` (its `exp` plus the grace).
pub(crate) async fn revoke(
    db: &Db,
    jti: &Jti,
    principal: &str,
    reason: &str,
    until: OffsetDateTime,
) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO revoked_tokens (jti, principal, reason, expires_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (jti) DO UPDATE SET expires_at = greatest(revoked_tokens.expires_at, $4)",
            &[&jti.as_str(), &principal, &reason, &until],
        )
        .await?;
    Ok(())
}

/// Marks endings and revocations Redis has not been told of (it was
/// unavailable): the sweep applies them ([`pending`]).
pub(crate) async fn mark_pending(
    db: &Db,
    sessions: &[SessionId],
    jti: Option<&Jti>,
) -> Result<(), DbError> {
    let client = db.client().await?;
    let sids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
    client
        .execute(
            "WITH s AS (UPDATE sessions SET cache_pending = true WHERE session_id = ANY($1) RETURNING 1)
             UPDATE revoked_tokens SET cache_pending = true WHERE jti = $2",
            &[&sids, &jti.map(Jti::as_str)],
        )
        .await?;
    Ok(())
}

/// What Redis has not been told of yet: ended sessions (with their user)
/// and revoked tokens (with their expiry), oldest first.
pub(crate) struct Pending {
    pub sessions: Vec<(UserId, SessionId)>,
    pub tokens: Vec<(Jti, OffsetDateTime)>,
}

/// Up to `limit` of each kind of pending change, in one statement (the
/// sweep runs every second in `ws-sender`: nothing pending costs one
/// index-only look at two partial indexes).
pub(crate) async fn pending(db: &Db, limit: i64) -> Result<Pending, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "(SELECT 's' AS kind, user_id, session_id AS id, NULL::timestamptz AS until
                FROM sessions WHERE cache_pending ORDER BY ended_at LIMIT $1)
             UNION ALL
             (SELECT 't', NULL::uuid, jti, expires_at
                FROM revoked_tokens WHERE cache_pending AND expires_at > now()
               ORDER BY revoked_at LIMIT $1)",
            &[&limit],
        )
        .await?;
    let mut out = Pending {
        sessions: Vec::new(),
        tokens: Vec::new(),
    };
    for r in &rows {
        let kind: &str = r.try_get("kind").map_err(query_error)?;
        let id: String = r.try_get("id").map_err(query_error)?;
        if kind == "s" {
            let user: Uuid = r.try_get("user_id").map_err(query_error)?;
            if let (Ok(user), Ok(sid)) = (UserId::parse(&user.to_string()), SessionId::parse(&id)) {
                out.sessions.push((user, sid));
            }
        } else {
            let until: OffsetDateTime = r.try_get("until").map_err(query_error)?;
            if let Ok(jti) = Jti::parse(&id) {
                out.tokens.push((jti, until));
            }
        }
    }
    Ok(out)
}

/// Clears the pending marks of what the sweep applied.
pub(crate) async fn applied(
    db: &Db,
    sessions: &[SessionId],
    tokens: &[Jti],
) -> Result<(), DbError> {
    if sessions.is_empty() && tokens.is_empty() {
        return Ok(());
    }
    let client = db.client().await?;
    let sids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
    let jtis: Vec<&str> = tokens.iter().map(Jti::as_str).collect();
    client
        .execute(
            "WITH s AS (UPDATE sessions SET cache_pending = false WHERE session_id = ANY($1) RETURNING 1)
             UPDATE revoked_tokens SET cache_pending = false WHERE jti = ANY($2)",
            &[&sids, &jtis],
        )
        .await?;
    Ok(())
}

/// Deletes the revocations no verifier could need any more.
pub(crate) async fn delete_expired(db: &Db) -> Result<u64, DbError> {
    let client = db.client().await?;
    client
        .execute("DELETE FROM revoked_tokens WHERE expires_at < now()", &[])
        .await
}

/// Records activity of these sessions now (the periodic sync).
pub(crate) async fn touch(db: &Db, user: &UserId, id: &SessionId) -> Result<u64, DbError> {
    let client = db.client().await?;
    client
        .execute(
            "UPDATE sessions SET last_seen_at = now()
              WHERE session_id = $1 AND user_id = $2 AND ended_at IS NULL",
            &[&id.as_str(), &user.as_uuid()],
        )
        .await
}
