//! `POST /sessions/logout` — see `paycache::routes::logout`.

paycache::http_function!("session-logout", paycache::routes::logout::handle);
