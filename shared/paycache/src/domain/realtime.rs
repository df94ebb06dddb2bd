//! Real-time connections: the design's `ws_conn:{user_id}` and
//! `ws_meta:{connection_id}`, and `ws_all` (every connection, for
//! announcements).
//!
//! **A connection lives no longer than the sign-in that opened it.** Each
//! entry names the session (`sid`) and the token expiry (`exp`) of the
//! `$connect` that opened it:
//!
//! - `ws_conn:{user}` is a **hash** `connection id → "<sid> <exp>"` (the
//!   design's set of ids, with what the liveness check needs). It carries
//!   the user's hash tag, as the user's sessions do, so one script
//!   ([`live`]) tells which of a user's connections may still receive
//!   frames — token not expired, session still there — and takes the
//!   others out: one round trip per user, however many connections.
//! - `ws_all:{a<s>}` is a hash `connection id → "<user> <sid> <exp>"`
//!   (with `ws_all:{a<s>}:ids`, the ids in a sorted set, for paging in id
//!   order with an exact cursor), in [`REGISTRY_SHARDS`] shards (a connection's shard is a hash of its
//!   id), each its own slot: an announcement is fanned out shard by shard,
//!   in parallel, by as many senders as hold the partitions.
//! - `ws_conn:{user}:resume` holds the connections still catching up
//!   after a reconnect (`"<connection> <wallet>" → version`, docs/realtime.md →
//!   Reconnecting): until a connection's catch-up is sent, new frames of
//!   that wallet skip it, so that it receives the missed versions first.
//! - `ws_meta:{connection}` keeps the design's fields (who, since when,
//!   last ping, client) plus the session and expiry.
//!
//! Registry entries have the design's 2-hour TTL, which `ping` refreshes —
//! only while the sign-in lives ([`ping`]). What takes a connection out of
//! the registry (a sign-out, an expired token, an ended session found by a
//! sender or a ping) also has it **closed**: `DELETE @connections/{id}`,
//! sent by `ws-sender` (`crate::domain::delivery`).
//!
//! The registry's keys have different hash tags (a user, a connection, the
//! one `ws_all`), so each operation sends its requests at once: one
//! round-trip time.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::sessions::{self, Sessions};
use crate::infra::config::{ConnectionLimits, TtlConfig};
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ConnectionId, KeyFamily, SessionId, UserId, WalletId};

pub use crate::infra::keys::{REGISTRY_SHARDS, shard_of};

/// How long a reconnect's catch-up mark lasts when no sender gets to it:
/// after it, new frames reach the connection again even without the
/// catch-up.
const RESUME_MARK_MS: u64 = 15 * 60 * 1000;

/// The registry's liveness checks read sessions in Redis: in an execution
/// environment that saw Redis fail, only after it told Redis of the
/// sign-outs made meanwhile (`sessions::recovered`); until then they do
/// not answer (entries stay pending, a `ping` is answered 503).
async fn trusted(connections: &Connections) -> Result<(), RedisUnavailable> {
    if sessions::recovered(&connections.sessions).await {
        Ok(())
    } else {
        tracing::warn!(
            "the registry's sessions may predate sign-outs made during an outage: not answering until they are applied"
        );
        Err(RedisUnavailable::Connection)
    }
}

/// What `live.lua` returns: live ids, dead ids, unknown (id, sid) pairs,
/// resume marks ("<conn> <wallet>", version pairs).
type LiveScript = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

static LIVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("realtime/live.lua")));
static CONNECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("realtime/connect.lua")));
static PING: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("realtime/ping.lua")));
static PAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("realtime/page.lua")));

/// What the connection registry uses: Redis, the registry's TTL, and the
/// sessions (a connection lives while its session does).
#[derive(Debug, Clone)]
pub struct Connections {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) ttl: TtlConfig,
    pub(crate) sessions: Sessions,
    pub(crate) limits: ConnectionLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The design's `ws_meta:{connection_id}`, plus the sign-in it belongs to.
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
    /// The session the connecting token named.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The connecting token's `exp` (Unix seconds): nothing is sent after.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The sign-in a connection belongs to, as the `$connect` authorizer
/// verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user.
    pub user: UserId,
    /// Their session (`sid`).
    pub session: SessionId,
    /// The token's `exp`.
    pub expires_at: OffsetDateTime,
}

fn ttl_ms(connections: &Connections) -> u64 {
    let ttl = connections
        .ttl
        .of(KeyFamily::WsMeta)
        .unwrap_or(Duration::from_secs(7200));
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
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

/// Which connections may receive frames, and which were found dead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Per user, the connections whose token is valid and session alive.
    pub live: HashMap<UserId, Vec<ConnectionId>>,
    /// Connections whose token expired or session ended: already out of
    /// their user's `ws_conn`; to be closed and forgotten.
    pub dead: Vec<(ConnectionId, Option<UserId>)>,
    /// Connections still catching up on a wallet after a reconnect: new
    /// frames of that wallet skip them until their catch-up is sent.
    pub resuming: HashSet<(ConnectionId, WalletId)>,
}

