//! Node configuration: one struct, read from a TOML file, `KV_*` environment variables and
//! flags (in rising precedence; the binary merges them), then [`Config::validate`]d into a
//! [`Settings`] the node runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use kv_replica::{NodeId, Quorum};
use serde::{Deserialize, Serialize};

use crate::storage::FsyncPolicy;

/// How keys are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One elected leader orders all writes (Raft / MongoDB replica set).
    #[default]
    LeaderFollower,
    /// Any node coordinates; quorums over a consistent-hash ring (Dynamo / Cassandra).
    Leaderless,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leader-follower" => Ok(Mode::LeaderFollower),
            "leaderless" => Ok(Mode::Leaderless),
            o => Err(format!(
                "invalid mode {o:?}: expected leader-follower or leaderless"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::LeaderFollower => "leader-follower",
            Mode::Leaderless => "leaderless",
        })
    }
}

/// Which replicas a leaderless read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFanoutMode {
    /// Every replica of the key (the answer still comes at R; the late one is repaired too).
    #[default]
    All,
    /// R replicas, the coordinator's own copy first; the others only when one is silent after
    /// hint_after.
    Quorum,
}

impl FromStr for ReadFanoutMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Self::All),
            "quorum" => Ok(Self::Quorum),
            o => Err(format!("invalid read fanout {o:?}: expected all or quorum")),
        }
    }
}

/// What a leaderless replica answers a read with (`kv_replica::leaderless::ReplicaRead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaReadMode {
    /// Its newest copy, once durable: a read of a key with a write in flight waits for the
    /// replica's next flush.
    #[default]
    Newest,
    /// At once, its newest copy that is durable now (the one a write in flight replaced).
    LastDurable,
}

impl FromStr for ReplicaReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "newest" => Ok(Self::Newest),
            "last-durable" => Ok(Self::LastDurable),
            o => Err(format!(
                "invalid replica read {o:?}: expected newest or last-durable"
            )),
        }
    }
}

/// When leaderless read repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadRepairMode {
    /// Stale replicas are repaired before the read is answered (slower reads, monotonic).
    Blocking,
    /// The read is answered first; repairs follow.
    #[default]
    Async,
}

impl FromStr for ReadRepairMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blocking" => Ok(Self::Blocking),
            "async" => Ok(Self::Async),
            o => Err(format!(
                "invalid read repair mode {o:?}: expected blocking or async"
            )),
        }
    }
}

/// When a leaderless node may purge a tombstone past its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TombstoneGcMode {
    /// Once every other replica of its key is known, from anti-entropy, to hold it: no
    /// deleted value comes back through repair, whatever the clocks say; a replica that stays
    /// down holds its keys' tombstones back.
    #[default]
    Repair,
    /// By age alone, as Cassandra's `gc_grace_seconds`.
    Timeout,
}

impl FromStr for TombstoneGcMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "repair" => Ok(Self::Repair),
            "timeout" => Ok(Self::Timeout),
            o => Err(format!(
                "invalid tombstone gc mode {o:?}: expected repair or timeout"
            )),
        }
    }
}

/// Where data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Durable, under `data_dir`.
    #[default]
    Disk,
    /// In memory: lost on restart (tests, demos).
    Memory,
}

impl FromStr for StorageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disk" => Ok(StorageKind::Disk),
            "memory" => Ok(StorageKind::Memory),
            o => Err(format!("invalid storage {o:?}: expected disk or memory")),
        }
    }
}

