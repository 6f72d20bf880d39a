//! Deterministic simulation of leaderless replication (see `kv_tests::sim_leaderless`): five
//! nodes with skewed clocks, loss, reordering, partitions, crashes and restarts. A failure names
//! its seed; rerun one with `KV_SIM_SEED=<seed> cargo test -p kv-tests --test sim_leaderless`.

use bytes::Bytes;
use kv_replica::leaderless::{
    Action, Config, Leaderless, Msg, Opts, ReadFanout, ReadRepair, Store as _,
};
use kv_replica::{NodeId, Quorum};
use kv_tests::sim_leaderless::{LlConfig, LlSim, LlStats, SimStore};

fn run_many(cfg: LlConfig, default_seeds: u64) -> LlStats {
    let mut t = LlStats::default();
    for seed in kv_tests::sim_seeds(default_seeds) {
        let s = LlSim::new(seed, cfg.clone()).run();
        t.acked += s.acked;
        t.superseded += s.superseded;
        t.failed += s.failed;
        t.reads += s.reads;
        t.reads_failed += s.reads_failed;
        t.reads_at_deadline += s.reads_at_deadline;
        t.stale_reads += s.stale_reads;
        t.conflicts += s.conflicts;
        t.hints_delivered += s.hints_delivered;
        t.read_repairs += s.read_repairs;
        t.ae_repairs += s.ae_repairs;
        t.crashes += s.crashes;
        t.lost_unflushed += s.lost_unflushed;
        t.violations += s.violations;
        t.unchecked += s.unchecked;
    }
    eprintln!("{cfg:?}\n=> {t:?}");
    t
}

#[test]
fn sim_leaderless_quorum_reads_see_acknowledged_writes_and_replicas_converge() {
    let t = run_many(LlConfig::default(), 1000);
    assert!(t.acked > 10_000 && t.reads > 10_000, "{t:?}");
    assert_eq!(t.stale_reads, 0);
    // The runs exercised the repair paths.
    assert!(
        t.hints_delivered > 0 && t.read_repairs > 0 && t.ae_repairs > 0,
        "{t:?}"
    );
    // Some acknowledged writes met a concurrent write with a higher version on a replica
    // (coordinators changing under faults, skewed clocks), and their answers said so (873 of
    // 272,880 on the default seeds).
    assert!(t.superseded > 0, "{t:?}");
    assert!(t.crashes > 100, "{t:?}");
}

/// Writes become durable a while after they are made (an fsync that sends wait for, the
/// coordinator's own copy lazily), and crashes, four times as many, take back what was not:
/// no acknowledged write is lost, no read is stale, replicas converge. A send that did not wait
/// for its write to be durable would lose acknowledged writes here.
#[test]
fn sim_leaderless_acknowledgements_wait_for_durability_and_crashes_lose_only_the_rest() {
    let t = run_many(
        LlConfig {
            flush: Some((0.5, 0.1)),
            crash: 0.002,
            ..LlConfig::default()
        },
        300,
    );
    assert_eq!(t.stale_reads, 0);
    assert!(t.acked > 10_000, "{t:?}");
    assert!(t.lost_unflushed > 100, "crashes took back writes: {t:?}");
}

#[test]
fn sim_leaderless_blocking_read_repair_keeps_every_invariant() {
    run_many(
        LlConfig {
            read_repair: ReadRepair::Blocking,
            ..LlConfig::default()
        },
        300,
    );
}

#[test]
fn sim_leaderless_quorum_read_fanout_keeps_every_invariant() {
    for read_repair in [ReadRepair::Async, ReadRepair::Blocking] {
        let t = run_many(
            LlConfig {
                read_fanout: ReadFanout::Quorum,
                read_repair,
                ..LlConfig::default()
            },
            300,
        );
        assert!(t.reads > 3_000 && t.read_repairs > 0, "{t:?}");
    }
}

#[test]
fn sim_leaderless_heavy_loss_and_churn_still_converge() {
    run_many(heavy_loss_and_churn(), 300);
}

