//! EventBridge rule — see `paycache::events::cache_invalidation`.

paycache::event_function!("cache-invalidator", paycache::events::handle_invalidation);
