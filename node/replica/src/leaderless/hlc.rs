//! A hybrid logical clock: timestamps that follow physical time where clocks agree and never go
//! backwards or fall behind a timestamp the node has seen, whatever the skew.
//!
//! A timestamp is `physical milliseconds << 16 | logical counter`, so it orders like wall time
//! and leaves 65,536 distinct timestamps per millisecond.

/// Bits of a timestamp below the physical milliseconds.
pub const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that will only issue timestamps above `floor` (the highest one persisted).
    pub fn new(floor: u64) -> Self {
        Hlc { last: floor }
    }

    /// A new timestamp, above every one issued or observed, at least `physical_ms`.
    pub fn now(&mut self, physical_ms: u64) -> u64 {
        self.last = (self.last + 1).max(physical_ms << LOGICAL_BITS);
        self.last
    }

    /// Takes note of a timestamp seen in a message.
    pub fn observe(&mut self, ts: u64) {
        self.last = self.last.max(ts);
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// The physical milliseconds of a timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_is_monotonic_and_follows_the_newest_clock_seen() {
        let mut c = Hlc::new(0);
        let a = c.now(100);
        assert_eq!(physical_ms(a), 100);
        let b = c.now(100);
        assert!(b > a);
        // A peer 50 ms ahead: our next timestamp is after its, though our clock is behind.
        c.observe(150 << LOGICAL_BITS);
        let d = c.now(101);
        assert!(d > 150 << LOGICAL_BITS);
        // The physical clock going backwards does not move the clock backwards.
        assert!(c.now(10) > d);
    }
}
