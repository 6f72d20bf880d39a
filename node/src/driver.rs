//! The driver: runs a leader-follower [`Replica`] as a task of the node's runtime and carries
//! out its actions.
//!
//! ```text
//!  gRPC handlers ──Propose/Read──┐
//!  peer conns    ──Peer msg──────┼─► channel ─► driver task: drain inputs, tick on time,
//!  timer (tick_ms) ──────────────┘              feed the replica, then for its actions:
//!      1. encode hard state / truncations / entries, hand them to the log writer thread
//!         (which writes and fsyncs batches in order, many per fsync when they queue)
//!      2. carry out what may go now; what must wait for the batch waits in the Pipeline
//!      3. writer done: replica.persisted(last index), then what waited (in order)
//! ```
//! A batch that changes the term or vote, or truncates, is durable before anything of it leaves
//! (a vote is never sent for state a crash could lose); other batches go at once, because
//! acknowledgements claim only what `persisted` reported (`kv_replica::pipeline`). Entries
//! truncated from the log are appended to `<data-dir>/rollback.jsonl` and counted: never
//! dropped silently.
//!
//! The driver used to have a thread of its own. Every request then crossed threads twice on
//! each node it touched (a runtime thread woke the driver, the driver woke the runtime back),
//! and a leader read's confirmation round crossed them eight times over three nodes. With the
//! driver a task, a request handler and the driver hand each other work through the runtime's
//! queue; only the log writer (fsync) and snapshot encoding keep threads of their own. 3 nodes,
//! one request thread each, 16 clients, 50/50: see `bench/results/leader-follower/REPEATS.md`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_replica::leader_follower::{
    Action, Command, Config as CoreConfig, Entry, LogIndex, Message, Replica, ReplicaError,
    RequestId, Role, Snapshot, Term,
};
use kv_replica::pipeline::Pipeline;
use kv_replica::{NodeId, Version};
use rand::SeedableRng;
use tokio::sync::oneshot;

use crate::raft_log::{Job, LogWriter, RaftLog, Recovered, StagedSnapshot};
use crate::storage::{MemStorage, Storage, StorageError, Write, now_ms};
use crate::transport::Transport;

/// Why a replicated request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveError {
    /// This node does not lead; the leader it knows.
    NotLeader(Option<NodeId>),
    /// Leadership was lost before the write was held by W replicas: it may still commit.
    Unknown,
    /// The replica stopped (storage failure or shutdown).
    Stopped(String),
    /// Bad request.
    Invalid(String),
}

/// What a write achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// `(term, index)`.
    pub version: Version,
    /// Replicas holding it when acknowledged.
    pub acks: u32,
}

/// The outcome of a replicated compare-and-set, known once its entry is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the compare matched and the value was written.
    pub applied: bool,
    /// Applied: the new version. Not applied: the key's current live version, if any.
    pub version: Option<Version>,
    /// Not applied: the key's current live value, if any.
    pub current: Option<bytes::Bytes>,
}

type CasReply = oneshot::Sender<Result<CasResult, DriveError>>;
type ProposeReply = oneshot::Sender<Result<Proposed, DriveError>>;
type ReadReply = oneshot::Sender<Result<(), DriveError>>;

/// The driver's input channel.
type InputTx = tokio::sync::mpsc::UnboundedSender<Input>;
type InputRx = tokio::sync::mpsc::UnboundedReceiver<Input>;

/// An answer the driver has for a waiting request.
enum Reply {
    Propose(ProposeReply, Result<Proposed, DriveError>),
    Cas(CasReply, Result<CasResult, DriveError>),
    Read(ReadReply, Result<(), DriveError>),
}

impl Reply {
    fn send(self) {
        // A request whose caller has gone (deadline, disconnect) needs no answer.
        let _ = match self {
            Reply::Propose(r, v) => r.send(v).map_err(drop),
            Reply::Cas(r, v) => r.send(v).map_err(drop),
            Reply::Read(r, v) => r.send(v).map_err(drop),
        };
    }
}

/// How many answers the driver hands out before it lets the requests they woke run (see
/// [`Outbox::deliver_in_slices`]). 16 and 64 did the same as 32 (`bench/results/ab/README.md`).
const REPLY_SLICE: usize = 32;

/// Answers collected over one pass of the driver loop, sent at its end (after the pass's log
/// records are queued; in slices, [`Outbox::deliver_in_slices`]), so that the requests they wake
/// run after the driver yields.
struct Outbox {
    replies: Vec<Reply>,
}

impl Outbox {
    fn push(&mut self, r: Reply) {
        self.replies.push(r);
    }

    fn deliver(&mut self) {
        self.replies.drain(..).for_each(Reply::send);
    }

    /// Sends the answers [`REPLY_SLICE`] at a time, letting the node's other tasks run between
    /// slices; returns how long it waited for them.
    ///
    /// A commit can answer hundreds of requests at once (256 clients on a leader). Woken all at
    /// once, each request's task encodes its answer before the connection's task, woken by the
    /// first of them, gets to write any: the client gets none until the node has encoded the
    /// last, and waits meanwhile. Handed out in slices, the first answers leave while the node
    /// encodes the next, and the client works on them at the same time (leader-follower at 256
    /// clients on one connection: 1.36x in alternating runs).
    async fn deliver_in_slices(&mut self) -> Duration {
        let mut waited = Duration::ZERO;
        let mut replies = std::mem::take(&mut self.replies);
        for (i, r) in replies.drain(..).enumerate() {
            if i > 0 && i % REPLY_SLICE == 0 {
                let yielded = Instant::now();
                tokio::task::yield_now().await;
                waited += yielded.elapsed();
            }
            r.send();
        }
        self.replies = replies; // its room, for the next pass
        waited
    }
}

/// Inputs of the driver.
pub enum Input {
    /// A compare-and-set to replicate; answered when its entry is applied here.
    Cas {
        /// The key.
        key: bytes::Bytes,
        /// The version it must have (`None`: absent).
        expected: Option<Version>,
        /// The value to write.
        value: bytes::Bytes,
        /// Where the outcome goes.
        reply: CasReply,
    },
    /// A message from a peer.
    Peer {
        /// Sender.
        from: NodeId,
        /// The message.
        msg: kv_replica::leader_follower::Message,
    },
    /// A leader's snapshot received into a file: `msg` is the `Message::Snapshot` without its
    /// data, which `staged` holds and `data` reads.
    PeerSnapshot {
        /// Sender.
        from: NodeId,
        /// The message, its snapshot's data empty.
        msg: kv_replica::leader_follower::Message,
        /// The file of the data, removed unless the snapshot is installed.
        staged: StagedSnapshot,
        /// The same file, open to read.
        data: std::fs::File,
    },
    /// A write to replicate.
    Propose {
        /// What to write.
        cmd: Command,
        /// Acknowledge after this many replicas hold it.
        w: u32,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Proposed, DriveError>>,
    },
    /// A linearizable read: answered once leadership is confirmed and the state machine has
    /// applied everything committed when the read arrived.
    Read {
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), DriveError>>,
    },
    /// From the log writer thread: this many submissions are durable, or the error that stopped
    /// it.
    Synced(Result<u64, String>),
    /// From a snapshot thread: the state machine as of `index`, encoded (or the error that
    /// stopped that).
    SnapshotEncoded {
        /// The applied index it covers.
        index: u64,
        /// The encoding.
        data: Result<Encoded, String>,
        /// How long encoding took.
        took: Duration,
    },
}

/// A snapshot encoded by a snapshot thread.
#[derive(Debug)]
pub enum Encoded {
    /// Into memory (a node without a data directory).
    Memory(Bytes),
    /// Into its file ([`crate::raft_log::snapshot_path`]), of `size` bytes, opened for reading.
    File {
        /// Its length.
        size: u64,
        /// The file.
        file: std::fs::File,
    },
}

