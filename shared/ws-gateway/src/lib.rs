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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
    ApiGatewayWebsocketProxyRequestContext,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

pub mod front;
pub mod sigv4;

/// How the gateway is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The credentials management requests must be signed with; `None`
    /// refuses every management request.
    pub management: Option<sigv4::Expected>,
    /// Serve the test controls (`/_gateway/...`). Off unless a test asks.
    pub test_controls: bool,
    /// The broken variant of the signature check, for the test that proves
    /// it: management requests are served unsigned.
    #[doc(hidden)]
    pub unchecked: bool,
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
        unchecked: options.unchecked,
        addr,
        connections: Mutex::new(HashMap::new()),
        throttled: Mutex::new(HashMap::new()),
        holding: Mutex::new(std::collections::HashSet::new()),
        held: AtomicU64::new(0),
        held_ports: Mutex::new(Vec::new()),
        posts: AtomicU64::new(0),
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

/// API Gateway's connection ids look like `ZZ9z0eRyIAMCJQg=`.
fn new_connection_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id: String = (0..15)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    id.push('=');
    id
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", kind),
            ("content-type", "application/json"),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn header_map(headers: &HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_str().as_bytes()),
            http::HeaderValue::from_bytes(v.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    out
}

/// What a route event says about its connection.
struct Route<'a> {
    route: &'a str,
    event_type: &'a str,
    connection_id: &'a str,
    connected_at: i64,
    authorizer: &'a HashMap<String, Value>,
}

/// The event a route receives (`$connect`, `$disconnect`, a message).
fn route_event(
    gw: &Gateway,
    r: Route<'_>,
    headers: Option<&HeaderMap>,
    query: Option<&HashMap<String, String>>,
    body: Option<String>,
) -> Value {
    let Route {
        route,
        event_type,
        connection_id,
        connected_at,
        authorizer,
    } = r;
    let mut ctx = ApiGatewayWebsocketProxyRequestContext::default();
    ctx.route_key = Some(route.to_owned());
    ctx.event_type = Some(event_type.to_owned());
    ctx.connection_id = Some(connection_id.to_owned());
    ctx.connected_at = connected_at;
    ctx.request_time_epoch = now_ms();
    ctx.stage = Some("local".into());
    ctx.apiid = Some("local".into());
    ctx.domain_name = Some(gw.addr.to_string());
    ctx.request_id = Some(uuid_like());
    ctx.message_direction = Some("IN".into());
    ctx.authorizer.fields = authorizer.clone();
    let mut request = ApiGatewayWebsocketProxyRequest::default();
    request.request_context = ctx;
    if let Some(h) = headers {
        request.headers = header_map(h);
    }
    request.body = body;
    let mut value = serde_json::to_value(&request).unwrap_or(Value::Null);
    if let (Some(q), Some(obj)) = (query, value.as_object_mut()) {
        obj.insert("queryStringParameters".into(), json!(q));
    }
    value
}

fn uuid_like() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The authorizer's answer, if it allows: its context plus `principalId`.
fn allowed(answer: &Value) -> Option<HashMap<String, Value>> {
    let statement = answer.get("policyDocument")?.get("Statement")?.get(0)?;
    if statement.get("Effect")?.as_str()? != "Allow" {
        return None;
    }
    let mut fields: HashMap<String, Value> = answer
        .get("context")
        .and_then(Value::as_object)
        .map(|m| m.clone().into_iter().collect())
        .unwrap_or_default();
    if let Some(p) = answer.get("principalId") {
        fields.insert("principalId".into(), p.clone());
    }
    Some(fields)
}

fn status_of(answer: &Value) -> u16 {
    answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500)
}

