//! Balances and the audit log: the write fence, the audit buffers and
//! their flush.

use super::ConfigError;
use super::env::Env;
use std::time::Duration;

/// Balance write-through.
#[derive(Debug, Clone, Copy)]
pub struct BalanceConfig {
    /// How long a writer's fence lasts. A write that has not committed within
    /// half of it is rolled back (503), so a fence never expires under a
    /// write that is still going to commit.
    pub fence_ttl: Duration,
}

/// Write-behind audit log.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// An append past this many buffered events is refused (the event then
    /// reaches PostgreSQL through the outbox reconciliation instead).
    pub max_buffered: u64,
    /// Buffer length at which the writer flushes a batch itself (the
    /// design's "trigger batch write if buffer is full").
    pub flush_threshold: u64,
    /// Events moved per claim.
    pub batch_size: u64,
    /// How long a flusher's claim (lock) lasts.
    pub flush_lock: Duration,
    /// Outbox audit events older than this that are not in `audit_log` are
    /// inserted from the outbox (covers a failed or lost Redis append).
    pub reconcile_after: Duration,
    /// Services whose buffers `audit-flush` drains.
    pub services: Vec<crate::infra::keys::ServiceName>,
}

pub(super) fn audit_services(
    env: &Env<'_>,
) -> Result<Vec<crate::infra::keys::ServiceName>, ConfigError> {
    let raw = env
        .get("AUDIT_SERVICES")
        .unwrap_or_else(|| "balance-write".into());
    raw.split(',')
        .map(|s| {
            crate::infra::keys::ServiceName::parse(s.trim()).map_err(|_| {
                ConfigError::new(
                    "AUDIT_SERVICES",
                    "must be a comma-separated list of service names (1–64 of a-z 0-9 _ . -)",
                )
            })
        })
        .collect()
}

/// Balance writes (`BALANCE_*`).
pub(super) fn balance(env: &Env<'_>) -> Result<BalanceConfig, ConfigError> {
    Ok(BalanceConfig {
        fence_ttl: env.millis("BALANCE_FENCE_TTL_MS", 10_000, 100, 600_000)?,
    })
}

/// The audit log (`AUDIT_*`).
pub(super) fn audit(env: &Env<'_>) -> Result<AuditConfig, ConfigError> {
    Ok(AuditConfig {
        max_buffered: env.number("AUDIT_BUFFER_MAX_EVENTS", 100_000, 1, 100_000_000)?,
        flush_threshold: env.number("AUDIT_FLUSH_THRESHOLD", 100, 1, 1_000_000)?,
        batch_size: env.number("AUDIT_FLUSH_BATCH", 500, 1, 10_000)?,
        flush_lock: env.millis("AUDIT_FLUSH_LOCK_MS", 30_000, 100, 900_000)?,
        reconcile_after: env.secs("AUDIT_RECONCILE_AFTER_SECS", 300)?,
        services: audit_services(env)?,
    })
}