fn heavy_loss_and_churn() -> LlConfig {
    LlConfig {
        drop: 0.2,
        crash: 0.002,
        restart: 0.01,
        partition: 0.004,
        heal: 0.004,
        max_delay: 20,
        ..LlConfig::default()
    }
}

/// Seed 912818 of the test above: n4 restarted twice within 50 ms, and both lives started
/// their operation ids at the same number (one above the newest version stored, from a peer
/// whose clock ran ahead of n4's). n3's answer to the first life's forwarded write of k3 was
/// taken by the second life as the answer to its own forward of k2, under the same id; n3,
/// which keeps a record of forwards by forwarder and id, would have answered that one with
/// its record too, never running it. Each life draws its first id at random now.
#[test]
fn sim_leaderless_a_restarted_node_never_reuses_an_operation_id() {
    let s = LlSim::new(912_818, heavy_loss_and_churn()).run();
    assert!(s.crashes > 0 && s.acked > 0, "{s:?}");
}

#[test]
fn sim_leaderless_r1_w1_under_partitions_gives_stale_reads_and_conflicts_that_are_counted() {
    let t = run_many(
        LlConfig {
            r: 1,
            w: 1,
            partition: 0.004,
            heal: 0.002,
            ..LlConfig::default()
        },
        200,
    );
    // Not promised to be consistent: the weakness is real and measured, and convergence holds.
    assert!(t.stale_reads > 0, "{t:?}");
    assert!(t.conflicts > 0, "{t:?}");
    // kv-checker finds the histories of these runs not linearizable.
    assert!(t.violations > 20, "{t:?}");
}

#[test]
fn sim_leaderless_sloppy_quorum_converges_and_keeps_acknowledged_writes() {
    run_many(
        LlConfig {
            sloppy: true,
            ..LlConfig::default()
        },
        300,
    );
}

/// The same with writes made durable later and more crashes: a fallback's hint counts toward W
/// only once durable.
#[test]
fn sim_leaderless_sloppy_quorum_counts_only_durable_hints() {
    let t = run_many(
        LlConfig {
            sloppy: true,
            flush: Some((0.5, 0.1)),
            crash: 0.002,
            ..LlConfig::default()
        },
        200,
    );
    assert!(t.lost_unflushed > 0, "{t:?}");
}

/// Seeds 802742 and 803280 of the test above. In the first, n2 coordinated a write for n1,
/// n5 and n3 (n1 and n3 down), stored a hint for the silent n5 itself, delivered it, and then
/// counted n5's own late acknowledgement and its hint for n5 as two copies. In the second, n3
/// held a durable hint for n5 and counted it again for its hints for n2 and n1, not yet
/// durable. Both answered W=2 with the write durable on one node. A hint counts only for its
/// own replica, and only while that replica has not acknowledged.
#[test]
fn sim_leaderless_a_hint_counts_only_for_its_own_replica_until_that_one_acknowledges() {
    let cfg = LlConfig {
        sloppy: true,
        flush: Some((0.5, 0.1)),
        crash: 0.002,
        ..LlConfig::default()
    };
    for seed in [802_742, 803_280] {
        let s = LlSim::new(seed, cfg.clone()).run();
        assert!(s.acked > 0, "{s:?}");
    }
}

/// Two histories of a forwarded write run twice by a coordinator that crashed before its own
/// copy was durable, having sent the write on to the other replicas:
/// - seed 600251 (writes made durable later): n1, restarted with nothing stored, took itself
///   for a node in its first life and ran the forwarder's repeat again, under a second
///   version. A restart is never a first life now (`Config::first_life` comes from the data
///   directory; the third case of `a_repeated_forward_is_run_by_a_new_coordinator_and_
///   refused_by_a_restarted_one` tests it directly).
/// - seed 911866 (the same with a sloppy quorum): n4 ran n1's forwarded write, crashed with
///   its copy not yet durable, and, restarted with no record of the write and no copy whose
///   version would have told it that the write was sent before its restart, ran n1's repeat
///   again. A forwarded write now leaves its coordinator only once the coordinator's copy is
///   durable, which also keeps seed 600251 from getting that far.
#[test]
fn sim_leaderless_a_coordinator_runs_a_forwarded_write_once_across_a_crash() {
    let durable_later = LlConfig {
        flush: Some((0.5, 0.1)),
        crash: 0.002,
        ..LlConfig::default()
    };
    let sloppy = LlConfig {
        sloppy: true,
        ..durable_later.clone()
    };
    for (seed, cfg) in [(600_251, durable_later), (911_866, sloppy)] {
        let s = LlSim::new(seed, cfg).run();
        assert!(s.crashes > 0 && s.acked > 0, "seed {seed}: {s:?}");
    }
}

