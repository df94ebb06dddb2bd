//! The HTTP edge: the one place where errors become `application/problem+json`
//! (RFC 9457) and cache outcomes become `Cache-Status` (RFC 9211).
//!
//! A problem's `detail` describes what was wrong with the request in plain
//! words. It never carries internal error text: Redis and SQL messages,
//! addresses and secrets stay in the logs' structured fields at most.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderName, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

use crate::patterns::cache_aside::CacheStatus;

/// The request headers a browser on another origin may send (CORS
/// `Access-Control-Allow-Headers`): what the API reads. The template's
/// `CorsConfiguration` must list each (deployment contract test).
pub const CORS_REQUEST_HEADERS: &[&str] = &["authorization", "content-type", "idempotency-key"];

/// The response headers a browser script may read (CORS
/// `Access-Control-Expose-Headers`): the rate limit's, `Retry-After` and
/// `Cache-Status`.
pub const CORS_EXPOSED_HEADERS: &[&str] = &[
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "cache-status",
];

/// The methods a browser on another origin may use (CORS
/// `Access-Control-Allow-Methods`): the routes' methods, and `OPTIONS`.
pub const CORS_ALLOWED_METHODS: &[&str] = &["GET", "PUT", "POST", "OPTIONS"];

/// How long a browser may keep a preflight's answer (CORS
/// `Access-Control-Max-Age`, seconds).
pub const CORS_MAX_AGE_SECS: u32 = 600;

pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Largest request body accepted (the contract's 64 KiB).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// An RFC 9457 problem. `type` is `urn:paycache:problem:<slug>`; the slugs
/// are listed in the OpenAPI document.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extra members (e.g. `current` on a 409).
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of a type not covered by the constructors below.
    pub(crate) fn new_public(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(status, slug, title, detail)
    }

    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    pub(crate) fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "The request is malformed",
            detail,
        )
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "The resource does not exist",
            detail,
        )
    }

    pub(crate) fn method_not_allowed(allowed: &'static str) -> Self {
        let mut p = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "The method is not allowed on this resource",
            format!("This resource accepts {allowed} only."),
        );
        p.extra.insert("allow".into(), allowed.into());
        p
    }

    pub(crate) fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "The request is well-formed but cannot be applied",
            detail,
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "version-conflict",
            "The resource has changed",
            detail,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "The request could not be completed; it was logged.",
        )
    }

    /// Adds a member to the problem body (e.g. `current` on a 409).
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }

    pub(crate) fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "The request body is too large",
            format!("Request bodies are limited to {MAX_BODY_BYTES} bytes."),
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The service is temporarily unavailable",
            detail,
        );
        p.retry_after_secs = Some(1);
        p
    }

    pub(crate) fn into_response(self, request_id: &str) -> Response<Body> {
        let mut body = serde_json::Map::new();
        body.insert(
            "type".into(),
            format!("urn:paycache:problem:{}", self.slug).into(),
        );
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.into());
        body.insert("request_id".into(), request_id.into());
        let allow = self
            .extra
            .get("allow")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        for (k, v) in self.extra {
            if k != "allow" {
                body.insert(k, v);
            }
        }
        let mut resp = json_response(self.status, &serde_json::Value::Object(body));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(http::header::ALLOW, allow);
        }
        resp
    }
}

/// A JSON response. Serialising our own types cannot fail; if it somehow
/// did, the client gets a bare 500 rather than a panic.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    // Text, not binary: API Gateway then passes the body through as is
    // instead of base64-decoding it.
    let (status, body) = match serde_json::to_string(value) {
        Ok(body) => (status, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned()),
    };
    let mut resp = Response::new(Body::Text(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The contract's size limit, checked before anything else is read: a body
/// over [`MAX_BODY_BYTES`] is answered with 413 whatever the route.
pub(crate) fn check_body_size(req: &Request) -> Result<(), Problem> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        Err(Problem::payload_too_large())
    } else {
        Ok(())
    }
}

/// A JSON number that is a whole number, in JSON Schema's sense: `4518`,
/// and also `4518.0` or `4.518e3` (an integral value written as a float,
/// exactly representable), but not `4518.5` or a negative number.
pub(crate) fn whole_number(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    let f = n.as_f64()?;
    // 2^53: beyond it a float no longer names one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && (0.0..=EXACT).contains(&f)).then_some(f as u64)
}

