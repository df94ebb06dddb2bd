//! PostgreSQL deciding for Redis: the one statement that checks a
//! request's session and token when Redis cannot, and the reload of
//! sessions Redis no longer holds (evicted, idled out) for the real-time
//! checks.

use super::store;

use super::Session;
use super::SessionError;
use super::Sessions;
use super::sign_in::cache;
use crate::domain::identity::Denied;
use crate::infra::keys::Jti;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;

/// The PostgreSQL check of a user's request (one statement).
pub(super) async fn from_database(
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
