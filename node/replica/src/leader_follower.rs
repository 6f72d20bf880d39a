//! Leader-follower replication: Raft's election and log replication (Ongaro & Ousterhout,
//! "In Search of an Understandable Consensus Algorithm", 2014), with MongoDB-style write
//! concern: a write is acknowledged once W replicas durably hold it, which may be before it is
//! committed (W < majority) — such writes can be lost on fail-over, and are then reported
//! through [`Action::Truncate`], never dropped silently.
//!
//! ```text
//!          tick() ──┐        step(from, msg) ──┐      propose(id, cmd, w) / read(id)
//!                   ▼                          ▼                 ▼
//!              ┌──────────────────────── Replica ───────────────────────┐
//!              │ role, term, vote, log shadow, commit, peers' progress   │
//!              └────────────────────────────┬────────────────────────────┘
//!                                           ▼ take_actions()
//!   PersistHardState / Truncate / PersistEntries   (durable BEFORE any later Send in the batch)
//!   Send { to, msg }   Apply { entries }   Acked { id, .. }   ReadReady { id, index }   Failed ..
//! ```
//!
//! The state machine applies committed entries only: a read never sees a write that a
//! fail-over could take back. Reads from the leader go through read-index (§8): the leader
//! confirms with a majority that it still leads, then serves once its applied index reaches the
//! commit index it had when the read arrived. A leader that has not heard from a majority for
//! an election timeout steps down (check-quorum), so an isolated leader stops acknowledging.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand_core::RngCore;

use crate::NodeId;
use crate::version::Version;

/// A Raft term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u64);

/// A position in the replicated log; the first entry has index 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogIndex(pub u64);

/// What a log entry does to the key-value state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write a value.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Write a tombstone.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Write `value` only if the key's live version equals `expected` (`None`: the key must be
    /// absent) when the entry is applied. Every replica applies the log in the same order, so
    /// every replica reaches the same outcome.
    Cas {
        /// The key.
        key: Bytes,
        /// The version the key must have.
        expected: Option<Version>,
        /// The value to write.
        value: Bytes,
    },
    /// A new leader's first entry: commits the entries of earlier terms (§5.4.2).
    Noop,
}

/// One replicated log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: Term,
    /// Its position.
    pub index: LogIndex,
    /// What it does.
    pub cmd: Command,
}

impl Entry {
    /// The version a write gets from its place in the log: `(term, index)`.
    pub fn version(&self) -> Version {
        Version::new(self.term.0, self.index.0)
    }

    /// What it weighs: its key and value, and a little for the rest (term, index, framing),
    /// so that many tiny entries count too.
    pub fn weight(&self) -> u64 {
        let payload = match &self.cmd {
            Command::Put { key, value } | Command::Cas { key, value, .. } => {
                key.len() + value.len()
            }
            Command::Delete { key } => key.len(),
            Command::Noop => 0,
        };
        payload as u64 + 32
    }
}

/// The durable part of a replica's state besides the log (§5.1, Figure 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Latest term seen.
    pub term: Term,
    /// Candidate voted for in `term`, if any (an index into the member list).
    pub voted_for: Option<usize>,
}

/// The state machine as of `index`, standing in for the log up to it (log compaction, §7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The last entry it covers.
    pub index: LogIndex,
    /// That entry's term.
    pub term: Term,
    /// Where each term's entries began, for the entries it covers: `(first index, term)`,
    /// ascending. A follower whose uncommitted entries a snapshot replaces tells by these which
    /// of them the leader's log held too and which are rolled back.
    pub terms: Vec<(LogIndex, Term)>,
    /// The state machine, encoded by the driver (opaque here).
    pub data: Bytes,
}

impl Snapshot {
    /// The term of the covered entry at `index` (`None` beyond the snapshot).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index > self.index || index.0 == 0 {
            return None;
        }
        term_from_starts(&self.terms, index)
    }
}

/// The term of the entry at `index`, from where each term began (`(first index, term)`,
/// ascending, as [`Snapshot::terms`]); `None` before the first. The caller knows whether the
/// log reaches `index`.
pub fn term_from_starts(starts: &[(LogIndex, Term)], index: LogIndex) -> Option<Term> {
    starts
        .iter()
        .take_while(|(first, _)| *first <= index)
        .last()
        .map(|(_, t)| *t)
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, before disturbing anyone (PreVote, §9.6).
    PreCandidate,
    /// Asking for votes.
    Candidate,
    /// Orders writes for its term.
    Leader,
}

/// Node-to-node messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A candidate asks for a vote (§5.2).
    RequestVote {
        /// Candidate's term.
        term: Term,
        /// Candidate's last log index.
        last_index: LogIndex,
        /// Term of that entry.
        last_term: Term,
    },
    /// PreVote (thesis §9.6): would you vote for me in `term`? Changes no state anywhere, so a
    /// node that was cut off cannot force an election when it returns.
    PreVote {
        /// The term the sender would campaign in (its term + 1).
        term: Term,
        /// Sender's last log index.
        last_index: LogIndex,
        /// Term of that entry.
        last_term: Term,
    },
    /// The answer to `PreVote`.
    PreVoteReply {
        /// Granted: the term asked about. Refused: the voter's term.
        term: Term,
        /// Whether it would vote.
        granted: bool,
    },
    /// The answer to `RequestVote`.
    Vote {
        /// Voter's term.
        term: Term,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Replicates entries and carries the commit index; also the heartbeat (§5.3).
    Append {
        /// Leader's term.
        term: Term,
        /// Index of the entry just before `entries`.
        prev_index: LogIndex,
        /// Its term.
        prev_term: Term,
        /// New entries (may be empty).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: LogIndex,
        /// Read-index round this message confirms (0: none).
        read_seq: u64,
    },
    /// A leader whose log no longer holds the entries a follower needs sends its snapshot
    /// instead (§7); answered with an `AppendReply`.
    Snapshot {
        /// Leader's term.
        term: Term,
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// The answer to `Append`.
    AppendReply {
        /// Follower's term.
        term: Term,
        /// Whether the entries matched and were appended (and persisted).
        ok: bool,
        /// `ok`: the follower's log matches the leader's up to here. Otherwise: the follower's
        /// last index, a hint where to retry.
        index: LogIndex,
        /// Echo of the `Append`'s read round.
        read_seq: u64,
    },
}

/// Identifies a client request inside the driver.
pub type RequestId = u64;

/// Why a request could not be served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Not the leader; the leader this node follows, if it knows one.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Who this node believes leads.
        leader: Option<NodeId>,
    },
    /// W larger than the cluster.
    #[error("w={w} is out of range: must be 1..={n}")]
    BadW {
        /// Asked.
        w: u32,
        /// Cluster size.
        n: u32,
    },
}

/// What the driver must do, in order. A batch holding a `PersistHardState` or `Truncate` must
/// be durable before any other action of it (or of a later batch) is carried out: a vote or a
/// term must survive a crash before a candidate hears of it. Replies to the leader are the
/// exception (unless a `Restore` is being written): they claim only what is durable, see
/// [`crate::pipeline::Pipeline::submit`]. Other batches may be carried out while
/// their `PersistEntries` are written: acknowledgements claim only what the driver reported
/// through [`Replica::persisted`] (the last index it made durable, called once the entries are
/// written), and a leader counts itself toward W and the commit only from then (Raft thesis
/// §10.2.1). [`crate::pipeline::Pipeline`] carries out exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make term and vote durable.
    PersistHardState(HardState),
    /// Remove log entries from `from` on (they conflict with the leader's). They were never
    /// committed; any that a client was told succeeded (W < majority) are rolled back: the driver
    /// keeps them in a rollback file and counts them.
    Truncate {
        /// First index removed.
        from: LogIndex,
        /// The entries removed.
        removed: Vec<Entry>,
    },
    /// Append entries to the durable log.
    PersistEntries(Vec<Entry>),
    /// Replace the state machine with the leader's snapshot and the durable log with it (the
    /// log now starts after `snapshot.index`). Like `Truncate`, durable before anything after
    /// it. `rolled_back` are entries of the log it replaces that the leader's log did not hold
    /// (acknowledged with W < majority and lost).
    Restore {
        /// The leader's snapshot.
        snapshot: Snapshot,
        /// Uncommitted entries replaced by different ones.
        rolled_back: Vec<Entry>,
    },
    /// Send a message.
    Send {
        /// Recipient.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Apply committed entries to the state machine, in order (at most
    /// [`Config::max_apply`]; [`Replica::apply_more`] hands over the rest).
    Apply(Vec<Entry>),
    /// Entries this node reported rolled back (truncated from its log) that were committed
    /// after all: another node held them and led. Known only while this process runs (a
    /// restart forgets what it truncated before).
    Survived(Vec<Entry>),
    /// A proposal is held by W replicas: answer the client.
    Acked {
        /// The request.
        id: RequestId,
        /// Its entry's version.
        version: Version,
        /// Replicas known to hold it when acknowledged.
        acks: u32,
    },
    /// A proposal's outcome is unknown: leadership was lost before W replicas held it. It may
    /// still be committed by a later leader.
    Unknown {
        /// The request.
        id: RequestId,
    },
    /// Leadership is confirmed for a read: serve it once applied reaches `index`.
    ReadReady {
        /// The request.
        id: RequestId,
        /// Applied index the read must wait for.
        index: LogIndex,
    },
    /// A read cannot be confirmed: leadership was lost.
    ReadFailed {
        /// The request.
        id: RequestId,
    },
}

/// Timing, in ticks.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Every member, this node included, in the same order on every node.
    pub members: Vec<NodeId>,
    /// Election timeouts are drawn from `[min, max)` ticks.
    pub election_ticks: (u32, u32),
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: u32,
    /// At most this many entries per `Append`.
    pub max_batch: usize,
    /// And no more entries than reach this many bytes ([`Entry::weight`]; at least one): with
    /// values of a megabyte, 256 entries made appends of 256 MiB, for the leader to encode and
    /// the follower to hold whole and fsync at once.
    pub max_batch_bytes: u64,
    /// At most this many committed entries per [`Action::Apply`]; the rest are handed over by
    /// [`Replica::apply_more`], a chunk per call. A node that learns at once that hundreds of
    /// thousands of entries are committed (every node restarted with a long log) would
    /// otherwise copy them all, and apply them, before answering anybody.
    pub max_apply: usize,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Next entry to send.
    next: u64,
    /// Highest index known to match (and be durable) there.
    matched: u64,
    /// Tick of the last reply in this term.
    heard: u64,
    /// Tick the snapshot was last sent there, while it has not confirmed it.
    snapshot_sent: Option<u64>,
    /// Highest read round it confirmed.
    read_seq: u64,
    /// Whether it answered at all in this term (`heard` starts at the election).
    replied: bool,
}

/// At most this many append-time records (`Replica::appended_at`); past it they are thinned.
const APPENDED_AT_MAX: usize = 4096;

/// How many times over an election timeout's random range may widen after rounds in a row
/// without a leader (see `Replica::rounds_without_leader`).
const MAX_WIDEN: u32 = 3;

/// A member heard claiming leadership (an `Append` or `Snapshot` from it, or this node leading):
/// the term, and the ticks it was first and last heard so in that term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    term: Term,
    first: u64,
    last: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    id: RequestId,
    w: u32,
    /// Its entry's version (the entry may be compacted before it is acknowledged).
    version: Version,
}

#[derive(Debug, Clone)]
struct PendingRead {
    id: RequestId,
    seq: u64,
    index: LogIndex,
}

