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
//!    (`w:<highest intended version>:<tokens of the writers inside>`) on the
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
//!    published; leave the fence — take this writer's token out of it; it
//!    is lifted once the committed version reaches the highest intended one
//!    (every writer inside has committed or will fail its compare-and-set)
//!    or the last writer inside leaves; and, if this writer's leaving lifted
//!    it, store the balance if it is newer than what is cached and not older
//!    than the highest version published. A write that commits nothing (409,
//!    422, a replay) leaves the same way with the wallet's current row, so
//!    it does not empty the cache.
//!
//!    Both conditions close races a test found (1 stale read in 3,791 under
//!    `balance::readers_never_see_an_older_version`), each now a test of its
//!    own: with a *count* of writers, a writer that had failed its
//!    compare-and-set, still on its way out of a fence already lifted,
//!    decremented the next writer's fence to zero — lifting it while that
//!    writer was inside — and cached its own row, read before the write
//!    acknowledged in between; and a row read before a newer version was
//!    published could fill a cache that an invalidation had emptied.
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

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::audit::AuditLog;
use crate::domain::audit::{self};
use crate::domain::money::Currency;
use crate::infra::config::TtlConfig;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::{Db, DbError};
use crate::infra::keys::Keyspace;
use crate::infra::keys::{ServiceName, UserId, WalletId};
use crate::patterns::cache_aside::CacheAside;
use crate::patterns::cache_aside::Cached;

/// What balances use: the cache Redis and engine, PostgreSQL, the fence
/// and cache TTLs, and the audit log their writes append to.
#[derive(Debug, Clone)]
pub struct Balances {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) cache: CacheAside,
    pub(crate) db: Db,
    pub(crate) ttl: TtlConfig,
    pub(crate) fence_ttl: Duration,
    pub(crate) audit: AuditLog,
    pub(crate) delivery: crate::domain::delivery::DeliveryQueue,
}

mod fence;
mod outbox;
mod sql;

pub use fence::invalidate;
pub use outbox::{SweepReport, apply_pending};
use sql::{Committed, WALLET_COLUMNS, WalletRow};

/// The service name balance writes buffer their audit events under.
pub(crate) const SERVICE: &str = "balance-write";

/// A wallet's balance as the contract shows it, plus its owner (kept in
/// the cached entry so that authorization costs no extra round trip; never
/// in an answer: see [`WalletBalance::public`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletBalance {
    /// The wallet.
    pub wallet_id: WalletId,
    /// ISO 4217 code.
    pub currency: String,
    /// Decimal string with exactly the currency's minor-unit digits.
    pub balance: String,
    /// Incremented by every committed write; never goes backwards.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    /// When this version was committed.
    pub updated_at: OffsetDateTime,
    /// The owning user (`wallets.user_id`); `None` in entries cached
    /// before owners were stored, which then only support staff can read
    /// until they are refreshed.
    #[serde(default, rename = "user_id", skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
}

impl WalletBalance {
    /// The balance as the contract shows it (without the owner).
    pub fn public(&self) -> Self {
        Self {
            owner: None,
            ..self.clone()
        }
    }
}

/// Reads one balance from PostgreSQL (no cache).
pub async fn load_balance(db: &Db, wallet: &WalletId) -> Result<Option<WalletBalance>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {WALLET_COLUMNS} FROM wallets WHERE wallet_id = $1"),
            &[&wallet.as_uuid()],
        )
        .await?;
    row.map(|r| WalletRow::from_row(&r).map(|w| w.to_balance()))
        .transpose()
}

/// Reads many balances in one query; the answer is in the order of `wallets`.
pub(crate) async fn load_balances(
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
        .await?;
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
pub async fn get_balance(
    balances: &Balances,
    wallet: &WalletId,
) -> Result<Cached<WalletBalance>, DbError> {
    balances
        .cache
        .get_or_load_versioned(
            &balances.keys.wallet_balance(wallet),
            |b: &WalletBalance| b.version,
            || load_balance(&balances.db, wallet),
        )
        .await
}

/// A validated `PUT /wallets/{wallet_id}/balance`.
#[derive(Debug, Clone)]
pub struct BalanceWrite {
    /// The wallet to write.
    pub wallet: WalletId,
    /// The new balance in the currency's minor units.
    pub balance_minor: i64,
    /// Must be the wallet's currency.
    pub currency: Currency,
    /// The version the writer read; the write applies only if it is still current.
    pub expected_version: u64,
    /// The `Idempotency-Key` header, when sent.
    pub idempotency_key: Option<String>,
    /// Who asked, recorded in the write's audit event.
    pub actor: Option<Actor>,
}

/// Who asked for a write, as its audit event names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `svc:<client_id>` for a service, `user:<user_id>` for a user.
    pub principal: String,
    /// The token's `jti`.
    pub jti: String,
    /// The request's id (API Gateway's, or the runtime's).
    pub request_id: String,
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
        /// The committed balance and version.
        balance: WalletBalance,
        #[serde(skip)]
        /// Whether the cache step succeeded (not stored for replays).
        cache: CacheStep,
    },
    /// `expected_version` is not the wallet's version (409).
    VersionConflict {
        /// The wallet's current state.
        current: WalletBalance,
    },
    /// The request's currency is not the wallet's (422).
    CurrencyMismatch {
        /// The wallet's currency.
        wallet_currency: String,
    },
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
    /// The cache holds this version (or a newer one).
    Applied,
    /// Redis failed after the commit; the outbox row is pending.
    Pending,
}

