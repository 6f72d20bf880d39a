//! Deterministic simulation of the leader-follower core: N replicas, a seeded network that
//! loses, duplicates, delays and reorders messages, partitions, crashes and restarts — and the
//! protocol's invariants checked after every step.
//!
//! Invariants (Raft, Figure 3, plus write concern):
//! - election safety: at most one leader per term;
//! - log matching: two logs with an entry of the same index and term agree on everything up to
//!   it (checked incrementally: the same (index, term) always carries the same command and the
//!   same previous term);
//! - state machine safety: no two replicas apply different entries at one index;
//! - leader completeness for acknowledged writes: an entry acknowledged with W >= majority is in
//!   the log of every later leader, so it is never lost or changed;
//! - write concern: when a write is acknowledged, W replicas durably hold it (log or snapshot);
//! - read-index: a confirmed leader read waits for every W >= majority write acknowledged before
//!   the read began;
//! - convergence: once faults heal, every replica applies the same log;
//! - no silent loss: an acknowledged write missing from the healed log was reported rolled
//!   back (truncated or replaced by a snapshot) by some node;
//! - snapshots (nodes compact their logs at random): a snapshot a follower installs holds
//!   exactly the entries every other replica applied at those indexes;
//! - linearizability: the clients' history (W >= majority writes, leader reads at their read
//!   index, W < majority writes as "unknown") passes kv-checker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use kv_replica::NodeId;
use kv_replica::leader_follower::{
    Action, Command, Config, Entry, HardState, LogIndex, Message, Replica, Role, Snapshot,
};
use kv_replica::pipeline::Pipeline;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How far back, in ticks, a node's leadership claims count for the split-brain check.
const LEADERS_WINDOW: u64 = 3000;

/// What one simulation run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Replicas.
    pub nodes: usize,
    /// Steps (ticks) with faults and client traffic.
    pub steps: u64,
    /// Steps after healing, with no faults and no traffic.
    pub settle_steps: u64,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Messages take 1..=max_delay ticks (so they overtake each other).
    pub max_delay: u64,
    /// Per step: probability of a client write / read.
    pub propose: f64,
    /// Per step: probability of a read.
    pub read: f64,
    /// Per step: probability of crashing a live node / restarting a dead one.
    pub crash: f64,
    /// Restart probability per step.
    pub restart: f64,
    /// Per step: probability of a new random partition / of healing.
    pub partition: f64,
    /// Heal probability per step.
    pub heal: f64,
    /// Per step: probability of pausing a running node (a GC or VM pause, SIGSTOP) for 5 to
    /// 60 ticks: it neither ticks nor reads, its messages wait for it, and it resumes with the
    /// state it had, the way the driver does (one tick, not a burst of the ones missed).
    pub pause: f64,
    /// 0: a partition splits the nodes into two sides. Above 0: each one-way link is cut with
    /// this probability instead, so a node may be heard but not hear, and two nodes that cannot
    /// reach each other may both reach a third (partial and asymmetric partitions).
    pub link_cut: f64,
    /// Per step: probability that a node's pending log writes become durable (until then the
    /// replica goes on, and a crash loses them).
    pub sync: f64,
    /// Per step: probability that a node compacts its log up to what it applied (the
    /// snapshot is written asynchronously, like the driver's, and lost by a crash before).
    pub compact: f64,
    /// Election timeouts are drawn from `[min, max)` ticks (`--election-timeout` in the node);
    /// a leader sends heartbeats every `heartbeat_ticks`.
    pub election_ticks: (u32, u32),
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            steps: 1500,
            settle_steps: 400,
            drop: 0.05,
            dup: 0.02,
            max_delay: 4,
            propose: 0.3,
            read: 0.1,
            crash: 0.004,
            restart: 0.02,
            partition: 0.004,
            heal: 0.02,
            pause: 0.0,
            link_cut: 0.0,
            sync: 0.5,
            compact: 0.01,
            election_ticks: (10, 20),
            heartbeat_ticks: 3,
        }
    }
}

struct Packet {
    at: u64,
    from: usize,
    to: usize,
    msg: Message,
}

impl Node {
    /// Whether the entry (index, term) is durable here, in the log or the snapshot.
    fn holds(&self, index: u64, term: u64) -> bool {
        let base = self.log_base();
        if index > base {
            self.log
                .get((index - base - 1) as usize)
                .is_some_and(|e| e.term.0 == term)
        } else {
            self.snapshot.term_at(LogIndex(index)).map(|t| t.0) == Some(term)
        }
    }

    /// The durable log starts after this index.
    fn log_base(&self) -> u64 {
        self.log
            .first()
            .map_or(self.snapshot.index.0, |e| e.index.0 - 1)
    }
}