#[test]
fn sim_leaderless_without_hinted_handoff_converges_through_repair_and_anti_entropy() {
    let t = run_many(
        LlConfig {
            hints: false,
            ..LlConfig::default()
        },
        300,
    );
    assert_eq!(t.hints_delivered, 0, "{t:?}");
    assert!(t.ae_repairs > 0, "{t:?}");
}

#[test]
fn sim_leaderless_without_faults_detects_no_conflicts() {
    let t = run_many(
        LlConfig {
            drop: 0.0,
            crash: 0.0,
            partition: 0.0,
            pause: 0.0,
            ..LlConfig::default()
        },
        100,
    );
    assert_eq!(t.conflicts, 0, "{t:?}");
    assert_eq!(t.failed, 0, "{t:?}");
}

/// One replica loses 10% of its messages both ways, nothing else fails: every request is
/// answered before its 2 s deadline (writes and reads go again to silent replicas every
/// `hint_after`; so does a blocking read repair).
///
/// Not promised for every seed: a write forwarded to (or from) the lossy node fails when every
/// try within its deadline loses its request or its answer. A round trip is lost with
/// probability 1 - 0.9² = 0.19 and there are about nine tries, so about 3 in 10⁷ forwarded
/// writes fail. Seeds 6000..8000 (6M writes) have one: seed 6239, Blocking/All, a write n3
/// forwarded to n5 at t=4711 ms, run by n5, whose answer to the first try and the eight repeats
/// after it was lost each time (traced message by message). CI's seeds have none.
#[test]
fn sim_leaderless_a_lossy_replica_fails_no_request() {
    for (read_repair, read_fanout) in [
        (ReadRepair::Async, ReadFanout::All),
        (ReadRepair::Blocking, ReadFanout::All),
        (ReadRepair::Async, ReadFanout::Quorum),
    ] {
        let t = run_many(
            LlConfig {
                read_fanout,
                drop: 0.0,
                crash: 0.0,
                partition: 0.0,
                pause: 0.0,
                lossy: Some((4, 0.1)),
                timeout_ms: 2000,
                hint_after_ms: 200,
                steps: 20_000,
                read_repair,
                ..LlConfig::default()
            },
            20,
        );
        assert_eq!(
            (t.failed, t.reads_failed, t.reads_at_deadline),
            (0, 0, 0),
            "{read_repair:?} {read_fanout:?}: {t:?}"
        );
    }
}

/// Node n1 of `nodes` members (N=3, R=W=2) with `tweak` applied to its configuration, an
/// empty store, and request options with quorum 2.
fn lone_node(
    nodes: usize,
    tweak: impl FnOnce(&mut Config),
) -> (Vec<NodeId>, Leaderless, SimStore, Opts) {
    let members: Vec<NodeId> = (1..=nodes).map(|i| NodeId(format!("n{i}"))).collect();
    let mut cfg = Config::new(
        members[0].clone(),
        members.clone(),
        Quorum::new(nodes as u32, 3, 2, 2).expect("quorum"),
    );
    tweak(&mut cfg);
    let opts = Opts {
        quorum: 2,
        timeout_ms: 2_000,
        degrade: false,
    };
    (
        members,
        Leaderless::new(cfg, 0, 0),
        SimStore::default(),
        opts,
    )
}

