//! What a measured function runs against: real Redis and a fresh PostgreSQL
//! database with the seed data, a signed-in user's session, the environment
//! the template gives a function, and the events it is sent.

use super::root;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use test_support::RedisServer;

pub(super) struct Env {
    pub(super) vars: Vec<(String, String)>,
    /// The signed-in user's session id.
    pub(super) session: String,
    pub(super) _redis: RedisServer,
}

pub(super) fn environment() -> Env {
    let redis = RedisServer::start();
    let pg = std::env::var("PAYCACHE_TEST_PG").expect("PAYCACHE_TEST_PG (make bench sets it)");
    let db = format!("bench_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        let url = format!("{pg} dbname={db}");
        let config = paycache::config::DatabaseConfig {
            url: paycache::config::Secret::new(url),
            secret_arn: None,
            credentials: None,
            ca_cert: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(600),
        };
        let db = paycache::db::Db::new(&config).unwrap();
        db.migrate().await.unwrap();
        db.seed_local().await.unwrap();
    });
    let vars = vec![
        ("REDIS_URL".into(), redis.url()),
        ("DATABASE_URL".into(), format!("{pg} dbname={db}")),
        ("CACHE_KEY_PREFIX".into(), "bench".into()),
        ("AUTH_ISSUER".into(), "https://auth.paycache.test".into()),
        ("AUTH_AUDIENCE".into(), "paycache-api".into()),
        (
            "AUTH_JWKS_FILE".into(),
            root()
                .join("tests/fixtures/jwks.json")
                .display()
                .to_string(),
        ),
        // Every hit is the same caller (the events' service principal): no
        // limit may stop the benchmark (the rate-limit script still runs).
        (
            "RATE_LIMIT_POLICIES".into(),
            r#"[{"name":"users.profile.read","algorithm":"gcra","limit":1000000,"window_secs":1,"burst":1000000,"fail":"open"},{"name":"wallets.balance.read","algorithm":"gcra","limit":1000000,"window_secs":1,"burst":1000000,"fail":"open"}]"#.into(),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), "bench".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME".into(), "bench".into()),
        ("RUST_LOG".into(), "error".into()),
    ];
    // A signed-in user's session (what the sign-in makes), for the
    // signed-in hit: its token names it (`sid`).
    let _runtime = rt.enter();
    let app = paycache::App::new(
        paycache::Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v): &(String, String)| v.clone())
        })
        .unwrap(),
    )
    .unwrap();
    let session = rt.block_on(async {
        let session = paycache::sessions::Session {
            user_id: paycache::keys::UserId::parse(SIGNED_IN_USER).unwrap(),
            email: "bench@example.test".into(),
            roles: vec!["customer".into()],
            permissions: Vec::new(),
            last_activity: time::OffsetDateTime::now_utc(),
            ip_address: None,
            device_info: None,
        };
        paycache::sessions::create(&app.sessions, &session)
            .await
            .unwrap()
            .to_string()
    });
    Env {
        vars,
        session,
        _redis: redis,
    }
}

/// The signed-in user of the benchmark (seed user 1).
pub(super) const SIGNED_IN_USER: &str = "00000000-0000-4000-8000-000000000001";

pub(super) fn spawn(program: &PathBuf, name: &str, env: &Env, port: u16) -> Child {
    Command::new(program)
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (make bench builds it)", program.display()))
}

pub(super) fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Creates the two secrets a deployed function reads at init in the local
/// Secrets Manager (`AWS_ENDPOINT_URL`), and returns the variables naming
/// them; `None` without a local endpoint.
pub(super) fn secrets_for_init() -> Option<Vec<(String, String)>> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok()?;
    if !endpoint.starts_with("http://127.0.0.1") {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sm = aws_sdk_secretsmanager::Client::new(
            paycache::aws::sdk_config(Duration::from_secs(5)).await,
        );
        let tag = format!("bench-{}", std::process::id());
        let redis = sm
            .create_secret()
            .name(format!("{tag}/redis"))
            .secret_string(r#"{"token":"bench-token-0123456789abcdef"}"#)
            .send()
            .await
            .ok()?;
        let db = sm
            .create_secret()
            .name(format!("{tag}/db"))
            .secret_string(r#"{"username":"postgres","password":"bench-password"}"#)
            .send()
            .await
            .ok()?;
        Some(vec![
            (
                "REDIS_AUTH_TOKEN_SECRET_ARN".to_owned(),
                redis.arn()?.to_owned(),
            ),
            ("DATABASE_SECRET_ARN".to_owned(), db.arn()?.to_owned()),
        ])
    })
}

pub(super) fn event(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("events").join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `n` profile reads over 2,000 users (misses, then hits), as one event each.
pub(super) fn profile_events(n: usize) -> Vec<Vec<u8>> {
    let template = event("profile-read.json");
    (0..n)
        .map(|i| {
            let id = format!("00000000-0000-4000-8000-{:012x}", i % 2000 + 1);
            let mut e = template.clone();
            for_user(&mut e, &id);
            serde_json::to_vec(&e).unwrap()
        })
        .collect()
}

/// A profile-read event for user `id`'s profile.
pub(super) fn for_user(e: &mut serde_json::Value, id: &str) {
    e["rawPath"] = format!("/users/{id}/profile").into();
    e["requestContext"]["http"]["path"] = format!("/users/{id}/profile").into();
    e["pathParameters"]["user_id"] = id.into();
}

pub(super) fn repeated(file: &str, n: usize) -> Vec<Vec<u8>> {
    vec![serde_json::to_vec(&event(file)).unwrap(); n]
}
