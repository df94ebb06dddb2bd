//! The connections built from one auth token (a *generation*), and the
//! token's rotation: when Redis refuses the token, the secret is read
//! again and, if it changed, a new generation replaces the old one; the
//! direct node clients of health checks share the generation's TLS roots
//! and credentials.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, IntoConnectionInfo, RedisError};

use super::{Redis, RedisConnection, RedisSetupError, is_auth_refusal};
use crate::infra::config::{RedisConfig, RedisMode, Secret};
use crate::infra::secrets::REFETCH_COOLDOWN;

#[allow(
    clippy::large_enum_variant,
    reason = "one per execution environment, behind an Arc"
)]
pub(super) enum Backend {
    Standalone(ConnectionManager),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// `None` until the first connect, and again after the breaker
        /// opened: a fresh connection reads the current topology from the
        /// seed nodes (see `run`).
        connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

/// What a direct connection to one node needs (health checks).
pub(super) struct NodeTemplate {
    /// The first seed URL; a node's host and port replace its own.
    pub(super) seed: Secret,
    pub(super) root_cert: Option<Vec<u8>>,
    pub(super) auth_token: Option<Secret>,
}

/// Everything built from one auth token. A rotated token (see
/// `refresh_token`) replaces the whole generation; requests already running
/// finish on the old one.
pub(super) struct Generation {
    pub(super) node_template: NodeTemplate,
    pub(super) backend: Backend,
    pub(super) token: Option<Secret>,
}

pub(super) fn build_generation(
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
    pub(super) fn generation(&self) -> Arc<Generation> {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// The cluster client reports a node it could not reconnect to as
    /// "connection not found", whatever the reason. When the token comes
    /// from a secret, a failed call therefore checks — at most once per
    /// `REFETCH_COOLDOWN` — whether a seed node accepts the token, and
    /// re-fetches it if the node refuses it.
    pub(super) async fn probe_auth(&self, generation: &Arc<Generation>) {
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
    pub(super) async fn refresh_token(&self, failed: &Arc<Generation>) {
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
    pub(super) async fn connection(generation: &Generation) -> Result<RedisConnection, RedisError> {
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
}
