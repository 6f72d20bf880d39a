//! kv-node: the quorumkv server and its client CLI.
//!
//! ```text
//! bin/kv-node.rs  flags + KV_* env + TOML ──► config::Config ──validate──► Settings
//!                                                                    │
//! start(settings) ── opens storage ──► node::Node ◄── server::kv (kv.v1.Kv over tonic)
//!                                        │              + grpc.health.v1 + reflection
//!                                        └──────────── metrics (hyper: /metrics /healthz /readyz)
//! bin/kvctl/     client CLI over kv_proto's generated client
//! ```
//!
//! - [`config`]: one `Config`, validated into `Settings`.
//! - [`data_dir`]: which node and cluster a data directory belongs to, checked at start.
//! - [`storage`]: the `Storage` trait, in-memory and durable (WAL + group commit + snapshots).
//! - [`node`]: what a node does with a request, independent of gRPC.
//! - [`server`]: gRPC services; errors become statuses in `server::status` only.
//! - [`metrics`]: Prometheus metrics and the admin HTTP server.
//! - [`driver`], [`transport`], [`raft_log`]: leader-follower replication around the sans-IO
//!   core of `kv-replica`: its task, its peer connections, its durable log.
//! - [`client`]: shared client plumbing for kvctl (and tests).

pub mod client;
pub mod config;
pub mod data_dir;
pub mod driver;
pub mod error;
pub mod fault;
pub mod leaderless;
pub mod metrics;
pub mod node;
pub mod raft_log;
pub mod server;
pub mod storage;
pub mod transport;

/// A copy of `b` that owns exactly its bytes.
///
/// Bytes fields decoded by prost are slices of the whole receive buffer (tonic's decode buffer
/// or a peer batch): keeping one alive keeps the whole buffer alive. Anything stored beyond the
/// request (a log entry, a value in the state, a hint) goes through this first. Measured: a
/// leader kept ~8 KiB per write without it (RSS grew 35 MB/s under 9k ops/s), and zeroing the
/// fresh pages cost 11% of its CPU.
pub fn detach(b: bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&b)
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kv_proto::kv::v1::kv_server::KvServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Settings, StorageKind};
use crate::metrics::{AdminState, InfoLabels, Metrics};
use crate::node::Node;
use crate::server::kv::KvService;
use crate::storage::{DiskOptions, DiskStorage, FailObserver, MemStorage, Storage};

/// A started node: its bound addresses and a way to stop it.
pub struct Running {
    /// The gRPC address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The admin HTTP address actually bound.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    node: Arc<Node>,
    /// The first storage failure, once there is one.
    failed: watch::Receiver<Option<String>>,
}

impl Running {
    /// The request engine (tests look inside).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops accepting, finishes in-flight requests, flushes storage.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Runs until `signal` resolves or the node's storage fails, then shuts down.
    ///
    /// A write or fsync that fails stops the node, as a WAL write error stops etcd: after a
    /// failed fsync what the kernel kept is unknown, so nothing more may be acknowledged, and a
    /// replica that stays up without writing only gets in the way (it looked ready, went on
    /// campaigning, and answered clients with an error that sent them nowhere else). Stopped,
    /// it is a node down like any other: the others carry on, and it starts again from what is
    /// on disk once the cause (a full disk, a failing one) is dealt with.
    ///
    /// # Errors
    /// The storage failure that stopped the node.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), String> {
        let mut failed = self.failed.clone();
        let storage_failed = async move {
            match failed.wait_for(Option::is_some).await {
                Ok(why) => why.clone(),
                // Nothing that can fail holds the sender (storage in memory): only the signal.
                Err(_) => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = signal => None,
            why = storage_failed => why,
        };
        match &why {
            Some(why) => tracing::error!(error = %why, "storage failed: the node stops"),
            None => tracing::info!("shutting down"),
        }
        self.shutdown().await;
        why.map_or(Ok(()), Err)
    }
}

/// How long a leaderless coordinator's own copy of a write may wait for a flush that another
/// write asks for (`DiskOptions::lazy_flush`). Its other replicas are enough for W, so this
/// delays the write only when one of them fails unnoticed.
const LEADERLESS_LAZY_FLUSH: Duration = Duration::from_millis(2);

