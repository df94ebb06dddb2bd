//! `GET` and `PUT /wallets/{wallet_id}/balance` (function `balance-write`).

use http::header::HeaderValue;
use http::{HeaderName, Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::Value;

use crate::app::App;
use crate::domain::balance::Actor;
use crate::domain::balance::Balances;
use crate::domain::balance::WalletBalance;
use crate::domain::balance::{BalanceWrite, WriteError, WriteOutcome, get_balance, write_balance};
use crate::domain::identity::{Principal, permissions};
use crate::domain::money::{Currency, CurrencyError, parse_amount};
use crate::edge::http::{
    Problem, check_body_size, json_object, json_response, path_param, request_id, single_header,
    whole_number, with_cache_status,
};
use crate::edge::routes::gate::{Admitted, Gate, admit, admit_as, forbidden, identify, refusal};
use crate::edge::routes::limits::{BALANCE_READ, BALANCE_WRITE, with_decision};
use crate::infra::db::DbError;
use crate::infra::keys::WalletId;
use crate::patterns::cache_aside::Cached;

pub(crate) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What `GET`/`PUT /wallets/{wallet_id}/balance` use.
#[derive(Debug, Clone, Copy)]
pub struct Deps<'a> {
    /// Balances: reads and fenced writes.
    pub balances: &'a Balances,
    /// Who is calling, and may they: sessions, the blacklist, the rate
    /// limiter, token keys.
    pub gate: Gate<'a>,
}

impl<'a> From<&'a App> for Deps<'a> {
    fn from(app: &'a App) -> Self {
        Self {
            balances: &app.balances,
            gate: Gate::from(app),
        }
    }
}

/// `GET` and `PUT /wallets/{wallet_id}/balance`.
pub async fn handle<'a>(deps: impl Into<Deps<'a>>, req: Request) -> Response<Body> {
    let deps = deps.into();
    let rid = request_id(&req);
    if let Err(problem) = check_body_size(&req) {
        return problem.into_response(&rid);
    }
    let method = req.method().clone();
    if method != Method::GET && method != Method::PUT {
        return Problem::method_not_allowed("GET, PUT").into_response(&rid);
    }
    let wallet = match path_param(&req, "wallet_id", 1).map(|raw| WalletId::parse(&raw)) {
        Some(Ok(wallet)) => wallet,
        Some(Err(e)) => return Problem::invalid_request(format!("The {e}.")).into_response(&rid),
        None => {
            return Problem::invalid_request("The path must be /wallets/{wallet_id}/balance.")
                .into_response(&rid);
        }
    };
    let gate = deps.gate;
    if method == Method::GET {
        let (who, read) = match admit(
            gate,
            &req,
            Some(BALANCE_READ),
            &rid,
            get_balance(deps.balances, &wallet),
        )
        .await
        {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let visible = match &read {
            Ok(cached) => cached.value.as_ref().is_some_and(|b| can_see(&who, b)),
            Err(_) => true, // 503 either way
        };
        let resp = if visible {
            answer(read, &wallet, &rid)
        } else {
            not_found(&wallet, &rid)
        };
        return with_decision(resp, who.limit.as_ref());
    }
    let write = match parse_write(wallet, &req) {
        Ok(w) => w,
        Err(problem) => return problem.into_response(&rid),
    };
    // Whether the caller may write is known before Redis (a service's
    // scopes; never a user); one who may not is told 403 if they can see
    // the wallet and 404 if not, from a read sent with the gate's checks.
    // Identified once: the token is verified here, not again in the gate.
    let caller = match identify(&req, gate).await {
        Ok(c) => c,
        Err(why) => return refusal(why, &rid),
    };
    let may_write = caller
        .scope_permissions
        .contains(permissions::WALLETS_BALANCE_WRITE);
    if !may_write {
        let (who, read) = match admit_as(
            gate,
            caller,
            Some(BALANCE_WRITE),
            &rid,
            get_balance(deps.balances, &wallet),
        )
        .await
        {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let visible = matches!(&read, Ok(c) if c.value.as_ref().is_some_and(|b| can_see(&who, b)));
        let resp = if visible {
            forbidden(
                "Balances change through transactions; only a service with the wallets.balance.write permission may set one.",
                &rid,
            )
        } else {
            not_found(&wallet, &rid)
        };
        return with_decision(resp, who.limit.as_ref());
    }
    // The write starts only after its check.
    let (who, ()) = match admit_as(gate, caller, Some(BALANCE_WRITE), &rid, async {}).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    tracing::info!(client = ?who.caller.principal, "balance write");
    let write = BalanceWrite {
        actor: Some(Actor {
            principal: match &who.caller.principal {
                Principal::Service { client } => format!("svc:{client}"),
                Principal::User { user, .. } => format!("user:{user}"),
            },
            jti: who.caller.jti.to_string(),
            request_id: rid.clone(),
        }),
        ..write
    };
    with_decision(put(deps.balances, write, &rid).await, who.limit.as_ref())
}

/// Its owner, or support staff.
fn can_see(who: &Admitted, balance: &WalletBalance) -> bool {
    balance.owner.as_ref().is_some_and(|o| who.is_user(o)) || who.may(permissions::WALLETS_READ_ANY)
}

fn not_found(wallet: &WalletId, rid: &str) -> Response<Body> {
    Problem::not_found(format!("No wallet has the id {wallet}.")).into_response(rid)
}

fn answer(
    read: Result<Cached<WalletBalance>, DbError>,
    wallet: &WalletId,
    rid: &str,
) -> Response<Body> {
    match read {
        Ok(cached) => {
            let resp = match &cached.value {
                Some(balance) => json_response(StatusCode::OK, &balance.public()),
                None => {
                    Problem::not_found(format!("No wallet has the id {wallet}.")).into_response(rid)
                }
            };
            with_cache_status(resp, &cached.status)
        }
        Err(e) => {
            tracing::error!(wallet_id = %wallet, error = %e, "balance read failed");
            Problem::unavailable("The balance store is unavailable; retry shortly.")
                .into_response(rid)
        }
    }
}

/// Parses and validates the body: 400 for what is malformed, 422 for what
/// is well-formed but unacceptable. Nothing is read or written before this.
fn parse_write(wallet: WalletId, req: &Request) -> Result<BalanceWrite, Problem> {
    let idempotency_key = match single_header(req, "idempotency-key")? {
        None => None,
        Some(k)
            if (1..=128).contains(&k.len())
                && k.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b',') =>
        {
            Some(k.to_owned())
        }
        // A comma: API Gateway joins a repeated header's values with commas,
        // so "a,b" may be two keys; which one the client meant is unknowable.
        Some(_) => {
            return Err(Problem::invalid_request(
                "The Idempotency-Key header must be one value of 1–128 printable ASCII characters other than ','.",
            ));
        }
    };
    let body = json_object(req)?;
    if let Some(unknown) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "balance" | "currency" | "expected_version"))
    {
        return Err(Problem::invalid_request(format!(
            "Unknown field \"{}\": the body has balance, currency and expected_version only.",
            unknown.chars().take(64).collect::<String>()
        )));
    }
    let currency = match body.get("currency") {
        Some(Value::String(c)) => Currency::parse(c).map_err(|e| match e {
            CurrencyError::Malformed => Problem::invalid_request(format!("The {e}.")),
            CurrencyError::Unsupported => Problem::unprocessable(format!("The {e}.")),
        })?,
        Some(_) => {
            return Err(Problem::invalid_request(
                "currency must be a string such as \"USD\".",
            ));
        }
        None => return Err(Problem::invalid_request("currency is required.")),
    };
    let balance_minor = match body.get("balance") {
        Some(Value::String(b)) => parse_amount(b, currency).map_err(|e| {
            let detail = format!("balance {e}.");
            if e.is_unprocessable() {
                Problem::unprocessable(detail)
            } else {
                Problem::invalid_request(detail)
            }
        })?,
        Some(Value::Number(_)) => {
            return Err(Problem::invalid_request(
                "balance must be a decimal string such as \"125.50\", not a JSON number.",
            ));
        }
        Some(_) => {
            return Err(Problem::invalid_request(
                "balance must be a decimal string such as \"125.50\".",
            ));
        }
        None => return Err(Problem::invalid_request("balance is required.")),
    };
    let expected_version = match body.get("expected_version") {
        // Versions are PostgreSQL bigints.
        Some(Value::Number(n)) => whole_number(n)
            .filter(|v| (1..=i64::MAX as u64).contains(v))
            .ok_or_else(|| {
                Problem::invalid_request(
                    "expected_version must be a whole number from 1 to 9223372036854775807.",
                )
            })?,
        Some(_) => {
            return Err(Problem::invalid_request(
                "expected_version must be a whole number.",
            ));
        }
        None => return Err(Problem::invalid_request("expected_version is required.")),
    };
    Ok(BalanceWrite {
        wallet,
        balance_minor,
        currency,
        expected_version,
        idempotency_key,
        actor: None,
    })
}

