//! The Lambda authorizer of the WebSocket API's `$connect` (WebSocket APIs
//! have no JWT authorizer; the HTTP API uses API Gateway's, and each route
//! checks revocation itself: `crate::edge::routes::gate`). It also answers
//! an HTTP API's payload-2.0 event with a simple response, for a stack that
//! keeps a Lambda authorizer there.
//!
//! A request is authorized when its bearer JWT (header, or `?token=` on
//! `$connect`)
//! 1. is signed with a key of the configured JWKS (`AUTH_JWKS` or
//!    `AUTH_JWKS_FILE`) with **RS256** — or HS256 with `AUTH_HS256_SECRET`,
//!    which exists for local development only; `alg: none`, and any
//!    algorithm not enabled, are refused before a key is looked at;
//! 2. carries valid `exp` and `nbf` (leeway `AUTH_LEEWAY_SECS`), the
//!    configured `iss`, `aud` (or `client_id` when there is no `aud`), a
//!    `sub` that is a user id, a `jti` and a `sid` (session id) — a user's
//!    access token ([`crate::domain::identity`]);
//! 3. is not revoked (`blacklist:{jti}`), and its session exists and belongs
//!    to `sub` — reading the session refreshes its sliding TTL.
//!
//! Step 3 reads Redis; when Redis does not hold the session or cannot
//! answer, PostgreSQL decides (`crate::domain::sessions::authenticate`),
//! and when neither can, the authorizer **fails closed** (denies): a
//! revoked token must not become valid because a store is down.
//!
//! The route receives `user_id`, `session_id`, `jti`, `exp`, `roles` and
//! `permissions` (comma-separated) as authorizer context; whatever acts for
//! the calling user reads it from there, never from the request.
//!
//! **Result caching.** API Gateway can cache an authorizer's answer per
//! token for up to an hour; a revoked token would then stay valid until the
//! cached answer expires. The template sets the cache TTL to 0 (every
//! request is checked: two Redis requests sent at once, about one
//! round-trip time); raising it trades revocation latency for fewer
//! invocations.

use std::collections::HashMap;

use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerResponse, ApiGatewayV2CustomAuthorizerSimpleResponse,
};
use lambda_http::aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::App;
use crate::domain::fraud::Fraud;
pub use crate::domain::identity::{AuthConfig, Claims, Denied, Verifier};
use crate::domain::sessions;
use crate::domain::sessions::Sessions;
use crate::infra::config::ConfigError;
use crate::infra::keys::DeviceFingerprint;

/// The authorizer function's verifier, from the environment (the `init` of
/// its `event_function!`).
pub fn verifier_for_app(_: &App) -> Result<Verifier, ConfigError> {
    Verifier::from_env()
}

/// What the authorizer reads of its event — the same fields for an HTTP
/// API's (payload 2.0) and a WebSocket API's REQUEST authorizer. A local
/// view: `aws_lambda_events`' two request types differ in what they
/// require (`requestContext`) and the authorizer needs neither's rest.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthorizerEvent {
    /// Present for a WebSocket API (REQUEST authorizer, IAM policy answer).
    #[serde(default)]
    pub method_arn: Option<String>,
    /// HTTP API: the configured identity sources' values.
    #[serde(default)]
    pub identity_source: Option<IdentitySource>,
    #[serde(default, deserialize_with = "nullable")]
    pub headers: HashMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub query_string_parameters: HashMap<String, String>,
}

/// `identitySource`: a list (payload 2.0) or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum IdentitySource {
    Many(Vec<String>),
    One(String),
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    Ok(Option::<HashMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

impl AuthorizerEvent {
    /// The typed event; `None` for anything that is not one (denied).
    pub fn parse(event: &Value) -> Option<Self> {
        Self::deserialize(event).ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The bearer token of an authorizer event: header `authorization`, the
/// first identity source, or — for WebSocket `$connect` — the `token` query
/// parameter.
pub(crate) fn bearer(event: &AuthorizerEvent) -> Option<&str> {
    let from_headers = event.header("authorization");
    // WebSocket `$connect`: browsers cannot set headers, so `?token=`.
    if from_headers.is_none()
        && let Some(token) = event
            .query_string_parameters
            .get("token")
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
    {
        return Some(token);
    }
    let raw = from_headers.or_else(|| match event.identity_source.as_ref()? {
        IdentitySource::Many(list) => list.first().map(String::as_str),
        IdentitySource::One(one) => one.split(',').next(),
    })?;
    let (scheme, token) = raw.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// Fraud signals gathered for an authorized request.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Signals {
    /// True when `X-Device-Fingerprint` names a device new for this user.
    pub new_device: bool,
    pub risk_score: Option<u32>,
}

fn device_header(event: &AuthorizerEvent) -> Option<DeviceFingerprint> {
    DeviceFingerprint::parse(event.header("x-device-fingerprint")?).ok()
}

/// What the authorizer uses besides its [`Verifier`].
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Sessions and the token blacklist.
    pub sessions: &'a Sessions,
    /// Fraud signals (devices, risk scores).
    pub fraud: &'a Fraud,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            sessions: &app.sessions,
            fraud: &app.fraud,
        }
    }
}