/// The live connections of each of `users`, one script per user, all sent
/// at once: **one round-trip time for a whole batch** of recipients. Dead
/// ones are taken out of their user's registry and listed.
pub async fn live(
    connections: &Connections,
    users: &[UserId],
) -> Result<Liveness, RedisUnavailable> {
    trusted(connections).await?;
    let mut distinct: Vec<UserId> = users.to_vec();
    distinct.sort_by_key(|u| u.to_string());
    distinct.dedup();
    let now = now_secs();
    let answers = futures_util::future::join_all(distinct.iter().map(|user| async move {
        let set = connections.keys.ws_connections(user);
        let marks = connections.keys.ws_resume(user);
        let prefix = connections.keys.session_prefix(user);
        let (s, r, p) = (&set, &marks, &prefix);
        let found: Result<LiveScript, RedisUnavailable> = connections
            .redis
            .run(|mut c| async move {
                LIVE.key(s)
                    .key(r)
                    .arg(p)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        (*user, found)
    }))
    .await;
    let mut out = Liveness::default();
    let mut unknown: Vec<(UserId, SessionId, ConnectionId)> = Vec::new();
    for (user, found) in answers {
        let (live, dead, missing, marks) = found?;
        for pair in marks.chunks(2) {
            if let [field, _] = pair
                && let Some((conn, wallet)) = field.split_once(' ')
                && let (Ok(conn), Ok(wallet)) = (ConnectionId::parse(conn), WalletId::parse(wallet))
            {
                out.resuming.insert((conn, wallet));
            }
        }
        let ids = |v: Vec<String>| -> Vec<ConnectionId> {
            v.iter()
                .filter_map(|c| ConnectionId::parse(c).ok())
                .collect()
        };
        out.dead
            .extend(ids(dead).into_iter().map(|c| (c, Some(user))));
        out.live.insert(user, ids(live));
        for pair in missing.chunks(2) {
            if let [conn, sid] = pair
                && let (Ok(conn), Ok(sid)) = (ConnectionId::parse(conn), SessionId::parse(sid))
            {
                unknown.push((user, sid, conn));
            }
        }
    }
    if !unknown.is_empty() {
        // Sessions Redis does not hold (evicted, idled out): PostgreSQL
        // says which are live (one query for the batch); the others' sockets
        // are dead.
        let asked: Vec<(UserId, SessionId)> =
            unknown.iter().map(|(u, s, _)| (*u, s.clone())).collect();
        let live = sessions::reload(&connections.sessions, &asked)
            .await
            .map_err(|_| RedisUnavailable::Server)?;
        let mut dead = Vec::new();
        for (user, sid, conn) in unknown {
            if live.contains(&(user, sid)) {
                out.live.entry(user).or_default().push(conn);
            } else {
                dead.push((conn, Some(user)));
            }
        }
        forget(connections, &dead).await?;
        out.dead.extend(dead);
    }
    Ok(out)
}

/// Every registered connection of `users`, alive or not (the registry
/// before sign-ins were tracked: the alternative to [`live`], for the tests
/// that prove it; `test-variants` only).
#[cfg(feature = "test-variants")]
pub async fn registered(
    connections: &Connections,
    users: &[UserId],
) -> Result<Liveness, RedisUnavailable> {
    let mut out = Liveness::default();
    for user in users {
        let set = connections.keys.ws_connections(user);
        let s = &set;
        let ids: Vec<String> = connections
            .redis
            .run(|mut c| async move { c.hkeys(s).await })
            .await?;
        out.live.insert(
            *user,
            ids.iter()
                .filter_map(|c| ConnectionId::parse(c).ok())
                .collect(),
        );
    }
    Ok(out)
}

/// The user's live connections (see [`live`]); dead ones are taken out of
/// the registry on the way (not closed: that is the sender's job).
pub async fn connections(
    connections: &Connections,
    user: &UserId,
) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    let found = live(connections, std::slice::from_ref(user)).await?;
    forget(connections, &found.dead).await?;
    Ok(found.live.get(user).cloned().unwrap_or_default())
}

/// One page of `ws_all` shard `shard`, in connection-id order after
/// `after` (`""` for the first page; `realtime/page.lua`): the connections
/// that may receive frames, and the dead ones (token expired, session
/// ended, or an entry that is gone or does not parse), with the last id of
/// the page (`None` at the shard's end). One round trip for the page, one
/// for the distinct sessions it names (sent at once), and one PostgreSQL
/// query only for sessions Redis no longer holds.
pub async fn everyone_page(
    connections: &Connections,
    shard: u16,
    after: &str,
    count: usize,
) -> Result<
    (
        Option<String>,
        Vec<ConnectionId>,
        Vec<(ConnectionId, Option<UserId>)>,
    ),
    RedisUnavailable,
> {
    let (all, index) = (
        connections.keys.ws_all(shard),
        connections.keys.ws_all_ids(shard),
    );
    let (al, ix) = (&all, &index);
    let flat: Vec<String> = connections
        .redis
        .run(|mut c| async move {
            PAGE.key(al)
                .key(ix)
                .arg(after)
                .arg(count)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    let page: Vec<(String, String)> = flat
        .chunks(2)
        .filter_map(|p| match p {
            [id, value] => Some((id.clone(), value.clone())),
            _ => None,
        })
        .collect();
    let next = if page.len() < count {
        None
    } else {
        page.last().map(|(id, _)| id.clone())
    };
    let (live, dead) = judge(connections, page).await?;
    Ok((next, live, dead))
}

/// These connections of `ws_all` shard `shard`, judged as a page is (see
/// [`everyone_page`]): an announcement's retries. One `HMGET`.
pub async fn entries(
    connections: &Connections,
    shard: u16,
    ids: &[ConnectionId],
) -> Result<(Vec<ConnectionId>, Vec<(ConnectionId, Option<UserId>)>), RedisUnavailable> {
    if ids.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let all = connections.keys.ws_all(shard);
    let al = &all;
    let names: Vec<&str> = ids.iter().map(ConnectionId::as_str).collect();
    let n = &names;
    let values: Vec<Option<String>> = connections
        .redis
        .run(|mut c| async move { redis::cmd("HMGET").arg(al).arg(n).query_async(&mut c).await })
        .await?;
    let found: Vec<(String, String)> = ids
        .iter()
        .zip(values)
        // Not registered any more: nothing to send (it disconnected).
        .filter_map(|(id, v)| v.map(|v| (id.as_str().to_owned(), v)))
        .collect();
    judge(connections, found).await
}

/// Which registry entries (`id → "<user> <sid> <exp>"`) may receive
/// frames, and which are dead: each distinct session read once, all at
/// once; those Redis does not hold asked of PostgreSQL (one query).
async fn judge(
    connections: &Connections,
    entries: Vec<(String, String)>,
) -> Result<(Vec<ConnectionId>, Vec<(ConnectionId, Option<UserId>)>), RedisUnavailable> {
    trusted(connections).await?;
    let now = now_secs();
    let mut candidates = Vec::new();
    let mut dead = Vec::new();
    for (id, value) in entries {
        let Ok(conn) = ConnectionId::parse(&id) else {
            continue;
        };
        let mut parts = value.split(' ');
        let parsed = (|| {
            let user = UserId::parse(parts.next()?).ok()?;
            let session = SessionId::parse(parts.next()?).ok()?;
            let exp: i64 = parts.next()?.parse().ok()?;
            Some((user, session, exp))
        })();
        match parsed {
            Some((user, session, exp)) if exp > now => candidates.push((conn, user, session)),
            Some((user, ..)) => dead.push((conn, Some(user))),
            None => dead.push((conn, None)),
        }
    }
    // Each distinct session is read once, all at once; those Redis does
    // not hold are asked of PostgreSQL (one query for the page).
    let distinct: HashSet<(UserId, String)> = candidates
        .iter()
        .map(|(_, u, s)| (*u, s.to_string()))
        .collect();
    let held: HashMap<(UserId, String), Option<bool>> = futures_util::stream::iter(distinct)
        .map(|(user, sid)| async move {
            let key = format!("{}{sid}", connections.keys.session_prefix(&user));
            let k = &key;
            let v: Result<Option<String>, RedisUnavailable> = connections
                .redis
                .run(|mut c| async move { c.get(k).await })
                .await;
            // Some(true): held; Some(false): ended; None: missing.
            ((user, sid), v.map(|v| v.map(|v| v != sessions::TOMBSTONE)))
        })
        // Bounded: sixteen announcement shards paging at once must not pile
        // thousands of reads onto one connection (they time out).
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(k, v)| v.map(|v| (k, v)))
        .collect::<Result<_, _>>()?;
    let missing: Vec<(UserId, SessionId)> = held
        .iter()
        .filter(|(_, v)| v.is_none())
        .filter_map(|((u, s), _)| SessionId::parse(s).ok().map(|s| (*u, s)))
        .collect();
    let reloaded: HashSet<(UserId, String)> = if missing.is_empty() {
        HashSet::new()
    } else {
        sessions::reload(&connections.sessions, &missing)
            .await
            .map_err(|_| RedisUnavailable::Server)?
            .into_iter()
            .map(|(u, s)| (u, s.to_string()))
            .collect()
    };
    let mut live = Vec::new();
    for (conn, user, session) in candidates {
        let k = (user, session.to_string());
        let alive = match held.get(&k) {
            Some(Some(held)) => *held,
            _ => reloaded.contains(&k),
        };
        if alive {
            live.push(conn);
        } else {
            dead.push((conn, Some(user)));
        }
    }
    Ok((live, dead))
}

/// Every live connection (announcements), page by page through `ws_all`;
/// dead ones are forgotten on the way (not closed: see `ws-sender`).
pub async fn all_connections(
    connections: &Connections,
) -> Result<Vec<ConnectionId>, RedisUnavailable> {
    let mut ids = Vec::new();
    for shard in 0..REGISTRY_SHARDS {
        let mut after = String::new();
        loop {
            let (next, live, dead) = everyone_page(connections, shard, &after, 500).await?;
            ids.extend(live);
            forget(connections, &dead).await?;
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
    }
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup_by(|a, b| a.as_str() == b.as_str());
    Ok(ids)
}
