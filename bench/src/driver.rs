//! Drivers: the same workload against quorumkv (gRPC) or a peer system (Redis).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_proto::kv::v1 as pb;

use kv_replica::leaderless::Ring;

use crate::h2::{H2Channel, Origin};

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

/// A failed operation: how it is counted, and the leader a leader-follower node named when it
/// refused it for not being the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// How the failure is counted.
    pub kind: ErrorKind,
    /// The id of the leader named in the refusal (`x-kv-leader-id`).
    pub leader: Option<String>,
}

impl From<ErrorKind> for Failed {
    fn from(kind: ErrorKind) -> Self {
        Failed { kind, leader: None }
    }
}

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
    /// quorumkv leaderless: some replica that acknowledged it already held a concurrent write
    /// with a higher version, which hides it there (`superseded_on`).
    pub superseded: bool,
}

/// One connection of a client.
#[derive(Clone)]
pub enum Conn {
    /// quorumkv, called at `Origin` through [`H2Channel::unary`]; the consistency sent with
    /// every request.
    Kv(H2Channel, Origin, pb::Consistency),
    /// Redis.
    Redis(redis::aio::MultiplexedConnection),
    /// etcd, called the same way; whether reads are serializable.
    Etcd(H2Channel, Origin, bool),
}

/// How quorumkv requests choose a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Leaderless clusters: each key goes to the first live replica of its preference list
    /// (its coordinator), as token-aware Cassandra drivers do, saving the forward a node that
    /// does not hold the key makes. Leader-follower clusters: writes and leader reads go to
    /// the leader, followed when it moves ([`LeaderRoute`]). Single node: spread.
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
    /// Per endpoint: until when (ms after `t0`) it is avoided for every key, after it did not
    /// answer in time.
    avoid_until: Vec<AtomicU64>,
    /// Per (replica set, endpoint): until when that endpoint is avoided for keys of that set,
    /// after it answered `unavailable` for one. A coordinator cut off from the other replicas
    /// of one set still reaches R and W for sets on its side of a partition, and another
    /// replica of the refused set may reach them: with N=3 and R=W=2, every set keeps a
    /// majority on one side of any two-way split.
    refused: Mutex<HashMap<(Vec<usize>, usize), u64>>,
    /// The latest `until` in `refused`: [`Router::pick`] looks there only before then.
    refused_until: AtomicU64,
    t0: Instant,
}

/// How long an endpoint that answered `unavailable` or not in time is passed over.
const AVOID_MS: u64 = 1000;

