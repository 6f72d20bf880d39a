//! Linearizability per key against a register model (read, write, cas, delete, append), by
//! Lowe's just-in-time linearization as Porcupine implements it (after Wing & Gong):
//!
//! - the operations' calls and returns are one list in time order (at equal times, calls first:
//!   A precedes B only if A ended strictly before B started);
//! - depth-first, the search linearizes a pending call whose effect the model allows, lifts it
//!   (its call and return) out of the list and restarts from the head; reaching a return means
//!   that operation had to take effect already, so the search backtracks;
//! - every (set of linearized operations, model state) reached is remembered, so no
//!   configuration is explored twice.
//!
//! `fail` operations had no effect and are dropped. `unknown` reads constrain nothing and are
//! dropped. `unknown` writes, deletes, appends and cas may have taken effect at any time after
//! their start, or never: their return is placed after everything else and the search may end
//! without linearizing them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::history::{Op, OpKind, Outcome};

/// A model state: the interned value of the key (`None`: absent).
pub(crate) type State = Option<u32>;

/// Strings of one key, interned so states are small and cheap to compare.
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    ids: FxHashMap<String, u32>,
    strs: Vec<String>,
    /// (state, suffix) -> appended state: the search applies the same appends many times.
    appended: FxHashMap<(Option<u32>, u32), u32>,
}

impl Interner {
    pub(crate) fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.strs.len() as u32;
        self.strs.push(s.to_owned());
        self.ids.insert(s.to_owned(), i);
        i
    }

    fn get(&self, i: u32) -> &str {
        &self.strs[i as usize]
    }
}

/// What one operation does to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Must observe this state.
    Read(State),
    /// Sets the state (a delete sets `None`).
    Set(State),
    /// Requires `expected`, then sets `new`.
    CasApplied { expected: State, new: u32 },
    /// Requires a state other than `expected`; changes nothing.
    CasNotApplied { expected: State },
    /// Appends the interned suffix.
    Append(u32),
}

/// One operation ready for the search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct COp {
    pub call: u64,
    /// `u64::MAX` for optional (unknown-outcome) operations.
    pub ret: u64,
    pub optional: bool,
    pub step: Step,
    /// Index into the key's operations as given.
    pub idx: usize,
}

/// Turns a key's operations into search operations (dropping those that constrain nothing).
///
/// Also dropped, in register histories (no append, no cas that failed): `unknown` writes and
/// cas of a non-empty value that no read returned and no cas expected. Every linearization
/// that places such a write stays one without it (no operation between it and the next write
/// depends on its value), and it may be left out anyway; but each one kept doubles the orders
/// the search may try when a key cannot be linearized. A run under faults has many (a write
/// refused by a quorum after its coordinator stored it), and they held drills' keys at
/// "unknown".
pub(crate) fn prepare(ops: &[&Op], strings: &mut Interner) -> Vec<COp> {
    let mut out = prepare_all(ops, strings);
    let prunable = !out
        .iter()
        .any(|o| matches!(o.step, Step::Append(_) | Step::CasNotApplied { .. }));
    if prunable {
        let mut observed: FxHashSet<u32> = FxHashSet::default();
        for o in &out {
            match o.step {
                Step::Read(Some(v))
                | Step::CasApplied {
                    expected: Some(v), ..
                } => {
                    observed.insert(v);
                }
                _ => {}
            }
        }
        out.retain(|o| match o.step {
            Step::Set(Some(v)) | Step::CasApplied { new: v, .. } => {
                // An empty value reads as absent (see `apply`): kept.
                !o.optional || observed.contains(&v) || strings.get(v).is_empty()
            }
            _ => true,
        });
    }
    out
}

