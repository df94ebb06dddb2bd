//! The Lambda authorizer and logout: tokens minted here with test keys
//! (`tests/fixtures`), sessions and the blacklist in real Redis (both modes).
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lambda_http::Body;
use paycache::auth::{AuthConfig, Denied, Verifier, authorize, decide};
use paycache::config::RedisMode;
use paycache::keys::{Jti, SessionId, UserId};
use paycache::sessions::{self, Session};
use paycache_tests::{World, both_modes};
use serde_json::{Value, json};
use test_support::{RedisServer, TestRedis, random_uuid};
use time::OffsetDateTime;

const KEY: &[u8] = include_bytes!("fixtures/jwt-test-key.pem");
const OTHER_KEY: &[u8] = include_bytes!("fixtures/jwt-other-key.pem");
const PUBLIC_KEY: &[u8] = include_bytes!("fixtures/jwt-test-key.pub.pem");
const JWKS: &str = include_str!("fixtures/jwks.json");
const ISS: &str = "https://auth.paycache.test";
const AUD: &str = "paycache-api";

/// The test issuer's key set with the other key added (a rotation).
fn both_jwks() -> Value {
    let mut a: Value = serde_json::from_str(JWKS).unwrap();
    let b: Value = serde_json::from_str(include_str!("fixtures/jwks-other.json")).unwrap();
    a["keys"]
        .as_array_mut()
        .unwrap()
        .extend(b["keys"].as_array().unwrap().clone());
    a
}

fn verifier(fail_open: bool) -> Verifier {
    verifier_with(fail_open, &[])
}

