//! Pub/Sub channels of the design and the messages sent on them.
//!
//! Channel names are exactly the contract's (`balance:<wallet_id>` and so
//! on, ids in canonical lower case); they are not keys, so they carry no
//! namespace prefix or hash tag. Every message is JSON with a `type` and a
//! `timestamp` in Unix seconds (fractional).
//!
//! Delivery is Redis Pub/Sub's: at most once, to subscribers connected at
//! the time. What this crate adds is order: `balance:<wallet_id>` messages
//! are published from the outbox, in version order, each once (see
//! `balance`).

use serde::Serialize;
use time::OffsetDateTime;

use crate::infra::keys::{TransactionId, UserId, WalletId};

/// `notifications:<user_id>`.
pub fn notifications(user: &UserId) -> String {
    format!("notifications:{user}")
}

/// `transactions:<transaction_id>`.
pub fn transactions(id: &TransactionId) -> String {
    format!("transactions:{id}")
}

/// `balance:<wallet_id>`.
pub fn balance(wallet: &WalletId) -> String {
    format!("balance:{wallet}")
}

/// `fraud:<user_id>`.
pub fn fraud(user: &UserId) -> String {
    format!("fraud:{user}")
}

/// Announcements to everyone.
pub const SYSTEM_ANNOUNCEMENTS: &str = "system:announcements";

/// Unix seconds with microseconds, as the contract's `timestamp`.
pub(crate) fn unix_seconds(at: OffsetDateTime) -> f64 {
    (at.unix_timestamp_nanos() / 1_000) as f64 / 1e6
}

/// `balance:<wallet_id>` — `{"type": "balance_update", …}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BalanceUpdate<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub wallet_id: &'a WalletId,
    pub balance: &'a str,
    pub currency: &'a str,
    pub version: u64,
    pub timestamp: f64,
}

/// `transactions:<transaction_id>` — `{"type": "status_update", …}` (the
/// design's `publish_transaction_update`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TransactionStatusUpdate<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub transaction_id: &'a TransactionId,
    pub status: &'a str,
    pub timestamp: f64,
}

/// `notifications:<user_id>` — `{"type": "profile_updated", …}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProfileUpdated<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: &'a UserId,
    pub timestamp: f64,
}

/// `system:announcements` — `{"type": "announcement", "message", "timestamp"}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Announcement<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: &'a str,
    pub timestamp: f64,
}

/// Publishes `message` as JSON on `channel`: one round trip. Returns the
/// number of subscribers reached. (Most messages are published inside the
/// script that makes the change they announce; this is for the rest.)
pub(crate) async fn publish<T: Serialize>(
    redis: &crate::infra::connection::Redis,
    channel: &str,
    message: &T,
) -> Result<u64, crate::infra::connection::RedisUnavailable> {
    let json = serde_json::to_string(message)
        .map_err(|_| crate::infra::connection::RedisUnavailable::Server)?;
    redis
        .run(|mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(json)
                .query_async(&mut c)
                .await
        })
        .await
}

/// A system-wide announcement to every connected client's subscriber.
pub async fn announce(
    redis: &crate::infra::connection::Redis,
    message: &str,
) -> Result<u64, crate::infra::connection::RedisUnavailable> {
    let msg = Announcement {
        kind: "announcement",
        message,
        timestamp: unix_seconds(OffsetDateTime::now_utc()),
    };
    publish(redis, SYSTEM_ANNOUNCEMENTS, &msg).await
}
