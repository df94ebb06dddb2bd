//! Secrets Manager at init and Redis auth-token rotation, against a local
//! Secrets Manager (`moto_server`, started by `make test`) and real
//! `redis-server`s with `requirepass`, standalone and cluster.
//!
//! Rotation is what ElastiCache's `ROTATE` strategy looks like from a
//! client: connections that authenticated with the old token keep working;
//! a new connection with the old token is refused (`WRONGPASS`) once the old
//! token is gone. The function must then fetch the secret again — once —
//! and reconnect with the token it holds now.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::process::Command;
use std::time::Duration;

use paycache::App;
use paycache::config::RedisMode;
use paycache::connection::Redis;
use test_support::{RedisCluster, RedisServer, TestDb, TestRedis};

// Listed in tests/secrets.txt: `make test` fails if any appears in output.
const TOKEN_A: &str = "rotation-token-A-9c1d7e55f0b2";
const TOKEN_B: &str = "rotation-token-B-4a8f2c6d19e3";
const TOKEN_C: &str = "rotation-token-C-e07b3a91d6c4";
const DB_PASSWORD: &str = "db-secret-pw-51f3b8a2c7d9";

async fn aws() -> aws_sdk_secretsmanager::Client {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| v.starts_with("http://127.0.0.1")),
        "AWS_ENDPOINT_URL must point at the local moto_server: run the tests with `make test`"
    );
    aws_sdk_secretsmanager::Client::new(paycache::aws::sdk_config(Duration::from_secs(5)).await)
}

async fn create_secret(aws: &aws_sdk_secretsmanager::Client, value: &str) -> String {
    let name = format!("paycache-test-{}", test_support::random_uuid());
    let answer = aws
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    answer.arn().unwrap().to_owned()
}

