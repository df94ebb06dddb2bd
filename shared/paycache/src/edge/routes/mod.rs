//! One handler per HTTP route. Each takes its `Deps` (built from
//! [`crate::App`]) and the API Gateway request, lets the caller in through
//! [`gate`], and always returns a response: errors are rendered as problems
//! here, never propagated to the runtime.

pub mod balance;
pub mod gate;
pub mod health;
pub mod limits;
pub mod logout;
pub mod profile_read;
pub mod rate_limit_check;
