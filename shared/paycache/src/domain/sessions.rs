//! Sessions and token revocation: the design's `session:{session_id}` and
//! `blacklist:{token_jti}`, plus an index of each user's sessions.
//!
//! - A **session** holds the design's data (user, e-mail, roles,
//!   permissions, last activity, IP, device) with a sliding TTL
//!   (`CACHE_TTL_SESSION_DATA_SECS`): reading it for a request refreshes it,
//!   in the same command (`GETEX … PX`). Its key carries its **user's** hash
//!   tag (`session:{user}:<sid>`; every token names both), so that the
//!   user's **session index** (`user_sessions:{user}`), their sessions and
//!   their WebSocket registry (`ws_conn:{user}`) share a slot: signing in
//!   writes the session and its index entry in one script, and signing out —
//!   of one session or of all — ends the sessions and takes their sockets
//!   out of the registry in one script ([`end`]).
//! - A **blacklist entry** revokes one token by its `jti` for as long as any
//!   verifier could still accept it: until the token's `exp` plus
//!   [`REVOCATION_GRACE`], the largest clock leeway a verifier here allows
//!   (`AUTH_LEEWAY_SECS` ≤ 300 s). Shorter would re-validate a revoked
//!   token in the leeway; a fixed 24 h wastes memory. Blacklist entries live
//!   in the durable Redis (`REDIS_DURABLE_URL`, `noeviction`): an evicted
//!   entry would make a revoked token valid again.
//!
//! A request's check sends the session read and the blacklist read at once:
//! one round-trip time (they have different hash tags, and may be in
//! different Redis groups).

use std::time::Duration;

use std::sync::LazyLock;

use redis::AsyncCommands;
use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::identity::{Denied, Principal};
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ClientId, ConnectionId, Jti, SessionId, UserId};

/// A blacklist entry outlives its token's `exp` by this much: the largest
/// clock leeway any verifier here accepts (`AUTH_LEEWAY_SECS` is at most
/// 300 s; the routes allow 5 s; API Gateway's JWT authorizer none).
pub const REVOCATION_GRACE: Duration = Duration::from_secs(300);

static SIGN_IN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sessions/sign_in.lua")));
static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("sessions/end.lua")));

/// What sessions and revocation use: the cache Redis for sessions and
/// their index, the durable one for blacklist entries, and the TTLs.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) durable: Redis,
    pub(crate) session_ttl: Duration,
    pub(crate) index_ttl: Duration,
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Creates a session under a new random id and adds it to its user's
/// index: one script, one round trip.
#[tracing::instrument(skip_all, fields(user_id = %session.user_id))]
pub async fn create(sessions: &Sessions, session: &Session) -> Result<SessionId, RedisUnavailable> {
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
    /// user's registry (still open until closed: see `realtime::close`).
    pub connections: Vec<ConnectionId>,
}

/// Ends one session of `user`, or all of them, and takes the WebSocket
/// connections they opened out of the user's registry: one script, one
/// round trip. Idempotent.
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn end(
    sessions: &Sessions,
    user: &UserId,
    ending: &Ending,
) -> Result<Ended, RedisUnavailable> {
    let (index, registry) = (
        sessions.keys.user_sessions(user),
        sessions.keys.ws_connections(user),
    );
    let prefix = sessions.keys.session_prefix(user);
    let (mode, sid) = match ending {
        Ending::One(s) => ("one", s.as_str()),
        Ending::All => ("all", ""),
    };
    let (i, r, p) = (&index, &registry, &prefix);
    let (ended, closed): (Vec<String>, Vec<String>) = sessions
        .redis
        .run(|mut c| async move {
            END.key(i)
                .key(r)
                .arg(p)
                .arg(mode)
                .arg(sid)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(Ended {
        sessions: ended
            .iter()
            .filter_map(|s| SessionId::parse(s).ok())
            .collect(),
        connections: closed
            .iter()
            .filter_map(|c| ConnectionId::parse(c).ok())
            .collect(),
    })
}

/// The ids in `user`'s session index (tests and operations; sessions that
/// idled out may still be listed until the next sign-in prunes them).
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
/// [`REVOCATION_GRACE`]; one round trip to the durable Redis. A token past
/// that needs no entry: no verifier accepts it.
pub async fn blacklist(
    sessions: &Sessions,
    jti: &Jti,
    principal: &Principal,
    expires_at: OffsetDateTime,
    reason: &str,
) -> Result<(), RedisUnavailable> {
    let now = OffsetDateTime::now_utc();
    let left = expires_at + REVOCATION_GRACE - now;
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

/// What a request's credentials look like in Redis: each read's own
/// answer, so that a "revoked" wins even when the other read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// The session (its TTL refreshed by this read), if it exists.
    pub session: Result<Option<Session>, RedisUnavailable>,
    /// Whether the token's `jti` is blacklisted.
    pub revoked: Result<bool, RedisUnavailable>,
}

/// What the credentials say of a user's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed in: the session.
    Valid(Session),
    /// Refused, whatever else failed: a definite "revoked", "no session"
    /// or "another user's session" always wins.
    Refused(Denied),
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
            Ok(None) => Verdict::Refused(Denied::NoSession),
            Ok(Some(s)) if s.user_id != *user => Verdict::Refused(Denied::SessionMismatch),
            Ok(Some(s)) => match self.revoked {
                Ok(_) => Verdict::Valid(s),
                Err(why) => Verdict::Unknown(why),
            },
            Err(why) => Verdict::Unknown(why),
        }
    }
}

/// Reads the session (refreshing its sliding TTL) and checks the token's
/// blacklist entry, both requests at once.
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
        session: s.map(|v| v.and_then(|raw| serde_json::from_str::<Session>(&raw).ok())),
        revoked: b.map(|n| n > 0),
    }
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
