//! Deterministic simulation of the leaderless core: five nodes with skewed clocks, a seeded
//! network that loses, delays and reorders messages, partitions, crashes and restarts, clients
//! writing and reading through random nodes — and the guarantees checked.
//!
//! Invariants (with R + W > N, no sloppy quorum):
//! - read-your-acknowledged-writes: a read that starts after a write was acknowledged returns
//!   that key's acknowledged version or a newer one;
//! - convergence: once faults heal and hints and anti-entropy have run, every replica of every
//!   key holds the same copy, the newest one stored anywhere;
//! - durability: no acknowledged write is lost (the converged version is at least every
//!   acknowledged version of the key).
//!
//! Set `KV_SIM_DEBUG=1` to print each failed write with its replicas' states.
//!
//! With R + W <= N the first invariant is not promised; the run instead counts the stale reads
//! it observed, and the conflicts the nodes detected.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kv_replica::leaderless::{
    Action, Config, Leaderless, Lsn, Msg, Opts, ReadFanout, ReadRepair, ReplicaRead, Store, Stored,
    TombstoneGc,
};
use kv_replica::{NodeId, Quorum, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What one leaderless run does.
#[derive(Debug, Clone)]
pub struct LlConfig {
    /// Nodes.
    pub nodes: usize,
    /// N, R, W.
    pub n: u32,
    /// Read quorum.
    pub r: u32,
    /// Write quorum.
    pub w: u32,
    /// Read repair mode.
    pub read_repair: ReadRepair,
    /// Which replicas a read asks.
    pub read_fanout: ReadFanout,
    /// What a replica answers a read with.
    pub replica_read: ReplicaRead,
    /// Sloppy quorum.
    pub sloppy: bool,
    /// Hinted handoff.
    pub hints: bool,
    /// Milliseconds with faults and traffic (one step is one millisecond).
    pub steps: u64,
    /// Milliseconds after healing, no faults, no traffic.
    pub settle_steps: u64,
    /// Keys clients use.
    pub keys: usize,
    /// Probability a message is lost.
    pub drop: f64,
    /// Messages take 1..=max_delay ms.
    pub max_delay: u64,
    /// Per step: probability of a client write, read.
    pub write: f64,
    /// Read probability per step.
    pub read: f64,
    /// Of writes, the fraction that are deletes.
    pub delete: f64,
    /// Per step: crash a live node / restart a dead one.
    pub crash: f64,
    /// Restart probability per step.
    pub restart: f64,
    /// Per step: new random partition / heal.
    pub partition: f64,
    /// Heal probability per step.
    pub heal: f64,
    /// 0: a partition splits the nodes into two sides. Above 0: each one-way link is cut with
    /// this probability instead (partial and asymmetric partitions), and silently: no node is
    /// told, as with `kvctl fault cut` or a link failing in one direction.
    pub link_cut: f64,
    /// Per step: pause a running node (a GC pause, SIGSTOP: it keeps its connections, so its
    /// peers do not see it down, and handles what queued for it when it resumes).
    pub pause: f64,
    /// Resume probability per step.
    pub resume: f64,
    /// Clock skew: each node's clock is off by up to this many ms either way.
    pub skew_ms: u64,
    /// Per step, with this probability, one node's clock is stepped (as NTP steps a clock) by
    /// up to this many ms, forward or back.
    pub clock_jump: Option<(f64, u64)>,
    /// Tombstones are purged this long after their write (the default, longer than a run,
    /// purges none); reads past a delete's grace period may find what it hid.
    pub tombstone_grace_ms: u64,
    /// What else a purge waits for. With [`TombstoneGc::Repair`] every purge is checked: each
    /// other replica of the key durably holds the tombstone or something newer, or purged it.
    pub tombstone_gc: TombstoneGc,
    /// One node whose messages, both ways, are lost with this probability (a lossy link).
    pub lossy: Option<(usize, f64)>,
    /// Probability a message between two nodes is delivered twice, each copy with its own
    /// delay (so the copies may also arrive out of order). 0 draws nothing, so that the seeds
    /// of configurations without it replay as they did before it existed.
    pub dup: f64,
    /// Client deadline per request, in ms.
    pub timeout_ms: u64,
    /// Replicas silent this long get hints (and reads ask them again), in ms.
    pub hint_after_ms: u64,
    /// `None`: every write is durable at once. `Some((asked, lazy))`: a node's writes become
    /// durable at a later step (an fsync), with probability `asked` per ms while a send that is
    /// not lazy waits for them and `lazy` otherwise; sends wait for it as `Action::Send::after`
    /// says, and a crash loses what is not durable yet.
    pub flush: Option<(f64, f64)>,
    /// Of crashes, the fraction that also lose the node's storage (a lost disk, or a node in
    /// memory): it comes back empty as a new incarnation, its peers' books notice it at its
    /// first connection to each, and it refills itself. 0 draws nothing.
    pub wipe: f64,
}

impl Default for LlConfig {
    fn default() -> Self {
        LlConfig {
            nodes: 5,
            n: 3,
            r: 2,
            w: 2,
            read_repair: ReadRepair::Async,
            read_fanout: ReadFanout::All,
            replica_read: ReplicaRead::Newest,
            sloppy: false,
            hints: true,
            steps: 2000,
            settle_steps: 1500,
            keys: 8,
            drop: 0.03,
            max_delay: 5,
            write: 0.15,
            read: 0.15,
            delete: 0.1,
            crash: 0.0005,
            restart: 0.005,
            partition: 0.001,
            heal: 0.004,
            link_cut: 0.0,
            pause: 0.0005,
            resume: 0.01,
            skew_ms: 200,
            clock_jump: None,
            tombstone_grace_ms: 1_000_000,
            tombstone_gc: TombstoneGc::Repair,
            lossy: None,
            dup: 0.0,
            timeout_ms: 300,
            hint_after_ms: 40,
            flush: None,
            wipe: 0.0,
        }
    }
}

/// A node's storage, kept across crashes: what it holds, and how to take back the writes not
/// yet durable when it crashes (see `LlConfig::flush`).
#[derive(Default, Clone)]
pub struct SimStore {
    data: BTreeMap<Bytes, Stored>,
    /// The LSN of the write that made each copy (after a crash, for a copy a lost write had
    /// replaced, the LSN the crash went back to: no lower than the real one).
    written_at: BTreeMap<Bytes, Lsn>,
    hints: BTreeMap<(NodeId, Bytes), Stored>,
    lsn: Lsn,
    /// Writes up to here survive a crash.
    durable: Lsn,
    /// The copies that the writes not yet durable replaced, oldest first.
    undo: Vec<Undo>,
    /// Copies stored since the simulator last looked (key, version, value).
    written: Vec<(Bytes, Version, Option<Bytes>)>,
    /// The copies stored by the writes not yet durable (key, version), oldest first.
    unflushed: Vec<(Bytes, Version)>,
    /// The durable bound on the node's clock (`Action::PersistClock`).
    clock: u64,
    /// A bound asked for, durable with the next flush.
    clock_asked: u64,
    /// Tombstones purged since the simulator last looked (key, version).
    purged: Vec<(Bytes, Version, u64)>,
    /// The node was refilling itself when it stopped (`Action::PersistRefilling`).
    refilling: bool,
}

#[derive(Clone)]
enum Undo {
    Data(Bytes, Option<Stored>),
    Hint((NodeId, Bytes), Option<Stored>),
}

impl SimStore {
    /// Everything written so far becomes durable (an fsync).
    pub fn flush(&mut self) {
        self.durable = self.lsn;
        self.undo.clear();
        self.unflushed.clear();
        self.clock = self.clock.max(self.clock_asked);
    }

    /// The copy of `key` that the first write not yet durable replaced, if one did.
    fn first_undone(&self, key: &[u8]) -> Option<&Option<Stored>> {
        self.undo.iter().find_map(|u| match u {
            Undo::Data(k, old) if k.as_ref() == key => Some(old),
            _ => None,
        })
    }

    /// The version of `key` that would survive a crash now.
    fn durable_version(&self, key: &[u8]) -> Option<Version> {
        match self.first_undone(key) {
            Some(old) => old.as_ref().map(|s| s.version),
            None => self.data.get(key).map(|s| s.version),
        }
    }

    /// The newest version of `key` among the hints that would survive a crash now, whatever
    /// their target.
    fn durable_hint_version(&self, key: &[u8]) -> Option<Version> {
        let mut targets: BTreeSet<&NodeId> = BTreeSet::new();
        for (t, k) in self.hints.keys() {
            if k.as_ref() == key {
                targets.insert(t);
            }
        }
        for u in &self.undo {
            if let Undo::Hint((t, k), _) = u
                && k.as_ref() == key
            {
                targets.insert(t);
            }
        }
        targets
            .into_iter()
            .filter_map(|t| {
                let first_undone = self.undo.iter().find_map(|u| match u {
                    Undo::Hint((ut, k), old) if ut == t && k.as_ref() == key => Some(old),
                    _ => None,
                });
                match first_undone {
                    Some(old) => old.as_ref().map(|s| s.version),
                    None => self
                        .hints
                        .get(&(t.clone(), Bytes::copy_from_slice(key)))
                        .map(|s| s.version),
                }
            })
            .max()
    }

    /// A crash: the writes not yet durable are gone; returns how many.
    fn crash(&mut self) -> u64 {
        let lost = self.undo.len() as u64;
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Data(k, old) => match old {
                    Some(s) => self.data.insert(k, s),
                    None => self.data.remove(&k),
                },
                Undo::Hint(k, old) => match old {
                    Some(s) => self.hints.insert(k, s),
                    None => self.hints.remove(&k),
                },
            };
        }
        self.lsn = self.durable;
        let durable = self.durable;
        for lsn in self.written_at.values_mut() {
            *lsn = (*lsn).min(durable);
        }
        self.clock_asked = self.clock;
        lost
    }
}

