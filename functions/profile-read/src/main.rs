//! `GET /users/{user_id}/profile` — see `paycache::routes::profile_read`.

paycache::http_function!("profile-read", paycache::routes::profile_read::handle);
