//! `POST /sessions/logout` (function `session-logout`; authorized).
//!
//! Two forms, chosen by the body (`{"scope": "session"}`, the default when
//! there is no body, or `{"scope": "all"}`):
//!
//! | | `session` (this sign-in) | `all` (every sign-in) |
//! |---|---|---|
//! | the calling token | revoked (blacklisted until `exp` + grace) | revoked |
//! | sessions | this one ended: every token naming it is refused | **every** session of the user ended |
//! | WebSocket connections | those this session opened: out of the registry and closed | **all** the user's: out and closed |
//! | refresh tokens at the identity provider | untouched: the client revokes its own (RFC 7009; Cognito's `/oauth2/revoke`) | all revoked (`AdminUserGlobalSignOut`): no new session from any earlier sign-in |
//!
//! A service's token has no session: either form revokes the token alone.
//!
//! The caller is let in by the same gate as every route
//! (`crate::edge::routes::gate`): a token already refused (revoked, its
//! session ended) cannot sign out (401), and sign-outs are rate-limited per
//! principal (policy `sessions.logout`). Everything is named by the
//! verified token — never by the request body.
//!
//! Cost: the gate's round-trip time; then, sent together, one script that
//! ends the session(s) and takes their connections out of the registry
//! (the user's keys share a slot), the blacklist entry, and — for `all`,
//! when a user pool is configured — the identity provider's sign-out; then
//! one `XADD` asking `ws-sender` to close the connections
//! (`DELETE @connections`; its closes are retried until they succeed),
//! queued by `crate::domain::sessions::end`.

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use crate::app::App;
use crate::domain::identity::Principal;
use crate::domain::sessions::{self, Ended, Ending};
use crate::domain::signout::IssuerSignOut;
use crate::edge::http::{Problem, check_body_size, json_response, request_id};
use crate::edge::routes::gate::{Gate, admit};
use crate::edge::routes::limits::{LOGOUT, with_decision};

/// What `POST /sessions/logout` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Who is calling, and may they: sessions, the blacklist, the rate
    /// limiter, token keys.
    pub gate: Gate<'a>,
    /// The user pool to sign the user out of, when configured.
    pub signout: Option<&'a IssuerSignOut>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            gate: Gate::from(app),
            signout: app.signout.as_ref(),
        }
    }
}

/// Which sign-ins a logout ends (the body's `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This sign-in (the default).
    Session,
    /// Every sign-in of the user.
    All,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::All => "all",
        }
    }
}

fn parse(req: &Request) -> Result<Scope, Problem> {
    let body: &[u8] = req.body().as_ref();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Scope::Session);
    }
    let map = crate::edge::http::json_object(req)?;
    if let Some(unknown) = map.keys().find(|k| k.as_str() != "scope") {
        return Err(Problem::invalid_request(format!(
            "Unknown field \"{}\": the body has scope only.",
            unknown.chars().take(64).collect::<String>()
        )));
    }
    match map.get("scope") {
        None => Ok(Scope::Session),
        Some(Value::String(s)) if s == "session" => Ok(Scope::Session),
        Some(Value::String(s)) if s == "all" => Ok(Scope::All),
        Some(_) => Err(Problem::invalid_request(
            "scope must be \"session\" (this sign-in) or \"all\" (every sign-in).",
        )),
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
    let scope = match parse(&req) {
        Ok(s) => s,
        Err(problem) => return problem.into_response(&rid),
    };
    let (who, ()) = match admit(deps.gate, &req, Some(LOGOUT), &rid, async {}).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let c = &who.caller;
    let sessions = deps.gate.sessions;
    let ending = match (&c.principal, scope) {
        (Principal::User { user, .. }, Scope::All) => Some((*user, Ending::All)),
        (Principal::User { user, session }, Scope::Session) => {
            Some((*user, Ending::One(session.clone())))
        }
        (Principal::Service { .. }, _) => None,
    };
    // Sent together: the blacklist entry, the end of the session(s), and —
    // for every sign-in, when a user pool is configured — the sign-out that
    // revokes the user's refresh tokens.
    let (blacklisted, ended, signed_out) = tokio::join!(
        sessions::blacklist(sessions, &c.jti, &c.principal, c.expires_at, "logout"),
        async {
            match &ending {
                Some((user, ending)) => {
                    let reason = match scope {
                        Scope::Session => "logout",
                        Scope::All => "logout-all",
                    };
                    sessions::end(sessions, user, ending, reason).await
                }
                None => Ok(Ended::default()),
            }
        },
        async {
            match (deps.signout, c.user(), scope) {
                (Some(pool), Some(user), Scope::All) => pool.sign_out(user).await,
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
    let ended = match blacklisted.and(ended) {
        Ok(ended) => ended,
        Err(why) => {
            tracing::error!(principal = ?c.principal, error = %why, "logout could not be recorded");
            return Problem::unavailable("The logout could not be recorded; retry shortly.")
                .into_response(&rid);
        }
    };
    tracing::info!(principal = ?c.principal, scope = scope.as_str(),
        sessions = ended.sessions.len(), connections = ended.connections.len(), "logged out");
    with_decision(
        json_response(
            StatusCode::OK,
            &json!({
                "status": "logged_out",
                "scope": scope.as_str(),
                "sessions_ended": ended.sessions.len(),
                "connections_closed": ended.connections.len(),
            }),
        ),
        who.limit.as_ref(),
    )
}
