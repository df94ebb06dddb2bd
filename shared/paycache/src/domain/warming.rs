//! Cache warming: the design's `warm_user_cache` — profile, wallet balances,
//! the 10 most recent transactions — for the N most recently active users,
//! or for an explicit list.
//!
//! It goes through the cache-aside engine's batch fill
//! ([`crate::patterns::cache_aside::CacheAside::fill_batch`]), so warming and reads
//! agree on keys, TTLs and encodings, and warming takes the same load leases
//! as reads: it cannot write back a row that an invalidation or a balance
//! write has made old, and it skips entries that are already cached, being
//! loaded, or fenced. Users are handled in batches of `WARM_BATCH_USERS`
//! (one query for their wallets and recent transactions, then for each of
//! profiles, balances and transactions: all lease requests at once, one
//! batched read, all stores at once), `WARM_CONCURRENCY` batches at a time. Before
//! warming it applies pending balance outbox rows. It starts no batch it
//! could not finish `WARM_DEADLINE_MARGIN_MS` before the deadline, and
//! reports what it did.

use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::balance::{self, WalletBalance};
use crate::domain::profile;
use crate::domain::transactions;
pub use crate::infra::config::WarmConfig;
use crate::infra::db::Db;
use crate::infra::db::{DbError, query_error};
use crate::infra::keys::Keyspace;
use crate::infra::keys::{TransactionId, UserId, WalletId};
use crate::patterns::cache_aside::CacheAside;
use crate::patterns::cache_aside::FillReport;

/// What warming uses: the cache engine and PostgreSQL for the batches, the
/// balances for the outbox sweep, and the warming settings.
#[derive(Debug, Clone)]
pub struct Warmer {
    pub(crate) keys: Keyspace,
    pub(crate) cache: CacheAside,
    pub(crate) db: Db,
    pub(crate) balances: crate::domain::balance::Balances,
    pub(crate) config: WarmConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
/// What a warming run did, for the function's JSON summary.
pub struct WarmReport {
    /// Users asked for.
    pub users: u64,
    /// Users whose batch ran.
    pub users_done: u64,
    /// Entries loaded and stored.
    pub warmed: u64,
    /// Entries already fresh (cached), being loaded, or fenced.
    pub skipped: u64,
    /// Entries not warmed because Redis or PostgreSQL failed.
    pub failed: u64,
    /// Pending balance outbox rows applied first.
    pub outbox_rows_applied: u64,
    /// True if the deadline stopped the run before every user was done.
    pub stopped_early: bool,
    /// The run's duration.
    pub duration_ms: u64,
}

impl WarmReport {
    fn add(&mut self, fill: FillReport) {
        self.warmed += fill.filled;
        self.skipped += fill.skipped;
        self.failed += fill.failed;
    }
}

/// The N most recently active users.
pub async fn most_recently_active(warmer: &Warmer, n: u64) -> Result<Vec<UserId>, DbError> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let client = warmer.db.client().await?;
    let rows = client
        .query(
            "SELECT user_id FROM users ORDER BY last_active_at DESC NULLS LAST, user_id LIMIT $1",
            &[&n],
        )
        .await?;
    ids(&rows)
}