fn prepare_all(ops: &[&Op], strings: &mut Interner) -> Vec<COp> {
    let mut out = Vec::with_capacity(ops.len());
    for (idx, op) in ops.iter().enumerate() {
        let unknown = match op.outcome {
            Outcome::Fail => continue,
            Outcome::Unknown => true,
            Outcome::Ok => false,
        };
        let v = |s: &mut Interner| op.value.as_deref().map(|x| s.id(x));
        let step = match op.op {
            OpKind::Read if unknown => continue,
            OpKind::Read => Step::Read(v(strings)),
            OpKind::Write => Step::Set(v(strings)),
            OpKind::Delete => Step::Set(None),
            OpKind::Append => Step::Append(strings.id(op.value.as_deref().unwrap_or(""))),
            OpKind::Cas => {
                let expected = op.expected.as_deref().map(|x| strings.id(x));
                let new = strings.id(op.value.as_deref().unwrap_or(""));
                if unknown || op.applied != Some(false) {
                    Step::CasApplied { expected, new }
                } else {
                    Step::CasNotApplied { expected }
                }
            }
        };
        out.push(COp {
            call: op.start_ns,
            ret: if unknown { u64::MAX } else { op.end_ns },
            optional: unknown,
            step,
            idx,
        });
    }
    out
}

/// The model: the state after `step` from `state`, or `None` if not allowed.
pub(crate) fn apply(state: State, step: Step, strings: &mut Interner) -> Option<State> {
    match step {
        Step::Read(v) => {
            // An absent key reads as absent; for append histories "" and absent are one.
            let same = v == state
                || (v.is_none() && state.is_some_and(|s| strings.get(s).is_empty()))
                || (state.is_none() && v.is_some_and(|s| strings.get(s).is_empty()));
            same.then_some(state)
        }
        Step::Set(v) => Some(v),
        Step::CasApplied { expected, new } => (state == expected).then_some(Some(new)),
        Step::CasNotApplied { expected } => (state != expected).then_some(state),
        Step::Append(suffix) => {
            if let Some(&id) = strings.appended.get(&(state, suffix)) {
                return Some(Some(id));
            }
            let cur = state.map(|s| strings.get(s).to_owned()).unwrap_or_default();
            let next = cur + strings.get(suffix);
            let id = strings.id(&next);
            strings.appended.insert((state, suffix), id);
            Some(Some(id))
        }
    }
}

/// Limits of one search.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Give up (verdict unknown) after this instant.
    pub deadline: Option<Instant>,
    /// Give up after remembering this many configurations (0: the default, 20 million,
    /// about 1.5 GB).
    pub max_states: usize,
    /// Give up when this is set (another key already failed).
    pub cancel: Option<Arc<AtomicBool>>,
}

const DEFAULT_MAX_STATES: usize = 20_000_000;

/// What one search may keep in remembered configurations, whatever `max_states` says: a
/// history whose operations stay unlinearized far behind the others makes every
/// configuration large.
const MAX_REMEMBERED_BYTES: usize = 2 << 30;

/// The set of linearized operations, by rank (operations in the order of their calls), kept
/// so that what is remembered of it is small. `low` is the first rank that is neither in the
/// set nor optional; below it, only the optional operations not in the set are listed; from
/// it to `high`, the words of the set. The search linearizes operations roughly in call
/// order, so that stretch is about as long as the operations running at once, and an
/// optional operation never linearized (a write that may never have happened) costs one
/// entry instead of holding `low` back. (A plain bitset of all a key's operations made each
/// remembered configuration n/8 bytes: a drill's key of 110k operations took 14 KB a
/// configuration, and its check 24 GB before it was killed.)
struct LinSet {
    bits: Vec<u64>,
    /// Whether keys take the compact form (else all the words).
    compact: bool,
    /// The optional operations' ranks.
    optional: Vec<u64>,
    /// Optional operations not in the set.
    pending: std::collections::BTreeSet<usize>,
    /// Every rank below it is in the set or optional.
    low: usize,
    /// One past the highest rank in the set, or `low`.
    high: usize,
}

impl LinSet {
    fn new(n: usize, optional: impl Iterator<Item = usize>, compact: bool) -> Self {
        let mut set = LinSet {
            bits: vec![0; n.div_ceil(64)],
            compact,
            optional: vec![0; n.div_ceil(64)],
            pending: optional.collect(),
            low: 0,
            high: 0,
        };
        for &r in &set.pending {
            set.optional[r / 64] |= 1 << (r % 64);
        }
        set.advance_low();
        set.high = set.low;
        set
    }

