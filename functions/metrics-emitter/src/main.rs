//! Scheduled every minute — see `paycache::events::emit_metrics`.

paycache::event_function!(
    "metrics-emitter",
    paycache::cloudwatch::for_app,
    paycache::events::handle_metrics
);
