//! The PostgreSQL side of balances: rows, the commit (step 2) with its
//! outbox row and `Idempotency-Key` record, and the outbox bookkeeping.

use std::time::Instant;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{BalanceWrite, Balances, CacheStep, SERVICE, WalletBalance, WriteError, WriteOutcome};
use crate::domain::audit::AuditEvent;
use crate::domain::money::{Currency, format_amount};
use crate::infra::db::{DbError, query_error};
use crate::infra::keys::{ServiceName, UserId, WalletId};
use crate::patterns::pubsub;

pub(super) struct WalletRow {
    pub(super) wallet_id: WalletId,
    pub(super) owner: UserId,
    pub(super) currency: Currency,
    pub(super) balance_minor: i64,
    pub(super) version: u64,
    pub(super) updated_at: OffsetDateTime,
}

impl WalletRow {
    pub(super) fn from_row(row: &tokio_postgres::Row) -> Result<Self, DbError> {
        let id: Uuid = row.try_get("wallet_id").map_err(query_error)?;
        let currency: String = row.try_get("currency").map_err(query_error)?;
        let version: i64 = row.try_get("version").map_err(query_error)?;
        Ok(Self {
            wallet_id: WalletId::from(id),
            owner: UserId::from(row.try_get::<_, Uuid>("user_id").map_err(query_error)?),
            // A currency the code does not know can only come from a row
            // written outside this service; treat it as unavailable data.
            currency: Currency::parse(currency.trim_end()).map_err(|_| DbError::Unavailable)?,
            balance_minor: row.try_get("balance_minor").map_err(query_error)?,
            version: u64::try_from(version).map_err(|_| DbError::Unavailable)?,
            updated_at: row.try_get("updated_at").map_err(query_error)?,
        })
    }

    pub(super) fn to_balance(&self) -> WalletBalance {
        WalletBalance {
            wallet_id: self.wallet_id,
            currency: self.currency.code().to_owned(),
            balance: format_amount(self.balance_minor, self.currency),
            version: self.version,
            updated_at: self.updated_at,
            owner: Some(self.owner),
        }
    }
}

pub(super) const WALLET_COLUMNS: &str =
    "wallet_id, user_id, currency, balance_minor, version, updated_at";

pub(super) struct PendingRow {
    pub(super) version: u64,
    pub(super) message: String,
}

pub(super) enum Committed {
    /// Decided without a new version (conflict, mismatch, replay, …), with
    /// the wallet's row as read under its lock (none if it does not exist).
    Done {
        outcome: WriteOutcome,
        current: Option<WalletRow>,
    },
    /// A new version is committed.
    Applied {
        row: WalletRow,
        pending: Vec<PendingRow>,
        event: AuditEvent,
    },
}

