//! `POST /sessions/logout` (function `session-logout`; authorized).
//!
//! Revokes the caller's token until its own expiry (blacklist) and deletes
//! its session, both named by the verified token — never by the request
//! body. The same token is refused from then on, and so is every other
//! token of that session (their session is gone).

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::app::App;
use crate::domain::identity::{Principal, Verifier};
use crate::domain::sessions;
use crate::domain::sessions::Sessions;
use crate::domain::signout::IssuerSignOut;
use crate::edge::http::{Problem, check_body_size, json_response, request_id};
use crate::edge::routes::gate::{identify, refusal};

/// What `POST /sessions/logout` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Sessions and the token blacklist.
    pub sessions: &'a Sessions,
    /// Token keys, when no API Gateway is in front.
    pub verifier: Option<&'a Verifier>,
    /// The user pool to sign the user out of, when configured.
    pub signout: Option<&'a IssuerSignOut>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            sessions: &app.sessions,
            verifier: app.verifier.as_deref(),
            signout: app.signout.as_ref(),
        }
    }
}

/// `POST /sessions/logout`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::POST {
        return Problem::method_not_allowed("POST").into_response(&rid);
    }
    // The token's signature and claims are checked (here or by API
    // Gateway); its revocation is not: logging out twice is harmless.
    let c = match identify(&req, deps.verifier) {
        Ok(c) => c,
        Err(why) => return refusal(why, &rid),
    };
    let session = match &c.principal {
        Principal::User { session, .. } => Some(session),
        Principal::Service { .. } => None,
    };
    // Sent together: the blacklist entry, the session, and — for a user,
    // when a user pool is configured — the sign-out that revokes their
    // refresh tokens (no new session can be minted from this sign-in).
    let (blacklisted, revoked, signed_out) = tokio::join!(
        sessions::blacklist(deps.sessions, &c.jti, &c.principal, c.expires_at, "logout"),
        async {
            match session {
                Some(s) => sessions::revoke(deps.sessions, s).await,
                None => Ok(()),
            }
        },
        async {
            match (deps.signout, c.user()) {
                (Some(pool), Some(user)) => pool.sign_out(user).await,
                _ => Ok(()),
            }
        }
    );
    if let Err(e) = signed_out {
        tracing::error!(error = %e, "logout: the user pool sign-out failed");
        return Problem::unavailable(
            "The logout could not be completed at the sign-in service; retry shortly.",
        )
        .into_response(&rid);
    }
    if let Err(why) = blacklisted.and(revoked) {
        tracing::error!(principal = ?c.principal, reason = why.as_str(), "logout could not be recorded");
        return Problem::unavailable("The logout could not be recorded; retry shortly.")
            .into_response(&rid);
    }
    tracing::info!(principal = ?c.principal, "logged out");
    json_response(StatusCode::OK, &json!({"status": "logged_out"}))
}
