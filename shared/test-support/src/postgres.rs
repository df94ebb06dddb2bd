//! PostgreSQL for tests: a schema per test, the seed's users, wallets and
//! transactions, and the configuration a test's `App` is built from.

use super::servers::TestRedis;
use paycache::config::Config;
use paycache::config::RedisMode;
use std::time::Duration;

/// A PostgreSQL schema of the test's own, with the migrations applied —
/// or, [`TestDb::pooled`], a database of its own behind PgBouncer.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// libpq key/value string selecting the schema through `search_path`
    /// (or the database), straight to PostgreSQL: the fixtures' and the
    /// assertions' connection.
    pub conninfo: String,
    pub schema: String,
    /// What the `App` under test connects to: `conninfo`, or PgBouncer.
    pub app_conninfo: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let base = base_conninfo();
        let schema = new_name();
        on_base(&base, &format!("CREATE SCHEMA {schema}")).await;
        let conninfo = format!("{base} options='-c search_path={schema}'");
        Self {
            app_conninfo: conninfo.clone(),
            conninfo,
            schema,
        }
        .migrated()
        .await
    }

    /// A database of the test's own, which the `App` reaches through
    /// PgBouncer in transaction mode (`PAYCACHE_TEST_PG_POOLER`, started by
    /// `make test` with a server pool of 2 per database — fewer than the
    /// connections a test's execution environments open): the deployed
    /// topology, where RDS Proxy stands between the functions and
    /// PostgreSQL. No startup options reach the pooler (it would refuse
    /// the connection), so the database, not `search_path`, is the test's
    /// own. The migrations run through the pooler too.
    pub async fn pooled() -> Self {
        let base = base_conninfo();
        let pooler = std::env::var("PAYCACHE_TEST_PG_POOLER").unwrap_or_default();
        assert!(
            !pooler.is_empty(),
            "PAYCACHE_TEST_PG_POOLER is not set: run the tests with `make test`, which starts PgBouncer"
        );
        let name = new_name();
        on_base(&base, &format!("CREATE DATABASE {name}")).await;
        Self {
            conninfo: format!("{base} dbname={name}"),
            app_conninfo: format!("{pooler} dbname={name}"),
            schema: "public".to_owned(),
        }
        .migrated()
        .await
    }

    /// This database with the migrations applied, as the `App` reaches it.
    async fn migrated(self) -> Self {
        let pool = paycache::db::Db::new(&self.config()).unwrap();
        pool.migrate().await.unwrap();
        self
    }

    pub fn config(&self) -> paycache::config::DatabaseConfig {
        paycache::config::DatabaseConfig {
            url: paycache::config::Secret::new(self.app_conninfo.clone()),
            secret_arn: None,
            credentials: None,
            ca_cert: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// A direct client for fixtures and assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

/// `PAYCACHE_TEST_PG`: the test PostgreSQL itself.
fn base_conninfo() -> String {
    crate::logs::init();
    let base = std::env::var("PAYCACHE_TEST_PG").unwrap_or_default();
    assert!(
        !base.is_empty(),
        "PAYCACHE_TEST_PG is not set: run the tests with `make test`, which starts PostgreSQL"
    );
    base
}

/// A schema or database name of this test's own.
fn new_name() -> String {
    format!("t_{}_{:08x}", std::process::id(), fastrand::u32(..))
}

/// Runs `sql` on the test PostgreSQL itself (a connection of its own).
async fn on_base(base: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("cannot connect to the test PostgreSQL");
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// The seed data's id for user `n` (see `shared/paycache/seed/local.sql`).
pub fn seed_user_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Inserts user `n` the way the seed data would.
pub async fn insert_user(db: &TestDb, n: u64) -> String {
    let id = seed_user_id(n);
    db.client()
        .await
        .execute(
            "INSERT INTO users (user_id, email, display_name, country, verified, created_at, updated_at)
             VALUES ($1::text::uuid, $2, $3, 'US', true, '2025-01-01T00:00:00Z', '2025-06-01T00:00:00Z')",
            &[&id, &format!("user{n}@example.com"), &format!("User {n}")],
        )
        .await
        .unwrap();
    id
}

/// A configuration for one test: its own key prefix, the given Redis and
/// database, the defaults otherwise (overridable with `extra`).
pub fn config(redis: &TestRedis, db: &TestDb, extra: &[(&str, &str)]) -> Config {
    crate::logs::init();
    let prefix = format!("t{:08x}", fastrand::u32(..));
    let mode = match redis.mode() {
        RedisMode::Standalone => "standalone",
        RedisMode::Cluster => "cluster",
    };
    let urls = redis.urls();
    let mut vars: Vec<(String, String)> = vec![
        ("REDIS_MODE".into(), mode.into()),
        ("REDIS_URL".into(), urls),
        ("DATABASE_URL".into(), db.conninfo.clone()),
        ("CACHE_KEY_PREFIX".into(), prefix),
        // Every health check in a test is fresh unless the test asks for
        // the per-environment caching (tests/health.rs does).
        ("HEALTH_CACHE_MS".into(), "0".into()),
        // A test machine is shared and can be busy (a second build beside
        // `make test`): a Redis call gets 1 s, not the deployed 250 ms, so
        // that load is not taken for an outage. Tests of timeouts and
        // outages set their own (`extra` overrides).
        ("REDIS_RESPONSE_TIMEOUT_MS".into(), "1000".into()),
        // The same for a rate-limit decision (deployed: 50 ms, then the
        // policy's fail mode): a fail-closed policy on a busy machine
        // answered 429 `cache-unavailable` to a test's first request.
        ("RATE_LIMIT_TIMEOUT_MS".into(), "1000".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_lookup(|name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

/// Inserts a wallet for user `user_n` (inserted if missing) with the given
/// id, currency and balance in minor units, at version 1.
pub async fn insert_wallet(db: &TestDb, user_n: u64, wallet_id: &str, currency: &str, minor: i64) {
    let client = db.client().await;
    let user = seed_user_id(user_n);
    client
        .execute(
            "INSERT INTO users (user_id, email, display_name, country, verified)
             VALUES ($1::text::uuid, $2, $3, 'US', true) ON CONFLICT DO NOTHING",
            &[
                &user,
                &format!("user{user_n}@example.com"),
                &format!("User {user_n}"),
            ],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO wallets (wallet_id, user_id, currency, balance_minor, version)
             VALUES ($1::text::uuid, $2::text::uuid, $3, $4, 1)",
            &[&wallet_id, &user, &currency, &minor],
        )
        .await
        .unwrap();
}

/// Inserts a transaction between two existing wallets.
pub async fn insert_transaction(
    db: &TestDb,
    id: &str,
    sender: &str,
    receiver: &str,
    minor: i64,
    status: &str,
) {
    db.client()
        .await
        .execute(
            "INSERT INTO transactions (transaction_id, sender_wallet_id, receiver_wallet_id, amount_minor,
                                       currency, status, payment_method)
             VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid, $4, 'USD', $5, 'card_ending_1234')",
            &[&id, &sender, &receiver, &minor, &status],
        )
        .await
        .unwrap();
}
