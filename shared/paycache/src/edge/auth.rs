//! The API Gateway HTTP API Lambda authorizer (payload 2.0, simple
//! responses): who is calling, and may they.
//!
//! A request is authorized when its bearer JWT
//! 1. is signed with a key of the configured JWKS (`AUTH_JWKS` or
//!    `AUTH_JWKS_FILE`) with **RS256** — or HS256 with `AUTH_HS256_SECRET`,
//!    which exists for local development only; `alg: none`, and any
//!    algorithm not enabled, are refused before a key is looked at;
//! 2. carries valid `exp` and `nbf` (leeway `AUTH_LEEWAY_SECS`), the
//!    configured `iss` and `aud`, a `sub` that is a user id, a `jti` and a
//!    `sid` (session id);
//! 3. is not revoked (`blacklist:{jti}`), and its session exists and belongs
//!    to `sub` — reading the session refreshes its sliding TTL.
//!
//! Step 3 needs Redis. When Redis cannot answer, the authorizer **fails
//! closed** (denies) unless `AUTH_REVOCATION_FAIL_OPEN=true`: a revoked
//! token must not become valid because Redis is slow.
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

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerResponse, ApiGatewayV2CustomAuthorizerSimpleResponse,
};
use lambda_http::aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::app::App;
use crate::domain::fraud::Fraud;
use crate::domain::sessions;
use crate::domain::sessions::Sessions;
use crate::infra::config::{ConfigError, Secret};
use crate::infra::keys::{DeviceFingerprint, Jti, SessionId, UserId};

/// Authorizer settings, read by the functions that need them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `AUTH_ISSUER`: the `iss` tokens must carry.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: the `aud` tokens must carry.
    pub audience: String,
    /// `AUTH_JWKS`: the issuer's public keys (JSON).
    pub jwks: String,
    /// `AUTH_HS256_SECRET`: a shared key for local development only.
    pub hs256_secret: Option<Secret>,
    /// `AUTH_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// `AUTH_REVOCATION_FAIL_OPEN`: admit when Redis cannot say whether a token is revoked.
    pub revocation_fail_open: bool,
}

impl AuthConfig {
    /// From the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From `lookup` (tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let required = |k: &'static str| {
            get(k).ok_or(ConfigError {
                variable: k,
                problem: "is required by the authorizer".into(),
            })
        };
        let jwks = match (get("AUTH_JWKS"), get("AUTH_JWKS_FILE")) {
            (Some(doc), _) => doc,
            (None, Some(path)) => std::fs::read_to_string(&path).map_err(|_| ConfigError {
                variable: "AUTH_JWKS_FILE",
                problem: "cannot be read".into(),
            })?,
            (None, None) => {
                return Err(ConfigError {
                    variable: "AUTH_JWKS",
                    problem: "AUTH_JWKS (a JWKS document) or AUTH_JWKS_FILE is required".into(),
                });
            }
        };
        let leeway_secs = match get("AUTH_LEEWAY_SECS") {
            None => 5,
            Some(v) => v.parse().ok().filter(|s| *s <= 300).ok_or(ConfigError {
                variable: "AUTH_LEEWAY_SECS",
                problem: "must be a whole number from 0 to 300".into(),
            })?,
        };
        let revocation_fail_open = match get("AUTH_REVOCATION_FAIL_OPEN").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ConfigError {
                    variable: "AUTH_REVOCATION_FAIL_OPEN",
                    problem: "must be `true` or `false`".into(),
                });
            }
        };
        Ok(Self {
            issuer: required("AUTH_ISSUER")?,
            audience: required("AUTH_AUDIENCE")?,
            jwks,
            hs256_secret: get("AUTH_HS256_SECRET").map(Secret::new),
            leeway_secs,
            revocation_fail_open,
        })
    }
}

/// Why a request was denied (logged; the client only sees a 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no bearer token")]
    /// No `Authorization: Bearer …` header.
    MissingToken,
    #[error("the token is malformed")]
    /// Not a JWT.
    Malformed,
    #[error("the token's algorithm is not allowed")]
    /// An algorithm not allowed (`none`, or one the keys do not have).
    DisallowedAlgorithm,
    #[error("the token's key is unknown")]
    /// No key with the token's `kid`.
    UnknownKey,
    #[error("the signature is invalid")]
    /// The signature does not verify.
    BadSignature,
    #[error("the token has expired")]
    /// Past `exp`.
    Expired,
    #[error("the token is not valid yet")]
    /// Before `nbf`.
    NotYetValid,
    #[error("the token's issuer is wrong")]
    /// Another `iss`.
    WrongIssuer,
    #[error("the token's audience is wrong")]
    /// Another `aud`.
    WrongAudience,
    #[error("the token's claims are incomplete")]
    /// `sub`, `jti`, `sid` or `exp` missing or malformed.
    MissingClaims,
    #[error("the token has been revoked")]
    /// The token's `jti` is blacklisted (logged out).
    Revoked,
    #[error("the session does not exist (logged out or expired)")]
    /// The session does not exist (expired, evicted or revoked).
    NoSession,
    #[error("the session belongs to another user")]
    /// The session belongs to another user.
    SessionMismatch,
    #[error("revocation could not be checked (Redis unavailable)")]
    /// Redis could not say whether the token is revoked (fail-closed).
    RevocationUnavailable,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    sub: Option<String>,
    jti: Option<String>,
    sid: Option<String>,
    exp: i64,
}

