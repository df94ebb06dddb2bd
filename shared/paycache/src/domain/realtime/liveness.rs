//! Which registered connections may receive frames: their token not
//! expired and their session alive — one script per user for a batch of
//! recipients, one page at a time for announcements — in an execution
//! environment that trusts Redis after any outage it saw.

use super::Connections;
use super::lifecycle::forget;
use super::now_secs;
use crate::domain::sessions;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::Script;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::LazyLock;

/// The registry's liveness checks read sessions in Redis: in an execution
/// environment that saw Redis fail, only after it told Redis of the
/// sign-outs made meanwhile (`sessions::recovered`); until then they do
/// not answer (entries stay pending, a `ping` is answered 503).
pub(super) async fn trusted(connections: &Connections) -> Result<(), RedisUnavailable> {
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
pub(super) type LiveScript = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

pub(super) static LIVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("live.lua")));

pub(super) static PAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("page.lua")));

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
pub(super) async fn judge(
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
