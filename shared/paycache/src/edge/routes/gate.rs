//! Every protected route's way in: who is calling, are they still signed
//! in, are they within their rate limit — and the route's read — in **one
//! round-trip time**.
//!
//! 1. **Who** (no Redis): the claims API Gateway's JWT authorizer verified
//!    (`requestContext.authorizer.jwt`), or, with no API Gateway in front
//!    (`cargo lambda watch`), the bearer token verified here with the same
//!    checks ([`Verifier::verify_token`]). No claims and no configured keys:
//!    401 — never less verification than the deployed path.
//! 2. **Sent together**: the session (`read.lua`: `GET`, sliding a live session's TTL) and the
//!    blacklist entry (`EXISTS`) for a user, the blacklist entry alone for a
//!    service; the caller's rate-limit script; and the route's own work (a
//!    cache read). They go out at once, so the whole costs one round-trip
//!    time (on different nodes of a cluster, in parallel).
//! 3. **Decided after**: a revoked token, an ended session or one of
//!    another user is 401 (`WWW-Authenticate: Bearer error="invalid_token"`,
//!    a body that does not say which check failed) and the read is
//!    discarded; over the limit is 429. A definite refusal always wins: a
//!    "revoked" refuses even when the session read failed. When Redis does
//!    not hold the session, or cannot answer, **PostgreSQL decides**
//!    (`crate::domain::sessions::authenticate`), concurrently with the
//!    route's own read — which falls back to PostgreSQL too — so a Redis
//!    outage costs latency, not availability, and never readmits a
//!    signed-out token. Neither able to answer is 503 (fail closed).
//! 4. **A refusal costs nothing**: the rate-limit units an unauthenticated
//!    request consumed in step 2 are given back
//!    ([`RateLimiter::refund`]), on the refusal path only — the success
//!    path stays one round-trip time.
//!
//! A write is not passed as work: it starts only after its check.

use std::collections::BTreeSet;
use std::future::Future;

use http::StatusCode;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::domain::identity::{Caller, Denied, Principal, Verifier};
use crate::domain::sessions::{self, Sessions};
use crate::edge::http::Problem;
use crate::edge::routes::limits::too_many_requests;
use crate::infra::keys::{Endpoint, RateSubject};
use crate::patterns::ratelimit::{RateLimitDecision, RateLimiter};

/// What the gate uses.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// Sessions and the blacklist.
    pub sessions: &'a Sessions,
    /// The rate limiter.
    pub limiter: &'a RateLimiter,
    /// Keys to verify tokens with when no API Gateway is in front.
    pub verifier: Option<&'a Verifier>,
    /// `AUTH_VERIFY_IN_FUNCTION`: with claims from API Gateway, verify the
    /// bearer token's signature here too (defence in depth, [`identify`]).
    pub verify_in_function: bool,
}

impl<'a> From<&'a crate::app::App> for Gate<'a> {
    fn from(app: &'a crate::app::App) -> Self {
        Self {
            sessions: &app.sessions,
            limiter: &app.limiter,
            verifier: app.verifier.as_deref(),
            verify_in_function: app.config.verify_in_function,
        }
    }
}

/// A caller let in.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Who.
    pub caller: Caller,
    /// What they may do: the session's permissions (a user) or the
    /// token's scopes (a service).
    pub permissions: BTreeSet<String>,
    /// The rate-limit decision (for the `RateLimit` headers), when the
    /// route has a policy.
    pub limit: Option<RateLimitDecision>,
}

