//! `GET /health` (function `health-check`).
//!
//! The 503 body is the contract's `{"status": "unhealthy", "error"}` as
//! `application/json`, not a problem document: a problem's `status` member
//! is the HTTP status number, which would collide with the health status
//! string the contract specifies. The OpenAPI document records this.

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::app::App;
use crate::domain::health::Health;
use crate::domain::health::check;
use crate::edge::http::{Problem, check_body_size, json_response, request_id};

/// What `GET /health` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// The cluster's health.
    pub health: &'a Health,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            health: &app.health,
        }
    }
}

/// `GET /health`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::GET {
        return Problem::method_not_allowed("GET").into_response(&rid);
    }
    match check(deps.health).await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(why) => {
            tracing::warn!(error = %why, "cache unhealthy");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unhealthy", "error": why.to_string()}),
            )
        }
    }
}
