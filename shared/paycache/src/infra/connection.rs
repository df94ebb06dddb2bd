//! One Redis connection per execution environment, standalone or cluster,
//! behind one type.
//!
//! [`Redis`] is built once at init and shared by every invocation. It never
//! connects at construction: a cold start while Redis is down still starts,
//! and the first call connects (within `REDIS_CONNECT_TIMEOUT_MS`). After
//! that, redis-rs reconnects by itself — the standalone `ConnectionManager`
//! on any I/O error, the cluster connection per node and on topology change.
//!
//! Every call goes through [`Redis::run`], which
//! - asks the [`Breaker`] first, so an open breaker costs no network time;
//! - bounds the whole call (connecting, redirections, retries) by
//!   `REDIS_RESPONSE_TIMEOUT_MS` — a hung Redis can delay a request by that
//!   much and no more;
//! - records the outcome in the breaker.
//!
//! TLS: `rediss://` URLs use rustls with certificate and host-name
//! verification; `REDIS_CA_CERT` adds a private root. There is no way to turn
//! verification off (the seed's `ssl_cert_reqs=None` is not reproduced).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

use crate::infra::breaker::{Breaker, Permit};
use crate::infra::config::{BreakerConfig, RedisConfig, RedisMode, Secret};
use crate::infra::secrets::{REFETCH_COOLDOWN, SecretSource};

/// Why a Redis call did not produce an answer. Callers treat every variant
/// the same way — fall through to the database — but logs and metrics tell
/// them apart. The text never contains server replies or addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisUnavailable {
    #[error("the Redis circuit breaker is open")]
    /// The circuit breaker is open.
    BreakerOpen,
    #[error("Redis did not answer within the response timeout")]
    /// No answer within the response timeout.
    Timeout,
    #[error("the Redis connection failed")]
    /// No connection.
    Connection,
    #[error("Redis answered with an error")]
    /// Redis answered with an error.
    Server,
}

impl RedisUnavailable {
    /// Short token for `Cache-Status` details and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker-open",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Server => "server-error",
        }
    }
}

/// Why the Redis client could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("REDIS_URL: not a valid Redis URL")]
    /// The URL is not a Redis URL.
    InvalidUrl,
    #[error("REDIS_CA_CERT: the file cannot be read")]
    /// The CA file could not be read.
    CaCert,
}

/// Whether a call asks the circuit breaker first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerUse {
    /// Refused at once while the breaker is open ([`Redis::run`]).
    Respected,
    /// Tried anyway ([`Redis::run_insisting`]).
    Ignored,
}

/// A connection handle, cheap to clone; what commands and scripts run on.
#[derive(Clone)]
pub enum RedisConnection {
    /// A standalone server.
    Standalone(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per execution environment, behind an Arc"
)]
enum Backend {
    Standalone(ConnectionManager),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// `None` until the first connect, and again after the breaker
        /// opened: a fresh connection reads the current topology from the
        /// seed nodes (see `run`).
        connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

/// The shared Redis handle: connection, timeouts and circuit breaker.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

/// What a direct connection to one node needs (health checks).
struct NodeTemplate {
    /// The first seed URL; a node's host and port replace its own.
    seed: Secret,
    root_cert: Option<Vec<u8>>,
    auth_token: Option<Secret>,
}

/// Everything built from one auth token. A rotated token (see
/// `refresh_token`) replaces the whole generation; requests already running
/// finish on the old one.
struct Generation {
    node_template: NodeTemplate,
    backend: Backend,
    token: Option<Secret>,
}

struct Inner {
    config: RedisConfig,
    root_cert: Option<Vec<u8>>,
    current: std::sync::RwLock<Arc<Generation>>,
    /// Where the token comes from when it is a Secrets Manager secret.
    token_source: Option<SecretSource>,
    /// When the token was last fetched again: one re-fetch at a time, and
    /// none within `REFETCH_COOLDOWN` of the last.
    refreshed_at: tokio::sync::Mutex<Option<Instant>>,
    /// When a seed node was last asked whether it accepts the token.
    probed_at: tokio::sync::Mutex<Option<Instant>>,
    mode: RedisMode,
    connect_timeout: Duration,
    response_timeout: Duration,
    breaker: Breaker,
    /// Calls that failed for want of Redis (connection, timeout, breaker
    /// opening), ever: how an execution environment knows it saw an
    /// outage (`crate::domain::sessions` recovers from one before it
    /// trusts Redis again).
    failures: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("mode", &self.inner.mode)
            .field("response_timeout", &self.inner.response_timeout)
            .finish_non_exhaustive()
    }
}