/// A replica unreachable for longer than the hint window gets no more hints (anti-entropy
/// brings it up to date when it returns); within the window it does, and the skipped ones are
/// counted.
#[test]
fn leaderless_keeps_no_hints_for_a_replica_down_past_the_hint_window() {
    let (members, mut node, mut store, opts) = lone_node(4, |c| c.max_hint_window_ms = 1_000);
    node.set_reachable(&members[1], false);
    node.tick(&mut store, 0); // notices n2 down at t=0
    let hints_for_n2 = |node: &mut Leaderless, store: &mut SimStore, now: u64| {
        for k in 0..100u32 {
            let key = Bytes::from(format!("k{k}").into_bytes());
            node.put(
                store,
                now,
                u64::from(k),
                key,
                Some(Bytes::from_static(b"v")),
                opts,
            );
        }
        node.take_actions()
            .into_iter()
            .filter(|a| {
                matches!(a, Action::Send { msg: Msg::StoreHint { target, .. }, .. }
                    if *target == NodeId::from("n2"))
            })
            .count()
    };
    let within = hints_for_n2(&mut node, &mut store, 500);
    assert!(within > 0, "no hints for n2 while within the window");
    assert_eq!(node.stats().hints_beyond_window, 0);
    let beyond = hints_for_n2(&mut node, &mut store, 1_500);
    assert_eq!(beyond, 0, "hints for n2 after 1.5 s down, window 1 s");
    assert_eq!(node.stats().hints_beyond_window as usize, within);

    // Back: hints again, and the window starts over at the next outage.
    node.set_reachable(&members[1], true);
    node.set_reachable(&members[1], false);
    node.tick(&mut store, 2_000);
    assert!(hints_for_n2(&mut node, &mut store, 2_500) > 0);
}

/// A read short of R responses after `hint_after` asks its silent replicas again, and again
/// every `hint_after` until its deadline (a lost request or reply would otherwise cost the
/// whole deadline, and on a lossy link one retry is not always enough).
#[test]
fn leaderless_read_asks_silent_replicas_again_every_hint_after() {
    let (_, mut node, mut store, opts) = lone_node(3, |c| c.hint_after_ms = 100);
    let remote_reads = |actions: Vec<Action>| {
        actions
            .into_iter()
            .filter(|a| {
                matches!(a, Action::Send { to, msg: Msg::Read { .. }, .. } if *to != NodeId::from("n1"))
            })
            .count()
    };
    node.get(0, 7, Bytes::from_static(b"k"), opts);
    assert_eq!(remote_reads(node.take_actions()), 2, "asks n2 and n3");
    // Every request to n2 and n3 is lost: nothing comes back.
    node.tick(&mut store, 50);
    assert_eq!(
        remote_reads(node.take_actions()),
        0,
        "too early to ask again"
    );
    node.tick(&mut store, 150);
    assert_eq!(
        remote_reads(node.take_actions()),
        2,
        "asked again after hint_after"
    );
    node.tick(&mut store, 200);
    assert_eq!(
        remote_reads(node.take_actions()),
        0,
        "not before another hint_after"
    );
    node.tick(&mut store, 250);
    assert_eq!(remote_reads(node.take_actions()), 2, "and again");
    node.tick(&mut store, 2_100);
    let after = node.take_actions();
    assert!(
        after
            .iter()
            .any(|a| matches!(a, Action::Read { result: Err(_), .. })),
        "the deadline answers: {after:?}"
    );
    node.tick(&mut store, 2_300);
    assert_eq!(
        remote_reads(node.take_actions()),
        0,
        "nothing after the deadline"
    );
}

