//! The fence and the cache step: `fence.lua` (step 1), `apply.lua` (step
//! 3) and `invalidate.lua`, one round trip each.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;

use super::sql::PendingRow;
use super::{BalanceWrite, Balances, WalletBalance, WriteError};
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::{KeyFamily, WalletId};
use crate::patterns::cache_aside::{encode, jittered};
use crate::patterns::pubsub;

static FENCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fence.lua")));
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("apply.lua")));
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("invalidate.lua")));

/// A writer's place in the fence: the token `fence.lua` added, which only
/// this writer's `apply.lua` removes.
#[derive(Debug, Clone)]
pub(super) struct Inside {
    /// When the fence stood; the commit must happen before half its TTL.
    pub(super) fenced_at: Instant,
    token: String,
}

/// Step 1: deletes the cached balance and puts a writer fence on the
/// wallet's load lease (`fence.lua`, one round trip), with this writer's
/// token in it. Returns when the fence stood.
pub(super) async fn raise(balances: &Balances, write: &BalanceWrite) -> Result<Inside, WriteError> {
    let key = balances.keys.wallet_balance(&write.wallet);
    let lock = key.lock_key();
    let intent = write.expected_version.saturating_add(1);
    let fence_ttl = balances.fence_ttl;
    let fenced_at = Instant::now();
    // Letters and digits only: the fence lists tokens separated by commas.
    let token = format!("t{:016x}", fastrand::u64(..));
    let (k, l, t) = (&key, &lock, &token);
    let fence_ms = u64::try_from(fence_ttl.as_millis()).unwrap_or(u64::MAX);
    balances
        .redis
        .run(|mut c| async move {
            let _: String = FENCE
                .key(k)
                .key(l)
                .arg(intent)
                .arg(fence_ms)
                .arg(t)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await
        .map_err(WriteError::FenceUnavailable)?;
    Ok(Inside { fenced_at, token })
}

/// What `apply.lua` did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Applied {
    /// The versions it published (and logged for delivery), if any.
    pub(super) published: Option<(u64, u64)>,
}

/// Runs `apply.lua`: one round trip. `current` is the wallet's current
/// balance (none when unknown); `leaving` is the writer that raised the
/// fence, none for a sweep.
pub(super) async fn apply(
    balances: &Balances,
    wallet: &WalletId,
    current: Option<&WalletBalance>,
    pending: &[PendingRow],
    leaving: Option<&Inside>,
) -> Result<Applied, RedisUnavailable> {
    let key = balances.keys.wallet_balance(wallet);
    let lock = key.lock_key();
    let published = balances.keys.wallet_balance_published(wallet);
    let log = balances.keys.wallet_balance_log(wallet);
    let cursor = balances.keys.wallet_balance_delivered(wallet);
    let ttl = balances
        .ttl
        .of(KeyFamily::WalletBalance)
        .unwrap_or(Duration::from_secs(300));
    let ttl = jittered(ttl, balances.ttl.jitter_percent);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let (version, encoded) = match current {
        Some(b) => (
            b.version,
            encode(Some(b), b.version, Duration::ZERO, ttl).ok_or(RedisUnavailable::Server)?,
        ),
        None => (0, Vec::new()),
    };
    let channel = pubsub::balance(wallet);
    let leaving = leaving.map_or("", |inside| inside.token.as_str());
    let (k, l, p, lg, cur, ch, enc) = (&key, &lock, &published, &log, &cursor, &channel, &encoded);
    balances
        .redis
        .run(|mut c| async move {
            let mut inv = APPLY.key(k);
            inv.key(l)
                .key(p)
                .key(lg)
                .key(cur)
                .arg(ttl_ms)
                .arg(ch)
                .arg(leaving)
                .arg(version)
                .arg(enc.as_slice());
            for row in pending {
                inv.arg(row.version).arg(&row.message);
            }
            let (_cached, sent, first, last): (u64, u64, u64, u64) =
                inv.invoke_async(&mut c).await?;
            Ok(Applied {
                published: (sent > 0).then_some((first, last)),
            })
        })
        .await
}

/// Event-driven invalidation of a cached balance (one round trip): deletes
/// the value and any reader's lease, keeps a writer's fence.
#[tracing::instrument(skip_all, fields(wallet_id = %wallet))]
pub async fn invalidate(balances: &Balances, wallet: &WalletId) -> Result<(), RedisUnavailable> {
    let key = balances.keys.wallet_balance(wallet);
    let lock = key.lock_key();
    let (k, l) = (&key, &lock);
    balances
        .redis
        .run(|mut c| async move {
            let _: i64 = INVALIDATE.key(k).key(l).invoke_async(&mut c).await?;
            Ok(())
        })
        .await
}
