//! Everything a function needs, built once per execution environment.

use std::sync::Arc;

use crate::domain::audit::AuditLog;
use crate::domain::balance::Balances;
use crate::domain::delivery::{Deliveries, DeliveryQueue};
use crate::domain::fraud::Fraud;
use crate::domain::health::Health;
use crate::domain::identity::Verifier;
use crate::domain::invalidation::Invalidation;
use crate::domain::profile::Profiles;
use crate::domain::realtime::Connections;
use crate::domain::sessions::Sessions;
use crate::domain::signout::IssuerSignOut;
use crate::domain::transactions::Transactions;
use crate::domain::warming::Warmer;
use crate::infra::config::{Config, ConfigError};
use crate::infra::connection::{Redis, RedisSetupError};
use crate::infra::db::{Db, DbError};
use crate::infra::keys::Keyspace;
use crate::infra::secrets::SecretSource;
use crate::patterns::cache_aside::CacheAside;
use crate::patterns::ratelimit::RateLimiter;

/// Why a function could not initialise. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    /// The configuration is missing or invalid.
    Config(#[from] ConfigError),
    #[error(transparent)]
    /// A Redis client could not be built (URL, CA file).
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    /// The PostgreSQL pool could not be built (URL, CA file).
    Db(#[from] DbError),
    #[error(transparent)]
    /// The AWS SDK could not be configured (no region).
    Aws(#[from] crate::infra::aws::AwsError),
    #[error(transparent)]
    /// A secret could not be fetched or read.
    Secret(#[from] crate::infra::secrets::SecretError),
}

/// The shared dependencies: configuration, Redis, the cache engine, the
/// database pool. Handlers borrow it (`&App`); nothing here connects at
/// construction, so a cold start never waits on (or fails for) a slow Redis.
///
/// `App` is where the pieces are put together: each capability below holds
/// exactly what it uses (clones of the same handles), and routes and event
/// handlers take the capabilities they need, never the whole `App`.
#[derive(Debug, Clone)]
pub struct App {
    /// The configuration everything below was built from.
    pub config: Config,
    /// Key names under `KEY_PREFIX`.
    pub keys: Keyspace,
    /// The cache Redis.
    pub redis: Redis,
    /// Durable state (audit buffers, blacklist): `REDIS_DURABLE_URL`, a
    /// Redis that never evicts, or the main Redis when that is not set.
    pub durable: Redis,
    /// The cache-aside engine over [`App::redis`].
    pub cache: CacheAside,
    /// The PostgreSQL pool.
    pub db: Db,
    /// The sliding-window rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// User profiles.
    pub profiles: Profiles,
    /// Wallet balances (their writes append to [`App::audit`]).
    pub balances: Balances,
    /// The write-behind audit log.
    pub audit: AuditLog,
    /// Transactions and their status.
    pub transactions: Transactions,
    /// Sessions and token revocation.
    pub sessions: Sessions,
    /// The WebSocket connection registry.
    pub connections: Connections,
    /// Real-time delivery: the queue publishers append to.
    pub delivery: DeliveryQueue,
    /// Real-time delivery: what `ws-sender` reads and sends.
    pub deliveries: Deliveries,
    /// Fraud signals: risk scores and devices.
    pub fraud: Fraud,
    /// The cluster's health and node statistics.
    pub health: Health,
    /// Cache warming.
    pub warmer: Warmer,
    /// Event-driven invalidation.
    pub invalidation: Invalidation,
    /// Token keys (`AUTH_*`), when configured: with no API Gateway in
    /// front (`cargo lambda watch`), the HTTP functions verify bearer tokens
    /// themselves. Deployed, API Gateway's JWT authorizer has verified them.
    pub verifier: Option<Arc<Verifier>>,
    /// The user pool logout signs users out of (`COGNITO_USER_POOL_ID`).
    pub signout: Option<IssuerSignOut>,
}

impl App {
    /// Must be called inside a Tokio runtime. Secrets must already be in
    /// `config` (see [`App::with_secrets`]).
    pub fn new(config: Config) -> Result<Self, InitError> {
        Self::build(config, None, None)
    }

    /// Fetches the secrets `config` names (concurrently, one request each)
    /// into it, then builds the `App`; the Redis handles keep their secret's
    /// source to fetch the token again when Redis refuses it.
    pub async fn with_secrets(mut config: Config) -> Result<Self, InitError> {
        let redis_arn = config.redis.auth_token_secret_arn.clone();
        let durable_arn = config
            .durable_redis
            .as_ref()
            .and_then(|d| d.auth_token_secret_arn.clone());
        let database_arn = config.database.secret_arn.clone();
        if redis_arn.is_none() && durable_arn.is_none() && database_arn.is_none() {
            return Self::new(config);
        }
        let sdk = crate::infra::aws::sdk_config(config.secrets_timeout).await;
        crate::infra::aws::require_region(sdk)?;
        let client = aws_sdk_secretsmanager::Client::new(sdk);
        let timeout = config.secrets_timeout;
        let source = |arn: Option<String>, variable| {
            arn.map(|arn| SecretSource::new(client.clone(), timeout, arn, variable))
        };
        let redis_source = source(redis_arn, "REDIS_AUTH_TOKEN_SECRET_ARN");
        let durable_source = source(durable_arn, "REDIS_DURABLE_AUTH_TOKEN_SECRET_ARN");
        let database_source = source(database_arn, "DATABASE_SECRET_ARN");
        let (redis_token, durable_token, credentials) = tokio::try_join!(
            async {
                match &redis_source {
                    Some(s) => s.fetch_redis_token().await.map(Some),
                    None => Ok(None),
                }
            },
            async {
                match &durable_source {
                    Some(s) => s.fetch_redis_token().await.map(Some),
                    None => Ok(None),
                }
            },
            async {
                match &database_source {
                    Some(s) => s.fetch_database_credentials().await.map(Some),
                    None => Ok(None),
                }
            },
        )?;
        if redis_token.is_some() {
            config.redis.auth_token = redis_token;
        }
        if let Some(durable) = config.durable_redis.as_mut()
            && durable_token.is_some()
        {
            durable.auth_token = durable_token;
        }
        if credentials.is_some() {
            config.database.credentials = credentials;
        }
        Self::build(config, redis_source, durable_source)
    }

    fn build(
        config: Config,
        redis_source: Option<SecretSource>,
        durable_source: Option<SecretSource>,
    ) -> Result<Self, InitError> {
        // redis-rs and the AWS client both use rustls; naming the provider
        // once avoids a run-time choice between compiled-in ones.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redis = Redis::with_token_source(&config.redis, config.breaker, redis_source)?;
        let durable = match &config.durable_redis {
            Some(durable) => Redis::with_token_source(durable, config.breaker, durable_source)?,
            None => redis.clone(),
        };
        let cache = CacheAside::new(redis.clone(), config.ttl, config.cache);
        let db = Db::new(&config.database)?;
        let keys = Keyspace::new(config.key_prefix.clone());
        let limiter = Arc::new(RateLimiter::new(
            redis.clone(),
            keys.clone(),
            config.rate_limit.policies.clone(),
            config.rate_limit.timeout,
            config.rate_limit.local_capacity,
        ));
        let profiles = Profiles {
            keys: keys.clone(),
            cache: cache.clone(),
            db: db.clone(),
        };
        let audit = AuditLog {
            keys: keys.clone(),
            durable: durable.clone(),
            db: db.clone(),
            config: config.audit.clone(),
        };
        let delivery = DeliveryQueue {
            keys: keys.clone(),
            durable: durable.clone(),
            partitions: config.delivery.partitions,
        };
        let balances = Balances {
            keys: keys.clone(),
            redis: redis.clone(),
            cache: cache.clone(),
            db: db.clone(),
            ttl: config.ttl,
            fence_ttl: config.balance.fence_ttl,
            audit: audit.clone(),
            delivery: delivery.clone(),
        };
        let transactions = Transactions {
            keys: keys.clone(),
            redis: redis.clone(),
            cache: cache.clone(),
            db: db.clone(),
            ttl: config.ttl,
        };
        let sessions = Sessions {
            keys: keys.clone(),
            redis: redis.clone(),
            durable: durable.clone(),
            db: db.clone(),
            session_ttl: config.ttl.session_data,
            activity_sync: config.session_activity_sync,
            queue: delivery.clone(),
            recovery: Default::default(),
            #[cfg(feature = "test-variants")]
            variants: Default::default(),
            index_ttl: config
                .ttl
                .of(crate::infra::keys::KeyFamily::UserSessions)
                .unwrap_or(std::time::Duration::from_secs(25 * 3600)),
        };
        let connections = Connections {
            keys: keys.clone(),
            redis: redis.clone(),
            ttl: config.ttl,
            sessions: sessions.clone(),
            limits: config.delivery.limits,
        };
        let deliveries = Deliveries {
            queue: delivery.clone(),
            connections: connections.clone(),
            config: config.delivery.clone(),
        };
        let fraud = Fraud {
            keys: keys.clone(),
            redis: redis.clone(),
            ttl: config.ttl,
            alert_threshold: config.fraud_alert_threshold,
        };
        let health = Health {
            keys: keys.clone(),
            redis: redis.clone(),
            config: config.health,
            recent: Default::default(),
        };
        let warmer = Warmer {
            keys: keys.clone(),
            cache: cache.clone(),
            db: db.clone(),
            balances: balances.clone(),
            config: config.warm,
        };
        let invalidation = Invalidation {
            keys: keys.clone(),
            redis: redis.clone(),
            db: db.clone(),
            transactions: transactions.clone(),
            balances: balances.clone(),
            delivery: delivery.clone(),
            announcements: config.announcements.clone(),
        };
        Ok(Self {
            keys,
            limiter,
            config,
            redis,
            durable,
            cache,
            db,
            profiles,
            balances,
            audit,
            transactions,
            sessions,
            connections,
            delivery,
            deliveries,
            fraud,
            health,
            warmer,
            invalidation,
            verifier: None,
            signout: None,
        })
    }

    /// Configuration from the environment, secrets from Secrets Manager,
    /// token keys when `AUTH_ISSUER` is set.
    pub async fn from_env() -> Result<Self, InitError> {
        let verifier = Verifier::from_env_if_configured()?.map(Arc::new);
        let config = Config::from_env()?;
        if std::env::var_os("AUTH_REVOCATION_FAIL_OPEN").is_some() {
            tracing::warn!(
                "AUTH_REVOCATION_FAIL_OPEN has no effect any more: when Redis cannot check a \
                 session or a revocation, PostgreSQL does (docs/security.md -> Authentication, sessions and authorization)"
            );
        }
        if config.verify_in_function && verifier.is_none() {
            return Err(ConfigError::new(
                "AUTH_VERIFY_IN_FUNCTION",
                "needs the token keys: set AUTH_ISSUER, AUTH_AUDIENCE and AUTH_JWKS (or AUTH_JWKS_FILE)",
            )
            .into());
        }
        let mut app = Self::with_secrets(config).await?;
        app.verifier = verifier;
        app.signout = IssuerSignOut::from_env();
        Ok(app)
    }
}

#[cfg(feature = "test-variants")]
impl App {
    /// The same `App` with the sessions' Redis-only design (tests of the
    /// PostgreSQL fallback; `test-variants` only).
    pub fn with_session_variants(
        mut self,
        variants: crate::domain::sessions::SessionVariants,
    ) -> Self {
        self.sessions.variants = variants;
        self.connections.sessions.variants = variants;
        self
    }
}

/// Logging for a function binary: JSON or text as Lambda's log format says
/// (`AWS_LAMBDA_LOG_FORMAT`), level from `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG`
/// ([`log_filter`]). What `lambda_runtime::tracing::init_default_subscriber`
/// sets up (no time, no target, stdout), with tracing-subscriber's
/// `Targets` filter instead of its `EnvFilter`: `EnvFilter` matches field
/// values with regular expressions, which links the regex crates' Unicode
/// tables — half a megabyte — into every bootstrap once any crate in the
/// workspace (the tests' criterion and proptest) turns those tables on.
pub fn init_logging() {
    let filter = log_filter(
        std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE);
    use tracing_subscriber::layer::SubscriberExt;
    // A second subscriber (a test, a benchmark) keeps the first.
    let _ = if json {
        tracing::subscriber::set_global_default(fmt.json().finish().with(filter))
    } else {
        tracing::subscriber::set_global_default(fmt.finish().with(filter))
    };
}

/// The functions' log filter: Lambda's log level (`AWS_LAMBDA_LOG_LEVEL`:
/// `TRACE` … `ERROR`, `FATAL` as `ERROR`) when it is set, else `RUST_LOG`'s
/// directives (`info`, `paycache=debug,warn`: target prefixes and levels;
/// `EnvFilter`'s span and field directives are not supported), else — and
/// for anything unreadable — `info`.
pub fn log_filter(
    lambda_level: Option<&str>,
    rust_log: Option<&str>,
) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let info = || Targets::new().with_default(LevelFilter::INFO);
    if let Some(level) = lambda_level.filter(|l| !l.trim().is_empty()) {
        let level = if level.trim().eq_ignore_ascii_case("fatal") {
            "error"
        } else {
            level.trim()
        };
        return level
            .parse::<LevelFilter>()
            .map_or_else(|_| info(), |l| Targets::new().with_default(l));
    }
    match rust_log
        .filter(|l| !l.trim().is_empty())
        .map(str::parse::<Targets>)
    {
        Some(Ok(t)) if t.default_level().is_some() => t,
        Some(Ok(t)) => t.with_default(LevelFilter::INFO),
        _ => info(),
    }
}

/// The whole `main` of an HTTP function: logging, metrics, `App` built once
/// from the environment, then `handler(&app, request)` per invocation with
/// its EMF line written after it.
///
/// On tokio's single-threaded runtime: Lambda hands an execution
/// environment one request at a time, and the request's Redis requests and
/// their replies then wake tasks on the same thread, never another core's
/// (a signed-in profile hit: 295 µs on `#[tokio::main]`'s default,
/// multi-threaded, 1.31× the floor; 179 µs on this one, 0.80× the floor —
/// and 1.63× a floor on this same runtime; docs/operations.md). Event
/// functions keep the multi-threaded runtime: `ws-sender` signs posts
/// concurrently, on every core it is given.
///
/// ```ignore
/// paycache::http_function!("profile-read", paycache::routes::profile_read::handle);
/// ```
#[macro_export]
macro_rules! http_function {
    ($name:literal, $handler:path) => {
        #[tokio::main(flavor = "current_thread")]
        async fn main() -> Result<(), lambda_http::Error> {
            $crate::app::init_logging();
            let metrics = $crate::infra::telemetry::init($name);
            let app = $crate::app::App::from_env().await?;
            let app = &app;
            lambda_http::run(lambda_http::service_fn(
                move |req: lambda_http::Request| async move {
                    let started = std::time::Instant::now();
                    let resp = $handler(app, req).await;
                    $crate::infra::telemetry::finish(metrics, started);
                    Ok::<_, std::convert::Infallible>(resp)
                },
            ))
            .await
        }
    };
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    fn on(f: &tracing_subscriber::filter::Targets, target: &str, level: Level) -> bool {
        f.would_enable(target, &level)
    }

    #[test]
    fn the_log_filter_reads_lambda_then_rust_log_then_defaults_to_info() {
        // Nothing set, empty or unreadable: info.
        for (lambda, rust) in [
            (None, None),
            (Some(""), Some(" ")),
            (Some("loud"), None),
            (None, Some("a=b=c")),
        ] {
            let f = log_filter(lambda, rust);
            assert!(on(&f, "paycache", Level::INFO), "{lambda:?} {rust:?}");
            assert!(!on(&f, "paycache", Level::DEBUG), "{lambda:?} {rust:?}");
        }
        // Lambda's level wins over RUST_LOG; FATAL is error.
        let f = log_filter(Some("DEBUG"), Some("warn"));
        assert!(on(&f, "hyper", Level::DEBUG) && !on(&f, "hyper", Level::TRACE));
        let f = log_filter(Some("FATAL"), None);
        assert!(on(&f, "paycache", Level::ERROR) && !on(&f, "paycache", Level::WARN));
        // RUST_LOG's directives: per target, the rest at its default or info.
        let f = log_filter(None, Some("paycache=debug,warn"));
        assert!(on(&f, "paycache::app", Level::DEBUG));
        assert!(!on(&f, "hyper", Level::INFO) && on(&f, "hyper", Level::WARN));
        let f = log_filter(None, Some("paycache=trace"));
        assert!(on(&f, "paycache", Level::TRACE) && on(&f, "redis", Level::INFO));
        assert!(!on(&f, "redis", Level::DEBUG));
    }
}
