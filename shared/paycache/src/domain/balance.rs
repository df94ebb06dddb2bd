//! Wallet balances: versioned write-through with a fence, cache-aside reads.
//!
//! # Guarantee
//! Once a `PUT` has returned 200 with version *v*, no read — through the
//! cache or not, from any execution environment — returns a version older
//! than *v*. And every committed version is published on
//! `balance:<wallet_id>` once, in version order.
//!
//! # The write, and why the guarantee holds
//! 1. **Fence** (one round trip, `fence.lua`, before touching PostgreSQL):
//!    delete the cached balance and put a *writer fence*
//!    (`w:<intended version>:<random>`) on the
//!    wallet's load lease. A reader that misses now reads PostgreSQL and
//!    stores nothing; a reader's load that was already in flight loses its
//!    lease, so its (older) row is never stored. If the fence cannot be
//!    placed — Redis unreachable — the write is refused with 503 and nothing
//!    changes: committing without it could leave an older balance in a Redis
//!    that readers still reach.
//! 2. **Commit** in PostgreSQL, one transaction: lock the wallet row, check
//!    currency and `expected_version` (409 with the current state), write the
//!    new balance and `version + 1`, an outbox row (balance, version, commit
//!    time, audit event) and the `Idempotency-Key` record. A commit that
//!    would happen after half the fence's TTL is rolled back instead (503):
//!    the fence must outlive every write that can still commit.
//! 3. **Apply** (one round trip, `apply.lua`): publish every outbox row of
//!    the wallet not applied yet, in version order, skipping versions already
//!    published; leave the fence — it is lifted once the committed version
//!    reaches the highest intended one (every writer inside has committed or
//!    will fail its compare-and-set) or the last writer inside leaves; and,
//!    once no fence stands, store the balance if it is newer than what is
//!    cached. A write that commits nothing (409, 422, a replay) leaves the
//!    same way with the wallet's current row, so it does not empty the cache.
//!
//! Before step 3 completes, readers are served PostgreSQL (fenced) — never
//! the old cached balance. If Redis fails at step 3 the write still
//! succeeds: the fence stays (readers keep reading PostgreSQL) until its TTL
//! or until a sweep caches a version that reaches it, and the outbox row
//! stays pending until the next write of the wallet, `cache-warmer` or the
//! `audit-flush` sweep ([`apply_pending`]) applies it. After step 3, the
//! cache holds this version or a newer one, and `apply.lua` never moves it
//! backwards.
//!
//! The design's "update the database, then `SETEX`" lets two writers finish
//! in the opposite order and leave the older balance cached; steps 1 and 3
//! are what prevent that.
//!
//! Cost per successful write: 3 Redis round trips — fence, apply, and the
//! audit append (sent concurrently with the apply) — and one transaction.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::App;
use crate::domain::audit::{self, AuditEvent};
use crate::domain::money::{Currency, format_amount};
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::{Db, DbError, query_error};
use crate::infra::keys::{KeyFamily, ServiceName, WalletId};
use crate::patterns::cache_aside::{Cached, encode, jittered};
use crate::patterns::pubsub;

static FENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("balance/fence.lua")));
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("balance/apply.lua")));
static INVALIDATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("balance/invalidate.lua")));

/// The service name balance writes buffer their audit events under.
pub const SERVICE: &str = "balance-write";

/// A wallet's balance as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletBalance {
    pub wallet_id: WalletId,
    pub currency: String,
    /// Decimal string with exactly the currency's minor-unit digits.
    pub balance: String,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

struct WalletRow {
    wallet_id: WalletId,
    currency: Currency,
    balance_minor: i64,
    version: u64,
    updated_at: OffsetDateTime,
}

impl WalletRow {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, DbError> {
        let id: Uuid = row.try_get("wallet_id").map_err(query_error)?;
        let currency: String = row.try_get("currency").map_err(query_error)?;
        let version: i64 = row.try_get("version").map_err(query_error)?;
        Ok(Self {
            wallet_id: WalletId::from(id),
            // A currency the code does not know can only come from a row
            // written outside this service; treat it as unavailable data.
            currency: Currency::parse(currency.trim_end()).map_err(|_| DbError::Unavailable)?,
            balance_minor: row.try_get("balance_minor").map_err(query_error)?,
            version: u64::try_from(version).map_err(|_| DbError::Unavailable)?,
            updated_at: row.try_get("updated_at").map_err(query_error)?,
        })
    }

    fn to_balance(&self) -> WalletBalance {
        WalletBalance {
            wallet_id: self.wallet_id,
            currency: self.currency.code().to_owned(),
            balance: format_amount(self.balance_minor, self.currency),
            version: self.version,
            updated_at: self.updated_at,
        }
    }
}