fn build_generation(
    config: &RedisConfig,
    root_cert: Option<&Vec<u8>>,
    token: Option<Secret>,
) -> Result<Generation, RedisSetupError> {
    let urls: Vec<&str> = config.urls.expose().split(',').collect();
    let node_template = NodeTemplate {
        seed: Secret::new(urls.first().copied().unwrap_or_default()),
        root_cert: root_cert.cloned(),
        auth_token: token.clone(),
    };
    let backend = match config.mode {
        RedisMode::Standalone => {
            let url = urls.first().ok_or(RedisSetupError::InvalidUrl)?;
            let mut info = url
                .into_connection_info()
                .map_err(|_| RedisSetupError::InvalidUrl)?;
            if let Some(token) = &token {
                let settings = info.redis_settings().clone().set_password(token.expose());
                info = info.set_redis_settings(settings);
            }
            let client = match root_cert {
                Some(root) if config.tls => Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root.clone()),
                    },
                ),
                _ => Client::open(info),
            }
            .map_err(|_| RedisSetupError::InvalidUrl)?;
            // Reconnection is bounded by our own per-call timeout; the
            // manager's retries only matter inside that budget.
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                .map_err(|_| RedisSetupError::InvalidUrl)?;
            Backend::Standalone(manager)
        }
        RedisMode::Cluster => {
            let mut builder = ClusterClientBuilder::new(urls)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(token) = &token {
                builder = builder.password(token.expose());
            }
            if let Some(root) = root_cert {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                });
            }
            let client = builder.build().map_err(|_| RedisSetupError::InvalidUrl)?;
            Backend::Cluster {
                client,
                connection: tokio::sync::Mutex::new(None),
            }
        }
    };
    Ok(Generation {
        node_template,
        backend,
        token,
    })
}

impl Redis {
    /// Builds the client without touching the network. Must be called inside
    /// a Tokio runtime.
    pub fn new(config: &RedisConfig, breaker: BreakerConfig) -> Result<Self, RedisSetupError> {
        Self::with_token_source(config, breaker, None)
    }

