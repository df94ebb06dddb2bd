//! `paycache-ws-gateway`: the local WebSocket gateway (see the library).
//!
//! ```text
//! paycache-ws-gateway --port 9001 --lambda http://127.0.0.1:9000 [--keep-running ws-sender]
//! ```
//!
//! Management requests (`/@connections/{id}`) must be signed (SigV4) with
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from the environment, the
//! credentials the functions sign with; `--test-controls` serves the test
//! controls (`/_gateway/...`), which `make run` leaves off.
//!
//! `--keep-running <function>` stands in for the deployed schedule of a
//! long-running function: it invokes the function (with an EventBridge
//! `Scheduled Event`) again as soon as each invocation returns, or beside
//! it after `--run-timeout` seconds (default 60) without an answer: `cargo
//! lambda watch` never answers an invocation whose process died (killed,
//! or restarted by a rebuild) and starts a new process for the next one
//! while its `--concurrency` allows, as Lambda does after a crash.
//!
//! `--front-port <port>` also serves the HTTP front door there
//! ([`paycache_ws_gateway::front`]): every request is forwarded to
//! `--lambda`, at most `--max-inflight` (default 64, at most 100) at once,
//! the gateway's own invocations included, and at most `--max-per-route`
//! (default 32) for one route or function; a burst beyond waits, first come
//! first served, up to `--queue-timeout` seconds (default 10) and
//! `--max-waiting` requests (default 1024), then is answered 503 with
//! `Retry-After`. `--cors-origin` (repeatable) is an origin allowed to call
//! it from a browser: preflights are answered and CORS headers added as API
//! Gateway answers them for the template's `CorsAllowedOrigin`
//! ([`paycache_ws_gateway::cors`]).

use std::time::Duration;

use serde_json::json;

fn usage() -> ! {
    eprintln!(
        "usage: paycache-ws-gateway --port <port> --lambda <cargo lambda watch URL> [--keep-running <function>] [--run-timeout <secs>] [--test-controls]\n\
         \x20      [--front-port <port> [--max-inflight <n>] [--max-per-route <n>] [--max-waiting <n>] [--queue-timeout <secs>] [--cors-origin <scheme://host[:port]>]...]\n\
         management requests must be signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut port: u16 = 9001;
    let mut lambda = String::from("http://127.0.0.1:9000");
    let mut keep_running: Vec<&'static str> = Vec::new();
    let mut run_timeout = Duration::from_secs(60);
    let mut test_controls = false;
    let mut front_port: Option<u16> = None;
    let mut cors_origins: Vec<String> = Vec::new();
    let mut limits = paycache_ws_gateway::front::Limits::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--test-controls" {
            test_controls = true;
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().unwrap_or_else(|_| usage()),
            ("--lambda", Some(l)) => lambda = l,
            ("--keep-running", Some(f)) => keep_running.push(Box::leak(f.into_boxed_str())),
            ("--run-timeout", Some(s)) => {
                run_timeout = Duration::from_secs(s.parse().unwrap_or_else(|_| usage()))
            }
            ("--front-port", Some(p)) => front_port = Some(p.parse().unwrap_or_else(|_| usage())),
            ("--cors-origin", Some(o)) => cors_origins.push(o),
            ("--max-inflight", Some(n)) => {
                limits.max_inflight = n.parse().unwrap_or_else(|_| usage())
            }
            ("--max-per-route", Some(n)) => {
                limits.max_per_key = n.parse().unwrap_or_else(|_| usage())
            }
            ("--max-waiting", Some(n)) => {
                limits.max_waiting = n.parse().unwrap_or_else(|_| usage())
            }
            ("--queue-timeout", Some(s)) => {
                limits.queue_timeout =
                    Duration::from_secs_f64(s.parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1)
        }
    };
    let limiter = paycache_ws_gateway::front::Limiter::new(limits);
    let invoke = paycache_ws_gateway::front::limited(
        paycache_ws_gateway::lambda_invoker(&lambda),
        limiter.clone(),
    );
    if let Some(port) = front_port {
        let front = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(1)
            }
        };
        let limits = limiter.limits();
        tracing::info!(
            url = %format!("http://127.0.0.1:{port}"),
            upstream = %lambda,
            max_inflight = limits.max_inflight,
            max_per_route = limits.max_per_key,
            max_waiting = limits.max_waiting,
            queue_timeout_s = limits.queue_timeout.as_secs_f64(),
            cors_origins = ?cors_origins,
            "front door listening"
        );
        paycache_ws_gateway::front::serve(
            front,
            &lambda,
            limiter.clone(),
            paycache_ws_gateway::cors::Cors::new(cors_origins.clone()),
        );
    }
    let options = paycache_ws_gateway::Options::new(
        paycache_ws_gateway::sigv4::Expected::from_env(),
        test_controls,
    );
    if options.management.is_none() {
        tracing::warn!(
            "no AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: every management request will be refused"
        );
    }
    let handle = match paycache_ws_gateway::serve(listener, invoke.clone(), options) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    tracing::info!(url = %handle.ws_url(), management = %handle.management_url(), "WebSocket gateway listening");
    for function in keep_running {
        let invoke = invoke.clone();
        tokio::spawn(async move {
            loop {
                let event = json!({
                    "version": "0", "id": "local", "detail-type": "Scheduled Event",
                    "source": "aws.events", "account": "000000000000", "region": "local",
                    "resources": [], "detail": {}
                });
                let mut run = tokio::spawn(invoke(function, event));
                match tokio::time::timeout(run_timeout, &mut run).await {
                    Ok(Ok(Ok(answer))) => {
                        tracing::debug!(function, answer = %answer, "run finished")
                    }
                    // Not cancelled: a slow run (a first build, a busy
                    // machine) still finishes, and dropping its request
                    // would leave `cargo lambda watch` waiting on it.
                    Err(_) => tracing::warn!(
                        function,
                        "no answer within the run timeout; starting another run beside it"
                    ),
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(function, error = %e, "invocation failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(function, error = %e, "invocation task failed"),
                }
            }
        });
    }
    let _ = tokio::signal::ctrl_c().await;
    handle.stop();
}
