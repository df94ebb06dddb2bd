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

use crate::infra::keys::KeyFamily;

pub mod rate_limit;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

#[derive(Debug, Clone, Copy)]
/// The circuit breaker's settings (`CACHE_BREAKER_*`).
pub struct BreakerConfig {
    /// Consecutive Redis failures that open the breaker.
    pub failure_threshold: u32,
    /// How long Redis is skipped once the breaker is open.
    pub cooldown: Duration,
}

#[derive(Debug, Clone)]
/// How to reach PostgreSQL (`DATABASE_*`).
pub struct DatabaseConfig {
    /// `DATABASE_URL`.
    pub url: Secret,
    /// Secrets Manager secret with the user name and password
    /// (`DATABASE_SECRET_ARN`); fetched at init into `credentials`.
    pub secret_arn: Option<String>,
    /// Replace the user name and password of `url` when set.
    pub credentials: Option<DatabaseCredentials>,
    /// PEM bundle of extra trusted roots for TLS to PostgreSQL (the RDS CA
    /// bundle when connecting to RDS directly); the system roots otherwise.
    pub ca_cert: Option<PathBuf>,
    /// `DATABASE_POOL_SIZE`.
    pub pool_size: usize,
    /// `DATABASE_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`, so a slow query cannot hang a function.
    pub statement_timeout: Duration,
}

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

/// Who may announce to every open connection: a `SystemAnnouncement`
/// event is acted on only with this `source` (and, when set, from this
/// account). The template's rule matches the same, so this is the second
/// of two checks; neither authenticates the publisher (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncementTrust {
    /// `ANNOUNCEMENT_SOURCE` (default `payments.operations`).
    pub source: String,
    /// `PLATFORM_ACCOUNT_ID`: the account events must come from (the
    /// template sets its own).
    pub account: Option<String>,
}

/// Real-time delivery (`ws-sender`; docs/realtime.md → Real-time delivery).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// `WS_MANAGEMENT_ENDPOINT`: the WebSocket API's management endpoint
    /// (`https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`;
    /// locally the development gateway's URL). Required by `ws-sender` only.
    pub management_endpoint: Option<String>,
    /// `WS_REDELIVER_AFTER_MS`: a delivery fetched by a sender that has not
    /// acknowledged it this long after is taken over by another sender (the
    /// first one died between fetching and sending).
    pub redeliver_after: Duration,
    /// `WS_SENDER_BLOCK_MS`: how long one read of the delivery stream waits
    /// for new entries; kept under half the response timeout of the Redis
    /// that holds the stream (the durable one when configured).
    pub block: Duration,
    /// `WS_SENDER_RUN_SECS`: how long one `ws-sender` invocation reads
    /// (0: until 5 s before its deadline).
    pub run_for: Duration,
    /// `WS_SEND_ATTEMPTS`: attempts of one post, retrying throttled ones
    /// with exponential backoff and full jitter (the SDK's standard retry).
    pub send_attempts: u32,
    /// `WS_PARTITIONS` (1–256, default 8): delivery streams, each in its
    /// own slot; a wallet's kicks and a user's messages always go to the
    /// same one. Lowering it strands what the dropped partitions hold:
    /// drain first (docs/realtime.md → Real-time delivery).
    pub partitions: u16,
    /// `WS_PARTITION_LEASE_MS` (1000–60000, default 10000): how long a
    /// sender's hold on a partition lasts without renewal; a dead sender's
    /// partitions are taken over after it.
    pub lease: Duration,
    /// `WS_FAN_OUT` (1–1024, default 64): posts in flight at once per
    /// sender (API Gateway's account limit is 10,000 requests per second
    /// across every API: docs/realtime.md → Real-time delivery).
    pub fan_out: usize,
    /// `WS_FANOUT_PAGE` (10–5000, default 500): registry entries an
    /// announcement reads, checks and posts per checkpoint.
    pub page: usize,
    /// `WS_CATCH_UP_MAX` (1–10000, default 100): the most versions a
    /// reconnect's catch-up sends; a client that missed more receives
    /// `resync` and reads the balance over HTTP.
    pub catch_up_max: u64,
    /// `WS_CATCH_UP_SLICE_MS` (10–10000, default 250): what one lane's
    /// catch-ups may take of a batch; the rest continue in a later batch,
    /// behind the frames that arrived meanwhile (docs/realtime.md →
    /// Limits).
    pub catch_up_slice: Duration,
    /// What one sign-in and one connection may use.
    pub limits: ConnectionLimits,
}

