//! [`Node`]: what one node does with a request, independent of gRPC.
//!
//! With a single member (N=1) the node is its own leader in term 1: it orders writes itself,
//! versions them `(1, counter)` with a counter that never goes backwards, and acknowledges a
//! write (or shows a value) only once it is durable under the fsync policy.
//!
//! With several members in leader-follower mode, writes go through the replicated log (see
//! `driver`): the leader acknowledges once W replicas durably hold the entry, and versions are
//! `(term, index)`. Reads from the leader wait for read-index confirmation; `any` and `local`
//! reads are served from this replica's applied state and say they may be stale.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use kv_replica::{NodeId, Quorum, Version};

use crate::config::Settings;
use crate::driver::{DriveError, DriverHandle};
use crate::error::{Error, Result};
use crate::leaderless::LlHandle;
use crate::storage::{Entry, Storage, Write, now_ms};
use kv_proto::kv::v1::kv_client::KvClient;
use kv_replica::leader_follower::Command;
use kv_replica::leaderless::{Opts, QuorumFailure};

/// Where a read is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The leader, after confirming leadership.
    #[default]
    Leader,
    /// The contacted replica; may be stale.
    Any,
    /// The contacted node's own storage, no coordination.
    Local,
}

/// What to do when a quorum cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnQuorumLoss {
    /// Answer UNAVAILABLE with who answered.
    #[default]
    Fail,
    /// Answer with what could be had, marked degraded.
    Degrade,
}

/// Per-request consistency; `None` takes the configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Consistency {
    /// Read quorum override.
    pub r: Option<u32>,
    /// Write quorum override.
    pub w: Option<u32>,
    /// Where to read.
    pub read_from: Option<ReadFrom>,
    /// Quorum-loss behaviour.
    pub on_quorum_loss: Option<OnQuorumLoss>,
    /// How long the client waits (its gRPC deadline), if it said. A leaderless coordinator
    /// gives up a little before it, so that the client hears why (and, degraded, what could
    /// be had) rather than its own timeout.
    pub client_deadline: Option<Duration>,
}

/// What a response achieved (see `ResponseMeta` in kv.proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The coordinating node.
    pub coordinator: NodeId,
    /// Replicas counted.
    pub replicas: Vec<NodeId>,
    /// The value may be older than the newest acknowledged write.
    pub stale: bool,
    /// Applied index behind the commit index, where known.
    pub lag_entries: u64,
    /// Weaker than asked.
    pub degraded: bool,
    /// Achieved read quorum (reads) or write acknowledgements (writes).
    pub r: u32,
    /// Achieved write acknowledgements.
    pub w: u32,
    /// Where the read was served from.
    pub read_from: ReadFrom,
    /// Writes, leaderless: acknowledging replicas where a concurrent write with a higher version
    /// hides this one (last-writer-wins).
    pub superseded_on: Vec<NodeId>,
}

/// The answer to a read or a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The value, `None` when absent or deleted.
    pub value: Option<Bytes>,
    /// The value's version, or the tombstone's; `None` when never written.
    pub version: Option<Version>,
    /// Consistency achieved.
    pub meta: Meta,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The version given to the write.
    pub version: Version,
    /// Consistency achieved.
    pub meta: Meta,
}

/// The answer to a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The compare matched; the write is durable with this version.
    Applied(WriteOutcome),
    /// The compare did not match; nothing changed. The key's current state.
    NotApplied(ReadOutcome),
}

/// The request engine of one node.
pub struct Node {
    settings: Settings,
    storage: Arc<dyn Storage>,
    /// Present in replicated leader-follower mode: the driver of the replica.
    replication: Option<DriverHandle>,
    /// Present in leaderless mode: the driver of the leaderless core.
    leaderless: Option<LlHandle>,
    /// Clients of the other replicas, for R > 1 reads (connected lazily).
    peers: Vec<(NodeId, KvClient<tonic::transport::Channel>)>,
    /// Orders version assignment with the storage write (and a CAS with its compare).
    write_order: Mutex<()>,
}

/// The term of a single-node cluster: it is its own leader from the start, forever.
const SINGLE_NODE_TERM: u64 = 1;

