//! PostgreSQL, the source of truth.
//!
//! The driver is `tokio-postgres` with a small `deadpool-postgres` pool
//! rather than sqlx: it compiles faster, adds less to each Lambda binary, and
//! needs no database at build time; this crate's queries are few and
//! hand-written, so sqlx's compile-time checking would buy little. One
//! execution environment serves one request at a time, so the pool is small
//! (`DATABASE_POOL_SIZE`, default 2); in AWS it sits behind RDS Proxy.
//!
//! TLS: rustls (ring). `sslmode` in `DATABASE_URL` means what it means to
//! libpq (see [`crate::infra::sslmode`]): the default `prefer` and
//! `require` encrypt without checking the certificate, `verify-ca` and
//! `verify-full` check it against the system roots plus `DATABASE_CA_CERT`
//! (the RDS CA bundle when connecting to RDS directly; RDS Proxy's
//! certificates chain to public roots). The template uses `verify-full`.
//! A failed handshake or verification is logged with its cause and the
//! setting that changes it.
//!
//! In AWS the functions reach PostgreSQL through RDS Proxy, a transaction
//! pooler; locally through PgBouncer in transaction mode (`make run`,
//! and the pooled tests of `make test`). So no connection carries startup
//! options, and no statement is prepared or `SET` (see [`statements`]).
//!
//! Every statement runs under a server-side `statement_timeout` set on the
//! database role by [`Db::migrate`] (`DATABASE_STATEMENT_TIMEOUT_MS`), every
//! call under the client's own timeout, and every connection attempt under
//! `DATABASE_CONNECT_TIMEOUT_MS`, so a slow database cannot hang a function.
//! A connection the server or the pooler refuses is logged with its own
//! reason and SQLSTATE ([`DbError::Refused`]): the reason names no secret
//! (PostgreSQL's and PgBouncer's refusals never quote a password).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::infra::config::DatabaseConfig;
use crate::infra::sslmode::SslMode;

mod statements;
pub use statements::{DbClient, DbTx, Param, Typed};

/// Why a database call failed. Like [`crate::infra::connection::RedisUnavailable`],
/// the text is safe to log and never carries SQL or URLs; only
/// [`DbError::Refused`] carries a server message — the reason a server or
/// pooler gave for refusing a connection, which names no secret. No
/// handler shows any of it to a client (their problem details are fixed
/// texts).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL: not a valid PostgreSQL connection string")]
    /// `DATABASE_URL` is not a valid connection string.
    InvalidUrl,
    #[error("DATABASE_CA_CERT: not a readable PEM file of certificates")]
    /// The CA file could not be read.
    CaCert,
    /// `DATABASE_URL` names an RDS database itself (not RDS Proxy) with a
    /// verifying `sslmode` and no `DATABASE_CA_CERT`: its certificate
    /// chains to the RDS CA, which no system trusts, so every connection
    /// would fail verification.
    #[error(
        "DATABASE_URL names an RDS database directly with sslmode=verify-ca/verify-full, and DATABASE_CA_CERT is unset: \
         its certificate chains to the RDS CA, not a public root. Set DATABASE_CA_CERT to the RDS CA bundle \
         (global-bundle.pem), or connect through RDS Proxy, whose certificates chain to Amazon's public roots"
    )]
    RdsNeedsCa,
    #[error("the database is unavailable")]
    /// No connection, or unreadable data.
    Unavailable,
    /// The server, or the pooler in front of it, refused the connection:
    /// its own reason and SQLSTATE (a refusal names no secret). Handlers
    /// answer it as [`DbError::Unavailable`] (503) and never show the text.
    #[error("the database refused the connection: {reason} (SQLSTATE {code})")]
    Refused {
        /// The server's message (`ErrorResponse` M field).
        reason: String,
        /// Its SQLSTATE.
        code: String,
    },
    #[error("a database query failed")]
    /// A query failed.
    Query(#[source] tokio_postgres::Error),
}

/// The migrations, applied in order, each once (tracked in `schema_migrations`).
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_core.sql")),
    (2, include_str!("../../migrations/0002_balance_outbox.sql")),
    (3, include_str!("../../migrations/0003_sessions.sql")),
];