    #[cfg(test)]
    fn has(&self, r: usize) -> bool {
        self.bits[r / 64] & (1 << (r % 64)) != 0
    }

    /// Moves `low` past the ranks in the set or optional, a word at a time.
    fn advance_low(&mut self) {
        while self.low < self.bits.len() * 64 {
            let (i, off) = (self.low / 64, self.low % 64);
            let ones = ((self.bits[i] | self.optional[i]) >> off).trailing_ones() as usize;
            self.low += ones;
            if off + ones < 64 {
                break;
            }
        }
    }

    /// Adds `r` (not in the set); returns what [`LinSet::remove`] needs to undo it.
    fn insert(&mut self, r: usize) -> (usize, usize) {
        let undo = (self.low, self.high);
        self.bits[r / 64] |= 1 << (r % 64);
        if !self.compact {
            return undo;
        }
        if self.optional[r / 64] & (1 << (r % 64)) != 0 {
            self.pending.remove(&r);
        }
        if r == self.low {
            self.advance_low();
        }
        self.high = self.high.max(r + 1).max(self.low);
        undo
    }

    /// Takes out `r`, the last rank inserted, with what its insertion returned.
    fn remove(&mut self, r: usize, undo: (usize, usize)) {
        self.bits[r / 64] &= !(1 << (r % 64));
        if self.compact && self.optional[r / 64] & (1 << (r % 64)) != 0 {
            self.pending.insert(r);
        }
        (self.low, self.high) = undo;
    }

    /// The set, canonically: all the words unless compact (more than 1024 operations); else
    /// `low`, how many optional operations below it are not in the set and their ranks, then
    /// the words holding ranks `low..high`.
    fn key(&self) -> Box<[u64]> {
        if !self.compact {
            return self.bits.clone().into_boxed_slice();
        }
        let below = self.pending.range(..self.low);
        let mut k = Vec::with_capacity(4 + (self.high - self.low) / 64);
        k.push(self.low as u64);
        k.push(0);
        k.extend(below.map(|&r| r as u64));
        k[1] = (k.len() - 2) as u64;
        if self.high > self.low {
            k.extend_from_slice(&self.bits[self.low / 64..self.high.div_ceil(64)]);
        }
        k.into_boxed_slice()
    }
}

/// Why a search gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp(pub String);

const NIL: usize = usize::MAX;

/// Whether `ops` can be linearized from `init`. `Err` when the budget ran out.
pub(crate) fn search(
    ops: &[COp],
    init: State,
    strings: &mut Interner,
    budget: &Budget,
) -> Result<bool, GaveUp> {
    search_from(ops, init, strings, budget).map(|r| r.is_none())
}

/// Like [`search`], but a failure names the operation whose return the search never got past
/// (the latest one it reached): every prefix of the history ending before that return can be
/// linearized, the prefix ending with it cannot.
pub(crate) fn search_from(
    ops: &[COp],
    init: State,
    strings: &mut Interner,
    budget: &Budget,
) -> Result<Option<usize>, GaveUp> {
    search_keyed(ops, init, strings, budget, ops.len() > 1024)
}

