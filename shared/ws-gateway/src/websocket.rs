//! The WebSocket side, as API Gateway's WebSocket API behaves: `$connect`
//! through the REQUEST authorizer and the `$connect` route (refused with
//! their status), text frames routed on `action`, `$disconnect` on close.

use super::Conn;
use super::Gateway;
use super::now_ms;
use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequestContext;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::ws::Message;
use axum::extract::ws::WebSocket;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// API Gateway's connection ids look like `ZZ9z0eRyIAMCJQg=`.
pub(super) fn new_connection_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id: String = (0..15)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    id.push('=');
    id
}

pub(super) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
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

pub(super) fn header_map(headers: &HeaderMap) -> http::HeaderMap {
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
pub(super) struct Route<'a> {
    route: &'a str,
    event_type: &'a str,
    connection_id: &'a str,
    connected_at: i64,
    authorizer: &'a HashMap<String, Value>,
}

/// The event a route receives (`$connect`, `$disconnect`, a message).
pub(super) fn route_event(
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

pub(super) fn uuid_like() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The authorizer's answer, if it allows: its context plus `principalId`.
pub(super) fn allowed(answer: &Value) -> Option<HashMap<String, Value>> {
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

pub(super) fn status_of(answer: &Value) -> u16 {
    answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500)
}

pub(super) async fn upgrade(
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

pub(super) async fn session(
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
