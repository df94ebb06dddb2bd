//! The test controls (`--test-controls` only; `make run` never serves
//! them): throttle, drop without `$disconnect`, hold and release posts,
//! latency, and counts.

use super::Gateway;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::ws::Message;
use axum::http::StatusCode;
use serde_json::Value;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(super) async fn throttle(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> StatusCode {
    let n = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    gw.throttled.lock().await.insert(id, n);
    StatusCode::NO_CONTENT
}

pub(super) async fn forget(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> StatusCode {
    match gw.connections.lock().await.remove(&id) {
        Some(c) => {
            let _ = c.tx.send(Message::Close(None));
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

pub(super) async fn hold(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> StatusCode {
    gw.holding.lock().await.insert(id);
    StatusCode::NO_CONTENT
}

/// Releases the connection's held posts: dropped (503) by default, or
/// delivered with `?deliver=1`.
pub(super) async fn release(
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
pub(super) async fn latency(
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
pub(super) async fn stats(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let ids: Vec<String> = gw.connections.lock().await.keys().cloned().collect();
    let mut answer = json!({
        "management_calls": gw.posts.load(Ordering::SeqCst),
        "most_posts_in_flight": gw.most_in_flight.load(Ordering::SeqCst),
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