const WALLET_COLUMNS: &str = "wallet_id, currency, balance_minor, version, updated_at";

/// Reads one balance from PostgreSQL (no cache).
pub async fn load_balance(db: &Db, wallet: &WalletId) -> Result<Option<WalletBalance>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = $1"),
            &[&wallet.as_uuid()],
        )
        .await
        .map_err(query_error)?;
    row.map(|r| WalletRow::from_row(&r).map(|w| w.to_balance()))
        .transpose()
}

/// Reads many balances in one query; the answer is in the order of `wallets`.
pub async fn load_balances(
    db: &Db,
    wallets: &[WalletId],
) -> Result<Vec<Option<WalletBalance>>, DbError> {
    let ids: Vec<Uuid> = wallets.iter().map(WalletId::as_uuid).collect();
    let client = db.client().await?;
    let rows = client
        .query(
            &format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = ANY($1)"),
            &[&ids],
        )
        .await
        .map_err(query_error)?;
    let mut found = std::collections::HashMap::new();
    for r in &rows {
        let b = WalletRow::from_row(r)?.to_balance();
        found.insert(b.wallet_id, b);
    }
    Ok(wallets.iter().map(|w| found.remove(w)).collect())
}

/// The balance through the cache: `wallet_balance:{wallet_id}`, TTL
/// `CACHE_TTL_WALLET_BALANCE_SECS`, version in the entry header.
#[tracing::instrument(skip_all, fields(wallet_id = %wallet))]
pub async fn get_balance(app: &App, wallet: &WalletId) -> Result<Cached<WalletBalance>, DbError> {
    app.cache
        .get_or_load_versioned(
            &app.keys.wallet_balance(wallet),
            |b: &WalletBalance| b.version,
            || load_balance(&app.db, wallet),
        )
        .await
}

/// A validated `PUT /wallets/{wallet_id}/balance`.
#[derive(Debug, Clone)]
pub struct BalanceWrite {
    pub wallet: WalletId,
    pub balance_minor: i64,
    pub currency: Currency,
    pub expected_version: u64,
    pub idempotency_key: Option<String>,
}

impl BalanceWrite {
    /// Two requests with the same key must have the same fingerprint to be
    /// the same request. `"125.5"` and `"125.50"` are the same amount.
    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}",
            self.balance_minor, self.currency, self.expected_version
        )
    }
}

/// What a write decided. Every variant but `NotFound` is stored with an
/// `Idempotency-Key` and replayed to retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// Committed. `cache` says whether the cache step succeeded.
    Applied {
        balance: WalletBalance,
        #[serde(skip)]
        cache: CacheStep,
    },
    /// `expected_version` is not the wallet's version (409).
    VersionConflict { current: WalletBalance },
    /// The request's currency is not the wallet's (422).
    CurrencyMismatch { wallet_currency: String },
    /// No such wallet (404).
    #[serde(skip)]
    NotFound,
    /// A retry of an earlier request with the same `Idempotency-Key`.
    #[serde(skip)]
    Replayed(Box<WriteOutcome>),
    /// The same `Idempotency-Key` with a different request (422).
    #[serde(skip)]
    KeyReused,
}

/// The outcome of the post-commit cache step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheStep {
    #[default]
    Applied,
    /// Redis failed after the commit; the outbox row is pending.
    Pending,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The fence could not be placed; nothing was written.
    #[error("the cache fence could not be placed: {0}")]
    FenceUnavailable(RedisUnavailable),
    /// The commit would have come too late for the fence; rolled back.
    #[error("the write took longer than its fence allows and was rolled back")]
    FenceExpired,
    #[error(transparent)]
    Db(#[from] DbError),
}

struct PendingRow {
    version: u64,
    message: String,
}

/// Performs a balance write (see the module documentation).
pub async fn write_balance(app: &App, write: &BalanceWrite) -> Result<WriteOutcome, WriteError> {
    write_balance_pausing(app, write, Duration::ZERO).await
}

