//! `ws-connections`: the WebSocket API's `$connect` (limits, resume),
//! `$disconnect` and `ping` (its limit), with the sign-in the authorizer
//! verified.

use super::Answer;
use crate::app::App;
use crate::domain::delivery_queue::CloseReason;
use crate::domain::realtime::ConnectRefused;
use crate::domain::realtime::Ping;
use crate::domain::realtime::SignedIn;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_http::lambda_runtime::Context;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;

/// `ws-connections`: the WebSocket API's `$connect`, `$disconnect` and
/// `ping` routes. The sign-in (user, session, token expiry) comes from the
/// authorizer's context (WebSocket authorizers put it in
/// `requestContext.authorizer`); `$connect` without it is refused (401), so
/// is a malformed connection id (400), and so is one more connection than
/// the sign-in or the user may have open (429, `WS_MAX_CONNECTIONS_PER_*`).
/// A `ping` whose sign-in is over (session ended, token expired) is
/// answered 410, one past `WS_PINGS_PER_MINUTE` 429; either way its
/// connection is taken out of the registry and queued to be closed (the
/// latter after a last frame saying why).
pub async fn websocket(app: &App, event: &Value) -> Value {
    let (connections, queue) = (&app.connections, &app.delivery);
    let status = |code: u16, body: Value| json!({"statusCode": code, "body": body.to_string()});
    let Ok(request) = ApiGatewayWebsocketProxyRequest::deserialize(event) else {
        return status(400, json!({"error": "not a WebSocket API event"}));
    };
    let ctx = &request.request_context;
    let route = ctx.route_key.as_deref().unwrap_or("");
    let Some(conn) = ctx
        .connection_id
        .as_deref()
        .and_then(|c| crate::infra::keys::ConnectionId::parse(c).ok())
    else {
        return status(
            400,
            json!({"error": "connectionId is missing or malformed"}),
        );
    };
    let fields = &ctx.authorizer.fields;
    let text = |k: &str| match fields.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let user = text("user_id").and_then(|u| UserId::parse(&u).ok());
    let result = match route {
        "$connect" => {
            let signed_in = (|| {
                Some(SignedIn {
                    user: user?,
                    session: SessionId::parse(&text("session_id")?).ok()?,
                    expires_at: time::OffsetDateTime::from_unix_timestamp(
                        text("exp")?.parse().ok()?,
                    )
                    .ok()?,
                })
            })();
            let Some(by) = signed_in else {
                return status(401, json!({"error": "not authenticated"}));
            };
            let client = request
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            let resume = match request.query_string_parameters.first("resume") {
                None => Vec::new(),
                Some(raw) => match parse_resume(raw) {
                    Ok(r) => r,
                    Err(why) => return status(400, json!({"error": why})),
                },
            };
            // Only the user's own wallets: each one's owner, through the
            // cache (one round-trip time for all on hits).
            let owners = futures_util::future::join_all(
                resume
                    .iter()
                    .map(|(w, _)| crate::domain::balance::get_balance(&app.balances, w)),
            )
            .await;
            for owned in owners {
                match owned {
                    Ok(b) if b.value.as_ref().and_then(|b| b.owner) == Some(by.user) => {}
                    Ok(_) => {
                        return status(
                            404,
                            json!({"error": "a wallet to resume does not exist or is not yours"}),
                        );
                    }
                    Err(_) => {
                        return status(503, json!({"error": "the wallets could not be read"}));
                    }
                }
            }
            match crate::domain::realtime::connect(connections, &by, &conn, client, &resume).await {
                Err(ConnectRefused::Unavailable(why)) => Err(why),
                Err(limit) => {
                    tracing::info!(reason = %limit, "connection refused");
                    return status(
                        429,
                        json!({"error": limit.to_string(), "reason": match limit {
                            ConnectRefused::SessionLimit => "connections_per_session",
                            _ => "connections_per_user",
                        }}),
                    );
                }
                Ok(()) => {
                    // Queued behind the wallet's kicks; a failure leaves the
                    // mark, which lapses (docs/realtime.md → Reconnecting without a gap).
                    for (wallet, after) in &resume {
                        if let Err(why) = queue.catch_up(wallet, &by.user, &conn, *after).await {
                            tracing::warn!(reason = why.as_str(), "could not queue a catch-up");
                            return status(
                                503,
                                json!({"error": "the catch-up could not be queued"}),
                            );
                        }
                    }
                    Ok(200)
                }
            }
        }
        "$disconnect" => crate::domain::realtime::disconnect(connections, &conn, user.as_ref())
            .await
            .map(|_| 200),
        "ping" => match crate::domain::realtime::ping(connections, &conn).await {
            Ok(Ping::Alive) => Ok(200),
            Ok(Ping::Unknown) => Ok(410),
            Ok(Ping::Ended) => {
                if let Err(why) = queue.close(std::slice::from_ref(&conn)).await {
                    tracing::warn!(reason = why.as_str(), "could not queue the close");
                }
                Ok(410)
            }
            Ok(Ping::TooMany) => {
                tracing::info!("connection closed: too many pings");
                if let Err(why) = queue
                    .close_telling(std::slice::from_ref(&conn), CloseReason::TooManyPings)
                    .await
                {
                    tracing::warn!(reason = why.as_str(), "could not queue the close");
                }
                Ok(429)
            }
            Err(e) => Err(e),
        },
        _ => Ok(400),
    };
    match result {
        Ok(200) => status(200, json!({"route": route})),
        Ok(410) => status(
            410,
            json!({"error": "the connection is not registered (expired, or its sign-in is over)"}),
        ),
        Ok(429) => status(
            429,
            json!({"error": "too many pings: the connection is closed", "reason": "too_many_pings"}),
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

/// `$connect`'s `resume` parameter: `<wallet_id>:<version>` pairs,
/// comma-separated, at most [`RESUME_MAX`](crate::domain::delivery::RESUME_MAX),
/// each wallet once (the version is the last the client saw; `balance:`
/// before the wallet — a frame's `channel` — is accepted too).
pub fn parse_resume(raw: &str) -> Result<Vec<(WalletId, u64)>, String> {
    let mut out: Vec<(WalletId, u64)> = Vec::new();
    for part in raw.split(',') {
        let part = part.strip_prefix("balance:").unwrap_or(part);
        let parsed = part
            .rsplit_once(':')
            .and_then(|(w, v)| Some((WalletId::parse(w).ok()?, v.parse::<u64>().ok()?)));
        let Some((wallet, version)) = parsed else {
            return Err("resume must be <wallet_id>:<version>[,<wallet_id>:<version>…]".into());
        };
        if out.iter().any(|(w, _)| *w == wallet) {
            return Err("resume names a wallet twice".into());
        }
        out.push((wallet, version));
        if out.len() > crate::domain::delivery::RESUME_MAX {
            return Err(format!(
                "resume names more than {} wallets",
                crate::domain::delivery::RESUME_MAX
            ));
        }
    }
    Ok(out)
}

/// `ws-connections`' handler (see [`websocket`]).
pub async fn handle_websocket(app: &App, _: &(), event: Value, _: Context) -> Answer {
    Ok(websocket(app, &event).await)
}
