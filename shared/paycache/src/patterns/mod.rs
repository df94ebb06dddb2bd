//! The design's caching patterns, independent of any domain: cache-aside with stampede protection, rate limiting (four algorithms), and Pub/Sub channels. Built on `infra` only.

pub mod cache_aside;
pub mod pubsub;
pub mod ratelimit;
