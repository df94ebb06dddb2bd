//! The real-time tests' world: a [`World`] (Redis of either mode, its own
//! PostgreSQL schema), an execution environment's `App`, and the local
//! WebSocket gateway (`paycache-ws-gateway`) running `$connect` through the
//! same authorizer and `ws-connections` handlers the functions run
//! (in-process), with its test controls; sign-ins with RS256 access tokens
//! as Cognito issues them; WebSocket clients and the frames they receive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::world::World;
use crate::{TestRedis, seed_user_id};
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use paycache::App;
use paycache::auth::{AuthConfig, Verifier, authorize};
use paycache::config::RedisMode;
use paycache::delivery::{self, Management, Sender};
use paycache::events::{cache_invalidation, websocket};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const KEY: &[u8] = include_bytes!("../../../tests/fixtures/jwt-test-key.pem");
pub const JWKS: &str = include_str!("../../../tests/fixtures/jwks.json");
pub const ISS: &str = "https://auth.paycache.test";
pub const AUD: &str = "paycache-web";

pub fn verifier() -> Verifier {
    let vars: HashMap<&str, String> = [
        ("AUTH_ISSUER", ISS.to_owned()),
        ("AUTH_AUDIENCE", AUD.to_owned()),
        ("AUTH_JWKS", JWKS.to_owned()),
    ]
    .into_iter()
    .collect();
    Verifier::new(AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()).unwrap()
}

pub struct Rig {
    pub w: World,
    pub app: Arc<App>,
    pub gateway: paycache_ws_gateway::Handle,
}

impl Rig {
    pub async fn new(mode: RedisMode) -> Self {
        Self::with(mode, &[]).await
    }

    pub async fn with(mode: RedisMode, extra: &[(&str, &str)]) -> Self {
        Self::with_redis(TestRedis::of_mode(mode), extra).await
    }

    /// On the given Redis (a test's own, which it may stop or pause).
    pub async fn with_redis(redis: TestRedis, extra: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("WS_REDELIVER_AFTER_MS", "500"),
            ("WS_SENDER_BLOCK_MS", "50"),
            // Aborted senders' partitions are taken over within 1 s.
            ("WS_PARTITION_LEASE_MS", "1000"),
        ];
        env.extend_from_slice(extra);
        let w = World::with_redis(redis, &env).await;
        let app = Arc::new(w.another_environment());
        let verifier = Arc::new(verifier());
        let (a, v) = (app.clone(), verifier.clone());
        let invoke: paycache_ws_gateway::Invoke = Arc::new(move |function, event| {
            let (app, verifier) = (a.clone(), v.clone());
            Box::pin(async move {
                match function {
                    "authorizer" => Ok(authorize(&*app, &verifier, &event).await),
                    "ws-connections" => Ok(websocket(&app, &event).await),
                    other => Err(format!("no function {other}")),
                }
            })
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = paycache_ws_gateway::serve(
            listener,
            invoke,
            paycache_ws_gateway::Options::new(
                paycache_ws_gateway::sigv4::Expected::from_env(),
                true,
            ),
        )
        .unwrap();
        Self { w, app, gateway }
    }

    pub async fn sender(&self, attempts: u32) -> Sender {
        let m = Management::new(
            &self.gateway.management_url(),
            attempts,
            Duration::from_secs(5),
        )
        .await;
        Sender::new(m)
    }

    /// Signs user `n` in and returns their access token.
    pub async fn token(&self, n: u64) -> String {
        self.token_for(n, 600).await.0
    }

    /// Signs user `n` in: an access token valid `lifetime_secs`, and the
    /// sign-in.
    pub async fn token_for(&self, n: u64, lifetime_secs: i64) -> (String, crate::tokens::SignedIn) {
        let user = seed_user_id(n);
        let signed = self.w.sign_in(&user, &[]).await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({"sub": user, "sid": signed.session, "jti": signed.jti, "iss": ISS,
                            "client_id": AUD, "token_use": "access",
                            "iat": now, "nbf": now - 10, "exp": now + lifetime_secs});
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-key-1".into());
        (
            encode(&header, &claims, &EncodingKey::from_rsa_pem(KEY).unwrap()).unwrap(),
            signed,
        )
    }

    pub async fn connect(&self, token: &str) -> Ws {
        self.connect_with(token, "").await
    }

    /// Connects with more query parameters (`&resume=…`).
    pub async fn connect_with(&self, token: &str, query: &str) -> Ws {
        let url = format!("{}?token={token}{query}", self.gateway.ws_url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws
    }

    /// A test control of the gateway (`/_gateway/…`).
    pub async fn control(&self, path: &str) {
        http_post(&format!(
            "{}/_gateway/{path}",
            self.gateway.management_url()
        ))
        .await;
    }

    /// The gateway's `/_gateway/stats`.
    pub async fn stats(&self) -> Value {
        self.stats_of("stats").await
    }

    /// A `/_gateway/…` read.
    pub async fn stats_of(&self, path: &str) -> Value {
        let url = format!("{}/_gateway/{path}", self.gateway.management_url());
        let req = http::Request::get(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = hyper_client().request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits (up to 5 s) until the gateway holds `n` posts.
    pub async fn until_held(&self, n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stats().await["held"].as_u64() == Some(n) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Runs a sender in the background until `stop` is dropped.
    pub fn spawn_sender(&self, mut sender: Sender) -> tokio::task::JoinHandle<delivery::Report> {
        let app = self.app.clone();
        tokio::spawn(async move {
            delivery::run(
                &app.deliveries,
                &mut sender,
                Instant::now() + Duration::from_secs(120),
            )
            .await
        })
    }

    pub async fn invalidate(&self, event: Value) {
        let r = cache_invalidation(&self.app.invalidation, &event)
            .await
            .unwrap();
        assert_eq!(r["status"], "ok", "{r}");
    }
}

/// The next text frame within `wait`, parsed.
pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Frames until one satisfies `want` (returned) or `wait` passes (None).
pub async fn frame_where(
    ws: &mut Ws,
    wait: Duration,
    want: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let f = next_frame(ws, left).await?;
        if want(&f) {
            return Some(f);
        }
    }
}

pub async fn http_post(url: &str) {
    let client = hyper_client();
    let req = http::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = client.request(req).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
}

pub fn hyper_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}
