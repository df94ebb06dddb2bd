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

use crate::app::App;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::{ConnectionId, KeyFamily, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionMeta {
    pub user_id: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_ping: OffsetDateTime,
    pub client_info: Option<String>,
}

fn ttl_ms(app: &App) -> u64 {
    let ttl = app
        .config
        .ttl
        .of(KeyFamily::WsMeta)
        .unwrap_or(Duration::from_secs(7200));
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

async fn write_meta(
    app: &App,
    conn: &ConnectionId,
    meta: &ConnectionMeta,
) -> Result<(), RedisUnavailable> {
    let json = serde_json::to_string(meta).map_err(|_| RedisUnavailable::Server)?;
    let key = app.keys.ws_meta(conn);
    app.redis.set_px(key.as_str(), json, ttl_ms(app)).await
}

/// `$connect`: registers the connection for the user.
#[tracing::instrument(skip_all, fields(user_id = %user, connection_id = %conn))]
pub async fn connect(
    app: &App,
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
    let set = app.keys.ws_connections(user);
    let (s, id, ms) = (&set, conn.as_str(), ttl_ms(app));
    let (a, b) = tokio::join!(
        write_meta(app, conn, &meta),
        app.redis.run(|mut c| async move {
            let _: () = redis::pipe()
                .sadd(s, id)
                .ignore()
                .pexpire(s, ms as i64)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(())
        })
    );
    a.and(b)
}

/// The connection's metadata, if it is still registered.
pub async fn meta(
    app: &App,
    conn: &ConnectionId,
) -> Result<Option<ConnectionMeta>, RedisUnavailable> {
    let key = app.keys.ws_meta(conn);
    let k = &key;
    let raw: Option<String> = app.redis.run(|mut c| async move { c.get(k).await }).await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// `ping`: refreshes `last_ping` and both TTLs. Returns false if the
/// connection is not registered (it expired or was never connected).
#[tracing::instrument(skip_all, fields(connection_id = %conn))]
pub async fn ping(app: &App, conn: &ConnectionId) -> Result<bool, RedisUnavailable> {
    let Some(mut m) = meta(app, conn).await? else {
        return Ok(false);
    };
    m.last_ping = OffsetDateTime::now_utc();
    let set = app.keys.ws_connections(&m.user_id);
    let (s, ms) = (&set, ttl_ms(app) as i64);
    let (a, b) = tokio::join!(
        write_meta(app, conn, &m),
        app.redis.run(|mut c| async move {
            let _: bool = c.pexpire(s, ms).await?;
            Ok(())
        })
    );
    a.and(b).map(|_| true)
}

/// `$disconnect`: removes both entries. Idempotent.
#[tracing::instrument(skip_all, fields(connection_id = %conn))]
pub async fn disconnect(
    app: &App,
    conn: &ConnectionId,
    user: Option<&UserId>,
) -> Result<(), RedisUnavailable> {
    let user = match user {
        Some(u) => Some(*u),
        None => meta(app, conn).await?.map(|m| m.user_id),
    };
    let key = app.keys.ws_meta(conn);
    let k = &key;
    let del = app.redis.run(|mut c| async move {
        let _: i64 = c.del(k).await?;
        Ok(())
    });
    match user {
        Some(u) => {
            let set = app.keys.ws_connections(&u);
            let (s, id) = (&set, conn.as_str());
            let (a, b) = tokio::join!(
                del,
                app.redis.run(|mut c| async move {
                    let _: i64 = c.srem(s, id).await?;
                    Ok(())
                })
            );
            a.and(b)
        }
        None => del.await,
    }
}

/// The user's live connections; ids whose metadata has expired are removed
/// from the set on the way.
pub async fn connections(app: &App, user: &UserId) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    let set = app.keys.ws_connections(user);
    let s = &set;
    let ids: Vec<String> = app
        .redis
        .run(|mut c| async move { c.smembers(s).await })
        .await?;
    let ids: Vec<ConnectionId> = ids
        .iter()
        .filter_map(|i| ConnectionId::parse(i).ok())
        .collect();
    let checks = ids.iter().map(|id| async move {
        let key = app.keys.ws_meta(id);
        let k = &key;
        let alive: Result<bool, _> = app
            .redis
            .run(|mut c| async move { c.exists(k).await })
            .await;
        (id.clone(), alive)
    });
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, alive) in futures_util::future::join_all(checks).await {
        match alive? {
            true => live.push(id),
            false => dead.push(id.to_string()),
        }
    }
    if !dead.is_empty() {
        let d = &dead;
        app.redis
            .run(|mut c| async move {
                let _: i64 = c.srem(s, d).await?;
                Ok(())
            })
            .await?;
    }
    Ok(live)
}
