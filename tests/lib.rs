//! Helpers shared by the workspace-level integration tests.
#![allow(clippy::unwrap_used)]

use paycache::App;
use paycache::config::RedisMode;
use test_support::{TestDb, TestRedis};

/// A test world: its own key prefix on a real Redis of the given mode, its
/// own PostgreSQL schema, and the `App` every function would build.
pub struct World {
    pub app: App,
    pub redis: TestRedis,
    pub db: TestDb,
}

impl World {
    pub async fn new(mode: RedisMode, extra: &[(&str, &str)]) -> Self {
        Self::with_redis(TestRedis::of_mode(mode), extra).await
    }

    pub async fn with_redis(redis: TestRedis, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::create().await;
        let app = App::new(test_support::config(&redis, &db, extra)).unwrap();
        Self { app, redis, db }
    }

    /// Another execution environment: same configuration, its own
    /// connection, its own circuit breaker.
    pub fn another_environment(&self) -> App {
        App::new(self.app.config.clone()).unwrap()
    }

    /// Keys under this world's prefix (SCAN on every primary in cluster mode).
    pub async fn keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.app.keys.prefix());
        let mut conn = self.redis.raw().await;
        let mut found = Vec::new();
        match &mut conn {
            test_support::RawRedis::Standalone(c) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(c)
                    .await
                    .unwrap();
                found.extend(keys);
            }
            test_support::RawRedis::Cluster(c) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .route_command_all_primaries(c)
                    .await;
                found.extend(keys);
            }
        }
        found.sort();
        found
    }
}

/// Runs one test body against standalone Redis and against the cluster.
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$name(paycache::config::RedisMode::Standalone).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(paycache::config::RedisMode::Cluster).await;
            }
        }
    };
}

/// Extension to run `KEYS` on every primary of a cluster connection.
pub trait AllPrimaries {
    fn route_command_all_primaries(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
    ) -> impl std::future::Future<Output = Vec<String>>;
}

impl AllPrimaries for redis::Cmd {
    async fn route_command_all_primaries(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
    ) -> Vec<String> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
        let value = conn
            .route_command(
                self.clone(),
                RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::CombineArrays),
                )),
            )
            .await
            .unwrap();
        redis::from_redis_value(value).unwrap()
    }
}

/// Asserts that no message is pending on `channel`: waits `quiet`, then
/// publishes a sentinel and requires it to be the next message. A bare
/// quiet window passes when delivery is merely slow or the subscriber is
/// dead; the sentinel proves the subscriber was live and delivering, and
/// one channel's messages reach a subscriber in order.
pub async fn assert_no_message_before_sentinel<S>(
    redis: &TestRedis,
    channel: &str,
    messages: &mut S,
    what: &str,
) where
    S: futures_util::Stream<Item = redis::Msg> + Unpin,
{
    use futures_util::StreamExt;
    let quiet = std::time::Duration::from_millis(300);
    if let Ok(Some(msg)) = tokio::time::timeout(quiet, messages.next()).await {
        panic!("{what}: unexpected {:?}", msg.get_payload::<String>());
    }
    let sentinel = format!("sentinel-{:08x}", test_support::random_u32());
    let mut conn = redis.raw().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(&sentinel)
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: the sentinel never arrived (subscriber dead?)"))
        .unwrap();
    assert_eq!(
        next.get_payload::<String>().unwrap(),
        sentinel,
        "{what}: a message came before the sentinel"
    );
}

/// A subscriber to `channel` on the first node (classic Pub/Sub reaches
/// every node of a cluster), and its messages.
pub async fn subscribe(
    redis: &TestRedis,
    channel: &str,
) -> impl futures_util::Stream<Item = redis::Msg> + Unpin + use<> {
    let first_node = redis.urls().split(',').next().unwrap().to_owned();
    let mut pubsub = redis::Client::open(first_node)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(channel).await.unwrap();
    pubsub.into_on_message()
}

/// Every permission a service may hold.
pub const ALL_PERMISSIONS: [&str; 4] = [
    "profiles.read.any",
    "wallets.read.any",
    "wallets.balance.write",
    "ratelimit.check",
];

pub fn token_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn with_claims(
    req: lambda_http::Request,
    claims: std::collections::HashMap<String, String>,
    scopes: Option<Vec<String>>,
) -> lambda_http::Request {
    use lambda_http::RequestExt;
    use lambda_http::aws_lambda_events::apigw::{
        ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription,
        ApiGatewayV2httpRequestContext,
    };
    let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
    jwt.claims = claims;
    jwt.scopes = scopes;
    let mut auth = ApiGatewayRequestAuthorizer::default();
    auth.jwt = Some(jwt);
    let mut ctx = ApiGatewayV2httpRequestContext::default();
    ctx.authorizer = Some(auth);
    req.with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx))
}

fn in_an_hour() -> String {
    (time::OffsetDateTime::now_utc().unix_timestamp() + 3600).to_string()
}

/// `req` as API Gateway's JWT authorizer delivers it for a service
/// principal (client credentials) with `permissions` as scopes; each call
/// is a new client, so its rate limits are its own.
pub fn as_service(req: lambda_http::Request, permissions: &[&str]) -> lambda_http::Request {
    as_client(req, &format!("svc{}", token_id()), permissions)
}

/// [`as_service`] for the client `client`.
pub fn as_client(
    req: lambda_http::Request,
    client: &str,
    permissions: &[&str],
) -> lambda_http::Request {
    as_client_token(req, client, &token_id(), permissions)
}

