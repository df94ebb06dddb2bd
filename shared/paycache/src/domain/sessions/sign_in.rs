//! Signing in: a session's row in PostgreSQL and, at the same time, its
//! entry and index entry in Redis (one script); a session put back from
//! PostgreSQL only where Redis holds nothing (`NX`: a tombstone stays).

use super::store;

use super::Session;
use super::SessionError;
use super::Sessions;
use super::millis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use redis::Script;
use std::sync::LazyLock;
use time::OffsetDateTime;

pub(super) static SIGN_IN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sign_in.lua")));

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
pub(super) async fn cache(
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