pub(super) async fn commit(
    balances: &Balances,
    write: &BalanceWrite,
    commit_by: Instant,
) -> Result<Committed, WriteError> {
    let mut client = balances.db.client().await?;
    let tx = client.transaction().await?;
    let wallet_uuid = write.wallet.as_uuid();
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = $1 FOR UPDATE"),
            &[&wallet_uuid],
        )
        .await?
    else {
        return Ok(Committed::Done {
            outcome: WriteOutcome::NotFound,
            current: None,
        });
    };
    let current = WalletRow::from_row(&row)?;

    if let Some(idem) = &write.idempotency_key {
        let claimed = tx
            .query_opt(
                "INSERT INTO idempotency_keys (wallet_id, idempotency_key, fingerprint)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                &[&wallet_uuid, idem, &write.fingerprint()],
            )
            .await?;
        if claimed.is_none() {
            // The first request with this key has committed (we waited for
            // its row lock); replay what it decided.
            let stored = tx
                .query_one(
                    "SELECT fingerprint, response FROM idempotency_keys
                      WHERE wallet_id = $1 AND idempotency_key = $2",
                    &[&wallet_uuid, idem],
                )
                .await?;
            let fingerprint: String = stored.try_get(0).map_err(query_error)?;
            if fingerprint != write.fingerprint() {
                return Ok(Committed::Done {
                    outcome: WriteOutcome::KeyReused,
                    current: Some(current),
                });
            }
            let response: Option<serde_json::Value> = stored.try_get(1).map_err(query_error)?;
            let outcome = response
                .and_then(|r| serde_json::from_value::<WriteOutcome>(r).ok())
                .ok_or(DbError::Unavailable)?;
            return Ok(Committed::Done {
                outcome: WriteOutcome::Replayed(Box::new(outcome)),
                current: Some(current),
            });
        }
    }

    let decided = if current.currency != write.currency {
        Some(WriteOutcome::CurrencyMismatch {
            wallet_currency: current.currency.code().to_owned(),
        })
    } else if current.version != write.expected_version {
        Some(WriteOutcome::VersionConflict {
            current: current.to_balance(),
        })
    } else {
        None
    };
    if let Some(outcome) = decided {
        store_response(&tx, write, &outcome).await?;
        tx.commit().await?;
        return Ok(Committed::Done {
            outcome,
            current: Some(current),
        });
    }

    let new_version = i64::try_from(current.version + 1).map_err(|_| DbError::Unavailable)?;
    let updated = tx
        .query_one(
            &format!(
                "UPDATE wallets SET balance_minor = $2, version = $3, updated_at = clock_timestamp()
                  WHERE wallet_id = $1 RETURNING {WALLET_COLUMNS}"
            ),
            &[&wallet_uuid, &write.balance_minor, &new_version],
        )
        .await?;
    let row = WalletRow::from_row(&updated)?;
    let event = AuditEvent {
        event_id: Uuid::new_v4(),
        service: ServiceName::parse(SERVICE).map_err(|_| DbError::Unavailable)?,
        event_type: "balance_updated".into(),
        occurred_at: row.updated_at,
        payload: serde_json::json!({
            "wallet_id": row.wallet_id,
            "currency": row.currency.code(),
            "previous_balance": format_amount(current.balance_minor, current.currency),
            "previous_version": current.version,
            "balance": format_amount(row.balance_minor, row.currency),
            "version": row.version,
            "idempotency_key": write.idempotency_key,
            "actor": write.actor,
        }),
    };
    let event_json = serde_json::to_value(&event).map_err(|_| DbError::Unavailable)?;
    tx.execute(
        "INSERT INTO balance_outbox (wallet_id, version, balance_minor, currency, committed_at,
                                     audit_event_id, audit_event)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &wallet_uuid,
            &new_version,
            &row.balance_minor,
            &row.currency.code(),
            &row.updated_at,
            &event.event_id,
            &event_json,
        ],
    )
    .await?;
    // Earlier versions whose cache step has not happened (yet, or ever):
    // this write publishes them first, so subscribers see every version in
    // order. Their own writers may be applying them right now; the script's
    // published-version check makes that harmless.
    let pending_rows = tx
        .query(
            "SELECT version, balance_minor, currency, committed_at FROM balance_outbox
              WHERE wallet_id = $1 AND cache_applied_at IS NULL AND version <= $2
              ORDER BY version DESC LIMIT 100",
            &[&wallet_uuid, &new_version],
        )
        .await?;
    let mut pending = pending_rows
        .iter()
        .map(|r| pending_row(&row.wallet_id, r))
        .collect::<Result<Vec<_>, _>>()?;
    pending.reverse();

    let outcome = WriteOutcome::Applied {
        balance: row.to_balance(),
        cache: CacheStep::Applied,
    };
    store_response(&tx, write, &outcome).await?;
    if Instant::now() >= commit_by {
        // Rolled back by dropping the transaction.
        return Err(WriteError::FenceExpired);
    }
    tx.commit().await?;
    Ok(Committed::Applied {
        row,
        pending,
        event,
    })
}

async fn store_response(
    tx: &crate::infra::db::DbTx<'_>,
    write: &BalanceWrite,
    outcome: &WriteOutcome,
) -> Result<(), DbError> {
    let Some(idem) = &write.idempotency_key else {
        return Ok(());
    };
    let status: i16 = match outcome {
        WriteOutcome::Applied { .. } => 200,
        WriteOutcome::VersionConflict { .. } => 409,
        _ => 422,
    };
    let response = serde_json::to_value(outcome).map_err(|_| DbError::Unavailable)?;
    tx.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4
          WHERE wallet_id = $1 AND idempotency_key = $2",
        &[&write.wallet.as_uuid(), idem, &status, &response],
    )
    .await?;
    Ok(())
}

pub(super) fn pending_row(
    wallet: &WalletId,
    r: &tokio_postgres::Row,
) -> Result<PendingRow, DbError> {
    let version: i64 = r.try_get("version").map_err(query_error)?;
    let minor: i64 = r.try_get("balance_minor").map_err(query_error)?;
    let currency: String = r.try_get("currency").map_err(query_error)?;
    let at: OffsetDateTime = r.try_get("committed_at").map_err(query_error)?;
    let currency = Currency::parse(currency.trim_end()).map_err(|_| DbError::Unavailable)?;
    let version = u64::try_from(version).map_err(|_| DbError::Unavailable)?;
    let balance = format_amount(minor, currency);
    let message = serde_json::to_string(&pubsub::BalanceUpdate {
        kind: "balance_update",
        wallet_id: wallet,
        balance: &balance,
        currency: currency.code(),
        version,
        timestamp: pubsub::unix_seconds(at),
    })
    .map_err(|_| DbError::Unavailable)?;
    Ok(PendingRow { version, message })
}

pub(super) async fn mark_applied(balances: &Balances, wallet: &WalletId, version: u64) {
    let Ok(version) = i64::try_from(version) else {
        return;
    };
    let result = async {
        let client = balances.db.client().await?;
        client
            .execute(
                "UPDATE balance_outbox SET cache_applied_at = now()
                  WHERE wallet_id = $1 AND version <= $2 AND cache_applied_at IS NULL",
                &[&wallet.as_uuid(), &version],
            )
            .await
    }
    .await;
    if let Err(e) = result {
        // The rows stay pending; applying them again is harmless.
        tracing::warn!(wallet_id = %wallet, error = %e, "could not mark outbox rows applied");
    }
}
