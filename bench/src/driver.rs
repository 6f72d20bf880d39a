//! Drivers: the same workload against quorumkv (gRPC) or a peer system (Redis).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_proto::kv::v1 as pb;
use kv_proto::kv::v1::kv_client::KvClient;

use kv_replica::leaderless::Ring;

use crate::h2::H2Channel;

/// Which system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// quorumkv over gRPC.
    Kv,
    /// Redis (RESP), e.g. `redis-server --save '' --appendonly no`.
    Redis,
    /// etcd v3 over gRPC (reads linearizable; `--read-from any` makes them serializable).
    Etcd,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kv" => Ok(DriverKind::Kv),
            "redis" => Ok(DriverKind::Redis),
            "etcd" => Ok(DriverKind::Etcd),
            o => Err(format!(
                "unknown --driver {o:?}: expected kv, etcd or redis"
            )),
        }
    }
}

/// Why an operation failed, as counted in the summary.
pub type ErrorKind = &'static str;

/// What an error says about the operation's effect (for histories): `fail` when it was refused
/// before taking effect, `unknown` when it may have happened.
pub fn may_have_happened(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        "unavailable" | "invalid_argument" | "failed_precondition" | "unsupported"
    )
}

/// What a read returned.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// The value, `None` when absent.
    pub value: Option<Bytes>,
    /// The version, `EPOCH.COUNTER` (etcd: `mod_revision.0`), when the system reports one.
    pub version: Option<String>,
    /// The answer is marked degraded (quorumkv, `on_quorum_loss=degrade`).
    pub degraded: bool,
}

/// What a write (or delete) returned.
#[derive(Debug, Clone, Default)]
pub struct WriteResult {
    /// The version given to it, when the system reports one.
    pub version: Option<String>,
    /// The answer is marked degraded.
    pub degraded: bool,
}

/// One connection of a client.
#[derive(Clone)]
pub enum Conn {
    /// quorumkv; the consistency sent with every request.
    Kv(KvClient<H2Channel>, pb::Consistency),
    /// Redis.
    Redis(redis::aio::MultiplexedConnection),
    /// etcd; whether reads are serializable.
    Etcd(crate::etcdpb::kv_client::KvClient<H2Channel>, bool),
}

/// How quorumkv requests choose a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Leaderless clusters: each key goes to the first live replica of its preference list
    /// (its coordinator), as token-aware Cassandra drivers do, saving the forward a node that
    /// does not hold the key makes. Otherwise: spread.
    #[default]
    Auto,
    /// Each client keeps to one connection; connections are spread round robin.
    Spread,
}

/// Token-aware routing for a leaderless cluster, from the ring its nodes describe in `Status`.
pub struct Router {
    ring: Ring,
    n: usize,
    /// The endpoints that answered `Status`, the only ones connected to.
    endpoints: Vec<String>,
    /// Per ring member (sorted ids): the index in `endpoints` of the one serving it, if any.
    endpoint: Vec<Option<usize>>,
    /// Per endpoint: until when (ms after `t0`) it is avoided after an `unavailable` error.
    avoid_until: Vec<AtomicU64>,
    t0: Instant,
}

/// How long an endpoint that answered `unavailable` is passed over.
const AVOID_MS: u64 = 1000;

impl Router {
    /// The endpoint to send `key` to: the first of its replicas that an endpoint serves and
    /// that has not just failed (`None`: no endpoint serves a replica; any node will forward).
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        let now = self.t0.elapsed().as_millis() as u64;
        let mut first = None;
        for m in self.ring.preference_list(key, self.n) {
            if let Some(e) = self.endpoint[m] {
                if self.avoid_until[e].load(Ordering::Relaxed) <= now {
                    return Some(e);
                }
                first.get_or_insert(e);
            }
        }
        first
    }

    /// Endpoint `e` answered `unavailable`: pass over it for a while.
    pub fn failed(&self, e: usize) {
        let until = self.t0.elapsed().as_millis() as u64 + AVOID_MS;
        self.avoid_until[e].store(until, Ordering::Relaxed);
    }

    /// How many ring members an endpoint serves.
    pub fn mapped(&self) -> usize {
        self.endpoint.iter().flatten().count()
    }
}

