//! Generated linearizable histories, for benchmarks and tests: `clients` clients each run
//! operations back to back on random keys; every operation takes effect at a random instant
//! inside its interval, and results (read values, cas outcomes) follow from the order of those
//! instants, so the history is linearizable by construction.

use std::collections::HashMap;

use crate::history::{Op, OpKind, Outcome};

/// A small deterministic generator (SplitMix64), so histories are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `ops` operations by `clients` clients over `keys` keys: 50% reads, 40% writes, 10% cas.
pub fn linearizable(ops: usize, clients: u64, keys: u64, seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut clock = vec![0u64; clients as usize];
    // (effect instant, op) before results are known.
    let mut pending: Vec<(u64, Op)> = Vec::with_capacity(ops);
    for i in 0..ops {
        let c = rng.below(clients) as usize;
        let start = clock[c] + rng.below(50);
        let end = start + 10 + rng.below(200);
        clock[c] = end + 1;
        let at = start + rng.below(end - start + 1);
        let op = match rng.below(10) {
            0..=4 => OpKind::Read,
            5..=8 => OpKind::Write,
            _ => OpKind::Cas,
        };
        pending.push((
            at * 1024 + (i as u64 % 1024),
            Op {
                client: c as u64,
                op,
                key: format!("k{}", rng.below(keys)),
                value: (op != OpKind::Read).then(|| format!("v{i}")),
                expected: None,
                applied: None,
                start_ns: start,
                end_ns: end,
                outcome: Outcome::Ok,
                version: None,
                node: None,
            },
        ));
    }
    pending.sort_by_key(|p| p.0);
    let mut state: HashMap<String, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(ops);
    for (_, mut op) in pending {
        let cur = state.entry(op.key.clone()).or_insert(None);
        match op.op {
            OpKind::Read => op.value = cur.clone(),
            OpKind::Cas => {
                // Half the time expect the current value (applies), else a stale one.
                let hit = rng.below(2) == 0;
                op.expected = if hit {
                    cur.clone()
                } else {
                    Some("stale".into())
                };
                let applied = op.expected == *cur;
                op.applied = Some(applied);
                if applied {
                    *cur = op.value.clone();
                }
            }
            _ => *cur = op.value.clone(),
        }
        out.push(op);
    }
    out.sort_by_key(|o| (o.start_ns, o.client));
    out
}
