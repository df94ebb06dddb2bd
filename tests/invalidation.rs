//! Event-driven invalidation (`cache-invalidator`) and the transaction
//! cache, through the EventBridge handler. Real Redis (both modes) and
//! PostgreSQL.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use paycache::CacheStatus;
use paycache::config::RedisMode;
use paycache::events::cache_invalidation;
use paycache::keys::{TransactionId, UserId, WalletId};
use paycache::{balance, profile, transactions};
use paycache_tests::{World, both_modes};
use serde_json::{Value, json};
use test_support::{insert_transaction, insert_user, insert_wallet, random_uuid};

fn event(detail_type: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": random_uuid(), "detail-type": detail_type, "source": "payments.core",
        "account": "123456789012", "time": "2026-11-25T12:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail
    })
}

async fn profile_update_invalidates_and_next_read_is_fresh(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let id = insert_user(&w.db, 1).await;
    let user = UserId::parse(&id).unwrap();
    let read = profile::get_profile(&w.app.profiles, &user).await.unwrap();
    assert_eq!(read.value.unwrap().display_name, "User 1");
    // The row changes; the cache still has the old one.
    w.db.client()
        .await
        .execute("UPDATE users SET display_name = 'Renamed', updated_at = now() WHERE user_id = $1::text::uuid", &[&id])
        .await
        .unwrap();
    let stale = profile::get_profile(&w.app.profiles, &user).await.unwrap();
    assert_eq!(stale.status, CacheStatus::Hit);

    use futures_util::StreamExt;
    let channel = format!("notifications:{id}");
    let mut messages = paycache_tests::subscribe(&w.redis, &channel).await;
    let mut next_message = async || -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a notification")
            .unwrap();
        serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap()
    };

    let summary = cache_invalidation(
        &w.app.invalidation,
        &event("UserProfileUpdated", json!({"user_id": id})),
    )
    .await
    .unwrap();
    assert_eq!(summary["status"], "ok");
    assert_eq!(summary["outcome"], "invalidated");
    let first = next_message().await;
    assert_eq!(first["type"], "profile_updated");
    assert_eq!(first["user_id"], id);
    let next = profile::get_profile(&w.app.profiles, &user).await.unwrap();
    assert_eq!(next.status, CacheStatus::Miss { stored: true });
    assert_eq!(next.value.unwrap().display_name, "Renamed");
    let keys_before = w.keys().await;

    // Redelivery is harmless: the fresh entry may go, but nothing stale or
    // new is left in the cache, the next read is the current row, and the
    // subscriber gets the same kind of notification once more — no other.
    let again = cache_invalidation(
        &w.app.invalidation,
        &event("UserProfileUpdated", json!({"user_id": id})),
    )
    .await
    .unwrap();
    assert_eq!(again["status"], "ok");
    assert_eq!(again["outcome"], "invalidated");
    let keys_after = w.keys().await;
    assert!(
        keys_after.iter().all(|k| keys_before.contains(k)),
        "redelivery added keys: {keys_before:?} -> {keys_after:?}"
    );
    let second = next_message().await;
    assert_eq!(second["type"], "profile_updated");
    assert_eq!(second["user_id"], id);
    let after = profile::get_profile(&w.app.profiles, &user).await.unwrap();
    assert_eq!(after.value.unwrap().display_name, "Renamed");
    assert_eq!(after.status, CacheStatus::Miss { stored: true });
    let hit = profile::get_profile(&w.app.profiles, &user).await.unwrap();
    assert_eq!(hit.status, CacheStatus::Hit);
    assert_eq!(hit.value.unwrap().display_name, "Renamed");
    paycache_tests::assert_no_message_before_sentinel(
        &w.redis,
        &channel,
        &mut messages,
        "one notification per delivery",
    )
    .await;
}
both_modes!(profile_update_invalidates_and_next_read_is_fresh);

