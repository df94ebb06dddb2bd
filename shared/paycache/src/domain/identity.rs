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

/// The permission names (docs/security.md; `openapi.yaml`).
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
    /// Every permission a route may require: the deployment contract test
    /// checks that the template lets some principal obtain each.
    pub const ALL: &[&str] = &[
        PROFILES_READ_ANY,
        WALLETS_READ_ANY,
        WALLETS_BALANCE_WRITE,
        RATELIMIT_CHECK,
        HEALTH_READ,
    ];
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
    /// `AUTH_JWKS` or `AUTH_JWKS_FILE`: the issuer's public keys (JSON),
    /// when given rather than fetched.
    pub jwks: Option<String>,
    /// `AUTH_JWKS_URL`: where to fetch the issuer's keys (at the first
    /// token, again for an unknown `kid` at most every `jwks_refetch`, and
    /// when older than [`JWKS_MAX_AGE`]).
    pub jwks_url: Option<String>,
    /// `AUTH_JWKS_REFETCH_SECS` (default [`JWKS_REFETCH_INTERVAL`]): the
    /// least time between two fetches.
    pub jwks_refetch: std::time::Duration,
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
        let jwks_url = get("AUTH_JWKS_URL").map(|u| u.trim().to_owned());
        let jwks = match (get("AUTH_JWKS"), get("AUTH_JWKS_FILE")) {
            (Some(doc), _) => Some(doc),
            (None, Some(path)) => {
                Some(std::fs::read_to_string(&path).map_err(|_| ConfigError {
                    variable: "AUTH_JWKS_FILE",
                    problem: "cannot be read".into(),
                })?)
            }
            (None, None) if jwks_url.is_some() => None,
            (None, None) => {
                return Err(ConfigError {
                    variable: "AUTH_JWKS_URL",
                    problem: "AUTH_JWKS_URL (where to fetch the issuer's keys), AUTH_JWKS (a JWKS document) or AUTH_JWKS_FILE is required".into(),
                });
            }
        };
        if let Some(url) = &jwks_url {
            let loopback =
                url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost");
            if !url.starts_with("https://") && !loopback {
                return Err(ConfigError {
                    variable: "AUTH_JWKS_URL",
                    problem: "must be an https:// URL".into(),
                });
            }
        }
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
            jwks_url,
            jwks_refetch: match get("AUTH_JWKS_REFETCH_SECS") {
                None => JWKS_REFETCH_INTERVAL,
                Some(v) => v
                    .parse()
                    .ok()
                    .filter(|s| *s <= 3600)
                    .map(std::time::Duration::from_secs)
                    .ok_or(ConfigError {
                        variable: "AUTH_JWKS_REFETCH_SECS",
                        problem: "must be a whole number from 0 to 3600".into(),
                    })?,
            },
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

/// By default, a key set fetched more recently than this is not fetched
/// again for an unknown `kid`: a flood of tokens naming made-up keys costs
/// the issuer one request per period per execution environment.
pub const JWKS_REFETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// A fetched key set older than this is fetched again (a key the issuer
/// withdrew stops being trusted within it).
pub const JWKS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Budget of one JWKS fetch.
const JWKS_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The issuer's JWKS, fetched over HTTPS (not an AWS API: a public URL) by
/// the functions that verify tokens with `AUTH_JWKS_URL`.
pub const AWS_CALLS: &[crate::infra::aws::AwsCall] = &[crate::infra::aws::AwsCall {
    site: "domain/identity.rs",
    functions: &["*"],
    service: "jwks",
    action: None,
    resources: &[],
    when_env: Some("AUTH_JWKS_URL"),
}];

/// The keys a verifier trusts, and when they were fetched.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    fetched_at: Option<std::time::Instant>,
    attempted_at: Option<std::time::Instant>,
}

