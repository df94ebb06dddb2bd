//! Transaction caching: `txn:{transaction_id}` (30 min) and
//! `txn_status:{transaction_id}` (1 h), both cache-aside over PostgreSQL,
//! and status updates published on `transactions:<transaction_id>` as the
//! design's `publish_transaction_update` does.
//!
//! Both keys carry the transaction id as hash tag, so a status change
//! updates one, drops the other and publishes in one script.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::money::{Currency, format_amount};
use crate::infra::config::TtlConfig;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::{Db, DbError, query_error};
use crate::infra::keys::Keyspace;
use crate::infra::keys::{KeyFamily, TransactionId, WalletId};
use crate::patterns::cache_aside::CacheAside;
use crate::patterns::cache_aside::{Cached, encode, jittered};
use crate::patterns::pubsub;

/// What transactions use: the cache engine over PostgreSQL, Redis for
/// status updates, and the TTLs.
#[derive(Debug, Clone)]
pub struct Transactions {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) cache: CacheAside,
    pub(crate) db: Db,
    pub(crate) ttl: TtlConfig,
}

static STATUS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("transactions/status.lua")));

/// The design's `transaction_cache` entry. `amount` is a decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The transaction.
    pub transaction_id: TransactionId,
    /// The paying wallet.
    pub sender_wallet_id: WalletId,
    /// The receiving wallet.
    pub receiver_wallet_id: WalletId,
    /// Decimal string with the currency's minor-unit digits.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// `pending`, `completed`, `failed`, …
    pub status: String,
    /// How it was paid.
    pub payment_method: String,
    #[serde(with = "time::serde::rfc3339")]
    /// When it was created.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    /// When its status last changed.
    pub updated_at: OffsetDateTime,
}

/// The design's `transaction_status` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionStatus {
    /// The transaction's status.
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    /// When it last changed.
    pub updated_at: OffsetDateTime,
    /// When the transaction reached a final state, if it has.
    #[serde(with = "time::serde::rfc3339::option")]
    pub completion_time: Option<OffsetDateTime>,
}

const FINAL_STATUSES: &[&str] = &["completed", "failed", "reversed"];

const COLUMNS: &str =
    "transaction_id, sender_wallet_id, receiver_wallet_id, amount_minor, currency,
                       status, payment_method, created_at, updated_at";

pub(crate) async fn load_transaction(
    db: &Db,
    id: &TransactionId,
) -> Result<Option<Transaction>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM transactions WHERE transaction_id = $1"),
            &[&id.as_uuid()],
        )
        .await?;
    row.map(|r| from_row(&r)).transpose()
}

/// Reads many transactions in one query; the answer is in the order of `ids`.
pub(crate) async fn load_transactions(
    db: &Db,
    ids: &[TransactionId],
) -> Result<Vec<Option<Transaction>>, DbError> {
    let uuids: Vec<Uuid> = ids.iter().map(TransactionId::as_uuid).collect();
    let client = db.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM transactions WHERE transaction_id = ANY($1)"),
            &[&uuids],
        )
        .await?;
    let mut found = std::collections::HashMap::new();
    for r in &rows {
        let t = from_row(r)?;
        found.insert(t.transaction_id, t);
    }
    Ok(ids.iter().map(|i| found.remove(i)).collect())
}

fn from_row(r: &tokio_postgres::Row) -> Result<Transaction, DbError> {
    let tid: Uuid = r.try_get(0).map_err(query_error)?;
    let sender: Uuid = r.try_get(1).map_err(query_error)?;
    let receiver: Uuid = r.try_get(2).map_err(query_error)?;
    let minor: i64 = r.try_get(3).map_err(query_error)?;
    let currency: String = r.try_get(4).map_err(query_error)?;
    let currency = Currency::parse(currency.trim_end()).map_err(|_| DbError::Unavailable)?;
    Ok(Transaction {
        transaction_id: TransactionId::from(tid),
        sender_wallet_id: WalletId::from(sender),
        receiver_wallet_id: WalletId::from(receiver),
        amount: format_amount(minor, currency),
        currency: currency.code().to_owned(),
        status: r.try_get(5).map_err(query_error)?,
        payment_method: r.try_get(6).map_err(query_error)?,
        created_at: r.try_get(7).map_err(query_error)?,
        updated_at: r.try_get(8).map_err(query_error)?,
    })
}

fn status_of(t: &Transaction) -> TransactionStatus {
    TransactionStatus {
        status: t.status.clone(),
        updated_at: t.updated_at,
        completion_time: FINAL_STATUSES
            .contains(&t.status.as_str())
            .then_some(t.updated_at),
    }
}

/// `txn:{transaction_id}` through the cache.
pub async fn get_transaction(
    transactions: &Transactions,
    id: &TransactionId,
) -> Result<Cached<Transaction>, DbError> {
    transactions
        .cache
        .get_or_load(&transactions.keys.transaction(id), || {
            load_transaction(&transactions.db, id)
        })
        .await
}

/// `txn_status:{transaction_id}` through the cache.
pub async fn get_status(
    transactions: &Transactions,
    id: &TransactionId,
) -> Result<Cached<TransactionStatus>, DbError> {
    transactions
        .cache
        .get_or_load(&transactions.keys.transaction_status(id), || async {
            Ok(load_transaction(&transactions.db, id)
                .await?
                .as_ref()
                .map(status_of))
        })
        .await
}

/// Caches `transaction`'s current status, drops its cached entry and
/// publishes `{"type": "status_update", …}` on `transactions:<id>`: one
/// round trip. Returns the message published.
#[tracing::instrument(skip_all, fields(transaction_id = %transaction.transaction_id))]
pub(crate) async fn publish_status(
    transactions: &Transactions,
    transaction: &Transaction,
) -> Result<String, RedisUnavailable> {
    let id = &transaction.transaction_id;
    let status = status_of(transaction);
    let ttl = transactions
        .ttl
        .of(KeyFamily::TransactionStatus)
        .unwrap_or(Duration::from_secs(3600));
    let ttl = jittered(ttl, transactions.ttl.jitter_percent);
    let encoded = encode(Some(&status), 0, Duration::ZERO, ttl).ok_or(RedisUnavailable::Server)?;
    let message = serde_json::to_string(&pubsub::TransactionStatusUpdate {
        kind: "status_update",
        transaction_id: id,
        status: &status.status,
        timestamp: pubsub::unix_seconds(OffsetDateTime::now_utc()),
    })
    .map_err(|_| RedisUnavailable::Server)?;
    let status_key = transactions.keys.transaction_status(id);
    let txn_key = transactions.keys.transaction(id);
    let keys = [
        status_key.as_str().to_owned(),
        status_key.lock_key(),
        txn_key.as_str().to_owned(),
        txn_key.lock_key(),
    ];
    let channel = pubsub::transactions(id);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let (keys, enc, ch, msg) = (&keys, &encoded, &channel, &message);
    let _subscribers: u64 = transactions
        .redis
        .run(|mut c| async move {
            let mut inv = STATUS.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            inv.arg(enc.as_slice()).arg(ttl_ms).arg(ch).arg(msg);
            inv.invoke_async(&mut c).await
        })
        .await?;
    Ok(message)
}
