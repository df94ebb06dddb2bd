//! The `profile-read` handler, called directly with API Gateway-shaped
//! requests, against real Redis and PostgreSQL.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::config::RedisMode;
use paycache::routes::profile_read::handle;
use paycache_tests::{World, both_modes};
use test_support::{RedisServer, TestRedis, insert_user, seed_user_id};

fn get(path_id: &str) -> Request {
    let mut params = HashMap::new();
    params.insert("user_id".to_string(), path_id.to_string());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/users/{path_id}/profile"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(params);
    paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS)
}

fn body_json(resp: &Response<Body>) -> serde_json::Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn miss_then_hit_with_cache_status(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let id = insert_user(&w.db, 1).await;

    let first = handle(&w.app, get(&id)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "content-type"), "application/json");
    assert_eq!(header(&first, "cache-status"), "paycache; fwd=miss; stored");
    let body = body_json(&first);
    assert_eq!(body["user_id"], id);
    assert_eq!(body["email"], "user1@example.com");
    assert_eq!(body["display_name"], "User 1");
    assert_eq!(body["country"], "US");
    assert_eq!(body["verified"], true);
    assert_eq!(body["created_at"], "2025-01-01T00:00:00Z");
    assert_eq!(body["updated_at"], "2025-06-01T00:00:00Z");
    assert_eq!(
        body.as_object().unwrap().len(),
        7,
        "exactly the contract's fields: {body}"
    );

    // Upper-case id: the same user, the same key, a hit.
    let second = handle(&w.app, get(&id.to_uppercase())).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(header(&second, "cache-status"), "paycache; hit");
    assert_eq!(body_json(&second), body);
}
both_modes!(miss_then_hit_with_cache_status);

async fn unknown_user_is_404_and_cached(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let id = seed_user_id(424242);
    let first = handle(&w.app, get(&id)).await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&first, "content-type"), "application/problem+json");
    assert_eq!(header(&first, "cache-status"), "paycache; fwd=miss; stored");
    let p = body_json(&first);
    assert_eq!(p["status"], 404);
    assert_eq!(p["type"], "urn:paycache:problem:not-found");
    assert!(p["request_id"].is_string());
    let second = handle(&w.app, get(&id)).await;
    assert_eq!(second.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&second, "cache-status"), "paycache; hit");
}
both_modes!(unknown_user_is_404_and_cached);

async fn bad_ids_are_400_and_touch_nothing(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    for bad in [
        "not-a-uuid",
        "00000000-0000-4000-8000-00000000000{",
        "{00000000-0000-4000-8000-000000000001}",
        "00000000-0000-4000-8000-000000000001:lock",
        "%7B00000000%7D",
        "",
    ] {
        let resp = handle(&w.app, get(bad)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(header(&resp, "content-type"), "application/problem+json");
        let p = body_json(&resp);
        assert_eq!(p["status"], 400);
        assert_eq!(p["title"], "The request is malformed");
        assert!(p["detail"].as_str().unwrap().contains("user_id"), "{p}");
        assert!(resp.headers().get("cache-status").is_none());
    }
    assert!(
        w.keys().await.is_empty(),
        "a rejected request must not create keys"
    );
}
both_modes!(bad_ids_are_400_and_touch_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let w = World::new(RedisMode::Standalone, &[]).await;
    let id = insert_user(&w.db, 1).await;
    let mut params = HashMap::new();
    params.insert("user_id".to_string(), id.clone());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/users/{id}/profile"))
        .body(Body::Binary(vec![b'x'; 64 * 1024 + 1]))
        .unwrap()
        .with_path_parameters(params);
    let resp = handle(&w.app, req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&resp, "content-type"), "application/problem+json");
    assert!(
        w.keys().await.is_empty(),
        "a rejected request must not touch the cache"
    );
    // Exactly the limit is fine.
    let mut params = HashMap::new();
    params.insert("user_id".to_string(), id.clone());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/users/{id}/profile"))
        .body(Body::Binary(vec![b'x'; 64 * 1024]))
        .unwrap()
        .with_path_parameters(params);
    let req = paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS);
    assert_eq!(handle(&w.app, req).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_are_405() {
    let w = World::new(RedisMode::Standalone, &[]).await;
    let req = http::Request::builder()
        .method("DELETE")
        .uri(format!("/users/{}/profile", seed_user_id(1)))
        .body(Body::Empty)
        .unwrap();
    let resp = handle(&w.app, req).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&resp, "allow"), "GET");
    assert_eq!(header(&resp, "content-type"), "application/problem+json");
}

/// A Redis outage still serves profiles from PostgreSQL: the caller's
/// revocation is checked there too (`sessions::is_revoked`). The broken
/// variant, a gate with no PostgreSQL fallback, refuses the same requests
/// with 503, since nobody can say whether the token was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_still_serves_profiles_from_postgres() {
    let server = RedisServer::start();
    let mut w = World::with_redis(TestRedis::Standalone(server), &[]).await;
    let id = insert_user(&w.db, 2).await;
    let mut closed = w.another_environment();
    closed.sessions.variants.redis_only = true;
    let TestRedis::Standalone(server) = &mut w.redis else {
        unreachable!()
    };
    server.stop();
    let refused = handle(&closed, get(&id)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    for _ in 0..5 {
        let resp = handle(&w.app, get(&id)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "cache-status"),
            "paycache; fwd=uri-miss; detail=redis-unavailable"
        );
        assert_eq!(body_json(&resp)["user_id"], id);
    }
    // And an unknown user is still a 404 (not a 5xx) during the outage.
    let resp = handle(&w.app, get(&seed_user_id(999_999))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// A problem body never carries internal error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_a_clean_503() {
    let redis = TestRedis::standalone();
    let db = test_support::TestDb::create().await;
    let mut config = test_support::config(&redis, &db, &[("DATABASE_CONNECT_TIMEOUT_MS", "200")]);
    config.database.url = paycache::config::Secret::new(format!(
        "host=127.0.0.1 port={} user=nobody password=pg-secret-741 dbname=none",
        test_support::free_port()
    ));
    let app = paycache::App::new(config).unwrap();
    let resp = handle(&app, get(&seed_user_id(3))).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "retry-after"), "1");
    let text = String::from_utf8_lossy(resp.body().as_ref()).to_string();
    for leak in ["pg-secret-741", "127.0.0.1", "refused", "error connecting"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}
