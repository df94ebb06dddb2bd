//! The edge: HTTP helpers and routes (problem documents, `Cache-Status`, `RateLimit` headers), the event-driven handlers and the authorizer. The only layer that sees requests and events.

pub mod auth;
pub mod events;
pub mod functions;
pub mod http;
pub mod routes;
pub mod signin;