async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // The authorizer's identity source is `?token=`: without it API Gateway
    // answers 401 and invokes nothing.
    if query.get("token").is_none_or(|t| t.is_empty()) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let id = new_connection_id();
    let connected_at = now_ms();
    // 1. The REQUEST authorizer.
    let mut auth = ApiGatewayCustomAuthorizerRequestTypeRequest::default();
    auth.type_ = Some("REQUEST".into());
    auth.method_arn = Some("arn:aws:execute-api:local:000000000000:local/local/$connect".into());
    auth.headers = header_map(&headers);
    let mut auth_event = serde_json::to_value(&auth).unwrap_or(Value::Null);
    if let Some(obj) = auth_event.as_object_mut() {
        obj.insert("queryStringParameters".into(), json!(query));
        obj.insert(
            "requestContext".into(),
            json!({"routeKey": "$connect", "eventType": "CONNECT", "connectionId": id,
                   "stage": "local", "apiId": "local"}),
        );
    }
    let authorizer = match (gw.invoke)("authorizer", auth_event).await {
        Ok(answer) => match allowed(&answer) {
            Some(fields) => fields,
            None => return error(StatusCode::FORBIDDEN, "Forbidden", "Forbidden"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "authorizer failed");
            return error(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    };
    // 2. The `$connect` route.
    let event = route_event(
        &gw,
        Route {
            route: "$connect",
            event_type: "CONNECT",
            connection_id: &id,
            connected_at,
            authorizer: &authorizer,
        },
        Some(&headers),
        Some(&query),
        None,
    );
    match (gw.invoke)("ws-connections", event).await {
        Ok(answer) if status_of(&answer) == 200 => {}
        Ok(answer) => {
            let code = StatusCode::from_u16(status_of(&answer))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(
                code,
                "ConnectRefused",
                "the $connect route refused the connection",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "$connect failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "$connect failed",
            );
        }
    }
    // Registered before the handshake completes: a post right after the
    // client's connect finds it (frames wait in the channel).
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    gw.connections.lock().await.insert(
        id.clone(),
        Conn {
            tx: tx.clone(),
            connected_at,
            authorizer: authorizer.clone(),
        },
    );
    let failed = (gw.clone(), id.clone());
    ws.on_failed_upgrade(move |_| {
        tokio::spawn(async move {
            failed.0.connections.lock().await.remove(&failed.1);
        });
    })
    .on_upgrade(move |socket| session(gw, socket, id, connected_at, authorizer, tx, rx))
}

async fn session(
    gw: Arc<Gateway>,
    socket: WebSocket,
    id: String,
    connected_at: i64,
    authorizer: HashMap<String, Value>,
    tx: mpsc::UnboundedSender<Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(frame)) = stream.next().await {
        let text = match frame {
            Message::Text(t) => t.to_string(),
            Message::Close(_) => break,
            _ => continue,
        };
        let action = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned));
        let route = match action.as_deref() {
            Some("ping") => "ping",
            _ => "$default",
        };
        if route == "$default" {
            // The deployed API has no $default route.
            let _ = tx.send(Message::Text(
                json!({"message": "Forbidden", "connectionId": id})
                    .to_string()
                    .into(),
            ));
            continue;
        }
        let event = route_event(
            &gw,
            Route {
                route,
                event_type: "MESSAGE",
                connection_id: &id,
                connected_at,
                authorizer: &authorizer,
            },
            None,
            None,
            Some(text),
        );
        if let Err(e) = (gw.invoke)("ws-connections", event).await {
            tracing::warn!(error = %e, route, "route failed");
        }
    }
    // Forgotten connections (test control) are already gone: no $disconnect.
    let known = gw.connections.lock().await.remove(&id).is_some();
    writer.abort();
    if known {
        let event = route_event(
            &gw,
            Route {
                route: "$disconnect",
                event_type: "DISCONNECT",
                connection_id: &id,
                connected_at,
                authorizer: &authorizer,
            },
            None,
            None,
            None,
        );
        if let Err(e) = (gw.invoke)("ws-connections", event).await {
            tracing::warn!(error = %e, "$disconnect failed");
        }
    }
}

/// Management requests must be signed with the gateway's credentials.
async fn signed(
    State(gw): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if gw.unchecked {
        return next.run(request).await;
    }
    let Some(expected) = gw.management.as_ref() else {
        return error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "the gateway was started without management credentials",
        );
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 2 * FRAME_LIMIT).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "Message too long",
        );
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Err(why) = sigv4::verify(expected, parts.method.as_str(), uri, &parts.headers, &bytes) {
        tracing::warn!(reason = why.message(), "management request refused");
        return error(StatusCode::FORBIDDEN, "ForbiddenException", why.message());
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

async fn post_to_connection(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    peer: axum::extract::ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let n = gw.posts.fetch_add(1, Ordering::SeqCst) + 1;
    let latency = gw.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let every = gw.throttle_every.load(Ordering::SeqCst);
    let answer = if every > 0 && n % every == 0 {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "LimitExceededException",
            "Rate exceeded",
        )
    } else {
        post_answer(&gw, id, peer, body).await
    };
    *gw.statuses
        .lock()
        .await
        .entry(answer.status().as_u16())
        .or_default() += 1;
    answer
}

