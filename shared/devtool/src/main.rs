//! `paycache-dev migrate | seed | migrate-and-seed`: applies the schema and
//! loads the deterministic local data set into `DATABASE_URL`.

use std::process::ExitCode;

use paycache::config::{DatabaseConfig, Secret};
use paycache::db::Db;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("paycache-dev: DATABASE_URL is required");
        return ExitCode::from(2);
    };
    let db = match Db::new(&DatabaseConfig {
        url: Secret::new(url),
        pool_size: 1,
        connect_timeout: std::time::Duration::from_secs(10),
        statement_timeout: std::time::Duration::from_secs(600),
        secret_arn: None,
        credentials: None,
        ca_cert: std::env::var_os("DATABASE_CA_CERT").map(Into::into),
    }) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("paycache-dev: {e}");
            return ExitCode::from(2);
        }
    };
    let (migrate, seed) = match command.as_str() {
        "migrate" => (true, false),
        "seed" => (false, true),
        "migrate-and-seed" => (true, true),
        _ => {
            eprintln!("usage: paycache-dev migrate | seed | migrate-and-seed");
            return ExitCode::from(2);
        }
    };
    if migrate {
        match db.migrate().await {
            Ok(n) => println!("paycache-dev: {n} migration(s) applied"),
            Err(e) => {
                eprintln!(
                    "paycache-dev: migration failed: {e} ({:?})",
                    std::error::Error::source(&e).map(|s| s.to_string())
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if seed {
        let started = std::time::Instant::now();
        match db.seed_local().await {
            Ok(()) => println!("paycache-dev: seed data loaded in {:?}", started.elapsed()),
            Err(e) => {
                eprintln!(
                    "paycache-dev: seeding failed: {e} ({:?})",
                    std::error::Error::source(&e).map(|s| s.to_string())
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
