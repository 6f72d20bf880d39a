//! What a run asks for: which keys (distribution), which operations (mix), what values.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian (theta 0.99) over every key, popularity ranks scattered over the key space: a
    /// few hot keys, not neighbours.
    Zipfian,
    /// A fraction `keys` of the key space gets a fraction `ops` of the operations.
    Hotspot {
        /// Hot share of the keys (0..1).
        keys: f64,
        /// Share of operations that go to them (0..1).
        ops: f64,
    },
    /// Temporal locality: reads go mostly to recently written keys (zipfian over recency, the
    /// newest most likely); writes are uniform.
    Latest,
    /// A hotspot whose hot set moves to the next keys every `period_s` seconds.
    MovingHotspot {
        /// Hot share of the keys.
        keys: f64,
        /// Share of operations.
        ops: f64,
        /// Seconds between moves.
        period_s: f64,
    },
}

impl FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let nums: Result<Vec<f64>, String> = parts
            .map(|p| {
                p.parse::<f64>()
                    .map_err(|_| format!("--dist {s}: {p:?} is not a number"))
            })
            .collect();
        let nums = nums?;
        let frac = |i: usize, default: f64| -> Result<f64, String> {
            let v = nums.get(i).copied().unwrap_or(default);
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(format!("--dist {s}: {v} must be a fraction in (0, 1]"))
            }
        };
        match name {
            "uniform" if nums.is_empty() => Ok(Dist::Uniform),
            "zipfian" if nums.is_empty() => Ok(Dist::Zipfian),
            "latest" if nums.is_empty() => Ok(Dist::Latest),
            "hotspot" if nums.len() <= 2 => Ok(Dist::Hotspot {
                keys: frac(0, 0.2)?,
                ops: frac(1, 0.8)?,
            }),
            "moving-hotspot" if nums.len() <= 3 => {
                let period_s = nums.get(2).copied().unwrap_or(10.0);
                if period_s <= 0.0 {
                    return Err(format!("--dist {s}: the period must be positive"));
                }
                Ok(Dist::MovingHotspot {
                    keys: frac(0, 0.2)?,
                    ops: frac(1, 0.8)?,
                    period_s,
                })
            }
            _ => Err(format!(
                "unknown --dist {s:?}: expected uniform, zipfian, latest, hotspot[:KEYS:OPS] \
                 (default 0.2:0.8) or moving-hotspot[:KEYS:OPS:PERIOD_S] (default 0.2:0.8:10)"
            )),
        }
    }
}

/// Zipfian over `0..n` by the method of Gray et al., "Quickly generating billion-record
/// synthetic databases" (SIGMOD 1994), as YCSB's `ZipfianGenerator` does.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Items `0..n` (n >= 2), skew `theta` in (0, 1).
    pub fn new(n: u64, theta: f64) -> Self {
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2, theta);
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// One draw; 0 is the most popular item.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

/// A fixed permutation of `0..n` that scatters zipfian popularity ranks over the key space,
/// so that every key has its own rank and the hot keys are not neighbours. A hash of the rank
/// modulo `n` (YCSB's scrambling over its own item count) sends several ranks to one key
/// and none to others: over 10,000 keys it reaches only 7,332 of them.
///
/// A four-round Feistel network over the smallest even power of two holding `n`, walked
/// until it lands inside `0..n` (cycle walking: a permutation of the larger domain restricted
/// to `0..n` by following each element's cycle is a permutation of `0..n`; the domain is at
/// most 4n, so few steps are needed).
#[derive(Debug, Clone)]
pub struct Scramble {
    n: u64,
    half_bits: u32,
}

/// Fixed round keys: every kv-bench run, whatever its seed or driver, makes the same keys hot.
const ROUND_KEYS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0x2545_f491_4f6c_dd1d,
];