/// A write the simulated disk has not made durable yet.
enum Pending {
    /// A batch's durable state.
    Batch(Vec<Action>),
    /// A compaction: the snapshot and the log and hard state to rewrite (as the driver does).
    Rewrite(Snapshot, HardState, Vec<Entry>),
}

struct Node {
    replica: Option<Replica>,
    /// What waits for which batch to be durable (the driver's own logic).
    pipeline: Pipeline,
    /// Writes submitted and not yet durable, in order, with their batch numbers (0 for
    /// compactions): a crash loses them.
    unsynced: Vec<(u64, Pending)>,
    hard: HardState,
    /// The durable snapshot (index 0: none).
    snapshot: Snapshot,
    /// The durable log: from just after the snapshot, or from a little before it.
    log: Vec<Entry>,
    /// The state machine: every entry applied, from index 1 (restored from the snapshot on a
    /// restart or an install, then extended by `Apply`).
    applied: Vec<Entry>,
    /// Paused (does nothing) until this step.
    paused_until: u64,
}

/// What a run observed, for the test to report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Writes a leader accepted.
    pub proposed: u64,
    /// Writes acknowledged to clients.
    pub acked: u64,
    /// Of those, with W >= majority.
    pub acked_majority: u64,
    /// Entries truncated from some log (rolled back).
    pub rolled_back: u64,
    /// Reads confirmed.
    pub reads: u64,
    /// Distinct terms that had a leader.
    pub terms_with_leader: u64,
    /// The highest term at the end: elections held, won or not.
    pub terms: u64,
    /// Highest commit index at the end.
    pub commit: u64,
    /// Client operations whose history kv-checker found linearizable.
    pub checked_ops: u64,
    /// Snapshots followers installed from a leader.
    pub restored: u64,
    /// Truncated entries a node found committed after all.
    pub survived: u64,
    /// Steps at which some node heard two leaders at overlapping times within the last 3,000
    /// ticks (`Replica::leaders_observed` >= 2: what `kv_leaders_observed` reports).
    pub split_brain_heard: u64,
    /// Runs whose leader, once settled, had committed entries its own disk did not hold yet
    /// (a majority of followers held them): the convergence check compares commit indexes
    /// with the leader's log, not its disk.
    pub settled_ahead_of_leader_disk: u64,
    /// Votes that made a node leader while it asked for pre-votes for the next term: they
    /// came after its election timed out, for the term it still campaigned in.
    pub elected_by_late_vote: u64,
    /// Replies to a leader that left while the node's own term or vote was still being
    /// written.
    pub replies_ahead_of_term_write: u64,
    /// Replies to a leader that left while a truncation of the node's log was still being
    /// written.
    pub replies_ahead_of_truncation: u64,
    /// Writes below a majority acknowledged on a reply from a replica that has since rolled
    /// them back (the leader acknowledging them had not heard of the newer leader yet).
    pub acked_after_rollback: u64,
}

impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, s: &Stats) {
        let Stats {
            proposed,
            acked,
            acked_majority,
            rolled_back,
            reads,
            terms_with_leader,
            terms,
            commit,
            checked_ops,
            restored,
            survived,
            split_brain_heard,
            settled_ahead_of_leader_disk,
            elected_by_late_vote,
            replies_ahead_of_term_write,
            replies_ahead_of_truncation,
            acked_after_rollback,
        } = s;
        self.proposed += proposed;
        self.acked += acked;
        self.acked_majority += acked_majority;
        self.rolled_back += rolled_back;
        self.reads += reads;
        self.terms_with_leader += terms_with_leader;
        self.terms += terms;
        self.commit += commit;
        self.checked_ops += checked_ops;
        self.restored += restored;
        self.survived += survived;
        self.split_brain_heard += split_brain_heard;
        self.settled_ahead_of_leader_disk += settled_ahead_of_leader_disk;
        self.elected_by_late_vote += elected_by_late_vote;
        self.replies_ahead_of_term_write += replies_ahead_of_term_write;
        self.replies_ahead_of_truncation += replies_ahead_of_truncation;
        self.acked_after_rollback += acked_after_rollback;
    }
}

