//! The integration tests' helpers: the fixtures of `test-support` (a
//! [`World`], tokens and claims, the real-time rig), re-exported so that
//! each test file names them from one place.

pub use test_support::both_modes;
pub use test_support::realtime;
pub use test_support::tokens::*;
pub use test_support::world::*;