/// A leader-follower cluster answers writes and leader reads only at its leader: a follower
/// says UNAVAILABLE and where the leader is (kvctl follows it; kv-bench counts an error, which
/// a fault run may want). When none of `endpoints` is the leader `st` names, says so up front
/// rather than leaving a table of errors to explain itself.
fn warn_unless_leader(endpoints: &[String], st: &pb::NodeStatus) {
    if st.leader.is_empty() {
        eprintln!(
            "kv-bench: {} knows no leader yet: writes and leader reads fail until one is elected",
            st.id
        );
        return;
    }
    let Some(addr) = st.members.get(&st.leader) else {
        return;
    };
    let host_port = |e: &str| e.trim_start_matches("http://").to_string();
    if !endpoints.iter().any(|e| host_port(e) == host_port(addr)) {
        eprintln!(
            "kv-bench: the leader is {} at {addr}, not among --endpoints: followers answer writes \
             and leader reads with UNAVAILABLE (and the leader's address), which kv-bench counts \
             as errors; give --endpoints {addr} to measure the cluster, or --read-from any for \
             follower reads (writes still fail there)",
            st.leader
        );
    }
}

/// Asks every endpoint for its `Status`; when the cluster is leaderless, a [`Router`] over its
/// ring. Endpoints that do not answer are left out for the whole run (their keys go to their
/// next replica).
///
/// # Errors
/// The nodes disagree about the ring.
pub async fn discover(endpoints: &[String]) -> anyhow::Result<Option<Router>> {
    let mut ring: Option<(Vec<String>, u32, u32)> = None;
    let mut served = Vec::new();
    for ep in endpoints {
        let hostport = ep.trim_start_matches("http://");
        let status = async {
            let ch = H2Channel::connect(hostport).await?;
            let origin: http::Uri = format!("http://{hostport}").parse()?;
            let mut c = pb::admin_client::AdminClient::with_origin(ch, origin);
            anyhow::Ok(c.status(pb::StatusRequest {}).await?.into_inner())
        };
        let st = match tokio::time::timeout(Duration::from_secs(2), status).await {
            Ok(Ok(st)) => st,
            Ok(Err(err)) => {
                eprintln!("kv-bench: no status from {ep} ({err}); not routing to it");
                continue;
            }
            Err(_) => {
                eprintln!("kv-bench: no status from {ep} (timed out); not routing to it");
                continue;
            }
        };
        if st.mode == "leader-follower" {
            warn_unless_leader(endpoints, &st);
        }
        if st.mode != "leaderless" {
            return Ok(None);
        }
        let mut names: Vec<String> = st.members.keys().cloned().collect();
        names.sort();
        let this = (names, st.vnodes, st.replicas);
        match &ring {
            Some(r) if *r != this => anyhow::bail!(
                "{ep} describes a different ring ({:?}, {} vnodes, N={}) than the other \
                 endpoints ({:?}, {} vnodes, N={})",
                this.0,
                this.1,
                this.2,
                r.0,
                r.1,
                r.2
            ),
            _ => ring = Some(this),
        }
        served.push((st.id, ep.clone()));
    }
    let Some((names, vnodes, n)) = ring else {
        return Ok(None);
    };
    let endpoint = names
        .iter()
        .map(|m| served.iter().position(|(id, _)| id == m))
        .collect();
    Ok(Some(Router {
        ring: Ring::new(&names, vnodes),
        n: n.max(1) as usize,
        endpoint,
        avoid_until: served.iter().map(|_| AtomicU64::new(0)).collect(),
        endpoints: served.into_iter().map(|(_, ep)| ep).collect(),
        t0: Instant::now(),
    }))
}

/// One client's connections: one, or one per endpoint when a [`Router`] picks by key.
pub struct ClientConns {
    conns: Vec<Conn>,
    router: Option<Arc<Router>>,
    picked: Option<usize>,
}

impl ClientConns {
    /// The connection for an operation on `key`.
    pub fn pick(&mut self, key: &str) -> &mut Conn {
        self.picked = self.router.as_ref().and_then(|r| r.pick(key.as_bytes()));
        let i = self.picked.unwrap_or(0).min(self.conns.len() - 1);
        &mut self.conns[i]
    }