/// Decides; returns the claims and session roles/permissions when allowed.
pub async fn decide<'a>(
    deps: impl Into<Deps<'a>>,
    verifier: &Verifier,
    event: &Value,
) -> Result<(Claims, sessions::Session), Denied> {
    decide_with_signals(deps, verifier, event)
        .await
        .map(|(c, s, _)| (c, s))
}

/// [`decide`], plus the fraud signals (device, risk score), gathered
/// concurrently with the revocation check. Fraud signals never deny: they
/// inform the route, and their failure only leaves them out.
pub(crate) async fn decide_with_signals<'a>(
    deps: impl Into<Deps<'a>>,
    verifier: &Verifier,
    event: &Value,
) -> Result<(Claims, sessions::Session, Signals), Denied> {
    let deps = deps.into();
    let event = AuthorizerEvent::parse(event).ok_or(Denied::MissingToken)?;
    let token = bearer(&event).ok_or(Denied::MissingToken)?;
    let claims = verifier.verify_fresh(token).await?;
    let device = device_header(&event);
    let (session, new_device, risk) = tokio::join!(
        sessions::authenticate(
            deps.sessions,
            &claims.user,
            &claims.session,
            &claims.jti,
            claims.expires_at
        ),
        async {
            match &device {
                Some(d) => crate::domain::fraud::device_seen(deps.fraud, &claims.user, d)
                    .await
                    .unwrap_or(false),
                None => false,
            }
        },
        async {
            crate::domain::fraud::risk(deps.fraud, &claims.user)
                .await
                .ok()
                .flatten()
        }
    );
    let session = session?;
    let signals = Signals {
        new_device,
        risk_score: risk.map(|r| r.score),
    };
    Ok((claims, session, signals))
}

/// The context the authorizer passes to the route (API Gateway flattens it
/// into strings, numbers and booleans).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct AuthorizerContext {
    pub user_id: String,
    pub session_id: String,
    pub jti: String,
    pub exp: i64,
    pub roles: String,
    pub permissions: String,
    pub new_device: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u32>,
}

/// The authorizer's answer: the HTTP API's simple response, or, for a
/// WebSocket API (its events carry `methodArn`), an IAM policy with the same
/// context.
pub async fn authorize<'a>(deps: impl Into<Deps<'a>>, verifier: &Verifier, event: &Value) -> Value {
    let context = match decide_with_signals(deps, verifier, event).await {
        Ok((claims, session, signals)) => Some(AuthorizerContext {
            user_id: claims.user.to_string(),
            session_id: claims.session.to_string(),
            jti: claims.jti.to_string(),
            exp: claims.expires_at.unix_timestamp(),
            roles: session.roles.join(","),
            permissions: session.permissions.join(","),
            new_device: signals.new_device,
            risk_score: signals.risk_score,
        }),
        Err(why) => {
            tracing::info!(reason = %why, "request denied by the authorizer");
            None
        }
    };
    let method_arn = AuthorizerEvent::parse(event).and_then(|e| e.method_arn);
    let answer = match method_arn {
        None => {
            let mut simple = ApiGatewayV2CustomAuthorizerSimpleResponse::<Value>::default();
            simple.is_authorized = context.is_some();
            if let Some(c) = &context {
                simple.context = serde_json::to_value(c).unwrap_or(Value::Null);
            }
            serde_json::to_value(simple)
        }
        Some(arn) => {
            let mut statement = IamPolicyStatement::default();
            statement.action = vec!["execute-api:Invoke".to_owned()];
            statement.effect = if context.is_some() {
                IamPolicyEffect::Allow
            } else {
                IamPolicyEffect::Deny
            };
            statement.resource = vec![arn];
            let mut policy = ApiGatewayCustomAuthorizerResponse::<Value>::default();
            policy.principal_id = Some(
                context
                    .as_ref()
                    .map_or_else(|| "anonymous".to_owned(), |c| c.user_id.clone()),
            );
            policy.policy_document.version = Some("2012-10-17".to_owned());
            policy.policy_document.statement = vec![statement];
            if let Some(c) = &context {
                policy.context = serde_json::to_value(c).unwrap_or(Value::Null);
            }
            serde_json::to_value(policy)
        }
    };
    let mut answer = answer.unwrap_or_else(|_| json!({"isAuthorized": false}));
    // Absent, not `null`: a denial's context, an unused usage key.
    if let Some(m) = answer.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    answer
}

/// `authorizer`'s handler (see [`authorize`]).
pub async fn handle_authorizer(
    app: &App,
    verifier: &Verifier,
    event: Value,
    _: lambda_http::lambda_runtime::Context,
) -> crate::edge::events::Answer {
    Ok(authorize(app, verifier, &event).await)
}