/// One replica of the leader-follower protocol. See the module documentation.
pub struct Replica {
    cfg: Config,
    me: usize,
    rng: Box<dyn RngCore + Send>,
    hard: HardState,
    /// The entries after `base`: `log[i]` has index `base + i + 1`.
    log: Vec<Entry>,
    /// The log starts after this index: at most the snapshot's (entries just before the
    /// snapshot stay, so that a follower slightly behind catches up without it).
    base: u64,
    /// The term of the entry at `base`.
    base_term: Term,
    /// What stands in for the entries up to its index (index 0 before the first compaction).
    snapshot: Snapshot,
    /// Its data's size, also once released ([`Replica::release_snapshot_data`]).
    snapshot_size: u64,
    /// Entries truncated from this log whose fate is open, by index. Resolved when the index
    /// is applied (or covered by an installed snapshot).
    suspects: BTreeMap<u64, Vec<Entry>>,
    /// Highest index made durable locally.
    persisted: u64,
    /// Follower: entries through this index match the current leader's log.
    leader_match: u64,
    /// Follower: the highest durable index reported to the current leader.
    reported: u64,
    /// A term or vote handed out in `PersistHardState` is not durable yet: the election
    /// timer waits (see [`Replica::hard_state_persisted`]).
    hard_unsynced: bool,
    /// When the term or vote being written was handed out (ticks).
    hard_write_began: u64,
    /// How many ticks the last term or vote took to become durable.
    hard_write_ticks: u32,
    role: Role,
    leader: Option<usize>,
    commit: u64,
    /// The commit index the leader last told us (followers); lag = this - applied.
    leader_commit: u64,
    applied: u64,
    now: u64,
    election_elapsed: u32,
    election_timeout: u32,
    /// Election timeouts in a row that fired here without a leader heard in between: each
    /// widens the range the next timeout is drawn from (up to [`MAX_WIDEN`] times).
    rounds_without_leader: u32,
    heartbeat_elapsed: u32,
    /// Pre-votes granted to this node's pre-campaign.
    votes: BTreeSet<usize>,
    /// Votes granted to this node in its current term, while it campaigns in it. Kept when its
    /// election times out and it asks for pre-votes for the next term: a vote still on its way
    /// (a voter's fsync is slow) elects it in the term the voters chose it for. Only for a
    /// campaign of this life (its own vote is in the set): a node restarted in a term it had
    /// campaigned in may have lost entries it sent to followers as that term's leader, and
    /// leading the term again would give their indexes other entries of the same term.
    /// Emptied when it is elected, so it leads a term once at most: a leader that stepped down
    /// (it heard from no majority) and campaigns again would otherwise take a vote of that
    /// term arriving late as one more of its majority and lead it again, beside the next
    /// term's leader (seed 8214218 of five nodes on the slow disk).
    term_votes: BTreeSet<usize>,
    progress: Vec<Progress>,
    /// Per member: its latest leadership claim heard here (for [`Replica::leaders_observed`]).
    claims: Vec<Option<Claim>>,
    /// Leader: when its entries were appended, as `(first index appended at that tick, tick)`
    /// in index order, from the oldest entry a follower lacks (for [`Replica::follower_lag`]).
    appended_at: std::collections::VecDeque<(u64, u64)>,
    /// Leader: the tick it was elected (entries older than its term have no time here).
    leading_since: u64,
    pending: BTreeMap<u64, Pending>,
    reads: Vec<PendingRead>,
    /// Reads waiting for this term's first commit.
    reads_waiting_commit: Vec<RequestId>,
    read_seq: u64,
    /// New entries wait to be sent until the actions are taken, so that every proposal of a
    /// batch shares one `Append` per follower.
    broadcast_pending: bool,
    /// Reads wait for the same moment, so that a batch of reads shares one confirmation round.
    read_round_pending: bool,
    out: Vec<Action>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.cfg.id)
            .field("role", &self.role)
            .field("term", &self.hard.term)
            .field("last", &self.last_index())
            .field("commit", &self.commit)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica recovering `hard` state, its `snapshot` and the `log` after it from durable
    /// storage (all empty for a new node; the driver restores the state machine from the
    /// snapshot). Every replica starts as a follower.
    ///
    /// # Panics
    /// If `cfg.id` is not in `cfg.members` or the log's indexes do not follow the snapshot's
    /// densely (the driver validates both first).
    pub fn new(
        cfg: Config,
        hard: HardState,
        snapshot: Snapshot,
        log: Vec<Entry>,
        rng: Box<dyn RngCore + Send>,
    ) -> Self {
        let me = cfg
            .members
            .iter()
            .position(|m| *m == cfg.id)
            .expect("invariant: the driver checks that id is a member");
        let base = log.first().map_or(snapshot.index.0, |e| e.index.0 - 1);
        assert!(
            base <= snapshot.index.0,
            "invariant: the log starts at most right after the snapshot"
        );
        for (i, e) in log.iter().enumerate() {
            assert_eq!(
                e.index.0,
                base + i as u64 + 1,
                "invariant: log indexes are dense"
            );
        }
        let base_term = if base == snapshot.index.0 {
            snapshot.term
        } else {
            snapshot.term_at(LogIndex(base)).unwrap_or_default()
        };
        let n = cfg.members.len();
        let persisted = base + log.len() as u64;
        let applied = snapshot.index.0;
        let mut r = Replica {
            cfg,
            me,
            rng,
            hard,
            log,
            base,
            base_term,
            snapshot_size: snapshot.data.len() as u64,
            snapshot,
            suspects: BTreeMap::new(),
            persisted,
            leader_match: 0,
            reported: 0,
            hard_unsynced: false,
            hard_write_began: 0,
            hard_write_ticks: 0,
            role: Role::Follower,
            leader: None,
            commit: applied,
            leader_commit: applied,
            applied,
            now: 0,
            election_elapsed: 0,
            election_timeout: 0,
            rounds_without_leader: 0,
            heartbeat_elapsed: 0,
            votes: BTreeSet::new(),
            term_votes: BTreeSet::new(),
            progress: vec![Progress::default(); n],
            claims: vec![None; n],
            appended_at: std::collections::VecDeque::new(),
            leading_since: 0,
            pending: BTreeMap::new(),
            reads: Vec::new(),
            reads_waiting_commit: Vec::new(),
            read_seq: 0,
            broadcast_pending: false,
            read_round_pending: false,
            out: Vec::new(),
        };
        r.reset_election_timeout();
        r
    }

    // ---- inspection -------------------------------------------------------------------

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Term and vote, as last handed out in `PersistHardState`.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }

    /// The leader this node follows (itself when leading).
    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.map(|i| &self.cfg.members[i])
    }

    /// Commit index known here.
    pub fn commit_index(&self) -> LogIndex {
        LogIndex(self.commit)
    }

    /// The leader's commit index as last heard (a leader: its own).
    pub fn leader_commit_index(&self) -> LogIndex {
        if self.role == Role::Leader {
            LogIndex(self.commit)
        } else {
            LogIndex(self.leader_commit.max(self.commit))
        }
    }

    /// Highest index handed to the state machine.
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied)
    }

    /// Last index in the log.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.base + self.log.len() as u64)
    }

    /// The log shadow: the entries after [`Replica::log_base`].
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    /// The index the log starts after (at most the snapshot's).
    pub fn log_base(&self) -> LogIndex {
        LogIndex(self.base)
    }

    /// The latest snapshot (index 0 before the first compaction).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The entry at `index`, while the log holds it.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let i = index.0.checked_sub(self.base + 1)?;
        self.log.get(usize::try_from(i).ok()?)
    }

    /// Log compaction (§7): the driver encoded the state machine as of `index` (at most the
    /// applied index) into `data`; the log drops the entries it covers except the last `keep`.
    /// Returns `false`, doing nothing, when `index` is not after the current snapshot or not
    /// yet applied.
    pub fn compact(&mut self, index: LogIndex, data: Bytes, keep: u64) -> bool {
        let old = self.snapshot.index.0;
        if index.0 <= old || index.0 > self.applied {
            return false;
        }
        let Some(term) = self.term_at(index.0) else {
            return false;
        };
        // Entries from the old snapshot on are all in the log (base <= old).
        let mut terms = std::mem::take(&mut self.snapshot.terms);
        for i in old + 1..=index.0 {
            let t = self.term_at(i).unwrap_or_default();
            if terms.last().is_none_or(|(_, last)| *last != t) {
                terms.push((LogIndex(i), t));
            }
        }
        let new_base = index.0.saturating_sub(keep).max(self.base);
        self.base_term = self.term_at(new_base).unwrap_or_default();
        self.log.drain(..(new_base - self.base) as usize);
        self.base = new_base;
        self.snapshot_size = data.len() as u64;
        self.snapshot = Snapshot {
            index,
            term,
            terms,
            data,
        };
        true
    }

    /// Lets go of the snapshot's data, which the host keeps elsewhere (a file): from now on
    /// the snapshot goes out in `Message::Snapshot` with empty `data`, for the host to fill in
    /// before it sends it. Its size still paces resends. Until the next snapshot.
    pub fn release_snapshot_data(&mut self) {
        self.snapshot.data = Bytes::new();
    }

    /// [`Replica::compact`] with a snapshot of `size` bytes whose data the host keeps
    /// elsewhere, as after [`Replica::release_snapshot_data`].
    pub fn compact_kept_elsewhere(&mut self, index: LogIndex, size: u64, keep: u64) -> bool {
        let done = self.compact(index, Bytes::new(), keep);
        if done {
            self.snapshot_size = size;
        }
        done
    }

    /// The snapshot came without its data, which the host keeps elsewhere (a file) in `size`
    /// bytes: one it recovered from, or one a leader's `Message::Snapshot` just installed whose
    /// data the host received into a file. Its size, as after
    /// [`Replica::release_snapshot_data`]; nothing if the snapshot holds data.
    pub fn snapshot_kept_elsewhere(&mut self, size: u64) {
        if self.snapshot.data.is_empty() {
            self.snapshot_size = size;
        }
    }

    /// The size of the snapshot's data, also once released.
    pub fn snapshot_size(&self) -> u64 {
        self.snapshot_size
    }

    /// Members heard from within the last election timeout (leader only; others: empty).
    pub fn reachable(&self) -> Vec<NodeId> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        (0..self.cfg.members.len())
            .filter(|&i| i != self.me && self.progress[i].replied && self.heard_lately(i))
            .map(|i| self.cfg.members[i].clone())
            .collect()
    }

    /// Whether the leader heard from member `i` less than an election timeout ago (since the
    /// election, if it has not answered yet): what check-quorum counts, and what
    /// [`Replica::reachable`] reports.
    fn heard_lately(&self, i: usize) -> bool {
        self.now.saturating_sub(self.progress[i].heard) < u64::from(self.cfg.election_ticks.0)
    }

    /// How many members this node heard claiming leadership at overlapping times within the
    /// last `window` ticks, itself included while it leads: 2 or more is a split brain seen
    /// from here (a deposed leader still sending while a newer one leads, both heard by a node
    /// between them, or a leader hearing from a deposed one). 0 when no leader was heard within
    /// the window.
    ///
    /// A claim overlaps a newer one when it is still heard an election timeout (the shortest)
    /// after the newer one began, or after it was first heard if that was later. What an old leader sent before it was deposed arrives up to a
    /// network delay late, so a claim heard just after its successor began is no evidence: a
    /// leader elected in term t while another node already campaigned for t+1 leads for a few
    /// ticks, and its last heartbeats land after the winner of t+1 began (simulation seed
    /// 202512, crashes alone). A deposed leader that goes on sending for an election timeout
    /// has not learnt of the newer term: paused (a GC or VM pause), or on the far side of a
    /// link that works one way only. A leader that hears a newer leader while it still leads
    /// counts the two at once (its own claim does not arrive late), if it had led for an
    /// election timeout by then: one that took office less than that before was elected in a
    /// race with the newer election (a vote that arrived late, while its voters had moved on
    /// to the next term: simulation seed 33010878), the case of seed 202512 seen from the
    /// loser's side; seen from the winner's side, such a leader heard for less than an
    /// election timeout is not counted either (seed 34007271: 8 ticks). Otherwise a split brain shorter than an election timeout is not counted;
    /// with check-quorum and pre-vote most are shorter than that, and across a clean partition
    /// a node hears only its own side: only an observer of every node (`kvctl status`, or
    /// `sum(kv_is_leader)` in Prometheus) sees those.
    pub fn leaders_observed(&self, window: u64) -> u32 {
        let margin = u64::from(self.cfg.election_ticks.0);
        // Its own claim is no message: a leader that hears a newer one while it still leads (a
        // paused leader, resumed) knows the two overlapped, with no margin.
        let own = self.claims[self.me].as_ref();
        let recent = || {
            self.claims
                .iter()
                .flatten()
                .filter(move |c| self.now.saturating_sub(c.last) <= window)
        };
        // For each claim, the claims of older terms still heard after it began (plus the
        // margin). Ordered by term, not by when first heard: a successor's own claim may begin
        // in the very tick its predecessor's last append arrives (seed 12000738), and neither
        // that late append nor the successor's own claim going on after it is an overlap.
        let most = recent()
            .map(|c| {
                1 + recent()
                    .filter(|d| {
                        d.term < c.term
                            && if own.is_some_and(|o| std::ptr::eq(o, *d)) {
                                d.first + margin <= c.first && c.first <= d.last
                            } else {
                                c.first.max(d.first) + margin <= d.last
                            }
                    })
                    .count()
            })
            .max()
            .unwrap_or(0);
        most as u32
    }

    /// Notes that member `i` claims leadership in `term` now.
    fn note_claim(&mut self, i: usize, term: Term) {
        let now = self.now;
        match &mut self.claims[i] {
            Some(c) if c.term == term => c.last = now,
            Some(c) if c.term > term => {} // an old message, reordered: its term is over
            c => {
                *c = Some(Claim {
                    term,
                    first: now,
                    last: now,
                });
            }
        }
    }

    /// How far each follower's durable log is behind the leader's (leader only): in entries,
    /// and in ticks, the age of the oldest entry it lacks (MongoDB's replication lag: how long
    /// ago the leader had what the follower has now; 0 when it has everything). An entry from
    /// before this leader's term counts as appended when it was elected, so a lag that began
    /// before the election is reported as no older than the election. A follower that has not
    /// answered since the election is left out: the leader knows nothing of its log yet (it
    /// would otherwise be reported as lacking the whole log, as Raft's matchIndex starts at 0).
    pub fn follower_lag(&self) -> Vec<(NodeId, u64, u64)> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        let last = self.last_index().0;
        (0..self.cfg.members.len())
            .filter(|&i| i != self.me && self.progress[i].replied)
            .map(|i| {
                let matched = self.progress[i].matched;
                let ticks = if matched >= last {
                    0
                } else {
                    self.now.saturating_sub(self.appended_tick(matched + 1))
                };
                (
                    self.cfg.members[i].clone(),
                    last.saturating_sub(matched),
                    ticks,
                )
            })
            .collect()
    }

    /// The tick entry `index` was appended here as leader (its election, if earlier).
    fn appended_tick(&self, index: u64) -> u64 {
        let at = self
            .appended_at
            .partition_point(|&(first, _)| first <= index);
        match at.checked_sub(1) {
            Some(k) => self.appended_at[k].1,
            None => self.leading_since,
        }
    }

    /// Forgets the append times no follower needs any more.
    fn trim_appended_at(&mut self) {
        let oldest_missing = (0..self.cfg.members.len())
            .filter(|&i| i != self.me)
            .map(|i| self.progress[i].matched + 1)
            .min()
            .unwrap_or(u64::MAX);
        // Keep the last record at or before the oldest entry still missing somewhere.
        while self.appended_at.len() > 1 && self.appended_at[1].0 <= oldest_missing {
            self.appended_at.pop_front();
        }
    }

    /// Takes the actions produced so far, in the order they must be carried out. Proposals and
    /// reads since the last call go out here, in one `Append` per follower.
    pub fn take_actions(&mut self) -> Vec<Action> {
        if self.role == Role::Leader && (self.broadcast_pending || self.read_round_pending) {
            let seq = if self.read_round_pending {
                self.read_seq += 1;
                self.read_seq
            } else {
                0
            };
            self.broadcast_pending = false;
            self.read_round_pending = false;
            self.broadcast_append(seq);
            self.check_reads();
        }
        std::mem::take(&mut self.out)
    }

    // ---- inputs -----------------------------------------------------------------------

    /// Logical time passes by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        match self.role {
            Role::Leader => {
                self.note_claim(self.me, self.hard.term);
                self.heartbeat_elapsed += 1;
                if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
                    self.heartbeat_elapsed = 0;
                    self.broadcast_append(0);
                }
                // On every tick, not once per election timeout as etcd's raft does: a leader
                // whose last reply came just after a check would lead for up to two timeouts,
                // long enough for the others to elect a successor beside it.
                self.check_quorum();
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                // While its term or vote is being written, a node's votes and replies wait
                // for the disk: the election timeout counts from when they can go.
                if !self.hard_unsynced {
                    self.election_elapsed += 1;
                }
                if self.election_elapsed >= self.election_timeout {
                    self.pre_campaign();
                }
            }
        }
    }

    /// The driver made every term and vote handed out so far durable.
    pub fn hard_state_persisted(&mut self) {
        if self.hard_unsynced {
            self.hard_write_ticks =
                u32::try_from(self.now.saturating_sub(self.hard_write_began)).unwrap_or(u32::MAX);
        }
        self.hard_unsynced = false;
    }

    /// The driver made the log durable up to `index`.
    pub fn persisted(&mut self, index: LogIndex) {
        let index = index.0.min(self.last_index().0);
        if index > self.persisted {
            self.persisted = index;
            if self.role == Role::Leader {
                self.progress[self.me].matched = index;
                self.advance_commit();
                self.check_acks();
            }
        }
        // A follower tells its leader how far it durably holds the leader's log.
        if self.role == Role::Follower
            && let Some(leader) = self.leader
            && self.persisted.min(self.leader_match) > self.reported
        {
            self.reply(leader, true, 0);
        }
    }

    /// Proposes a write, to be acknowledged once `w` replicas hold it durably.
    ///
    /// # Errors
    /// [`ReplicaError::NotLeader`] on a non-leader; [`ReplicaError::BadW`].
    pub fn propose(
        &mut self,
        id: RequestId,
        cmd: Command,
        w: u32,
    ) -> Result<Version, ReplicaError> {
        let n = self.cfg.members.len() as u32;
        if w == 0 || w > n {
            return Err(ReplicaError::BadW { w, n });
        }
        if self.role != Role::Leader {
            return Err(ReplicaError::NotLeader {
                leader: self.leader().cloned(),
            });
        }
        let e = self.append_local(cmd);
        let version = e.version();
        self.pending.insert(e.index.0, Pending { id, w, version });
        self.broadcast_pending = true;
        self.check_acks();
        Ok(version)
    }

    /// Asks to serve a linearizable read (read-index, §8).
    ///
    /// # Errors
    /// [`ReplicaError::NotLeader`] on a non-leader.
    pub fn read(&mut self, id: RequestId) -> Result<(), ReplicaError> {
        if self.role != Role::Leader {
            return Err(ReplicaError::NotLeader {
                leader: self.leader().cloned(),
            });
        }
        if !self.committed_in_term() {
            self.reads_waiting_commit.push(id);
            return Ok(());
        }
        self.start_read(id);
        Ok(())
    }

    /// Handles a message from another member.
    pub fn step(&mut self, from: &NodeId, msg: Message) {
        let Some(from) = self.cfg.members.iter().position(|m| m == from) else {
            return; // not a member: ignore
        };
        if from == self.me {
            return;
        }
        let elapsed_before = self.election_elapsed;
        if let Message::Append { term, .. } | Message::Snapshot { term, .. } = &msg {
            self.note_claim(from, *term);
        }
        let term = match &msg {
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => {
                self.on_pre_vote(from, *term, *last_index, *last_term);
                return;
            }
            Message::PreVoteReply { term, granted } => {
                self.on_pre_vote_reply(from, *term, *granted);
                return;
            }
            Message::RequestVote { term, .. }
            | Message::Vote { term, .. }
            | Message::Append { term, .. }
            | Message::Snapshot { term, .. }
            | Message::AppendReply { term, .. } => *term,
        };
        if term > self.hard.term {
            let leader =
                matches!(msg, Message::Append { .. } | Message::Snapshot { .. }).then_some(from);
            let was_leading = self.role != Role::Follower;
            self.become_follower(term, leader);
            // Figure 2: the election timer restarts on the leader's appends and on granting a
            // vote, not on merely seeing a higher term. A voter that refuses a candidate whose
            // log is behind keeps its own timer, so the up-to-date node runs soon after.
            if matches!(msg, Message::RequestVote { .. }) && !was_leading {
                self.election_elapsed = elapsed_before;
            }
        }
        match msg {
            Message::RequestVote {
                term,
                last_index,
                last_term,
            } => self.on_request_vote(from, term, last_index, last_term),
            Message::Vote { term, granted } => self.on_vote(from, term, granted),
            Message::PreVote { .. } | Message::PreVoteReply { .. } => {}
            Message::Append {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
                read_seq,
            } => self.on_append(from, term, prev_index, prev_term, entries, commit, read_seq),
            Message::Snapshot { term, snapshot } => self.on_snapshot(from, term, snapshot),
            Message::AppendReply {
                term,
                ok,
                index,
                read_seq,
            } => self.on_append_reply(from, term, ok, index, read_seq),
        }
    }

    // ---- elections (§5.2) -------------------------------------------------------------

    fn reset_election_timeout(&mut self) {
        let (lo, hi) = self.cfg.election_ticks;
        let widen = self.rounds_without_leader.min(MAX_WIDEN);
        let span = hi.saturating_sub(lo).max(1).saturating_mul(1 + widen);
        self.election_timeout = lo + self.rng.next_u32() % span;
        self.election_elapsed = 0;
    }

    fn last_term(&self) -> Term {
        self.log.last().map_or(self.base_term, |e| e.term)
    }

    /// The term of the entry at `index`: known for the log and the entry just before it,
    /// `None` before that (compacted) or past the end.
    fn term_at(&self, index: u64) -> Option<Term> {
        if index == self.base {
            return Some(self.base_term);
        }
        self.entry(LogIndex(index)).map(|e| e.term)
    }

    fn persist_hard(&mut self) {
        if !self.hard_unsynced {
            self.hard_write_began = self.now;
        }
        self.hard_unsynced = true;
        self.out.push(Action::PersistHardState(self.hard));
    }

    /// Asks for pre-votes; campaigns for real only if a majority would vote for it.
    fn pre_campaign(&mut self) {
        self.rounds_without_leader = self.rounds_without_leader.saturating_add(1);
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_election_timeout();
        self.votes = BTreeSet::from([self.me]);
        if self.votes.len() >= self.majority() {
            self.campaign();
            return;
        }
        let (last_index, last_term) = (self.last_index(), self.last_term());
        let term = Term(self.hard.term.0 + 1);
        for to in self.others() {
            self.send(
                to,
                Message::PreVote {
                    term,
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn on_pre_vote(&mut self, from: usize, term: Term, last_index: LogIndex, last_term: Term) {
        let up_to_date = (last_term, last_index) >= (self.last_term(), self.last_index());
        // Someone who heard from a leader within the minimum election timeout will not help
        // depose it (leader stickiness); a leader never does. Nor will a follower that gave its
        // vote in this term within that time: as Raft's granted vote restarts the election
        // timer, the candidate it voted for may be about to win. On a disk whose writes take
        // about an election timeout, the other votes arrive that much later, and pre-votes
        // granted meanwhile elected a successor that deposed the winner as it took office.
        let recent = self.election_elapsed < self.cfg.election_ticks.0;
        let voted_for_another =
            self.role == Role::Follower && self.hard.voted_for.is_some_and(|v| v != self.me);
        let sticky =
            self.role == Role::Leader || (recent && (self.leader.is_some() || voted_for_another));
        let granted = term > self.hard.term && up_to_date && !sticky;
        let reply_term = if granted { term } else { self.hard.term };
        self.send(
            from,
            Message::PreVoteReply {
                term: reply_term,
                granted,
            },
        );
    }

    fn on_pre_vote_reply(&mut self, from: usize, term: Term, granted: bool) {
        if self.role != Role::PreCandidate {
            return;
        }
        if granted && term == Term(self.hard.term.0 + 1) {
            self.votes.insert(from);
            if self.votes.len() >= self.majority() {
                self.campaign();
            }
        } else if !granted && term > self.hard.term {
            self.become_follower(term, None);
        }
    }

    fn campaign(&mut self) {
        self.role = Role::Candidate;
        self.hard.term = Term(self.hard.term.0 + 1);
        self.hard.voted_for = Some(self.me);
        self.leader = None;
        self.persist_hard();
        self.reset_election_timeout();
        // The voters write their votes as this node writes its own: on a disk whose writes
        // take as long as an election timeout, votes arrive that much after this node's own
        // is durable, and a timeout that ignores it starts the next election over them (two
        // candidates then split the votes term after term). Wait as long again as the last
        // term or vote took to write here, up to the longest election timeout.
        self.election_timeout += self.hard_write_ticks.min(self.cfg.election_ticks.1);
        self.term_votes = BTreeSet::from([self.me]);
        if self.term_votes.len() >= self.majority() {
            self.become_leader();
            return;
        }
        let (last_index, last_term) = (self.last_index(), self.last_term());
        for to in self.others() {
            self.send(
                to,
                Message::RequestVote {
                    term: self.hard.term,
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn on_request_vote(&mut self, from: usize, term: Term, last_index: LogIndex, last_term: Term) {
        let up_to_date = (last_term, last_index) >= (self.last_term(), self.last_index());
        let granted =
            term == self.hard.term && up_to_date && self.hard.voted_for.is_none_or(|v| v == from);
        if granted && self.hard.voted_for.is_none() {
            self.hard.voted_for = Some(from);
            self.persist_hard(); // durable before the vote is sent
            self.reset_election_timeout();
        }
        self.send(
            from,
            Message::Vote {
                term: self.hard.term,
                granted,
            },
        );
    }

    /// A vote counts while this node still campaigns in the vote's term: as a candidate, or as
    /// a pre-candidate for the next term whose candidacy in this one timed out before the vote
    /// came (its term and its log have not changed since it asked: no leader of this term can
    /// have written to it, for every vote of the term went to one node at most). On a disk whose
    /// fsyncs take about as long as the election timeout, votes often arrive that late.
    fn on_vote(&mut self, from: usize, term: Term, granted: bool) {
        let campaigning = matches!(self.role, Role::Candidate | Role::PreCandidate)
            && self.hard.voted_for == Some(self.me)
            && self.term_votes.contains(&self.me);
        if !campaigning || term != self.hard.term || !granted {
            return;
        }
        self.term_votes.insert(from);
        if self.term_votes.len() >= self.majority() {
            self.become_leader();
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<usize>) {
        let was_leader = self.role == Role::Leader;
        if term > self.hard.term {
            self.hard.term = term;
            self.hard.voted_for = None;
            self.persist_hard();
        }
        if self.role != Role::Follower || self.leader != leader {
            self.leader_match = 0;
            self.reported = 0;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.broadcast_pending = false;
        self.read_round_pending = false;
        self.reset_election_timeout();
        if was_leader {
            self.abandon_requests();
        }
    }

    fn abandon_requests(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            self.out.push(Action::Unknown { id: p.id });
        }
        for r in std::mem::take(&mut self.reads) {
            self.out.push(Action::ReadFailed { id: r.id });
        }
        for id in std::mem::take(&mut self.reads_waiting_commit) {
            self.out.push(Action::ReadFailed { id });
        }
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.rounds_without_leader = 0;
        self.term_votes.clear(); // it leads this term once
        self.leader = Some(self.me);
        self.leading_since = self.now;
        self.appended_at.clear();
        self.note_claim(self.me, self.hard.term);
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let next = self.last_index().0 + 1;
        let now = self.now;
        for (i, p) in self.progress.iter_mut().enumerate() {
            *p = Progress {
                next,
                matched: 0,
                heard: now,
                snapshot_sent: None,
                read_seq: 0,
                replied: false,
            };
            if i == self.me {
                p.matched = self.persisted;
            }
        }
        // §5.4.2: commit earlier terms' entries through an entry of this term.
        self.append_local(Command::Noop);
        self.broadcast_append(0);
        self.advance_commit();
    }

    /// §6.2 / check-quorum: a leader that cannot reach a majority steps down, in the tick it
    /// has gone a whole election timeout without hearing from one (a follower that heard it
    /// last at that time may campaign in that tick).
    fn check_quorum(&mut self) {
        let heard = (0..self.cfg.members.len())
            .filter(|&i| i == self.me || self.heard_lately(i))
            .count();
        if heard < self.majority() {
            self.become_follower(self.hard.term, None);
        }
    }

    // ---- replication (§5.3) -----------------------------------------------------------

    fn majority(&self) -> usize {
        self.cfg.members.len() / 2 + 1
    }

    fn others(&self) -> Vec<usize> {
        (0..self.cfg.members.len())
            .filter(|&i| i != self.me)
            .collect()
    }

    fn send(&mut self, to: usize, msg: Message) {
        self.out.push(Action::Send {
            to: self.cfg.members[to].clone(),
            msg,
        });
    }

    fn append_local(&mut self, cmd: Command) -> Entry {
        let e = Entry {
            term: self.hard.term,
            index: LogIndex(self.last_index().0 + 1),
            cmd,
        };
        self.log.push(e.clone());
        self.out.push(Action::PersistEntries(vec![e.clone()]));
        if self.role == Role::Leader && self.appended_at.back().is_none_or(|&(_, t)| t != self.now)
        {
            self.appended_at.push_back((e.index.0, self.now));
            if self.appended_at.len() > APPENDED_AT_MAX {
                // A follower missing entries for long (down, cut off): keep every other record,
                // the oldest included. An entry whose record goes counts from the one before
                // it, which is older: the lag in time is overstated by at most the gap, never
                // understated, and the oldest entry missing keeps its exact age.
                let mut k = 0;
                self.appended_at.retain(|_| {
                    k += 1;
                    k % 2 == 1
                });
            }
        }
        e
    }

    fn broadcast_append(&mut self, read_seq: u64) {
        for to in self.others() {
            self.send_append(to, read_seq);
        }
    }

    /// Whether the snapshot may go to `to` now: not sent, or sent long enough ago without an
    /// answer that it was lost — an election timeout per MiB started, since a large one takes
    /// a while to cross, decode and write, and resending it sooner would only pile copies up.
    fn snapshot_due(&self, to: usize) -> bool {
        let mib = (self.snapshot_size >> 20) + 1;
        let wait = u64::from(self.cfg.election_ticks.0) * mib;
        self.progress[to]
            .snapshot_sent
            .is_none_or(|t| self.now.saturating_sub(t) >= wait)
    }

    fn send_append(&mut self, to: usize, read_seq: u64) {
        let last = self.last_index().0;
        let base = self.base;
        let next = self.progress[to].next.clamp(1, last + 1);
        if next <= base {
            // The entries it needs are compacted away: the snapshot replaces them. While one
            // is on its way, an empty `Append` keeps the follower from campaigning.
            if self.snapshot_due(to) {
                self.progress[to].snapshot_sent = Some(self.now);
                let msg = Message::Snapshot {
                    term: self.hard.term,
                    snapshot: self.snapshot.clone(),
                };
                self.send(to, msg);
            } else {
                let msg = Message::Append {
                    term: self.hard.term,
                    prev_index: LogIndex(base),
                    prev_term: self.base_term,
                    entries: Vec::new(),
                    commit: LogIndex(self.commit),
                    read_seq,
                };
                self.send(to, msg);
            }
            return;
        }
        let prev_index = next - 1;
        let prev_term = self.term_at(prev_index).unwrap_or(Term(0));
        let most = (next - 1 + self.cfg.max_batch as u64).min(last);
        let mut bytes = 0;
        let taken = self.log[(next - 1 - base) as usize..(most - base) as usize]
            .iter()
            .take_while(|e| {
                let under = bytes < self.cfg.max_batch_bytes;
                bytes += e.weight();
                under
            })
            .count();
        let end = next - 1 + taken as u64;
        let entries = self.log[(next - 1 - base) as usize..(end - base) as usize].to_vec();
        // Optimistic: the next heartbeat carries what follows; a reject rewinds.
        self.progress[to].next = end + 1;
        self.send(
            to,
            Message::Append {
                term: self.hard.term,
                prev_index: LogIndex(prev_index),
                prev_term,
                entries,
                commit: LogIndex(self.commit),
                read_seq,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        from: usize,
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
        read_seq: u64,
    ) {
        if term < self.hard.term {
            self.reply(from, false, read_seq);
            return;
        }
        // A leader of this term exists: follow it.
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.rounds_without_leader = 0;
        self.reset_election_timeout();
        self.leader_commit = commit.0;
        let base = self.base;
        let (prev_index, prev_term, entries) = if prev_index.0 < base {
            // Entries up to the snapshot are committed, so the leader's log holds them as they
            // are here: only what follows can be new.
            let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index.0 > base).collect();
            (LogIndex(base), self.base_term, entries)
        } else {
            (prev_index, prev_term, entries)
        };
        if self.term_at(prev_index.0) != Some(prev_term) {
            let hint = LogIndex(self.last_index().0.min(prev_index.0.saturating_sub(1)));
            let msg = Message::AppendReply {
                term: self.hard.term,
                ok: false,
                index: hint,
                read_seq,
            };
            self.send(from, msg);
            return;
        }
        // The log matches the leader's through the last entry this message carried.
        let matched = prev_index.0 + entries.len() as u64;
        let mut fresh = Vec::new();
        for e in entries {
            match self.term_at(e.index.0) {
                Some(t) if t == e.term => continue, // already have it
                Some(_) => {
                    // Conflict: drop this entry and everything after it (§5.3).
                    let removed = self.log.split_off((e.index.0 - base) as usize - 1);
                    for r in &removed {
                        // Several terms' entries may be truncated at one index over time.
                        self.suspects.entry(r.index.0).or_default().push(r.clone());
                    }
                    let last = self.last_index().0;
                    self.persisted = self.persisted.min(last);
                    self.leader_match = self.leader_match.min(last);
                    self.out.push(Action::Truncate {
                        from: e.index,
                        removed,
                    });
                    self.log.push(e.clone());
                    fresh.push(e);
                }
                None => {
                    self.log.push(e.clone());
                    fresh.push(e);
                }
            }
        }
        let appended = !fresh.is_empty();
        if appended {
            self.out.push(Action::PersistEntries(fresh));
        }
        self.leader_match = self.leader_match.max(matched);
        let new_commit = commit.0.min(matched);
        if new_commit > self.commit {
            self.commit_to(new_commit);
        }
        // The reply claims only what is durable here, so it may leave before this batch's
        // write does (a read-index confirmation then never waits for a follower's fsync);
        // `persisted` reports the rest. New entries without a read to confirm: that report
        // is the reply.
        if !appended || read_seq != 0 {
            self.reply(from, true, read_seq);
        }
    }

    fn on_snapshot(&mut self, from: usize, term: Term, snap: Snapshot) {
        if term < self.hard.term {
            self.reply(from, false, 0);
            return;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.rounds_without_leader = 0;
        self.reset_election_timeout();
        self.leader_commit = self.leader_commit.max(snap.index.0);
        if snap.index.0 <= self.commit || self.term_at(snap.index.0) == Some(snap.term) {
            // Already held here (committed, or in the log): nothing to replace.
            self.leader_match = self.leader_match.max(snap.index.0.min(self.last_index().0));
            if snap.index.0 > self.commit {
                self.commit_to(snap.index.0);
            }
        } else {
            // Committed entries are the leader's too; an uncommitted one is rolled back when
            // the leader's log had another entry (or none) at its index.
            let commit = self.commit;
            let mut survived = Vec::new();
            let rolled_back: Vec<Entry> = std::mem::take(&mut self.log)
                .into_iter()
                .filter(|e| e.index.0 > commit && snap.term_at(e.index) != Some(e.term))
                .collect();
            let index = snap.index.0;
            // Earlier truncations the snapshot settles: kept if the leader's log had them.
            let later = self.suspects.split_off(&(index + 1));
            for (_, es) in std::mem::replace(&mut self.suspects, later) {
                survived.extend(
                    es.into_iter()
                        .filter(|e| snap.term_at(e.index) == Some(e.term)),
                );
            }
            self.base = index;
            self.base_term = snap.term;
            self.snapshot_size = snap.data.len() as u64;
            self.snapshot = snap.clone();
            self.commit = index;
            self.applied = index;
            self.leader_match = index;
            // Durable with the `Restore`, before anything after it is carried out.
            self.persisted = index;
            self.out.push(Action::Restore {
                snapshot: snap,
                rolled_back,
            });
            if !survived.is_empty() {
                self.out.push(Action::Survived(survived));
            }
        }
        self.reply(from, true, 0);
    }

    /// Answers the leader `to`: `ok` claims the log matches the leader's, and is durable, up to
    /// what this node wrote of it; a refusal gives the last index, where the leader may retry.
    fn reply(&mut self, to: usize, ok: bool, read_seq: u64) {
        let index = if ok {
            let durable = self.persisted.min(self.leader_match);
            self.reported = self.reported.max(durable);
            durable
        } else {
            self.last_index().0
        };
        let msg = Message::AppendReply {
            term: self.hard.term,
            ok,
            index: LogIndex(index),
            read_seq,
        };
        self.send(to, msg);
    }

    fn on_append_reply(
        &mut self,
        from: usize,
        term: Term,
        ok: bool,
        index: LogIndex,
        read_seq: u64,
    ) {
        if self.role != Role::Leader || term != self.hard.term {
            return;
        }
        let p = &mut self.progress[from];
        p.heard = self.now;
        p.replied = true;
        p.read_seq = p.read_seq.max(read_seq);
        let base = self.base;
        if ok {
            p.matched = p.matched.max(index.0);
            p.next = p.next.max(p.matched + 1);
            let caught_up = p.snapshot_sent.is_some() && p.matched >= base;
            if caught_up {
                p.snapshot_sent = None;
            }
            self.trim_appended_at();
            self.advance_commit();
            self.check_acks();
            if caught_up {
                self.send_append(from, 0);
            }
        } else {
            // A follower never drops what matched this leader's log in this term, unless its
            // data was lost (a replica started again on an empty data directory, let back in
            // by the operator): then what it acknowledged is gone, and waiting for it to reach
            // an index it once had would leave it behind for as long as this leader leads.
            if index.0 < p.matched {
                p.matched = index.0;
            }
            p.next = (index.0 + 1)
                .min(p.next.saturating_sub(1))
                .max(p.matched + 1)
                .max(1);
            // While a snapshot is on its way, the follower's refusals of the empty appends
            // that keep it following need no answer.
            if p.next > base || self.snapshot_due(from) {
                self.send_append(from, 0);
            }
        }
        self.check_reads();
    }

    fn committed_in_term(&self) -> bool {
        self.term_at(self.commit) == Some(self.hard.term)
    }

    fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let mut matched: Vec<u64> = self.progress.iter().map(|p| p.matched).collect();
        matched[self.me] = self.persisted;
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.majority() - 1];
        // Only an entry of the current term commits by counting replicas (§5.4.2).
        if candidate > self.commit && self.term_at(candidate) == Some(self.hard.term) {
            self.commit_to(candidate);
            if !self.reads_waiting_commit.is_empty() {
                for id in std::mem::take(&mut self.reads_waiting_commit) {
                    self.start_read(id);
                }
            }
        }
    }

    /// Hands the state machine the next committed entries not yet handed over (an
    /// [`Action::Apply`] of at most [`Config::max_apply`]). Returns whether it did: `false` once
    /// [`Replica::applied_index`] reaches the commit index. The driver calls it once per pass
    /// of its loop while entries are left, so that it goes on answering its peers meanwhile.
    pub fn apply_more(&mut self) -> bool {
        let before = self.applied;
        self.apply_committed();
        self.applied > before
    }

    /// The commit index moves to `index`: the new entries go to the state machine at once
    /// when it has everything before them (under load, every entry in the step that committed
    /// it). Behind that, they wait their turn in [`Replica::apply_more`], so that however often
    /// the commit index moves, a step hands over at most one chunk.
    fn commit_to(&mut self, index: u64) {
        let caught_up = self.applied == self.commit;
        self.commit = index;
        if caught_up {
            self.apply_committed();
        }
    }

    fn apply_committed(&mut self) {
        if self.commit > self.applied {
            let base = self.base;
            let to = self.commit.min(
                self.applied
                    .saturating_add(self.cfg.max_apply.max(1) as u64),
            );
            let entries = self.log[(self.applied - base) as usize..(to - base) as usize].to_vec();
            self.applied = to;
            let survived: Vec<Entry> = if self.suspects.is_empty() {
                Vec::new()
            } else {
                entries
                    .iter()
                    .flat_map(|e| {
                        self.suspects
                            .remove(&e.index.0)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|s| s.term == e.term)
                    })
                    .collect()
            };
            self.out.push(Action::Apply(entries));
            if !survived.is_empty() {
                self.out.push(Action::Survived(survived));
            }
        }
    }

    /// Acknowledges proposals that `w` replicas durably hold.
    fn check_acks(&mut self) {
        if self.role != Role::Leader || self.pending.is_empty() {
            return;
        }
        let mut matched: Vec<u64> = self.progress.iter().map(|p| p.matched).collect();
        matched[self.me] = self.persisted;
        let done: Vec<u64> = self
            .pending
            .iter()
            .filter_map(|(&index, p)| {
                let holders = matched.iter().filter(|&&m| m >= index).count() as u32;
                (holders >= p.w).then_some(index)
            })
            .collect();
        for index in done {
            if let Some(p) = self.pending.remove(&index) {
                let holders = matched.iter().filter(|&&m| m >= index).count() as u32;
                self.out.push(Action::Acked {
                    id: p.id,
                    version: p.version,
                    acks: holders,
                });
            }
        }
    }

    // ---- reads (§8) -------------------------------------------------------------------

    /// Queues a read for the next confirmation round (sent by `take_actions`).
    fn start_read(&mut self, id: RequestId) {
        self.reads.push(PendingRead {
            id,
            seq: self.read_seq + 1,
            index: LogIndex(self.commit),
        });
        self.read_round_pending = true;
    }

    fn check_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let majority = self.majority();
        let me = self.me;
        let progress = &self.progress;
        let confirmed = |seq: u64| {
            (0..progress.len())
                .filter(|&i| i == me || progress[i].read_seq >= seq)
                .count()
                >= majority
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|r| confirmed(r.seq));
        self.reads = waiting;
        for r in ready {
            self.out.push(Action::ReadReady {
                id: r.id,
                index: r.index,
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic RngCore for tests: a counter (election timeouts become predictable).
    struct Counter(u32);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.0 = self.0.wrapping_add(1);
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0);
        }
    }

    fn ids(n: usize) -> Vec<NodeId> {
        (1..=n).map(|i| NodeId(format!("n{i}"))).collect()
    }

    pub(crate) fn replica(me: usize, n: usize, hard: HardState, log: Vec<Entry>) -> Replica {
        Replica::new(
            Config {
                id: ids(n)[me].clone(),
                members: ids(n),
                election_ticks: (10, 20),
                heartbeat_ticks: 3,
                max_batch: 64,
                max_batch_bytes: u64::MAX,
                max_apply: 64,
            },
            hard,
            Snapshot::default(),
            log,
            Box::new(Counter(0)),
        )
    }

    fn put(k: &str) -> Command {
        Command::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            cmd: put("k"),
        }
    }

    /// An `Append` of `term` after `(prev index, prev term)`.
    fn append(term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
        Message::Append {
            term: Term(term),
            prev_index: LogIndex(prev.0),
            prev_term: Term(prev.1),
            entries,
            commit: LogIndex(commit),
            read_seq: 0,
        }
    }

    /// A node whose term or vote is still being written waits before it campaigns: on a disk
    /// as slow as the election timeout, every vote would otherwise come too late to count
    /// (elections failed over and over in the simulator; with every disk 200 ms slower three
    /// real nodes elected no leader in 20 s).
    #[test]
    fn the_election_timer_waits_while_the_term_or_vote_is_being_written() {
        let campaigned = |r: &mut Replica| {
            r.take_actions().iter().any(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: Message::PreVote { .. },
                        ..
                    }
                )
            })
        };
        let mut r = replica(1, 3, HardState::default(), vec![]);
        // A heartbeat of term 2 from n1: a new term to write.
        r.step(&ids(3)[0], append(2, (0, 0), vec![], 0));
        assert!(
            r.take_actions()
                .iter()
                .any(|a| matches!(a, Action::PersistHardState(_)))
        );
        for _ in 0..100 {
            r.tick();
        }
        assert!(
            !campaigned(&mut r),
            "campaigned before its term was durable"
        );
        r.hard_state_persisted();
        let mut ticks = 0;
        while !campaigned(&mut r) {
            r.tick();
            ticks += 1;
            assert!(ticks <= 20, "no campaign an election timeout after");
        }
        assert!(ticks >= 10, "campaigned after {ticks} ticks");
    }

    /// Rounds of elections without a leader widen the range election timeouts are drawn
    /// from, so that candidates that keep splitting the votes (on a disk as slow as the
    /// timeout, their own votes take that long to write) come to campaign apart; a leader
    /// heard narrows it again, so the first election after a leader fails is as quick as ever.
    #[test]
    fn rounds_without_a_leader_widen_the_election_timeout_and_a_leader_narrows_it() {
        let mut r = replica(1, 3, HardState::default(), vec![]);
        // Ticks until the next request for pre-votes (nobody answers them).
        let next_round = |r: &mut Replica| {
            let mut ticks = 0u32;
            loop {
                r.tick();
                ticks += 1;
                let asked = r.take_actions().iter().any(|a| {
                    matches!(
                        a,
                        Action::Send {
                            msg: Message::PreVote { .. },
                            ..
                        }
                    )
                });
                if asked {
                    return ticks;
                }
                assert!(ticks < 1_000, "no election");
            }
        };
        let rounds: Vec<u32> = (0..30).map(|_| next_round(&mut r)).collect();
        assert!(rounds[0] < 20, "the first round as configured: {rounds:?}");
        assert!(
            rounds.iter().all(|&t| (10..50).contains(&t)),
            "within four times the range: {rounds:?}"
        );
        assert!(
            rounds.iter().any(|&t| t >= 20),
            "later rounds beyond the configured range: {rounds:?}"
        );
        for _ in 0..10 {
            r.step(&ids(3)[0], append(1, (0, 0), vec![], 0));
            r.take_actions();
            r.hard_state_persisted(); // term 1, the first time
            let t = next_round(&mut r);
            assert!((10..20).contains(&t), "a leader heard: {t} ticks");
        }
    }

    /// Follower n2 of three hears heartbeats: from n1 (term 1) at `old` ticks and from n3
    /// (term 2) at `new` ticks, up to tick `until`; returns what it observed.
    fn heard_leaders(old: &[u64], new: &[u64], until: u64) -> u32 {
        let mut r = replica(1, 3, HardState::default(), vec![]);
        for t in 0..=until {
            if old.contains(&t) {
                r.step(&ids(3)[0], append(1, (0, 0), vec![], 0));
            }
            if new.contains(&t) {
                r.step(&ids(3)[2], append(2, (0, 0), vec![], 0));
            }
            r.tick();
        }
        r.leaders_observed(100)
    }

    #[test]
    fn a_deposed_leader_heard_beside_the_new_one_is_a_split_brain_a_fail_over_is_not() {
        let every3 = |from: u64, to: u64| (from..=to).step_by(3).collect::<Vec<_>>();
        // n1 goes on sending after n3 was elected (a node between the two sides hears both).
        assert_eq!(heard_leaders(&every3(0, 30), &every3(12, 30), 30), 2);
        // n1 stops (killed), n3 is elected an election timeout later: one at a time.
        assert_eq!(heard_leaders(&every3(0, 12), &every3(27, 60), 60), 1);
        // n1's last heartbeats arrive as n3 begins, and for less than an election timeout (10
        // ticks) after: sent before n1 was deposed, late (seed 202512 of the crash simulation).
        assert_eq!(heard_leaders(&every3(0, 12), &every3(12, 30), 30), 1);
        assert_eq!(heard_leaders(&every3(0, 21), &every3(12, 30), 30), 1);
        assert_eq!(heard_leaders(&every3(0, 9), &every3(12, 30), 30), 1);
        // Still heard an election timeout after n3 began: n1 has not learnt of term 2.
        assert_eq!(heard_leaders(&every3(0, 24), &every3(12, 30), 30), 2);
        // n1 of the older term first heard after n3 began (elected in a race with n3's
        // election, by a vote that arrived late; seed 34007271 of the one-way partitions):
        // counted only if heard for an election timeout from then.
        assert_eq!(heard_leaders(&every3(15, 24), &every3(12, 30), 30), 1);
        assert_eq!(heard_leaders(&every3(15, 27), &every3(12, 30), 30), 2);
        // Remembered for the window (100 ticks), then forgotten.
        assert_eq!(heard_leaders(&every3(0, 30), &every3(12, 125), 125), 2);
        assert_eq!(heard_leaders(&every3(0, 30), &every3(12, 140), 140), 1);
        // Nobody heard: 0. A leader counts itself.
        assert_eq!(heard_leaders(&[], &[], 5), 0);
        // A leader that hears a newer one while it still leads, an election timeout into its
        // term (paused, then resumed: no tick passed for it), knows they overlapped, however
        // briefly.
        let led_for = |ticks: u32| {
            let mut leader = replica(0, 3, HardState::default(), vec![]);
            elect(&mut leader, 3);
            for _ in 0..ticks {
                leader.tick();
                let last = leader.last_index().0;
                ack(&mut leader, 1, last);
            }
            assert_eq!(leader.role(), Role::Leader);
            assert_eq!(leader.leaders_observed(100), 1);
            leader.step(&ids(3)[2], append(5, (0, 0), vec![], 0));
            leader.leaders_observed(100)
        };
        assert_eq!(led_for(10), 2);
        // One that took office less than an election timeout before was elected in a race
        // with the newer election (its last vote arrived late; seed 33010878 of the one-way
        // partitions): it never led alone.
        assert_eq!(led_for(9), 1);
        assert_eq!(led_for(0), 1);
        // The other way round, a new leader hearing its predecessor's last append in the tick
        // it took office (seed 12000738 of the crash simulation), is a late message; that
        // predecessor still heard an election timeout later has not learnt of the new term.
        let mut successor = replica(0, 3, HardState::default(), vec![]);
        elect(&mut successor, 3);
        let term = successor.term().0;
        successor.step(&ids(3)[2], append(term - 1, (0, 0), vec![], 0));
        assert_eq!(successor.leaders_observed(100), 1);
        for _ in 0..10 {
            successor.tick();
            assert_eq!(successor.leaders_observed(100), 1);
        }
        successor.step(&ids(3)[2], append(term - 1, (0, 0), vec![], 0));
        assert_eq!(successor.leaders_observed(100), 2);
    }

    /// Follower `from` of three tells the leader it holds everything through `index`.
    fn ack(r: &mut Replica, from: usize, index: u64) {
        let term = r.term();
        r.step(
            &ids(3)[from],
            Message::AppendReply {
                term,
                ok: true,
                index: LogIndex(index),
                read_seq: 0,
            },
        );
    }

    fn elect(r: &mut Replica, n: usize) {
        let term = candidate(r, n);
        for i in 1..n {
            r.step(
                &ids(n)[i],
                Message::Vote {
                    term,
                    granted: true,
                },
            );
        }
        assert_eq!(r.role(), Role::Leader);
        let last = r.last_index();
        r.persisted(last);
        r.take_actions();
    }

    /// Ticks until the election timeout makes it a pre-candidate.
    fn time_out(r: &mut Replica) {
        for _ in 0..20 {
            r.tick();
            if r.role() == Role::PreCandidate {
                break;
            }
        }
        assert_eq!(r.role(), Role::PreCandidate);
    }

    /// `from` votes for it in `term`.
    fn vote(r: &mut Replica, from: usize, term: Term) {
        r.step(
            &ids(3)[from],
            Message::Vote {
                term,
                granted: true,
            },
        );
    }

    /// Times out, then a candidate with its term durable.
    fn candidate(r: &mut Replica, n: usize) -> Term {
        time_out(r);
        let next = Term(r.term().0 + 1);
        for i in 1..n {
            r.step(
                &ids(n)[i],
                Message::PreVoteReply {
                    term: next,
                    granted: true,
                },
            );
        }
        assert_eq!(r.role(), Role::Candidate);
        r.hard_state_persisted();
        r.take_actions();
        r.term()
    }

    /// Its voters write their votes as it writes its own: a candidate waits for them as much
    /// longer as its own last term or vote took to write (capped at the longest election
    /// timeout), so that on a slow disk the next election does not start over votes still on
    /// their way.
    #[test]
    fn a_candidate_waits_for_votes_as_long_as_its_own_term_took_to_write() {
        // A pre-vote makes it a candidate; its term takes `write` ticks to be durable; returns
        // the ticks it then waits for votes.
        let candidacy = |r: &mut Replica, write: u32| {
            r.step(
                &ids(3)[1],
                Message::PreVoteReply {
                    term: Term(r.term().0 + 1),
                    granted: true,
                },
            );
            assert_eq!(r.role(), Role::Candidate);
            for _ in 0..write {
                r.tick();
            }
            r.hard_state_persisted();
            let mut waited = 0;
            while r.role() == Role::Candidate {
                r.tick();
                waited += 1;
            }
            waited
        };
        let mut r = replica(0, 3, HardState::default(), vec![]);
        time_out(&mut r);
        let first = candidacy(&mut r, 15);
        assert!((10..20).contains(&first), "first candidacy waited {first}");
        // The next one waits 15 ticks more: the first's term took 15 to write.
        let second = candidacy(&mut r, 0);
        assert!(
            (25..35).contains(&second),
            "second candidacy waited {second}"
        );
    }

    /// A leader that stepped down (it heard from no majority) and campaigns again is not
    /// elected again in its old term by votes of that term arriving late: it leads a term once
    /// (seed 8214218 of five nodes on the slow disk led it a second time, beside the next
    /// term's leader).
    #[test]
    fn a_leader_that_stepped_down_is_not_elected_again_by_a_late_vote_of_its_term() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        let term = r.term();
        for _ in 0..11 {
            r.tick();
        }
        assert_eq!(r.role(), Role::Follower, "check-quorum");
        time_out(&mut r);
        assert_eq!(r.term(), term);
        vote(&mut r, 1, term);
        vote(&mut r, 2, term);
        assert_eq!(r.role(), Role::PreCandidate);
    }

    /// On a disk whose fsyncs take about as long as the election timeout, a voter's reply
    /// comes after the candidate gave up waiting and asked for pre-votes for the next term.
    /// The vote is for a term it still campaigns in, with the log it asked with: it leads.
    /// Dropping such votes left a simulated 3-node cluster without a leader 400 ticks after
    /// healing (seed 8104140 of the slow-disk simulation).
    #[test]
    fn a_vote_arriving_after_the_election_timed_out_still_elects_the_candidate() {
        let mut r = replica(
            0,
            3,
            HardState {
                term: Term(4),
                voted_for: None,
            },
            vec![entry(4, 1)],
        );
        let term = candidate(&mut r, 3);
        time_out(&mut r);
        assert_eq!(r.term(), term, "a pre-vote does not move the term");
        vote(&mut r, 2, term);
        assert_eq!(r.role(), Role::Leader);
        assert_eq!(r.term(), term);
    }

    /// A vote for a term counts only for the node that campaigned in it: a pre-candidate that
    /// voted for another node in its term (or never campaigned in it) ignores it, as does a
    /// candidate hearing a vote of an earlier term. So does a node restarted in a term it
    /// campaigned in (its vote for itself durable): as that term's leader before, it may have
    /// sent entries its disk lost, and leading the term again would put other entries of the
    /// same term at their indexes.
    #[test]
    fn a_vote_counts_only_in_a_term_the_node_campaigns_in() {
        for voted_for in [Some(1), Some(0)] {
            let mut r = replica(
                0,
                3,
                HardState {
                    term: Term(4),
                    voted_for,
                },
                vec![entry(4, 1)],
            );
            time_out(&mut r);
            for from in [1, 2] {
                vote(&mut r, from, Term(4));
            }
            assert_eq!(r.role(), Role::PreCandidate, "voted for {voted_for:?}");
            assert_eq!(r.term(), Term(4));
        }
        let mut r = replica(
            0,
            3,
            HardState {
                term: Term(4),
                voted_for: Some(1),
            },
            vec![entry(4, 1)],
        );
        let term = candidate(&mut r, 3);
        assert_eq!(term, Term(5));
        vote(&mut r, 2, Term(4));
        assert_eq!(r.role(), Role::Candidate);
        vote(&mut r, 2, term);
        assert_eq!(r.role(), Role::Leader);
    }

    /// A follower that lost its log (started again on an empty data directory) is sent the
    /// log again from the start: the leader's record of what it held goes down with it. It
    /// used to stay at the index it once acknowledged, so the follower never caught up while
    /// that leader led.
    #[test]
    fn a_follower_that_lost_its_log_is_sent_it_again() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        let noop = r.last_index().0;
        let v = r.propose(1, put("k"), 1).expect("leader").counter;
        ack(&mut r, 1, v);
        ack(&mut r, 2, v);
        r.take_actions();
        // n2, emptied, refuses the next heartbeat: its log ends at 0.
        let term = r.term();
        r.step(
            &ids(3)[1],
            Message::AppendReply {
                term,
                ok: false,
                index: LogIndex(0),
                read_seq: 0,
            },
        );
        let resent: Vec<(u64, usize)> = r
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    msg:
                        Message::Append {
                            prev_index,
                            entries,
                            ..
                        },
                } if to == ids(3)[1] => Some((prev_index.0, entries.len())),
                _ => None,
            })
            .collect();
        assert_eq!(
            resent,
            vec![(0, v as usize)],
            "noop {noop} and the put, from the start"
        );
        assert_eq!(r.follower_lag()[0].1, v, "it holds none of them");
    }

    #[test]
    fn follower_lag_counts_entries_and_the_age_of_the_oldest_one_missing() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        let noop = r.last_index().0;
        ack(&mut r, 1, noop);
        ack(&mut r, 2, noop);
        let lag = |r: &Replica| -> Vec<(u64, u64)> {
            r.follower_lag()
                .into_iter()
                .map(|(_, e, t)| (e, t))
                .collect()
        };
        assert_eq!(lag(&r), vec![(0, 0), (0, 0)], "both hold everything");
        // A leader just elected knows nothing of its followers' logs: none is reported until it
        // answers (not the whole log behind).
        let mut fresh = replica(0, 3, HardState::default(), vec![]);
        elect(&mut fresh, 3);
        assert!(fresh.follower_lag().is_empty());
        ack(&mut fresh, 2, 0);
        let known: Vec<String> = fresh.follower_lag().into_iter().map(|f| f.0.0).collect();
        assert_eq!(known, vec!["n3".to_string()]);
        // Entries appended at ticks 0, 0, 5 and 9 after the no-op; n2 takes them all, n3 the
        // first two only.
        let mut at = Vec::new();
        // (n2's heartbeat replies keep the leader in office.)
        for (i, wait) in [0, 0, 5, 4].into_iter().enumerate() {
            for _ in 0..wait {
                r.tick();
                ack(&mut r, 1, noop);
            }
            at.push(r.propose(i as u64, put("k"), 1).expect("leader").counter);
        }
        for _ in 0..6 {
            r.tick(); // now: 15 ticks after the first of them
            ack(&mut r, 1, noop);
        }
        ack(&mut r, 1, at[3]);
        ack(&mut r, 2, at[1]);
        // n3 lacks the one appended 5 ticks in: 10 ticks ago.
        assert_eq!(lag(&r), vec![(0, 0), (2, 10)]);
        ack(&mut r, 2, at[2]);
        assert_eq!(lag(&r), vec![(0, 0), (1, 6)], "then the one of tick 9");
        ack(&mut r, 2, at[3]);
        assert_eq!(lag(&r), vec![(0, 0), (0, 0)]);
        // A new entry is 0 ticks old; the append times no follower needs are forgotten.
        let v = r.propose(9, put("k"), 1).expect("leader");
        assert_eq!(lag(&r), vec![(1, 0), (1, 0)]);
        ack(&mut r, 1, v.counter);
        ack(&mut r, 2, v.counter);
        assert_eq!(r.appended_at.len(), 1, "{:?}", r.appended_at);
    }

    #[test]
    fn append_times_stay_bounded_for_a_follower_missing_entries_for_long() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        // One entry per tick for 10,000 ticks; n2 holds everything, n3 nothing after the
        // election's no-op.
        let noop = r.last_index().0;
        ack(&mut r, 2, noop);
        let first = r.propose(0, put("k"), 1).expect("leader").counter;
        let first_tick = r.now;
        let mut at = vec![(first, first_tick)];
        for i in 1..10_000 {
            r.tick();
            let v = r.propose(i, put("k"), 1).expect("leader").counter;
            at.push((v, r.now));
            ack(&mut r, 1, v);
        }
        assert!(
            r.appended_at.len() <= APPENDED_AT_MAX,
            "{}",
            r.appended_at.len()
        );
        let lag_of_n3 = |r: &Replica| r.follower_lag()[1].2;
        // The oldest entry missing keeps its exact age.
        assert_eq!(lag_of_n3(&r), r.now - first_tick);
        // Further on, the age is overstated by at most the gap thinning left, never understated.
        let (held, _) = at[6_000];
        ack(&mut r, 2, held);
        let (_, true_tick) = at[6_001];
        let gap = 10_000 / (APPENDED_AT_MAX as u64 / 2);
        let lag = lag_of_n3(&r);
        assert!(
            lag >= r.now - true_tick && lag <= r.now - true_tick + gap,
            "{lag} for an entry {} ticks old",
            r.now - true_tick
        );
    }

    #[test]
    fn single_node_elects_itself_and_commits_its_noop_once_durable() {
        // Reference: §5.2 (a candidate with a majority of votes wins; one node is a majority).
        let mut r = replica(0, 1, HardState::default(), vec![]);
        for _ in 0..20 {
            r.tick();
        }
        assert_eq!(r.role(), Role::Leader);
        let actions = r.take_actions();
        assert_eq!(
            actions,
            vec![
                Action::PersistHardState(HardState {
                    term: Term(1),
                    voted_for: Some(0)
                }),
                Action::PersistEntries(vec![Entry {
                    term: Term(1),
                    index: LogIndex(1),
                    cmd: Command::Noop
                }]),
            ]
        );
        assert_eq!(
            r.commit_index(),
            LogIndex(0),
            "not durable yet: not committed"
        );
        r.persisted(LogIndex(1));
        assert_eq!(r.commit_index(), LogIndex(1));
        assert!(matches!(&r.take_actions()[..], [Action::Apply(es)] if es.len() == 1));
    }

    #[test]
    fn follower_that_just_voted_refuses_pre_votes_for_the_next_term() {
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(2),
                voted_for: None,
            },
            vec![],
        );
        let pre_vote = Message::PreVote {
            term: Term(4),
            last_index: LogIndex(9),
            last_term: Term(2),
        };
        let granted = |a: &[Action]| {
            a.iter().any(|x| {
                matches!(
                    x,
                    Action::Send {
                        msg: Message::PreVoteReply { granted: true, .. },
                        ..
                    }
                )
            })
        };
        r.step(
            &ids(3)[0],
            Message::RequestVote {
                term: Term(3),
                last_index: LogIndex(0),
                last_term: Term(0),
            },
        );
        assert_eq!(r.hard_state().voted_for, Some(0));
        r.hard_state_persisted();
        r.take_actions();
        // n1 may be about to win term 3 (its other votes may still be on their way from slow
        // disks): n3 gets no help to start term 4 over it, as if n2 had just heard a leader.
        for _ in 0..9 {
            r.tick();
        }
        r.step(&ids(3)[2], pre_vote.clone());
        assert!(!granted(&r.take_actions()), "granted within the timeout");
        assert_eq!(r.term(), Term(3));
        // An election timeout after its vote went out and no leader heard: n1 did not win.
        r.tick();
        r.step(&ids(3)[2], pre_vote);
        assert!(granted(&r.take_actions()), "refused after the timeout");
    }

    #[test]
    fn follower_that_hears_from_its_leader_refuses_pre_votes_and_keeps_its_term() {
        // Reference: thesis §9.6 (PreVote) with leader stickiness.
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(2),
                voted_for: None,
            },
            vec![],
        );
        r.step(&ids(3)[0], append(2, (0, 0), vec![], 0));
        r.take_actions();
        r.step(
            &ids(3)[2],
            Message::PreVote {
                term: Term(3),
                last_index: LogIndex(9),
                last_term: Term(2),
            },
        );
        assert_eq!(
            r.take_actions(),
            vec![Action::Send {
                to: ids(3)[2].clone(),
                msg: Message::PreVoteReply {
                    term: Term(2),
                    granted: false
                }
            }],
            "no vote persisted, no term change"
        );
        assert_eq!(r.term(), Term(2));
        // Once the leader has been silent for the election timeout, it would vote.
        for _ in 0..15 {
            r.tick();
        }
        r.take_actions();
        r.step(
            &ids(3)[2],
            Message::PreVote {
                term: Term(3),
                last_index: LogIndex(9),
                last_term: Term(2),
            },
        );
        let a = r.take_actions();
        assert!(
            a.contains(&Action::Send {
                to: ids(3)[2].clone(),
                msg: Message::PreVoteReply {
                    term: Term(3),
                    granted: true
                }
            }),
            "{a:?}"
        );
    }

    #[test]
    fn follower_with_stale_term_rejects_append() {
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(5),
                voted_for: None,
            },
            vec![],
        );
        r.step(&ids(3)[0], append(4, (0, 0), vec![entry(4, 1)], 1));
        assert_eq!(
            r.take_actions(),
            vec![Action::Send {
                to: ids(3)[0].clone(),
                msg: Message::AppendReply {
                    term: Term(5),
                    ok: false,
                    index: LogIndex(0),
                    read_seq: 0
                }
            }]
        );
        assert!(r.log().is_empty());
    }

    #[test]
    fn voter_refuses_a_candidate_whose_log_is_behind() {
        // Reference: §5.4.1 (the election restriction).
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(2),
                voted_for: None,
            },
            vec![entry(1, 1), entry(2, 2)],
        );
        r.step(
            &ids(3)[0],
            Message::RequestVote {
                term: Term(3),
                last_index: LogIndex(5),
                last_term: Term(1),
            },
        );
        let actions = r.take_actions();
        assert!(
            actions.contains(&Action::Send {
                to: ids(3)[0].clone(),
                msg: Message::Vote {
                    term: Term(3),
                    granted: false
                }
            }),
            "{actions:?}"
        );
        r.step(
            &ids(3)[2],
            Message::RequestVote {
                term: Term(3),
                last_index: LogIndex(2),
                last_term: Term(2),
            },
        );
        let actions = r.take_actions();
        assert_eq!(
            actions,
            vec![
                Action::PersistHardState(HardState {
                    term: Term(3),
                    voted_for: Some(2)
                }),
                Action::Send {
                    to: ids(3)[2].clone(),
                    msg: Message::Vote {
                        term: Term(3),
                        granted: true
                    }
                }
            ],
            "the vote is durable before it is sent"
        );
    }

    #[test]
    fn leader_acknowledges_w1_before_commit_and_w3_only_when_all_hold_it() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        let v1 = r.propose(1, put("a"), 1).expect("leader");
        let v3 = r.propose(3, put("b"), 3).expect("leader");
        r.take_actions();
        r.persisted(r.last_index());
        let acks = r.take_actions();
        assert_eq!(
            acks,
            vec![Action::Acked {
                id: 1,
                version: v1,
                acks: 1
            }]
        );
        assert_eq!(
            r.commit_index(),
            LogIndex(0),
            "W=1 is acknowledged before it commits"
        );
        let term = r.term();
        r.step(
            &ids(3)[1],
            Message::AppendReply {
                term,
                ok: true,
                index: LogIndex(3),
                read_seq: 0,
            },
        );
        let a = r.take_actions();
        assert!(
            matches!(&a[..], [Action::Apply(es)] if es.len() == 3),
            "{a:?}"
        );
        r.step(
            &ids(3)[2],
            Message::AppendReply {
                term,
                ok: true,
                index: LogIndex(3),
                read_seq: 0,
            },
        );
        assert_eq!(
            r.take_actions(),
            vec![Action::Acked {
                id: 3,
                version: v3,
                acks: 3
            }]
        );
    }

    /// A follower that learns at once that its whole long log is committed (every node
    /// restarted) hands it to the state machine `max_apply` entries at a time, in order: one
    /// chunk with the step, the rest one per `apply_more`. Copied in one `Apply`, 400,000
    /// entries held a real node up for 80-460 ms, and its leader stepped down
    /// (bench/results/restart/).
    #[test]
    fn a_long_committed_log_is_handed_over_a_chunk_at_a_time() {
        let log: Vec<Entry> = (1..=200).map(|i| entry(1, i)).collect();
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(1),
                voted_for: None,
            },
            log,
        );
        r.persisted(LogIndex(200));
        r.step(&ids(3)[0], append(1, (200, 1), vec![], 200));
        let applied = |a: Vec<Action>| -> Vec<u64> {
            a.iter()
                .filter_map(|a| match a {
                    Action::Apply(es) => Some(es.iter().map(|e| e.index.0)),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        let mut got = applied(r.take_actions());
        assert_eq!(got, (1..=64).collect::<Vec<_>>(), "the first chunk");
        assert_eq!(r.applied_index(), LogIndex(64));
        // The commit index moving again hands over nothing out of turn: however many
        // messages a pass steps, the backlog goes a chunk per `apply_more`.
        r.step(
            &ids(3)[0],
            append(1, (200, 1), (201..=210).map(|i| entry(1, i)).collect(), 210),
        );
        r.persisted(LogIndex(210));
        r.step(&ids(3)[0], append(1, (210, 1), vec![], 210));
        assert_eq!(r.commit_index(), LogIndex(210));
        assert_eq!(applied(r.take_actions()), Vec::<u64>::new());
        let mut calls = 0;
        while r.apply_more() {
            calls += 1;
            let chunk = applied(r.take_actions());
            assert!(chunk.len() <= 64, "{} entries in one Apply", chunk.len());
            got.extend(chunk);
        }
        assert_eq!(calls, 3);
        assert_eq!(
            got,
            (1..=210).collect::<Vec<_>>(),
            "every entry once, in order"
        );
        assert_eq!(r.applied_index(), LogIndex(210));
        assert!(r.take_actions().is_empty());
        // Nothing not yet handed over may be compacted away.
        let mut r2 = replica(1, 3, HardState::default(), vec![]);
        r2.step(
            &ids(3)[0],
            append(1, (0, 0), (1..=100).map(|i| entry(1, i)).collect(), 100),
        );
        r2.persisted(LogIndex(100));
        r2.take_actions();
        assert!(!r2.compact(LogIndex(100), Bytes::new(), 0));
        assert!(r2.compact(LogIndex(64), Bytes::new(), 0));
    }

    #[test]
    fn follower_truncates_conflicting_entries_and_reports_them() {
        let mut r = replica(
            1,
            3,
            HardState {
                term: Term(1),
                voted_for: None,
            },
            vec![entry(1, 1), entry(1, 2), entry(1, 3)],
        );
        r.persisted(LogIndex(3));
        r.step(&ids(3)[0], append(2, (1, 1), vec![entry(2, 2)], 2));
        let a = r.take_actions();
        assert!(
            a.contains(&Action::Truncate {
                from: LogIndex(2),
                removed: vec![entry(1, 2), entry(1, 3)]
            }),
            "{a:?}"
        );
        assert!(
            a.contains(&Action::PersistEntries(vec![entry(2, 2)])),
            "{a:?}"
        );
        assert_eq!(r.last_index(), LogIndex(2));
        assert_eq!(r.commit_index(), LogIndex(2));
    }

    #[test]
    fn a_snapshot_replaces_a_diverged_log_and_reports_only_the_entries_the_leader_lacked() {
        // Entries 1-2 committed; 3-5 from a deposed term-1 leader, of which the new leader's
        // log kept 3 (same term) and replaced 4 and 5.
        let log: Vec<Entry> = (1..=5).map(|i| entry(1, i)).collect();
        let mut r = replica(1, 3, HardState::default(), log);
        r.persisted(LogIndex(5));
        r.step(&ids(3)[0], append(1, (5, 1), vec![], 2));
        r.take_actions();
        let snap = Snapshot {
            index: LogIndex(6),
            term: Term(2),
            terms: vec![(LogIndex(1), Term(1)), (LogIndex(4), Term(2))],
            data: Bytes::from_static(b"state"),
        };
        r.step(
            &ids(3)[2],
            Message::Snapshot {
                term: Term(2),
                snapshot: snap.clone(),
            },
        );
        let a = r.take_actions();
        assert!(
            a.contains(&Action::Restore {
                snapshot: snap.clone(),
                rolled_back: vec![entry(1, 4), entry(1, 5)],
            }),
            "{a:?}"
        );
        // It answers that it holds everything through the snapshot (once the batch is durable).
        assert!(
            a.iter().any(|x| matches!(
                x,
                Action::Send {
                    msg: Message::AppendReply {
                        ok: true,
                        index: LogIndex(6),
                        ..
                    },
                    ..
                }
            )),
            "{a:?}"
        );
        assert_eq!(
            (r.commit_index(), r.applied_index(), r.last_index()),
            (LogIndex(6), LogIndex(6), LogIndex(6))
        );
        // The next entry from the leader follows the snapshot.
        r.step(&ids(3)[2], append(2, (6, 2), vec![entry(2, 7)], 7));
        let a = r.take_actions();
        assert!(a.contains(&Action::Apply(vec![entry(2, 7)])), "{a:?}");
    }

    /// Appends to a follower behind stop at `max_batch_bytes` of entries, and carry at least
    /// one however large.
    #[test]
    fn an_append_to_a_follower_behind_stops_at_its_byte_limit() {
        for (limit, want) in [(u64::MAX, 7), (2_500, 4), (10, 1)] {
            let mut r = replica(0, 3, HardState::default(), vec![]);
            r.cfg.max_batch_bytes = limit;
            elect(&mut r, 3); // a no-op at index 1
            for i in 0..6 {
                let big = Command::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from(vec![b'v'; 1_000]),
                };
                r.propose(i, big, 1).expect("propose");
            }
            r.take_actions();
            // n2 has nothing: its refusal rewinds it to the start of the log.
            r.step(
                &ids(3)[1],
                Message::AppendReply {
                    term: r.term(),
                    ok: false,
                    index: LogIndex(0),
                    read_seq: 0,
                },
            );
            let sizes: Vec<usize> = r
                .take_actions()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Send {
                        to,
                        msg: Message::Append { entries, .. },
                    } if to == ids(3)[1] => Some(entries.len()),
                    _ => None,
                })
                .collect();
            // The no-op (32) and 1,033 bytes a put: 2,500 is passed by the third put.
            assert_eq!(sizes, [want], "limit {limit}");
        }
    }

    #[test]
    fn a_leader_sends_its_snapshot_to_a_follower_behind_its_compacted_log_once_per_timeout() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        for i in 0..10 {
            r.propose(i, put("k"), 1).expect("propose");
        }
        r.take_actions();
        r.persisted(LogIndex(11));
        r.step(
            &ids(3)[2],
            Message::AppendReply {
                term: r.term(),
                ok: true,
                index: LogIndex(11),
                read_seq: 0,
            },
        );
        r.take_actions();
        assert_eq!(r.applied_index(), LogIndex(11));
        assert!(r.compact(LogIndex(11), Bytes::from_static(b"state"), 2));
        assert_eq!((r.log_base(), r.log().len()), (LogIndex(9), 2));
        // n2 was away and has nothing: its refusal rewinds it behind the log.
        let refuse = Message::AppendReply {
            term: r.term(),
            ok: false,
            index: LogIndex(0),
            read_seq: 0,
        };
        r.step(&ids(3)[1], refuse.clone());
        let sent = |a: &[Action]| {
            a.iter()
                .filter(|x| {
                    matches!(
                        x,
                        Action::Send {
                            msg: Message::Snapshot { .. },
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(sent(&r.take_actions()), 1);
        // Refused again while it installs: no second copy until an election timeout passes.
        r.step(&ids(3)[1], refuse.clone());
        assert_eq!(sent(&r.take_actions()), 0);
        // n3 answers the heartbeats meanwhile: the leader keeps its majority.
        let heartbeat_ack = Message::AppendReply {
            term: r.term(),
            ok: true,
            index: LogIndex(11),
            read_seq: 0,
        };
        for _ in 0..10 {
            r.tick();
            r.step(&ids(3)[2], heartbeat_ack.clone());
        }
        r.step(&ids(3)[1], refuse.clone());
        assert_eq!(sent(&r.take_actions()), 1);

        // A 3 MiB snapshot waits an election timeout per MiB started (40 ticks) before it goes
        // again: copies of a large one would pile up while the first is still being installed.
        r.propose(99, put("k"), 1).expect("propose");
        r.take_actions();
        r.persisted(LogIndex(12));
        let ack = Message::AppendReply {
            term: r.term(),
            ok: true,
            index: LogIndex(12),
            read_seq: 0,
        };
        r.step(&ids(3)[2], ack);
        r.take_actions();
        assert!(r.compact(LogIndex(12), Bytes::from(vec![0u8; 3 << 20]), 0));
        // The host keeps the data in a file: the snapshot goes out without it (the host fills
        // it in), and its size still paces the copies.
        r.release_snapshot_data();
        let mut copies = Vec::new();
        for _ in 0..9 {
            for _ in 0..5 {
                r.tick();
            }
            r.step(&ids(3)[1], refuse.clone());
            let actions = r.take_actions();
            for a in &actions {
                if let Action::Send {
                    msg: Message::Snapshot { snapshot, .. },
                    ..
                } = a
                {
                    assert_eq!((snapshot.index, snapshot.data.len()), (LogIndex(12), 0));
                }
            }
            copies.push(sent(&actions));
        }
        // Sent at tick 10; due again at tick 50, i.e. after the 8th round of 5 ticks.
        assert_eq!(copies, vec![0, 0, 0, 0, 0, 0, 0, 1, 0], "{copies:?}");
    }

    #[test]
    fn a_truncated_entry_that_is_committed_after_all_is_reported_as_survived() {
        let mut r = replica(1, 5, HardState::default(), vec![entry(1, 1), entry(1, 2)]);
        r.persisted(LogIndex(2));
        // A term-2 leader without entry 2 replaces it: reported (Truncate), fate open.
        r.step(&ids(5)[2], append(2, (1, 1), vec![entry(2, 2)], 1));
        let a = r.take_actions();
        assert!(
            a.iter().any(
                |x| matches!(x, Action::Truncate { removed, .. } if removed == &vec![entry(1, 2)])
            ),
            "{a:?}"
        );
        // That leader fails; a term-3 leader that held (2, 1) brings it back and commits it.
        r.step(
            &ids(5)[0],
            append(3, (1, 1), vec![entry(1, 2), entry(3, 3)], 3),
        );
        let a = r.take_actions();
        assert!(
            a.contains(&Action::Survived(vec![entry(1, 2)])),
            "the truncated entry was committed after all: {a:?}"
        );
        // Entries truncated and then replaced by the committed log's own stay rolled back.
        let mut r = replica(1, 3, HardState::default(), vec![entry(1, 1), entry(1, 2)]);
        r.step(&ids(3)[2], append(2, (1, 1), vec![entry(2, 2)], 2));
        let a = r.take_actions();
        assert!(!a.iter().any(|x| matches!(x, Action::Survived(_))), "{a:?}");
    }

    #[test]
    fn leader_that_hears_from_no_majority_steps_down_and_abandons_requests() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        r.propose(9, put("x"), 2).expect("leader");
        // One election timeout (10 ticks) after the last reply, not at the next of checks an
        // election timeout apart: those let it lead for up to two. Not one tick later either:
        // in seed 34343773 of the one-way partition simulation, that tick made a leader
        // nobody heard count as leading beside its successor.
        let mut ticks = 0;
        while r.role() == Role::Leader {
            r.tick();
            ticks += 1;
            assert!(
                ticks <= 10,
                "still leads {ticks} ticks after its last reply"
            );
        }
        assert_eq!(ticks, 10);
        assert_eq!(r.role(), Role::Follower);
        assert!(r.take_actions().contains(&Action::Unknown { id: 9 }));
        assert!(matches!(
            r.propose(10, put("y"), 1),
            Err(ReplicaError::NotLeader { leader: None })
        ));
    }

    #[test]
    fn read_index_waits_for_a_majority_to_confirm_leadership() {
        let mut r = replica(0, 3, HardState::default(), vec![]);
        elect(&mut r, 3);
        let term = r.term();
        r.step(
            &ids(3)[1],
            Message::AppendReply {
                term,
                ok: true,
                index: LogIndex(1),
                read_seq: 0,
            },
        );
        r.take_actions();
        r.read(5).expect("leader");
        let sent = r.take_actions();
        assert!(
            sent.iter().all(|a| matches!(
                a,
                Action::Send {
                    msg: Message::Append { read_seq: 1, .. },
                    ..
                }
            )),
            "{sent:?}"
        );
        r.step(
            &ids(3)[2],
            Message::AppendReply {
                term,
                ok: true,
                index: LogIndex(1),
                read_seq: 1,
            },
        );
        assert_eq!(
            r.take_actions(),
            vec![Action::ReadReady {
                id: 5,
                index: LogIndex(1)
            }]
        );
    }
}