/// The request body as a JSON object, or a 400 saying why it is not one.
pub(crate) fn json_object(
    req: &Request,
) -> Result<serde_json::Map<String, serde_json::Value>, Problem> {
    let body: &[u8] = req.body().as_ref();
    if body.is_empty() {
        return Err(Problem::invalid_request(
            "The request body must be a JSON object.",
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::invalid_request(
            "The request body must be a JSON object.",
        )),
        Err(_) => Err(Problem::invalid_request(
            "The request body is not valid JSON (numbers must fit a 64-bit float, text must be UTF-8).",
        )),
    }
}

/// A header that may appear at most once, as visible ASCII text.
pub(crate) fn single_header<'a>(req: &'a Request, name: &str) -> Result<Option<&'a str>, Problem> {
    let mut values = req.headers().get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::invalid_request(format!(
            "The {name} header must appear at most once."
        )));
    }
    first.to_str().map(Some).map_err(|_| {
        Problem::invalid_request(format!("The {name} header must be printable ASCII."))
    })
}

/// Adds the `Cache-Status` header.
pub(crate) fn with_cache_status(mut resp: Response<Body>, status: &CacheStatus) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&cache_status_header(status)) {
        resp.headers_mut().insert(CACHE_STATUS, v);
    }
    resp
}

/// API Gateway's request id when present (it is what a client sees in
/// `apigw-requestid`), else the Lambda invocation's.
pub fn request_id(req: &Request) -> String {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref()
        && let Some(id) = &ctx.request_id
        && !id.is_empty()
    {
        return id.clone();
    }
    req.lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// A path parameter, from API Gateway's `pathParameters`, or, when a router
/// did not fill them in, from the path itself at segment `index`.
pub(crate) fn path_param(req: &Request, name: &str, index: usize) -> Option<String> {
    if let Some(v) = req.path_parameters_ref().and_then(|p| p.first(name)) {
        return Some(v.to_owned());
    }
    req.uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(index)
        .map(str::to_owned)
}

/// The RFC 9211 `Cache-Status` header value of `status`, e.g. `paycache; hit`.
pub fn cache_status_header(status: &CacheStatus) -> String {
    match status {
        CacheStatus::Hit => "paycache; hit".into(),
        CacheStatus::Coalesced => "paycache; hit; detail=coalesced".into(),
        CacheStatus::Miss { stored: true } => "paycache; fwd=miss; stored".into(),
        CacheStatus::Miss { stored: false } => "paycache; fwd=miss".into(),
        CacheStatus::LeaseTimeout => "paycache; fwd=miss; detail=lease-timeout".into(),
        CacheStatus::EarlyRefresh { stored: true } => {
            "paycache; fwd=stale; stored; detail=early-refresh".into()
        }
        CacheStatus::EarlyRefresh { stored: false } => {
            "paycache; fwd=stale; detail=early-refresh".into()
        }
        CacheStatus::WriteInProgress => "paycache; fwd=miss; detail=write-in-progress".into(),
        CacheStatus::Bypass(_) => "paycache; fwd=uri-miss; detail=redis-unavailable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_header_values_follow_rfc_9211() {
        assert_eq!(cache_status_header(&CacheStatus::Hit), "paycache; hit");
        assert_eq!(
            cache_status_header(&CacheStatus::Miss { stored: true }),
            "paycache; fwd=miss; stored"
        );
        assert_eq!(
            cache_status_header(&CacheStatus::Bypass(
                crate::infra::connection::RedisUnavailable::Timeout
            )),
            "paycache; fwd=uri-miss; detail=redis-unavailable"
        );
    }

    #[test]
    fn whole_numbers_follow_json_schema() {
        let n = |s: &str| whole_number(&serde_json::from_str::<serde_json::Number>(s).unwrap());
        assert_eq!(n("4518"), Some(4518));
        assert_eq!(n("4518.0"), Some(4518));
        assert_eq!(n("4.518e3"), Some(4518));
        assert_eq!(n("4518.5"), None);
        assert_eq!(n("3831808347058366.0"), Some(3_831_808_347_058_366));
        assert_eq!(n("-1"), None);
        assert_eq!(n("-0.0"), Some(0));
        assert_eq!(n("1e300"), None);
        assert_eq!(n("18446744073709551615"), Some(u64::MAX));
    }
}
