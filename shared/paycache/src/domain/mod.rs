//! The domain: profiles, balances (versioned write-through behind a fence), the audit log (write-behind buffer), transactions, sessions, fraud signals, real-time connections, warming, health, node metrics and invalidation. Built on the patterns and the infrastructure; each capability is a small struct holding exactly what it uses (`Profiles`, `Balances`, `AuditLog`, `Sessions`, …), put together in `crate::app::App`.

pub mod audit;
pub mod balance;
pub mod cloudwatch;
pub mod delivery;
pub mod delivery_queue;
pub mod fraud;
pub mod health;
pub mod identity;
pub mod invalidation;
pub mod money;
pub mod node_metrics;
pub mod profile;
pub mod realtime;
pub mod sessions;
pub mod signout;
pub mod transactions;
pub mod warming;