/// A write whose replicas stay silent goes to them again every `hint_after` until they
/// acknowledge it (a lossy link loses the write or the acknowledgement), besides the hint; and
/// an acknowledgement of the resent write counts toward W.
#[test]
fn leaderless_write_goes_again_to_silent_replicas_until_they_acknowledge() {
    let remote_writes = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| {
                matches!(a, Action::Send { to, msg: Msg::Write { .. }, .. } if *to != NodeId::from("n1"))
            })
            .count()
    };
    // A key n1 coordinates (the first of its replicas on the ring; others are forwarded).
    let (members, mut node, mut store, first) = (0..100)
        .find_map(|k| {
            let (members, mut node, mut store, opts) = lone_node(3, |c| c.hint_after_ms = 100);
            let key = Bytes::from(format!("k{k}"));
            node.put(&mut store, 0, 9, key, Some(Bytes::from_static(b"v")), opts);
            let first = node.take_actions();
            (remote_writes(&first) > 0).then_some((members, node, store, first))
        })
        .expect("n1 coordinates some key");
    assert_eq!(remote_writes(&first), 2, "writes to n2 and n3");
    // n1's own copy: acknowledged to itself once durable.
    for a in first {
        if let Action::Send { to, msg, .. } = a
            && to == members[0]
        {
            node.step(&mut store, 1, &members[0], msg);
        }
    }
    node.tick(&mut store, 50);
    assert_eq!(remote_writes(&node.take_actions()), 0, "too early");
    node.tick(&mut store, 150);
    let again = node.take_actions();
    assert_eq!(remote_writes(&again), 2, "sent again after hint_after");
    // n2 acknowledges the resent write: W=2 is reached.
    let req = again
        .iter()
        .find_map(|a| match a {
            Action::Send {
                msg: Msg::Write { req, .. },
                ..
            } => Some(*req),
            _ => None,
        })
        .expect("a write");
    node.step(
        &mut store,
        160,
        &members[1],
        Msg::WriteAck {
            req,
            hlc: 0,
            superseded: false,
        },
    );
    let done = node.take_actions();
    assert!(
        done.iter().any(|a| matches!(
            a,
            Action::Write {
                req: 9,
                result: Ok(_)
            }
        )),
        "acknowledged: {done:?}"
    );
}

/// With `ReadFanout::Quorum` a read asks R replicas, its coordinator's own copy first; the
/// third is asked only when one of them is still silent after `hint_after`, and its answer
/// completes the read.
#[test]
fn leaderless_quorum_fanout_reads_r_replicas_and_the_others_only_when_one_is_silent() {
    let (members, mut node, mut store, opts) = lone_node(3, |c| {
        c.hint_after_ms = 100;
        c.read_fanout = ReadFanout::Quorum;
    });
    let reads = |actions: &[Action]| -> Vec<(NodeId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    msg: Msg::Read { req, .. },
                    ..
                } => Some((to.clone(), *req)),
                _ => None,
            })
            .collect()
    };
    node.get(0, 7, Bytes::from_static(b"k"), opts);
    let first = reads(&node.take_actions());
    assert_eq!(first.len(), 2, "R=2 replicas asked: {first:?}");
    assert_eq!(first[0].0, members[0], "its own copy first");
    let (asked, op) = first[1].clone();
    let unasked = members
        .iter()
        .find(|m| **m != members[0] && **m != asked)
        .expect("a third replica")
        .clone();
    // Its own copy answers; the other replica asked stays silent.
    let reply = |op| Msg::ReadReply {
        req: op,
        stored: None,
        hlc: 0,
    };
    node.step(&mut store, 10, &members[0], reply(op));
    assert!(node.take_actions().is_empty(), "one response of two");
    node.tick(&mut store, 150);
    let mut again: Vec<NodeId> = reads(&node.take_actions())
        .into_iter()
        .map(|r| r.0)
        .collect();
    again.sort();
    let mut expected = vec![asked, unasked.clone()];
    expected.sort();
    assert_eq!(
        again, expected,
        "the silent one again, and the one not asked"
    );
    node.step(&mut store, 160, &unasked, reply(op));
    let done = node.take_actions();
    assert!(
        done.iter().any(|a| matches!(
            a,
            Action::Read {
                req: 7,
                result: Ok(_)
            }
        )),
        "answered with two responses: {done:?}"
    );
}

