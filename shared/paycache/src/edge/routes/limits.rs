//! The rate-limit answers the HTTP functions share: the routes' policy
//! names, 429 with the standard headers, or the headers on a response let
//! through. The caller is limited by [`crate::edge::routes::gate`], as the
//! principal the verified token names — never anything from the path or
//! body, which a caller controls.

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use lambda_http::{Body, Response};

use crate::edge::http::Problem;
use crate::patterns::ratelimit::RateLimitDecision;

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Policy names of the routes.
pub(crate) const PROFILE_READ: &str = "users.profile.read";
pub(crate) const BALANCE_READ: &str = "wallets.balance.read";
pub(crate) const BALANCE_WRITE: &str = "wallets.balance.write";
pub(crate) const LOGOUT: &str = "sessions.logout";

/// Every policy the routes limit their callers by. `POST /rate-limit/check`
/// keeps its counters apart from these (`crate::edge::routes::rate_limit_check`).
pub const ROUTE_POLICIES: [&str; 4] = [PROFILE_READ, BALANCE_READ, BALANCE_WRITE, LOGOUT];

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
