//! CrashLoopBackOff: how long kubelet waits before restarting a container that exited.
//!
//! The first restart is immediate; each later one waits `base` doubled per restart (10 s, 20 s,
//! 40 s, ...) up to 5 minutes; a container that ran for 10 minutes before exiting starts over.

use std::time::Duration;

/// kubelet's restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (kubelet: 10 s; settable so tests need not wait).
    pub base: Duration,
    /// The cap (kubelet: 300 s).
    pub max: Duration,
    /// A run at least this long resets the backoff (kubelet: 10 min).
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay before the next start, given the backoff step reached so far (0 = never backed
    /// off). Returns the delay and the next step.
    pub fn next(&self, step: u32, last_run: Duration) -> (Duration, u32) {
        if last_run >= self.reset_after || step == 0 {
            return (Duration::ZERO, 1);
        }
        let factor = 1u32.checked_shl(step - 1).unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.max);
        (delay, step.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let b = Backoff::default();
        let short = Duration::from_secs(1);
        let mut step = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let (delay, next) = b.next(step, short);
            delays.push(delay.as_secs());
            step = next;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn a_long_run_resets() {
        let b = Backoff::default();
        assert_eq!(b.next(5, Duration::from_secs(600)), (Duration::ZERO, 1));
    }
}
