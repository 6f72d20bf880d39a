//! What a run asks for: which keys (distribution), which operations (mix), what values.

use std::str::FromStr;

use rand::Rng;

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot keys spread over the key space.
    Zipfian,
}

impl FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Dist::Uniform),
            "zipfian" => Ok(Dist::Zipfian),
            "hotspot" | "latest" | "moving-hotspot" => Err(format!(
                "--dist {s} is not implemented yet: use uniform or zipfian"
            )),
            o => Err(format!("unknown --dist {o:?}: expected uniform or zipfian")),
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

/// 64-bit FNV-1a, YCSB's scrambling hash.
fn fnv1a(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Draws key indexes in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform.
    Uniform(u64),
    /// Scrambled zipfian: popularity rank hashed over the key space.
    Zipfian(Zipfian),
}

impl KeyChooser {
    /// A chooser for `dist` over `keys` keys.
    pub fn new(dist: Dist, keys: u64) -> Self {
        match dist {
            Dist::Uniform => KeyChooser::Uniform(keys),
            Dist::Zipfian => KeyChooser::Zipfian(Zipfian::new(keys.max(2), 0.99)),
        }
    }

    /// One key index.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipfian(z) => fnv1a(z.sample(rng)) % z.n,
        }
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
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = Mix { read: 0, write: 0 };
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
                o => {
                    return Err(format!(
                        "--mix: unknown operation {o:?}: expected read or write"
                    ));
                }
            }
        }
        if m.read + m.write != 100 {
            return Err(format!(
                "--mix {s}: percentages add up to {}, not 100",
                m.read + m.write
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
    fn mix_parses_and_must_add_up_to_100() {
        assert_eq!(
            "read=90,write=10".parse(),
            Ok(Mix {
                read: 90,
                write: 10
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

    #[test]
    fn scrambled_zipfian_stays_in_range_and_is_skewed() {
        let c = KeyChooser::new(Dist::Zipfian, 1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[c.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(
            top10 > 25_000,
            "top 1% of keys should take over a quarter: {top10}"
        );
    }
}
