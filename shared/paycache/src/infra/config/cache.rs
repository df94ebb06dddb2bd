//! The cache: key prefix, the design's TTLs (with jitter), negative
//! caching, and cache-aside's load lease and early refresh.

use super::ConfigError;
use super::env::Env;
use crate::infra::keys::KeyFamily;
use std::time::Duration;

/// Time-to-live per key family, the seed's `cache_ttl_config`.
#[derive(Debug, Clone, Copy)]
pub struct TtlConfig {
    /// `CACHE_TTL_USER_PROFILE_SECS`.
    pub user_profile: Duration,
    /// `CACHE_TTL_WALLET_BALANCE_SECS`.
    pub wallet_balance: Duration,
    /// `CACHE_TTL_EXCHANGE_RATES_SECS`.
    pub exchange_rates: Duration,
    /// `CACHE_TTL_FRAUD_SCORES_SECS`.
    pub fraud_scores: Duration,
    /// `CACHE_TTL_SESSION_DATA_SECS`.
    pub session_data: Duration,
    /// `CACHE_TTL_RATE_LIMITS_SECS`.
    pub rate_limits: Duration,
    /// Each stored TTL is randomly shortened by up to this percentage so that
    /// keys written together do not expire together.
    pub jitter_percent: u8,
    /// How long a "not found" answer is cached.
    pub negative: Duration,
}

impl TtlConfig {
    /// The TTL for values of `family`, or `None` for a family that must
    /// never expire on its own (the audit buffer: expiring it loses events —
    /// one of the seed's defects). Families the seed's `cache_ttl_config`
    /// does not list take the TTL its data models give them.
    pub fn of(&self, family: KeyFamily) -> Option<Duration> {
        let secs = Duration::from_secs;
        match family {
            KeyFamily::UserProfile | KeyFamily::UserPermissions | KeyFamily::UserPreferences => {
                Some(self.user_profile)
            }
            KeyFamily::WalletBalance => Some(self.wallet_balance),
            KeyFamily::Session => Some(self.session_data),
            // Longer than any session can be used: a session's tokens
            // expire within a day (Cognito's longest access-token
            // validity), then it idles out.
            KeyFamily::UserSessions => Some(secs(25 * 3600)),
            KeyFamily::Blacklist => Some(secs(86_400)),
            KeyFamily::Transaction => Some(secs(1800)),
            KeyFamily::TransactionStatus => Some(secs(3600)),
            KeyFamily::RateLimit => Some(self.rate_limits),
            KeyFamily::SlidingWindow => Some(secs(3600)),
            KeyFamily::RiskScore => Some(self.fraud_scores),
            KeyFamily::Device => Some(secs(86_400)),
            KeyFamily::WsConnections | KeyFamily::WsMeta => Some(secs(7200)),
            KeyFamily::AuditBuffer => None,
        }
    }
}

/// Tuning of the cache-aside path (see `cache_aside` for what each means).
#[derive(Debug, Clone, Copy)]
pub struct CacheAsideConfig {
    /// How long a loader holds the per-key lease before another may take it.
    pub lock_lease: Duration,
    /// How long a request that found the lease taken waits for the value.
    pub lock_wait: Duration,
    /// XFetch β; 0 turns early refresh off.
    pub xfetch_beta: f64,
}

pub(super) fn key_prefix(env: &Env<'_>) -> Result<String, ConfigError> {
    let prefix = env
        .get("CACHE_KEY_PREFIX")
        .unwrap_or_else(|| "paycache".into());
    let ok = (1..=32).contains(&prefix.len())
        && prefix.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(prefix)
    } else {
        Err(ConfigError::new(
            "CACHE_KEY_PREFIX",
            "must be 1–32 of a-z 0-9 _ . - (no ':' or braces: it must not move keys between hash slots)",
        ))
    }
}

pub(super) fn xfetch_beta(env: &Env<'_>) -> Result<f64, ConfigError> {
    match env.get("CACHE_XFETCH_BETA") {
        None => Ok(1.0),
        Some(raw) => match raw.parse::<f64>() {
            Ok(beta) if beta.is_finite() && (0.0..=10.0).contains(&beta) => Ok(beta),
            _ => Err(ConfigError::new(
                "CACHE_XFETCH_BETA",
                "must be a number from 0 (off) to 10",
            )),
        },
    }
}

/// The TTLs (`CACHE_TTL_*`, `CACHE_NEGATIVE_TTL_SECS`).
pub(super) fn ttl(env: &Env<'_>) -> Result<TtlConfig, ConfigError> {
    Ok(TtlConfig {
        user_profile: env.secs("CACHE_TTL_USER_PROFILE_SECS", 3600)?,
        wallet_balance: env.secs("CACHE_TTL_WALLET_BALANCE_SECS", 300)?,
        exchange_rates: env.secs("CACHE_TTL_EXCHANGE_RATES_SECS", 60)?,
        fraud_scores: env.secs("CACHE_TTL_FRAUD_SCORES_SECS", 300)?,
        session_data: env.secs("CACHE_TTL_SESSION_DATA_SECS", 1800)?,
        rate_limits: env.secs("CACHE_TTL_RATE_LIMITS_SECS", 60)?,
        jitter_percent: env.number("CACHE_TTL_JITTER_PERCENT", 10, 0, 50)?,
        negative: env.secs("CACHE_NEGATIVE_TTL_SECS", 30)?,
    })
}

/// Cache-aside (`CACHE_LOCK_*`, `CACHE_XFETCH_BETA`).
pub(super) fn cache_aside(env: &Env<'_>) -> Result<CacheAsideConfig, ConfigError> {
    Ok(CacheAsideConfig {
        lock_lease: env.millis("CACHE_LOCK_LEASE_MS", 3000, 10, 60_000)?,
        lock_wait: env.millis("CACHE_LOCK_WAIT_MS", 1500, 0, 60_000)?,
        xfetch_beta: xfetch_beta(env)?,
    })
}
