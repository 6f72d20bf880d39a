//! Consistency windows from probe records: a write acknowledged at `ack_ns`; replica `i` first
//! returned it at `seen_ns[i]`. The window is `max(seen) - ack`: how long until every replica
//! serves the write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One probe record (`{"probe":"n1","key":..,"version":..,"ack_ns":..,"seen_ns":{..}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The node the probe wrote through.
    pub probe: String,
    /// The canary key.
    pub key: String,
    /// The version written.
    #[serde(default)]
    pub version: Option<String>,
    /// When the write was acknowledged.
    pub ack_ns: u64,
    /// Per replica, when it first returned the write (missing: never, within the probe's wait).
    pub seen_ns: BTreeMap<String, u64>,
    /// The replicas the probe asked.
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// Consistency windows of a set of probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowReport {
    /// Probes where every replica asked returned the write: their window in ms.
    pub windows_ms: Vec<f64>,
    /// Probes where some replica never did.
    pub never: u64,
}

/// Computes the windows.
pub fn windows(probes: &[Probe]) -> WindowReport {
    let mut rep = WindowReport::default();
    for p in probes {
        let complete = p.replicas.iter().all(|r| p.seen_ns.contains_key(r));
        match p.seen_ns.values().max() {
            Some(&last) if complete => rep
                .windows_ms
                .push(last.saturating_sub(p.ack_ns) as f64 / 1e6),
            _ => rep.never += 1,
        }
    }
    rep
}
