//! A connection's life in the registry: `$connect` (within the sign-in's
//! and the user's limits, with a reconnect's resume marks), `ping` (only
//! while its sign-in lives, within its limit), `$disconnect`, and taking
//! connections out.

use super::ConnectionMeta;
use super::Connections;
use super::SignedIn;
use super::liveness::trusted;
use super::now_secs;
use super::ttl_ms;
use crate::domain::sessions;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use crate::infra::keys::shard_of;
use redis::AsyncCommands;
use redis::Script;
use std::collections::HashMap;
use std::sync::LazyLock;
use time::OffsetDateTime;

/// How long a reconnect's catch-up mark lasts when no sender gets to it:
/// after it, new frames reach the connection again even without the
/// catch-up.
pub(super) const RESUME_MARK_MS: u64 = 15 * 60 * 1000;

pub(super) static CONNECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("connect.lua")));

pub(super) static PING: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("ping.lua")));

pub(super) async fn write_meta(
    connections: &Connections,
    conn: &ConnectionId,
    meta: &ConnectionMeta,
) -> Result<(), RedisUnavailable> {
    let json = serde_json::to_string(meta).map_err(|_| RedisUnavailable::Server)?;
    let key = connections.keys.ws_meta(conn);
    connections
        .redis
        .set_px(key.as_str(), json, ttl_ms(connections))
        .await
}

/// Why `$connect` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// The sign-in already has `WS_MAX_CONNECTIONS_PER_SESSION` open.
    #[error("this sign-in has the most connections allowed open")]
    SessionLimit,
    /// The user already has `WS_MAX_CONNECTIONS_PER_USER` open.
    #[error("this user has the most connections allowed open")]
    UserLimit,
    /// Redis could not register it.
    #[error(transparent)]
    Unavailable(#[from] RedisUnavailable),
}

/// `$connect`: registers the connection for the sign-in that opened it —
/// unless the sign-in or the user already has the most connections open
/// (`WS_MAX_CONNECTIONS_PER_SESSION`, `WS_MAX_CONNECTIONS_PER_USER`);
/// with `resume` (wallets and the last version the client saw), marks it
/// as catching up on those wallets (docs/realtime.md → Reconnecting). One
/// round-trip time: the user's registry script (limits, registration,
/// marks), the metadata and the `ws_all` shard are sent at once; a refused
/// connection's metadata and shard entry are taken back (one more).
#[tracing::instrument(skip_all, fields(user_id = %by.user, connection_id = %conn))]
pub async fn connect(
    connections: &Connections,
    by: &SignedIn,
    conn: &ConnectionId,
    client_info: Option<&str>,
    resume: &[(WalletId, u64)],
) -> Result<(), ConnectRefused> {
    let now = OffsetDateTime::now_utc();
    let exp = by.expires_at.unix_timestamp();
    let meta = ConnectionMeta {
        user_id: by.user,
        connected_at: now,
        last_ping: now,
        client_info: client_info.map(|c| c.chars().take(256).collect()),
        session_id: Some(by.session.to_string()),
        expires_at: Some(exp),
    };
    let set = connections.keys.ws_connections(&by.user);
    let marks = connections.keys.ws_resume(&by.user);
    let all = connections.keys.ws_all(shard_of(conn));
    let index = connections.keys.ws_all_ids(shard_of(conn));
    let ix = &index;
    let mine = format!("{} {exp}", by.session);
    let everyone = format!("{} {} {exp}", by.user, by.session);
    let (s, r, al, id, ms) = (&set, &marks, &all, conn.as_str(), ttl_ms(connections));
    let (m, e, limits) = (&mine, &everyone, connections.limits);
    let (a, b, c) = tokio::join!(
        write_meta(connections, conn, &meta),
        connections.redis.run(|mut c| async move {
            let mut script = CONNECT.key(s);
            script
                .key(r)
                .arg(id)
                .arg(m)
                .arg(ms)
                .arg(now.unix_timestamp())
                .arg(limits.per_session)
                .arg(limits.per_user)
                .arg(RESUME_MARK_MS);
            for (wallet, version) in resume {
                script.arg(format!("{id} {wallet}")).arg(*version);
            }
            let v: i64 = script.invoke_async(&mut c).await?;
            Ok(v)
        }),
        connections.redis.run(|mut c| async move {
            let _: () = redis::pipe()
                .atomic()
                .hset(al, id, e)
                .ignore()
                .zadd(ix, id, 0)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(())
        })
    );
    let refused = match b {
        Ok(1) => None,
        Ok(-1) => Some(ConnectRefused::SessionLimit),
        Ok(_) => Some(ConnectRefused::UserLimit),
        Err(why) => Some(ConnectRefused::Unavailable(why)),
    };
    if let Some(why) = refused {
        // Not registered for its user: nothing of it may stay anywhere.
        if let Err(e) = forget(connections, &[(conn.clone(), None)]).await {
            tracing::warn!(
                reason = e.as_str(),
                "could not take back a refused connection's entries"
            );
        }
        return Err(why);
    }
    a.and(c)?;
    Ok(())
}

/// The connection's metadata, if it is still registered.
pub async fn meta(
    connections: &Connections,
    conn: &ConnectionId,
) -> Result<Option<ConnectionMeta>, RedisUnavailable> {
    let key = connections.keys.ws_meta(conn);
    let k = &key;
    let raw: Option<String> = connections
        .redis
        .run(|mut c| async move { c.get(k).await })
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// What a `ping` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// Registered and its sign-in lives: `last_ping` and the TTLs refreshed.
    Alive,
    /// Not registered (expired, closed, or never connected).
    Unknown,
    /// Its token expired or its session ended: taken out of the registry,
    /// to be closed.
    Ended,
    /// It pinged more often than `WS_PINGS_PER_MINUTE`: taken out of the
    /// registry, to be closed.
    TooMany,
}