/// Verified claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`.
    pub user: UserId,
    /// `jti`: what logout blacklists.
    pub jti: Jti,
    /// `sid`: the session.
    pub session: SessionId,
    /// `exp`.
    pub expires_at: OffsetDateTime,
}

/// Verifies tokens; built once per execution environment.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    hs256: Option<DecodingKey>,
    config: AuthConfig,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The authorizer function's verifier, from the environment (the `init`
    /// of its `event_function!`).
    pub fn for_app(_: &App) -> Result<Self, ConfigError> {
        Self::new(AuthConfig::from_env()?)
    }

    /// Parses the configured keys; refuses a configuration with none.
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&config.jwks).map_err(|_| ConfigError {
                variable: "AUTH_JWKS",
                problem: "is not a JWKS document ({\"keys\": [...]})".into(),
            })?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                keys.insert(kid, key);
            }
        }
        if keys.is_empty() && config.hs256_secret.is_none() {
            return Err(ConfigError {
                variable: "AUTH_JWKS",
                problem: "holds no usable key".into(),
            });
        }
        let hs256 = config
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        Ok(Self {
            keys,
            hs256,
            config,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Checks signature, algorithm and claims (not revocation).
    pub fn verify(&self, token: &str) -> Result<Claims, Denied> {
        let header = decode_header(token).map_err(|_| Denied::Malformed)?;
        let key = match header.alg {
            Algorithm::RS256 => match &header.kid {
                Some(kid) => self.keys.get(kid).ok_or(Denied::UnknownKey)?,
                None if self.keys.len() == 1 => {
                    self.keys.values().next().ok_or(Denied::UnknownKey)?
                }
                None => return Err(Denied::UnknownKey),
            },
            Algorithm::HS256 => self.hs256.as_ref().ok_or(Denied::DisallowedAlgorithm)?,
            _ => return Err(Denied::DisallowedAlgorithm),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<RawClaims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => Denied::BadSignature,
                K::ExpiredSignature => Denied::Expired,
                K::ImmatureSignature => Denied::NotYetValid,
                K::InvalidIssuer => Denied::WrongIssuer,
                K::InvalidAudience => Denied::WrongAudience,
                K::MissingRequiredClaim(_) => Denied::MissingClaims,
                K::InvalidAlgorithm => Denied::DisallowedAlgorithm,
                _ => Denied::Malformed,
            }
        })?;
        let c = data.claims;
        let user = c
            .sub
            .as_deref()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or(Denied::MissingClaims)?;
        let jti = c
            .jti
            .as_deref()
            .and_then(|s| Jti::parse(s).ok())
            .ok_or(Denied::MissingClaims)?;
        let session = c
            .sid
            .as_deref()
            .and_then(|s| SessionId::parse(s).ok())
            .ok_or(Denied::MissingClaims)?;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(c.exp).map_err(|_| Denied::Malformed)?;
        Ok(Claims {
            user,
            jti,
            session,
            expires_at,
        })
    }
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
    let claims = verifier.verify(token)?;
    let device = device_header(&event);
    let (state, new_device, risk) = tokio::join!(
        sessions::check(deps.sessions, &claims.session, &claims.jti),
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
    let state = match state {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!(reason = why.as_str(), "revocation check failed");
            if !verifier.config.revocation_fail_open {
                return Err(Denied::RevocationUnavailable);
            }
            // Fail-open mode: no session data to pass on.
            let session = sessions::Session {
                user_id: claims.user,
                email: String::new(),
                roles: Vec::new(),
                permissions: Vec::new(),
                last_activity: OffsetDateTime::now_utc(),
                ip_address: None,
                device_info: None,
            };
            return Ok((claims, session, Signals::default()));
        }
    };
    if state.revoked {
        return Err(Denied::Revoked);
    }
    let session = state.session.ok_or(Denied::NoSession)?;
    if session.user_id != claims.user {
        return Err(Denied::SessionMismatch);
    }
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
