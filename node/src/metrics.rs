//! Prometheus metrics (OpenMetrics text) and the admin HTTP server: `/metrics`, `/healthz`,
//! `/readyz`, served with hyper on `--admin-listen`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::driver::DriverHandle;
use crate::leaderless::LlHandle;
use crate::storage::{FlushObserver, Storage};
use crate::transport::Refusals;

/// Labels of request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// get, put, delete, cas.
    pub op: &'static str,
    /// gRPC status code name, lower case (ok, invalid_argument, unavailable, ...).
    pub code: &'static str,
}

/// Labels of latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// get, put, delete, cas.
    pub op: &'static str,
}

/// Labels of the per-follower replication lag gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

/// Labels of the leader gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaderLabels {
    leader: String,
}

/// Labels of the peer reachability gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// Labels of the node-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// Node id.
    pub id: String,
    /// Replication mode.
    pub mode: String,
    /// N/R/W as configured.
    pub quorum: String,
    /// Storage engine and fsync policy.
    pub storage: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 25 µs .. ~13 s.
    Histogram::new(exponential_buckets(25e-6, 2.0, 20))
}

/// A client request counted in `kv_requests_in_flight` while this lives.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by op and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by op, as the server sees it.
    pub request_seconds: HistogramFamily<OpLabels>,
    /// Client requests being served now (leader-follower: engages `--proposal-window`).
    pub requests_in_flight: Gauge,
    /// Writes a leader held for its proposal window before proposing them.
    pub proposals_held: Counter,
    /// Time of one log write + fsync.
    pub fsync_seconds: Histogram,
    /// Records made durable by one fsync (group commit at work).
    pub fsync_batch_records: Histogram,
    /// Time a flush waited for more writes before its fsync (group commit gathering and
    /// `--group-commit-window`).
    pub fsync_gather_seconds: Histogram,
    /// Tombstones purged after their grace period.
    pub tombstones_purged: Counter,
    storage_keys: Gauge,
    storage_tombstones: Gauge,
    storage_live_bytes: Gauge,
    storage_disk_bytes: Gauge,
    storage_last_lsn: Gauge,
    storage_durable_lsn: Gauge,
    /// Degraded responses (on_quorum_loss=degrade fell back).
    pub degraded_responses: Counter,
    /// Reads answered marked stale (served without the leader's or a quorum's confirmation).
    pub stale_reads: Counter,
    /// The other members, for `peer_reachable`.
    peers: Vec<String>,
    peer_reachable: Family<PeerLabels, Gauge>,
    peer_refused: Family<PeerLabels, Gauge>,
    lag_entries: Family<FollowerLabels, Gauge>,
    lag_seconds: Family<FollowerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    term: Gauge,
    leader: Family<LeaderLabels, Gauge>,
    is_leader: Gauge,
    leaders_observed: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    rolled_back: Counter,
    snapshot_index: Gauge,
    log_entries: Gauge,
    snapshot_memory_bytes: Gauge,
    snapshots_taken: Counter,
    snapshots_installed: Counter,
    rollback_survivors: Counter,
    ll: LeaderlessMetrics,
}

/// Counters of leaderless replication, mirrored from the core's cumulative counts.
struct LeaderlessMetrics {
    conflicts: Counter,
    read_repairs: Counter,
    hints_stored: Counter,
    hints_delivered: Counter,
    hints_beyond_window: Counter,
    hints_expired: Counter,
    hints_pending: Gauge,
    tombstones_awaiting_repair: Gauge,
    ae_rounds: Counter,
    ae_repairs: Counter,
    quorum_failures: Counter,
    forwarded: Counter,
    forwards_declined: Counter,
    superseded: Counter,
    refills: Counter,
    refilling_answers: Counter,
    refilling: Gauge,
    peers_refilling: Gauge,
}