/// When a flush of this node's log is slow enough to warn of, and what it costs.
fn slow_flushes(s: &Settings) -> metrics::SlowFlushes {
    let c = &s.config;
    let (file, limit, cost) = if c.mode == config::Mode::Leaderless && s.members.len() > 1 {
        (
            "the data directory's log",
            c.hint_after.0,
            format!(
                "replicas slower than --hint-after ({}) to acknowledge a write are sent it again and get hints stored for them",
                c.hint_after
            ),
        )
    } else if s.members.len() > 1 {
        (
            "raft.log",
            c.election_timeout.0 / 2,
            format!(
                "votes and terms count once durable, so fsyncs this slow against an --election-timeout of {} make elections take several rounds; a slower disk wants a longer one",
                c.election_timeout
            ),
        )
    } else {
        (
            "the data directory's log",
            Duration::from_secs(1),
            "every write waits for it to be acknowledged".into(),
        )
    };
    metrics::SlowFlushes::new(file, limit, cost)
}

fn open_storage(
    s: &Settings,
    metrics: &Metrics,
    on_fail: &FailObserver,
    lazy_flush: Option<Duration>,
) -> anyhow::Result<Arc<dyn Storage>> {
    Ok(match s.storage {
        StorageKind::Memory => Arc::new(MemStorage::new()),
        StorageKind::Disk => {
            let dir = s
                .config
                .data_dir
                .as_deref()
                .context("invariant: validate() requires --data-dir for disk storage")?;
            let (st, report) = DiskStorage::open(
                dir,
                DiskOptions {
                    fsync: s.config.fsync,
                    on_flush: Some(metrics.flush_observer(slow_flushes(s))),
                    on_fail: Some(on_fail.clone()),
                    lazy_flush,
                    group_commit_window: s.config.group_commit_window.0,
                    ..DiskOptions::default()
                },
            )?;
            tracing::info!(
                dir = %dir.display(),
                snapshot_lsn = ?report.snapshot_lsn,
                replayed = report.replayed,
                last_lsn = report.last_lsn,
                truncated = ?report.truncated,
                "storage recovered"
            );
            Arc::new(st)
        }
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Opens storage, binds both ports and starts serving.
///
/// # Errors
/// Storage cannot be opened (damaged, in use, unwritable) or a port cannot be bound; the
/// message says which and why.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let cfg = &settings.config;
    let metrics = Arc::new(Metrics::new(
        InfoLabels {
            id: settings.id.0.clone(),
            mode: cfg.mode.to_string(),
            quorum: settings.quorum.to_string(),
            storage: match settings.storage {
                StorageKind::Memory => "memory".into(),
                StorageKind::Disk => format!("disk,fsync={}", cfg.fsync),
            },
        },
        settings
            .members
            .keys()
            .map(|id| id.0.clone())
            .filter(|id| *id != settings.id.0)
            .collect(),
    ));
    let (failed_tx, failed) = watch::channel(None);
    let on_fail: FailObserver = Arc::new(move |why: &str| {
        failed_tx.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why.to_string());
            }
            first
        });
    });
    let replicated = settings.members.len() > 1;
    let leaderless = replicated && cfg.mode == config::Mode::Leaderless;
    // The data directory, when the data is on disk.
    let disk_dir = match settings.storage {
        StorageKind::Disk => cfg.data_dir.clone(),
        StorageKind::Memory => None,
    };
    // A node in memory starts empty every time: each start is a first life (see
    // `kv_replica::leaderless::Config::first_life`).
    let mut first_life = true;
    if let Some(dir) = &disk_dir {
        let layout = match (replicated, leaderless) {
            (false, _) => "single-node",
            (true, true) => "leaderless",
            (true, false) => "leader-follower",
        };
        first_life = data_dir::check_or_record(
            dir,
            &data_dir::Identity {
                id: settings.id.0.clone(),
                layout: layout.into(),
                members: settings.members.keys().map(|m| m.0.clone()).collect(),
            },
        )?;
    }
    // Leader-follower: the state machine, rebuilt from the replica's snapshot and log, which
    // are the durable copy.
    let state_machine = Arc::new(MemStorage::new());
    let storage = if replicated && !leaderless {
        state_machine.clone() as Arc<dyn Storage>
    } else {
        open_storage(
            &settings,
            &metrics,
            &on_fail,
            leaderless.then_some(LEADERLESS_LAZY_FLUSH),
        )?
    };
    let listener = bind(cfg.listen, "--listen").await?;
    let admin = bind(cfg.admin_listen, "--admin-listen").await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let max_msg = cfg.max_value_bytes + cfg.max_key_bytes + (64 << 10);
    let grace = cfg.tombstone_grace.0;
    let faults = fault::FaultFilter::default();
    // What peer connections deliver to (none on a single node).
    let mut sink = None;
    let mut ll_handle = None;
    let members: Vec<(kv_replica::NodeId, String)> = settings
        .members
        .iter()
        .map(|(id, addr)| (id.clone(), addr.clone()))
        .collect();
    let shape = transport::ClusterShape {
        me: settings.id.clone(),
        mode: settings.config.mode.to_string(),
        members: settings.members.keys().cloned().collect(),
        replicas: if leaderless { settings.quorum.n } else { 0 },
        vnodes: if leaderless {
            settings.config.vnodes
        } else {
            0
        },
        incarnation: match &disk_dir {
            Some(dir) if replicated => data_dir::incarnation(dir)?,
            None if replicated => data_dir::memory_incarnation(),
            _ => String::new(),
        },
    };
    // The peers' data directories known: a leader-follower peer that lost its own (or, in
    // memory, started again) forgot its votes and is refused; a leaderless one is taken back,
    // but its read answers do not count until it has refilled itself. A node in memory knows
    // them for as long as it runs.
    let book = match &disk_dir {
        Some(dir) if replicated => Some(data_dir::PeerBook::open(dir)?),
        None if replicated => Some(data_dir::PeerBook::in_memory()),
        _ => None,
    }
    .map(|b| if leaderless { b.warning_only() } else { b });
    let refusing = transport::Refusals::default();
    let node = if leaderless {
        let transport =
            transport::Transport::start(settings.id.clone(), &members, &shape, faults.clone())
                .refusing(refusing.clone());
        let hints: Arc<dyn Storage> = match &disk_dir {
            Some(dir) => {
                let (st, _) = DiskStorage::open(
                    &dir.join("hints"),
                    DiskOptions {
                        fsync: settings.config.fsync,
                        on_fail: Some(on_fail.clone()),
                        ..DiskOptions::default()
                    },
                )?;
                Arc::new(st)
            }
            _ => Arc::new(MemStorage::new()),
        };
        let clock = match &disk_dir {
            Some(dir) => leaderless::ClockKeeper::Disk(
                Arc::new(std::sync::Mutex::new(data_dir::ClockBound::open(dir)?)),
                on_fail.clone(),
            ),
            None => leaderless::ClockKeeper::Memory,
        };
        let c = &settings.config;
        let handle = leaderless::start(
            settings.id.clone(),
            members.into_iter().map(|(id, _)| id).collect(),
            settings.quorum,
            &leaderless::LlOptions {
                read_repair: match c.read_repair {
                    config::ReadRepairMode::Blocking => {
                        kv_replica::leaderless::ReadRepair::Blocking
                    }
                    config::ReadRepairMode::Async => kv_replica::leaderless::ReadRepair::Async,
                },
                read_fanout: match c.read_fanout {
                    config::ReadFanoutMode::All => kv_replica::leaderless::ReadFanout::All,
                    config::ReadFanoutMode::Quorum => kv_replica::leaderless::ReadFanout::Quorum,
                },
                replica_read: match c.replica_read {
                    config::ReplicaReadMode::Newest => kv_replica::leaderless::ReplicaRead::Newest,
                    config::ReplicaReadMode::LastDurable => {
                        kv_replica::leaderless::ReplicaRead::LastDurable
                    }
                },
                sloppy_quorum: c.sloppy_quorum,
                hinted_handoff: c.hinted_handoff,
                hint_after: c.hint_after.0,
                max_hint_window: c.max_hint_window.0,
                anti_entropy: c.anti_entropy_interval.0,
                tombstone_grace: c.tombstone_grace.0,
                tombstone_gc: match c.tombstone_gc {
                    config::TombstoneGcMode::Repair => kv_replica::leaderless::TombstoneGc::Repair,
                    config::TombstoneGcMode::Timeout => {
                        kv_replica::leaderless::TombstoneGc::Timeout
                    }
                },
                vnodes: c.vnodes,
                first_life,
                // The mark a first start makes is for the next start (see
                // `data_dir::check_or_record`).
                refilling: !first_life && disk_dir.as_deref().is_some_and(data_dir::refilling),
            },
            leaderless::LlStorage {
                data: storage.clone(),
                hints,
                clock,
                dir: disk_dir.clone(),
            },
            transport,
        );
        sink = Some(transport::PeerSink::Leaderless(handle.clone()));
        ll_handle = Some(handle.clone());
        Arc::new(Node::new_leaderless(settings, storage.clone(), handle))
    } else if replicated {
        let transport =
            transport::Transport::start(settings.id.clone(), &members, &shape, faults.clone())
                .refusing(refusing.clone());
        let seed = storage::now_ms()
            ^ settings
                .id
                .0
                .bytes()
                .fold(0u64, |h, b| h.rotate_left(7) ^ u64::from(b));
        let driver = driver::build(
            settings.id.clone(),
            members.into_iter().map(|(id, _)| id).collect(),
            disk_dir.clone(),
            settings.config.fsync,
            Some(metrics.flush_observer(slow_flushes(&settings))),
            Some(on_fail.clone()),
            driver::Timing {
                snapshot_bytes: settings.config.snapshot_bytes,
                group_commit_window: settings.config.group_commit_window.0,
                ..driver::Timing::new(
                    settings.config.election_timeout.0,
                    settings.config.heartbeat_interval.0,
                    settings.config.snapshot_entries,
                )
            },
            Some(driver::ProposalWindow {
                window: settings.config.proposal_window.0,
                requests: settings.config.proposal_window_requests,
                in_flight: metrics.requests_in_flight.clone(),
                held: metrics.proposals_held.clone(),
            }),
            transport,
            state_machine,
            seed,
        )
        .and_then(driver::Built::spawn)?;
        sink = Some(transport::PeerSink::Raft(driver.clone()));
        Arc::new(Node::replicated(settings, storage.clone(), driver))
    } else {
        Arc::new(Node::new(settings, storage.clone()))
    };
    let peers = sink.map(|sink| {
        transport::PeerReceiver::new(shape, sink, faults.clone(), refusing.clone())
            .knowing(book)
            .staging_in(disk_dir.clone())
    });
    let admin_grpc = kv_proto::kv::v1::admin_server::AdminServer::new(
        server::admin::AdminService::new(node.clone(), faults, refusing.clone()),
    );

    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let ready = Arc::new(AtomicBool::new(false));

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let kv_svc = KvService::new(node.clone(), metrics.clone());
    let kv = KvServer::new(kv_svc.clone())
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    // `kv.v1.Kv`'s methods are served by `server::grpc` itself; the routes take the rest.
    let routes = tonic::service::Routes::new(health_svc)
        .add_service(reflection)
        .add_service(kv)
        .add_service(admin_grpc);
    // One port: peers' connections are told apart by their first bytes; the rest is gRPC.
    let incoming = transport::split_incoming(listener, peers, stopped());
    let grpc_stop = stopped();
    let grpc_stop_rx = stop.subscribe();
    let ready_g = ready.clone();
    let grpc = tokio::spawn(async move {
        let serve = server::grpc::serve(incoming, kv_svc, routes, max_msg, grpc_stop_rx);
        tokio::pin!(serve);
        tokio::select! {
            () = &mut serve => return,
            () = grpc_stop => ready_g.store(false, Ordering::Release),
        }
        serve.await;
    });

    let admin_task = tokio::spawn(metrics::serve_admin(
        admin,
        Arc::new(AdminState {
            metrics: metrics.clone(),
            storage: storage.clone(),
            replica: node.replication().cloned(),
            leaderless: ll_handle,
            refusing: refusing.clone(),
            ready: ready.clone(),
        }),
        stopped(),
    ));

    let purge_node = node.clone();
    let purge_stop = stopped();
    let purge = tokio::spawn(async move {
        let every = (grace / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let tick = async {
            loop {
                tokio::time::sleep(every).await;
                let n = purge_node.purge_tombstones();
                metrics.tombstones_purged.inc_by(n as u64);
                if n > 0 {
                    tracing::debug!(purged = n, "tombstones purged");
                }
            }
        };
        tokio::select! { () = purge_stop => {}, () = tick => {} }
    });

    ready.store(true, Ordering::Release);
    let quorum = quorum_words(&node.settings().config.mode, node.settings().quorum);
    tracing::info!(%addr, %admin_addr, id = %node.id(), %quorum, "serving");
    Ok(Running {
        addr,
        admin_addr,
        stop,
        tasks: vec![grpc, admin_task, purge],
        node,
        failed,
    })
}

/// The quorum as the start-up line gives it. "R+W<=N: not strongly consistent" holds only for
/// leaderless reads: leader-follower leader reads go through the leader's read-index whatever
/// R is (what W below a majority gives up is logged apart).
fn quorum_words(mode: &config::Mode, q: kv_replica::Quorum) -> String {
    match mode {
        config::Mode::Leaderless => q.to_string(),
        config::Mode::LeaderFollower => format!("N={} R={} W={}", q.n, q.r, q.w),
    }
}

#[cfg(test)]
mod quorum_words_tests {
    use super::*;

    #[test]
    fn only_leaderless_quorums_are_called_not_strongly_consistent() {
        let q = kv_replica::Quorum::new(5, 5, 1, 3).expect("quorum");
        assert_eq!(
            quorum_words(&config::Mode::LeaderFollower, q),
            "N=5 R=1 W=3"
        );
        assert!(quorum_words(&config::Mode::Leaderless, q).contains("not strongly consistent"));
    }
}