fn verifier_with(fail_open: bool, extra: &[(&'static str, &str)]) -> Verifier {
    let mut vars: HashMap<&str, String> = [
        ("AUTH_ISSUER", ISS.to_owned()),
        ("AUTH_AUDIENCE", AUD.to_owned()),
        ("AUTH_JWKS", JWKS.to_owned()),
        ("AUTH_REVOCATION_FAIL_OPEN", fail_open.to_string()),
    ]
    .into_iter()
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Verifier::new(AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()).unwrap()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(user: &str, sid: &str, jti: &str) -> Value {
    json!({"sub": user, "sid": sid, "jti": jti, "iss": ISS, "aud": AUD,
           "iat": now(), "nbf": now() - 10, "exp": now() + 600})
}

fn sign(claims: &Value, key: &[u8]) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    encode(&header, claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

fn event(token: &str) -> Value {
    json!({"version": "2.0", "type": "REQUEST", "routeArn": "arn:aws:execute-api:us-east-1:123456789012:abc/$default/GET/health",
           "identitySource": [format!("Bearer {token}")], "routeKey": "GET /health", "rawPath": "/health",
           "headers": {"authorization": format!("Bearer {token}")}})
}

struct Login {
    user: String,
    sid: String,
    jti: String,
    token: String,
}

fn principal(l: &Login) -> paycache::identity::Principal {
    paycache::identity::Principal::User {
        user: UserId::parse(&l.user).unwrap(),
        session: SessionId::parse(&l.sid).unwrap(),
    }
}

async fn login(w: &World) -> Login {
    let user = random_uuid();
    let session = Session {
        user_id: UserId::parse(&user).unwrap(),
        email: "user@example.com".into(),
        roles: vec!["user".into(), "verified".into()],
        permissions: vec!["read".into(), "write".into(), "transfer".into()],
        last_activity: OffsetDateTime::now_utc(),
        ip_address: Some("192.0.2.1".into()),
        device_info: Some("test".into()),
    };
    let sid = sessions::create(&w.app.sessions, &session)
        .await
        .unwrap()
        .to_string();
    let jti = format!("jti-{}", random_uuid());
    let token = sign(&claims(&user, &sid, &jti), KEY);
    Login {
        user,
        sid,
        jti,
        token,
    }
}

async fn allowed_and_every_bad_token_denied(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let v = verifier(false);
    let l = login(&w).await;

    let ok = authorize(&w.app, &v, &event(&l.token)).await;
    assert_eq!(ok["isAuthorized"], true, "{ok}");
    assert_eq!(ok["context"]["user_id"], l.user);
    assert_eq!(ok["context"]["session_id"], l.sid);
    assert_eq!(ok["context"]["roles"], "user,verified");
    assert_eq!(ok["context"]["permissions"], "read,write,transfer");

    let mut c = claims(&l.user, &l.sid, &l.jti);
    let variant = |edit: &dyn Fn(&mut Value)| {
        let mut c = c.clone();
        edit(&mut c);
        sign(&c, KEY)
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&c)
    );
    let hs_confusion = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(PUBLIC_KEY),
    )
    .unwrap();
    let mut tampered = l.token.clone();
    let mid = tampered.find('.').unwrap() + 5;
    tampered.replace_range(
        mid..mid + 1,
        if &tampered[mid..mid + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    let cases: Vec<(&str, String, Denied)> = vec![
        (
            "expired",
            variant(&|c| c["exp"] = json!(now() - 100)),
            Denied::Expired,
        ),
        (
            "not yet valid",
            variant(&|c| c["nbf"] = json!(now() + 300)),
            Denied::NotYetValid,
        ),
        (
            "wrong issuer",
            variant(&|c| c["iss"] = json!("https://evil.example")),
            Denied::WrongIssuer,
        ),
        (
            "wrong audience",
            variant(&|c| c["aud"] = json!("someone-else")),
            Denied::WrongAudience,
        ),
        (
            "wrong audience, as a list",
            variant(&|c| c["aud"] = json!(["someone-else", "another"])),
            Denied::WrongAudience,
        ),
        (
            "no exp",
            variant(&|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("exp")
                    .map(|_| ())
                    .unwrap()
            }),
            Denied::MissingClaims,
        ),
        ("another key", sign(&c, OTHER_KEY), Denied::BadSignature),
        ("tampered", tampered, Denied::BadSignature),
        ("alg none", none_token, Denied::Malformed),
        (
            "HS256 with the public key",
            hs_confusion,
            Denied::DisallowedAlgorithm,
        ),
        (
            "no session id",
            variant(&|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("sid")
                    .map(|_| ())
                    .unwrap()
            }),
            Denied::MissingClaims,
        ),
        (
            "sub not a user id",
            variant(&|c| c["sub"] = json!("admin")),
            Denied::MissingClaims,
        ),
        (
            "unknown session",
            variant(&|c| c["sid"] = json!("nosuchsession")),
            Denied::NoSession,
        ),
    ];
    for (name, token, expected) in cases {
        let got = decide(&w.app, &v, &event(&token))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(got, expected, "{name}");
        assert_eq!(
            authorize(&w.app, &v, &event(&token)).await,
            json!({"isAuthorized": false}),
            "{name}"
        );
    }
    for raw in [
        json!({}),
        json!({"headers": {"authorization": "Basic dXNlcjpwYXNz"}}),
        json!({"headers": {"authorization": "Bearer "}}),
    ] {
        assert_eq!(
            decide(&w.app, &v, &raw).await.map(|_| ()).unwrap_err(),
            Denied::MissingToken
        );
    }
    // Another user's session: sessions are keyed by their user, so a
    // token naming another user's session finds none.
    let other = login(&w).await;
    c["sid"] = json!(other.sid);
    assert_eq!(
        decide(&w.app, &v, &event(&sign(&c, KEY)))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::NoSession
    );

    // A blacklisted jti, and a revoked session.
    sessions::blacklist(
        &w.app.sessions,
        &Jti::parse(&l.jti).unwrap(),
        &principal(&l),
        OffsetDateTime::now_utc() + time::Duration::minutes(10),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        decide(&w.app, &v, &event(&l.token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::Revoked
    );
    sessions::end(
        &w.app.sessions,
        &UserId::parse(&other.user).unwrap(),
        &sessions::Ending::One(SessionId::parse(&other.sid).unwrap()),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        decide(&w.app, &v, &event(&other.token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::NoSession
    );
}
both_modes!(allowed_and_every_bad_token_denied);

async fn sessions_slide_and_logout_revokes_until_expiry(mode: RedisMode) {
    let w = World::new(mode, &[("CACHE_TTL_SESSION_DATA_SECS", "1800")]).await;
    let v = verifier(false);
    let l = login(&w).await;
    // Age the session, then use it: its TTL is back to the full 30 minutes.
    let key = w.app.keys.session(
        &UserId::parse(&l.user).unwrap(),
        &SessionId::parse(&l.sid).unwrap(),
    );
    let mut raw = w.redis.raw().await;
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(key.as_str())
        .arg(5000)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        authorize(&w.app, &v, &event(&l.token)).await["isAuthorized"],
        true
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 1_790_000, "sliding TTL: {ttl}");

    // Logout with the bearer token, verified by the function itself (no
    // API Gateway in front).
    let mut local = w.app.clone();
    local.verifier = Some(std::sync::Arc::new(v.clone()));
    let req = http::Request::builder()
        .method("POST")
        .uri("/sessions/logout")
        .header("authorization", format!("Bearer {}", l.token))
        .body(Body::Empty)
        .unwrap();
    let resp = paycache::routes::logout::handle(&local, req).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // The same token is refused from now on…
    assert_eq!(
        decide(&w.app, &v, &event(&l.token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::Revoked
    );
    // …and the blacklist entry lasts as long as any verifier could accept
    // the token: its `exp` (10 minutes) plus the largest leeway (300 s).
    let left = sessions::blacklist_ttl(&w.app.sessions, &Jti::parse(&l.jti).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        left <= Duration::from_secs(900) && left > Duration::from_secs(890),
        "{left:?}"
    );
    // A token just past its `exp` is still inside a verifier's leeway: it
    // gets an entry for the rest of the grace…
    let just_expired = format!("jti-{}", random_uuid());
    sessions::blacklist(
        &w.app.sessions,
        &Jti::parse(&just_expired).unwrap(),
        &principal(&l),
        OffsetDateTime::now_utc() - time::Duration::seconds(1),
        "test",
    )
    .await
    .unwrap();
    let left = sessions::blacklist_ttl(&w.app.sessions, &Jti::parse(&just_expired).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(left > Duration::from_secs(290), "{left:?}");
    // …and one past the grace needs none: no verifier accepts it.
    let gone = format!("jti-{}", random_uuid());
    sessions::blacklist(
        &w.app.sessions,
        &Jti::parse(&gone).unwrap(),
        &principal(&l),
        OffsetDateTime::now_utc() - time::Duration::seconds(301),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        sessions::blacklist_ttl(&w.app.sessions, &Jti::parse(&gone).unwrap())
            .await
            .unwrap(),
        None
    );

    // Logout without the authorizer's context is 401.
    let bare = http::Request::builder()
        .method("POST")
        .uri("/sessions/logout")
        .body(Body::Empty)
        .unwrap();
    assert_eq!(
        paycache::routes::logout::handle(&w.app, bare)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}
both_modes!(sessions_slide_and_logout_revokes_until_expiry);

/// A revocation lasts as long as the most lenient verifier here accepts
/// the token: with `AUTH_LEEWAY_SECS` at the largest value the
/// configuration allows, a token 297 s past its `exp` still verifies —
/// the bound is real — and, revoked, is refused: its blacklist entry
/// outlives `exp` by at least that leeway. A grace a few seconds shorter
/// than the largest leeway writes no entry for it (already past) and the
/// authorizer admits it (what this test exists to catch).
async fn a_revocation_outlives_the_largest_leeway(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let largest = "300";
    assert!(
        AuthConfig::from_lookup(|k| match k {
            "AUTH_ISSUER" => Some(ISS.to_owned()),
            "AUTH_AUDIENCE" => Some(AUD.to_owned()),
            "AUTH_JWKS" => Some(JWKS.to_owned()),
            "AUTH_LEEWAY_SECS" => Some("301".to_owned()),
            _ => None,
        })
        .is_err(),
        "{largest} s is the largest leeway the configuration allows"
    );
    let v = verifier_with(false, &[("AUTH_LEEWAY_SECS", largest)]);
    let l = login(&w).await;
    let exp = now() - 297;
    let mut c = claims(&l.user, &l.sid, &l.jti);
    c["iat"] = json!(exp - 600);
    c["nbf"] = json!(exp - 600);
    c["exp"] = json!(exp);
    let token = sign(&c, KEY);
    assert_eq!(
        authorize(&w.app, &v, &event(&token)).await["isAuthorized"],
        true,
        "297 s past exp, inside the largest leeway: accepted"
    );
    sessions::blacklist(
        &w.app.sessions,
        &Jti::parse(&l.jti).unwrap(),
        &principal(&l),
        OffsetDateTime::from_unix_timestamp(exp).unwrap(),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        decide(&w.app, &v, &event(&token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::Revoked,
        "revoked inside the leeway: refused"
    );
    // Through a second environment too (no memory of the revocation).
    let other = w.another_environment();
    assert_eq!(
        decide(&other, &v, &event(&token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::Revoked
    );
}
both_modes!(a_revocation_outlives_the_largest_leeway);

/// Redis unreachable: PostgreSQL decides — a signed-in user connects, a
/// token whose session was signed out before the outage is denied, a bad
/// token is refused without either store. The broken variant, no
/// PostgreSQL fallback, denies everyone (fails closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_postgres_decides() {
    let server = RedisServer::start();
    let mut w = World::with_redis(TestRedis::Standalone(server), &[]).await;
    let l = login(&w).await;
    let out = login(&w).await;
    sessions::end(
        &w.app.sessions,
        &UserId::parse(&out.user).unwrap(),
        &sessions::Ending::One(SessionId::parse(&out.sid).unwrap()),
        "test",
    )
    .await
    .unwrap();
    if let TestRedis::Standalone(s) = &mut w.redis {
        s.stop();
    }
    let v = verifier(false);
    let open = authorize(&w.app, &v, &event(&l.token)).await;
    assert_eq!(open["isAuthorized"], true, "{open}");
    assert_eq!(open["context"]["user_id"], l.user);
    assert_eq!(
        decide(&w.app, &v, &event(&out.token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::NoSession
    );
    assert_eq!(
        authorize(&w.app, &v, &event(&sign(&json!({"sub": "x"}), KEY))).await["isAuthorized"],
        false
    );
    let mut broken = w.another_environment();
    broken.sessions.variants.redis_only = true;
    assert_eq!(
        decide(&broken, &v, &event(&l.token))
            .await
            .map(|_| ())
            .unwrap_err(),
        Denied::RevocationUnavailable
    );
}

#[test]
fn authorizer_configuration_is_validated() {
    let base = |extra: &[(&str, &str)]| {
        let mut vars: HashMap<String, String> = [
            ("AUTH_ISSUER", ISS),
            ("AUTH_AUDIENCE", AUD),
            ("AUTH_JWKS", JWKS),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        AuthConfig::from_lookup(|k| vars.get(k).cloned())
    };
    assert!(base(&[]).is_ok());
    assert_eq!(
        base(&[("AUTH_ISSUER", "")]).unwrap_err().variable,
        "AUTH_ISSUER"
    );
    assert_eq!(
        base(&[("AUTH_LEEWAY_SECS", "9999")]).unwrap_err().variable,
        "AUTH_LEEWAY_SECS"
    );
    assert_eq!(
        Verifier::new(base(&[("AUTH_JWKS", "{\"keys\": []}")]).unwrap())
            .unwrap_err()
            .variable,
        "AUTH_JWKS"
    );
    assert_eq!(
        Verifier::new(base(&[("AUTH_JWKS", "not json")]).unwrap())
            .unwrap_err()
            .variable,
        "AUTH_JWKS"
    );
}

fn with_device(mut e: Value, fingerprint: &str) -> Value {
    e["headers"]["x-device-fingerprint"] = json!(fingerprint);
    e
}

/// The authorizer records devices (first seen kept, last seen moved) and
/// passes `new_device`; a risk score at or above the threshold publishes
/// one `fraud:<user>` alert per score.
async fn fraud_signals(mode: RedisMode) {
    use futures_util::StreamExt;
    let w = World::new(mode, &[("FRAUD_ALERT_THRESHOLD", "80")]).await;
    let v = verifier(false);
    let l = login(&w).await;
    let fp = format!("fp_{}", random_uuid().replace('-', ""));

    let first = authorize(&w.app, &v, &with_device(event(&l.token), &fp)).await;
    assert_eq!(first["context"]["new_device"], true, "{first}");
    let key = w
        .app
        .keys
        .device(&paycache::keys::DeviceFingerprint::parse(&fp).unwrap());
    let mut raw = w.redis.raw().await;
    let stored: String = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    let d1: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(d1["user_id"], l.user);
    assert_eq!(d1["trusted"], false);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 86_000_000, "24 h: {ttl}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = authorize(&w.app, &v, &with_device(event(&l.token), &fp)).await;
    assert_eq!(second["context"]["new_device"], false);
    let stored: String = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    let d2: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(d2["first_seen"], d1["first_seen"]);
    assert_ne!(d2["last_seen"], d1["last_seen"]);
    // The same device with another user is new for that user.
    let other = login(&w).await;
    let third = authorize(&w.app, &v, &with_device(event(&other.token), &fp)).await;
    assert_eq!(third["context"]["new_device"], true);
    // A malformed fingerprint is ignored, not an error.
    let odd = authorize(
        &w.app,
        &v,
        &with_device(event(&l.token), "not a:fingerprint"),
    )
    .await;
    assert_eq!(odd["isAuthorized"], true);
    assert_eq!(odd["context"]["new_device"], false);

    // Risk: below the threshold no alert; at it, one alert per score.
    let mut alerts = paycache_tests::subscribe(&w.redis, &format!("fraud:{}", l.user)).await;
    let user = UserId::parse(&l.user).unwrap();
    paycache::fraud::set_risk_score(&w.app.fraud, &user, 50, &["new_device"])
        .await
        .unwrap();
    let low = authorize(&w.app, &v, &event(&l.token)).await;
    assert_eq!(low["context"]["risk_score"], 50);
    let channel = format!("fraud:{}", l.user);
    paycache_tests::assert_no_message_before_sentinel(
        &w.redis,
        &channel,
        &mut alerts,
        "no alert below the threshold",
    )
    .await;
    paycache::fraud::set_risk_score(&w.app.fraud, &user, 92, &["new_device", "unusual_amount"])
        .await
        .unwrap();
    for _ in 0..3 {
        let high = authorize(&w.app, &v, &event(&l.token)).await;
        assert_eq!(
            high["isAuthorized"], true,
            "fraud signals inform, they do not deny"
        );
        assert_eq!(high["context"]["risk_score"], 92);
    }
    let msg = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .unwrap()
        .unwrap();
    let alert: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(alert["type"], "risk_alert");
    assert_eq!(alert["user_id"], l.user);
    assert_eq!(alert["score"], 92);
    assert_eq!(alert["factors"], json!(["new_device", "unusual_amount"]));
    assert!(alert["timestamp"].as_f64().unwrap() > 1.7e9);
    paycache_tests::assert_no_message_before_sentinel(
        &w.redis,
        &channel,
        &mut alerts,
        "one alert per score",
    )
    .await;
}
both_modes!(fraud_signals);

/// A WebSocket API calls the authorizer with `methodArn` and a token in the
/// query string; the answer is an IAM policy with the same context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connect_gets_a_policy() {
    let w = World::new(RedisMode::Standalone, &[]).await;
    let v = verifier(false);
    let l = login(&w).await;
    let arn = "arn:aws:execute-api:us-east-1:123456789012:wsapi/prod/$connect";
    let ws = |token: &str| {
        json!({"type": "REQUEST", "methodArn": arn, "headers": {},
                                  "queryStringParameters": {"token": token},
                                  "requestContext": {"routeKey": "$connect", "connectionId": "abc="}})
    };
    let ok = authorize(&w.app, &v, &ws(&l.token)).await;
    assert_eq!(ok["principalId"], l.user);
    assert_eq!(ok["policyDocument"]["Statement"][0]["Effect"], "Allow");
    // IAM takes a resource or a list of them; the policy names just this one.
    assert_eq!(
        ok["policyDocument"]["Statement"][0]["Resource"],
        json!([arn])
    );
    assert_eq!(ok["context"]["user_id"], l.user);
    let denied = authorize(&w.app, &v, &ws("garbage")).await;
    assert_eq!(denied["policyDocument"]["Statement"][0]["Effect"], "Deny");
    assert!(denied.get("context").is_none());
}

/// A JWKS endpoint of the test's own: serves `doc` (changeable), counts
/// requests.
struct JwksServer {
    url: String,
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

async fn jwks_server(doc: &str) -> JwksServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let doc = std::sync::Arc::new(std::sync::Mutex::new(doc.to_owned()));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (d, h) = (doc.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (d, h) = (d.clone(), h.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    JwksServer { url, doc, hits }
}

/// The issuer's keys are fetched, not pasted (the first deploy's `$connect`
/// failed on an empty `AuthJwks`): at the first token, again when a token
/// names a key the set lacks (the issuer rotated) — at most once per
/// `AUTH_JWKS_REFETCH_SECS`, so a flood of made-up `kid`s costs one fetch —
/// and never at init. The broken variant, the static key set of the
/// previous template, refuses every token signed with the rotated key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuers_keys_are_fetched_and_rotated() {
    const OTHER_KEY: &[u8] = include_bytes!("fixtures/jwt-other-key.pem");
    let server = jwks_server(JWKS).await;
    let config = |extra: &[(&str, &str)]| {
        let mut vars: HashMap<String, String> = [("AUTH_ISSUER", ISS), ("AUTH_AUDIENCE", AUD)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()
    };
    let fetching = Verifier::new(config(&[
        ("AUTH_JWKS_URL", &server.url),
        ("AUTH_JWKS_REFETCH_SECS", "1"),
    ]))
    .unwrap();
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing at init"
    );
    let claims = |kid: &str| {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let c = json!({"sub": random_uuid(), "sid": "c2Vzc2lvbg", "jti": "j1", "iss": ISS,
                       "client_id": AUD, "token_use": "access", "iat": now, "exp": now + 600});
        (c, kid.to_owned())
    };
    let signed = |key: &[u8], kid: &str| {
        let (c, kid) = claims(kid);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid);
        encode(&header, &c, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    };
    let first = signed(KEY, "test-key-1");
    assert!(fetching.verify_token_fresh(&first).await.is_ok());
    assert!(fetching.verify_token_fresh(&first).await.is_ok());
    assert_eq!(fetching.fetches(), 1, "fetched once, then cached");

    // A flood of tokens naming keys nobody has: one fetch at most.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..50 {
        let forged = signed(OTHER_KEY, &format!("made-up-{i}"));
        assert_eq!(
            fetching.verify_token_fresh(&forged).await.unwrap_err(),
            Denied::UnknownKey
        );
    }
    assert_eq!(fetching.fetches(), 2, "one refetch for fifty unknown kids");

    // … also when they arrive at once: the callers queued behind the one
    // fetching find the keys just fetched and do not fetch again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let forged: Vec<String> = (0..20)
        .map(|i| signed(OTHER_KEY, &format!("at-once-{i}")))
        .collect();
    let refused =
        futures_util::future::join_all(forged.iter().map(|t| fetching.verify_token_fresh(t))).await;
    assert!(refused.iter().all(|r| *r == Err(Denied::UnknownKey)));
    assert_eq!(fetching.fetches(), 3, "one refetch for twenty at once");

    // The issuer rotates to another key: fetched again, accepted.
    let both = both_jwks();
    *server.doc.lock().unwrap() = both.to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = signed(OTHER_KEY, "other-key-1");
    assert!(
        fetching.verify_token_fresh(&rotated).await.is_ok(),
        "the rotated key is fetched"
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 4);

    // Known keys, fetched minutes ago at most: nothing is fetched, however
    // many tokens come — past the refetch interval too (it limits fetches
    // for unknown or stale keys; it does not schedule them).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert!(fetching.verify_token_fresh(&rotated).await.is_ok());
        assert!(fetching.verify_token_fresh(&first).await.is_ok());
    }
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "no fetch for known, fresh keys"
    );

    // An issuer that answers an empty set: the keys there were are kept.
    *server.doc.lock().unwrap() = r#"{"keys": []}"#.to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = signed(OTHER_KEY, "made-up-again");
    assert_eq!(
        fetching.verify_token_fresh(&unknown).await.unwrap_err(),
        Denied::UnknownKey
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert!(
        fetching.verify_token_fresh(&first).await.is_ok(),
        "an empty answer keeps the keys there were"
    );

    // Broken variant: the keys pasted at deploy time.
    let pasted = Verifier::new(config(&[("AUTH_JWKS", JWKS)])).unwrap();
    assert!(pasted.verify_token_fresh(&first).await.is_ok());
    assert_eq!(
        pasted.verify_token_fresh(&rotated).await.unwrap_err(),
        Denied::UnknownKey,
        "static keys refuse the rotated key"
    );
    // And the first deploy's empty set fails init; a URL does not.
    assert_eq!(
        Verifier::new(config(&[("AUTH_JWKS", "{\"keys\": []}")]))
            .unwrap_err()
            .variable,
        "AUTH_JWKS"
    );
    assert!(
        Verifier::new(config(&[(
            "AUTH_JWKS_URL",
            "https://issuer.example/jwks.json"
        )]))
        .is_ok()
    );
    assert_eq!(
        AuthConfig::from_lookup(|k| match k {
            "AUTH_ISSUER" => Some(ISS.into()),
            "AUTH_AUDIENCE" => Some(AUD.into()),
            "AUTH_JWKS_URL" => Some("http://issuer.example/jwks.json".into()),
            _ => None,
        })
        .unwrap_err()
        .variable,
        "AUTH_JWKS_URL",
        "plain http only on loopback"
    );
}

/// A token without a sign-in (`sid`) names a service only when its subject
/// is the client itself (`client_credentials`: `sub` = `client_id`). A
/// user's access token from the same app client (`sub` the user, no `sid`)
/// is not that client: refused, its scopes granting nothing.
#[test]
fn a_users_token_without_a_sign_in_is_not_its_client() {
    use paycache::identity::{Caller, Principal};
    let user = random_uuid();
    let exp = (OffsetDateTime::now_utc() + time::Duration::minutes(5))
        .unix_timestamp()
        .to_string();
    let mut claims: HashMap<String, String> = [
        ("sub", user.as_str()),
        ("client_id", "ledger"),
        ("jti", &random_uuid()),
        ("exp", &exp),
        ("token_use", "access"),
        ("scope", "paycache/balances.write"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        Caller::from_claims(&claims, None).map(|c| c.principal),
        Err(Denied::MissingClaims),
        "a user's token is not its app client"
    );
    claims.insert("sub".into(), "ledger".into());
    let service = Caller::from_claims(&claims, None).unwrap();
    assert!(
        matches!(&service.principal, Principal::Service { client } if client.to_string() == "ledger"),
        "{service:?}"
    );
    assert!(
        service.scope_permissions.contains("balances.write"),
        "{service:?}"
    );
}

/// A verifier with nowhere to find keys is a configuration error at init,
/// naming the variable — not a verifier that refuses every token later.
#[test]
fn an_authorizer_without_keys_is_a_configuration_error() {
    let vars: HashMap<&str, &str> = [
        ("AUTH_ISSUER", "https://issuer.example"),
        ("AUTH_AUDIENCE", "paycache-web"),
    ]
    .into_iter()
    .collect();
    let Err(err) = AuthConfig::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())) else {
        panic!("no AUTH_JWKS_URL, AUTH_JWKS or AUTH_JWKS_FILE: must be refused");
    };
    assert_eq!(err.variable, "AUTH_JWKS_URL");
    let with_url: HashMap<&str, &str> = vars
        .into_iter()
        .chain([("AUTH_JWKS_URL", "https://issuer.example/jwks.json")])
        .collect();
    assert!(AuthConfig::from_lookup(|k| with_url.get(k).map(|v| (*v).to_owned())).is_ok());
}

/// Tokens beyond RS256 with a `kid`: one without a `kid` is verified when
/// the issuer has exactly one key, and refused (`UnknownKey`) when it has
/// several — which key would it be?; HS256 only when `AUTH_HS256_SECRET`
/// is set (the development sign-in), and with that secret.
#[test]
fn a_token_without_a_kid_and_an_hs256_token() {
    const SECRET: &str = "a-development-secret-for-this-test-0123456789";
    let verifier = |extra: &[(&str, &str)]| {
        let vars: HashMap<String, String> = [("AUTH_ISSUER", ISS), ("AUTH_AUDIENCE", AUD)]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Verifier::new(AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()).unwrap()
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"sub": random_uuid(), "sid": "c2Vzc2lvbg", "jti": "j1", "iss": ISS,
                        "client_id": AUD, "token_use": "access", "iat": now, "exp": now + 600});
    let no_kid = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(KEY).unwrap(),
    )
    .unwrap();
    let one_key = verifier(&[("AUTH_JWKS", JWKS)]);
    assert!(one_key.verify_token(&no_kid).is_ok(), "one key: it");
    let both = both_jwks();
    let two_keys = verifier(&[("AUTH_JWKS", &both.to_string())]);
    assert_eq!(
        two_keys.verify_token(&no_kid).map(|c| c.jti),
        Err(Denied::UnknownKey),
        "two keys: which?"
    );
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let with_secret = verifier(&[("AUTH_JWKS", JWKS), ("AUTH_HS256_SECRET", SECRET)]);
    assert!(
        with_secret.verify_token(&hs256).is_ok(),
        "the development secret"
    );
    assert_eq!(
        one_key.verify_token(&hs256).map(|c| c.jti),
        Err(Denied::DisallowedAlgorithm),
        "no secret configured: no HS256"
    );
}
