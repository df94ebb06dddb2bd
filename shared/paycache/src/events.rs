//! Handlers for the EventBridge-triggered functions. Each takes the raw
//! event, never panics on any input, and returns a JSON summary that it also
//! logs.
//!
//! Malformed events are answered with `{"status": "rejected", "reason": …}`
//! and not retried (retrying cannot fix them). Failures that a retry can fix
//! (Redis or PostgreSQL unavailable during an invalidation) are returned as
//! errors, so that Lambda's asynchronous retries and the dead-letter queue
//! take over: an invalidation must not be dropped.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::App;
use crate::audit;
use crate::balance;
use crate::invalidation::{self, InvalidationError};
use crate::keys::{TransactionId, UserId, WalletId};

fn rejected(reason: impl Into<String>) -> Value {
    let reason = reason.into();
    tracing::warn!(reason = %reason, "event rejected");
    json!({"status": "rejected", "reason": reason})
}

/// `cache-invalidator`: `UserProfileUpdated` and `TransactionCompleted`.
pub async fn cache_invalidation(app: &App, event: &Value) -> Result<Value, InvalidationError> {
    let started = Instant::now();
    let Some(kind) = event.get("detail-type").and_then(Value::as_str) else {
        return Ok(rejected("the event has no detail-type"));
    };
    let Some(detail) = event.get("detail").filter(|d| d.is_object()) else {
        return Ok(rejected("the event has no detail object"));
    };
    let field = |name: &str| detail.get(name).and_then(Value::as_str);
    let report = match kind {
        "UserProfileUpdated" => {
            let user = match field("user_id").map(UserId::parse) {
                Some(Ok(u)) => u,
                Some(Err(e)) => return Ok(rejected(format!("detail.{e}"))),
                None => return Ok(rejected("detail.user_id is required")),
            };
            invalidation::user_profile_updated(app, &user).await?
        }
        "TransactionCompleted" => {
            let id = match field("transaction_id").map(TransactionId::parse) {
                Some(Ok(t)) => t,
                Some(Err(e)) => return Ok(rejected(format!("detail.{e}"))),
                None => return Ok(rejected("detail.transaction_id is required")),
            };
            for name in ["sender_wallet_id", "receiver_wallet_id"] {
                match field(name).map(WalletId::parse) {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        return Ok(rejected(format!(
                            "detail.{name} must be a UUID in canonical form"
                        )));
                    }
                    None => return Ok(rejected(format!("detail.{name} is required"))),
                }
            }
            invalidation::transaction_completed(app, &id).await?
        }
        other => {
            tracing::info!(detail_type = %other.chars().take(64).collect::<String>(), "event ignored");
            return Ok(json!({"status": "ignored"}));
        }
    };
    let summary = json!({
        "status": "ok",
        "detail_type": kind,
        "outcome": report.outcome,
        "keys_deleted": report.keys_deleted,
        "wallets_invalidated": report.wallets_invalidated,
        "published": report.published,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "invalidation done");
    Ok(summary)
}

