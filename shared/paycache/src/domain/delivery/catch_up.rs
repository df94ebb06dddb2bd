//! A reconnect's catch-up: the wallet log's versions after the one the
//! client saw, to that connection only, within its lane's slice of the
//! batch (`WS_CATCH_UP_SLICE_MS`); a `resync` when the log no longer
//! reaches back or the client missed more than `WS_CATCH_UP_MAX`.

use super::BATCH;
use super::Deliveries;
use super::Report;
use super::lanes::post_all;
use super::sender::Sender;
use super::wallet_log::log_frame;
use super::wallet_log::{After, LogPage, read_log};
use crate::domain::delivery_queue::frame;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::WalletId;
use crate::patterns::pubsub;
use std::time::Instant;

/// How a catch-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CaughtUp {
    /// Everything sent (or the connection is gone).
    Done,
    /// A post or a read failed: sent again from the start of the entry.
    Failed,
    /// Its lane's slice of the batch ran out after this version was sent:
    /// the rest continues in a later batch.
    Paused(u64),
}

/// A reconnect's catch-up: the wallet log's versions after `after`, in
/// order, to `conn` only — after a `resync` frame when the log no longer
/// reaches back to `after + 1`. A client that missed more than
/// `WS_CATCH_UP_MAX` versions gets the `resync` alone (it reads the
/// balance over HTTP; new frames follow). Stops after the post that
/// passes `until` (its lane's slice of the batch).
pub(super) async fn catch_up(
    deliveries: &Deliveries,
    sender: &Sender,
    wallet: &WalletId,
    conn: &ConnectionId,
    after: u64,
    until: Instant,
    report: &mut Report,
) -> CaughtUp {
    let channel = pubsub::balance(wallet);
    let mut conns = vec![conn.clone()];
    let mut from = after;
    let mut first = true;
    loop {
        let Ok(LogPage {
            oldest,
            published,
            entries,
        }) = read_log(deliveries, wallet, After::Version(from)).await
        else {
            return CaughtUp::Failed;
        };
        if first {
            first = false;
            // Missed versions the log no longer holds, or more than one
            // catch-up sends: the client must read the balance over HTTP.
            let gap = if oldest == 0 {
                published > after
            } else {
                oldest > after + 1
            };
            let too_many = published.saturating_sub(after) > deliveries.config.catch_up_max;
            if gap || too_many {
                let resync = serde_json::json!({
                    "type": "resync",
                    "wallet_id": wallet,
                    "after_version": after,
                    "oldest_version": oldest,
                    "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
                });
                let Some(frame) = frame(&format!("resync:{wallet}:{after}"), &channel, &resync)
                else {
                    return CaughtUp::Failed;
                };
                if !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
                {
                    return CaughtUp::Failed;
                }
                report.resyncs += 1;
                if conns.is_empty() || too_many {
                    return CaughtUp::Done;
                }
            }
        }
        for (id, fields) in &entries {
            let Some((version, frame)) = log_frame(&channel, id, fields) else {
                continue;
            };
            if let Some(frame) = frame
                && !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
            {
                return CaughtUp::Failed;
            }
            if conns.is_empty() {
                return CaughtUp::Done;
            }
            from = version;
            if Instant::now() >= until {
                return CaughtUp::Paused(from);
            }
        }
        if entries.len() < BATCH {
            return CaughtUp::Done;
        }
    }
}
