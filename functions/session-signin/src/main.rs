//! The Cognito user pool's Pre Token Generation trigger — see
//! `paycache::signin::pre_token_generation`.

paycache::event_function!("session-signin", paycache::signin::handle_pre_token);