/// The deterministic local data set (see the file for its ids).
pub(crate) const LOCAL_SEED: &str = include_str!("../../seed/local.sql");

#[derive(Clone)]
/// The PostgreSQL pool (TLS per `sslmode`).
pub struct Db {
    pool: Pool,
    sslmode: SslMode,
    /// The server-side `statement_timeout` [`Db::migrate`] sets on the role.
    statement_timeout: Duration,
    /// Every call's client-side bound.
    call_timeout: Duration,
    /// Connections handed out ([`Db::client`]): every query takes one, so
    /// tests count queries by it (a cache hit must take none).
    checkouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Builds the pool without connecting.
    pub fn new(config: &DatabaseConfig) -> Result<Self, DbError> {
        let (conninfo, sslmode) =
            crate::infra::sslmode::split(config.url.expose()).ok_or(DbError::InvalidUrl)?;
        // libpq: `require` with a root CA file verifies the chain.
        let sslmode = sslmode.with_root_ca(config.ca_cert.is_some());
        let mut pg =
            tokio_postgres::Config::from_str(&conninfo).map_err(|_| DbError::InvalidUrl)?;
        if sslmode.verifies() && config.ca_cert.is_none() && pg.get_hosts().iter().any(rds_itself) {
            return Err(DbError::RdsNeedsCa);
        }
        pg.ssl_mode(sslmode.driver());
        pg.connect_timeout(config.connect_timeout);
        if let Some(credentials) = &config.credentials {
            pg.user(&credentials.username);
            pg.password(credentials.password.expose());
        }
        let manager = Manager::from_config(
            pg,
            tls_connector(config, sslmode)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .build()
            .map_err(|_| DbError::InvalidUrl)?;
        Ok(Self {
            pool,
            sslmode,
            statement_timeout: config.statement_timeout,
            call_timeout: config.statement_timeout + statements::CLIENT_MARGIN,
            checkouts: Default::default(),
        })
    }

    /// How many connections [`Db::client`] has handed out (every query
    /// takes one).
    pub fn checkouts(&self) -> u64 {
        self.checkouts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A pooled connection (connecting if needed, within `DATABASE_CONNECT_TIMEOUT_MS`).
    pub async fn client(&self) -> Result<DbClient, DbError> {
        self.checkouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.pool.get().await {
            Ok(inner) => Ok(DbClient {
                inner,
                timeout: self.call_timeout,
            }),
            Err(e) => {
                let error = crate::infra::telemetry::ErrorChain(&e).to_string();
                if let Some(refused) = refusal(&e) {
                    tracing::warn!(error = %refused, "database connection refused");
                    return Err(refused);
                }
                match crate::infra::sslmode::hint(self.sslmode, &error) {
                    Some(hint) => {
                        tracing::warn!(error = %error, sslmode = ?self.sslmode, hint, "database connection unavailable")
                    }
                    None => tracing::warn!(error = %error, "database connection unavailable"),
                }
                Err(DbError::Unavailable)
            }
        }
    }

    /// Opens a connection and says in words what went wrong — the password
    /// refused, the host unreachable, TLS — never printing the URL or the
    /// password (`paycache-dev check`).
    pub async fn diagnose(&self) -> Result<(), String> {
        let e = match self.pool.get().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let chain = crate::infra::telemetry::ErrorChain(&e).to_string();
        let lower = chain.to_lowercase();
        let refused = refusal(&e);
        Err(if lower.contains("password authentication failed") {
            "PostgreSQL refused the password (password authentication failed): check DATABASE_URL's password or DATABASE_SECRET_ARN".to_owned()
        } else if lower.contains("no password") || lower.contains("password missing") {
            "PostgreSQL asks for a password and DATABASE_URL gives none".to_owned()
        } else if lower.contains("connection refused") {
            "PostgreSQL is unreachable: connection refused (nothing listens at DATABASE_URL's host and port)".to_owned()
        } else if let Some(hint) = crate::infra::sslmode::hint(self.sslmode, &chain) {
            format!("the TLS connection to PostgreSQL failed: {hint}")
        } else if lower.contains("does not exist") {
            "PostgreSQL: the database or user in DATABASE_URL does not exist".to_owned()
        } else if let Some(refused) = refused {
            refused.to_string()
        } else if lower.contains("timed out") || lower.contains("timeout") {
            "no answer from PostgreSQL in time (is DATABASE_URL's host right?)".to_owned()
        } else {
            "PostgreSQL could not be reached (run with RUST_LOG=warn for the driver's error)"
                .to_owned()
        })
    }

    /// Applies pending migrations under an advisory lock, so concurrent
    /// callers (parallel tests, two deploy steps) apply each one once; then
    /// sets `statement_timeout` on the connecting role in this database —
    /// every later connection of that role starts with it, through any
    /// pooler (RDS Proxy opens its database connections as the same user).
    /// The migrations themselves run without a server-side limit, under
    /// the administrative client bound ([`ADMIN_TIMEOUT`]).
    pub async fn migrate_with_timeout(&self, role_timeout: Duration) -> Result<usize, DbError> {
        let mut client = self.client().await?.with_timeout(ADMIN_TIMEOUT);
        let tx = client.transaction().await?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7245100001);
             SELECT set_config('statement_timeout', '0', true);
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
        let mut applied = 0;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
            if done.is_none() {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await?;
                applied += 1;
            }
        }
        // ALTER ROLE takes no parameters: the value is an integer we
        // format, the names are quoted by PostgreSQL (`format('%I')`).
        let ms = role_timeout.as_millis();
        tx.batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %s',
                                        current_user, current_database(), {ms}); END $$;"
        ))
        .await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// [`Db::migrate_with_timeout`] with this pool's own
    /// `DATABASE_STATEMENT_TIMEOUT_MS` for the role.
    pub async fn migrate(&self) -> Result<usize, DbError> {
        self.migrate_with_timeout(self.statement_timeout).await
    }

    /// Loads the deterministic local data set; safe to run again. One
    /// transaction, without the role's statement timeout and under the
    /// administrative client bound (10,000 users on a slow machine may take
    /// longer than a function's statement may: seen in CI, two seeds beside
    /// the whole test suite ran past the request bound).
    pub async fn seed_local(&self) -> Result<(), DbError> {
        let mut client = self.client().await?.with_timeout(ADMIN_TIMEOUT);
        let tx = client.transaction().await?;
        tx.batch_execute("SELECT set_config('statement_timeout', '0', true);")
            .await?;
        tx.batch_execute(LOCAL_SEED).await?;
        tx.commit().await
    }
}

