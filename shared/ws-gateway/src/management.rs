//! The `@connections` management API the sending code uses (signed
//! requests only): `POST` delivers a frame (410 for an unknown connection,
//! 413 over 32 KB), `GET` describes it, `DELETE` closes it with code 1000
//! (as API Gateway does).

use super::FRAME_LIMIT;
use super::Gateway;
use super::websocket::error;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::ws::Message;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Management requests must be signed with the gateway's credentials.
pub(super) async fn signed(
    State(gw): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    #[cfg(feature = "test-variants")]
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
    if let Err(why) =
        crate::sigv4::verify(expected, parts.method.as_str(), uri, &parts.headers, &bytes)
    {
        tracing::warn!(reason = why.message(), "management request refused");
        return error(StatusCode::FORBIDDEN, "ForbiddenException", why.message());
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

pub(super) async fn post_to_connection(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    peer: axum::extract::ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let n = gw.posts.fetch_add(1, Ordering::SeqCst) + 1;
    let now = gw.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    gw.most_in_flight.fetch_max(now, Ordering::SeqCst);
    // Counted down however the answer ends (a cancelled request too).
    let _leaving = InFlight(&gw.in_flight);
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

/// One post being answered (see `post_to_connection`).
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn post_answer(
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

pub(super) async fn get_connection(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
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

pub(super) async fn delete_connection(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    gw.posts.fetch_add(1, Ordering::SeqCst);
    let connections = gw.connections.lock().await;
    match connections.get(&id) {
        Some(c) => {
            // API Gateway closes a deleted connection with 1000 ("Connection
            // Closed Normally"), whatever the reason: so does this.
            let _ =
                c.tx.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })));
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::GONE, "GoneException", "Gone"),
    }
}
