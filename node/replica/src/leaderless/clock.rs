//! Version vectors: which writes a stored value already includes, to tell ordered writes from
//! concurrent ones.
//!
//! Each entry is `(coordinator number, highest HLC timestamp of a write that coordinator made
//! and this value includes)`. A write carries its coordinator's context (the vector of the copy
//! it replaces) advanced with its own dot, so a write *after* another carries a vector that
//! dominates the other's; two writes neither of which dominates are concurrent.

use std::cmp::Ordering;

use bytes::{Buf, BufMut, Bytes};

/// A version vector, sorted by node number, without zero entries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct VClock(Vec<(u32, u64)>);

/// How two vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The same writes.
    Equal,
    /// `self` is included in the other (the other is newer).
    Before,
    /// `self` includes the other.
    After,
    /// Neither includes the other: concurrent writes.
    Concurrent,
}

impl VClock {
    /// The entries, sorted by node.
    pub fn entries(&self) -> &[(u32, u64)] {
        &self.0
    }

    /// The timestamp recorded for `node` (0 when none).
    pub fn get(&self, node: u32) -> u64 {
        self.0
            .binary_search_by_key(&node, |e| e.0)
            .map_or(0, |i| self.0[i].1)
    }

    /// Records a write by `node` at `ts` (keeps the larger timestamp).
    pub fn advance(&mut self, node: u32, ts: u64) {
        match self.0.binary_search_by_key(&node, |e| e.0) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(ts),
            Err(i) => self.0.insert(i, (node, ts)),
        }
    }

    /// The least vector including both.
    pub fn merge(&self, other: &VClock) -> VClock {
        let mut out = self.clone();
        for &(n, t) in &other.0 {
            out.advance(n, t);
        }
        out
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            let a = self.0.get(i).copied();
            let b = other.0.get(j).copied();
            let (x, y) = match (a, b) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    Ordering::Equal => {
                        i += 1;
                        j += 1;
                        (a.1, b.1)
                    }
                    Ordering::Less => {
                        i += 1;
                        (a.1, 0)
                    }
                    Ordering::Greater => {
                        j += 1;
                        (0, b.1)
                    }
                },
                (Some(a), None) => {
                    i += 1;
                    (a.1, 0)
                }
                (None, Some(b)) => {
                    j += 1;
                    (0, b.1)
                }
                (None, None) => break,
            };
            less |= x < y;
            greater |= x > y;
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Binary form: `count:u16le (node:u32le ts:u64le)*`.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(2 + self.0.len() * 12);
        out.put_u16_le(self.0.len() as u16);
        for &(n, t) in &self.0 {
            out.put_u32_le(n);
            out.put_u64_le(t);
        }
        Bytes::from(out)
    }

    /// Parses [`VClock::encode`]'s form; `None` when malformed.
    pub fn decode(mut b: &[u8]) -> Option<VClock> {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16_le() as usize;
        if b.remaining() != n * 12 {
            return None;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let node = b.get_u32_le();
            let ts = b.get_u64_le();
            if v.last().is_some_and(|&(p, _)| p >= node) || ts == 0 {
                return None;
            }
            v.push((node, ts));
        }
        Some(VClock(v))
    }

    /// Builds a vector from `(node, ts)` pairs.
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, u64)>) -> VClock {
        let mut v = VClock::default();
        for (n, t) in entries {
            if t > 0 {
                v.advance(n, t);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(e: &[(u32, u64)]) -> VClock {
        VClock::from_entries(e.iter().copied())
    }

    #[test]
    fn clock_orders_included_writes_and_flags_concurrent_ones() {
        let a = vc(&[(1, 5)]);
        let b = vc(&[(1, 5), (2, 7)]);
        let c = vc(&[(1, 6)]);
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(VClock::default().compare(&a), Causality::Before);
        let m = b.merge(&c);
        assert_eq!(m, vc(&[(1, 6), (2, 7)]));
        assert_eq!(m.compare(&b), Causality::After);
        assert_eq!(m.compare(&c), Causality::After);
    }

    #[test]
    fn clock_binary_form_round_trips_and_rejects_damage() {
        let v = vc(&[(1, 5), (3, u64::MAX), (9, 1)]);
        let enc = v.encode();
        assert_eq!(VClock::decode(&enc), Some(v));
        assert_eq!(VClock::decode(&enc[..enc.len() - 1]), None);
        assert_eq!(VClock::decode(&[]), None);
        assert_eq!(
            VClock::decode(&VClock::default().encode()),
            Some(VClock::default())
        );
    }
}
