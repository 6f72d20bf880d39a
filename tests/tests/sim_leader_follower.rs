//! Deterministic simulation of leader-follower replication: thousands of seeds with message
//! loss, duplication and reordering, partitions, crashes and restarts; the invariants of
//! `kv_tests::sim` after every step. A failure names its seed; rerun one seed with
//! `KV_SIM_SEED=<seed> cargo test -p kv-tests --test sim_leader_follower`.

use kv_tests::sim::{Sim, SimConfig, Stats};

fn run_many(cfg: SimConfig, default_seeds: u64) -> Stats {
    let mut total = Stats::default();
    kv_tests::for_each_seed(default_seeds, |seed| {
        total += &Sim::new(seed, cfg.clone()).run();
    });
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

/// A node between a deposed leader and its successor hears both (`kv_leaders_observed` >= 2)
/// when the deposed one goes on sending: paused, then resumed before it hears of the newer
/// term. The first such seed is looked for, not pinned, so that a change to what the simulator
/// draws does not hide the report; the test fails only if none of the 20,000 has it.
///
/// Under the default faults (no pauses) none of seeds 0..20000 has one now. Twelve did when the
/// leader checked its quorum once per election timeout (as etcd's raft does), 393 the first: a
/// leader whose last reply came just after a check led for up to two timeouts, and pre-vote let
/// the others elect a successor after one.
#[test]
fn sim_a_deposed_leader_heard_beside_its_successor_is_reported() {
    let cfg = SimConfig {
        pause: 0.01,
        ..SimConfig::default()
    };
    let found = (0..20_000u64)
        .map(|seed| (seed, Sim::new(seed, cfg.clone()).run()))
        .find(|(_, s)| s.split_brain_heard > 0);
    let (seed, s) = found.expect("no seed of 0..20000 had two leaders heard at once");
    eprintln!(
        "seed {seed}: {} steps with two leaders heard",
        s.split_brain_heard
    );
}

/// Pauses (a GC or VM pause, SIGSTOP) on top of the default faults: a paused leader is
/// replaced, resumes believing it still leads, and sends before it hears of the newer term.
#[test]
fn sim_paused_nodes_keep_every_invariant() {
    for nodes in [3, 5] {
        let t = run_many(
            SimConfig {
                nodes,
                pause: 0.01,
                ..SimConfig::default()
            },
            300,
        );
        assert!(t.acked_majority > 10_000, "{t:?}");
        assert!(t.split_brain_heard > 0, "{t:?}");
    }
}

/// Seed 34014021 of five paused nodes (a sweep of 50,000 seeds): leader n4 (term 2) proposed
/// a W=1 write at index 13; follower n3 stored it and replied, and n4 was paused before the
/// reply reached it. n2 was elected in term 3 and n3 truncated index 13 for n2's entry, into
/// its rollback file. n4 resumed still leading term 2, took n3's reply and acknowledged the
/// write, which no replica then held. Below a majority an acknowledgement cannot outrun such
/// a truncation (the reply was true when sent, and an acknowledgement delayed on the wire
/// looks the same); the check now accepts it when the write is in a rollback file already, and
/// this run is one that has it: since a leader steps down in the tick it has gone an election
/// timeout without a majority, seed 34188489 (the first of five in `34000000..34250000`).
#[test]
fn sim_a_paused_leader_acknowledges_a_write_below_a_majority_already_rolled_back() {
    let s = Sim::new(
        34_188_489,
        SimConfig {
            nodes: 5,
            pause: 0.01,
            ..SimConfig::default()
        },
    )
    .run();
    assert_eq!(s.acked_after_rollback, 1, "{s:?}");
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

/// Partial and one-way partitions: each one-way link cut on its own (a third of them at
/// once), so a leader may be heard and not hear the replies, a follower may hear the leader
/// and not be heard, and two nodes cut from each other may both reach a third. Over 3,000
/// seeds each (`KV_SIM_SEEDS=17000000..17003000`, three and five nodes) no invariant failed,
/// every run had one leader after healing, and no node heard two leaders at overlapping times.
/// With check-quorum off (tried: a leader that stops hearing a majority goes on leading) this
/// fails on the split brain heard (2,912 node-steps), where the other tests but the slow
/// disk's pass.
///
/// With the quorum checked once per election timeout, 4 runs of 12,000 (three nodes,
/// `KV_SIM_SEEDS=33004000..33016000`) heard two leaders: seed 33005376, a leader that no
/// follower heard led on for 26 ticks, and one was elected beside it for 3. Checked on every
/// tick, none of them does; seed 33010878 still did, a leader elected by a late vote of a term
/// its voters had left, deposed 5 ticks into it: not counted now (see
/// `Replica::leaders_observed`). Seed 34007271 (a sweep of 50,000) was the same race seen
/// from the winner: n1 won term 5 by a late vote 3 ticks after n3 won term 6, led 8 ticks,
/// and n3 heard it 10 ticks after its own term began; n3 counts an older claim first heard
/// after its own began only if heard for an election timeout from then. Seed 34343773 of
/// three nodes (a sweep of `34340000..34420000` once election timeouts widened after rounds
/// without a leader; none of the same 20,000 of five nodes) is counted: n1 won term 7 by
/// n3's vote, but none of its messages reached n2 or n3 (cut one way), and no reply came
/// back; n2 won term 8 eight ticks later, and n1 heard it in the tick its check-quorum
/// deposed it, having led 11 ticks, one more than the margin a leader's own claim is given.
/// Check-quorum let a leader go on for the tick in which it had heard from no majority for
/// a whole election timeout; it now steps down in that tick (`Replica::check_quorum`), and
/// the same 80,000 seeds hear no split brain (terms +5%, writes acknowledged at W=majority
/// -1.2%: a leader cut off steps down one tick sooner).
#[test]
fn sim_one_way_and_partial_partitions_keep_every_invariant() {
    let cut = SimConfig {
        link_cut: 0.3,
        ..SimConfig::default()
    };
    for nodes in [3, 5] {
        let t = run_many(
            SimConfig {
                nodes,
                ..cut.clone()
            },
            300,
        );
        assert!(t.acked_majority > 10_000, "{t:?}");
        assert_eq!(t.split_brain_heard, 0, "{t:?}");
    }
    let late = Sim::new(34_343_773, cut).run();
    assert_eq!(late.split_brain_heard, 0, "seed 34343773: {late:?}");
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

/// Fail-overs by crashes alone (no loss, no partitions) are never heard as a split brain: a
/// crashed leader's last messages arrive within `max_delay` (4) ticks, before anyone can have
/// gone an election timeout (10+) without hearing from it. What `kv_leaders_observed` reports
/// is not a side effect of every leader change.
///
/// Seed 202512 (found by a sweep of 6,000 seeds) has a crash that leaves two candidates: one
/// wins term 11 while the other already campaigns for 12 and wins it four ticks later; the
/// term-11 leader's last heartbeats, sent before it stepped down, reach the winner of 12 after
/// it began. They were counted as a split brain (565 steps of it); a claim now overlaps a
/// newer one only when still heard an election timeout after the newer one began.
///
/// Seed 12000738 (a sweep of 3,000 seeds): n2 takes office in term 6 in the tick n3's last
/// append of term 5 reaches it. Claims were ordered by when first heard, so n2's own claim
/// counted as the older one, and it heard two leaders for the rest of the run (221 steps).
/// They are ordered by term now.
#[test]
fn sim_fail_overs_by_crash_alone_are_never_heard_as_a_split_brain() {
    let cfg = SimConfig {
        drop: 0.0,
        dup: 0.0,
        partition: 0.0,
        heal: 0.0,
        crash: 0.01,
        ..SimConfig::default()
    };
    let t = run_many(cfg.clone(), 300);
    assert!(t.terms_with_leader > 600, "fail-overs happened: {t:?}");
    assert_eq!(t.split_brain_heard, 0, "{t:?}");
    let duel = Sim::new(202_512, cfg.clone()).run();
    assert_eq!(duel.split_brain_heard, 0, "seed 202512: {duel:?}");
    let late = Sim::new(12_000_738, cfg).run();
    assert_eq!(late.split_brain_heard, 0, "seed 12000738: {late:?}");
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
    assert_eq!(t.split_brain_heard, 0, "one leader, never two heard: {t:?}");
    assert_eq!(t.rolled_back, 0, "{t:?}");
    assert!(t.proposed > 100, "{t:?}");
    assert_eq!(
        t.acked, t.proposed,
        "every accepted write is acknowledged: {t:?}"
    );
}

/// A disk whose fsyncs take about as long as the election timeout (writes durable after 20
/// ticks on average, elections after 10 to 20 ticks of silence): a vote, or a reply in a new
/// term, counts only once durable. While a node's own term or vote is being written its
/// election timer waits (`Replica::hard_state_persisted`); before it did, elections kept
/// failing: a sweep of 1,000 seeds (`KV_SIM_SEEDS=1000000..1001000`) found 65 not converged
/// 400 ticks after healing (seed 1000026: a leader elected only in term 33), and 1 since. An
/// election timeout six times longer (the node's `--election-timeout` and
/// `--heartbeat-interval`) still needs fewer elections: here, over 100 seeds, 330 terms
/// against 722 at bc9b7bf (332 against 773 when late votes began to count; 1,142 before
/// they counted, 2,558 before the timer waited). Since the timeout's range widens after rounds
/// without a leader, the default timeout needs fewer elections too: 329 terms against 657.
/// A vote that arrives after the candidate's timeout, while it asks for pre-votes for the
/// next term, now elects it (`Replica::on_vote`): over 10,000 seeds
/// (`KV_SIM_SEEDS=8100000..8110000`) the runs not converged 400 ticks after healing went from
/// 8 to 1, the terms from 109,307 to 77,579, and writes acknowledged by a majority rose 12%.
#[test]
fn sim_a_disk_as_slow_as_the_election_timeout_still_elects_leaders() {
    let slow_disk = slow_disk();
    let default_timeout = run_many(slow_disk.clone(), 100);
    // The window to settle in after healing scales with the timers: 400 ticks are 20 to 40
    // election timeouts of the default, and only 3 to 7 of these. Seed 34106208 (a sweep of
    // `KV_SIM_SEEDS=34100000..34110000`): its leader of term 8 was elected 385 ticks into
    // that window, after a candidate with a longer log deposed the leader of term 6 by asking
    // for votes, and had not committed its no-op by the end.
    let longer = run_many(
        SimConfig {
            election_ticks: (60, 120),
            heartbeat_ticks: 12,
            settle_steps: 2_400,
            ..slow_disk
        },
        100,
    );
    assert!(
        default_timeout.acked_majority > 4_000,
        "writes acknowledged at the default timeout: {default_timeout:?}"
    );
    assert!(
        longer.terms * 3 < default_timeout.terms * 2,
        "fewer elections: {longer:?} vs {default_timeout:?}"
    );
}

/// A leader commits an entry once a majority holds it durably, and that majority need not
/// include the leader: elected late in the settling phase on the slow disk, a leader's no-op
/// is durable on its followers, and so committed, while its own write of it is still in
/// flight. The check after healing compared the commit indexes with what the leader's disk
/// held and failed such runs (seeds 8103230, then 8110157 and 8114822 once late votes counted,
/// in sweeps of `KV_SIM_SEEDS=8100000..8135000`); it compares them with the leader's log now.
/// Later changes took those seeds elsewhere (8219407 next, then 8204506 once a candidate
/// waited for its votes as long as its own took to write, then 34226069 once election
/// timeouts widened after rounds without a leader: two of 60,000 seeds from 34200000, then
/// 34741831 once a follower that just voted refused pre-votes: one of 260,000 seeds searched
/// from 34500000, as fewer leaders are elected late), so the test looks for such a run: the
/// first of `34741831..34761831` (five nodes on the slow disk), and fails only if none of the
/// 20,000 has one.
#[test]
fn sim_a_leader_commits_on_its_followers_before_its_own_write_is_durable() {
    let cfg = SimConfig {
        nodes: 5,
        ..slow_disk()
    };
    let found = (34_741_831..34_761_831u64).find(|&seed| {
        Sim::new(seed, cfg.clone())
            .run()
            .settled_ahead_of_leader_disk
            > 0
    });
    let seed = found.expect("no seed of 34741831..34761831 settled with the leader's disk behind");
    eprintln!("seed {seed}: the leader's disk behind its commit index once settled");
}

/// On the slow disk a vote is often written after the candidate's election timed out, and
/// a follower is often still writing a term or a truncation when the leader's appends come.
/// Three changes keep leaders there, and each once had a pinned seed that failed without it:
/// - A vote that arrives while the candidate asks for pre-votes for the next term, for the
///   term it still campaigns in, elects it (`Replica::on_vote`). Seed 8104140: no leader 400
///   ticks after healing (term 25). Five nodes, seeds 9000000..9005000: 30 runs not settled
///   without it, none with it; 86,539 terms against 54,011.
/// - A reply to the leader goes while a truncation is being written
///   (`Pipeline::submit`). Seed 8108858: the follower held its replies about 20 ticks, the
///   leader stepped down by check-quorum, no leader 400 ticks after healing; over 65,000
///   slow-disk seeds, 37 runs not settled before, 24 after.
/// - A reply goes while the follower's term or vote is being written (seed 33301304, below).
///
/// Later changes moved those seeds elsewhere (each passed with its change taken back), so this
/// test counts the events themselves over 100 seeds of three and of five nodes: without any
/// one of the changes its count is zero.
#[test]
fn sim_late_votes_and_replies_ahead_of_writes_happen_on_the_slow_disk() {
    for nodes in [3, 5] {
        let t = run_many(
            SimConfig {
                nodes,
                ..slow_disk()
            },
            100,
        );
        assert!(t.terms_with_leader > 100, "{nodes} nodes: {t:?}");
        assert!(t.elected_by_late_vote > 0, "{nodes} nodes: {t:?}");
        assert!(t.replies_ahead_of_term_write > 0, "{nodes} nodes: {t:?}");
        assert!(t.replies_ahead_of_truncation > 0, "{nodes} nodes: {t:?}");
    }
}

/// Seed 33301304 of the slow disk: n1 won term 9 while n3 was still writing its own vote of
/// that term (it had campaigned) and n2 a snapshot; both held their replies to n1 until those
/// writes were durable, n1 heard from no majority within its check-quorum window and stepped
/// down 13 ticks after its election, and the next leader came so late that its entries were
/// not committed by the end of the run. Replies now wait for a snapshot only: they claim only
/// what is durable, and n1 keeps leading until n3's vote is written. Runs of the slow-disk
/// test not settled after healing (a sweep with `KV_SIM_KEEP_GOING=1`): 3 to 1 over
/// `KV_SIM_SEEDS=33400000..33430000`, 7 to 4 over `8100000..8140000` (both timeouts); five
/// nodes on the slow disk, `8200000..8220000`: 9 to 10, votes written slower than a
/// candidate's timeout (the class `--election-timeout` above the fsync time avoids).
#[test]
fn sim_replies_behind_a_slow_vote_keep_the_leader() {
    let s = Sim::new(33_301_304, slow_disk()).run();
    assert!(s.terms_with_leader > 0, "{s:?}");
}

fn slow_disk() -> SimConfig {
    SimConfig {
        sync: 0.05,
        ..SimConfig::default()
    }
}