/// The client-side bound on administrative work (migrations, the local
/// seed), which runs with the server's `statement_timeout` off: long enough
/// for a slow machine, short enough that a lost connection still ends it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

/// An RDS database's own endpoint (an instance, or an Aurora cluster's),
/// whose certificate chains to the RDS CA — not RDS Proxy's
/// (`<name>.proxy-<id>.<region>.rds.amazonaws.com`), whose certificates
/// chain to Amazon Trust Services' public roots ("Using TLS/SSL with RDS
/// Proxy", Amazon RDS User Guide).
fn rds_itself(host: &tokio_postgres::config::Host) -> bool {
    let tokio_postgres::config::Host::Tcp(name) = host else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    let rds = name.ends_with(".rds.amazonaws.com") || name.ends_with(".rds.amazonaws.com.cn");
    rds && !name.split('.').any(|label| label.starts_with("proxy-"))
}

/// rustls with the system roots and `DATABASE_CA_CERT`. The CA file is read
/// and checked now (a bad one fails init, naming the variable); the
/// system's roots are loaded at the first connection, so a cold start does
/// not pay for them (neither twice when the AWS SDK loads them as well).
fn tls_connector(config: &DatabaseConfig, sslmode: SslMode) -> Result<LazyTls, DbError> {
    let mut extra = Vec::new();
    if let Some(path) = &config.ca_cert {
        let pem = std::fs::read(path).map_err(|_| DbError::CaCert)?;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|_| DbError::CaCert)?;
        if certs.is_empty() {
            return Err(DbError::CaCert);
        }
        let mut check = rustls::RootCertStore::empty();
        for cert in &certs {
            check.add(cert.clone()).map_err(|_| DbError::CaCert)?;
        }
        extra = certs;
    }
    Ok(LazyTls {
        sslmode,
        extra: std::sync::Arc::new(extra),
        built: std::sync::Arc::new(std::sync::OnceLock::new()),
    })
}

