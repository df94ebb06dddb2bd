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

use crate::app::App;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::{Jti, SessionId, UserId};

/// The design's session data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: UserId,
    pub email: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    pub ip_address: Option<String>,
    pub device_info: Option<String>,
}

/// The design's blacklist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistEntry {
    pub user_id: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub blacklisted_at: OffsetDateTime,
    pub reason: String,
}

fn session_ttl(app: &App) -> u64 {
    u64::try_from(app.config.ttl.session_data.as_millis()).unwrap_or(u64::MAX)
}

/// Creates a session under a new random id; one round trip.
#[tracing::instrument(skip_all, fields(user_id = %session.user_id))]
pub async fn create(app: &App, session: &Session) -> Result<SessionId, RedisUnavailable> {
    let raw = format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..));
    let id = SessionId::parse(&raw).map_err(|_| RedisUnavailable::Server)?;
    let key = app.keys.session(&id);
    let json = serde_json::to_string(session).map_err(|_| RedisUnavailable::Server)?;
    app.redis
        .set_px(key.as_str(), json, session_ttl(app))
        .await?;
    Ok(id)
}

/// Deletes a session; one round trip. Idempotent.
#[tracing::instrument(skip_all)]
pub async fn revoke(app: &App, id: &SessionId) -> Result<(), RedisUnavailable> {
    let key = app.keys.session(id);
    let k = &key;
    app.redis
        .run(|mut c| async move {
            let _: i64 = c.del(k).await?;
            Ok(())
        })
        .await
}

/// Revokes a token until `expires_at` (its `exp`); one round trip to the
/// durable Redis. A token that has already expired needs no entry.
pub async fn blacklist(
    app: &App,
    jti: &Jti,
    user: &UserId,
    expires_at: OffsetDateTime,
    reason: &str,
) -> Result<(), RedisUnavailable> {
    let now = OffsetDateTime::now_utc();
    let left = expires_at - now;
    if left <= time::Duration::ZERO {
        return Ok(());
    }
    let entry = BlacklistEntry {
        user_id: *user,
        blacklisted_at: now,
        reason: reason.chars().take(64).collect(),
    };
    let json = serde_json::to_string(&entry).map_err(|_| RedisUnavailable::Server)?;
    let key = app.keys.blacklist(jti);
    let ms = u64::try_from(left.whole_milliseconds())
        .unwrap_or(u64::MAX)
        .max(1);
    app.durable.set_px(key.as_str(), json, ms).await
}

/// What a request's credentials look like in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// The session (its TTL refreshed by this read), if it exists.
    pub session: Option<Session>,
    pub revoked: bool,
}

/// Reads the session (refreshing its sliding TTL) and checks the token's
/// blacklist entry, both requests at once.
#[tracing::instrument(skip_all)]
pub async fn check(
    app: &App,
    session: &SessionId,
    jti: &Jti,
) -> Result<CredentialState, RedisUnavailable> {
    let (skey, bkey) = (app.keys.session(session), app.keys.blacklist(jti));
    let ttl = session_ttl(app);
    let (sk, bk) = (&skey, &bkey);
    let (s, b) = tokio::join!(
        app.redis.run(|mut c| async move {
            let v: Option<String> = redis::cmd("GETEX")
                .arg(sk)
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await?;
            Ok(v)
        }),
        app.durable.run(|mut c| async move {
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

/// The remaining lifetime of a blacklist entry (tests and operations).
pub async fn blacklist_ttl(app: &App, jti: &Jti) -> Result<Option<Duration>, RedisUnavailable> {
    let key = app.keys.blacklist(jti);
    let k = &key;
    let ms: i64 = app
        .durable
        .run(|mut c| async move { redis::cmd("PTTL").arg(k).query_async(&mut c).await })
        .await?;
    Ok(u64::try_from(ms).ok().map(Duration::from_millis))
}
