//! Who is calling: verified token claims, and the principal they name.
//!
//! Deployed, API Gateway's JWT authorizer verifies the token (signature
//! against the issuer's JWKS, which it fetches and rotates; `iss`; `aud` or
//! `client_id`; `exp`, `nbf`) and hands the claims to the function; with no
//! API Gateway in front (`cargo lambda watch`), [`Verifier::verify_token`]
//! makes the same checks with the configured keys (`AUTH_JWKS`,
//! `AUTH_JWKS_FILE`, or the development-only `AUTH_HS256_SECRET`). Both end
//! in [`Caller::from_claims`]:
//!
//! - a **user** token carries `sid` (the session the sign-in created; the
//!   Cognito Pre Token Generation trigger adds it) and a `sub` that is a user
//!   id; its permissions come from the session;
//! - a **service** token (OAuth client credentials) has no `sid` and
//!   `sub` = `client_id`; its permissions are its scopes under
//!   [`SCOPE_PREFIX`] (`paycache/wallets.balance.write` grants
//!   `wallets.balance.write`);
//! - a token with `token_use` other than `access` (a Cognito ID token) is
//!   refused, and so is one that is neither.
//!
//! Revocation (`blacklist:{jti}`) and the session are checked by the route,
//! in the same round-trip time as its other Redis requests
//! (`crate::edge::routes::gate`).

use std::collections::{BTreeSet, HashMap};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use time::OffsetDateTime;

use crate::infra::config::{ConfigError, Secret};
use crate::infra::keys::{ClientId, Jti, SessionId, UserId};

/// Scopes grant the permission after this prefix (the resource server's
/// identifier in the template's Cognito user pool, `paycache`).
pub const SCOPE_PREFIX: &str = "paycache/";

/// The permission names (README → Authorization; `openapi.yaml`).
pub mod permissions {
    /// Read any user's profile (support staff).
    pub const PROFILES_READ_ANY: &str = "profiles.read.any";
    /// Read any wallet's balance (support staff).
    pub const WALLETS_READ_ANY: &str = "wallets.read.any";
    /// Set a wallet's balance (`PUT`; services only, such as the ledger).
    pub const WALLETS_BALANCE_WRITE: &str = "wallets.balance.write";
    /// Consult and consume rate limits (`POST /rate-limit/check`; services only).
    pub const RATELIMIT_CHECK: &str = "ratelimit.check";
    /// Read the cache's node details (`GET /health/nodes`; operators' services).
    pub const HEALTH_READ: &str = "health.read";
}

/// Who the token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A signed-in user, with the session the sign-in created.
    User {
        /// `sub`.
        user: UserId,
        /// `sid`.
        session: SessionId,
    },
    /// A service (client credentials).
    Service {
        /// `client_id` (= `sub`).
        client: ClientId,
    },
}

/// A verified caller (not yet checked for revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// `jti`: what logout blacklists.
    pub jti: Jti,
    /// `exp`.
    pub expires_at: OffsetDateTime,
    /// Permissions from the token's scopes (services; a user's come from
    /// the session).
    pub scope_permissions: BTreeSet<String>,
}

impl Caller {
    /// Names the caller from verified claims as strings (how API Gateway
    /// delivers them); `scopes` is API Gateway's list, else the `scope`
    /// claim (space-separated) is read.
    pub fn from_claims(
        claims: &HashMap<String, String>,
        scopes: Option<&[String]>,
    ) -> Result<Self, Denied> {
        let get = |k: &str| claims.get(k).map(String::as_str).filter(|v| !v.is_empty());
        if get("token_use").is_some_and(|u| u != "access") {
            return Err(Denied::NotAccessToken);
        }
        let jti = get("jti")
            .and_then(|j| Jti::parse(j).ok())
            .ok_or(Denied::MissingClaims)?;
        let exp: i64 = get("exp")
            .and_then(|e| e.parse().ok())
            .ok_or(Denied::MissingClaims)?;
        let expires_at = OffsetDateTime::from_unix_timestamp(exp).map_err(|_| Denied::Malformed)?;
        let sub = get("sub").ok_or(Denied::MissingClaims)?;
        let principal = match (get("sid"), get("client_id")) {
            (Some(sid), _) => Principal::User {
                user: UserId::parse(sub).map_err(|_| Denied::MissingClaims)?,
                session: SessionId::parse(sid).map_err(|_| Denied::MissingClaims)?,
            },
            (None, Some(client)) if client == sub => Principal::Service {
                client: ClientId::parse(client).map_err(|_| Denied::MissingClaims)?,
            },
            _ => return Err(Denied::MissingClaims),
        };
        let listed: Vec<&str> = match scopes {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => get("scope")
                .map(|s| s.split_whitespace().collect())
                .unwrap_or_default(),
        };
        let scope_permissions = match principal {
            Principal::Service { .. } => listed
                .iter()
                .filter_map(|s| s.strip_prefix(SCOPE_PREFIX))
                .map(str::to_owned)
                .collect(),
            Principal::User { .. } => BTreeSet::new(),
        };
        Ok(Self {
            principal,
            jti,
            expires_at,
            scope_permissions,
        })
    }

