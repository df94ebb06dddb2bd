//! The rate-limit enforcement layer the HTTP functions share: apply the
//! route's policy to the calling user before doing any work; answer 429 with
//! the standard headers, or let the request through with them.
//!
//! The calling user is the `user_id` the API Gateway Lambda authorizer puts
//! in the request context (`requestContext.authorizer.lambda.user_id`) —
//! never anything from the path or body, which a caller controls. A request
//! without an authenticated user is not limited per user here (it cannot be
//! attributed); the authorizer is what admits such requests or not.

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::edge::http::Problem;
use crate::infra::keys::{Endpoint, UserId};
use crate::patterns::ratelimit::{RateLimitDecision, RateLimiter};

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Policy names of the routes.
pub(crate) const PROFILE_READ: &str = "users.profile.read";
pub(crate) const BALANCE_READ: &str = "wallets.balance.read";
pub(crate) const BALANCE_WRITE: &str = "wallets.balance.write";

/// The authenticated caller, if the authorizer named one.
pub(crate) fn calling_user(req: &Request) -> Option<UserId> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() else {
        return None;
    };
    let raw = ctx.authorizer.as_ref()?.fields.get("user_id")?.as_str()?;
    UserId::parse(raw).ok()
}

/// Applies `policy` to the caller. `Err` is the 429 to send; `Ok(Some)` is
/// the decision whose headers the response should carry.
pub(crate) async fn enforce(
    limiter: &RateLimiter,
    req: &Request,
    policy: &'static str,
    request_id: &str,
) -> Result<Option<RateLimitDecision>, Response<Body>> {
    let Some(user) = calling_user(req) else {
        return Ok(None);
    };
    let Ok(name) = Endpoint::parse(policy) else {
        return Ok(None);
    };
    let decision = limiter.check(&user, &name, 1).await;
    if decision.allowed {
        Ok(Some(decision))
    } else {
        Err(too_many_requests(&decision, request_id))
    }
}

/// A 429 problem carrying the decision's members and headers.
pub(crate) fn too_many_requests(decision: &RateLimitDecision, request_id: &str) -> Response<Body> {
    let mut problem = Problem::new_public(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "The {} limit is {} per {} s; retry in {} s.",
            decision.policy,
            decision.limit,
            decision.window_secs,
            decision.retry_after_secs()
        ),
    );
    if let Ok(serde_json::Value::Object(members)) = serde_json::to_value(decision) {
        for (k, v) in members {
            problem = problem.with(&k, v);
        }
    }
    let resp = problem.into_response(request_id);
    with_headers(resp, decision)
}

/// Adds `RateLimit-Policy` and `RateLimit` (and `Retry-After` when denied).
pub(crate) fn with_headers(
    mut resp: Response<Body>,
    decision: &RateLimitDecision,
) -> Response<Body> {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&decision.policy_header()) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&decision.limit_header()) {
        headers.insert(RATELIMIT, v);
    }
    if !decision.allowed {
        headers.insert(RETRY_AFTER, HeaderValue::from(decision.retry_after_secs()));
    }
    resp
}

/// [`with_headers`] when the request was limited at all.
pub(crate) fn with_decision(
    resp: Response<Body>,
    decision: Option<&RateLimitDecision>,
) -> Response<Body> {
    match decision {
        Some(d) => with_headers(resp, d),
        None => resp,
    }
}
