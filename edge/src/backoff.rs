//! Reconnect delays for the uplink and the downlink: exponential from a first delay up
//! to a cap, with jitter (each delay uniform between half and all of the current step),
//! back to the first delay once a session made progress.

use std::time::Duration;

/// The delay sequence of one reconnecting client.
#[derive(Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays from `initial_ms` doubling up to `max_ms`.
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Backoff {
            initial_ms,
            max_ms,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// Starts over from the first delay (the last session made progress).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial_ms
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max_ms);
        self.attempt += 1;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(self.rng % cap.max(1) + cap / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(100, 1000);
        let steps: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        for (d, cap) in steps.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!((cap / 2..cap / 2 + cap).contains(d), "{steps:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }
}
