//! Sessions and token revocation: the design's `session:{session_id}` and
//! `blacklist:{token_jti}`.
//!
//! - A **session** holds the design's data (user, e-mail, roles,
//!   permissions, last activity, IP, device) with a sliding TTL
//!   (`CACHE_TTL_SESSION_DATA_SECS`): reading it for a request refreshes it,
//!   in the same command (`GETEX … PX`). Sessions live in the cache group: an
//!   evicted or lost session logs its user out — the safe direction.
//! - A **blacklist entry** revokes one token by its `jti` **until the
//!   token's own expiry** (not a fixed 24 h: shorter would re-validate a
//!   revoked token, longer wastes memory). Blacklist entries live in the
//!   durable Redis (`REDIS_DURABLE_URL`, `noeviction`): an evicted entry would
//!   make a revoked token valid again.
//!
//! The two keys have different hash tags (and may be in different Redis
//! groups), so a check sends both requests at once: one round-trip time.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::identity::Principal;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ClientId, Jti, SessionId, UserId};

/// What sessions and revocation use: the cache Redis for sessions, the
/// durable one for blacklist entries, and the sessions' sliding TTL.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) durable: Redis,
    pub(crate) session_ttl: Duration,
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
    /// When the session was last used (creation, for now).
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

fn session_ttl(sessions: &Sessions) -> u64 {
    u64::try_from(sessions.session_ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Creates a session under a new random id; one round trip.
#[tracing::instrument(skip_all, fields(user_id = %session.user_id))]
pub async fn create(sessions: &Sessions, session: &Session) -> Result<SessionId, RedisUnavailable> {
    let raw = format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..));
    let id = SessionId::parse(&raw).map_err(|_| RedisUnavailable::Server)?;
    let key = sessions.keys.session(&id);
    let json = serde_json::to_string(session).map_err(|_| RedisUnavailable::Server)?;
    sessions
        .redis
        .set_px(key.as_str(), json, session_ttl(sessions))
        .await?;
    Ok(id)
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
/// groups (`customer` when none), permissions from [`GROUP_PERMISSIONS`];
/// one round trip. Every token issuance creates one (a refresh too: the
/// previous session idles out with its sliding TTL).
#[tracing::instrument(skip_all, fields(user_id = %sign_in.user))]
pub async fn sign_in(sessions: &Sessions, sign_in: &SignIn) -> Result<SessionId, RedisUnavailable> {
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

/// Deletes a session; one round trip. Idempotent.
#[tracing::instrument(skip_all)]
pub async fn revoke(sessions: &Sessions, id: &SessionId) -> Result<(), RedisUnavailable> {
    let key = sessions.keys.session(id);
    let k = &key;
    sessions
        .redis
        .run(|mut c| async move {
            let _: i64 = c.del(k).await?;
            Ok(())
        })
        .await
}

/// Revokes a token until `expires_at` (its `exp`); one round trip to the
/// durable Redis. A token that has already expired needs no entry.
pub async fn blacklist(
    sessions: &Sessions,
    jti: &Jti,
    principal: &Principal,
    expires_at: OffsetDateTime,
    reason: &str,
) -> Result<(), RedisUnavailable> {
    let now = OffsetDateTime::now_utc();
    let left = expires_at - now;
    if left <= time::Duration::ZERO {
        return Ok(());
    }
    let (user_id, client_id) = match principal {
        Principal::User { user, .. } => (Some(*user), None),
        Principal::Service { client } => (None, Some(client.clone())),
    };
    let entry = BlacklistEntry {
        user_id,
        client_id,
        blacklisted_at: now,
        reason: reason.chars().take(64).collect(),
    };
    let json = serde_json::to_string(&entry).map_err(|_| RedisUnavailable::Server)?;
    let key = sessions.keys.blacklist(jti);
    let ms = u64::try_from(left.whole_milliseconds())
        .unwrap_or(u64::MAX)
        .max(1);
    sessions.durable.set_px(key.as_str(), json, ms).await
}

/// What a request's credentials look like in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// The session (its TTL refreshed by this read), if it exists.
    pub session: Option<Session>,
    /// Whether the token's `jti` is blacklisted.
    pub revoked: bool,
}

/// Reads the session (refreshing its sliding TTL) and checks the token's
/// blacklist entry, both requests at once.
#[tracing::instrument(skip_all)]
pub async fn check(
    sessions: &Sessions,
    session: &SessionId,
    jti: &Jti,
) -> Result<CredentialState, RedisUnavailable> {
    let (skey, bkey) = (sessions.keys.session(session), sessions.keys.blacklist(jti));
    let ttl = session_ttl(sessions);
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
    let session = s?.and_then(|raw| serde_json::from_str::<Session>(&raw).ok());
    Ok(CredentialState {
        session,
        revoked: b? > 0,
    })
}

/// Whether the token `jti` is blacklisted (a service's token: no session
/// to read); one round trip to the durable Redis.
pub async fn is_blacklisted(sessions: &Sessions, jti: &Jti) -> Result<bool, RedisUnavailable> {
    let key = sessions.keys.blacklist(jti);
    let k = &key;
    let n: i64 = sessions
        .durable
        .run(|mut c| async move { c.exists(k).await })
        .await?;
    Ok(n > 0)
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