/// `ping`: refreshes `last_ping` and the registry's TTLs while the sign-in
/// that opened the connection lives; otherwise takes the connection out
/// (see [`Ping`]). Two round trips; a third when it ends the connection.
#[tracing::instrument(skip_all, fields(connection_id = %conn))]
pub async fn ping(
    connections: &Connections,
    conn: &ConnectionId,
) -> Result<Ping, RedisUnavailable> {
    trusted(connections).await?;
    let Some(mut m) = meta(connections, conn).await? else {
        return Ok(Ping::Unknown);
    };
    m.last_ping = OffsetDateTime::now_utc();
    let set = connections.keys.ws_connections(&m.user_id);
    let counter = connections.keys.ws_pings(&m.user_id, conn);
    let prefix = connections.keys.session_prefix(&m.user_id);
    let (s, k, p, id, ms, now) = (
        &set,
        &counter,
        &prefix,
        conn.as_str(),
        ttl_ms(connections),
        now_secs(),
    );
    let most = connections.limits.pings_per_minute;
    let (alive, refreshed) = tokio::join!(
        connections.redis.run(|mut c| async move {
            let v: i64 = PING
                .key(s)
                .key(k)
                .arg(p)
                .arg(id)
                .arg(now)
                .arg(ms)
                .arg(most)
                .invoke_async(&mut c)
                .await?;
            Ok(v)
        }),
        write_meta(connections, conn, &m)
    );
    let alive = match alive? {
        -2 => {
            forget(connections, &[(conn.clone(), Some(m.user_id))]).await?;
            return Ok(Ping::TooMany);
        }
        // Redis does not hold the session: PostgreSQL decides (and a live
        // one is put back).
        2 => {
            let session = m
                .session_id
                .as_deref()
                .and_then(|sid| SessionId::parse(sid).ok());
            let live = match session {
                Some(sid) => !sessions::reload(&connections.sessions, &[(m.user_id, sid)])
                    .await
                    .map_err(|_| RedisUnavailable::Server)?
                    .is_empty(),
                None => false,
            };
            if live {
                let _: bool = connections
                    .redis
                    .run(|mut c| async move { c.pexpire(s, ms as i64).await })
                    .await?;
            }
            live
        }
        v => v == 1,
    };
    if alive {
        return refreshed.map(|_| Ping::Alive);
    }
    // Out of the user's registry (a sign-out took it out), just found dead,
    // or found over by PostgreSQL: either way it is to be closed.
    forget(connections, &[(conn.clone(), Some(m.user_id))]).await?;
    Ok(Ping::Ended)
}

/// `$disconnect`: removes every entry of the connection. Idempotent.
#[tracing::instrument(skip_all, fields(connection_id = %conn))]
pub async fn disconnect(
    connections: &Connections,
    conn: &ConnectionId,
    user: Option<&UserId>,
) -> Result<(), RedisUnavailable> {
    let user = match user {
        Some(u) => Some(*u),
        None => meta(connections, conn).await?.map(|m| m.user_id),
    };
    forget(connections, &[(conn.clone(), user)]).await
}

/// A connection's catch-up on `wallet` was sent: new frames of the
/// wallet reach it again.
pub async fn caught_up(
    connections: &Connections,
    user: &UserId,
    conn: &ConnectionId,
    wallet: &WalletId,
) -> Result<(), RedisUnavailable> {
    let key = connections.keys.ws_resume(user);
    let (k, f) = (&key, format!("{conn} {wallet}"));
    connections
        .redis
        .run(|mut c| async move {
            let _: i64 = c.hdel(k, &f).await?;
            Ok(())
        })
        .await
}

/// Removes connections from the registry (`ws_meta`, their `ws_all`
/// shard, and their user's `ws_conn` when the user is given), all requests
/// at once.
pub async fn forget(
    connections: &Connections,
    conns: &[(ConnectionId, Option<UserId>)],
) -> Result<(), RedisUnavailable> {
    if conns.is_empty() {
        return Ok(());
    }
    let mut by_shard: HashMap<u16, Vec<&str>> = HashMap::new();
    for (c, _) in conns {
        by_shard.entry(shard_of(c)).or_default().push(c.as_str());
    }
    let from_all = async {
        let done = futures_util::future::join_all(by_shard.iter().map(|(shard, ids)| async move {
            let all = connections.keys.ws_all(*shard);
            let index = connections.keys.ws_all_ids(*shard);
            let (al, ix) = (&all, &index);
            connections
                .redis
                .run(|mut c| async move {
                    let _: () = redis::pipe()
                        .atomic()
                        .hdel(al, ids)
                        .ignore()
                        .zrem(ix, ids)
                        .ignore()
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                })
                .await
        }))
        .await;
        done.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
    };
    let metas = futures_util::future::join_all(conns.iter().map(|(conn, user)| async move {
        let key = connections.keys.ws_meta(conn);
        let set = user.map(|u| connections.keys.ws_connections(&u));
        let (k, s, id) = (&key, &set, conn.as_str());
        let (a, b) = tokio::join!(
            connections.redis.run(|mut c| async move {
                let _: i64 = c.del(k).await?;
                Ok(())
            }),
            async {
                match s {
                    Some(s) => {
                        connections
                            .redis
                            .run(|mut c| async move {
                                let _: i64 = c.hdel(s, id).await?;
                                Ok(())
                            })
                            .await
                    }
                    None => Ok(()),
                }
            }
        );
        a.and(b)
    }));
    let (a, results) = tokio::join!(from_all, metas);
    results.into_iter().fold(a, |acc, r| acc.and(r))
}
