//! Sweeps the leader-follower simulator over a range of seeds for one configuration and sums
//! what the runs did: for comparing two builds of the protocol (run the same sweep on each),
//! which a test's pass or fail cannot show.
//!
//!   cargo run --release -p kv-tests --example sim_sweep -- FIRST_SEED END_SEED [NODES] [SYNC] [PAUSE] [LINK_CUT]
//!
//! NODES (default 3); SYNC, the chance per step that a node's pending log writes become
//! durable (default 0.5; 0.05 is the slow disk of the simulation tests, fsyncs as long as an
//! election timeout); PAUSE, the chance per step of pausing a node (default 0); LINK_CUT, 0
//! for partitions into two sides, above 0 the chance that each one-way link is cut instead
//! (default 0). Prints the runs that failed a check (their seeds: rerun one as a one-seed
//! range with `KV_SIM_TRACE=1` for its message and trace), the terms (all, and those that had
//! a leader), the writes acknowledged (all, and at W=majority), and the seeds whose runs had
//! rare events the tests pin or count.

use std::process::ExitCode;

use kv_tests::sim::{Sim, SimConfig, Stats};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: Option<T>) -> T {
    match (args.get(i), default) {
        (Some(s), _) => s.parse().unwrap_or_else(|_| {
            eprintln!("{name}: not a valid value: {s}");
            std::process::exit(2)
        }),
        (None, Some(d)) => d,
        (None, None) => {
            eprintln!("usage: sim_sweep FIRST_SEED END_SEED [NODES] [SYNC] [PAUSE] [LINK_CUT]");
            std::process::exit(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first: u64 = arg(&args, 0, "FIRST_SEED", None);
    let end: u64 = arg(&args, 1, "END_SEED", None);
    let cfg = SimConfig {
        nodes: arg(&args, 2, "NODES", Some(3)),
        sync: arg(&args, 3, "SYNC", Some(0.5)),
        pause: arg(&args, 4, "PAUSE", Some(0.0)),
        link_cut: arg(&args, 5, "LINK_CUT", Some(0.0)),
        ..SimConfig::default()
    };
    let one = end == first + 1;
    if !one {
        // A failed run's message is printed once, in the summary, by seed.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let mut sum = Stats::default();
    let (mut failed, mut acked_after_rollback, mut settled_ahead, mut split_brain) =
        (vec![], vec![], vec![], vec![]);
    for seed in first..end {
        let c = cfg.clone();
        match std::panic::catch_unwind(move || Sim::new(seed, c).run()) {
            Ok(s) => {
                sum.terms += s.terms;
                sum.terms_with_leader += s.terms_with_leader;
                sum.acked += s.acked;
                sum.acked_majority += s.acked_majority;
                if s.acked_after_rollback > 0 {
                    acked_after_rollback.push(seed);
                }
                if s.settled_ahead_of_leader_disk > 0 {
                    settled_ahead.push(seed);
                }
                if s.split_brain_heard > 0 {
                    split_brain.push((seed, s.split_brain_heard));
                }
            }
            Err(_) => failed.push(seed),
        }
    }
    println!(
        "{} nodes, sync {}, pause {}, link cuts {}, seeds {first}..{end}",
        cfg.nodes, cfg.sync, cfg.pause, cfg.link_cut
    );
    println!("  runs failed: {} {failed:?}", failed.len());
    println!(
        "  terms: {} ({} with a leader)",
        sum.terms, sum.terms_with_leader
    );
    println!(
        "  writes acknowledged: {} ({} at W=majority)",
        sum.acked, sum.acked_majority
    );
    println!("  seeds with a write acknowledged after its rollback: {acked_after_rollback:?}");
    println!("  seeds settled with the leader's disk behind its commit: {settled_ahead:?}");
    println!("  seeds with two leaders heard at once (steps): {split_brain:?}");
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
