//! Leaderless (Dynamo-style) replication, sans-IO.
//!
//! ```text
//!  client ─► any node ──(not a replica of the key)──► Forward ─► first live replica
//!                │                                                   │
//!                └──────────────(a replica)──────────────────────────┤ coordinator
//!      version = (HLC now, coordinator number); vector = local copy's vector + own dot
//!      Write ─► all N replicas (itself included) ─► WriteAck after durable ─► answer at W
//!      unacknowledged after `hint_after_ms` ─► StoreHint on a fallback node ─► Hint delivered
//!      when the replica answers again (sloppy quorum: the fallback's ack counts toward W)
//!      Read ─► all N ─► answer at R with the newest version; stale and late responders get a
//!      repair Write (before answering when read repair is `blocking`); short of R after
//!      `hint_after_ms`, the silent replicas are asked once more
//!  every `anti_entropy_ms`: Merkle-tree digest of the keys shared with one peer ─► differences
//!  are exchanged (answers once durable: the starter learns which of its copies the peer
//!  holds); a tombstone `tombstone_grace_ms` old is purged once every other replica of its key
//!  is known to hold it (`TombstoneGc::Repair`), or at once (`TombstoneGc::Timeout`)
//! ```
//!
//! Writes to a key are coordinated by the first reachable replica in its preference list (any
//! other node forwards the write there, as Riak forwards to a preference-list vnode), so that
//! the coordinator's own copy gives the write its causal context: a write made after another
//! through the same replica carries a vector that dominates the other's, and a larger version
//! whatever the clock skew. While that replica is reachable, writes to a key are ordered; when
//! a partition makes different nodes coordinate, their writes are concurrent (neither vector
//! includes the other): last-writer-wins by version resolves them, and each detection is
//! counted in [`Stats::conflicts`].
//!
//! A forwarded write is run by the replica it went to and by no other node: a forwarder that
//! hears nothing sends the same request again (the coordinator keeps a record of forwarded
//! requests by forwarder and id, answers a repeat from it, and runs one it has no record of
//! only if it was up when the first was sent and has dropped no record of a request the
//! forwarder sent as late), and ends it as "may have happened" at the
//! deadline or once the coordinator is down. Coordinating it itself instead gave one write two
//! versions whenever the first coordinator was slow rather than gone (a pause, a lost answer).
//! A replica not [`established`](Leaderless::established) (back empty, or not yet sure it is
//! not) declines a first send ([`Msg::ForwardDeclined`]) and the forwarder sends the write to
//! the next replica: its clock bound went with its storage.
//!
//! A version is `(HLC timestamp, coordinator number)`. The coordinator observes the version of
//! the copy it replaces before taking a timestamp, so a write causally after another always has
//! the larger version, whatever the clock skew between nodes.
//!
//! The core owns no I/O: it is fed client requests, peer messages, reachability news and ticks
//! with the current time, reads and writes through a [`Store`], and returns [`Action`]s.

mod clock;
mod hlc;
mod ring;

pub use clock::{Causality, VClock};
pub use hlc::{Hlc, LOGICAL_BITS, physical_ms};
pub use ring::{Ring, hash64, mix64};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;

use crate::{NodeId, Quorum, Version};

/// Position in the node's storage log; acknowledgements wait for it to be durable.
pub type Lsn = u64;

/// One replica's copy of a key: a value or a tombstone, its version and vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `None` for a tombstone.
    pub value: Option<Bytes>,
    /// `(HLC timestamp, coordinator number)`.
    pub version: Version,
    /// The writes this copy includes.
    pub clock: VClock,
    /// The coordinator's wall-clock milliseconds at the write; tombstones are purged by it.
    pub written_ms: u64,
}

/// The storage the core works on. `put` returns the write's LSN; the driver sends anything
/// that depends on it only once it is durable (see [`Action::Send`]).
pub trait Store {
    /// This node's copy of `key`.
    fn get(&self, key: &[u8]) -> Option<Stored>;
    /// This node's copy of `key` with the LSN of the write that made it: a replica answers a
    /// read with its copy only once that write is durable ([`ReplicaRead::Newest`]).
    fn get_at(&self, key: &[u8]) -> Option<(Stored, Lsn)>;
    /// As [`Store::get_at`], but where the write that made the copy is not durable yet, the
    /// newest copy that is, if the store still knows it ([`ReplicaRead::LastDurable`]), with
    /// an LSN already durable; `None` when no copy is durable. A store that does not know
    /// gives what `get_at` gives.
    fn get_durable(&self, key: &[u8]) -> Option<(Stored, Lsn)> {
        self.get_at(key)
    }
    /// Replaces this node's copy of `key`.
    fn put(&mut self, key: &Bytes, s: &Stored) -> Lsn;
    /// The LSN of the last write (a no-op acknowledgement waits for it).
    fn last_lsn(&self) -> Lsn;
    /// Calls `f` with every copy held.
    fn scan(&self, f: &mut dyn FnMut(&Bytes, &Stored));
    /// Removes the tombstones written before `older_than_ms` for which `may_purge(key,
    /// tombstone, lsn)` (`lsn`: of the write that stored the tombstone here) is true; returns
    /// how many.
    fn purge_tombstones(
        &mut self,
        older_than_ms: u64,
        may_purge: &mut dyn FnMut(&Bytes, &Stored, Lsn) -> bool,
    ) -> usize;
    /// Keeps a write for replica `target` until it can be delivered.
    fn put_hint(&mut self, target: &NodeId, key: &Bytes, s: &Stored) -> Lsn;
    /// Forgets a delivered hint (unless a newer one replaced it).
    fn remove_hint(&mut self, target: &NodeId, key: &Bytes, version: Version);
    /// Up to `limit` hints held for `target`.
    fn hints(&self, target: &NodeId, limit: usize) -> Vec<(Bytes, Stored)>;
    /// Hints held, all targets.
    fn hint_count(&self) -> u64;
}

/// How read repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRepair {
    /// Stale responders are repaired before the read is answered.
    Blocking,
    /// The read is answered at once; repairs are sent after.
    #[default]
    Async,
}

/// What a replica answers a read with. Either way only what a crash cannot take back: a copy
/// shown to a reader and then lost with its replica's unsynced writes left later reads without
/// it (the durability simulator found it, and a drill with power failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaRead {
    /// Its newest copy, once the write that made it is durable: a read of a key with a write
    /// in flight waits for that replica's next flush.
    #[default]
    Newest,
    /// At once, the newest copy that is durable now (the one a write still in flight
    /// replaced). An acknowledged write is durable on W replicas, so R+W>N still finds it;
    /// but a write in flight that one read returned can be missed by a later read whose
    /// replicas have not flushed it yet, for up to a flush longer than with `Newest` (with
    /// async read repair: blocking repair makes the first read's replicas flush it first).
    LastDurable,
}

/// Which replicas a read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFanout {
    /// Every reachable replica of the key (as Riak does): the answer still comes at R, and the
    /// late responder is compared and repaired too, at the cost of N requests per read.
    #[default]
    All,
    /// R replicas, the coordinator's own copy first when it holds one (as Cassandra does):
    /// fewer messages; the other replicas are asked only when one of those is still silent
    /// after `hint_after_ms` (a speculative retry), and only responders are repaired.
    Quorum,
}

/// When a tombstone past its grace period may be purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TombstoneGc {
    /// Only once every other replica of its key is known to hold it (or something newer):
    /// an anti-entropy exchange that started after the tombstone was stored here found that
    /// replica's copies equal to this node's, or sent them and heard back once they were
    /// durable there (ScyllaDB's repair-based tombstone GC). A purge then cannot let a
    /// replica's older copy come back through repair, whatever the clocks say. A replica that
    /// stays unreachable holds its keys' tombstones back until it returns.
    #[default]
    Repair,
    /// By age alone (Cassandra's `gc_grace_seconds`): a replica that missed the delete for
    /// longer than the grace period, or a clock stepped forward by more than it, can bring
    /// back what the delete hid.
    Timeout,
}

/// Static configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Every member, this node included (order does not matter; it is sorted).
    pub members: Vec<NodeId>,
    /// N, R and W.
    pub quorum: Quorum,
    /// Ring tokens per member.
    pub vnodes: u32,
    /// Read repair mode.
    pub read_repair: ReadRepair,
    /// Which replicas a read asks.
    pub read_fanout: ReadFanout,
    /// What a replica answers a read with.
    pub replica_read: ReplicaRead,
    /// Count fallback nodes holding hints toward W (breaks R+W>N overlap).
    pub sloppy_quorum: bool,
    /// Keep writes for unreachable replicas as hints (off: only read repair and anti-entropy
    /// bring a replica up to date).
    pub hinted_handoff: bool,
    /// A replica silent this long after a write gets a hint.
    pub hint_after_ms: u64,
    /// Hints are offered to their replica this often.
    pub hint_retry_ms: u64,
    /// No new hints for a replica unreachable for longer than this (Cassandra's
    /// `max_hint_window`; 0: no limit): past it, anti-entropy brings the replica up to date
    /// instead, and hints stop piling up for a node that may never return.
    pub max_hint_window_ms: u64,
    /// One anti-entropy exchange with the next peer this often (0: never).
    pub anti_entropy_ms: u64,
    /// Tombstones older than this are purged.
    pub tombstone_grace_ms: u64,
    /// What else a purge waits for.
    pub tombstone_gc: TombstoneGc,
    /// This is the node's first life on its storage (a new data directory): no earlier life
    /// can have run a write forwarded to it, so a forwarded write sent again is run without
    /// the check that refuses one the node may have run before a restart. False unless the
    /// driver knows: an empty store does not say it (a node that crashed before its first
    /// write was durable may have sent that write to the other replicas).
    ///
    /// Such a life does not know yet whether it is new to the cluster or back empty (see
    /// [`Leaderless::hello_answered`]), and a later life on the same storage would not know
    /// either: before a first life with peers starts, the driver records durably that the
    /// node is [`refilling`](Self::refilling), and the node takes the mark away
    /// ([`Action::PersistRefilling`]`(false)`) once it learns it is new. A node that stopped
    /// before learning it refills itself at its next start, which is right in both cases (the
    /// simulator found one that did not and counted its empty answers, seed 60001212).
    pub first_life: bool,
    /// Where this life's operation ids start. Ids name forwarded writes to their coordinators
    /// (which keep a record of them by forwarder and id) and match answers to requests, so a
    /// restarted node must not reuse an earlier life's: the driver draws this at random for
    /// every start (ids from a clock reading repeated when a node restarted twice before its
    /// clock passed the versions it had stored from a peer with a faster clock: the simulator
    /// found it, seed 912818). Below [`OP_IDS_BELOW`].
    pub first_op: u64,
    /// How far ahead of its clock, in milliseconds, a node records a durable bound on it
    /// ([`Action::PersistClock`]; asked again when half of it is left). A restarted node's
    /// clock starts at the last bound, up to this far ahead of where it stopped.
    pub clock_margin_ms: u64,
    /// This node is refilling (see [`Leaderless::start_refill`]): it was told so in an earlier
    /// life and has not finished, or its first life ended before it learned whether it was
    /// new to the cluster (see [`first_life`](Self::first_life)), so it starts refilling.
    pub refilling: bool,
}

impl Config {
    /// Defaults for everything but membership and quorum.
    pub fn new(id: NodeId, members: Vec<NodeId>, quorum: Quorum) -> Config {
        Config {
            id,
            members,
            quorum,
            vnodes: 64,
            read_repair: ReadRepair::Async,
            read_fanout: ReadFanout::All,
            replica_read: ReplicaRead::Newest,
            sloppy_quorum: false,
            hinted_handoff: true,
            hint_after_ms: 200,
            hint_retry_ms: 500,
            max_hint_window_ms: 3 * 3600 * 1000,
            anti_entropy_ms: 10_000,
            tombstone_grace_ms: 24 * 3600 * 1000,
            tombstone_gc: TombstoneGc::Repair,
            first_life: false,
            first_op: 1,
            clock_margin_ms: 1_000,
            refilling: false,
        }
    }
}

