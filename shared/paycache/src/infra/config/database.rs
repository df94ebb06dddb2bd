//! PostgreSQL: the URL (the RDS Proxy endpoint deployed), its secret,
//! CA, pool size and timeouts.

use super::ConfigError;
use super::Secret;
use super::env::Env;
use super::env::secret_arn;
use std::path::PathBuf;
use std::time::Duration;

/// `DATABASE_STATEMENT_TIMEOUT_MS`: default, least and most (milliseconds).
/// `paycache-dev migrate` sets it on the database role with the same bounds.
pub const STATEMENT_TIMEOUT_MS: (u64, u64, u64) = (3000, 10, 600_000);

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

/// PostgreSQL (`DATABASE_*`).
pub(super) fn read(env: &Env<'_>) -> Result<DatabaseConfig, ConfigError> {
    Ok(DatabaseConfig {
        url: Secret::new(env.required("DATABASE_URL")?),
        secret_arn: secret_arn(env, "DATABASE_SECRET_ARN")?,
        credentials: None,
        ca_cert: env.get("DATABASE_CA_CERT").map(PathBuf::from),
        pool_size: env.number("DATABASE_POOL_SIZE", 2, 1, 64)?,
        connect_timeout: env.millis("DATABASE_CONNECT_TIMEOUT_MS", 2000, 10, 60_000)?,
        statement_timeout: env.millis(
            "DATABASE_STATEMENT_TIMEOUT_MS",
            STATEMENT_TIMEOUT_MS.0,
            STATEMENT_TIMEOUT_MS.1,
            STATEMENT_TIMEOUT_MS.2,
        )?,
    })
}