/// Warms `users` (or the N most recently active when `None`).
pub async fn warm(warmer: &Warmer, users: Option<Vec<UserId>>, deadline: Instant) -> WarmReport {
    let started = Instant::now();
    let cfg = warmer.config;
    let mut report = WarmReport::default();
    match balance::apply_pending(&warmer.balances, 1000).await {
        Ok(sweep) => report.outbox_rows_applied = sweep.rows,
        Err(e) => tracing::warn!(error = %e, "outbox sweep failed before warming"),
    }
    let users = match users {
        Some(u) => u,
        None => match most_recently_active(warmer, cfg.users).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "could not list users to warm");
                report.failed = 1;
                report.duration_ms = started.elapsed().as_millis() as u64;
                return report;
            }
        },
    };
    report.users = users.len() as u64;
    let last_start = deadline
        .checked_sub(cfg.deadline_margin)
        .unwrap_or(deadline);
    let batches = users
        .chunks(cfg.batch_users.max(1))
        .map(|chunk| async move {
            if Instant::now() >= last_start {
                return None;
            }
            Some((chunk.len() as u64, warm_batch(warmer, chunk).await))
        });
    let mut results = futures_util::stream::iter(batches).buffer_unordered(cfg.concurrency.max(1));
    while let Some(result) = results.next().await {
        match result {
            None => report.stopped_early = true,
            Some((n, outcome)) => {
                report.users_done += n;
                match outcome {
                    Ok(fills) => fills.into_iter().for_each(|f| report.add(f)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a warming batch failed");
                        report.failed += n;
                    }
                }
            }
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

async fn warm_batch(warmer: &Warmer, users: &[UserId]) -> Result<[FillReport; 3], DbError> {
    let (wallets, txns) = related(warmer, users).await?;
    let profile_keys: Vec<_> = users.iter().map(|u| warmer.keys.user_profile(u)).collect();
    let wallet_keys: Vec<_> = wallets
        .iter()
        .map(|w| warmer.keys.wallet_balance(w))
        .collect();
    let txn_keys: Vec<_> = txns.iter().map(|t| warmer.keys.transaction(t)).collect();
    let (p, b, t) = tokio::join!(
        warmer.cache.fill_batch(
            &profile_keys,
            |_| 0,
            |idx| async move {
                let ids: Vec<UserId> = idx.iter().map(|i| users[*i]).collect();
                profile::load_profiles(&warmer.db, &ids).await
            }
        ),
        warmer.cache.fill_batch(
            &wallet_keys,
            |b: &WalletBalance| b.version,
            |idx| {
                let ids: Vec<WalletId> = idx.iter().map(|i| wallets[*i]).collect();
                async move { balance::load_balances(&warmer.db, &ids).await }
            }
        ),
        warmer.cache.fill_batch(
            &txn_keys,
            |_| 0,
            |idx| {
                let ids: Vec<TransactionId> = idx.iter().map(|i| txns[*i]).collect();
                async move { transactions::load_transactions(&warmer.db, &ids).await }
            }
        ),
    );
    Ok([p?, b?, t?])
}

/// The ids in the first column of `rows`.
fn ids<T: From<Uuid>>(rows: &[tokio_postgres::Row]) -> Result<Vec<T>, DbError> {
    rows.iter()
        .map(|r| r.try_get::<_, Uuid>(0).map(T::from).map_err(query_error))
        .collect()
}

/// The users' wallets, and each user's 10 most recent transactions.
async fn related(
    warmer: &Warmer,
    users: &[UserId],
) -> Result<(Vec<WalletId>, Vec<TransactionId>), DbError> {
    let users: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
    let client = warmer.db.client().await?;
    let wallets = client
        .query(
            "SELECT wallet_id FROM wallets WHERE user_id = ANY($1) ORDER BY wallet_id",
            &[&users],
        )
        .await?;
    let wallets: Vec<WalletId> = ids(&wallets)?;
    let txns = client
        .query(
            "SELECT DISTINCT t.transaction_id
               FROM unnest($1::uuid[]) AS u(user_id)
               CROSS JOIN LATERAL (
                   SELECT x.transaction_id FROM (
                       SELECT tr.transaction_id, tr.created_at
                         FROM wallets w JOIN transactions tr ON tr.sender_wallet_id = w.wallet_id
                        WHERE w.user_id = u.user_id
                       UNION ALL
                       SELECT tr.transaction_id, tr.created_at
                         FROM wallets w JOIN transactions tr ON tr.receiver_wallet_id = w.wallet_id
                        WHERE w.user_id = u.user_id
                   ) x
                   ORDER BY x.created_at DESC
                   LIMIT 10
               ) t",
            &[&users],
        )
        .await?;
    Ok((wallets, ids(&txns)?))
}
