//! Scheduled every 5 minutes, or invoked with `{"user_ids": [...]}` — see
//! `paycache::events::cache_warm`.

paycache::event_function!("cache-warmer", paycache::events::handle_cache_warm);
