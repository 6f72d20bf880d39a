//! `kvctl`: the quorumkv command-line client.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Parser, Subcommand, ValueEnum};
use kv_node::client::{self, exit};
use kv_node::config::HumanDuration;
use kv_node::server::status::{LEADER_ADDR, LEADER_ID, NO_QUORUM};
use kv_proto::kv::v1 as pb;
use kv_proto::kv::v1::kv_client::KvClient;
use kv_replica::Version;
use serde_json::json;
use tonic::transport::Channel;

/// kv-node itself, so that `kvctl cluster up` can start nodes from this one binary
/// (`cargo run --bin kvctl -- cluster up` builds nothing else).
#[path = "../kv-node.rs"]
#[allow(dead_code)]
mod node_bin;

mod audit;
mod audit_ll;
mod cluster;
use cluster::ClusterCmd;

/// quorumkv client.
///
/// Exit codes:
///   0  success
///   1  get: key not found; cas: the compare did not match (nothing changed)
///   2  bad usage, or the node rejected the input (INVALID_ARGUMENT): nothing was done
///   3  definitely failed: no node reachable, or UNAVAILABLE / FAILED_PRECONDITION
///   4  outcome unknown: the operation may or may not have taken effect (deadline exceeded,
///      connection lost mid-call, internal error)
///
/// Versions are printed and given as EPOCH.COUNTER (leader-follower: term.index).
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, verbatim_doc_comment)]
struct Args {
    /// Nodes to contact, tried in order: HOST:PORT[,HOST:PORT...]. A node that knows no leader,
    /// or (leaderless) cannot reach a quorum, makes kvctl ask the next one.
    #[arg(
        long,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001",
        global = true
    )]
    endpoints: Vec<String>,
    /// Deadline of each call (also sent to the server as the gRPC deadline).
    #[arg(long, default_value = "2s", global = true)]
    timeout: HumanDuration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// When R or W replicas cannot be had: fail (UNAVAILABLE, naming who answered) or degrade
    /// (answer with what could be had, marked degraded) [default: the cluster's, fail].
    #[arg(long, value_enum, global = true)]
    on_quorum_loss: Option<QuorumLossArg>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QuorumLossArg {
    Fail,
    Degrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReadFromArg {
    Leader,
    Any,
    Local,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Break node-to-node traffic, or a node's clock, on purpose (nodes must run with
    /// --enable-fault-injection). --endpoints must list every node. Each traffic fault
    /// (partition, delay, drop) replaces the previous one; clock offsets stay until changed;
    /// heal removes everything.
    Fault {
        #[command(subcommand)]
        fault: FaultCmd,
    },
    /// Run a local cluster of real kv-node processes on 127.0.0.1, in the foreground, and
    /// kill, start, pause or resume its nodes.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// One row per node in --endpoints: role, term, leader it follows, reachable peers, applied
    /// index and lag (entries, and how long ago the leader had what the node holds), and
    /// (leader-follower) the index its snapshot covers and the entries its log holds. A node
    /// that does not answer is shown down, with the leader's view of its lag (leaderless: the
    /// hints the others hold for it). Flags split brain: two nodes claiming leadership at once,
    /// and nodes that heard two leaders at overlapping times in the last 30 s.
    Status,
    /// Write KEY=VALUE; prints the new version. Without VALUE, the value is everything on
    /// stdin, byte for byte (`kvctl put KEY < FILE`, as `etcdctl put` reads it): for values
    /// with any bytes, or longer than one argument may be (128 KiB on Linux).
    Put {
        key: String,
        /// The value; left out: read from stdin to its end.
        value: Option<OsString>,
        /// Replicas that must durably hold the write before it is acknowledged.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        w: Option<u32>,
    },
    /// Read KEY; prints the value's bytes as stored, then a newline. Exit 1 with "not found"
    /// on stderr if absent. With --output json, a value that is not UTF-8 also comes as
    /// `value_base64` (`value` then shows it with U+FFFD for the bytes that are not).
    Get {
        key: String,
        /// Replicas to read from (the newest answer wins).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        r: Option<u32>,
        /// leader (linearizable), any (may be stale), local (this node's copy, no coordination).
        #[arg(long, value_enum)]
        read_from: Option<ReadFromArg>,
    },
    /// Delete KEY (writes a tombstone); prints the tombstone's version.
    Delete {
        key: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        w: Option<u32>,
    },
    /// Write KEY=VALUE only if KEY's current version is EXPECTED_VERSION ("none": KEY must be
    /// absent). Prints the new version; exit 1 and the current version if it did not match.
    /// Without VALUE, the value is everything on stdin, as for put.
    Cas {
        key: String,
        expected_version: String,
        /// The value; left out: read from stdin to its end.
        value: Option<OsString>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        w: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum FaultCmd {
    /// Split the nodes into groups that cannot talk to each other: n1,n2/n3,n4,n5.
    Partition { groups: String },
    /// Lose every message from the FROM nodes to the TO nodes, one way only: TO still reaches
    /// FROM (e.g. `cut n1 n2,n3`: a leader n1 heard by nobody, still hearing everybody). The
    /// senders are not told: their connections stay up and they go on sending, as over a link
    /// that fails in one direction.
    Cut {
        /// Nodes whose messages are lost: n1 or n1,n2.
        from: String,
        /// The nodes those messages no longer reach: n2,n3.
        to: String,
    },
    /// Delay every message to and from NODE by DELAY (e.g. 50ms).
    Delay {
        node: String,
        delay: HumanDuration,
        /// Extra random delay, uniformly up to this.
        #[arg(long)]
        jitter: Option<HumanDuration>,
    },
    /// Drop each message to and from NODE with probability P (0..=1).
    Drop { node: String, p: f64 },
    /// Leaderless: run NODE's clock OFFSET ahead (+5s) or behind (-5s) for the versions it
    /// gives writes (last-writer-wins under clock skew).
    ///
    /// A write coordinated by a node whose clock is behind, after a write from a node whose
    /// clock is ahead that it was never told of (partitioned meanwhile), gets the lower version
    /// and is hidden by the earlier write: acknowledged, then lost. It is counted as a
    /// conflicting write. A node's hybrid clock never goes back: set behind, the offset shows
    /// once real time has passed what the node issued. Only NODE's clock changes; the other
    /// faults set stay.
    Clock {
        node: String,
        /// +DURATION or -DURATION (e.g. +5s, -500ms).
        #[arg(allow_hyphen_values = true)]
        offset: String,
    },
    /// Make every flush of NODE's logs (write and fsync) take DELAY longer, as on a slow or
    /// stalled disk; 0s: as fast as its disk is.
    ///
    /// Writes wait for their flushes, and so do votes and replies in a new term: with a
    /// leader-follower disk about as slow as the election timeout, elections take several
    /// rounds (raise --election-timeout), and a leaderless replica slower than --hint-after
    /// gets its writes again and hints stored for it. The node logs "slow fsync" when its
    /// flushes outlast what its timers allow. Only NODE's disk changes; the other faults set
    /// stay.
    Disk { node: String, delay: HumanDuration },
    /// Remove every fault.
    Heal,
}

async fn set_faults(addr: &str, spec: pb::FaultSpec, t: Duration) -> Result<(), tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(client::endpoint_uri(addr))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(t)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{addr}: {e}")))?;
    pb::admin_client::AdminClient::new(ch)
        .set_faults(request(spec, t))
        .await
        .map(|_| ())
}

/// A fault on everything to and from `node`: on `node` itself it applies to every peer (`*`),
/// on every other node to `node`.
fn around(
    ids: &[&str],
    node: &str,
    spec: impl Fn(String) -> pb::FaultSpec,
) -> Vec<(String, pb::FaultSpec)> {
    ids.iter()
        .map(|id| {
            let key = if *id == node { "*" } else { node };
            (id.to_string(), spec(key.to_string()))
        })
        .collect()
}

/// Node ids listed as `n1,n2` (blanks and empty entries ignored).
fn node_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What a node's fault filter does, in words (`None`: nothing).
fn describe_faults(spec: &pb::FaultSpec) -> Option<String> {
    let mut parts = Vec::new();
    if !spec.block.is_empty() {
        parts.push(format!("cut off from {}", spec.block.join(",")));
    }
    let mut delays: Vec<_> = spec.delay_ms.iter().collect();
    delays.sort();
    for (peer, ms) in delays {
        parts.push(format!(
            "messages to {peer} delayed {ms}ms (+0..{}ms)",
            spec.jitter_ms
        ));
    }
    let mut drops: Vec<_> = spec.drop.iter().collect();
    drops.sort_by(|a, b| a.0.cmp(b.0));
    for (peer, p) in drops {
        if *p >= 1.0 {
            parts.push(format!("every message to {peer} lost (one way)"));
        } else {
            parts.push(format!("messages to {peer} dropped with p={p}"));
        }
    }
    match spec.clock_offset_ms {
        0 => {}
        ms if ms > 0 => parts.push(format!("clock {ms}ms ahead")),
        ms => parts.push(format!("clock {}ms behind", -ms)),
    }
    if spec.disk_delay_ms > 0 {
        parts.push(format!("flushes {}ms slower", spec.disk_delay_ms));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Settings every node of a cluster must share on which the answering nodes disagree: one line
/// each, naming who holds which value. Each node computes its majority, or its ring, from its
/// own flags; the nodes refuse each other's peer connections when these differ (`REFUSED`
/// lines), and this says which setting and who holds which value.
fn config_differences(rows: &[(String, Option<pb::NodeStatus>)]) -> Vec<String> {
    let up: Vec<&pb::NodeStatus> = rows.iter().filter_map(|(_, s)| s.as_ref()).collect();
    type Value = fn(&pb::NodeStatus) -> Option<String>;
    let checks: [(&str, &str, Value); 4] = [
        ("mode", "one cluster runs one replication mode", |s| {
            Some(s.mode.clone())
        }),
        (
            "members",
            "each node counts its own majority, or ring",
            |s| {
                let mut ids: Vec<&str> = s.members.keys().map(String::as_str).collect();
                ids.sort_unstable();
                Some(ids.join(","))
            },
        ),
        (
            "N",
            "nodes place keys on different replicas: R+W>N no longer means overlap",
            |s| (s.mode == "leaderless").then(|| s.replicas.to_string()),
        ),
        (
            "vnodes",
            "nodes place keys on different replicas: R+W>N no longer means overlap",
            |s| (s.mode == "leaderless").then(|| s.vnodes.to_string()),
        ),
    ];
    checks
        .iter()
        .filter_map(|(what, why, value)| {
            let mut by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for s in &up {
                if let Some(v) = value(s) {
                    by.entry(v).or_default().push(&s.id);
                }
            }
            (by.len() > 1).then(|| {
                let who: Vec<String> = by
                    .iter()
                    .map(|(v, ids)| format!("{} {v}", ids.join(",")))
                    .collect();
                format!("{what} differs between nodes: {} ({why})", who.join("; "))
            })
        })
        .collect()
}

/// A status table followed by the faults set on the nodes of `rows`, one line each.
fn with_faults(table: String, rows: &[(String, Option<pb::NodeStatus>)]) -> String {
    let lines = rows.iter().filter_map(|(_, s)| s.as_ref()).filter_map(|s| {
        Some(format!(
            "fault on {}: {}",
            s.id,
            describe_faults(s.faults.as_ref()?)?
        ))
    });
    std::iter::once(table)
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n")
}

async fn fault(endpoints: &[String], f: FaultCmd, t: Duration) -> Result<Done, tonic::Status> {
    // Every node: the endpoints given and the members they list (as for `status`).
    let (rows, down_ids) = status_rows(endpoints, t).await;
    let heal = matches!(f, FaultCmd::Heal);
    let mut nodes = Vec::new();
    // What each node's filter holds now: clock offsets outlive traffic faults.
    let mut current: HashMap<String, pb::FaultSpec> = HashMap::new();
    let mut leaderless = false;
    let mut silent = Vec::new();
    for (addr, s) in rows {
        match s {
            Some(s) => {
                leaderless |= s.mode == "leaderless";
                current.insert(s.id.clone(), s.faults.unwrap_or_default());
                nodes.push((s.id, addr));
            }
            None => silent.push(match down_ids.get(&addr) {
                Some(id) => format!("{id} ({addr})"),
                None => addr,
            }),
        }
    }
    // A fault set on part of the cluster is not the fault asked for; a heal is wanted most
    // when a node is down, so it heals every node that answers and names the others.
    if !silent.is_empty() && (!heal || nodes.is_empty()) {
        return Err(tonic::Status::unavailable(format!(
            "{} did not answer: every node must be reachable to set faults",
            silent.join(", ")
        )));
    }
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
    let check = |n: &str| -> Result<(), tonic::Status> {
        if ids.contains(&n) {
            Ok(())
        } else {
            Err(tonic::Status::invalid_argument(format!(
                "{n} is not a member of this cluster ({})",
                ids.join(",")
            )))
        }
    };
    let mut specs: Vec<(String, pb::FaultSpec)> = Vec::new();
    // Versions in leader-follower mode are (term, index): no clock in them.
    let note = (matches!(f, FaultCmd::Clock { .. }) && !leaderless).then(|| {
        "note: only leaderless nodes take their versions from their clocks; this cluster's \
         versions (term.index) do not change"
            .to_string()
    });
    let traffic = matches!(
        f,
        FaultCmd::Partition { .. }
            | FaultCmd::Cut { .. }
            | FaultCmd::Delay { .. }
            | FaultCmd::Drop { .. }
    );
    match f {
        FaultCmd::Partition { groups } => {
            let groups: Vec<Vec<String>> = groups.split('/').map(node_list).collect();
            if groups.len() < 2 {
                return Err(tonic::Status::invalid_argument(
                    "a partition needs at least two groups: n1,n2/n3,n4,n5",
                ));
            }
            let mut seen = HashSet::new();
            for g in &groups {
                for n in g {
                    check(n)?;
                    if !seen.insert(n) {
                        return Err(tonic::Status::invalid_argument(format!(
                            "{n} is named twice: each node goes in one group"
                        )));
                    }
                }
            }
            for id in &ids {
                let Some(mine) = groups.iter().position(|g| g.iter().any(|n| n == id)) else {
                    return Err(tonic::Status::invalid_argument(format!(
                        "{id} is in no group"
                    )));
                };
                let block = groups
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != mine)
                    .flat_map(|(_, g)| g.clone())
                    .collect();
                specs.push((
                    id.to_string(),
                    pb::FaultSpec {
                        block,
                        ..Default::default()
                    },
                ));
            }
        }
        FaultCmd::Cut { from, to } => {
            let list = |l: &str| -> Result<Vec<String>, tonic::Status> {
                let v = node_list(l);
                if v.is_empty() {
                    return Err(tonic::Status::invalid_argument(
                        "name at least one node on each side: kvctl fault cut n1 n2,n3",
                    ));
                }
                for n in &v {
                    check(n)?;
                }
                Ok(v)
            };
            let (from, to) = (list(&from)?, list(&to)?);
            if let Some(n) = from.iter().find(|n| to.contains(n)) {
                return Err(tonic::Status::invalid_argument(format!(
                    "{n} is on both sides: a node always reaches itself"
                )));
            }
            for id in &ids {
                let drop = if from.iter().any(|n| n == id) {
                    to.iter().map(|t| (t.clone(), 1.0)).collect()
                } else {
                    Default::default()
                };
                specs.push((
                    id.to_string(),
                    pb::FaultSpec {
                        drop,
                        ..Default::default()
                    },
                ));
            }
        }
        FaultCmd::Delay {
            node,
            delay,
            jitter,
        } => {
            check(&node)?;
            let ms = delay.0.as_millis() as u64;
            let jitter_ms = jitter.map_or(0, |j| j.0.as_millis() as u64);
            specs = around(&ids, &node, |key| pb::FaultSpec {
                delay_ms: [(key, ms)].into(),
                jitter_ms,
                ..Default::default()
            });
        }
        FaultCmd::Drop { node, p } => {
            check(&node)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(tonic::Status::invalid_argument(format!(
                    "probability {p} is not within 0..=1"
                )));
            }
            specs = around(&ids, &node, |key| pb::FaultSpec {
                drop: [(key, p)].into(),
                ..Default::default()
            });
        }
        FaultCmd::Clock { node, offset } => {
            check(&node)?;
            let (sign, magnitude) = match offset.strip_prefix('-') {
                Some(m) => (-1i64, m),
                None => (1, offset.strip_prefix('+').unwrap_or(&offset)),
            };
            let d = humantime::parse_duration(magnitude).map_err(|e| {
                tonic::Status::invalid_argument(format!(
                    "clock offset {offset:?}: {e} (expected e.g. +5s or -500ms)"
                ))
            })?;
            let ms = sign * i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            // Only NODE's clock changes; what else each filter holds stays.
            for id in &ids {
                let mut spec = current.get(*id).cloned().unwrap_or_default();
                if *id == node {
                    spec.clock_offset_ms = ms;
                }
                specs.push((id.to_string(), spec));
            }
        }
        FaultCmd::Disk { node, delay } => {
            check(&node)?;
            // Only NODE's disk changes; what else each filter holds stays.
            for id in &ids {
                let mut spec = current.get(*id).cloned().unwrap_or_default();
                if *id == node {
                    spec.disk_delay_ms = delay.0.as_millis() as u64;
                }
                specs.push((id.to_string(), spec));
            }
        }
        FaultCmd::Heal => {
            for id in &ids {
                specs.push((id.to_string(), pb::FaultSpec::default()));
            }
        }
    }
    let mut out = Vec::new();
    for (id, mut spec) in specs {
        // A traffic fault replaces the previous traffic fault; a clock set wrong, or a slow
        // disk, stays so until `fault clock NODE 0s`, `fault disk NODE 0s` or `fault heal`.
        if traffic && let Some(c) = current.get(&id) {
            spec.clock_offset_ms = c.clock_offset_ms;
            spec.disk_delay_ms = c.disk_delay_ms;
        }
        let addr = &nodes
            .iter()
            .find(|(n, _)| *n == id)
            .expect("listed above")
            .1;
        let line = match describe_faults(&spec) {
            None => format!("{id}: no faults"),
            Some(d) => format!("{id}: {d}"),
        };
        set_faults(addr, spec, t).await?;
        out.push(line);
    }
    if !silent.is_empty() {
        return Ok(Done {
            stdout: out.join("\n").into(),
            stderr: Some(format!(
                "kvctl: {} did not answer and keeps what it had: a node killed starts again \
                 with no faults, a paused one keeps its own until you heal again",
                silent.join(", ")
            )),
            code: exit::FAILED,
        });
    }
    Ok(Done {
        stdout: out.join("\n").into(),
        stderr: note,
        code: exit::OK,
    })
}

fn consistency(
    r: Option<u32>,
    w: Option<u32>,
    rf: Option<ReadFromArg>,
    loss: Option<QuorumLossArg>,
) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        r: r.unwrap_or(0),
        w: w.unwrap_or(0),
        read_from: match rf {
            None => pb::ReadFrom::Unspecified,
            Some(ReadFromArg::Leader) => pb::ReadFrom::Leader,
            Some(ReadFromArg::Any) => pb::ReadFrom::Any,
            Some(ReadFromArg::Local) => pb::ReadFrom::Local,
        } as i32,
        on_quorum_loss: match loss {
            None => pb::OnQuorumLoss::Unspecified,
            Some(QuorumLossArg::Fail) => pb::OnQuorumLoss::Fail,
            Some(QuorumLossArg::Degrade) => pb::OnQuorumLoss::Degrade,
        } as i32,
    })
}