/// Limits a person never meets and a script always does
/// (docs/realtime.md → Limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `WS_MAX_CONNECTIONS_PER_SESSION` (1–1000, default 8): open
    /// connections of one sign-in (a browser's tabs); one more is refused
    /// at `$connect` (429).
    pub per_session: u32,
    /// `WS_MAX_CONNECTIONS_PER_USER` (1–10000, default 16): open
    /// connections of one user, every sign-in together (their devices).
    pub per_user: u32,
    /// `WS_PINGS_PER_MINUTE` (1–10000, default 10): pings one connection
    /// may send in a minute (a client pings at most every few minutes);
    /// the next closes it.
    pub pings_per_minute: u32,
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
            database: DatabaseConfig {
                url: Secret::new(env.required("DATABASE_URL")?),
                secret_arn: secret_arn(&env, "DATABASE_SECRET_ARN")?,
                credentials: None,
                ca_cert: env.get("DATABASE_CA_CERT").map(PathBuf::from),
                pool_size: env.number("DATABASE_POOL_SIZE", 2, 1, 64)?,
                connect_timeout: env.millis("DATABASE_CONNECT_TIMEOUT_MS", 2000, 10, 60_000)?,
                statement_timeout: env.millis(
                    "DATABASE_STATEMENT_TIMEOUT_MS",
                    3000,
                    10,
                    600_000,
                )?,
            },
            key_prefix: key_prefix(&env)?,
            ttl: TtlConfig {
                user_profile: env.secs("CACHE_TTL_USER_PROFILE_SECS", 3600)?,
                wallet_balance: env.secs("CACHE_TTL_WALLET_BALANCE_SECS", 300)?,
                exchange_rates: env.secs("CACHE_TTL_EXCHANGE_RATES_SECS", 60)?,
                fraud_scores: env.secs("CACHE_TTL_FRAUD_SCORES_SECS", 300)?,
                session_data: env.secs("CACHE_TTL_SESSION_DATA_SECS", 1800)?,
                rate_limits: env.secs("CACHE_TTL_RATE_LIMITS_SECS", 60)?,
                jitter_percent: env.number("CACHE_TTL_JITTER_PERCENT", 10, 0, 50)?,
                negative: env.secs("CACHE_NEGATIVE_TTL_SECS", 30)?,
            },
            cache: CacheAsideConfig {
                lock_lease: env.millis("CACHE_LOCK_LEASE_MS", 3000, 10, 60_000)?,
                lock_wait: env.millis("CACHE_LOCK_WAIT_MS", 1500, 0, 60_000)?,
                xfetch_beta: xfetch_beta(&env)?,
            },
            breaker: BreakerConfig {
                failure_threshold: env.number("CACHE_BREAKER_FAILURES", 3, 1, 1000)?,
                cooldown: env.millis("CACHE_BREAKER_COOLDOWN_MS", 5000, 10, 600_000)?,
            },
            balance: BalanceConfig {
                fence_ttl: env.millis("BALANCE_FENCE_TTL_MS", 10_000, 100, 600_000)?,
            },
            audit: AuditConfig {
                max_buffered: env.number("AUDIT_BUFFER_MAX_EVENTS", 100_000, 1, 100_000_000)?,
                flush_threshold: env.number("AUDIT_FLUSH_THRESHOLD", 100, 1, 1_000_000)?,
                batch_size: env.number("AUDIT_FLUSH_BATCH", 500, 1, 10_000)?,
                flush_lock: env.millis("AUDIT_FLUSH_LOCK_MS", 30_000, 100, 900_000)?,
                reconcile_after: env.secs("AUDIT_RECONCILE_AFTER_SECS", 300)?,
                services: audit_services(&env)?,
            },
            delivery: delivery_config(&env)?,
            rate_limit: RateLimitConfig {
                policies: rate_limit::Policies::parse(
                    env.get("RATE_LIMIT_POLICIES").as_deref(),
                    env.get("RATE_LIMIT_DEFAULT").as_deref(),
                )?,
                timeout: env.millis("RATE_LIMIT_TIMEOUT_MS", 50, 1, 10_000)?,
                local_capacity: env.number(
                    "RATE_LIMIT_LOCAL_CACHE_ENTRIES",
                    10_000,
                    0,
                    1_000_000,
                )?,
            },
            health: HealthConfig {
                // The contract's bound is 2 s; leave room for the response.
                timeout: env.millis("HEALTH_TIMEOUT_MS", 1500, 10, 1900)?,
                node_timeout: env.millis("HEALTH_NODE_TIMEOUT_MS", 500, 10, 1900)?,
                cache_for: env.millis("HEALTH_CACHE_MS", 1000, 0, 10_000)?,
            },
            fraud_alert_threshold: env.number("FRAUD_ALERT_THRESHOLD", 80, 0, 1000)?,
            announcements: AnnouncementTrust {
                source: match env.get("ANNOUNCEMENT_SOURCE") {
                    None => "payments.operations".to_owned(),
                    Some(s)
                        if (1..=256).contains(&s.trim().len()) && !s.trim().starts_with("aws.") =>
                    {
                        s.trim().to_owned()
                    }
                    Some(_) => {
                        return Err(ConfigError::new(
                            "ANNOUNCEMENT_SOURCE",
                            "must be an EventBridge source of 1–256 characters, not aws.*",
                        ));
                    }
                },
                account: match env.get("PLATFORM_ACCOUNT_ID") {
                    None => None,
                    Some(a)
                        if a.trim().len() == 12 && a.trim().bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        Some(a.trim().to_owned())
                    }
                    Some(_) => {
                        return Err(ConfigError::new(
                            "PLATFORM_ACCOUNT_ID",
                            "must be a 12-digit AWS account id",
                        ));
                    }
                },
            },
            session_activity_sync: Duration::from_secs(env.number(
                "SESSION_ACTIVITY_SYNC_SECS",
                120,
                1,
                3600,
            )?),
            verify_in_function: env.flag("AUTH_VERIFY_IN_FUNCTION")?,
            secrets_timeout: env.millis("SECRETS_TIMEOUT_MS", 3000, 100, 30_000)?,
            warm: WarmConfig {
                users: env.number("WARM_USERS", 1000, 0, 1_000_000)?,
                batch_users: env.number("WARM_BATCH_USERS", 50, 1, 1000)?,
                concurrency: env.number("WARM_CONCURRENCY", 4, 1, 64)?,
                deadline_margin: env.millis("WARM_DEADLINE_MARGIN_MS", 1000, 0, 60_000)?,
            },
        })
    }
}

