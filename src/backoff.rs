//! Capped exponential backoff for calls to a dependency that fails: Cloud
//! Map discovery and the ECS protection calls.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": the n-th delay is uniform in
/// `[e/2, e]` where `e = min(cap, base * 2^n)`. Unlike full jitter it never
/// retries almost immediately, which matters when the failure is throttling; and
/// since each range starts where the previous one ended, delays never shrink
/// before the cap.
///
/// Jitter comes from `fastrand`: aws-config and aws-runtime already depend on
/// it, so it adds nothing to the build, and it needs no cryptographic quality.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_rng(base, cap, fastrand::Rng::new())
    }

    fn with_rng(base: Duration, cap: Duration, rng: fastrand::Rng) -> Self {
        Self {
            base: base.min(cap),
            cap,
            attempt: 0,
            rng,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        // Stop counting once capped so the shift below cannot overflow on a
        // registry that stays down for days.
        if ceiling < self.cap && !ceiling.is_zero() {
            self.attempt += 1;
        }
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=spread))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn ceiling(&self) -> Duration {
        1u32.checked_shl(self.attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for seed in 0..200 {
            let mut b = Backoff::with_rng(base, cap, fastrand::Rng::with_seed(seed));
            let mut previous = Duration::ZERO;
            let mut ceiling = base;
            for _ in 0..40 {
                let d = b.next_delay();
                assert!(d <= cap, "seed {seed}: {d:?} above cap");
                assert!(
                    d <= ceiling && d >= ceiling / 2,
                    "seed {seed}: {d:?} vs {ceiling:?}"
                );
                if ceiling < cap {
                    assert!(
                        d >= previous,
                        "seed {seed}: shrank from {previous:?} to {d:?}"
                    );
                }
                previous = d;
                ceiling = (ceiling * 2).min(cap);
            }
        }
    }

    #[test]
    fn backoff_reset_starts_over() {
        let base = Duration::from_millis(100);
        let mut b = Backoff::new(base, Duration::from_secs(5));
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() >= Duration::from_millis(2500));
        b.reset();
        let d = b.next_delay();
        assert!(d >= base / 2 && d <= base, "{d:?}");
    }

    #[test]
    fn backoff_edge_cases() {
        // base above cap is clamped rather than producing delays above cap.
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
        // A huge cap must not overflow however long the outage lasts.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay();
        }
        let mut b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        for _ in 0..100 {
            assert_eq!(b.next_delay(), Duration::ZERO);
        }
    }
}