impl Node {
    /// A node serving `storage` with `settings`.
    pub fn new(settings: Settings, storage: Arc<dyn Storage>) -> Self {
        Node {
            settings,
            storage,
            replication: None,
            leaderless: None,
            peers: Vec::new(),
            write_order: Mutex::new(()),
        }
    }

    /// A node whose requests are coordinated by the leaderless core driven by `handle`, over
    /// `storage` (this node's copies).
    pub fn new_leaderless(settings: Settings, storage: Arc<dyn Storage>, handle: LlHandle) -> Self {
        Node {
            leaderless: Some(handle),
            ..Node::new(settings, storage)
        }
    }

    /// The leaderless driver, in leaderless mode.
    pub fn leaderless(&self) -> Option<&LlHandle> {
        self.leaderless.as_ref()
    }

    /// A node whose writes and leader reads go through a replicated log driven by `driver`;
    /// `state` is the state machine the driver applies committed entries to.
    ///
    /// # Panics
    /// Outside a tokio runtime (peer channels connect lazily on it).
    pub fn replicated(settings: Settings, state: Arc<dyn Storage>, driver: DriverHandle) -> Self {
        let peers = settings
            .members
            .iter()
            .filter(|(id, _)| **id != settings.id)
            .filter_map(|(id, addr)| {
                let ep = tonic::transport::Endpoint::from_shared(crate::client::endpoint_uri(addr))
                    .ok()?;
                Some((id.clone(), KvClient::new(ep.connect_lazy())))
            })
            .collect();
        Node {
            peers,
            settings,
            storage: state,
            replication: Some(driver),
            leaderless: None,
            write_order: Mutex::new(()),
        }
    }

    /// The replica driver, in replicated mode.
    pub fn replication(&self) -> Option<&DriverHandle> {
        self.replication.as_ref()
    }

    fn drive_error(&self, e: DriveError) -> Error {
        match e {
            DriveError::NotLeader(leader) => Error::NotLeader(leader.map(|id| {
                let addr = self.settings.members.get(&id).cloned().unwrap_or_default();
                (id.0, addr)
            })),
            DriveError::Unknown => Error::Unknown(
                "leadership was lost before W replicas held the write; it may still be committed"
                    .into(),
            ),
            DriveError::Stopped(why) => Error::Unavailable(format!("replica stopped: {why}")),
            DriveError::Invalid(why) => Error::InvalidArgument(why),
        }
    }

    async fn replicated_get(
        &self,
        driver: &DriverHandle,
        key: &[u8],
        q: &Quorum,
        c: Consistency,
    ) -> Result<ReadOutcome> {
        let asked = c.read_from.unwrap_or_default();
        let mut served_from = asked;
        let mut degraded = false;
        if asked == ReadFrom::Leader {
            match driver.read_barrier().await {
                Ok(()) => {}
                Err(DriveError::NotLeader(_) | DriveError::Stopped(_))
                    if c.on_quorum_loss == Some(OnQuorumLoss::Degrade) =>
                {
                    // Serve what this replica has, and say so.
                    served_from = ReadFrom::Any;
                    degraded = true;
                }
                Err(e) => return Err(self.drive_error(e)),
            }
        }
        let (mut value, mut version) = self.durable_view(self.storage.get(key)).await?;
        let mut replicas = vec![self.settings.id.clone()];
        // R > 1 on a replica read: ask R-1 other replicas for their copies, keep the newest.
        if served_from == ReadFrom::Any && q.r > 1 {
            let need = q.r as usize - 1;
            let (answers, missing) = self.peer_reads(key, need).await;
            if answers.len() < need {
                if c.on_quorum_loss == Some(OnQuorumLoss::Degrade) {
                    degraded = true;
                } else {
                    return Err(Error::Unavailable(format!(
                        "{} of {} replicas needed, got {}: {}",
                        q.r,
                        self.settings.members.len(),
                        answers.len() + 1,
                        missing.join(", ")
                    )));
                }
            }
            for (id, v, ver) in answers {
                replicas.push(id);
                if ver > version {
                    value = v;
                    version = ver;
                }
            }
        }
        let st = driver.status();
        let leader_read = served_from == ReadFrom::Leader;
        let lag = st.leader_commit.saturating_sub(st.applied);
        let achieved_r = replicas.len() as u32;
        Ok(ReadOutcome {
            value,
            version,
            meta: Meta {
                stale: !leader_read && (st.role != "leader" || lag > 0),
                lag_entries: lag,
                degraded,
                r: achieved_r,
                replicas,
                ..self.meta(q, served_from)
            },
        })
    }

