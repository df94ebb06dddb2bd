//! The outbox sweep: pending cache steps applied by `audit-flush` and
//! `cache-warmer`.

use serde::Serialize;
use uuid::Uuid;

use super::{Balances, fence, load_balance, sql};
use crate::infra::db::{DbError, query_error};
use crate::infra::keys::WalletId;

/// Summary of a sweep of pending outbox rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Wallets with pending rows.
    pub wallets: u64,
    /// Pending rows seen.
    pub rows: u64,
    /// Wallets whose apply failed (they stay pending).
    pub failed_wallets: u64,
}

/// Applies pending outbox rows (those whose cache step failed): for each
/// wallet, publishes the pending versions in order and caches the wallet's
/// *current* row (never an old one), lifting a fence that the current
/// version reaches (a writer that died after committing); one round trip per
/// wallet. Used by `audit-flush` and `cache-warmer`.
#[tracing::instrument(skip_all)]
pub async fn apply_pending(balances: &Balances, limit: i64) -> Result<SweepReport, DbError> {
    let client = balances.db.client().await?;
    let rows = client
        .query(
            "SELECT wallet_id, version, balance_minor, currency, committed_at FROM balance_outbox
              WHERE cache_applied_at IS NULL ORDER BY wallet_id, version LIMIT $1",
            &[&limit],
        )
        .await?;
    drop(client);
    let mut report = SweepReport::default();
    let mut i = 0;
    while i < rows.len() {
        let id: Uuid = rows[i].try_get(0).map_err(query_error)?;
        let wallet = WalletId::from(id);
        let mut pending = Vec::new();
        while i < rows.len() && rows[i].try_get::<_, Uuid>(0).map_err(query_error)? == id {
            pending.push(sql::pending_row(&wallet, &rows[i])?);
            i += 1;
        }
        report.wallets += 1;
        report.rows += pending.len() as u64;
        let Some(current) = load_balance(&balances.db, &wallet).await? else {
            continue;
        };
        match fence::apply(balances, &wallet, Some(&current), &pending, None).await {
            Ok(_) => {
                // Queue the wallet for delivery whatever this apply
                // published: the writer may have published and died before
                // queueing. A spare queue entry delivers nothing twice.
                let queued = match (pending.first(), current.owner) {
                    (Some(first), Some(owner)) => balances
                        .delivery
                        .balance(&wallet, &owner, first.version)
                        .await
                        .is_ok(),
                    _ => true,
                };
                if !queued {
                    report.failed_wallets += 1;
                    continue;
                }
                if let Some(last) = pending.last() {
                    sql::mark_applied(balances, &wallet, last.version).await;
                }
            }
            Err(_) => report.failed_wallets += 1,
        }
    }
    Ok(report)
}
