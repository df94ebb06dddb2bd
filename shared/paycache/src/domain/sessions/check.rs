//! A request's check: the session (`read.lua`: `GET`, sliding a live session's TTL) and the
//! blacklist (`EXISTS`) in Redis, sent with the route's other requests;
//! PostgreSQL ([`super::fallback`]) when Redis does not hold the session,
//! cannot answer, or may not know of sign-outs made during an outage this
//! environment saw ([`super::sweep::recovered`]); the activity sync beside
//! the request.

use super::store;
use redis::AsyncCommands;

use super::REVOCATION_GRACE;
use super::Session;
use super::Sessions;
use super::TOMBSTONE;
use super::fallback::from_database;
use super::millis;
use super::redis_only;
use super::sign_in::cache;
use super::sweep::recovering;
use crate::domain::identity::Denied;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Jti;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use redis::Script;
use std::sync::LazyLock;
use time::OffsetDateTime;

/// A request's read of its session (`read.lua`).
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("read.lua")));

pub(super) static TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("touch.lua")));

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

/// Reads the session (refreshing its sliding TTL; a tombstone keeps its
/// own: `read.lua`) and checks the token's blacklist entry, both requests
/// at once — Redis only.
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
            let v: Option<String> = READ.key(sk).arg(ttl).invoke_async(&mut c).await?;
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

/// A tombstone for a session PostgreSQL says is over (best effort).
pub(super) async fn tombstone(
    sessions: &Sessions,
    user: &UserId,
    session: &SessionId,
    until: OffsetDateTime,
) {
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