async fn put(balances: &Balances, write: BalanceWrite, rid: &str) -> Response<Body> {
    let wallet = write.wallet;
    match write_balance(balances, &write).await {
        Ok(WriteOutcome::Replayed(inner)) => {
            let mut resp = render(*inner, &wallet, rid);
            resp.headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            resp
        }
        Ok(outcome) => render(outcome, &wallet, rid),
        Err(WriteError::FenceUnavailable(why)) => {
            tracing::warn!(wallet_id = %wallet, reason = why.as_str(), "balance write refused: no cache fence");
            Problem::unavailable(
                "Balance writes are paused while the cache cannot be fenced; nothing was changed. Retry shortly.",
            )
            .into_response(rid)
        }
        Err(WriteError::FenceExpired) => Problem::unavailable(
            "The write took too long and was rolled back; nothing was changed. Retry shortly.",
        )
        .into_response(rid),
        Err(WriteError::Db(DbError::Query(e))) => {
            tracing::error!(wallet_id = %wallet, error = %e, "balance write failed");
            Problem::internal().into_response(rid)
        }
        Err(WriteError::Db(e)) => {
            tracing::error!(wallet_id = %wallet, error = %e, "balance write failed");
            Problem::unavailable(
                "The balance store is unavailable; nothing was changed. Retry shortly.",
            )
            .into_response(rid)
        }
    }
}

fn render(outcome: WriteOutcome, wallet: &WalletId, rid: &str) -> Response<Body> {
    match outcome {
        WriteOutcome::Applied { balance, .. } => json_response(StatusCode::OK, &balance.public()),
        WriteOutcome::VersionConflict { current } => Problem::conflict(format!(
            "expected_version does not match: the wallet is at version {}.",
            current.version
        ))
        .with("current", serde_json::to_value(current.public()).unwrap_or(Value::Null))
        .into_response(rid),
        WriteOutcome::CurrencyMismatch { wallet_currency } => Problem::unprocessable(format!(
            "currency must be the wallet's currency, {wallet_currency}."
        ))
        .into_response(rid),
        WriteOutcome::NotFound => Problem::not_found(format!("No wallet has the id {wallet}.")).into_response(rid),
        WriteOutcome::KeyReused => Problem::unprocessable(
            "This Idempotency-Key was used with a different request; use a new key for a new request.",
        )
        .into_response(rid),
        // A replay of a replay cannot be stored; answer as the inner one.
        WriteOutcome::Replayed(inner) => render(*inner, wallet, rid),
    }
}
