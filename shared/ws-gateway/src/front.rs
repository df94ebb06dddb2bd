//! The front door of `make run`: an HTTP listener in front of `cargo lambda
//! watch` that bounds how many invocations are outstanding there, queues a
//! burst beyond that, and answers 503 (with `Retry-After`) what it cannot
//! queue or what waited too long, as API Gateway throttles deployed.
//!
//! Why: `cargo lambda watch` (1.9.2) keeps each function's pending
//! invocations in a channel of 100, and pushes into it while holding the
//! lock that every instance needs to take the next invocation
//! (`RequestCache::upsert` in `crates/cargo-lambda-watch/src/state.rs`).
//! The 101st pending invocation of one function therefore waits forever for
//! room that no instance can make, and with it the whole router: every
//! function, every later request, until it is restarted. Keeping at most
//! [`MAX_INFLIGHT_CEILING`] invocations outstanding in total keeps every
//! function's channel below that.
//!
//! One route (or function) may hold at most `max_per_key` of those slots,
//! so that a hung or slow function makes only its own requests wait.
//!
//! An invocation holds its slot until `cargo lambda watch` answers it, even
//! when its client went away: the router keeps it queued and runs it
//! anyway, so releasing the slot early would let its channel fill again. A
//! request still waiting for a slot when its client goes away is dropped
//! without being sent.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cors::Cors;

/// `cargo lambda watch`'s per-function queue capacity: more outstanding
/// invocations than this can wedge it.
pub const MAX_INFLIGHT_CEILING: usize = 100;

/// API Gateway's (and Lambda's synchronous) payload limit.
const BODY_LIMIT: usize = 6 * 1024 * 1024;

/// How much the front door lets through and how long a request may wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Invocations outstanding at `cargo lambda watch` at once (1..=100).
    pub max_inflight: usize,
    /// Of those, for one route or function ([`key`]).
    pub max_per_key: usize,
    /// Requests waiting for a slot; beyond, 503 at once.
    pub max_waiting: usize,
    /// How long a request waits for a slot before 503.
    pub queue_timeout: Duration,
    /// How long an invocation may take before its slot is given back (504):
    /// one that never answers (its process was killed) would hold it.
    pub upstream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight: 64,
            max_per_key: 32,
            max_waiting: 1024,
            queue_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(300),
        }
    }
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `max_waiting` requests were already waiting.
    QueueFull { waiting: usize },
    /// No slot within `queue_timeout`.
    Waited(Duration),
    /// Sent, but no answer within `upstream_timeout` (the slot is free again).
    UpstreamTimeout(Duration),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull { waiting } => write!(
                f,
                "the local stack is busy: {waiting} requests are already waiting for a function instance"
            ),
            Self::Waited(d) => write!(
                f,
                "the local stack is busy: no function instance was free within {} s",
                d.as_secs_f64()
            ),
            Self::UpstreamTimeout(d) => write!(
                f,
                "cargo lambda watch did not answer within {} s",
                d.as_secs_f64()
            ),
        }
    }
}

/// The shared bound: every invocation, from the front door or the
/// WebSocket gateway, takes a slot from the same [`Limiter`].
#[derive(Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    per_key: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>>,
    waiting: Arc<AtomicUsize>,
    limits: Limits,
}

struct Waiting(Arc<AtomicUsize>);
impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    /// `max_inflight` is clamped to 1..=[`MAX_INFLIGHT_CEILING`].
    pub fn new(mut limits: Limits) -> Self {
        limits.max_inflight = limits.max_inflight.clamp(1, MAX_INFLIGHT_CEILING);
        limits.max_per_key = limits.max_per_key.clamp(1, limits.max_inflight);
        Self {
            slots: Arc::new(Semaphore::new(limits.max_inflight)),
            per_key: Arc::default(),
            waiting: Arc::new(AtomicUsize::new(0)),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Invocations outstanding now.
    pub fn inflight(&self) -> usize {
        self.limits.max_inflight - self.slots.available_permits()
    }

    /// Waits (first come, first served) for one of `key`'s slots, then
    /// for one of all.
    async fn admit(&self, key: &str) -> Result<[OwnedSemaphorePermit; 2], Refused> {
        let mine = {
            let mut keys = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
            keys.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_per_key)))
                .clone()
        };
        if let Ok(k) = mine.clone().try_acquire_owned()
            && let Ok(p) = self.slots.clone().try_acquire_owned()
        {
            return Ok([k, p]);
        }
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self.waiting.clone());
        if before >= self.limits.max_waiting {
            return Err(Refused::QueueFull { waiting: before });
        }
        let both = async {
            let k = mine.acquire_owned().await?;
            let p = self.slots.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>([k, p])
        };
        match tokio::time::timeout(self.limits.queue_timeout, both).await {
            Ok(Ok(p)) => Ok(p),
            // The semaphores are never closed.
            Ok(Err(_)) | Err(_) => Err(Refused::Waited(self.limits.queue_timeout)),
        }
    }

    /// Runs `call` in a slot. Once started it runs to its end (or
    /// `upstream_timeout`) even if the caller stops waiting, and only then
    /// gives the slot back.
    pub async fn run<F, T>(&self, key: &str, call: F) -> Result<T, Refused>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.admit(key).await?;
        let limit = self.limits.upstream_timeout;
        let task = tokio::spawn(async move {
            let out = tokio::time::timeout(limit, call).await;
            drop(permit);
            out
        });
        match task.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(Refused::UpstreamTimeout(limit)),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Wraps an [`crate::Invoke`] so that its calls take slots from `limiter`.