async fn transaction_completed_invalidates_both_wallets_and_publishes(mode: RedisMode) {
    use futures_util::StreamExt;
    let w = World::new(mode, &[]).await;
    let (a, b, t) = (random_uuid(), random_uuid(), random_uuid());
    insert_wallet(&w.db, 1, &a, "USD", 10_000).await;
    insert_wallet(&w.db, 2, &b, "USD", 0).await;
    insert_transaction(&w.db, &t, &a, &b, 2_500, "processing").await;
    let (wa, wb) = (WalletId::parse(&a).unwrap(), WalletId::parse(&b).unwrap());
    let tid = TransactionId::parse(&t).unwrap();
    // Warm every cache involved.
    assert_eq!(
        balance::get_balance(&w.app.balances, &wa)
            .await
            .unwrap()
            .value
            .unwrap()
            .balance,
        "100.00"
    );
    balance::get_balance(&w.app.balances, &wb).await.unwrap();
    let txn = transactions::get_transaction(&w.app.transactions, &tid)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(txn.amount, "25.00");
    assert_eq!(txn.status, "processing");
    assert_eq!(
        transactions::get_status(&w.app.transactions, &tid)
            .await
            .unwrap()
            .value
            .unwrap()
            .completion_time,
        None
    );

    // The payment completes in the database.
    let client = w.db.client().await;
    client
        .batch_execute(&format!(
            "UPDATE transactions SET status = 'completed', updated_at = now() WHERE transaction_id = '{t}';
             UPDATE wallets SET balance_minor = 7500, version = 2 WHERE wallet_id = '{a}';
             UPDATE wallets SET balance_minor = 2500, version = 2 WHERE wallet_id = '{b}';"
        ))
        .await
        .unwrap();

    let mut messages = paycache_tests::subscribe(&w.redis, &format!("transactions:{t}")).await;

    let detail = json!({"transaction_id": t, "sender_wallet_id": a, "receiver_wallet_id": b, "status": "completed"});
    let summary = cache_invalidation(&w.app.invalidation, &event("TransactionCompleted", detail))
        .await
        .unwrap();
    assert_eq!(summary["outcome"], "invalidated", "{summary}");
    assert_eq!(summary["wallets_invalidated"], 2);

    let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(m["type"], "status_update");
    assert_eq!(m["transaction_id"], t);
    assert_eq!(m["status"], "completed");
    assert!(m["timestamp"].as_f64().unwrap() > 1.7e9);

    // Next reads: balances are misses with the database's data; the status
    // is the new one (cached by the invalidator); the transaction is a miss.
    let ra = balance::get_balance(&w.app.balances, &wa).await.unwrap();
    assert_eq!(ra.status, CacheStatus::Miss { stored: true });
    assert_eq!(ra.value.unwrap().balance, "75.00");
    let rb = balance::get_balance(&w.app.balances, &wb).await.unwrap();
    assert_eq!(rb.status, CacheStatus::Miss { stored: true });
    assert_eq!(rb.value.unwrap().version, 2);
    let status = transactions::get_status(&w.app.transactions, &tid)
        .await
        .unwrap();
    assert_eq!(status.status, CacheStatus::Hit);
    let status = status.value.unwrap();
    assert_eq!(status.status, "completed");
    assert!(status.completion_time.is_some());
    let txn = transactions::get_transaction(&w.app.transactions, &tid)
        .await
        .unwrap();
    assert_eq!(txn.status, CacheStatus::Miss { stored: true });
    assert_eq!(txn.value.unwrap().status, "completed");
}
both_modes!(transaction_completed_invalidates_both_wallets_and_publishes);

async fn unknown_ids_and_malformed_events_change_nothing(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let unknown_user = cache_invalidation(
        &w.app.invalidation,
        &event("UserProfileUpdated", json!({"user_id": random_uuid()})),
    )
    .await
    .unwrap();
    assert_eq!(unknown_user["outcome"], "unknown-id");
    let detail = json!({"transaction_id": random_uuid(), "sender_wallet_id": random_uuid(),
                        "receiver_wallet_id": random_uuid(), "status": "completed"});
    let unknown_txn =
        cache_invalidation(&w.app.invalidation, &event("TransactionCompleted", detail))
            .await
            .unwrap();
    assert_eq!(unknown_txn["outcome"], "unknown-id");
    for bad in [
        event("UserProfileUpdated", json!({})),
        event("UserProfileUpdated", json!({"user_id": "{x}"})),
        event("UserProfileUpdated", json!({"user_id": 7})),
        event(
            "TransactionCompleted",
            json!({"transaction_id": random_uuid()}),
        ),
        event(
            "TransactionCompleted",
            json!({"transaction_id": random_uuid(), "sender_wallet_id": "a:b",
                                             "receiver_wallet_id": random_uuid()}),
        ),
        event("UserProfileUpdated", json!("not an object")),
        json!({"detail": {"user_id": random_uuid()}}),
        json!(null),
        json!([1, 2, 3]),
    ] {
        let out = cache_invalidation(&w.app.invalidation, &bad).await.unwrap();
        assert_eq!(out["status"], "rejected", "{bad} -> {out}");
    }
    let ignored = cache_invalidation(&w.app.invalidation, &event("SomethingElse", json!({})))
        .await
        .unwrap();
    assert_eq!(ignored["status"], "ignored");
    assert!(w.keys().await.is_empty(), "{:?}", w.keys().await);
}
both_modes!(unknown_ids_and_malformed_events_change_nothing);
