//! Waiting for a condition instead of sleeping for a guessed time: a test
//! that sleeps "long enough" is slow on a fast machine and flaky on a
//! loaded one; polling the condition is neither. Bounded: a condition that
//! never holds fails the test, saying what it waited for, after `timeout`.
//! (Sleeps that pace a load, or wait for a clock, are not this.)

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds; panics with `what` after
/// `timeout`.
pub async fn wait_until<F: Future<Output = bool>>(timeout: Duration, what: &str, mut cond: impl FnMut() -> F) {
    wait_for(timeout, what, || {
        let f = cond();
        async move { if f.await { Ok(()) } else { Err(String::new()) } }
    })
    .await
}

/// Polls `probe` every 20 ms until it answers `Ok`, and returns its value;
/// `Err(state)` means "not yet", and the last state is in the panic after
/// `timeout`.
pub async fn wait_for<T, F: Future<Output = Result<T, String>>>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last seen: {last}"),
        }
        tokio::time::sleep(POLL).await;
    }
}
