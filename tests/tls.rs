//! TLS to Redis with certificate verification on: `redis-server`'s built-in
//! TLS, with certificates this test generates under a private CA.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paycache::CacheStatus;
use paycache::keys::UserId;
use test_support::{TempDir, TestDb, free_port, seed_user_id};

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A CA, a server certificate for `localhost` only, and an unrelated CA.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=paycache test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=someone else",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> TlsRedis {
    let port = free_port();
    let child = Command::new("redis-server")
        .current_dir(dir)
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by its guard from here on, so every path reaps it.
    let server = TlsRedis { child, port };
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let out = Command::new("redis-cli")
            .current_dir(dir)
            .args([
                "--tls",
                "--cacert",
                "ca.pem",
                "-h",
                "localhost",
                "-p",
                &port.to_string(),
                "PING",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("PONG") {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("TLS redis-server did not start");
}

async fn read_twice(db: &TestDb, url: &str, ca: Option<&Path>) -> (CacheStatus, CacheStatus) {
    let mut vars = vec![
        ("REDIS_URL".to_owned(), url.to_owned()),
        ("DATABASE_URL".to_owned(), db.conninfo.clone()),
        ("REDIS_CONNECT_TIMEOUT_MS".to_owned(), "2000".to_owned()),
        (
            "CACHE_KEY_PREFIX".to_owned(),
            format!("tls{:08x}", fastrand_u32()),
        ),
    ];
    if let Some(ca) = ca {
        vars.push(("REDIS_CA_CERT".to_owned(), ca.display().to_string()));
    }
    let config = paycache::Config::from_lookup(|k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let app = paycache::App::new(config).unwrap();
    let key = app
        .keys
        .user_profile(&UserId::parse(&seed_user_id(1)).unwrap());
    let load = || async { Ok::<_, ()>(Some(1u8)) };
    let a = app.cache.get_or_load(&key, load).await.unwrap().status;
    let b = app.cache.get_or_load(&key, load).await.unwrap().status;
    (a, b)
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_is_on() {
    let dir = TempDir::new("tls");
    certificates(dir.path());
    let redis = start(dir.path());
    let db = TestDb::create().await;
    let good = format!("rediss://localhost:{}", redis.port);

    // The right CA and the certificate's host name: TLS works.
    let (first, second) = read_twice(&db, &good, Some(&dir.path().join("ca.pem"))).await;
    assert_eq!(first, CacheStatus::Miss { stored: true });
    assert_eq!(second, CacheStatus::Hit);

    // Anything else is refused — and the read falls through to the database
    // instead of failing.
    for (what, url, ca) in [
        (
            "a CA that did not sign the certificate",
            good.clone(),
            Some(dir.path().join("other-ca.pem")),
        ),
        (
            "a host name the certificate does not name",
            format!("rediss://127.0.0.1:{}", redis.port),
            Some(dir.path().join("ca.pem")),
        ),
        (
            "the system roots (a private CA is not among them)",
            good.clone(),
            None,
        ),
    ] {
        let (first, _) = read_twice(&db, &url, ca.as_deref()).await;
        assert!(matches!(first, CacheStatus::Bypass(_)), "{what}: {first:?}");
    }
    // And plain text to a TLS port is not a working cache either.
    let (first, _) = read_twice(&db, &format!("redis://localhost:{}", redis.port), None).await;
    assert!(
        matches!(first, CacheStatus::Bypass(_)),
        "plain text: {first:?}"
    );
}
