//! `kv-node`: flags, `KV_*` environment and an optional TOML file become a `Config`
//! (file < environment < flags), which is validated and run until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: measurably cheaper than glibc malloc on the per-request allocations of HTTP/2
/// framing and protobuf (see the storage/throughput notes in README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use kv_node::config::{
    Config, HumanDuration, Mode, ReadFanoutMode, ReadRepairMode, ReplicaReadMode, StorageKind,
    TombstoneGcMode,
};
use kv_node::storage::FsyncPolicy;

/// quorumkv node: a replicated key-value store with tunable consistency.
///
/// Every flag can also be set as an environment variable KV_<FLAG> (upper snake case, e.g.
/// KV_DATA_DIR) or as a key in the TOML file given by --config (snake case, e.g. data_dir).
/// Precedence: file < environment < flags.
///
/// Examples:
///   kv-node --id n1 --storage memory
///   kv-node --id n1 --listen 127.0.0.1:7001 --admin-listen 127.0.0.1:9101 --data-dir /var/lib/kv --fsync batch
#[derive(Debug, Parser)]
#[command(name = "kv-node", version, verbatim_doc_comment)]
struct Args {
    /// TOML file with any of the settings below (unknown keys are errors).
    #[arg(long, env = "KV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id [default: n1].
    #[arg(long, env = "KV_ID")]
    id: Option<String>,
    /// gRPC address for clients and peers [default: 127.0.0.1:7001].
    #[arg(long, env = "KV_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin HTTP address: /metrics, /healthz, /readyz [default: 127.0.0.1:9101].
    #[arg(long, env = "KV_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// All members, itself included: n1=HOST:PORT,n2=HOST:PORT,... [default: this node alone].
    #[arg(long, env = "KV_PEERS", value_name = "LIST")]
    peers: Option<String>,
    /// Replication mode: leader-follower or leaderless [default: leader-follower].
    #[arg(long, env = "KV_MODE")]
    mode: Option<Mode>,
    /// Replicas per key [default: all nodes (leader-follower), min(3, nodes) (leaderless)].
    #[arg(long, env = "KV_N")]
    n: Option<u32>,
    /// Replicas a read waits for; in leader-follower mode it applies to --read-from any
    /// (leader reads are linearizable) [default: 1 leader-follower, majority of N leaderless].
    #[arg(long, env = "KV_R")]
    r: Option<u32>,
    /// Replicas that durably hold a write before it is acknowledged [default: majority of N].
    #[arg(long, env = "KV_W")]
    w: Option<u32>,
    /// memory (lost on restart: a replica started again is a new, empty one, which its
    /// leader-follower peers refuse and leaderless peers do not count until it has refilled
    /// itself from them) or disk (needs --data-dir) [default: disk when --data-dir is given].
    #[arg(long, env = "KV_STORAGE")]
    storage: Option<StorageKind>,
    /// Directory for durable storage (write-ahead log and snapshots); created if missing.
    #[arg(long, env = "KV_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When a write is durable: always (one fsync per write), batch (group commit: writes
    /// that arrive during one fsync share the next) or never [default: batch].
    #[arg(long, env = "KV_FSYNC")]
    fsync: Option<FsyncPolicy>,
    /// Accept the Admin fault-injection RPCs (refused otherwise).
    #[arg(long, env = "KV_ENABLE_FAULT_INJECTION")]
    enable_fault_injection: bool,
    /// Largest key accepted, in bytes [default: 1024].
    #[arg(long, env = "KV_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    /// Largest value accepted, in bytes [default: 1048576].
    #[arg(long, env = "KV_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// How long tombstones of deleted keys are kept before they are purged [default: 1h].
    #[arg(long, env = "KV_TOMBSTONE_GRACE", value_name = "DURATION")]
    tombstone_grace: Option<HumanDuration>,
    /// Leaderless: what a tombstone past its grace period also waits for. repair: every other
    /// replica of its key is known, from anti-entropy, to hold it (no deleted value comes back
    /// through repair even when a clock jumps ahead; a replica that stays down keeps its keys'
    /// tombstones); timeout: nothing, as Cassandra's gc_grace_seconds [default: repair].
    #[arg(long, env = "KV_TOMBSTONE_GC", value_name = "MODE")]
    tombstone_gc: Option<TombstoneGcMode>,
    /// Leaderless: time a replicated request may take before it fails (or, with
    /// on_quorum_loss=degrade, answers with what it got); a client's shorter gRPC deadline, less
    /// a twentieth, shortens it, so that the answer reaches the client in time [default: 2s].
    #[arg(long, env = "KV_REQUEST_TIMEOUT", value_name = "DURATION")]
    request_timeout: Option<HumanDuration>,
    /// Leaderless: repair stale replicas before answering a read (blocking) or after (async)
    /// [default: async].
    #[arg(long, env = "KV_READ_REPAIR")]
    read_repair: Option<ReadRepairMode>,
    /// Leaderless: which replicas a read asks: all of them (the answer still comes at R, and
    /// the late one is compared and repaired too), or quorum: R of them, this node's own copy
    /// first when it holds one, the others only when one stays silent for --hint-after (fewer
    /// messages; a slow replica costs that read --hint-after) [default: all].
    #[arg(long, env = "KV_READ_FANOUT")]
    read_fanout: Option<ReadFanoutMode>,
    /// Leaderless: what a replica answers a read with. newest: its newest copy, once the write
    /// that made it is durable (a read of a key with a write in flight waits for the replica's
    /// next flush). last-durable: at once, its newest copy that is durable now, the one a write
    /// in flight replaced: faster on a slow disk, and an acknowledged write is still found
    /// with R+W>N, but a later read can miss a write in flight that an earlier read returned,
    /// for up to a flush longer (with async read repair) [default: newest].
    #[arg(long, env = "KV_REPLICA_READ")]
    replica_read: Option<ReplicaReadMode>,
    /// Leaderless: let fallback nodes holding hints count toward W (sloppy quorum). Writes
    /// survive more failures, but R+W>N no longer guarantees that reads see them.
    #[arg(long, env = "KV_SLOPPY_QUORUM")]
    sloppy_quorum: bool,
    /// Leaderless: turn hinted handoff off; a replica that missed writes then catches up only
    /// through read repair and anti-entropy.
    #[arg(long, env = "KV_DISABLE_HINTED_HANDOFF")]
    disable_hinted_handoff: bool,
    /// Leaderless: a replica that has not acknowledged a write this long gets a hint, kept
    /// durably by a fallback node and delivered when the replica is back [default: 200ms].
    #[arg(long, env = "KV_HINT_AFTER", value_name = "DURATION")]
    hint_after: Option<HumanDuration>,
    /// Leaderless: stop keeping hints for a replica unreachable longer than this (Cassandra's
    /// max_hint_window); anti-entropy brings it up to date when it returns. 0s: no limit
    /// [default: 3h].
    #[arg(long, env = "KV_MAX_HINT_WINDOW", value_name = "DURATION")]
    max_hint_window: Option<HumanDuration>,
    /// Leaderless: how often to compare Merkle trees with the next peer and repair the
    /// differences; 0s turns anti-entropy off [default: 10s].
    #[arg(long, env = "KV_ANTI_ENTROPY_INTERVAL", value_name = "DURATION")]
    anti_entropy_interval: Option<HumanDuration>,
    /// Leader-follower: snapshot the state machine and compact the log every this many applied
    /// entries (or every quarter of the keys held, if that is more); the last tenth of them stay
    /// in the log, so that a follower just behind catches up from entries, and one further
    /// behind gets the snapshot [default: 10000].
    #[arg(long, env = "KV_SNAPSHOT_ENTRIES", value_name = "N")]
    snapshot_entries: Option<u64>,
    /// Leader-follower: snapshot and compact the log also every this many bytes of applied
    /// entries (keys and values; or every as many bytes as the live values hold, if more),
    /// whichever of the two limits comes first; the entries left in the log then hold at most a
    /// tenth of it. The log is held in memory: with 1 MiB values, 10,000 entries alone would be
    /// 10 GiB on every node [default: 67108864, 64 MiB].
    #[arg(long, env = "KV_SNAPSHOT_BYTES", value_name = "BYTES")]
    snapshot_bytes: Option<u64>,
    /// Leader-follower: a node that hears no leader for a random time between this and twice
    /// this starts an election; a leader that hears from no majority this long steps down.
    /// Fail-over takes about this long. Raise it (with --heartbeat-interval) when fsyncs or
    /// round trips take a good part of it: a vote counts only once the voter's disk holds it,
    /// so every election then costs a few fsyncs more than the timeout, and fewer elections
    /// fail (etcd's --election-timeout) [default: 150ms].
    #[arg(long, env = "KV_ELECTION_TIMEOUT", value_name = "DURATION")]
    election_timeout: Option<HumanDuration>,
    /// Leader-follower: how often a leader sends heartbeats; at most a fifth of
    /// --election-timeout, at least 10ms [default: 30ms].
    #[arg(long, env = "KV_HEARTBEAT_INTERVAL", value_name = "DURATION")]
    heartbeat_interval: Option<HumanDuration>,
    /// With --fsync batch: the least time from the start of one fsync of a log to the start of
    /// the next (the leader-follower replica log, or the write-ahead log); writes that arrive
    /// meanwhile share it, as with PostgreSQL's commit_delay or Cassandra's group commit
    /// window. It trades write latency (each write may wait up to it) for fewer fsyncs and
    /// less CPU under many concurrent writers. 0s fsyncs as soon as the last fsync is done;
    /// at most 100ms. On a 2-core machine with fsyncs of about 0.3 ms (README, "Group commit
    /// window"), 2ms gave 3 leader-follower nodes 1.29x the ops/s at 256 clients and 0.87x at
    /// 16 (before --proposal-window, which now gets them about the same gain with no cost to
    /// 16 clients, and with which it adds little); 5 leaderless nodes 1.01x and 0.85x
    /// [default: 0s].
    #[arg(long, env = "KV_GROUP_COMMIT_WINDOW", value_name = "DURATION")]
    group_commit_window: Option<HumanDuration>,
    /// Leader-follower: while at least --proposal-window-requests client requests are in
    /// flight at the leader, it holds the writes (put, delete) that arrive and proposes them
    /// together at most once per this window: one log write and one append to each follower
    /// for all of them, instead of many small ones. A write may wait up to the window before it
    /// is proposed; with fewer requests in flight every write is proposed as it comes. 0s
    /// turns it off; at most 100ms. 3 nodes on a 2-core machine, against 0s: 1.31x the ops/s
    /// at 256 clients, 1.21x at 128, 1.04x at 64; fewer clients never engage it (README,
    /// Leader-follower replication) [default: 2ms].
    #[arg(long, env = "KV_PROPOSAL_WINDOW", value_name = "DURATION")]
    proposal_window: Option<HumanDuration>,
    /// Leader-follower: how many client requests in flight at the leader (reads included)
    /// engage --proposal-window, as PostgreSQL's commit_siblings engages commit_delay. Fewer
    /// clients than this never wait for it. Set low, it engages where the machine has CPU to
    /// spare and the window only adds latency: at 32, 32 clients lost a fifth of their ops/s
    /// [default: 64].
    #[arg(long, env = "KV_PROPOSAL_WINDOW_REQUESTS", value_name = "N")]
    proposal_window_requests: Option<u32>,
    /// Leaderless: virtual nodes (ring tokens) per node [default: 64].
    #[arg(long, env = "KV_VNODES")]
    vnodes: Option<u32>,
    /// Threads serving requests [default: one per CPU]. On a machine shared with the load
    /// generator or other nodes, 1 avoids them competing for cores: one thread then runs every
    /// request and connection (tokio's current-thread scheduler). 5 leaderless nodes on 2
    /// cores, 256 clients: +4% ops/s and a 10% lower p99 than a one-worker multi-thread
    /// scheduler (median of 7 alternating pairs).
    #[arg(long, env = "KV_WORKER_THREADS", value_name = "N")]
    worker_threads: Option<usize>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or kv_node=debug [default: info].
    #[arg(long, env = "KV_LOG", default_value = "info")]
    log: String,
}

