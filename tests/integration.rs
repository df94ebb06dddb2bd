//! The workspace's integration tests, one module per file, in one binary
//! (see `tests/Cargo.toml`): `cargo test --test integration realtime::` runs
//! one file's tests, `cargo test --test integration <name>` one test.
//! `metrics.rs` and `failover.rs` are binaries of their own.
// The tests' own futures nest the routes' (themselves near the compiler's
// default layout depth of 128) inside rigs and loops: a fresh, non-
// incremental build computes their layouts past 128.
#![recursion_limit = "256"]

mod attacks;
mod audit;
mod auth;
mod authorization;
mod balance;
mod boundaries;
mod cache_aside;
mod fuzz;
mod health;
mod invalidation;
mod metrics_emitter;
mod outage;
mod profile_read;
mod rate_limit;
mod realtime;
mod resilience;
mod secrets;
mod signin;
mod tls;
mod warming;
mod websocket;
