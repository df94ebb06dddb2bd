//! Property-based fuzzing of every function's input against real services:
//! arbitrary bodies, headers and events never panic a handler, never get a
//! 5xx for bad input, and every 4xx is a problem document.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use lambda_http::{Body, Request, RequestExt};
use paycache::config::RedisMode;
use paycache_tests::World;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
        Just(json!("00000000-0000-4000-8000-000000000001")),
        Just(json!("125.50")),
        Just(json!("USD")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::hash_map(
                prop_oneof![
                    Just("balance".to_owned()),
                    Just("currency".to_owned()),
                    Just("expected_version".to_owned()),
                    Just("user_id".to_owned()),
                    Just("endpoint".to_owned()),
                    Just("cost".to_owned()),
                    Just("detail-type".to_owned()),
                    Just("detail".to_owned()),
                    Just("user_ids".to_owned()),
                    Just("requestContext".to_owned()),
                    Just("headers".to_owned()),
                    "\\PC{0,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        Just(b"{\"balance\": 1e400, \"currency\": \"USD\", \"expected_version\": 1}".to_vec()),
        Just("{\"a\":".repeat(2000).into_bytes()),
    ]
}

fn request(
    method: &str,
    path_value: &str,
    body: Vec<u8>,
    header: Option<(&str, Vec<u8>)>,
) -> Request {
    let mut params = HashMap::new();
    params.insert("user_id".to_string(), path_value.to_string());
    params.insert("wallet_id".to_string(), path_value.to_string());
    let mut b = http::Request::builder().method(method).uri("/x");
    if let Some((name, value)) = header
        && let Ok(v) = http::HeaderValue::from_bytes(&value)
    {
        b = b.header(name, v);
    }
    let req = b
        .body(Body::Binary(body))
        .unwrap()
        .with_path_parameters(params);
    paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS)
}

/// Every answer to arbitrary input, with Redis and PostgreSQL up: never a
/// 5xx (bad input is the caller's error, and nothing here is down), and
/// every 4xx is a problem document whose `status` is the answer's.
fn check(resp: &lambda_http::Response<Body>, what: &str) -> Result<(), TestCaseError> {
    let status = resp.status().as_u16();
    prop_assert!(
        status < 500,
        "{what}: {status} {}",
        String::from_utf8_lossy(resp.body().as_ref())
    );
    if status >= 400 {
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or(""))
            .unwrap_or("");
        prop_assert_eq!(ct, "application/problem+json", "{}: {}", what, status);
        let v: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        prop_assert_eq!(v["status"].as_u64(), Some(status as u64));
        prop_assert!(
            v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:paycache:problem:"))
        );
        prop_assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    Ok(())
}