    /// The user, for a user's token.
    pub fn user(&self) -> Option<&UserId> {
        match &self.principal {
            Principal::User { user, .. } => Some(user),
            Principal::Service { .. } => None,
        }
    }
}

/// Authorizer settings, read by the functions that need them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `AUTH_ISSUER`: the `iss` tokens must carry.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: comma-separated; a token must carry one of them as
    /// `aud`, or — when it has no `aud`, as Cognito access tokens do not —
    /// as `client_id` (what API Gateway's JWT authorizer checks).
    pub audience: Vec<String>,
    /// `AUTH_JWKS`: the issuer's public keys (JSON).
    pub jwks: String,
    /// `AUTH_HS256_SECRET`: a shared key for local development only.
    pub hs256_secret: Option<Secret>,
    /// `AUTH_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
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
        Ok(Self {
            issuer: required("AUTH_ISSUER")?,
            audience: required("AUTH_AUDIENCE")?
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            jwks,
            hs256_secret: get("AUTH_HS256_SECRET").map(Secret::new),
            leeway_secs,
        })
    }
}

/// Why a request was refused (logged; the client sees a 401 that does not
/// say which check failed).
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
    /// `sub`, `jti`, `exp` missing or malformed, or neither a user's token
    /// (`sid`) nor a service's (`sub` = `client_id`).
    MissingClaims,
    #[error("the token is not an access token")]
    /// `token_use` is present and not `access` (a Cognito ID token).
    NotAccessToken,
    #[error("the token has been revoked")]
    /// The token's `jti` is blacklisted (logged out).
    Revoked,
    #[error("the session does not exist (logged out or expired)")]
    /// The session does not exist (expired, evicted or revoked).
    NoSession,
    #[error("the session belongs to another user")]
    /// The session belongs to another user.
    SessionMismatch,
    #[error("the bearer token does not match the claims API Gateway passed")]
    /// `AUTH_VERIFY_IN_FUNCTION`: the token verified here names another
    /// principal or `jti` than the event's claims (a hand-made event).
    ClaimsMismatch,
    #[error("revocation could not be checked (Redis and PostgreSQL unavailable)")]
    /// Neither Redis nor PostgreSQL could say whether the token is revoked
    /// (fail-closed).
    RevocationUnavailable,
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
#[derive(Clone)]
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
    /// From the environment (`AUTH_*`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(AuthConfig::from_env()?)
    }

    /// A verifier when `AUTH_ISSUER` is set (local development: the HTTP
    /// functions verify tokens themselves when no API Gateway is in
    /// front); `None` otherwise.
    pub fn from_env_if_configured() -> Result<Option<Self>, ConfigError> {
        match std::env::var("AUTH_ISSUER") {
            Ok(v) if !v.trim().is_empty() => Self::from_env().map(Some),
            _ => Ok(None),
        }
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

    /// Checks signature, algorithm and claims (not revocation) and names
    /// the caller: the checks API Gateway's JWT authorizer makes (signature,
    /// `iss`, `aud` or `client_id`, `exp`, `nbf`), then the principal's own.
    pub fn verify_token(&self, token: &str) -> Result<Caller, Denied> {
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
        // `aud` or `client_id`, checked below as API Gateway does.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data =
            decode::<serde_json::Map<String, Value>>(token, key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => Denied::BadSignature,
                    K::ExpiredSignature => Denied::Expired,
                    K::ImmatureSignature => Denied::NotYetValid,
                    K::InvalidIssuer => Denied::WrongIssuer,
                    K::MissingRequiredClaim(_) => Denied::MissingClaims,
                    K::InvalidAlgorithm => Denied::DisallowedAlgorithm,
                    _ => Denied::Malformed,
                }
            })?;
        let claims = data.claims;
        let audience_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.config.audience.contains(a),
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| self.config.audience.iter().any(|x| x == a))
            }),
            Some(_) => false,
            None => claims
                .get("client_id")
                .and_then(Value::as_str)
                .is_some_and(|c| self.config.audience.iter().any(|x| x == c)),
        };
        if !audience_ok {
            return Err(Denied::WrongAudience);
        }
        let flat: HashMap<String, String> = claims
            .into_iter()
            .filter_map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k, text))
            })
            .collect();
        Caller::from_claims(&flat, None)
    }

    /// [`Verifier::verify_token`] for a user's token (the WebSocket
    /// authorizer): the user, the token and the session.
    pub fn verify(&self, token: &str) -> Result<Claims, Denied> {
        let caller = self.verify_token(token)?;
        match caller.principal {
            Principal::User { user, session } => Ok(Claims {
                user,
                jti: caller.jti,
                session,
                expires_at: caller.expires_at,
            }),
            Principal::Service { .. } => Err(Denied::MissingClaims),
        }
    }
}
