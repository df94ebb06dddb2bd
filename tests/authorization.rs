//! Who may do what, through the HTTP routes: with the claims API Gateway's
//! JWT authorizer delivers (deployed) and with the function verifying the
//! bearer token itself (`make run`), in both Redis modes. Every rule has a
//! caller without the right, who must be refused.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::App;
use paycache::auth::{AuthConfig, Verifier};
use paycache::config::RedisMode;
use paycache::routes::{balance, logout, profile_read, rate_limit_check};
use paycache_tests::{SignedIn, World, as_client, as_service, both_modes};
use serde_json::{Value, json};
use test_support::{insert_wallet, random_uuid, seed_user_id};

const KEY: &[u8] = include_bytes!("fixtures/jwt-test-key.pem");
const OTHER_KEY: &[u8] = include_bytes!("fixtures/jwt-other-key.pem");
const JWKS: &str = include_str!("fixtures/jwks.json");
const ISS: &str = "https://auth.paycache.test";

fn profile(user: &str) -> Request {
    let mut p = HashMap::new();
    p.insert("user_id".to_string(), user.to_string());
    http::Request::builder()
        .method("GET")
        .uri(format!("/users/{user}/profile"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(p)
}

fn wallet_req(method: &str, wallet: &str, body: Option<Value>) -> Request {
    let mut p = HashMap::new();
    p.insert("wallet_id".to_string(), wallet.to_string());
    http::Request::builder()
        .method(method)
        .uri(format!("/wallets/{wallet}/balance"))
        .body(body.map_or(Body::Empty, |b| Body::Text(b.to_string())))
        .unwrap()
        .with_path_parameters(p)
}

fn check_req(user: &str) -> Request {
    http::Request::builder()
        .method("POST")
        .uri("/rate-limit/check")
        .body(Body::Text(
            json!({"user_id": user, "endpoint": "transfers.create"}).to_string(),
        ))
        .unwrap()
}

fn status_and_type(resp: &Response<Body>) -> (StatusCode, String) {
    let t = serde_json::from_slice::<Value>(resp.body().as_ref())
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (resp.status(), t)
}

/// The rules, each with a caller who has the right and one who has not.
async fn who_may_do_what(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let (me, other) = (seed_user_id(1), seed_user_id(2));
    let (my_wallet, their_wallet) = (random_uuid(), random_uuid());
    insert_wallet(&w.db, 1, &my_wallet, "USD", 1000).await;
    insert_wallet(&w.db, 2, &their_wallet, "USD", 2000).await;
    let user = w.sign_in(&me, &[]).await;
    let support = w
        .sign_in(&seed_user_id(3), &["profiles.read.any", "wallets.read.any"])
        .await;

    Box::pin(profile_rules(&w, &user, &support, &me, &other)).await;
    Box::pin(balance_read_rules(
        &w,
        &user,
        &support,
        &my_wallet,
        &their_wallet,
    ))
    .await;
    Box::pin(balance_write_rules(
        &w,
        &user,
        &support,
        &my_wallet,
        &their_wallet,
    ))
    .await;
    Box::pin(check_rules(&w, &user, &me)).await;
}
both_modes!(who_may_do_what);

/// Profiles: the own, or with profiles.read.any; anyone else's is 404.
async fn profile_rules(w: &World, user: &SignedIn, support: &SignedIn, me: &str, other: &str) {
    let own = profile_read::handle(&w.app, user.on(profile(me))).await;
    assert_eq!(own.status(), StatusCode::OK);
    assert!(own.headers().contains_key("ratelimit"));
    let theirs = profile_read::handle(&w.app, user.on(profile(other))).await;
    assert_eq!(
        status_and_type(&theirs),
        (
            StatusCode::NOT_FOUND,
            "urn:paycache:problem:not-found".into()
        )
    );
    let staff = profile_read::handle(&w.app, support.on(profile(other))).await;
    assert_eq!(staff.status(), StatusCode::OK);
    let svc = as_service(profile(other), &["wallets.read.any"]);
    assert_eq!(
        profile_read::handle(&w.app, svc).await.status(),
        StatusCode::NOT_FOUND,
        "a service without profiles.read.any"
    );
}

/// Balances: the owner's, or with wallets.read.any; never the owner in
/// the answer.
async fn balance_read_rules(
    w: &World,
    user: &SignedIn,
    support: &SignedIn,
    my_wallet: &str,
    their_wallet: &str,
) {
    let mine = balance::handle(&w.app, user.on(wallet_req("GET", my_wallet, None))).await;
    assert_eq!(mine.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(mine.body().as_ref()).unwrap();
    assert!(body.get("user_id").is_none(), "{body}");
    // Again, now from the cache: ownership came with the cached entry.
    let mine = balance::handle(&w.app, user.on(wallet_req("GET", my_wallet, None))).await;
    assert_eq!(mine.status(), StatusCode::OK);
    assert!(
        mine.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"),
        "{:?}",
        mine.headers()
    );
    let theirs = balance::handle(&w.app, user.on(wallet_req("GET", their_wallet, None))).await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let nobody = balance::handle(&w.app, user.on(wallet_req("GET", &random_uuid(), None))).await;
    assert_eq!(
        !theirs.body().as_ref().is_empty(),
        !nobody.body().as_ref().is_empty()
    );
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    let staff = balance::handle(&w.app, support.on(wallet_req("GET", their_wallet, None))).await;
    assert_eq!(staff.status(), StatusCode::OK);
}

/// PUT: never an end user (403 on the own wallet, 404 on another's), a
/// service only with wallets.balance.write.
async fn balance_write_rules(
    w: &World,
    user: &SignedIn,
    support: &SignedIn,
    my_wallet: &str,
    their_wallet: &str,
) {
    let put = || Some(json!({"balance": "5.00", "currency": "USD", "expected_version": 1}));
    let r = balance::handle(&w.app, user.on(wallet_req("PUT", my_wallet, put()))).await;
    assert_eq!(
        status_and_type(&r),
        (
            StatusCode::FORBIDDEN,
            "urn:paycache:problem:forbidden".into()
        )
    );
    let r = balance::handle(&w.app, user.on(wallet_req("PUT", their_wallet, put()))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = balance::handle(&w.app, support.on(wallet_req("PUT", their_wallet, put()))).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "support may see, not write"
    );
    let reader = as_service(wallet_req("PUT", my_wallet, put()), &["wallets.read.any"]);
    assert_eq!(
        balance::handle(&w.app, reader).await.status(),
        StatusCode::FORBIDDEN
    );
    let stranger = as_service(wallet_req("PUT", my_wallet, put()), &["ratelimit.check"]);
    assert_eq!(
        balance::handle(&w.app, stranger).await.status(),
        StatusCode::NOT_FOUND
    );
    // Nothing above changed the wallet; the ledger's write does.
    let ledger = as_service(
        wallet_req("PUT", my_wallet, put()),
        &["wallets.balance.write"],
    );
    let r = balance::handle(&w.app, ledger).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(r.body().as_ref()).unwrap();
    assert_eq!(body["version"], 2, "{body}");
    assert!(body.get("user_id").is_none(), "{body}");
}

/// POST /rate-limit/check: a service with ratelimit.check only.
async fn check_rules(w: &World, user: &SignedIn, me: &str) {
    let r = rate_limit_check::handle(&w.app, user.on(check_req(me))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = rate_limit_check::handle(
        &w.app,
        as_service(check_req(me), &["wallets.balance.write"]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = rate_limit_check::handle(&w.app, as_service(check_req(me), &["ratelimit.check"])).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Tokens the gate must refuse, with claims as API Gateway delivers them
/// (what its JWT authorizer cannot know: revocation, the session).
async fn refused_with_api_gateway_claims(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let me = seed_user_id(1);
    test_support::insert_user(&w.db, 1).await;
    let user = w.sign_in(&me, &[]).await;
    assert_eq!(
        profile_read::handle(&w.app, user.on(profile(&me)))
            .await
            .status(),
        StatusCode::OK
    );
    let refused = |resp: Response<Body>, what: &str| {
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
        assert!(!resp.headers().contains_key("ratelimit"), "{what}");
    };
    // Another user's session.
    let other = w.sign_in(&seed_user_id(2), &[]).await;
    let borrowed = SignedIn {
        user: me.clone(),
        session: other.session.clone(),
        jti: random_uuid(),
    };
    refused(
        profile_read::handle(&w.app, borrowed.on(profile(&me))).await,
        "another user's session",
    );
    // A session that does not exist.
    let ghost = SignedIn {
        session: format!("{:032x}", 7),
        ..user.clone()
    };
    refused(
        profile_read::handle(&w.app, ghost.on(profile(&me))).await,
        "no session",
    );
    // A blacklisted token (logged out), and the other tokens of its session.
    let resp = logout::handle(
        &w.app,
        user.on(http::Request::post("/sessions/logout")
            .body(Body::Empty)
            .unwrap()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    refused(
        profile_read::handle(&w.app, user.on(profile(&me))).await,
        "blacklisted",
    );
    let sibling = SignedIn {
        jti: random_uuid(),
        ..user.clone()
    };
    refused(
        profile_read::handle(&w.app, sibling.on(profile(&me))).await,
        "a token of the ended session",
    );
    // A revoked service token.
    let client = format!("svc{}", random_uuid().replace('-', ""));
    let req = as_client(
        http::Request::post("/sessions/logout")
            .body(Body::Empty)
            .unwrap(),
        &client,
        &["profiles.read.any"],
    );
    let jti = jti_of(&req);
    assert_eq!(logout::handle(&w.app, req).await.status(), StatusCode::OK);
    let again = with_jti(
        as_client(profile(&me), &client, &["profiles.read.any"]),
        &jti,
    );
    refused(
        profile_read::handle(&w.app, again).await,
        "a revoked service token",
    );
    // Expired claims (API Gateway refuses those; the function checks too).
    let expired = with_claim(
        user_token_for(&w, &me).await,
        "exp",
        &(now() - 60).to_string(),
    );
    let req = expired(profile(&me));
    let exp = match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.claims.get("exp").cloned()),
        _ => None,
    };
    assert_eq!(
        exp,
        Some((now() - 60).to_string()),
        "the claim was replaced"
    );
    refused(profile_read::handle(&w.app, req).await, "expired claims");
    // No token at all: 401 with a bare challenge.
    let bare = profile_read::handle(&w.app, profile(&me)).await;
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
}
both_modes!(refused_with_api_gateway_claims);

async fn user_token_for(w: &World, user: &str) -> SignedIn {
    w.sign_in(user, &[]).await
}

/// `who`'s requests with `claim` replaced.
fn with_claim(who: SignedIn, claim: &str, value: &str) -> impl Fn(Request) -> Request + use<> {
    let (claim, value) = (claim.to_owned(), value.to_owned());
    move |req| {
        let mut req = who.on(req);
        if let Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) =
            req.extensions_mut()
                .get_mut::<lambda_http::request::RequestContext>()
            && let Some(j) = ctx.authorizer.as_mut().and_then(|a| a.jwt.as_mut())
        {
            j.claims.insert(claim.clone(), value.clone());
        }
        req
    }
}

fn jti_of(req: &Request) -> String {
    match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.claims.get("jti").cloned())
            .unwrap(),
        _ => unreachable!(),
    }
}

fn with_jti(mut req: Request, jti: &str) -> Request {
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) =
        req.extensions_mut()
            .get_mut::<lambda_http::request::RequestContext>()
        && let Some(j) = ctx.authorizer.as_mut().and_then(|a| a.jwt.as_mut())
    {
        j.claims.insert("jti".into(), jti.into());
    }
    req
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sign_with(claims: &Value, key: &[u8], alg: Algorithm) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("test-key-1".into());
    encode(&header, claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

fn bearer(mut req: Request, token: &str) -> Request {
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn local(w: &World) -> App {
    let mut vars = HashMap::new();
    vars.insert("AUTH_ISSUER".to_string(), ISS.to_string());
    vars.insert(
        "AUTH_AUDIENCE".to_string(),
        "paycache-web,ledger".to_string(),
    );
    vars.insert("AUTH_JWKS".to_string(), JWKS.to_string());
    let mut app = w.app.clone();
    app.verifier = Some(Arc::new(
        Verifier::new(AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()).unwrap(),
    ));
    app
}

/// The same refusals with the function verifying the bearer token itself
/// (no API Gateway in front), plus what API Gateway would have refused.
async fn refused_when_verifying_itself(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let me = seed_user_id(1);
    test_support::insert_user(&w.db, 1).await;
    let app = local(&w);
    let user = w.sign_in(&me, &[]).await;
    let claims = |extra: Value| {
        let mut c = json!({"sub": me, "sid": user.session, "jti": random_uuid(),
            "client_id": "paycache-web", "token_use": "access", "iss": ISS,
            "iat": now(), "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = sign_with(&claims(json!({})), KEY, Algorithm::RS256);
    let ok = profile_read::handle(&app, bearer(profile(&me), &good)).await;
    assert_eq!(ok.status(), StatusCode::OK);

    let mut tampered = sign_with(&claims(json!({})), KEY, Algorithm::RS256);
    let mid = tampered.len() - 10;
    tampered.replace_range(
        mid..mid + 1,
        if &tampered[mid..mid + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims(json!({})).to_string())
        )
    };
    let revoked_jti = random_uuid();
    let to_revoke = sign_with(&claims(json!({"jti": revoked_jti})), KEY, Algorithm::RS256);
    let logout_req = bearer(
        http::Request::post("/sessions/logout")
            .body(Body::Empty)
            .unwrap(),
        &to_revoke,
    );
    // Logout ends the session: every token of it is refused from now on,
    // so it comes last; first a second session for the other cases.
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign_with(
                &claims(json!({"exp": now() - 60, "iat": now() - 700})),
                KEY,
                Algorithm::RS256,
            ),
        ),
        ("tampered", tampered),
        (
            "signed with another key",
            sign_with(&claims(json!({})), OTHER_KEY, Algorithm::RS256),
        ),
        ("alg none", unsigned),
        (
            "another issuer",
            sign_with(
                &claims(json!({"iss": "https://evil.test"})),
                KEY,
                Algorithm::RS256,
            ),
        ),
        (
            "another audience",
            sign_with(
                &claims(json!({"client_id": "someone-else"})),
                KEY,
                Algorithm::RS256,
            ),
        ),
        (
            "an ID token",
            sign_with(&claims(json!({"token_use": "id"})), KEY, Algorithm::RS256),
        ),
        (
            "another user's session",
            sign_with(
                &claims(json!({"sub": seed_user_id(2)})),
                KEY,
                Algorithm::RS256,
            ),
        ),
        ("not a JWT", "abc".to_string()),
    ];
    for (what, token) in cases {
        let resp = profile_read::handle(&app, bearer(profile(&me), &token)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
    }
    assert_eq!(
        logout::handle(&app, logout_req).await.status(),
        StatusCode::OK
    );
    let resp = profile_read::handle(&app, bearer(profile(&me), &to_revoke)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "blacklisted");
    let resp = profile_read::handle(&app, bearer(profile(&me), &good)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the ended session");

    // No keys configured and no claims: nothing is admitted.
    let fresh = sign_with(&claims(json!({})), KEY, Algorithm::RS256);
    let resp = profile_read::handle(&w.app, bearer(profile(&me), &fresh)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no keys");
}
both_modes!(refused_when_verifying_itself);

/// A Redis of `mode` reached only through one [`HoldingProxy`] (a proxy
/// per node in cluster mode: the nodes announce the proxies' ports), with
/// `MONITOR` on every primary.
struct HeldRedis {
    world: World,
    proxy: test_support::HoldingProxy,
    primaries: Vec<u16>,
}

async fn held_redis(mode: RedisMode) -> HeldRedis {
    use test_support::{HoldingProxy, RedisCluster, RedisServer, TestRedis};
    let (redis, proxy, primaries) = match mode {
        RedisMode::Standalone => {
            let server = RedisServer::start();
            let proxy = HoldingProxy::start(server.port);
            let port = server.port;
            (TestRedis::Standalone(server), proxy, vec![port])
        }
        RedisMode::Cluster => {
            let cluster = tokio::task::spawn_blocking(RedisCluster::start)
                .await
                .unwrap();
            let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
            let proxy = HoldingProxy::start_many(&ports);
            let cluster = tokio::task::spawn_blocking({
                let proxies = proxy.ports.clone();
                move || {
                    cluster.announce_ports(&proxies);
                    cluster
                }
            })
            .await
            .unwrap();
            let primaries = (0..cluster.nodes.len())
                .filter(|&i| cluster.role(i) == "master")
                .map(|i| cluster.nodes[i].port)
                .collect();
            (TestRedis::Cluster(cluster), proxy, primaries)
        }
    };
    // Replies may be held for up to 2 s: a response timeout above that, and
    // no breaker opening, so that holding changes no outcome.
    let world = World::with_redis(
        redis,
        &[
            ("REDIS_URL", &proxy.urls()),
            ("REDIS_RESPONSE_TIMEOUT_MS", "10000"),
            ("RATE_LIMIT_TIMEOUT_MS", "10000"),
        ],
    )
    .await;
    HeldRedis {
        world,
        proxy,
        primaries,
    }
}

impl HeldRedis {
    fn monitor(&self) -> Vec<test_support::CommandMonitor> {
        self.primaries
            .iter()
            .map(|&p| test_support::CommandMonitor::start(p))
            .collect()
    }

    /// How many commands had left when the first reply came back, holding
    /// that reply until `expected` had (or 2 s passed).
    async fn sent_before_first_reply<T>(
        &self,
        expected: usize,
        work: impl std::future::Future<Output = T>,
    ) -> (usize, T) {
        self.proxy.arm(expected, std::time::Duration::from_secs(2));
        let out = work.await;
        let sent = self.proxy.sent_before_first_reply().unwrap();
        // Printed for a failure's story: which reply was held.
        println!("held reply: {} ({sent} sent)", self.proxy.held_reply());
        (sent, out)
    }

    /// A signed-in cache hit: a 200 from the cache, its four commands (the
    /// session, the blacklist, the rate limit, the read) all sent before
    /// the first reply.
    async fn hit_in_one_round_trip_time(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Response<Body>>,
    ) {
        let monitors = self.monitor();
        let (sent, hit) = self.sent_before_first_reply(4, request).await;
        assert_eq!(hit.status(), StatusCode::OK, "{what}");
        assert_eq!(hit.headers()["cache-status"], "paycache; hit", "{what}");
        assert_eq!(sent, 4, "{what}: the gate and the read together");
        assert_eq!(
            sorted_commands(&monitors),
            vec!["evalsha", "evalsha", "exists", "get"],
            "{what}"
        );
    }
}

fn sorted_commands(monitors: &[test_support::CommandMonitor]) -> Vec<String> {
    let mut all: Vec<String> = monitors.iter().flat_map(|m| m.commands()).collect();
    all.sort();
    all
}

/// An authenticated, rate-limited cache hit costs one round-trip time: the
/// blacklist, session, rate-limit and cache requests all leave before the
/// first reply returns — for a profile and for a balance, and the balance
/// write's gate (the revocation check and the rate limit) before the write
/// starts; in both Redis modes (in cluster mode the requests go to several
/// nodes, each behind its own proxy, counted together). A proxy holds
/// Redis's first reply until the expected number of commands has arrived
/// and counts them (MONITOR names them); the broken variants — the same
/// checks one after another, as the Lambda authorizer and then the route
/// made them, and the balance read after the gate — have sent fewer when
/// their first reply comes, through the same proxy and count.
async fn one_round_trip_time(mode: RedisMode) {
    let held = held_redis(mode).await;
    let w = &held.world;
    let me = seed_user_id(1);
    test_support::insert_user(&w.db, 1).await;
    let wallet = random_uuid();
    insert_wallet(&w.db, 1, &wallet, "USD", 4200).await;
    let user = w.sign_in(&me, &[]).await;
    // Scripts loaded on every node the requests reach, the profile and the
    // balance cached.
    for _ in 0..2 {
        let r = Box::pin(profile_read::handle(&w.app, user.on(profile(&me)))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = Box::pin(balance::handle(
            &w.app,
            user.on(wallet_req("GET", &wallet, None)),
        ))
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    // The profile hit and the balance hit.
    held.hit_in_one_round_trip_time(
        "profile",
        Box::pin(profile_read::handle(&w.app, user.on(profile(&me)))),
    )
    .await;
    held.hit_in_one_round_trip_time(
        "balance",
        Box::pin(balance::handle(
            &w.app,
            user.on(wallet_req("GET", &wallet, None)),
        )),
    )
    .await;

    // The balance write's gate: a service's revocation check and its rate
    // limit together, then the write.
    let version = paycache::balance::load_balance(
        &w.app.db,
        &paycache::keys::WalletId::parse(&wallet).unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
    .version;
    let put = as_service(
        wallet_req(
            "PUT",
            &wallet,
            Some(json!({"balance": "43.00", "currency": "USD", "expected_version": version})),
        ),
        &["wallets.balance.write"],
    );
    let (sent, written) = held
        .sent_before_first_reply(2, Box::pin(balance::handle(&w.app, put)))
        .await;
    assert_eq!(written.status(), StatusCode::OK);
    assert_eq!(sent, 2, "the write's gate: both checks together");

    // The broken variants, through the same proxy and count. The profile's:
    // session and blacklist, then the rate limit, then the read.
    let sid = paycache::keys::SessionId::parse(&user.session).unwrap();
    let jti = paycache::keys::Jti::parse(&user.jti).unwrap();
    let uid = paycache::keys::UserId::parse(&me).unwrap();
    let profile_policy = paycache::keys::Endpoint::parse("users.profile.read").unwrap();
    let (sent, ()) = held
        .sent_before_first_reply(4, async {
            let state = paycache::sessions::check(&w.app.sessions, &uid, &sid, &jti).await;
            assert!(
                matches!(state.session, Ok(paycache::sessions::Held::Session(_)))
                    && state.revoked == Ok(false)
            );
            assert!(w.app.limiter.check(&uid, &profile_policy, 1).await.allowed);
            let read = Box::pin(paycache::profile::get_profile(&w.app.profiles, &uid))
                .await
                .unwrap();
            assert!(read.status.is_hit());
        })
        .await;
    assert!(
        sent < 4,
        "one after another: {sent} sent before the first reply"
    );
    // The balance's: the whole gate, then the read.
    let balance_policy = paycache::keys::Endpoint::parse("wallets.balance.read").unwrap();
    let wallet_id = paycache::keys::WalletId::parse(&wallet).unwrap();
    let (sent, ()) = held
        .sent_before_first_reply(4, async {
            let (state, limit) = tokio::join!(
                paycache::sessions::check(&w.app.sessions, &uid, &sid, &jti),
                w.app.limiter.check(&uid, &balance_policy, 1)
            );
            assert!(state.revoked == Ok(false) && limit.allowed);
            let read = Box::pin(paycache::balance::get_balance(&w.app.balances, &wallet_id))
                .await
                .unwrap();
            assert!(read.status.is_hit());
        })
        .await;
    assert!(
        sent < 4,
        "the read after the gate: {sent} sent before the first reply"
    );
    // The write's: the revocation check, then the rate limit.
    let service =
        paycache::keys::RateSubject::Service(paycache::keys::ClientId::parse("svc-held").unwrap());
    let write_policy = paycache::keys::Endpoint::parse("wallets.balance.write").unwrap();
    let (sent, ()) = held
        .sent_before_first_reply(2, async {
            assert_eq!(
                paycache::sessions::is_revoked(&w.app.sessions, &jti).await,
                Ok(false)
            );
            assert!(w.app.limiter.check(service, &write_policy, 1).await.allowed);
        })
        .await;
    assert!(
        sent < 2,
        "one after another: {sent} sent before the first reply"
    );
}
both_modes!(one_round_trip_time);
