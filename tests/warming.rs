//! `cache-warmer` against real Redis (both modes) and PostgreSQL loaded
//! with the deterministic seed data.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant};

use paycache::config::RedisMode;
use paycache::events::cache_warm;
use paycache::keys::{TransactionId, UserId, WalletId};
use paycache::{balance, profile, transactions};
use paycache_tests::{World, both_modes};
use serde_json::json;
use uuid::Uuid;

async fn seeded(mode: RedisMode, extra: &[(&str, &str)]) -> World {
    let w = World::new(mode, extra).await;
    w.app.db.seed_local().await.unwrap();
    w
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

async fn warmed_users_read_as_hits(mode: RedisMode) {
    let w = seeded(mode, &[("WARM_USERS", "40"), ("WARM_BATCH_USERS", "16")]).await;
    let summary = cache_warm(
        &w.app.warmer,
        &json!({"detail-type": "Scheduled Event", "detail": {}}),
        far(),
    )
    .await;
    assert_eq!(summary["status"], "ok", "{summary}");
    assert_eq!(summary["users"], 40);
    assert_eq!(summary["users_done"], 40);
    assert_eq!(summary["stopped_early"], false);
    assert_eq!(summary["failed"], 0);
    let warmed = summary["warmed"].as_u64().unwrap();
    assert!(
        warmed > 40 * 3,
        "profiles, wallets and transactions: {summary}"
    );

    // Every warmed entry reads as a hit.
    let users = paycache::warming::most_recently_active(&w.app.warmer, 40)
        .await
        .unwrap();
    let client = w.db.client().await;
    let mut reads = 0;
    for user in &users {
        let p = profile::get_profile(&w.app.profiles, user).await.unwrap();
        assert!(p.status.is_hit(), "profile of {user}: {:?}", p.status);
        for row in client
            .query(
                "SELECT wallet_id FROM wallets WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .unwrap()
        {
            let wallet = WalletId::from(row.get::<_, Uuid>(0));
            let b = balance::get_balance(&w.app.balances, &wallet)
                .await
                .unwrap();
            assert!(b.status.is_hit(), "balance of {wallet}: {:?}", b.status);
            reads += 1;
        }
        for row in client
            .query(
                "SELECT t.transaction_id FROM transactions t JOIN wallets w ON w.wallet_id = t.sender_wallet_id
                  WHERE w.user_id = $1 ORDER BY t.created_at DESC LIMIT 3",
                &[&user.as_uuid()],
            )
            .await
            .unwrap()
        {
            let id = TransactionId::from(row.get::<_, Uuid>(0));
            let t = transactions::get_transaction(&w.app.transactions, &id).await.unwrap();
            assert!(t.status.is_hit(), "transaction {id}: {:?}", t.status);
            reads += 1;
        }
    }
    assert!(reads > 40);

    // A second run finds everything fresh.
    let again = cache_warm(&w.app.warmer, &json!({}), far()).await;
    assert_eq!(again["warmed"], 0, "{again}");
    assert_eq!(again["skipped"].as_u64().unwrap(), warmed);
}
both_modes!(warmed_users_read_as_hits);

/// A deadline shorter than the work: the run stops early and says how far
/// it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_stops_early_with_partial_progress() {
    let w = seeded(
        RedisMode::Standalone,
        &[
            ("WARM_USERS", "2000"),
            ("WARM_BATCH_USERS", "5"),
            ("WARM_CONCURRENCY", "1"),
            ("WARM_DEADLINE_MARGIN_MS", "0"),
        ],
    )
    .await;
    let started = Instant::now();
    let summary = cache_warm(
        &w.app.warmer,
        &json!({}),
        Instant::now() + Duration::from_millis(150),
    )
    .await;
    assert_eq!(summary["stopped_early"], true, "{summary}");
    // Partial progress: some users, not all, and what it reports as done
    // is really in the cache.
    let done = summary["users_done"].as_u64().unwrap();
    assert!(done > 0 && done < 2000, "{summary}");
    let profiles = w
        .keys()
        .await
        .iter()
        .filter(|k| k.contains("user_profile:") && !k.ends_with(":lock"))
        .count() as u64;
    assert!(profiles >= done, "{profiles} profiles cached for {summary}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it stops, it does not finish: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_lists_and_pending_outbox_rows() {
    let w = seeded(RedisMode::Standalone, &[]).await;
    // A committed write whose cache step never happened.
    let wallet = "00000000-0000-4000-9000-000000000004";
    let client = w.db.client().await;
    client
        .batch_execute(&format!(
            "UPDATE wallets SET balance_minor = 4242, version = 2, updated_at = now() WHERE wallet_id = '{wallet}';
             INSERT INTO balance_outbox (wallet_id, version, balance_minor, currency, committed_at, audit_event)
             VALUES ('{wallet}', 2, 4242, 'USD', now(), '{{}}');"
        ))
        .await
        .unwrap();
    let users = json!({"user_ids": ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]});
    let summary = cache_warm(&w.app.warmer, &users, far()).await;
    assert_eq!(summary["users"], 2, "{summary}");
    assert_eq!(summary["outbox_rows_applied"], 1);
    let b = balance::get_balance(&w.app.balances, &WalletId::parse(wallet).unwrap())
        .await
        .unwrap();
    assert!(b.status.is_hit());
    assert_eq!(b.value.unwrap().balance, "42.42");
    let p = profile::get_profile(
        &w.app.profiles,
        &UserId::parse("00000000-0000-4000-8000-000000000002").unwrap(),
    )
    .await
    .unwrap();
    assert!(p.status.is_hit());

    for bad in [
        json!({"user_ids": ["nope"]}),
        json!({"user_ids": "x"}),
        json!({"user_ids": [1]}),
    ] {
        let out = cache_warm(&w.app.warmer, &bad, far()).await;
        assert_eq!(out["status"], "rejected", "{bad}");
    }
}
