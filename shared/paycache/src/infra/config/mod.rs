//! Configuration, read from environment variables once at start-up.
//!
//! Every variable is listed in docs/configuration.md. Parsing is
//! strict: a value that is present but malformed fails initialisation with a
//! message naming the variable, because a Lambda that starts with a silently
//! defaulted timeout or TTL is worse than one that does not start.
//!
//! Secrets (the Redis auth token, passwords inside URLs) are held in
//! [`Secret`], whose `Debug` and `Display` never show the value, and error
//! messages name variables, never their contents.

use std::fmt;
use std::time::Duration;

// One file per capability: what it reads and checks.
mod cache;
mod database;
mod env;
mod ledger;
mod operations;
pub mod rate_limit;
mod realtime;
mod redis;

pub use cache::{CacheAsideConfig, TtlConfig};
pub use database::{DatabaseConfig, DatabaseCredentials, STATEMENT_TIMEOUT_MS};
pub use ledger::{AuditConfig, BalanceConfig};
pub use operations::{HealthConfig, WarmConfig};
pub use rate_limit::RateLimitConfig;
pub use realtime::{AnnouncementTrust, ConnectionLimits, DeliveryConfig};
pub(crate) use redis::is_valid_auth_token;
pub use redis::{BreakerConfig, RedisConfig, RedisMode};

use cache::key_prefix;
use env::Env;
use realtime::delivery_config;
use redis::redis_config;