/// A duration written the human way (`500ms`, `2s`, `1h`) in flags, env and TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}): use a number and unit, like 500ms, 2s or 1h")
            })
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything a node is configured with. Every field has a flag `--field-name`, an environment
/// variable `KV_FIELD_NAME` and a TOML key `field_name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id; must appear in `peers` when peers are given.
    pub id: String,
    /// Address of the gRPC API (client and, later, peer traffic).
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// All members, itself included: `n1=127.0.0.1:7001,n2=...`. Empty: a single node.
    pub peers: String,
    /// Replication mode.
    pub mode: Mode,
    /// Replicas per key (default: every node in leader-follower, min(3, nodes) leaderless).
    pub n: Option<u32>,
    /// Replicas a read waits for (default: 1 in leader-follower, a majority of N leaderless).
    pub r: Option<u32>,
    /// Replicas that durably hold a write before it is acknowledged (default: a majority of N).
    pub w: Option<u32>,
    /// `disk` (needs `data_dir`) or `memory`.
    pub storage: Option<StorageKind>,
    /// Directory of the durable engine; setting it selects disk storage.
    pub data_dir: Option<PathBuf>,
    /// When a write is durable: `always`, `batch` (group commit) or `never`.
    pub fsync: FsyncPolicy,
    /// Accept the Admin fault-injection RPCs (off: they are refused).
    pub enable_fault_injection: bool,
    /// Largest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// How long a tombstone is kept before it is purged.
    pub tombstone_grace: HumanDuration,
    /// Leaderless: what else a purge waits for (`repair`: every replica known to hold the
    /// tombstone; `timeout`: nothing).
    pub tombstone_gc: TombstoneGcMode,
    /// Leaderless: how long a replicated request may take before it fails (or degrades).
    pub request_timeout: HumanDuration,
    /// Leaderless: read repair before (`blocking`) or after (`async`) answering.
    pub read_repair: ReadRepairMode,
    /// Leaderless: which replicas a read asks (`all`, or `quorum`: R of them).
    pub read_fanout: ReadFanoutMode,
    /// Leaderless: what a replica answers a read with (`newest` once durable, or
    /// `last-durable` at once).
    pub replica_read: ReplicaReadMode,
    /// Leaderless: count fallback nodes holding hints toward W. Breaks the R+W>N overlap.
    pub sloppy_quorum: bool,
    /// Leaderless: keep writes for unreachable replicas as hints and deliver them later.
    pub hinted_handoff: bool,
    /// Leaderless: a replica that has not acknowledged a write this long gets a hint.
    pub hint_after: HumanDuration,
    /// Leaderless: no new hints for a replica unreachable longer than this (0s: no limit).
    pub max_hint_window: HumanDuration,
    /// Leaderless: period of the Merkle-tree exchange with the next peer (0s: off).
    pub anti_entropy_interval: HumanDuration,
    /// Leaderless: ring tokens (virtual nodes) per node.
    pub vnodes: u32,
    /// Leader-follower: compact the log into a snapshot every this many applied entries.
    pub snapshot_entries: u64,
    /// Leader-follower: or every this many bytes of applied entries, whichever comes first.
    pub snapshot_bytes: u64,
    /// Leader-follower: a node that hears no leader for a random time between this and twice
    /// this starts an election, and a leader that hears no majority this long steps down.
    pub election_timeout: HumanDuration,
    /// Leader-follower: how often a leader sends heartbeats (empty appends).
    pub heartbeat_interval: HumanDuration,
    /// With `fsync = batch`: the least time from the start of one fsync of a log to the start
    /// of the next; writes that arrive meanwhile share it (0s: fsync as soon as the last one
    /// is done).
    pub group_commit_window: HumanDuration,
    /// Leader-follower: while at least `proposal_window_requests` client requests are in
    /// flight at the leader, it proposes the writes that arrive at most once per this window,
    /// all together (0s: each as it comes).
    pub proposal_window: HumanDuration,
    /// Leader-follower: how many client requests in flight at the leader engage the
    /// proposal window.
    pub proposal_window_requests: u32,
}

/// Leader-follower timers count ticks of this length.
pub const TICK: Duration = Duration::from_millis(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            id: "n1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            peers: String::new(),
            mode: Mode::default(),
            n: None,
            r: None,
            w: None,
            storage: None,
            data_dir: None,
            fsync: FsyncPolicy::default(),
            enable_fault_injection: false,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            tombstone_grace: HumanDuration(Duration::from_secs(3600)),
            tombstone_gc: TombstoneGcMode::Repair,
            request_timeout: HumanDuration(Duration::from_secs(2)),
            read_repair: ReadRepairMode::Async,
            read_fanout: ReadFanoutMode::All,
            replica_read: ReplicaReadMode::Newest,
            sloppy_quorum: false,
            hinted_handoff: true,
            hint_after: HumanDuration(Duration::from_millis(200)),
            max_hint_window: HumanDuration(Duration::from_secs(3 * 3600)),
            anti_entropy_interval: HumanDuration(Duration::from_secs(10)),
            vnodes: 64,
            snapshot_entries: 10_000,
            snapshot_bytes: SNAPSHOT_BYTES,
            election_timeout: HumanDuration(Duration::from_millis(150)),
            heartbeat_interval: HumanDuration(Duration::from_millis(30)),
            group_commit_window: HumanDuration(Duration::ZERO),
            proposal_window: HumanDuration(Duration::from_millis(2)),
            proposal_window_requests: 64,
        }
    }
}

