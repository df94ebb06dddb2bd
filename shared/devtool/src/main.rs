//! `paycache-dev`: the developer tool.
//!
//! - `migrate | seed | migrate-and-seed`: applies the schema and loads the
//!   deterministic local data set into `DATABASE_URL`.
//! - `login --user <n | user id> [--permission <p>]...`: signs a seed user
//!   in — creates their session (`session:{sid}`) in the configured Redis
//!   through the same code the deployed sign-in uses
//!   (`paycache::sessions::create`) — and prints an access token for it.
//! - `service-token --client <id> [--scope <permission>]...`: prints a
//!   service principal's token (client credentials: no session; its
//!   permissions are its scopes, `paycache/<permission>`).
//! - `token --user <n> --session-id <id>`: a token for a session that
//!   exists (one the sign-in trigger created: the end-to-end journey).
//! - `check`: connects to `REDIS_URL` and `DATABASE_URL` and says what is
//!   wrong in words (a refused password, an unreachable host, TLS),
//!   without printing either URL or a secret; `make run` runs it first.
//! - `init-check <function>`: runs that function's initialisation against
//!   the environment; `aws-calls`: the AWS operations the code can make
//!   (JSON). The deployment contract test (`tests/deploy/contract.py`) runs
//!   both against `template.yaml`.
//! - Both take `--expires-in <seconds>` (1–86400; default 3600); `login`
//!   takes `--session-id <id>` to create the session under a fixed id (the
//!   sample events in `events/` name `e2e-ws-session-1`).
//!
//! Tokens are signed with the local development key — RS256 with
//! `AUTH_DEV_SIGNING_KEY_FILE` (PEM; `kid` from `AUTH_DEV_KEY_ID`), or HS256
//! with `AUTH_HS256_SECRET` — for `AUTH_ISSUER`, valid for an hour. A user's
//! token is shaped as a Cognito access token (`client_id` = the first of
//! `AUTH_AUDIENCE`, `token_use: access`, plus `sid`); `--client` must be one
//! of `AUTH_AUDIENCE`, as an API Gateway JWT authorizer's audience lists the
//! app clients it accepts. Only what prints the token goes to stdout.

use std::process::ExitCode;

use paycache::config::{DatabaseConfig, Secret};
use paycache::db::Db;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().cloned().unwrap_or_default();
    let result = match command.as_str() {
        "migrate" => database(true, false).await,
        "seed" => database(false, true).await,
        "migrate-and-seed" => database(true, true).await,
        "login" => login(&args[1..]).await,
        "service-token" => service_token(&args[1..]),
        "init-check" => init_check(&args[1..]).await,
        "aws-calls" => aws_calls(),
        "permissions" => permissions(),
        "check" => check().await,
        "token" => token(&args[1..]),
        _ => Err(
            "usage: paycache-dev migrate | seed | migrate-and-seed\n       \
             paycache-dev login --user <n | user id> [--permission <p>]... [--expires-in <secs>] [--session-id <id>]\n       \
             paycache-dev service-token --client <id> [--scope <permission>]... [--expires-in <secs>]\n       \
             paycache-dev token --user <n | user id> --session-id <id> [--expires-in <secs>]\n       \
             paycache-dev init-check <function> [--names-only] | aws-calls | permissions | check"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("paycache-dev: {why}");
            ExitCode::from(2)
        }
    }
}

/// `check`: Redis and PostgreSQL, each reached once.
async fn check() -> Result<(), String> {
    let config = paycache::config::Config::from_lookup(|name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    })
    .map_err(|e| e.to_string())?;
    let redis = paycache::connection::Redis::new(&config.redis, config.breaker)
        .map_err(|e| format!("Redis: {e}"))?;
    let db = Db::new(&config.database).map_err(|e| e.to_string())?;
    let (r, d) = tokio::join!(redis.diagnose(), db.diagnose());
    match (r, d) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(r), Ok(())) => Err(r),
        (Ok(()), Err(d)) => Err(d),
        (Err(r), Err(d)) => Err(format!("{r}\npaycache-dev: {d}")),
    }
}