impl Router {
    /// The endpoint to send `key` to: the first of its replicas that an endpoint serves and
    /// that has not just failed, for every key or for this key's replica set (`None`: no
    /// endpoint serves a replica; any node will forward).
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        let now = self.now();
        let replicas = self.ring.preference_list(key, self.n);
        let refused = (self.refused_until.load(Ordering::Relaxed) > now)
            .then(|| self.refused.lock().unwrap_or_else(|e| e.into_inner()));
        let set = refused.as_ref().map(|_| replica_set(&replicas));
        let mut first = None;
        for &m in &replicas {
            if let Some(e) = self.endpoint[m] {
                let refused_here = match (&refused, &set) {
                    (Some(r), Some(set)) => r.get(&(set.clone(), e)).is_some_and(|&u| u > now),
                    _ => false,
                };
                if self.avoid_until[e].load(Ordering::Relaxed) <= now && !refused_here {
                    return Some(e);
                }
                first.get_or_insert(e);
            }
        }
        first
    }

    /// Endpoint `e` did not answer in time: pass over it for a while, for every key.
    pub fn failed(&self, e: usize) {
        self.avoid_until[e].store(self.now() + AVOID_MS, Ordering::Relaxed);
    }

    /// Endpoint `e` answered `unavailable` for `key`: pass over it for a while for keys with
    /// the same replicas.
    pub fn refused(&self, key: &[u8], e: usize) {
        let now = self.now();
        let set = replica_set(&self.ring.preference_list(key, self.n));
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= 4096 {
            refused.retain(|_, until| *until > now);
        }
        refused.insert((set, e), now + AVOID_MS);
        self.refused_until
            .fetch_max(now + AVOID_MS, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// How many ring members an endpoint serves.
    pub fn mapped(&self) -> usize {
        self.endpoint.iter().flatten().count()
    }
}

/// A key's replicas as a set (sorted member indexes).
fn replica_set(replicas: &[usize]) -> Vec<usize> {
    let mut set = replicas.to_vec();
    set.sort_unstable();
    set
}

/// Leader-aware routing for a leader-follower cluster, as MongoDB drivers route to the
/// primary: writes and leader reads go to the endpoint that leads; reads from any replica
/// (`--read-from any|local`) stay on each client's own endpoint. A follower refuses a write
/// with UNAVAILABLE and the leader's id; the route moves there (every client at once). An
/// UNAVAILABLE without a leader named (the leader died, or an election is on), or no answer in
/// time (it froze), moves it to the next endpoint, which names the leader or passes it on.
pub struct LeaderRoute {
    /// The endpoints that answered `Status`, the only ones connected to.
    endpoints: Vec<String>,
    /// The node id at each endpoint.
    ids: Vec<String>,
    /// Every member's address, for messages about leaders no endpoint serves.
    members: std::collections::BTreeMap<String, String>,
    /// The endpoint believed to lead.
    leader: AtomicUsize,
    /// Reads go to any replica: each client's own endpoint.
    spread_reads: bool,
    /// Said once that the leader is not among the endpoints.
    warned: AtomicBool,
}

impl LeaderRoute {
    /// The endpoint for an operation of client `home` (its own endpoint, for spread reads).
    pub fn pick(&self, read: bool, home: usize) -> usize {
        if read && self.spread_reads {
            home % self.endpoints.len()
        } else {
            self.leader.load(Ordering::Relaxed)
        }
    }

    /// Endpoint `e` answered UNAVAILABLE naming `leader` (an id) or none, or did not answer in
    /// time (none): a follower names the leader, so asking the next endpoint is how a leader
    /// elected while the old one froze is found.
    /// Returns whether it named a leader at another endpoint, which the route now follows.
    pub fn unavailable(&self, e: usize, leader: Option<&str>) -> bool {
        match leader {
            Some(id) => self.follow(id).is_some_and(|l| l != e),
            None if e == self.leader.load(Ordering::Relaxed) => {
                // Many clients see the same failure: move once.
                let next = (e + 1) % self.endpoints.len();
                let _ = self
                    .leader
                    .compare_exchange(e, next, Ordering::Relaxed, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Node `id` leads: every client goes to its endpoint, returned (or, when none serves it,
    /// stays, and says so once).
    fn follow(&self, id: &str) -> Option<usize> {
        let l = self.ids.iter().position(|i| i == id);
        match l {
            Some(l) => self.leader.store(l, Ordering::Relaxed),
            None => self.leader_not_served(id),
        }
        l
    }

    fn leader_not_served(&self, id: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            let addr = self.members.get(id).map_or("?", String::as_str);
            eprintln!(
                "kv-bench: the leader is {id} at {addr}, not among --endpoints: writes and leader \
                 reads fail (UNAVAILABLE) while it leads; give every node to --endpoints, or \
                 --endpoints {addr}"
            );
        }
    }

    /// Whether reads go to each client's own endpoint rather than the leader.
    pub fn spreads_reads(&self) -> bool {
        self.spread_reads
    }

    /// The endpoint believed to lead now.
    pub fn leader(&self) -> &str {
        &self.endpoints[self.leader.load(Ordering::Relaxed)]
    }
}

/// How a quorumkv run picks an endpoint per operation (`--route auto`).
pub enum Routing {
    /// Leaderless: each key to its coordinator.
    Ring(Router),
    /// Leader-follower: writes and leader reads to the leader.
    Leader(LeaderRoute),
}

impl Routing {
    fn endpoints(&self) -> &[String] {
        match self {
            Routing::Ring(r) => &r.endpoints,
            Routing::Leader(l) => &l.endpoints,
        }
    }
}

/// Asks every endpoint for its `Status`: a leaderless cluster gets a [`Router`] over its ring,
/// a leader-follower one a [`LeaderRoute`] (`spread_reads`: reads are served by any replica);
/// a single node, none. Endpoints that do not answer are left out for the whole run (their
/// keys go to their next replica; a leader among them is found at the next that answers).
///
/// # Errors
/// The nodes disagree about the ring.
pub async fn discover(endpoints: &[String], spread_reads: bool) -> anyhow::Result<Option<Routing>> {
    let mut ring: Option<(Vec<String>, u32, u32)> = None;
    let mut served = Vec::new();
    let mut lf: Vec<(String, pb::NodeStatus)> = Vec::new();
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
            lf.push((ep.clone(), st));
            continue;
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
    if !lf.is_empty() {
        return Ok(Some(Routing::Leader(leader_route(lf, spread_reads))));
    }
    let Some((names, vnodes, n)) = ring else {
        return Ok(None);
    };
    let endpoint = names
        .iter()
        .map(|m| served.iter().position(|(id, _)| id == m))
        .collect();
    Ok(Some(Routing::Ring(Router {
        ring: Ring::new(&names, vnodes),
        n: n.max(1) as usize,
        endpoint,
        avoid_until: served.iter().map(|_| AtomicU64::new(0)).collect(),
        refused: Mutex::default(),
        refused_until: AtomicU64::new(0),
        endpoints: served.into_iter().map(|(_, ep)| ep).collect(),
        t0: Instant::now(),
    })))
}

/// The route over the leader-follower endpoints that answered, starting at the leader the
/// newest term names; says so up front when no endpoint serves it (or none is known) rather
/// than leaving a table of errors to explain itself.
fn leader_route(lf: Vec<(String, pb::NodeStatus)>, spread_reads: bool) -> LeaderRoute {
    let newest = lf
        .iter()
        .filter(|(_, st)| !st.leader.is_empty())
        .max_by_key(|(_, st)| st.term)
        .map(|(_, st)| st.leader.clone());
    let members = lf.iter().flat_map(|(_, st)| st.members.clone()).collect();
    let route = LeaderRoute {
        ids: lf.iter().map(|(_, st)| st.id.clone()).collect(),
        endpoints: lf.into_iter().map(|(ep, _)| ep).collect(),
        members,
        leader: AtomicUsize::new(0),
        spread_reads,
        warned: AtomicBool::new(false),
    };
    match newest {
        Some(id) => {
            route.follow(&id);
        }
        None => eprintln!(
            "kv-bench: no endpoint knows a leader yet: writes and leader reads fail until one is \
             elected"
        ),
    }
    route
}

/// One client's connections: one, or one per endpoint when a [`Router`] picks by key.
pub struct ClientConns {
    conns: Vec<Conn>,
    routing: Option<Arc<Routing>>,
    /// This client's own endpoint (leader-follower reads from any replica).
    home: usize,
    picked: Option<usize>,
    /// The last operation was refused by a follower naming a leader at another endpoint.
    redirected: bool,
    /// The key of the last operation a [`Router`] picked for.
    key: Vec<u8>,
}

impl ClientConns {
    /// The connection for an operation on `key` (`read`: a get).
    pub fn pick(&mut self, key: &str, read: bool) -> &mut Conn {
        self.picked = match self.routing.as_deref() {
            Some(Routing::Ring(r)) => {
                self.key.clear();
                self.key.extend_from_slice(key.as_bytes());
                r.pick(key.as_bytes())
            }
            Some(Routing::Leader(l)) => Some(l.pick(read, self.home)),
            None => None,
        };
        let i = self.picked.unwrap_or(0).min(self.conns.len() - 1);
        &mut self.conns[i]
    }

    /// The last operation ended with `result`: an endpoint that did not answer in time is
    /// passed over for a while, one that answered `unavailable` only for keys with the same
    /// replicas (leaderless), or the leader it named is followed, or the next endpoint asked
    /// (leader-follower). Returns the result with the failure as counted.
    ///
    /// # Errors
    /// The operation's, as its kind.
    pub fn outcome<T>(&mut self, result: Result<T, Failed>) -> Result<T, ErrorKind> {
        self.redirected = false;
        let f = match result {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        let moved = matches!(f.kind, "unavailable" | "deadline_exceeded");
        if let (true, Some(routing), Some(e)) = (moved, &self.routing, self.picked) {
            match &**routing {
                Routing::Ring(r) if f.kind == "unavailable" => r.refused(&self.key, e),
                Routing::Ring(r) => r.failed(e),
                Routing::Leader(l) => self.redirected = l.unavailable(e, f.leader.as_deref()),
            }
        }
        Err(f.kind)
    }

    /// The last operation was refused by a follower that named a leader at another endpoint:
    /// the next one goes there at once.
    pub fn redirected(&self) -> bool {
        self.redirected
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
    routing: Option<Routing>,
    clients: usize,
) -> anyhow::Result<Vec<ClientConns>> {
    let Some(routing) = routing.map(Arc::new) else {
        let conns = connect(kind, endpoints, count, consistency).await?;
        return Ok((0..clients)
            .map(|i| ClientConns {
                conns: vec![conns[i % conns.len()].clone()],
                routing: None,
                home: 0,
                picked: None,
                redirected: false,
                key: Vec::new(),
            })
            .collect());
    };
    let e = routing.endpoints().len();
    let groups = count.div_ceil(e).max(1);
    let conns = connect(kind, routing.endpoints(), groups * e, consistency).await?;
    Ok((0..clients)
        .map(|i| {
            let g = i % groups;
            ClientConns {
                conns: conns[g * e..(g + 1) * e].to_vec(),
                routing: Some(routing.clone()),
                home: i % e,
                picked: None,
                redirected: false,
                key: Vec::new(),
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
                let serializable = consistency.read_from == pb::ReadFrom::Any as i32
                    || consistency.read_from == pb::ReadFrom::Local as i32;
                Conn::Etcd(ch, Origin::http(hostport)?, serializable)
            }
            DriverKind::Kv => {
                let hostport = ep.trim_start_matches("http://");
                let ch = tokio::time::timeout(Duration::from_secs(5), H2Channel::connect(hostport))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to {ep}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to {ep}: {e}"))?;
                Conn::Kv(ch, Origin::http(hostport)?, consistency)
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

/// A gRPC call's answer. The deadline is sent (`grpc-timeout`) and also kept by the caller
/// ([`crate::run`] runs every operation under its client's deadline): a server that is frozen
/// (SIGSTOP, a stalled VM) but still holds the connection never answers.
async fn call<T>(
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Failed> {
    f.await.map_err(|s| failed(&s))
}

// The methods the drivers call ([`H2Channel::unary`]).
const KV_GET: &str = "/kv.v1.Kv/Get";
const KV_PUT: &str = "/kv.v1.Kv/Put";
const KV_DELETE: &str = "/kv.v1.Kv/Delete";
const KV_CAS: &str = "/kv.v1.Kv/CompareAndSet";
const ETCD_RANGE: &str = "/etcdserverpb.KV/Range";
const ETCD_PUT: &str = "/etcdserverpb.KV/Put";

fn failed(s: &tonic::Status) -> Failed {
    Failed {
        kind: status_kind(s),
        leader: s
            .metadata()
            .get(kv_proto::LEADER_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| !id.is_empty())
            .map(str::to_string),
    }
}

fn status_kind(s: &tonic::Status) -> ErrorKind {
    use tonic::Code::*;
    match s.code() {
        DeadlineExceeded | Cancelled => "deadline_exceeded",
        Unavailable => "unavailable",
        InvalidArgument => "invalid_argument",
        FailedPrecondition => "failed_precondition",
        Internal => "internal",
        // A status made here from a transport error keeps that error as its source; one the
        // server sent has none (quorumkv: leadership lost before W replicas held a write).
        Unknown if std::error::Error::source(s).is_some() => "connection_lost",
        Unknown => "outcome_unknown",
        _ => "other",
    }
}

impl Conn {
    /// Reads `key`.
    ///
    /// # Errors
    /// The error kind.
    pub async fn get(&mut self, key: &str, timeout: Duration) -> Result<ReadResult, Failed> {
        match self {
            Conn::Kv(c, origin, cons) => {
                let r = pb::GetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                };
                let g: pb::GetResponse = call(c.unary(origin, KV_GET, &r, timeout)).await?;
                Ok(ReadResult {
                    value: g.found.then_some(g.value),
                    version: g.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: g.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(c, origin, serializable) => {
                let r = crate::etcdpb::RangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    serializable: *serializable,
                    ..Default::default()
                };
                let g: crate::etcdpb::RangeResponse =
                    call(c.unary(origin, ETCD_RANGE, &r, timeout)).await?;
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
                match f.await {
                    Ok(v) => Ok(ReadResult {
                        value: v.map(Bytes::from),
                        ..ReadResult::default()
                    }),
                    Err(_) => Err("redis_error".into()),
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
    ) -> Result<WriteResult, Failed> {
        match self {
            Conn::Kv(c, origin, cons) => {
                let r = pb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    consistency: Some(*cons),
                };
                let p: pb::PutResponse = call(c.unary(origin, KV_PUT, &r, timeout)).await?;
                let m = p.meta.unwrap_or_default();
                Ok(WriteResult {
                    version: p.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: m.degraded,
                    superseded: !m.superseded_on.is_empty(),
                })
            }
            Conn::Etcd(c, origin, _) => {
                let r = crate::etcdpb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    ..Default::default()
                };
                let p: crate::etcdpb::PutResponse =
                    call(c.unary(origin, ETCD_PUT, &r, timeout)).await?;
                Ok(WriteResult {
                    version: p.header.map(|h| format!("{}.0", h.revision)),
                    ..Default::default()
                })
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(&value[..]);
                let f = cmd.query_async::<()>(c);
                match f.await {
                    Ok(()) => Ok(WriteResult::default()),
                    Err(_) => Err("redis_error".into()),
                }
            }
        }
    }

    /// Deletes `key` (quorumkv and Redis; etcd runs refuse a mix with deletes at start-up).
    ///
    /// # Errors
    /// The error kind.
    pub async fn delete(&mut self, key: &str, timeout: Duration) -> Result<WriteResult, Failed> {
        match self {
            Conn::Kv(c, origin, cons) => {
                let r = pb::DeleteRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                };
                let d: pb::DeleteResponse = call(c.unary(origin, KV_DELETE, &r, timeout)).await?;
                let m = d.meta.unwrap_or_default();
                Ok(WriteResult {
                    version: d.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: m.degraded,
                    superseded: !m.superseded_on.is_empty(),
                })
            }
            Conn::Etcd(..) => Err("unsupported".into()),
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                let f = cmd.query_async::<i64>(c);
                match f.await {
                    Ok(_) => Ok(WriteResult::default()),
                    Err(_) => Err("redis_error".into()),
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
    ) -> Result<(bool, Option<String>), Failed> {
        match self {
            Conn::Kv(c, origin, cons) => {
                let r = pb::CompareAndSetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    expected: expected.map(|(epoch, counter)| pb::Version { epoch, counter }),
                    value,
                    consistency: Some(*cons),
                };
                let a: pb::CompareAndSetResponse =
                    call(c.unary(origin, KV_CAS, &r, timeout)).await?;
                Ok((
                    a.applied,
                    a.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                ))
            }
            Conn::Etcd(..) | Conn::Redis(..) => Err("unsupported".into()),
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
            refused: Mutex::default(),
            refused_until: AtomicU64::new(0),
            t0: Instant::now(),
        }
    }

    fn leader_route(spread_reads: bool) -> LeaderRoute {
        let st = |id: &str, term: u64, leader: &str| pb::NodeStatus {
            id: id.into(),
            term,
            leader: leader.into(),
            members: [("n4", "h4:1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        // n1 still believes in n1 at term 1; n2 and n3 have moved on to n3 at term 2.
        super::leader_route(
            vec![
                ("h1:1".into(), st("n1", 1, "n1")),
                ("h2:1".into(), st("n2", 2, "n3")),
                ("h3:1".into(), st("n3", 2, "n3")),
            ],
            spread_reads,
        )
    }

    #[test]
    fn writes_go_to_the_leader_of_the_newest_term_and_follow_it() {
        let l = leader_route(false);
        assert_eq!(l.leader(), "h3:1");
        assert_eq!((l.pick(false, 0), l.pick(true, 1)), (2, 2));
        // A follower names the new leader: every client moves there.
        assert!(l.unavailable(2, Some("n2")));
        assert_eq!(l.pick(false, 0), 1);
        // A refusal without a leader from an endpoint that is not the leader changes nothing.
        assert!(!l.unavailable(0, None));
        assert_eq!(l.pick(false, 0), 1);
        // The leader fails with no leader named: try the next endpoint, wrapping around.
        l.unavailable(1, None);
        assert_eq!(l.pick(false, 0), 2);
        l.unavailable(2, None);
        assert_eq!(l.pick(false, 0), 0);
        // A leader no endpoint serves: stay (and say so once).
        assert!(!l.unavailable(0, Some("n4")));
        assert_eq!(l.pick(false, 0), 0);
        assert!(l.warned.load(Ordering::Relaxed));
    }

    #[test]
    fn reads_from_any_replica_stay_on_each_clients_endpoint() {
        let l = leader_route(true);
        assert_eq!([0, 1, 2, 3].map(|home| l.pick(true, home)), [0, 1, 2, 0]);
        assert_eq!(l.pick(false, 1), 2);
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

    /// A coordinator that cannot reach R or W of one key's replicas (a partition) still
    /// coordinates keys of other replica sets; only keys of the refused set go elsewhere.
    #[test]
    fn a_refusal_passes_over_its_endpoint_only_for_keys_with_the_same_replicas() {
        let r = router(&[Some(0), Some(1), Some(2), Some(3), Some(4)]);
        let keys: Vec<String> = (0..2000).map(|k| format!("key{k:08}")).collect();
        let set = |k: &String| replica_set(&r.ring.preference_list(k.as_bytes(), 3));
        let first = |k: &String| r.ring.preference_list(k.as_bytes(), 3)[0];
        let a = &keys[0];
        let same = keys[1..]
            .iter()
            .find(|k| set(k) == set(a) && first(k) == first(a))
            .expect("a key with the same replicas and coordinator");
        let other = keys
            .iter()
            .find(|k| set(k) != set(a) && first(k) == first(a))
            .expect("a key of another replica set with the same coordinator");
        let e = r.pick(a.as_bytes()).expect("served");
        r.refused(a.as_bytes(), e);
        let second = r.endpoint[r.ring.preference_list(a.as_bytes(), 3)[1]];
        assert_eq!(r.pick(a.as_bytes()), second);
        assert_eq!(r.pick(same.as_bytes()), second);
        assert_eq!(r.pick(other.as_bytes()), Some(e), "another set stays");
        // Not answering in time passes it over for every key.
        r.failed(e);
        assert_ne!(r.pick(other.as_bytes()), Some(e));
    }
}
