//! `GET /users/{user_id}/profile`

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};

use crate::app::App;
use crate::domain::profile::get_profile;
use crate::edge::http::{
    Problem, check_body_size, json_response, path_param, request_id, with_cache_status,
};
use crate::edge::routes::limits::{PROFILE_READ, enforce, with_decision};
use crate::infra::keys::UserId;

pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::GET {
        return Problem::method_not_allowed("GET").into_response(&rid);
    }
    let Some(raw) = path_param(&req, "user_id", 1) else {
        return Problem::invalid_request("The path must be /users/{user_id}/profile.")
            .into_response(&rid);
    };
    let user = match UserId::parse(&raw) {
        Ok(user) => user,
        Err(e) => return Problem::invalid_request(format!("The {e}.")).into_response(&rid),
    };
    let limit = match enforce(app, &req, PROFILE_READ, &rid).await {
        Ok(limit) => limit,
        Err(denied) => return denied,
    };
    with_decision(read(app, user, &rid).await, limit.as_ref())
}

async fn read(app: &App, user: UserId, rid: &str) -> Response<Body> {
    match get_profile(&app.cache, &app.keys, &app.db, &user).await {
        Ok(cached) => {
            let resp = match &cached.value {
                Some(profile) => json_response(StatusCode::OK, profile),
                None => {
                    Problem::not_found(format!("No user has the id {user}.")).into_response(rid)
                }
            };
            tracing::info!(user_id = %user, cache_status = %crate::edge::http::cache_status_header(&cached.status), "profile read");
            with_cache_status(resp, &cached.status)
        }
        Err(e) => {
            tracing::error!(user_id = %user, error = %e, "profile read failed");
            Problem::unavailable("The profile store is unavailable; retry shortly.")
                .into_response(rid)
        }
    }
}