impl Admitted {
    /// Whether the caller holds `permission`.
    pub fn may(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether the caller is the user `user`.
    pub fn is_user(&self, user: &crate::infra::keys::UserId) -> bool {
        self.caller.user() == Some(user)
    }
}

/// 401: no token (`WWW-Authenticate: Bearer`) or a refused one
/// (`Bearer error="invalid_token"`). The body does not say which check
/// failed; the log does.
pub fn unauthenticated(missing: bool, request_id: &str) -> Response<Body> {
    let mut resp = Problem::new_public(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Not authenticated",
        if missing {
            "This route needs a bearer token (Authorization: Bearer <JWT>)."
        } else {
            "The bearer token is not valid (expired, revoked, or not for this API)."
        },
    )
    .into_response(request_id);
    let challenge = if missing {
        "Bearer"
    } else {
        "Bearer error=\"invalid_token\""
    };
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// 403: the caller may see the resource but not do this to it.
pub fn forbidden(detail: &str, request_id: &str) -> Response<Body> {
    Problem::new_public(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
        .into_response(request_id)
}

/// Clock leeway on the claims' `exp` (API Gateway allows none; ours is
/// `AUTH_LEEWAY_SECS`' default).
const CLAIMS_LEEWAY_SECS: i64 = 5;

/// Who is calling (step 1; no Redis).
///
/// Claims in `requestContext.authorizer.jwt` are trusted because only API
/// Gateway can invoke the HTTP functions (their resource policies name the
/// API as the only source: docs/security.md). With
/// `AUTH_VERIFY_IN_FUNCTION=true` the function does not rest on that
/// alone: the bearer token must also verify here against the configured
/// keys and name the same caller as the claims — principal, `jti`, `exp`
/// and scopes — else 401 (logged: `ClaimsMismatch`).
pub async fn identify(req: &Request, gate: Gate<'_>) -> Result<Caller, Denied> {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref()
        && let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
    {
        let caller = Caller::from_claims(&jwt.claims, jwt.scopes.as_deref())?;
        // API Gateway has checked `exp`; checked again (with the same
        // leeway) so that a replayed or hand-made event cannot outlive it.
        if caller.expires_at + time::Duration::seconds(CLAIMS_LEEWAY_SECS)
            < time::OffsetDateTime::now_utc()
        {
            return Err(Denied::Expired);
        }
        if gate.verify_in_function {
            let token = bearer(req)?;
            let verified = gate
                .verifier
                .ok_or(Denied::UnknownKey)?
                .verify_token(token)?;
            // The whole caller, scopes included: a service's permissions
            // are its token's scopes, so hand-made claims naming a genuine
            // token's `jti` must not lend it other scopes (or a later
            // `exp`). A user's permissions come from the session.
            if verified != caller {
                return Err(Denied::ClaimsMismatch);
            }
        }
        return Ok(caller);
    }
    let token = bearer(req)?;
    // No keys: nothing here can verify a token, so nothing is admitted.
    gate.verifier
        .ok_or(Denied::UnknownKey)?
        .verify_token_fresh(token)
        .await
}

/// The bearer token of `Authorization: Bearer <token>`.
fn bearer(req: &Request) -> Result<&str, Denied> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Denied::MissingToken)?;
    let (scheme, token) = header.trim().split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Denied::Malformed);
    }
    Ok(token.trim())
}

/// Lets the caller in and runs `work` in the same round-trip time (see the
/// module documentation); `policy` is the route's rate-limit policy for the
/// caller, if any. `Err` is the answer to send.
pub async fn admit<T>(
    gate: Gate<'_>,
    req: &Request,
    policy: Option<&'static str>,
    request_id: &str,
    work: impl Future<Output = T>,
) -> Result<(Admitted, T), Response<Body>> {
    let caller = identify(req, gate)
        .await
        .map_err(|why| refusal(why, request_id))?;
    admit_as(gate, caller, policy, request_id, work).await
}

/// The 401 for a caller [`identify`] refused, logged with the reason.
pub fn refusal(why: Denied, request_id: &str) -> Response<Body> {
    tracing::info!(reason = %why, "request refused: not authenticated");
    unauthenticated(why == Denied::MissingToken, request_id)
}

/// [`admit`] for a caller already identified (a route that needs to know
/// who it is before choosing its work identifies once, not twice).
pub async fn admit_as<T>(
    gate: Gate<'_>,
    caller: Caller,
    policy: Option<&'static str>,
    request_id: &str,
    work: impl Future<Output = T>,
) -> Result<(Admitted, T), Response<Body>> {
    let subject = match &caller.principal {
        Principal::User { user, .. } => RateSubject::User(*user),
        Principal::Service { client } => RateSubject::Service(client.clone()),
    };
    let endpoint = policy.and_then(|p| Endpoint::parse(p).ok());
    let (credentials, limit, out) = tokio::join!(
        check_credentials(gate, &caller),
        async {
            match &endpoint {
                Some(e) => Some(gate.limiter.check(subject, e, 1).await),
                None => None,
            }
        },
        work
    );
    let permissions = match credentials {
        Ok(p) => p,
        Err(Denied::RevocationUnavailable) => {
            tracing::warn!("request refused: revocation could not be checked");
            refund(gate, limit.as_ref()).await;
            return Err(
                Problem::unavailable("The session could not be checked; retry shortly.")
                    .into_response(request_id),
            );
        }
        Err(why) => {
            tracing::info!(reason = %why, "request refused: not authenticated");
            refund(gate, limit.as_ref()).await;
            return Err(unauthenticated(false, request_id));
        }
    };
    if let Some(d) = &limit
        && !d.allowed
    {
        return Err(too_many_requests(d, request_id));
    }
    Ok((
        Admitted {
            caller,
            permissions,
            limit,
        },
        out,
    ))
}

/// Gives back the units a refused request consumed.
async fn refund(gate: Gate<'_>, limit: Option<&RateLimitDecision>) {
    if let Some(d) = limit {
        gate.limiter.refund(d).await;
    }
}

/// The revocation and session checks, with the permissions they yield.
async fn check_credentials(gate: Gate<'_>, caller: &Caller) -> Result<BTreeSet<String>, Denied> {
    let sessions = gate.sessions;
    match &caller.principal {
        Principal::User { user, session } => {
            sessions::authenticate(sessions, user, session, &caller.jti, caller.expires_at)
                .await
                .map(|s| s.permissions.into_iter().collect())
        }
        Principal::Service { .. } => {
            if sessions::is_revoked(sessions, &caller.jti).await? {
                return Err(Denied::Revoked);
            }
            Ok(caller.scope_permissions.clone())
        }
    }
}
