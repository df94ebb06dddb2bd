//! An announcement's fan-out through one registry shard: page by page,
//! each page's sign-ins checked at once, a checkpoint after every page
//! (the last id done, the connections to retry) while the entry is still
//! this sender's, so that a retry posts to the failed connections only
//! and a takeover resumes where the dead sender stopped.

use super::Deliveries;
use super::GROUP;
use super::PROGRESS_TTL_MS;
use super::Report;
use super::entry::Entry;
use super::lanes::close_all;
use super::lanes::post_all;
use super::sender::Sender;
use crate::domain::realtime;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;
use std::time::Instant;

pub(super) static CHECKPOINT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("checkpoint.lua")));

pub(super) static FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("finish.lua")));

/// One announcement's fan-out through registry shard `shard`: page by page
/// (`WS_FANOUT_PAGE`), each page's sign-ins checked in one round-trip
/// time, its dead connections closed, the live ones posted to, then a
/// checkpoint (the last id done; connections to retry). Starts from the last
/// checkpoint: the retries first, then the rest of the scan. True when
/// every connection was handled (the entry is then acknowledged and its
/// progress dropped, in one step).
pub(super) async fn fan_out(
    deliveries: &Deliveries,
    sender: &Sender,
    entry: &Entry,
    shard: u16,
    frame: &str,
    report: &mut Report,
) -> bool {
    let keys = &deliveries.queue.keys;
    let (stream, progress) = (
        keys.ws_deliveries(entry.partition),
        keys.ws_fanout(entry.partition, &entry.id),
    );
    let retry = format!("{progress}:retry");
    let (st, pr, rt) = (&stream, &progress, &retry);
    let page = deliveries.config.page;
    let state = deliveries
        .queue
        .durable
        .run(|mut c| async move {
            let (cursor, retries): (Option<String>, Vec<String>) = redis::pipe()
                .hget(pr, "cursor")
                .smembers(rt)
                .query_async(&mut c)
                .await?;
            Ok((cursor, retries))
        })
        .await;
    let Ok((cursor, retries)) = state else {
        return false;
    };
    let checkpoint = |cursor: String, failed: Vec<ConnectionId>, retried: Vec<ConnectionId>| async move {
        let (me, id) = (sender.consumer.as_str(), entry.id.as_str());
        let r: Result<i64, RedisUnavailable> = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                let mut call = CHECKPOINT.prepare_invoke();
                call.key(st)
                    .key(pr)
                    .key(rt)
                    .arg(GROUP)
                    .arg(me)
                    .arg(id)
                    .arg(&cursor)
                    .arg(PROGRESS_TTL_MS)
                    .arg(failed.len());
                for c in failed.iter().chain(retried.iter()) {
                    call.arg(c.as_str());
                }
                call.invoke_async(&mut c).await
            })
            .await;
        matches!(r, Ok(1))
    };
    // The retries: only the connections whose post failed before.
    let retries: Vec<ConnectionId> = retries
        .iter()
        .filter_map(|c| ConnectionId::parse(c).ok())
        .collect();
    let mut failed_any = false;
    if !retries.is_empty() {
        let (live, dead) = match realtime::entries(&deliveries.connections, shard, &retries).await {
            Ok(found) => found,
            Err(_) => return false,
        };
        let closed = close_all(deliveries, sender, &dead, report).await;
        let mut to = live;
        let failed = post_all(deliveries, sender, &mut to, frame, report).await;
        failed_any |= !failed.is_empty() || !closed;
        let settled: Vec<ConnectionId> = retries
            .iter()
            .filter(|c| !failed.contains(c))
            .cloned()
            .collect();
        let at = cursor.clone().unwrap_or_default();
        if !checkpoint(at, Vec::new(), settled).await {
            return false;
        }
    }
    // The rest of the scan.
    // The cursor: the last connection id done ("" before the first;
    // `done` — not a valid connection id — after the last page).
    let mut at: String = match cursor {
        Some(c) if c == "done" => {
            return !failed_any && finish(deliveries, st, pr, rt, &entry.id).await;
        }
        Some(c) => c,
        None => String::new(),
    };
    loop {
        if sender.until.is_some_and(|u| Instant::now() >= u) {
            // The run is over: the next holder resumes at this checkpoint.
            return false;
        }
        // A page read that fails (a timeout under load) is tried again
        // twice, 100 ms apart, before the entry is left to the redelivery.
        let mut read = realtime::everyone_page(&deliveries.connections, shard, &at, page).await;
        for _ in 0..2 {
            if read.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            read = realtime::everyone_page(&deliveries.connections, shard, &at, page).await;
        }
        let Ok((next, live, dead)) = read else {
            return false;
        };
        let closed = close_all(deliveries, sender, &dead, report).await;
        let mut to = live;
        let failed = if to.is_empty() {
            Vec::new()
        } else {
            post_all(deliveries, sender, &mut to, frame, report).await
        };
        failed_any |= !failed.is_empty() || !closed;
        let mark = next.clone().unwrap_or_else(|| "done".to_owned());
        if !checkpoint(mark, failed, Vec::new()).await {
            // No longer this sender's entry (taken over): stop.
            return false;
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    !failed_any && finish(deliveries, st, pr, rt, &entry.id).await
}

/// Acknowledges a finished announcement shard and drops its progress.
pub(super) async fn finish(
    deliveries: &Deliveries,
    stream: &str,
    progress: &str,
    retry: &str,
    id: &str,
) -> bool {
    let r: Result<i64, RedisUnavailable> = deliveries
        .queue
        .durable
        .run(|mut c| async move {
            FINISH
                .key(stream)
                .key(progress)
                .key(retry)
                .arg(GROUP)
                .arg(id)
                .invoke_async(&mut c)
                .await
        })
        .await;
    matches!(r, Ok(1))
}
