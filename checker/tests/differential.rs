//! Randomised differential test: thousands of small generated histories (a few clients, a few
//! operations each, linearizable and not) checked by kv-checker and by a brute-force reference
//! that tries every order consistent with real time. The verdicts must be identical, and every
//! reported window must itself be impossible.

use kv_checker::{KeyVerdict, Op, OpKind, Outcome, linear};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The register, written independently of the checker: `None` is absent.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match op.op {
        OpKind::Read => (op.value == *state).then(|| state.clone()),
        OpKind::Write => Some(op.value.clone()),
        OpKind::Delete => Some(None),
        OpKind::Append => Some(Some(
            state.clone().unwrap_or_default() + op.value.as_deref().unwrap_or(""),
        )),
        OpKind::Cas => {
            let matches = *state == op.expected;
            if op.outcome == Outcome::Unknown || op.applied != Some(false) {
                matches.then(|| op.value.clone())
            } else {
                (!matches).then(|| state.clone())
            }
        }
    }
}

/// Tries every order: an operation may go next when no other remaining operation that must
/// take effect ended before it started. Unknown operations may also never happen.
fn brute(ops: &[&Op], state: Option<String>) -> bool {
    if ops.iter().all(|o| o.outcome == Outcome::Unknown) {
        return true;
    }
    for (i, o) in ops.iter().enumerate() {
        let blocked = ops
            .iter()
            .any(|d| d.outcome == Outcome::Ok && d.end_ns < o.start_ns);
        if blocked {
            continue;
        }
        let rest: Vec<&Op> = ops
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| *o)
            .collect();
        if let Some(next) = step(&state, o)
            && brute(&rest, next)
        {
            return true;
        }
    }
    false
}

/// The operations that constrain anything: no failed ones, no unknown reads.
fn relevant(ops: &[Op]) -> Vec<&Op> {
    ops.iter()
        .filter(|o| o.outcome != Outcome::Fail)
        .filter(|o| !(o.op == OpKind::Read && o.outcome == Outcome::Unknown))
        .collect()
}

fn value(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..4) {
        0 => None,
        v => Some(v.to_string()),
    }
}

fn generate(rng: &mut StdRng) -> Vec<Op> {
    let clients = rng.random_range(1..=3);
    let mut ops = Vec::new();
    for c in 0..clients {
        let mut t = rng.random_range(0..6u64);
        for _ in 0..rng.random_range(1..=3) {
            let start = t;
            let end = start + rng.random_range(0..8);
            t = end + 1 + rng.random_range(0..3);
            let kind = match rng.random_range(0..10) {
                0..=3 => OpKind::Read,
                4..=6 => OpKind::Write,
                7 => OpKind::Delete,
                _ => OpKind::Cas,
            };
            let outcome = match rng.random_range(0..10) {
                0 => Outcome::Unknown,
                1 => Outcome::Fail,
                _ => Outcome::Ok,
            };
            let v = match kind {
                OpKind::Write | OpKind::Cas => Some(rng.random_range(1..4).to_string()),
                _ => value(rng),
            };
            ops.push(Op {
                client: c,
                op: kind,
                key: "k".into(),
                value: if kind == OpKind::Delete { None } else { v },
                expected: if kind == OpKind::Cas {
                    value(rng)
                } else {
                    None
                },
                applied: (kind == OpKind::Cas && outcome == Outcome::Ok)
                    .then(|| rng.random_bool(0.6)),
                start_ns: start,
                end_ns: end,
                outcome,
                version: None,
                node: None,
            });
        }
    }
    ops
}

#[test]
fn checker_agrees_with_brute_force_on_thousands_of_small_histories() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut lin, mut not) = (0, 0);
    for case in 0..5000 {
        let ops = generate(&mut rng);
        let refs: Vec<&Op> = ops.iter().collect();
        let want = brute(&relevant(&ops), None);
        let got = linear::check_key("k", &refs, &linear::Budget::default());
        match (&got, want) {
            (KeyVerdict::Linearizable, true) => lin += 1,
            (KeyVerdict::Violation(v), false) => {
                not += 1;
                // The window is impossible on its own (it may assume any starting value, so in
                // particular from absent).
                let w: Vec<Op> = v.ops.clone();
                let inits: Vec<Option<String>> = if v.from_any_state {
                    vec![
                        None,
                        Some("1".into()),
                        Some("2".into()),
                        Some("3".into()),
                        Some("9".into()),
                    ]
                } else {
                    vec![None]
                };
                for init in inits {
                    assert!(
                        !brute(&relevant(&w), init.clone()),
                        "case {case}: reported window is linearizable from {init:?}: {w:#?}"
                    );
                }
            }
            _ => panic!("case {case}: checker {got:?}, brute force {want}\n{ops:#?}"),
        }
    }
    eprintln!("{lin} linearizable, {not} not");
    assert!(
        lin > 1000 && not > 1000,
        "both kinds are exercised: {lin} / {not}"
    );
}
