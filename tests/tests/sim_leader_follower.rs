//! Deterministic simulation of leader-follower replication: thousands of seeds with message
//! loss, duplication and reordering, partitions, crashes and restarts; the invariants of
//! `kv_tests::sim` after every step. A failure names its seed; rerun one seed with
//! `KV_SIM_SEED=<seed> cargo test -p kv-tests --test sim_leader_follower`.

use kv_tests::sim::{Sim, SimConfig, Stats};

fn run_many(cfg: SimConfig, default_seeds: u64) -> Stats {
    let mut total = Stats::default();
    for seed in kv_tests::sim_seeds(default_seeds) {
        let s = Sim::new(seed, cfg.clone()).run();
        total.proposed += s.proposed;
        total.acked += s.acked;
        total.acked_majority += s.acked_majority;
        total.rolled_back += s.rolled_back;
        total.reads += s.reads;
        total.terms_with_leader += s.terms_with_leader;
        total.commit += s.commit;
        total.checked_ops += s.checked_ops;
        total.restored += s.restored;
        total.survived += s.survived;
    }
    eprintln!("{cfg:?}\n=> {total:?}");
    total
}

#[test]
fn sim_three_replicas_under_faults_keep_every_invariant() {
    let t = run_many(SimConfig::default(), 1000);
    // The runs exercised what they claim to: writes, fail-overs and roll-backs happened.
    assert!(t.acked_majority > 1000, "{t:?}");
    assert!(t.terms_with_leader > 2000, "{t:?}");
    assert!(t.rolled_back > 0, "{t:?}");
    assert!(t.reads > 100, "{t:?}");
    assert!(t.checked_ops > 10_000, "{t:?}");
    // Nodes compacted their logs, and followers behind them installed snapshots.
    assert!(t.restored > 100, "{t:?}");
}

#[test]
fn sim_five_replicas_under_faults_keep_every_invariant() {
    let t = run_many(
        SimConfig {
            nodes: 5,
            ..SimConfig::default()
        },
        1000,
    );
    assert!(t.acked_majority > 1000, "{t:?}");
    assert!(t.terms_with_leader > 2000, "{t:?}");
}

#[test]
fn sim_heavy_loss_and_churn_keep_every_invariant() {
    run_many(
        SimConfig {
            nodes: 5,
            drop: 0.3,
            dup: 0.1,
            max_delay: 10,
            crash: 0.02,
            restart: 0.05,
            partition: 0.02,
            heal: 0.03,
            ..SimConfig::default()
        },
        300,
    );
}

#[test]
fn sim_without_faults_elects_once_and_acknowledges_everything() {
    let t = Sim::new(
        7,
        SimConfig {
            drop: 0.0,
            dup: 0.0,
            crash: 0.0,
            restart: 0.0,
            partition: 0.0,
            heal: 0.0,
            ..SimConfig::default()
        },
    )
    .run();
    assert_eq!(t.terms_with_leader, 1, "{t:?}");
    assert_eq!(t.rolled_back, 0, "{t:?}");
    assert!(t.proposed > 100, "{t:?}");
    assert_eq!(
        t.acked, t.proposed,
        "every accepted write is acknowledged: {t:?}"
    );
}
