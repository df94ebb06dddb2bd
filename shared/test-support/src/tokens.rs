//! Tokens and claims as API Gateway's JWT authorizer delivers them (a
//! user's sign-in, a service's client credentials), and RS256 access
//! tokens signed with the test key (`tests/fixtures`), as Cognito issues
//! them.

pub const ALL_PERMISSIONS: [&str; 4] = [
    "profiles.read.any",
    "wallets.read.any",
    "wallets.balance.write",
    "ratelimit.check",
];

pub fn token_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn with_claims(
    req: lambda_http::Request,
    claims: std::collections::HashMap<String, String>,
    scopes: Option<Vec<String>>,
) -> lambda_http::Request {
    use lambda_http::RequestExt;
    use lambda_http::aws_lambda_events::apigw::{
        ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription,
        ApiGatewayV2httpRequestContext,
    };
    let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
    jwt.claims = claims;
    jwt.scopes = scopes;
    let mut auth = ApiGatewayRequestAuthorizer::default();
    auth.jwt = Some(jwt);
    let mut ctx = ApiGatewayV2httpRequestContext::default();
    ctx.authorizer = Some(auth);
    req.with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx))
}

fn in_an_hour() -> String {
    (time::OffsetDateTime::now_utc().unix_timestamp() + 3600).to_string()
}

/// `req` as API Gateway's JWT authorizer delivers it for a service
/// principal (client credentials) with `permissions` as scopes; each call
/// is a new client, so its rate limits are its own.
pub fn as_service(req: lambda_http::Request, permissions: &[&str]) -> lambda_http::Request {
    as_client(req, &format!("svc{}", token_id()), permissions)
}

/// [`as_service`] for the client `client`.
pub fn as_client(
    req: lambda_http::Request,
    client: &str,
    permissions: &[&str],
) -> lambda_http::Request {
    as_client_token(req, client, &token_id(), permissions)
}

/// [`as_client`] with the token `jti` (the same token on every request).
pub fn as_client_token(
    req: lambda_http::Request,
    client: &str,
    jti: &str,
    permissions: &[&str],
) -> lambda_http::Request {
    let scopes: Vec<String> = permissions
        .iter()
        .map(|p| format!("paycache/{p}"))
        .collect();
    let claims = [
        ("sub", client.to_owned()),
        ("client_id", client.to_owned()),
        ("token_use", "access".to_owned()),
        ("jti", jti.to_owned()),
        ("exp", in_an_hour()),
        ("iss", "https://auth.paycache.test".to_owned()),
        ("scope", scopes.join(" ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    with_claims(req, claims, Some(scopes))
}

/// A signed-in user: the session `sessions::create` made and the claims of
/// their access token.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: String,
    pub session: String,
    pub jti: String,
}

impl SignedIn {
    /// `req` with this user's token, as API Gateway's JWT authorizer
    /// delivers it.
    pub fn on(&self, req: lambda_http::Request) -> lambda_http::Request {
        let claims = [
            ("sub", self.user.clone()),
            ("sid", self.session.clone()),
            ("client_id", "paycache-web".to_owned()),
            ("token_use", "access".to_owned()),
            ("jti", self.jti.clone()),
            ("exp", in_an_hour()),
            ("iss", "https://auth.paycache.test".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        with_claims(req, claims, None)
    }
}

/// `req` with these claims replaced (or added) in what API Gateway's JWT
/// authorizer delivered.
pub fn with_claim_values(
    mut req: lambda_http::Request,
    pairs: &[(&str, String)],
) -> lambda_http::Request {
    use lambda_http::RequestExt;
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(mut ctx)) =
        req.request_context_ref().cloned()
    {
        if let Some(jwt) = ctx.authorizer.as_mut().and_then(|a| a.jwt.as_mut()) {
            for (k, v) in pairs {
                jwt.claims.insert((*k).to_owned(), v.clone());
            }
        }
        req = req.with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx));
    }
    req
}

/// A claim of what API Gateway's JWT authorizer delivered.
pub fn claim(req: &lambda_http::Request, name: &str) -> Option<String> {
    use lambda_http::RequestExt;
    match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.claims.get(name).cloned()),
        _ => None,
    }
}

const TEST_KEY: &[u8] = include_bytes!("../../../tests/fixtures/jwt-test-key.pem");
const TEST_JWKS: &str = include_str!("../../../tests/fixtures/jwks.json");
const TEST_ISSUER: &str = "https://auth.paycache.test";

/// The token settings of the test key pair (`tests/fixtures`).
pub fn auth_env() -> Vec<(String, String)> {
    vec![
        ("AUTH_ISSUER".into(), TEST_ISSUER.into()),
        ("AUTH_AUDIENCE".into(), "paycache-web".into()),
        ("AUTH_JWKS".into(), TEST_JWKS.into()),
    ]
}

/// A signed access token (RS256, the test key) with the same claims
/// [`SignedIn::on`] puts in the event.
pub fn token_for(who: &SignedIn) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "sub": who.user, "sid": who.session, "jti": who.jti, "iss": TEST_ISSUER,
        "client_id": "paycache-web", "token_use": "access",
        "iat": now, "nbf": now - 10, "exp": now + 3600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY).unwrap(),
    )
    .unwrap()
}

/// A signed service access token (RS256, the test key, client credentials)
/// with these scopes (`paycache/<permission>`) and `exp`.
pub fn service_token(client: &str, jti: &str, permissions: &[&str], exp: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let scopes: Vec<String> = permissions
        .iter()
        .map(|p| format!("paycache/{p}"))
        .collect();
    let claims = serde_json::json!({
        "sub": client, "client_id": client, "jti": jti, "iss": TEST_ISSUER,
        "token_use": "access", "scope": scopes.join(" "),
        "iat": now, "nbf": now - 10, "exp": exp,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY).unwrap(),
    )
    .unwrap()
}
