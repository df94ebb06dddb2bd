//! The Cognito Pre Token Generation trigger (`session-signin`) with the
//! events in `events/`, in both Redis modes: it creates the session the
//! API then admits, through the same code `paycache-dev login` uses.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;

use http::StatusCode;
use lambda_http::{Body, RequestExt};
use paycache::config::RedisMode;
use paycache::keys::SessionId;
use paycache::signin::{SignInError, pre_token_generation};
use paycache_tests::{SignedIn, World, both_modes};
use serde_json::Value;

fn event(name: &str) -> Value {
    let path = format!("{}/../events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sid_of(answer: &Value) -> String {
    answer["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"]
        ["claimsToAddOrOverride"]["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("no sid in {answer}"))
        .to_owned()
}

async fn status_of(w: &World, req: lambda_http::Request) -> StatusCode {
    paycache::routes::profile_read::handle(&w.app, req)
        .await
        .status()
}

async fn a_sign_in_creates_the_session_the_api_admits(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = test_support::insert_user(&w.db, 2).await;
    let answer = pre_token_generation(&w.app.sessions, event("session-signin"))
        .await
        .unwrap();
    // The rest of the event is handed back as it came, and the response
    // changes the access token's claims and nothing else: no
    // groupOverrideDetails (an empty one would suppress the user's groups).
    assert_eq!(answer["triggerSource"], "TokenGeneration_Authentication");
    let changes = |answer: &serde_json::Value| {
        let details = &answer["response"]["claimsAndScopeOverrideDetails"];
        let keys: Vec<&String> = details.as_object().unwrap().keys().collect();
        let access: Vec<&String> = details["accessTokenGeneration"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        keys == ["accessTokenGeneration"] && access == ["claimsToAddOrOverride"]
    };
    assert!(changes(&answer), "{answer}");
    // The check catches what aws_lambda_events serializes by itself.
    let mut whole = answer.clone();
    whole["response"]["claimsAndScopeOverrideDetails"]["groupOverrideDetails"] =
        serde_json::json!({"groupsToOverride": [], "iamRolesToOverride": []});
    assert!(!changes(&whole));
    assert_eq!(answer["request"]["userAttributes"]["sub"], user);
    let sid = sid_of(&answer);
    let session = paycache::sessions::check(
        &w.app.sessions,
        &paycache::keys::UserId::parse(&user).unwrap(),
        &SessionId::parse(&sid).unwrap(),
        &paycache::keys::Jti::parse("j1").unwrap(),
    )
    .await
    .session
    .unwrap()
    .into_session()
    .unwrap();
    assert_eq!(session.user_id.to_string(), user);
    assert_eq!(session.email, "user2@example.com");
    assert_eq!(session.roles, vec!["customer".to_string()]);
    assert!(session.permissions.is_empty());
    assert_eq!(session.device_info.as_deref(), Some("1example23456789"));

    // A token carrying that sid reads the user's own profile.
    let token = SignedIn {
        user: user.clone(),
        session: sid.clone(),
        jti: "j1".into(),
    };
    let mut p = HashMap::new();
    p.insert("user_id".to_string(), user.clone());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/users/{user}/profile"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(p);
    assert_eq!(Box::pin(status_of(&w, token.on(req))).await, StatusCode::OK);

    // A refresh for a support user: a new session, with the group's
    // permissions.
    let answer = pre_token_generation(&w.app.sessions, event("session-signin-support-refresh"))
        .await
        .unwrap();
    let support = paycache::sessions::check(
        &w.app.sessions,
        &paycache::keys::UserId::parse("00000000-0000-4000-8000-000000000003").unwrap(),
        &SessionId::parse(&sid_of(&answer)).unwrap(),
        &paycache::keys::Jti::parse("j2").unwrap(),
    )
    .await
    .session
    .unwrap()
    .into_session()
    .unwrap();
    assert_ne!(sid_of(&answer), sid);
    assert_eq!(support.roles, vec!["support".to_string()]);
    assert_eq!(
        support.permissions,
        vec![
            "profiles.read.any".to_string(),
            "wallets.read.any".to_string()
        ]
    );
}
both_modes!(a_sign_in_creates_the_session_the_api_admits);

/// A user whose sub is not a user id, and what is not a trigger event, fail
/// the sign-in and create nothing.
async fn refused_sign_ins_create_nothing(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let bad = pre_token_generation(&w.app.sessions, event("session-signin-bad-sub")).await;
    assert!(matches!(bad, Err(SignInError::NoUserId)), "{bad:?}");
    let junk = pre_token_generation(&w.app.sessions, serde_json::json!({"hello": 1})).await;
    assert!(matches!(junk, Err(SignInError::Malformed)), "{junk:?}");
    assert!(w.keys().await.is_empty(), "{:?}", w.keys().await);
}
both_modes!(refused_sign_ins_create_nothing);
