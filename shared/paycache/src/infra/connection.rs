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
//!
//! This file owns the handle and the call path; `generation` the
//! connections built from one auth token and the token's rotation,
//! `failure` what a failure is called.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::infra::breaker::{Breaker, Permit};
use crate::infra::config::{BreakerConfig, RedisConfig, RedisMode};
use crate::infra::secrets::SecretSource;

// One file per concern.
mod failure;
mod generation;

pub use failure::{RedisSetupError, RedisUnavailable};
use failure::{classify, describe_failure, is_auth_refusal};
use generation::{Backend, Generation, build_generation};

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

/// The shared Redis handle: connection, timeouts and circuit breaker.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
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

    /// The token source, when the token is a Secrets Manager secret.
    pub fn token_source(&self) -> Option<&SecretSource> {
        self.inner.token_source.as_ref()
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
