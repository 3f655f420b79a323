//! What to ask ECS next, task by task: a state machine without I/O, so the
//! rules below are tested on their own.
//!
//! ECS protection is a flag with an expiry, not a count: any disable clears
//! it whoever else relies on it, and each enable resets the expiry. Hence:
//!
//! - **Protect** a task when this process holds a stream on it and it is not
//!   (known to be) protected; **renew** every `renew_every` while it does.
//!   Every proxy with a stream on a server protects and renews it itself, so
//!   no proxy depends on another one staying up.
//! - **Release** only when the counts are shared-exact (`can_release`, the
//!   Redis slot store and reachable), the task has had no stream anywhere
//!   for `release_after` (no flapping when a publisher reconnects), and a
//!   count read that began after it went idle confirms it. Otherwise leave
//!   the protection to expire.
//! - A stream another proxy starts between our last count read and our
//!   disable would lose its protection: a proxy that released a task
//!   re-enables it if the next fresh counts show a stream on it.
//! - Draining (`release_now`): release at once what may be protected.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime};

/// Streams on one task as this process sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Held by this process (with an upgrade's inherited ones).
    pub local: usize,
    /// Held by every proxy (`local` plus other proxies' with Redis).
    pub shared: usize,
}

/// The call the tracker wants made for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Enable,
    Disable,
}

/// One planning round's circumstances.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub now: Instant,
    pub wall: SystemTime,
    /// Shared counts are exact: a task may be released.
    pub can_release: bool,
    /// When the counts behind `Load::shared` were read (began).
    pub counts_read_at: Option<Instant>,
    /// Release everything that may be protected, now (draining).
    pub release_now: bool,
    /// Release idle tasks without waiting `release_after` (the process is
    /// about to exit and would not be there to do it).
    pub release_idle_now: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub expires: Duration,
    pub renew_every: Duration,
    pub release_after: Duration,
}

#[derive(Debug, Default)]
struct Entry {
    /// Protected until then, as ECS last answered us.
    until: Option<SystemTime>,
    /// An enable whose answer we did not get (an error or timeout): it may
    /// have taken effect, so the task counts as possibly protected till then.
    maybe_until: Option<SystemTime>,
    /// The next renewal while we hold streams on it.
    renew_at: Option<Instant>,
    /// Without a stream shared-wide since then.
    idle_since: Option<Instant>,
    /// We released it then; see the module doc.
    released_at: Option<Instant>,
    /// The last per-task failure ECS reported, logged once per change.
    failure: Option<String>,
    /// No enable before then after a per-task failure.
    retry_at: Option<Instant>,
}

impl Entry {
    /// Until when the task may be protected, by us or by a lost answer.
    fn may_be_protected_until(&self) -> Option<SystemTime> {
        self.until.max(self.maybe_until)
    }
}

/// Per-task protection state, keyed by `K` (a task; `()` for this proxy).
#[derive(Debug)]
pub struct Tracker<K> {
    timing: Timing,
    entries: HashMap<K, Entry>,
}

/// Renew early when the protection would otherwise lapse this soon.
const LAPSE_MARGIN: Duration = Duration::from_secs(5);