/// A configuration value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to a client library. Never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why the configuration was rejected. The message names the variable and what
/// it must look like; it never repeats the value (which may be a secret).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What is wrong with it (never its value).
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone)]
/// The whole configuration, read once from the environment (docs/configuration.md → Configuration).
pub struct Config {
    /// The cache Redis.
    pub redis: RedisConfig,
    /// Where durable state lives (audit buffers; later the token blacklist):
    /// a Redis that never evicts. `None`: the main Redis.
    pub durable_redis: Option<RedisConfig>,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Namespace in front of every key: 1–32 of `a-z 0-9 _ . -`.
    pub key_prefix: String,
    /// The TTLs.
    pub ttl: TtlConfig,
    /// The cache-aside engine.
    pub cache: CacheAsideConfig,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
    /// Balance writes.
    pub balance: BalanceConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Rate limiting.
    pub rate_limit: RateLimitConfig,
    /// The health check.
    pub health: HealthConfig,
    /// Cache warming.
    pub warm: WarmConfig,
    /// A cached risk score at or above this publishes a fraud alert.
    pub fraud_alert_threshold: u32,
    /// Who may send `SystemAnnouncement` events.
    pub announcements: AnnouncementTrust,
    /// `SESSION_ACTIVITY_SYNC_SECS`: how often, at most, a session's
    /// activity is recorded in PostgreSQL (the bound by which an idle
    /// session may outlive its timeout when Redis no longer holds it).
    pub session_activity_sync: Duration,
    /// `AUTH_VERIFY_IN_FUNCTION`: with API Gateway's claims in the event,
    /// verify the bearer token's signature in the function as well
    /// (needs the token keys: `AUTH_ISSUER`, `AUTH_JWKS`…). Default false:
    /// only API Gateway can invoke the functions.
    pub verify_in_function: bool,
    /// Budget of one Secrets Manager request.
    pub secrets_timeout: Duration,
    /// Real-time delivery to WebSocket connections.
    pub delivery: DeliveryConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        Ok(Self {
            redis: redis_config(&env, "")?,
            durable_redis: match env.get("REDIS_DURABLE_URL") {
                Some(_) => Some(redis_config(&env, "DURABLE_")?),
                None => None,
            },
            database: database::read(&env)?,
            key_prefix: key_prefix(&env)?,
            ttl: cache::ttl(&env)?,
            cache: cache::cache_aside(&env)?,
            breaker: redis::breaker(&env)?,
            balance: ledger::balance(&env)?,
            audit: ledger::audit(&env)?,
            delivery: delivery_config(&env)?,
            rate_limit: rate_limit::read(&env)?,
            health: operations::health(&env)?,
            fraud_alert_threshold: env.number("FRAUD_ALERT_THRESHOLD", 80, 0, 1000)?,
            announcements: realtime::announcements(&env)?,
            session_activity_sync: Duration::from_secs(env.number(
                "SESSION_ACTIVITY_SYNC_SECS",
                120,
                1,
                3600,
            )?),
            verify_in_function: env.flag("AUTH_VERIFY_IN_FUNCTION")?,
            secrets_timeout: env.millis("SECRETS_TIMEOUT_MS", 3000, 100, 30_000)?,
            warm: operations::warm(&env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        v
    }

    fn err_var(vars: &[(&str, &str)]) -> &'static str {
        parse(vars)
            .expect_err("configuration should be rejected")
            .variable
    }

    #[test]
    fn defaults_follow_the_seed() {
        let c = parse(&BASE).unwrap();
        assert_eq!(c.redis.mode, RedisMode::Standalone);
        assert!(!c.redis.tls);
        assert_eq!(c.ttl.user_profile, Duration::from_secs(3600));
        assert_eq!(c.ttl.wallet_balance, Duration::from_secs(300));
        assert_eq!(c.ttl.exchange_rates, Duration::from_secs(60));
        assert_eq!(c.ttl.fraud_scores, Duration::from_secs(300));
        assert_eq!(c.ttl.session_data, Duration::from_secs(1800));
        assert_eq!(c.ttl.rate_limits, Duration::from_secs(60));
        assert_eq!(c.key_prefix, "paycache");
        assert_eq!(c.redis.response_timeout, Duration::from_millis(250));
    }

    #[test]
    fn missing_required_variables_are_named() {
        assert_eq!(err_var(&[("DATABASE_URL", "postgres://x")]), "REDIS_URL");
        assert_eq!(err_var(&[("REDIS_URL", "redis://x")]), "DATABASE_URL");
        assert_eq!(err_var(&with(&[("REDIS_URL", "  ")])), "REDIS_URL");
    }

    #[test]
    fn malformed_values_are_rejected_with_their_variable() {
        assert_eq!(err_var(&with(&[("REDIS_MODE", "sentinel")])), "REDIS_MODE");
        assert_eq!(err_var(&with(&[("REDIS_URL", "http://x")])), "REDIS_URL");
        assert_eq!(
            err_var(&with(&[("REDIS_RESPONSE_TIMEOUT_MS", "fast")])),
            "REDIS_RESPONSE_TIMEOUT_MS"
        );
        assert_eq!(
            err_var(&with(&[("REDIS_RESPONSE_TIMEOUT_MS", "0")])),
            "REDIS_RESPONSE_TIMEOUT_MS"
        );
        assert_eq!(
            err_var(&with(&[("CACHE_TTL_USER_PROFILE_SECS", "-1")])),
            "CACHE_TTL_USER_PROFILE_SECS"
        );
        assert_eq!(
            err_var(&with(&[("CACHE_KEY_PREFIX", "a{b}")])),
            "CACHE_KEY_PREFIX"
        );
        assert_eq!(
            err_var(&with(&[("CACHE_KEY_PREFIX", "a:b")])),
            "CACHE_KEY_PREFIX"
        );
        assert_eq!(
            err_var(&with(&[("CACHE_XFETCH_BETA", "NaN")])),
            "CACHE_XFETCH_BETA"
        );
        assert_eq!(
            err_var(&with(&[("CACHE_TTL_JITTER_PERCENT", "90")])),
            "CACHE_TTL_JITTER_PERCENT"
        );
    }

    #[test]
    fn tls_follows_the_scheme_and_cannot_be_made_insecure() {
        let c = parse(&with(&[("REDIS_URL", "rediss://cache.example:6379")])).unwrap();
        assert!(c.redis.tls);
        assert_eq!(
            err_var(&with(&[(
                "REDIS_URL",
                "rediss://cache.example:6379/#insecure"
            )])),
            "REDIS_URL"
        );
        assert_eq!(
            err_var(&with(&[
                ("REDIS_URL", "rediss://cache.example:6379"),
                ("REDIS_TLS", "false")
            ])),
            "REDIS_TLS"
        );
        assert_eq!(
            err_var(&with(&[("REDIS_CA_CERT", "/tmp/ca.pem")])),
            "REDIS_CA_CERT"
        );
    }

    #[test]
    fn durable_redis_is_optional_and_named_in_errors() {
        assert!(parse(&BASE).unwrap().durable_redis.is_none());
        let c = parse(&with(&[(
            "REDIS_DURABLE_URL",
            "rediss://durable.example:6379",
        )]))
        .unwrap();
        let d = c.durable_redis.unwrap();
        assert!(d.tls);
        assert_eq!(d.mode, RedisMode::Standalone);
        assert_eq!(
            err_var(&with(&[("REDIS_DURABLE_URL", "http://x")])),
            "REDIS_DURABLE_URL"
        );
        assert_eq!(
            err_var(&with(&[
                ("REDIS_DURABLE_URL", "redis://x"),
                ("REDIS_DURABLE_MODE", "x")
            ])),
            "REDIS_DURABLE_MODE"
        );
    }

    #[test]
    fn cluster_mode_takes_several_seed_nodes_standalone_one() {
        let urls = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
        let c = parse(&with(&[("REDIS_MODE", "cluster"), ("REDIS_URL", urls)])).unwrap();
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(err_var(&with(&[("REDIS_URL", urls)])), "REDIS_URL");
        assert_eq!(
            err_var(&with(&[
                ("REDIS_MODE", "cluster"),
                ("REDIS_URL", "redis://a:1,rediss://b:2")
            ])),
            "REDIS_URL"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_errors() {
        let token = "s3cr3t-token-abcdefgh";
        let c = parse(&[
            (
                "REDIS_URL",
                "rediss://user:hunter2hunter2@cache.example:6379",
            ),
            ("DATABASE_URL", "postgres://app:pgpass-9911@db/x"),
            ("REDIS_AUTH_TOKEN", token),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        for secret in [token, "hunter2hunter2", "pgpass-9911"] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
        let err = parse(&[
            ("REDIS_URL", "redis://x"),
            ("DATABASE_URL", "postgres://x"),
            ("REDIS_AUTH_TOKEN", "short secret"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "REDIS_AUTH_TOKEN");
        assert!(!err.to_string().contains("short secret"));
    }
}