/// A repeat of a forwarded write whose first copy was lost (sent 200 ms ago, at a forwarder's
/// clock 150 ms behind this node's) reaches a coordinator that started 250 ms ago. A node in
/// its first life (a new data directory) has no earlier life that could have run it: it runs
/// it. A restarted one cannot tell whether it ran the first before it restarted, whether or not
/// it recovered versions: it answers "outcome unknown" rather than run it twice. (The new node refused too before: in
/// `sim_leaderless_a_lossy_replica_fails_no_request`, seeds 6000..8000, 3% of runs had one
/// write fail so in a cluster's first second.)
#[test]
fn a_repeated_forward_is_run_by_a_new_coordinator_and_refused_by_a_restarted_one() {
    let members: Vec<NodeId> = (1..=3).map(|i| NodeId(format!("n{i}"))).collect();
    let boot_ms = 100_000u64;
    let repeat = |first_life: bool, floor: u64| {
        let mut cfg = Config::new(
            members[0].clone(),
            members.clone(),
            Quorum::new(3, 3, 2, 2).expect("quorum"),
        );
        cfg.first_life = first_life;
        let mut node = Leaderless::new(cfg, floor, boot_ms);
        let mut store = SimStore::default();
        let now = boot_ms + 250;
        // The forwarder's hybrid clock when it first sent: 200 ms ago, 150 ms behind.
        let sent_hlc = (now - 200 - 150) << 16;
        node.step(
            &mut store,
            now,
            &members[1],
            Msg::Forward {
                req: 7,
                key: Bytes::from_static(b"k"),
                value: Some(Bytes::from_static(b"v")),
                w: 2,
                timeout_ms: 1_800,
                degrade: false,
                age_ms: 200,
                sent_hlc,
            },
        );
        node.take_actions()
    };
    let ran = |actions: &[Action]| {
        actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    msg: Msg::Write { .. },
                    ..
                }
            )
        })
    };
    let refused = |actions: &[Action]| {
        actions.iter().any(|a| {
            matches!(a, Action::Send { msg: Msg::ForwardReply { result: Err(e), .. }, .. }
                if e.may_have_happened)
        })
    };
    let fresh = repeat(true, 0);
    assert!(
        ran(&fresh) && !refused(&fresh),
        "a new node runs it: {fresh:?}"
    );
    // Restarted: it recovers versions from an earlier life (a minute before).
    let restarted = repeat(false, (boot_ms - 60_000) << 16);
    assert!(
        refused(&restarted) && !ran(&restarted),
        "a restarted node refuses it: {restarted:?}"
    );
    // Restarted with nothing recovered (it crashed before its first write was durable, maybe
    // after sending that write on): still not a new node.
    let emptied = repeat(false, 0);
    assert!(
        refused(&emptied) && !ran(&emptied),
        "a restarted node that recovered nothing refuses it: {emptied:?}"
    );
}

/// A clock set ahead on purpose (`kvctl fault clock`) moves the versions a node gives by as
/// much; set back, its hybrid clock does not go back with it, and its versions stay ordered.
#[test]
fn a_clock_offset_moves_the_versions_a_node_gives_and_never_back() {
    let (members, mut node, mut store, opts) = lone_node(3, |_| {});
    // A key this node coordinates (the first of its replicas).
    let key = (0..100)
        .map(|k| Bytes::from(format!("k{k}")))
        .find(|k| node.replicas(k)[0] == members[0])
        .expect("a key n1 coordinates");
    let epoch_of_put = |node: &mut Leaderless, store: &mut SimStore, now: u64, v: &'static str| {
        node.put(store, now, 1, key.clone(), Some(Bytes::from(v)), opts);
        node.take_actions()
            .into_iter()
            .find_map(|a| match a {
                Action::Send {
                    msg: Msg::Write { stored, .. },
                    ..
                } => Some(stored.version.epoch),
                _ => None,
            })
            .expect("a write")
    };
    let now = 1_000_000;
    let first = epoch_of_put(&mut node, &mut store, now, "a");
    assert_eq!(kv_replica::leaderless::physical_ms(first), now);
    node.set_clock_offset(10_000);
    let ahead = epoch_of_put(&mut node, &mut store, now + 1, "b");
    assert_eq!(kv_replica::leaderless::physical_ms(ahead), now + 10_001);
    node.set_clock_offset(-10_000);
    let behind = epoch_of_put(&mut node, &mut store, now + 2, "c");
    assert!(behind > ahead, "never back: {behind} after {ahead}");
    assert_eq!(kv_replica::leaderless::physical_ms(behind), now + 10_001);
}