/// [`search_from`], remembering configurations in the compact form or not (the same search
/// either way: both forms are canonical).
fn search_keyed(
    ops: &[COp],
    init: State,
    strings: &mut Interner,
    budget: &Budget,
    compact: bool,
) -> Result<Option<usize>, GaveUp> {
    let n = ops.len();
    if n == 0 {
        return Ok(None);
    }
    // The latest return the search reached and could not pass: (its time, its operation).
    let mut furthest: Option<(u64, usize)> = None;
    // Entries: 0 is the head; call of op i is 1 + 2i, its return 2 + 2i.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 0, 1 + 2 * i));
        // Optional returns go last, in a fixed order.
        events.push((o.ret, 1, 2 + 2 * i));
    }
    events.sort_unstable();
    let size = 2 * n + 1;
    let mut next = vec![NIL; size];
    let mut prev = vec![NIL; size];
    let mut last = 0;
    for &(_, _, e) in &events {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    // Ranks: operations in the order of their calls.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].call, i));
    let mut rank = vec![0; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let optional = (0..n).filter(|&i| ops[i].optional).map(|i| rank[i]);
    let mut linearized = LinSet::new(n, optional, compact);
    let mut seen: FxHashSet<(Box<[u64]>, State)> = FxHashSet::default();
    let mut remembered_words = 0usize;
    // Per linearized call: its entry, the state before it, and its insertion's undo.
    let mut calls: Vec<(usize, State, (usize, usize))> = Vec::new();
    let mut state = init;
    let mut entry = next[0];
    let mut steps = 0u64;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        let ret = call + 1;
        next[prev[call]] = next[call];
        if next[call] != NIL {
            prev[next[call]] = prev[call];
        }
        next[prev[ret]] = next[ret];
        if next[ret] != NIL {
            prev[next[ret]] = prev[ret];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        let ret = call + 1;
        // Undo in reverse order of lifting.
        if next[ret] != NIL {
            prev[next[ret]] = ret;
        }
        next[prev[ret]] = ret;
        if next[call] != NIL {
            prev[next[call]] = call;
        }
        next[prev[call]] = call;
    };

    loop {
        if next[0] == NIL {
            return Ok(None);
        }
        steps += 1;
        if steps & 0xfff == 0 {
            if budget.deadline.is_some_and(|d| Instant::now() > d) {
                return Err(GaveUp(format!(
                    "time budget spent after {steps} search steps ({} configurations remembered)",
                    seen.len()
                )));
            }
            if budget
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(GaveUp(
                    "not finished: another key was found not linearizable first".into(),
                ));
            }
            let max = if budget.max_states == 0 {
                DEFAULT_MAX_STATES
            } else {
                budget.max_states
            };
            let remembered_bytes = remembered_words * 8 + seen.len() * 48;
            if seen.len() > max || remembered_bytes > MAX_REMEMBERED_BYTES {
                return Err(GaveUp(format!(
                    "memory budget spent: {} configurations remembered ({} MB)",
                    seen.len(),
                    remembered_bytes >> 20
                )));
            }
        }
        if entry == NIL {
            // Every call left is optional and no return blocks: done.
            return Ok(None);
        }
        let op = (entry - 1) / 2;
        if entry % 2 == 1 {
            // A call.
            if let Some(ns) = apply(state, ops[op].step, strings) {
                let undo = linearized.insert(rank[op]);
                let key = linearized.key();
                let words = key.len();
                if seen.insert((key, ns)) {
                    remembered_words += words;
                    calls.push((entry, state, undo));
                    state = ns;
                    lift(&mut next, &mut prev, entry);
                    entry = next[0];
                    continue;
                }
                linearized.remove(rank[op], undo);
            }
            entry = next[entry];
        } else {
            // A return: its operation must already have taken effect.
            if ops[op].optional {
                // Only optional operations are left unlinearized: they never happened.
                return Ok(None);
            }
            if furthest.is_none_or(|(t, _)| ops[op].ret > t) {
                furthest = Some((ops[op].ret, op));
            }
            let Some((call, s, undo)) = calls.pop() else {
                return Ok(furthest.map(|(_, op)| op));
            };
            let cop = (call - 1) / 2;
            linearized.remove(rank[cop], undo);
            state = s;
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Some order of the operations, consistent with real time, explains every result.
    Linearizable,
    /// None does; the smallest window found.
    Violation(Violation),
    /// The budget ran out.
    Unknown(String),
}

/// A window of operations on one key that no linearization explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The window's operations, by start time.
    pub ops: Vec<Op>,
    /// Index in `ops` of the operation whose result could not be placed.
    pub culprit: usize,
    /// Whether the window assumes nothing about the key's value when it starts (the operations
    /// alone are contradictory); false when it starts from the beginning of the history.
    pub from_any_state: bool,
}

/// Checks one key's operations.
pub fn check_key(key: &str, ops: &[&Op], budget: &Budget) -> KeyVerdict {
    let mut strings = Interner::default();
    let prepared = prepare(ops, &mut strings);
    match search_from(&prepared, None, &mut strings, budget) {
        Ok(None) => KeyVerdict::Linearizable,
        Ok(Some(culprit)) => {
            match minimal_window(key, ops, &prepared, culprit, &mut strings, budget) {
                Ok(v) => KeyVerdict::Violation(v),
                Err(GaveUp(why)) => KeyVerdict::Unknown(format!(
                    "not linearizable, but shrinking the failing window ran out of budget: {why}"
                )),
            }
        }
        Err(GaveUp(why)) => KeyVerdict::Unknown(why),
    }
}

/// The operations as seen at time `t`: those started by then; those still running become
/// optional (they may or may not have taken effect yet), running reads constrain nothing.
fn prefix(ops: &[COp], t: u64) -> Vec<COp> {
    ops.iter()
        .filter(|o| o.call <= t)
        .filter(|o| o.ret <= t || !matches!(o.step, Step::Read(_)))
        .map(|o| {
            if o.ret > t {
                COp {
                    ret: u64::MAX,
                    optional: true,
                    ..*o
                }
            } else {
                *o
            }
        })
        .collect()
}

/// Shrinks a failing key to a small window: first the shortest failing prefix (ending at the
/// return of `culprit`, the operation the search could not get past), then, for plain
/// registers, the latest start from which the window is contradictory whatever value the key
/// held before it.
fn minimal_window(
    key: &str,
    ops: &[&Op],
    prepared: &[COp],
    culprit: usize,
    strings: &mut Interner,
    budget: &Budget,
) -> Result<Violation, GaveUp> {
    let cut = prepared[culprit].ret;
    let mut window = prefix(prepared, cut);
    let culprit_idx = prepared[culprit].idx;
    let has_append = prepared.iter().any(|o| matches!(o.step, Step::Append(_)));
    let mut from_any_state = false;
    if !has_append {
        let fresh = strings.id("\u{0}quorumkv-checker-unmentioned");
        let mut ends: Vec<u64> = window.iter().map(|o| o.ret).filter(|&r| r < cut).collect();
        ends.sort_unstable();
        ends.dedup();
        let fails_from = |s: u64, strings: &mut Interner| -> Result<bool, GaveUp> {
            let w: Vec<COp> = window.iter().filter(|o| o.ret >= s).copied().collect();
            // Candidate states before the window: absent, every value it mentions, and one
            // value it does not mention (all such behave alike).
            let mut inits: Vec<State> = vec![None, Some(fresh)];
            for o in &w {
                match o.step {
                    Step::Read(Some(v)) | Step::Set(Some(v)) => inits.push(Some(v)),
                    Step::CasApplied { expected, new } => {
                        inits.push(expected);
                        inits.push(Some(new));
                    }
                    Step::CasNotApplied { expected } => inits.push(expected),
                    _ => {}
                }
            }
            inits.sort_unstable();
            inits.dedup();
            for &init in &inits {
                if search(&w, init, strings, budget)? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        // Largest s (dropping everything that ended before it) still failing from any state:
        // windows of the last 4, 8, 16, ... returns first (the search's cost grows with the
        // window, and so do the starting states to try), then bisection within the first
        // size that fails.
        let (mut lo, mut hi) = (0usize, ends.len());
        let mut k = 4usize;
        while k < ends.len() {
            let mid = ends.len() - k;
            if fails_from(ends[mid - 1] + 1, strings)? {
                lo = mid;
                break;
            }
            hi = mid - 1;
            k *= 2;
        }
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fails_from(ends[mid - 1] + 1, strings)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo > 0 {
            let s = ends[lo - 1] + 1;
            window.retain(|o| o.ret >= s);
            from_any_state = true;
        } else if fails_from(0, strings)? {
            from_any_state = true;
        }
    }
    let mut idxs: Vec<usize> = window.iter().map(|o| o.idx).collect();
    // Running reads were dropped from the prefix; the culprit is always in.
    if !idxs.contains(&culprit_idx) {
        idxs.push(culprit_idx);
    }
    idxs.sort_by_key(|&i| (ops[i].start_ns, i));
    idxs.dedup();
    let culprit = idxs.iter().position(|&i| i == culprit_idx).unwrap_or(0);
    Ok(Violation {
        key: key.to_owned(),
        ops: idxs.iter().map(|&i| ops[i].clone()).collect(),
        culprit,
        from_any_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    /// A seeded xorshift generator: `next(n)` is below `n`.
    fn numbers(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |below| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        }
    }

    /// Random insertions and LIFO removals, as the search makes them: the set answers like a
    /// plain one, and two sets have the same key exactly when they hold the same ranks.
    #[test]
    fn linearized_sets_have_one_key_per_set() {
        let mut numbers = numbers(0x2545_f491_4f6c_dd1d);
        let mut next = |below: usize| numbers(below as u64) as usize;
        let mut keys: FxHashMap<Box<[u64]>, Vec<usize>> = FxHashMap::default();
        for (n, every) in [
            (1, 0),
            (5, 0),
            (64, 3),
            (130, 7),
            (257, 0),
            (300, 2),
            (640, 5),
        ] {
            // Every `every`-th rank is optional (none when 0).
            let optional = (0..n).filter(|r| every > 0 && r % every == 1);
            let mut set = LinSet::new(n, optional, n > 256);
            let mut stack: Vec<(usize, (usize, usize))> = Vec::new();
            for _ in 0..20_000 {
                let full = (0..n).all(|r| set.has(r));
                if next(3) == 0
                    && let Some((r, undo)) = stack.pop()
                {
                    set.remove(r, undo);
                } else if !full {
                    // Mostly near the low end, as the search goes.
                    let free: Vec<usize> = (0..n).filter(|&r| !set.has(r)).collect();
                    let r = free[next(free.len().min(4))];
                    stack.push((r, set.insert(r)));
                }
                let members: Vec<usize> = (0..n).filter(|&r| set.has(r)).collect();
                let optional = |r: usize| every > 0 && r % every == 1;
                if set.compact {
                    assert_eq!(
                        set.low,
                        (0..n).find(|&r| !set.has(r) && !optional(r)).unwrap_or(n)
                    );
                }
                let mut key = set.key().to_vec();
                // Sets over different operations are told apart here.
                key.push(every as u64);
                key.push(n as u64);
                let prev = keys.insert(key.into_boxed_slice(), members.clone());
                assert!(prev.is_none_or(|p| p == members), "one key, two sets");
            }
        }
        let mut seen: FxHashMap<(usize, Vec<usize>), Box<[u64]>> = FxHashMap::default();
        for (k, members) in keys {
            let n = k[k.len() - 1] as usize * 1000 + k[k.len() - 2] as usize;
            let prev = seen.insert((n, members), k.clone());
            assert!(prev.is_none_or(|p| p == k), "one set, two keys");
        }
    }

    /// Searches of random small histories (many unknown operations) reach the same verdict
    /// and the same culprit whichever form configurations are remembered in.
    #[test]
    fn both_forms_of_remembered_configurations_search_alike() {
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        let mut strings = Interner::default();
        let (mut lin, mut not) = (0, 0);
        for _ in 0..3000 {
            let mut ops = Vec::new();
            for c in 0..1 + next(4) {
                let mut t = next(5);
                for _ in 0..1 + next(4) {
                    let (call, end) = (t, t + next(6));
                    t = end + 1 + next(2);
                    let optional = next(3) == 0;
                    let v = Some(strings.id(&next(4).to_string()));
                    let step = match next(4) {
                        0 | 1 if !optional => Step::Read(v),
                        0..=2 => Step::Set(v),
                        _ => Step::CasApplied {
                            expected: Some(strings.id(&next(4).to_string())),
                            new: strings.id(&format!("c{c}")),
                        },
                    };
                    ops.push(COp {
                        call,
                        ret: if optional { u64::MAX } else { end },
                        optional,
                        step,
                        idx: ops.len(),
                    });
                }
            }
            let b = Budget::default();
            let full = search_keyed(&ops, None, &mut strings, &b, false);
            let compact = search_keyed(&ops, None, &mut strings, &b, true);
            assert_eq!(full, compact, "{ops:?}");
            if full == Ok(None) {
                lin += 1;
            } else {
                not += 1;
            }
        }
        assert!(lin > 300 && not > 300, "both kinds: {lin} / {not}");
    }
}