/// Node-to-node messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Store this copy (a write, or a repair) and acknowledge once durable.
    Write {
        /// Coordinator's operation id.
        req: u64,
        /// The key.
        key: Bytes,
        /// The copy.
        stored: Stored,
    },
    /// The copy (or a newer one) is durable here.
    WriteAck {
        /// Operation id.
        req: u64,
        /// The replica's clock.
        hlc: u64,
        /// The replica already held a concurrent write with a higher version: the copy is
        /// hidden there (last-writer-wins).
        superseded: bool,
    },
    /// Send your copy of `key`.
    Read {
        /// Operation id.
        req: u64,
        /// The key.
        key: Bytes,
    },
    /// A replica's copy (`None`: it holds none).
    ReadReply {
        /// Operation id.
        req: u64,
        /// The copy.
        stored: Option<Stored>,
        /// The replica's clock.
        hlc: u64,
        /// The replica is not [`established`](Leaderless::established) (refilling, or not yet
        /// sure it is not back empty): its answer does not count toward R.
        refilling: bool,
    },
    /// Coordinate this write for me (you are a replica of the key).
    Forward {
        /// The forwarder's operation id.
        req: u64,
        /// The key.
        key: Bytes,
        /// `None` deletes.
        value: Option<Bytes>,
        /// Acknowledgements needed.
        w: u32,
        /// Milliseconds left before the client's deadline.
        timeout_ms: u64,
        /// Answer with fewer acknowledgements rather than fail.
        degrade: bool,
        /// 0 when first sent. A forwarder that heard nothing sends the same request again
        /// (same `req`), with the milliseconds since the first send: the coordinator answers a
        /// request it already has from its record and never runs one twice, and acts on one it
        /// has no record of only if it has been up since the first was sent.
        age_ms: u64,
        /// The forwarder's clock when it first sent the request (the same on every send).
        sent_hlc: u64,
    },
    /// A forwarded write, first sent, that this node did not run and will not: it is not
    /// [`established`](Leaderless::established) (refilling, or not yet sure it is not back
    /// empty), and may give a version its earlier life gave another write; or its clock is
    /// still ahead of real time since its start, and would give one from the future. The
    /// forwarder sends it to the next replica of the key.
    ForwardDeclined {
        /// The forwarder's operation id.
        req: u64,
    },
    /// The outcome of a forwarded write.
    ForwardReply {
        /// The forwarder's operation id.
        req: u64,
        /// The outcome.
        result: Result<WriteOk, QuorumFailure>,
    },
    /// Hold this write for `target` until it can be delivered; acknowledge once durable.
    StoreHint {
        /// Coordinator's operation id.
        req: u64,
        /// The replica the write is for.
        target: NodeId,
        /// The key.
        key: Bytes,
        /// The copy.
        stored: Stored,
    },
    /// The hint is durable on the sender.
    HintStored {
        /// Operation id.
        req: u64,
        /// The replica it is for.
        target: NodeId,
    },
    /// A hinted write, delivered to its replica.
    Hint {
        /// The key.
        key: Bytes,
        /// The copy.
        stored: Stored,
    },
    /// The hinted write is durable at its replica.
    HintAck {
        /// The key.
        key: Bytes,
        /// The version delivered.
        version: Version,
    },
    /// Anti-entropy: the root of my Merkle tree over the keys we share.
    AeRoot {
        /// Root hash.
        root: u64,
        /// My last LSN when I built the tree, echoed back.
        upto: Lsn,
    },
    /// Anti-entropy: the answer to a root, sent once the answerer's copies are durable.
    AeLeaves {
        /// One hash per bucket; empty when the roots are the same.
        leaves: Vec<u64>,
        /// The root's `upto`.
        upto: Lsn,
    },
    /// Anti-entropy: my copies in the buckets that differ.
    AeEntries {
        /// The buckets compared.
        buckets: Vec<u32>,
        /// Copies in those buckets.
        entries: Vec<(Bytes, Stored)>,
        /// Answer with the copies of mine that are newer or missing on your side (always
        /// answered, once the answerer's copies are durable: the answer says it holds these).
        reply: bool,
        /// The sender's last LSN when it collected the entries; echoed in the answer.
        upto: Lsn,
    },
    /// The sender, which came back empty, has refilled itself: its read answers count again.
    /// Sent to itself first, once what it pulled is durable.
    Refilled,
}

/// A successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOk {
    /// The version given to the write.
    pub version: Version,
    /// The node that coordinated it.
    pub coordinator: NodeId,
    /// Replicas that durably hold it.
    pub acked: Vec<NodeId>,
    /// Fallback nodes whose hints were counted (sloppy quorum only).
    pub hinted: Vec<NodeId>,
    /// Fewer than W replicas acknowledged (`on_quorum_loss=degrade`).
    pub degraded: bool,
    /// Acknowledging replicas that already held a concurrent write with a higher version: there
    /// this write is hidden by it (last-writer-wins). Every one of them: the write is lost.
    pub superseded_on: Vec<NodeId>,
}

/// A successful read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOk {
    /// The newest copy among the responders (`None`: none holds the key).
    pub stored: Option<Stored>,
    /// The node that coordinated it.
    pub coordinator: NodeId,
    /// Replicas whose answers were counted.
    pub responders: Vec<NodeId>,
    /// Fewer than R replicas answered (`on_quorum_loss=degrade`).
    pub degraded: bool,
    /// Responders found stale and repaired (before the answer in `blocking` mode).
    pub repaired: Vec<NodeId>,
}

/// How one replica stood when a quorum was missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// It answered.
    Ok,
    /// It did not answer in time.
    Timeout,
    /// It is known to be unreachable (down, cut off by a partition, or refusing this node);
    /// shown as `partitioned`, the word of the product specification.
    Unreachable,
    /// Reachable, but not asked: too few replicas were reachable for the quorum, so nothing
    /// was sent to any.
    NotAsked,
    /// It came back empty and is refilling itself: its read answers do not count.
    Refilling,
}

/// Not enough replicas answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumFailure {
    /// `acks` (writes) or `responses` (reads).
    pub what: &'static str,
    /// How many were needed.
    pub needed: u32,
    /// How many came.
    pub got: u32,
    /// Each replica's state.
    pub replicas: Vec<(NodeId, ReplicaState)>,
    /// The write may still have taken effect (some replica may hold it).
    pub may_have_happened: bool,
}

impl fmt::Display for QuorumFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} {} needed, got {}:",
            self.needed,
            self.replicas.len(),
            self.what,
            self.got
        )?;
        for (i, (id, st)) in self.replicas.iter().enumerate() {
            let st = match st {
                ReplicaState::Ok => "ok",
                ReplicaState::Timeout => "timeout",
                ReplicaState::Unreachable => "partitioned",
                ReplicaState::NotAsked => "not asked",
                ReplicaState::Refilling => "refilling",
            };
            write!(f, "{} {id} {st}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `to` (possibly this node itself) once everything up to `after` is durable.
    Send {
        /// Destination.
        to: NodeId,
        /// The message.
        msg: Msg,
        /// Wait for this LSN to be durable first.
        after: Option<Lsn>,
        /// The wait for `after` need not hurry: this is the coordinator's acknowledgement of
        /// its own copy of a write whose other replicas are reachable and enough for its W, so
        /// the driver may let the copy share a later flush (within a bound) rather than cost
        /// an fsync of its own. The rule (durable before acknowledged) is the same.
        lazy: bool,
    },
    /// Answer the client request `req`.
    Write {
        /// The client request.
        req: u64,
        /// The outcome.
        result: Result<WriteOk, QuorumFailure>,
    },
    /// Answer the client read `req`.
    Read {
        /// The client request.
        req: u64,
        /// The outcome.
        result: Result<ReadOk, QuorumFailure>,
    },
    /// Record `upto` durably as a bound on this node's clock, then call
    /// [`Leaderless::clock_persisted`]; the next start's clock floor must be at least the
    /// highest bound recorded. Asked for ahead of the clock (see `Config::clock_margin_ms`):
    /// other actions wait (are not returned by [`Leaderless::take_actions`]) only while the
    /// clock is above every bound made durable, which is after a start, or when a peer's clock
    /// is far ahead.
    PersistClock {
        /// The bound.
        upto: u64,
    },
    /// Record durably that this node is refilling (`true`, [`Leaderless::start_refill`]) or
    /// has refilled (`false`, once what it pulled is durable) or, in a first life, learnt
    /// it is new to the cluster (`false`), for [`Config::refilling`] at the next start.
    PersistRefilling(bool),
}

/// Cumulative counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Concurrent writes detected (at a replica merging, or a read coordinator comparing).
    pub conflicts: u64,
    /// Repair writes sent by reads.
    pub read_repairs: u64,
    /// Hints this node stored for others.
    pub hints_stored: u64,
    /// Hints this node delivered.
    pub hints_delivered: u64,
    /// Hints not kept because their replica was unreachable for longer than the hint window.
    pub hints_beyond_window: u64,
    /// Hints received older than the tombstone grace period, for keys this node held nothing
    /// of, and not stored.
    pub hints_expired: u64,
    /// Anti-entropy exchanges started.
    pub ae_rounds: u64,
    /// Copies changed here by anti-entropy.
    pub ae_repairs: u64,
    /// Requests that missed their quorum (failed or degraded).
    pub quorum_failures: u64,
    /// Writes forwarded to a replica of their key.
    pub forwarded: u64,
    /// Tombstones purged.
    pub tombstones_purged: u64,
    /// Tombstones past their grace period kept at the last purge round because some replica
    /// of their key was not yet known to hold them ([`TombstoneGc::Repair`]; not cumulative).
    pub tombstones_awaiting_repair: u64,
    /// Writes coordinated here and acknowledged although a replica that acknowledged them
    /// already held a concurrent write with a higher version (`WriteOk::superseded_on`).
    pub superseded_writes: u64,
    /// Refills this node finished ([`Leaderless::start_refill`]).
    pub refills: u64,
    /// Read answers not counted toward R because their replica was refilling.
    pub refilling_answers: u64,
    /// Forwarded writes this node declined to coordinate while not established.
    pub forwards_declined: u64,
}

/// Per-request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opts {
    /// R or W for this request.
    pub quorum: u32,
    /// Milliseconds from now before it fails.
    pub timeout_ms: u64,
    /// Answer with less than the quorum rather than fail.
    pub degrade: bool,
}

/// In `PendingWrite::hinted`: the replica was given up on without a hint (handoff disabled).
const NO_HOLDER: usize = usize::MAX;

/// [`Config::first_op`] is below this, so that a life's operation ids never wrap around.
pub const OP_IDS_BELOW: u64 = 1 << 62;

/// Anti-entropy buckets (Merkle leaves).
pub const AE_BUCKETS: usize = 256;

enum Origin {
    Client(u64),
    Forwarded { from: usize, req: u64 },
}

struct PendingWrite {
    origin: Origin,
    key: Bytes,
    stored: Stored,
    pref: Vec<usize>,
    acked: BTreeSet<usize>,
    /// Acknowledging replicas that hold a concurrent write with a higher version.
    superseded: BTreeSet<usize>,
    /// Replica -> the fallback asked to hold its hint.
    hinted: BTreeMap<usize, usize>,
    /// (replica, fallback): the fallback's hint for that replica is durable.
    hint_acked: BTreeSet<(usize, usize)>,
    started: u64,
    /// When the write last went to the replicas that have not acknowledged it.
    sent: u64,
    deadline: u64,
    w: u32,
    degrade: bool,
    replied: bool,
}

/// A client's write on its way to a coordinator ([`Leaderless::route_write`]).
struct ClientWrite {
    client: u64,
    key: Bytes,
    value: Option<Bytes>,
    opts: Opts,
    /// Replicas that declined it ([`Msg::ForwardDeclined`]): not asked again.
    declined: Vec<usize>,
}

impl ClientWrite {
    /// The message that forwards it as request `req`: `age_ms` after its first send (0: the
    /// first), with `timeout_ms` left, sent at the forwarder's clock `sent_hlc`.
    fn forward(&self, req: u64, timeout_ms: u64, age_ms: u64, sent_hlc: u64) -> Msg {
        Msg::Forward {
            req,
            key: self.key.clone(),
            value: self.value.clone(),
            w: self.opts.quorum,
            timeout_ms,
            degrade: self.opts.degrade,
            age_ms,
            sent_hlc,
        }
    }
}

struct PendingForward {
    write: ClientWrite,
    /// The coordinator it went to.
    to: usize,
    started: u64,
    /// When it was last sent.
    sent: u64,
    /// This node's clock when it was first sent.
    sent_hlc: u64,
}