/// One seeded simulation.
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    members: Vec<NodeId>,
    nodes: Vec<Node>,
    net: Vec<Packet>,
    now: u64,
    blocked: BTreeSet<(usize, usize)>,
    faults: bool,
    leaders: BTreeMap<u64, usize>,
    /// (index, term) -> (command, previous entry's term): log matching.
    entries: HashMap<(u64, u64), (Command, u64)>,
    /// index -> the entry applied there.
    applied_at: BTreeMap<u64, Entry>,
    /// (index, term) of writes acknowledged with W >= majority.
    acked_majority: Vec<(u64, u64)>,
    /// (index, term) of every write acknowledged (any W).
    acked_any: Vec<(u64, u64)>,
    /// (index, term) of every entry some node reported rolled back.
    reported_rolled_back: BTreeSet<(u64, u64)>,
    /// (node, index, term, step) of each truncation report.
    truncated: Vec<(usize, u64, u64, u64)>,
    /// (node, index, term) a node reported committed after all.
    survived: BTreeSet<(usize, u64, u64)>,
    /// Each node's last boot step.
    booted: Vec<u64>,
    /// (index, term) of entries a snapshot install reported rolled back: certainly lost.
    lost: Vec<(u64, u64)>,
    /// Pending reads: id -> highest W >= majority acked index when the read began.
    reads: HashMap<u64, u64>,
    next_id: u64,
    w_of: HashMap<u64, u32>,
    stats: Stats,
    seed: u64,
    /// Client operations for kv-checker: writes (key, value, start) and reads (key, start).
    write_meta: HashMap<u64, (String, String, u64)>,
    read_meta: HashMap<u64, (String, u64)>,
    history: Vec<kv_checker::Op>,
    /// Snapshot contents: a snapshot's data is the index of its state machine here.
    snapshots: Vec<Vec<Entry>>,
}

