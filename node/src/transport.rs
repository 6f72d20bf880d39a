//! Peer transport: one outgoing TCP connection per peer, on the peer's gRPC port, carrying
//! length-prefixed protobuf frames (`kv.v1.PeerEnvelope`, see `peer.proto`) and reopened when it
//! breaks; incoming connections feed the local driver. Wire types are converted to the core's
//! `Message` here, at the edge.
//!
//! ```text
//!  sender ── TCP ──► "QKVPEER1" | len u32 BE | PeerEnvelope | len | PeerEnvelope ...
//!  receiver: the node's listener sniffs the first 8 bytes: the magic ─► PeerReceiver,
//!            anything else (an HTTP/2 preface) ─► the gRPC server
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kv_proto::kv::v1 as pb;
use kv_replica::NodeId;
use kv_replica::leader_follower::{Command, Entry, LogIndex, Message, Snapshot, Term};
use tokio::sync::mpsc;

use crate::driver::{DriverHandle, Input};
use crate::fault::{FaultFilter, Verdict};
use kv_proto::coalesce::Coalescing;

/// Sends core messages to peers. `send` never blocks; messages to an unreachable peer are
/// dropped (the protocol retries).
#[derive(Clone)]
pub struct Transport {
    me: NodeId,
    peers: HashMap<NodeId, mpsc::UnboundedSender<Outgoing>>,
    /// Per peer: whether its stream is connected (and the peer accepted this node).
    up: HashMap<NodeId, Arc<AtomicBool>>,
    /// Peers that refused this node, with their reason.
    refused_by: Refusals,
    /// Peers this node's receiver refuses: nothing they send is heard.
    refusing: Refusals,
    filter: FaultFilter,
    runtime: tokio::runtime::Handle,
    refill: Arc<RefillFlags>,
}

/// A leaderless node's refill as its connections carry it (see
/// `kv_replica::leaderless::Leaderless::start_refill`).
#[derive(Default)]
pub struct RefillFlags {
    /// A leaderless node (only its driver takes the answers).
    leaderless: bool,
    /// This node is refilling itself: said in every hello, so that a peer that did not see it
    /// come back empty knows.
    me: AtomicBool,
    /// Answers to this node's hellos since the driver last looked.
    answers: std::sync::Mutex<Vec<HelloAnswer>>,
}

/// A leaderless peer's answer to this node's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAnswer {
    /// The peer.
    pub peer: NodeId,
    /// It takes this node for one back empty.
    pub refilling: bool,
    /// It is established itself (`kv_replica::leaderless::Leaderless::established`).
    pub established: bool,
}

impl Transport {
    /// Starts one sender task per peer (`members` minus `me`), every message passing `filter`;
    /// each connection opens with a hello carrying `shape`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        me: NodeId,
        members: &[(NodeId, String)],
        shape: &ClusterShape,
        filter: FaultFilter,
    ) -> Self {
        let mut peers = HashMap::new();
        let mut up = HashMap::new();
        let refused_by = Refusals::default();
        let refill = Arc::new(RefillFlags {
            leaderless: shape.mode == "leaderless",
            ..RefillFlags::default()
        });
        for (id, addr) in members {
            if *id == me {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let flag = Arc::new(AtomicBool::new(true));
            let hello = pb::PeerEnvelope {
                from: me.0.clone(),
                msg: Some(pb::peer_envelope::Msg::Hello(shape.hello(id))),
            };
            tokio::spawn(peer_sender(
                Peer {
                    id: id.clone(),
                    addr: addr.clone(),
                    hello,
                    up: flag.clone(),
                    refused_by: refused_by.clone(),
                    refill: refill.clone(),
                },
                rx,
            ));
            peers.insert(id.clone(), tx);
            up.insert(id.clone(), flag);
        }
        Transport {
            me,
            peers,
            up,
            refused_by,
            refusing: Refusals::default(),
            filter,
            runtime: tokio::runtime::Handle::current(),
            refill,
        }
    }

    /// Says in the hellos of new connections whether this node is refilling itself.
    pub fn set_refilling(&self, on: bool) {
        self.refill.me.store(on, Ordering::Relaxed);
    }

    /// The peers' answers to this node's hellos since the last call.
    pub fn hello_answers(&self) -> Vec<HelloAnswer> {
        std::mem::take(
            &mut *self
                .refill
                .answers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// The peers that refuse this node now, with their reasons.
    pub fn refused_by(&self) -> Vec<(NodeId, String)> {
        self.refused_by.list()
    }

    /// Queues `msg` for `to` (callable from any thread).
    pub fn send(&self, to: &NodeId, msg: Message) {
        self.send_wire(to, to_wire(msg));
    }

    /// Whether `peer` looks reachable: its stream is connected (or not yet known to be
    /// broken), it accepted this node, no partition cuts it off, and this node does not refuse
    /// it.
    pub fn reachable(&self, peer: &NodeId) -> bool {
        !self.filter.blocks(peer)
            && self.up.get(peer).is_some_and(|f| f.load(Ordering::Relaxed))
            && !self.refusing.holds(peer)
    }

    /// The same transport, taking the peers that `refusing` holds (those this node's
    /// [`PeerReceiver`] refuses) for unreachable: they can be sent to, but not heard.
    #[must_use]
    pub fn refusing(self, refusing: Refusals) -> Self {
        Transport { refusing, ..self }
    }

    /// The clock offset the fault filter holds (leaderless versions).
    pub fn clock_offset_ms(&self) -> i64 {
        self.filter.clock_offset_ms()
    }

    /// The peers [`reachable`](Self::reachable) now, sorted.
    pub fn reachable_peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .up
            .keys()
            .filter(|p| self.reachable(p))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Queues a wire message for `to` (callable from any thread).
    pub fn send_wire(&self, to: &NodeId, msg: pb::peer_envelope::Msg) {
        let env = pb::PeerEnvelope {
            from: self.me.0.clone(),
            msg: Some(msg),
        };
        self.queue(to, Outgoing::Envelope(env));
    }

    /// Queues a leader's snapshot for `to` (`Message::Snapshot`) whose data, `len` bytes, is
    /// read from `file`, a fragment at a time, as its turn comes: neither the data nor its
    /// encoding is ever whole in memory. `snapshot.data` is ignored.
    pub fn send_snapshot_file(
        &self,
        to: &NodeId,
        term: Term,
        snapshot: Snapshot,
        file: Arc<std::fs::File>,
        len: u64,
    ) {
        let install = install_to_wire(
            term,
            Snapshot {
                data: bytes::Bytes::new(),
                ..snapshot
            },
        );
        let head = snapshot_head(&self.me.0, &install, len);
        self.queue(to, Outgoing::SnapshotFile { head, file, len });
    }

    /// Queues `out` for `to` through the fault filter.
    fn queue(&self, to: &NodeId, env: Outgoing) {
        let Some(tx) = self.peers.get(to) else {
            return;
        };
        match self.filter.outgoing(to) {
            Verdict::Deliver => {
                let _ = tx.send(env);
            }
            Verdict::Drop => {}
            Verdict::Delay(d) => {
                let tx = tx.clone();
                self.runtime.spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(env);
                });
            }
        }
    }
}

/// Most messages sent as one frame.
const MAX_BATCH: usize = 256;

/// The first bytes a peer sends on a new connection. They tell it apart from a gRPC client
/// (whose HTTP/2 preface starts `PRI *`) on the node's one port.
pub const PEER_MAGIC: &[u8; 8] = b"QKVPEER1";

/// Largest frame a receiver accepts; a longer length means a broken or hostile stream.
const MAX_FRAME: usize = 64 << 20;

/// A message whose encoding is longer than this goes in fragments of this size, one at a time
/// between the other frames, so that a snapshot does not hold up heartbeats and votes behind
/// it for as long as it takes to cross.
const FRAGMENT: usize = 1 << 20;

/// Largest message a receiver reassembles from fragments.
const MAX_MESSAGE: usize = 4 << 30;

/// How long an accepted connection may stay silent before it is taken for a gRPC client.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a sender waits before connecting again to a peer that refused it.
const REFUSED_RETRY: Duration = Duration::from_secs(1);

