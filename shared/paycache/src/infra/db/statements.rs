//! Statements as a transaction pooler passes them: every query is one
//! round trip on PostgreSQL's *unnamed* statement, its parameters' types
//! given by the caller, and every call is bounded by the client's own
//! timeout.
//!
//! # Why not `Client::query`
//! tokio-postgres's `query`, `execute` and friends prepare a *named*
//! statement (`s0`, `s1`, …) and run it in a second exchange. Behind a
//! transaction pooler that breaks or costs:
//!
//! - **PgBouncer in transaction mode** (the local stand-in, Debian's 1.18)
//!   gives each transaction — and each statement outside one — whichever
//!   server connection is free, so a statement prepared on one is not there
//!   on the next ("prepared statement "s0" does not exist"). It passes the
//!   unnamed statement, which lives only until the `Sync` that ends the
//!   one exchange [`query_typed`] sends.
//! - **RDS Proxy** *pins* a client connection to its database connection
//!   when it sees a prepared statement or a `SET` — "Avoiding pinning an
//!   RDS Proxy", <https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-pinning.html>
//!   — and a pinned connection is not shared again until the client goes
//!   away: every Lambda execution environment would hold a database
//!   connection of its own, which is what the proxy is there to prevent.
//!   Nothing here prepares a statement or sends `SET`: the statement
//!   timeout is the database role's (`ALTER ROLE … SET statement_timeout`,
//!   applied by `paycache-dev migrate`, see [`super::Db::migrate`]), not a
//!   startup option (which RDS Proxy refuses outright: "Feature not
//!   supported: RDS Proxy currently doesn't support command-line options")
//!   nor a `SET`.
//!
//! The unnamed statement is also one round trip where a named one is two
//! (prepare, then execute).
//!
//! # Timeouts
//! The server-side `statement_timeout` lives on the role, so it holds
//! through any pooler; this module's timeout (`DATABASE_STATEMENT_TIMEOUT_MS`
//! plus a margin, see [`CLIENT_MARGIN`]) bounds every call from the
//! client's side as well — a pooler that queues the request
//! (`query_wait_timeout`), a role without the setting, or a network that
//! stops answering cannot hang a function. A call that times out is
//! reported as [`DbError::Unavailable`] (the function answers 503).

use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::{DbError, query_error};

/// How much longer than the server's `statement_timeout` the client waits
/// before giving up on a call: the server cancels first and says why.
pub(crate) const CLIENT_MARGIN: Duration = Duration::from_millis(500);

/// A statement parameter and the PostgreSQL type it is sent as.
pub trait Param: ToSql + Sync {
    /// The type the unnamed statement declares for it.
    fn pg_type(&self) -> Type;
}

/// The PostgreSQL type of a Rust type bound as a parameter.
pub trait Typed {
    /// Sent as this type.
    const TYPE: Type;
}

impl<T: Typed + ToSql + Sync> Param for T {
    fn pg_type(&self) -> Type {
        T::TYPE
    }
}

impl<T: Typed + ?Sized> Typed for &T {
    const TYPE: Type = T::TYPE;
}

impl<T: Typed> Typed for Option<T> {
    const TYPE: Type = T::TYPE;
}

macro_rules! typed {
    ($($rust:ty => $pg:ident),* $(,)?) => {
        $(impl Typed for $rust {
            const TYPE: Type = Type::$pg;
        })*
    };
}

typed! {
    bool => BOOL,
    i16 => INT2,
    i32 => INT4,
    i64 => INT8,
    f64 => FLOAT8,
    str => TEXT,
    String => TEXT,
    Uuid => UUID,
    OffsetDateTime => TIMESTAMPTZ,
    serde_json::Value => JSONB,
    Vec<Uuid> => UUID_ARRAY,
    Vec<String> => TEXT_ARRAY,
    Vec<&str> => TEXT_ARRAY,
    Vec<i64> => INT8_ARRAY,
    Vec<OffsetDateTime> => TIMESTAMPTZ_ARRAY,
    Vec<serde_json::Value> => JSONB_ARRAY,
    Vec<&serde_json::Value> => JSONB_ARRAY,
}

fn typed<'a>(params: &'a [&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (*p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

/// `fut` under the client's timeout; a call that runs out is the database
/// being unavailable. The driver's future goes on the heap: tokio-postgres's
/// are large, and a handler nests several (a debug build overflowed a
/// 2 MB thread stack with them inline) — one allocation beside a network
/// round trip.
async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(timeout, Box::pin(fut)).await {
        Ok(result) => result.map_err(query_error),
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "database call timed out (client side)"
            );
            Err(DbError::Unavailable)
        }
    }
}

/// The statements both a pooled connection and a transaction run.
macro_rules! statements {
    () => {
        /// Rows of `sql` (one round trip, the unnamed statement).
        pub async fn query(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, DbError> {
            bounded(
                self.timeout,
                self.generic().query_typed(sql, &typed(params)),
            )
            .await
        }

        /// The row of `sql`, if any; more than one is an error.
        pub async fn query_opt(
            &self,
            sql: &str,
            params: &[&dyn Param],
        ) -> Result<Option<Row>, DbError> {
            bounded(
                self.timeout,
                self.generic().query_typed_opt(sql, &typed(params)),
            )
            .await
        }

        /// The one row of `sql`; none, or more than one, is an error.
        pub async fn query_one(&self, sql: &str, params: &[&dyn Param]) -> Result<Row, DbError> {
            bounded(
                self.timeout,
                self.generic().query_typed_one(sql, &typed(params)),
            )
            .await
        }

        /// Rows changed by `sql`.
        pub async fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
            bounded(
                self.timeout,
                self.generic().execute_typed(sql, &typed(params)),
            )
            .await
        }

        /// Statements without parameters, in the simple query protocol.
        pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
            bounded(self.timeout, self.generic().batch_execute(sql)).await
        }
    };
}

/// A pooled connection ([`super::Db::client`]).
pub struct DbClient {
    pub(super) inner: deadpool_postgres::Object,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for DbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbClient").finish_non_exhaustive()
    }
}

impl DbClient {
    fn generic(&self) -> &tokio_postgres::Client {
        &self.inner
    }

    statements!();

    /// This connection with another client-side bound: for administrative
    /// work that turns the server's `statement_timeout` off too (migrations,
    /// the local seed), never for a request.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts a transaction: its statements share one server connection
    /// (a transaction pooler keeps it until `COMMIT`).
    pub async fn transaction(&mut self) -> Result<DbTx<'_>, DbError> {
        let timeout = self.timeout;
        let inner = bounded(timeout, self.inner.transaction()).await?;
        Ok(DbTx { inner, timeout })
    }
}

/// A transaction; dropped without [`DbTx::commit`], it rolls back.
pub struct DbTx<'a> {
    inner: deadpool_postgres::Transaction<'a>,
    timeout: Duration,
}

impl std::fmt::Debug for DbTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTx").finish_non_exhaustive()
    }
}

impl DbTx<'_> {
    fn generic(&self) -> &tokio_postgres::Transaction<'_> {
        &self.inner
    }

    statements!();

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        bounded(self.timeout, self.inner.commit()).await
    }
}