pub fn limited(invoke: crate::Invoke, limiter: Limiter) -> crate::Invoke {
    Arc::new(move |function, event| {
        let call = invoke(function, event);
        let limiter = limiter.clone();
        Box::pin(async move {
            match limiter.run(function, call).await {
                Ok(out) => out,
                Err(refused) => Err(format!("{function}: {refused}")),
            }
        })
    })
}

#[derive(Clone)]
struct Front {
    upstream: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    limiter: Limiter,
    cors: Cors,
}

/// Serves the front door on `listener`, forwarding every request to
/// `upstream` (`cargo lambda watch`'s address) through `limiter`, with
/// CORS as API Gateway answers it for `cors`'s origins ([`crate::cors`]).
pub fn serve(
    listener: TcpListener,
    upstream: &str,
    limiter: Limiter,
    cors: Cors,
) -> tokio::task::JoinHandle<()> {
    let front = Front {
        cors,
        upstream: upstream.trim_end_matches('/').to_owned(),
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        limiter,
    };
    let app = axum::Router::new().fallback(forward).with_state(front);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "front door stopped");
        }
    })
}

/// Hop-by-hop headers, not forwarded either way.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// What a request's slots are counted under: the function for the Invoke
/// API and function URLs, else the path's first segment (`/health`,
/// `/users`, ...: one function each in this project's router).
pub fn key(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("2015-03-31"), Some("functions"), Some(name)) => name.to_owned(),
        (Some("lambda-url"), Some(name), _) => name.to_owned(),
        (Some(first), _, _) => format!("/{first}"),
        _ => "/".to_owned(),
    }
}

