//! `GET and PUT /wallets/{wallet_id}/balance` — see `paycache::routes::balance`.

paycache::http_function!("balance-write", paycache::routes::balance::handle);
