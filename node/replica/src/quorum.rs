//! N/R/W arithmetic: what a configuration promises, validated in one place.
//!
//! - `1 <= R <= N`, `1 <= W <= N`, `N <= nodes`: anything else is rejected.
//! - `R + W > N`: every read quorum overlaps every write quorum, so a read sees the newest
//!   acknowledged write ("strongly consistent" in the Dynamo sense).
//! - `R + W <= N` is allowed but [`Quorum::strongly_consistent`] is false, and every surface
//!   that shows the configuration says so.

use std::fmt;

/// A validated replication configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Replicas per key.
    pub n: u32,
    /// Replicas a read waits for.
    pub r: u32,
    /// Replicas, the coordinator included, that durably hold a write before it is acknowledged.
    pub w: u32,
}

/// Why an N/R/W configuration is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// N is zero or larger than the cluster.
    #[error("n={n} is out of range: must be 1..={nodes} (the number of nodes)")]
    N {
        /// Given N.
        n: u32,
        /// Cluster size.
        nodes: u32,
    },
    /// R or W is zero or larger than N.
    #[error("{name}={value} is out of range: must be 1..={n} (n={n})")]
    OutOfRange {
        /// `r` or `w`.
        name: &'static str,
        /// Given value.
        value: u32,
        /// N it was checked against.
        n: u32,
    },
}

impl Quorum {
    /// Validates `1 <= r, w <= n <= nodes`.
    ///
    /// # Errors
    /// [`QuorumError`] naming the first value out of range.
    pub fn new(nodes: u32, n: u32, r: u32, w: u32) -> Result<Self, QuorumError> {
        if n == 0 || n > nodes {
            return Err(QuorumError::N { n, nodes });
        }
        for (name, value) in [("r", r), ("w", w)] {
            if value == 0 || value > n {
                return Err(QuorumError::OutOfRange { name, value, n });
            }
        }
        Ok(Quorum { n, r, w })
    }

    /// Replaces R and/or W for one request (0 keeps the configured value), re-validated.
    ///
    /// # Errors
    /// [`QuorumError::OutOfRange`] when an override is larger than N.
    pub fn with_overrides(self, r: u32, w: u32) -> Result<Self, QuorumError> {
        let r = if r == 0 { self.r } else { r };
        let w = if w == 0 { self.w } else { w };
        Quorum::new(self.n, self.n, r, w)
    }

    /// True when every read quorum overlaps every write quorum (`R + W > N`).
    pub fn strongly_consistent(&self) -> bool {
        self.r + self.w > self.n
    }

    /// The smallest number of replicas that is a majority of N.
    pub fn majority(&self) -> u32 {
        self.n / 2 + 1
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N={} R={} W={}", self.n, self.r, self.w)?;
        if !self.strongly_consistent() {
            f.write_str(" (R+W<=N: not strongly consistent)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_in_range_is_accepted() {
        let q = Quorum::new(5, 3, 2, 2).expect("valid");
        assert!(q.strongly_consistent());
        assert_eq!(q.majority(), 2);
    }

    #[test]
    fn quorum_with_r_plus_w_at_most_n_is_flagged() {
        let q = Quorum::new(5, 3, 1, 1).expect("allowed");
        assert!(!q.strongly_consistent());
        assert!(q.to_string().contains("not strongly consistent"));
    }

    #[test]
    fn quorum_out_of_range_names_the_value() {
        assert_eq!(
            Quorum::new(3, 4, 1, 1),
            Err(QuorumError::N { n: 4, nodes: 3 })
        );
        assert_eq!(
            Quorum::new(3, 3, 0, 1),
            Err(QuorumError::OutOfRange {
                name: "r",
                value: 0,
                n: 3
            })
        );
        let e = Quorum::new(3, 3, 1, 4).expect_err("w > n");
        assert_eq!(e.to_string(), "w=4 is out of range: must be 1..=3 (n=3)");
    }

    #[test]
    fn quorum_overrides_keep_defaults_for_zero_and_reject_too_large() {
        let q = Quorum::new(3, 3, 2, 2).expect("valid");
        assert_eq!(q.with_overrides(0, 3), Ok(Quorum { n: 3, r: 2, w: 3 }));
        assert!(q.with_overrides(4, 0).is_err());
    }

    #[test]
    fn quorum_exhaustive_small_clusters_agree_with_the_rule() {
        for nodes in 1..=7 {
            for n in 0..=8 {
                for r in 0..=8 {
                    for w in 0..=8 {
                        let ok = (1..=nodes).contains(&n)
                            && (1..=n).contains(&r)
                            && (1..=n).contains(&w);
                        assert_eq!(
                            Quorum::new(nodes, n, r, w).is_ok(),
                            ok,
                            "{nodes} {n} {r} {w}"
                        );
                    }
                }
            }
        }
    }
}
