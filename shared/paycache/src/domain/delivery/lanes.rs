//! A fetched batch delivered lane by lane (one per wallet, per user, per
//! announcement shard; in order within a lane, lanes concurrently): the
//! batch's recipients looked up once, posts `WS_FAN_OUT` at a time, dead
//! and gone connections closed and pruned, entries fully handled
//! acknowledged.

use futures_util::StreamExt;
use redis::AsyncCommands;

use super::Deliveries;
use super::FRAME_LIMIT;
use super::GROUP;
use super::LANES;
use super::Report;
use super::announcements::fan_out;
use super::catch_up::CaughtUp;
use super::catch_up::catch_up;
use super::entry::Body;
use super::entry::Entry;
use super::management::Posted;
use super::sender::Sender;
use super::wallet_log::deliver_balance;
use crate::domain::delivery_queue::CloseReason;
use crate::domain::delivery_queue::frame;
use crate::domain::realtime;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use crate::patterns::pubsub;
use serde_json::Map;
use serde_json::Value;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// A frame over [`FRAME_LIMIT`] replaced by what the client can act on.
pub(super) fn fit(frame: String) -> (String, bool) {
    if frame.len() <= FRAME_LIMIT {
        return (frame, false);
    }
    let parsed: Map<String, Value> = serde_json::from_str(&frame).unwrap_or_default();
    let field = |k: &str| parsed.get(k).cloned().unwrap_or(Value::Null);
    let stub = serde_json::json!({
        "id": field("id"),
        "channel": field("channel"),
        "type": "message_too_large",
        "original_type": field("type"),
        "bytes": frame.len(),
        "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
    });
    (stub.to_string(), true)
}

/// A lane: entries that must be delivered in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum LaneKey {
    Wallet(WalletId),
    User(UserId),
    Alone(String),
    Other,
}

/// Delivers one lane's entries in order; returns what it did and the ids
/// fully handled (with their partition).
pub(super) async fn deliver_lane(
    deliveries: &Deliveries,
    sender: &Sender,
    // Who may receive frames in the batch: the live connections of every
    // user it addresses, found in one round-trip time (`realtime::live`),
    // and the reconnects still catching up.
    found: Option<&realtime::Liveness>,
    lane: &[&Entry],
) -> (Report, Vec<(u16, String)>) {
    let mut report = Report::default();
    let mut done = Vec::new();
    // Every version a kick in this batch announces was logged before the
    // batch was fetched, so the first read of a wallet's log covers them
    // all — unless a catch-up in between let a connection in.
    let mut covered = false;
    // Connections whose catch-up this lane sent: the wallet's later frames
    // reach them (the batch's liveness was read before).
    let mut caught_up: HashSet<ConnectionId> = HashSet::new();
    // When this lane's catch-ups must stop (set at its first catch-up).
    let mut slice_end: Option<Instant> = None;
    for entry in lane {
        let ok = match (&entry.body, found) {
            (Body::Balance { .. }, _) if covered => true,
            (Body::Balance { .. } | Body::Message { .. } | Body::CatchUp { .. }, None) => false,
            (
                Body::Balance {
                    wallet,
                    owner,
                    from,
                },
                Some(found),
            ) => {
                let conns: Vec<ConnectionId> = found
                    .live
                    .get(owner)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| {
                        caught_up.contains(c) || !found.resuming.contains(&(c.clone(), *wallet))
                    })
                    .collect();
                covered =
                    deliver_balance(deliveries, sender, wallet, conns, *from, &mut report).await;
                covered
            }
            (
                Body::CatchUp {
                    wallet,
                    owner,
                    conn,
                    after,
                },
                Some(found),
            ) => {
                let live = found
                    .live
                    .get(owner)
                    .is_some_and(|conns| conns.contains(conn));
                // A lane's catch-ups take at most `WS_CATCH_UP_SLICE_MS`
                // of the batch: the batch (every other lane's frames)
                // waits for its slowest lane.
                let until = *slice_end
                    .get_or_insert_with(|| Instant::now() + deliveries.config.catch_up_slice);
                let outcome = if !live {
                    // Gone, or its sign-in is over: nothing to catch up.
                    CaughtUp::Done
                } else if Instant::now() >= until {
                    CaughtUp::Paused(*after)
                } else {
                    catch_up(deliveries, sender, wallet, conn, *after, until, &mut report).await
                };
                match outcome {
                    CaughtUp::Done if live => {
                        caught_up.insert(conn.clone());
                        covered = false;
                        realtime::caught_up(&deliveries.connections, owner, conn, wallet)
                            .await
                            .is_ok()
                    }
                    CaughtUp::Done => true,
                    CaughtUp::Failed => false,
                    // Behind the frames that came meanwhile, from where it
                    // stopped (the connection stays marked: the wallet's
                    // new frames skip it until its catch-up is done).
                    CaughtUp::Paused(at) => {
                        report.catch_ups_paused += 1;
                        deliveries
                            .queue
                            .catch_up(wallet, owner, conn, at)
                            .await
                            .is_ok()
                    }
                }
            }
            (Body::Message { to, frame }, Some(found)) => {
                let mut conns: Vec<ConnectionId> = to
                    .iter()
                    .flat_map(|u| found.live.get(u).cloned().unwrap_or_default())
                    .collect();
                conns.is_empty()
                    || post_all(deliveries, sender, &mut conns, frame, &mut report)
                        .await
                        .is_empty()
            }
            (Body::Announcement { shard, frame }, _) => {
                fan_out(deliveries, sender, entry, *shard, frame, &mut report).await
            }
            (
                Body::Close {
                    connections,
                    reason,
                },
                _,
            ) => {
                if let Some(reason) = reason {
                    tell_closing(sender, &entry.id, connections, *reason, &mut report).await;
                }
                let conns: Vec<(ConnectionId, Option<UserId>)> =
                    connections.iter().map(|c| (c.clone(), None)).collect();
                close_all(deliveries, sender, &conns, &mut report).await
            }
            (Body::Malformed, _) => {
                tracing::warn!(entry = %entry.id, "malformed delivery entry dropped");
                true
            }
        };
        if ok {
            done.push((entry.partition, entry.id.clone()));
        } else {
            report.failed += 1;
        }
    }
    (report, done)
}

