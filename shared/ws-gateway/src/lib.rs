//! A local stand-in for API Gateway's WebSocket API, for development and
//! tests (`make run` starts it; `cargo lambda watch` has no WebSocket API).
//!
//! - `ws://127.0.0.1:<port>/?token=<JWT>` runs `$connect` as API Gateway
//!   does: the REQUEST authorizer (`authorizer`), then the `$connect` route
//!   (`ws-connections`) with the authorizer's context; the socket is
//!   accepted only if both allow it (like API Gateway: 401 without a
//!   token, 403 when the authorizer denies, the route's status when it
//!   refuses). Text frames are routed on `$request.body.action`
//!   (`{"action": "ping"}` → the `ping` route; anything else → `$default`,
//!   answered with API Gateway's "Forbidden" frame when there is no such
//!   route). Closing the socket runs `$disconnect`.
//! - The management API the sending code uses (`WS_MANAGEMENT_ENDPOINT`
//!   points the SDK here): `POST /@connections/{id}` delivers a text frame
//!   (410 `GoneException` for an unknown or closed connection, 413
//!   `PayloadTooLargeException` over 32 KB), `GET` describes it, `DELETE`
//!   closes it. Every request must be **signed** (SigV4) with the
//!   credentials the gateway was given ([`sigv4`]) — 403 otherwise, as API
//!   Gateway answers an unsigned or wrongly signed call; with none given,
//!   every management request is refused.
//! - Test controls, served **only** when started with `--test-controls`
//!   ([`Options::test_controls`]; `make run` does not):
//!   `POST /_gateway/throttle/{id}?count=n` answers the next
//!   *n* posts to that connection with 429 `LimitExceededException`;
//!   `POST /_gateway/forget/{id}` drops a connection without `$disconnect`
//!   (API Gateway's `$disconnect` is best effort); `POST
//!   /_gateway/hold/{id}` makes posts to that connection wait until `POST
//!   /_gateway/release/{id}`, which answers them 503 without delivering
//!   (a sender killed while posting: its post never happened), or with
//!   `?deliver=1` delivers them; `POST /_gateway/latency?ms=&throttle_every=`
//!   adds latency to every post and answers every n-th with 429; posts to
//!   ids starting `sink` are accepted without a socket and counted (load
//!   tests, benchmarks); `GET /_gateway/stats` counts management calls,
//!   held posts, answers by status and sink posts (per id with `?sink=1`).
//!
//! The functions are invoked through an [`Invoke`]: over HTTP, the Lambda
//! Invoke API that `cargo lambda watch` serves ([`lambda_invoker`]); in
//! tests, anything else.

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::Message;
use axum::routing::{get, post};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

mod controls;
pub mod cors;
pub mod front;
mod management;
pub mod sigv4;
mod websocket;

use controls::{forget, hold, latency, release, stats, throttle};
use management::{delete_connection, get_connection, post_to_connection, signed};
use websocket::upgrade;

/// How the gateway is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The credentials management requests must be signed with; `None`
    /// refuses every management request.
    pub management: Option<sigv4::Expected>,
    /// Serve the test controls (`/_gateway/...`). Off unless a test asks.
    pub test_controls: bool,
    /// The broken variant of the signature check, for the test that proves
    /// it: management requests are served unsigned. Compiled only with the
    /// `test-variants` feature, which only the test crate enables.
    #[cfg(feature = "test-variants")]
    pub unchecked: bool,
}

impl Options {
    /// A gateway checking management signatures against `management`,
    /// serving the test controls when `test_controls`.
    pub fn new(management: Option<sigv4::Expected>, test_controls: bool) -> Self {
        Self {
            management,
            test_controls,
            #[cfg(feature = "test-variants")]
            unchecked: false,
        }
    }
}

/// API Gateway's WebSocket frame limit.
pub const FRAME_LIMIT: usize = 32 * 1024;

