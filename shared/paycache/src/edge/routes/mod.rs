//! One handler per HTTP route. Each takes the shared [`crate::App`] and the
//! API Gateway request, and always returns a response: errors are rendered
//! as problems here, never propagated to the runtime.

pub mod balance;
pub mod health;
pub mod limits;
pub mod logout;
pub mod profile_read;
pub mod rate_limit_check;