/// Posts each connection about to be closed its last frame: why
/// (`"type": "closing"`). Best effort: a failed post does not keep the
/// connection open (the close follows whatever happens).
pub(super) async fn tell_closing(
    sender: &Sender,
    entry: &str,
    connections: &[ConnectionId],
    reason: CloseReason,
    report: &mut Report,
) {
    let notice = serde_json::json!({
        "type": "closing",
        "reason": reason.as_str(),
        "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
    });
    let Some(text) = frame(&format!("closing:{entry}"), "connection", &notice) else {
        return;
    };
    let text: Arc<str> = Arc::from(text);
    let results: Vec<Posted> = futures_util::stream::iter(connections.iter().cloned())
        .map(|conn| sender.call(conn, Some(text.clone())))
        .buffer_unordered(sender.fan_out)
        .collect()
        .await;
    report.sent += results.iter().filter(|p| **p == Posted::Sent).count() as u64;
}

/// Closes connections whose sign-in is over (`DELETE @connections`) and
/// forgets them. True when every close succeeded or found its connection
/// already gone.
pub(super) async fn close_all(
    deliveries: &Deliveries,
    sender: &Sender,
    conns: &[(ConnectionId, Option<UserId>)],
    report: &mut Report,
) -> bool {
    if conns.is_empty() {
        return true;
    }
    let ids: Vec<ConnectionId> = conns.iter().map(|(c, _)| c.clone()).collect();
    let results: Vec<Posted> = futures_util::stream::iter(ids)
        .map(|conn| sender.call(conn, None))
        .buffer_unordered(sender.fan_out)
        .collect()
        .await;
    let mut ok = true;
    for posted in results {
        match posted {
            Posted::Sent => report.closed += 1,
            Posted::Gone => report.gone += 1,
            Posted::Failed(e) => {
                ok = false;
                tracing::warn!(error = %e, "could not close a connection");
            }
        }
    }
    if let Err(why) = realtime::forget(&deliveries.connections, conns).await {
        tracing::warn!(reason = why.as_str(), "could not forget closed connections");
        ok = false;
    }
    ok
}