/// `audit-flush`: drains every configured service's buffer, applies pending
/// balance outbox rows, and reconciles outbox audit events, stopping before
/// `deadline`.
pub async fn audit_flush(app: &App, deadline: Instant) -> Value {
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut flushed = Vec::new();
    for service in &app.config.audit.services {
        match audit::flush(app, service, deadline, u64::MAX).await {
            Ok(report) => flushed.push(serde_json::to_value(report).unwrap_or(Value::Null)),
            Err(e) => errors.push(format!("{service}: {e}")),
        }
    }
    let outbox = match balance::apply_pending(app, 1000).await {
        Ok(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        Err(e) => {
            errors.push(format!("outbox: {e}"));
            Value::Null
        }
    };
    let reconciled = match audit::reconcile_outbox(app, 1000).await {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("reconcile: {e}"));
            0
        }
    };
    let summary = json!({
        "status": if errors.is_empty() { "ok" } else { "degraded" },
        "flushed": flushed,
        "outbox": outbox,
        "reconciled": reconciled,
        "errors": errors,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    if errors.is_empty() {
        tracing::info!(summary = %summary, "audit flush done");
    } else {
        tracing::error!(summary = %summary, "audit flush degraded");
    }
    summary
}

/// `cache-warmer`: a scheduled event warms the `WARM_USERS` most recently
/// active users; `{"user_ids": [...]}` (at most 10,000) warms those.
pub async fn cache_warm(app: &App, event: &Value, deadline: Instant) -> Value {
    let users = match event.get("user_ids") {
        None => None,
        Some(Value::Array(list)) if list.len() <= 10_000 => {
            let mut users = Vec::with_capacity(list.len());
            for v in list {
                match v.as_str().map(UserId::parse) {
                    Some(Ok(u)) => users.push(u),
                    _ => return rejected("user_ids must be user ids (UUIDs in canonical form)"),
                }
            }
            Some(users)
        }
        Some(_) => return rejected("user_ids must be an array of at most 10000 user ids"),
    };
    let report = crate::warming::warm(app, users, deadline).await;
    let mut summary = serde_json::to_value(&report).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut summary {
        m.insert(
            "status".into(),
            json!(if report.failed == 0 { "ok" } else { "degraded" }),
        );
    }
    tracing::info!(summary = %summary, "cache warming done");
    summary
}

/// `metrics-emitter`: reads `INFO` from every node and publishes the
/// design's cache metrics, per node and for the cluster.
pub async fn emit_metrics(app: &App, cloudwatch: &crate::cloudwatch::CloudWatch) -> Value {
    let started = Instant::now();
    let collected = match crate::node_metrics::collect(app, app.config.health.node_timeout).await {
        Ok(c) => c,
        Err(why) => {
            tracing::error!(reason = why.as_str(), "could not read the cluster's nodes");
            return json!({"status": "failed", "error": "Redis is unavailable", "published": 0});
        }
    };
    let (status, published, error) =
        match crate::cloudwatch::publish(cloudwatch, &collected.data).await {
            Ok(n) => ("ok", n, None),
            Err(e) => {
                tracing::error!(error = %e.0, "PutMetricData failed");
                ("failed", 0, Some("CloudWatch PutMetricData failed"))
            }
        };
    let summary = json!({
        "status": status,
        "error": error,
        "nodes": collected.nodes,
        "nodes_unreachable": collected.nodes_unreachable,
        "restarted": collected.restarted,
        "published": published,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "node metrics emitted");
    summary
}

/// `ws-connections`: the WebSocket API's `$connect`, `$disconnect` and
/// `ping` routes. The user comes from the authorizer's context (WebSocket
/// authorizers put it in `requestContext.authorizer`); `$connect` without
/// one is refused (401), so is a malformed connection id (400).
pub async fn websocket(app: &App, event: &Value) -> Value {
    let ctx = event.get("requestContext").cloned().unwrap_or(Value::Null);
    let route = ctx.get("routeKey").and_then(Value::as_str).unwrap_or("");
    let status = |code: u16, body: Value| json!({"statusCode": code, "body": body.to_string()});
    let Some(conn) = ctx
        .get("connectionId")
        .and_then(Value::as_str)
        .and_then(|c| crate::keys::ConnectionId::parse(c).ok())
    else {
        return status(
            400,
            json!({"error": "connectionId is missing or malformed"}),
        );
    };
    let user = ctx
        .get("authorizer")
        .and_then(|a| a.get("user_id"))
        .and_then(Value::as_str)
        .and_then(|u| UserId::parse(u).ok());
    let result = match route {
        "$connect" => {
            let Some(user) = user else {
                return status(401, json!({"error": "not authenticated"}));
            };
            let client = event
                .get("headers")
                .and_then(|h| h.get("User-Agent").or_else(|| h.get("user-agent")))
                .and_then(Value::as_str);
            crate::realtime::connect(app, &user, &conn, client)
                .await
                .map(|_| 200)
        }
        "$disconnect" => crate::realtime::disconnect(app, &conn, user.as_ref())
            .await
            .map(|_| 200),
        "ping" => match crate::realtime::ping(app, &conn).await {
            Ok(true) => Ok(200),
            Ok(false) => Ok(410),
            Err(e) => Err(e),
        },
        _ => Ok(400),
    };
    match result {
        Ok(200) => status(200, json!({"route": route})),
        Ok(410) => status(
            410,
            json!({"error": "the connection is not registered (expired)"}),
        ),
        Ok(_) => status(400, json!({"error": "unknown route"})),
        Err(why) => {
            tracing::error!(route = %route, reason = why.as_str(), "websocket registry unavailable");
            status(
                503,
                json!({"error": "the connection registry is unavailable"}),
            )
        }
    }
}

/// The Lambda deadline (milliseconds since the Unix epoch) as an `Instant`,
/// or `fallback` from now when it is missing or already past.
pub fn deadline_from_epoch_ms(deadline_ms: u64, fallback: Duration) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match deadline_ms.checked_sub(now_ms) {
        Some(left) if left > 0 => Instant::now() + Duration::from_millis(left),
        _ => Instant::now() + fallback,
    }
}
