//! Real-time connections: the design's `ws_conn:{user_id}` (a set of
//! connection ids) and `ws_meta:{connection_id}` (who, since when, last
//! ping, client), both with a 2-hour TTL that `ping` refreshes.
//!
//! The two keys have different hash tags (a user, a connection), so each
//! operation sends its two requests at once: one round-trip time. A
//! connection whose metadata expired (the client vanished without
//! `$disconnect`) is pruned from its user's set the next time the set is
//! listed — the set itself is only a hint; `ws_meta` is the truth.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::infra::config::TtlConfig;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ConnectionId, KeyFamily, UserId};

/// What the connection registry uses: Redis and the registry's TTL.
#[derive(Debug, Clone)]
pub struct Connections {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) ttl: TtlConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The design's `ws_meta:{connection_id}`.
pub struct ConnectionMeta {
    /// Who connected.
    pub user_id: UserId,
    #[serde(with = "time::serde::rfc3339")]
    /// When they connected.
    pub connected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    /// Their last `ping`.
    pub last_ping: OffsetDateTime,
    /// The client's `User-Agent`, truncated to 256 characters.
    pub client_info: Option<String>,
}

fn ttl_ms(connections: &Connections) -> u64 {
    let ttl = connections
        .ttl
        .of(KeyFamily::WsMeta)
        .unwrap_or(Duration::from_secs(7200));
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

async fn write_meta(
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

/// `$connect`: registers the connection for the user.
#[tracing::instrument(skip_all, fields(user_id = %user, connection_id = %conn))]
pub async fn connect(
    connections: &Connections,
    user: &UserId,
    conn: &ConnectionId,
    client_info: Option<&str>,
) -> Result<(), RedisUnavailable> {
    let now = OffsetDateTime::now_utc();
    let meta = ConnectionMeta {
        user_id: *user,
        connected_at: now,
        last_ping: now,
        client_info: client_info.map(|c| c.chars().take(256).collect()),
    };
    let set = connections.keys.ws_connections(user);
    let all = connections.keys.ws_all();
    let (s, al, id, ms) = (&set, &all, conn.as_str(), ttl_ms(connections));
    let (a, b, e) = tokio::join!(
        write_meta(connections, conn, &meta),
        connections.redis.run(|mut c| async move {
            let _: () = redis::pipe()
                .sadd(s, id)
                .ignore()
                .pexpire(s, ms as i64)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(())
        }),
        connections.redis.run(|mut c| async move {
            let _: i64 = c.sadd(al, id).await?;
            Ok(())
        })
    );
    a.and(b).and(e)
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

/// `ping`: refreshes `last_ping` and both TTLs. Returns false if the
/// connection is not registered (it expired or was never connected).
#[tracing::instrument(skip_all, fields(connection_id = %conn))]
pub async fn ping(
    connections: &Connections,
    conn: &ConnectionId,
) -> Result<bool, RedisUnavailable> {
    let Some(mut m) = meta(connections, conn).await? else {
        return Ok(false);
    };
    m.last_ping = OffsetDateTime::now_utc();
    let set = connections.keys.ws_connections(&m.user_id);
    let (s, ms) = (&set, ttl_ms(connections) as i64);
    let (a, b) = tokio::join!(
        write_meta(connections, conn, &m),
        connections.redis.run(|mut c| async move {
            let _: bool = c.pexpire(s, ms).await?;
            Ok(())
        })
    );
    a.and(b).map(|_| true)
}

/// `$disconnect`: removes both entries. Idempotent.
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
    let key = connections.keys.ws_meta(conn);
    let all = connections.keys.ws_all();
    let (k, al, cid) = (&key, &all, conn.as_str());
    let del = async {
        let (a, b) = tokio::join!(
            connections.redis.run(|mut c| async move {
                let _: i64 = c.del(k).await?;
                Ok(())
            }),
            connections.redis.run(|mut c| async move {
                let _: i64 = c.srem(al, cid).await?;
                Ok(())
            })
        );
        a.and(b)
    };
    match user {
        Some(u) => {
            let set = connections.keys.ws_connections(&u);
            let (s, id) = (&set, conn.as_str());
            let (a, b) = tokio::join!(
                del,
                connections.redis.run(|mut c| async move {
                    let _: i64 = c.srem(s, id).await?;
                    Ok(())
                })
            );
            a.and(b)
        }
        None => del.await,
    }
}

/// Every live connection (for announcements): the `ws_all` set, read in
/// pages; ids whose metadata has expired are removed on the way.
pub async fn all_connections(
    connections: &Connections,
) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    let all = connections.keys.ws_all();
    let al = &all;
    let mut cursor: u64 = 0;
    let mut ids = Vec::new();
    loop {
        let (next, page): (u64, Vec<String>) = connections
            .redis
            .run(|mut c| async move {
                redis::cmd("SSCAN")
                    .arg(al)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        ids.extend(page.iter().filter_map(|i| ConnectionId::parse(i).ok()));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup_by(|a, b| a.as_str() == b.as_str());
    live(connections, al, ids).await
}

/// The ids among `ids` whose metadata still exists; the others are removed
/// from `set`.
async fn live(
    connections: &Connections,
    set: &str,
    ids: Vec<ConnectionId>,
) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    use futures_util::StreamExt;
    let checks: Vec<(ConnectionId, Result<bool, RedisUnavailable>)> =
        futures_util::stream::iter(ids)
            .map(|id| async move {
                let key = connections.keys.ws_meta(&id);
                let k = &key;
                let alive = connections
                    .redis
                    .run(|mut c| async move { c.exists(k).await })
                    .await;
                (id, alive)
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, alive) in checks {
        match alive? {
            true => live.push(id),
            false => dead.push(id.to_string()),
        }
    }
    if !dead.is_empty() {
        let d = &dead;
        connections
            .redis
            .run(|mut c| async move {
                let _: i64 = c.srem(set, d).await?;
                Ok(())
            })
            .await?;
    }
    Ok(live)
}

/// The user's live connections; ids whose metadata has expired are removed
/// from the set on the way.
pub async fn connections(
    connections: &Connections,
    user: &UserId,
) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    let set = connections.keys.ws_connections(user);
    let s = &set;
    let ids: Vec<String> = connections
        .redis
        .run(|mut c| async move { c.smembers(s).await })
        .await?;
    let ids: Vec<ConnectionId> = ids
        .iter()
        .filter_map(|i| ConnectionId::parse(i).ok())
        .collect();
    live(connections, s.as_str(), ids).await
}