/// [`as_client`] with the token `jti` (the same token on every request).
pub fn as_client_token(
    req: lambda_http::Request,
    client: &str,
    jti: &str,
    permissions: &[&str],
) -> lambda_http::Request {
    let scopes: Vec<String> = permissions
        .iter()
        .map(|p| format!("paycache/{p}"))
        .collect();
    let claims = [
        ("sub", client.to_owned()),
        ("client_id", client.to_owned()),
        ("token_use", "access".to_owned()),
        ("jti", jti.to_owned()),
        ("exp", in_an_hour()),
        ("iss", "https://auth.paycache.test".to_owned()),
        ("scope", scopes.join(" ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    with_claims(req, claims, Some(scopes))
}

/// A signed-in user: the session `sessions::create` made and the claims of
/// their access token.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: String,
    pub session: String,
    pub jti: String,
}

impl SignedIn {
    /// `req` with this user's token, as API Gateway's JWT authorizer
    /// delivers it.
    pub fn on(&self, req: lambda_http::Request) -> lambda_http::Request {
        let claims = [
            ("sub", self.user.clone()),
            ("sid", self.session.clone()),
            ("client_id", "paycache-web".to_owned()),
            ("token_use", "access".to_owned()),
            ("jti", self.jti.clone()),
            ("exp", in_an_hour()),
            ("iss", "https://auth.paycache.test".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        with_claims(req, claims, None)
    }
}

impl World {
    /// Signs `user` in with `permissions` (a session through the same code
    /// the sign-in uses).
    pub async fn sign_in(&self, user: &str, permissions: &[&str]) -> SignedIn {
        let session = paycache::sessions::Session {
            user_id: paycache::keys::UserId::parse(user).unwrap(),
            email: format!("{user}@example.test"),
            roles: vec!["customer".into()],
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            last_activity: time::OffsetDateTime::now_utc(),
            ip_address: None,
            device_info: None,
        };
        let sid = paycache::sessions::create(&self.app.sessions, &session)
            .await
            .unwrap();
        SignedIn {
            user: user.to_owned(),
            session: sid.to_string(),
            jti: token_id(),
        }
    }
}

/// `req` with these claims replaced (or added) in what API Gateway's JWT
/// authorizer delivered.
pub fn with_claim_values(
    mut req: lambda_http::Request,
    pairs: &[(&str, String)],
) -> lambda_http::Request {
    use lambda_http::RequestExt;
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(mut ctx)) =
        req.request_context_ref().cloned()
    {
        if let Some(jwt) = ctx.authorizer.as_mut().and_then(|a| a.jwt.as_mut()) {
            for (k, v) in pairs {
                jwt.claims.insert((*k).to_owned(), v.clone());
            }
        }
        req = req.with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx));
    }
    req
}

/// A claim of what API Gateway's JWT authorizer delivered.
pub fn claim(req: &lambda_http::Request, name: &str) -> Option<String> {
    use lambda_http::RequestExt;
    match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.claims.get(name).cloned()),
        _ => None,
    }
}

const TEST_KEY: &[u8] = include_bytes!("fixtures/jwt-test-key.pem");
const TEST_JWKS: &str = include_str!("fixtures/jwks.json");
const TEST_ISSUER: &str = "https://auth.paycache.test";

/// The token settings of the test key pair (`tests/fixtures`).
pub fn auth_env() -> Vec<(String, String)> {
    vec![
        ("AUTH_ISSUER".into(), TEST_ISSUER.into()),
        ("AUTH_AUDIENCE".into(), "paycache-web".into()),
        ("AUTH_JWKS".into(), TEST_JWKS.into()),
    ]
}

/// A signed access token (RS256, the test key) with the same claims
/// [`SignedIn::on`] puts in the event.
pub fn token_for(who: &SignedIn) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "sub": who.user, "sid": who.session, "jti": who.jti, "iss": TEST_ISSUER,
        "client_id": "paycache-web", "token_use": "access",
        "iat": now, "nbf": now - 10, "exp": now + 3600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY).unwrap(),
    )
    .unwrap()
}

/// A signed service access token (RS256, the test key, client credentials)
/// with these scopes (`paycache/<permission>`) and `exp`.
pub fn service_token(client: &str, jti: &str, permissions: &[&str], exp: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let scopes: Vec<String> = permissions
        .iter()
        .map(|p| format!("paycache/{p}"))
        .collect();
    let claims = serde_json::json!({
        "sub": client, "client_id": client, "jti": jti, "iss": TEST_ISSUER,
        "token_use": "access", "scope": scopes.join(" "),
        "iat": now, "nbf": now - 10, "exp": exp,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY).unwrap(),
    )
    .unwrap()
}

impl World {
    /// This world's `App` with the test key pair's verifier (as
    /// `App::from_env` builds it when `AUTH_ISSUER` is set).
    pub fn with_verifier(&self) -> App {
        let vars: std::collections::HashMap<String, String> = auth_env().into_iter().collect();
        let config = paycache::auth::AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
        let mut app = self.app.clone();
        app.verifier = Some(std::sync::Arc::new(
            paycache::auth::Verifier::new(config).unwrap(),
        ));
        app
    }
}

impl World {
    /// `who`'s session idles out: Redis no longer holds it (its TTL ran out)
    /// and PostgreSQL last saw it longer ago than the idle timeout.
    pub async fn idle_out(&self, who: &SignedIn) {
        let user = paycache::keys::UserId::parse(&who.user).unwrap();
        let sid = paycache::keys::SessionId::parse(&who.session).unwrap();
        let mut raw = self.redis.raw().await;
        let _: i64 = redis::cmd("DEL")
            .arg(self.app.keys.session(&user, &sid).to_string())
            .query_async(&mut raw)
            .await
            .unwrap();
        self.db
            .client()
            .await
            .execute(
                "UPDATE sessions SET last_seen_at = now() - interval '1 day' WHERE session_id = $1",
                &[&who.session],
            )
            .await
            .unwrap();
    }
}