impl<K: Clone + Eq + Hash> Tracker<K> {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            entries: HashMap::new(),
        }
    }

    /// The calls to make now, given each task's load (tasks absent from
    /// `loads` have no known load: never released, left to expire).
    pub fn plan(&mut self, loads: &HashMap<K, Load>, r: &Round) -> Vec<(K, Op)> {
        for (k, load) in loads {
            if load.local > 0 && !r.release_now && !self.entries.contains_key(k) {
                self.entries.insert(k.clone(), Entry::default());
            }
        }
        let mut ops = Vec::new();
        let mut forget = Vec::new();
        for (k, e) in &mut self.entries {
            let known = loads.get(k);
            let load = match known {
                Some(_) if r.release_now => Load::default(),
                Some(l) => *l,
                None => Load::default(),
            };
            if load.local > 0 {
                e.idle_since = None;
                e.released_at = None;
                if e.retry_at.is_some_and(|t| r.now < t) {
                    continue;
                }
                let lapsing = e
                    .until
                    .is_none_or(|u| u <= r.wall.checked_add(LAPSE_MARGIN).unwrap_or(r.wall));
                if lapsing || e.renew_at.is_none_or(|t| r.now >= t) {
                    ops.push((k.clone(), Op::Enable));
                }
            } else if load.shared > 0 {
                // Another proxy's stream: it protects and renews the task.
                e.idle_since = None;
                if e.released_at.is_some() {
                    ops.push((k.clone(), Op::Enable));
                }
            } else if let Some(until) = e.may_be_protected_until() {
                let since = *e.idle_since.get_or_insert(r.now);
                let confirmed = r.counts_read_at.is_some_and(|t| t >= since);
                if r.release_now
                    || (known.is_some()
                        && r.can_release
                        && confirmed
                        && (r.release_idle_now
                            || r.now.duration_since(since) >= self.timing.release_after))
                {
                    ops.push((k.clone(), Op::Disable));
                } else if until <= r.wall {
                    forget.push(k.clone());
                }
            } else if let Some(released) = e.released_at {
                // Idle on counts read after our release: nothing raced it.
                if r.counts_read_at.is_some_and(|t| t > released) || known.is_none() {
                    forget.push(k.clone());
                }
            } else {
                forget.push(k.clone());
            }
        }
        for k in forget {
            self.entries.remove(&k);
        }
        ops
    }

    /// ECS protected `k` until `until`.
    pub fn enabled(&mut self, k: &K, until: SystemTime, now: Instant) {
        let renew_every = self.timing.renew_every;
        let e = self.entries.entry(k.clone()).or_default();
        e.until = Some(until);
        e.maybe_until = None;
        e.renew_at = Some(now.checked_add(renew_every).unwrap_or(now));
        e.released_at = None;
        e.retry_at = None;
    }

    /// ECS released `k`.
    pub fn disabled(&mut self, k: &K, now: Instant) {
        if let Some(e) = self.entries.get_mut(k) {
            e.until = None;
            e.maybe_until = None;
            e.renew_at = None;
            e.idle_since = None;
            e.released_at = Some(now);
        }
    }

    /// An enable for `k` got no answer: it may have taken effect.
    pub fn enable_unanswered(&mut self, k: &K, wall: SystemTime) {
        if let Some(e) = self.entries.get_mut(k) {
            e.maybe_until = Some(wall.checked_add(self.timing.expires).unwrap_or(wall));
        }
    }

    /// ECS refused `op` for `k` alone (`reason`, e.g. `MISSING` for a
    /// stopped task or `TASK_NOT_VALID` outside a service). An enable is
    /// tried again after `renew_every`; a failed disable ends the tracking
    /// (the task is gone or was never protectable). Returns the previous
    /// failure, for logging once per change.
    pub fn task_failed(&mut self, k: &K, op: Op, reason: &str, now: Instant) -> Option<String> {
        let renew_every = self.timing.renew_every;
        let e = self.entries.get_mut(k)?;
        let previous = e.failure.replace(reason.to_string());
        match op {
            Op::Enable => e.retry_at = Some(now.checked_add(renew_every).unwrap_or(now)),
            Op::Disable => {
                self.entries.remove(k);
            }
        }
        previous
    }

    /// Clears a per-task failure after a success; returns it if there was
    /// one (to log the recovery).
    pub fn clear_failure(&mut self, k: &K) -> Option<String> {
        self.entries.get_mut(k).and_then(|e| e.failure.take())
    }

    /// Protected until when, per ECS's last answer, if still in the future.
    pub fn protected_until(&self, k: &K, wall: SystemTime) -> Option<SystemTime> {
        self.entries
            .get(k)
            .and_then(|e| e.until)
            .filter(|&u| u > wall)
    }

    /// How many tracked tasks are protected now.
    pub fn protected_count(&self, wall: SystemTime) -> usize {
        self.entries
            .values()
            .filter(|e| e.until.is_some_and(|u| u > wall))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    struct Clock {
        start: Instant,
        wall: SystemTime,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                wall: SystemTime::now(),
            }
        }
        fn round(&self, at: u32, can_release: bool, read_at: Option<u32>) -> Round {
            Round {
                now: self.start + at * S,
                wall: self.wall + at * S,
                can_release,
                counts_read_at: read_at.map(|t| self.start + t * S),
                release_now: false,
                release_idle_now: false,
            }
        }
    }

    fn tracker() -> Tracker<&'static str> {
        Tracker::new(Timing {
            expires: 60 * S,
            renew_every: 30 * S,
            release_after: 10 * S,
        })
    }

    fn loads(local: usize, shared: usize) -> HashMap<&'static str, Load> {
        HashMap::from([("t", Load { local, shared })])
    }

    /// Plans at `r` and confirms every call as ECS would.
    fn step(t: &mut Tracker<&'static str>, l: &HashMap<&'static str, Load>, r: &Round) -> Vec<Op> {
        let ops = t.plan(l, r);
        for (k, op) in &ops {
            match op {
                Op::Enable => t.enabled(k, r.wall + 60 * S, r.now),
                Op::Disable => t.disabled(k, r.now),
            }
        }
        ops.into_iter().map(|(_, op)| op).collect()
    }

    #[test]
    fn protects_once_renews_and_releases_after_the_delay() {
        let c = Clock::new();
        let mut t = tracker();
        assert_eq!(
            step(&mut t, &loads(1, 1), &c.round(0, true, Some(0))),
            [Op::Enable]
        );
        assert!(t.protected_until(&"t", c.wall).is_some());
        // A second stream changes nothing.
        assert!(step(&mut t, &loads(2, 2), &c.round(1, true, Some(1))).is_empty());
        assert_eq!(
            step(&mut t, &loads(2, 2), &c.round(30, true, Some(30))),
            [Op::Enable]
        );
        // Idle from 40: nothing before 50, a release at 50.
        assert!(step(&mut t, &loads(0, 0), &c.round(40, true, Some(40))).is_empty());
        assert!(step(&mut t, &loads(0, 0), &c.round(49, true, Some(49))).is_empty());
        assert_eq!(
            step(&mut t, &loads(0, 0), &c.round(50, true, Some(50))),
            [Op::Disable]
        );
        assert!(t.protected_until(&"t", c.wall + 50 * S).is_none());
        // Forgotten once a later read confirms it idle.
        assert!(step(&mut t, &loads(0, 0), &c.round(51, true, Some(51))).is_empty());
        assert!(t.entries.is_empty());
    }

    #[test]
    fn a_stream_back_within_release_after_makes_no_call() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(1, 1), &c.round(0, true, Some(0)));
        assert!(step(&mut t, &loads(0, 0), &c.round(1, true, Some(1))).is_empty());
        assert!(step(&mut t, &loads(1, 1), &c.round(9, true, Some(9))).is_empty());
        assert!(step(&mut t, &loads(0, 0), &c.round(12, true, Some(12))).is_empty());
        assert_eq!(
            step(&mut t, &loads(0, 0), &c.round(22, true, Some(22))),
            [Op::Disable]
        );
    }

    #[test]
    fn another_proxys_stream_holds_the_release() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(1, 1), &c.round(0, true, Some(0)));
        for at in [5, 20, 40] {
            assert!(step(&mut t, &loads(0, 1), &c.round(at, true, Some(at))).is_empty());
        }
        assert!(step(&mut t, &loads(0, 0), &c.round(41, true, Some(41))).is_empty());
        assert_eq!(
            step(&mut t, &loads(0, 0), &c.round(51, true, Some(51))),
            [Op::Disable]
        );
    }

    #[test]
    fn no_release_without_exact_fresh_counts() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(1, 1), &c.round(0, true, Some(0)));
        // Local store (or Redis degraded): never released, forgotten at expiry.
        for at in [1, 20, 59] {
            assert!(step(&mut t, &loads(0, 0), &c.round(at, false, None)).is_empty());
        }
        assert!(step(&mut t, &loads(0, 0), &c.round(61, false, None)).is_empty());
        assert!(t.entries.is_empty());

        // Counts older than the idle moment do not count as confirmation.
        step(&mut t, &loads(1, 1), &c.round(100, true, Some(100)));
        assert!(step(&mut t, &loads(0, 0), &c.round(101, true, Some(100))).is_empty());
        assert!(step(&mut t, &loads(0, 0), &c.round(120, true, Some(100))).is_empty());
        assert_eq!(
            step(&mut t, &loads(0, 0), &c.round(121, true, Some(121))),
            [Op::Disable]
        );
    }

    #[test]
    fn a_task_that_left_discovery_is_left_to_expire() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(1, 1), &c.round(0, true, Some(0)));
        let none = HashMap::new();
        assert!(step(&mut t, &none, &c.round(30, true, Some(30))).is_empty());
        assert!(step(&mut t, &none, &c.round(61, true, Some(61))).is_empty());
        assert!(t.entries.is_empty());
    }

    #[test]
    fn a_release_that_raced_a_new_stream_is_repaired() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(1, 1), &c.round(0, true, Some(0)));
        step(&mut t, &loads(0, 0), &c.round(1, true, Some(1)));
        assert_eq!(
            step(&mut t, &loads(0, 0), &c.round(11, true, Some(11))),
            [Op::Disable]
        );
        // The next counts show another proxy's stream: protect it again.
        assert_eq!(
            step(&mut t, &loads(0, 1), &c.round(12, true, Some(12))),
            [Op::Enable]
        );
    }

    #[test]
    fn unanswered_and_refused_calls() {
        let c = Clock::new();
        let mut t = tracker();
        let r = c.round(0, true, Some(0));
        assert_eq!(t.plan(&loads(1, 1), &r), [("t", Op::Enable)]);
        t.enable_unanswered(&"t", r.wall);
        // Asked again (the caller's backoff paces it).
        assert_eq!(t.plan(&loads(1, 1), &c.round(1, true, Some(1))).len(), 1);
        // Idle: may be protected, so released after the delay.
        assert!(t.plan(&loads(0, 0), &c.round(2, true, Some(2))).is_empty());
        assert_eq!(
            t.plan(&loads(0, 0), &c.round(12, true, Some(12))),
            [("t", Op::Disable)]
        );
        assert_eq!(t.task_failed(&"t", Op::Disable, "MISSING", c.start), None);
        assert!(t.entries.is_empty());

        // A refused enable waits renew_every before the next try.
        let r = c.round(100, true, Some(100));
        assert_eq!(t.plan(&loads(1, 1), &r).len(), 1);
        assert_eq!(
            t.task_failed(&"t", Op::Enable, "TASK_NOT_VALID", r.now),
            None
        );
        assert!(t
            .plan(&loads(1, 1), &c.round(110, true, Some(110)))
            .is_empty());
        assert_eq!(
            t.plan(&loads(1, 1), &c.round(130, true, Some(130))).len(),
            1
        );
        assert_eq!(
            t.task_failed(&"t", Op::Enable, "TASK_NOT_VALID", c.start + 130 * S)
                .as_deref(),
            Some("TASK_NOT_VALID")
        );
    }

    #[test]
    fn at_exit_idle_tasks_are_released_without_the_delay() {
        let c = Clock::new();
        let mut t = tracker();
        step(
            &mut t,
            &HashMap::from([
                (
                    "t",
                    Load {
                        local: 1,
                        shared: 1,
                    },
                ),
                (
                    "u",
                    Load {
                        local: 1,
                        shared: 1,
                    },
                ),
            ]),
            &c.round(0, true, Some(0)),
        );
        let mut r = c.round(1, true, Some(1));
        r.release_idle_now = true;
        // "u" still has another proxy's stream.
        let l = HashMap::from([
            (
                "t",
                Load {
                    local: 0,
                    shared: 0,
                },
            ),
            (
                "u",
                Load {
                    local: 0,
                    shared: 1,
                },
            ),
        ]);
        assert_eq!(t.plan(&l, &r), [("t", Op::Disable)]);
        // Not without exact counts.
        let mut r = c.round(1, false, Some(1));
        r.release_idle_now = true;
        let mut t2 = tracker();
        step(&mut t2, &loads(1, 1), &c.round(0, true, Some(0)));
        assert!(t2.plan(&loads(0, 0), &r).is_empty());
    }

    #[test]
    fn draining_releases_at_once_and_protects_nothing_new() {
        let c = Clock::new();
        let mut t = tracker();
        step(&mut t, &loads(3, 3), &c.round(0, true, Some(0)));
        let mut r = c.round(1, true, Some(1));
        r.release_now = true;
        assert_eq!(step(&mut t, &loads(3, 3), &r), [Op::Disable]);
        let mut r = c.round(2, true, Some(2));
        r.release_now = true;
        assert!(step(&mut t, &loads(3, 3), &r).is_empty());
        assert!(t.entries.is_empty());
    }
}
