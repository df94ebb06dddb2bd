//! Rate limiting: the policies (`RATE_LIMIT_POLICIES`, in
//! [`super::rate_limit`]), the decision's time budget, remembered denials.

use super::ConfigError;
use super::env::Env;
use super::rate_limit;
use std::time::Duration;

/// Rate limiting.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_POLICIES` over the defaults.
    pub policies: rate_limit::Policies,
    /// The decision comes within this, whatever Redis does.
    pub timeout: Duration,
    /// Remembered denials per execution environment.
    pub local_capacity: usize,
}

/// Rate limiting (`RATE_LIMIT_*`).
pub(super) fn read(env: &Env<'_>) -> Result<RateLimitConfig, ConfigError> {
    Ok(RateLimitConfig {
        policies: rate_limit::Policies::parse(
            env.get("RATE_LIMIT_POLICIES").as_deref(),
            env.get("RATE_LIMIT_DEFAULT").as_deref(),
        )?,
        timeout: env.millis("RATE_LIMIT_TIMEOUT_MS", 50, 1, 10_000)?,
        local_capacity: env.number("RATE_LIMIT_LOCAL_CACHE_ENTRIES", 10_000, 0, 1_000_000)?,
    })
}