/// What every node of one cluster must agree on, exchanged when a peer connection opens: each
/// node counts its majority (leader-follower) or places keys on its ring (leaderless) from its
/// own flags, so a node started with another mode, `--peers`, `--n` or `--vnodes` would
/// otherwise take part with other rules than the rest. etcd likewise refuses a member of
/// another cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterShape {
    /// This node.
    pub me: NodeId,
    /// `leader-follower` or `leaderless`.
    pub mode: String,
    /// Member ids, sorted.
    pub members: Vec<NodeId>,
    /// Leaderless: replicas per key (N); 0 in leader-follower mode.
    pub replicas: u32,
    /// Leaderless: virtual nodes per member; 0 in leader-follower mode.
    pub vnodes: u32,
    /// This node's data directory's incarnation (`data_dir::incarnation`), or in memory a new
    /// one at every start (`data_dir::memory_incarnation`); empty for a single node.
    pub incarnation: String,
}

impl ClusterShape {
    /// The hello this node sends to `to`.
    fn hello(&self, to: &NodeId) -> pb::PeerHello {
        pb::PeerHello {
            to: to.0.clone(),
            mode: self.mode.clone(),
            members: self.members.iter().map(|m| m.0.clone()).collect(),
            replicas: self.replicas,
            vnodes: self.vnodes,
            incarnation: self.incarnation.clone(),
            refilling: false, // set at each connection (`RefillFlags`)
        }
    }

