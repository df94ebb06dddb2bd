//! Health checks and cache warming: their budgets.

use super::ConfigError;
use super::env::Env;
use std::time::Duration;

/// Budgets of a health check.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// `HEALTH_TIMEOUT_MS`: the whole check.
    pub timeout: Duration,
    /// `HEALTH_NODE_TIMEOUT_MS`: each node's `PING`.
    pub node_timeout: Duration,
    /// `HEALTH_CACHE_MS`: how long an execution environment keeps its last
    /// answer (a flood of health requests costs Redis one check per period).
    pub cache_for: Duration,
}

/// Warming parameters.
#[derive(Debug, Clone, Copy)]
pub struct WarmConfig {
    /// How many of the most recently active users a scheduled run warms.
    pub users: u64,
    /// `WARM_BATCH_USERS`: users per batch.
    pub batch_users: usize,
    /// `WARM_CONCURRENCY`: batches at once.
    pub concurrency: usize,
    /// No batch starts later than this before the deadline.
    pub deadline_margin: Duration,
}

/// Health checks (`HEALTH_*`).
pub(super) fn health(env: &Env<'_>) -> Result<HealthConfig, ConfigError> {
    Ok(HealthConfig {
        // The contract's bound is 2 s; leave room for the response.
        timeout: env.millis("HEALTH_TIMEOUT_MS", 1500, 10, 1900)?,
        node_timeout: env.millis("HEALTH_NODE_TIMEOUT_MS", 500, 10, 1900)?,
        cache_for: env.millis("HEALTH_CACHE_MS", 1000, 0, 10_000)?,
    })
}

/// Cache warming (`WARM_*`).
pub(super) fn warm(env: &Env<'_>) -> Result<WarmConfig, ConfigError> {
    Ok(WarmConfig {
        users: env.number("WARM_USERS", 1000, 0, 1_000_000)?,
        batch_users: env.number("WARM_BATCH_USERS", 50, 1, 1000)?,
        concurrency: env.number("WARM_CONCURRENCY", 4, 1, 64)?,
        deadline_margin: env.millis("WARM_DEADLINE_MARGIN_MS", 1000, 0, 60_000)?,
    })
}