/// Verifies tokens; built once per execution environment. With
/// `AUTH_JWKS_URL` its keys are the issuer's, fetched and cached (see
/// [`Verifier::verify_token_fresh`]).
#[derive(Clone)]
pub struct Verifier {
    keys: std::sync::Arc<std::sync::RwLock<KeySet>>,
    fetching: std::sync::Arc<tokio::sync::Mutex<()>>,
    hs256: Option<DecodingKey>,
    config: AuthConfig,
    /// Fetches made (tests count them).
    fetches: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .map(|k| k.by_kid.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

fn parse_jwks(doc: &str) -> Option<HashMap<String, DecodingKey>> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(doc).ok()?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            keys.insert(kid, key);
        }
    }
    Some(keys)
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

    /// Parses the configured keys; refuses a configuration with none (keys
    /// fetched from `AUTH_JWKS_URL` come at the first token: nothing is
    /// fetched at init, so a cold start never waits on the issuer).
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        let keys = match &config.jwks {
            Some(doc) => parse_jwks(doc).ok_or(ConfigError {
                variable: "AUTH_JWKS",
                problem: "is not a JWKS document ({\"keys\": [...]})".into(),
            })?,
            None => HashMap::new(),
        };
        if keys.is_empty() && config.hs256_secret.is_none() && config.jwks_url.is_none() {
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
            keys: std::sync::Arc::new(std::sync::RwLock::new(KeySet {
                by_kid: keys,
                ..KeySet::default()
            })),
            fetching: Default::default(),
            hs256,
            config,
            fetches: Default::default(),
        })
    }

    /// How many times the keys were fetched (tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Verifier::verify_token`], after making sure the keys are fresh
    /// when they are fetched (`AUTH_JWKS_URL`): fetched at the first token,
    /// again when the token names a key not in the set (the issuer rotated
    /// its keys) — at most once per [`JWKS_REFETCH_INTERVAL`] — and when
    /// the set is older than [`JWKS_MAX_AGE`]. Fetches are one at a time;
    /// a failed fetch keeps the keys there were.
    pub async fn verify_token_fresh(&self, token: &str) -> Result<Caller, Denied> {
        if self.config.jwks_url.is_some() {
            let kid = decode_header(token).map_err(|_| Denied::Malformed)?.kid;
            if self.wants_fetch(kid.as_deref()) {
                self.fetch().await;
            }
        }
        self.verify_token(token)
    }

    /// [`Verifier::verify`] with fresh keys (see [`Verifier::verify_token_fresh`]).
    pub async fn verify_fresh(&self, token: &str) -> Result<Claims, Denied> {
        let caller = self.verify_token_fresh(token).await?;
        Self::user_claims(caller)
    }

    fn wants_fetch(&self, kid: Option<&str>) -> bool {
        let Ok(keys) = self.keys.read() else {
            return true;
        };
        let now = std::time::Instant::now();
        let stale = keys
            .fetched_at
            .is_none_or(|at| now.duration_since(at) >= JWKS_MAX_AGE);
        let unknown = kid.is_some_and(|k| !keys.by_kid.contains_key(k));
        let may = keys
            .attempted_at
            .is_none_or(|at| now.duration_since(at) >= self.config.jwks_refetch);
        (stale || unknown) && may
    }

    async fn fetch(&self) {
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if let Ok(keys) = self.keys.read()
            && keys
                .attempted_at
                .is_some_and(|at| at.elapsed() < self.config.jwks_refetch)
        {
            return;
        }
        let Some(url) = self.config.jwks_url.as_deref() else {
            return;
        };
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = crate::infra::fetch::get(url, JWKS_FETCH_TIMEOUT).await;
        let now = std::time::Instant::now();
        let Ok(mut keys) = self.keys.write() else {
            return;
        };
        keys.attempted_at = Some(now);
        match fetched.ok().and_then(|doc| parse_jwks(&doc)) {
            Some(set) if !set.is_empty() => {
                tracing::info!(keys = set.len(), "issuer keys fetched");
                keys.by_kid = set;
                keys.fetched_at = Some(now);
            }
            _ => tracing::warn!("issuer keys could not be fetched; the keys there were are kept"),
        }
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
            Algorithm::RS256 => {
                let keys = self.keys.read().map_err(|_| Denied::UnknownKey)?;
                match &header.kid {
                    Some(kid) => keys.by_kid.get(kid).cloned().ok_or(Denied::UnknownKey)?,
                    None if keys.by_kid.len() == 1 => keys
                        .by_kid
                        .values()
                        .next()
                        .cloned()
                        .ok_or(Denied::UnknownKey)?,
                    None => return Err(Denied::UnknownKey),
                }
            }
            Algorithm::HS256 => self.hs256.clone().ok_or(Denied::DisallowedAlgorithm)?,
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
            decode::<serde_json::Map<String, Value>>(token, &key, &validation).map_err(|e| {
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
        Self::user_claims(self.verify_token(token)?)
    }

    fn user_claims(caller: Caller) -> Result<Claims, Denied> {
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
