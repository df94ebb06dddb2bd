//! Redis: the endpoint (`REDIS_*`, and `REDIS_DURABLE_*` for the durable
//! group), TLS, the auth token or its secret, timeouts, and the circuit
//! breaker in front of it.

use super::ConfigError;
use super::Secret;
use super::env::Env;
use super::env::secret_arn;
use std::path::PathBuf;
use std::time::Duration;

/// Standalone Redis, or Redis Cluster (ElastiCache "cluster mode enabled").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis server (or a primary with replicas behind one endpoint).
    Standalone,
    /// Redis Cluster (ElastiCache cluster mode).
    Cluster,
}

#[derive(Debug, Clone)]
/// How to reach a Redis (`REDIS_*`).
pub struct RedisConfig {
    /// `REDIS_MODE`.
    pub mode: RedisMode,
    /// One URL per seed node (cluster) or exactly one (standalone). Passwords
    /// inside the URLs are part of the secret: the whole list is a [`Secret`].
    pub urls: Secret,
    /// `true` when the URLs use `rediss://`. Certificate verification is
    /// always on; there is no switch to turn it off.
    pub tls: bool,
    /// PEM bundle of extra trusted roots (a private CA); the system roots are
    /// used when unset.
    pub ca_cert: Option<PathBuf>,
    /// ElastiCache AUTH token; overrides any password in the URL.
    pub auth_token: Option<Secret>,
    /// Secrets Manager secret holding the token
    /// (`REDIS_AUTH_TOKEN_SECRET_ARN`): fetched at init into `auth_token`,
    /// and again when Redis refuses the token (see `secrets`).
    pub auth_token_secret_arn: Option<String>,
    /// `REDIS_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// Budget for one Redis operation, including cluster redirections.
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
/// The circuit breaker's settings (`CACHE_BREAKER_*`).
pub struct BreakerConfig {
    /// Consecutive Redis failures that open the breaker.
    pub failure_threshold: u32,
    /// How long Redis is skipped once the breaker is open.
    pub cooldown: Duration,
}

/// The Redis settings under `REDIS_<infix>…` (infix "" or "DURABLE_").
pub(super) fn redis_config(env: &Env<'_>, infix: &'static str) -> Result<RedisConfig, ConfigError> {
    let name = |suffix: &'static str| -> &'static str {
        match (infix, suffix) {
            ("", s) => s,
            (_, "REDIS_MODE") => "REDIS_DURABLE_MODE",
            (_, "REDIS_URL") => "REDIS_DURABLE_URL",
            (_, "REDIS_TLS") => "REDIS_DURABLE_TLS",
            (_, "REDIS_CA_CERT") => "REDIS_DURABLE_CA_CERT",
            (_, "REDIS_AUTH_TOKEN") => "REDIS_DURABLE_AUTH_TOKEN",
            (_, "REDIS_AUTH_TOKEN_SECRET_ARN") => "REDIS_DURABLE_AUTH_TOKEN_SECRET_ARN",
            (_, s) => s,
        }
    };
    let mode = match env.get(name("REDIS_MODE")).as_deref() {
        None | Some("standalone") => RedisMode::Standalone,
        Some("cluster") => RedisMode::Cluster,
        Some(_) => {
            return Err(ConfigError::new(
                name("REDIS_MODE"),
                "must be `standalone` or `cluster`",
            ));
        }
    };
    let raw = env.required(name("REDIS_URL"))?;
    let urls: Vec<&str> = raw.split(',').map(str::trim).collect();
    if urls.iter().any(|u| u.is_empty()) {
        return Err(ConfigError::new(
            name("REDIS_URL"),
            "must be a comma-separated list of redis:// or rediss:// URLs without empty entries",
        ));
    }
    if mode == RedisMode::Standalone && urls.len() != 1 {
        return Err(ConfigError::new(
            name("REDIS_URL"),
            "standalone mode takes exactly one URL; set REDIS_MODE=cluster for several seed nodes",
        ));
    }
    let mut tls = None;
    for url in &urls {
        let this_tls = if url.starts_with("rediss://") {
            true
        } else if url.starts_with("redis://") {
            false
        } else {
            return Err(ConfigError::new(
                name("REDIS_URL"),
                "each URL must start with redis:// or rediss://",
            ));
        };
        // redis-rs reads a `#insecure` fragment as "skip certificate
        // verification". Verification stays on in this project, so any
        // fragment is refused rather than interpreted.
        if url.contains('#') {
            return Err(ConfigError::new(
                name("REDIS_URL"),
                "URL fragments are not accepted (TLS certificate verification cannot be disabled)",
            ));
        }
        if tls.is_some_and(|t| t != this_tls) {
            return Err(ConfigError::new(
                name("REDIS_URL"),
                "all URLs must use the same scheme",
            ));
        }
        tls = Some(this_tls);
    }
    let tls = tls.unwrap_or(false);
    match env.get(name("REDIS_TLS")).as_deref() {
        None => {}
        Some("true") if tls => {}
        Some("false") if !tls => {}
        Some("true" | "false") => {
            return Err(ConfigError::new(
                name("REDIS_TLS"),
                "disagrees with the scheme of REDIS_URL (rediss:// means TLS on, redis:// off)",
            ));
        }
        Some(_) => {
            return Err(ConfigError::new(
                name("REDIS_TLS"),
                "must be `true` or `false`",
            ));
        }
    }
    let ca_cert = env.get(name("REDIS_CA_CERT")).map(PathBuf::from);
    if ca_cert.is_some() && !tls {
        return Err(ConfigError::new(
            name("REDIS_CA_CERT"),
            "is only meaningful with rediss:// URLs",
        ));
    }
    let auth_token = match env.get(name("REDIS_AUTH_TOKEN")) {
        None => None,
        Some(token) if is_valid_auth_token(&token) => Some(Secret::new(token)),
        Some(_) => {
            return Err(ConfigError::new(
                name("REDIS_AUTH_TOKEN"),
                "must be 16–128 printable ASCII characters without spaces, '@', '\"' or '/' (ElastiCache's rule)",
            ));
        }
    };
    let auth_token_secret_arn = secret_arn(env, name("REDIS_AUTH_TOKEN_SECRET_ARN"))?;
    if auth_token.is_some() && auth_token_secret_arn.is_some() {
        return Err(ConfigError::new(
            name("REDIS_AUTH_TOKEN_SECRET_ARN"),
            "set either the token or the secret that holds it, not both",
        ));
    }
    Ok(RedisConfig {
        mode,
        urls: Secret::new(urls.join(",")),
        tls,
        ca_cert,
        auth_token,
        auth_token_secret_arn,
        connect_timeout: env.millis("REDIS_CONNECT_TIMEOUT_MS", 1000, 10, 60_000)?,
        response_timeout: env.millis("REDIS_RESPONSE_TIMEOUT_MS", 250, 5, 60_000)?,
    })
}

pub(crate) fn is_valid_auth_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'"' | b'/'))
}

/// The circuit breaker (`CACHE_BREAKER_*`).
pub(super) fn breaker(env: &Env<'_>) -> Result<BreakerConfig, ConfigError> {
    Ok(BreakerConfig {
        failure_threshold: env.number("CACHE_BREAKER_FAILURES", 3, 1, 1000)?,
        cooldown: env.millis("CACHE_BREAKER_COOLDOWN_MS", 5000, 10, 600_000)?,
    })
}
