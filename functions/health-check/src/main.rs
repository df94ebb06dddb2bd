//! `GET /health` — see `paycache::routes::health`.

paycache::http_function!("health-check", paycache::routes::health::handle);