fn version_text(v: &Option<pb::Version>) -> Option<String> {
    v.as_ref()
        .map(|v| Version::new(v.epoch, v.counter).to_string())
}

/// The endpoints after the one last asked, in turn; each is asked once per round.
struct Rotation<'a> {
    endpoints: &'a [String],
    /// Endpoints asked this round (the first, which `c` is connected to, included).
    asked: usize,
    /// The one to ask next.
    next: usize,
}

impl<'a> Rotation<'a> {
    fn new(endpoints: &'a [String]) -> Self {
        Rotation {
            endpoints,
            asked: 1,
            next: 1 % endpoints.len().max(1),
        }
    }

    /// A connection to the next endpoint not yet asked this round that accepts one (those
    /// that refuse count as asked), or `None` once every endpoint has been asked.
    async fn next(&mut self, t: Duration) -> Option<KvClient<Channel>> {
        let n = self.endpoints.len();
        if self.asked >= n {
            return None;
        }
        let rotated: Vec<String> = self.endpoints[self.next..]
            .iter()
            .chain(&self.endpoints[..self.next])
            .take(n - self.asked)
            .cloned()
            .collect();
        let (ep, c) = client::connect_any(&rotated, t).await.ok()?;
        let at = self
            .endpoints
            .iter()
            .position(|e| *e == ep)
            .unwrap_or(self.next);
        self.asked += (at + n - self.next) % n + 1;
        self.next = (at + 1) % n;
        Some(c)
    }
}