fn problem(status: StatusCode, detail: String, retry_after: Option<u64>) -> Response {
    let body = json!({
        "type": "urn:paycache:problem:local-stack-busy",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

async fn forward(State(front): State<Front>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(answer) = front.cors.preflight(&parts.method, &parts.headers) {
        return answer;
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {BODY_LIMIT} bytes"),
                None,
            );
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", front.upstream));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(http_body_util::Full::new(body)) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    let key = key(parts.uri.path());
    let parts_in = parts.headers;
    let client = front.client.clone();
    let call = async move {
        let resp = client.request(upstream).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts, bytes))
    };
    match front.limiter.run(&key, call).await {
        Ok(Ok((parts, bytes))) => {
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !hop_by_hop(name) {
                    resp.headers_mut().append(name, value.clone());
                }
            }
            front.cors.answer(&parts_in, resp.headers_mut());
            resp
        }
        Ok(Err(e)) => problem(
            StatusCode::BAD_GATEWAY,
            format!("cargo lambda watch at {} failed: {e}", front.upstream),
            None,
        ),
        Err(r @ Refused::UpstreamTimeout(_)) => {
            problem(StatusCode::GATEWAY_TIMEOUT, r.to_string(), None)
        }
        Err(r) => {
            tracing::warn!(reason = %r, %key, "request refused");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{r} ({key}); retry in 1 s"),
                Some(1),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_inflight: usize, max_waiting: usize, queue_ms: u64) -> Limits {
        Limits {
            max_inflight,
            max_per_key: max_inflight,
            max_waiting,
            queue_timeout: Duration::from_millis(queue_ms),
            upstream_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_burst_waits_then_is_refused_past_the_queue() {
        let limiter = Limiter::new(limits(2, 3, 2_000));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut calls = Vec::new();
        for _ in 0..5 {
            let l = limiter.clone();
            let mut rx = rx.clone();
            calls.push(tokio::spawn(async move {
                l.run("f", async move {
                    let _ = rx.wait_for(|go| *go).await;
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limiter.inflight(), 2);
        // 2 running, 3 waiting: the sixth is refused at once.
        let refused = limiter.run("f", async {}).await;
        assert_eq!(refused, Err(Refused::QueueFull { waiting: 3 }));
        tx.send(true).unwrap();
        for c in calls {
            assert_eq!(c.await.unwrap(), Ok(()));
        }
        assert_eq!(limiter.inflight(), 0);
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_call_ends_even_if_the_caller_left() {
        let limiter = Limiter::new(limits(1, 10, 50));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let l = limiter.clone();
        let caller = tokio::spawn(async move { l.run("f", async move { rx.await.ok() }).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(limiter.inflight(), 1, "still running upstream");
        assert!(matches!(
            limiter.run("f", async {}).await,
            Err(Refused::Waited(_))
        ));
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(limiter.inflight(), 0);
        assert_eq!(limiter.run("f", async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_hung_route_holds_only_its_own_share() {
        let limiter = Limiter::new(Limits {
            max_per_key: 2,
            ..limits(3, 10, 100)
        });
        for _ in 0..2 {
            let l = limiter.clone();
            tokio::spawn(async move { l.run("/slow", std::future::pending::<()>()).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            limiter.run("/slow", async {}).await,
            Err(Refused::Waited(_))
        ));
        assert_eq!(limiter.run("/health", async { 1 }).await, Ok(1));
    }

    #[test]
    fn keys() {
        assert_eq!(key("/health/nodes"), "/health");
        assert_eq!(key("/users/1/profile"), "/users");
        assert_eq!(
            key("/2015-03-31/functions/authorizer/invocations"),
            "authorizer"
        );
        assert_eq!(key("/lambda-url/health-check/x"), "health-check");
        assert_eq!(key("/"), "/");
    }

    /// A model of `cargo lambda watch`'s router (1.9.2): each invocation
    /// is pushed into a queue of 100 while the pusher holds the lock the
    /// one instance must take to reach the queue; the instance answers each
    /// after 20 ms. Past 100 waiting, the pusher waits for room with the
    /// lock held, the instance never gets it: nothing is answered again.
    fn model_router() -> (String, tokio::task::JoinHandle<()>) {
        type Job = tokio::sync::oneshot::Sender<()>;
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(MAX_INFLIGHT_CEILING);
        let lock = Arc::new(tokio::sync::RwLock::new(tx));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let (l, r) = (lock.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                let queue = {
                    let _read = l.read().await;
                    r.clone()
                };
                let Some(job) = queue.lock().await.recv().await else {
                    return;
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = job.send(());
            }
        });
        let app = axum::Router::new().fallback(move || {
            let lock = lock.clone();
            async move {
                let (done, wait) = tokio::sync::oneshot::channel();
                {
                    let queue = lock.write().await;
                    let _ = queue.send(done).await;
                }
                let _ = wait.await;
                "ok"
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let listener = TcpListener::from_std(listener).unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, server)
    }

    /// `n` GETs of `url` at once; how many were answered within `wait`.
    async fn burst(url: &str, n: usize, wait: Duration) -> usize {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let calls = (0..n).map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let req = http::Request::get(url)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                tokio::time::timeout(wait, client.request(req))
                    .await
                    .is_ok_and(|r| r.is_ok())
            })
        });
        let mut answered = 0;
        for c in calls.collect::<Vec<_>>() {
            answered += usize::from(c.await.unwrap());
        }
        answered
    }

    /// The front door keeps a burst of 300 from wedging the router: all
    /// answered (queued, none refused within the queue's patience), and a
    /// request afterwards too. The broken form — the same burst straight
    /// at the router — wedges it: the request afterwards is never answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_front_door_keeps_a_burst_from_wedging_the_router() {
        for broken in [false, true] {
            let (router, server) = model_router();
            let url = if broken {
                router.clone()
            } else {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                serve(
                    listener,
                    &router,
                    Limiter::new(Limits {
                        queue_timeout: Duration::from_secs(30),
                        ..Limits::default()
                    }),
                    Cors::default(),
                );
                url
            };
            let patience = Duration::from_secs(if broken { 3 } else { 30 });
            let answered = burst(&url, 300, patience).await;
            let after = burst(&url, 1, Duration::from_secs(2)).await;
            if broken {
                assert!(answered < 300, "the model router wedges: {answered}");
                assert_eq!(after, 0, "and stays wedged");
            } else {
                assert_eq!(answered, 300);
                assert_eq!(after, 1);
            }
            server.abort();
        }
    }

    #[test]
    fn max_inflight_stays_under_the_routers_queue() {
        assert_eq!(Limiter::new(limits(1000, 1, 1)).limits().max_inflight, 100);
    }
}
