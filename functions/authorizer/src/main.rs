//! API Gateway Lambda authorizer — see `paycache::auth`.

paycache::event_function!(
    "authorizer",
    paycache::auth::verifier_for_app,
    paycache::auth::handle_authorizer
);