/// Runs `f` against the contacted node and, when it answers "not the leader", against the
/// leader it names. When no leader is known or the one named cannot be reached, asks the other
/// endpoints in turn (a node cut off in a minority knows no leader; one on the majority side
/// does); when none knows one (it just died, an election is on), waits and goes round again
/// until `t` has passed, as etcdctl waits out an election: a not-the-leader answer means
/// nothing was done, so trying again is safe. A leaderless coordinator that could not gather
/// its quorum and applied nothing (`x-kv-no-quorum`) is treated the same way, without the
/// waiting: the other endpoints are asked once each (another may be on the side of a partition
/// that holds a quorum, as a Cassandra driver tries the next host), and if all refuse, the
/// first refusal is returned. Every other answer is returned at once. `f` gets the time left.
async fn follow_leader<T, F, Fut>(
    c: &mut KvClient<Channel>,
    endpoints: &[String],
    t: Duration,
    mut f: F,
) -> Result<tonic::Response<T>, tonic::Status>
where
    F: FnMut(KvClient<Channel>, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + t;
    let mut pause = Duration::from_millis(50);
    // Redirects followed since the last pause (two nodes naming each other must not spin).
    let mut hops = 0;
    let mut others = Rotation::new(endpoints);
    // Leaderless: the first coordinator's refusal, and how many refused.
    let mut refused: Option<(tonic::Status, usize)> = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = match f(c.clone(), left).await {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && s.metadata().get(LEADER_ID).is_some() =>
            {
                s
            }
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && s.metadata().get(NO_QUORUM).is_some() =>
            {
                let (first, n) = refused.get_or_insert((s, 0));
                *n += 1;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if let Some(other) = others.next(left).await {
                    *c = other;
                    continue;
                }
                let (first, n) = (first.clone(), *n);
                return Err(if n > 1 {
                    tonic::Status::with_metadata(
                        first.code(),
                        format!(
                            "{} (and {} other node(s) asked could not reach a quorum either)",
                            first.message(),
                            n - 1
                        ),
                        first.metadata().clone(),
                    )
                } else {
                    first
                });
            }
            r => return r,
        };
        let named = s
            .metadata()
            .get(LEADER_ADDR)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(addr) = named
            && hops < 2
            && let Ok((_, leader)) = client::connect_any(&[addr], left).await
        {
            *c = leader;
            hops += 1;
            continue;
        }
        hops = 0;
        // No leader to go to from this node (it may be on the minority side of a partition):
        // ask the next endpoint at once; once all have been asked, wait and go round again.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(other) = others.next(left).await {
            *c = other;
            continue;
        }
        if left <= pause {
            return Err(tonic::Status::with_metadata(
                s.code(),
                format!(
                    "{} (still so after {})",
                    s.message(),
                    humantime::format_duration(t)
                ),
                s.metadata().clone(),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(400));
        others.asked = 0;
    }
}