    /// The last operation ended with `result`: an endpoint that answered `unavailable` is
    /// passed over for a while.
    pub fn outcome<T>(&self, result: &Result<T, ErrorKind>) {
        if let (Err("unavailable"), Some(r), Some(e)) = (result, &self.router, self.picked) {
            r.failed(e);
        }
    }
}

/// Connections for `clients` clients: `count` connections spread round robin over
/// `endpoints`, one per client in turn; with a router, groups of one connection per endpoint
/// it routes to (`count` rounded up to whole groups), one group per client in turn.
///
/// # Errors
/// An endpoint refuses or is malformed.
pub async fn connect_clients(
    kind: DriverKind,
    endpoints: &[String],
    count: usize,
    consistency: pb::Consistency,
    router: Option<Router>,
    clients: usize,
) -> anyhow::Result<Vec<ClientConns>> {
    let Some(router) = router.map(Arc::new) else {
        let conns = connect(kind, endpoints, count, consistency).await?;
        return Ok((0..clients)
            .map(|i| ClientConns {
                conns: vec![conns[i % conns.len()].clone()],
                router: None,
                picked: None,
            })
            .collect());
    };
    let e = router.endpoints.len();
    let groups = count.div_ceil(e).max(1);
    let conns = connect(kind, &router.endpoints, groups * e, consistency).await?;
    Ok((0..clients)
        .map(|i| {
            let g = i % groups;
            ClientConns {
                conns: conns[g * e..(g + 1) * e].to_vec(),
                router: Some(router.clone()),
                picked: None,
            }
        })
        .collect())
}

/// Opens `count` connections to `endpoints` (spread round robin: connection `i` goes to
/// endpoint `i % endpoints.len()`).
///
/// # Errors
/// An endpoint refuses or is malformed.
pub async fn connect(
    kind: DriverKind,
    endpoints: &[String],
    count: usize,
    consistency: pb::Consistency,
) -> anyhow::Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let ep = &endpoints[i % endpoints.len()];
        out.push(match kind {
            DriverKind::Etcd => {
                let hostport = ep.trim_start_matches("http://");
                let ch = tokio::time::timeout(Duration::from_secs(5), H2Channel::connect(hostport))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to etcd at {ep}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to etcd at {ep}: {e}"))?;
                let origin: http::Uri = format!("http://{hostport}").parse()?;
                let serializable = consistency.read_from == pb::ReadFrom::Any as i32
                    || consistency.read_from == pb::ReadFrom::Local as i32;
                Conn::Etcd(
                    crate::etcdpb::kv_client::KvClient::with_origin(ch, origin),
                    serializable,
                )
            }
            DriverKind::Kv => {
                let hostport = ep.trim_start_matches("http://");
                let ch = tokio::time::timeout(Duration::from_secs(5), H2Channel::connect(hostport))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to {ep}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to {ep}: {e}"))?;
                let origin: http::Uri = format!("http://{hostport}").parse()?;
                Conn::Kv(KvClient::with_origin(ch, origin), consistency)
            }
            DriverKind::Redis => {
                let url = if ep.contains("://") {
                    ep.clone()
                } else {
                    format!("redis://{ep}/")
                };
                let client = redis::Client::open(url.as_str())?;
                let c = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to redis at {ep}: {e}"))?;
                Conn::Redis(c)
            }
        });
    }
    Ok(out)
}

fn status_kind(s: &tonic::Status) -> ErrorKind {
    use tonic::Code::*;
    match s.code() {
        DeadlineExceeded | Cancelled => "deadline_exceeded",
        Unavailable => "unavailable",
        InvalidArgument => "invalid_argument",
        FailedPrecondition => "failed_precondition",
        Internal => "internal",
        _ => "other",
    }
}