/// The Redis settings under `REDIS_<infix>…` (infix "" or "DURABLE_").
fn redis_config(env: &Env<'_>, infix: &'static str) -> Result<RedisConfig, ConfigError> {
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

fn delivery_config(env: &Env<'_>) -> Result<DeliveryConfig, ConfigError> {
    let management_endpoint = match env.get("WS_MANAGEMENT_ENDPOINT") {
        None => None,
        Some(url)
            if (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 512
                && url.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(url.trim_end_matches('/').to_owned())
        }
        Some(_) => {
            return Err(ConfigError::new(
                "WS_MANAGEMENT_ENDPOINT",
                "must be an http(s) URL: https://{api-id}.execute-api.{region}.amazonaws.com/{stage}",
            ));
        }
    };
    Ok(DeliveryConfig {
        management_endpoint,
        redeliver_after: env.millis("WS_REDELIVER_AFTER_MS", 10_000, 100, 900_000)?,
        // Capped where the read happens, by the stream's own Redis.
        block: env.millis("WS_SENDER_BLOCK_MS", 100, 1, 10_000)?,
        run_for: Duration::from_secs(env.number("WS_SENDER_RUN_SECS", 0, 0, 900)?),
        send_attempts: env.number("WS_SEND_ATTEMPTS", 5, 1, 10)?,
        partitions: env.number("WS_PARTITIONS", 8, 1, 256)?,
        lease: env.millis("WS_PARTITION_LEASE_MS", 10_000, 1_000, 60_000)?,
        fan_out: env.number("WS_FAN_OUT", 64, 1, 1024)?,
        page: env.number("WS_FANOUT_PAGE", 500, 10, 5000)?,
        catch_up_max: env.number("WS_CATCH_UP_MAX", 100, 1, 10_000)?,
        catch_up_slice: env.millis("WS_CATCH_UP_SLICE_MS", 250, 10, 10_000)?,
        limits: ConnectionLimits {
            per_session: env.number("WS_MAX_CONNECTIONS_PER_SESSION", 8, 1, 1000)?,
            per_user: env.number("WS_MAX_CONNECTIONS_PER_USER", 16, 1, 10_000)?,
            pings_per_minute: env.number("WS_PINGS_PER_MINUTE", 10, 1, 10_000)?,
        },
    })
}

/// A Secrets Manager secret ARN (`arn:<partition>:secretsmanager:...`).
fn secret_arn(env: &Env<'_>, variable: &'static str) -> Result<Option<String>, ConfigError> {
    match env.get(variable) {
        None => Ok(None),
        Some(arn) => {
            let parts: Vec<&str> = arn.splitn(7, ':').collect();
            let ok = arn.len() <= 2048
                && parts.len() == 7
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "secretsmanager"
                && parts[5] == "secret"
                && !parts[6].is_empty()
                && arn.bytes().all(|b| b.is_ascii_graphic());
            if ok {
                Ok(Some(arn))
            } else {
                Err(ConfigError::new(
                    variable,
                    "must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
                ))
            }
        }
    }
}

pub(crate) fn is_valid_auth_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'"' | b'/'))
}

fn key_prefix(env: &Env<'_>) -> Result<String, ConfigError> {
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

fn audit_services(env: &Env<'_>) -> Result<Vec<crate::infra::keys::ServiceName>, ConfigError> {
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

fn xfetch_beta(env: &Env<'_>) -> Result<f64, ConfigError> {
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

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A set but empty variable counts as unset, as in most shells' `${X:-}`.
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name).as_deref().map(str::trim) {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ConfigError {
                variable: name,
                problem: "must be `true` or `false`".into(),
            }),
        }
    }

    fn number<T>(&self, name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}"),
            )),
        }
    }

    fn millis(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(name, default, min, max)
            .map(Duration::from_millis)
    }

    /// TTLs: 1 second to 30 days.
    fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.number(name, default, 1, 30 * 24 * 3600)
            .map(Duration::from_secs)
    }
}

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

/// The user name and password of a database secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseCredentials {
    /// The database user.
    pub username: String,
    /// Their password.
    pub password: Secret,
}

impl std::fmt::Debug for DatabaseCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
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