impl Store for SimStore {
    fn get(&self, key: &[u8]) -> Option<Stored> {
        self.data.get(key).cloned()
    }
    fn get_at(&self, key: &[u8]) -> Option<(Stored, Lsn)> {
        let lsn = self.written_at.get(key).copied().unwrap_or(0);
        self.data.get(key).map(|s| (s.clone(), lsn))
    }
    fn get_durable(&self, key: &[u8]) -> Option<(Stored, Lsn)> {
        match self.first_undone(key) {
            // Replaced by a write not yet durable: what a crash would go back to.
            Some(old) => old.clone().map(|s| (s, self.durable)),
            None => self.get_at(key),
        }
    }
    fn put(&mut self, key: &Bytes, s: &Stored) -> Lsn {
        self.written_at.insert(key.clone(), self.lsn + 1);
        let old = self.data.insert(key.clone(), s.clone());
        self.undo.push(Undo::Data(key.clone(), old));
        self.unflushed.push((key.clone(), s.version));
        self.written.push((key.clone(), s.version, s.value.clone()));
        self.lsn += 1;
        self.lsn
    }
    fn last_lsn(&self) -> Lsn {
        self.lsn
    }
    fn scan(&self, f: &mut dyn FnMut(&Bytes, &Stored)) {
        for (k, s) in &self.data {
            f(k, s);
        }
    }
    fn purge_tombstones(
        &mut self,
        older_than_ms: u64,
        may_purge: &mut dyn FnMut(&Bytes, &Stored, Lsn) -> bool,
    ) -> usize {
        let before = self.data.len();
        let mut purged = Vec::new();
        let written_at = &self.written_at;
        self.data.retain(|k, s| {
            let keep = s.value.is_some()
                || s.written_ms >= older_than_ms
                || !may_purge(k, s, written_at.get(k).copied().unwrap_or(0));
            if !keep {
                purged.push((k.clone(), s.version, s.written_ms));
            }
            keep
        });
        self.purged.extend(purged);
        before - self.data.len()
    }
    fn put_hint(&mut self, target: &NodeId, key: &Bytes, s: &Stored) -> Lsn {
        let k = (target.clone(), key.clone());
        let old = self.hints.get(&k).cloned();
        if old.as_ref().is_none_or(|o| s.version > o.version) {
            self.hints.insert(k.clone(), s.clone());
        }
        self.undo.push(Undo::Hint(k, old));
        self.lsn += 1;
        self.lsn
    }
    fn remove_hint(&mut self, target: &NodeId, key: &Bytes, version: Version) {
        let k = (target.clone(), key.clone());
        if self.hints.get(&k).is_some_and(|s| s.version <= version) {
            let old = self.hints.remove(&k);
            self.undo.push(Undo::Hint(k, old));
        }
    }
    fn hints(&self, target: &NodeId, limit: usize) -> Vec<(Bytes, Stored)> {
        self.hints
            .iter()
            .filter(|((t, _), _)| t == target)
            .take(limit)
            .map(|((_, k), s)| (k.clone(), s.clone()))
            .collect()
    }
    fn hint_count(&self) -> u64 {
        self.hints.len() as u64
    }
}

struct Packet {
    at: u64,
    from: usize,
    /// The sender's incarnation when it sent it: one from before a storage loss arrives on
    /// the connection of that life, with no new hello.
    inc: u64,
    to: usize,
    msg: Msg,
}

/// A send waiting for its node's writes up to `after` to be durable.
struct Held {
    after: Lsn,
    lazy: bool,
    to: usize,
    msg: Msg,
}

