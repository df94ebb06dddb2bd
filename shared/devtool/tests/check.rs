//! `paycache-dev check` (what `make run` runs first): a misconfigured Redis
//! or PostgreSQL is named in words — a refused password, an unreachable
//! host — and no secret of either URL reaches the output. The leak check
//! is run on a message that does carry the secret, and must catch it.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::process::Command;

use test_support::RedisServer;

/// The devtool's answer: exit code and everything it printed.
fn check(redis_url: &str, database_url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paycache-dev"))
        .arg("check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Whether `output` carries `secret`.
fn leaks(output: &str, secret: &str) -> bool {
    output.contains(secret)
}

/// PostgreSQL from the test run's `PAYCACHE_TEST_PG` (`host= port= …`).
fn database_url() -> String {
    let spec = std::env::var("PAYCACHE_TEST_PG")
        .expect("PAYCACHE_TEST_PG must be set: run the tests with `make test`");
    let field = |k: &str| {
        spec.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_owned()
    };
    format!(
        "postgres://{}@{}:{}/{}",
        field("user"),
        field("host"),
        field("port"),
        field("dbname")
    )
}

#[test]
fn a_misconfigured_redis_or_postgres_is_named_without_its_secret() {
    let server = RedisServer::start();
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let set = Command::new("redis-cli")
        .args(["-p", &port, "CONFIG", "SET", "requirepass", "right-pass-41"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&set.stdout).contains("OK"));
    let db = database_url();

    let (code, out) = check(&format!("redis://:right-pass-41@127.0.0.1:{port}"), &db);
    assert_eq!(code, 0, "{out}");

    let wrong = "wr0ng-pass-zz";
    let (code, out) = check(&format!("redis://:{wrong}@127.0.0.1:{port}"), &db);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refused the password"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port}")),
        "names the host: {out}"
    );
    assert!(!leaks(&out, wrong), "{out}");

    let (code, out) = check(&format!("redis://127.0.0.1:{port}"), &db);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("requires a password") || out.contains("refused the password"),
        "{out}"
    );

    let pg_secret = "pg-s3cret-yy";
    let (code, out) = check(
        "redis://:x-s3cret-x@127.0.0.1:1",
        &format!("postgres://postgres:{pg_secret}@127.0.0.1:1/postgres"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("Redis at 127.0.0.1:1 is unreachable"), "{out}");
    assert!(out.contains("PostgreSQL is unreachable"), "{out}");
    assert!(
        !leaks(&out, pg_secret) && !leaks(&out, "x-s3cret-x"),
        "{out}"
    );

    // The check can fail: a message that prints the URL is caught.
    let broken = format!("cannot connect to redis://:{wrong}@127.0.0.1:{port}");
    assert!(leaks(&broken, wrong));
}
