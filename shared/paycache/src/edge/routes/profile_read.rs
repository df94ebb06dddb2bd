//! `GET /users/{user_id}/profile`

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};

use crate::app::App;
use crate::domain::identity::permissions;
use crate::domain::profile::Profiles;
use crate::domain::profile::UserProfile;
use crate::domain::profile::get_profile;
use crate::edge::http::{
    Problem, check_body_size, json_response, path_param, request_id, with_cache_status,
};
use crate::edge::routes::gate::{Gate, admit};
use crate::edge::routes::limits::{PROFILE_READ, with_decision};
use crate::infra::db::DbError;
use crate::infra::keys::UserId;
use crate::patterns::cache_aside::Cached;

/// What `GET /users/{user_id}/profile` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Profiles through the cache.
    pub profiles: &'a Profiles,
    /// Who is calling, and may they: sessions, the blacklist, the rate
    /// limiter, token keys.
    pub gate: Gate<'a>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            profiles: &app.profiles,
            gate: Gate::from(app),
        }
    }
}

/// `GET /users/{user_id}/profile`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
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
    let gate = deps.gate;
    let (who, read) = match admit(
        gate,
        &req,
        Some(PROFILE_READ),
        &rid,
        get_profile(deps.profiles, &user),
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    // Its own user, or support staff; anyone else is told it does not exist.
    if !who.is_user(&user) && !who.may(permissions::PROFILES_READ_ANY) {
        return with_decision(
            Problem::not_found(format!("No user has the id {user}.")).into_response(&rid),
            who.limit.as_ref(),
        );
    }
    with_decision(answer(read, user, &rid), who.limit.as_ref())
}

fn answer(read: Result<Cached<UserProfile>, DbError>, user: UserId, rid: &str) -> Response<Body> {
    match read {
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