/// What the node shows of its replica (kvctl status, response metadata).
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// "leader", "follower", "candidate", or "pre-candidate" (asking whether it could win
    /// before raising its term: pre-vote).
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The leader followed.
    pub leader: Option<NodeId>,
    /// Peers reachable: heard from within an election timeout (leader), or connected and not
    /// cut off by a partition (others).
    pub reachable: Vec<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// The leader's commit index as last heard.
    pub leader_commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last: u64,
    /// Per follower, entries behind and how long ago the leader had what it has now (leader
    /// only).
    pub follower_lag: Vec<(NodeId, u64, Duration)>,
    /// Index of the latest snapshot (0: none).
    pub snapshot_index: u64,
    /// Entries held in the log.
    pub log_entries: u64,
    /// Bytes of the snapshot's data the replica holds in memory (0 once it is in its file).
    pub snapshot_memory_bytes: u64,
    /// Snapshots taken here.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Writes in the rollback file later committed after all.
    pub rollback_survivors: u64,
    /// Members heard claiming leadership at overlapping times within [`LEADERS_WINDOW`] (this
    /// node included while it leads): 2 or more is a split brain seen from here.
    pub leaders_observed: u32,
}

/// How long [`StatusSnapshot::leaders_observed`] remembers a leadership claim: longer than a
/// Prometheus scrape interval, so that a split brain of a few hundred milliseconds is still
/// there at the next scrape.
pub const LEADERS_WINDOW: Duration = Duration::from_secs(30);

/// Committed entries handed to the state machine at once ([`CoreConfig::max_apply`]): a few
/// milliseconds of work, after which the node's heartbeats, votes and replies go out before the
/// next chunk.
///
/// 1,024: in a drill (5 nodes and the load on two cores, after an outage with 200k entries
/// since the last snapshot) a chunk of 4,096 took 45 ms to apply (median of 701 passes, up to
/// 120 ms), longer than the 30 ms heartbeat interval.
const APPLY_CHUNK: usize = 1024;

/// Entries per append to a follower stop at this many bytes (`Config::max_batch_bytes`): at
/// 30 ms heartbeats a follower behind still catches up at up to 267 MB/s.
const MAX_APPEND_BYTES: u64 = 8 << 20;

/// A cheap handle to the driver.
#[derive(Clone)]
pub struct DriverHandle {
    /// Shared by every clone: the driver ends once the last handle is gone (the log writer
    /// holds only a weak reference).
    tx: Arc<InputTx>,
    status: Arc<Mutex<StatusSnapshot>>,
    /// Writes rolled back (truncated after being appended), for metrics.
    pub rolled_back: Arc<AtomicU64>,
}

impl DriverHandle {
    /// A handle whose inputs arrive on the returned receiver instead of a replica (tests).
    #[cfg(test)]
    pub(crate) fn channel() -> (DriverHandle, InputRx) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            DriverHandle {
                tx: Arc::new(tx),
                status: Arc::default(),
                rolled_back: Arc::default(),
            },
            rx,
        )
    }

    /// Queues an input (never blocks).
    pub fn send(&self, input: Input) {
        let _ = self.tx.send(input);
    }

    /// The replica as of the driver's last batch.
    pub fn status(&self) -> StatusSnapshot {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replicates a write.
    ///
    /// # Errors
    /// See [`DriveError`].
    pub async fn propose(&self, cmd: Command, w: u32) -> Result<Proposed, DriveError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose { cmd, w, reply });
        rx.await
            .unwrap_or_else(|_| Err(DriveError::Stopped("replica stopped".into())))
    }

    /// Replicates a compare-and-set; the outcome is decided when it is applied in log order.
    ///
    /// # Errors
    /// See [`DriveError`].
    pub async fn cas(
        &self,
        key: bytes::Bytes,
        expected: Option<Version>,
        value: bytes::Bytes,
    ) -> Result<CasResult, DriveError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Cas {
            key,
            expected,
            value,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err(DriveError::Stopped("replica stopped".into())))
    }

    /// Waits until a linearizable read may be served from the local state machine.
    ///
    /// # Errors
    /// See [`DriveError`].
    pub async fn read_barrier(&self) -> Result<(), DriveError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Read { reply });
        rx.await
            .unwrap_or_else(|_| Err(DriveError::Stopped("replica stopped".into())))
    }
}

/// `--proposal-window`: while many client requests are in flight at the leader, it holds the
/// writes that arrive and proposes them together at most once per window, so that they share
/// one log write and one append to each follower (PostgreSQL's `commit_delay`, engaged by
/// `commit_siblings`). The number in flight depends on the clients, not on the window, so the
/// window engages under many clients and never under few.
///
/// Nor while the leader's log takes longer than a window to flush ([`FlushTime`]): the writes
/// that come during a flush share the next one anyway, and holding them only delays their
/// copies to the followers, whose flushes are as slow (3 nodes, 256 clients, every fsync held
/// 4 ms longer: 1.10x, `bench/results/proposal-window/README.md`).
pub struct ProposalWindow {
    /// The least time between two proposals while engaged (zero: off).
    pub window: Duration,
    /// Client requests in flight at this node that engage it.
    pub requests: u32,
    /// Client requests in flight at this node (`kv_requests_in_flight`).
    pub in_flight: prometheus_client::metrics::gauge::Gauge,
    /// Writes held (`kv_proposals_held_total`).
    pub held: prometheus_client::metrics::counter::Counter,
}

/// How long the replica log's flushes (write and fsync) take lately: a moving average over
/// about the last eight, kept by the log writer's thread for the proposal window.
#[derive(Default)]
struct FlushTime(AtomicU64);

