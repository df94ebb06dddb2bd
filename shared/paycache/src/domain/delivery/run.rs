//! One `ws-sender` run: fetch and deliver until the deadline, renewing the
//! leases during long deliveries, sweeping pending sign-outs into Redis
//! every second beside it, and the run's metrics (`WsFramesSent`,
//! `WsFramesPerSecond`, `WsBacklog`) at its end.

use redis::AsyncCommands;

use super::Deliveries;
use super::GROUP;
use super::Report;
use super::entry::Entry;
use super::lanes::deliver;
use super::sender::Sender;
use super::sender::fetch;
use super::sender::release_all;
use super::sender::renew;
use crate::domain::sessions;
use crate::infra::connection::RedisUnavailable;
use redis::streams::StreamInfoGroupsReply;
use std::time::Duration;
use std::time::Instant;

/// Delivers `entries`, renewing the sender's leases while it runs (an
/// announcement may take longer than a lease).
pub(super) async fn deliver_renewing(
    deliveries: &Deliveries,
    sender: &mut Sender,
    entries: &[Entry],
) -> Report {
    let every = deliveries.config.lease / 3;
    let mut lost = Vec::new();
    let report = {
        let s: &Sender = sender;
        let work = deliver(deliveries, s, entries);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => break r,
                () = tokio::time::sleep(every) => lost.extend(renew(deliveries, s, true).await),
            }
        }
    };
    for p in lost {
        tracing::warn!(partition = p, "partition lease lost while delivering");
        sender.held.retain(|h| *h != p);
        sender.fresh.remove(&p);
    }
    report
}

/// Entries waiting in `partitions` (not yet read, plus read and not yet
/// acknowledged), from `XINFO GROUPS`.
pub async fn backlog(deliveries: &Deliveries, partitions: &[u16]) -> u64 {
    let counts = futures_util::future::join_all(partitions.iter().map(|p| async move {
        let key = deliveries.queue.keys.ws_deliveries(*p);
        let k = &key;
        let groups: Result<StreamInfoGroupsReply, RedisUnavailable> = deliveries
            .queue
            .durable
            .run(|mut c| async move { c.xinfo_groups(k).await })
            .await;
        groups.map_or(0, |g| {
            g.groups
                .iter()
                .filter(|g| g.name == GROUP)
                .map(|g| (g.lag.unwrap_or(0) + g.pending) as u64)
                .sum()
        })
    }))
    .await;
    counts.into_iter().sum()
}

/// Reads and delivers until `until`, and sweeps sign-outs made while
/// Redis was unreachable into it every [`sessions::SWEEP_EVERY`] (the
/// sender runs all the time: docs/security.md → A sign-out during a Redis
/// outage). Returns what it delivered.
pub async fn run(deliveries: &Deliveries, sender: &mut Sender, until: Instant) -> Report {
    let running: std::pin::Pin<Box<dyn std::future::Future<Output = Report> + Send + '_>> =
        Box::pin(run_until(deliveries, sender, until));
    let sweeping: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> =
        Box::pin(sweep_until(&deliveries.connections.sessions, until));
    let (report, ()) = tokio::join!(running, sweeping);
    report
}

/// [`sessions::apply_pending`] every [`sessions::SWEEP_EVERY`] until
/// `until` (one PostgreSQL query each time when nothing is pending).
pub(super) async fn sweep_until(sessions: &sessions::Sessions, until: Instant) {
    while Instant::now() < until {
        match sessions::apply_pending(sessions).await {
            Ok(r) if r.sessions + r.tokens > 0 => {
                tracing::info!(report = ?r, "pending sign-outs applied to Redis");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep pending sign-outs"),
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(sessions::SWEEP_EVERY.min(left)).await;
    }
}

pub(super) async fn run_until(
    deliveries: &Deliveries,
    sender: &mut Sender,
    until: Instant,
) -> Report {
    let mut total = Report::default();
    let run_started = Instant::now();
    let mut busy = Duration::ZERO;
    let mut idle = Duration::from_millis(1);
    sender.until = Some(until);
    tracing::debug!(consumer = %sender.consumer, left_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "delivery run starts");
    while Instant::now() < until {
        let (entries, reclaimed) = match fetch(deliveries, sender).await {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(reason = why.as_str(), "could not read the delivery streams");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if entries.is_empty() && sender.held.is_empty() {
            // Every partition is held by others: wait for a share.
            let wait = (deliveries.config.lease / 3)
                .min(until.saturating_duration_since(Instant::now()))
                .min(Duration::from_millis(500));
            tokio::time::sleep(wait).await;
            continue;
        }
        if entries.is_empty() {
            if sender.held.len() > 1 {
                // No blocking read across partitions: back off while idle
                // (at most 25 ms, the added latency of a quiet sender).
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(25));
            }
            continue;
        }
        idle = Duration::from_millis(1);
        let started = Instant::now();
        tracing::debug!(
            entries = entries.len(),
            elapsed_ms = run_started.elapsed().as_millis() as u64,
            "delivering"
        );
        let r = deliver_renewing(deliveries, sender, &entries).await;
        busy += started.elapsed();
        tracing::debug!(report = ?r, "delivered");
        total.add(&r);
        total.reclaimed += reclaimed;
    }
    let waiting = backlog(deliveries, &sender.held).await;
    release_all(deliveries, sender).await;
    sender.until = None;
    metrics::counter!("WsFramesSent").increment(total.sent);
    if !busy.is_zero() {
        metrics::histogram!("WsFramesPerSecond").record(total.sent as f64 / busy.as_secs_f64());
    }
    metrics::histogram!("WsBacklog").record(waiting as f64);
    total
}