#[derive(Debug, thiserror::Error)]
/// Why a write failed without deciding (the client may retry).
pub enum WriteError {
    /// The fence could not be placed; nothing was written.
    #[error("the cache fence could not be placed: {0}")]
    FenceUnavailable(RedisUnavailable),
    /// The commit would have come too late for the fence; rolled back.
    #[error("the write took longer than its fence allows and was rolled back")]
    FenceExpired,
    #[error(transparent)]
    /// PostgreSQL failed; nothing was committed.
    Db(#[from] DbError),
}

/// Performs a balance write (see the module documentation).
pub async fn write_balance(
    balances: &Balances,
    write: &BalanceWrite,
) -> Result<WriteOutcome, WriteError> {
    write_pausing(balances, write, Duration::ZERO).await
}

/// Fault injection for tests (`test-variants` only): [`write_balance`] with
/// a pause between the database's decision and the cache step — the window
/// in which a Lambda can be frozen, or its next packet delayed, after
/// PostgreSQL has committed (or refused the compare-and-set). The guarantee must hold whatever the pause; `tests/balance.rs`
/// runs this writer and the design's update-then-SET writer with the same
/// pauses.
#[cfg(feature = "test-variants")]
pub async fn write_balance_pausing(
    balances: &Balances,
    write: &BalanceWrite,
    pause_after_commit: Duration,
) -> Result<WriteOutcome, WriteError> {
    write_pausing(balances, write, pause_after_commit).await
}

/// [`write_balance`]; the pause is the tests' only (always zero in a
/// function, where it is compiled out).
#[tracing::instrument(skip_all, fields(wallet_id = %write.wallet))]
async fn write_pausing(
    balances: &Balances,
    write: &BalanceWrite,
    pause_after_commit: Duration,
) -> Result<WriteOutcome, WriteError> {
    let inside = fence::raise(balances, write).await?;
    let fence_ttl = balances.fence_ttl;

    let committed = sql::commit(balances, write, inside.fenced_at + fence_ttl / 2).await;
    let (row, pending, event) = match committed {
        Ok(Committed::Done { outcome, current }) => {
            // Leave the fence with the wallet's current row: if we were the
            // last writer inside, the cache gets it back (unless a newer
            // version was published meanwhile: apply.lua).
            let current = current.map(|c| c.to_balance());
            #[cfg(feature = "test-variants")]
            if !pause_after_commit.is_zero() {
                tokio::time::sleep(pause_after_commit).await;
            }
            if let Err(why) = fence::apply(
                balances,
                &write.wallet,
                current.as_ref(),
                &[],
                Some(&inside),
            )
            .await
            {
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
            let _ = fence::apply(balances, &write.wallet, None, &[], Some(&inside)).await;
            return Err(e);
        }
    };

    #[cfg(feature = "test-variants")]
    if !pause_after_commit.is_zero() {
        tokio::time::sleep(pause_after_commit).await;
    }
    #[cfg(not(feature = "test-variants"))]
    let _ = pause_after_commit;
    let balance = row.to_balance();
    let (applied, appended) = tokio::join!(
        fence::apply(
            balances,
            &write.wallet,
            Some(&balance),
            &pending,
            Some(&inside)
        ),
        audit::append(&balances.audit, &event)
    );
    let cache = match applied {
        Ok(applied) => {
            // Queued for WebSocket delivery before the outbox row is marked
            // applied: a writer that dies in between leaves the row pending,
            // and the sweep queues the wallet again.
            let queued = match applied.published {
                Some((first, _)) => balances
                    .delivery
                    .balance(&write.wallet, &row.owner, first)
                    .await
                    .is_ok(),
                None => true,
            };
            if queued {
                sql::mark_applied(balances, &write.wallet, balance.version).await;
            } else {
                tracing::warn!("could not queue the balance for delivery; the sweep will");
            }
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
        Ok(len) => maybe_flush_early(balances, len).await,
        Err(e) => tracing::error!(error = %e,
            "audit append failed; the event will be reconciled from the outbox"),
    }
    Ok(WriteOutcome::Applied { balance, cache })
}

/// The design's "trigger batch write if buffer is full": when an append
/// fills the buffer to a multiple of `AUDIT_FLUSH_THRESHOLD`, the writer
/// flushes one batch itself (the scheduled `audit-flush` does the rest).
async fn maybe_flush_early(balances: &Balances, buffered: u64) {
    let threshold = balances.audit.config.flush_threshold;
    if buffered < threshold || !buffered.is_multiple_of(threshold) {
        return;
    }
    let Ok(service) = ServiceName::parse(SERVICE) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    if let Err(e) = audit::flush(&balances.audit, &service, deadline, 1).await {
        tracing::warn!(error = %e, "early audit flush failed; audit-flush will retry");
    }
}