/// What a run observed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LlStats {
    /// Writes acknowledged.
    pub acked: u64,
    /// Of those, writes whose answer named replicas where a concurrent write with a higher
    /// version hides them (`superseded_on`).
    pub superseded: u64,
    /// Writes failed (quorum not reached).
    pub failed: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads that failed (no R answers by the deadline).
    pub reads_failed: u64,
    /// Reads answered only at their deadline (e.g. blocking read repair waiting on a replica).
    pub reads_at_deadline: u64,
    /// Reads that returned a version older than one acknowledged before they started.
    pub stale_reads: u64,
    /// Conflicts the nodes detected.
    pub conflicts: u64,
    /// Hints delivered.
    pub hints_delivered: u64,
    /// Read repairs sent.
    pub read_repairs: u64,
    /// Copies changed by anti-entropy.
    pub ae_repairs: u64,
    /// Crashes.
    pub crashes: u64,
    /// Writes (and hint changes) that crashes took back before they were durable.
    pub lost_unflushed: u64,
    /// Runs whose history kv-checker found not linearizable.
    pub violations: u64,
    /// Runs whose check ran out of budget.
    pub unchecked: u64,
    /// Clocks stepped (`LlConfig::clock_jump`).
    pub clock_steps: u64,
    /// Reads that found what a delete had hidden, past the delete's grace period.
    pub resurrected: u64,
    /// Tombstones purged, on all nodes.
    pub tombstones_purged: u64,
    /// Messages delivered twice (`LlConfig::dup`).
    pub duplicated: u64,
    /// Crashes that lost the node's storage (`LlConfig::wipe`).
    pub wipes: u64,
    /// Refills finished.
    pub refills: u64,
    /// Read answers not counted because their replica was refilling.
    pub refilling_answers: u64,
    /// Forwarded writes declined by a node not established.
    pub forwards_declined: u64,
}

impl std::ops::AddAssign<&LlStats> for LlStats {
    /// Sums every field: the destructuring names them all, so a new one cannot be left out.
    fn add_assign(&mut self, s: &LlStats) {
        let LlStats {
            acked,
            superseded,
            failed,
            reads,
            reads_failed,
            reads_at_deadline,
            stale_reads,
            conflicts,
            hints_delivered,
            read_repairs,
            ae_repairs,
            crashes,
            lost_unflushed,
            violations,
            unchecked,
            clock_steps,
            resurrected,
            tombstones_purged,
            duplicated,
            wipes,
            refills,
            refilling_answers,
            forwards_declined,
        } = s;
        self.acked += acked;
        self.superseded += superseded;
        self.failed += failed;
        self.reads += reads;
        self.reads_failed += reads_failed;
        self.reads_at_deadline += reads_at_deadline;
        self.stale_reads += stale_reads;
        self.conflicts += conflicts;
        self.hints_delivered += hints_delivered;
        self.read_repairs += read_repairs;
        self.ae_repairs += ae_repairs;
        self.crashes += crashes;
        self.lost_unflushed += lost_unflushed;
        self.violations += violations;
        self.unchecked += unchecked;
        self.clock_steps += clock_steps;
        self.resurrected += resurrected;
        self.tombstones_purged += tombstones_purged;
        self.duplicated += duplicated;
        self.wipes += wipes;
        self.refills += refills;
        self.refilling_answers += refilling_answers;
        self.forwards_declined += forwards_declined;
    }
}

enum Op {
    Write {
        key: usize,
        value: Option<String>,
        stamp: u64,
    },
    Read {
        key: usize,
        started: u64,
        floor: Version,
        stamp: u64,
    },
}

/// One seeded leaderless simulation.
pub struct LlSim {
    cfg: LlConfig,
    seed: u64,
    rng: StdRng,
    /// Draws each life's first operation id.
    op_ids: StdRng,
    members: Vec<NodeId>,
    nodes: Vec<Option<Leaderless>>,
    stores: Vec<SimStore>,
    /// Per node: sends waiting for durability (`LlConfig::flush`).
    held: Vec<Vec<Held>>,
    /// Per node: started before (a restart is not its first life).
    booted: Vec<bool>,
    skew: Vec<i64>,
    /// The most any node's clock has been ahead so far, in ms (at least 0).
    ahead: i64,
    /// Each node's skew when it started: its timers run on that clock, as the driver's run on
    /// the wall clock at start plus monotonic time (a clock step moves only its versions).
    timer_skew: Vec<i64>,
    net: Vec<Packet>,
    now: u64,
    blocked: BTreeSet<(usize, usize)>,
    faults: bool,
    keys: Vec<Bytes>,
    ops: BTreeMap<u64, Op>,
    next_req: u64,
    /// Per key: the versions acknowledged, and when.
    acked: Vec<Vec<(u64, Version)>>,
    /// Paused nodes: no ticks, no deliveries (their messages wait), no new client requests.
    paused: Vec<bool>,
    /// The version each written value (unique per write) was seen with: one client write
    /// must never be stored under two versions (a late second execution of it would overwrite
    /// writes acknowledged after it, under a newer version no staleness check notices).
    versions: BTreeMap<String, Version>,
    /// The value each version of a key was seen with.
    values: BTreeMap<(usize, Version), String>,
    /// The value (`None`: a tombstone) each version of a key was stored with, on any node.
    /// and which nodes hold or held it (a node's own version, lost in a crash before it was
    /// durable or had left the node, may be given again: nobody saw it).
    stored: BTreeMap<(Bytes, Version), (Option<Bytes>, BTreeSet<usize>)>,
    /// Per key: the newest tombstone purged on any node.
    purged: BTreeMap<usize, Version>,
    /// Per node and key: the newest tombstone that node purged.
    purged_by: Vec<BTreeMap<usize, Version>>,
    /// `KV_SIM_TRACE` set: every delivery, crash and start is printed.
    trace: bool,
    stats: LlStats,
    dead_stats: LlStats,
    /// Every client operation, for kv-checker.
    history: Vec<kv_checker::Op>,
    seq: u64,
    /// Per node: its storage's incarnation (a new one when a crash loses the storage).
    incarnation: Vec<u64>,
    /// Per node and peer: the peer's incarnation as the node's book knows it (the book is in
    /// the node's storage).
    book: Vec<Vec<Option<u64>>>,
    /// (from, to): a connection is open, its hello answered (both ends have run since).
    connected: BTreeSet<(usize, usize)>,
    /// Per node: the history stamp of its last wipe (what it acknowledged before is gone).
    wiped_at: Vec<u64>,
    /// Per key: the newest version a client saw (acknowledged, or read).
    seen: Vec<Version>,
    /// Per node: its storage was lost and it has not refilled since.
    back_empty: Vec<bool>,
}