/// Fault injection for tests: [`write_balance`] with a pause between the
/// commit and the cache step — the window in which a Lambda can be frozen,
/// or its next packet delayed, after PostgreSQL has committed. The
/// guarantee must hold whatever the pause; `tests/balance.rs` runs this
/// writer and the design's update-then-SET writer with the same pauses.
#[doc(hidden)]
#[tracing::instrument(skip_all, fields(wallet_id = %write.wallet))]
pub async fn write_balance_pausing(
    app: &App,
    write: &BalanceWrite,
    pause_after_commit: Duration,
) -> Result<WriteOutcome, WriteError> {
    let key = app.keys.wallet_balance(&write.wallet);
    let lock = key.lock_key();
    let intent = write.expected_version.saturating_add(1);
    let fence_ttl = app.config.balance.fence_ttl;
    let fenced_at = Instant::now();
    let (k, l) = (&key, &lock);
    let fence_ms = u64::try_from(fence_ttl.as_millis()).unwrap_or(u64::MAX);
    app.redis
        .run(|mut c| async move {
            let _: String = FENCE
                .key(k)
                .key(l)
                .arg(intent)
                .arg(fence_ms)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await
        .map_err(WriteError::FenceUnavailable)?;

    let committed = commit(app, write, fenced_at + fence_ttl / 2).await;
    let (row, pending, event) = match committed {
        Ok(Committed::Done { outcome, current }) => {
            // Leave the fence with the wallet's current row: if we were the
            // last writer inside, the cache gets it back.
            let current = current.map(|c| c.to_balance());
            if let Err(why) = apply(app, &write.wallet, current.as_ref(), &[], true).await {
                tracing::warn!(
                    reason = why.as_str(),
                    "could not leave the balance fence; it expires by itself"
                );
            }
            return Ok(outcome);
        }
        Ok(Committed::Applied {
            row,
            pending,
            event,
        }) => (row, pending, event),
        Err(e) => {
            let _ = apply(app, &write.wallet, None, &[], true).await;
            return Err(e);
        }
    };

    if !pause_after_commit.is_zero() {
        tokio::time::sleep(pause_after_commit).await;
    }
    let balance = row.to_balance();
    let (applied, appended) = tokio::join!(
        apply(app, &write.wallet, Some(&balance), &pending, true),
        audit::append(app, &event)
    );
    let cache = match applied {
        Ok(_) => {
            mark_applied(app, &write.wallet, balance.version).await;
            CacheStep::Applied
        }
        Err(why) => {
            tracing::warn!(
                version = balance.version,
                reason = why.as_str(),
                "balance cache update pending: the outbox row will be applied later"
            );
            CacheStep::Pending
        }
    };
    match appended {
        Ok(len) => maybe_flush_early(app, len).await,
        Err(e) => tracing::error!(error = %e,
            "audit append failed; the event will be reconciled from the outbox"),
    }
    Ok(WriteOutcome::Applied { balance, cache })
}

enum Committed {
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

async fn commit(
    app: &App,
    write: &BalanceWrite,
    commit_by: Instant,
) -> Result<Committed, WriteError> {
    let mut client = app.db.client().await?;
    let tx = client.transaction().await.map_err(query_error)?;
    let wallet_uuid = write.wallet.as_uuid();
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = $1 FOR UPDATE"),
            &[&wallet_uuid],
        )
        .await
        .map_err(query_error)?
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
            .await
            .map_err(query_error)?;
        if claimed.is_none() {
            // The first request with this key has committed (we waited for
            // its row lock); replay what it decided.
            let stored = tx
                .query_one(
                    "SELECT fingerprint, response FROM idempotency_keys
                      WHERE wallet_id = $1 AND idempotency_key = $2",
                    &[&wallet_uuid, idem],
                )
                .await
                .map_err(query_error)?;
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
        tx.commit().await.map_err(query_error)?;
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
        .await
        .map_err(query_error)?;
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
    .await
    .map_err(query_error)?;
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
        .await
        .map_err(query_error)?;
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
    tx.commit().await.map_err(query_error)?;
    Ok(Committed::Applied {
        row,
        pending,
        event,
    })
}

async fn store_response(
    tx: &deadpool_postgres::Transaction<'_>,
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
    .await
    .map_err(query_error)?;
    Ok(())
}

fn pending_row(wallet: &WalletId, r: &tokio_postgres::Row) -> Result<PendingRow, DbError> {
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

/// Runs `apply.lua`: one round trip. `current` is the wallet's current
/// balance (none when unknown); `leaving` is true for a writer that raised
/// the fence.
async fn apply(
    app: &App,
    wallet: &WalletId,
    current: Option<&WalletBalance>,
    pending: &[PendingRow],
    leaving: bool,
) -> Result<u64, RedisUnavailable> {
    let key = app.keys.wallet_balance(wallet);
    let lock = key.lock_key();
    let published = app.keys.wallet_balance_published(wallet);
    let ttl = app
        .config
        .ttl
        .of(KeyFamily::WalletBalance)
        .unwrap_or(Duration::from_secs(300));
    let ttl = jittered(ttl, app.config.ttl.jitter_percent);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let (version, encoded) = match current {
        Some(b) => (
            b.version,
            encode(Some(b), b.version, Duration::ZERO, ttl).ok_or(RedisUnavailable::Server)?,
        ),
        None => (0, Vec::new()),
    };
    let channel = pubsub::balance(wallet);
    let leaving = if leaving { "1" } else { "0" };
    let (k, l, p, ch, enc) = (&key, &lock, &published, &channel, &encoded);
    app.redis
        .run(|mut c| async move {
            let mut inv = APPLY.key(k);
            inv.key(l)
                .key(p)
                .arg(ttl_ms)
                .arg(ch)
                .arg(leaving)
                .arg(version)
                .arg(enc.as_slice());
            for row in pending {
                inv.arg(row.version).arg(&row.message);
            }
            let (cached, _sent): (u64, u64) = inv.invoke_async(&mut c).await?;
            Ok(cached)
        })
        .await
}

async fn mark_applied(app: &App, wallet: &WalletId, version: u64) {
    let Ok(version) = i64::try_from(version) else {
        return;
    };
    let result = async {
        let client = app.db.client().await?;
        client
            .execute(
                "UPDATE balance_outbox SET cache_applied_at = now()
                  WHERE wallet_id = $1 AND version <= $2 AND cache_applied_at IS NULL",
                &[&wallet.as_uuid(), &version],
            )
            .await
            .map_err(query_error)
    }
    .await;
    if let Err(e) = result {
        // The rows stay pending; applying them again is harmless.
        tracing::warn!(wallet_id = %wallet, error = %e, "could not mark outbox rows applied");
    }
}

/// The design's "trigger batch write if buffer is full": when an append
/// fills the buffer to a multiple of `AUDIT_FLUSH_THRESHOLD`, the writer
/// flushes one batch itself (the scheduled `audit-flush` does the rest).
async fn maybe_flush_early(app: &App, buffered: u64) {
    let threshold = app.config.audit.flush_threshold;
    if buffered < threshold || !buffered.is_multiple_of(threshold) {
        return;
    }
    let Ok(service) = ServiceName::parse(SERVICE) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    if let Err(e) = audit::flush(app, &service, deadline, 1).await {
        tracing::warn!(error = %e, "early audit flush failed; audit-flush will retry");
    }
}

/// Summary of a sweep of pending outbox rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub wallets: u64,
    pub rows: u64,
    pub failed_wallets: u64,
}

/// Applies pending outbox rows (those whose cache step failed): for each
/// wallet, publishes the pending versions in order and caches the wallet's
/// *current* row (never an old one), lifting a fence that the current
/// version reaches (a writer that died after committing); one round trip per
/// wallet. Used by `audit-flush` and `cache-warmer`.
#[tracing::instrument(skip_all)]
pub async fn apply_pending(app: &App, limit: i64) -> Result<SweepReport, DbError> {
    let client = app.db.client().await?;
    let rows = client
        .query(
            "SELECT wallet_id, version, balance_minor, currency, committed_at FROM balance_outbox
              WHERE cache_applied_at IS NULL ORDER BY wallet_id, version LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(query_error)?;
    drop(client);
    let mut report = SweepReport::default();
    let mut i = 0;
    while i < rows.len() {
        let id: Uuid = rows[i].try_get(0).map_err(query_error)?;
        let wallet = WalletId::from(id);
        let mut pending = Vec::new();
        while i < rows.len() && rows[i].try_get::<_, Uuid>(0).map_err(query_error)? == id {
            pending.push(pending_row(&wallet, &rows[i])?);
            i += 1;
        }
        report.wallets += 1;
        report.rows += pending.len() as u64;
        let Some(current) = load_balance(&app.db, &wallet).await? else {
            continue;
        };
        match apply(app, &wallet, Some(&current), &pending, false).await {
            Ok(_) => {
                if let Some(last) = pending.last() {
                    mark_applied(app, &wallet, last.version).await;
                }
            }
            Err(_) => report.failed_wallets += 1,
        }
    }
    Ok(report)
}

/// Event-driven invalidation of a cached balance (one round trip): deletes
/// the value and any reader's lease, keeps a writer's fence.
#[tracing::instrument(skip_all, fields(wallet_id = %wallet))]
pub async fn invalidate(app: &App, wallet: &WalletId) -> Result<(), RedisUnavailable> {
    let key = app.keys.wallet_balance(wallet);
    let lock = key.lock_key();
    let (k, l) = (&key, &lock);
    app.redis
        .run(|mut c| async move {
            let _: i64 = INVALIDATE.key(k).key(l).invoke_async(&mut c).await?;
            Ok(())
        })
        .await
}
