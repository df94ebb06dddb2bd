//! Real-time delivery — see `paycache::delivery`.

paycache::event_function!(
    "ws-sender",
    paycache::events::sender_state,
    paycache::events::handle_sender
);
