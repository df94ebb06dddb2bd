//! `POST /rate-limit/check` (function `rate-limit-check`).

use http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::Value;

use crate::app::App;
use crate::domain::identity::permissions;
use crate::edge::http::{
    Problem, check_body_size, json_object, json_response, request_id, whole_number,
};
use crate::edge::routes::gate::{Gate, admit, forbidden};
use crate::edge::routes::limits::{ROUTE_POLICIES, too_many_requests, with_headers};
use crate::infra::keys::{Endpoint, UserId};
use crate::patterns::ratelimit::Counters;

/// What `POST /rate-limit/check` uses.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Who is calling, and may they: sessions, the blacklist, the rate
    /// limiter, token keys.
    pub gate: Gate<'a>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            gate: Gate::from(app),
        }
    }
}

/// `POST /rate-limit/check`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    if req.method() != Method::POST {
        return Problem::method_not_allowed("POST").into_response(&rid);
    }
    let (user, endpoint, cost) = match parse(&req) {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(&rid),
    };
    // Consuming a user's limit is a write: it starts only after the
    // caller's check (two round trips in all).
    let gate = deps.gate;
    let (who, ()) = match admit(gate, &req, None, &rid, async {}).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    if !who.may(permissions::RATELIMIT_CHECK) {
        return forbidden(
            "Only a service with the ratelimit.check permission may consult rate limits.",
            &rid,
        );
    }
    // The routes' own policies are not for consulting: their counters are
    // apart anyway (`Counters::Consulted`), and a service asking for one of
    // those names is told so rather than shown a number it cannot spend.
    if ROUTE_POLICIES.contains(&endpoint.as_str()) {
        return Problem::unprocessable(format!(
            "{} is a policy of this API's own routes; services consult their own policies.",
            endpoint.as_str()
        ))
        .into_response(&rid);
    }
    let policy = deps.gate.limiter.policy(&endpoint);
    if cost > policy.max_cost() {
        return Problem::unprocessable(format!(
            "cost {cost} can never be admitted: the {} policy allows at most {} at once.",
            policy.name,
            policy.max_cost()
        ))
        .into_response(&rid);
    }
    let decision = deps
        .gate
        .limiter
        .check_in(Counters::Consulted, &user, &endpoint, cost)
        .await;
    if decision.allowed {
        with_headers(json_response(StatusCode::OK, &decision), &decision)
    } else {
        too_many_requests(&decision, &rid)
    }
}

fn parse(req: &Request) -> Result<(UserId, Endpoint, u64), Problem> {
    let body = json_object(req)?;
    if let Some(unknown) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "user_id" | "endpoint" | "cost"))
    {
        return Err(Problem::invalid_request(format!(
            "Unknown field \"{}\": the body has user_id, endpoint and cost only.",
            unknown.chars().take(64).collect::<String>()
        )));
    }
    let user = match body.get("user_id") {
        Some(Value::String(s)) => {
            UserId::parse(s).map_err(|e| Problem::invalid_request(format!("The {e}.")))?
        }
        Some(_) => return Err(Problem::invalid_request("user_id must be a string.")),
        None => return Err(Problem::invalid_request("user_id is required.")),
    };
    let endpoint = match body.get("endpoint") {
        Some(Value::String(s)) => {
            Endpoint::parse(s).map_err(|e| Problem::invalid_request(format!("The {e}.")))?
        }
        Some(_) => return Err(Problem::invalid_request("endpoint must be a string.")),
        None => return Err(Problem::invalid_request("endpoint is required.")),
    };
    let cost = match body.get("cost") {
        None => 1,
        Some(Value::Number(n)) => whole_number(n)
            .filter(|c| (1..=1000).contains(c))
            .ok_or_else(|| {
                Problem::invalid_request("cost must be a whole number from 1 to 1000.")
            })?,
        Some(_) => {
            return Err(Problem::invalid_request(
                "cost must be a whole number from 1 to 1000.",
            ));
        }
    };
    Ok((user, endpoint, cost))
}
