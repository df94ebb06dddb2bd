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

use crate::keys::{TransactionId, UserId, WalletId};

pub fn notifications(user: &UserId) -> String {
    format!("notifications:{user}")
}

pub fn transactions(id: &TransactionId) -> String {
    format!("transactions:{id}")
}

pub fn balance(wallet: &WalletId) -> String {
    format!("balance:{wallet}")
}

pub fn fraud(user: &UserId) -> String {
    format!("fraud:{user}")
}

pub const SYSTEM_ANNOUNCEMENTS: &str = "system:announcements";

/// Unix seconds with microseconds, as the contract's `timestamp`.
pub fn unix_seconds(at: OffsetDateTime) -> f64 {
    (at.unix_timestamp_nanos() / 1_000) as f64 / 1e6
}

/// `balance:<wallet_id>` — `{"type": "balance_update", …}`.
#[derive(Debug, Clone, Serialize)]
pub struct BalanceUpdate<'a> {
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
pub struct TransactionStatusUpdate<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub transaction_id: &'a TransactionId,
    pub status: &'a str,
    pub timestamp: f64,
}

/// `notifications:<user_id>` — `{"type": "profile_updated", …}`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileUpdated<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: &'a UserId,
    pub timestamp: f64,
}
