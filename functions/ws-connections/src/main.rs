//! WebSocket API routes — see `paycache::events::websocket`.

paycache::event_function!("ws-connections", paycache::events::handle_websocket);