/// Whether `user_ids` is what the warmer accepts: an array of at most
/// 10,000 canonical user ids.
fn valid_user_ids(v: &Value) -> bool {
    v.as_array().is_some_and(|list| {
        list.len() <= 10_000
            && list.iter().all(|u| {
                u.as_str()
                    .is_some_and(|s| paycache::keys::UserId::parse(s).is_ok())
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_survive_arbitrary_input() {
    let w = World::new(RedisMode::Standalone, &[]).await;
    let wallet = test_support::random_uuid();
    test_support::insert_wallet(&w.db, 1, &wallet, "USD", 100).await;
    let handle = tokio::runtime::Handle::current();
    let app = w.app.clone();
    let cases = if std::env::var("PAYCACHE_FUZZ_CASES").is_ok() {
        std::env::var("PAYCACHE_FUZZ_CASES")
            .unwrap()
            .parse()
            .unwrap()
    } else {
        128
    };
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let path = prop_oneof![
            Just(wallet.clone()),
            "\\PC{0,60}",
            Just("00000000-0000-4000-8000-000000000001".to_owned())
        ];
        let header = proptest::option::of((
            prop_oneof![
                Just("idempotency-key"),
                Just("authorization"),
                Just("x-device-fingerprint")
            ],
            proptest::collection::vec(any::<u8>(), 0..140),
        ));
        let method = prop_oneof![Just("GET"), Just("PUT"), Just("POST"), Just("DELETE")];
        runner
            .run(
                &(method, path, body(), header, json_value()),
                |(method, path, body, header, event)| {
                    handle.block_on(async {
                        let h = header.as_ref().map(|(n, v)| (*n, v.clone()));
                        let r = paycache::routes::balance::handle(
                            &app,
                            request(method, &path, body.clone(), h.clone()),
                        )
                        .await;
                        check(&r, "balance")?;
                        let r = paycache::routes::profile_read::handle(
                            &app,
                            request(method, &path, body.clone(), h.clone()),
                        )
                        .await;
                        check(&r, "profile")?;
                        let r = paycache::routes::rate_limit_check::handle(
                            &app,
                            request(method, &path, body.clone(), h.clone()),
                        )
                        .await;
                        check(&r, "rate-limit")?;
                        let r = paycache::routes::logout::handle(
                            &app,
                            request(method, &path, body.clone(), h),
                        )
                        .await;
                        check(&r, "logout")?;
                        // EventBridge and WebSocket handlers, any JSON at all:
                        // refused (not retried: no error) and nothing changed.
                        let before = Snapshot::take(&app).await;
                        let out =
                            paycache::events::cache_invalidation(&app.invalidation, &event).await;
                        let status = out.as_ref().map(|v| v["status"].clone());
                        prop_assert!(
                            matches!(
                                status.as_ref().map(|s| s.as_str()),
                                Ok(Some("rejected" | "ignored"))
                            ),
                            "invalidation of {}: {:?}",
                            event,
                            out
                        );
                        let out = paycache::events::websocket(&app, &event).await;
                        prop_assert!(
                            matches!(out["statusCode"].as_u64(), Some(400 | 401 | 410)),
                            "websocket {}: {}",
                            event,
                            out
                        );
                        let error =
                            serde_json::from_str::<Value>(out["body"].as_str().unwrap_or(""));
                        prop_assert!(error.is_ok_and(|b| b["error"].is_string()), "{}", out);
                        let after = Snapshot::take(&app).await;
                        prop_assert!(
                            before.unchanged(&after).is_ok(),
                            "{}: {:?}",
                            event,
                            before.unchanged(&after)
                        );
                        let out = paycache::events::cache_warm(
                            &app.warmer,
                            &json!({"user_ids": event}),
                            Instant::now() + Duration::from_secs(5),
                        )
                        .await;
                        if valid_user_ids(&event) {
                            prop_assert_eq!(&out["status"], "ok", "{}", out);
                        } else {
                            prop_assert_eq!(&out["status"], "rejected", "{}", out);
                            let after = Snapshot::take(&app).await;
                            prop_assert!(
                                before.unchanged(&after).is_ok(),
                                "{}: {:?}",
                                event,
                                before.unchanged(&after)
                            );
                        }
                        Ok(())
                    })
                },
            )
            .unwrap();
    })
    .await
    .unwrap();
}

/// How much earlier than `PTTL` promised a key may be gone: Redis reads
/// its clock once per command or event-loop pass, and on a loaded server
/// (twelve test threads) a `PTTL` overstated what was left by more than a
/// few milliseconds. A deletion in a key's last second goes unseen.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// The keys under the app's prefix (a standalone Redis), each with the
/// earliest moment its time to live can run out (`None`: it has none), and
/// the moment by which the key listing had been read.
struct Snapshot {
    listed_by: Instant,
    keys: BTreeMap<String, Option<Instant>>,
}

impl Snapshot {
    async fn take(app: &paycache::App) -> Snapshot {
        let pattern = format!("{}:*", app.keys.prefix());
        let found: Vec<String> = app
            .redis
            .run(|mut c| {
                let pattern = pattern.clone();
                async move { redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await }
            })
            .await
            .unwrap();
        let listed_by = Instant::now();
        // Every key's PTTL in one round trip, sent after `listed_by` (none
        // for no keys: an empty pipeline is not a request).
        let ttls: Vec<i64> = if found.is_empty() {
            Vec::new()
        } else {
            app.redis
                .run(|mut c| {
                    let mut pipe = redis::pipe();
                    for key in &found {
                        pipe.cmd("PTTL").arg(key);
                    }
                    async move { pipe.query_async(&mut c).await }
                })
                .await
                .unwrap()
        };
        let mut keys = BTreeMap::new();
        for (key, ttl) in found.into_iter().zip(ttls) {
            // -2: it expired after the listing; -1: no time to live.
            // Otherwise it cannot run out before `listed_by` + the TTL.
            match ttl {
                -2 => {}
                -1 => {
                    keys.insert(key, None);
                }
                ms => {
                    let ms = u64::try_from(ms).unwrap();
                    keys.insert(key, Some(listed_by + Duration::from_millis(ms)));
                }
            }
        }
        Snapshot { listed_by, keys }
    }

    /// Nothing written or deleted between `self` and `later`: no key
    /// appeared, and every key that is gone had a time to live that had
    /// run out, give or take [`EXPIRY_SLACK`], by the time `later` listed
    /// the keys (rate-limit state expires on its own, and a slow machine
    /// can take longer than its TTL between two snapshots).
    fn unchanged(&self, later: &Snapshot) -> Result<(), String> {
        let appeared: Vec<&String> = later
            .keys
            .keys()
            .filter(|k| !self.keys.contains_key(*k))
            .collect();
        if !appeared.is_empty() {
            return Err(format!("keys appeared: {appeared:?}"));
        }
        let deleted: Vec<&String> = self
            .keys
            .iter()
            .filter(|(k, deadline)| {
                !later.keys.contains_key(*k)
                    && !deadline.is_some_and(|d| d <= later.listed_by + EXPIRY_SLACK)
            })
            .map(|(k, _)| k)
            .collect();
        if deleted.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "keys deleted before their time to live ran out: {deleted:?}"
            ))
        }
    }
}

/// The comparison must still see a write or a deletion; only a time to live
/// running out is not a change.
#[test]
fn a_snapshot_sees_writes_and_deletions_but_not_expiry() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let snap = |ms: u64, keys: &[(&str, Option<u64>)]| Snapshot {
        listed_by: at(ms),
        keys: keys
            .iter()
            .map(|(k, d)| (k.to_string(), d.map(at)))
            .collect(),
    };
    let profile = "p:user_profile:{1}";
    let limit = "p:rate_limit:{svc:a}:x:gcra";
    let before = snap(0, &[(profile, None), (limit, Some(4_000))]);
    // The rate-limit key ran out 4 s in: no change.
    assert!(before.unchanged(&snap(4_100, &[(profile, None)])).is_ok());
    // …but gone 100 ms in, it was deleted.
    assert!(before.unchanged(&snap(100, &[(profile, None)])).is_err());
    // A key without a time to live, gone: deleted.
    assert!(
        before
            .unchanged(&snap(100, &[(limit, Some(4_000))]))
            .is_err()
    );
    // A new key: written.
    let written = snap(
        1,
        &[
            (profile, None),
            (limit, Some(40)),
            ("p:blacklist:{j}", Some(900)),
        ],
    );
    assert!(before.unchanged(&written).is_err());
}