async fn post_answer(
    gw: &Arc<Gateway>,
    id: String,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if body.len() > FRAME_LIMIT {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "Message too long",
        );
    }
    if gw.holding.lock().await.contains(&id) {
        gw.held.fetch_add(1, Ordering::SeqCst);
        gw.held_ports.lock().await.push(peer.port());
        while gw.holding.lock().await.contains(&id) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        gw.held_ports.lock().await.retain(|p| *p != peer.port());
        gw.held.fetch_sub(1, Ordering::SeqCst);
        if !gw.deliver_held.lock().await.contains(&id) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                "held and dropped",
            );
        }
    }
    {
        let mut throttled = gw.throttled.lock().await;
        if let Some(n) = throttled.get_mut(&id)
            && *n > 0
        {
            *n -= 1;
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                "Rate exceeded",
            );
        }
    }
    if id.starts_with("sink") {
        let n = {
            let mut sink = gw.sink.lock().await;
            let n = sink.entry(id).or_default();
            *n += 1;
            *n
        };
        gw.sink_posts.fetch_add(1, Ordering::SeqCst);
        if n == 1 {
            gw.sink_connections.fetch_add(1, Ordering::SeqCst);
        }
        return StatusCode::OK.into_response();
    }
    let connections = gw.connections.lock().await;
    let Some(conn) = connections.get(&id) else {
        return error(StatusCode::GONE, "GoneException", "Gone");
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    if conn.tx.send(Message::Text(text.into())).is_err() {
        return error(StatusCode::GONE, "GoneException", "Gone");
    }
    StatusCode::OK.into_response()
}

async fn get_connection(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    gw.posts.fetch_add(1, Ordering::SeqCst);
    let connections = gw.connections.lock().await;
    match connections.get(&id) {
        Some(c) => axum::Json(json!({
            "connectedAt": c.connected_at,
            "identity": {"sourceIp": "127.0.0.1"},
            "principalId": c.authorizer.get("principalId"),
        }))
        .into_response(),
        None => error(StatusCode::GONE, "GoneException", "Gone"),
    }
}

async fn delete_connection(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    gw.posts.fetch_add(1, Ordering::SeqCst);
    let connections = gw.connections.lock().await;
    match connections.get(&id) {
        Some(c) => {
            let _ = c.tx.send(Message::Close(None));
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::GONE, "GoneException", "Gone"),
    }
}

async fn throttle(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> StatusCode {
    let n = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    gw.throttled.lock().await.insert(id, n);
    StatusCode::NO_CONTENT
}

async fn forget(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> StatusCode {
    match gw.connections.lock().await.remove(&id) {
        Some(c) => {
            let _ = c.tx.send(Message::Close(None));
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn hold(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> StatusCode {
    gw.holding.lock().await.insert(id);
    StatusCode::NO_CONTENT
}

/// Releases the connection's held posts: dropped (503) by default, or
/// delivered with `?deliver=1`.
async fn release(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> StatusCode {
    if q.get("deliver").is_some_and(|d| d == "1") {
        gw.deliver_held.lock().await.insert(id.clone());
    } else {
        gw.deliver_held.lock().await.remove(&id);
    }
    gw.holding.lock().await.remove(&id);
    StatusCode::NO_CONTENT
}

/// `?ms=`: latency added to every post; `?throttle_every=`: every n-th
/// post answers 429 (0: none).
async fn latency(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<HashMap<String, String>>,
) -> StatusCode {
    let number = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = number("ms") {
        gw.latency_ms.store(ms, Ordering::SeqCst);
    }
    if let Some(n) = number("throttle_every") {
        gw.throttle_every.store(n, Ordering::SeqCst);
    }
    StatusCode::NO_CONTENT
}

/// `?sink=1` adds the posts per sink id (large: ask for it once, not in a
/// polling loop).
async fn stats(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let ids: Vec<String> = gw.connections.lock().await.keys().cloned().collect();
    let mut answer = json!({
        "management_calls": gw.posts.load(Ordering::SeqCst),
        "held": gw.held.load(Ordering::SeqCst),
        "held_ports": *gw.held_ports.lock().await,
        "connections": ids,
        "statuses": *gw.statuses.lock().await,
        "sink_posts": gw.sink_posts.load(Ordering::SeqCst),
        "sink_connections": gw.sink_connections.load(Ordering::SeqCst),
    });
    if q.get("sink").is_some_and(|v| v == "1") {
        answer["sink"] = json!(*gw.sink.lock().await);
    }
    axum::Json(answer)
}
