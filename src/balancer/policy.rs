//! Balancing policies: which of the eligible backends takes the next client.
//!
//! A policy sees only backends that are present, healthy and have a free slot,
//! in the table's stable order (config order, then discovery order by
//! address), and is called with the slot table locked, so its own state needs
//! no synchronisation. Pingora's `BackendSelection` cannot be used here: it is
//! rebuilt on every discovery update and never sees connection counts.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Balance;

/// What a policy knows of one eligible backend.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub weight: usize,
    pub active: usize,
}

/// Picks one of the candidates (never empty) and returns its index.
pub trait Policy: Send {
    fn pick(&mut self, candidates: &[Candidate]) -> usize;

    /// The backend has left the table: drop any state kept for it.
    fn forget(&mut self, _addr: &SocketAddr) {}
}

/// The policy named in the config.
pub fn from_config(balance: Balance) -> Box<dyn Policy> {
    match balance {
        Balance::Roundrobin => Box::<SmoothRoundRobin>::default(),
        Balance::Leastconn => Box::<LeastConn>::default(),
        Balance::First => Box::new(First),
        Balance::Random => Box::new(PowerOfTwo),
    }
}

/// nginx's smooth weighted round robin: weights 1 and 3 give a, b, b, b
/// spread out (b a b b), not in bursts, and skipping a full backend does not
/// disturb the others' shares.
#[derive(Default)]
pub struct SmoothRoundRobin {
    current: HashMap<SocketAddr, i64>,
}

impl Policy for SmoothRoundRobin {
    fn pick(&mut self, candidates: &[Candidate]) -> usize {
        let total: i64 = candidates.iter().map(|c| c.weight as i64).sum();
        let mut best = 0;
        let mut best_weight = i64::MIN;
        for (i, c) in candidates.iter().enumerate() {
            let cw = self.current.entry(c.addr).or_insert(0);
            *cw += c.weight as i64;
            if *cw > best_weight {
                best_weight = *cw;
                best = i;
            }
        }
        if let Some(cw) = self.current.get_mut(&candidates[best].addr) {
            *cw -= total;
        }
        best
    }

    fn forget(&mut self, addr: &SocketAddr) {
        self.current.remove(addr);
    }
}

/// Fewest active connections relative to weight; ties are taken in turn.
#[derive(Default)]
pub struct LeastConn {
    turn: usize,
}

impl Policy for LeastConn {
    fn pick(&mut self, candidates: &[Candidate]) -> usize {
        // a/wa < b/wb  <=>  a*wb < b*wa, without floating point.
        let load = |c: &Candidate, other: &Candidate| c.active * other.weight;
        let min = candidates
            .iter()
            .min_by(|a, b| load(a, b).cmp(&load(b, a)))
            .copied();
        let Some(min) = min else { return 0 };
        let ties: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| load(c, &min) == load(&min, c))
            .map(|(i, _)| i)
            .collect();
        self.turn = self.turn.wrapping_add(1);
        ties[self.turn % ties.len()]
    }
}

/// The first candidate in the table's stable order.
pub struct First;

impl Policy for First {
    fn pick(&mut self, _candidates: &[Candidate]) -> usize {
        0
    }
}

/// Two weighted random draws; the less loaded (relative to weight) wins.
pub struct PowerOfTwo;

impl PowerOfTwo {
    fn draw(candidates: &[Candidate]) -> usize {
        let total: usize = candidates.iter().map(|c| c.weight).sum();
        let mut point = fastrand::usize(..total.max(1));
        for (i, c) in candidates.iter().enumerate() {
            if point < c.weight {
                return i;
            }
            point -= c.weight;
        }
        candidates.len() - 1
    }
}

impl Policy for PowerOfTwo {
    fn pick(&mut self, candidates: &[Candidate]) -> usize {
        let a = Self::draw(candidates);
        let b = Self::draw(candidates);
        let (ca, cb) = (&candidates[a], &candidates[b]);
        if cb.active * ca.weight < ca.active * cb.weight {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(spec: &[(usize, usize)]) -> Vec<Candidate> {
        spec.iter()
            .enumerate()
            .map(|(i, &(weight, active))| Candidate {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight,
                active,
            })
            .collect()
    }

    #[test]
    fn smooth_round_robin_follows_weights() {
        let mut p = SmoothRoundRobin::default();
        let c = cands(&[(10, 0), (30, 0)]);
        let picks: Vec<usize> = (0..8).map(|_| p.pick(&c)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2, "{picks:?}");
        // Smooth: never the light backend twice in a row.
        assert!(picks.windows(2).all(|w| w != [0, 0]), "{picks:?}");
    }

    #[test]
    fn leastconn_prefers_idle_then_rotates() {
        let mut p = LeastConn::default();
        assert_eq!(p.pick(&cands(&[(10, 3), (10, 0)])), 1);
        assert_eq!(p.pick(&cands(&[(20, 1), (10, 0)])), 1);
        let c = cands(&[(10, 1), (10, 1), (10, 1)]);
        let mut seen: Vec<usize> = (0..3).map(|_| p.pick(&c)).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn first_takes_first() {
        assert_eq!(First.pick(&cands(&[(1, 5), (1, 0)])), 0);
    }

    #[test]
    fn power_of_two_avoids_the_loaded() {
        let c = cands(&[(10, 100), (10, 0)]);
        let hits = (0..1000).filter(|_| PowerOfTwo.pick(&c) == 1).count();
        // Only a double draw of backend 0 (1 in 4) picks it.
        assert!(hits > 650, "{hits}");
    }
}
