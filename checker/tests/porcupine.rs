//! The 108 labelled histories from Porcupine's test data (vendored in `tests/porcupine/`, MIT
//! licence, see its README): every verdict must match `expected.tsv`, each within the check's
//! time budget of 5 s (past it the verdict is `unknown`, which matches none). How long they
//! take is printed, not asserted: timing belongs to the benchmarks
//! (`bench/results/checker/RESULTS.md`: 0.84-1.04 s for all 108, the slowest 0.25-0.31 s, on
//! ordinary days; a CI run on a slow evening took 1.05 s for one of them).

use std::path::Path;
use std::time::{Duration, Instant};

use kv_checker::{Verdict, check, parse};

#[test]
fn every_porcupine_history_gets_its_known_verdict() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/porcupine");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let mut total = Duration::ZERO;
    let mut slowest = (Duration::ZERO, String::new());
    let mut n = 0;
    let mut wrong = Vec::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, expected) = (cols[0], cols[2]);
        let f = std::fs::File::open(dir.join(file)).expect("history");
        let (ops, _) = parse(std::io::BufReader::new(f)).expect("parse");
        let t = Instant::now();
        let report = check(&ops, Some(Duration::from_secs(5)), 1, false);
        let took = t.elapsed();
        total += took;
        if took > slowest.0 {
            slowest = (took, file.to_owned());
        }
        let got = match report.verdict() {
            Verdict::Linearizable => "linearizable",
            Verdict::Violation => "not_linearizable",
            Verdict::Unknown => "unknown",
        };
        if got != expected {
            wrong.push(format!("{file}: expected {expected}, got {got}"));
        }
        n += 1;
    }
    eprintln!(
        "{n} histories checked in {total:?} in all; slowest {} in {:?}",
        slowest.1, slowest.0
    );
    assert_eq!(n, 108);
    assert!(wrong.is_empty(), "{wrong:#?}");
}
