//! `GET /health` and `GET /health/nodes` (function `health-check`).
//!
//! - `GET /health` is anonymous and answers the status only —
//!   `{"status": "healthy"}` or 503 `{"status": "unhealthy", "error"}` —
//!   from the probe over the function's own connection: nothing of the
//!   topology (no node addresses, roles or memory), no new connection per
//!   call (`crate::domain::health::status`).
//! - `GET /health/nodes` is the full report (every node's address, role,
//!   latency and memory; `cluster_state`), for a principal holding
//!   `health.read` (a service with the scope `paycache/health.read`), let
//!   in by the same gate as every protected route: 401 without a valid
//!   token, 403 without the permission.
//!
//! The 503 body is the contract's `{"status": "unhealthy", "error"}` as
//! `application/json`, not a problem document: a problem's `status` member
//! is the HTTP status number, which would collide with the health status
//! string the contract specifies. The OpenAPI document records this.

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::app::App;
use crate::domain::health::{self, Health, Unhealthy};
use crate::domain::identity::permissions;
use crate::edge::http::{Problem, check_body_size, json_response, request_id};
use crate::edge::routes::gate::{Gate, admit, forbidden};

/// What the health routes use.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// The cluster's health.
    pub health: &'a Health,
    /// Who is calling (`GET /health/nodes` only).
    pub gate: Gate<'a>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            health: &app.health,
            gate: Gate::from(app),
        }
    }
}

fn unhealthy(why: &Unhealthy) -> Response<Body> {
    tracing::warn!(error = %why, "cache unhealthy");
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unhealthy", "error": why.to_string()}),
    )
}

/// `GET /health` and `GET /health/nodes`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::GET {
        return Problem::method_not_allowed("GET").into_response(&rid);
    }
    let nodes = req
        .uri()
        .path()
        .trim_end_matches('/')
        .ends_with("/health/nodes");
    if !nodes {
        return match health::status(deps.health).await {
            Ok(status) => json_response(StatusCode::OK, &status),
            Err(why) => unhealthy(&why),
        };
    }
    let (who, ()) = match admit(deps.gate, &req, None, &rid, async {}).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    if !who.may(permissions::HEALTH_READ) {
        return forbidden("The node details need the health.read permission.", &rid);
    }
    match health::check(deps.health).await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(why) => unhealthy(&why),
    }
}
