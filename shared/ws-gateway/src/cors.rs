//! CORS at the front door, answered as API Gateway's HTTP API answers it
//! for the template's `CorsConfiguration`, from the same lists
//! (`paycache::http::CORS_*`; the deployment contract test checks that the
//! template lists exactly these).
//!
//! What API Gateway does, and so what this does (AWS, "Configure CORS for
//! HTTP APIs in API Gateway"):
//! - "API Gateway automatically sends a response to preflight OPTIONS
//!   requests, even if there isn't an OPTIONS route": a request with
//!   `Origin` and `Access-Control-Request-Method` never reaches a function.
//!   Answered 204; with the CORS headers only for an allowed origin, so a
//!   browser on any other origin refuses the call.
//! - "For a CORS request, API Gateway adds the configured CORS headers to
//!   the response from an integration": `Access-Control-Allow-Origin` (the
//!   request's origin, when allowed) and `Access-Control-Expose-Headers`.
//! - "API Gateway ignores CORS headers returned from your backend
//!   integration": every `access-control-*` header of the upstream answer
//!   is dropped. `cargo lambda watch` adds CORS headers of its own to what
//!   the functions answer; passed through, a local browser test would pass
//!   where the deployed API refuses.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use paycache::http::{
    CORS_ALLOWED_METHODS, CORS_EXPOSED_HEADERS, CORS_MAX_AGE_SECS, CORS_REQUEST_HEADERS,
};

/// The origins allowed to call the API (`CorsAllowedOrigin` deployed;
/// `--cors-origin` here). None: every cross-origin call is refused.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
    // The lists as header values, joined once.
    methods: HeaderValue,
    request_headers: HeaderValue,
    exposed_headers: HeaderValue,
}

impl Default for Cors {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Cors {
    /// Origins as `scheme://host[:port]`, compared exactly (as the
    /// template's parameter is written: no trailing slash, no path).
    pub fn new(origins: Vec<String>) -> Self {
        Self {
            origins,
            methods: list(CORS_ALLOWED_METHODS),
            request_headers: list(CORS_REQUEST_HEADERS),
            exposed_headers: list(CORS_EXPOSED_HEADERS),
        }
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o == text)
            .then(|| origin.clone())
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), or `None` for any other request.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS
            || !headers.contains_key(header::ORIGIN)
            || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(origin) = self.allowed(headers) {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.request_headers.clone(),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(CORS_MAX_AGE_SECS),
            );
        }
        Some(resp)
    }

    /// An upstream answer as API Gateway returns it: its own CORS headers
    /// dropped, the configured ones added for an allowed origin.
    pub fn answer(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let upstream: Vec<HeaderName> = response
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in upstream {
            response.remove(name);
        }
        if let Some(origin) = self.allowed(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                self.exposed_headers.clone(),
            );
        }
    }
}

fn list(items: &[&str]) -> HeaderValue {
    // The lists are ASCII constants.
    HeaderValue::from_str(&items.join(",")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }

    const APP: &str = "http://localhost:3000";

    #[test]
    fn a_preflight_from_the_allowed_origin_lists_the_codes_headers() {
        let cors = Cors::new(vec![APP.to_owned()]);
        let req = headers(&[
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "authorization,idempotency-key",
            ),
        ]);
        let resp = cors.preflight(&Method::OPTIONS, &req).expect("a preflight");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(get(h, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            get(h, "access-control-allow-methods"),
            Some(CORS_ALLOWED_METHODS.join(",").as_str())
        );
        assert_eq!(
            get(h, "access-control-allow-headers"),
            Some("authorization,content-type,idempotency-key")
        );
        assert_eq!(get(h, "access-control-max-age"), Some("600"));
    }

    #[test]
    fn another_origin_gets_no_cors_headers() {
        let cors = Cors::new(vec![APP.to_owned()]);
        for origin in ["http://localhost:3001", "http://localhost:3000/", "null"] {
            let mut req = headers(&[("access-control-request-method", "GET")]);
            req.insert("origin", HeaderValue::from_static(origin));
            let resp = cors.preflight(&Method::OPTIONS, &req).expect("a preflight");
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            assert!(
                !resp
                    .headers()
                    .keys()
                    .any(|k| k.as_str().starts_with("access-control-")),
                "{origin}: {:?}",
                resp.headers()
            );
            let mut answer = headers(&[("content-type", "application/json")]);
            cors.answer(&req, &mut answer);
            assert_eq!(answer.len(), 1, "{origin}: {answer:?}");
        }
    }

    #[test]
    fn only_a_preflight_is_answered_here() {
        let cors = Cors::new(vec![APP.to_owned()]);
        let with_origin = headers(&[("origin", APP)]);
        assert!(cors.preflight(&Method::OPTIONS, &with_origin).is_none());
        let full = headers(&[("origin", APP), ("access-control-request-method", "GET")]);
        assert!(cors.preflight(&Method::GET, &full).is_none());
        let no_origin = headers(&[("access-control-request-method", "GET")]);
        assert!(cors.preflight(&Method::OPTIONS, &no_origin).is_none());
    }

    #[test]
    fn the_upstreams_cors_headers_are_replaced() {
        let cors = Cors::new(vec![APP.to_owned()]);
        let mut answer = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", "*"),
            ("access-control-allow-credentials", "true"),
            ("cache-status", "paycache; hit"),
        ]);
        cors.answer(&headers(&[("origin", APP)]), &mut answer);
        assert_eq!(get(&answer, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            get(&answer, "access-control-expose-headers"),
            Some("ratelimit,ratelimit-policy,retry-after,cache-status")
        );
        assert_eq!(get(&answer, "access-control-allow-headers"), None);
        assert_eq!(get(&answer, "access-control-allow-credentials"), None);
        assert_eq!(get(&answer, "cache-status"), Some("paycache; hit"));
        // Without a configured origin, nothing of the upstream's remains.
        let mut answer = headers(&[("access-control-allow-origin", "*")]);
        Cors::default().answer(&headers(&[("origin", APP)]), &mut answer);
        assert!(answer.is_empty(), "{answer:?}");
    }
}