    /// Like [`Redis::new`]; when Redis refuses the token (`WRONGPASS`),
    /// `token_source` is read again and the connections rebuilt with the
    /// token it now holds.
    pub(crate) fn with_token_source(
        config: &RedisConfig,
        breaker: BreakerConfig,
        token_source: Option<SecretSource>,
    ) -> Result<Self, RedisSetupError> {
        let root_cert = match &config.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|_| RedisSetupError::CaCert)?),
            None => None,
        };
        let generation = build_generation(config, root_cert.as_ref(), config.auth_token.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                root_cert,
                current: std::sync::RwLock::new(Arc::new(generation)),
                token_source,
                refreshed_at: tokio::sync::Mutex::new(None),
                probed_at: tokio::sync::Mutex::new(None),
                mode: config.mode,
                connect_timeout: config.connect_timeout,
                response_timeout: config.response_timeout,
                breaker: Breaker::new(breaker),
                failures: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    fn generation(&self) -> Arc<Generation> {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// The token source, when the token is a Secrets Manager secret.
    pub fn token_source(&self) -> Option<&SecretSource> {
        self.inner.token_source.as_ref()
    }

    /// The cluster client reports a node it could not reconnect to as
    /// "connection not found", whatever the reason. When the token comes
    /// from a secret, a failed call therefore checks — at most once per
    /// `REFETCH_COOLDOWN` — whether a seed node accepts the token, and
    /// re-fetches it if the node refuses it.
    async fn probe_auth(&self, generation: &Arc<Generation>) {
        if self.inner.token_source.is_none() || self.inner.mode != RedisMode::Cluster {
            return;
        }
        {
            let mut probed_at = self.inner.probed_at.lock().await;
            if probed_at.is_some_and(|at| at.elapsed() < REFETCH_COOLDOWN) {
                return;
            }
            *probed_at = Some(Instant::now());
        }
        let Some((host, port)) = self.seed_address() else {
            return;
        };
        let Ok(client) = self.node_client(&host, port) else {
            return;
        };
        let probe = tokio::time::timeout(
            self.inner.connect_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await;
        if let Ok(Err(err)) = probe
            && is_auth_refusal(&err)
        {
            tracing::warn!("a Redis node refused the auth token");
            self.refresh_token(generation).await;
        }
    }

    /// After Redis refused the token of `failed`: fetch the secret again
    /// (once — concurrent callers wait for the one fetch, and none follows
    /// within `REFETCH_COOLDOWN`) and, if it holds a new token, switch to a
    /// new generation of connections. The call that met the refusal still
    /// fails (it falls through to the database, or a write answers 503
    /// with Retry-After); the next ones use the new token.
    async fn refresh_token(&self, failed: &Arc<Generation>) {
        let Some(source) = &self.inner.token_source else {
            return;
        };
        let mut refreshed_at = self.inner.refreshed_at.lock().await;
        if !Arc::ptr_eq(&self.generation(), failed) {
            return; // another call already switched generations
        }
        if refreshed_at.is_some_and(|at| at.elapsed() < REFETCH_COOLDOWN) {
            return;
        }
        *refreshed_at = Some(Instant::now());
        let token = match source.fetch_redis_token().await {
            Ok(token) => token,
            Err(err) => {
                tracing::warn!(error = %err, "re-fetching the Redis auth token failed");
                return;
            }
        };
        if failed.token.as_ref() == Some(&token) {
            tracing::warn!("Redis refused the token and the secret still holds it");
            return;
        }
        match build_generation(
            &self.inner.config,
            self.inner.root_cert.as_ref(),
            Some(token),
        ) {
            Ok(generation) => {
                let mut current = self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *current = Arc::new(generation);
                tracing::info!("Redis auth token rotated: reconnecting with the new token");
            }
            Err(err) => tracing::warn!(error = %err, "cannot rebuild the Redis client"),
        }
    }

    /// Standalone or cluster.
    pub fn mode(&self) -> RedisMode {
        self.inner.mode
    }

    /// Its circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// How many calls have failed for want of Redis (a connection failure
    /// or a timeout; not a script's error) since this handle was built.
    pub fn failures(&self) -> u64 {
        self.inner
            .failures
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// `REDIS_RESPONSE_TIMEOUT_MS`.
    pub fn response_timeout(&self) -> Duration {
        self.inner.response_timeout
    }

    /// A client for one node (`host:port`), with the same scheme, TLS roots
    /// and credentials as the configured endpoint; for health checks.
    pub(crate) fn node_client(&self, host: &str, port: u16) -> Result<Client, RedisSetupError> {
        let generation = self.generation();
        let t = &generation.node_template;
        let mut info = t
            .seed
            .expose()
            .into_connection_info()
            .map_err(|_| RedisSetupError::InvalidUrl)?;
        let addr = match info.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        };
        info = info.set_addr(addr);
        if let Some(token) = &t.auth_token {
            let settings = info.redis_settings().clone().set_password(token.expose());
            info = info.set_redis_settings(settings);
        }
        match (
            &t.root_cert,
            matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }),
        ) {
            (Some(root), true) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                },
            ),
            _ => Client::open(info),
        }
        .map_err(|_| RedisSetupError::InvalidUrl)
    }

    /// The configured endpoint's host and port (standalone health checks).
    pub(crate) fn seed_address(&self) -> Option<(String, u16)> {
        let info = self
            .generation()
            .node_template
            .seed
            .expose()
            .into_connection_info()
            .ok()?;
        match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => Some((h.clone(), *p)),
            redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
            _ => None,
        }
    }

    /// Connects to the configured endpoint and sends `PING`, and says in
    /// words what went wrong — the password refused, the host unreachable,
    /// the TLS handshake — naming `host:port`, never the URL or the token
    /// (`paycache-dev check`, which `make run` runs before anything else).
    pub async fn diagnose(&self) -> Result<(), String> {
        let Some((host, port)) = self.seed_address() else {
            return Err("REDIS_URL: not a redis:// or rediss:// URL".into());
        };
        let at = format!("{host}:{port}");
        let client = self
            .node_client(&host, port)
            .map_err(|e| format!("Redis at {at}: {e}"))?;
        let wait = self.inner.connect_timeout.max(Duration::from_secs(2));
        let connected = tokio::time::timeout(wait, async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await;
        match connected {
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(format!(
                "no answer from Redis at {at} within {} ms (is it running, and is that its address?)",
                wait.as_millis()
            )),
            Ok(Err(e)) => Err(describe_failure(&at, &e)),
        }
    }

    /// `SET key value PX ttl_ms` — one round trip; for the JSON entries
    /// (sessions, blacklist, risk scores, connection metadata) written whole.
    pub async fn set_px(
        &self,
        key: &str,
        value: String,
        ttl_ms: u64,
    ) -> Result<(), RedisUnavailable> {
        self.run(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn connection(generation: &Generation) -> Result<RedisConnection, RedisError> {
        match &generation.backend {
            Backend::Standalone(manager) => Ok(RedisConnection::Standalone(manager.clone())),
            Backend::Cluster { client, connection } => {
                // A failed connect leaves the slot empty, so the next call
                // tries again.
                let mut slot = connection.lock().await;
                if let Some(conn) = slot.as_ref() {
                    return Ok(RedisConnection::Cluster(conn.clone()));
                }
                let conn = client.get_async_connection().await?;
                *slot = Some(conn.clone());
                Ok(RedisConnection::Cluster(conn))
            }
        }
    }

    /// Runs `op` on a connection, within the response timeout (the connect
    /// timeout as well, the first time), under the circuit breaker.
    ///
    /// A plain function returning [`Redis::call`]'s future, not an `async
    /// fn` around it: every Redis call of a route is nested inside this
    /// future, and the routes' futures are near the compiler's layout depth.
    pub fn run<T, F, Fut>(&self, op: F) -> impl Future<Output = Result<T, RedisUnavailable>>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call(op, BreakerUse::Respected)
    }

    /// For the few writes that must reach Redis whenever it can be reached
    /// — a sign-out's tombstones and blacklist entry, whose absence would
    /// let Redis admit a signed-out token: tries even while the breaker is
    /// open (a sign-out is rare; the breaker saves the hot path's time, not
    /// this), and once more after a connection failure or a timeout, on a
    /// fresh connection — an execution environment whose connection broke
    /// during an outage fails its first call after Redis is back, and
    /// must not turn the sign-out into a pending one for that. Its success
    /// closes the breaker. At most twice the response timeout.
    pub async fn run_insisting<T, F, Fut>(&self, op: F) -> Result<T, RedisUnavailable>
    where
        F: Fn(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match self.call(&op, BreakerUse::Ignored).await {
            Err(RedisUnavailable::Connection | RedisUnavailable::Timeout) => {
                self.drop_cluster_connection();
                self.call(&op, BreakerUse::Ignored).await
            }
            other => other,
        }
    }

    /// One call, its outcome recorded in the breaker; refused at once while
    /// the breaker denies calls, unless `breaker_use` says to ignore it.
    async fn call<T, F, Fut>(&self, op: F, breaker_use: BreakerUse) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let breaker = &self.inner.breaker;
        let permit = match breaker_use {
            BreakerUse::Respected => breaker.permit(),
            BreakerUse::Ignored => Permit::Allowed,
        };
        if permit == Permit::Denied {
            return Err(RedisUnavailable::BreakerOpen);
        }
        // Dropped with this call: a probe cancelled before its outcome
        // re-opens the breaker instead of holding it half-open for ever.
        let _probe = breaker.guard(permit);
        let generation = self.generation();
        let connected = match &generation.backend {
            Backend::Standalone(_) => true,
            Backend::Cluster { connection, .. } => {
                connection.try_lock().map(|c| c.is_some()).unwrap_or(false)
            }
        };
        let budget = if connected {
            self.inner.response_timeout
        } else {
            self.inner.connect_timeout + self.inner.response_timeout
        };
        let outcome = tokio::time::timeout(budget, async {
            let conn = Self::connection(&generation).await?;
            op(conn).await
        })
        .await;
        match outcome {
            Ok(Ok(value)) => {
                breaker.record_success();
                Ok(value)
            }
            Ok(Err(err)) => {
                let kind = classify(&err);
                if is_auth_refusal(&err) {
                    tracing::warn!("Redis refused the auth token");
                    self.refresh_token(&generation).await;
                } else if kind == RedisUnavailable::Connection {
                    self.probe_auth(&generation).await;
                }
                // A script or type error is a bug in the request, not an
                // outage: it must not open the breaker for everyone.
                if kind == RedisUnavailable::Server {
                    breaker.record_success();
                } else {
                    self.record_failure();
                }
                crate::infra::telemetry::redis_error();
                tracing::warn!(reason = kind.as_str(), error_kind = ?err.kind(), error = %crate::infra::telemetry::ErrorChain(&err), "redis call failed");
                Err(kind)
            }
            Err(_elapsed) => {
                self.record_failure();
                crate::infra::telemetry::redis_error();
                tracing::warn!(
                    reason = "timeout",
                    budget_ms = budget.as_millis() as u64,
                    "redis call timed out"
                );
                Err(RedisUnavailable::Timeout)
            }
        }
    }
}