/// A replica that already holds a concurrent write with a higher version acknowledges a
/// write it hides, and says so; the coordinator names it in its answer (kvctl prints it: the
/// client learns that last-writer-wins hid its acknowledged write, which Cassandra keeps quiet).
#[test]
fn a_write_hidden_by_a_concurrent_higher_version_is_reported() {
    use kv_replica::Version;
    use kv_replica::leaderless::{Store as _, Stored, VClock};
    let stored = |epoch: u64, node: u32, v: &'static str| {
        let mut clock = VClock::default();
        clock.advance(node, epoch);
        Stored {
            value: Some(Bytes::from_static(v.as_bytes())),
            version: Version::new(epoch, u64::from(node)),
            clock,
            written_ms: 0,
        }
    };
    let acks = |actions: Vec<Action>| -> Vec<bool> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    msg: Msg::WriteAck { superseded, .. },
                    ..
                } => Some(superseded),
                _ => None,
            })
            .collect()
    };
    // Replica side: n1 holds n2's write at epoch 500; n3's concurrent write at 400 is hidden.
    let (members, mut node, mut store, _) = lone_node(3, |_| {});
    let key = Bytes::from_static(b"k");
    store.put(&key, &stored(500 << 16, 2, "ahead"));
    let write = |req, s| Msg::Write {
        req,
        key: key.clone(),
        stored: s,
    };
    node.step(
        &mut store,
        1,
        &members[2],
        write(1, stored(400 << 16, 3, "behind")),
    );
    assert_eq!(acks(node.take_actions()), vec![true], "hidden: said so");
    // A concurrent write with a higher version wins, and is not reported.
    node.step(
        &mut store,
        2,
        &members[2],
        write(2, stored(600 << 16, 3, "later")),
    );
    assert_eq!(acks(node.take_actions()), vec![false]);
    // Coordinator side: n2's acknowledgement says hidden; the answer names n2.
    let (members, mut node, mut store, opts) = lone_node(3, |_| {});
    let key = (0..100)
        .map(|k| Bytes::from(format!("k{k}")))
        .find(|k| node.replicas(k)[0] == members[0])
        .expect("a key n1 coordinates");
    node.put(&mut store, 0, 9, key, Some(Bytes::from_static(b"v")), opts);
    let mut req = None;
    for a in node.take_actions() {
        if let Action::Send { to, msg, .. } = a {
            match msg {
                Msg::Write { req: r, .. } if to == members[1] => req = Some(r),
                m if to == members[0] => node.step(&mut store, 1, &members[0], m),
                _ => {}
            }
        }
    }
    let req = req.expect("a write to n2");
    let ack = Msg::WriteAck {
        req,
        hlc: 0,
        superseded: true,
    };
    node.step(&mut store, 2, &members[1], ack);
    let ok = node
        .take_actions()
        .into_iter()
        .find_map(|a| match a {
            Action::Write { req: 9, result } => Some(result),
            _ => None,
        })
        .expect("answered")
        .expect("acknowledged by W=2");
    assert_eq!(ok.superseded_on, vec![members[1].clone()], "{ok:?}");
}