impl Sim {
    /// A cluster of `cfg.nodes` fresh replicas.
    pub fn new(seed: u64, cfg: SimConfig) -> Self {
        let members: Vec<NodeId> = (1..=cfg.nodes).map(|i| NodeId(format!("n{i}"))).collect();
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            members,
            net: Vec::new(),
            now: 0,
            blocked: BTreeSet::new(),
            faults: true,
            leaders: BTreeMap::new(),
            entries: HashMap::new(),
            applied_at: BTreeMap::new(),
            acked_majority: Vec::new(),
            acked_any: Vec::new(),
            reported_rolled_back: BTreeSet::new(),
            truncated: Vec::new(),
            survived: BTreeSet::new(),
            booted: Vec::new(),
            lost: Vec::new(),
            reads: HashMap::new(),
            next_id: 1,
            w_of: HashMap::new(),
            stats: Stats::default(),
            seed,
            write_meta: HashMap::new(),
            read_meta: HashMap::new(),
            history: Vec::new(),
            snapshots: vec![Vec::new()],
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            sim.nodes.push(Node {
                replica: None,
                pipeline: Pipeline::new(true),
                unsynced: Vec::new(),
                hard: HardState::default(),
                snapshot: Snapshot::default(),
                log: Vec::new(),
                applied: Vec::new(),
                paused_until: 0,
            });
            sim.boot(i);
        }
        sim
    }

    fn boot(&mut self, i: usize) {
        let cfg = Config {
            id: self.members[i].clone(),
            members: self.members.clone(),
            election_ticks: self.cfg.election_ticks,
            heartbeat_ticks: self.cfg.heartbeat_ticks,
            max_batch: 8,
            // The count bounds appends here (the byte bound cuts them the same way; a unit
            // test covers it): the scenario searches' seeds depend on this batching.
            max_batch_bytes: u64::MAX,
            max_apply: 4,
        };
        let rng = Box::new(StdRng::seed_from_u64(self.rng.random()));
        if self.booted.len() <= i {
            self.booted.resize(i + 1, 0);
        }
        self.booted[i] = self.now;
        let state = self.snapshot_state(&self.nodes[i].snapshot);
        let n = &mut self.nodes[i];
        n.replica = Some(Replica::new(
            cfg,
            n.hard,
            n.snapshot.clone(),
            n.log.clone(),
            rng,
        ));
        n.pipeline = Pipeline::new(true);
        n.unsynced.clear();
        n.applied = state;
        n.paused_until = 0;
    }

    fn paused(&self, i: usize) -> bool {
        self.now < self.nodes[i].paused_until
    }

    /// The state machine a snapshot holds.
    fn snapshot_state(&self, s: &Snapshot) -> Vec<Entry> {
        let id = s
            .data
            .as_ref()
            .try_into()
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        let state = self.snapshots[id as usize].clone();
        if state.len() as u64 != s.index.0 {
            self.fail(format!(
                "snapshot at index {} holds {} entries",
                s.index.0,
                state.len()
            ));
        }
        state
    }

    /// Compacts node `i`'s log up to what its state machine applied, as the driver does once
    /// its actions are carried out: the rewrite is queued behind the batches before it.
    fn compact(&mut self, i: usize) {
        let id = self.snapshots.len() as u64;
        let n = &mut self.nodes[i];
        let Some(r) = n.replica.as_mut() else {
            return;
        };
        let index = LogIndex(n.applied.len() as u64);
        let keep = self.rng.random_range(0..6);
        if !r.compact(index, Bytes::copy_from_slice(&id.to_le_bytes()), keep) {
            return;
        }
        let job = Pending::Rewrite(r.snapshot().clone(), r.hard_state(), r.log().to_vec());
        n.unsynced.push((0, job));
        let state = n.applied.clone();
        self.snapshots.push(state);
    }

    /// `KV_SIM_TRACE`: one line per settling step (`KV_SIM_TRACE=all`: per step), each node's
    /// role, term, vote, commit, last index, writes in flight, leader, and the leaders it heard
    /// at overlapping times (`Replica::leaders_observed`).
    fn trace_step(&self) {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.replica {
                None => format!("n{} down", i + 1),
                Some(_) if self.paused(i) => format!("n{} paused", i + 1),
                Some(r) => format!(
                    "n{} {:?} t{} v{} c{} l{} w{} ->{} heard{}",
                    i + 1,
                    r.role(),
                    r.term().0,
                    r.hard_state()
                        .voted_for
                        .map_or_else(|| "-".to_string(), |v| format!("n{}", v + 1)),
                    r.commit_index().0,
                    r.last_index().0,
                    n.pipeline.in_flight(),
                    r.leader().map_or("-", |l| l.0.as_str()),
                    r.leaders_observed(LEADERS_WINDOW),
                ),
            })
            .collect();
        eprintln!("step {}: {}", self.now, nodes.join(" | "));
    }

    fn majority(&self) -> u32 {
        (self.cfg.nodes / 2 + 1) as u32
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: step {}: {what}", self.seed, self.now);
    }

    /// Carries out a node's actions the way the driver does: durable state goes to a write that
    /// completes at some later step ([`Sim::sync`]); what must wait for it waits in the node's
    /// [`Pipeline`]; the rest happens now.
    fn drain(&mut self, i: usize) {
        loop {
            let n = &mut self.nodes[i];
            let Some(r) = n.replica.as_mut() else {
                return;
            };
            let actions = r.take_actions();
            if actions.is_empty() {
                return;
            }
            let records: Vec<Action> = actions
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::PersistHardState(_)
                            | Action::Truncate { .. }
                            | Action::PersistEntries(_)
                            | Action::Restore { .. }
                    )
                })
                .cloned()
                .collect();
            let (now, batch) = n.pipeline.submit(r, actions);
            if let Some(seq) = batch {
                n.unsynced.push((seq, Pending::Batch(records)));
            }
            if now.iter().any(is_append_reply) {
                let writing = |f: fn(&Action) -> bool| {
                    n.unsynced.iter().any(|(_, p)| match p {
                        Pending::Batch(records) => records.iter().any(f),
                        Pending::Rewrite(..) => false,
                    })
                };
                if writing(|a| matches!(a, Action::PersistHardState(_))) {
                    self.stats.replies_ahead_of_term_write += 1;
                }
                if writing(|a| matches!(a, Action::Truncate { .. })) {
                    self.stats.replies_ahead_of_truncation += 1;
                }
            }
            for a in now {
                self.carry_out(i, a);
            }
        }
    }

    /// The node's pending writes become durable, in order; what waited for them happens.
    fn sync(&mut self, i: usize) {
        if self.nodes[i].replica.is_none() {
            return;
        }
        let batches = std::mem::take(&mut self.nodes[i].unsynced);
        let Some(last) = batches.iter().map(|(seq, _)| *seq).max() else {
            return;
        };
        for (_, job) in batches {
            let records = match job {
                Pending::Batch(records) => records,
                Pending::Rewrite(snapshot, hard, log) => {
                    let n = &mut self.nodes[i];
                    n.snapshot = snapshot;
                    n.hard = hard;
                    n.log = log;
                    continue;
                }
            };
            for a in records {
                let base = self.nodes[i].log_base();
                match a {
                    Action::PersistHardState(h) => self.nodes[i].hard = h,
                    Action::Truncate { from, removed } => {
                        if from.0 <= base {
                            self.fail(format!(
                                "n{} truncates from {} inside its snapshot at {base}",
                                i + 1,
                                from.0
                            ));
                        }
                        self.nodes[i].log.truncate((from.0 - base) as usize - 1);
                        self.stats.rolled_back += removed.len() as u64;
                        self.reported_rolled_back
                            .extend(removed.iter().map(|e| (e.index.0, e.term.0)));
                        let now = self.now;
                        self.truncated
                            .extend(removed.iter().map(|e| (i, e.index.0, e.term.0, now)));
                    }
                    Action::Restore {
                        snapshot,
                        rolled_back,
                    } => {
                        self.nodes[i].snapshot = snapshot;
                        self.nodes[i].log.clear();
                        self.stats.rolled_back += rolled_back.len() as u64;
                        self.reported_rolled_back
                            .extend(rolled_back.iter().map(|e| (e.index.0, e.term.0)));
                        self.lost
                            .extend(rolled_back.iter().map(|e| (e.index.0, e.term.0)));
                        self.stats.restored += 1;
                    }
                    Action::PersistEntries(es) => {
                        for e in &es {
                            let n = &self.nodes[i];
                            let last = n.log_base() + n.log.len() as u64;
                            if e.index.0 != last + 1 {
                                self.fail(format!(
                                    "n{} persisted index {} after {last}",
                                    i + 1,
                                    e.index.0
                                ));
                            }
                            let prev_term = n.log.last().map_or_else(
                                || {
                                    let b = LogIndex(n.log_base());
                                    if b == n.snapshot.index {
                                        n.snapshot.term.0
                                    } else {
                                        n.snapshot.term_at(b).map_or(0, |t| t.0)
                                    }
                                },
                                |p| p.term.0,
                            );
                            self.nodes[i].log.push(e.clone());
                            self.check_log_matching(e, prev_term);
                        }
                    }
                    _ => {}
                }
            }
        }
        let n = &mut self.nodes[i];
        let Some(r) = n.replica.as_mut() else {
            return;
        };
        let released = n.pipeline.durable(r, last);
        for a in released {
            self.carry_out(i, a);
        }
        self.drain(i);
    }

    /// One action that is not about durable state.
    fn carry_out(&mut self, i: usize, a: Action) {
        match a {
            Action::Send { to, msg } => {
                let to = self.members.iter().position(|m| *m == to).expect("member");
                self.send(i, to, msg);
            }
            Action::Apply(es) => {
                for e in es {
                    self.check_apply(i, e);
                }
            }
            Action::Survived(es) => {
                self.stats.survived += es.len() as u64;
                self.survived
                    .extend(es.iter().map(|e| (i, e.index.0, e.term.0)));
            }
            Action::Restore { snapshot, .. } => {
                // The installed state machine must be what every replica applied there.
                let state = self.snapshot_state(&snapshot);
                for e in &state {
                    self.check_applied_at(e);
                }
                self.nodes[i].applied = state;
            }
            Action::Acked { id, version, .. } => {
                self.stats.acked += 1;
                self.acked_any.push((version.counter, version.epoch));
                // Write concern: W replicas durably hold it when it is acknowledged. Below a
                // majority a holder may have truncated it since its reply, for a newer leader
                // the acknowledging one has not heard of (seed 34014021 of five paused
                // nodes): then it is in that holder's rollback file already, as it would be
                // had the truncation come just after the acknowledgement.
                let w = self.w_of.get(&id).copied().unwrap_or(0) as usize;
                let holders = self
                    .nodes
                    .iter()
                    .filter(|n| n.holds(version.counter, version.epoch))
                    .count();
                let rolled_back = self
                    .reported_rolled_back
                    .contains(&(version.counter, version.epoch));
                if holders < w && (w as u32) < self.majority() && rolled_back {
                    self.stats.acked_after_rollback += 1;
                } else if holders < w {
                    self.fail(format!(
                        "write at index {} acknowledged with w={w} while {holders} replicas hold it",
                        version.counter
                    ));
                }
                let majority = self.w_of.get(&id).copied().unwrap_or(0) >= self.majority();
                if let Some((key, value, start)) = self.write_meta.remove(&id) {
                    // W < majority: acknowledged, but a fail-over may take it back.
                    let outcome = if majority {
                        kv_checker::Outcome::Ok
                    } else {
                        kv_checker::Outcome::Unknown
                    };
                    self.record(kv_checker::OpKind::Write, key, Some(value), start, outcome);
                }
                if self.w_of.get(&id).copied().unwrap_or(0) >= self.majority() {
                    self.stats.acked_majority += 1;
                    self.acked_majority.push((version.counter, version.epoch));
                }
            }
            Action::ReadReady { id, index } => {
                if let Some((key, start)) = self.read_meta.remove(&id) {
                    // The key's value as of the read index: the state machine, then the log.
                    let n = &self.nodes[i];
                    let value = n.replica.as_ref().and_then(|r| {
                        let applied = n.applied.len() as u64;
                        n.applied
                            .iter()
                            .take(index.0 as usize)
                            .chain(
                                r.log()
                                    .iter()
                                    .filter(|e| e.index.0 > applied && e.index <= index),
                            )
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .find_map(|e| match &e.cmd {
                                Command::Put { key: k, value } if k[..] == *key.as_bytes() => {
                                    Some(String::from_utf8_lossy(value).into_owned())
                                }
                                _ => None,
                            })
                    });
                    self.record(
                        kv_checker::OpKind::Read,
                        key,
                        value,
                        start,
                        kv_checker::Outcome::Ok,
                    );
                }
                if let Some(need) = self.reads.remove(&id) {
                    if index.0 < need {
                        self.fail(format!(
                            "read {id} confirmed at index {} but a write acknowledged before it began is at {need}",
                            index.0
                        ));
                    }
                    self.stats.reads += 1;
                }
            }
            Action::ReadFailed { id } => {
                self.reads.remove(&id);
                self.read_meta.remove(&id);
            }
            _ => {}
        }
    }

    /// Hands the run's history to kv-checker: with W >= majority writes and read-index reads,
    /// it must be linearizable (W < majority writes are "unknown": a fail-over may take them
    /// back; proposals never answered are unknown too).
    fn check_history(&mut self) {
        let open: Vec<(String, String, u64)> =
            std::mem::take(&mut self.write_meta).into_values().collect();
        for (key, value, start) in open {
            self.record(
                kv_checker::OpKind::Write,
                key,
                Some(value),
                start,
                kv_checker::Outcome::Unknown,
            );
        }
        let report = kv_checker::check(
            &self.history,
            Some(std::time::Duration::from_secs(20)),
            1,
            false,
        );
        match report.verdict() {
            kv_checker::Verdict::Linearizable => {}
            kv_checker::Verdict::Violation => {
                let pictures: Vec<String> = report
                    .violations()
                    .iter()
                    .map(|v| kv_checker::render::text(v))
                    .collect();
                self.fail(format!(
                    "the history of {} operations is not linearizable:\n{}",
                    self.history.len(),
                    pictures.join("\n")
                ));
            }
            kv_checker::Verdict::Unknown => self.fail(format!(
                "kv-checker could not decide the history: {:?}",
                report.keys
            )),
        }
        self.stats.checked_ops += self.history.len() as u64;
    }

    fn record(
        &mut self,
        op: kv_checker::OpKind,
        key: String,
        value: Option<String>,
        start: u64,
        outcome: kv_checker::Outcome,
    ) {
        self.history.push(kv_checker::Op {
            client: start,
            op,
            key,
            value,
            expected: None,
            applied: None,
            start_ns: start,
            end_ns: self.now * 2 + 1,
            outcome,
            version: None,
            node: None,
        });
    }

    fn check_log_matching(&mut self, e: &Entry, prev_term: u64) {
        let key = (e.index.0, e.term.0);
        match self.entries.get(&key) {
            Some((cmd, pt)) if *cmd != e.cmd || *pt != prev_term => self.fail(format!(
                "log matching: two entries at index {} term {} differ ({:?}/{} vs {:?}/{})",
                e.index.0, e.term.0, cmd, pt, e.cmd, prev_term
            )),
            Some(_) => {}
            None => {
                self.entries.insert(key, (e.cmd.clone(), prev_term));
            }
        }
    }

    fn check_apply(&mut self, i: usize, e: Entry) {
        let n = &mut self.nodes[i];
        if e.index.0 != n.applied.len() as u64 + 1 {
            let got = e.index.0;
            let had = n.applied.len();
            self.fail(format!("n{} applied index {got} after {had}", i + 1));
        }
        n.applied.push(e.clone());
        self.check_applied_at(&e);
    }

    fn check_applied_at(&mut self, e: &Entry) {
        match self.applied_at.get(&e.index.0) {
            Some(other) if other != e => self.fail(format!(
                "state machine safety: index {} applied as {:?} and as {:?}",
                e.index.0, other, e
            )),
            Some(_) => {}
            None => {
                self.applied_at.insert(e.index.0, e.clone());
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        if self.blocked.contains(&(from, to)) {
            return;
        }
        if self.faults && self.rng.random_bool(self.cfg.drop) {
            return;
        }
        let copies = if self.faults && self.rng.random_bool(self.cfg.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.faults {
                self.rng.random_range(1..=self.cfg.max_delay)
            } else {
                1
            };
            self.net.push(Packet {
                at: self.now + delay,
                from,
                to,
                msg: msg.clone(),
            });
        }
    }

    fn check_leaders(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(r) = &self.nodes[i].replica else {
                continue;
            };
            if r.role() != Role::Leader {
                continue;
            }
            // What its metrics report stays within its log: a follower lacks no more than the
            // leader holds, is behind in time only while it lacks something, and the leader
            // hears itself lead.
            let last = r.last_index().0;
            for (f, entries, ticks) in r.follower_lag() {
                if entries > last || (entries == 0 && ticks != 0) {
                    self.fail(format!(
                        "n{} reports {f} {entries} entries / {ticks} ticks behind, last {last}",
                        i + 1
                    ));
                }
            }
            if r.leaders_observed(u64::MAX) == 0 {
                self.fail(format!("leader n{} does not count itself", i + 1));
            }
            let term = r.term().0;
            match self.leaders.get(&term) {
                Some(&other) if other != i => self.fail(format!(
                    "election safety: n{} and n{} both lead term {term}",
                    other + 1,
                    i + 1
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert(term, i);
                    self.stats.terms_with_leader += 1;
                    // Leader completeness for acknowledged W >= majority writes: an entry is
                    // acknowledged in its own term (by the leader that appended it, or never),
                    // so leaders of later terms must hold it. Not one of an earlier term: a
                    // candidate paused with the votes of term 7 in hand wins it on resuming,
                    // after term 8 acknowledged writes (seed 33126857 of the pauses); it holds
                    // none of them, and no follower takes its appends.
                    for &(index, t) in self.acked_majority.iter().filter(|&&(_, t)| t < term) {
                        let index_ = LogIndex(index);
                        let held = r
                            .entry(index_)
                            .map(|e| e.term)
                            .or_else(|| r.snapshot().term_at(index_));
                        let has = held.map(|t| t.0) == Some(t);
                        if !has {
                            self.fail(format!(
                                "n{} leads term {term} without the write acknowledged at index {index} term {t}",
                                i + 1
                            ));
                        }
                    }
                }
            }
        }
    }

    fn client(&mut self) {
        let i = self.rng.random_range(0..self.nodes.len());
        if self.nodes[i].replica.is_none() || self.paused(i) {
            return;
        }
        if self.rng.random_bool(self.cfg.propose) {
            let id = self.next_id;
            self.next_id += 1;
            let n = self.cfg.nodes as u32;
            let w = match self.rng.random_range(0..3) {
                0 => 1,
                1 => self.majority(),
                _ => n,
            };
            self.w_of.insert(id, w);
            let k = format!("k{}", self.rng.random_range(0..5));
            let cmd = Command::Put {
                key: Bytes::from(k.clone()),
                value: Bytes::from(id.to_string()),
            };
            if let Some(r) = self.nodes[i].replica.as_mut()
                && r.propose(id, cmd, w).is_ok()
            {
                self.stats.proposed += 1;
                // Times are 2*step (starts) and 2*step+1 (ends): an answer given in a step
                // precedes an operation started in the next one, not one in the same step.
                self.write_meta
                    .insert(id, (k, id.to_string(), self.now * 2));
            }
            self.drain(i);
        } else if self.rng.random_bool(self.cfg.read) {
            let id = self.next_id;
            self.next_id += 1;
            let need = self
                .acked_majority
                .iter()
                .map(|&(idx, _)| idx)
                .max()
                .unwrap_or(0);
            if let Some(r) = self.nodes[i].replica.as_mut()
                && r.read(id).is_ok()
            {
                self.reads.insert(id, need);
                let k = format!("k{}", self.rng.random_range(0..5));
                self.read_meta.insert(id, (k, self.now * 2));
            }
            self.drain(i);
        }
    }

    fn faults(&mut self) {
        let n = self.nodes.len();
        if self.rng.random_bool(self.cfg.crash) {
            let i = self.rng.random_range(0..n);
            // What was not yet durable is lost with the process.
            self.nodes[i].replica = None;
            self.nodes[i].unsynced.clear();
            self.net.retain(|p| p.to != i);
        }
        if self.rng.random_bool(self.cfg.restart) {
            let i = self.rng.random_range(0..n);
            if self.nodes[i].replica.is_none() {
                self.boot(i);
            }
        }
        if self.rng.random_bool(self.cfg.partition) {
            self.blocked = crate::draw_partition(&mut self.rng, n, self.cfg.link_cut);
        }
        if self.rng.random_bool(self.cfg.heal) {
            self.blocked.clear();
        }
        // Drawn only when enabled: the other configurations' seeds keep their runs.
        if self.cfg.pause > 0.0 && self.rng.random_bool(self.cfg.pause) {
            let i = self.rng.random_range(0..n);
            if !self.paused(i) {
                self.nodes[i].paused_until = self.now + self.rng.random_range(5..=60);
            }
        }
    }

    fn step(&mut self, traffic: bool) {
        self.now += 1;
        for i in 0..self.nodes.len() {
            if self.paused(i) {
                continue;
            }
            let n = &mut self.nodes[i];
            if let Some(r) = n.replica.as_mut() {
                r.tick();
                // As the driver does once per pass of its loop: the next chunk of committed
                // entries not yet handed over, unless actions wait behind a write
                // (`max_apply` is small here, so that chunks interleave with messages,
                // snapshots and crashes).
                if !n.pipeline.holding() {
                    r.apply_more();
                }
            }
            self.drain(i);
            if !self.nodes[i].unsynced.is_empty() && self.rng.random_bool(self.cfg.sync) {
                self.sync(i);
            }
            if self.rng.random_bool(self.cfg.compact) {
                self.compact(i);
            }
        }
        let mut due: Vec<Packet> = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].at <= self.now && !self.paused(self.net[k].to) {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        // swap_remove and this shuffle give a seeded, arbitrary delivery order.
        for j in (1..due.len()).rev() {
            let o = self.rng.random_range(0..=j);
            due.swap(j, o);
        }
        for p in due {
            let from = self.members[p.from].clone();
            if let Some(r) = self.nodes[p.to].replica.as_mut() {
                let late_vote = r.role() == Role::PreCandidate
                    && matches!(p.msg, Message::Vote { granted: true, .. });
                r.step(&from, p.msg);
                if late_vote && r.role() == Role::Leader {
                    self.stats.elected_by_late_vote += 1;
                }
                self.drain(p.to);
            }
        }
        if traffic {
            self.client();
            self.faults();
        }
        self.check_leaders();
        if self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .any(|r| r.leaders_observed(LEADERS_WINDOW) >= 2)
        {
            self.stats.split_brain_heard += 1;
        }
    }

    /// Runs the faulty phase, heals everything, settles, and checks convergence.
    ///
    /// # Panics
    /// On any invariant violation, naming the seed and the step.
    pub fn run(mut self) -> Stats {
        let trace_all = std::env::var("KV_SIM_TRACE").is_ok_and(|v| v == "all");
        for _ in 0..self.cfg.steps {
            self.step(true);
            if trace_all {
                self.trace_step();
            }
        }
        self.faults = false;
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.boot(i);
            }
        }
        // One write after healing commits everything before it (a leader's term entry).
        let trace = std::env::var_os("KV_SIM_TRACE").is_some();
        for _ in 0..self.cfg.settle_steps {
            self.step(false);
            if trace {
                self.trace_step();
            }
        }
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader)
            })
            .collect();
        if leaders.len() != 1 {
            self.fail(format!(
                "after healing, {} leaders instead of one",
                leaders.len()
            ));
        }
        let commits: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.replica.as_ref().map_or(0, |r| r.commit_index().0))
            .collect();
        // The leader's log, not what its disk holds yet: a leader commits an entry once a
        // majority holds it durably, and that majority need not include the leader (seeds
        // 8103230 and 8110157 of the slow disk: elected late, its own no-op still being
        // written).
        let last = self.nodes[leaders[0]]
            .replica
            .as_ref()
            .map_or(0, |r| r.last_index().0);
        if commits.iter().any(|&c| c != last) {
            self.fail(format!("after healing, commit indexes {commits:?} differ from the leader's last index {last}"));
        }
        let leader = &self.nodes[leaders[0]];
        if last > leader.log_base() + leader.log.len() as u64 {
            self.stats.settled_ahead_of_leader_disk += 1;
        }
        let first = &self.nodes[0].applied;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.applied != *first {
                self.fail(format!(
                    "after healing, n{} applied {} entries, n1 {}",
                    i + 1,
                    n.applied.len(),
                    first.len()
                ));
            }
        }
        for &(index, term) in &self.acked_majority {
            if first.get(index as usize - 1).map(|e| e.term.0) != Some(term) {
                self.fail(format!(
                    "acknowledged write at index {index} term {term} is not applied"
                ));
            }
        }
        // No acknowledged write disappears silently: what the healed log does not hold was
        // reported rolled back. (The converse does not hold: a node reports what is removed
        // from its own log, and another node holding the entry may still lead and commit it.)
        for &(index, term) in &self.acked_any {
            let kept = first.get(index as usize - 1).map(|e| e.term.0) == Some(term);
            if !kept && !self.reported_rolled_back.contains(&(index, term)) {
                self.fail(format!(
                    "write acknowledged at index {index} term {term} is gone without a rollback report"
                ));
            }
        }
        // And a node that truncated an entry the healed log holds says so (a `Survived`),
        // unless it restarted since (it forgets its truncations); it never says so wrongly.
        let in_log =
            |index: u64, term: u64| first.get(index as usize - 1).map(|e| e.term.0) == Some(term);
        for &(node, index, term, step) in &self.truncated {
            if in_log(index, term)
                && self.booted[node] <= step
                && !self.survived.contains(&(node, index, term))
            {
                self.fail(format!(
                    "n{} truncated the entry at index {index} term {term}, which was committed, and never said it survived",
                    node + 1
                ));
            }
        }
        for &(index, term) in &self.lost {
            if in_log(index, term) {
                self.fail(format!(
                    "a snapshot install reported the entry at index {index} term {term} lost, but it is in the log"
                ));
            }
        }
        for &(node, index, term) in &self.survived {
            if !in_log(index, term) {
                self.fail(format!(
                    "n{} says the entry at index {index} term {term} survived, but it is not in the log",
                    node + 1
                ));
            }
        }
        self.stats.commit = last;
        self.check_history();
        self.stats.terms = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.term().0)
            .max()
            .unwrap_or(0);
        self.stats
    }
}

fn is_append_reply(a: &Action) -> bool {
    matches!(
        a,
        Action::Send {
            msg: Message::AppendReply { .. },
            ..
        }
    )
}