impl Args {
    fn into_config(self) -> Result<Config, kv_node::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            id,
            listen,
            admin_listen,
            peers,
            mode,
            fsync,
            max_key_bytes,
            max_value_bytes,
            tombstone_grace,
            tombstone_gc,
            request_timeout,
            read_repair,
            read_fanout,
            replica_read,
            hint_after,
            max_hint_window,
            anti_entropy_interval,
            vnodes,
            snapshot_entries,
            snapshot_bytes,
            election_timeout,
            heartbeat_interval,
            group_commit_window,
            proposal_window,
            proposal_window_requests
        );
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        set_opt!(n, r, w, storage, data_dir);
        c.enable_fault_injection |= self.enable_fault_injection;
        c.sloppy_quorum |= self.sloppy_quorum;
        c.hinted_handoff &= !self.disable_hinted_handoff;
        Ok(c)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[allow(dead_code)] // kvctl includes this file for `kvctl cluster up` and has its own main
fn main() -> ExitCode {
    node_main(std::env::args_os())
}

/// The whole of kv-node, from its command line (kvctl runs it as `kvctl node ...`).
pub fn node_main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let worker_threads = args.worker_threads;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = match args.into_config().and_then(Config::validate) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kv-node: {e}");
            return ExitCode::from(2);
        }
    };
    // What the quorum gives up, where it matters: leaderless reads overlap writes only when
    // R+W>N; leader-follower reads go through the leader whatever R is, but a write held by
    // fewer than a majority can be taken back by a fail-over.
    let q = settings.quorum;
    match settings.config.mode {
        _ if settings.members.len() < 2 => {}
        kv_node::config::Mode::Leaderless if !q.strongly_consistent() => {
            tracing::warn!(quorum = %q, "R+W<=N: reads may miss acknowledged writes (not strongly consistent)");
        }
        kv_node::config::Mode::LeaderFollower if q.w as usize <= settings.members.len() / 2 => {
            tracing::warn!(quorum = %q, "W is not a majority: a fail-over can take back acknowledged writes (they go to rollback.jsonl)");
        }
        _ => {}
    }
    // One thread: tokio's current-thread scheduler, which runs every task and polls every
    // socket on this thread with no work-stealing machinery between them.
    let mut rt = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().thread_name("kv-node-worker");
    if let Some(n) = worker_threads.filter(|n| *n > 1) {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv-node: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        // A write past the file size limit (`ulimit -f`) raises SIGXFSZ, whose default action
        // ends the process with no word and no chance to answer anyone. With a handler
        // installed the write fails with EFBIG instead, and the node stops as on a full disk,
        // saying why.
        #[cfg(unix)]
        let _file_too_large =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ));
        match kv_node::start(settings).await {
            Ok(running) => match running.run_until(shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    eprintln!(
                        "kv-node: stopped because a write to disk failed: {why}. What it \
                         acknowledged is kept; deal with the cause (free space, replace the \
                         disk) and start it again"
                    );
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("kv-node: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}