async fn database(migrate: bool, seed: bool) -> Result<(), String> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("DATABASE_URL is required")?;
    let db = Db::new(&DatabaseConfig {
        url: Secret::new(url),
        pool_size: 1,
        connect_timeout: std::time::Duration::from_secs(10),
        statement_timeout: std::time::Duration::from_secs(600),
        secret_arn: None,
        credentials: None,
        ca_cert: std::env::var_os("DATABASE_CA_CERT").map(Into::into),
    })
    .map_err(|e| e.to_string())?;
    let chain = |e: &dyn std::error::Error| {
        format!(
            "{e} ({:?})",
            std::error::Error::source(e).map(|s| s.to_string())
        )
    };
    if migrate {
        // The functions' statement timeout, set on the database role (the
        // tool's own connection runs without one: a migration may be long).
        let (default, least, most) = paycache::config::STATEMENT_TIMEOUT_MS;
        let role_timeout = match std::env::var("DATABASE_STATEMENT_TIMEOUT_MS") {
            Ok(v) if !v.is_empty() => v
                .parse::<u64>()
                .ok()
                .filter(|ms| (least..=most).contains(ms))
                .ok_or("DATABASE_STATEMENT_TIMEOUT_MS: a number of milliseconds, 10 to 600000")?,
            _ => default,
        };
        let n = db
            .migrate_with_timeout(std::time::Duration::from_millis(role_timeout))
            .await
            .map_err(|e| format!("migration failed: {}", chain(&e)))?;
        println!("paycache-dev: {n} migration(s) applied");
    }
    if seed {
        let started = std::time::Instant::now();
        db.seed_local()
            .await
            .map_err(|e| format!("seeding failed: {}", chain(&e)))?;
        println!("paycache-dev: seed data loaded in {:?}", started.elapsed());
    }
    Ok(())
}

/// `--name value` pairs; a name may repeat.
fn options<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].as_str())
        .collect()
}

fn required_env(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} is required"))
}

/// The seed user `n` (`00000000-0000-4000-8000-<n>`), or a user id.
fn seed_user(raw: &str) -> Result<paycache::keys::UserId, String> {
    if let Ok(n) = raw.parse::<u64>() {
        let id = format!("00000000-0000-4000-8000-{n:012x}");
        return paycache::keys::UserId::parse(&id).map_err(|e| e.to_string());
    }
    paycache::keys::UserId::parse(raw).map_err(|e| format!("--user: the {e}"))
}

async fn login(args: &[String]) -> Result<(), String> {
    let [raw] = options(args, "--user")[..] else {
        return Err("login needs --user <n | user id>".into());
    };
    let user = seed_user(raw)?;
    let permissions: Vec<String> = options(args, "--permission")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let audience = required_env("AUTH_AUDIENCE")?;
    let client = audience
        .split(',')
        .map(str::trim)
        .find(|a| !a.is_empty())
        .ok_or("AUTH_AUDIENCE is empty")?
        .to_owned();
    let app = paycache::App::from_env()
        .await
        .map_err(|e| format!("cannot build the app: {e}"))?;
    // The design's session fields, from the user's row.
    let profile = paycache::profile::load_profile(&app.db, &user)
        .await
        .map_err(|e| format!("cannot read the user: {e}"))?
        .ok_or_else(|| format!("no user {user} (run `paycache-dev seed`)"))?;
    let session = paycache::sessions::Session {
        user_id: user,
        email: profile.email,
        roles: vec!["customer".into()],
        permissions,
        last_activity: time::OffsetDateTime::now_utc(),
        ip_address: Some("127.0.0.1".into()),
        device_info: Some("paycache-dev login".into()),
    };
    // `--session-id <id>`: a session under a fixed id (the sample events in
    // events/ name one: `e2e-ws-session-1`).
    let sid = match options(args, "--session-id")[..] {
        [] => paycache::sessions::create(&app.sessions, &session).await,
        [id] => {
            let id = paycache::keys::SessionId::parse(id)
                .map_err(|e| format!("--session-id: the {e}"))?;
            paycache::sessions::create_as(&app.sessions, &id, &session)
                .await
                .map(|()| id)
        }
        _ => return Err("--session-id may be given once".into()),
    }
    .map_err(|e| format!("cannot create the session: {e}"))?;
    let claims = serde_json::json!({
        "sub": user.to_string(),
        "sid": sid.to_string(),
        "client_id": client,
        "token_use": "access",
        "scope": "openid",
    });
    println!("{}", sign(claims, lifetime(args)?)?);
    Ok(())
}

/// `--expires-in <seconds>`: the token's lifetime (default an hour).
fn lifetime(args: &[String]) -> Result<i64, String> {
    match options(args, "--expires-in")[..] {
        [] => Ok(3600),
        [raw] => raw
            .parse::<i64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .ok_or_else(|| "--expires-in must be 1 to 86400 seconds".to_owned()),
        _ => Err("--expires-in may be given once".into()),
    }
}

/// `init-check <function> [--names-only]`: runs the function's init against
/// the environment (the deployment contract test's first check).
async fn init_check(args: &[String]) -> Result<(), String> {
    let function = args.first().ok_or("init-check needs a function name")?;
    if args.iter().any(|a| a == "--names-only") {
        return paycache::edge::functions::FUNCTIONS
            .contains(&function.as_str())
            .then_some(())
            .ok_or_else(|| format!("no function {function}"));
    }
    paycache::edge::functions::init_check(function).await?;
    println!("{function}: initialised");
    Ok(())
}