impl FlushTime {
    /// A flush that took `took`.
    fn flushed(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // One writer thread: a load and a store do.
        let old = self.0.load(Ordering::Relaxed);
        self.0.store(old - old / 8 + us / 8, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

/// Timing of the replica, in wall-clock terms, and how often it compacts its log.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// One logical tick.
    pub tick: Duration,
    /// Election timeout range, in ticks.
    pub election_ticks: (u32, u32),
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: u32,
    /// Snapshot and compact every this many applied entries, keeping the last tenth.
    pub snapshot_entries: u64,
    /// Or every this many bytes of applied entries (keys and values), whichever comes first;
    /// the entries kept hold at most a tenth of it.
    pub snapshot_bytes: u64,
    /// The log writer's group commit window (`--group-commit-window`, see
    /// [`RaftLog::set_group_commit_window`]).
    pub group_commit_window: Duration,
}

impl Timing {
    /// Ticks of [`crate::config::TICK`]: elections after `election` to twice `election` of
    /// silence, heartbeats every `heartbeat` (each rounded up to whole ticks).
    pub fn new(election: Duration, heartbeat: Duration, snapshot_entries: u64) -> Timing {
        let tick = crate::config::TICK;
        let ticks = |d: Duration| {
            u32::try_from(d.as_nanos().div_ceil(tick.as_nanos()))
                .unwrap_or(u32::MAX)
                .max(1)
        };
        let election = ticks(election);
        Timing {
            tick,
            election_ticks: (election, election.saturating_mul(2)),
            heartbeat_ticks: ticks(heartbeat),
            snapshot_entries,
            snapshot_bytes: crate::config::SNAPSHOT_BYTES,
            group_commit_window: Duration::ZERO,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        let c = crate::config::Config::default();
        Timing::new(
            c.election_timeout.0,
            c.heartbeat_interval.0,
            c.snapshot_entries,
        )
    }
}

struct Driver {
    replica: Replica,
    /// Writes and fsyncs `log`'s records off this thread (absent in memory). Declared before
    /// `log`: dropped first, it finishes writing before the directory lock goes.
    writer: Option<LogWriter>,
    log: Option<RaftLog>,
    /// What waits for which batch to be durable.
    pipeline: Pipeline,
    /// Batches the writer has made durable.
    synced: u64,
    transport: Transport,
    state: Arc<MemStorage>,
    snapshot_entries: u64,
    snapshot_bytes: u64,
    /// Bytes of the entries applied since start ([`Entry::weight`]), and what that count was at
    /// the index of the last snapshot (a snapshot being encoded: `encoding_mark`).
    applied_bytes: u64,
    snapshot_mark: u64,
    encoding_mark: u64,
    /// A snapshot being encoded on its thread.
    encoding: bool,
    /// A snapshot encoded (and written), waiting to compact the log.
    encoded: Option<(u64, Result<Encoded, String>, Duration)>,
    /// The file of the replica's snapshot, when the replica let go of its data
    /// ([`Replica::release_snapshot_data`]): read from here when a follower needs it. An open
    /// file, so that it stays readable after a newer snapshot's rewrite removes it.
    snapshot_file: Option<(u64, Arc<std::fs::File>)>,
    /// The log writer's batch that installs a leader's snapshot (the snapshot's index), until
    /// it is durable ([`Driver::release_installed`]).
    install_written: Option<(u64, u64)>,
    /// Leaders' snapshots received into files that the replica installed, each until the log
    /// writer has its file and the state machine its data (another may come while the first
    /// waits for its write).
    staged: Vec<Staged>,
    /// The driver's own input channel, for the snapshot threads (weak: they must not keep the
    /// driver alive).
    inputs: std::sync::Weak<InputTx>,
    /// Snapshots taken here.
    snapshots_taken: u64,
    /// Snapshots installed from a leader.
    snapshots_installed: u64,
    /// Writes in the rollback file later committed after all.
    rollback_survivors: u64,
    proposals: HashMap<RequestId, ProposeReply>,
    /// Compare-and-sets proposed here, by log index: answered when applied.
    cas: HashMap<u64, (RequestId, CasReply)>,
    members: usize,
    reads: HashMap<RequestId, ReadReply>,
    /// Confirmed reads waiting for the state machine to reach their index.
    reads_applying: Vec<(u64, ReadReply)>,
    /// Answers of this pass of the loop, not yet sent.
    outbox: Outbox,
    next_id: RequestId,
    applied: u64,
    rollback: Option<PathBuf>,
    rolled_back: Arc<AtomicU64>,
    status: Arc<Mutex<StatusSnapshot>>,
    failed: Option<String>,
    /// Told when the replica log fails (the node stops).
    on_fail: Option<crate::storage::FailObserver>,
    /// [`LEADERS_WINDOW`] in ticks.
    leaders_window: u64,
    /// One tick.
    tick: Duration,
    /// A pass of the loop longer than this (the heartbeat interval) is logged, phase by phase:
    /// peers hear nothing from this node while it lasts.
    slow_pass: Duration,
    proposal_window: Option<ProposalWindow>,
    /// Writes held for the proposal window, in arrival order.
    held: Vec<(Command, u32, ProposeReply)>,
    /// When the last write was proposed (the window runs from there).
    last_proposed: Instant,
    /// How long the log's flushes take lately (zero without a log).
    flush_time: Arc<FlushTime>,
}

/// A driver recovered from its durable state, not yet running: [`Built::spawn`] starts it.
pub struct Built {
    driver: Driver,
    rx: InputRx,
    handle: DriverHandle,
}

impl Built {
    /// Starts the driver as a task of the current tokio runtime.
    ///
    /// # Errors
    /// Called outside a tokio runtime.
    pub fn spawn(self) -> Result<DriverHandle, StorageError> {
        let Built { driver, rx, handle } = self;
        let tick = driver.tick;
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            StorageError::io(
                "cannot start the replica driver",
                std::io::Error::other(e.to_string()),
            )
        })?;
        rt.spawn(driver.run(rx, tick));
        Ok(handle)
    }
}

/// Recovers durable state into a driver; [`Built::spawn`] runs it.
///
/// # Errors
/// The replica's durable state cannot be opened.
#[allow(clippy::too_many_arguments)]
pub fn build(
    id: NodeId,
    members: Vec<NodeId>,
    data_dir: Option<PathBuf>,
    fsync: crate::storage::FsyncPolicy,
    on_flush: Option<crate::storage::FlushObserver>,
    on_fail: Option<crate::storage::FailObserver>,
    timing: Timing,
    proposal_window: Option<ProposalWindow>,
    transport: Transport,
    state: Arc<MemStorage>,
    seed: u64,
) -> Result<Built, StorageError> {
    let (log, rec) = match &data_dir {
        Some(d) => {
            let (mut l, rec) = RaftLog::open(d, fsync)?;
            l.set_group_commit_window(timing.group_commit_window);
            if rec.snapshot.index.0 > 0 {
                match &rec.snapshot_file {
                    // Read a megabyte at a time, never whole.
                    Some(f) => {
                        let mut file = std::fs::File::open(f).map_err(|e| {
                            StorageError::io(format!("cannot read {}", f.display()), e)
                        })?;
                        state.restore(&mut file, f)?;
                    }
                    None => {
                        state.restore(&mut &rec.snapshot.data[..], &d.join("raft.log"))?;
                    }
                }
            }
            (Some(l), rec)
        }
        None => (None, Recovered::default()),
    };
    tracing::info!(
        term = rec.hard.term.0,
        snapshot = rec.snapshot.index.0,
        entries = rec.entries.len(),
        "replica log recovered"
    );
    let applied = rec.snapshot.index.0;
    let n_members = members.len();
    let snapshot_index = rec.snapshot.index.0;
    let snapshot_path = rec.snapshot_file.clone();
    let mut replica = Replica::new(
        CoreConfig {
            id,
            members,
            election_ticks: timing.election_ticks,
            heartbeat_ticks: timing.heartbeat_ticks,
            max_batch: 256,
            max_batch_bytes: MAX_APPEND_BYTES,
            max_apply: APPLY_CHUNK,
        },
        rec.hard,
        rec.snapshot,
        rec.entries,
        Box::new(rand::rngs::StdRng::seed_from_u64(seed)),
    );
    replica.snapshot_kept_elsewhere(rec.snapshot_len);
    // Restored: the snapshot's data stays in its file until a follower needs it.
    let snapshot_file =
        snapshot_path.and_then(|p| release_to_file(&mut replica, snapshot_index, &p));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    let flush_time = Arc::new(FlushTime::default());
    let writer = match &log {
        Some(l) => {
            let times = flush_time.clone();
            let on_flush: crate::storage::FlushObserver = Arc::new(move |took, records, waited| {
                times.flushed(took);
                if let Some(o) = &on_flush {
                    o(took, records, waited);
                }
            });
            // Weak: a writer holding the channel open would keep the driver (and the
            // data directory's lock) alive after the node is dropped.
            let tx = Arc::downgrade(&tx);
            Some(l.start_writer(Some(on_flush), move |r| {
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Input::Synced(r));
                }
            })?)
        }
        None => None,
    };
    let status = Arc::new(Mutex::new(StatusSnapshot::default()));
    let rolled_back = Arc::new(AtomicU64::new(0));
    let driver = Driver {
        replica,
        pipeline: Pipeline::new(writer.is_some()),
        writer,
        log,
        synced: 0,
        transport,
        state,
        snapshot_entries: timing.snapshot_entries,
        snapshot_bytes: timing.snapshot_bytes,
        applied_bytes: 0,
        snapshot_mark: 0,
        encoding_mark: 0,
        encoding: false,
        encoded: None,
        snapshot_file,
        install_written: None,
        staged: Vec::new(),
        inputs: Arc::downgrade(&tx),
        snapshots_taken: 0,
        snapshots_installed: 0,
        rollback_survivors: 0,
        proposals: HashMap::new(),
        cas: HashMap::new(),
        members: n_members,
        reads: HashMap::new(),
        reads_applying: Vec::new(),
        outbox: Outbox {
            replies: Vec::new(),
        },
        next_id: 1,
        applied,
        rollback: data_dir.map(|d| d.join("rollback.jsonl")),
        rolled_back: rolled_back.clone(),
        status: status.clone(),
        failed: None,
        on_fail,
        leaders_window: (LEADERS_WINDOW.as_millis() / timing.tick.as_millis().max(1)) as u64,
        tick: timing.tick,
        slow_pass: timing.tick.saturating_mul(timing.heartbeat_ticks),
        proposal_window: proposal_window.filter(|p| !p.window.is_zero()),
        held: Vec::new(),
        last_proposed: Instant::now(),
        flush_time,
    };
    let handle = DriverHandle {
        tx,
        status,
        rolled_back,
    };
    Ok(Built { driver, rx, handle })
}

