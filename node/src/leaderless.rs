//! Leaderless replication around the sans-IO core of `kv_replica::leaderless`: the storage
//! adapter (copies and hints on the node's durable engines), the driver task, and the wire form
//! of the core's messages.
//!
//! ```text
//!  Kv RPC ──► LlHandle::put/get ─┐
//!  Peer stream ─► LlHandle::peer ─┼─► mpsc ─► driver task: Leaderless::{put,get,step,tick}
//!  every 10 ms: tick + reachability ┘            │ actions
//!        Send (after = durable LSN) ◄────────────┤ one wait_durable per batch, then transport
//!        Write/Read answers ─► oneshot ─► RPC ◄──┘ (messages to itself loop back at once)
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use kv_proto::kv::v1 as pb;
use kv_replica::leaderless::{
    Action, Config, Leaderless, Lsn, Msg, Opts, QuorumFailure, ReadFanout, ReadOk, ReadRepair,
    ReplicaRead, ReplicaState, Ring, Stats, Store, Stored, TombstoneGc, VClock, WriteOk,
};
use kv_replica::{NodeId, Quorum, Version};
use tokio::sync::{mpsc, oneshot};

use crate::data_dir::ClockBound;
use crate::storage::{Entry, FailObserver, Storage, Write, now_ms};
use crate::transport::Transport;

/// Tunables of leaderless mode (from the node's configuration).
#[derive(Debug, Clone)]
pub struct LlOptions {
    /// Read repair before or after answering.
    pub read_repair: ReadRepair,
    /// Which replicas a read asks.
    pub read_fanout: ReadFanout,
    /// What a replica answers a read with.
    pub replica_read: ReplicaRead,
    /// Count hint holders toward W.
    pub sloppy_quorum: bool,
    /// Keep hints at all.
    pub hinted_handoff: bool,
    /// A replica silent this long after a write gets a hint.
    pub hint_after: Duration,
    /// No new hints for a replica unreachable longer than this (zero: no limit).
    pub max_hint_window: Duration,
    /// Anti-entropy exchange period (zero: off).
    pub anti_entropy: Duration,
    /// Tombstone grace period.
    pub tombstone_grace: Duration,
    /// What else a tombstone purge waits for.
    pub tombstone_gc: TombstoneGc,
    /// Ring tokens per node.
    pub vnodes: u32,
    /// The node's first start on its data (`kv_replica::leaderless::Config::first_life`).
    pub first_life: bool,
    /// It was refilling itself when it stopped (`kv_replica::leaderless::Config::refilling`).
    pub refilling: bool,
}

/// Marks an LSN of the hint store (the core treats LSNs as opaque).
const HINT_LSN: Lsn = 1 << 63;
/// A write that storage refused: nothing that depends on it is ever sent.
const FAILED_LSN: Lsn = u64::MAX;

/// The core's [`Store`] over the node's engines: copies in `data` (the version vector in the
/// entry's context), hints in `hints` under `target \0 key`.
struct LlStore {
    data: Arc<dyn Storage>,
    hints: Arc<dyn Storage>,
    /// The copies that writes not yet durable replaced, so that a read is answered at once
    /// with the newest copy a crash would leave (`ReplicaRead::LastDurable`); `None` with
    /// `Newest`, and in memory, where a write is as durable as it will ever be once stored.
    replaced: Option<Replaced>,
}

/// Per key written lately: the LSN of its newest write, and the copies the writes since its
/// last durable copy replaced. Pruned of keys whose newest write is durable once it has grown
/// past `prune_at`.
#[derive(Default)]
struct Replaced {
    keys: HashMap<Bytes, (Lsn, Vec<Earlier>)>,
    prune_at: usize,
}

/// A copy replaced (`None`: there was none), with the LSN that stored it (0 for none); oldest
/// first.
type Earlier = (Option<Entry>, Lsn);

impl Replaced {
    /// Before `key` is replaced by the write with `lsn`: remembers its copy `prev`.
    fn note(&mut self, key: &Bytes, prev: Option<Entry>, lsn: Lsn, durable: Lsn) {
        let prev_lsn = prev.as_ref().map_or(0, |e| e.lsn);
        let slot = self.keys.entry(key.clone()).or_default();
        if prev_lsn <= durable {
            // The copy being replaced is durable: nothing older can be the answer any more.
            slot.1.clear();
        }
        slot.0 = lsn;
        slot.1.push((prev, prev_lsn));
        if self.keys.len() >= self.prune_at {
            self.keys.retain(|_, (newest, _)| *newest > durable);
            self.prune_at = (2 * self.keys.len()).max(1024);
        }
    }

    /// The newest copy of `key` a crash would leave, for a key whose newest write is not
    /// durable by `durable`: `Some(None)` when that is no copy at all; `None` when this does
    /// not know (a key it never saw replaced, or none of whose earlier copies is durable).
    fn durable_copy(&self, key: &[u8], durable: Lsn) -> Option<Option<&Entry>> {
        let (_, earlier) = self.keys.get(key)?;
        earlier
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= durable)
            .map(|(e, _)| e.as_ref())
    }
}

fn stored_of(e: Entry) -> Stored {
    Stored {
        value: e.value,
        version: e.version,
        clock: VClock::decode(&e.context).unwrap_or_default(),
        written_ms: e.written_ms,
    }
}