impl Redis {
    /// Counts a failure; whenever the breaker is then open (it opened, or a
    /// probe failed) in cluster mode, drops the cluster connection. redis-rs
    /// refreshes its slot map inside the requests that meet a failed node,
    /// and the per-call timeout can cut those short again and again after a
    /// failover; the connection built at the next probe reads the topology
    /// afresh from the seed nodes.
    fn record_failure(&self) {
        self.inner
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.breaker.record_failure();
        let generation = self.generation();
        if self.inner.breaker.is_open()
            && let Backend::Cluster { connection, .. } = &generation.backend
            && let Ok(mut slot) = connection.try_lock()
        {
            tracing::warn!("dropping the cluster connection to rediscover the topology");
            *slot = None;
        }
    }

    /// Drops the cluster connection (if no call holds its lock), so that
    /// the next call builds a fresh one from the seed nodes.
    fn drop_cluster_connection(&self) {
        let generation = self.generation();
        if let Backend::Cluster { connection, .. } = &generation.backend
            && let Ok(mut slot) = connection.try_lock()
        {
            *slot = None;
        }
    }
}

/// `WRONGPASS`, `NOAUTH` or a failed handshake: the token is not (or no
/// longer) accepted.
/// A connection failure in words, without the error's own text where it
/// could carry more than a kind (the URL is never part of it).
fn describe_failure(at: &str, err: &RedisError) -> String {
    let chain = crate::infra::telemetry::ErrorChain(err).to_string();
    let lower = chain.to_lowercase();
    if is_auth_refusal(err) {
        format!(
            "Redis at {at} refused the password (AUTH failed): check the token (REDIS_AUTH_TOKEN, its secret, or the URL's password)"
        )
    } else if matches!(err.code(), Some("NOAUTH")) || lower.contains("noauth") {
        format!("Redis at {at} requires a password and none was given")
    } else if lower.contains("connection refused") {
        format!("Redis at {at} is unreachable: connection refused (nothing listens there)")
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcertificate")
    {
        format!(
            "the TLS handshake with Redis at {at} failed ({}): check REDIS_CA_CERT and that the host name matches the certificate",
            tls_reason(&lower)
        )
    } else if err.is_io_error() {
        format!("Redis at {at} is unreachable ({:?})", err.kind())
    } else {
        format!("Redis at {at} answered an error ({:?})", err.kind())
    }
}

/// The TLS failure's kind, from rustls' wording.
fn tls_reason(lower: &str) -> &'static str {
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the certificate's issuer is not trusted"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the certificate is not valid for this host name"
    } else if lower.contains("expired") {
        "the certificate has expired"
    } else {
        "the server's certificate or TLS settings"
    }
}

fn is_auth_refusal(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
}

fn classify(err: &RedisError) -> RedisUnavailable {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable_kind = matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
    );
    if err.is_timeout() {
        RedisUnavailable::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
        || unavailable_kind
    {
        RedisUnavailable::Connection
    } else {
        RedisUnavailable::Server
    }
}