/// Largest `--group-commit-window` and `--proposal-window`.
pub const MAX_GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(100);

/// Default `--snapshot-bytes`: 64 MiB.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;

/// Largest value the node will accept even when configured higher (gRPC frames hold it).
pub const VALUE_BYTES_CEILING: usize = 64 << 20;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as given.
    pub config: Config,
    /// This node.
    pub id: NodeId,
    /// All members with their addresses, this node included.
    pub members: BTreeMap<NodeId, String>,
    /// Validated N/R/W.
    pub quorum: Quorum,
    /// Resolved storage choice.
    pub storage: StorageKind,
}

/// A configuration that cannot run; the message says which setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads a TOML file (unknown keys are errors, so typos do not pass silently).
    ///
    /// # Errors
    /// The file cannot be read or parsed; the message names the file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(format!("config file {}: {}", path.display(), e.message())))
    }

    /// Checks every setting and resolves defaults.
    ///
    /// # Errors
    /// The first setting that cannot work, by its flag name.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err(format!(
                "--id {:?}: use letters, digits, '-' or '_' (like n1)",
                self.id
            ));
        }
        let id = NodeId(self.id.clone());
        let mut members = BTreeMap::new();
        for part in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((pid, addr)) = part.split_once('=') else {
                return err(format!(
                    "--peers entry {part:?}: expected ID=HOST:PORT, like n1=127.0.0.1:7001"
                ));
            };
            if pid.is_empty() || !addr.contains(':') {
                return err(format!(
                    "--peers entry {part:?}: expected ID=HOST:PORT, like n1=127.0.0.1:7001"
                ));
            }
            if members
                .insert(NodeId(pid.into()), addr.to_string())
                .is_some()
            {
                return err(format!("--peers names {pid} twice"));
            }
        }
        if members.is_empty() {
            members.insert(id.clone(), self.listen.to_string());
        }
        let Some(own) = members.get(&id) else {
            return err(format!(
                "--peers does not list this node's --id {} (list every member, itself included)",
                self.id
            ));
        };
        let mut by_addr: BTreeMap<&str, &NodeId> = BTreeMap::new();
        for (pid, addr) in &members {
            if let Some(other) = by_addr.insert(addr.as_str(), pid) {
                return err(format!(
                    "--peers gives {other} and {pid} the same address {addr}: each member needs its own"
                ));
            }
        }
        // The others dial the address --peers gives this node. When both it and --listen are
        // literal addresses (a wildcard or port 0 listen, or a host name, may be right behind NAT
        // or DNS), they must agree, or this node would run unreachable (a forgotten --listen).
        if let Ok(own) = own.parse::<SocketAddr>()
            && !self.listen.ip().is_unspecified()
            && self.listen.port() != 0
            && own != self.listen
        {
            return err(format!(
                "--listen {} but --peers gives {} the address {own}: the other nodes would not reach it; give both the same address (or listen on {}:{})",
                self.listen,
                self.id,
                if own.is_ipv4() { "0.0.0.0" } else { "[::]" },
                own.port()
            ));
        }
        let nodes = members.len() as u32;
        let n = self.n.unwrap_or(match self.mode {
            Mode::LeaderFollower => nodes,
            Mode::Leaderless => nodes.min(3),
        });
        let majority = n / 2 + 1;
        let quorum = Quorum::new(
            nodes,
            n,
            // Leader-follower reads are linearizable through the leader; R counts replicas asked
            // by a replica read, 1 by default. Leaderless reads wait for a majority.
            self.r.unwrap_or(match self.mode {
                Mode::LeaderFollower => 1,
                Mode::Leaderless => majority,
            }),
            self.w.unwrap_or(majority),
        )
        .map_err(|e| ConfigError(format!("--{e}")))?;
        if self.mode == Mode::LeaderFollower && n != nodes {
            return err(format!(
                "--n {n}: leader-follower mode replicates every key to every node, so n must equal the number of nodes ({nodes})"
            ));
        }
        if nodes > 64 {
            return err(format!(
                "--peers lists {nodes} nodes; at most 64 are supported"
            ));
        }
        if self.vnodes == 0 || self.vnodes > 4096 {
            return err(format!("--vnodes {}: must be 1..=4096", self.vnodes));
        }
        if self.snapshot_entries < 10 {
            return err(format!(
                "--snapshot-entries {}: must be at least 10",
                self.snapshot_entries
            ));
        }
        if self.snapshot_bytes < 64 << 10 {
            return err(format!(
                "--snapshot-bytes {}: must be at least 65536 (64 KiB)",
                self.snapshot_bytes
            ));
        }
        let (election, heartbeat) = (self.election_timeout.0, self.heartbeat_interval.0);
        if heartbeat < TICK {
            return err(format!(
                "--heartbeat-interval {}: must be at least {} (the timers' tick)",
                self.heartbeat_interval,
                HumanDuration(TICK)
            ));
        }
        if election < heartbeat * 5 {
            return err(format!(
                "--election-timeout {}: must be at least 5 times --heartbeat-interval ({}), or a few late heartbeats start an election",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if election > Duration::from_secs(60) {
            return err(format!(
                "--election-timeout {}: at most 1m (a dead leader is replaced only after it)",
                self.election_timeout
            ));
        }
        if self.request_timeout.0.is_zero() {
            return err("--request-timeout must be more than 0".into());
        }
        let storage = match (self.storage, &self.data_dir) {
            (Some(StorageKind::Memory), Some(d)) => {
                return err(format!(
                    "--storage memory and --data-dir {} both given: choose one",
                    d.display()
                ));
            }
            (Some(StorageKind::Memory), None) => StorageKind::Memory,
            (_, Some(_)) => StorageKind::Disk,
            (_, None) => {
                return err(
                    "no storage chosen: give --data-dir DIR for durable storage, or --storage memory"
                        .into(),
                );
            }
        };
        let window = self.group_commit_window;
        if !window.0.is_zero() {
            if storage == StorageKind::Memory {
                return err(format!(
                    "--group-commit-window {window}: in memory there is no fsync to share; give --data-dir, or leave it at 0s"
                ));
            }
            if self.fsync != FsyncPolicy::Batch {
                return err(format!(
                    "--group-commit-window {window} needs --fsync batch (not {}): only group commit has fsyncs to share",
                    self.fsync
                ));
            }
            if window.0 > MAX_GROUP_COMMIT_WINDOW {
                return err(format!(
                    "--group-commit-window {window}: at most {} (every write may wait that long for its fsync)",
                    HumanDuration(MAX_GROUP_COMMIT_WINDOW)
                ));
            }
        }
        let window = self.proposal_window;
        if window.0 > MAX_GROUP_COMMIT_WINDOW {
            return err(format!(
                "--proposal-window {window}: at most {} (every write may wait that long before it is proposed)",
                HumanDuration(MAX_GROUP_COMMIT_WINDOW)
            ));
        }
        if self.proposal_window_requests == 0 {
            return err(
                "--proposal-window-requests must be at least 1 (to turn the window off, give --proposal-window 0s)"
                    .into(),
            );
        }
        if self.max_key_bytes == 0 {
            return err("--max-key-bytes must be at least 1".into());
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > VALUE_BYTES_CEILING {
            return err(format!(
                "--max-value-bytes {}: must be 1..={VALUE_BYTES_CEILING}",
                self.max_value_bytes
            ));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return err(format!(
                "--listen and --admin-listen are both {}: give them different ports",
                self.listen
            ));
        }
        Ok(Settings {
            id,
            members,
            quorum,
            storage,
            config: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Config {
        Config {
            storage: Some(StorageKind::Memory),
            ..Config::default()
        }
    }

    fn invalid(c: Config) -> String {
        c.validate().expect_err("invalid").0
    }

    #[test]
    fn config_single_node_defaults_to_n_r_w_of_one() {
        let s = mem().validate().expect("valid");
        assert_eq!((s.quorum.n, s.quorum.r, s.quorum.w), (1, 1, 1));
        assert_eq!(s.members.len(), 1);
    }

    #[test]
    fn config_without_storage_choice_says_how_to_choose() {
        assert!(invalid(Config::default()).contains("--data-dir DIR"));
    }

    #[test]
    fn config_r_or_w_out_of_range_names_the_flag() {
        let m = invalid(Config {
            w: Some(2),
            ..mem()
        });
        assert_eq!(m, "--w=2 is out of range: must be 1..=1 (n=1)");
        assert!(
            invalid(Config {
                r: Some(0),
                ..mem()
            })
            .contains("--r=0")
        );
        assert!(
            invalid(Config {
                n: Some(3),
                ..mem()
            })
            .contains("--n=3")
        );
    }

    #[test]
    fn config_bad_peers_are_rejected_with_the_entry() {
        assert!(
            invalid(Config {
                peers: "n1".into(),
                ..mem()
            })
            .contains("\"n1\"")
        );
        assert!(
            invalid(Config {
                peers: "n2=127.0.0.1:7002".into(),
                ..mem()
            })
            .contains("does not list this node")
        );
        assert!(
            invalid(Config {
                peers: "n1=a:1,n1=b:2".into(),
                ..mem()
            })
            .contains("twice")
        );
        assert!(
            invalid(Config {
                peers: "n1=127.0.0.1:7001,n2=127.0.0.1:7001".into(),
                ..mem()
            })
            .contains("n1 and n2 the same address 127.0.0.1:7001")
        );
    }

    #[test]
    fn config_listen_must_be_where_the_others_dial() {
        // A forgotten --listen (default 127.0.0.1:7001) would leave n1 unreachable at 7101.
        let e = invalid(Config {
            peers: "n1=127.0.0.1:7101,n2=127.0.0.1:7102".into(),
            ..mem()
        });
        assert!(
            e.contains("--listen 127.0.0.1:7001 but --peers gives n1 the address 127.0.0.1:7101"),
            "{e}"
        );
        // Agreeing, a wildcard listen, an ephemeral port or a host name in --peers: accepted.
        for (listen, peers) in [
            ("127.0.0.1:7101", "n1=127.0.0.1:7101,n2=127.0.0.1:7102"),
            ("0.0.0.0:7001", "n1=10.0.0.1:7001,n2=10.0.0.2:7001"),
            ("127.0.0.1:0", "n1=127.0.0.1:7101,n2=127.0.0.1:7102"),
            ("10.1.2.3:7001", "n1=kv-0.kv:7001,n2=kv-1.kv:7001"),
        ] {
            Config {
                listen: listen.parse().expect("addr"),
                peers: peers.into(),
                ..mem()
            }
            .validate()
            .unwrap_or_else(|e| panic!("{listen} {peers}: {e}"));
        }
    }

    #[test]
    fn config_leaderless_defaults_to_n3_and_majority_quorums() {
        let s = Config {
            mode: Mode::Leaderless,
            peers: (1..=5)
                .map(|i| format!("n{i}=127.0.0.1:700{i}"))
                .collect::<Vec<_>>()
                .join(","),
            ..mem()
        }
        .validate()
        .expect("valid");
        assert_eq!((s.quorum.n, s.quorum.r, s.quorum.w), (3, 2, 2));
        let e = invalid(Config {
            mode: Mode::Leaderless,
            vnodes: 0,
            ..mem()
        });
        assert!(e.contains("--vnodes"), "{e}");
    }

    #[test]
    fn config_memory_with_data_dir_is_ambiguous() {
        let m = invalid(Config {
            data_dir: Some("/tmp/x".into()),
            ..mem()
        });
        assert!(m.contains("choose one"), "{m}");
    }

    #[test]
    fn config_toml_unknown_key_is_an_error_naming_it() {
        let e = toml::from_str::<Config>("idd = \"n1\"").expect_err("unknown key");
        assert!(e.to_string().contains("idd"), "{e}");
        let c: Config = toml::from_str(
            "id = \"n7\"\nfsync = \"always\"\ntombstone_grace = \"10m\"\nstorage = \"memory\"\n\
             tombstone_gc = \"timeout\"",
        )
        .expect("parse");
        assert_eq!(c.id, "n7");
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.tombstone_grace.0, Duration::from_secs(600));
        assert_eq!(c.tombstone_gc, TombstoneGcMode::Timeout);
        assert_eq!(Config::default().tombstone_gc, TombstoneGcMode::Repair);
    }

    #[test]
    fn config_election_timeout_and_heartbeat_are_checked_against_each_other() {
        let d = |ms| HumanDuration(Duration::from_millis(ms));
        let c: Config = toml::from_str(
            "storage = \"memory\"\nelection_timeout = \"2s\"\nheartbeat_interval = \"100ms\"",
        )
        .expect("parse");
        assert_eq!(
            (c.election_timeout, c.heartbeat_interval),
            (d(2000), d(100))
        );
        assert!(c.validate().is_ok());
        let e = invalid(Config {
            election_timeout: d(100),
            ..mem()
        });
        assert_eq!(
            e,
            "--election-timeout 100ms: must be at least 5 times --heartbeat-interval (30ms), or a few late heartbeats start an election"
        );
        let e = invalid(Config {
            heartbeat_interval: d(5),
            ..mem()
        });
        assert_eq!(
            e,
            "--heartbeat-interval 5ms: must be at least 10ms (the timers' tick)"
        );
        let e = invalid(Config {
            election_timeout: d(61_000),
            ..mem()
        });
        assert!(e.starts_with("--election-timeout 1m 1s: at most 1m"), "{e}");
    }

    #[test]
    fn config_group_commit_window_needs_a_disk_and_batch_fsyncs() {
        let d = |ms| HumanDuration(Duration::from_millis(ms));
        let c: Config =
            toml::from_str("data_dir = \"/tmp/kv\"\ngroup_commit_window = \"2ms\"").expect("parse");
        assert_eq!(c.group_commit_window, d(2));
        assert!(c.validate().is_ok());
        assert_eq!(Config::default().group_commit_window, d(0));
        let disk = || Config {
            data_dir: Some("/tmp/kv".into()),
            group_commit_window: d(2),
            ..Config::default()
        };
        assert_eq!(
            invalid(Config {
                group_commit_window: d(2),
                ..mem()
            }),
            "--group-commit-window 2ms: in memory there is no fsync to share; give --data-dir, or leave it at 0s"
        );
        assert_eq!(
            invalid(Config {
                fsync: FsyncPolicy::Always,
                ..disk()
            }),
            "--group-commit-window 2ms needs --fsync batch (not always): only group commit has fsyncs to share"
        );
        assert_eq!(
            invalid(Config {
                group_commit_window: d(101),
                ..disk()
            }),
            "--group-commit-window 101ms: at most 100ms (every write may wait that long for its fsync)"
        );
        // Zero is the default and fits every storage and policy.
        assert!(
            Config {
                fsync: FsyncPolicy::Never,
                group_commit_window: d(0),
                ..mem()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn config_proposal_window_defaults_and_limits() {
        let d = |ms| HumanDuration(Duration::from_millis(ms));
        let c = Config::default();
        assert_eq!((c.proposal_window, c.proposal_window_requests), (d(2), 64));
        let c: Config = toml::from_str(
            "storage = \"memory\"\nproposal_window = \"0s\"\nproposal_window_requests = 8",
        )
        .expect("parse");
        assert_eq!((c.proposal_window, c.proposal_window_requests), (d(0), 8));
        assert!(c.validate().is_ok());
        assert_eq!(
            invalid(Config {
                proposal_window: d(101),
                ..mem()
            }),
            "--proposal-window 101ms: at most 100ms (every write may wait that long before it is proposed)"
        );
        assert_eq!(
            invalid(Config {
                proposal_window_requests: 0,
                ..mem()
            }),
            "--proposal-window-requests must be at least 1 (to turn the window off, give --proposal-window 0s)"
        );
    }
}