/// MurmurHash3's 64-bit finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Scramble {
    /// A permutation of `0..n` (`n >= 1`).
    pub fn new(n: u64) -> Self {
        let n = n.max(1);
        let bits = 64 - (n - 1).leading_zeros(); // 2^bits >= n
        Scramble {
            n,
            half_bits: bits.div_ceil(2).max(1),
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in ROUND_KEYS {
            (l, r) = (r, l ^ (mix(r ^ k) & mask));
        }
        (l << self.half_bits) | r
    }

    /// Where `i` (in `0..n`) goes.
    pub fn apply(&self, i: u64) -> u64 {
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

/// Recently written keys, newest last (shared by every client).
#[derive(Debug)]
pub struct Recent {
    slots: Vec<AtomicU64>,
    head: AtomicU64,
    recency: Zipfian,
}

/// How many recent writes `latest` remembers.
const RECENT: usize = 1024;

/// Draws key indexes in `0..keys`.
#[derive(Debug)]
pub enum KeyChooser {
    /// Uniform.
    Uniform(u64),
    /// Scrambled zipfian: popularity rank permuted over the key space.
    Zipfian(Zipfian, Scramble),
    /// A hot set at `offset` (moving over time when `period` is set).
    Hotspot {
        /// Key count.
        n: u64,
        /// Hot keys.
        hot: u64,
        /// Share of operations to them.
        ops: f64,
        /// Moving: the hot set shifts by its size every period.
        period: Option<Duration>,
        /// When the run started.
        since: Instant,
    },
    /// Reads favour recent writes.
    Latest(u64, Box<Recent>),
}

impl KeyChooser {
    /// A chooser for `dist` over `keys` keys.
    pub fn new(dist: Dist, keys: u64) -> Self {
        let keys = keys.max(1);
        let hotspot = |k: f64, ops: f64, period: Option<Duration>| KeyChooser::Hotspot {
            n: keys,
            hot: ((keys as f64 * k).round() as u64).clamp(1, keys),
            ops,
            period,
            since: Instant::now(),
        };
        match dist {
            Dist::Uniform => KeyChooser::Uniform(keys),
            Dist::Zipfian => {
                KeyChooser::Zipfian(Zipfian::new(keys.max(2), 0.99), Scramble::new(keys))
            }
            Dist::Hotspot { keys: k, ops } => hotspot(k, ops, None),
            Dist::MovingHotspot {
                keys: k,
                ops,
                period_s,
            } => hotspot(k, ops, Some(Duration::from_secs_f64(period_s))),
            Dist::Latest => KeyChooser::Latest(
                keys,
                Box::new(Recent {
                    slots: (0..RECENT).map(|_| AtomicU64::new(u64::MAX)).collect(),
                    head: AtomicU64::new(0),
                    recency: Zipfian::new(RECENT as u64, 0.99),
                }),
            ),
        }
    }

    /// One key index for a read (`is_read`) or a write.
    pub fn next(&self, rng: &mut impl Rng, is_read: bool) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipfian(z, s) => s.apply(z.sample(rng).min(s.n - 1)),
            KeyChooser::Hotspot {
                n,
                hot,
                ops,
                period,
                since,
            } => {
                let offset = period.map_or(0, |p| {
                    (since.elapsed().as_secs_f64() / p.as_secs_f64()) as u64 * hot
                });
                let i = if rng.random_bool(*ops) || hot == n {
                    rng.random_range(0..*hot)
                } else {
                    hot + rng.random_range(0..n - hot)
                };
                (i + offset) % n
            }
            KeyChooser::Latest(n, recent) => {
                if is_read {
                    let written = recent.head.load(Ordering::Relaxed);
                    if written > 0 {
                        let back = recent.recency.sample(rng).min(written - 1);
                        let slot = (written - 1 - back) as usize % RECENT;
                        let k = recent.slots[slot].load(Ordering::Relaxed);
                        if k != u64::MAX {
                            return k;
                        }
                    }
                }
                rng.random_range(0..*n)
            }
        }
    }

    /// Notes a write of key `k` (for `latest`).
    pub fn wrote(&self, k: u64) {
        if let KeyChooser::Latest(_, recent) = self {
            let at = recent.head.fetch_add(1, Ordering::Relaxed);
            recent.slots[at as usize % RECENT].store(k, Ordering::Relaxed);
        }
    }
}

/// Value sizes: fixed (`100`) or uniform in a range (`50-500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ValueSize {
    /// Smallest, in bytes.
    pub min: usize,
    /// Largest, in bytes.
    pub max: usize,
}

impl ValueSize {
    /// One size.
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            rng.random_range(self.min..=self.max)
        }
    }
}

impl FromStr for ValueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("--value-size {s:?}: expected BYTES or MIN-MAX, like 100 or 50-500");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (min, max): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if min > max {
            return Err(bad());
        }
        Ok(ValueSize { min, max })
    }
}

