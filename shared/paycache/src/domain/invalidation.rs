//! Event-driven invalidation: what the design's
//! `handle_user_profile_update` and `handle_transaction_completion` do, made
//! idempotent and race-free.
//!
//! - `UserProfileUpdated {user_id}` deletes `user_profile`,
//!   `user_permissions` and `user_preferences` of the user, with their load
//!   leases (so a load that read the old row cannot store it), and publishes
//!   `{"type": "profile_updated"}` on `notifications:<user_id>` — one script,
//!   one round trip (all keys share the user's hash tag).
//! - `TransactionCompleted {transaction_id, …}` caches the transaction's
//!   status as PostgreSQL has it, drops `txn:{id}` and publishes on
//!   `transactions:<id>` (one round trip), and invalidates both wallets'
//!   balances (one round trip each, concurrently) without lifting a writer's
//!   fence. The wallets are taken from PostgreSQL, not from the event.
//!
//! Deleting what is already gone is a no-op, so redelivered events are
//! harmless. An event for an id PostgreSQL does not know changes nothing and
//! is logged.

use std::sync::LazyLock;

use redis::Script;
use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::balance;
use crate::domain::delivery::{DeliveryQueue, Recipients};
use crate::domain::transactions;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::Db;
use crate::infra::db::DbError;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{TransactionId, UserId};
use crate::patterns::pubsub;

/// What event-driven invalidation uses: Redis, PostgreSQL (does the entity
/// exist?), and the transactions and balances it invalidates.
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) db: Db,
    pub(crate) transactions: transactions::Transactions,
    pub(crate) balances: balance::Balances,
    pub(crate) delivery: DeliveryQueue,
    pub(crate) announcements: crate::infra::config::AnnouncementTrust,
}

static DELETE_AND_PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("invalidation/delete_and_publish.lua")));

/// What an invalidation did, for the function's JSON summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InvalidationReport {
    /// `invalidated`, or `unknown-id` when PostgreSQL has no such entity.
    pub outcome: &'static str,
    /// Cache keys (and their leases) deleted.
    pub keys_deleted: u64,
    /// Wallet balances invalidated.
    pub wallets_invalidated: u64,
    /// Whether a notification was published.
    pub published: bool,
}

#[derive(Debug, thiserror::Error)]
/// Why an invalidation failed; the event is retried.
pub enum InvalidationError {
    #[error("the cache is unavailable: {0}")]
    /// Redis could not be reached.
    Redis(RedisUnavailable),
    #[error(transparent)]
    /// PostgreSQL failed.
    Db(#[from] DbError),
}

#[tracing::instrument(skip_all, fields(user_id = %user))]
/// `UserProfileUpdated`: deletes the user's cached profile, permissions
/// and preferences (with their leases) and notifies the user, in one script.
pub async fn user_profile_updated(
    invalidation: &Invalidation,
    user: &UserId,
) -> Result<InvalidationReport, InvalidationError> {
    let exists = invalidation
        .db
        .client()
        .await?
        .query_opt("SELECT 1 FROM users WHERE user_id = $1", &[&user.as_uuid()])
        .await?
        .is_some();
    if !exists {
        tracing::info!("UserProfileUpdated for an unknown user: nothing to do");
        return Ok(InvalidationReport {
            outcome: "unknown-id",
            ..InvalidationReport::default()
        });
    }
    let mut keys = Vec::new();
    for key in [
        invalidation.keys.user_profile(user),
        invalidation.keys.user_permissions(user),
        invalidation.keys.user_preferences(user),
    ] {
        keys.push(key.lock_key());
        keys.push(key.as_str().to_owned());
    }
    let channel = pubsub::notifications(user);
    let updated = pubsub::ProfileUpdated {
        kind: "profile_updated",
        user_id: user,
        timestamp: pubsub::unix_seconds(OffsetDateTime::now_utc()),
    };
    let message = serde_json::to_string(&updated)
        .map_err(|_| InvalidationError::Redis(RedisUnavailable::Server))?;
    let (keys, ch, msg) = (&keys, &channel, &message);
    let to = Recipients::Users(vec![*user]);
    let (deleted, queued) = tokio::join!(
        invalidation.redis.run(|mut c| async move {
            let mut inv = DELETE_AND_PUBLISH.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            inv.arg(ch).arg(msg).invoke_async(&mut c).await
        }),
        invalidation.delivery.message(&channel, &to, &updated)
    );
    let deleted: i64 = deleted.map_err(InvalidationError::Redis)?;
    queued.map_err(InvalidationError::Redis)?;
    Ok(InvalidationReport {
        outcome: "invalidated",
        keys_deleted: u64::try_from(deleted).unwrap_or(0),
        wallets_invalidated: 0,
        published: true,
    })
}

/// `SystemAnnouncement`: publishes on `system:announcements` and queues it
/// for every open WebSocket connection.
pub(crate) async fn announce(
    invalidation: &Invalidation,
    message: &str,
) -> Result<InvalidationReport, InvalidationError> {
    let announcement = pubsub::Announcement {
        kind: "announcement",
        message,
        timestamp: pubsub::unix_seconds(OffsetDateTime::now_utc()),
    };
    let (published, queued) = tokio::join!(
        pubsub::publish(
            &invalidation.redis,
            pubsub::SYSTEM_ANNOUNCEMENTS,
            &announcement
        ),
        invalidation.delivery.message(
            pubsub::SYSTEM_ANNOUNCEMENTS,
            &Recipients::Everyone,
            &announcement
        )
    );
    published.map_err(InvalidationError::Redis)?;
    queued.map_err(InvalidationError::Redis)?;
    Ok(InvalidationReport {
        outcome: "announced",
        published: true,
        ..InvalidationReport::default()
    })
}

#[tracing::instrument(skip_all, fields(transaction_id = %id))]
pub(crate) async fn transaction_completed(
    invalidation: &Invalidation,
    id: &TransactionId,
) -> Result<InvalidationReport, InvalidationError> {
    let Some(txn) = transactions::load_transaction(&invalidation.db, id).await? else {
        tracing::info!("TransactionCompleted for an unknown transaction: nothing to do");
        return Ok(InvalidationReport {
            outcome: "unknown-id",
            ..InvalidationReport::default()
        });
    };
    let wallets = [txn.sender_wallet_id, txn.receiver_wallet_id];
    let (status, sender, receiver, owners) = tokio::join!(
        transactions::publish_status(&invalidation.transactions, &txn),
        balance::invalidate(&invalidation.balances, &txn.sender_wallet_id),
        balance::invalidate(&invalidation.balances, &txn.receiver_wallet_id),
        balance::load_balances(&invalidation.db, &wallets),
    );
    let message = status.map_err(InvalidationError::Redis)?;
    sender.map_err(InvalidationError::Redis)?;
    receiver.map_err(InvalidationError::Redis)?;
    // Both parties' connections receive the status (each once).
    let mut users: Vec<UserId> = owners?.iter().flatten().filter_map(|b| b.owner).collect();
    users.sort_by_key(|u| u.to_string());
    users.dedup();
    if !users.is_empty() {
        let value: serde_json::Value = serde_json::from_str(&message)
            .map_err(|_| InvalidationError::Redis(RedisUnavailable::Server))?;
        invalidation
            .delivery
            .message(&pubsub::transactions(id), &Recipients::Users(users), &value)
            .await
            .map_err(InvalidationError::Redis)?;
    }
    Ok(InvalidationReport {
        outcome: "invalidated",
        keys_deleted: 0,
        wallets_invalidated: 2,
        published: true,
    })
}