/// A coordinator's record of a forwarded write, kept until the forwarder's deadline has passed
/// so that a request sent again is answered, not run again. A repeat this node could not vouch
/// for is `Done` with its refusal: the first, should it still come, is not run either.
enum Forwarded {
    Running,
    Done(Result<WriteOk, QuorumFailure>),
    /// Declined, not run ([`Msg::ForwardDeclined`]): a copy that comes later is declined too.
    Declined,
}

struct PendingRead {
    client: u64,
    key: Bytes,
    pref: Vec<usize>,
    replies: BTreeMap<usize, Option<Stored>>,
    /// Replicas sent the read (all of them with `ReadFanout::All`).
    asked: BTreeSet<usize>,
    r: u32,
    /// Replicas silent until then are asked once more (a request or its reply may be lost).
    retry_at: u64,
    deadline: u64,
    degrade: bool,
    answer: Option<ReadOk>,
    /// Blocking repair: replicas whose repair ack is awaited.
    repairing: BTreeSet<usize>,
    /// Replicas that answered while refilling: their answers do not count toward R.
    uncounted: BTreeSet<usize>,
    replied: bool,
}

/// A replica back empty (its data directory lost, or started again in memory) while its peers
/// remember it: the writes it acknowledged are gone from it, so its answer to a read, counted
/// toward R, could hide a write that R + W > N promised the read would see. Until it has
/// pulled, through anti-entropy exchanges it starts itself, every copy from enough of each
/// key's other replicas to meet every acknowledged write (N - W + 1 of them: at least one
/// that acknowledged it), its answers do not count, at other coordinators or its own.
struct Refill {
    /// Per member: the anti-entropy buckets pulled from it whole in this refill.
    pulled: Vec<BTreeSet<u32>>,
    /// When the next round of exchanges goes to the peers not pulled whole yet.
    next_round: u64,
    /// Finished, waiting for what it pulled to be durable (the `Msg::Refilled` to itself).
    finishing: bool,
    /// Rounds of exchanges started.
    rounds: u32,
}

/// One node's leaderless replication state.
pub struct Leaderless {
    cfg: Config,
    members: Vec<NodeId>,
    me: usize,
    ring: Ring,
    hlc: Hlc,
    next_op: u64,
    writes: BTreeMap<u64, PendingWrite>,
    forwards: BTreeMap<u64, PendingForward>,
    /// Forwarded writes this node coordinates or did, by (forwarder, its req): what became of
    /// it, until when the record is kept, and the forwarder's clock when it first sent it.
    forwarded: BTreeMap<(usize, u64), (Forwarded, u64, u64)>,
    /// Per forwarder, the highest first-send clock among the records dropped: a copy of a
    /// forwarded write sent no later than that may have been run and forgotten.
    forgotten: BTreeMap<usize, u64>,
    /// When this node started (its records of forwarded writes go back no further), on its
    /// own millisecond clock and on its hybrid clock.
    booted: u64,
    /// A node back empty (or unsure it is not) knows no bound on what its earlier life's
    /// clock gave out: `u64::MAX`, refusing every repeat, until its refill ends; then its
    /// clock then, above every copy it pulled (see [`Leaderless::was_up_when_sent`]).
    booted_hlc: u64,
    /// Coordinators that left a forwarded write unanswered: new writes go to the next replica
    /// until this node hears from them again.
    suspect: BTreeSet<usize>,
    reads: BTreeMap<u64, PendingRead>,
    down: BTreeSet<usize>,
    /// When each unreachable member was first seen so (by the tick that noticed it).
    down_since: BTreeMap<usize, u64>,
    /// Hint targets known to this node, for delivery rounds.
    hint_targets: BTreeSet<usize>,
    next_hint_round: u64,
    next_ae: u64,
    ae_peer: usize,
    /// Per member and anti-entropy bucket: every copy this node held at or below this LSN in
    /// that bucket (among the keys the two share) is durably held by the member, the same or
    /// newer. Learnt from anti-entropy exchanges this node started; lost on restart.
    ae_synced: Vec<Vec<Option<Lsn>>>,
    /// Tombstones this node purged under [`TombstoneGc::Repair`] (every replica was known to
    /// hold them), with when. For a grace period after, this node answers reads of the key with
    /// the tombstone, stores no copy as old or older (one sent back by a replica that has not
    /// purged it yet included). Lost on restart.
    purged_recently: BTreeMap<Bytes, (Stored, u64)>,
    actions: Vec<Action>,
    stats: Stats,
    /// Added to the physical time of new versions: a clock set wrong on purpose (fault
    /// injection), to show what last-writer-wins makes of clock skew.
    clock_offset_ms: i64,
    /// Timestamps up to here may leave the node: a bound on its clock is durable there, so
    /// no later life gives them out again.
    clock_durable: u64,
    /// The highest bound asked for.
    clock_asked: u64,
    /// The clock this node started from (above every timestamp an earlier life gave out, up
    /// to [`Config::clock_margin_ms`] ahead of real time after a quick restart), while the
    /// physical clock has not passed it yet; 0 after. Until then the node leaves coordinating
    /// writes to other replicas and keeps its clock to itself (see
    /// [`Leaderless::clock_ahead`]).
    clock_ahead_until: u64,
    /// The highest timestamp this life observed from outside its own clock: peers' readings
    /// and the versions of copies. What it may pass on while its clock is ahead.
    observed: u64,
    /// This life has had a peer's clock reading (see [`Leaderless::clock_unheard`]); true from
    /// the start for a node without peers.
    heard_peer_clock: bool,
    /// Clients' writes this node is to coordinate, held until it hears a peer's clock, with
    /// the time each came.
    clock_wait: Vec<(u64, ClientWrite)>,
    /// This node is refilling itself (see [`Refill`]).
    refill: Option<Refill>,
    /// Peers known to be refilling: their read answers do not count.
    peers_refilling: BTreeSet<usize>,
    /// Changes of `peers_refilling` ([`Leaderless::peers_refilling_changes`]).
    peers_refilling_changes: u64,
    /// Started on a new store (`Config::first_life`), and not yet known to be new to the
    /// cluster rather than back empty: a node back empty learns it only from its peers (see
    /// [`Leaderless::hello_answered`]); until then its own answers do not count.
    unconfirmed: bool,
    /// Peers, themselves not established, that answered they do not know this node.
    new_to: BTreeSet<usize>,
    /// For each distinct replica set this node belongs to, the other members in it.
    groups: Vec<Vec<usize>>,
}

impl Leaderless {
    /// A node with `cfg`, whose clock starts above `hlc_floor`: the highest timestamp in its
    /// storage and the highest bound on its clock recorded in earlier lives
    /// ([`Action::PersistClock`]), so that no timestamp it gave out before is given again.
    ///
    /// # Panics
    /// If `cfg.id` is not among the members, or there are more than 64 members (both are
    /// validated by the configuration before this is built).
    pub fn new(mut cfg: Config, hlc_floor: u64, now_ms: u64) -> Leaderless {
        cfg.members.sort();
        cfg.members.dedup();
        assert!(cfg.members.len() <= 64, "at most 64 members");
        let me = cfg
            .members
            .iter()
            .position(|m| *m == cfg.id)
            .expect("invariant: the node is a member");
        let names: Vec<&str> = cfg.members.iter().map(|m| m.0.as_str()).collect();
        let ring = Ring::new(&names, cfg.vnodes);
        let members = cfg.members.clone();
        let heard_peer_clock = members.len() < 2;
        let ae_peer = me;
        let mut hlc = Hlc::new(hlc_floor);
        let started = hlc.now(now_ms);
        // Until a peer confirms it (`hello_answered`), even a first life on a new store may be
        // a node back empty.
        let booted_hlc = if cfg.first_life || cfg.refilling {
            u64::MAX
        } else {
            started
        };
        let next_op = cfg.first_op.min(OP_IDS_BELOW - 1);
        let ae_synced = vec![vec![None; AE_BUCKETS]; members.len()];
        let groups = ring.groups(cfg.quorum.n as usize, me);
        let unconfirmed = cfg.first_life && members.len() > 1;
        let refill = cfg.refilling.then(|| Refill {
            pulled: vec![BTreeSet::new(); members.len()],
            next_round: now_ms,
            finishing: false,
            rounds: 0,
        });
        Leaderless {
            next_ae: now_ms + cfg.anti_entropy_ms,
            next_hint_round: now_ms,
            cfg,
            members,
            me,
            ring,
            hlc,
            next_op,
            writes: BTreeMap::new(),
            forwards: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            booted: now_ms,
            // A node in its first life has no earlier one that could have run a write forwarded
            // to it, so repeats need no check (with skewed clocks the check refused them for the
            // first few hundred milliseconds of a new cluster). Recovering no version did not
            // say so: a node that crashed before its first write was durable, having sent it on
            // to the other replicas, ran a repeat of it again (the simulator with writes made
            // durable later found it, seed 600251). Nor does a new store: a node whose storage
            // was lost ran a repeat of a write it had run before (the simulator with storage
            // losses, seed 0), so the check stands until a peer says this node is new to it.
            booted_hlc,
            suspect: BTreeSet::new(),
            reads: BTreeMap::new(),
            down: BTreeSet::new(),
            down_since: BTreeMap::new(),
            hint_targets: BTreeSet::new(),
            ae_peer,
            ae_synced,
            purged_recently: BTreeMap::new(),
            actions: Vec::new(),
            stats: Stats::default(),
            clock_offset_ms: 0,
            clock_durable: hlc_floor,
            clock_asked: hlc_floor,
            clock_ahead_until: hlc_floor,
            observed: 0,
            heard_peer_clock,
            clock_wait: Vec::new(),
            refill,
            peers_refilling: BTreeSet::new(),
            peers_refilling_changes: 0,
            unconfirmed,
            new_to: BTreeSet::new(),
            groups,
        }
    }

    /// Sets this node's clock `ms` ahead of the real one (negative: behind) for the versions it
    /// gives writes from now on (timers keep real time). Its hybrid clock never goes back: a
    /// clock set behind shows only once real time has passed what it issued.
    pub fn set_clock_offset(&mut self, ms: i64) {
        self.clock_offset_ms = ms;
    }