impl LlSim {
    /// A fresh cluster.
    pub fn new(seed: u64, cfg: LlConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let members: Vec<NodeId> = (1..=cfg.nodes).map(|i| NodeId(format!("n{i}"))).collect();
        let skew: Vec<i64> = (0..cfg.nodes)
            .map(|_| rng.random_range(-(cfg.skew_ms as i64)..=cfg.skew_ms as i64))
            .collect();
        let keys = (0..cfg.keys)
            .map(|k| Bytes::from(format!("k{k}")))
            .collect();
        let mut sim = LlSim {
            seed,
            rng,
            op_ids: StdRng::seed_from_u64(!seed),
            nodes: (0..cfg.nodes).map(|_| None).collect(),
            stores: vec![SimStore::default(); cfg.nodes],
            held: (0..cfg.nodes).map(|_| Vec::new()).collect(),
            booted: vec![false; cfg.nodes],
            members,
            timer_skew: skew.clone(),
            ahead: skew.iter().copied().max().unwrap_or(0).max(0),
            skew,
            net: Vec::new(),
            now: 1000,
            blocked: BTreeSet::new(),
            faults: true,
            keys,
            ops: BTreeMap::new(),
            next_req: 1,
            acked: vec![Vec::new(); cfg.keys],
            paused: vec![false; cfg.nodes],
            versions: BTreeMap::new(),
            values: BTreeMap::new(),
            stored: BTreeMap::new(),
            purged: BTreeMap::new(),
            purged_by: vec![BTreeMap::new(); cfg.nodes],
            trace: std::env::var_os("KV_SIM_TRACE").is_some(),
            stats: LlStats::default(),
            dead_stats: LlStats::default(),
            history: Vec::new(),
            seq: 0,
            incarnation: vec![0; cfg.nodes],
            book: vec![vec![None; cfg.nodes]; cfg.nodes],
            connected: BTreeSet::new(),
            wiped_at: vec![0; cfg.nodes],
            seen: vec![Version::ZERO; cfg.keys],
            back_empty: vec![false; cfg.nodes],
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            sim.boot(i);
        }
        // The cluster starts together: every connection is up, every hello answered, before the
        // first request.
        for i in 0..sim.cfg.nodes {
            for j in 0..sim.cfg.nodes {
                if i != j {
                    sim.hello(i, j);
                }
            }
        }
        sim
    }

    /// Node `i`'s connection to `j` opens (before `i`'s first message to `j` since either
    /// started): `j` checks `i`'s incarnation against its book and takes `i` for one back
    /// empty if it is another, or `i` says it is refilling, or `j` took it so already; `i`
    /// hears the answer.
    fn hello(&mut self, i: usize, j: usize) {
        if !self.connected.insert((i, j)) {
            return;
        }
        let came_back = self.book[j][i].is_some_and(|k| k != self.incarnation[i]);
        self.book[j][i] = Some(self.incarnation[i]);
        let (me, peer) = (self.members[i].clone(), self.members[j].clone());
        let told = came_back
            || self.nodes[i].as_ref().is_some_and(|n| n.refilling())
            || self.nodes[j]
                .as_ref()
                .is_some_and(|n| n.refilling_peers().contains(&me));
        if told && let Some(n) = self.nodes[j].as_mut() {
            n.peer_refilling(&me);
        }
        if self.trace && told {
            eprintln!("t={} {peer} takes {me} for one back empty", self.now);
        }
        let established = self.nodes[j].as_ref().is_some_and(|n| n.established());
        let now = self.clock(i);
        if let Some(n) = self.nodes[i].as_mut() {
            n.hello_answered(now, &peer, told, established);
        }
        self.drain(i);
    }

    /// A history timestamp: the simulated millisecond, then the order of events within it.
    fn stamp(&mut self) -> u64 {
        self.seq += 1;
        self.now * 1_000_000 + self.seq % 1_000_000
    }

    fn record(
        &mut self,
        key: usize,
        op: kv_checker::OpKind,
        value: Option<String>,
        start: u64,
        outcome: kv_checker::Outcome,
        version: Option<Version>,
    ) {
        if let (Some(v), Some(ver)) = (&value, version) {
            self.same_version(key, v, ver, "answered");
        }
        if let Some(ver) = version {
            self.seen[key] = self.seen[key].max(ver);
        }
        let end = self.stamp();
        if self.trace {
            eprintln!(
                "t={} answered {op:?} of {} {value:?} (started {start}): {outcome:?} {version:?}",
                self.now,
                String::from_utf8_lossy(&self.keys[key])
            );
        }
        self.history.push(kv_checker::Op {
            client: start,
            op,
            key: String::from_utf8_lossy(&self.keys[key]).into_owned(),
            value,
            expected: None,
            applied: None,
            start_ns: start,
            end_ns: end,
            outcome,
            version: version.map(|v| v.to_string()),
            node: None,
        });
    }

    /// Fails if `value` was seen before with another version (one write run twice), or
    /// `version` of this key with another value (two writes under one version, or an answer
    /// meant for another request).
    fn same_version(&mut self, key: usize, value: &str, version: Version, how: &str) {
        match self.versions.get(value) {
            Some(&v) if v != version => self.fail(format!(
                "the write of {value} is {how} with version {version}, and was seen with {v}: \
                 one write executed twice"
            )),
            Some(_) => {}
            None => {
                self.versions.insert(value.to_string(), version);
            }
        }
        match self.values.get(&(key, version)) {
            Some(v) if v != value => self.fail(format!(
                "{value} of k{key} is {how} with version {version}, which is {v}'s: two \
                 writes under one version, or an answer to another request"
            )),
            Some(_) => {}
            None => {
                self.values.insert((key, version), value.to_string());
            }
        }
    }

    /// Node `i`'s timer time; sets its clock offset so that its versions follow its (possibly
    /// stepped) wall clock, as the driver does.
    fn clock(&mut self, i: usize) -> u64 {
        let offset = self.skew[i] - self.timer_skew[i];
        if let Some(n) = self.nodes[i].as_mut() {
            n.set_clock_offset(offset);
        }
        (self.now as i64 + 1000 + self.timer_skew[i]) as u64
    }

    fn boot(&mut self, i: usize) {
        if self.trace {
            eprintln!("t={} boot n{}", self.now, i + 1);
        }
        let quorum = Quorum::new(self.cfg.nodes as u32, self.cfg.n, self.cfg.r, self.cfg.w)
            .expect("valid quorum");
        let mut cfg = Config::new(self.members[i].clone(), self.members.clone(), quorum);
        cfg.vnodes = 16;
        cfg.read_repair = self.cfg.read_repair;
        cfg.read_fanout = self.cfg.read_fanout;
        cfg.replica_read = self.cfg.replica_read;
        cfg.sloppy_quorum = self.cfg.sloppy;
        cfg.hinted_handoff = self.cfg.hints;
        cfg.hint_after_ms = self.cfg.hint_after_ms;
        cfg.hint_retry_ms = 50;
        cfg.anti_entropy_ms = 60;
        cfg.tombstone_grace_ms = self.cfg.tombstone_grace_ms;
        cfg.tombstone_gc = self.cfg.tombstone_gc;
        cfg.clock_margin_ms = 50;
        cfg.first_life = !self.booted[i];
        cfg.refilling = self.stores[i].refilling;
        if cfg.first_life && self.cfg.nodes > 1 {
            // As `kv-node` does (see `Config::first_life`): a later life on this storage
            // refills itself unless this one learns it is new to the cluster.
            self.stores[i].refilling = true;
        }
        // From a generator of its own, so that the faults and traffic of a seed stay the same.
        cfg.first_op = self
            .op_ids
            .random_range(1..kv_replica::leaderless::OP_IDS_BELOW);
        self.booted[i] = true;
        self.timer_skew[i] = self.skew[i];
        let floor = self.stores[i]
            .data
            .values()
            .map(|s| s.version.epoch)
            .max()
            .unwrap_or(0)
            .max(self.stores[i].clock);
        let now = self.clock(i);
        let mut node = Leaderless::new(cfg, floor, now);
        node.recover_hints(&self.stores[i]);
        for j in 0..self.cfg.nodes {
            if self.blocked.contains(&(i, j)) {
                node.set_reachable(&self.members[j], false);
            }
        }
        self.nodes[i] = Some(node);
    }

