//! Scheduled every minute — see `paycache::events::audit_flush`.

paycache::event_function!("audit-flush", paycache::events::handle_audit_flush);
