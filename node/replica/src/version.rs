//! Versions: the total order of the writes to one key.
//!
//! A version is a pair compared lexicographically. Leader-follower mode uses
//! `(term, log index)`; leaderless mode `(hybrid-logical-clock timestamp, coordinator number)`.
//! A single node (N=1) uses term 1 and a counter that never goes backwards, even across
//! restarts and tombstone purges (the storage keeps the high-water mark).

use std::fmt;
use std::str::FromStr;

/// The version of one stored value or tombstone. `Version::ZERO` is "never written".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Leader-follower: the term. Leaderless: the HLC timestamp.
    pub epoch: u64,
    /// Leader-follower: the log index. Leaderless: the coordinator's node number.
    pub counter: u64,
}

impl Version {
    /// Lower than every version ever assigned to a write.
    pub const ZERO: Version = Version {
        epoch: 0,
        counter: 0,
    };

    /// A version from its two parts.
    pub const fn new(epoch: u64, counter: u64) -> Self {
        Version { epoch, counter }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.counter)
    }
}

/// A version's text form was not `EPOCH.COUNTER` with two unsigned integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: expected EPOCH.COUNTER, two unsigned integers such as 1.42")]
pub struct VersionParseError {
    /// What was given.
    pub input: String,
}

impl FromStr for Version {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionParseError {
            input: s.to_owned(),
        };
        let (e, c) = s.split_once('.').ok_or_else(err)?;
        Ok(Version {
            epoch: e.parse().map_err(|_| err())?,
            counter: c.parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_orders_by_epoch_then_counter() {
        assert!(Version::new(1, 9) < Version::new(2, 0));
        assert!(Version::new(2, 1) < Version::new(2, 2));
        assert!(Version::ZERO < Version::new(0, 1));
    }

    #[test]
    fn version_text_form_round_trips() {
        for v in [
            Version::ZERO,
            Version::new(1, 42),
            Version::new(u64::MAX, 7),
        ] {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        }
    }

    #[test]
    fn version_with_bad_text_is_rejected_with_the_input() {
        for bad in ["", "1", "1.", ".2", "a.b", "-1.2", "1.2.3"] {
            let e = bad.parse::<Version>().expect_err(bad);
            assert_eq!(e.input, bad);
        }
    }
}
