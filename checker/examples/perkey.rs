//! Times the check of each key of a history: `cargo run -p kv-checker --example perkey FILE`.
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("history file");
    let f = std::fs::File::open(&path).expect("open");
    let (ops, _) = kv_checker::parse(std::io::BufReader::new(f)).expect("parse");
    let mut by_key: BTreeMap<&str, Vec<&kv_checker::Op>> = BTreeMap::new();
    for op in &ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (k, kops) in by_key {
        let t = Instant::now();
        let v = kv_checker::linear::check_key(k, &kops, &kv_checker::Budget::default());
        let verdict = match v {
            kv_checker::KeyVerdict::Linearizable => "linearizable".to_string(),
            kv_checker::KeyVerdict::Violation(v) => format!("violation, window of {}", v.ops.len()),
            kv_checker::KeyVerdict::Unknown(w) => format!("unknown: {w}"),
        };
        println!(
            "{k:>8} {:>5} ops {:>10.1?} {verdict}",
            kops.len(),
            t.elapsed()
        );
    }
}