/// The coordinator's acknowledgement of its own copy is lazy (it may share a later flush)
/// only while the other replicas believed reachable can make W without it: at W=2 with both
/// others up; not at W=3, nor with one of the others down.
#[test]
fn leaderless_own_copy_waits_lazily_only_when_the_others_can_make_w() {
    // Whether n1 coordinates `key` and, if so, the `lazy` of its acknowledgement to itself.
    let own_ack = |w: u32, down: Option<usize>, key: &Bytes| {
        let (members, mut node, mut store, mut opts) = lone_node(3, |_| {});
        opts.quorum = w;
        if let Some(d) = down {
            node.set_reachable(&members[d], false);
        }
        node.put(
            &mut store,
            0,
            9,
            key.clone(),
            Some(Bytes::from_static(b"v")),
            opts,
        );
        node.take_actions().into_iter().find_map(|a| match a {
            Action::Send {
                to,
                msg: Msg::WriteAck { .. },
                after: Some(_),
                lazy,
            } if to == members[0] => Some(lazy),
            _ => None,
        })
    };
    // A key n1 coordinates with every replica up (the first of its replicas on the ring).
    let key = (0..100)
        .map(|k| Bytes::from(format!("k{k}")))
        .find(|k| own_ack(2, None, k).is_some())
        .expect("n1 coordinates some key");
    assert_eq!(own_ack(2, None, &key), Some(true), "W=2: n2 and n3 suffice");
    assert_eq!(own_ack(3, None, &key), Some(false), "W=3 needs n1's copy");
    // With n2 or n3 down, n1's copy is one of the two W needs.
    for down in [1, 2] {
        let lazy = own_ack(2, Some(down), &key);
        assert_eq!(lazy, Some(false), "n{} down: W=2 needs n1's copy", down + 1);
    }
}

/// A write forwarded to its coordinator goes on to the other replicas (and to hint holders)
/// only once the coordinator's own copy is durable, and that copy's acknowledgement hurries;
/// a client's write to the same coordinator goes out at once (seed 911866 above).
#[test]
fn leaderless_forwarded_write_leaves_its_coordinator_only_once_its_copy_is_durable() {
    // What n1 sends for a write of `key` from a client, or forwarded by n2; n3 down.
    let sends = |forwarded: bool, key: &Bytes| {
        let (members, mut node, mut store, opts) = lone_node(4, |_| {});
        node.set_reachable(&members[2], false);
        let value = Some(Bytes::from_static(b"v"));
        if forwarded {
            let msg = Msg::Forward {
                req: 7,
                key: key.clone(),
                value,
                w: 2,
                timeout_ms: 2_000,
                degrade: false,
                age_ms: 0,
                sent_hlc: 1,
            };
            node.step(&mut store, 0, &members[1], msg);
        } else {
            node.put(&mut store, 0, 9, key.clone(), value, opts);
        }
        let lsn = store.last_lsn();
        let sends: Vec<(String, &'static str, Option<u64>, bool)> = node
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    msg,
                    after,
                    lazy,
                } => {
                    let kind = match msg {
                        Msg::Write { .. } => "write",
                        Msg::WriteAck { .. } => "ack",
                        Msg::StoreHint { .. } => "hint",
                        _ => return None,
                    };
                    Some((to.0, kind, after.filter(|&a| a == lsn), lazy))
                }
                _ => None,
            })
            .collect();
        sends
    };
    // A key whose replicas are n1 (first), n2 and n3, so that n1 coordinates it.
    let (_, probe, _, _) = lone_node(4, |_| {});
    let key = (0..200)
        .map(|k| Bytes::from(format!("k{k}")))
        .find(|k| {
            let r = probe.replicas(k);
            r.len() == 3 && r[0].0 == "n1" && r.iter().any(|n| n.0 == "n3")
        })
        .expect("a key n1 coordinates, with n3 a replica");
    let client = sends(false, &key);
    let forwarded = sends(true, &key);
    assert!(
        client.iter().any(|s| s.1 == "write") && client.iter().any(|s| s.1 == "hint"),
        "{client:?}"
    );
    for (to, kind, after, lazy) in &client {
        match *kind {
            "ack" => assert!(after.is_some(), "{client:?}"),
            _ => assert!(
                after.is_none() && !lazy,
                "a client's write to {to}: {client:?}"
            ),
        }
    }
    assert_eq!(forwarded.len(), client.len(), "{forwarded:?}");
    for (to, kind, after, lazy) in &forwarded {
        assert!(
            after.is_some() && !lazy,
            "a forwarded write's {kind} to {to} waits for n1's copy: {forwarded:?}"
        );
    }
}