/// What `put` and `delete` print: the version, or the JSON shape of SPEC section 13; and, in
/// text mode, a note on stderr when last-writer-wins hides the write on replicas that
/// acknowledged it (leaderless).
fn write_output(
    key: &str,
    version: &Option<pb::Version>,
    meta: Option<pb::ResponseMeta>,
    json: bool,
) -> Done {
    let m = meta.unwrap_or_default();
    let v = version_text(version);
    let acks = m.achieved.map_or(0, |a| a.w);
    if json {
        let stdout = json!({"key": key, "version": v, "node": m.coordinator, "acks": acks,
               "replicas": m.replicas, "degraded": m.degraded,
               "superseded_on": m.superseded_on})
        .to_string();
        return Done {
            stdout: stdout.into(),
            stderr: None,
            code: exit::OK,
        };
    }
    let note = (!m.superseded_on.is_empty()).then(|| {
        let lost = if m.superseded_on.len() as u32 >= acks {
            "on every replica that acknowledged it: the write is lost"
        } else {
            "there"
        };
        format!(
            "note: {} already held a concurrent write with a higher version, which hides this \
             one {lost} (last-writer-wins; clocks skewed?)",
            m.superseded_on.join(",")
        )
    });
    Done {
        stdout: v.unwrap_or_default().into(),
        stderr: note,
        code: exit::OK,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Adds a value to a JSON object: `name` as text, and, when the bytes are not UTF-8 (so that
/// the text shows U+FFFD in their place), every byte in `{name}_base64` too: nothing is lost.
fn json_value(out: &mut serde_json::Value, name: &str, b: Option<&[u8]>) {
    out[name] = b.map(text).into();
    if let Some(b) = b.filter(|b| std::str::from_utf8(b).is_err()) {
        out[format!("{name}_base64")] = BASE64.encode(b).into();
    }
}

/// A put's or cas's VALUE: from the command line as given (any bytes the shell passes), or,
/// when it was left out, everything on stdin, which refuses to wait on a terminal.
fn value_bytes(value: Option<OsString>) -> Result<Vec<u8>, tonic::Status> {
    if let Some(v) = value {
        return Ok(v.into_encoded_bytes());
    }
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        return Err(tonic::Status::invalid_argument(
            "no VALUE given and stdin is a terminal: give VALUE, or pipe it in \
             (kvctl put KEY < FILE)",
        ));
    }
    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(|e| {
        tonic::Status::invalid_argument(format!("cannot read VALUE from stdin: {e}"))
    })?;
    Ok(buf)
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// What a command printed and how it exits.
struct Done {
    /// Printed as it is, then a newline (a value's bytes need not be UTF-8).
    stdout: Vec<u8>,
    stderr: Option<String>,
    code: u8,
}

async fn node_status(addr: &str, t: Duration) -> Option<pb::NodeStatus> {
    let ep = tonic::transport::Endpoint::from_shared(client::endpoint_uri(addr))
        .ok()?
        .connect_timeout(t);
    let ch = ep.connect().await.ok()?;
    let mut c = pb::admin_client::AdminClient::new(ch);
    c.status(request(pb::StatusRequest {}, t))
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Every address in `addrs` asked for its status at once, in order.
async fn ask_all(addrs: Vec<String>, t: Duration) -> Vec<(String, Option<pb::NodeStatus>)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().cloned().enumerate() {
        set.spawn(async move { (i, node_status(&addr, t).await) });
    }
    let mut got: Vec<Option<pb::NodeStatus>> = vec![None; addrs.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, s)) = r {
            got[i] = s;
        }
    }
    addrs.into_iter().zip(got).collect()
}

/// The socket addresses `addr` (HOST:PORT) stands for (none if it does not resolve).
async fn resolve(addr: &str) -> Vec<std::net::SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// What `kvctl status` shows: the endpoints given, in order, then the members the nodes that
/// answered list and no endpoint reached (one endpoint is enough to see the whole cluster, as
/// with `nodetool status`), sorted by id. Also the id of each endpoint that did not answer,
/// from the members the others list (matched by the address it resolves to, so
/// `localhost:7002` finds `n2=127.0.0.1:7002`).
async fn status_rows(
    endpoints: &[String],
    t: Duration,
) -> (
    Vec<(String, Option<pb::NodeStatus>)>,
    HashMap<String, String>,
) {
    let mut rows = ask_all(endpoints.to_vec(), t).await;
    // One node given twice (`localhost:7001` and `127.0.0.1:7001`) is one row, the first.
    let mut ids = HashSet::new();
    rows.retain(|(_, s)| s.as_ref().is_none_or(|s| ids.insert(s.id.clone())));
    let mut members: BTreeMap<String, String> = BTreeMap::new();
    for s in rows.iter().filter_map(|(_, s)| s.as_ref()) {
        for (id, addr) in &s.members {
            members.entry(id.clone()).or_insert_with(|| addr.clone());
        }
    }
    let mut down_ids = HashMap::new();
    let mut silent = Vec::new(); // endpoints that did not answer, with what they resolve to
    for (addr, s) in &rows {
        if s.is_none() {
            silent.push((addr.clone(), resolve(addr).await));
        }
    }
    let mut more = Vec::new();
    for (id, addr) in &members {
        if ids.contains(id) {
            continue; // it answered
        }
        let at = resolve(addr).await;
        match silent
            .iter()
            .find(|(a, r)| a == addr || r.iter().any(|x| at.contains(x)))
        {
            Some((endpoint, _)) => {
                down_ids.insert(endpoint.clone(), id.clone());
            }
            None => more.push(addr.clone()),
        }
    }
    for (addr, s) in ask_all(more, t).await {
        if s.is_none()
            && let Some((id, _)) = members.iter().find(|(_, a)| **a == addr)
        {
            down_ids.insert(addr.clone(), id.clone());
        }
        rows.push((addr, s));
    }
    (rows, down_ids)
}

/// Leaderless: the hints the nodes that answered hold for replica `id`.
fn hints_held_for(rows: &[(String, Option<pb::NodeStatus>)], id: &str) -> u64 {
    rows.iter()
        .filter_map(|(_, s)| s.as_ref())
        .filter_map(|s| s.hints_for.get(id))
        .sum()
}

/// `kvctl status` in leaderless mode: no leaders or terms; hints, repairs and conflicts instead.
fn leaderless_table(
    rows: &[(String, Option<pb::NodeStatus>)],
    down_ids: &HashMap<String, String>,
) -> String {
    let mut out = format!(
        "{:<6} {:<22} {:<9} {:<18} {:>9} {:>10} {:>9} {:>11} {:>9}\n",
        "ID", "ADDR", "ROLE", "REACHABLE", "WRITES", "HINTS", "DELIVERED", "REPAIRS", "CONFLICTS"
    );
    for (addr, s) in rows {
        match s {
            Some(s) => out.push_str(&format!(
                "{:<6} {:<22} {:<9} {:<18} {:>9} {:>10} {:>9} {:>11} {:>9}\n",
                s.id,
                addr,
                s.role,
                if s.reachable.is_empty() {
                    "-".to_string()
                } else {
                    s.reachable.join(",")
                },
                s.last_index,
                s.hints_pending,
                s.hints_delivered,
                format!("{}r/{}ae", s.read_repairs, s.anti_entropy_repairs),
                s.conflicting_writes,
            )),
            None => {
                let id = down_ids.get(addr).cloned();
                let held = id.as_deref().map_or(0, |id| hints_held_for(rows, id));
                out.push_str(&format!(
                    "{:<6} {:<22} {:<9}{}\n",
                    id.as_deref().unwrap_or("?"),
                    addr,
                    "down",
                    if held > 0 {
                        format!(" {held} hint(s) held for it by the others")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    out.push_str(
        "WRITES: copies written here; HINTS: held for unreachable replicas; \
         REPAIRS: by reads (r) and anti-entropy (ae); CONFLICTS: concurrent writes detected; \
         ROLE refilling: back empty, pulling its keys from its peers (its read answers do not \
         count until it has)",
    );
    out
}

async fn status(endpoints: &[String], t: Duration, json: bool) -> Done {
    let (rows, down_ids) = status_rows(endpoints, t).await;
    let leaders: Vec<&pb::NodeStatus> = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .filter(|s| s.role == "leader")
        .collect();
    let split_brain = leaders.len() > 1;
    let mismatch = config_differences(&rows);
    // Peer connections refused for another cluster shape: the pairs do not talk at all.
    let mut refused: Vec<String> = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .flat_map(|s| {
            s.refusing
                .iter()
                .map(|(peer, why)| format!("{} refuses {peer}: {why}", s.id))
        })
        .collect();
    refused.sort();
    // Nodes that heard two leaders at overlapping times lately (a split brain that may be over).
    let heard: Vec<&str> = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .filter(|s| s.leaders_observed >= 2)
        .map(|s| s.id.as_str())
        .collect();
    let newest = leaders.iter().max_by_key(|s| s.term);
    // Entries node `id` is behind the newest leader, and how long ago it had what `id` has
    // (known for a node that does not answer too: it is the leader's view).
    let lag_of_id = |id: &str| -> Option<(u64, u64)> {
        newest.and_then(|l| {
            let entries = l.follower_lag.get(id).copied()?;
            Some((entries, l.follower_lag_ms.get(id).copied().unwrap_or(0)))
        })
    };
    let lag_of = |s: &pb::NodeStatus| -> Option<(u64, u64)> {
        if s.role == "leader" {
            return Some((0, 0));
        }
        lag_of_id(&s.id)
    };
    let lag_text = |l: Option<(u64, u64)>| {
        l.map_or("-".into(), |(e, ms)| {
            if ms > 0 {
                format!("{e} ({ms}ms)")
            } else {
                e.to_string()
            }
        })
    };
    let stdout = if json {
        let nodes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(addr, s)| match s {
                Some(s) => {
                    let lag = lag_of(s);
                    json!({"id": s.id, "addr": addr, "role": s.role, "term": s.term,
                    "leader": (!s.leader.is_empty()).then_some(&s.leader),
                    "reachable": s.reachable, "applied_index": s.applied_index,
                    "commit_index": s.commit_index, "lag": lag.map(|l| l.0),
                    "lag_ms": lag.map(|l| l.1), "mode": s.mode,
                    "snapshot_index": s.snapshot_index, "log_entries": s.log_entries,
                    "hints_pending": s.hints_pending, "hints_for": s.hints_for,
                    "hints_delivered": s.hints_delivered,
                    "conflicting_writes": s.conflicting_writes, "read_repairs": s.read_repairs,
                    "anti_entropy_repairs": s.anti_entropy_repairs,
                    "refusing": s.refusing,
                    "faults": s.faults.as_ref().and_then(describe_faults)})
                }
                None => {
                    let id = down_ids.get(addr).cloned();
                    let lag = id.as_deref().and_then(lag_of_id);
                    let held = id.as_deref().map(|id| hints_held_for(&rows, id));
                    json!({"id": id, "addr": addr, "role": "down", "term": null,
                        "leader": null, "reachable": [], "applied_index": null,
                        "lag": lag.map(|l| l.0), "lag_ms": lag.map(|l| l.1),
                        "hints_held_for_it": held})
                }
            })
            .collect();
        json!({"nodes": nodes, "split_brain": split_brain, "split_brain_heard": heard,
            "config_mismatch": mismatch})
        .to_string()
    } else if rows
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s.mode == "leaderless"))
    {
        with_faults(leaderless_table(&rows, &down_ids), &rows)
    } else {
        let mut out = format!(
            "{:<6} {:<22} {:<13} {:>5} {:<7} {:<18} {:>9} {:>14} {:>9} {:>7}\n",
            "ID",
            "ADDR",
            "ROLE",
            "TERM",
            "LEADER",
            "REACHABLE",
            "APPLIED",
            "LAG",
            "SNAPSHOT",
            "LOG"
        );
        for (addr, s) in &rows {
            match s {
                Some(s) => out.push_str(&format!(
                    "{:<6} {:<22} {:<13} {:>5} {:<7} {:<18} {:>9} {:>14} {:>9} {:>7}\n",
                    s.id,
                    addr,
                    s.role,
                    s.term,
                    if s.leader.is_empty() { "-" } else { &s.leader },
                    if s.reachable.is_empty() {
                        "-".to_string()
                    } else {
                        s.reachable.join(",")
                    },
                    s.applied_index,
                    lag_text(lag_of(s)),
                    s.snapshot_index,
                    s.log_entries,
                )),
                None => {
                    let id = down_ids.get(addr).cloned();
                    let lag = id.as_deref().and_then(lag_of_id);
                    out.push_str(&format!(
                        "{:<6} {:<22} {:<13} {:>5} {:<7} {:<18} {:>9} {:>14}\n",
                        id.as_deref().unwrap_or("?"),
                        addr,
                        "down",
                        "-",
                        "-",
                        "-",
                        "-",
                        lag_text(lag)
                    ));
                }
            }
        }
        if split_brain {
            let who: Vec<String> = leaders
                .iter()
                .map(|l| format!("{} (term {})", l.id, l.term))
                .collect();
            out.push_str(&format!(
                "SPLIT BRAIN: {} all claim leadership\n",
                who.join(", ")
            ));
        }
        if !heard.is_empty() {
            out.push_str(&format!(
                "split brain heard: {} heard two leaders at overlapping times in the last 30 s \
                 (kv_leaders_observed)\n",
                heard.join(", ")
            ));
        }
        with_faults(out.trim_end().to_string(), &rows)
    };
    let stdout = if json || (mismatch.is_empty() && refused.is_empty()) {
        stdout
    } else {
        let lines: Vec<String> = mismatch
            .iter()
            .map(|m| format!("MISCONFIGURED: {m}"))
            .chain(refused.iter().map(|r| format!("REFUSED: {r}")))
            .collect();
        format!("{stdout}\n{}", lines.join("\n"))
    };
    let any_up = rows.iter().any(|(_, s)| s.is_some());
    Done {
        stdout: stdout.into(),
        stderr: (!any_up).then(|| "no node answered".to_string()),
        code: if any_up { exit::OK } else { exit::FAILED },
    }
}

async fn run(args: Args) -> Result<Done, tonic::Status> {
    let t = args.timeout.0;
    let mut args = match args.cmd {
        Cmd::Status => return Ok(status(&args.endpoints, t, args.output == Output::Json).await),
        Cmd::Fault { fault: f } => return fault(&args.endpoints, f, t).await,
        _ => args,
    };
    // A put's or cas's value is read first: from stdin, it is not to wait for a connection.
    let value = match &mut args.cmd {
        Cmd::Put { value, .. } | Cmd::Cas { value, .. } => value_bytes(value.take())?,
        _ => Vec::new(),
    };
    let (_, mut c) = client::connect_any(&args.endpoints, t).await?;
    let json = args.output == Output::Json;
    let loss = args.on_quorum_loss;
    let ok = |stdout: Vec<u8>| Done {
        stdout,
        stderr: None,
        code: exit::OK,
    };
    Ok(match args.cmd {
        Cmd::Status | Cmd::Fault { .. } | Cmd::Cluster { .. } => unreachable!("handled above"),
        Cmd::Put { key, w, .. } => {
            let req = pb::PutRequest {
                key: key.clone().into(),
                value: value.into(),
                consistency: consistency(None, w, None, loss),
            };
            let r = follow_leader(&mut c, &args.endpoints, t, |mut c, t| {
                let req = req.clone();
                async move { c.put(request(req, t)).await }
            })
            .await?
            .into_inner();
            write_output(&key, &r.version, r.meta, json)
        }
        Cmd::Get { key, r, read_from } => {
            let req = pb::GetRequest {
                key: key.clone().into(),
                consistency: consistency(r, None, read_from, loss),
            };
            let resp = follow_leader(&mut c, &args.endpoints, t, |mut c, t| {
                let req = req.clone();
                async move { c.get(request(req, t)).await }
            })
            .await?
            .into_inner();
            let m = resp.meta.unwrap_or_default();
            let stdout = if json {
                let mut out = json!({"key": key, "version": version_text(&resp.version),
                       "node": m.coordinator, "replicas": m.replicas, "stale": m.stale,
                       "lag": m.lag_entries, "degraded": m.degraded});
                json_value(&mut out, "value", resp.found.then_some(&resp.value[..]));
                out.to_string().into()
            } else if resp.found {
                resp.value.to_vec()
            } else {
                Vec::new()
            };
            // Text mode says what JSON's `stale` and `lag` say, on stderr (stdout stays the
            // value alone, for scripts).
            let note = (m.stale && !json).then(|| {
                let behind = if m.lag_entries > 0 {
                    format!(
                        "; {} committed entries not yet applied there",
                        m.lag_entries
                    )
                } else {
                    String::new()
                };
                let how = if m.degraded {
                    // on_quorum_loss=degrade: fewer answers than asked for (either mode).
                    let got = m.achieved.as_ref().map_or(0, |a| a.r);
                    format!(
                        "answered degraded, with {got} replica(s) ({}) where more were asked",
                        m.replicas.join(",")
                    )
                } else {
                    "answered without the leader's or a quorum's confirmation".to_string()
                };
                format!("note: {} {how}: it may be stale{behind}", m.coordinator)
            });
            if resp.found {
                Done {
                    stdout,
                    stderr: note,
                    code: exit::OK,
                }
            } else {
                Done {
                    stdout,
                    stderr: Some(match note {
                        Some(n) => format!("not found\n{n}"),
                        None => "not found".into(),
                    }),
                    code: exit::NOT_FOUND_OR_NOT_APPLIED,
                }
            }
        }
        Cmd::Delete { key, w } => {
            let req = pb::DeleteRequest {
                key: key.clone().into(),
                consistency: consistency(None, w, None, loss),
            };
            let r = follow_leader(&mut c, &args.endpoints, t, |mut c, t| {
                let req = req.clone();
                async move { c.delete(request(req, t)).await }
            })
            .await?
            .into_inner();
            write_output(&key, &r.version, r.meta, json)
        }
        Cmd::Cas {
            key,
            expected_version,
            w,
            ..
        } => {
            let expected = match expected_version.as_str() {
                "none" | "-" => None,
                s => match s.parse::<Version>() {
                    Ok(v) => Some(pb::Version {
                        epoch: v.epoch,
                        counter: v.counter,
                    }),
                    Err(e) => {
                        return Err(tonic::Status::invalid_argument(format!(
                            "{e} (or none: the key must be absent)"
                        )));
                    }
                },
            };
            let req = pb::CompareAndSetRequest {
                key: key.clone().into(),
                expected,
                value: value.into(),
                consistency: consistency(None, w, None, loss),
            };
            let r = follow_leader(&mut c, &args.endpoints, t, |mut c, t| {
                let req = req.clone();
                async move { c.compare_and_set(request(req, t)).await }
            })
            .await?
            .into_inner();
            let m = r.meta.unwrap_or_default();
            let v = version_text(&r.version);
            let stdout = if json {
                let mut out = json!({"key": key, "applied": r.applied, "version": v,
                       "node": m.coordinator, "acks": m.achieved.map_or(0, |a| a.w),
                       "replicas": m.replicas, "degraded": m.degraded});
                let current = (!r.applied && r.found).then_some(&r.current_value[..]);
                json_value(&mut out, "current_value", current);
                out.to_string().into()
            } else if r.applied {
                v.clone().unwrap_or_default().into()
            } else {
                Vec::new()
            };
            if r.applied {
                ok(stdout)
            } else {
                Done {
                    stdout,
                    stderr: Some(match v {
                        Some(v) => format!("not applied: current version is {v}"),
                        None => "not applied: the key is absent (use none as the expected version)"
                            .into(),
                    }),
                    code: exit::NOT_FOUND_OR_NOT_APPLIED,
                }
            }
        }
    })
}

/// A failure's message, with what gRPC's own words leave out: a request larger than the node
/// decodes is refused before the node looks at it (OUT_OF_RANGE), so the limits it stands for
/// are named here.
fn error_message(s: &tonic::Status) -> String {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large") {
        format!(
            "{}: the request is larger than the node accepts (a key of at most max_key_bytes \
             and a value of at most max_value_bytes, plus a little); nothing was stored",
            s.message()
        )
    } else {
        s.message().to_string()
    }
}

/// The single-threaded runtime every command runs on (a failure to start it, said and turned
/// into the exit code).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("kvctl: cannot start the runtime: {e}");
            ExitCode::from(exit::FAILED)
        })
}

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "node") {
        // `kvctl node <kv-node flags>`: how `cluster up` starts its nodes.
        argv.drain(..2);
        argv.insert(0, "kv-node".into());
        return node_bin::node_main(argv);
    }
    let args = Args::parse();
    if let Cmd::Cluster { cmd } = args.cmd {
        return cluster::run(cmd, args.timeout.0, args.output == Output::Json);
    }
    let json = args.output == Output::Json;
    // Only a write can have taken effect; a read that timed out changed nothing.
    let writes = matches!(
        args.cmd,
        Cmd::Put { .. } | Cmd::Delete { .. } | Cmd::Cas { .. }
    );
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(args)) {
        Ok(d) => {
            if !d.stdout.is_empty() {
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head`) is not the command's failure.
                let _ = out.write_all(&d.stdout).and_then(|()| out.write_all(b"\n"));
                let _ = out.flush();
            }
            if let Some(e) = d.stderr {
                eprintln!("{e}");
            }
            ExitCode::from(d.code)
        }
        Err(s) => {
            let code = client::exit_code(&s);
            let maybe = writes && client::may_have_happened(&s);
            let what = if maybe {
                " (outcome unknown: it may have taken effect)"
            } else {
                ""
            };
            let message = error_message(&s);
            if json {
                println!(
                    "{}",
                    json!({"error": {"code": kv_node::metrics::code_name(s.code()), "message": message,
                                     "may_have_happened": maybe}})
                );
            }
            eprintln!(
                "kvctl: {}: {message}{what}",
                kv_node::metrics::code_name(s.code()),
            );
            ExitCode::from(code)
        }
    }
}
