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
//! - read-index: a confirmed leader read waits for every W >= majority write acknowledged before
//!   the read began;
//! - convergence: once faults heal, every replica applies the same log;
//! - linearizability: the clients' history (W >= majority writes, leader reads at their read
//!   index, W < majority writes as "unknown") passes kv-checker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use kv_replica::NodeId;
use kv_replica::leader_follower::{
    Action, Command, Config, Entry, HardState, Message, Replica, Role,
};
use kv_replica::pipeline::Pipeline;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    /// Per step: probability that a node's pending log writes become durable (until then the
    /// replica goes on, and a crash loses them).
    pub sync: f64,
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
            sync: 0.5,
        }
    }
}

struct Packet {
    at: u64,
    from: usize,
    to: usize,
    msg: Message,
}

struct Node {
    replica: Option<Replica>,
    /// What waits for which batch to be durable (the driver's own logic).
    pipeline: Pipeline,
    /// Batches submitted and not yet durable, with their durable state: a crash loses them.
    unsynced: Vec<(u64, Vec<Action>)>,
    hard: HardState,
    /// The durable log.
    log: Vec<Entry>,
    /// Entries applied since the last restart (the state machine is rebuilt on restart).
    applied: Vec<Entry>,
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
    /// Highest commit index at the end.
    pub commit: u64,
    /// Client operations whose history kv-checker found linearizable.
    pub checked_ops: u64,
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
            reads: HashMap::new(),
            next_id: 1,
            w_of: HashMap::new(),
            stats: Stats::default(),
            seed,
            write_meta: HashMap::new(),
            read_meta: HashMap::new(),
            history: Vec::new(),
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            sim.nodes.push(Node {
                replica: None,
                pipeline: Pipeline::new(true),
                unsynced: Vec::new(),
                hard: HardState::default(),
                log: Vec::new(),
                applied: Vec::new(),
            });
            sim.boot(i);
        }
        sim
    }

    fn boot(&mut self, i: usize) {
        let cfg = Config {
            id: self.members[i].clone(),
            members: self.members.clone(),
            election_ticks: (10, 20),
            heartbeat_ticks: 3,
            max_batch: 8,
        };
        let rng = Box::new(StdRng::seed_from_u64(self.rng.random()));
        let n = &mut self.nodes[i];
        n.replica = Some(Replica::new(cfg, n.hard, n.log.clone(), rng));
        n.pipeline = Pipeline::new(true);
        n.unsynced.clear();
        n.applied.clear();
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
                    )
                })
                .cloned()
                .collect();
            let (now, batch) = n.pipeline.submit(r, actions);
            if let Some(seq) = batch {
                n.unsynced.push((seq, records));
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
        let Some(&(last, _)) = batches.last() else {
            return;
        };
        for (_, records) in &batches {
            for a in records {
                match a {
                    Action::PersistHardState(h) => self.nodes[i].hard = *h,
                    Action::Truncate { from, removed } => {
                        self.nodes[i].log.truncate(from.0 as usize - 1);
                        self.stats.rolled_back += removed.len() as u64;
                    }
                    Action::PersistEntries(es) => {
                        for e in es {
                            let len = self.nodes[i].log.len();
                            if e.index.0 != len as u64 + 1 {
                                self.fail(format!(
                                    "n{} persisted index {} after {len}",
                                    i + 1,
                                    e.index.0
                                ));
                            }
                            let prev_term = self.nodes[i].log.last().map_or(0, |p| p.term.0);
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
            Action::Acked { id, version, .. } => {
                self.stats.acked += 1;
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
                    // The key's value as of the read index, from the leader's log.
                    let value = self.nodes[i].replica.as_ref().and_then(|r| {
                        r.log()[..index.0 as usize]
                            .iter()
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
        match self.applied_at.get(&e.index.0) {
            Some(other) if *other != e => self.fail(format!(
                "state machine safety: index {} applied as {:?} and as {:?}",
                e.index.0, other, e
            )),
            Some(_) => {}
            None => {
                self.applied_at.insert(e.index.0, e);
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
                    // Leader completeness for acknowledged W >= majority writes.
                    let log = r.log();
                    for &(index, t) in &self.acked_majority {
                        let has = log.get(index as usize - 1).map(|e| e.term.0) == Some(t);
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
        if self.nodes[i].replica.is_none() {
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
            self.blocked.clear();
            let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
            for a in 0..n {
                for b in 0..n {
                    if side[a] != side[b] {
                        self.blocked.insert((a, b));
                    }
                }
            }
        }
        if self.rng.random_bool(self.cfg.heal) {
            self.blocked.clear();
        }
    }

    fn step(&mut self, traffic: bool) {
        self.now += 1;
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.tick();
            }
            self.drain(i);
            if !self.nodes[i].unsynced.is_empty() && self.rng.random_bool(self.cfg.sync) {
                self.sync(i);
            }
        }
        let mut due: Vec<Packet> = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].at <= self.now {
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
                r.step(&from, p.msg);
                self.drain(p.to);
            }
        }
        if traffic {
            self.client();
            self.faults();
        }
        self.check_leaders();
    }

    /// Runs the faulty phase, heals everything, settles, and checks convergence.
    ///
    /// # Panics
    /// On any invariant violation, naming the seed and the step.
    pub fn run(mut self) -> Stats {
        for _ in 0..self.cfg.steps {
            self.step(true);
        }
        self.faults = false;
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.boot(i);
            }
        }
        // One write after healing commits everything before it (a leader's term entry).
        for _ in 0..self.cfg.settle_steps {
            self.step(false);
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
        let last = self.nodes[leaders[0]].log.len() as u64;
        if commits.iter().any(|&c| c != last) {
            self.fail(format!("after healing, commit indexes {commits:?} differ from the leader's last index {last}"));
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
        self.stats.commit = last;
        self.check_history();
        self.stats
    }
}
