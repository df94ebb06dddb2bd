//! Scheduled every minute — see `paycache::events::emit_metrics`.

paycache::event_function!(
    "metrics-emitter",
    paycache::events::metrics_client,
    paycache::events::handle_metrics
);
