//! Command pacing: a token bucket per session, as deep as the rate or deeper (the largest
//! burst). A command that finds it empty waits for its token; a client within the rate
//! never waits.

use std::time::{Duration, Instant};

/// One session's allowance of commands.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Commands per second (0: no limit).
    rate: f64,
    /// The bucket's depth: the largest burst.
    depth: f64,
    /// Commands that may still go without waiting.
    allowance: f64,
    /// When the allowance was last brought up to date.
    at: Instant,
}

impl Pacer {
    /// A full bucket of `per_second` commands (0: never waits).
    pub fn new(per_second: u32) -> Pacer {
        Pacer::with_burst(per_second, per_second)
    }

    /// `per_second` commands a second after a first burst of `burst` (the bucket's depth).
    pub fn with_burst(per_second: u32, burst: u32) -> Pacer {
        Pacer {
            rate: f64::from(per_second),
            depth: f64::from(burst.max(1)),
            allowance: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one command's token at `now`: how long the command must wait first (zero
    /// when the client is within the rate).
    pub fn take(&mut self, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        // `at` may lie ahead: the time the tokens already promised to waiting commands
        // accrue.
        if now > self.at {
            let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
            self.allowance = (self.allowance + refill).min(self.depth);
            self.at = now;
        }
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            return Duration::ZERO;
        }
        // The token it waits for is spent when it accrues.
        let ready = self.at + Duration::from_secs_f64((1.0 - self.allowance) / self.rate);
        self.allowance = 0.0;
        self.at = ready;
        ready.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_as_deep_as_the_rate_then_one_per_interval() {
        let mut p = Pacer::new(5);
        // After the pacer was made: its clock never lies ahead of the test's.
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(p.take(start), Duration::ZERO);
        }
        // The sixth waits a fifth of a second, the seventh two fifths.
        let w = p.take(start);
        assert!((w.as_secs_f64() - 0.2).abs() < 1e-6, "{w:?}");
        let w = p.take(start);
        assert!((w.as_secs_f64() - 0.4).abs() < 1e-6, "{w:?}");
        // A client that waited three seconds has a full bucket again, no more.
        let later = start + Duration::from_secs(3);
        for _ in 0..5 {
            assert_eq!(p.take(later), Duration::ZERO);
        }
        assert!(p.take(later) > Duration::ZERO);
    }

    #[test]
    fn a_deeper_bucket_takes_a_larger_burst() {
        let mut p = Pacer::with_burst(2, 6);
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(p.take(start), Duration::ZERO);
        }
        let w = p.take(start);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn no_rate_never_waits() {
        let mut p = Pacer::new(0);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(p.take(now), Duration::ZERO);
        }
    }
}