    /// The physical time new versions start from: `now` with the clock offset.
    fn physical(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.clock_offset_ms)
    }

    /// Whether this node's clock still runs ahead of real time because of where it started:
    /// the bound its earlier life recorded ([`Action::PersistClock`]) is up to
    /// [`Config::clock_margin_ms`] ahead of the clock then. A write it coordinated now would
    /// get a version from the future, and a write to the same key that a peer coordinates
    /// after that one is acknowledged could get a smaller one and be hidden by it
    /// (last-writer-wins); its clock readings in messages would move its peers' clocks as far
    /// ahead. The simulator found a node restarted 14 ms after a crash doing so: a write
    /// acknowledged after another returned was hidden by it (seed 60002935 of
    /// `sim_leaderless_replicas_back_empty_keep_histories_linearizable`).
    fn clock_ahead(&self, now: u64) -> bool {
        self.clock_ahead_until > self.physical(now) << hlc::LOGICAL_BITS
    }

    /// The clock reading this node's messages carry: its hybrid clock, or while that is
    /// [ahead](Leaderless::clock_ahead) because of where it started, no more than real time
    /// and what it has observed from others.
    fn reading(&self, now: u64) -> u64 {
        let last = self.hlc.last();
        if self.clock_ahead(now) {
            last.min(self.observed.max(self.physical(now) << hlc::LOGICAL_BITS))
        } else {
            last
        }
    }

    /// Takes note of a timestamp from outside this node's clock (a peer's reading, the version
    /// of a copy).
    fn observe(&mut self, ts: u64) {
        self.hlc.observe(ts);
        self.observed = self.observed.max(ts);
    }

    /// Takes note of a peer's clock reading as it sent a message (not the version of a copy,
    /// which may be old): from then on this life's clock is at least that peer's.
    fn observe_reading(&mut self, ts: u64) {
        self.observe(ts);
        self.heard_peer_clock = true;
    }

    /// Whether this life has not yet had a clock reading from any peer. Until it has, its
    /// clock is only its own: a node started with a clock behind the others' gives a write a
    /// version below one a peer gave a write acknowledged just before, which it missed while
    /// it was down, and the later write is hidden by the earlier (last-writer-wins). A drill
    /// found it: a node killed and started again coordinated a write within milliseconds of its
    /// start, its clock 278 ms behind the node that had just given the same key's acknowledged
    /// write its version (`bench/results/nemesis/`, seed 191). So until then a client's write
    /// that this node is to coordinate waits, and the key's other replicas are asked for their
    /// copy ([`Msg::Read`]): the first answer carries a clock reading at least as high as the
    /// versions its replica holds (`release_clock_wait`). Sending the write to another replica
    /// instead would make two coordinators of one key for a while: 19 conflicts in 300
    /// simulated runs without faults, where there were none (tried).
    ///
    /// A node cut off for a while that comes back with its clock behind has the same problem
    /// and no such cure: between writes its version vectors call concurrent, last-writer-wins.
    fn clock_unheard(&self) -> bool {
        !self.heard_peer_clock
    }

    /// Routes the writes held for a peer's clock once one is heard, or once they have waited
    /// `hint_after` (no peer answering: this node coordinates them with its own clock).
    fn release_clock_wait<S: Store>(&mut self, store: &mut S, now: u64) {
        if self.clock_wait.is_empty() {
            return;
        }
        let (heard, limit) = (self.heard_peer_clock, self.cfg.hint_after_ms);
        let (go, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.clock_wait)
            .into_iter()
            .partition(|(since, _)| heard || now >= since + limit);
        self.clock_wait = wait;
        for (since, mut write) in go {
            write.opts.timeout_ms = write.opts.timeout_ms.saturating_sub(now - since);
            self.route(store, now, write, false);
        }
    }

    /// The node's number in versions (1-based position in the sorted member list).
    pub fn number(&self) -> u32 {
        self.me as u32 + 1
    }

    /// The member list, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The member with version number `n`.
    pub fn member_by_number(&self, n: u64) -> Option<&NodeId> {
        self.members.get((n as usize).checked_sub(1)?)
    }

    /// Cumulative counts.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The key's replicas.
    pub fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        self.pref(key)
            .into_iter()
            .map(|i| self.members[i].clone())
            .collect()
    }

    /// Operations in flight (writes, forwards, reads).
    pub fn in_flight(&self) -> usize {
        self.writes.len() + self.forwards.len() + self.reads.len()
    }

    /// The actions produced since the last call.
    ///
    /// Every timestamp this node gives out (in versions, in the clock readings its messages
    /// carry) is below a bound recorded durably first, so none is given out again after a
    /// restart: two writes never share a version (a copy not yet durable when the node
    /// crashed, whose version had gone to the other replicas, did not raise the restarted
    /// clock's floor; the simulator found versions given twice that way, seed 930099), and a
    /// restarted node knows a forwarded write sent before its start by the clocks (see
    /// `was_up_when_sent`). While the clock is above the durable bound, only the request for a
    /// higher one is returned; the rest waits for [`Leaderless::clock_persisted`].
    pub fn take_actions(&mut self) -> Vec<Action> {
        let last = self.hlc.last();
        let margin = self.cfg.clock_margin_ms.max(1) << hlc::LOGICAL_BITS;
        let ask = (last.saturating_add(margin / 2) > self.clock_asked).then(|| {
            self.clock_asked = last.saturating_add(margin);
            Action::PersistClock {
                upto: self.clock_asked,
            }
        });
        let mut out = if last <= self.clock_durable {
            std::mem::take(&mut self.actions)
        } else {
            Vec::new()
        };
        out.extend(ask);
        out
    }

    /// A bound asked for with [`Action::PersistClock`] is durable.
    pub fn clock_persisted(&mut self, upto: u64) {
        self.clock_durable = self.clock_durable.max(upto);
    }

    /// News from the transport: `peer` can (or cannot) be reached.
    pub fn set_reachable(&mut self, peer: &NodeId, up: bool) {
        if let Some(i) = self.index(peer) {
            if up {
                self.down.remove(&i);
                self.down_since.remove(&i);
            } else if i != self.me {
                self.down.insert(i);
            }
        }
    }

    /// This node came back empty while its peers remember it (the driver learns it from them):
    /// it refills itself before its read answers count again (see `Refill`). Starts its
    /// exchanges at the next [`tick`](Self::tick); nothing if already refilling.
    pub fn start_refill(&mut self, now: u64) {
        // An earlier life may have run a forwarded write sent again now, and this node has no
        // bound on that life's clock until its refill ends.
        self.booted_hlc = u64::MAX;
        if self.refill.is_some() {
            return;
        }
        self.refill = Some(Refill {
            pulled: vec![BTreeSet::new(); self.members.len()],
            next_round: now,
            finishing: false,
            rounds: 0,
        });
        self.actions.push(Action::PersistRefilling(true));
    }

    /// `peer` accepted this node's connection, and said whether it takes this node for one
    /// back empty (`refilling`: it remembers another incarnation of it, or took it so before),
    /// and whether it is [`established`](Self::established) itself. Taken for one back empty,
    /// this node refills itself ([`start_refill`](Self::start_refill)). A node started on a
    /// new store is new to the cluster once an established peer, or a majority of the members
    /// (itself included), does not know it: a peer back empty itself knows nobody, so two
    /// replicas that both lost their storage would otherwise vouch for each other.
    pub fn hello_answered(&mut self, now: u64, peer: &NodeId, refilling: bool, established: bool) {
        if refilling {
            self.unconfirmed = false;
            self.start_refill(now);
            return;
        }
        if !self.unconfirmed {
            return;
        }
        if let Some(i) = self.index(peer).filter(|&i| i != self.me) {
            self.new_to.insert(i);
        }
        if established || self.new_to.len() + 1 > self.members.len() / 2 {
            self.unconfirmed = false;
            if self.refill.is_none() {
                // A first life indeed: no earlier one can have run a forwarded write.
                self.booted_hlc = 0;
                // The driver marked it refilling before it started (see `Config::first_life`).
                self.actions.push(Action::PersistRefilling(false));
            }
        }
    }

    /// Neither refilling nor unsure whether it is back empty: its read answers count.
    pub fn established(&self) -> bool {
        self.refill.is_none() && !self.unconfirmed
    }

    /// Whether this node is refilling itself.
    pub fn refilling(&self) -> bool {
        self.refill.is_some()
    }

    /// `peer` came back empty (the driver learns it when the peer connects: it comes with
    /// another data directory, or again in memory, or says it is refilling): its read answers
    /// do not count until it says it has refilled ([`Msg::Refilled`]). What this node knew it
    /// to hold is forgotten: its tombstone purges wait for the peer to hold them again, and a
    /// refill of this node's own does not count what it pulled from the peer.
    pub fn peer_refilling(&mut self, peer: &NodeId) {
        let Some(i) = self.index(peer).filter(|&i| i != self.me) else {
            return;
        };
        if self.peers_refilling.insert(i) {
            self.peers_refilling_changes += 1;
        }
        self.ae_synced[i] = vec![None; AE_BUCKETS];
        if let Some(r) = &mut self.refill {
            r.pulled[i].clear();
        }
    }

    /// How many times the peers known to be refilling changed: the driver copies
    /// [`refilling_peers`](Self::refilling_peers) only when this moved.
    pub fn peers_refilling_changes(&self) -> u64 {
        self.peers_refilling_changes
    }

    /// The peers known to be refilling.
    pub fn refilling_peers(&self) -> Vec<NodeId> {
        self.peers_refilling
            .iter()
            .map(|&i| self.members[i].clone())
            .collect()
    }

    /// Whether replica `i`'s read answers count now.
    fn counts(&self, i: usize) -> bool {
        if i == self.me {
            self.refill.is_none() && !self.unconfirmed
        } else {
            !self.peers_refilling.contains(&i)
        }
    }

    fn index(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search(id).ok()
    }

    fn pref(&self, key: &[u8]) -> Vec<usize> {
        self.ring.preference_list(key, self.cfg.quorum.n as usize)
    }

    /// Sends replica `to` a copy to store for write or repair `req`.
    fn send_write(&mut self, to: usize, req: u64, key: &Bytes, stored: Stored) {
        let msg = Msg::Write {
            req,
            key: key.clone(),
            stored,
        };
        self.send(to, msg, None);
    }

    fn send(&mut self, to: usize, msg: Msg, after: Option<Lsn>) {
        self.actions.push(Action::Send {
            to: self.members[to].clone(),
            msg,
            after,
            lazy: false,
        });
    }

    fn op_id(&mut self) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        id
    }

    // ---------------------------------------------------------------- client requests

    /// A client write (`value: None` deletes).
    pub fn put<S: Store>(
        &mut self,
        store: &mut S,
        now: u64,
        client: u64,
        key: Bytes,
        value: Option<Bytes>,
        opts: Opts,
    ) {
        let write = ClientWrite {
            client,
            key,
            value,
            opts,
            declined: Vec::new(),
        };
        self.route_write(store, now, write);
    }

    /// Sends a client's write to the replica that coordinates it, or coordinates it here.
    /// The first replica believed reachable (and not suspected of sitting on a forwarded
    /// write, nor among those that `declined` it) coordinates; if none is, this node does.
    /// Not one back empty while others can: its clock bound went with its storage, and it may
    /// give a version it gave before to another write (the simulator with storage losses found
    /// one doing so, seed 32000363 of
    /// `sim_leaderless_replicas_back_empty_refill_before_their_answers_count`); a refill raises
    /// its clock past every copy it pulls. A replica that this node does not know is back empty
    /// yet declines the write ([`Msg::ForwardDeclined`]), and it goes to the next. Nor one
    /// whose clock is [ahead](Leaderless::clock_ahead) of real time since its start, while
    /// another can (it coordinates only when no other replica is left to ask).
    fn route_write<S: Store>(&mut self, store: &mut S, now: u64, write: ClientWrite) {
        self.route(store, now, write, true);
    }

    /// [`Leaderless::route_write`]; `may_wait`: a write this node is to coordinate may wait for
    /// a peer's clock ([`Leaderless::clock_unheard`]).
    fn route<S: Store>(&mut self, store: &mut S, now: u64, write: ClientWrite, may_wait: bool) {
        let pref = self.pref(&write.key);
        let reachable = |i: &usize| {
            !self.down.contains(i) && !self.suspect.contains(i) && !write.declined.contains(i)
        };
        let ahead = self.clock_ahead(now);
        let first = pref
            .iter()
            .copied()
            .find(|i| reachable(i) && self.counts(*i) && !(ahead && *i == self.me))
            .or_else(|| pref.iter().copied().find(reachable));
        if let Some(to) = first
            && to != self.me
        {
            let op = self.op_id();
            self.stats.forwarded += 1;
            let sent_hlc = if ahead {
                self.reading(now)
            } else {
                self.hlc.now(self.physical(now))
            };
            let msg = write.forward(op, write.opts.timeout_ms, 0, sent_hlc);
            self.send(to, msg, None);
            self.forwards.insert(
                op,
                PendingForward {
                    write,
                    to,
                    started: now,
                    sent: now,
                    sent_hlc,
                },
            );
            return;
        }
        if may_wait && self.clock_unheard() {
            let ask: Vec<usize> = pref
                .iter()
                .copied()
                .filter(|i| *i != self.me && !self.down.contains(i))
                .collect();
            if !ask.is_empty() {
                for to in ask {
                    // Not a read of this node's: only the clock reading of the answer counts.
                    let req = self.op_id();
                    let key = write.key.clone();
                    self.send(to, Msg::Read { req, key }, None);
                }
                self.clock_wait.push((now, write));
                return;
            }
        }
        let ClientWrite {
            client,
            key,
            value,
            opts,
            ..
        } = write;
        self.coordinate_write(store, now, Origin::Client(client), key, value, opts);
    }

    fn coordinate_write<S: Store>(
        &mut self,
        store: &mut S,
        now: u64,
        origin: Origin,
        key: Bytes,
        value: Option<Bytes>,
        opts: Opts,
    ) {
        let pref = self.pref(&key);
        let w = opts.quorum.clamp(1, pref.len() as u32);
        // Fail fast, before writing anything, when too few replicas are reachable.
        if !opts.degrade
            && !self.cfg.sloppy_quorum
            && let Some(failure) = self.too_few_reachable("acks", w, &pref)
        {
            self.answer_write(origin, Err(failure));
            return;
        }
        let context = if pref.contains(&self.me) {
            store.get(&key)
        } else {
            None
        };
        if let Some(c) = &context {
            self.observe(c.version.epoch);
        }
        let ts = self.hlc.now(self.physical(now));
        let mut clock = context.map(|c| c.clock).unwrap_or_default();
        clock.advance(self.number(), ts);
        let stored = Stored {
            value,
            version: Version::new(ts, u64::from(self.number())),
            clock,
            // By the wall clock, which tombstone ages are measured by on every node (timer
            // time is the wall clock at the node's start: it can be off by a step since).
            written_ms: self.physical(now),
        };
        let op = self.op_id();
        // The other replicas believed reachable can make W without this node's copy: its
        // acknowledgement need not hurry (see `Action::Send::lazy`).
        let others = pref
            .iter()
            .filter(|&&i| i != self.me && !self.down.contains(&i))
            .count() as u32;
        for &r in &pref {
            if r == self.me {
                // The local copy changes now, so the next write here sees this one; the
                // acknowledgement to itself waits for durability like any other.
                let (lsn, _, superseded) = self.merge_write(store, &key, &stored);
                let hlc = self.hlc.last();
                let ack = Msg::WriteAck {
                    req: op,
                    hlc,
                    superseded,
                };
                self.actions.push(Action::Send {
                    to: self.members[r].clone(),
                    msg: ack,
                    after: Some(lsn),
                    lazy: others >= w,
                });
                continue;
            }
            if self.down.contains(&r) {
                continue;
            }
            self.send_write(r, op, &key, stored.clone());
        }
        let mut p = PendingWrite {
            origin,
            key,
            stored,
            pref,
            acked: BTreeSet::new(),
            superseded: BTreeSet::new(),
            hinted: BTreeMap::new(),
            hint_acked: BTreeSet::new(),
            started: now,
            sent: now,
            deadline: now + opts.timeout_ms,
            w,
            degrade: opts.degrade,
            replied: false,
        };
        // Replicas known to be down get their hint at once.
        let down: Vec<usize> = p
            .pref
            .iter()
            .copied()
            .filter(|i| self.down.contains(i) && *i != self.me)
            .collect();
        for r in down {
            self.hint(now, op, &mut p, r);
        }
        self.writes.insert(op, p);
    }

    /// A client read.
    pub fn get(&mut self, now: u64, client: u64, key: Bytes, opts: Opts) {
        let pref = self.pref(&key);
        let r = opts.quorum.clamp(1, pref.len() as u32);
        if !opts.degrade
            && let Some(failure) = self.too_few_reachable("responses", r, &pref)
        {
            self.actions.push(Action::Read {
                req: client,
                result: Err(failure),
            });
            return;
        }
        let op = self.op_id();
        let mut targets: Vec<usize> = pref
            .iter()
            .copied()
            .filter(|i| !self.down.contains(i))
            .collect();
        if self.cfg.read_fanout == ReadFanout::Quorum {
            // Its own copy costs the coordinator no message.
            if let Some(at) = targets.iter().position(|&i| i == self.me) {
                targets[..=at].rotate_right(1);
            }
            // Replicas refilling last: their answers do not count.
            targets.sort_by_key(|&i| !self.counts(i));
            targets.truncate(r as usize);
        }
        for &i in &targets {
            self.send(
                i,
                Msg::Read {
                    req: op,
                    key: key.clone(),
                },
                None,
            );
        }
        self.reads.insert(
            op,
            PendingRead {
                client,
                key,
                pref,
                replies: BTreeMap::new(),
                asked: targets.into_iter().collect(),
                r,
                retry_at: now + self.cfg.hint_after_ms,
                deadline: now + opts.timeout_ms,
                degrade: opts.degrade,
                answer: None,
                repairing: BTreeSet::new(),
                uncounted: BTreeSet::new(),
                replied: false,
            },
        );
    }

    // ---------------------------------------------------------------- replica side

    /// Merges `incoming` into this node's copy of `key`. Returns the LSN to wait for before
    /// acknowledging, and whether the copy changed.
    fn merge<S: Store>(&mut self, store: &mut S, key: &Bytes, incoming: &Stored) -> (Lsn, bool) {
        let (lsn, changed, _) = self.merge_write(store, key, incoming);
        (lsn, changed)
    }

    /// [`merge`](Self::merge), and whether `incoming` lost to a concurrent copy already here
    /// with a higher version (it is hidden here: last-writer-wins).
    fn merge_write<S: Store>(
        &mut self,
        store: &mut S,
        key: &Bytes,
        incoming: &Stored,
    ) -> (Lsn, bool, bool) {
        self.observe(incoming.version.epoch);
        let Some(local) = store.get(key) else {
            let hidden_by = self
                .purged_tombstone(key)
                .filter(|t| t.version >= incoming.version)
                .map(|t| incoming.clock.compare(&t.clock));
            if let Some(causality) = hidden_by {
                // Older than a delete every replica held when this node purged it: stored, it
                // would bring back what the delete removed (a read repair from a replica that
                // answered before the delete reached it, seed 13001139 of the simulator). A
                // write made after the delete has a higher version: its coordinator's clock
                // had seen the delete's, or was already past it (a hybrid clock), so that one
                // is stored.
                //
                // The tombstone itself, sent back by a replica that has not purged it yet, is
                // answered as held too. Stored again, it would wait for new proof that the
                // others hold it while they purge theirs and get it back from this one, and so
                // on (with `TombstoneGc::Repair`, 2.7 times as many purges in 2,000 simulated
                // runs with a 450 ms grace period). No replica holds anything older: each purge
                // was proved so. A node that holds nothing of the key for another reason
                // stores it: counted as holding it, it could later take an older copy from a
                // replica the tombstone had not reached yet (the simulator's purge check found
                // that, seed 102).
                //
                // A write concurrent with the delete loses to it, as it would to the tombstone
                // still stored (last-writer-wins), and is counted and reported the same way.
                let concurrent = causality == Causality::Concurrent;
                self.stats.conflicts += u64::from(concurrent);
                return (store.last_lsn(), false, concurrent);
            }
            return (store.put(key, incoming), true, false);
        };
        match incoming.clock.compare(&local.clock) {
            Causality::After => (store.put(key, incoming), true, false),
            Causality::Before => (store.last_lsn(), false, false),
            Causality::Equal => {
                if incoming.version > local.version {
                    (store.put(key, incoming), true, false)
                } else {
                    (store.last_lsn(), false, false)
                }
            }
            Causality::Concurrent => {
                self.stats.conflicts += 1;
                let clock = local.clock.merge(&incoming.clock);
                let winner = if incoming.version > local.version {
                    incoming
                } else {
                    &local
                };
                let lost = winner.version != incoming.version;
                let merged = Stored {
                    clock,
                    ..winner.clone()
                };
                (store.put(key, &merged), true, lost)
            }
        }
    }

    /// A message from `from`.
    pub fn step<S: Store>(&mut self, store: &mut S, now: u64, from: &NodeId, msg: Msg) {
        self.step_message(store, now, from, msg);
        self.release_clock_wait(store, now);
    }

    fn step_message<S: Store>(&mut self, store: &mut S, now: u64, from: &NodeId, msg: Msg) {
        let Some(f) = self.index(from) else {
            return;
        };
        // Hearing from a peer means it is reachable (and not sitting on a forwarded write).
        if f != self.me {
            self.down.remove(&f);
            self.suspect.remove(&f);
        }
        match msg {
            Msg::Write { req, key, stored } => {
                let (lsn, _, superseded) = self.merge_write(store, &key, &stored);
                let hlc = self.reading(now);
                let ack = Msg::WriteAck {
                    req,
                    hlc,
                    superseded,
                };
                self.send(f, ack, Some(lsn));
            }
            Msg::WriteAck {
                req,
                hlc,
                superseded,
            } => {
                self.observe_reading(hlc);
                self.on_write_ack(now, req, f, superseded);
            }
            Msg::Read { req, key } => {
                // Only what a crash cannot take back: a copy shown to a reader and then lost
                // with its replica's unsynced writes (the write not acknowledged, its other
                // copies as fresh) left later reads without it (the durability simulator found
                // it, with blocking read repair; so did a drill with power failures).
                // `LastDurable`: instead of waiting, the copy before it (see `ReplicaRead`).
                // A tombstone purged here a moment ago is still the answer: "nothing" from this
                // replica beside an older copy from one that answered before the delete reached
                // it would make that copy the newest (seed 13001139).
                let copy = match self.cfg.replica_read {
                    ReplicaRead::Newest => store.get_at(&key),
                    ReplicaRead::LastDurable => store.get_durable(&key),
                };
                let (stored, after) = match copy {
                    Some((s, lsn)) => (Some(s), Some(lsn)),
                    None => (self.purged_tombstone(&key).cloned(), None),
                };
                let hlc = self.reading(now);
                let refilling = !self.established();
                let reply = Msg::ReadReply {
                    req,
                    stored,
                    hlc,
                    refilling,
                };
                self.send(f, reply, after);
            }
            Msg::ReadReply {
                req,
                stored,
                hlc,
                refilling,
            } => {
                self.observe_reading(hlc);
                self.on_read_reply(now, req, f, stored, refilling);
            }
            Msg::Forward {
                req,
                key,
                value,
                w,
                timeout_ms,
                degrade,
                age_ms,
                sent_hlc,
            } => {
                self.observe_reading(sent_hlc);
                let until = now + timeout_ms + self.cfg.hint_after_ms;
                match self.forwarded.get(&(f, req)) {
                    Some((Forwarded::Done(result), ..)) => {
                        let result = result.clone();
                        self.send(f, Msg::ForwardReply { req, result }, None);
                        return;
                    }
                    Some((Forwarded::Running, ..)) => return,
                    Some((Forwarded::Declined, ..)) => {
                        self.send(f, Msg::ForwardDeclined { req }, None);
                        return;
                    }
                    // Sent again, and this node may have run the first before it restarted,
                    // or run it and dropped its record since (a copy that took longer than
                    // the forwarder's deadline to arrive, held up behind a paused node: the
                    // simulator found one run twice that way, seed 930517): it cannot tell,
                    // so it refuses rather than run it twice.
                    None if self.forgotten.get(&f).is_some_and(|&h| sent_hlc <= h)
                        || (age_ms > 0 && !self.was_up_when_sent(now, age_ms, sent_hlc)) =>
                    {
                        let result = Err(self.outcome_unknown(&key, w));
                        self.forwarded
                            .insert((f, req), (Forwarded::Done(result.clone()), until, sent_hlc));
                        self.send(f, Msg::ForwardReply { req, result }, None);
                        return;
                    }
                    // First sent, and this node is not established: it may be back empty, its
                    // clock bound gone with its storage, and give the write a version its
                    // earlier life gave another (a forwarder that had not yet heard it was
                    // back could send it one). It declines; the forwarder goes on to the next
                    // replica. An earlier life never had this request: a first send reaches
                    // only the life it was sent to (the connection to an earlier one is gone
                    // with what was written to it), and one sent again says so (`age_ms`).
                    // So does a node whose clock is still ahead of real time since its start
                    // (see `clock_ahead`): the write's version would be from the future.
                    None if age_ms == 0 && (!self.established() || self.clock_ahead(now)) => {
                        self.stats.forwards_declined += 1;
                        self.forwarded
                            .insert((f, req), (Forwarded::Declined, until, sent_hlc));
                        self.send(f, Msg::ForwardDeclined { req }, None);
                        return;
                    }
                    None => {}
                }
                self.forwarded
                    .insert((f, req), (Forwarded::Running, until, sent_hlc));
                let opts = Opts {
                    quorum: w,
                    timeout_ms,
                    degrade,
                };
                self.coordinate_write(
                    store,
                    now,
                    Origin::Forwarded { from: f, req },
                    key,
                    value,
                    opts,
                );
            }
            Msg::ForwardDeclined { req } => {
                if self.forwards.get(&req).is_some_and(|p| p.to == f)
                    && let Some(p) = self.forwards.remove(&req)
                {
                    let mut write = p.write;
                    write.declined.push(f);
                    let left = (p.started + write.opts.timeout_ms).saturating_sub(now);
                    if left == 0 {
                        let result = Err(self.outcome_unknown(&write.key, write.opts.quorum));
                        self.actions.push(Action::Write {
                            req: write.client,
                            result,
                        });
                        return;
                    }
                    write.opts.timeout_ms = left;
                    self.route_write(store, now, write);
                }
            }
            Msg::ForwardReply { req, result } => {
                if let Some(p) = self.forwards.remove(&req) {
                    // The version its coordinator gave the write this life forwarded: a
                    // reading of that coordinator's clock.
                    if let Ok(ok) = &result {
                        self.observe_reading(ok.version.epoch);
                    }
                    self.actions.push(Action::Write {
                        req: p.write.client,
                        result,
                    });
                }
            }
            Msg::StoreHint {
                req,
                target,
                key,
                stored,
            } => {
                let lsn = store.put_hint(&target, &key, &stored);
                if let Some(t) = self.index(&target) {
                    self.hint_targets.insert(t);
                }
                self.stats.hints_stored += 1;
                self.send(f, Msg::HintStored { req, target }, Some(lsn));
            }
            Msg::HintStored { req, target } => {
                if let Some(t) = self.index(&target)
                    && let Some(p) = self.writes.get_mut(&req)
                {
                    p.hint_acked.insert((t, f));
                }
                self.check_write(now, req);
            }
            Msg::Hint { key, stored } => {
                let wall = self.physical(now);
                let grace = self.cfg.tombstone_grace_ms;
                let lsn = if past_grace(&stored, grace, wall) && store.get(&key).is_none() {
                    // A hint older than the grace period for a key this node holds nothing
                    // of: a delete after it may have been purged here and on every replica
                    // (Cassandra gives hints the grace period as their time to live). If it
                    // is still the newest copy, the replicas that acknowledged it hold it,
                    // and anti-entropy brings it. Acknowledged, so that its holder drops it.
                    self.stats.hints_expired += 1;
                    store.last_lsn()
                } else {
                    self.merge(store, &key, &stored).0
                };
                let version = stored.version;
                self.send(f, Msg::HintAck { key, version }, Some(lsn));
            }
            Msg::HintAck { key, version } => {
                store.remove_hint(&self.members[f].clone(), &key, version);
                self.stats.hints_delivered += 1;
            }
            Msg::AeRoot { root, upto } => {
                let leaves = self.tree(store, f);
                let leaves = if root_of(&leaves) == root {
                    Vec::new()
                } else {
                    leaves
                };
                // Once what the leaves describe is durable: the other side takes equal leaves
                // as copies this node holds.
                self.send(f, Msg::AeLeaves { leaves, upto }, Some(store.last_lsn()));
            }
            Msg::AeLeaves { leaves, upto } => {
                if leaves.is_empty() {
                    // The roots were the same: the peer holds every copy the tree held.
                    self.mark_synced(f, 0..AE_BUCKETS as u32, upto);
                    self.pulled(store, f, 0..AE_BUCKETS as u32);
                    return;
                }
                let upto = store.last_lsn();
                let mine = self.tree(store, f);
                let (same, buckets): (Vec<u32>, Vec<u32>) = (0..AE_BUCKETS as u32)
                    .partition(|&b| leaves.get(b as usize) == Some(&mine[b as usize]));
                self.mark_synced(f, same.iter().copied(), upto);
                self.pulled(store, f, same);
                if !buckets.is_empty() {
                    let entries = self.entries_in(store, f, &buckets);
                    self.send(
                        f,
                        Msg::AeEntries {
                            buckets,
                            entries,
                            reply: true,
                            upto,
                        },
                        None,
                    );
                }
            }
            Msg::AeEntries {
                buckets,
                entries,
                reply,
                upto,
            } => {
                let mut theirs = BTreeMap::new();
                let mut last = 0;
                for (key, s) in entries {
                    if !self.pref(&key).contains(&self.me) {
                        continue;
                    }
                    let (lsn, changed) = self.merge(store, &key, &s);
                    if changed {
                        self.stats.ae_repairs += 1;
                        last = last.max(lsn);
                    }
                    theirs.insert(key, s.version);
                }
                if reply {
                    let entries: Vec<(Bytes, Stored)> = self
                        .entries_in(store, f, &buckets)
                        .into_iter()
                        .filter(|(k, s)| theirs.get(k).is_none_or(|v| *v != s.version))
                        .collect();
                    // Always answered, once every copy here is durable (the ones just merged
                    // and the ones that were already newer): the answer tells the other side
                    // that this node holds what it sent, for its tombstone purges.
                    let after = last.max(store.last_lsn());
                    self.send(
                        f,
                        Msg::AeEntries {
                            buckets,
                            entries,
                            reply: false,
                            upto,
                        },
                        Some(after),
                    );
                } else {
                    self.mark_synced(f, buckets.iter().copied(), upto);
                    // What the peer held in those buckets and this node lacked is merged.
                    self.pulled(store, f, buckets);
                }
            }
            Msg::Refilled if f == self.me => self.refilled(),
            Msg::Refilled => {
                if self.peers_refilling.remove(&f) {
                    self.peers_refilling_changes += 1;
                }
            }
        }
    }

    /// A refill pulled `buckets` whole from `peer`; the refill finishes once enough of each
    /// key's other replicas are pulled whole.
    fn pulled<S: Store>(&mut self, store: &S, peer: usize, buckets: impl IntoIterator<Item = u32>) {
        let Some(r) = &mut self.refill else {
            return;
        };
        if peer == self.me || self.peers_refilling.contains(&peer) {
            return; // a peer refilling may lack what this node needs
        }
        r.pulled[peer].extend(buckets);
        self.finish_refill(store);
    }

    /// A refill complete sends [`Msg::Refilled`] to this node itself, once what it pulled is
    /// durable.
    fn finish_refill<S: Store>(&mut self, store: &S) {
        if self.refill.as_ref().is_some_and(|r| !r.finishing) && self.refill_complete() {
            if let Some(r) = &mut self.refill {
                r.finishing = true;
            }
            self.send(self.me, Msg::Refilled, Some(store.last_lsn()));
        }
    }

    /// A refill's round: an anti-entropy exchange with each peer it shares keys with and has
    /// not pulled whole yet (again every few hint rounds, for exchanges lost on the way, or at
    /// the next one while a peer is unreachable).
    fn refill_round<S: Store>(&mut self, store: &S, now: u64) {
        let Some(r) = &mut self.refill else {
            return;
        };
        if r.finishing || now < r.next_round {
            return;
        }
        let wanted: BTreeSet<usize> = self
            .groups
            .iter()
            .flatten()
            .copied()
            .filter(|&p| r.pulled[p].len() < AE_BUCKETS && !self.peers_refilling.contains(&p))
            .collect();
        let peers: BTreeSet<usize> = wanted
            .iter()
            .copied()
            .filter(|p| !self.down.contains(p))
            .collect();
        // A peer not reachable yet (connections still opening after a start) is tried again
        // at the next hint round, and so are all for the first rounds: a peer's connection
        // back to a node that just started may still be opening, and what the peer sends
        // meanwhile is lost. Later, exchanges in flight get a few hint rounds.
        r.rounds += 1;
        let wait = if peers.len() < wanted.len() || r.rounds < 3 {
            1
        } else {
            5
        };
        r.next_round = now + wait * self.cfg.hint_retry_ms.max(1);
        let upto = store.last_lsn();
        for p in peers {
            let root = root_of(&self.tree(store, p));
            self.stats.ae_rounds += 1;
            self.send(p, Msg::AeRoot { root, upto }, None);
        }
        self.finish_refill(store);
    }

    /// Every replica set this node is in has N - W + 1 of its other members pulled whole: each
    /// write acknowledged by W replicas, this node among them, is on one of those. Members
    /// refilling themselves hold none of the writes acknowledged before they came back empty;
    /// with fewer other members than that not refilling, all of those are enough (what was on
    /// this node and the ones refilling alone is lost, more losses than W copies survive), and
    /// two replicas back empty at once do not wait for each other forever.
    fn refill_complete(&self) -> bool {
        let Some(r) = &self.refill else {
            return true;
        };
        let (n, w) = (self.cfg.quorum.n as usize, self.cfg.quorum.w as usize);
        let need = (n + 1).saturating_sub(w).max(1);
        self.groups.iter().all(|others| {
            let sources = others.iter().filter(|p| !self.peers_refilling.contains(p));
            let whole = sources
                .clone()
                .filter(|&&p| r.pulled[p].len() == AE_BUCKETS)
                .count();
            whole >= need.min(sources.count())
        })
    }

    /// What the refill pulled is durable: unless the refill started over meanwhile (a peer it
    /// pulled from came back empty), this node's answers count again, and its peers are told.
    fn refilled(&mut self) {
        let complete = self.refill_complete();
        let Some(r) = &mut self.refill else {
            return;
        };
        if !complete {
            r.finishing = false;
            return;
        }
        self.refill = None;
        // Its clock is above every copy it pulled, so above what its earlier life gave out
        // that is still anywhere; a repeat first sent since is one this life would have seen.
        self.booted_hlc = self.hlc.last();
        self.stats.refills += 1;
        self.actions.push(Action::PersistRefilling(false));
        for p in 0..self.members.len() {
            if p != self.me {
                self.send(p, Msg::Refilled, None);
            }
        }
    }

    // ---------------------------------------------------------------- coordinator side

    fn on_write_ack(&mut self, now: u64, req: u64, from: usize, superseded: bool) {
        if let Some(p) = self.writes.get_mut(&req) {
            p.acked.insert(from);
            if superseded {
                p.superseded.insert(from);
            }
            self.check_write(now, req);
        } else if let Some(p) = self.reads.get_mut(&req) {
            // A blocking read repair was acknowledged.
            p.repairing.remove(&from);
            self.check_read(req, now, true);
        }
    }

    /// The fallbacks holding a durable hint that stands in for a replica that has not
    /// acknowledged the write itself (each node once), and those whose hint is still on its
    /// way. A hint counts for its own replica only: a replica that acknowledges after its hint
    /// was stored (its write resent, or the hint delivered to it) takes the hint's place, and a
    /// fallback's durable hint for one replica says nothing of its hint for another. Counting
    /// by fallback alone answered W=2 with one durable copy (the durability simulator found
    /// both, seeds 802742 and 803280 of `sim_leaderless_sloppy_quorum_counts_only_durable_hints`).
    fn standing_in(p: &PendingWrite) -> (BTreeSet<usize>, BTreeSet<usize>) {
        let mut durable = BTreeSet::new();
        let mut waiting = BTreeSet::new();
        for (&r, &h) in &p.hinted {
            if h == NO_HOLDER || p.acked.contains(&r) || p.acked.contains(&h) {
                continue;
            }
            if p.hint_acked.contains(&(r, h)) {
                durable.insert(h);
            } else {
                waiting.insert(h);
            }
        }
        let waiting = waiting.difference(&durable).copied().collect();
        (durable, waiting)
    }

    fn counted(&self, p: &PendingWrite) -> (u32, Vec<NodeId>) {
        let hinted: Vec<NodeId> = if self.cfg.sloppy_quorum {
            Self::standing_in(p)
                .0
                .iter()
                .map(|&h| self.members[h].clone())
                .collect()
        } else {
            Vec::new()
        };
        (p.acked.len() as u32 + hinted.len() as u32, hinted)
    }

    /// Answers the write if it has its quorum, or can no longer get it; forgets it once every
    /// replica has acknowledged or been hinted.
    fn check_write(&mut self, now: u64, op: u64) {
        let Some(p) = self.writes.get(&op) else {
            return;
        };
        if !p.replied {
            let (count, hinted) = self.counted(p);
            let outstanding = p
                .pref
                .iter()
                .filter(|i| !p.acked.contains(i) && !self.down.contains(i))
                .count() as u32;
            let hint_pending = if self.cfg.sloppy_quorum {
                Self::standing_in(p).1.len() as u32
            } else {
                0
            };
            let hopeless = count + outstanding + hint_pending < p.w;
            // Nobody left who could still answer (the rest are known to be down).
            let exhausted = outstanding == 0 && hint_pending == 0;
            let result = if count >= p.w {
                Some(Ok(false))
            } else if now >= p.deadline || exhausted || (hopeless && !p.degrade) {
                Some(Err(()))
            } else {
                None
            };
            if let Some(result) = result {
                let acked: Vec<NodeId> = p.acked.iter().map(|&i| self.members[i].clone()).collect();
                let superseded_on: Vec<NodeId> = p
                    .superseded
                    .iter()
                    .map(|&i| self.members[i].clone())
                    .collect();
                let result = match result {
                    Ok(degraded) => Ok(WriteOk {
                        version: p.stored.version,
                        coordinator: self.cfg.id.clone(),
                        acked,
                        hinted,
                        degraded,
                        superseded_on,
                    }),
                    Err(()) if p.degrade && count >= 1 => Ok(WriteOk {
                        version: p.stored.version,
                        coordinator: self.cfg.id.clone(),
                        acked,
                        hinted,
                        degraded: true,
                        superseded_on,
                    }),
                    Err(()) => Err(QuorumFailure {
                        what: "acks",
                        needed: p.w,
                        got: count,
                        replicas: self.states(&p.pref, |i| p.acked.contains(&i)),
                        may_have_happened: true,
                    }),
                };
                if result.as_ref().map_or(true, |o| o.degraded) {
                    self.stats.quorum_failures += 1;
                }
                if result.as_ref().is_ok_and(|o| !o.superseded_on.is_empty()) {
                    self.stats.superseded_writes += 1;
                }
                let origin = match &p.origin {
                    Origin::Client(c) => Origin::Client(*c),
                    Origin::Forwarded { from, req } => Origin::Forwarded {
                        from: *from,
                        req: *req,
                    },
                };
                if let Some(p) = self.writes.get_mut(&op) {
                    p.replied = true;
                }
                self.answer_write(origin, result);
            }
        }
        if let Some(p) = self.writes.get(&op)
            && p.replied
            && p.pref
                .iter()
                .all(|i| p.acked.contains(i) || p.hinted.contains_key(i))
        {
            self.writes.remove(&op);
        }
    }

    /// Whether a forwarded request first sent `age_ms` ago, at the forwarder's `sent_hlc`, was
    /// sent while this node was up, so that it would have a record of it had it come: it has
    /// been up longer than the request's age (its journey, however long, only adds), and the
    /// first was sent after this node's start on the hybrid clocks. A node that ran it before
    /// restarting had observed the forwarder's clock then, and its clock starts above every
    /// reading an earlier life gave out (see [`Leaderless::take_actions`]). The version of
    /// its copy, recovered from storage, did not say so: the copy may not have been durable
    /// when the write went to the other replicas (the simulator found a forwarded write run
    /// twice that way, seed 911866).
    /// A node in its first life (`booted_hlc` 0) counts as up all along; one back empty (or
    /// unsure it is not), until its refill ends, as up never (`u64::MAX`): a repeat is refused
    /// (the simulator with storage losses found a node running one twice, seed 32001352 of
    /// `sim_leaderless_replicas_back_empty_refill_before_their_answers_count`).
    fn was_up_when_sent(&self, now: u64, age_ms: u64, sent_hlc: u64) -> bool {
        self.booted_hlc == 0
            || (now.saturating_sub(self.booted) > age_ms && sent_hlc > self.booted_hlc)
    }

    /// The answer to a forwarded write whose fate this node cannot know: none of `key`'s
    /// replicas is counted, and it may have happened.
    fn outcome_unknown(&self, key: &[u8], needed: u32) -> QuorumFailure {
        QuorumFailure {
            what: "acks",
            needed,
            got: 0,
            replicas: self.states(&self.pref(key), |_| false),
            may_have_happened: true,
        }
    }

    /// A definite failure (nothing was sent) when fewer than `needed` of `pref` are believed
    /// reachable.
    fn too_few_reachable(
        &mut self,
        what: &'static str,
        needed: u32,
        pref: &[usize],
    ) -> Option<QuorumFailure> {
        let live = pref.iter().filter(|i| !self.down.contains(i)).count() as u32;
        if live >= needed {
            return None;
        }
        self.stats.quorum_failures += 1;
        let replicas = pref
            .iter()
            .map(|&i| {
                let st = if self.down.contains(&i) {
                    ReplicaState::Unreachable
                } else {
                    ReplicaState::NotAsked
                };
                (self.members[i].clone(), st)
            })
            .collect();
        Some(QuorumFailure {
            what,
            needed,
            got: 0,
            replicas,
            may_have_happened: false,
        })
    }

    fn states(&self, pref: &[usize], ok: impl Fn(usize) -> bool) -> Vec<(NodeId, ReplicaState)> {
        pref.iter()
            .map(|&i| {
                let st = if ok(i) {
                    ReplicaState::Ok
                } else if self.down.contains(&i) {
                    ReplicaState::Unreachable
                } else {
                    ReplicaState::Timeout
                };
                (self.members[i].clone(), st)
            })
            .collect()
    }

    fn answer_write(&mut self, origin: Origin, result: Result<WriteOk, QuorumFailure>) {
        match origin {
            Origin::Client(req) => self.actions.push(Action::Write { req, result }),
            Origin::Forwarded { from, req } => {
                if let Some((state, ..)) = self.forwarded.get_mut(&(from, req)) {
                    *state = Forwarded::Done(result.clone());
                }
                self.send(from, Msg::ForwardReply { req, result }, None);
            }
        }
    }

    /// Asks a fallback node (or this one, if none is reachable) to hold replica `r`'s hint —
    /// unless hints are off, or `r` has been unreachable for longer than the hint window.
    fn hint(&mut self, now: u64, op: u64, p: &mut PendingWrite, r: usize) {
        if !self.cfg.hinted_handoff {
            p.hinted.insert(r, NO_HOLDER);
            return;
        }
        let window = self.cfg.max_hint_window_ms;
        if window > 0
            && self
                .down_since
                .get(&r)
                .is_some_and(|&since| now.saturating_sub(since) > window)
        {
            p.hinted.insert(r, NO_HOLDER);
            self.stats.hints_beyond_window += 1;
            return;
        }
        let walk = self.ring.walk(hash64(&p.key));
        let holder = walk
            .iter()
            .copied()
            .skip(p.pref.len())
            .find(|i| !self.down.contains(i))
            .unwrap_or(self.me);
        p.hinted.insert(r, holder);
        self.send(
            holder,
            Msg::StoreHint {
                req: op,
                target: self.members[r].clone(),
                key: p.key.clone(),
                stored: p.stored.clone(),
            },
            None,
        );
    }

    /// A read still short of R responses after `hint_after_ms` asks its silent, reachable
    /// replicas once more (with `ReadFanout::Quorum`, those not asked yet too): with one lossy
    /// replica a lost request or reply would otherwise cost the whole deadline. Answering a
    /// read twice is harmless.
    fn retry_read(&mut self, op: u64, now: u64) {
        let Some(p) = self.reads.get_mut(&op) else {
            return;
        };
        if p.replied || now < p.retry_at {
            return;
        }
        // Again every `hint_after` until the deadline: on a lossy link one more try is not
        // always enough.
        p.retry_at = now + self.cfg.hint_after_ms.max(1);
        let key = p.key.clone();
        if (p.replies.len() - p.uncounted.len()) as u32 >= p.r {
            // Blocking read repair waiting on a replica: its repair (or the acknowledgement)
            // may be lost; it gets the repair again.
            let again: Vec<(usize, Stored)> = p
                .repairing
                .iter()
                .filter_map(|i| p.replies.get(i).cloned().flatten().map(|s| (*i, s)))
                .collect();
            for (i, stored) in again {
                self.send_write(i, op, &key, stored);
            }
            return;
        }
        let silent: Vec<usize> = p
            .pref
            .iter()
            .copied()
            .filter(|i| !p.replies.contains_key(i) && !self.down.contains(i))
            .collect();
        p.asked.extend(&silent);
        for i in silent {
            let msg = Msg::Read {
                req: op,
                key: key.clone(),
            };
            self.send(i, msg, None);
        }
    }

    fn on_read_reply(
        &mut self,
        now: u64,
        op: u64,
        from: usize,
        stored: Option<Stored>,
        refilling: bool,
    ) {
        let counts = !refilling && self.counts(from);
        let Some(p) = self.reads.get_mut(&op) else {
            return;
        };
        if p.replied || p.replies.contains_key(&from) {
            // Late, or again: only for repair.
        } else if !counts {
            p.uncounted.insert(from);
            self.stats.refilling_answers += 1;
        }
        p.replies.insert(from, stored);
        self.check_read(op, now, false);
    }

    /// Answers the read when it has R responses (after repairs in blocking mode) or its deadline
    /// passed (checked when `at_deadline`); repairs stale responders, late ones included.
    fn check_read(&mut self, op: u64, now: u64, at_deadline: bool) {
        let blocking = self.cfg.read_repair == ReadRepair::Blocking;
        let (wall, grace) = (self.physical(now), self.cfg.tombstone_grace_ms);
        // Replicas yet to answer (and not known down), and of those the ones whose answer would
        // count toward R: answers from replicas refilling do not (their copies still take part).
        let (outstanding, could_count) = match self.reads.get(&op) {
            Some(p) => {
                let waiting = p
                    .pref
                    .iter()
                    .filter(|&&i| !p.replies.contains_key(&i) && !self.down.contains(&i));
                let counting = waiting.clone().filter(|&&i| self.counts(i)).count() as u32;
                (waiting.count() as u32, counting)
            }
            None => return,
        };
        let Some(p) = self.reads.get_mut(&op) else {
            return;
        };
        let counted = (p.replies.len() - p.uncounted.len()) as u32;
        let enough = counted >= p.r;
        let deadline_passed = at_deadline && now >= p.deadline;
        // Stop waiting for responses at the deadline, or once the replicas that could still
        // answer are too few (failing) or none (degrading).
        let expired =
            deadline_passed || outstanding == 0 || (!p.degrade && counted + could_count < p.r);
        let mut sends = Vec::new();
        let mut conflicts = 0;
        let mut newest = p
            .replies
            .values()
            .flatten()
            .max_by_key(|s| s.version)
            .cloned();
        if (enough || p.replied || expired)
            && let Some(n) = &mut newest
        {
            // Concurrent copies among the responders: count them, and merge their vectors into
            // the winner so that the repair supersedes every one of them.
            for o in p.replies.values().flatten() {
                if o.clock.compare(&n.clock) == Causality::Concurrent {
                    conflicts += 1;
                    n.clock = n.clock.merge(&o.clock);
                }
            }
            let stale: Vec<usize> = p
                .replies
                .iter()
                .filter(|(i, s)| {
                    !p.repairing.contains(i)
                        && match s {
                            Some(s) => s.version < n.version || s.clock != n.clock,
                            // No copy is as good as a tombstone past its grace period: sent
                            // one, a replica that purged it would wait for new proof that the
                            // others hold it while they purge theirs (see `merge_write`).
                            None => n.value.is_some() || !past_grace(n, grace, wall),
                        }
                })
                .map(|(&i, _)| i)
                .collect();
            for i in stale {
                // Recorded as holding the newest copy, so it is repaired once.
                p.replies.insert(i, Some(n.clone()));
                if blocking && !p.replied {
                    p.repairing.insert(i);
                }
                sends.push((i, n.clone()));
            }
        }
        let mut answer = None;
        // With a failure for too few copies of the newest version: the replicas that hold it.
        let mut holders: Option<BTreeSet<usize>> = None;
        if !p.replied && (enough || expired) {
            let a = p.answer.get_or_insert_with(|| ReadOk {
                stored: None,
                coordinator: self.cfg.id.clone(),
                responders: Vec::new(),
                degraded: false,
                repaired: Vec::new(),
            });
            // Answers that come while blocking repairs are under way still count, and can bring
            // a newer copy: the answer is the newest copy known when it is given. It was fixed
            // when first made: a read short of R (one replica down, one refilling) repaired the
            // one refilling with the copy it had and waited; the replica that was down came back
            // with a newer, acknowledged copy, which made R and was repaired everywhere, and the
            // read answered the older copy (simulator seed 65000984).
            if newest.as_ref().map(|s| s.version) > a.stored.as_ref().map(|s| s.version) {
                a.stored = newest.clone();
            }
            a.responders = p.replies.keys().map(|&i| self.members[i].clone()).collect();
            a.degraded = !enough;
            a.repaired
                .extend(sends.iter().map(|(i, _)| self.members[*i].clone()));
            if p.repairing.is_empty() || deadline_passed {
                p.replied = true;
                // Blocking repair cut short by the deadline (a replica went down or stayed
                // silent): the newest copy must still be on enough replicas that a later read
                // of R meets one, min(R, N + 1 - R) with the responders' copies durable, or
                // the answer could show a write that the next read does not (an unacknowledged
                // write on one replica, answered at the deadline with its repair undone: the
                // durability simulator found it).
                let holding: BTreeSet<usize> = p
                    .replies
                    .keys()
                    .filter(|i| !p.repairing.contains(i))
                    .copied()
                    .collect();
                let need = p.r.min(p.pref.len() as u32 + 1 - p.r);
                let confirmed = !blocking || holding.len() as u32 >= need;
                if enough && !confirmed && p.degrade {
                    a.degraded = true;
                }
                answer = Some(
                    if (enough && confirmed) || (p.degrade && !p.replies.is_empty()) {
                        Ok(a.clone())
                    } else if enough {
                        holders = Some(holding.clone());
                        Err(QuorumFailure {
                            what: "copies of the newest version",
                            needed: need,
                            got: holding.len() as u32,
                            replicas: Vec::new(),
                            may_have_happened: false,
                        })
                    } else {
                        Err(QuorumFailure {
                            what: "responses",
                            needed: p.r,
                            got: counted,
                            replicas: Vec::new(),
                            may_have_happened: false,
                        })
                    },
                );
            }
        }
        let client = p.client;
        let key = p.key.clone();
        // Kept for late responders (to repair them) until every replica asked has answered.
        let all_in = p.asked.iter().all(|i| p.replies.contains_key(i));
        let finished = p.replied && (all_in || expired);
        let pref = p.pref.clone();
        let responded: BTreeSet<usize> = p
            .replies
            .keys()
            .filter(|i| !p.uncounted.contains(i))
            .copied()
            .collect();
        let uncounted = p.uncounted.clone();
        self.stats.conflicts += conflicts;
        self.stats.read_repairs += sends.len() as u64;
        for (i, stored) in sends {
            self.send_write(i, op, &key, stored);
        }
        if let Some(mut result) = answer {
            match &mut result {
                Ok(ok) if ok.degraded => {
                    self.stats.quorum_failures += 1;
                }
                Ok(_) => {}
                Err(f) => {
                    self.stats.quorum_failures += 1;
                    let counted = holders.as_ref().unwrap_or(&responded);
                    f.replicas = self.states(&pref, |i| counted.contains(&i));
                    for (id, st) in &mut f.replicas {
                        let i = self.index(id);
                        let reachable = *st != ReplicaState::Unreachable;
                        if i.is_some_and(|i| {
                            uncounted.contains(&i) || (reachable && !self.counts(i))
                        }) {
                            *st = ReplicaState::Refilling;
                        }
                    }
                }
            }
            self.actions.push(Action::Read {
                req: client,
                result,
            });
        }
        if finished {
            self.reads.remove(&op);
        }
    }

    // ---------------------------------------------------------------- time

    /// Advances time: deadlines, hints, hint delivery, anti-entropy, tombstone purge.
    pub fn tick<S: Store>(&mut self, store: &mut S, now: u64) {
        self.release_clock_wait(store, now);
        if !self.clock_ahead(now) {
            // Real time has caught up with the clock's start: clock steps back later are
            // skew like any other.
            self.clock_ahead_until = 0;
        }
        for &i in &self.down {
            self.down_since.entry(i).or_insert(now);
        }
        // Writes: hint silent replicas, answer at the deadline.
        let ops: Vec<u64> = self.writes.keys().copied().collect();
        for op in ops {
            if let Some(mut p) = self.writes.remove(&op) {
                if now >= p.started + self.cfg.hint_after_ms || now >= p.deadline {
                    let silent: Vec<usize> = p
                        .pref
                        .iter()
                        .copied()
                        .filter(|i| !p.acked.contains(i) && !p.hinted.contains_key(i))
                        .collect();
                    for r in silent {
                        self.hint(now, op, &mut p, r);
                    }
                }
                // A replica that is reachable but silent may have lost the write or its
                // acknowledgement (a lossy link): it gets the write again every `hint_after`
                // until it answers or the deadline passes. Its hint stays as well: it counts
                // for durability, the direct acknowledgement for W.
                if !p.replied && now >= p.sent + self.cfg.hint_after_ms && now < p.deadline {
                    p.sent = now;
                    let again: Vec<usize> = p
                        .pref
                        .iter()
                        .copied()
                        .filter(|i| *i != self.me && !p.acked.contains(i) && !self.down.contains(i))
                        .collect();
                    for r in again {
                        self.send_write(r, op, &p.key, p.stored.clone());
                    }
                }
                self.writes.insert(op, p);
            }
            self.check_write(now, op);
        }
        // Forwards without an answer. Never coordinated here instead: the coordinator may
        // hold the request (paused, or its answer lost) and run it later, and one write run
        // twice gets two versions, the later overwriting writes acknowledged in between. The
        // same request goes again to the same coordinator, which answers it once; new writes
        // avoid that coordinator until it is heard from; at the deadline, or once the
        // coordinator is known down, the outcome is unknown.
        let quiet = self.cfg.hint_after_ms.max(1);
        let ops: Vec<u64> = self.forwards.keys().copied().collect();
        for op in ops {
            let Some(f) = self.forwards.get_mut(&op) else {
                continue;
            };
            let (to, started) = (f.to, f.started);
            if now >= started + f.write.opts.timeout_ms || self.down.contains(&to) {
                if let Some(f) = self.forwards.remove(&op) {
                    let result = Err(self.outcome_unknown(&f.write.key, f.write.opts.quorum));
                    self.actions.push(Action::Write {
                        req: f.write.client,
                        result,
                    });
                }
            } else if now >= f.sent + quiet {
                f.sent = now;
                let left = (started + f.write.opts.timeout_ms).saturating_sub(now);
                let msg = f.write.forward(op, left, now - started, f.sent_hlc);
                self.suspect.insert(to);
                self.send(to, msg, None);
            }
        }
        let forgotten = &mut self.forgotten;
        self.forwarded.retain(|&(f, _), &mut (_, until, sent_hlc)| {
            if until > now {
                return true;
            }
            let h = forgotten.entry(f).or_insert(0);
            *h = (*h).max(sent_hlc);
            false
        });
        let ops: Vec<u64> = self.reads.keys().copied().collect();
        for op in ops {
            self.retry_read(op, now);
            self.check_read(op, now, true);
        }
        if now >= self.next_hint_round {
            self.next_hint_round = now + self.cfg.hint_retry_ms;
            self.deliver_hints(store);
        }
        self.refill_round(store, now);
        if self.cfg.anti_entropy_ms > 0 && now >= self.next_ae {
            self.next_ae = now + self.cfg.anti_entropy_ms;
            self.anti_entropy(store);
            self.purge_tombstones(store, now);
        }
    }

    fn deliver_hints<S: Store>(&mut self, store: &mut S) {
        let targets: Vec<usize> = self.hint_targets.iter().copied().collect();
        for t in targets {
            if self.down.contains(&t) {
                continue;
            }
            let hints = store.hints(&self.members[t], 128);
            if hints.is_empty() {
                self.hint_targets.remove(&t);
                continue;
            }
            for (key, stored) in hints {
                self.send(t, Msg::Hint { key, stored }, None);
            }
        }
    }

    /// Registers hints found in storage at start-up for delivery.
    pub fn recover_hints<S: Store>(&mut self, store: &S) {
        for t in 0..self.members.len() {
            if !store.hints(&self.members[t], 1).is_empty() {
                self.hint_targets.insert(t);
            }
        }
    }

    /// Starts one anti-entropy exchange with the next peer (also callable on demand).
    pub fn anti_entropy<S: Store>(&mut self, store: &S) {
        if self.members.len() < 2 {
            return;
        }
        for _ in 0..self.members.len() {
            self.ae_peer = (self.ae_peer + 1) % self.members.len();
            if self.ae_peer != self.me && !self.down.contains(&self.ae_peer) {
                break;
            }
        }
        let peer = self.ae_peer;
        if peer == self.me {
            return;
        }
        let upto = store.last_lsn();
        let leaves = self.tree(store, peer);
        self.stats.ae_rounds += 1;
        self.send(
            peer,
            Msg::AeRoot {
                root: root_of(&leaves),
                upto,
            },
            None,
        );
    }

    /// `peer` durably holds every copy this node held at or below `upto` in `buckets`.
    fn mark_synced(&mut self, peer: usize, buckets: impl IntoIterator<Item = u32>, upto: Lsn) {
        let Some(synced) = self.ae_synced.get_mut(peer) else {
            return;
        };
        for b in buckets {
            if let Some(s) = synced.get_mut(b as usize) {
                *s = Some(s.map_or(upto, |x| x.max(upto)));
            }
        }
    }

    /// The tombstone of `key` this node purged within the last grace period, if any.
    fn purged_tombstone(&self, key: &Bytes) -> Option<&Stored> {
        self.purged_recently.get(key).map(|(t, _)| t)
    }

    /// Purges the tombstones past their grace period that [`Config::tombstone_gc`] allows.
    fn purge_tombstones<S: Store>(&mut self, store: &mut S, now: u64) {
        let older_than = self
            .physical(now)
            .saturating_sub(self.cfg.tombstone_grace_ms);
        let purged = match self.cfg.tombstone_gc {
            TombstoneGc::Timeout => store.purge_tombstones(older_than, &mut |_, _, _| true),
            TombstoneGc::Repair => {
                let n = self.cfg.quorum.n as usize;
                let (ring, me, synced) = (&self.ring, self.me, &self.ae_synced);
                let recent = &mut self.purged_recently;
                let grace = self.cfg.tombstone_grace_ms;
                recent.retain(|_, (_, at)| at.saturating_add(grace) > now);
                let mut kept = 0u64;
                let purged = store.purge_tombstones(older_than, &mut |key, tombstone, lsn| {
                    let h = hash64(key);
                    let b = bucket_of(h);
                    let walk = ring.walk(h);
                    let held = walk[..n.min(walk.len())]
                        .iter()
                        .all(|&r| r == me || synced[r][b].is_some_and(|s| s >= lsn));
                    kept += u64::from(!held);
                    if held {
                        recent.insert(key.clone(), (tombstone.clone(), now));
                    }
                    held
                });
                self.stats.tombstones_awaiting_repair = kept;
                purged
            }
        };
        self.stats.tombstones_purged += purged as u64;
    }

    /// Merkle leaves over the keys both this node and `peer` replicate.
    fn tree<S: Store>(&self, store: &S, peer: usize) -> Vec<u64> {
        let mut leaves = vec![0u64; AE_BUCKETS];
        let n = self.cfg.quorum.n as usize;
        store.scan(&mut |key, s| {
            let h = hash64(key);
            let walk = self.ring.walk(h);
            let reps = &walk[..n.min(walk.len())];
            if reps.contains(&peer) && reps.contains(&self.me) {
                let b = bucket_of(h);
                leaves[b] ^= mix64(
                    h ^ s.version.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ s.version.counter.rotate_left(17)
                        ^ u64::from(s.value.is_none()),
                );
            }
        });
        leaves
    }

    fn entries_in<S: Store>(
        &self,
        store: &S,
        peer: usize,
        buckets: &[u32],
    ) -> Vec<(Bytes, Stored)> {
        let n = self.cfg.quorum.n as usize;
        let mut out = Vec::new();
        store.scan(&mut |key, s| {
            let h = hash64(key);
            let b = bucket_of(h) as u32;
            if buckets.binary_search(&b).is_err() {
                return;
            }
            let walk = self.ring.walk(h);
            let reps = &walk[..n.min(walk.len())];
            if reps.contains(&peer) && reps.contains(&self.me) {
                out.push((key.clone(), s.clone()));
            }
        });
        out
    }
}

/// A copy old enough to purge, were it a tombstone, at wall-clock time `wall`.
fn past_grace(s: &Stored, grace_ms: u64, wall: u64) -> bool {
    s.written_ms.saturating_add(grace_ms) < wall
}

/// The anti-entropy bucket (Merkle leaf) of a key's hash ([`hash64`]).
pub fn bucket_of(h: u64) -> usize {
    (h >> 56) as usize % AE_BUCKETS
}

/// The root of a Merkle tree with the given leaves.
pub fn root_of(leaves: &[u64]) -> u64 {
    leaves
        .iter()
        .fold(0x5151_5151_u64, |acc, &l| mix64(acc ^ l).wrapping_add(l))
}
