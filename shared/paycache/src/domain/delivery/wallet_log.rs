//! The wallet log and its delivered cursor: a balance kick delivers the
//! log's versions after the cursor, in order, and moves the cursor only
//! past versions that were sent. [`read_log`] is the one way the log is
//! read (here and by a reconnect's catch-up).

use super::BATCH;
use super::Deliveries;
use super::Report;
use super::lanes::post_all;
use super::sender::Sender;
use crate::domain::delivery_queue::frame;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::WalletId;
use crate::patterns::pubsub;
use redis::Script;
use serde_json::Value;
use std::sync::LazyLock;

static LOG_READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("log_read.lua")));

pub(super) static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS[1] the wallet's delivered cursor; it only moves forwards.
local d = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > d then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000)
end
return 1
",
    )
});

/// A wallet log entry as `XRANGE` returns it: id, field/value pairs.
pub(super) type LogEntry = (String, Vec<(String, String)>);

/// Where a read of the wallet log starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum After {
    /// The wallet's delivered cursor, or this version when it has none.
    Cursor(u64),
    /// This version (a reconnect's catch-up: the last it saw).
    Version(u64),
}

/// What one read of the wallet log found.
pub(super) struct LogPage {
    /// The oldest version the log holds (0: none).
    pub(super) oldest: u64,
    /// The version published last (0: unknown).
    pub(super) published: u64,
    /// Up to [`BATCH`] entries after the version read from, in order.
    pub(super) entries: Vec<LogEntry>,
}

/// Reads the wallet log after `after`: one script, one round trip (the
/// log, its published version and its cursor share the wallet's slot).
pub(super) async fn read_log(
    deliveries: &Deliveries,
    wallet: &WalletId,
    after: After,
) -> Result<LogPage, RedisUnavailable> {
    let keys = &deliveries.queue.keys;
    let (log, published, cursor) = (
        keys.wallet_balance_log(wallet),
        keys.wallet_balance_published(wallet),
        keys.wallet_balance_delivered(wallet),
    );
    let (from, default) = match after {
        After::Cursor(or) => (String::new(), or),
        After::Version(v) => (v.to_string(), 0),
    };
    let (l, p, c, f) = (&log, &published, &cursor, &from);
    let (oldest, published, entries): (u64, u64, Vec<LogEntry>) = deliveries
        .connections
        .redis
        .run(|mut conn| async move {
            LOG_READ
                .key(l)
                .key(p)
                .key(c)
                .arg(f)
                .arg(BATCH)
                .arg(default)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    Ok(LogPage {
        oldest,
        published,
        entries,
    })
}

pub(super) async fn advance(deliveries: &Deliveries, cursor: &str, to: u64) -> bool {
    deliveries
        .connections
        .redis
        .run(|mut conn| async move {
            let _: i64 = ADVANCE.key(cursor).arg(to).invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
        .is_ok()
}

/// The frame of one wallet log entry.
pub(super) fn log_frame(
    channel: &str,
    id: &str,
    fields: &[(String, String)],
) -> Option<(u64, Option<String>)> {
    let version = id.split('-').next().and_then(|v| v.parse::<u64>().ok())?;
    let message = fields
        .iter()
        .find(|(f, _)| f == "m")
        .and_then(|(_, m)| serde_json::from_str::<Value>(m).ok());
    let frame = message.and_then(|m| frame(&format!("{channel}:{version}"), channel, &m));
    Some((version, frame))
}

pub(super) async fn deliver_balance(
    deliveries: &Deliveries,
    sender: &Sender,
    wallet: &WalletId,
    mut conns: Vec<ConnectionId>,
    from: u64,
    report: &mut Report,
) -> bool {
    let cursor = deliveries.queue.keys.wallet_balance_delivered(wallet);
    let channel = pubsub::balance(wallet);
    loop {
        let Ok(LogPage { entries, .. }) =
            read_log(deliveries, wallet, After::Cursor(from.saturating_sub(1))).await
        else {
            return false;
        };
        let mut delivered = None;
        let mut ok = true;
        for (id, fields) in &entries {
            let Some((version, frame)) = log_frame(&channel, id, fields) else {
                continue;
            };
            if let Some(frame) = frame
                && !conns.is_empty()
                && !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
            {
                ok = false;
                break;
            }
            delivered = Some(version);
        }
        if let Some(v) = delivered
            && !advance(deliveries, &cursor, v).await
        {
            // Sent again next time: at least once.
            return false;
        }
        // A full batch may have more behind it.
        if !ok || entries.len() < BATCH {
            return ok;
        }
    }
}
