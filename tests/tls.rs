//! TLS to Redis with certificate verification on: `redis-server`'s built-in
//! TLS, with certificates this test generates under a private CA.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paycache::CacheStatus;
use paycache::keys::UserId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
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

/// Two cache reads through an `App` configured with `url` (and `ca` as
/// `REDIS_CA_CERT`), and what they logged.
async fn read_twice(
    db: &TestDb,
    url: &str,
    ca: Option<&Path>,
) -> ((CacheStatus, CacheStatus), String) {
    let mut vars = vec![
        ("REDIS_URL".to_owned(), url.to_owned()),
        ("DATABASE_URL".to_owned(), db.conninfo.clone()),
        ("REDIS_CONNECT_TIMEOUT_MS".to_owned(), "2000".to_owned()),
        (
            "CACHE_KEY_PREFIX".to_owned(),
            format!("tls{:08x}", test_support::random_u32()),
        ),
    ];
    if let Some(ca) = ca {
        vars.push(("REDIS_CA_CERT".to_owned(), ca.display().to_string()));
    }
    let config = paycache::Config::from_lookup(|k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    test_support::logs::capture(async {
        let app = paycache::App::new(config).unwrap();
        let key = app
            .keys
            .user_profile(&UserId::parse(&seed_user_id(1)).unwrap());
        let load = || async { Ok::<_, ()>(Some(1u8)) };
        let a = app.cache.get_or_load(&key, load).await.unwrap().status;
        let b = app.cache.get_or_load(&key, load).await.unwrap().status;
        (a, b)
    })
    .await
}

/// The check: refused, for the certificate (`cause` in the log).
fn refused_for(outcome: &((CacheStatus, CacheStatus), String), cause: &str) -> bool {
    matches!(outcome.0.0, CacheStatus::Bypass(_)) && outcome.1.contains(cause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_is_on() {
    let dir = TempDir::new("tls");
    certificates(dir.path());
    let redis = start(dir.path());
    let db = TestDb::create().await;
    let good = format!("rediss://localhost:{}", redis.port);

    // The right CA and the certificate's host name: TLS works.
    let ((first, second), _) = read_twice(&db, &good, Some(&dir.path().join("ca.pem"))).await;
    assert_eq!(first, CacheStatus::Miss { stored: true });
    assert_eq!(second, CacheStatus::Hit);

    // Anything else is refused, for the certificate — and the read falls
    // through to the database instead of failing. The same cases with
    // verification switched off (the broken variant) connect: the check
    // would notice verification being turned off.
    for (what, url, ca, cause) in [
        (
            "a CA that did not sign the certificate",
            good.clone(),
            Some(dir.path().join("other-ca.pem")),
            "UnknownIssuer",
        ),
        (
            "a host name the certificate does not name",
            format!("rediss://127.0.0.1:{}", redis.port),
            Some(dir.path().join("ca.pem")),
            "not valid for name",
        ),
        (
            "the system roots (a private CA is not among them)",
            good.clone(),
            None,
            "UnknownIssuer",
        ),
    ] {
        let verified = read_twice(&db, &url, ca.as_deref()).await;
        assert!(
            refused_for(&verified, cause),
            "{what}: {:?}\n{}",
            verified.0,
            verified.1
        );
        // The same handshake, from a bare TLS client: verified, it fails
        // for the same cause; with verification off, Redis answers.
        let (host, port) = host_port(&url);
        let roots = match &ca {
            Some(ca) => roots_of(ca),
            None => system_roots(),
        };
        let checked = ping_over_tls(host, port, verifying(roots)).await;
        assert!(
            checked.as_ref().is_err_and(|e| e.contains(cause)),
            "{what}: {checked:?}"
        );
        let unchecked = ping_over_tls(host, port, not_verifying()).await;
        assert_eq!(
            unchecked.as_deref(),
            Ok("+PONG"),
            "{what}, verification off: the server is reachable, only verification refuses it"
        );
    }
    // And plain text to a TLS port is not a working cache either.
    let ((first, _), _) = read_twice(&db, &format!("redis://localhost:{}", redis.port), None).await;
    assert!(
        matches!(first, CacheStatus::Bypass(_)),
        "plain text: {first:?}"
    );
}

/// The broken variant's verifier: accepts any certificate for any name.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn not_verifying() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        .with_no_client_auth()
}

fn verifying(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn roots_of(pem: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots (none of them signed our private CA).
    for path in ["/etc/ssl/certs/ca-certificates.crt"] {
        if Path::new(path).exists() {
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_file_iter(path).unwrap().flatten() {
                let _ = roots.add(cert);
            }
        }
    }
    roots
}

fn host_port(url: &str) -> (&str, u16) {
    let rest = url.split("://").nth(1).unwrap();
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host, port.parse().unwrap())
}

/// `PING` over TLS with `config`: the answer, or why the handshake failed.
async fn ping_over_tls(
    host: &str,
    port: u16,
    config: rustls::ClientConfig,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// A PostgreSQL of the test's own with TLS on (the certificate names only
/// `localhost`), stopped on drop.
struct TlsPostgres {
    bindir: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `initdb` and `pg_ctl` refuse to run as root: run them as `postgres`.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bindir() -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("PostgreSQL server binaries (`make test` installs them)")
}

fn start_tls_postgres(dir: &Path) -> TlsPostgres {
    let bindir = pg_bindir();
    let data = dir.join("pg");
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    // The server refuses a key others can read.
    Command::new("chmod")
        .args(["600"])
        .arg(dir.join("server.key"))
        .status()
        .unwrap();
    let ok = as_postgres(&bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "initdb");
    let port = free_port();
    let options = format!(
        "-p {port} -k {data} -c listen_addresses=localhost -c fsync=off -c ssl=on \
         -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key",
        data = data.display(),
        dir = dir.display()
    );
    let server = TlsPostgres { bindir, data, port };
    let ok = as_postgres(&server.bindir.join("pg_ctl"))
        .arg("-D")
        .arg(&server.data)
        .arg("-l")
        .arg(server.data.join("server.log"))
        .args(["-w", "-t", "60", "-o", &options, "start"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "pg_ctl start with TLS");
    server
}

/// A pool of one for `url` (with `ca` as DATABASE_CA_CERT), 5 s timeouts.
fn pg_pool(url: &str, ca: Option<&Path>) -> paycache::db::Db {
    paycache::db::Db::new(&paycache::config::DatabaseConfig {
        url: paycache::config::Secret::new(url),
        secret_arn: None,
        credentials: None,
        ca_cert: ca.map(Path::to_path_buf),
        pool_size: 1,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// Whether this session uses TLS.
const SESSION_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// Whether a pool built for `conninfo` (with `ca` as DATABASE_CA_CERT)
/// connects, and if so whether its session uses TLS.
async fn pg_session(conninfo: &str, ca: Option<&Path>) -> Option<bool> {
    let client = pg_pool(conninfo, ca).client().await.ok()?;
    Some(client.query_one(SESSION_SSL, &[]).await.unwrap().get(0))
}

async fn session_ssl(client: &tokio_postgres::Client) -> Option<bool> {
    Some(client.query_one(SESSION_SSL, &[]).await.unwrap().get(0))
}

/// `sslmode` as libpq means it, against a TLS PostgreSQL whose certificate
/// is signed by a private CA (as Debian's default self-signed one is by
/// nobody the client trusts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_means_what_it_means_to_libpq() {
    let dir = TempDir::new("pgtls");
    certificates(dir.path());
    let pg = start_tls_postgres(dir.path());
    let ca = dir.path().join("ca.pem");
    let at = |host: &str, mode: &str| {
        format!(
            "host={host} port={} user=postgres dbname=postgres{mode}",
            pg.port
        )
    };

    // What every PostgreSQL client does with a certificate it cannot
    // verify: the default (prefer) and require encrypt without checking.
    assert_eq!(pg_session(&at("localhost", ""), None).await, Some(true));
    assert_eq!(
        pg_session(&at("localhost", " sslmode=require"), None).await,
        Some(true)
    );
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full",
        pg.port
    );
    // verify-full with the CA that signed it, in both spellings of the
    // connection string; verify-ca ignores the host name.
    assert_eq!(
        pg_session(&at("localhost", " sslmode=verify-full"), Some(&ca)).await,
        Some(true)
    );
    assert_eq!(pg_session(&url, Some(&ca)).await, Some(true));
    assert_eq!(
        pg_session(&at("127.0.0.1", " sslmode=verify-ca"), Some(&ca)).await,
        Some(true)
    );
    // require with a root CA configured verifies the chain, as libpq's
    // does (as verify-ca: the host name is not compared) …
    assert_eq!(
        pg_session(&at("127.0.0.1", " sslmode=require"), Some(&ca)).await,
        Some(true)
    );
    // … and so refuses a certificate the CA did not sign, which require
    // without a CA (above) accepts.
    let (session, logs) = test_support::logs::capture(pg_session(
        &at("localhost", " sslmode=require"),
        Some(&dir.path().join("other-ca.pem")),
    ))
    .await;
    assert_eq!(
        session, None,
        "require with a root CA must verify the chain"
    );
    assert!(logs.contains("UnknownIssuer"), "{logs}");
    // disable: plain text even though the server offers TLS.
    assert_eq!(
        pg_session(&at("localhost", " sslmode=disable"), None).await,
        Some(false)
    );

    // verify-full and verify-ca refuse what does not verify, and the log
    // says why and what to change. A client with verification off (the
    // broken variant) connects to the same server with the same settings,
    // over TLS: only verification refuses it.
    let other = dir.path().join("other-ca.pem");
    // The advice is the one for the cause: a name mismatch is not fixed by
    // another CA (the first fix of this check: the hint looked for rustls's
    // old wording, and a name mismatch got the CA advice).
    let wrong_ca = "signed by a CA not trusted here";
    let wrong_name = "the certificate does not name this host";
    for (what, conninfo, ca, cause, advice) in [
        (
            "verify-full, a CA that did not sign the certificate",
            at("localhost", " sslmode=verify-full"),
            Some(other.as_path()),
            "UnknownIssuer",
            wrong_ca,
        ),
        (
            "verify-full, a host name the certificate does not name",
            at("127.0.0.1", " sslmode=verify-full"),
            Some(ca.as_path()),
            "not valid for name",
            wrong_name,
        ),
        (
            "verify-full, the system roots (a private CA is not among them)",
            at("localhost", " sslmode=verify-full"),
            None,
            "UnknownIssuer",
            wrong_ca,
        ),
        (
            "verify-ca, a CA that did not sign the certificate",
            at("localhost", " sslmode=verify-ca"),
            Some(other.as_path()),
            "UnknownIssuer",
            wrong_ca,
        ),
    ] {
        let (session, logs) = test_support::logs::capture(pg_session(&conninfo, ca)).await;
        assert_eq!(session, None, "{what}");
        assert!(
            logs.contains(cause),
            "{what}: the log should say why:\n{logs}"
        );
        assert!(
            logs.contains("certificate verify failed") && logs.contains(advice),
            "{what}: the log should say what to change ({advice}):\n{logs}"
        );

        let plain_conninfo = conninfo
            .replace(" sslmode=verify-full", " sslmode=require")
            .replace(" sslmode=verify-ca", " sslmode=require");
        let unverified = tokio_postgres::connect(
            &plain_conninfo,
            tokio_postgres_rustls::MakeRustlsConnect::new(not_verifying()),
        )
        .await;
        let (client, connection) =
            unverified.unwrap_or_else(|e| panic!("{what}, verification off: {e}"));
        tokio::spawn(connection);
        assert_eq!(
            session_ssl(&client).await,
            Some(true),
            "{what}, verification off"
        );
    }
    // Not a libpq sslmode: refused at configuration.
    let bad = paycache::config::DatabaseConfig {
        url: paycache::config::Secret::new(at("localhost", " sslmode=sometimes")),
        secret_arn: None,
        credentials: None,
        ca_cert: None,
        pool_size: 1,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    };
    assert!(paycache::db::Db::new(&bad).is_err());

    // sslmode=require to a server without TLS: no silent plain text, and
    // the log says so.
    let plain = std::env::var("PAYCACHE_TEST_PG").unwrap();
    let (session, logs) =
        test_support::logs::capture(pg_session(&format!("{plain} sslmode=require"), None)).await;
    assert_eq!(session, None);
    assert!(logs.contains("does not offer TLS"), "{logs}");
    // verify-ca and verify-full to a server without TLS refuse likewise.
    for mode in ["verify-ca", "verify-full"] {
        let (session, logs) =
            test_support::logs::capture(pg_session(&format!("{plain} sslmode={mode}"), Some(&ca)))
                .await;
        assert_eq!(session, None, "{mode} to a server without TLS");
        assert!(logs.contains("does not offer TLS"), "{mode}: {logs}");
    }
    // The broken variant the test must tell apart: that same server without
    // `require` is reachable in plain text.
    assert_eq!(pg_session(&plain, None).await, Some(false));
}

/// A connection the pooler refuses is reported with the pooler's own
/// reason and SQLSTATE — PgBouncer refusing the startup parameter
/// `options`, as RDS Proxy refuses it ("Feature not supported") — by the
/// pool and by `paycache-dev check`'s diagnosis, and neither names the
/// password. The same URL without `options` is served: the refusal is for
/// that reason alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_servers_reason() {
    let pooler = std::env::var("PAYCACHE_TEST_PG_POOLER")
        .expect("PAYCACHE_TEST_PG_POOLER: run the tests with `make test`");
    let db = |extra: &str| {
        pg_pool(
            &format!("{pooler} dbname=postgres password=pw-never-shown{extra}"),
            None,
        )
    };
    let refused = db(" options='-c statement_timeout=1000'");
    let err = refused.client().await.unwrap_err().to_string();
    let diagnosis = refused.diagnose().await.unwrap_err();
    for said in [&err, &diagnosis] {
        assert!(
            said.contains("unsupported startup parameter: options") && said.contains("08P01"),
            "{said}"
        );
        assert!(!said.contains("pw-never-shown"), "{said}");
    }
    let served = db("").client().await.unwrap();
    let one: i32 = served.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
