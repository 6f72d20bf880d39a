//! The consistent-hash ring: every member owns `vnodes` points on a 64-bit circle; a key's
//! preference list is the first N distinct members clockwise from the key's hash, and the
//! members after those are its fallbacks (where hints for unreachable replicas go).

/// A stable 64-bit hash (FNV-1a, then a MurmurHash3 finaliser to spread the bits): the same on
/// every node and every build, which the ring needs and `std`'s hasher does not promise.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// MurmurHash3's 64-bit finaliser.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ring over a fixed member list (indices into it name members).
#[derive(Debug, Clone)]
pub struct Ring {
    tokens: Vec<(u64, u16)>,
    members: usize,
}

impl Ring {
    /// A ring of `members` members named by `names` (each gets `vnodes` tokens).
    pub fn new<S: AsRef<str>>(names: &[S], vnodes: u32) -> Ring {
        let mut tokens = Vec::with_capacity(names.len() * vnodes as usize);
        for (i, name) in names.iter().enumerate() {
            for v in 0..vnodes.max(1) {
                let token = hash64(format!("{}#{v}", name.as_ref()).as_bytes());
                tokens.push((token, i as u16));
            }
        }
        tokens.sort_unstable();
        Ring {
            tokens,
            members: names.len(),
        }
    }

    /// All members in ring order from the key's position: the first N are its replicas.
    pub fn walk(&self, key_hash: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.members);
        if self.tokens.is_empty() {
            return out;
        }
        let start = self.tokens.partition_point(|t| t.0 < key_hash);
        let mut seen = 0u64;
        for k in 0..self.tokens.len() {
            let m = self.tokens[(start + k) % self.tokens.len()].1 as usize;
            if seen & (1 << m) == 0 {
                seen |= 1 << m;
                out.push(m);
                if out.len() == self.members {
                    break;
                }
            }
        }
        out
    }

    /// The key's preference list: its first `n` distinct members clockwise.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<usize> {
        let mut w = self.walk(hash64(key));
        w.truncate(n);
        w
    }

    /// Every distinct set of `n` replicas that `member` belongs to, as the other members of
    /// each (sorted): a key's replicas are the set that follows the first token at or after
    /// its hash, so there is at most one set per token.
    pub fn groups(&self, n: usize, member: usize) -> Vec<Vec<usize>> {
        let mut out = std::collections::BTreeSet::new();
        for &(token, _) in &self.tokens {
            let mut set = self.walk(token);
            set.truncate(n);
            if set.contains(&member) {
                set.retain(|&m| m != member);
                set.sort_unstable();
                out.insert(set);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_spreads_keys_evenly_and_moves_few_keys_when_a_member_joins() {
        let five = ["n1", "n2", "n3", "n4", "n5"];
        let ring = Ring::new(&five, 64);
        let mut primary = [0usize; 5];
        let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        for k in &keys {
            let p = ring.preference_list(k.as_bytes(), 3);
            assert_eq!(p.len(), 3);
            assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2]);
            primary[p[0]] += 1;
        }
        for c in primary {
            assert!((2_800..5_200).contains(&c), "uneven: {primary:?}");
        }
        let six = Ring::new(&["n1", "n2", "n3", "n4", "n5", "n6"], 64);
        let moved = keys
            .iter()
            .filter(|k| {
                ring.preference_list(k.as_bytes(), 1) != six.preference_list(k.as_bytes(), 1)
            })
            .count();
        // Ideally 1/6 of the keys move to the new member, and only those.
        assert!(moved < keys.len() / 4, "{moved} keys moved");
    }

    /// The replica sets a member is in are exactly those of the keys it replicates.
    #[test]
    fn groups_are_the_replica_sets_of_a_members_keys() {
        let ring = Ring::new(&["n1", "n2", "n3", "n4", "n5"], 16);
        let groups = ring.groups(3, 2);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..50_000 {
            let mut p = ring.preference_list(format!("key-{i}").as_bytes(), 3);
            if p.contains(&2) {
                p.retain(|&m| m != 2);
                p.sort_unstable();
                assert!(groups.contains(&p), "{p:?} not among {groups:?}");
                seen.insert(p);
            }
        }
        assert_eq!(seen.len(), groups.len(), "a group no key has: {groups:?}");
        assert!(groups.iter().all(|g| g.len() == 2));
        // Three members and N = 3: one set, the other two.
        assert_eq!(
            Ring::new(&["a", "b", "c"], 8).groups(3, 0),
            vec![vec![1, 2]]
        );
    }
}