/// `aws-calls`: every AWS operation the code can make, as JSON.
/// `permissions`: every permission a route may require, the scope prefix
/// that grants one to a service, the groups that grant them to users, and
/// the headers a browser's CORS request may send and read (JSON, for the
/// deployment contract test).
fn permissions() -> Result<(), String> {
    let groups: serde_json::Map<String, serde_json::Value> = paycache::sessions::GROUP_PERMISSIONS
        .iter()
        .map(|(g, p)| ((*g).to_owned(), serde_json::json!(p)))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "permissions": paycache::identity::permissions::ALL,
            "scope_prefix": paycache::identity::SCOPE_PREFIX,
            "groups": groups,
            "cors_request_headers": paycache::http::CORS_REQUEST_HEADERS,
            "cors_exposed_headers": paycache::http::CORS_EXPOSED_HEADERS,
            "cors_allowed_methods": paycache::http::CORS_ALLOWED_METHODS,
            "cors_max_age_secs": paycache::http::CORS_MAX_AGE_SECS,
        })
    );
    Ok(())
}

fn aws_calls() -> Result<(), String> {
    let calls: Vec<serde_json::Value> = paycache::edge::functions::aws_calls()
        .iter()
        .map(|c| {
            let functions: Vec<&str> = if c.functions == ["*"] {
                paycache::edge::functions::FUNCTIONS.to_vec()
            } else {
                c.functions.to_vec()
            };
            serde_json::json!({
                "site": c.site, "functions": functions, "service": c.service,
                "action": c.action, "resources": c.resources, "when_env": c.when_env,
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(calls));
    Ok(())
}

/// `token --user <n | user id> --session-id <sid>`: an access token for a
/// session that exists already (one the sign-in trigger created).
fn token(args: &[String]) -> Result<(), String> {
    let [raw] = options(args, "--user")[..] else {
        return Err("token needs --user <n | user id>".into());
    };
    let [sid] = options(args, "--session-id")[..] else {
        return Err("token needs --session-id <id>".into());
    };
    let user = seed_user(raw)?;
    let sid =
        paycache::keys::SessionId::parse(sid).map_err(|e| format!("--session-id: the {e}"))?;
    let audience = required_env("AUTH_AUDIENCE")?;
    let client = audience
        .split(',')
        .map(str::trim)
        .find(|a| !a.is_empty())
        .ok_or("AUTH_AUDIENCE is empty")?
        .to_owned();
    let claims = serde_json::json!({
        "sub": user.to_string(),
        "sid": sid.to_string(),
        "client_id": client,
        "token_use": "access",
        "scope": "openid",
    });
    println!("{}", sign(claims, lifetime(args)?)?);
    Ok(())
}

fn service_token(args: &[String]) -> Result<(), String> {
    let [client] = options(args, "--client")[..] else {
        return Err("service-token needs --client <id>".into());
    };
    let scopes: Vec<String> = options(args, "--scope")
        .into_iter()
        .map(|s| format!("{}{s}", paycache::identity::SCOPE_PREFIX))
        .collect();
    let claims = serde_json::json!({
        "sub": client,
        "client_id": client,
        "token_use": "access",
        "scope": scopes.join(" "),
    });
    println!("{}", sign(claims, lifetime(args)?)?);
    Ok(())
}

/// Adds `iss`, `iat`, `exp` (`lifetime` seconds on) and a new `jti`, and
/// signs with the local development key.
fn sign(mut claims: serde_json::Value, lifetime: i64) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(m) = claims.as_object_mut() {
        m.insert("iss".into(), required_env("AUTH_ISSUER")?.into());
        m.insert("iat".into(), now.into());
        m.insert("exp".into(), (now + lifetime).into());
        m.insert("jti".into(), format!("{:032x}", fastrand::u128(..)).into());
    }
    let (header, key) = match std::env::var("AUTH_DEV_SIGNING_KEY_FILE") {
        Ok(path) if !path.is_empty() => {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("AUTH_DEV_SIGNING_KEY_FILE cannot be read: {e}"))?;
            let key = EncodingKey::from_rsa_pem(&pem)
                .map_err(|_| "AUTH_DEV_SIGNING_KEY_FILE is not an RSA private key (PEM)")?;
            let mut header = Header::new(Algorithm::RS256);
            header.kid = std::env::var("AUTH_DEV_KEY_ID")
                .ok()
                .filter(|k| !k.is_empty());
            (header, key)
        }
        _ => {
            let secret = required_env("AUTH_HS256_SECRET")
                .map_err(|_| "AUTH_DEV_SIGNING_KEY_FILE or AUTH_HS256_SECRET is required")?;
            (
                Header::new(Algorithm::HS256),
                EncodingKey::from_secret(secret.as_bytes()),
            )
        }
    };
    encode(&header, &claims, &key).map_err(|e| format!("cannot sign: {e}"))
}
