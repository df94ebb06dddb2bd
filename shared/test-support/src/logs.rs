//! Test logs. Every test process writes what the code logs (`tracing`, at
//! `debug` for this project's crates and `info` for the rest) to a file in
//! `PAYCACHE_TEST_LOG_DIR` (set by `make test`: `.stack/test/logs`), one
//! file per test binary, so a failure such as a failover's timing can be
//! read afterwards and `make test` can check that no secret reached them.
//! With `TEST_LOG` set the logs go to standard error instead. Without
//! either, nothing is installed.
//!
//! [`capture`] runs one future under a subscriber of its own and returns
//! what it logged, for tests that assert on a log line.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing::instrument::WithSubscriber;
use tracing_subscriber::EnvFilter;

const FILTER: &str = "info,paycache=debug,paycache_tests=debug,test_support=debug";

/// Installs the process-wide subscriber once (see the module docs).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter =
            || EnvFilter::try_from_env("TEST_LOG").unwrap_or_else(|_| EnvFilter::new(FILTER));
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .try_init();
            return;
        }
        let Some(dir) = std::env::var_os("PAYCACHE_TEST_LOG_DIR") else {
            return;
        };
        let _ = std::fs::create_dir_all(&dir);
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let path = std::path::Path::new(&dir).join(format!("{binary}-{}.log", std::process::id()));
        let Ok(file) = std::fs::File::create(&path) else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(FILTER))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    });
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `fut` with a subscriber of its own (every level of this project's
/// crates) and returns its output with what it logged. Tasks that `fut`
/// spawns are not captured.
pub async fn capture<F: Future>(fut: F) -> (F::Output, String) {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(FILTER))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = fut.with_subscriber(subscriber).await;
    let text = String::from_utf8_lossy(
        &buffer
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    (out, text)
}
