//! Peer transport over gRPC (`kv.v1.Peer`): one outgoing stream per peer, reopened when it
//! breaks; incoming streams feed the local driver. Wire types are converted to the core's
//! `Message` here, at the edge.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kv_proto::kv::v1 as pb;
use kv_replica::NodeId;
use kv_replica::leader_follower::{Command, Entry, LogIndex, Message, Term};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{DriverHandle, Input};
use crate::fault::{FaultFilter, Verdict};

/// Sends core messages to peers. `send` never blocks; messages to an unreachable peer are
/// dropped (the protocol retries).
#[derive(Clone)]
pub struct Transport {
    me: NodeId,
    peers: HashMap<NodeId, mpsc::UnboundedSender<pb::PeerEnvelope>>,
    /// Per peer: whether its stream is connected.
    up: HashMap<NodeId, Arc<AtomicBool>>,
    filter: FaultFilter,
    runtime: tokio::runtime::Handle,
}

impl Transport {
    /// Starts one sender task per peer (`members` minus `me`), every message passing `filter`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(me: NodeId, members: &[(NodeId, String)], filter: FaultFilter) -> Self {
        let mut peers = HashMap::new();
        let mut up = HashMap::new();
        for (id, addr) in members {
            if *id == me {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let flag = Arc::new(AtomicBool::new(true));
            tokio::spawn(peer_sender(addr.clone(), rx, flag.clone()));
            peers.insert(id.clone(), tx);
            up.insert(id.clone(), flag);
        }
        Transport {
            me,
            peers,
            up,
            filter,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Queues `msg` for `to` (callable from any thread).
    pub fn send(&self, to: &NodeId, msg: Message) {
        self.send_wire(to, to_wire(msg));
    }

    /// Whether `peer` looks reachable: its stream is connected (or not yet known to be
    /// broken) and no partition cuts it off.
    pub fn reachable(&self, peer: &NodeId) -> bool {
        !self.filter.blocks(peer) && self.up.get(peer).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Queues a wire message for `to` (callable from any thread).
    pub fn send_wire(&self, to: &NodeId, msg: pb::peer_envelope::Msg) {
        let Some(tx) = self.peers.get(to) else {
            return;
        };
        let env = pb::PeerEnvelope {
            from: self.me.0.clone(),
            msg: Some(msg),
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

/// Most messages sent as one stream message.
const MAX_BATCH: usize = 256;

async fn peer_sender(
    addr: String,
    mut rx: mpsc::UnboundedReceiver<pb::PeerEnvelope>,
    up: Arc<AtomicBool>,
) {
    let uri = crate::client::endpoint_uri(&addr);
    loop {
        let endpoint = match tonic::transport::Endpoint::from_shared(uri.clone()) {
            Ok(e) => e
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true),
            Err(e) => {
                tracing::error!(peer = %addr, error = %e, "invalid peer address; not sending to it");
                return;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(_) => {
                up.store(false, Ordering::Relaxed);
                // Unreachable: drop what queued meanwhile (it is stale) and retry soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        up.store(true, Ordering::Relaxed);
        let mut client = pb::peer_client::PeerClient::new(channel);
        let (tx, stream_rx) = mpsc::channel::<pb::PeerEnvelope>(4096);
        let mut call = tokio::spawn(async move {
            client
                .deliver(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        // Forward until the stream ends; notice its end at once (not at the next message, which
        // would be lost), so a restarted peer is reconnected before anyone needs to reach it.
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else {
                        call.abort();
                        return;
                    };
                    // Whatever else queued meanwhile goes in the same stream message.
                    let mut batch = Vec::new();
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let m = if batch.is_empty() {
                        m
                    } else {
                        batch.insert(0, m);
                        pb::PeerEnvelope {
                            from: String::new(),
                            msg: Some(pb::peer_envelope::Msg::Batch(pb::PeerBatch {
                                envelopes: batch,
                            })),
                        }
                    };
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
                _ = &mut call => break,
            }
        }
        call.abort();
        up.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Serves `kv.v1.Peer`: feeds every incoming message to the driver.
pub struct PeerService {
    sink: PeerSink,
    filter: FaultFilter,
}

impl PeerService {
    /// A service feeding the leader-follower `driver` what `filter` accepts.
    pub fn new(driver: DriverHandle, filter: FaultFilter) -> Self {
        Self::with_sink(PeerSink::Raft(driver), filter)
    }

    /// A service feeding `sink` what `filter` accepts.
    pub fn with_sink(sink: PeerSink, filter: FaultFilter) -> Self {
        PeerService { sink, filter }
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn deliver(
        &self,
        req: Request<Streaming<pb::PeerEnvelope>>,
    ) -> Result<Response<pb::DeliverSummary>, Status> {
        let mut stream = req.into_inner();
        let mut received = 0u64;
        while let Some(env) = stream.message().await? {
            match env.msg {
                Some(pb::peer_envelope::Msg::Batch(b)) => {
                    for env in b.envelopes {
                        received += 1;
                        self.deliver_one(env);
                    }
                }
                _ => {
                    received += 1;
                    self.deliver_one(env);
                }
            }
        }
        Ok(Response::new(pb::DeliverSummary { received }))
    }
}

impl PeerService {
    fn deliver_one(&self, env: pb::PeerEnvelope) {
        {
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
        // Leaderless traffic reaching a leader-follower node: a misconfigured peer.
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Instant;

    use super::*;

    /// A peer server on its own runtime: dropping the runtime closes every connection at once,
    /// as a killed process does.
    pub(crate) fn serve(
        listener: std::net::TcpListener,
    ) -> (std::sync::mpsc::Receiver<Input>, tokio::runtime::Runtime) {
        let (handle, rx) = DriverHandle::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let svc =
            pb::peer_server::PeerServer::new(PeerService::new(handle, FaultFilter::default()));
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        (rx, rt)
    }

    fn vote() -> Message {
        Message::Vote {
            term: Term(3),
            granted: true,
        }
    }

    async fn received(rx: &std::sync::mpsc::Receiver<Input>) -> bool {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transport_reconnects_to_a_restarted_peer_before_the_next_message() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (rx, rt) = serve(listener);
        let t = Transport::start(
            NodeId::from("n1"),
            &[
                (NodeId::from("n1"), "127.0.0.1:1".into()),
                (NodeId::from("n2"), addr.to_string()),
            ],
            FaultFilter::default(),
        );
        t.send(&NodeId::from("n2"), vote());
        assert!(received(&rx).await, "first message delivered");

        // The peer goes away and comes back on the same address.
        rt.shutdown_background();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = std::net::TcpListener::bind(addr).expect("rebind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (rx2, rt2) = serve(listener);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One message, the way a candidate's single RequestVote goes out: it must arrive.
        t.send(&NodeId::from("n2"), vote());
        assert!(
            received(&rx2).await,
            "the first message after the restart was lost"
        );
        rt2.shutdown_background();
    }
}