/// Invokes a function by name with an event; its JSON answer or why not.
pub type Invoke = Arc<
    dyn Fn(&'static str, Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>
        + Send
        + Sync,
>;

/// Invokes functions through the Lambda Invoke API at `base` (the address
/// `cargo lambda watch` listens on).
pub fn lambda_invoker(base: &str) -> Invoke {
    let base = base.trim_end_matches('/').to_owned();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    Arc::new(move |function, event| {
        let url = format!("{base}/2015-03-31/functions/{function}/invocations");
        let client = client.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
            let request = http::Request::post(&url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "{function} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        })
    })
}

struct Conn {
    tx: mpsc::UnboundedSender<Message>,
    connected_at: i64,
    /// The authorizer's context, passed on to every route.
    authorizer: HashMap<String, Value>,
}

/// The gateway's shared state.
struct Gateway {
    invoke: Invoke,
    management: Option<sigv4::Expected>,
    #[cfg(feature = "test-variants")]
    unchecked: bool,
    addr: SocketAddr,
    connections: Mutex<HashMap<String, Conn>>,
    throttled: Mutex<HashMap<String, u32>>,
    holding: Mutex<std::collections::HashSet<String>>,
    held: AtomicU64,
    /// The client ports of the held posts (tests find the sender's process
    /// by them).
    held_ports: Mutex<Vec<u16>>,
    posts: AtomicU64,
    /// Posts being answered now, and the most there ever were at once.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
    /// Held posts to deliver (not drop) when released.
    deliver_held: Mutex<std::collections::HashSet<String>>,
    /// Posts to `sink…` ids (no socket: accepted and counted, for load
    /// tests and benchmarks), per id.
    sink: Mutex<HashMap<String, u32>>,
    /// Posts to sink ids, and distinct sink ids (kept as counters: stats
    /// are polled, and summing a large map under its lock would stall the
    /// posts).
    sink_posts: AtomicU64,
    sink_connections: AtomicU64,
    /// Added to every post (`/_gateway/latency?ms=`), as the Management
    /// API's own latency.
    latency_ms: AtomicU64,
    /// Every `n`-th post answers 429 (`/_gateway/latency?throttle_every=`).
    throttle_every: AtomicU64,
    /// Answers to posts, by status code.
    statuses: Mutex<std::collections::BTreeMap<u16, u64>>,
}

/// A running gateway.
pub struct Handle {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    state: Arc<Gateway>,
}

impl Handle {
    /// `ws://…/` for clients (add `?token=`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The management endpoint (`WS_MANAGEMENT_ENDPOINT`).
    pub fn management_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Management API calls answered so far.
    pub fn management_calls(&self) -> u64 {
        self.state.posts.load(Ordering::SeqCst)
    }

    /// The open connections' ids.
    pub async fn connection_ids(&self) -> Vec<String> {
        self.state
            .connections
            .lock()
            .await
            .keys()
            .cloned()
            .collect()
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Serves on `listener` until the task is stopped.
pub fn serve(listener: TcpListener, invoke: Invoke, options: Options) -> std::io::Result<Handle> {
    let addr = listener.local_addr()?;
    let state = Arc::new(Gateway {
        invoke,
        management: options.management,
        #[cfg(feature = "test-variants")]
        unchecked: options.unchecked,
        addr,
        connections: Mutex::new(HashMap::new()),
        throttled: Mutex::new(HashMap::new()),
        holding: Mutex::new(std::collections::HashSet::new()),
        held: AtomicU64::new(0),
        held_ports: Mutex::new(Vec::new()),
        posts: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        most_in_flight: AtomicU64::new(0),
        deliver_held: Mutex::new(std::collections::HashSet::new()),
        sink: Mutex::new(HashMap::new()),
        sink_posts: AtomicU64::new(0),
        sink_connections: AtomicU64::new(0),
        latency_ms: AtomicU64::new(0),
        throttle_every: AtomicU64::new(0),
        statuses: Mutex::new(std::collections::BTreeMap::new()),
    });
    let mut app = Router::new().route("/", get(upgrade)).route(
        "/@connections/{id}",
        post(post_to_connection)
            .get(get_connection)
            .delete(delete_connection)
            .layer(axum::middleware::from_fn_with_state(state.clone(), signed)),
    );
    if options.test_controls {
        app = app
            .route("/_gateway/throttle/{id}", post(throttle))
            .route("/_gateway/forget/{id}", post(forget))
            .route("/_gateway/hold/{id}", post(hold))
            .route("/_gateway/release/{id}", post(release))
            .route("/_gateway/latency", post(latency))
            .route("/_gateway/stats", get(stats));
    }
    let app = app.fallback(get(upgrade)).with_state(state.clone());
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "gateway stopped");
        }
    });
    Ok(Handle { addr, task, state })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