impl Conn {
    /// Reads `key`.
    ///
    /// # Errors
    /// The error kind.
    pub async fn get(&mut self, key: &str, timeout: Duration) -> Result<ReadResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::GetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let g = c.get(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(ReadResult {
                    value: g.found.then_some(g.value),
                    version: g.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: g.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(c, serializable) => {
                let mut r = tonic::Request::new(crate::etcdpb::RangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    serializable: *serializable,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                let g = c.range(r).await.map_err(|s| status_kind(&s))?.into_inner();
                let kv = g.kvs.into_iter().next();
                Ok(ReadResult {
                    version: kv.as_ref().map(|kv| format!("{}.0", kv.mod_revision)),
                    value: kv.map(|kv| kv.value),
                    degraded: false,
                })
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                let f = cmd.query_async::<Option<Vec<u8>>>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(v)) => Ok(ReadResult {
                        value: v.map(Bytes::from),
                        ..ReadResult::default()
                    }),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Writes `key`; returns the version given to the write, when the system reports one.
    ///
    /// # Errors
    /// The error kind.
    pub async fn put(
        &mut self,
        key: &str,
        value: Bytes,
        timeout: Duration,
    ) -> Result<WriteResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let p = c.put(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: p.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: p.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(c, _) => {
                let mut r = tonic::Request::new(crate::etcdpb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                let p = c.put(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: p.header.map(|h| format!("{}.0", h.revision)),
                    degraded: false,
                })
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(&value[..]);
                let f = cmd.query_async::<()>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(())) => Ok(WriteResult::default()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Deletes `key` (quorumkv and Redis; etcd runs refuse a mix with deletes at start-up).
    ///
    /// # Errors
    /// The error kind.
    pub async fn delete(&mut self, key: &str, timeout: Duration) -> Result<WriteResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::DeleteRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let d = c.delete(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: d.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: d.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(..) => Err("unsupported"),
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                let f = cmd.query_async::<i64>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(_)) => Ok(WriteResult::default()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Compare-and-set (quorumkv only): writes `value` if `key` is at `expected` (`None`:
    /// absent). Returns whether it applied and the version (new, or current when not applied).
    ///
    /// # Errors
    /// The error kind (`unsupported` for other systems).
    pub async fn cas(
        &mut self,
        key: &str,
        expected: Option<(u64, u64)>,
        value: Bytes,
        timeout: Duration,
    ) -> Result<(bool, Option<String>), ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::CompareAndSetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    expected: expected.map(|(epoch, counter)| pb::Version { epoch, counter }),
                    value,
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let a = c
                    .compare_and_set(r)
                    .await
                    .map_err(|s| status_kind(&s))?
                    .into_inner();
                Ok((
                    a.applied,
                    a.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                ))
            }
            Conn::Etcd(..) | Conn::Redis(..) => Err("unsupported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(served: &[Option<usize>]) -> Router {
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let count = served.iter().flatten().count();
        Router {
            ring: Ring::new(&names, 64),
            n: 3,
            endpoints: (0..count).map(|i| format!("ep{i}")).collect(),
            endpoint: served.to_vec(),
            avoid_until: (0..count).map(|_| AtomicU64::new(0)).collect(),
            t0: Instant::now(),
        }
    }

    #[test]
    fn a_key_goes_to_its_first_served_live_replica() {
        let all = router(&[Some(0), Some(1), Some(2), Some(3), Some(4)]);
        for k in 0..200 {
            let key = format!("key{k:08}");
            let pref = all.ring.preference_list(key.as_bytes(), 3);
            assert_eq!(all.pick(key.as_bytes()), Some(pref[0]), "{key}");
        }
        // n1 not served: its keys go to their second replica.
        let some = router(&[None, Some(0), Some(1), Some(2), Some(3)]);
        let key = (0..)
            .map(|k| format!("key{k:08}"))
            .find(|k| some.ring.preference_list(k.as_bytes(), 3)[0] == 0)
            .expect("a key of n1");
        let second = some.ring.preference_list(key.as_bytes(), 3)[1];
        assert_eq!(some.pick(key.as_bytes()), some.endpoint[second]);
        // That endpoint fails: the third replica, until the pause is over.
        let e = some.pick(key.as_bytes()).expect("served");
        some.failed(e);
        let third = some.ring.preference_list(key.as_bytes(), 3)[2];
        assert_eq!(some.pick(key.as_bytes()), some.endpoint[third]);
        // Every replica failed: the first served one all the same.
        for r in some.ring.preference_list(key.as_bytes(), 3) {
            if let Some(e) = some.endpoint[r] {
                some.failed(e);
            }
        }
        assert_eq!(some.pick(key.as_bytes()), Some(e));
    }
}
