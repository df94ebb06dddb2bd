//! The function binaries, as a list: what each one initialises (what its
//! `main` builds before the first event) and the AWS operations the code
//! can make — for `paycache-dev init-check` and `aws-calls`, which the
//! deployment contract test runs against `template.yaml`.

use crate::app::App;
use crate::infra::aws::AwsCall;

/// Every function binary (the crates under `functions/`).
pub const FUNCTIONS: &[&str] = &[
    "audit-flush",
    "authorizer",
    "balance-write",
    "cache-invalidator",
    "cache-warmer",
    "health-check",
    "metrics-emitter",
    "profile-read",
    "rate-limit-check",
    "session-logout",
    "session-signin",
    "ws-connections",
    "ws-sender",
];

/// Runs `function`'s initialisation against the environment — the `App`
/// every function builds, then the function's own state (the same calls
/// its `main` makes: `http_function!` / `event_function!`). Nothing
/// connects to Redis or PostgreSQL; secrets named by ARN are fetched.
pub async fn init_check(function: &str) -> Result<(), String> {
    if !FUNCTIONS.contains(&function) {
        return Err(format!("no function {function}"));
    }
    let app = App::from_env().await.map_err(|e| e.to_string())?;
    match function {
        "authorizer" => crate::edge::auth::verifier_for_app(&app)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "ws-sender" => crate::edge::events::sender_state(&app)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "metrics-emitter" => crate::edge::events::metrics_client(&app)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// Every AWS operation the code can make, from the lists kept next to the
/// calls.
pub fn aws_calls() -> Vec<AwsCall> {
    [
        crate::infra::secrets::AWS_CALLS,
        crate::domain::cloudwatch::AWS_CALLS,
        crate::domain::signout::AWS_CALLS,
        crate::domain::delivery::AWS_CALLS,
        crate::domain::identity::AWS_CALLS,
    ]
    .concat()
}
