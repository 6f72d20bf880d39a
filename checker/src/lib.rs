//! kv-checker: what a recorded history of quorumkv (or any key-value store) really guarantees.
//!
//! - [`history`]: the JSON Lines history format (SPEC.md section 6, `docs/history-format.md`).
//! - [`linear`]: linearizability per key against a register model, with the smallest window
//!   that cannot be linearized when it fails.
//! - [`stale`]: stale reads (older than a write acknowledged before the read started).
//! - [`window`]: consistency windows from probe records.
//! - [`render`]: a violation as a text timeline and an HTML/SVG page.
//!
//! Pure and synchronous: the caller reads files and prints.

#![warn(missing_docs)]

pub mod generate;
pub mod history;
pub mod linear;
pub mod render;
pub mod stale;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use history::{Op, OpKind, Outcome, parse};
pub use linear::{Budget, KeyVerdict, Violation};

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not.
    Violation,
    /// No violation found, but some key ran out of budget.
    Unknown,
}

/// What checking a history found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per key, in key order.
    pub keys: BTreeMap<String, KeyVerdict>,
    /// Operations checked.
    pub ops: usize,
    /// Time spent.
    pub elapsed: Duration,
}

impl Report {
    /// The overall verdict.
    pub fn verdict(&self) -> Verdict {
        let mut v = Verdict::Linearizable;
        for k in self.keys.values() {
            match k {
                KeyVerdict::Violation(_) => return Verdict::Violation,
                KeyVerdict::Unknown(_) => v = Verdict::Unknown,
                KeyVerdict::Linearizable => {}
            }
        }
        v
    }

    /// The violations found.
    pub fn violations(&self) -> Vec<&Violation> {
        self.keys
            .values()
            .filter_map(|k| match k {
                KeyVerdict::Violation(v) => Some(v),
                _ => None,
            })
            .collect()
    }
}

/// Configurations a key may remember in each pass: cheap keys are settled first, so a
/// violation on any key is found without waiting for the most expensive key.
const PASSES: [usize; 3] = [50_000, 1_000_000, 0];

/// Checks the keys of `ops` for linearizability, on `threads` threads, within `time` overall
/// (keys left when it runs out are `Unknown`).
///
/// Keys are checked in passes of growing memory budget, and checking stops at the first
/// violation unless `all_keys` (as Porcupine does: one non-linearizable key decides the
/// verdict); keys not finished then are `Unknown` with that reason.
pub fn check(ops: &[Op], time: Option<Duration>, threads: usize, all_keys: bool) -> Report {
    let start = Instant::now();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<(&str, Vec<&Op>)> = by_key.into_iter().collect();
    let cancel = Arc::new(AtomicBool::new(false));
    let results: Mutex<BTreeMap<String, KeyVerdict>> = Mutex::new(BTreeMap::new());
    for (pass, &max_states) in PASSES.iter().enumerate() {
        let last = pass + 1 == PASSES.len();
        let todo: Vec<usize> = {
            let r = results.lock().unwrap_or_else(|p| p.into_inner());
            (0..keys.len())
                .filter(|&i| {
                    !matches!(
                        r.get(keys[i].0),
                        Some(KeyVerdict::Linearizable | KeyVerdict::Violation(_))
                    )
                })
                .collect()
        };
        if todo.is_empty() || cancel.load(Ordering::Relaxed) {
            break;
        }
        let budget = Budget {
            deadline: time.map(|t| start + t),
            max_states,
            cancel: (!all_keys).then(|| cancel.clone()),
        };
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&k) = todo.get(i) else {
                            return;
                        };
                        let (key, kops) = &keys[k];
                        let v = linear::check_key(key, kops, &budget);
                        let settled = match &v {
                            KeyVerdict::Violation(_) => {
                                cancel.store(true, Ordering::Relaxed);
                                true
                            }
                            KeyVerdict::Linearizable => true,
                            KeyVerdict::Unknown(_) => last,
                        };
                        let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                        if settled || !r.contains_key(*key) || last {
                            r.insert((*key).to_owned(), v);
                        }
                    }
                });
            }
        });
    }
    let mut keys_out = results.into_inner().unwrap_or_else(|p| p.into_inner());
    for (key, _) in &keys {
        keys_out.entry((*key).to_owned()).or_insert_with(|| {
            KeyVerdict::Unknown("not finished: another key was found not linearizable first".into())
        });
    }
    Report {
        keys: keys_out,
        ops: ops.len(),
        elapsed: start.elapsed(),
    }
}
