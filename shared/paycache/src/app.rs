//! Everything a function needs, built once per execution environment.

use crate::cache_aside::CacheAside;
use crate::config::{Config, ConfigError};
use crate::connection::{Redis, RedisSetupError};
use crate::db::{Db, DbError};
use crate::keys::Keyspace;
use crate::ratelimit::RateLimiter;

/// Why a function could not initialise. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The shared dependencies: configuration, Redis, the cache engine, the
/// database pool. Handlers borrow it (`&App`); nothing here connects at
/// construction, so a cold start never waits on (or fails for) a slow Redis.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    pub keys: Keyspace,
    pub redis: Redis,
    /// Durable state (audit buffers): `REDIS_DURABLE_URL`, a Redis that
    /// never evicts, or the main Redis when that is not set.
    pub durable: Redis,
    pub cache: CacheAside,
    pub db: Db,
    pub limiter: std::sync::Arc<RateLimiter>,
}

impl App {
    /// Must be called inside a Tokio runtime.
    pub fn new(config: Config) -> Result<Self, InitError> {
        // redis-rs and (later) the AWS SDK both use rustls; naming the
        // provider once avoids a run-time choice between compiled-in ones.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redis = Redis::new(&config.redis, config.breaker)?;
        let durable = match &config.durable_redis {
            Some(durable) => Redis::new(durable, config.breaker)?,
            None => redis.clone(),
        };
        let cache = CacheAside::new(redis.clone(), config.ttl, config.cache);
        let db = Db::new(&config.database)?;
        let keys = Keyspace::new(config.key_prefix.clone());
        let limiter = std::sync::Arc::new(RateLimiter::new(
            redis.clone(),
            keys.clone(),
            config.rate_limit.policies.clone(),
            config.rate_limit.timeout,
            config.rate_limit.local_capacity,
        ));
        Ok(Self {
            keys,
            limiter,
            config,
            redis,
            durable,
            cache,
            db,
        })
    }

    pub fn from_env() -> Result<Self, InitError> {
        Self::new(Config::from_env()?)
    }
}

/// Logging for a function binary: JSON or text as Lambda's log format says
/// (`AWS_LAMBDA_LOG_FORMAT`), level from `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG`.
pub fn init_logging() {
    lambda_http::tracing::init_default_subscriber();
}

/// The whole `main` of an HTTP function: logging, metrics, `App` built once
/// from the environment, then `handler(&app, request)` per invocation with
/// its EMF line written after it.
///
/// ```ignore
/// paycache::http_function!("profile-read", paycache::routes::profile_read::handle);
/// ```
#[macro_export]
macro_rules! http_function {
    ($name:literal, $handler:path) => {
        #[tokio::main]
        async fn main() -> Result<(), lambda_http::Error> {
            $crate::init_logging();
            let metrics = $crate::telemetry::init($name);
            let app = $crate::App::from_env()?;
            let app = &app;
            lambda_http::run(lambda_http::service_fn(
                move |req: lambda_http::Request| async move {
                    let started = std::time::Instant::now();
                    let resp = $handler(app, req).await;
                    $crate::telemetry::finish(metrics, started);
                    Ok::<_, std::convert::Infallible>(resp)
                },
            ))
            .await
        }
    };
}
