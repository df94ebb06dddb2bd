//! `POST /sessions/logout` (function `session-logout`; authorized).
//!
//! Revokes the caller's token until its own expiry (blacklist) and deletes
//! its session, both named by the authorizer's context — never by the
//! request. The same token is refused by the authorizer from then on.

use http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use time::OffsetDateTime;

use crate::app::App;
use crate::domain::sessions;
use crate::domain::sessions::Sessions;
use crate::edge::http::{Problem, check_body_size, json_response, request_id};
use crate::infra::keys::{Jti, SessionId, UserId};

struct Caller {
    user: UserId,
    session: SessionId,
    jti: Jti,
    expires_at: OffsetDateTime,
}

fn caller(req: &Request) -> Option<Caller> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() else {
        return None;
    };
    let f = &ctx.authorizer.as_ref()?.fields;
    let text = |k: &str| f.get(k).and_then(|v| v.as_str());
    let exp = f
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))?;
    Some(Caller {
        user: UserId::parse(text("user_id")?).ok()?,
        session: SessionId::parse(text("session_id")?).ok()?,
        jti: Jti::parse(text("jti")?).ok()?,
        expires_at: OffsetDateTime::from_unix_timestamp(exp).ok()?,
    })
}

/// What `POST /auth/logout` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Sessions and the token blacklist.
    pub sessions: &'a Sessions,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            sessions: &app.sessions,
        }
    }
}

/// `POST /auth/logout`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::POST {
        return Problem::method_not_allowed("POST").into_response(&rid);
    }
    let Some(c) = caller(&req) else {
        return Problem::new_public(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Not authenticated",
            "This route needs the authorizer's context (a valid bearer token).",
        )
        .into_response(&rid);
    };
    let (blacklisted, revoked) = tokio::join!(
        sessions::blacklist(deps.sessions, &c.jti, &c.user, c.expires_at, "logout"),
        sessions::revoke(deps.sessions, &c.session)
    );
    if let Err(why) = blacklisted.and(revoked) {
        tracing::error!(user_id = %c.user, reason = why.as_str(), "logout could not be recorded");
        return Problem::unavailable("The logout could not be recorded; retry shortly.")
            .into_response(&rid);
    }
    tracing::info!(user_id = %c.user, "logged out");
    json_response(StatusCode::OK, &json!({"status": "logged_out"}))
}