/// The PostgreSQL TLS connector, built at its first use.
#[derive(Clone)]
struct LazyTls {
    sslmode: SslMode,
    extra: std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
    built: std::sync::Arc<std::sync::OnceLock<MakeRustlsConnect>>,
}

impl LazyTls {
    fn connector(&self) -> &MakeRustlsConnect {
        self.built.get_or_init(|| {
            MakeRustlsConnect::new(crate::infra::sslmode::client_config(
                self.sslmode,
                crate::infra::sslmode::roots(self.sslmode, &self.extra),
            ))
        })
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for LazyTls
where
    MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let mut connector = self.connector().clone();
        connector.make_tls_connect(domain)
    }
}

/// A connection the server or the pooler refused, with its own reason: an
/// `ErrorResponse` during start-up (a pooler's "unsupported startup
/// parameter", "no more connections allowed", PostgreSQL's "too many
/// clients"), not a network or TLS failure.
fn refusal(e: &deadpool_postgres::PoolError) -> Option<DbError> {
    let deadpool_postgres::PoolError::Backend(err) = e else {
        return None;
    };
    let db = err.as_db_error()?;
    Some(DbError::Refused {
        reason: db.message().to_owned(),
        code: db.code().code().to_owned(),
    })
}

/// Maps a driver error, telling "the database is gone" from "this query
/// failed", without keeping the server's text in our own messages.
pub(crate) fn query_error(err: tokio_postgres::Error) -> DbError {
    // Classes 08 (connection), 53 (insufficient resources) and 57 (operator
    // intervention, including statement_timeout) mean "try again later".
    let transient = err
        .as_db_error()
        .is_none_or(|db| matches!(&db.code().code()[..2], "08" | "53" | "57"));
    if err.is_closed() || transient {
        tracing::warn!(error = %crate::infra::telemetry::ErrorChain(&err), "database connection failed");
        DbError::Unavailable
    } else {
        DbError::Query(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::config::Secret;

    fn db(url: &str) -> Result<Db, DbError> {
        Db::new(&DatabaseConfig {
            url: Secret::new(url),
            secret_arn: None,
            credentials: None,
            ca_cert: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        })
    }

    /// `verify-full` without `DATABASE_CA_CERT` is refused at init for an
    /// RDS database reached directly (instance or Aurora cluster), and
    /// accepted through RDS Proxy, with a non-verifying mode, and for any
    /// other host.
    #[test]
    fn verifying_an_rds_database_directly_needs_its_ca() {
        for (url, refused) in [
            (
                "postgres://u@db1.abcdefghij.us-east-1.rds.amazonaws.com/p?sslmode=verify-full",
                true,
            ),
            (
                "postgres://u@app.cluster-abcdefghij.eu-west-1.rds.amazonaws.com/p?sslmode=verify-ca",
                true,
            ),
            (
                "host=db1.abcdefghij.cn-north-1.rds.amazonaws.com.cn sslmode=verify-full",
                true,
            ),
            (
                "postgres://u@app.proxy-abcdefghij.us-east-1.rds.amazonaws.com/p?sslmode=verify-full",
                false,
            ),
            (
                "postgres://u@db1.abcdefghij.us-east-1.rds.amazonaws.com/p?sslmode=require",
                false,
            ),
            ("postgres://u@db.example.com/p?sslmode=verify-full", false),
        ] {
            let result = db(url);
            assert_eq!(
                matches!(result, Err(DbError::RdsNeedsCa)),
                refused,
                "{url}: {:?}",
                result.err()
            );
        }
    }
}