fn hint_key(target: &NodeId, key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(target.0.len() + 1 + key.len());
    k.extend_from_slice(target.0.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    Bytes::from(k)
}

impl LlStore {
    fn write(&self, store: &Arc<dyn Storage>, w: Write) -> Lsn {
        match store.write(w) {
            Ok(lsn) => lsn,
            Err(e) => {
                tracing::error!(error = %e, "storage refused a write; it will not be acknowledged");
                FAILED_LSN
            }
        }
    }
}

impl Store for LlStore {
    fn get(&self, key: &[u8]) -> Option<Stored> {
        self.data.get(key).map(stored_of)
    }

    fn get_at(&self, key: &[u8]) -> Option<(Stored, Lsn)> {
        self.data.get(key).map(|e| {
            let lsn = e.lsn;
            (stored_of(e), lsn)
        })
    }

    fn get_durable(&self, key: &[u8]) -> Option<(Stored, Lsn)> {
        let cur = self.data.get(key)?;
        let durable = self.data.durable_lsn();
        if cur.lsn > durable
            && let Some(copy) = self
                .replaced
                .as_ref()
                .and_then(|r| r.durable_copy(key, durable))
        {
            return copy.map(|e| (stored_of(e.clone()), e.lsn));
        }
        // Durable, or not known here: the newest copy, sent once durable.
        let lsn = cur.lsn;
        Some((stored_of(cur), lsn))
    }

    fn put(&mut self, key: &Bytes, s: &Stored) -> Lsn {
        let prev = self.replaced.is_some().then(|| self.data.get(key));
        let lsn = self.write(
            &self.data,
            Write {
                key: key.clone(),
                value: s.value.clone(),
                version: s.version,
                written_ms: s.written_ms,
                context: s.clock.encode(),
            },
        );
        if let (Some(r), Some(prev)) = (self.replaced.as_mut(), prev)
            && lsn != FAILED_LSN
        {
            r.note(key, prev, lsn, self.data.durable_lsn());
        }
        lsn
    }

    fn last_lsn(&self) -> Lsn {
        self.data.stats().last_lsn
    }

    fn scan(&self, f: &mut dyn FnMut(&Bytes, &Stored)) {
        self.data.scan(&mut |k, e| f(k, &stored_of(e.clone())));
    }

    fn purge_tombstones(
        &mut self,
        older_than_ms: u64,
        may_purge: &mut dyn FnMut(&Bytes, &Stored, Lsn) -> bool,
    ) -> usize {
        self.data.purge_tombstones_if(older_than_ms, &mut |k, e| {
            may_purge(k, &stored_of(e.clone()), e.lsn)
        })
    }

    fn put_hint(&mut self, target: &NodeId, key: &Bytes, s: &Stored) -> Lsn {
        // A hint's value is `has_value:u8 value`, so that a hinted delete is not mistaken for a
        // delivered (removed) hint, which is a tombstone in the hint store.
        let mut v = Vec::with_capacity(1 + s.value.as_ref().map_or(0, |v| v.len()));
        v.put_u8(u8::from(s.value.is_some()));
        if let Some(value) = &s.value {
            v.extend_from_slice(value);
        }
        let k = hint_key(target, key);
        if let Some(cur) = self.hints.get(&k)
            && cur.value.is_some()
            && cur.version >= s.version
        {
            return self.hints.stats().last_lsn | HINT_LSN;
        }
        let lsn = self.write(
            &self.hints,
            Write {
                key: k,
                value: Some(Bytes::from(v)),
                version: s.version,
                written_ms: s.written_ms,
                context: s.clock.encode(),
            },
        );
        if lsn == FAILED_LSN {
            lsn
        } else {
            lsn | HINT_LSN
        }
    }

    fn remove_hint(&mut self, target: &NodeId, key: &Bytes, version: Version) {
        let k = hint_key(target, key);
        if let Some(cur) = self.hints.get(&k)
            && cur.value.is_some()
            && cur.version <= version
        {
            self.write(
                &self.hints,
                Write {
                    key: k,
                    value: None,
                    version: cur.version,
                    written_ms: 0,
                    context: Bytes::new(),
                },
            );
        }
    }

    fn hints(&self, target: &NodeId, limit: usize) -> Vec<(Bytes, Stored)> {
        let prefix = hint_key(target, b"");
        let mut out = Vec::new();
        self.hints.scan(&mut |k, e| {
            if out.len() >= limit || !k.starts_with(&prefix) {
                return;
            }
            let Some(v) = &e.value else { return };
            let Some((&has, rest)) = v.split_first() else {
                return;
            };
            out.push((
                k.slice(prefix.len()..),
                Stored {
                    value: (has == 1).then(|| v.slice(1..1 + rest.len())),
                    version: e.version,
                    clock: VClock::decode(&e.context).unwrap_or_default(),
                    written_ms: e.written_ms,
                },
            ));
        });
        out
    }

    fn hint_count(&self) -> u64 {
        self.hints.stats().live_keys
    }
}

type WriteReply = oneshot::Sender<Result<WriteOk, QuorumFailure>>;
type ReadReply = oneshot::Sender<Result<ReadOk, QuorumFailure>>;

enum In {
    Put {
        key: Bytes,
        value: Option<Bytes>,
        opts: Opts,
        reply: WriteReply,
    },
    Get {
        key: Bytes,
        opts: Opts,
        reply: ReadReply,
    },
    Peer {
        from: NodeId,
        msg: Msg,
    },
    AntiEntropy,
    /// A bound on the clock is durable (`Action::PersistClock`).
    ClockPersisted(u64),
    /// A peer connected back empty, or refilling (`Leaderless::peer_refilling`).
    PeerRefilling(NodeId),
}

struct Shared {
    stats: Mutex<Stats>,
    reachable: Mutex<Vec<NodeId>>,
    hints_pending: AtomicU64,
    ring: Ring,
    members: Vec<NodeId>,
    quorum: Quorum,
    /// The hint store, for counting hints per target on demand (`LlHandle::hints_by_target`).
    hints: Arc<dyn Storage>,
    /// Whether this node is refilling, and the peers it takes to be (as of the last batch).
    refilling: AtomicBool,
    /// Whether it is established (`Leaderless::established`, as of the last batch).
    established: AtomicBool,
    refilling_peers: Mutex<Vec<NodeId>>,
}

/// A handle on the leaderless driver (cheap to clone).
#[derive(Clone)]
pub struct LlHandle {
    tx: mpsc::UnboundedSender<In>,
    shared: Arc<Shared>,
}

/// The driver is gone (the node is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replication driver has stopped (node shutting down)")]
pub struct Stopped;

impl LlHandle {
    /// Writes (`value: None` deletes) through the core.
    ///
    /// # Errors
    /// [`Stopped`] when the driver is gone.
    pub async fn put(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        opts: Opts,
    ) -> Result<Result<WriteOk, QuorumFailure>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(In::Put {
                key,
                value,
                opts,
                reply,
            })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Reads through the core.
    ///
    /// # Errors
    /// [`Stopped`] when the driver is gone.
    pub async fn get(
        &self,
        key: Bytes,
        opts: Opts,
    ) -> Result<Result<ReadOk, QuorumFailure>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(In::Get { key, opts, reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A message from a peer.
    pub fn peer(&self, from: NodeId, msg: Msg) {
        let _ = self.tx.send(In::Peer { from, msg });
    }

    /// `peer` connected back empty, or says it is refilling: its read answers stop counting
    /// (before any message it sends after this).
    pub fn peer_refilling(&self, peer: NodeId) {
        let mut list = self
            .shared
            .refilling_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !list.contains(&peer) {
            list.push(peer.clone());
        }
        let _ = self.tx.send(In::PeerRefilling(peer));
    }

    /// Whether this node is established (`Leaderless::established`).
    pub fn established(&self) -> bool {
        self.shared.established.load(Ordering::Relaxed)
    }

    /// Whether `peer` is taken to be refilling (it has not said it refilled).
    pub fn is_refilling_peer(&self, peer: &NodeId) -> bool {
        self.shared
            .refilling_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    /// Whether this node is refilling itself, and the peers it takes to be.
    pub fn refill_state(&self) -> (bool, Vec<NodeId>) {
        (
            self.shared.refilling.load(Ordering::Relaxed),
            self.shared
                .refilling_peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Starts an anti-entropy exchange now.
    pub fn anti_entropy(&self) {
        let _ = self.tx.send(In::AntiEntropy);
    }

    /// The core's counters as of its last batch.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peers that look reachable (connected, not cut off by a fault).
    pub fn reachable(&self) -> Vec<NodeId> {
        self.shared
            .reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hints this node holds for others.
    pub fn hints_pending(&self) -> u64 {
        self.shared.hints_pending.load(Ordering::Relaxed)
    }

    /// Hints this node holds, per replica they are for (a scan of the hint store: for status,
    /// not for every request).
    pub fn hints_by_target(&self) -> Vec<(NodeId, u64)> {
        let mut counts: std::collections::BTreeMap<Bytes, u64> = Default::default();
        self.shared.hints.scan(&mut |k, e| {
            // Delivered hints are tombstones until purged.
            if e.value.is_some()
                && let Some(end) = k.iter().position(|&b| b == 0)
            {
                *counts.entry(k.slice(..end)).or_default() += 1;
            }
        });
        counts
            .into_iter()
            .map(|(t, n)| (NodeId(String::from_utf8_lossy(&t).into_owned()), n))
            .collect()
    }

    /// The replicas of `key`, in preference order.
    pub fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        self.shared
            .ring
            .preference_list(key, self.shared.quorum.n as usize)
            .into_iter()
            .map(|i| self.shared.members[i].clone())
            .collect()
    }
}

/// Starts the driver task (on the current tokio runtime).
///
/// # Panics
/// Outside a tokio runtime.
pub fn start(
    id: NodeId,
    members: Vec<NodeId>,
    quorum: Quorum,
    opts: &LlOptions,
    storage: LlStorage,
    transport: Transport,
) -> LlHandle {
    let LlStorage {
        data,
        hints,
        clock,
        dir,
    } = storage;
    let mut members = members;
    members.sort();
    let mut cfg = Config::new(id.clone(), members.clone(), quorum);
    cfg.vnodes = opts.vnodes;
    cfg.read_repair = opts.read_repair;
    cfg.read_fanout = opts.read_fanout;
    cfg.replica_read = opts.replica_read;
    cfg.sloppy_quorum = opts.sloppy_quorum;
    cfg.hinted_handoff = opts.hinted_handoff;
    cfg.hint_after_ms = opts.hint_after.as_millis() as u64;
    cfg.max_hint_window_ms = opts.max_hint_window.as_millis() as u64;
    cfg.hint_retry_ms = 500;
    cfg.anti_entropy_ms = opts.anti_entropy.as_millis() as u64;
    cfg.tombstone_grace_ms = opts.tombstone_grace.as_millis() as u64;
    cfg.tombstone_gc = opts.tombstone_gc;
    cfg.first_life = opts.first_life;
    cfg.refilling = opts.refilling;
    cfg.first_op = rand::random_range(1..kv_replica::leaderless::OP_IDS_BELOW);
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let shared = Arc::new(Shared {
        stats: Mutex::new(Stats::default()),
        reachable: Mutex::new(Vec::new()),
        hints_pending: AtomicU64::new(0),
        ring: Ring::new(&names, opts.vnodes),
        members: members.clone(),
        quorum,
        hints: hints.clone(),
        refilling: AtomicBool::new(opts.refilling),
        established: AtomicBool::new(false),
        refilling_peers: Mutex::new(Vec::new()),
    });
    let replaced =
        (dir.is_some() && opts.replica_read == ReplicaRead::LastDurable).then(Replaced::default);
    let store = LlStore {
        data,
        hints,
        replaced,
    };
    // The clock starts above every timestamp already stored and every one an earlier life
    // gave out, so versions never go backwards or repeat across a restart whatever the wall
    // clock does.
    let mut floor = clock.durable();
    store.scan(&mut |_, s| floor = floor.max(s.version.epoch));
    let timers = TimerClock::new(now_ms());
    let ahead_ms = kv_replica::leaderless::physical_ms(floor).saturating_sub(now_ms());
    if ahead_ms > 0 {
        tracing::info!(
            ahead_ms,
            "the clock starts ahead of the wall clock (at the bound an earlier life recorded): \
             until the wall clock passes it, this node leaves coordinating writes to other \
             replicas, so that no write gets a version from the future"
        );
    }
    let mut core = Leaderless::new(cfg, floor, timers.read(now_ms()).0);
    core.recover_hints(&store);
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = LlHandle {
        tx: tx.clone(),
        shared: shared.clone(),
    };
    let driver = Driver {
        core,
        store,
        transport,
        me: id,
        members,
        tx,
        shared,
        writes: HashMap::new(),
        reads: HashMap::new(),
        next_req: 1,
        local: VecDeque::new(),
        clock,
        timers,
        dir,
        refill_record: Arc::default(),
        peers_refilling_seen: 0,
    };
    driver.transport.set_refilling(opts.refilling);
    tokio::spawn(driver.run(rx));
    handle
}

struct Driver {
    core: Leaderless,
    store: LlStore,
    transport: Transport,
    me: NodeId,
    members: Vec<NodeId>,
    tx: mpsc::UnboundedSender<In>,
    shared: Arc<Shared>,
    writes: HashMap<u64, WriteReply>,
    reads: HashMap<u64, ReadReply>,
    next_req: u64,
    /// Messages to itself, delivered before the next input.
    local: VecDeque<Msg>,
    clock: ClockKeeper,
    timers: TimerClock,
    /// The data directory (`LlStorage::dir`).
    dir: Option<std::path::PathBuf>,
    /// Records of the refill one at a time, and the state to record.
    refill_record: Arc<(Mutex<()>, AtomicBool)>,
    /// `Leaderless::peers_refilling_changes` when last copied to `Shared::refilling_peers`.
    peers_refilling_seen: u64,
}

/// The time the core's timers run on (request deadlines, retries, hint rounds, anti-entropy):
/// the wall clock at the node's start plus the monotonic time since, so that a step of the
/// wall clock (NTP stepping a clock that was far off, an operator's `date -s`) neither fires
/// every pending timer at once nor holds them all back by the step. Versions and tombstone
/// ages still follow the wall clock: the core adds the difference as its clock offset (its
/// hybrid clock never goes back). Before, timers ran on the wall clock: in the simulator, a
/// node whose clock was stepped back by seconds held its hints that long (seeds 10, 24, 28, 38,
/// 39 of a sweep with clock steps of up to 5 s; with real processes,
/// `nodes_whose_clocks_step_back_still_deliver_hints`).
struct TimerClock {
    wall_at_start: u64,
    start: Instant,
}

impl TimerClock {
    fn new(wall_ms: u64) -> TimerClock {
        TimerClock {
            wall_at_start: wall_ms,
            start: Instant::now(),
        }
    }

    /// The timer time now, and how far the wall clock (`wall_ms`, read now) is ahead of it.
    fn read(&self, wall_ms: u64) -> (u64, i64) {
        let timer = self
            .wall_at_start
            .saturating_add(self.start.elapsed().as_millis() as u64);
        (timer, wall_ms as i64 - timer as i64)
    }
}

/// What a leaderless node keeps durably.
pub struct LlStorage {
    /// The copies it holds as a replica.
    pub data: Arc<dyn Storage>,
    /// The hints it holds for other replicas.
    pub hints: Arc<dyn Storage>,
    /// The bound on its clock.
    pub clock: ClockKeeper,
    /// The data directory, where a refill is recorded (`data_dir::REFILLING_FILE`); `None` in
    /// memory.
    pub dir: Option<std::path::PathBuf>,
}

/// Where a leaderless node records the bound on its clock (`Action::PersistClock`).
pub enum ClockKeeper {
    /// In memory: a node starts empty every time, with no earlier life to repeat.
    Memory,
    /// `DATA_DIR/clock`; a failure to record is reported to the observer (the node stops).
    Disk(Arc<Mutex<ClockBound>>, FailObserver),
}

impl ClockKeeper {
    /// The bound recorded by earlier lives.
    fn durable(&self) -> u64 {
        match self {
            ClockKeeper::Memory => 0,
            ClockKeeper::Disk(c, _) => c.lock().unwrap_or_else(|p| p.into_inner()).durable(),
        }
    }
}

impl Driver {
    /// The timer time to give the core now; sets its clock offset so that its versions follow
    /// the wall clock (plus the offset the fault filter holds).
    fn now(&mut self) -> u64 {
        let (timer, wall_ahead) = self.timers.read(now_ms());
        self.core
            .set_clock_offset(wall_ahead.saturating_add(self.transport.clock_offset_ms()));
        timer
    }

    /// Tells the core which peers the transport can reach now (and `list` who they are).
    fn refresh_reachable(&mut self, mut list: Option<&mut Vec<NodeId>>) {
        for m in &self.members {
            if *m != self.me {
                let up = self.transport.reachable(m);
                self.core.set_reachable(m, up);
                if up && let Some(l) = list.as_deref_mut() {
                    l.push(m.clone());
                }
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<In>) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut purge_hints = 0u32;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    // A partition set a moment ago (`kvctl fault partition`) is known before
                    // these requests choose where to go, not at the next tick: a write
                    // forwarded into it could only end "outcome unknown".
                    self.refresh_reachable(None);
                    self.input(m);
                    // Take whatever else queued meanwhile: one batch, one durability wait.
                    for _ in 0..512 {
                        match rx.try_recv() {
                            Ok(m) => self.input(m),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {
                    let mut reachable = Vec::new();
                    self.refresh_reachable(Some(&mut reachable));
                    *self.shared.reachable.lock().unwrap_or_else(|p| p.into_inner()) = reachable;
                    let now = self.now();
                    for a in self.transport.hello_answers() {
                        self.core
                            .hello_answered(now, &a.peer, a.refilling, a.established);
                    }
                    self.core.tick(&mut self.store, now);
                    purge_hints += 1;
                    if purge_hints >= 100 {
                        // Delivered hints are tombstones in the hint store: drop them.
                        purge_hints = 0;
                        self.store.hints.purge_tombstones(1);
                    }
                    self.shared
                        .hints_pending
                        .store(self.store.hint_count(), Ordering::Relaxed);
                }
            }
            self.flush();
            *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = self.core.stats();
            self.shared
                .established
                .store(self.core.established(), Ordering::Relaxed);
            let refilling = self.core.refilling();
            if refilling != self.shared.refilling.swap(refilling, Ordering::Relaxed) {
                self.transport.set_refilling(refilling);
            }
            let changes = self.core.peers_refilling_changes();
            if changes != self.peers_refilling_seen {
                self.peers_refilling_seen = changes;
                *self
                    .shared
                    .refilling_peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = self.core.refilling_peers();
            }
        }
    }

    fn input(&mut self, m: In) {
        let now = self.now();
        match m {
            In::Put {
                key,
                value,
                opts,
                reply,
            } => {
                let req = self.next_req;
                self.next_req += 1;
                self.writes.insert(req, reply);
                self.core.put(&mut self.store, now, req, key, value, opts);
            }
            In::Get { key, opts, reply } => {
                let req = self.next_req;
                self.next_req += 1;
                self.reads.insert(req, reply);
                self.core.get(now, req, key, opts);
            }
            In::Peer { from, msg } => self.core.step(&mut self.store, now, &from, msg),
            In::AntiEntropy => self.core.anti_entropy(&self.store),
            In::ClockPersisted(upto) => self.core.clock_persisted(upto),
            In::PeerRefilling(peer) => self.core.peer_refilling(&peer),
        }
    }

    /// Records a bound on the clock; the core hears of it when it is durable.
    fn persist_clock(&mut self, upto: u64) {
        let (bound, failed) = match &self.clock {
            ClockKeeper::Memory => {
                self.core.clock_persisted(upto);
                return;
            }
            ClockKeeper::Disk(bound, failed) => (bound.clone(), failed.clone()),
        };
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut bound = bound.lock().unwrap_or_else(|p| p.into_inner());
            match bound.record(upto) {
                Ok(durable) => {
                    let _ = tx.send(In::ClockPersisted(durable));
                }
                Err(e) => failed(&format!(
                    "cannot record the clock bound in {}: {e}",
                    bound.path().display()
                )),
            }
        });
    }

    /// Records whether this node is refilling (in its data directory; nothing in memory).
    fn persist_refilling(&self, on: bool) {
        if on {
            tracing::warn!(
                "this node came back empty (its peers remember it): refilling itself from them; \
                 its read answers do not count until it has"
            );
        } else if self.core.stats().refills == 0 {
            // A first life learnt it is new (the mark is its first start's, see
            // `data_dir::check_or_record`): a refill this life would have counted.
            tracing::info!(
                "no peer knew this node: it is new to the cluster, and its read answers count"
            );
        } else {
            tracing::info!("refilled from the peers: read answers count again");
        }
        let Some(dir) = self.dir.clone() else {
            return;
        };
        // The last state asked for is the one recorded, whichever task runs last.
        let wanted = self.refill_record.clone();
        wanted.1.store(on, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = wanted.0.lock().unwrap_or_else(|p| p.into_inner());
            let on = wanted.1.load(Ordering::Relaxed);
            if let Err(e) = crate::data_dir::record_refilling(&dir, on) {
                tracing::error!(error = %e, dir = %dir.display(), "cannot record the refill");
            }
        });
    }

    /// Carries out the core's actions until it has none; sends that must wait for durability
    /// are handed, as one batch, to a task that waits for the highest LSN among them. Lazy
    /// ones (the coordinator's own copies, see [`Action::Send`]) wait in a batch of their own
    /// that does not hurry the flush: they share the fsync of the next write somebody waits
    /// for (this node is a replica for other coordinators too), or the store's bound.
    fn flush(&mut self) {
        let mut after_data: Vec<(NodeId, Msg)> = Vec::new();
        let mut after_hints: Vec<(NodeId, Msg)> = Vec::new();
        let mut lazy_data: Vec<(NodeId, Msg)> = Vec::new();
        let (mut max_data, mut max_hints, mut max_lazy) = (0, 0, 0);
        // Read once per batch (each read takes the storage lock); a send whose LSN became
        // durable meanwhile goes out with the batch's wait, which then returns at once.
        let durable_data = self.store.data.stats().durable_lsn;
        let durable_hints = self.store.hints.stats().durable_lsn;
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                match self.local.pop_front() {
                    Some(msg) => {
                        let me = self.me.clone();
                        let now = self.now();
                        self.core.step(&mut self.store, now, &me, msg);
                        continue;
                    }
                    None => break,
                }
            }
            for a in actions {
                match a {
                    Action::Send {
                        to,
                        msg,
                        after,
                        lazy,
                    } => match after {
                        Some(FAILED_LSN) => {}
                        Some(lsn) if lsn & HINT_LSN != 0 => {
                            let lsn = lsn & !HINT_LSN;
                            if durable_hints >= lsn {
                                self.send_now(to, msg);
                            } else {
                                max_hints = max_hints.max(lsn);
                                after_hints.push((to, msg));
                            }
                        }
                        Some(lsn) if durable_data < lsn && lazy => {
                            max_lazy = max_lazy.max(lsn);
                            lazy_data.push((to, msg));
                        }
                        Some(lsn) if durable_data < lsn => {
                            max_data = max_data.max(lsn);
                            after_data.push((to, msg));
                        }
                        _ => self.send_now(to, msg),
                    },
                    Action::Write { req, result } => {
                        if let Some(r) = self.writes.remove(&req) {
                            let _ = r.send(result);
                        }
                    }
                    Action::Read { req, result } => {
                        if let Some(r) = self.reads.remove(&req) {
                            let _ = r.send(result);
                        }
                    }
                    Action::PersistClock { upto } => self.persist_clock(upto),
                    Action::PersistRefilling(on) => self.persist_refilling(on),
                }
            }
        }
        for (store, lsn, batch, lazy) in [
            (self.store.data.clone(), max_data, after_data, false),
            (self.store.data.clone(), max_lazy, lazy_data, true),
            (self.store.hints.clone(), max_hints, after_hints, false),
        ] {
            if batch.is_empty() {
                continue;
            }
            let durable = if lazy {
                store.wait_durable_lazily(lsn)
            } else {
                store.wait_durable(lsn)
            };
            let transport = self.transport.clone();
            let tx = self.tx.clone();
            let me = self.me.clone();
            tokio::spawn(async move {
                if let Err(e) = durable.await {
                    tracing::error!(error = %e, "storage failed; acknowledgements withheld");
                    return;
                }
                for (to, msg) in batch {
                    if to == me {
                        let _ = tx.send(In::Peer {
                            from: me.clone(),
                            msg,
                        });
                    } else {
                        transport.send_wire(&to, to_wire(msg));
                    }
                }
            });
        }
    }

    fn send_now(&mut self, to: NodeId, msg: Msg) {
        if to == self.me {
            self.local.push_back(msg);
        } else {
            self.transport.send_wire(&to, to_wire(msg));
        }
    }
}

// ------------------------------------------------------------------------------- wire form

fn stored_to_wire(s: Stored) -> pb::LlStored {
    pb::LlStored {
        has_value: s.value.is_some(),
        value: s.value.unwrap_or_default(),
        epoch: s.version.epoch,
        counter: s.version.counter,
        clock: s.clock.encode(),
        written_ms: s.written_ms,
    }
}

fn stored_from_wire(s: pb::LlStored) -> Option<Stored> {
    Some(Stored {
        value: s.has_value.then(|| crate::detach(s.value)),
        version: Version::new(s.epoch, s.counter),
        clock: VClock::decode(&s.clock)?,
        written_ms: s.written_ms,
    })
}

fn state_code(s: ReplicaState) -> u32 {
    match s {
        ReplicaState::Ok => 0,
        ReplicaState::Timeout => 1,
        ReplicaState::Unreachable => 2,
        ReplicaState::NotAsked => 3,
        ReplicaState::Refilling => 4,
    }
}

fn names(v: Vec<NodeId>) -> Vec<String> {
    v.into_iter().map(|n| n.0).collect()
}

fn ids(v: Vec<String>) -> Vec<NodeId> {
    v.into_iter().map(NodeId).collect()
}

/// A core message in its wire form.
pub fn to_wire(m: Msg) -> pb::peer_envelope::Msg {
    use pb::peer_envelope::Msg as W;
    match m {
        Msg::Write { req, key, stored } => W::LlWrite(pb::LlWrite {
            req,
            key,
            stored: Some(stored_to_wire(stored)),
        }),
        Msg::WriteAck {
            req,
            hlc,
            superseded,
        } => W::LlWriteAck(pb::LlWriteAck {
            req,
            hlc,
            superseded,
        }),
        Msg::Read { req, key } => W::LlRead(pb::LlRead { req, key }),
        Msg::ReadReply {
            req,
            stored,
            hlc,
            refilling,
        } => W::LlReadReply(pb::LlReadReply {
            req,
            stored: stored.map(stored_to_wire),
            hlc,
            refilling,
        }),
        Msg::Refilled => W::LlRefilled(pb::LlRefilled {}),
        Msg::Forward {
            req,
            key,
            value,
            w,
            timeout_ms,
            degrade,
            age_ms,
            sent_hlc,
        } => W::LlForward(pb::LlForward {
            req,
            key,
            has_value: value.is_some(),
            value: value.unwrap_or_default(),
            w,
            timeout_ms,
            degrade,
            age_ms,
            sent_hlc,
        }),
        Msg::ForwardDeclined { req } => W::LlForwardDeclined(pb::LlForwardDeclined { req }),
        Msg::ForwardReply { req, result } => W::LlForwardReply(match result {
            Ok(ok) => pb::LlForwardReply {
                req,
                ok: true,
                epoch: ok.version.epoch,
                counter: ok.version.counter,
                coordinator: ok.coordinator.0,
                acked: names(ok.acked),
                hinted: names(ok.hinted),
                degraded: ok.degraded,
                superseded_on: names(ok.superseded_on),
                ..Default::default()
            },
            Err(f) => pb::LlForwardReply {
                req,
                ok: false,
                needed: f.needed,
                got: f.got,
                replica_states: f.replicas.iter().map(|r| state_code(r.1)).collect(),
                replica_ids: f.replicas.into_iter().map(|r| r.0.0).collect(),
                may_have_happened: f.may_have_happened,
                ..Default::default()
            },
        }),
        Msg::StoreHint {
            req,
            target,
            key,
            stored,
        } => W::LlStoreHint(pb::LlStoreHint {
            req,
            target: target.0,
            key,
            stored: Some(stored_to_wire(stored)),
        }),
        Msg::HintStored { req, target } => W::LlHintStored(pb::LlHintStored {
            req,
            target: target.0,
        }),
        Msg::Hint { key, stored } => W::LlHint(pb::LlHint {
            key,
            stored: Some(stored_to_wire(stored)),
        }),
        Msg::HintAck { key, version } => W::LlHintAck(pb::LlHintAck {
            key,
            epoch: version.epoch,
            counter: version.counter,
        }),
        Msg::AeRoot { root, upto } => W::AeRoot(pb::AeRoot { root, upto }),
        Msg::AeLeaves { leaves, upto } => W::AeLeaves(pb::AeLeaves { leaves, upto }),
        Msg::AeEntries {
            buckets,
            entries,
            reply,
            upto,
        } => {
            let (keys, entries): (Vec<Bytes>, Vec<pb::LlStored>) = entries
                .into_iter()
                .map(|(k, s)| (k, stored_to_wire(s)))
                .unzip();
            W::AeEntries(pb::AeEntries {
                buckets,
                keys,
                entries,
                reply,
                upto,
            })
        }
    }
}

/// A wire message as a core message; `None` when malformed or not leaderless traffic.
pub fn from_wire(m: pb::peer_envelope::Msg) -> Option<Msg> {
    use pb::peer_envelope::Msg as W;
    Some(match m {
        W::LlWrite(w) => Msg::Write {
            req: w.req,
            key: crate::detach(w.key),
            stored: stored_from_wire(w.stored?)?,
        },
        W::LlWriteAck(a) => Msg::WriteAck {
            req: a.req,
            hlc: a.hlc,
            superseded: a.superseded,
        },
        W::LlRead(r) => Msg::Read {
            req: r.req,
            key: r.key,
        },
        W::LlReadReply(r) => Msg::ReadReply {
            req: r.req,
            stored: match r.stored {
                Some(s) => Some(stored_from_wire(s)?),
                None => None,
            },
            hlc: r.hlc,
            refilling: r.refilling,
        },
        W::LlRefilled(_) => Msg::Refilled,
        W::LlForward(f) => Msg::Forward {
            req: f.req,
            key: crate::detach(f.key),
            value: f.has_value.then(|| crate::detach(f.value)),
            w: f.w,
            timeout_ms: f.timeout_ms,
            degrade: f.degrade,
            age_ms: f.age_ms,
            sent_hlc: f.sent_hlc,
        },
        W::LlForwardDeclined(d) => Msg::ForwardDeclined { req: d.req },
        W::LlForwardReply(r) => Msg::ForwardReply {
            req: r.req,
            result: if r.ok {
                Ok(WriteOk {
                    version: Version::new(r.epoch, r.counter),
                    coordinator: NodeId(r.coordinator),
                    acked: ids(r.acked),
                    hinted: ids(r.hinted),
                    degraded: r.degraded,
                    superseded_on: ids(r.superseded_on),
                })
            } else {
                Err(QuorumFailure {
                    what: "acks",
                    needed: r.needed,
                    got: r.got,
                    replicas: r
                        .replica_ids
                        .into_iter()
                        .zip(r.replica_states)
                        .map(|(id, st)| {
                            let st = match st {
                                0 => ReplicaState::Ok,
                                2 => ReplicaState::Unreachable,
                                3 => ReplicaState::NotAsked,
                                4 => ReplicaState::Refilling,
                                _ => ReplicaState::Timeout,
                            };
                            (NodeId(id), st)
                        })
                        .collect(),
                    may_have_happened: r.may_have_happened,
                })
            },
        },
        W::LlStoreHint(h) => Msg::StoreHint {
            req: h.req,
            target: NodeId(h.target),
            key: crate::detach(h.key),
            stored: stored_from_wire(h.stored?)?,
        },
        W::LlHintStored(h) => Msg::HintStored {
            req: h.req,
            target: NodeId(h.target),
        },
        W::LlHint(h) => Msg::Hint {
            key: crate::detach(h.key),
            stored: stored_from_wire(h.stored?)?,
        },
        W::LlHintAck(a) => Msg::HintAck {
            key: a.key,
            version: Version::new(a.epoch, a.counter),
        },
        W::AeRoot(r) => Msg::AeRoot {
            root: r.root,
            upto: r.upto,
        },
        W::AeLeaves(l) => Msg::AeLeaves {
            leaves: l.leaves,
            upto: l.upto,
        },
        W::AeEntries(e) => {
            if e.keys.len() != e.entries.len() {
                return None;
            }
            Msg::AeEntries {
                buckets: e.buckets,
                entries: e
                    .keys
                    .into_iter()
                    .zip(e.entries)
                    .map(|(k, s)| Some((crate::detach(k), stored_from_wire(s)?)))
                    .collect::<Option<Vec<_>>>()?,
                reply: e.reply,
                upto: e.upto,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn s(value: Option<&'static str>, epoch: u64) -> Stored {
        Stored {
            value: value.map(|v| Bytes::from_static(v.as_bytes())),
            version: Version::new(epoch, 2),
            clock: VClock::from_entries([(2, epoch)]),
            written_ms: 5,
        }
    }

    #[test]
    fn wire_form_round_trips_every_message() {
        let msgs = vec![
            Msg::Write {
                req: 1,
                key: Bytes::from_static(b"k"),
                stored: s(Some("v"), 9),
            },
            Msg::ReadReply {
                req: 2,
                stored: None,
                hlc: 4,
                refilling: true,
            },
            Msg::ReadReply {
                req: 2,
                stored: Some(s(None, 3)),
                hlc: 4,
                refilling: false,
            },
            Msg::Refilled,
            Msg::Forward {
                req: 3,
                key: Bytes::from_static(b"k"),
                value: Some(Bytes::from_static(b"v")),
                w: 2,
                timeout_ms: 1500,
                degrade: false,
                age_ms: 250,
                sent_hlc: 9 << 16,
            },
            Msg::ForwardDeclined { req: 3 },
            Msg::ForwardReply {
                req: 3,
                result: Err(QuorumFailure {
                    what: "acks",
                    needed: 2,
                    got: 1,
                    replicas: vec![
                        (NodeId::from("n1"), ReplicaState::Ok),
                        (NodeId::from("n2"), ReplicaState::Unreachable),
                        (NodeId::from("n3"), ReplicaState::Timeout),
                        (NodeId::from("n4"), ReplicaState::NotAsked),
                        (NodeId::from("n5"), ReplicaState::Refilling),
                    ],
                    may_have_happened: true,
                }),
            },
            Msg::WriteAck {
                req: 5,
                hlc: 7 << 16,
                superseded: true,
            },
            Msg::ForwardReply {
                req: 4,
                result: Ok(WriteOk {
                    version: Version::new(8 << 16, 2),
                    coordinator: NodeId::from("n2"),
                    acked: vec![NodeId::from("n2"), NodeId::from("n3")],
                    hinted: vec![],
                    degraded: false,
                    superseded_on: vec![NodeId::from("n3")],
                }),
            },
            Msg::AeEntries {
                buckets: vec![1, 7],
                entries: vec![(Bytes::from_static(b"a"), s(Some("x"), 1))],
                reply: true,
                upto: 42,
            },
            Msg::AeLeaves {
                leaves: vec![],
                upto: 7,
            },
            Msg::HintAck {
                key: Bytes::from_static(b"k"),
                version: Version::new(3, 1),
            },
        ];
        for m in msgs {
            assert_eq!(from_wire(to_wire(m.clone())), Some(m));
        }
    }

    #[test]
    fn store_keeps_hinted_deletes_apart_from_delivered_hints() {
        let mut st = LlStore {
            data: Arc::new(MemStorage::new()),
            hints: Arc::new(MemStorage::new()),
            replaced: None,
        };
        let n3 = NodeId::from("n3");
        let key = Bytes::from_static(b"k");
        assert!(st.put_hint(&n3, &key, &s(None, 4)) & HINT_LSN != 0);
        st.put_hint(&NodeId::from("n4"), &key, &s(Some("v"), 5));
        assert_eq!(st.hints(&n3, 10), vec![(key.clone(), s(None, 4))]);
        assert_eq!(st.hint_count(), 2);
        // An older version's delivery does not remove a newer hint; the same version's does.
        st.remove_hint(&n3, &key, Version::new(3, 2));
        assert_eq!(st.hints(&n3, 10).len(), 1);
        st.remove_hint(&n3, &key, Version::new(4, 2));
        assert!(st.hints(&n3, 10).is_empty());
        assert_eq!(st.hint_count(), 1);
        st.put(&key, &s(Some("v"), 6));
        assert_eq!(st.get(&key), Some(s(Some("v"), 6)));
    }

    /// With `ReplicaRead::LastDurable`, a read is answered at once with the newest copy a
    /// crash would leave: the copies that writes not yet durable replaced, and nothing where
    /// the first copy is not durable yet. `get_at` still gives the newest copy.
    #[tokio::test]
    async fn store_answers_reads_with_the_newest_durable_copy() {
        use crate::storage::{DiskOptions, DiskStorage};
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = DiskOptions {
            // Nothing is flushed until somebody waits for it.
            lazy_flush: Some(Duration::from_secs(3600)),
            ..DiskOptions::default()
        };
        let (data, _) = DiskStorage::open(dir.path(), opts).expect("open");
        let data: Arc<dyn Storage> = Arc::new(data);
        let mut st = LlStore {
            data: data.clone(),
            hints: Arc::new(MemStorage::new()),
            replaced: Some(Replaced::default()),
        };
        let (k, fresh) = (Bytes::from_static(b"k"), Bytes::from_static(b"fresh"));
        let l1 = st.put(&k, &s(Some("v1"), 1));
        // Neither is durable: `k` has no durable copy; `fresh`, written past the store, is
        // one it knows nothing of: its newest copy, once durable.
        let direct = Write {
            key: fresh.clone(),
            value: Some(fresh.clone()),
            version: Version::new(1, 2),
            written_ms: 5,
            context: Bytes::new(),
        };
        let lf = data.write(direct).expect("write");
        assert_eq!(st.get_durable(&k), None);
        assert_eq!(st.get_at(&k), Some((s(Some("v1"), 1), l1)));
        assert_eq!(st.get_durable(&fresh).map(|c| c.1), Some(lf), "waits");
        data.wait_durable(l1).await.expect("durable");
        let l2 = st.put(&k, &s(Some("v2"), 2));
        assert_eq!(st.get_durable(&k), Some((s(Some("v1"), 1), l1)));
        data.wait_durable(l2).await.expect("durable");
        assert_eq!(st.get_durable(&k), Some((s(Some("v2"), 2), l2)));
        // Two writes behind: still the last durable copy.
        st.put(&k, &s(None, 3));
        let l4 = st.put(&k, &s(Some("v4"), 4));
        assert_eq!(st.get_durable(&k), Some((s(Some("v2"), 2), l2)));
        data.wait_durable(l4).await.expect("durable");
        assert_eq!(st.get_durable(&k), Some((s(Some("v4"), 4), l4)));
        // Keys whose newest write is durable are forgotten, so it does not grow without end.
        for i in 0..3000u64 {
            let key = Bytes::from(format!("key{i}"));
            let lsn = st.put(&key, &s(Some("v"), 1));
            data.wait_durable(lsn).await.expect("durable");
        }
        let held = st.replaced.as_ref().map_or(0, |r| r.keys.len());
        assert!(held < 2100, "{held} keys held");
    }

    /// A step of the wall clock moves only the offset versions are given with, never the
    /// timer time (which before followed the wall clock: a step back held every timer).
    #[test]
    fn a_wall_clock_step_moves_versions_not_timers() {
        let wall = 1_700_000_000_000;
        let timers = TimerClock::new(wall);
        let (t0, ahead) = timers.read(wall);
        assert!(t0 >= wall && t0 < wall + 1000, "{t0}");
        assert!(ahead.abs() < 1000, "{ahead}");
        std::thread::sleep(Duration::from_millis(20));
        // The wall clock stepped back an hour: timers go on from where they were.
        let (t1, ahead) = timers.read(wall - 3_600_000);
        assert!(t1 >= t0 + 20 && t1 < t0 + 1000, "{t0} {t1}");
        assert!((-3_601_000..=-3_599_000).contains(&ahead), "{ahead}");
        // And forward a day: nothing fires early.
        let (t2, ahead) = timers.read(wall + 86_400_000);
        assert!(t2 >= t1 && t2 < t1 + 1000, "{t1} {t2}");
        assert!((86_399_000..=86_401_000).contains(&ahead), "{ahead}");
    }
}