/// The name of key `i`: fixed width so every key has the same size.
pub fn key_name(i: u64) -> String {
    format!("key{i:08}")
}

/// Operation mix in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mix {
    /// Reads.
    pub read: u32,
    /// Writes (puts).
    pub write: u32,
    /// Deletes.
    pub delete: u32,
    /// Compare-and-sets (quorumkv leader-follower and single node).
    pub cas: u32,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = Mix {
            read: 0,
            write: 0,
            delete: 0,
            cas: 0,
        };
        for part in s.split(',') {
            let (name, pct) = part.split_once('=').ok_or_else(|| {
                format!("--mix entry {part:?}: expected OP=PERCENT, like read=50")
            })?;
            let pct: u32 = pct
                .parse()
                .map_err(|_| format!("--mix entry {part:?}: {pct:?} is not a whole number"))?;
            match name {
                "read" => m.read = pct,
                "write" => m.write = pct,
                "delete" => m.delete = pct,
                "cas" => m.cas = pct,
                o => {
                    return Err(format!(
                        "--mix: unknown operation {o:?}: expected read, write, delete or cas"
                    ));
                }
            }
        }
        if m.read + m.write + m.delete + m.cas != 100 {
            return Err(format!(
                "--mix {s}: percentages add up to {}, not 100",
                m.read + m.write + m.delete + m.cas
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn value_sizes_parse_fixed_or_as_a_range() {
        assert_eq!("100".parse(), Ok(ValueSize { min: 100, max: 100 }));
        let r: ValueSize = "50-500".parse().expect("range");
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert!((0..1000).all(|_| (50..=500).contains(&r.pick(&mut rng))));
        assert!("500-50".parse::<ValueSize>().is_err());
        assert!("big".parse::<ValueSize>().is_err());
    }

    #[test]
    fn mix_parses_and_must_add_up_to_100() {
        assert_eq!(
            "read=90,write=10".parse(),
            Ok(Mix {
                read: 90,
                write: 10,
                delete: 0,
                cas: 0
            })
        );
        assert!(
            "read=90"
                .parse::<Mix>()
                .expect_err("sum")
                .contains("add up to 90")
        );
        assert!("scan=100".parse::<Mix>().is_err());
    }

    #[test]
    fn zipfian_most_popular_key_gets_its_theoretical_share() {
        let n = 10_000;
        let z = Zipfian::new(n, 0.99);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws = 200_000;
        let zeros = (0..draws).filter(|_| z.sample(&mut rng) == 0).count();
        let expected = draws as f64 / zeta(n, 0.99);
        let got = zeros as f64;
        assert!(
            (got - expected).abs() / expected < 0.05,
            "{got} vs {expected}"
        );
    }

    /// Pearson's chi-square statistic of `counts` against `expected` frequencies.
    fn chi2(counts: &[u64], expected: &[f64]) -> f64 {
        counts
            .iter()
            .zip(expected)
            .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
            .sum()
    }

    #[test]
    fn uniform_and_hotspot_frequencies_fit_their_targets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let draws = 100_000u64;
        // Uniform over 100 keys: chi-square with 99 degrees of freedom; the 99.9% critical
        // value is 148.2.
        let c = KeyChooser::new(Dist::Uniform, 100);
        let mut counts = vec![0u64; 100];
        for _ in 0..draws {
            counts[c.next(&mut rng, true) as usize] += 1;
        }
        let x = chi2(&counts, &vec![draws as f64 / 100.0; 100]);
        assert!(x < 148.2, "uniform chi-square {x}");
        // Hotspot 0.2:0.8 over 100 keys: keys 0..20 share 80%, the rest 20%.
        let c = KeyChooser::new("hotspot:0.2:0.8".parse().expect("dist"), 100);
        let mut counts = vec![0u64; 100];
        for _ in 0..draws {
            counts[c.next(&mut rng, true) as usize] += 1;
        }
        let expected: Vec<f64> = (0..100)
            .map(|i| draws as f64 * if i < 20 { 0.8 / 20.0 } else { 0.2 / 80.0 })
            .collect();
        let x = chi2(&counts, &expected);
        assert!(x < 148.2, "hotspot chi-square {x}");
    }

    #[test]
    fn zipfian_rank_frequencies_follow_the_zipf_law() {
        // Gray et al.'s generator (YCSB's) approximates Zipf: an exact chi-square test rejects
        // it (the middle ranks are off by a few percent; 530 at 20 degrees of freedom with
        // 200k draws), so the fit is measured as the largest gap between the empirical and the
        // exact cumulative distribution over all 1000 ranks (Kolmogorov distance).
        let n = 1000u64;
        let z = Zipfian::new(n, 0.99);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let draws = 200_000u64;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        let zn = zeta(n, 0.99);
        let (mut emp, mut exact, mut d) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &c) in counts.iter().enumerate() {
            emp += c as f64 / draws as f64;
            exact += 1.0 / ((i + 1) as f64).powf(0.99) / zn;
            d = d.max((emp - exact).abs());
        }
        assert!(d < 0.02, "Kolmogorov distance {d}");
    }

    #[test]
    fn latest_reads_go_mostly_to_recent_writes() {
        let c = KeyChooser::new(Dist::Latest, 100_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut written = Vec::new();
        for _ in 0..5_000 {
            let k = c.next(&mut rng, false);
            c.wrote(k);
            written.push(k);
        }
        let last100: std::collections::HashSet<u64> =
            written[written.len() - 100..].iter().copied().collect();
        let reads = 10_000;
        let recent = (0..reads)
            .filter(|_| last100.contains(&c.next(&mut rng, true)))
            .count();
        // Zipfian over the last 1024 writes: the newest 100 get about 2/3 of the reads
        // (a uniform read would hit them 0.1% of the time).
        assert!(
            recent > reads * 6 / 10,
            "{recent} of {reads} reads hit the last 100 writes"
        );
    }

    #[test]
    fn moving_hotspot_moves_and_bad_dists_are_refused() {
        let c = KeyChooser::Hotspot {
            n: 100,
            hot: 10,
            ops: 1.0,
            period: Some(Duration::from_secs(1)),
            since: Instant::now() - Duration::from_millis(2500),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // Two periods in: the hot set is keys 20..30.
        assert!((0..1000).all(|_| (20..30).contains(&c.next(&mut rng, true))));
        assert!("hotspot:1.5".parse::<Dist>().is_err());
        assert!("moving-hotspot:0.1:0.9:0".parse::<Dist>().is_err());
        assert!("zipf".parse::<Dist>().is_err());
        assert_eq!(
            "moving-hotspot".parse::<Dist>(),
            Ok(Dist::MovingHotspot {
                keys: 0.2,
                ops: 0.8,
                period_s: 10.0
            })
        );
    }

    #[test]
    fn the_scramble_is_a_permutation_of_every_key_count() {
        for n in [1u64, 2, 3, 5, 20, 1000, 4096, 4097, 10_000, 65_537] {
            let s = Scramble::new(n);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let k = s.apply(i);
                assert!(k < n, "{i} -> {k}, outside 0..{n}");
                assert!(!seen[k as usize], "two ranks sent to key {k} of {n}");
                seen[k as usize] = true;
            }
        }
        // The hottest ranks are scattered, not neighbours.
        let s = Scramble::new(10_000);
        let hot: Vec<u64> = (0..4).map(|i| s.apply(i)).collect();
        assert!(hot.windows(2).all(|w| w[0].abs_diff(w[1]) > 1), "{hot:?}");
    }

    #[test]
    fn zipfian_over_n_keys_reaches_every_key() {
        // Before, ranks were hashed modulo the key count: 648 of 1,000 keys were ever drawn.
        let c = KeyChooser::new(Dist::Zipfian, 1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = vec![false; 1000];
        for _ in 0..400_000 {
            seen[c.next(&mut rng, false) as usize] = true;
        }
        let reached = seen.iter().filter(|s| **s).count();
        assert_eq!(reached, 1000, "only {reached} of 1000 keys drawn");
        let one = KeyChooser::new(Dist::Zipfian, 1);
        assert!((0..100).all(|_| one.next(&mut rng, true) == 0));
    }

    #[test]
    fn scrambled_zipfian_stays_in_range_and_is_skewed() {
        let c = KeyChooser::new(Dist::Zipfian, 1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[c.next(&mut rng, true) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(
            top10 > 25_000,
            "top 1% of keys should take over a quarter: {top10}"
        );
    }
}
