//! The WebSocket connection registry (`ws-connections`) against real Redis
//! (both modes), and the authorizer's WebSocket (policy) answers.
#![allow(clippy::unwrap_used, reason = "tests")]

use paycache::config::RedisMode;
use paycache::events::websocket;
use paycache::keys::{ConnectionId, UserId};
use paycache::realtime;
use paycache_tests::{World, both_modes};
use serde_json::{Value, json};
use test_support::random_uuid;

fn ws_event(route: &str, conn: &str, user: Option<&str>) -> Value {
    // As API Gateway sends it (connectedAt and requestTimeEpoch are always there).
    let mut ctx = json!({"routeKey": route, "eventType": "CONNECT", "connectionId": conn,
                         "requestId": "ws-req", "domainName": "ws.example.com", "stage": "prod",
                         "connectedAt": 1795608000000_i64, "requestTimeEpoch": 1795608000000_i64});
    if let Some(u) = user {
        ctx["authorizer"] = json!({"user_id": u, "principalId": u});
    }
    json!({"requestContext": ctx, "headers": {"User-Agent": "mobile_app_v1.2"}, "isBase64Encoded": false})
}

async fn connect_ping_disconnect_and_pruning(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    let uid = UserId::parse(&user).unwrap();
    let (a, b) = (
        format!("conn{}", &random_uuid()[..8]),
        format!("conn{}", &random_uuid()[..8]),
    );
    for conn in [&a, &b] {
        let r = websocket(&w.app.connections, &ws_event("$connect", conn, Some(&user))).await;
        assert_eq!(r["statusCode"], 200, "{r}");
    }
    let live = realtime::connections(&w.app.connections, &uid)
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
    let meta = realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.user_id, uid);
    assert_eq!(meta.client_info.as_deref(), Some("mobile_app_v1.2"));
    // Both keys carry the design's 2-hour TTL.
    let mut raw = w.redis.raw().await;
    for key in [
        w.app.keys.ws_connections(&uid).to_string(),
        w.app
            .keys
            .ws_meta(&ConnectionId::parse(&a).unwrap())
            .to_string(),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!((7_100_000..=7_200_000).contains(&ttl), "{key}: {ttl}");
    }

    // ping refreshes last_ping and both TTLs.
    let meta_key = w
        .app
        .keys
        .ws_meta(&ConnectionId::parse(&a).unwrap())
        .to_string();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&meta_key)
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = websocket(&w.app.connections, &ws_event("ping", &a, Some(&user))).await;
    assert_eq!(r["statusCode"], 200);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&meta_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 7_100_000, "{ttl}");
    let after = realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(after.last_ping > meta.last_ping);
    assert_eq!(after.connected_at, meta.connected_at);

    // $disconnect removes both entries (and is idempotent).
    for _ in 0..2 {
        let r = websocket(
            &w.app.connections,
            &ws_event("$disconnect", &a, Some(&user)),
        )
        .await;
        assert_eq!(r["statusCode"], 200);
    }
    assert!(
        realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap(),
        vec![ConnectionId::parse(&b).unwrap()]
    );

    // A connection that vanished without $disconnect: its metadata expires,
    // and the next listing prunes it from the set.
    let b_meta = w
        .app
        .keys
        .ws_meta(&ConnectionId::parse(&b).unwrap())
        .to_string();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&b_meta)
        .arg(1)
        .query_async(&mut raw)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap()
            .is_empty()
    );
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(w.app.keys.ws_connections(&uid).to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(members.is_empty(), "pruned: {members:?}");
    // A ping on an expired connection says so.
    assert_eq!(
        websocket(&w.app.connections, &ws_event("ping", &b, Some(&user))).await["statusCode"],
        410
    );
}
both_modes!(connect_ping_disconnect_and_pruning);

async fn refusals(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    assert_eq!(
        websocket(&w.app.connections, &ws_event("$connect", "conn1", None)).await["statusCode"],
        401
    );
    assert_eq!(
        websocket(
            &w.app.connections,
            &ws_event("$connect", "bad:id", Some(&random_uuid()))
        )
        .await["statusCode"],
        400
    );
    assert_eq!(
        websocket(
            &w.app.connections,
            &ws_event("$connect", "conn1", Some("{not-a-user}"))
        )
        .await["statusCode"],
        401
    );
    assert_eq!(
        websocket(&w.app.connections, &json!({})).await["statusCode"],
        400
    );
    assert_eq!(
        websocket(&w.app.connections, &json!(null)).await["statusCode"],
        400
    );
    assert_eq!(
        websocket(
            &w.app.connections,
            &ws_event("sendmessage", "conn1", Some(&random_uuid()))
        )
        .await["statusCode"],
        400
    );
    assert!(w.keys().await.is_empty());
}
both_modes!(refusals);

/// The `system:announcements` helper reaches a subscriber with the contract's
/// message shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_subscribers() {
    use futures_util::StreamExt;
    let server = test_support::RedisServer::start();
    let url = server.url();
    let w = World::with_redis(test_support::TestRedis::Standalone(server), &[]).await;
    let mut sub = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe(paycache::pubsub::SYSTEM_ANNOUNCEMENTS)
        .await
        .unwrap();
    let mut messages = sub.into_on_message();
    let reached = paycache::pubsub::announce(&w.app.redis, "maintenance at 03:00 UTC")
        .await
        .unwrap();
    assert_eq!(reached, 1);
    let msg = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next())
        .await
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(m["type"], "announcement");
    assert_eq!(m["message"], "maintenance at 03:00 UTC");
    assert!(m["timestamp"].as_f64().unwrap() > 1.7e9);
}