    /// Reads `key` from up to `need` other replicas (`read_from=local` on each), in parallel,
    /// within 1 s. Returns the answers and a description of each replica that did not answer.
    async fn peer_reads(
        &self,
        key: &[u8],
        need: usize,
    ) -> (Vec<(NodeId, Option<Bytes>, Option<Version>)>, Vec<String>) {
        let mut set = tokio::task::JoinSet::new();
        for (id, client) in &self.peers {
            let mut client = client.clone();
            let id = id.clone();
            let key = Bytes::copy_from_slice(key);
            set.spawn(async move {
                let mut req = tonic::Request::new(kv_proto::kv::v1::GetRequest {
                    key,
                    consistency: Some(kv_proto::kv::v1::Consistency {
                        read_from: kv_proto::kv::v1::ReadFrom::Local as i32,
                        ..Default::default()
                    }),
                });
                req.set_timeout(std::time::Duration::from_secs(1));
                let r =
                    tokio::time::timeout(std::time::Duration::from_secs(1), client.get(req)).await;
                (id, r)
            });
        }
        let mut answers = Vec::new();
        let mut missing = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((id, r)) = joined else { continue };
            match r {
                Ok(Ok(resp)) => {
                    let g = resp.into_inner();
                    let ver = g.version.map(|v| Version::new(v.epoch, v.counter));
                    answers.push((id, g.found.then_some(g.value), ver));
                    if answers.len() >= need {
                        break;
                    }
                }
                Ok(Err(status)) => missing.push(format!("{id} {}", status.code())),
                Err(_) => missing.push(format!("{id} timeout")),
            }
        }
        set.abort_all();
        (answers, missing)
    }

    async fn replicated_write(
        &self,
        driver: &DriverHandle,
        cmd: Command,
        q: &Quorum,
    ) -> Result<WriteOutcome> {
        let p = driver
            .propose(cmd, q.w)
            .await
            .map_err(|e| self.drive_error(e))?;
        Ok(WriteOutcome {
            version: p.version,
            meta: Meta {
                w: p.acks,
                ..self.meta(q, ReadFrom::Leader)
            },
        })
    }

    fn ll_opts(&self, quorum: u32, c: &Consistency) -> Opts {
        let configured = self.settings.config.request_timeout.0;
        Opts {
            quorum,
            timeout_ms: answer_within(configured, c.client_deadline).as_millis() as u64,
            degrade: c.on_quorum_loss == Some(OnQuorumLoss::Degrade),
        }
    }

    /// Whether a leaderless answer that met its quorum is still not promised to be fresh.
    fn ll_weak(&self, q: &Quorum) -> bool {
        !q.strongly_consistent() || self.settings.config.sloppy_quorum
    }

    async fn leaderless_get(
        &self,
        h: &LlHandle,
        key: &[u8],
        q: &Quorum,
        c: Consistency,
    ) -> Result<ReadOutcome> {
        let r = h
            .get(Bytes::copy_from_slice(key), self.ll_opts(q.r, &c))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .map_err(|f| Error::NoQuorum(f.to_string()))?;
        let (value, version) = match r.stored {
            Some(s) => (s.value, Some(s.version)),
            None => (None, None),
        };
        Ok(ReadOutcome {
            value,
            version,
            meta: Meta {
                coordinator: r.coordinator,
                r: r.responders.len() as u32,
                replicas: r.responders,
                stale: r.degraded || self.ll_weak(q),
                lag_entries: 0,
                degraded: r.degraded,
                w: q.w,
                read_from: c.read_from.unwrap_or(ReadFrom::Any),
                superseded_on: Vec::new(),
            },
        })
    }

    async fn leaderless_write(
        &self,
        h: &LlHandle,
        key: Bytes,
        value: Option<Bytes>,
        q: &Quorum,
        c: Consistency,
    ) -> Result<WriteOutcome> {
        let r = h
            .put(key, value, self.ll_opts(q.w, &c))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .map_err(|f: QuorumFailure| {
                if f.may_have_happened {
                    Error::Unknown(f.to_string())
                } else {
                    Error::NoQuorum(f.to_string())
                }
            })?;
        let mut replicas = r.acked;
        replicas.extend(r.hinted);
        Ok(WriteOutcome {
            version: r.version,
            meta: Meta {
                coordinator: r.coordinator,
                w: replicas.len() as u32,
                replicas,
                stale: false,
                lag_entries: 0,
                degraded: r.degraded,
                r: q.r,
                read_from: ReadFrom::Any,
                superseded_on: r.superseded_on,
            },
        })
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.settings.id
    }

    /// The validated settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The storage (for metrics and maintenance).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.settings.config.max_key_bytes;
        if key.is_empty() {
            return Err(Error::InvalidArgument("key is empty".into()));
        }
        if key.len() > max {
            return Err(Error::InvalidArgument(format!(
                "key is {} bytes, over max_key_bytes={max}",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.settings.config.max_value_bytes;
        if value.len() > max {
            return Err(Error::InvalidArgument(format!(
                "value is {} bytes, over max_value_bytes={max}",
                value.len()
            )));
        }
        Ok(())
    }

    fn quorum(&self, c: &Consistency) -> Result<Quorum> {
        self.settings
            .quorum
            .with_overrides(c.r.unwrap_or(0), c.w.unwrap_or(0))
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn meta(&self, q: &Quorum, read_from: ReadFrom) -> Meta {
        Meta {
            coordinator: self.settings.id.clone(),
            replicas: vec![self.settings.id.clone()],
            stale: false,
            lag_entries: 0,
            degraded: false,
            r: q.r,
            w: q.w,
            read_from,
            superseded_on: Vec::new(),
        }
    }

    /// Shows `entry` only once it is durable: nothing a client saw may vanish in a crash.
    async fn durable_view(&self, entry: Option<Entry>) -> Result<(Option<Bytes>, Option<Version>)> {
        match entry {
            None => Ok((None, None)),
            Some(e) => {
                self.storage.wait_durable(e.lsn).await?;
                Ok((e.value, Some(e.version)))
            }
        }
    }

    /// Reads one key.
    ///
    /// # Errors
    /// Bad key or consistency ([`Error::InvalidArgument`]); storage failure.
    pub async fn get(&self, key: &[u8], c: Consistency) -> Result<ReadOutcome> {
        self.check_key(key)?;
        let q = self.quorum(&c)?;
        if let Some(d) = &self.replication {
            return self.replicated_get(d, key, &q, c).await;
        }
        if let Some(h) = &self.leaderless
            && c.read_from != Some(ReadFrom::Local)
        {
            return self.leaderless_get(h, key, &q, c).await;
        }
        let (value, version) = self.durable_view(self.storage.get(key)).await?;
        Ok(ReadOutcome {
            value,
            version,
            meta: Meta {
                r: 1,
                ..self.meta(&q, c.read_from.unwrap_or_default())
            },
        })
    }

    /// Orders one write: assigns the next version and hands it to storage. Returns the
    /// version and the LSN to wait for. `check` sees the current entry first and may refuse.
    fn ordered_write<T>(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        check: impl FnOnce(Option<Entry>) -> std::result::Result<(), T>,
    ) -> Result<std::result::Result<(Version, u64), T>> {
        let _order = self.write_order.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(refused) = check(self.storage.get(&key)) {
            return Ok(Err(refused));
        }
        let hw = self.storage.high_water();
        let version = Version::new(SINGLE_NODE_TERM.max(hw.epoch), hw.counter + 1);
        let lsn = self.storage.write(Write {
            key,
            value,
            version,
            written_ms: now_ms(),
            context: bytes::Bytes::new(),
        })?;
        Ok(Ok((version, lsn)))
    }

    async fn write(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        c: Consistency,
    ) -> Result<WriteOutcome> {
        self.check_key(&key)?;
        if let Some(v) = &value {
            self.check_value(v)?;
        }
        let q = self.quorum(&c)?;
        if let Some(d) = &self.replication {
            let cmd = match value {
                Some(value) => Command::Put { key, value },
                None => Command::Delete { key },
            };
            return self.replicated_write(d, cmd, &q).await;
        }
        if let Some(h) = &self.leaderless {
            return self.leaderless_write(h, key, value, &q, c).await;
        }
        let (version, lsn) = self
            .ordered_write(key, value, |_| Ok::<(), ()>(()))?
            .expect("invariant: an unconditional write is never refused");
        self.storage.wait_durable(lsn).await?;
        Ok(WriteOutcome {
            version,
            meta: Meta {
                w: 1,
                ..self.meta(&q, ReadFrom::Leader)
            },
        })
    }

    /// Writes one key.
    ///
    /// # Errors
    /// Bad key, value or consistency; storage failure.
    pub async fn put(&self, key: Bytes, value: Bytes, c: Consistency) -> Result<WriteOutcome> {
        self.write(key, Some(value), c).await
    }

    /// Deletes one key (writes a tombstone, whether or not the key existed).
    ///
    /// # Errors
    /// Bad key or consistency; storage failure.
    pub async fn delete(&self, key: Bytes, c: Consistency) -> Result<WriteOutcome> {
        self.write(key, None, c).await
    }

    /// Writes `value` only if the key's live value has version `expected` (`None`: the key must
    /// be absent, never written or deleted).
    ///
    /// # Errors
    /// Bad input; CAS in leaderless mode ([`Error::FailedPrecondition`]); storage failure.
    pub async fn compare_and_set(
        &self,
        key: Bytes,
        expected: Option<Version>,
        value: Bytes,
        c: Consistency,
    ) -> Result<CasOutcome> {
        if self.settings.config.mode == crate::config::Mode::Leaderless {
            return Err(Error::FailedPrecondition(
                "compare-and-set needs one order of writes per key; leaderless mode has none \
                 (concurrent coordinators resolve by last-writer-wins): use leader-follower mode"
                    .into(),
            ));
        }
        self.check_key(&key)?;
        self.check_value(&value)?;
        let q = self.quorum(&c)?;
        if let Some(d) = &self.replication {
            let r = d
                .cas(key, expected, value)
                .await
                .map_err(|e| self.drive_error(e))?;
            let majority = q.majority();
            return Ok(if r.applied {
                CasOutcome::Applied(WriteOutcome {
                    version: r.version.unwrap_or_default(),
                    meta: Meta {
                        w: majority,
                        ..self.meta(&q, ReadFrom::Leader)
                    },
                })
            } else {
                CasOutcome::NotApplied(ReadOutcome {
                    value: r.current,
                    version: r.version,
                    meta: Meta {
                        r: majority,
                        ..self.meta(&q, ReadFrom::Leader)
                    },
                })
            });
        }
        let res = self.ordered_write(key, Some(value), |cur| {
            let live = cur
                .as_ref()
                .filter(|e| e.value.is_some())
                .map(|e| e.version);
            if live == expected { Ok(()) } else { Err(cur) }
        })?;
        match res {
            Ok((version, lsn)) => {
                self.storage.wait_durable(lsn).await?;
                Ok(CasOutcome::Applied(WriteOutcome {
                    version,
                    meta: Meta {
                        w: 1,
                        ..self.meta(&q, ReadFrom::Leader)
                    },
                }))
            }
            Err(current) => {
                let (value, version) = self.durable_view(current).await?;
                Ok(CasOutcome::NotApplied(ReadOutcome {
                    version: version.filter(|_| value.is_some()),
                    value,
                    meta: Meta {
                        r: 1,
                        ..self.meta(&q, ReadFrom::Leader)
                    },
                }))
            }
        }
    }

    /// Purges tombstones older than the grace period; returns how many.
    pub fn purge_tombstones(&self) -> usize {
        if self.leaderless.is_some() {
            // The leaderless core purges on its own schedule (with anti-entropy).
            return 0;
        }
        let grace = self.settings.config.tombstone_grace.0.as_millis() as u64;
        self.storage
            .purge_tombstones(now_ms().saturating_sub(grace))
    }
}

/// How long a leaderless coordinator may work on a request: `--request-timeout`, but no longer
/// than the client waits, less a twentieth of that (at least 5 ms) for the answer to reach it.
/// With both at 2 s (kvctl's and the node's defaults), a read whose replicas had gone silent
/// ended in the client's own "Timeout expired", without the replicas that did not answer, and a
/// read asking to degrade never got its degraded answer.
fn answer_within(configured: Duration, client: Option<Duration>) -> Duration {
    match client {
        Some(d) => configured.min(d.saturating_sub((d / 20).max(Duration::from_millis(5)))),
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StorageKind};
    use crate::storage::MemStorage;

    #[test]
    fn a_leaderless_coordinator_answers_before_the_client_gives_up() {
        let ms = Duration::from_millis;
        // No deadline from the client: the node's own timeout.
        assert_eq!(answer_within(ms(2000), None), ms(2000));
        // kvctl's default 2 s against the node's default 2 s: 100 ms before the client.
        assert_eq!(answer_within(ms(2000), Some(ms(2000))), ms(1900));
        // A client more patient than the node: the node's timeout.
        assert_eq!(answer_within(ms(2000), Some(ms(10_000))), ms(2000));
        // Short deadlines keep at least 5 ms for the answer, and never go below zero.
        assert_eq!(answer_within(ms(2000), Some(ms(40))), ms(35));
        assert_eq!(answer_within(ms(2000), Some(ms(3))), ms(0));
    }

    fn node() -> Node {
        let s = Config {
            storage: Some(StorageKind::Memory),
            max_key_bytes: 4,
            max_value_bytes: 8,
            ..Config::default()
        }
        .validate()
        .expect("valid");
        Node::new(s, Arc::new(MemStorage::new()))
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn node_versions_increase_per_write_and_reads_return_them() {
        let n = node();
        let c = Consistency::default();
        let v1 = n.put(b("a"), b("1"), c).await.expect("put").version;
        let v2 = n.put(b("b"), b("2"), c).await.expect("put").version;
        assert_eq!((v1, v2), (Version::new(1, 1), Version::new(1, 2)));
        let r = n.get(b"a", c).await.expect("get");
        assert_eq!((r.value, r.version), (Some(b("1")), Some(v1)));
        let d = n.delete(b("a"), c).await.expect("delete").version;
        let r = n.get(b"a", c).await.expect("get");
        assert_eq!((r.value, r.version), (None, Some(d)));
    }

    #[tokio::test]
    async fn node_bad_input_is_invalid_argument_and_stores_nothing() {
        let n = node();
        let c = Consistency::default();
        for (k, v) in [("", "x"), ("12345", "x"), ("k", "123456789")] {
            let e = n.put(b(k), b(v), c).await.expect_err("refused");
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        let e = n
            .put(b("k"), b("v"), Consistency { w: Some(2), ..c })
            .await
            .expect_err("w > n");
        assert_eq!(e.to_string(), "w=2 is out of range: must be 1..=1 (n=1)");
        assert_eq!(n.storage().stats().last_lsn, 0, "nothing stored");
    }

    #[tokio::test]
    async fn node_cas_applies_only_on_matching_version() {
        let n = node();
        let c = Consistency::default();
        let CasOutcome::Applied(first) = n
            .compare_and_set(b("k"), None, b("a"), c)
            .await
            .expect("cas")
        else {
            panic!("absent key with expected=None applies");
        };
        match n
            .compare_and_set(b("k"), None, b("b"), c)
            .await
            .expect("cas")
        {
            CasOutcome::NotApplied(cur) => {
                assert_eq!(cur.value, Some(b("a")));
                assert_eq!(cur.version, Some(first.version));
            }
            o => panic!("key exists, expected=None must not apply: {o:?}"),
        }
        let stale = Version::new(1, 99);
        assert!(matches!(
            n.compare_and_set(b("k"), Some(stale), b("c"), c).await,
            Ok(CasOutcome::NotApplied(_))
        ));
        assert!(matches!(
            n.compare_and_set(b("k"), Some(first.version), b("d"), c)
                .await,
            Ok(CasOutcome::Applied(_))
        ));
        assert_eq!(n.get(b"k", c).await.expect("get").value, Some(b("d")));
        n.delete(b("k"), c).await.expect("delete");
        assert!(matches!(
            n.compare_and_set(b("k"), None, b("e"), c).await,
            Ok(CasOutcome::Applied(_))
        ));
    }
}