    /// Puts a message on the network (or on the loopback), with the network's faults.
    fn route(&mut self, i: usize, to: usize, msg: Msg) {
        if to == i {
            // Loopback: no network faults, delivered next millisecond.
            self.net.push(Packet {
                at: self.now + 1,
                from: i,
                inc: self.incarnation[i],
                to,
                msg,
            });
            return;
        }
        let lossy = self
            .cfg
            .lossy
            .is_some_and(|(n, p)| (n == i || n == to) && self.rng.random_bool(p));
        if self.blocked.contains(&(i, to))
            || lossy
            || (self.faults && self.rng.random_bool(self.cfg.drop))
        {
            return;
        }
        if self.faults && self.cfg.dup > 0.0 && self.rng.random_bool(self.cfg.dup) {
            self.stats.duplicated += 1;
            let delay = self.rng.random_range(1..=self.cfg.max_delay);
            self.net.push(Packet {
                at: self.now + delay,
                from: i,
                inc: self.incarnation[i],
                to,
                msg: msg.clone(),
            });
        }
        let delay = self.rng.random_range(1..=self.cfg.max_delay);
        self.net.push(Packet {
            at: self.now + delay,
            from: i,
            inc: self.incarnation[i],
            to,
            msg,
        });
    }

    /// With `LlConfig::flush`: each running node's fsync may complete this step, releasing the
    /// sends that waited for it.
    fn flushes(&mut self) {
        let Some((asked, lazy)) = self.cfg.flush else {
            return;
        };
        for i in 0..self.cfg.nodes {
            let clock_waits = self.stores[i].clock_asked > self.stores[i].clock;
            if self.nodes[i].is_none()
                || self.paused[i]
                || (self.stores[i].undo.is_empty() && !clock_waits)
            {
                continue;
            }
            let p = if clock_waits || self.held[i].iter().any(|h| !h.lazy) {
                asked
            } else {
                lazy
            };
            if !self.rng.random_bool(p) {
                continue;
            }
            self.stores[i].flush();
            let durable = self.stores[i].durable;
            let (ready, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held[i])
                .into_iter()
                .partition(|h| h.after <= durable);
            self.held[i] = waiting;
            for h in ready {
                self.route(i, h.to, h.msg);
            }
            if clock_waits {
                let durable = self.stores[i].clock;
                if let Some(n) = self.nodes[i].as_mut() {
                    n.clock_persisted(durable);
                }
                self.drain(i);
            }
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: t={}ms: {what}", self.seed, self.now);
    }

    /// Repair-based tombstone GC: when node `i` purges the tombstone `version` of key `k`, every
    /// other replica of the key durably holds that version or a newer one, or purged a
    /// tombstone at least as new itself (and may since have been given an older copy again by a
    /// write from before the delete still in flight, which only the grace period guards
    /// against).
    fn check_repaired_before_purge(&mut self, i: usize, k: usize, version: Version) {
        let key = self.keys[k].clone();
        let Some(node) = self.nodes[i].as_ref() else {
            return;
        };
        for r in node.replicas(&key) {
            let j = self.members.iter().position(|m| *m == r).expect("a member");
            if j == i {
                continue;
            }
            let held = self.stores[j].durable_version(&key);
            let purged = self.purged_by[j].get(&k).copied();
            if held < Some(version) && purged < Some(version) {
                self.fail(format!(
                    "n{} purged the tombstone of {key:?} version {version} while n{} durably \
                     held {held:?} and had purged {purged:?}",
                    i + 1,
                    j + 1
                ));
            }
        }
    }

    fn drain(&mut self, i: usize) {
        for (key, version, written_ms) in std::mem::take(&mut self.stores[i].purged) {
            // A tombstone's age is its coordinator's clock reading when it made it
            // (`written_ms`; clocks read 1000 ms at the start), so it was made no earlier than
            // that reading less the most any clock has been ahead; a node purges by its own
            // clock, ahead by no more than that: so never before `made_by` plus the grace
            // period. Clock steps add up: the bound is the offsets the run reached, not a
            // multiple of one step (tombstones under clock steps, seeds 9600012 and 9600199: a
            // clock went more than two steps ahead).
            let made_by = written_ms.saturating_sub(1000 + self.ahead as u64);
            let grace = self.cfg.tombstone_grace_ms;
            if self.now < made_by + grace {
                self.fail(format!(
                    "n{} purged the tombstone of {key:?} version {version}, made at {made_by} \
                     or later, within its grace period ({} ms ahead at most)",
                    i + 1,
                    self.ahead
                ));
            }
            self.stats.tombstones_purged += 1;
            let k = self
                .keys
                .iter()
                .position(|c| *c == key)
                .expect("a client key");
            let p = self.purged.entry(k).or_insert(version);
            *p = (*p).max(version);
            if self.trace {
                eprintln!("t={} n{} purged {key:?} {version}", self.now, i + 1);
            }
            let p = self.purged_by[i].entry(k).or_insert(version);
            *p = (*p).max(version);
            if self.cfg.tombstone_gc == TombstoneGc::Repair {
                self.check_repaired_before_purge(i, k, version);
            }
        }
        for (key, version, value) in std::mem::take(&mut self.stores[i].written) {
            let (v, holders) = self
                .stored
                .entry((key.clone(), version))
                .or_insert_with(|| (value.clone(), BTreeSet::new()));
            if *v != value {
                let v = v.clone();
                self.fail(format!(
                    "n{} stored {value:?} as {key:?} version {version}, which is {v:?}'s: two \
                     writes under one version",
                    i + 1
                ));
            }
            holders.insert(i);
        }
        if self.cfg.flush.is_none() {
            self.stores[i].flush(); // durable at once, whatever the writes led to
        }
        loop {
            let Some(node) = self.nodes[i].as_mut() else {
                return;
            };
            let actions = node.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Send {
                        to,
                        msg,
                        after,
                        lazy,
                    } => {
                        let to = self.members.binary_search(&to).expect("member");
                        match after {
                            Some(after) if after > self.stores[i].durable => {
                                self.held[i].push(Held {
                                    after,
                                    lazy,
                                    to,
                                    msg,
                                });
                            }
                            _ => self.route(i, to, msg),
                        }
                    }
                    Action::PersistRefilling(on) => self.stores[i].refilling = on,
                    Action::PersistClock { upto } => {
                        // Like a write: durable with the node's next flush.
                        let store = &mut self.stores[i];
                        store.clock_asked = store.clock_asked.max(upto);
                        if self.cfg.flush.is_none() {
                            store.flush();
                        }
                        let durable = store.clock;
                        if let Some(n) = self.nodes[i].as_mut() {
                            n.clock_persisted(durable);
                        }
                    }
                    Action::Write { req, result } => {
                        let Some(Op::Write { key, value, stamp }) = self.ops.remove(&req) else {
                            self.fail(format!("answer to unknown write {req}"));
                        };
                        let kind = if value.is_some() {
                            kv_checker::OpKind::Write
                        } else {
                            kv_checker::OpKind::Delete
                        };
                        let (outcome, version) = match &result {
                            Ok(ok) => (kv_checker::Outcome::Ok, Some(ok.version)),
                            Err(f) if f.may_have_happened => (kv_checker::Outcome::Unknown, None),
                            Err(_) => (kv_checker::Outcome::Fail, None),
                        };
                        self.record(key, kind, value, stamp, outcome, version);
                        match result {
                            Ok(ok) => {
                                self.stats.acked += 1;
                                if !ok.superseded_on.is_empty() {
                                    self.stats.superseded += 1;
                                }
                                if ok.degraded {
                                    self.fail("degraded answer without degrade".into());
                                }
                                if (ok.acked.len() + ok.hinted.len()) < self.cfg.w as usize {
                                    self.fail(format!("acknowledged with too few acks: {ok:?}"));
                                }
                                // Every fallback counted holds it durably as a hint, unless a
                                // replica already holds it durably (the hint was delivered).
                                let k = &self.keys[key];
                                let replicas = self.nodes[i]
                                    .as_ref()
                                    .map(|n| n.replicas(k))
                                    .unwrap_or_default();
                                let delivered =
                                    replicas.iter().filter(|r| !ok.acked.contains(r)).any(|r| {
                                        let j = self.members.binary_search(r).expect("member");
                                        self.stores[j].durable_version(k) >= Some(ok.version)
                                    });
                                for h in &ok.hinted {
                                    let j = self.members.binary_search(h).expect("member");
                                    let held = self.stores[j].durable_hint_version(k);
                                    let wiped = self.wiped_at[j] > stamp;
                                    if held < Some(ok.version) && !delivered && !wiped {
                                        self.fail(format!(
                                            "write {} counted a hint on {h}, which holds \
                                             {held:?} durably",
                                            ok.version
                                        ));
                                    }
                                }
                                // Every replica that acknowledged holds the write (or a newer
                                // copy) durably, or purged it: a tombstone past its grace period
                                // by then (a grace period shorter than a deadline).
                                let purged =
                                    self.purged.get(&key).is_some_and(|&p| p >= ok.version);
                                for r in &ok.acked {
                                    let j = self.members.binary_search(r).expect("member");
                                    let held = self.stores[j].durable_version(&self.keys[key]);
                                    // Unless its storage was lost since the write started.
                                    let wiped = self.wiped_at[j] > stamp;
                                    if held < Some(ok.version) && !purged && !wiped {
                                        self.fail(format!(
                                            "write {} acknowledged by {r}, which holds {held:?} \
                                             durably: {ok:?}",
                                            ok.version
                                        ));
                                    }
                                }
                                self.acked[key].push((self.now, ok.version));
                            }
                            Err(e) => {
                                if std::env::var_os("KV_SIM_DEBUG").is_some() {
                                    eprintln!(
                                        "step {} n{} write {req} failed: {e} {:?}",
                                        self.now,
                                        i + 1,
                                        e.replicas
                                    );
                                }
                                self.stats.failed += 1
                            }
                        }
                    }
                    Action::Read { req, result } => {
                        let Some(Op::Read {
                            key,
                            started,
                            floor,
                            stamp,
                        }) = self.ops.remove(&req)
                        else {
                            self.fail(format!("answer to unknown read {req}"));
                        };
                        if let Ok(ok) = &result {
                            let value = ok.stored.as_ref().and_then(|s| s.value.as_ref());
                            let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
                            let version = ok.stored.as_ref().map(|s| s.version);
                            self.record(
                                key,
                                kv_checker::OpKind::Read,
                                value,
                                stamp,
                                kv_checker::Outcome::Ok,
                                version,
                            );
                        }
                        if result.is_err() {
                            self.stats.reads_failed += 1;
                        }
                        if self.now - started >= self.cfg.timeout_ms {
                            self.stats.reads_at_deadline += 1;
                        }
                        if let Ok(ok) = result {
                            self.stats.reads += 1;
                            let got = ok.stored.as_ref().map_or(Version::ZERO, |s| s.version);
                            let deleted = ok.stored.is_none()
                                && self.purged.get(&key).is_some_and(|&p| p >= floor);
                            if deleted {
                                // Nothing found, and a delete at least as new as the floor was
                                // purged: the key is as deleted as that delete left it.
                            } else if got < floor
                                && self.purged.get(&key).is_some_and(|&p| p >= floor)
                            {
                                // A delete at least as new as the floor was purged (past its
                                // grace period: checked when purged), and the key may show
                                // what it hid, from a replica that missed it: Cassandra's
                                // zombie, which the grace period is there to prevent.
                                self.stats.resurrected += 1;
                                if self.trace {
                                    eprintln!(
                                        "t={} resurrected: read of {} got {got}, floor {floor}",
                                        self.now,
                                        String::from_utf8_lossy(&self.keys[key])
                                    );
                                }
                            } else if got < floor {
                                self.stats.stale_reads += 1;
                                if self.cfg.r + self.cfg.w > self.cfg.n && !self.cfg.sloppy {
                                    self.fail(format!(
                                        "read of {} started at {started} returned {got}, older \
                                         than {floor} acknowledged before it started",
                                        String::from_utf8_lossy(&self.keys[key])
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.cfg.nodes)
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    fn set_partition(&mut self, blocked: BTreeSet<(usize, usize)>) {
        self.blocked = blocked;
        for i in 0..self.cfg.nodes {
            for j in 0..self.cfg.nodes {
                if i == j {
                    continue;
                }
                // A node is told of the links a partition cuts (its transport knows from its
                // fault filter), not of one-way cuts: those lose its messages silently, as
                // `kvctl fault cut` does.
                let up = !self.blocked.contains(&(i, j)) || self.cfg.link_cut > 0.0;
                let peer = self.members[j].clone();
                if let Some(n) = self.nodes[i].as_mut() {
                    n.set_reachable(&peer, up);
                }
            }
        }
    }

    fn faults(&mut self) {
        let live = self.live();
        if self.rng.random_bool(self.cfg.crash) && live.len() > 1 {
            let i = live[self.rng.random_range(0..live.len())];
            if let Some(n) = self.nodes[i].take() {
                let s = n.stats();
                self.dead_stats.conflicts += s.conflicts;
                self.dead_stats.hints_delivered += s.hints_delivered;
                self.dead_stats.read_repairs += s.read_repairs;
                self.dead_stats.ae_repairs += s.ae_repairs;
                self.dead_stats.refills += s.refills;
                self.dead_stats.refilling_answers += s.refilling_answers;
                self.dead_stats.forwards_declined += s.forwards_declined;
            }
            self.stats.crashes += 1;
            if self.trace {
                eprintln!("t={} crash n{}", self.now, i + 1);
            }
            self.paused[i] = false;
            // Its own versions it alone held, not yet durable, are gone (unless still in
            // flight to another node, which records them again when it stores them).
            for (key, version) in std::mem::take(&mut self.stores[i].unflushed) {
                if version.counter == i as u64 + 1
                    && let Some((_, holders)) = self.stored.get_mut(&(key.clone(), version))
                {
                    holders.remove(&i);
                    if holders.is_empty() {
                        self.stored.remove(&(key, version));
                    }
                }
            }
            self.stats.lost_unflushed += self.stores[i].crash();
            self.held[i].clear();
            self.connected.retain(|&(a, b)| a != i && b != i);
            // Drawn only when configured, so that other settings' seeds keep their faults.
            if self.cfg.wipe > 0.0 && self.rng.random_bool(self.cfg.wipe) && self.others_hold(i) {
                self.wipe(i);
            }
            // Requests it was coordinating are lost: their outcome is unknown.
            self.net.retain(|p| p.to != i);
        }
        let dead: Vec<usize> = (0..self.cfg.nodes)
            .filter(|&i| self.nodes[i].is_none())
            .collect();
        if !dead.is_empty() && self.rng.random_bool(self.cfg.restart) {
            let i = dead[self.rng.random_range(0..dead.len())];
            self.boot(i);
        }
        if self.rng.random_bool(self.cfg.partition) {
            let blocked = crate::draw_partition(&mut self.rng, self.cfg.nodes, self.cfg.link_cut);
            self.set_partition(blocked);
        }
        if !self.blocked.is_empty() && self.rng.random_bool(self.cfg.heal) {
            self.set_partition(BTreeSet::new());
        }
        if self.rng.random_bool(self.cfg.pause) {
            let i = self.rng.random_range(0..self.cfg.nodes);
            self.paused[i] = true;
        }
        if self.rng.random_bool(self.cfg.resume) {
            let i = self.rng.random_range(0..self.cfg.nodes);
            self.paused[i] = false;
        }
        // Drawn only when configured, so that other settings' seeds keep their faults.
        if let Some((p, max)) = self.cfg.clock_jump
            && self.rng.random_bool(p)
        {
            let i = self.rng.random_range(0..self.cfg.nodes);
            let by = self.rng.random_range(-(max as i64)..=max as i64);
            // Never before the simulation's epoch (clocks start 1000 ms in).
            self.skew[i] = (self.skew[i] + by).max(-900);
            self.ahead = self.ahead.max(self.skew[i]);
            self.stats.clock_steps += 1;
            if self.trace {
                eprintln!("t={} clock n{} stepped by {by} ms", self.now, i + 1);
            }
        }
    }

    /// Whether no other node is back empty (its storage lost, not refilled since), and every
    /// key's newest version a client has seen (acknowledged, or read) is durably held, or
    /// purged as a tombstone, on some node other than `i`: then losing `i`'s storage is within
    /// what replication promises to survive. Storage losses are drawn only then (a second
    /// loss before the first is repaired can take the only copy of a write, as it can in any
    /// system that keeps W copies).
    fn others_hold(&mut self, i: usize) -> bool {
        for (j, n) in self.nodes.iter().enumerate() {
            if n.as_ref().is_some_and(|n| n.established()) {
                self.back_empty[j] = false;
            }
        }
        // One at a time: the nodes that remember a node back empty tell it so, and a majority
        // of nodes back empty at once, remembering nobody, would take each other for new.
        if (0..self.cfg.nodes).any(|j| j != i && self.back_empty[j]) {
            return false;
        }
        self.seen.iter().enumerate().all(|(k, &seen)| {
            let key = &self.keys[k];
            seen == Version::ZERO
                || self.purged.get(&k).is_some_and(|&p| p >= seen)
                || (0..self.cfg.nodes).any(|j| {
                    j != i
                        && (self.stores[j].durable_version(key) >= Some(seen)
                            || self.stores[j].durable_hint_version(key) >= Some(seen))
                })
        })
    }

    /// Node `i`, down, loses its storage: it comes back empty, as a new incarnation, in its
    /// first life (its clock bound, hints, book and refill mark gone too).
    fn wipe(&mut self, i: usize) {
        if self.trace {
            eprintln!("t={} wipe n{}", self.now, i + 1);
        }
        self.stats.wipes += 1;
        self.back_empty[i] = true;
        self.wiped_at[i] = self.stamp();
        self.stores[i] = SimStore::default();
        self.incarnation[i] += 1;
        self.book[i] = vec![None; self.cfg.nodes];
        self.booted[i] = false;
        self.stored.retain(|_, (_, holders)| {
            holders.remove(&i);
            !holders.is_empty()
        });
    }

    fn client(&mut self) {
        let live: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| !self.paused[i])
            .collect();
        if live.is_empty() {
            return;
        }
        let write = self.rng.random_bool(self.cfg.write);
        let read = self.rng.random_bool(self.cfg.read);
        for is_write in [true, false] {
            if (is_write && !write) || (!is_write && !read) {
                continue;
            }
            let i = live[self.rng.random_range(0..live.len())];
            let key = self.rng.random_range(0..self.cfg.keys);
            let req = self.next_req;
            self.next_req += 1;
            let stamp = self.stamp();
            let now = self.clock(i);
            let k = self.keys[key].clone();
            let store = &mut self.stores[i];
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            if is_write {
                let value = if self.rng.random_bool(self.cfg.delete) {
                    None
                } else {
                    Some(Bytes::from(format!("v{req}")))
                };
                let text = value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                self.ops.insert(
                    req,
                    Op::Write {
                        key,
                        value: text,
                        stamp,
                    },
                );
                node.put(
                    store,
                    now,
                    req,
                    k,
                    value,
                    Opts {
                        quorum: self.cfg.w,
                        timeout_ms: self.cfg.timeout_ms,
                        degrade: false,
                    },
                );
            } else {
                let floor = self.acked[key]
                    .iter()
                    .map(|&(_, v)| v)
                    .max()
                    .unwrap_or(Version::ZERO);
                self.ops.insert(
                    req,
                    Op::Read {
                        key,
                        started: self.now,
                        floor,
                        stamp,
                    },
                );
                node.get(
                    now,
                    req,
                    k,
                    Opts {
                        quorum: self.cfg.r,
                        timeout_ms: self.cfg.timeout_ms,
                        degrade: false,
                    },
                );
            }
            self.drain(i);
        }
    }

    fn step(&mut self) {
        self.now += 1;
        if self.faults {
            self.faults();
            self.client();
        }
        self.flushes();
        let now = self.now;
        let paused = self.paused.clone();
        let (due, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|p| p.at <= now && !paused[p.to]);
        self.net = rest;
        for p in due {
            if self.nodes[p.to].is_none()
                || (p.from != p.to && self.blocked.contains(&(p.from, p.to)))
            {
                continue;
            }
            if p.from != p.to && p.inc == self.incarnation[p.from] {
                self.hello(p.from, p.to);
            }
            let clock = self.clock(p.to);
            let from = self.members[p.from].clone();
            let store = &mut self.stores[p.to];
            if self.trace {
                eprintln!("t={} n{}->n{} {:?}", self.now, p.from + 1, p.to + 1, p.msg);
            }
            if let Some(n) = self.nodes[p.to].as_mut() {
                n.step(store, clock, &from, p.msg);
            }
            self.drain(p.to);
        }
        for (i, &frozen) in paused.iter().enumerate() {
            if frozen {
                continue;
            }
            let clock = self.clock(i);
            let store = &mut self.stores[i];
            if let Some(n) = self.nodes[i].as_mut() {
                n.tick(store, clock);
            }
            self.drain(i);
        }
    }

    /// Runs: faults and traffic, then heal and settle, then the convergence checks.
    pub fn run(mut self) -> LlStats {
        for _ in 0..self.cfg.steps {
            self.step();
        }
        self.faults = false;
        self.set_partition(BTreeSet::new());
        self.paused = vec![false; self.cfg.nodes];
        for i in 0..self.cfg.nodes {
            if self.nodes[i].is_none() {
                self.boot(i);
            }
        }
        for _ in 0..self.cfg.settle_steps {
            self.step();
        }
        self.check_converged();
        // Writes never answered (their coordinator crashed) may or may not have happened.
        let open: Vec<(usize, Option<String>, u64)> = std::mem::take(&mut self.ops)
            .into_values()
            .filter_map(|o| match o {
                Op::Write { key, value, stamp } => Some((key, value, stamp)),
                Op::Read { .. } => None,
            })
            .collect();
        for (key, value, stamp) in open {
            let kind = if value.is_some() {
                kv_checker::OpKind::Write
            } else {
                kv_checker::OpKind::Delete
            };
            self.record(key, kind, value, stamp, kv_checker::Outcome::Unknown, None);
        }
        let report = kv_checker::check(
            &self.history,
            Some(std::time::Duration::from_secs(10)),
            1,
            false,
        );
        match report.verdict() {
            kv_checker::Verdict::Violation => self.stats.violations += 1,
            kv_checker::Verdict::Unknown => self.stats.unchecked += 1,
            kv_checker::Verdict::Linearizable => {}
        }
        if std::env::var_os("KV_SIM_SHOW").is_some() {
            for v in report.violations() {
                eprintln!("seed {}:\n{}", self.seed, kv_checker::render::text(v));
            }
        }
        let mut s = self.stats;
        for n in self.nodes.iter().flatten() {
            let st = n.stats();
            s.conflicts += st.conflicts;
            s.hints_delivered += st.hints_delivered;
            s.read_repairs += st.read_repairs;
            s.ae_repairs += st.ae_repairs;
            s.refills += st.refills;
            s.refilling_answers += st.refilling_answers;
            s.forwards_declined += st.forwards_declined;
        }
        s.conflicts += self.dead_stats.conflicts;
        s.hints_delivered += self.dead_stats.hints_delivered;
        s.read_repairs += self.dead_stats.read_repairs;
        s.ae_repairs += self.dead_stats.ae_repairs;
        s.refills += self.dead_stats.refills;
        s.refilling_answers += self.dead_stats.refilling_answers;
        s.forwards_declined += self.dead_stats.forwards_declined;
        s
    }

    fn check_converged(&self) {
        let node = self.nodes[0].as_ref().expect("all up after settling");
        for (k, key) in self.keys.iter().enumerate() {
            let replicas = node.replicas(key);
            let newest = self
                .stores
                .iter()
                .filter_map(|s| s.data.get(key).map(|c| c.version))
                .max();
            let copies: Vec<(String, Option<Version>)> = replicas
                .iter()
                .map(|r| {
                    let i = self.members.binary_search(r).expect("member");
                    (r.0.clone(), self.stores[i].data.get(key).map(|s| s.version))
                })
                .collect();
            // A replica may lack a key whose newest copy is a tombstone another node has
            // purged: each purges by its own clock, and stepped clocks can be seconds apart
            // after the run (the others purge it once their clocks pass its grace period).
            let newest_is_tombstone = self.stores.iter().any(|s| {
                s.data
                    .get(key)
                    .is_some_and(|c| Some(c.version) == newest && c.value.is_none())
            });
            let purged_newest =
                newest_is_tombstone && self.purged.get(&k).is_some_and(|&p| Some(p) >= newest);
            // Purged by age alone (`TombstoneGc::Timeout`), a tombstone also lets back what it
            // hid, from a replica that missed it: Cassandra's zombie, counted by reads as
            // `resurrected`. Under clock steps the replicas whose clocks passed the grace period
            // purge it and hand the older copy to each other, while one whose clock is seconds
            // behind still holds the tombstone and sends it again: the copies go back and forth
            // until that clock passes the grace period too, and then all hold the zombie (seed
            // 62000910 of `sim_leaderless_tombstones_under_clock_steps_go_by_each_nodes_clock`
            // ended with one replica's clock 2.2 s short of it).
            let zombie_allowed = purged_newest && self.cfg.tombstone_gc == TombstoneGc::Timeout;
            if copies.iter().any(|(_, v)| {
                *v != newest && !(v.is_none() && purged_newest) && !(*v < newest && zombie_allowed)
            }) {
                self.fail(format!(
                    "key {} did not converge: replicas {copies:?}, newest anywhere {newest:?} \
                     (a tombstone: {newest_is_tombstone}), newest purged {:?}",
                    String::from_utf8_lossy(key),
                    self.purged.get(&k)
                ));
            }
            // A purged tombstone counts: what it hid is gone by design.
            let purged = self.purged.get(&k).copied();
            if let Some(&(at, v)) = self.acked[k].iter().max_by_key(|(_, v)| *v)
                && newest.max(purged) < Some(v)
            {
                self.fail(format!(
                    "write {v} to {} acknowledged at {at} was lost: replicas hold {copies:?}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        for s in &self.stores {
            for c in s.data.values() {
                if let Some(v) = &c.value
                    && let Some(&seen) = self.versions.get(&String::from_utf8_lossy(v).into_owned())
                    && seen != c.version
                {
                    self.fail(format!(
                        "a replica holds {} with version {}, answered with {seen}: one write \
                         executed twice",
                        String::from_utf8_lossy(v),
                        c.version
                    ));
                }
            }
        }
        // Replicas back empty have refilled themselves (none waits for another forever), and
        // know they are not.
        for (i, n) in self.nodes.iter().enumerate() {
            if n.as_ref().is_some_and(|n| !n.established()) {
                self.fail(format!(
                    "{} is not established after the run (refilling: {})",
                    self.members[i],
                    n.as_ref().is_some_and(|n| n.refilling())
                ));
            }
        }
        for (i, s) in self.stores.iter().enumerate() {
            if !s.hints.is_empty() {
                self.fail(format!(
                    "{} still holds {} hints",
                    self.members[i],
                    s.hints.len()
                ));
            }
        }
    }
}
