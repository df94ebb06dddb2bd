//! `POST /rate-limit/check` — see `paycache::routes::rate_limit_check`.

paycache::http_function!(
    "rate-limit-check",
    paycache::routes::rate_limit_check::handle
);
