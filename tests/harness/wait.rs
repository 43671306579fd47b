//! Waiting on a condition with a deadline (linkerd's `assert_eventually!`): never a fixed sleep.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Some`, every 50 ms, for at most `patience`; panics with
/// `what` when the deadline passes.
pub fn eventually<T>(what: &str, patience: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