/// Raises `c` to `total` (the core's counts only grow).
fn catch_up(c: &Counter, total: u64) {
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

impl Metrics {
    /// Registers every metric; `info` labels the `kv_node_info` gauge; `peers` are the other
    /// members (none for a single node).
    pub fn new(info: InfoLabels, peers: Vec<String>) -> Self {
        let mut registry = Registry::with_prefix("kv");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by operation and gRPC code",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<OpLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Client request latency at the server, by operation",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Client requests received and not yet answered",
            requests_in_flight.clone(),
        );
        let proposals_held = Counter::default();
        registry.register(
            "proposals_held",
            "Leader-follower: writes the leader held for its --proposal-window (many client \
             requests in flight) and proposed together with the others that came meanwhile",
            proposals_held.clone(),
        );
        let fsync_seconds = latency_histogram();
        registry.register_with_unit(
            "fsync_duration",
            "Time of one log write and fsync (group commit shares it among many writes)",
            Unit::Seconds,
            fsync_seconds.clone(),
        );
        let fsync_batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "fsync_batch_records",
            "Writes made durable by one fsync",
            fsync_batch_records.clone(),
        );
        let fsync_gather_seconds = latency_histogram();
        registry.register_with_unit(
            "fsync_gather",
            "Time a flush waited for more writes before its fsync (group commit gathering the \
             writers the last flush acknowledged, and --group-commit-window)",
            Unit::Seconds,
            fsync_gather_seconds.clone(),
        );
        let tombstones_purged = Counter::default();
        registry.register(
            "tombstones_purged",
            "Tombstones removed after their grace period",
            tombstones_purged.clone(),
        );
        let degraded_responses = Counter::default();
        registry.register(
            "degraded_responses",
            "Responses that fell back to weaker consistency than asked",
            degraded_responses.clone(),
        );
        let stale_reads = Counter::default();
        registry.register(
            "stale_reads",
            "Reads answered marked stale: served without the leader's or a quorum's \
             confirmation (follower and local reads, degraded reads, R+W<=N), so they may miss \
             acknowledged writes",
            stale_reads.clone(),
        );
        let peer_reachable = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_reachable",
            "1 while this node reaches the peer: a leader heard from it within an election \
             timeout; other nodes are connected to it and no partition cuts it off",
            peer_reachable.clone(),
        );
        let peer_refused = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_refused",
            "1 while this node refuses the peer's connections: its mode, members, N or vnodes \
             differ from this node's, it expected another node at this address, or \
             (leader-follower) it came back on an empty data directory (kvctl status says which)",
            peer_refused.clone(),
        );
        let lag_entries = Family::<FollowerLabels, Gauge>::default();
        registry.register(
            "replication_lag_entries",
            "Leader only: log entries each follower has yet to make durable",
            lag_entries.clone(),
        );
        let lag_seconds =
            Family::<FollowerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "replication_lag",
            "Leader only: age of the oldest entry each follower has yet to make durable (how \
             long ago the leader had what the follower has now; 0 when it has everything)",
            Unit::Seconds,
            lag_seconds.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let g = Gauge::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, g.clone()),
                None => registry.register(name, help, g.clone()),
            }
            g
        };
        let storage_keys = gauge(&mut registry, "storage_keys", "Keys holding a value", None);
        let storage_tombstones = gauge(
            &mut registry,
            "storage_tombstones",
            "Tombstones not yet purged",
            None,
        );
        let storage_live_bytes = gauge(
            &mut registry,
            "storage_live",
            "Bytes of keys and values held",
            Some(Unit::Bytes),
        );
        let storage_disk_bytes = gauge(
            &mut registry,
            "storage_disk",
            "Bytes of log segments and snapshots on disk",
            Some(Unit::Bytes),
        );
        let storage_last_lsn = gauge(
            &mut registry,
            "storage_last_lsn",
            "Highest log sequence number assigned",
            None,
        );
        let storage_durable_lsn = gauge(
            &mut registry,
            "storage_durable_lsn",
            "Highest log sequence number known durable",
            None,
        );
        let term = gauge(
            &mut registry,
            "term",
            "Current term (leader-follower)",
            None,
        );
        let is_leader = gauge(&mut registry, "is_leader", "1 while this node leads", None);
        let leader = Family::<LeaderLabels, Gauge>::default();
        registry.register(
            "leader",
            "1, labelled with the leader this node follows (itself when it leads); absent while \
             it knows none",
            leader.clone(),
        );
        let leaders_observed = gauge(
            &mut registry,
            "leaders_observed",
            "Nodes this node heard claiming leadership at overlapping times (one still heard an \
             election timeout after the other began) in the last 30 s, itself included while it \
             leads (leader-follower); 2 or more: split brain",
            None,
        );
        let commit_index = gauge(
            &mut registry,
            "commit_index",
            "Replicated log commit index",
            None,
        );
        let applied_index = gauge(
            &mut registry,
            "applied_index",
            "Replicated log entries applied to the state machine",
            None,
        );
        let rolled_back = Counter::default();
        registry.register(
            "rolled_back_writes",
            "Writes removed from this node's log by a new leader (kept in rollback.jsonl)",
            rolled_back.clone(),
        );
        let snapshot_index = gauge(
            &mut registry,
            "snapshot_index",
            "Leader-follower: last log index covered by this node's snapshot (0: none yet)",
            None,
        );
        let log_entries = gauge(
            &mut registry,
            "log_entries",
            "Leader-follower: entries held in this node's log (compaction keeps it bounded)",
            None,
        );
        let snapshot_memory_bytes = gauge(
            &mut registry,
            "snapshot_memory",
            "Leader-follower: bytes of this node's snapshot held in memory (0: read from its file when a follower needs it)",
            Some(Unit::Bytes),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let snapshots_taken = counter(
            "snapshots_taken",
            "Leader-follower: snapshots this node took to compact its log",
        );
        let snapshots_installed = counter(
            "snapshots_installed",
            "Leader-follower: snapshots this node installed from a leader (it was too far behind)",
        );
        let rollback_survivors = counter(
            "rollback_survivors",
            "Leader-follower: writes this node listed in rollback.jsonl that were committed after all (another node held them and led); each also gets a survived line there",
        );
        let ll = LeaderlessMetrics {
            conflicts: counter(
                "conflicting_writes",
                "Concurrent writes detected (neither causally after the other), resolved by last-writer-wins",
            ),
            read_repairs: counter(
                "read_repairs",
                "Stale replicas sent the newest version by a read",
            ),
            hints_stored: counter(
                "hints_stored",
                "Writes this node stored as hints for unreachable replicas",
            ),
            hints_delivered: counter(
                "hints_delivered",
                "Hints this node delivered to their replica",
            ),
            hints_beyond_window: counter(
                "hints_beyond_window",
                "Hints not kept: their replica was unreachable longer than --max-hint-window",
            ),
            hints_expired: counter(
                "hints_expired",
                "Hints received older than --tombstone-grace for keys this node held nothing of, not stored (a delete after them may have been purged)",
            ),
            hints_pending: Gauge::default(),
            tombstones_awaiting_repair: Gauge::default(),
            ae_rounds: counter(
                "anti_entropy_rounds",
                "Merkle-tree exchanges this node started",
            ),
            ae_repairs: counter(
                "anti_entropy_repairs",
                "Copies on this node changed by anti-entropy",
            ),
            quorum_failures: counter(
                "quorum_failures",
                "Requests coordinated here that missed their R or W (failed or degraded)",
            ),
            forwarded: counter(
                "forwarded_writes",
                "Writes forwarded to the first replica of their key",
            ),
            forwards_declined: counter(
                "forwards_declined",
                "Writes forwarded to this node that it declined to coordinate, not sure yet that it is not back empty (the forwarder sent them to the next replica)",
            ),
            refills: counter(
                "refills",
                "Refills this node finished: back empty (its data directory lost, or started again in memory), it pulled every key it replicates from its peers before its read answers counted again",
            ),
            refilling_answers: counter(
                "read_answers_uncounted",
                "Read answers from replicas refilling (or not yet known not to be back empty), not counted toward R",
            ),
            refilling: Gauge::default(),
            peers_refilling: Gauge::default(),
            superseded: counter(
                "superseded_writes",
                "Writes coordinated here, acknowledged, and hidden on a replica that acknowledged them by a concurrent write with a higher version it already held (last-writer-wins; the answer's superseded_on names it)",
            ),
        };
        registry.register(
            "hints_pending",
            "Hints this node holds, waiting for their replica",
            ll.hints_pending.clone(),
        );
        registry.register(
            "refilling",
            "1 while this node, back empty, refills itself from its peers (its read answers do not count meanwhile)",
            ll.refilling.clone(),
        );
        registry.register(
            "peers_refilling",
            "Peers this node takes to be refilling (their read answers do not count)",
            ll.peers_refilling.clone(),
        );
        registry.register(
            "tombstones_awaiting_repair",
            "Tombstones past their grace period kept at the last purge round because a replica of their key was not yet known to hold them (--tombstone-gc repair)",
            ll.tombstones_awaiting_repair.clone(),
        );
        let node_info = Family::<InfoLabels, Gauge>::default();
        node_info.get_or_create(&info).set(1);
        registry.register("node_info", "This node's id and configuration", node_info);
        Metrics {
            registry,
            requests,
            request_seconds,
            requests_in_flight,
            proposals_held,
            fsync_seconds,
            fsync_batch_records,
            fsync_gather_seconds,
            tombstones_purged,
            storage_keys,
            storage_tombstones,
            storage_live_bytes,
            storage_disk_bytes,
            storage_last_lsn,
            storage_durable_lsn,
            degraded_responses,
            stale_reads,
            peers,
            peer_reachable,
            peer_refused,
            lag_entries,
            lag_seconds,
            term,
            leader,
            is_leader,
            leaders_observed,
            commit_index,
            applied_index,
            rolled_back,
            snapshot_index,
            log_entries,
            snapshot_memory_bytes,
            snapshots_taken,
            snapshots_installed,
            rollback_survivors,
            ll,
        }
    }

    /// An observer for a log's flushes that feeds the fsync histograms and warns of flushes
    /// slower than `slow` allows.
    pub fn flush_observer(&self, slow: SlowFlushes) -> FlushObserver {
        let secs = self.fsync_seconds.clone();
        let batch = self.fsync_batch_records.clone();
        let gather = self.fsync_gather_seconds.clone();
        let limit = slow.limit;
        let slow = std::sync::Mutex::new(slow);
        Arc::new(move |d: Duration, n: usize, waited: Duration| {
            secs.observe(d.as_secs_f64());
            batch.observe(n as f64);
            gather.observe(waited.as_secs_f64());
            if d > limit
                && let Ok(mut s) = slow.lock()
            {
                s.observe(d, Instant::now());
            }
        })
    }

    /// Counts a client request in flight until the returned guard is dropped (answered, or
    /// given up by the client).
    pub fn request_started(&self) -> InFlight<'_> {
        self.requests_in_flight.inc();
        InFlight(&self.requests_in_flight)
    }

    /// Counts one finished request.
    pub fn observe_request(&self, op: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                op,
                code: code_name(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders every metric, refreshing the storage gauges first.
    pub fn render(
        &self,
        storage: &dyn Storage,
        replica: Option<&DriverHandle>,
        leaderless: Option<&LlHandle>,
        refusing: &Refusals,
    ) -> String {
        let s = storage.stats();
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        if let Some(h) = leaderless {
            let st = h.stats();
            let m = &self.ll;
            catch_up(&m.conflicts, st.conflicts);
            catch_up(&m.read_repairs, st.read_repairs);
            catch_up(&m.hints_stored, st.hints_stored);
            catch_up(&m.hints_delivered, st.hints_delivered);
            catch_up(&m.hints_beyond_window, st.hints_beyond_window);
            catch_up(&m.hints_expired, st.hints_expired);
            catch_up(&m.ae_rounds, st.ae_rounds);
            catch_up(&m.ae_repairs, st.ae_repairs);
            catch_up(&m.quorum_failures, st.quorum_failures);
            catch_up(&m.forwarded, st.forwarded);
            catch_up(&m.forwards_declined, st.forwards_declined);
            catch_up(&m.superseded, st.superseded_writes);
            catch_up(&m.refills, st.refills);
            catch_up(&m.refilling_answers, st.refilling_answers);
            let (refilling, peers) = h.refill_state();
            set(&m.refilling, u64::from(refilling));
            set(&m.peers_refilling, peers.len() as u64);
            catch_up(&self.tombstones_purged, st.tombstones_purged);
            set(&m.hints_pending, h.hints_pending());
            set(&m.tombstones_awaiting_repair, st.tombstones_awaiting_repair);
        }
        // Leader-follower: one snapshot of the replica's status for every gauge below.
        let replica = replica.map(|d| (d, d.status()));
        let reachable = match (&replica, leaderless) {
            (Some((_, st)), _) => Some(st.reachable.clone()),
            (None, Some(h)) => Some(h.reachable()),
            (None, None) => None,
        };
        if let Some(reachable) = reachable {
            let refused = refusing.list();
            for p in &self.peers {
                let labels = PeerLabels { peer: p.clone() };
                let up = reachable.iter().any(|r| r.0 == *p);
                self.peer_reachable
                    .get_or_create(&labels)
                    .set(i64::from(up));
                let no = refused.iter().any(|(r, _)| r.0 == *p);
                self.peer_refused.get_or_create(&labels).set(i64::from(no));
            }
        }
        if let Some((d, st)) = replica {
            // Only a leader knows its followers' lag, and only of those that answered in its
            // term: no stale series from an earlier term or of a follower not heard since.
            self.lag_entries.clear();
            self.lag_seconds.clear();
            for (f, entries, behind) in &st.follower_lag {
                let l = FollowerLabels {
                    follower: f.0.clone(),
                };
                set(&self.lag_entries.get_or_create(&l), *entries);
                self.lag_seconds.get_or_create(&l).set(behind.as_secs_f64());
            }
            set(&self.term, st.term);
            set(&self.is_leader, u64::from(st.role == "leader"));
            self.leader.clear();
            if let Some(l) = &st.leader {
                self.leader
                    .get_or_create(&LeaderLabels {
                        leader: l.0.clone(),
                    })
                    .set(1);
            }
            set(&self.leaders_observed, u64::from(st.leaders_observed));
            set(&self.commit_index, st.commit);
            set(&self.applied_index, st.applied);
            set(&self.snapshot_index, st.snapshot_index);
            set(&self.log_entries, st.log_entries);
            set(&self.snapshot_memory_bytes, st.snapshot_memory_bytes);
            catch_up(&self.snapshots_taken, st.snapshots_taken);
            catch_up(&self.snapshots_installed, st.snapshots_installed);
            catch_up(&self.rollback_survivors, st.rollback_survivors);
            catch_up(
                &self.rolled_back,
                d.rolled_back.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        set(&self.storage_keys, s.live_keys);
        set(&self.storage_tombstones, s.tombstones);
        set(&self.storage_live_bytes, s.live_bytes);
        set(&self.storage_disk_bytes, s.disk_bytes);
        set(&self.storage_last_lsn, s.last_lsn);
        set(&self.storage_durable_lsn, s.durable_lsn);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The lower-case name of a gRPC code, as used in metric labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Warns, in the log, of flushes (write and fsync) that take longer than the protocol's timers
/// allow, as etcd warns of a slow fdatasync: the metrics show it only to whoever looks. At most
/// one warning per [`SlowFlushes::EVERY`], with how many were slow since the last and the
/// slowest.
pub struct SlowFlushes {
    limit: Duration,
    file: &'static str,
    cost: String,
    warned: Option<Instant>,
    count: u64,
    worst: Duration,
}

impl SlowFlushes {
    /// How often a warning may be logged.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Flushes of `file` slower than `limit` are warned of, saying what they cost (`cost`).
    pub fn new(file: &'static str, limit: Duration, cost: String) -> SlowFlushes {
        SlowFlushes {
            limit,
            file,
            cost,
            warned: None,
            count: 0,
            worst: Duration::ZERO,
        }
    }

    /// Takes one flush's duration at `now`; returns the count and slowest flush it warns of.
    pub fn observe(&mut self, took: Duration, now: Instant) -> Option<(u64, Duration)> {
        if took <= self.limit {
            return None;
        }
        self.count += 1;
        self.worst = self.worst.max(took);
        if self
            .warned
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            return None;
        }
        let report = (
            std::mem::take(&mut self.count),
            std::mem::take(&mut self.worst),
        );
        self.warned = Some(now);
        tracing::warn!(
            file = self.file,
            slow_flushes = report.0,
            slowest_ms = report.1.as_millis() as u64,
            limit_ms = self.limit.as_millis() as u64,
            "slow fsync: {}",
            self.cost
        );
        Some(report)
    }
}

/// What the admin server needs to answer.
pub struct AdminState {
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// The storage, for gauges.
    pub storage: Arc<dyn Storage>,
    /// The replica driver, in replicated mode.
    pub replica: Option<DriverHandle>,
    /// The leaderless driver, in leaderless mode.
    pub leaderless: Option<LlHandle>,
    /// The peers this node refuses.
    pub refusing: Refusals,
    /// True once the gRPC server accepts requests, false again while shutting down.
    pub ready: Arc<AtomicBool>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(
                state.storage.as_ref(),
                state.replica.as_ref(),
                state.leaderless.as_ref(),
                &state.refusing,
            ),
        ),
        "/healthz" => reply(StatusCode::OK, text, "ok\n".into()),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, text, "ready\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "not ready\n".into())
            }
        }
        other => reply(
            StatusCode::NOT_FOUND,
            text,
            format!("no such path {other}: try /metrics, /healthz or /readyz\n"),
        ),
    })
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_flushes_are_warned_of_at_most_every_ten_seconds_with_a_count_and_the_slowest() {
        let ms = Duration::from_millis;
        let mut s = SlowFlushes::new("raft.log", ms(75), "elections can fail".into());
        let t0 = Instant::now();
        assert_eq!(s.observe(ms(75), t0), None, "at the limit is not slow");
        assert_eq!(
            s.observe(ms(80), t0),
            Some((1, ms(80))),
            "the first at once"
        );
        assert_eq!(s.observe(ms(300), t0 + ms(10)), None);
        assert_eq!(s.observe(ms(90), t0 + ms(9_000)), None);
        assert_eq!(s.observe(ms(5), t0 + ms(9_500)), None);
        assert_eq!(
            s.observe(ms(76), t0 + ms(10_000)),
            Some((3, ms(300))),
            "the next ten seconds on: the slow ones since and the slowest"
        );
        assert_eq!(s.observe(ms(76), t0 + ms(10_001)), None);
    }
}