/// A leader's snapshot received into a file ([`Input::PeerSnapshot`]) that the replica
/// installed.
struct Staged {
    /// The snapshot's index.
    index: u64,
    /// The size of its data.
    len: u64,
    /// The file, until the log writer's rewrite takes it to rename it into place.
    file: Option<StagedSnapshot>,
    /// The same file, open to read into the state machine.
    data: std::fs::File,
}

/// Opens the file of the replica's snapshot (`index`, recovered from it) and lets the replica
/// go of its copy of the data; the data stays in memory if the file cannot be opened.
fn release_to_file(
    replica: &mut Replica,
    index: u64,
    path: &std::path::Path,
) -> Option<(u64, Arc<std::fs::File>)> {
    match std::fs::File::open(path) {
        Ok(f) => {
            replica.release_snapshot_data();
            Some((index, Arc::new(f)))
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot open the snapshot's file; its data stays in memory too");
            None
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

impl Driver {
    async fn run(mut self, mut rx: InputRx, tick: Duration) {
        let mut next_tick = Instant::now() + tick;
        loop {
            // With entries left to apply, the loop goes on at once, but lets the node's other
            // tasks (peer connections, client requests) run first.
            let wake = if !self.chunk_due() {
                self.release_at().map_or(next_tick, |r| r.min(next_tick))
            } else {
                tokio::task::yield_now().await;
                Instant::now()
            };
            let mut inputs = 0usize;
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(input) => {
                        inputs += 1;
                        self.input(input);
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let late = Instant::now().saturating_duration_since(wake);
                    if late > self.slow_pass {
                        tracing::warn!(late_ms = late.as_millis() as u64,
                            "the replica's loop woke late: the node's runtime was busy");
                    }
                }
            }
            let started = Instant::now();
            // Everything already queued joins this batch (and its one fsync).
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(input) => {
                        inputs += 1;
                        self.input(input);
                    }
                    Err(_) => break,
                }
            }
            self.release_held();
            // A replica that cannot write stays silent: no campaigns, no heartbeats.
            if self.failed.is_some() {
                self.outbox.deliver();
                next_tick = Instant::now() + tick;
                continue;
            }
            if Instant::now() >= next_tick {
                self.replica.tick();
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick; // fell behind: do not burst ticks
                }
            }
            let stepped = Instant::now();
            let applied_before = self.applied;
            self.process();
            let processed = Instant::now();
            let backlog =
                (self.replica.commit_index().0).saturating_sub(self.replica.applied_index().0);
            // One more chunk of a long backlog, after this pass's messages were stepped and
            // what they called for sent. Not while actions wait behind a write (a new term
            // or vote after a restart, on a slow disk): chunks handed out then would all be
            // released in one pass when it is durable (a drill's nodes applied 12,288 entries
            // in a pass that way, 135 ms).
            if self.chunk_due() && self.replica.apply_more() {
                self.process();
            }
            let chunked = Instant::now();
            // The time the other tasks ran between slices of answers is not the pass's.
            let others = self.outbox.deliver_in_slices().await;
            self.publish_status();
            let took = started.elapsed().saturating_sub(others);
            if took > self.slow_pass {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                tracing::warn!(
                    took_ms = ms(took),
                    inputs,
                    inputs_ms = ms(stepped - started),
                    process_ms = ms(processed - stepped),
                    applied = self.applied.saturating_sub(applied_before),
                    backlog,
                    backlog_ms = ms(chunked - processed),
                    deliver_ms = ms(chunked.elapsed().saturating_sub(others)),
                    "a pass of the replica's loop took longer than a heartbeat interval"
                );
            }
        }
    }

    /// Committed entries are left to hand to the state machine, and the next chunk may go now:
    /// the replica has not failed, and no action waits behind a write.
    fn chunk_due(&self) -> bool {
        self.failed.is_none()
            && !self.pipeline.holding()
            && self.replica.applied_index() < self.replica.commit_index()
    }

    fn input(&mut self, input: Input) {
        if let Some(f) = &self.failed {
            let err = DriveError::Stopped(f.clone());
            match input {
                Input::Propose { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Input::Cas { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Input::Read { reply } => {
                    let _ = reply.send(Err(err));
                }
                Input::Peer { .. }
                | Input::PeerSnapshot { .. }
                | Input::Synced(_)
                | Input::SnapshotEncoded { .. } => {}
            }
            return;
        }
        match input {
            Input::Synced(Ok(n)) => self.synced = self.synced.max(n),
            Input::SnapshotEncoded { index, data, took } => {
                self.encoded = Some((index, data, took));
            }
            Input::Synced(Err(e)) => self.fail(e),
            Input::Peer { from, msg } => self.replica.step(&from, msg),
            Input::PeerSnapshot {
                from,
                msg,
                staged,
                data,
            } => {
                let before = self.replica.snapshot().index;
                let index = match &msg {
                    Message::Snapshot { snapshot, .. } => snapshot.index,
                    _ => before,
                };
                self.replica.step(&from, msg);
                // Installed (a newer snapshot than the replica held): it is installed from the
                // file, and the log writer renames the file into place. Otherwise the file goes.
                if self.replica.snapshot().index != before && self.replica.snapshot().index == index
                {
                    self.replica.snapshot_kept_elsewhere(staged.len());
                    self.staged.push(Staged {
                        index: index.0,
                        len: staged.len(),
                        file: Some(staged),
                        data,
                    });
                }
            }
            Input::Propose { cmd, w, reply } => {
                if self.holds_proposals() {
                    if let Some(p) = &self.proposal_window {
                        p.held.inc();
                    }
                    self.held.push((cmd, w, reply));
                } else {
                    self.propose(cmd, w, reply);
                }
            }
            Input::Cas {
                key,
                expected,
                value,
                reply,
            } => {
                let id = self.next_id;
                self.next_id += 1;
                // The outcome is known only at apply, which needs a commit: a majority.
                let w = (self.members / 2 + 1) as u32;
                let cmd = Command::Cas {
                    key,
                    expected,
                    value,
                };
                match self.replica.propose(id, cmd, w) {
                    Ok(v) => {
                        self.cas.insert(v.counter, (id, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(map_err(e)));
                    }
                }
            }
            Input::Read { reply } => {
                let id = self.next_id;
                self.next_id += 1;
                match self.replica.read(id) {
                    Ok(()) => {
                        self.reads.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(map_err(e)));
                    }
                }
            }
        }
    }

    fn propose(&mut self, cmd: Command, w: u32, reply: ProposeReply) {
        self.last_proposed = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        match self.replica.propose(id, cmd, w) {
            Ok(_) => {
                self.proposals.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(map_err(e)));
            }
        }
    }

    /// A write that arrives now waits for the proposal window: some already wait (none
    /// overtakes them), or this node leads with enough client requests in flight, its log
    /// flushes in less than a window, and it proposed less than a window ago.
    fn holds_proposals(&self) -> bool {
        let Some(p) = &self.proposal_window else {
            return false;
        };
        !self.held.is_empty()
            || (self.replica.role() == Role::Leader
                && p.in_flight.get() >= i64::from(p.requests)
                && self.flush_time.get() < p.window
                && self.last_proposed.elapsed() < p.window)
    }

    /// When the held writes are due.
    fn release_at(&self) -> Option<Instant> {
        let p = self.proposal_window.as_ref()?;
        (!self.held.is_empty()).then(|| self.last_proposed + p.window)
    }

    /// Proposes the held writes, together, once their window is over.
    fn release_held(&mut self) {
        if self.release_at().is_some_and(|at| Instant::now() >= at) {
            for (cmd, w, reply) in std::mem::take(&mut self.held) {
                self.propose(cmd, w, reply);
            }
        }
    }

    /// Carries out what the replica asked for, until it asks for nothing more.
    ///
    /// Log records go to the writer thread; what must wait for them to be durable waits in the
    /// [`Pipeline`] while the driver goes on stepping messages.
    fn process(&mut self) {
        loop {
            let actions = self.replica.take_actions();
            let more = !actions.is_empty();
            if more {
                let restores = self.queue_records(&actions);
                let queued = self.log.as_mut().map(RaftLog::take_queued);
                // A snapshot installed rewrites the file with the replica's state after the
                // whole batch, which the batch's own records would only repeat.
                let job = match queued {
                    _ if restores => self.rewrite(true),
                    Some(job) => job,
                    None => Job::Append {
                        bytes: Vec::new(),
                        records: 0,
                    },
                };
                let (now, batch) = self.pipeline.submit(&mut self.replica, actions);
                if let (true, Some(seq)) = (restores, batch) {
                    self.install_written = Some((seq, self.replica.snapshot().index.0));
                }
                if batch.is_some() && !self.writer.as_ref().is_some_and(|w| w.submit(job)) {
                    self.fail("the replica log writer stopped".into());
                    return;
                }
                for a in now {
                    self.carry_out(a);
                }
            }
            let before = self.pipeline.in_flight();
            let released = self.pipeline.durable(&mut self.replica, self.synced);
            // Even with nothing released, `persisted` may have given the replica more to do.
            let completed = self.pipeline.in_flight() < before;
            for a in released {
                self.carry_out(a);
            }
            self.release_installed();
            if self.failed.is_some() || (!more && !completed) {
                break;
            }
        }
        if self.failed.is_none() {
            self.maybe_compact();
        }
    }

    /// Every `snapshot_entries` applied entries (or a quarter of the keys held, if more: a
    /// snapshot's cost grows with the state, so it is amortised over as many writes), or every
    /// `snapshot_bytes` of them (or as many bytes as the live values hold, if more: a snapshot
    /// writes them all), whichever comes first: the log is held in memory, and 10,000 entries
    /// of 1 MiB values are 10 GiB. Freezes the state machine (O(1): a persistent map) and
    /// encodes it on a thread; once encoded, compacts the log, keeping what
    /// [`Driver::entries_to_keep`] says. Runs when every action taken is carried out or
    /// queued, so every entry of the replica's log is already submitted to the writer before the
    /// rewrite.
    fn maybe_compact(&mut self) {
        if let Some((index, data, took)) = self.encoded.take() {
            self.encoding = false;
            let keep = self.entries_to_keep(index);
            let compacted = match data {
                Ok(Encoded::Memory(data)) => self.replica.compact(LogIndex(index), data, keep),
                // Written to its file before it came here: the replica need not hold it too
                // (with large values, a copy of the whole state).
                Ok(Encoded::File { size, file }) => {
                    let done = self
                        .replica
                        .compact_kept_elsewhere(LogIndex(index), size, keep);
                    if done {
                        self.snapshot_file = Some((index, Arc::new(file)));
                    }
                    done
                }
                // As for the log's own writes: the disk is failing or full.
                Err(e) => return self.fail(e),
            };
            if compacted {
                self.snapshot_mark = self.encoding_mark;
                let job = self.rewrite(false);
                if let Some(w) = &self.writer
                    && !w.submit(job)
                {
                    self.fail("the replica log writer stopped".into());
                    return;
                }
                let bytes = self.replica.snapshot_size();
                self.snapshots_taken += 1;
                tracing::info!(
                    index,
                    bytes,
                    kept = self.replica.log().len(),
                    encode_ms = took.as_millis() as u64,
                    "log compacted into a snapshot"
                );
            }
        }
        if self.encoding {
            return;
        }
        let stats = self.state.stats();
        let threshold = self
            .snapshot_entries
            .max((stats.live_keys + stats.tombstones) / 4);
        let since = self.applied.saturating_sub(self.replica.snapshot().index.0);
        let bytes_threshold = self.snapshot_bytes.max(stats.live_bytes);
        let since_bytes = self.applied_bytes.saturating_sub(self.snapshot_mark);
        if since < threshold && since_bytes < bytes_threshold {
            return;
        }
        self.encoding_mark = self.applied_bytes;
        let frozen = self.state.freeze();
        let index = self.applied;
        let inputs = self.inputs.clone();
        let target = self.log.as_ref().map(RaftLog::snapshot_target);
        let spawned = std::thread::Builder::new()
            .name("kv-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                // Encoded straight into its file, so that the log writer's rewrite only names
                // it; then opened, for followers that will need it.
                let data = match target {
                    Some((dir, fsync)) => {
                        crate::raft_log::write_snapshot(&dir, index, fsync, |w| {
                            frozen.encode_to(index, w)
                        })
                        .and_then(|size| {
                            let path = crate::raft_log::snapshot_path(&dir, index);
                            std::fs::File::open(&path)
                                .map(|file| Encoded::File { size, file })
                                .map_err(|e| {
                                    StorageError::io(format!("cannot open {}", path.display()), e)
                                })
                        })
                        .map_err(|e| format!("cannot write a snapshot: {e}"))
                    }
                    None => Ok(Encoded::Memory(Bytes::from(frozen.encode(index)))),
                };
                if let Some(tx) = inputs.upgrade() {
                    let _ = tx.send(Input::SnapshotEncoded {
                        index,
                        data,
                        took: started.elapsed(),
                    });
                }
            });
        match spawned {
            Ok(_) => self.encoding = true,
            Err(e) => tracing::warn!(error = %e, "cannot start a snapshot thread; the log is kept"),
        }
    }

    /// How many of the entries up to `index` a compaction leaves in the log, for followers just
    /// behind to catch up from: the last tenth of `snapshot_entries`, as far as they hold at
    /// most a tenth of `snapshot_bytes`.
    fn entries_to_keep(&self, index: u64) -> u64 {
        let budget = self.snapshot_bytes / 10;
        let (mut kept, mut bytes) = (0, 0);
        while kept < self.snapshot_entries / 10 && kept < index {
            let Some(e) = self.replica.entry(LogIndex(index - kept)) else {
                break;
            };
            bytes += e.weight();
            if bytes > budget {
                break;
            }
            kept += 1;
        }
        kept
    }

    /// Once the batch that installed a leader's snapshot is durable, its file holds the data:
    /// the replica lets go of its copy, as after a snapshot of its own, and a follower that
    /// needs it (this node led) gets it from the file.
    fn release_installed(&mut self) {
        let Some((seq, index)) = self.install_written else {
            return;
        };
        if self.synced < seq {
            return;
        }
        self.install_written = None;
        let (Some(log), None) = (&self.log, &self.failed) else {
            return;
        };
        // A later install or compaction replaced it meanwhile: that one is released its way.
        // One received into a file holds no data to let go of, but its file is to be found.
        if self.replica.snapshot().index.0 != index
            || self
                .snapshot_file
                .as_ref()
                .is_some_and(|(i, _)| *i == index)
        {
            return;
        }
        let path = crate::raft_log::snapshot_path(&log.snapshot_target().0, index);
        self.snapshot_file = release_to_file(&mut self.replica, index, &path);
    }

    /// Sends a snapshot whose data the replica let go of: the transport reads it from its file
    /// a fragment at a time, on a blocking thread, as the fragments go.
    fn send_snapshot_from_file(&self, to: NodeId, term: Term, snapshot: Snapshot) {
        let Some((_, file)) = self
            .snapshot_file
            .as_ref()
            .filter(|(i, _)| *i == snapshot.index.0)
        else {
            tracing::warn!(
                index = snapshot.index.0,
                "no file for the snapshot a follower needs; it is not sent"
            );
            return;
        };
        match file.metadata() {
            Ok(m) => {
                self.transport
                    .send_snapshot_file(&to, term, snapshot, file.clone(), m.len());
            }
            Err(e) => tracing::warn!(
                index = snapshot.index.0,
                error = %e,
                "cannot read the snapshot a follower needs; it is not sent"
            ),
        }
    }

    /// A rewrite of the replica log as the replica now stands (snapshot, hard state, log);
    /// `install`: see [`Job::Rewrite`].
    fn rewrite(&mut self, install: bool) -> Job {
        let snapshot = self.replica.snapshot().clone();
        let staged = match self.staged.iter_mut().find(|s| s.index == snapshot.index.0) {
            Some(s) if install => s.file.take(),
            _ => None,
        };
        Job::Rewrite {
            snapshot,
            snapshot_len: self.replica.snapshot_size(),
            hard: self.replica.hard_state(),
            entries: self.replica.log().to_vec(),
            install,
            staged,
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(error = %why, "replica log write failed; this node stops serving");
        if self.failed.is_none() {
            if let Some(f) = &self.on_fail {
                f(&why);
            }
            self.failed = Some(why);
        }
        self.pipeline.clear();
        // Everything waiting on this replica is answered now (the node stops, and waits for
        // its requests to finish): writes may have happened, reads did nothing.
        for (_, r) in self.proposals.drain() {
            let _ = r.send(Err(DriveError::Unknown));
        }
        for (_, (_, r)) in self.cas.drain() {
            let _ = r.send(Err(DriveError::Unknown));
        }
        let why = self.failed.clone().unwrap_or_default();
        // Held for the proposal window: never proposed.
        for (_, _, r) in self.held.drain(..) {
            let _ = r.send(Err(DriveError::Stopped(why.clone())));
        }
        let reads = self.reads.drain().map(|(_, r)| r);
        for r in reads.chain(self.reads_applying.drain(..).map(|(_, r)| r)) {
            let _ = r.send(Err(DriveError::Stopped(why.clone())));
        }
    }

    /// Encodes the batch's durable state for the writer; truncated entries go to the rollback
    /// file first. Returns whether the batch installs a snapshot.
    fn queue_records(&mut self, actions: &[Action]) -> bool {
        let mut restores = false;
        for a in actions {
            match a {
                Action::PersistHardState(h) => {
                    if let Some(l) = &mut self.log {
                        l.hard_state(*h);
                    }
                }
                Action::Truncate { from, removed } => {
                    if let Some(l) = &mut self.log {
                        l.truncate(*from);
                    }
                    for e in removed {
                        if let Some((_, r)) = self.cas.remove(&e.index.0) {
                            let _ = r.send(Err(DriveError::Unknown));
                        }
                    }
                    self.record_rollback(removed, false);
                }
                Action::PersistEntries(es) => {
                    if let Some(l) = &mut self.log {
                        l.append(es);
                    }
                }
                Action::Restore { rolled_back, .. } => {
                    restores = true;
                    for e in rolled_back {
                        if let Some((_, r)) = self.cas.remove(&e.index.0) {
                            let _ = r.send(Err(DriveError::Unknown));
                        }
                    }
                    self.record_rollback(rolled_back, false);
                }
                _ => {}
            }
        }
        restores
    }

    /// Appends writes removed from this log to the rollback file, or — `survived` — a line
    /// for each write listed there earlier that was committed after all.
    fn record_rollback(&mut self, removed: &[Entry], survived: bool) {
        let writes: Vec<&Entry> = removed
            .iter()
            .filter(|e| !matches!(e.cmd, Command::Noop))
            .collect();
        if writes.is_empty() {
            return;
        }
        if survived {
            self.rollback_survivors += writes.len() as u64;
            tracing::info!(
                count = writes.len(),
                "writes listed in the rollback file were committed after all (another node held them)"
            );
        } else {
            self.rolled_back
                .fetch_add(writes.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                count = writes.len(),
                "rolled back writes that a new leader's log does not hold"
            );
        }
        let Some(path) = &self.rollback else { return };
        let event = if survived {
            "survived_at_ms"
        } else {
            "rolled_back_at_ms"
        };
        let mut lines = String::new();
        for e in writes {
            let (op, key, value) = match &e.cmd {
                Command::Put { key, value } => ("put", key, Some(value)),
                Command::Delete { key } => ("delete", key, None),
                Command::Cas { key, value, .. } => ("cas", key, Some(value)),
                Command::Noop => continue,
            };
            lines.push_str(
                &serde_json::json!({
                    "term": e.term.0, "index": e.index.0, "op": op,
                    "key": String::from_utf8_lossy(key),
                    "value": value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    event: now_ms(),
                })
                .to_string(),
            );
            lines.push('\n');
        }
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()));
        if let Err(e) = res {
            tracing::error!(file = %path.display(), error = %e, "cannot write the rollback file");
        }
    }

    fn carry_out(&mut self, a: Action) {
        match a {
            Action::Send {
                to,
                msg: Message::Snapshot { term, snapshot },
            } if snapshot.data.is_empty() && snapshot.index.0 > 0 => {
                self.send_snapshot_from_file(to, term, snapshot);
            }
            Action::Send { to, msg } => self.transport.send(&to, msg),
            // At most a chunk (`APPLY_CHUNK`): a node that learns at once that hundreds of
            // thousands of entries are committed (after a restart, with a log long since its
            // last snapshot) gets the rest a chunk per pass of the loop, and goes on answering
            // its leader or followers meanwhile.
            Action::Apply(entries) => {
                for e in entries {
                    self.apply(e);
                }
                self.release_reads();
            }
            Action::Acked { id, version, acks } => {
                // A compare-and-set is answered at apply, not here.
                if let Some(r) = self.proposals.remove(&id) {
                    self.outbox
                        .push(Reply::Propose(r, Ok(Proposed { version, acks })));
                }
            }
            Action::Unknown { id } => {
                if let Some(r) = self.proposals.remove(&id) {
                    let _ = r.send(Err(DriveError::Unknown));
                }
                if let Some(index) = self
                    .cas
                    .iter()
                    .find(|(_, (i, _))| *i == id)
                    .map(|(k, _)| *k)
                    && let Some((_, r)) = self.cas.remove(&index)
                {
                    let _ = r.send(Err(DriveError::Unknown));
                }
            }
            Action::ReadReady { id, index } => {
                if let Some(r) = self.reads.remove(&id) {
                    if index.0 <= self.applied {
                        self.outbox.push(Reply::Read(r, Ok(())));
                    } else {
                        self.reads_applying.push((index.0, r));
                    }
                }
            }
            Action::ReadFailed { id } => {
                if let Some(r) = self.reads.remove(&id) {
                    let _ = r.send(Err(DriveError::NotLeader(self.replica.leader().cloned())));
                }
            }
            Action::Restore { snapshot, .. } => {
                let source = self
                    .log
                    .as_ref()
                    .map_or_else(|| PathBuf::from("snapshot from the leader"), RaftLog::path);
                let index = snapshot.index.0;
                let staged = self.staged.iter().position(|s| s.index == index);
                let staged = staged.map(|i| self.staged.remove(i));
                // Those of older snapshots are superseded.
                self.staged.retain(|s| s.index > index);
                let bytes = staged
                    .as_ref()
                    .map_or(snapshot.data.len() as u64, |s| s.len);
                let installed = match staged {
                    // Received into a file: read from there a megabyte at a time.
                    Some(mut s) if snapshot.data.is_empty() => {
                        self.state.install(&mut s.data, &source)
                    }
                    None if snapshot.data.is_empty() => {
                        return self.fail(format!(
                            "the data of the leader's snapshot at {index} is neither in memory nor in a file"
                        ));
                    }
                    _ => self.state.install(&mut &snapshot.data[..], &source),
                };
                match installed {
                    Ok(_) => {
                        self.snapshots_installed += 1;
                        // The replica holds the installed snapshot's data until its file is
                        // written (`release_installed`); the older file's space can go.
                        if self
                            .snapshot_file
                            .as_ref()
                            .is_some_and(|(i, _)| *i < snapshot.index.0)
                        {
                            self.snapshot_file = None;
                        }
                        self.applied = snapshot.index.0;
                        // The log it replaces is gone: count from here.
                        self.snapshot_mark = self.applied_bytes;
                        tracing::info!(
                            index = snapshot.index.0,
                            bytes,
                            "installed the leader's snapshot"
                        );
                        self.release_reads();
                    }
                    // The leader's snapshot is checksummed record by record: damage here is a
                    // bug or a bad disk, and serving from a half-known state would be worse.
                    Err(e) => self.fail(format!("cannot install the leader's snapshot: {e}")),
                }
            }
            Action::Survived(entries) => self.record_rollback(&entries, true),
            Action::PersistHardState(_) | Action::Truncate { .. } | Action::PersistEntries(_) => {}
        }
    }

    /// Applies one committed entry to the state machine (a compare-and-set is decided and
    /// answered here).
    fn apply(&mut self, e: Entry) {
        self.applied_bytes += e.weight();
        let version = e.version();
        let index = e.index.0;
        let w = match e.cmd {
            Command::Put { key, value } => Some((key, Some(value))),
            Command::Delete { key } => Some((key, None)),
            Command::Noop => None,
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let cur = self.state.get(&key).filter(|c| c.value.is_some());
                let live = cur.as_ref().map(|c| c.version);
                let applied = live == expected;
                if let Some((_, r)) = self.cas.remove(&index) {
                    let result = if applied {
                        CasResult {
                            applied,
                            version: Some(version),
                            current: None,
                        }
                    } else {
                        CasResult {
                            applied,
                            version: live,
                            current: cur.and_then(|c| c.value),
                        }
                    };
                    self.outbox.push(Reply::Cas(r, Ok(result)));
                }
                applied.then_some((key, Some(value)))
            }
        };
        if let Some((key, value)) = w {
            let res = self.state.write(Write {
                key,
                value,
                version,
                written_ms: now_ms(),
                context: bytes::Bytes::new(),
            });
            if let Err(err) = res {
                tracing::error!(error = %err, "state machine write failed");
            }
        }
        self.applied = index;
    }

    /// Answers the confirmed reads that the state machine has now reached.
    fn release_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_applying)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.reads_applying = waiting;
        for (_, r) in ready {
            self.outbox.push(Reply::Read(r, Ok(())));
        }
    }

    fn publish_status(&mut self) {
        let r = &self.replica;
        {
            let prev = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if prev.role != role_name(r.role()) || prev.term != r.term().0 {
                tracing::info!(role = role_name(r.role()), term = r.term().0,
                    leader = ?r.leader().map(|l| &l.0), "replica role");
            }
        }
        let s = StatusSnapshot {
            role: role_name(r.role()),
            term: r.term().0,
            leader: r.leader().cloned(),
            // A leader knows who answered it lately; the others (who hear only from a leader)
            // say which peers their transport is connected to and no partition cuts off.
            reachable: if r.role() == Role::Leader {
                r.reachable()
            } else {
                self.transport.reachable_peers()
            },
            commit: r.commit_index().0,
            leader_commit: r.leader_commit_index().0,
            applied: self.applied,
            last: r.last_index().0,
            follower_lag: r
                .follower_lag()
                .into_iter()
                .map(|(id, entries, ticks)| {
                    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
                    (id, entries, self.tick.saturating_mul(ticks))
                })
                .collect(),
            snapshot_index: r.snapshot().index.0,
            log_entries: r.log().len() as u64,
            snapshot_memory_bytes: r.snapshot().data.len() as u64,
            snapshots_taken: self.snapshots_taken,
            snapshots_installed: self.snapshots_installed,
            rollback_survivors: self.rollback_survivors,
            leaders_observed: r.leaders_observed(self.leaders_window),
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

fn map_err(e: ReplicaError) -> DriveError {
    match e {
        ReplicaError::NotLeader { leader } => DriveError::NotLeader(leader),
        ReplicaError::BadW { w, n } => {
            DriveError::Invalid(format!("w={w} is out of range: must be 1..={n}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use kv_replica::leader_follower::{LogIndex, Message, Term};

    use super::*;
    use crate::fault::FaultFilter;
    use crate::storage::{FsyncPolicy, MemStorage};

    /// A commit that answers 80 requests hands out 32, lets the tasks they woke run (and so
    /// their connection write their answers), then the next 32, then the last 16; and every
    /// request is answered.
    #[test]
    fn answers_of_one_pass_leave_in_slices() {
        let mut outbox = Outbox {
            replies: Vec::new(),
        };
        let mut waiting = Vec::new();
        for _ in 0..80 {
            let (tx, rx) = oneshot::channel();
            outbox.push(Reply::Read(tx, Ok(())));
            waiting.push(rx);
        }
        // Answers received since the last look (a receiver gives its answer once).
        let answered = |w: &mut Vec<oneshot::Receiver<Result<(), DriveError>>>| {
            w.iter_mut()
                .map(|rx| rx.try_recv())
                .filter(Result::is_ok)
                .count()
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut slices = Vec::new();
        {
            let mut delivery = std::pin::pin!(outbox.deliver_in_slices());
            loop {
                let done = delivery.as_mut().poll(&mut cx).is_ready();
                slices.push(answered(&mut waiting));
                if done {
                    break;
                }
            }
        }
        assert_eq!(slices, [REPLY_SLICE, REPLY_SLICE, 80 - 2 * REPLY_SLICE]);
        assert!(outbox.replies.is_empty());
    }

    #[test]
    fn timing_counts_the_configured_timeouts_in_whole_ticks() {
        let t = Timing::default();
        assert_eq!((t.election_ticks, t.heartbeat_ticks), ((15, 30), 3));
        let t = Timing::new(Duration::from_secs(2), Duration::from_millis(105), 10);
        assert_eq!((t.election_ticks, t.heartbeat_ticks), ((200, 400), 11));
    }

    /// A replica log that fails stops the node (`on_fail`, once, with the reason) and answers
    /// everything waiting on it at once, so that the node's shutdown does not wait on them:
    /// writes and compare-and-sets may have happened, reads did nothing. Reads were left
    /// unanswered before (a client without a deadline would have waited forever).
    #[tokio::test]
    async fn a_failed_replica_log_answers_everything_waiting_and_is_reported_once() {
        let me = NodeId::from("n1");
        let transport = Transport::start(
            me.clone(),
            &[(me.clone(), "127.0.0.1:1".into())],
            &crate::transport::tests::lf_shape("n1", &["n1"]),
            FaultFilter::default(),
        );
        let reported = Arc::new(Mutex::new(Vec::<String>::new()));
        let r = reported.clone();
        let on_fail: crate::storage::FailObserver = Arc::new(move |why: &str| {
            r.lock().expect("lock").push(why.to_string());
        });
        let Built {
            driver: mut d,
            rx: _rx,
            handle: _handle,
        } = build(
            me.clone(),
            vec![me],
            None,
            FsyncPolicy::Never,
            None,
            Some(on_fail),
            Timing::default(),
            None,
            transport,
            Arc::new(MemStorage::new()),
            1,
        )
        .expect("driver");
        let (put, mut put_rx) = oneshot::channel();
        d.proposals.insert(1, put);
        let (cas, mut cas_rx) = oneshot::channel();
        d.cas.insert(5, (2, cas));
        let (read, mut read_rx) = oneshot::channel();
        d.reads.insert(3, read);
        let (applying, mut applying_rx) = oneshot::channel();
        d.reads_applying.push((7, applying));
        let (held, mut held_rx) = oneshot::channel();
        let cmd = Command::Delete {
            key: Bytes::from_static(b"k"),
        };
        d.held.push((cmd, 1, held));

        d.fail("disk full".into());
        d.fail("and again".into());
        assert_eq!(
            *reported.lock().expect("lock"),
            vec!["disk full".to_string()]
        );
        assert_eq!(
            put_rx.try_recv().expect("answered"),
            Err(DriveError::Unknown)
        );
        assert!(matches!(
            cas_rx.try_recv().expect("answered"),
            Err(DriveError::Unknown)
        ));
        let stopped = Err(DriveError::Stopped("disk full".into()));
        assert_eq!(read_rx.try_recv().expect("answered"), stopped);
        assert_eq!(applying_rx.try_recv().expect("answered"), stopped);
        // Held for the proposal window: never proposed, so surely not done.
        assert_eq!(
            held_rx.try_recv().expect("answered"),
            Err(DriveError::Stopped("disk full".into()))
        );
    }

    /// A single node's driver, not yet started, whose proposal window of `window` engages at 4
    /// requests in flight; with its gauge of requests in flight and its count of held writes.
    fn single_windowed(
        dir: &std::path::Path,
        window: Duration,
    ) -> (
        Built,
        prometheus_client::metrics::gauge::Gauge,
        prometheus_client::metrics::counter::Counter,
    ) {
        let in_flight = prometheus_client::metrics::gauge::Gauge::default();
        let held = prometheus_client::metrics::counter::Counter::default();
        let built = windowed_build(
            "n1",
            &[("n1", "127.0.0.1:1".into())],
            dir,
            Some(ProposalWindow {
                window,
                requests: 4,
                in_flight: in_flight.clone(),
                held: held.clone(),
            }),
        );
        (built, in_flight, held)
    }

    fn put(i: usize) -> Command {
        Command::Put {
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from_static(b"v"),
        }
    }

    /// The version counter of a single node's first write, made once it has elected itself.
    async fn first_write(driver: &DriverHandle) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first = driver.propose(put(0), 1).await;
        while first.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            first = driver.propose(put(0), 1).await;
        }
        first.expect("a leader").version.counter
    }

    /// With fewer client requests in flight than `--proposal-window-requests`, every write is
    /// proposed as it comes; with as many, the writes that come within a window of the last
    /// proposal wait for the window to end and are then proposed together, in the order they
    /// came, and none overtakes one held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proposal_window_holds_writes_only_while_many_requests_are_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Long, so that a slow fsync of the first write (a loaded machine) still leaves the
        // twenty after it inside its window.
        let window = Duration::from_secs(1);
        let (built, in_flight, held) = single_windowed(dir.path(), window);
        let driver = built.spawn().expect("driver");
        let mut last = first_write(&driver).await;
        // Few requests in flight: one write after another, none held.
        in_flight.set(3);
        for i in 1..=5 {
            let v = driver.propose(put(i), 1).await.expect("write");
            assert!(v.version.counter > last);
            last = v.version.counter;
        }
        assert_eq!(held.get(), 0);
        // Many in flight: one write proposed at once (the last was longer than a window ago),
        // then twenty more within its window, held and proposed together once it ends.
        in_flight.set(4);
        tokio::time::sleep(window).await;
        let started = Instant::now();
        let v = driver.propose(put(6), 1).await.expect("write");
        assert!(v.version.counter > last);
        assert_eq!(held.get(), 0, "the first write of a window is not held");
        // Sent one after another on the driver's channel, so they come in this order.
        let writes: Vec<_> = (7..27)
            .map(|i| {
                let (reply, rx) = oneshot::channel();
                driver.send(Input::Propose {
                    cmd: put(i),
                    w: 1,
                    reply,
                });
                rx
            })
            .collect();
        let mut versions = Vec::new();
        for w in writes {
            versions.push(w.await.expect("answered").expect("write").version.counter);
        }
        assert!(
            started.elapsed() >= window,
            "held writes answered {:?} after the window opened",
            started.elapsed()
        );
        assert_eq!(held.get(), 20, "the writes within the window were held");
        assert!(
            versions.windows(2).all(|p| p[0] < p[1]) && versions[0] > v.version.counter,
            "held writes proposed in the order they came: {versions:?}"
        );
        drop(driver);
    }

    /// While the leader's log takes longer than a window to flush, the window holds nothing,
    /// however many requests are in flight: the writes share the next flush anyway.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proposal_window_holds_nothing_while_the_log_flushes_slower_than_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (built, in_flight, held) = single_windowed(dir.path(), Duration::from_secs(1));
        // Flushes of 1000 s lately: the real ones of this test (fast) take the average down by
        // an eighth each, far from below the window within it.
        built
            .driver
            .flush_time
            .0
            .store(1_000_000_000, Ordering::Relaxed);
        let driver = built.spawn().expect("driver");
        first_write(&driver).await;
        in_flight.set(4);
        for i in 1..=20 {
            driver.propose(put(i), 1).await.expect("write");
        }
        assert_eq!(
            held.get(),
            0,
            "no write held while flushes take longer than the window"
        );
        drop(driver);
    }

    #[test]
    fn flush_time_follows_the_last_eight_flushes_or_so() {
        let t = FlushTime::default();
        assert_eq!(t.get(), Duration::ZERO);
        for _ in 0..40 {
            t.flushed(Duration::from_millis(4));
        }
        let slow = t.get();
        assert!(
            slow > Duration::from_micros(3900) && slow <= Duration::from_millis(4),
            "{slow:?}"
        );
        // Fast flushes bring it down within a few dozen.
        for _ in 0..40 {
            t.flushed(Duration::from_micros(100));
        }
        assert!(t.get() < Duration::from_micros(200), "{:?}", t.get());
    }

    /// A driver for `me` among `members` (id, address), its log in `dir`.
    fn durable_driver(me: &str, members: &[(&str, String)], dir: &std::path::Path) -> DriverHandle {
        windowed_build(me, members, dir, None)
            .spawn()
            .expect("driver")
    }

    /// The same with a proposal window, not yet started.
    fn windowed_build(
        me: &str,
        members: &[(&str, String)],
        dir: &std::path::Path,
        window: Option<ProposalWindow>,
    ) -> Built {
        let members: Vec<(NodeId, String)> = members
            .iter()
            .map(|(id, a)| (NodeId::from(*id), a.clone()))
            .collect();
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.0.as_str()).collect();
        let transport = Transport::start(
            NodeId::from(me),
            &members,
            &crate::transport::tests::lf_shape(me, &ids),
            FaultFilter::default(),
        );
        build(
            NodeId::from(me),
            members.into_iter().map(|(id, _)| id).collect(),
            Some(dir.to_path_buf()),
            FsyncPolicy::Batch,
            None,
            None,
            Timing::default(),
            window,
            transport,
            Arc::new(MemStorage::new()),
            1,
        )
        .expect("driver")
    }

    /// Dropping every handle ends the driver and its log writer, which frees the data directory
    /// (a node restarted in the same process can open it again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_data_directory_is_free_once_the_driver_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = durable_driver("n1", &[("n1", "127.0.0.1:1".into())], dir.path());
        drop(driver);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match RaftLog::open(dir.path(), FsyncPolicy::Batch) {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "still locked: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A follower's acknowledgement goes out only once what it acknowledges is on disk, although
    /// the log is written on another thread while the replica goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_acknowledges_entries_only_once_they_are_written() {
        // Shorter than the election timeout: this test sends no heartbeats.
        crate::raft_log::WRITE_DELAY_MS.store(100, Ordering::Relaxed);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let leader_addr = listener.local_addr().expect("addr").to_string();
        let (mut from_follower, rt, _) = crate::transport::tests::serve(
            listener,
            crate::transport::tests::lf_shape("n1", &["n1", "n2"]),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let n1 = NodeId::from("n1");
        let follower = durable_driver(
            "n2",
            &[("n1", leader_addr), ("n2", "127.0.0.1:1".into())],
            dir.path(),
        );
        let entry = Entry {
            term: Term(1),
            index: LogIndex(1),
            cmd: Command::Put {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from_static(b"v"),
            },
        };
        let sent = Instant::now();
        follower.send(Input::Peer {
            from: n1.clone(),
            msg: Message::Append {
                term: Term(1),
                prev_index: LogIndex(0),
                prev_term: Term(0),
                entries: vec![entry],
                commit: LogIndex(0),
                read_seq: 0,
            },
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = loop {
            assert!(Instant::now() < deadline, "no acknowledgement");
            match from_follower.try_recv() {
                Ok(Input::Peer {
                    msg: Message::AppendReply { ok, index, .. },
                    ..
                }) => break (ok, index, sent.elapsed()),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        let on_disk = std::fs::metadata(dir.path().join("raft.log"))
            .expect("log")
            .len();
        crate::raft_log::WRITE_DELAY_MS.store(0, Ordering::Relaxed);
        assert_eq!((reply.0, reply.1), (true, LogIndex(1)));
        assert!(
            on_disk > 0 && reply.2 >= Duration::from_millis(100),
            "acknowledged after {:?} with {on_disk} bytes of log on disk",
            reply.2
        );
        rt.shutdown_background();
    }
}
