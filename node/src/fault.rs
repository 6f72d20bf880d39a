//! The fault filter on node-to-node traffic: block peers (partitions), drop with a
//! probability, delay with jitter. Set through the Admin `SetFaults` RPC, which is refused
//! unless the node runs with `--enable-fault-injection`. Partitions are enforced on both the
//! sending and the receiving side, so a partition holds even if only one side was told. The
//! same RPC sets the node's clock offset and a delay for its disk's flushes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kv_replica::NodeId;
use rand::Rng;

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send now.
    Deliver,
    /// Send after this long.
    Delay(Duration),
    /// Do not send.
    Drop,
}

/// The filter's settings (see `FaultSpec` in admin.proto).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Peers cut off both ways.
    pub block: HashSet<NodeId>,
    /// Drop probability per peer; key `*` for every peer.
    pub drop: HashMap<String, f64>,
    /// Delay per peer; key `*` for every peer.
    pub delay: HashMap<String, Duration>,
    /// Uniform extra delay up to this.
    pub jitter: Duration,
    /// Leaderless: how far ahead (negative: behind) this node's clock runs for new versions.
    pub clock_offset_ms: i64,
    /// Every flush of this node's logs waits this long more (a slow disk).
    pub disk_delay: Duration,
}

/// Shared, cheaply cloneable filter.
#[derive(Debug, Clone, Default)]
pub struct FaultFilter {
    inner: Arc<RwLock<Faults>>,
}

impl FaultFilter {
    /// Replaces the settings.
    pub fn set(&self, f: Faults) {
        crate::storage::set_flush_delay(f.disk_delay);
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// The settings.
    pub fn get(&self) -> Faults {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether messages from `peer` are accepted.
    pub fn accepts_from(&self, peer: &NodeId) -> bool {
        !self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .block
            .contains(peer)
    }

    /// The clock offset set (`clock_offset_ms`).
    pub fn clock_offset_ms(&self) -> i64 {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clock_offset_ms
    }

    /// Whether `peer` is cut off (a partition).
    pub fn blocks(&self, peer: &NodeId) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .block
            .contains(peer)
    }

    /// What to do with a message to `peer`.
    pub fn outgoing(&self, peer: &NodeId) -> Verdict {
        let f = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if f.block.contains(peer) {
            return Verdict::Drop;
        }
        fn lookup<T: Copy>(m: &HashMap<String, T>, peer: &NodeId) -> Option<T> {
            m.get(&peer.0).or_else(|| m.get("*")).copied()
        }
        if let Some(p) = lookup(&f.drop, peer)
            && rand::rng().random_bool(p.clamp(0.0, 1.0))
        {
            return Verdict::Drop;
        }
        let base = lookup(&f.delay, peer).unwrap_or_default();
        let jitter = if f.jitter.is_zero() {
            Duration::ZERO
        } else {
            f.jitter.mul_f64(rand::rng().random::<f64>())
        };
        if base.is_zero() && jitter.is_zero() {
            Verdict::Deliver
        } else {
            Verdict::Delay(base + jitter)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_filter_blocks_drops_and_delays_by_peer() {
        let f = FaultFilter::default();
        let (n2, n3) = (NodeId::from("n2"), NodeId::from("n3"));
        assert_eq!(f.outgoing(&n2), Verdict::Deliver);
        f.set(Faults {
            block: [n2.clone()].into(),
            drop: [("n3".to_string(), 1.0)].into(),
            delay: [("*".to_string(), Duration::from_millis(50))].into(),
            jitter: Duration::ZERO,
            clock_offset_ms: 0,
            disk_delay: Duration::ZERO,
        });
        assert_eq!(f.outgoing(&n2), Verdict::Drop);
        assert!(!f.accepts_from(&n2));
        assert_eq!(f.outgoing(&n3), Verdict::Drop);
        assert_eq!(
            f.outgoing(&NodeId::from("n4")),
            Verdict::Delay(Duration::from_millis(50))
        );
        f.set(Faults::default());
        assert_eq!(f.outgoing(&n2), Verdict::Deliver);
    }
}