    /// Why this node refuses `from`, which sent `hello`; `None` when they agree.
    pub fn refusal(&self, from: &NodeId, hello: &pb::PeerHello) -> Option<String> {
        let me = &self.me;
        let mut why = Vec::new();
        if hello.to != me.0 {
            why.push(format!(
                "{from} expected {} at this address, but this is {me} (the nodes' --peers disagree)",
                hello.to
            ));
        }
        if hello.mode != self.mode {
            why.push(format!(
                "{from} runs {}, {me} {} (one cluster runs one replication mode)",
                hello.mode, self.mode
            ));
        }
        let mine: Vec<&str> = self.members.iter().map(|m| m.0.as_str()).collect();
        let mut theirs: Vec<&str> = hello.members.iter().map(String::as_str).collect();
        theirs.sort_unstable();
        if mine != theirs {
            why.push(format!(
                "{from} has members {}, {me} {} (each node counts its own majority, or ring)",
                theirs.join(","),
                mine.join(",")
            ));
        }
        if hello.mode == self.mode {
            for (what, theirs, mine) in [
                ("N", hello.replicas, self.replicas),
                ("vnodes", hello.vnodes, self.vnodes),
            ] {
                if theirs != mine {
                    why.push(format!(
                        "{what}: {from} {theirs}, {me} {mine} (nodes would place keys on different replicas)"
                    ));
                }
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// How long a refusal is remembered without being repeated. A refused node connects again
/// every [`REFUSED_RETRY`], so a refusal that is not repeated within this is over (the peer is
/// down, or stopped trying).
const REFUSAL_MEMORY: Duration = Duration::from_secs(5);

/// Peers refused (or refusing), with the reason and when last; shared by a node's connections.
#[derive(Clone)]
pub struct Refusals {
    seen: Arc<std::sync::Mutex<HashMap<NodeId, (String, std::time::Instant)>>>,
    memory: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::remembering(REFUSAL_MEMORY)
    }
}

impl Refusals {
    /// Refusals that are over once not repeated for `memory`.
    fn remembering(memory: Duration) -> Self {
        Refusals {
            seen: Arc::default(),
            memory,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (String, std::time::Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `peer` is refused for `why`; true when that is news (worth a log line).
    fn set(&self, peer: &NodeId, why: &str) -> bool {
        let now = std::time::Instant::now();
        let before = self.lock().insert(peer.clone(), (why.to_string(), now));
        !before.is_some_and(|(w, at)| w == why && now - at < self.memory)
    }

    /// Records that `peer` is accepted; true when it was refused lately.
    fn clear(&self, peer: &NodeId) -> bool {
        self.lock()
            .remove(peer)
            .is_some_and(|(_, at)| at.elapsed() < self.memory)
    }

    /// Whether `peer` was refused lately.
    fn holds(&self, peer: &NodeId) -> bool {
        self.lock()
            .get(peer)
            .is_some_and(|(_, at)| at.elapsed() < self.memory)
    }

    /// The peers refused lately, sorted, with the reasons.
    pub fn list(&self) -> Vec<(NodeId, String)> {
        let mut v: Vec<(NodeId, String)> = self
            .lock()
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < self.memory)
            .map(|(k, (why, _))| (k.clone(), why.clone()))
            .collect();
        v.sort();
        v
    }
}

/// The peer address as `host:port` (a scheme, if given, is dropped).
fn host_port(addr: &str) -> &str {
    addr.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// Appends `env` to `out` as one frame: a 4-byte big-endian length, then the protobuf message.
fn encode_frame(env: &pb::PeerEnvelope, out: &mut Vec<u8>) {
    use prost::Message as _;
    let len = env.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    env.encode(out).expect("invariant: a Vec grows as needed");
}

/// One peer as its sender task sees it.
struct Peer {
    id: NodeId,
    addr: String,
    /// The first frame on each connection.
    hello: pb::PeerEnvelope,
    /// Connected, and accepted by the peer.
    up: Arc<AtomicBool>,
    refused_by: Refusals,
    refill: Arc<RefillFlags>,
}

/// One connection to `peer`, kept open and reopened when it breaks: a hello, then frames of
/// length-prefixed `PeerEnvelope`s (several queued messages go as one `PeerBatch`), written in
/// order; a message longer than [`FRAGMENT`] goes in fragments, each after whatever small
/// messages queued meanwhile. Peer messages are many and small; plain framed TCP costs a
/// fraction of a gRPC stream message (no HTTP/2 framing, flow control or extra task hops), and
/// the protocol tolerates the loss of whatever was in flight when a connection broke. Messages
/// go without waiting for the peer's answer to the hello; the peer counts as reachable once it
/// accepted, and a refusal (logged with its reason) closes the connection for
/// [`REFUSED_RETRY`].
async fn peer_sender(peer: Peer, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    use tokio::io::AsyncWriteExt as _;
    let target = host_port(&peer.addr).to_string();
    let mut frame = Vec::with_capacity(1 << 16);
    let mut opening = Vec::new();
    loop {
        let connected = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&target),
        )
        .await;
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            _ => {
                peer.up.store(false, Ordering::Relaxed);
                // Unreachable: drop what queued meanwhile (it is stale) and retry soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The hello says whether this node is refilling now.
        let mut hello = peer.hello.clone();
        if let Some(pb::peer_envelope::Msg::Hello(h)) = &mut hello.msg {
            h.refilling = peer.refill.me.load(Ordering::Relaxed);
        }
        opening.clear();
        opening.extend_from_slice(PEER_MAGIC);
        encode_frame(&hello, &mut opening);
        if stream.write_all(&opening).await.is_err() {
            continue;
        }
        let (read, mut write) = stream.into_split();
        let answers = read_answers(read, &peer);
        tokio::pin!(answers);
        let mut refused = None;
        // Large messages to send in fragments, in order. Each is encoded only when its turn
        // comes (until then it holds what it carries by reference): encoded as they were taken
        // from the queue, while one fragment goes per turn, they made a leader behind with a
        // follower keep a copy of everything queued for it (with 1 MiB values, a leader was
        // OOM-killed at 12 GB). A snapshot from a file is read a fragment at a time.
        let mut large: std::collections::VecDeque<Outgoing> = Default::default();
        let mut sending: Option<Fragmenting> = None;
        // Send until the connection breaks; notice a close at once, so that a restarted peer is
        // reconnected before anyone needs to reach it.
        loop {
            let first = if large.is_empty() && sending.is_none() {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => Some(m),
                        None => return,
                    },
                    why = &mut answers => {
                        refused = why;
                        break;
                    }
                }
            } else {
                None
            };
            // Whatever else queued meanwhile goes in the same frame, except large messages: they
            // go in fragments, alone.
            let mut batch: Vec<pb::PeerEnvelope> = Vec::new();
            let mut next = first;
            while batch.len() < MAX_BATCH {
                let Some(m) = next.take().or_else(|| rx.try_recv().ok()) else {
                    break;
                };
                match m {
                    Outgoing::Envelope(e) if prost::Message::encoded_len(&e) <= FRAGMENT => {
                        batch.push(e);
                    }
                    m => large.push_back(m),
                }
            }
            if !batch.is_empty() {
                let env = if batch.len() == 1 {
                    batch.remove(0)
                } else {
                    pb::PeerEnvelope {
                        from: String::new(),
                        msg: Some(pb::peer_envelope::Msg::Batch(pb::PeerBatch {
                            envelopes: batch,
                        })),
                    }
                };
                frame.clear();
                encode_frame(&env, &mut frame);
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
            if sending.is_none()
                && let Some(m) = large.pop_front()
            {
                match Fragmenting::new(m).await {
                    Ok(f) => sending = Some(f),
                    Err(e) => {
                        tracing::warn!(peer = %peer.id, error = %e, "cannot encode a large message; it is not sent");
                        continue;
                    }
                }
            }
            if let Some(msg) = &mut sending {
                let first = msg.sent == 0;
                let total = msg.len() as u64;
                let data = match msg.next_piece().await {
                    Ok(d) => d,
                    Err(e) => {
                        // The receiver drops the pieces that went when the connection breaks.
                        tracing::warn!(peer = %peer.id, error = %e, "cannot read a snapshot being sent; it is not sent");
                        break;
                    }
                };
                let piece = pb::PeerEnvelope {
                    from: String::new(),
                    msg: Some(pb::peer_envelope::Msg::Fragment(pb::PeerFragment {
                        data,
                        last: msg.done(),
                        total: if first { total } else { 0 },
                    })),
                };
                if msg.done() {
                    sending = None;
                }
                frame.clear();
                encode_frame(&piece, &mut frame);
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
            if frame.capacity() > 4 << 20 {
                frame = Vec::with_capacity(1 << 16); // do not keep a burst's buffer
            }
        }
        peer.up.store(false, Ordering::Relaxed);
        match refused {
            Some(why) => {
                if peer.refused_by.set(&peer.id, &why) {
                    tracing::error!(peer = %peer.id, addr = %peer.addr, "the peer refuses this node: {why}");
                }
                tokio::time::sleep(REFUSED_RETRY).await;
                while rx.try_recv().is_ok() {} // nobody would take them
                if rx.is_closed() {
                    return;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// What the peer says on a connection: its answer to the hello, then nothing until the
/// connection closes. Returns the peer's reason when it refused this node, `None` when the
/// connection closed (or answered something else than an answer).
async fn read_answers(mut read: tokio::net::tcp::OwnedReadHalf, peer: &Peer) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    match read_envelope(&mut read).await.and_then(|e| e.msg) {
        Some(pb::peer_envelope::Msg::Answer(a)) if a.refused.is_empty() => {
            if peer.refill.leaderless {
                let mut answers = peer
                    .refill
                    .answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                answers.push(HelloAnswer {
                    peer: peer.id.clone(),
                    refilling: a.refilling,
                    established: a.established,
                });
            }
            peer.up.store(true, Ordering::Relaxed);
            if peer.refused_by.clear(&peer.id) {
                tracing::info!(peer = %peer.id, "the peer accepts this node again");
            }
        }
        Some(pb::peer_envelope::Msg::Answer(a)) => return Some(a.refused),
        _ => return None,
    }
    let mut probe = [0u8; 1];
    let _ = read.read(&mut probe).await;
    None
}

/// Reads one frame; `None` when the connection closed or sent something malformed (logged).
async fn read_envelope<R: tokio::io::AsyncRead + Unpin>(conn: &mut R) -> Option<pb::PeerEnvelope> {
    use prost::Message as _;
    use tokio::io::AsyncReadExt as _;
    let len = conn.read_u32().await.ok()? as usize;
    if len > MAX_FRAME {
        tracing::warn!(len, "peer frame too long; closing the connection");
        return None;
    }
    let mut buf = bytes::BytesMut::zeroed(len);
    conn.read_exact(&mut buf).await.ok()?;
    match pb::PeerEnvelope::decode(buf.freeze()) {
        Ok(env) => Some(env),
        Err(_) => {
            tracing::warn!("malformed peer frame; closing the connection");
            None
        }
    }
}

/// Where incoming peer messages go.
#[derive(Clone)]
pub enum PeerSink {
    /// The leader-follower driver.
    Raft(DriverHandle),
    /// The leaderless driver.
    Leaderless(crate::leaderless::LlHandle),
}

/// Receives peer connections: answers each one's hello, accepting a node of the same cluster
/// shape or refusing it with the reason, then feeds every incoming message that `filter`
/// accepts to the driver.
#[derive(Clone)]
pub struct PeerReceiver {
    shape: Arc<ClusterShape>,
    sink: PeerSink,
    filter: FaultFilter,
    refusing: Refusals,
    /// Leader-follower, on disk: the peers' data directories known, to refuse one that lost
    /// its data.
    book: Option<Arc<crate::data_dir::PeerBook>>,
    /// Leader-follower, on disk: where a leader's snapshot is received, into a file rather
    /// than into memory (the replica log's directory, whose writer renames it into place).
    staging: Option<Arc<std::path::PathBuf>>,
}

impl PeerReceiver {
    /// A receiver for a node of `shape`, feeding `sink` what `filter` accepts and keeping in
    /// `refusing` the peers it refuses.
    pub fn new(
        shape: ClusterShape,
        sink: PeerSink,
        filter: FaultFilter,
        refusing: Refusals,
    ) -> Self {
        PeerReceiver {
            shape: Arc::new(shape),
            sink,
            filter,
            refusing,
            book: None,
            staging: None,
        }
    }

    /// The same, checking each peer's data directory against `book` (if any).
    #[must_use]
    pub fn knowing(self, book: Option<crate::data_dir::PeerBook>) -> Self {
        PeerReceiver {
            book: book.map(Arc::new),
            ..self
        }
    }

    /// The same, receiving a leader's snapshot into a file in `dir` (if any).
    #[must_use]
    pub fn staging_in(self, dir: Option<std::path::PathBuf>) -> Self {
        PeerReceiver {
            staging: dir
                .filter(|_| matches!(self.sink, PeerSink::Raft(_)))
                .map(Arc::new),
            ..self
        }
    }

    /// Answers the hello of one peer connection (its magic already consumed), then reads frames
    /// from it until it closes or sends something malformed.
    async fn serve(&self, conn: tokio::net::TcpStream) {
        use prost::Message as _;
        use tokio::io::AsyncWriteExt as _;
        let (read, mut write) = conn.into_split();
        let mut conn = tokio::io::BufReader::with_capacity(1 << 16, read);
        let Some(hello) = read_envelope(&mut conn).await else {
            return;
        };
        let from = NodeId(hello.from);
        let (refusal, refilling) = match hello.msg {
            Some(pb::peer_envelope::Msg::Hello(h)) => match self.shape.refusal(&from, &h) {
                Some(why) => (Some(why), false),
                None => match self.check_data_dir(&from, h.incarnation).await {
                    Err(why) => (Some(why), false),
                    Ok(came_back) => (None, self.refilling(&from, came_back || h.refilling)),
                },
            },
            _ => (
                Some(format!(
                    "{from} sent no hello first (a quorumkv node of another version?)"
                )),
                false,
            ),
        };
        let answer = pb::PeerEnvelope {
            from: self.shape.me.0.clone(),
            msg: Some(pb::peer_envelope::Msg::Answer(pb::PeerAnswer {
                refused: refusal.clone().unwrap_or_default(),
                refilling,
                established: match &self.sink {
                    PeerSink::Leaderless(h) => h.established(),
                    PeerSink::Raft(_) => true,
                },
            })),
        };
        let mut buf = Vec::new();
        encode_frame(&answer, &mut buf);
        let _ = write.write_all(&buf).await;
        if let Some(why) = refusal {
            if self.refusing.set(&from, &why) {
                tracing::error!(peer = %from, "refusing the peer: {why}");
            }
            return;
        }
        if self.refusing.clear(&from) {
            tracing::info!(peer = %from, "accepting a peer refused before");
        }
        // `write` lives on: the sender takes the end of this direction for a closed connection.
        // The fragments of a large message received so far, or the snapshot being received
        // into a file.
        let mut assembling = bytes::BytesMut::new();
        let mut receiving: Option<Receiving> = None;
        loop {
            let Some(mut env) = read_envelope(&mut conn).await else {
                return;
            };
            if let Some(pb::peer_envelope::Msg::Fragment(f)) = env.msg {
                if assembling.is_empty() && receiving.is_none() {
                    receiving = self.receive_to_file(&f);
                }
                if let Some(r) = &mut receiving {
                    let last = f.last;
                    if let Err(e) = r.write(f).await {
                        tracing::warn!(error = %e, "cannot receive a snapshot into its file; closing the connection");
                        return;
                    }
                    if let Some(r) = receiving.take_if(|_| last) {
                        match r.finish() {
                            Ok((env, staged, data)) => self.deliver_snapshot(env, staged, data),
                            Err(e) => {
                                tracing::warn!(error = %e, "a snapshot received into its file is incomplete; closing the connection");
                                return;
                            }
                        }
                    }
                    continue;
                }
                if assembling.len() + f.data.len() > MAX_MESSAGE {
                    tracing::warn!("fragmented peer message too long; closing the connection");
                    return;
                }
                if assembling.is_empty() && f.total as usize <= MAX_MESSAGE {
                    // Room for the whole message at once: grown by doubling, a gigabyte's
                    // buffer held half as much again while it moved.
                    assembling.reserve(f.total as usize);
                }
                assembling.extend_from_slice(&f.data);
                if !f.last {
                    continue;
                }
                let whole = std::mem::take(&mut assembling).freeze();
                match pb::PeerEnvelope::decode(whole) {
                    Ok(e) if !matches!(e.msg, Some(pb::peer_envelope::Msg::Fragment(_))) => env = e,
                    _ => {
                        tracing::warn!("malformed fragmented peer message; closing the connection");
                        return;
                    }
                }
            }
            match env.msg {
                Some(pb::peer_envelope::Msg::Batch(b)) => {
                    for env in b.envelopes {
                        self.deliver_one(env);
                    }
                }
                _ => self.deliver_one(env),
            }
        }
    }

    /// Why `from`, whose data directory is `incarnation`, is refused by the book, if it is;
    /// if not, whether it came back empty. A first sight of a peer writes `peers.toml` durably
    /// (fsyncs): done off the runtime's threads, which serve every request meanwhile.
    async fn check_data_dir(&self, from: &NodeId, incarnation: String) -> Result<bool, String> {
        let Some(book) = self.book.clone() else {
            return Ok(false);
        };
        if incarnation.is_empty() {
            return Ok(false); // a single node (none is a peer)
        }
        let peer = from.0.clone();
        tokio::task::spawn_blocking(move || book.check(&peer, &incarnation))
            .await
            .unwrap_or_else(|e| Err(format!("cannot check {from}'s data directory: {e}")))
    }

    /// Leaderless: whether `from`, accepted, is taken for a replica back empty (`back_empty`:
    /// it came with another incarnation, or said it is refilling; or it was taken so already
    /// and has not said it refilled). The driver hears of it before any message that came
    /// after the hello.
    fn refilling(&self, from: &NodeId, back_empty: bool) -> bool {
        let PeerSink::Leaderless(h) = &self.sink else {
            return false;
        };
        let refilling = back_empty || h.is_refilling_peer(from);
        if refilling {
            h.peer_refilling(from.clone());
        }
        refilling
    }

    /// When `first`, a message's first fragment, starts a leader's snapshot and this node
    /// receives snapshots into files: the file its data goes to. A gigabyte's snapshot held in
    /// memory until it was installed and written came on top of the state it replaces.
    fn receive_to_file(&self, first: &pb::PeerFragment) -> Option<Receiving> {
        let dir = self.staging.as_ref()?;
        let (env, at) = parse_snapshot_head(&first.data, first.total)?;
        let len = first.total - at as u64;
        match crate::raft_log::StagedSnapshot::create(dir, len) {
            Ok((staged, file)) => {
                tracing::info!(bytes = len, "receiving a leader's snapshot into a file");
                Some(Receiving {
                    env,
                    staged,
                    file: Arc::new(file),
                    skip: at,
                    written: 0,
                    started: std::time::Instant::now(),
                })
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create a file for a snapshot; receiving it into memory");
                None
            }
        }
    }

    /// Hands the driver a snapshot whose data `staged` holds, open as `data`.
    fn deliver_snapshot(
        &self,
        env: pb::PeerEnvelope,
        staged: crate::raft_log::StagedSnapshot,
        data: std::fs::File,
    ) {
        let from = NodeId(env.from);
        if !self.filter.accepts_from(&from) {
            return;
        }
        if let (PeerSink::Raft(d), Some(msg)) = (&self.sink, env.msg.and_then(from_wire)) {
            d.send(Input::PeerSnapshot {
                from,
                msg,
                staged,
                data,
            });
        }
    }

    fn deliver_one(&self, env: pb::PeerEnvelope) {
        let from = NodeId(env.from);
        if !self.filter.accepts_from(&from) {
            return;
        }
        let Some(msg) = env.msg else { return };
        match &self.sink {
            PeerSink::Raft(d) => {
                if let Some(msg) = from_wire(msg) {
                    d.send(Input::Peer { from, msg });
                }
            }
            PeerSink::Leaderless(h) => {
                if let Some(msg) = crate::leaderless::from_wire(msg) {
                    h.peer(from, msg);
                }
            }
        }
    }
}

/// Accepts connections on the node's port until `stop` resolves. A connection that starts with
/// [`PEER_MAGIC`] is served by `peers`; any other goes to the returned stream (the gRPC server).
pub fn split_incoming(
    listener: tokio::net::TcpListener,
    peers: Option<PeerReceiver>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_stream::wrappers::UnboundedReceiverStream<
    std::io::Result<Coalescing<tokio::net::TcpStream>>,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                () = &mut stop => return,
            };
            let stream = match conn {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match &peers {
                None => {
                    if tx.send(Ok(Coalescing::new(stream))).is_err() {
                        return;
                    }
                }
                Some(p) => {
                    let (p, tx) = (p.clone(), tx.clone());
                    tokio::spawn(async move {
                        if is_peer(&stream).await {
                            let mut stream = stream;
                            let mut magic = [0u8; PEER_MAGIC.len()];
                            use tokio::io::AsyncReadExt as _;
                            if stream.read_exact(&mut magic).await.is_ok() {
                                p.serve(stream).await;
                            }
                        } else {
                            let _ = tx.send(Ok(Coalescing::new(stream)));
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
}

/// Whether the connection's first bytes are [`PEER_MAGIC`] (waits for them, within
/// [`SNIFF_TIMEOUT`]; a silent connection is not a peer).
async fn is_peer(stream: &tokio::net::TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; PEER_MAGIC.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || buf[..n] != PEER_MAGIC[..n] {
            return false;
        }
        if n == PEER_MAGIC.len() {
            return true;
        }
        // A prefix of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn entry_to_wire(e: Entry) -> pb::LogEntry {
    use pb::log_entry::Kind;
    let mut expected = None;
    let (kind, key, value) = match e.cmd {
        Command::Put { key, value } => (Kind::Put, key, value),
        Command::Delete { key } => (Kind::Delete, key, Default::default()),
        Command::Noop => (Kind::Noop, Default::default(), Default::default()),
        Command::Cas {
            key,
            expected: exp,
            value,
        } => {
            expected = exp;
            (Kind::Cas, key, value)
        }
    };
    let exp = expected.unwrap_or_default();
    pb::LogEntry {
        term: e.term.0,
        index: e.index.0,
        kind: kind as i32,
        key,
        value,
        has_expected: expected.is_some(),
        expected_epoch: exp.epoch,
        expected_counter: exp.counter,
    }
}

fn entry_from_wire(e: pb::LogEntry) -> Option<Entry> {
    use pb::log_entry::Kind;
    let cmd = match Kind::try_from(e.kind).ok()? {
        Kind::Put => Command::Put {
            key: crate::detach(e.key),
            value: crate::detach(e.value),
        },
        Kind::Delete => Command::Delete {
            key: crate::detach(e.key),
        },
        Kind::Noop => Command::Noop,
        Kind::Cas => Command::Cas {
            key: crate::detach(e.key),
            expected: e
                .has_expected
                .then(|| kv_replica::Version::new(e.expected_epoch, e.expected_counter)),
            value: crate::detach(e.value),
        },
        Kind::Unspecified => return None,
    };
    Some(Entry {
        term: Term(e.term),
        index: LogIndex(e.index),
        cmd,
    })
}

/// Core message to wire message.
pub fn to_wire(m: Message) -> pb::peer_envelope::Msg {
    use pb::peer_envelope::Msg;
    match m {
        Message::RequestVote {
            term,
            last_index,
            last_term,
        } => Msg::RequestVote(pb::RequestVote {
            term: term.0,
            last_index: last_index.0,
            last_term: last_term.0,
        }),
        Message::Vote { term, granted } => Msg::Vote(pb::Vote {
            term: term.0,
            granted,
        }),
        Message::PreVote {
            term,
            last_index,
            last_term,
        } => Msg::PreVote(pb::RequestVote {
            term: term.0,
            last_index: last_index.0,
            last_term: last_term.0,
        }),
        Message::PreVoteReply { term, granted } => Msg::PreVoteReply(pb::Vote {
            term: term.0,
            granted,
        }),
        Message::Append {
            term,
            prev_index,
            prev_term,
            entries,
            commit,
            read_seq,
        } => Msg::Append(pb::Append {
            term: term.0,
            prev_index: prev_index.0,
            prev_term: prev_term.0,
            entries: entries.into_iter().map(entry_to_wire).collect(),
            commit: commit.0,
            read_seq,
        }),
        Message::AppendReply {
            term,
            ok,
            index,
            read_seq,
        } => Msg::AppendReply(pb::AppendReply {
            term: term.0,
            ok,
            index: index.0,
            read_seq,
        }),
        Message::Snapshot { term, snapshot } => {
            Msg::InstallSnapshot(install_to_wire(term, snapshot))
        }
    }
}

fn install_to_wire(term: Term, snapshot: Snapshot) -> pb::InstallSnapshot {
    pb::InstallSnapshot {
        term: term.0,
        index: snapshot.index.0,
        snapshot_term: snapshot.term.0,
        term_starts: snapshot
            .terms
            .iter()
            .flat_map(|(i, t)| [i.0, t.0])
            .collect(),
        data: snapshot.data,
    }
}

/// The encoding of a `PeerEnvelope` from `from` carrying `install` with `len` bytes of data,
/// up to where the data begins: the data is the encoding's last field, so this and the data
/// after it are the envelope's whole encoding (what `encode_to_vec` would give with the data
/// in `install`).
fn snapshot_head(from: &str, install: &pb::InstallSnapshot, len: u64) -> bytes::Bytes {
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut inner = pb::InstallSnapshot {
        data: bytes::Bytes::new(),
        ..install.clone()
    }
    .encode_to_vec();
    encode_key(INSTALL_DATA, WireType::LengthDelimited, &mut inner);
    encode_varint(len, &mut inner);
    let mut head = pb::PeerEnvelope {
        from: from.to_owned(),
        msg: None,
    }
    .encode_to_vec();
    encode_key(ENVELOPE_INSTALL, WireType::LengthDelimited, &mut head);
    encode_varint(inner.len() as u64 + len, &mut head);
    head.extend_from_slice(&inner);
    head.into()
}

// Field numbers in peer.proto: `PeerEnvelope.from` and `.install_snapshot`, and
// `InstallSnapshot.data`.
const ENVELOPE_FROM: u32 = 1;
const ENVELOPE_INSTALL: u32 = 22;
const INSTALL_DATA: u32 = 5;

/// The other way from [`snapshot_head`]: when `first`, the start of the encoding of a
/// `PeerEnvelope` of `total` bytes, is the head of a snapshot whose data ends the message, the
/// envelope without the data, and where in the message the data begins. `None` for any other
/// message, or a head longer than `first`.
fn parse_snapshot_head(first: &[u8], total: u64) -> Option<(pb::PeerEnvelope, usize)> {
    use prost::Message as _;
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut cur = first;
    let mut from = String::new();
    loop {
        let (tag, wire) = decode_key(&mut cur).ok()?;
        if wire != WireType::LengthDelimited {
            return None;
        }
        let len = decode_varint(&mut cur).ok()?;
        let start = first.len() - cur.len();
        match tag {
            ENVELOPE_FROM => {
                let (bytes, rest) = cur.split_at_checked(usize::try_from(len).ok()?)?;
                from = std::str::from_utf8(bytes).ok()?.to_owned();
                cur = rest;
            }
            ENVELOPE_INSTALL if start as u64 + len == total => break,
            _ => return None,
        }
    }
    // The snapshot's fields, up to its data.
    let install_at = first.len() - cur.len();
    loop {
        let field = first.len() - cur.len();
        let (tag, wire) = decode_key(&mut cur).ok()?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut cur).ok()?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut cur).ok()?;
                let at = first.len() - cur.len();
                if tag == INSTALL_DATA {
                    if at as u64 + len != total {
                        return None;
                    }
                    let install = pb::InstallSnapshot::decode(&first[install_at..field]).ok()?;
                    let msg = pb::peer_envelope::Msg::InstallSnapshot(install);
                    return Some((
                        pb::PeerEnvelope {
                            from,
                            msg: Some(msg),
                        },
                        at,
                    ));
                }
                cur = cur.get(usize::try_from(len).ok()?..)?;
            }
            _ => return None,
        }
    }
}

/// A leader's snapshot whose data goes to a file as its fragments come.
struct Receiving {
    /// The envelope, without the data.
    env: pb::PeerEnvelope,
    staged: crate::raft_log::StagedSnapshot,
    file: Arc<std::fs::File>,
    /// Bytes of the message before the data, not yet passed over.
    skip: usize,
    written: u64,
    started: std::time::Instant,
}

impl Receiving {
    /// Writes the data in `f`, the next fragment, on a blocking thread.
    async fn write(&mut self, f: pb::PeerFragment) -> std::io::Result<()> {
        let mut data = f.data;
        let skip = self.skip.min(data.len());
        self.skip -= skip;
        let data = data.split_off(skip);
        if self.written + data.len() as u64 > self.staged.len() {
            return Err(std::io::Error::other(
                "more data than the snapshot announced",
            ));
        }
        self.written += data.len() as u64;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || std::io::Write::write_all(&mut &*file, &data))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The whole snapshot came: the envelope, its data's file, and that file open to read.
    fn finish(
        self,
    ) -> std::io::Result<(
        pb::PeerEnvelope,
        crate::raft_log::StagedSnapshot,
        std::fs::File,
    )> {
        let data = self.staged.open()?;
        let took = self.started.elapsed();
        tracing::info!(
            bytes = self.written,
            took_ms = took.as_millis() as u64,
            mb_per_s = (self.written as f64 / 1e6 / took.as_secs_f64().max(1e-3)).round(),
            "received a leader's snapshot into a file"
        );
        Ok((self.env, self.staged, data))
    }
}

/// What a peer's sender task sends.
enum Outgoing {
    Envelope(pb::PeerEnvelope),
    /// A snapshot whose data is read from `file` as it goes ([`Transport::send_snapshot_file`]):
    /// the envelope's encoding up to the data ([`snapshot_head`]), and the data's length.
    SnapshotFile {
        head: bytes::Bytes,
        file: Arc<std::fs::File>,
        len: u64,
    },
}

/// A large message going out in fragments: its encoding in memory (all of it, or the head of
/// a snapshot whose data follows from its file), and how much of it went.
struct Fragmenting {
    head: bytes::Bytes,
    file: Option<(Arc<std::fs::File>, u64)>,
    sent: usize,
}

impl Fragmenting {
    /// A large envelope is encoded on a blocking thread: an append of 256 entries of 1 MiB
    /// is a 256 MiB copy, long enough on the node's runtime to hold up its heartbeats.
    async fn new(m: Outgoing) -> std::io::Result<Self> {
        let (head, file) = match m {
            Outgoing::Envelope(e) => {
                let encoded =
                    tokio::task::spawn_blocking(move || prost::Message::encode_to_vec(&e))
                        .await
                        .map_err(std::io::Error::other)?;
                (encoded.into(), None)
            }
            Outgoing::SnapshotFile { head, file, len } => (head, Some((file, len))),
        };
        Ok(Fragmenting {
            head,
            file,
            sent: 0,
        })
    }

    fn len(&self) -> usize {
        self.head.len() + self.file.as_ref().map_or(0, |(_, len)| *len as usize)
    }

    /// The next fragment (up to [`FRAGMENT`] bytes), read from the file on a blocking thread
    /// where it covers the file's part.
    async fn next_piece(&mut self) -> std::io::Result<bytes::Bytes> {
        let (from, to) = (self.sent, (self.sent + FRAGMENT).min(self.len()));
        let hl = self.head.len();
        let piece = match &self.file {
            Some((file, _)) if to > hl => {
                let mut buf = Vec::with_capacity(to - from);
                buf.extend_from_slice(&self.head[from.min(hl)..]);
                let (file, at, n) = (file.clone(), from.max(hl) - hl, to - from.max(hl));
                let data = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt as _;
                    let mut data = vec![0; n];
                    file.read_exact_at(&mut data, at as u64).map(|()| data)
                })
                .await
                .map_err(std::io::Error::other)??;
                buf.extend_from_slice(&data);
                bytes::Bytes::from(buf)
            }
            _ => self.head.slice(from..to),
        };
        self.sent = to;
        Ok(piece)
    }

    fn done(&self) -> bool {
        self.sent == self.len()
    }
}

/// Wire message to core message; `None` when malformed.
pub fn from_wire(m: pb::peer_envelope::Msg) -> Option<Message> {
    use pb::peer_envelope::Msg;
    Some(match m {
        Msg::RequestVote(v) => Message::RequestVote {
            term: Term(v.term),
            last_index: LogIndex(v.last_index),
            last_term: Term(v.last_term),
        },
        Msg::Vote(v) => Message::Vote {
            term: Term(v.term),
            granted: v.granted,
        },
        Msg::PreVote(v) => Message::PreVote {
            term: Term(v.term),
            last_index: LogIndex(v.last_index),
            last_term: Term(v.last_term),
        },
        Msg::PreVoteReply(v) => Message::PreVoteReply {
            term: Term(v.term),
            granted: v.granted,
        },
        Msg::Append(a) => Message::Append {
            term: Term(a.term),
            prev_index: LogIndex(a.prev_index),
            prev_term: Term(a.prev_term),
            entries: a
                .entries
                .into_iter()
                .map(entry_from_wire)
                .collect::<Option<Vec<_>>>()?,
            commit: LogIndex(a.commit),
            read_seq: a.read_seq,
        },
        Msg::AppendReply(r) => Message::AppendReply {
            term: Term(r.term),
            ok: r.ok,
            index: LogIndex(r.index),
            read_seq: r.read_seq,
        },
        Msg::InstallSnapshot(s) => {
            if !s.term_starts.len().is_multiple_of(2) {
                return None;
            }
            Message::Snapshot {
                term: Term(s.term),
                snapshot: Snapshot {
                    index: LogIndex(s.index),
                    term: Term(s.snapshot_term),
                    terms: s
                        .term_starts
                        .chunks_exact(2)
                        .map(|p| (LogIndex(p[0]), Term(p[1])))
                        .collect(),
                    data: s.data,
                },
            }
        }
        // Leaderless traffic reaching a leader-follower node: a misconfigured peer.
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Instant;

    use super::*;

    /// The shape of leader-follower node `me` among `members`.
    pub(crate) fn lf_shape(me: &str, members: &[&str]) -> ClusterShape {
        let mut members: Vec<NodeId> = members.iter().map(|m| NodeId::from(*m)).collect();
        members.sort();
        ClusterShape {
            me: NodeId::from(me),
            mode: "leader-follower".into(),
            members,
            replicas: 0,
            vnodes: 0,
            incarnation: String::new(),
        }
    }

    /// A peer server of `shape` on its own runtime (dropping the runtime closes every
    /// connection at once, as a killed process does), and the peers it refuses.
    pub(crate) fn serve(
        listener: std::net::TcpListener,
        shape: ClusterShape,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<Input>,
        tokio::runtime::Runtime,
        Refusals,
    ) {
        serve_staging(listener, shape, None)
    }

    /// [`serve`], receiving snapshots into files in `staging` (if any).
    fn serve_staging(
        listener: std::net::TcpListener,
        shape: ClusterShape,
        staging: Option<std::path::PathBuf>,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<Input>,
        tokio::runtime::Runtime,
        Refusals,
    ) {
        let (handle, rx) = DriverHandle::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let refusing = Refusals::default();
        let receiver = PeerReceiver::new(
            shape,
            PeerSink::Raft(handle),
            FaultFilter::default(),
            refusing.clone(),
        )
        .staging_in(staging);
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            // Not a peer: nobody serves it here.
            let mut others = split_incoming(listener, Some(receiver), std::future::pending());
            use tokio_stream::StreamExt as _;
            while others.next().await.is_some() {}
        });
        (rx, rt, refusing)
    }

    fn vote() -> Message {
        Message::Vote {
            term: Term(3),
            granted: true,
        }
    }

    async fn received(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Input::Peer { from, msg }) = rx.try_recv() {
                return from == NodeId::from("n1") && msg == vote();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Entries a follower keeps in its log must not be slices of the peer batch they came in
    /// (each would pin the whole batch buffer).
    #[test]
    fn received_entries_do_not_pin_the_message_buffer() {
        use prost::Message as _;
        let append = Message::Append {
            term: Term(2),
            prev_index: LogIndex(0),
            prev_term: Term(0),
            entries: vec![kv_replica::leader_follower::Entry {
                term: Term(2),
                index: LogIndex(1),
                cmd: Command::Put {
                    key: bytes::Bytes::from_static(b"key"),
                    value: bytes::Bytes::from_static(b"value"),
                },
            }],
            commit: LogIndex(0),
            read_seq: 0,
        };
        let env = pb::PeerEnvelope {
            from: "n1".into(),
            msg: Some(to_wire(append.clone())),
        };
        let buf = bytes::Bytes::from(env.encode_to_vec());
        let decoded = pb::PeerEnvelope::decode(buf.clone()).expect("decode");
        let got = from_wire(decoded.msg.expect("msg")).expect("valid");
        assert_eq!(got, append);
        let Message::Append { entries, .. } = got else {
            unreachable!()
        };
        let Command::Put { key, value } = &entries[0].cmd else {
            unreachable!()
        };
        let r = buf.as_ptr_range();
        assert!(!r.contains(&key.as_ptr()) && !r.contains(&value.as_ptr()));
    }

    /// Peers and gRPC clients share the port: the first bytes decide, even when the magic
    /// arrives in pieces; the peer's hello is answered; a frame too long for any message
    /// closes the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_port_tells_peer_connections_from_grpc_clients() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio_stream::StreamExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (handle, mut rx) = DriverHandle::channel();
        let mut others = split_incoming(
            listener,
            Some(PeerReceiver::new(
                lf_shape("n2", &["n1", "n2"]),
                PeerSink::Raft(handle),
                FaultFilter::default(),
                Refusals::default(),
            )),
            std::future::pending(),
        );

        let mut grpc = tokio::net::TcpStream::connect(addr).await.expect("connect");
        grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let handed = tokio::time::timeout(Duration::from_secs(3), others.next())
            .await
            .expect("the gRPC client reaches the gRPC server")
            .expect("stream open")
            .expect("accepted");
        let mut preface = [0u8; 3];
        let mut handed = handed;
        handed.read_exact(&mut preface).await.expect("read");
        assert_eq!(&preface, b"PRI", "nothing of the preface was consumed");

        let mut peer = tokio::net::TcpStream::connect(addr).await.expect("connect");
        peer.write_all(&PEER_MAGIC[..3]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        peer.write_all(&PEER_MAGIC[3..]).await.expect("write");
        let mut frame = Vec::new();
        encode_frame(
            &pb::PeerEnvelope {
                from: "n1".into(),
                msg: Some(pb::peer_envelope::Msg::Hello(
                    lf_shape("n1", &["n1", "n2"]).hello(&NodeId::from("n2")),
                )),
            },
            &mut frame,
        );
        peer.write_all(&frame).await.expect("write");
        let answer = read_envelope(&mut peer).await.expect("an answer");
        assert_eq!(answer.from, "n2");
        assert!(
            matches!(answer.msg, Some(pb::peer_envelope::Msg::Answer(a)) if a.refused.is_empty()),
            "accepted"
        );
        frame.clear();
        encode_frame(
            &pb::PeerEnvelope {
                from: "n1".into(),
                msg: Some(to_wire(vote())),
            },
            &mut frame,
        );
        peer.write_all(&frame).await.expect("write");
        assert!(
            received(&mut rx).await,
            "the peer's message reached the driver"
        );

        peer.write_all(&u32::MAX.to_be_bytes())
            .await
            .expect("write");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), peer.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "an oversized frame closes the connection"
        );
    }

    /// n1's transport, and n2 served on its own runtime at the returned address.
    fn n1_and_n2() -> (
        Transport,
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Input>,
        tokio::runtime::Runtime,
    ) {
        n1_and_n2_staging(None)
    }

    /// [`n1_and_n2`], n2 receiving snapshots into files in `staging` (if any).
    fn n1_and_n2_staging(
        staging: Option<std::path::PathBuf>,
    ) -> (
        Transport,
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Input>,
        tokio::runtime::Runtime,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (rx, rt, _) = serve_staging(listener, lf_shape("n2", &["n1", "n2"]), staging);
        let t = Transport::start(
            NodeId::from("n1"),
            &[
                (NodeId::from("n1"), "127.0.0.1:1".into()),
                (NodeId::from("n2"), addr.to_string()),
            ],
            &lf_shape("n1", &["n1", "n2"]),
            FaultFilter::default(),
        );
        (t, addr, rx, rt)
    }

    /// The next two peer messages `rx` gets (fewer if 30 s pass first).
    async fn next_two(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Input>) -> Vec<Message> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 2 && Instant::now() < deadline {
            match rx.try_recv() {
                Ok(Input::Peer { msg, .. }) => got.push(msg),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        got
    }

    fn kinds(got: &[Message]) -> Vec<&'static str> {
        got.iter()
            .map(|m| match m {
                Message::Vote { .. } => "vote",
                Message::Snapshot { .. } => "snapshot",
                _ => "other",
            })
            .collect()
    }

    /// A snapshot larger than a frame crosses in fragments, intact; a vote sent after it
    /// arrives before the snapshot's last fragment instead of waiting behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_message_goes_in_fragments_and_small_ones_pass_it() {
        let (t, _, mut rx, rt) = n1_and_n2();
        t.send(&NodeId::from("n2"), vote());
        assert!(received(&mut rx).await, "connected");
        // Larger than a frame may be, and not a multiple of the fragment size.
        let data: Vec<u8> = (0..MAX_FRAME + 3 * FRAGMENT + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let snapshot = Message::Snapshot {
            term: Term(4),
            snapshot: kv_replica::leader_follower::Snapshot {
                index: LogIndex(1_000),
                term: Term(4),
                terms: vec![(LogIndex(1), Term(1)), (LogIndex(500), Term(4))],
                data: bytes::Bytes::from(data),
            },
        };
        t.send(&NodeId::from("n2"), snapshot.clone());
        t.send(&NodeId::from("n2"), vote());
        let got = next_two(&mut rx).await;
        assert_eq!(
            kinds(&got),
            ["vote", "snapshot"],
            "the vote passes the snapshot"
        );
        assert!(got[1] == snapshot, "the snapshot arrived intact");

        // The same snapshot with its data read from a file as the fragments go: it arrives
        // the same, and again a vote sent after it passes it.
        let Message::Snapshot { term, snapshot } = snapshot else {
            unreachable!()
        };
        let mut f = tempfile::tempfile().expect("temporary file");
        std::io::Write::write_all(&mut f, &snapshot.data).expect("write");
        let len = snapshot.data.len() as u64;
        let sent = Snapshot {
            data: bytes::Bytes::new(),
            ..snapshot.clone()
        };
        t.send_snapshot_file(&NodeId::from("n2"), term, sent, Arc::new(f), len);
        t.send(&NodeId::from("n2"), vote());
        let got = next_two(&mut rx).await;
        assert_eq!(kinds(&got), ["vote", "snapshot"], "the vote passes it");
        assert!(
            got[1] == Message::Snapshot { term, snapshot },
            "the snapshot read from its file arrived intact"
        );
        rt.shutdown_background();
    }

    /// Where the node has a data directory, a snapshot is received into a file there: it
    /// reaches the driver without its data, with the file holding the data exactly, sent from
    /// memory or from the leader's file alike; a vote sent after it still passes it. The file
    /// goes when the driver drops it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_received_into_a_file_where_the_node_has_a_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, _, mut rx, rt) = n1_and_n2_staging(Some(dir.path().to_path_buf()));
        t.send(&NodeId::from("n2"), vote());
        assert!(received(&mut rx).await, "connected");
        let data: Vec<u8> = (0..MAX_FRAME + 3 * FRAGMENT + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let snapshot = Snapshot {
            index: LogIndex(1_000),
            term: Term(4),
            terms: vec![(LogIndex(1), Term(1)), (LogIndex(500), Term(4))],
            data: bytes::Bytes::from(data.clone()),
        };
        let without_data = Message::Snapshot {
            term: Term(4),
            snapshot: Snapshot {
                data: bytes::Bytes::new(),
                ..snapshot.clone()
            },
        };
        let mut f = tempfile::tempfile().expect("temporary file");
        std::io::Write::write_all(&mut f, &data).expect("write");
        let f = Arc::new(f);
        for from_file in [false, true] {
            if from_file {
                let Message::Snapshot { snapshot, .. } = without_data.clone() else {
                    unreachable!()
                };
                let len = data.len() as u64;
                t.send_snapshot_file(&NodeId::from("n2"), Term(4), snapshot, f.clone(), len);
            } else {
                let msg = Message::Snapshot {
                    term: Term(4),
                    snapshot: snapshot.clone(),
                };
                t.send(&NodeId::from("n2"), msg);
            }
            t.send(&NodeId::from("n2"), vote());
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while got.len() < 2 && Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(i) => got.push(i),
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            let mut got = got.into_iter();
            let (
                Some(Input::Peer { msg: first, .. }),
                Some(Input::PeerSnapshot {
                    from,
                    msg,
                    staged,
                    data: mut file,
                }),
            ) = (got.next(), got.next())
            else {
                panic!("{from_file}: a vote, then the snapshot in a file");
            };
            assert!(first == vote(), "{from_file}: the vote passes the snapshot");
            assert_eq!(from, NodeId::from("n1"));
            assert!(
                msg == without_data,
                "{from_file}: the snapshot, without its data"
            );
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut read).expect("read");
            assert!(read == data, "{from_file}: the file holds the data exactly");
            assert_eq!(staged.len(), data.len() as u64);
            assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
            drop(staged);
            assert_eq!(
                std::fs::read_dir(dir.path()).expect("list").count(),
                0,
                "{from_file}: the file goes with it"
            );
        }
        rt.shutdown_background();
    }

    /// A connection lost while a snapshot is received into a file leaves no file behind (a
    /// leader fails over, or its process dies, mid-snapshot): nothing reaches the driver, and
    /// the part received is removed.
    #[test]
    fn a_snapshot_cut_short_leaves_no_file() {
        use prost::Message as _;
        use std::io::{Read as _, Write as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (mut rx, rt, _) = serve_staging(
            listener,
            lf_shape("n2", &["n1", "n2"]),
            Some(dir.path().to_path_buf()),
        );
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        let hello = pb::PeerEnvelope {
            from: "n1".into(),
            msg: Some(pb::peer_envelope::Msg::Hello(
                lf_shape("n1", &["n1", "n2"]).hello(&NodeId::from("n2")),
            )),
        };
        let mut out = PEER_MAGIC.to_vec();
        encode_frame(&hello, &mut out);
        conn.write_all(&out).expect("hello");
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).expect("answer");
        let mut answer = vec![0; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut answer).expect("answer");
        let answer = pb::PeerEnvelope::decode(&answer[..]).expect("answer");
        assert!(
            matches!(answer.msg, Some(pb::peer_envelope::Msg::Answer(ref a)) if a.refused.is_empty()),
            "{answer:?}"
        );
        // The first two fragments of a 3 MiB snapshot, and then the connection is gone.
        let whole = pb::PeerEnvelope {
            from: "n1".into(),
            msg: Some(to_wire(Message::Snapshot {
                term: Term(4),
                snapshot: Snapshot {
                    index: LogIndex(77),
                    term: Term(4),
                    terms: vec![(LogIndex(1), Term(4))],
                    data: vec![7u8; 3 << 20].into(),
                },
            })),
        }
        .encode_to_vec();
        let mut out = Vec::new();
        for (i, piece) in whole.chunks(FRAGMENT).take(2).enumerate() {
            let fragment = pb::PeerEnvelope {
                from: "n1".into(),
                msg: Some(pb::peer_envelope::Msg::Fragment(pb::PeerFragment {
                    data: piece.to_vec().into(),
                    last: false,
                    total: if i == 0 { whole.len() as u64 } else { 0 },
                })),
            };
            encode_frame(&fragment, &mut out);
        }
        conn.write_all(&out).expect("fragments");
        let files = || std::fs::read_dir(dir.path()).expect("list").count();
        let received = || {
            std::fs::read_dir(dir.path())
                .expect("list")
                .map(|e| e.expect("entry").metadata().expect("stat").len())
                .sum::<u64>()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while received() < (2 * FRAGMENT - 100) as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(files(), 1, "the snapshot is being received into a file");
        drop(conn);
        let deadline = Instant::now() + Duration::from_secs(10);
        while files() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(files(), 0, "the part received is removed");
        assert!(rx.try_recv().is_err(), "nothing reached the driver");
        rt.shutdown_background();
    }

    /// A snapshot sent from its file goes as its head then its data: together, byte for byte
    /// the encoding of the same envelope with the data in it, which the receiver decodes.
    #[test]
    fn a_snapshot_head_and_its_data_are_the_envelope_encoded_whole() {
        use prost::Message as _;
        for len in [1usize, 127, 128, 300_000, FRAGMENT + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let install = pb::InstallSnapshot {
                term: 7,
                index: 123_456,
                snapshot_term: 6,
                term_starts: vec![1, 1, 900, 6],
                data: bytes::Bytes::new(),
            };
            let whole = pb::PeerEnvelope {
                from: "n3".into(),
                msg: Some(pb::peer_envelope::Msg::InstallSnapshot(
                    pb::InstallSnapshot {
                        data: data.clone().into(),
                        ..install.clone()
                    },
                )),
            }
            .encode_to_vec();
            let head = snapshot_head("n3", &install, len as u64);
            let mut sent = head.to_vec();
            sent.extend_from_slice(&data);
            assert!(sent == whole, "{len} bytes of data");
            // The receiver finds the head in the first fragment, and where the data begins.
            let total = sent.len() as u64;
            let first = &sent[..sent.len().min(FRAGMENT)];
            let without = pb::PeerEnvelope {
                from: "n3".into(),
                msg: Some(pb::peer_envelope::Msg::InstallSnapshot(install.clone())),
            };
            assert_eq!(
                parse_snapshot_head(first, total),
                Some((without, head.len())),
                "{len}"
            );
            // Not when the head is cut short, nor when the length is not the message's.
            assert_eq!(parse_snapshot_head(&sent[..head.len() - 1], total), None);
            assert_eq!(parse_snapshot_head(first, total + 1), None);
        }
        // Nor for any other message.
        let append = pb::PeerEnvelope {
            from: "n3".into(),
            msg: Some(to_wire(Message::Append {
                term: Term(2),
                prev_index: LogIndex(1),
                prev_term: Term(1),
                entries: Vec::new(),
                commit: LogIndex(1),
                read_seq: 0,
            })),
        }
        .encode_to_vec();
        assert_eq!(parse_snapshot_head(&append, append.len() as u64), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transport_reconnects_to_a_restarted_peer_before_the_next_message() {
        let (t, addr, mut rx, rt) = n1_and_n2();
        t.send(&NodeId::from("n2"), vote());
        assert!(received(&mut rx).await, "first message delivered");

        // The peer goes away and comes back on the same address.
        rt.shutdown_background();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = std::net::TcpListener::bind(addr).expect("rebind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (mut rx2, rt2, _) = serve(listener, lf_shape("n2", &["n1", "n2"]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One message, the way a candidate's single RequestVote goes out: it must arrive.
        t.send(&NodeId::from("n2"), vote());
        assert!(
            received(&mut rx2).await,
            "the first message after the restart was lost"
        );
        rt2.shutdown_background();
    }

    /// What a receiver says of each difference in a hello, naming both values; nothing when
    /// the shapes agree (members in another order included).
    #[test]
    fn a_hello_is_refused_for_each_setting_the_nodes_must_share() {
        let ll = |me: &str, n: u32, vnodes: u32| ClusterShape {
            mode: "leaderless".into(),
            replicas: n,
            vnodes,
            ..lf_shape(me, &["n1", "n2", "n3"])
        };
        let n1 = NodeId::from("n1");
        let mut hello = ll("n1", 3, 64).hello(&NodeId::from("n2"));
        hello.members.reverse();
        assert_eq!(ll("n2", 3, 64).refusal(&n1, &hello), None);
        let why = |mine: &ClusterShape, theirs: &ClusterShape, to: &str| {
            mine.refusal(&n1, &theirs.hello(&NodeId::from(to)))
                .expect("refused")
        };
        assert_eq!(
            why(&ll("n3", 3, 64), &ll("n1", 3, 64), "n2"),
            "n1 expected n2 at this address, but this is n3 (the nodes' --peers disagree)"
        );
        assert_eq!(
            why(&ll("n2", 3, 64), &ll("n1", 3, 32), "n2"),
            "vnodes: n1 32, n2 64 (nodes would place keys on different replicas)"
        );
        assert_eq!(
            why(&ll("n2", 3, 64), &ll("n1", 2, 64), "n2"),
            "N: n1 2, n2 3 (nodes would place keys on different replicas)"
        );
        assert_eq!(
            why(&lf_shape("n2", &["n1", "n2", "n3"]), &ll("n1", 3, 64), "n2"),
            "n1 runs leaderless, n2 leader-follower (one cluster runs one replication mode)"
        );
        assert_eq!(
            why(
                &lf_shape("n2", &["n1", "n2", "n3"]),
                &lf_shape("n1", &["n1", "n2"]),
                "n2"
            ),
            "n1 has members n1,n2, n2 n1,n2,n3 (each node counts its own majority, or ring)"
        );
    }

    /// A peer of another cluster shape (members here) refuses the node: nothing the node sends
    /// reaches the peer's driver, both sides keep the reason, the node takes the peer for
    /// unreachable; once the peer runs with the same members it accepts the node again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_of_another_cluster_refuses_the_node_until_their_settings_agree() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (mut rx, rt, refusing) = serve(listener, lf_shape("n2", &["n1", "n2", "n3"]));
        let (n1, n2) = (NodeId::from("n1"), NodeId::from("n2"));
        let t = Transport::start(
            n1.clone(),
            &[
                (n1.clone(), "127.0.0.1:1".into()),
                (n2.clone(), addr.to_string()),
            ],
            &lf_shape("n1", &["n1", "n2"]),
            FaultFilter::default(),
        );
        t.send(&n2, vote());
        assert!(
            !received(&mut rx).await,
            "a refused node's message was delivered"
        );
        let why = "n1 has members n1,n2, n2 n1,n2,n3 (each node counts its own majority, or ring)";
        assert_eq!(t.refused_by(), vec![(n2.clone(), why.to_string())]);
        assert_eq!(refusing.list(), vec![(n1.clone(), why.to_string())]);
        assert!(
            !t.reachable(&n2),
            "a peer that refuses the node is unreachable"
        );

        rt.shutdown_background();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = std::net::TcpListener::bind(addr).expect("rebind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (mut rx, rt, refusing) = serve(listener, lf_shape("n2", &["n1", "n2"]));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut delivered = false;
        while !delivered && Instant::now() < deadline {
            t.send(&n2, vote());
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(m) = rx.try_recv() {
                delivered |= matches!(m, Input::Peer { .. });
            }
        }
        assert!(delivered, "accepted once the members agree");
        assert!(t.refused_by().is_empty() && refusing.list().is_empty());
        assert!(t.reachable(&n2));
        rt.shutdown_background();
    }

    /// A refusal is logged once, not on every retry; one not repeated for a while is over
    /// (the peer went away) and is news again when it comes back.
    #[test]
    fn a_refusal_is_news_once_and_over_when_not_repeated() {
        let r = Refusals::remembering(Duration::from_millis(200));
        let n3 = NodeId::from("n3");
        assert!(r.set(&n3, "vnodes differ"));
        assert!(!r.set(&n3, "vnodes differ"), "a retry is no news");
        assert!(r.set(&n3, "N differs"), "another reason is");
        assert_eq!(r.list(), vec![(n3.clone(), "N differs".to_string())]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(r.list().is_empty(), "not repeated: over");
        assert!(r.set(&n3, "N differs"), "back again: news");
        assert!(r.clear(&n3), "accepted after a refusal");
        assert!(!r.clear(&n3));
        assert!(r.list().is_empty());
    }
}