/// Delivers `entries` (balances in version order per wallet, a user's
/// messages in stream order, each announcement shard on its own) and
/// acknowledges those fully handled, per partition.
///
/// The batch's recipients are looked up once, before any post: the live
/// connections of every user it addresses, each connection's sign-in
/// checked (token not expired, session not ended) — one round-trip time
/// for the batch, not one per frame. Connections found dead are closed.
pub async fn deliver(deliveries: &Deliveries, sender: &Sender, entries: &[Entry]) -> Report {
    let mut report = Report::default();
    let users: Vec<UserId> = entries
        .iter()
        .flat_map(|e| match &e.body {
            Body::Balance { owner, .. } | Body::CatchUp { owner, .. } => vec![*owner],
            Body::Message { to, .. } => to.clone(),
            _ => Vec::new(),
        })
        .collect();
    let found = if users.is_empty() {
        Some(realtime::Liveness::default())
    } else {
        // (The tests' sender without the sign-in check takes every
        // registered connection: `test-variants` only.)
        #[cfg(feature = "test-variants")]
        let looked_up = if sender.variants.no_sign_in_check {
            realtime::registered(&deliveries.connections, &users).await
        } else {
            realtime::live(&deliveries.connections, &users).await
        };
        #[cfg(not(feature = "test-variants"))]
        let looked_up = realtime::live(&deliveries.connections, &users).await;
        match looked_up {
            Ok(found) => {
                if !close_all(deliveries, sender, &found.dead, &mut report).await {
                    // Out of the registry already: retried from the stream.
                    let ids: Vec<ConnectionId> =
                        found.dead.iter().map(|(c, _)| c.clone()).collect();
                    if let Err(why) = deliveries.queue.close(&ids).await {
                        tracing::warn!(reason = why.as_str(), "could not queue closes");
                    }
                }
                Some(found)
            }
            Err(why) => {
                // Their entries stay pending and are redelivered.
                tracing::warn!(reason = why.as_str(), "could not look up the recipients");
                None
            }
        }
    };
    let mut order: Vec<LaneKey> = Vec::new();
    let mut lanes: HashMap<LaneKey, Vec<&Entry>> = HashMap::new();
    for entry in entries {
        let key = match &entry.body {
            Body::Balance { wallet, .. } | Body::CatchUp { wallet, .. } => LaneKey::Wallet(*wallet),
            Body::Message { to, .. } if to.len() == 1 => LaneKey::User(to[0]),
            Body::Announcement { .. } => LaneKey::Alone(entry.id.clone()),
            _ => LaneKey::Other,
        };
        if !lanes.contains_key(&key) {
            order.push(key.clone());
        }
        lanes.entry(key).or_default().push(entry);
    }
    let found = found.as_ref();
    let results: Vec<(Report, Vec<(u16, String)>)> = futures_util::stream::iter(order)
        .map(|key| {
            let lane = lanes.get(&key).cloned().unwrap_or_default();
            async move { deliver_lane(deliveries, sender, found, &lane).await }
        })
        .buffer_unordered(LANES)
        .collect()
        .await;
    let mut done: HashMap<u16, Vec<String>> = HashMap::new();
    for (r, d) in results {
        report.add(&r);
        for (p, id) in d {
            done.entry(p).or_default().push(id);
        }
    }
    report.entries = done.values().map(|d| d.len() as u64).sum();
    {
        futures_util::future::join_all(done.iter().map(|(p, ids)| async move {
            let key = deliveries.queue.keys.ws_deliveries(*p);
            let k = &key;
            let acked = deliveries
                .queue
                .durable
                .run(|mut c| async move {
                    let _: usize = c.xack(k, GROUP, ids).await?;
                    Ok(())
                })
                .await;
            if let Err(why) = acked {
                // They stay pending and are sent again: at least once.
                tracing::warn!(reason = why.as_str(), "could not acknowledge deliveries");
            }
        }))
        .await;
    }
    report
}

/// Posts `frame` to every connection in `to`, `WS_FAN_OUT` at a time;
/// prunes gone ones. Returns the connections whose post failed.
pub(super) async fn post_all(
    deliveries: &Deliveries,
    sender: &Sender,
    to: &mut Vec<ConnectionId>,
    frame: &str,
    report: &mut Report,
) -> Vec<ConnectionId> {
    let (frame, stubbed) = fit(frame.to_owned());
    if stubbed {
        report.too_large += 1;
    }
    let frame: Arc<str> = Arc::from(frame);
    let results: Vec<(ConnectionId, Posted)> = futures_util::stream::iter(to.iter().cloned())
        .map(|conn| {
            let frame = frame.clone();
            async move {
                let posted = sender.call(conn.clone(), Some(frame)).await;
                (conn, posted)
            }
        })
        .buffer_unordered(sender.fan_out)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut gone = Vec::new();
    for (conn, posted) in results {
        match posted {
            Posted::Sent => report.sent += 1,
            Posted::Gone => {
                report.gone += 1;
                gone.push(conn);
            }
            Posted::Failed(e) => {
                tracing::warn!(connection_id = %conn, error = %e, "post to connection failed");
                failed.push(conn);
            }
        }
    }
    if !gone.is_empty() {
        to.retain(|c| !gone.contains(c));
        // The user's own registry is pruned too: `disconnect` finds the
        // user in the connection's metadata.
        for conn in &gone {
            if let Err(why) = realtime::disconnect(&deliveries.connections, conn, None).await {
                tracing::warn!(reason = why.as_str(), "could not prune a gone connection");
            }
        }
    }
    failed
}