async fn put_secret(aws: &aws_sdk_secretsmanager::Client, arn: &str, value: &str) {
    aws.put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

/// `redis-cli` against one node, authenticated with `password`.
fn cli(port: u16, password: &str, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    if !password.is_empty() {
        command.env("REDISCLI_AUTH", password);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets the password of every node (replicas authenticate to their primary
/// with the same one).
fn set_password(ports: &[u16], old: &str, new: &str) {
    for &port in ports {
        let o = cli(port, old, &["CONFIG", "SET", "masterauth", new]);
        assert!(o.contains("OK"), "{o}");
        let o = cli(port, old, &["CONFIG", "SET", "requirepass", new]);
        assert!(o.contains("OK"), "{o}");
    }
}

/// Closes every client connection (what a failover, a node replacement or
/// an idle timeout does to a Lambda's connections).
fn kill_clients(ports: &[u16], password: &str) {
    for &port in ports {
        cli(port, password, &["CLIENT", "KILL", "TYPE", "normal"]);
    }
}

/// One small write through the handle, as every cache operation does.
async fn write(redis: &Redis, n: u32) -> bool {
    redis
        .set_px(&format!("{{secret-test}}:k{n}"), "v".into(), 60_000)
        .await
        .is_ok()
}

/// Writes until one succeeds (at most `tries`, 100 ms apart); how many
/// failed first, or `None` if none succeeded.
async fn failures_before_success(redis: &Redis, tries: u32) -> Option<u32> {
    for n in 0..tries {
        if write(redis, n).await {
            return Some(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

struct Servers {
    redis: TestRedis,
    ports: Vec<u16>,
}

fn servers(mode: RedisMode) -> Servers {
    match mode {
        RedisMode::Standalone => {
            let server = RedisServer::start_with(&["--requirepass", TOKEN_A]);
            let ports = vec![server.port];
            Servers {
                redis: TestRedis::Standalone(server),
                ports,
            }
        }
        RedisMode::Cluster => {
            let cluster = RedisCluster::start();
            let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
            set_password(&ports, "", TOKEN_A);
            Servers {
                redis: TestRedis::Cluster(cluster),
                ports,
            }
        }
    }
}

async fn app_with_secret(servers: &Servers, db: &TestDb, arn: &str) -> App {
    let config = test_support::config(
        &servers.redis,
        db,
        &[
            ("REDIS_AUTH_TOKEN_SECRET_ARN", arn),
            // Rotation must not be hidden behind an open breaker.
            ("CACHE_BREAKER_FAILURES", "50"),
        ],
    );
    App::with_secrets(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_fetched_once_at_init() {
    let aws = aws().await;
    let servers = servers(RedisMode::Standalone);
    let db = TestDb::create().await;
    let redis_arn = create_secret(&aws, &format!(r#"{{"token":"{TOKEN_A}"}}"#)).await;

    // A role of the test's own; the database secret names it.
    let role = format!("r_{:08x}", test_support::random_u32());
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'; GRANT USAGE ON SCHEMA {} TO {role};",
            db.schema
        ))
        .await
        .unwrap();
    let db_arn = create_secret(
        &aws,
        &format!(r#"{{"username":"{role}","password":"{DB_PASSWORD}","engine":"postgres"}}"#),
    )
    .await;

    let config = test_support::config(
        &servers.redis,
        &db,
        &[
            ("REDIS_AUTH_TOKEN_SECRET_ARN", redis_arn.as_str()),
            ("DATABASE_SECRET_ARN", db_arn.as_str()),
        ],
    );
    assert!(config.redis.auth_token.is_none());
    let app = App::with_secrets(config).await.unwrap();
    assert!(
        write(&app.redis, 1).await,
        "authenticated with the secret's token"
    );
    assert_eq!(app.redis.token_source().unwrap().fetches(), 1);
    let user: String = app
        .db
        .client()
        .await
        .unwrap()
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, role, "the database user comes from the secret");
    // Secrets never in Debug output.
    let shown = format!("{:?} {:?}", app.config, app.redis);
    assert!(
        !shown.contains(TOKEN_A) && !shown.contains(DB_PASSWORD),
        "{shown}"
    );

    // Without the secret, the same server refuses the function.
    let plain = test_support::config(&servers.redis, &db, &[]);
    let app = App::with_secrets(plain).await.unwrap();
    assert!(!write(&app.redis, 2).await);

    // A missing secret fails init with the variable's name, not a panic.
    let missing = test_support::config(
        &servers.redis,
        &db,
        &[(
            "REDIS_AUTH_TOKEN_SECRET_ARN",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:does-not-exist-AbCdEf",
        )],
    );
    let err = App::with_secrets(missing).await.unwrap_err().to_string();
    assert!(
        err.contains("REDIS_AUTH_TOKEN_SECRET_ARN") && err.contains("ResourceNotFoundException"),
        "{err}"
    );
}

async fn rotation(mode: RedisMode) {
    let aws = aws().await;
    let servers = servers(mode);
    let db = TestDb::create().await;
    let arn = create_secret(&aws, TOKEN_A).await;
    let app = app_with_secret(&servers, &db, &arn).await;
    // The deliberately broken variant: the same token, no secret to re-read.
    let mut stuck_config = app.config.redis.clone();
    stuck_config.auth_token_secret_arn = None;
    let stuck = Redis::new(&stuck_config, app.config.breaker).unwrap();
    let source = app.redis.token_source().unwrap().clone();

    assert!(write(&app.redis, 0).await);
    assert!(write(&stuck, 0).await);
    assert_eq!(source.fetches(), 1, "fetched once at init");

    // Rotate: the secret and the servers move to B; open connections stay
    // authenticated, so nothing is fetched yet.
    put_secret(&aws, &arn, TOKEN_B).await;
    set_password(&servers.ports, TOKEN_A, TOKEN_B);
    assert!(write(&app.redis, 1).await);
    assert_eq!(source.fetches(), 1);

    // The connections go; reconnecting with A is refused.
    kill_clients(&servers.ports, TOKEN_B);
    let failed = failures_before_success(&app.redis, 30).await;
    assert!(
        failed.is_some_and(|f| f <= 3),
        "reconnects with the re-fetched token within a few calls: {failed:?}"
    );
    assert_eq!(
        source.fetches(),
        2,
        "the secret is fetched again exactly once"
    );
    for n in 0..20 {
        assert!(write(&app.redis, n).await);
    }
    assert_eq!(source.fetches(), 2);
    assert_eq!(
        failures_before_success(&stuck, 10).await,
        None,
        "the broken variant (no re-fetch) never recovers: the test can fail"
    );

    // The servers move on but the secret does not (a rotation half done):
    // refusals do not turn into a storm of Secrets Manager requests.
    tokio::time::sleep(paycache::secrets::REFETCH_COOLDOWN).await;
    set_password(&servers.ports, TOKEN_B, TOKEN_C);
    kill_clients(&servers.ports, TOKEN_C);
    for n in 0..10 {
        write(&app.redis, n).await;
    }
    assert_eq!(
        source.fetches(),
        3,
        "one re-fetch per cooldown, however many calls are refused"
    );
    // The secret catches up; after the cooldown the next refusal finds it.
    put_secret(&aws, &arn, TOKEN_C).await;
    tokio::time::sleep(paycache::secrets::REFETCH_COOLDOWN).await;
    let failed = failures_before_success(&app.redis, 30).await;
    assert!(failed.is_some(), "recovers once the secret holds C");
    assert_eq!(source.fetches(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongpass_refetches_the_token_once_and_reconnects_standalone() {
    rotation(RedisMode::Standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongpass_refetches_the_token_once_and_reconnects_cluster() {
    rotation(RedisMode::Cluster).await;
}
