//! A cluster of real `kv-node` processes on loopback, replicating to each other, with fault
//! injection enabled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use kv_proto::kv::v1 as pb;

use crate::{NodeProcess, free_port};

/// N nodes, each with its own data directory.
pub struct Cluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<NodeProcess>,
    /// Their ids.
    pub ids: Vec<String>,
    /// Each node's data directory.
    pub dirs: Vec<PathBuf>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` leader-follower nodes with `extra` flags and waits for a leader.
    ///
    /// # Errors
    /// A node does not start, or no leader within 10 s.
    pub async fn start(n: usize, extra: &[&str]) -> anyhow::Result<Cluster> {
        let c = Self::spawn(n, extra, false)?;
        c.wait_leader(Duration::from_secs(10), None).await?;
        Ok(c)
    }

    /// Starts `n` leaderless nodes with `extra` flags and waits until every node reaches every
    /// other (until then a node counts the peers it has not connected to yet as down).
    ///
    /// # Errors
    /// A node does not start, or the nodes do not all connect within 10 s.
    pub async fn start_leaderless(n: usize, extra: &[&str]) -> anyhow::Result<Cluster> {
        let mut args = vec!["--mode", "leaderless"];
        args.extend_from_slice(extra);
        let c = Self::spawn(n, &args, false)?;
        c.wait_connected(Duration::from_secs(10)).await?;
        Ok(c)
    }

    /// Starts `n` nodes as [`Cluster::start`] does (or [`Cluster::start_leaderless`], when
    /// `extra` says `--mode leaderless`), each under the power-loss emulation
    /// ([`crate::power_loss_env`]), so that [`Cluster::power_off`] can fail their power.
    ///
    /// # Errors
    /// As those.
    pub async fn start_power_loss(n: usize, extra: &[&str]) -> anyhow::Result<Cluster> {
        let c = Self::spawn(n, extra, true)?;
        if extra.windows(2).any(|w| w == ["--mode", "leaderless"]) {
            c.wait_connected(Duration::from_secs(10)).await?;
        } else {
            c.wait_leader(Duration::from_secs(10), None).await?;
        }
        Ok(c)
    }

    /// Makes every node's flushes `delay` slower (`kvctl fault disk`): the written data waits
    /// that long for its fsync, so that with writes going a node nearly always holds some
    /// that a power failure would take.
    ///
    /// # Panics
    /// When kvctl refuses.
    pub fn slow_disks(&self, delay: &str) {
        let eps = self.endpoints();
        for id in &self.ids {
            let r = crate::kvctl(&eps, &["fault", "disk", id, delay]);
            assert_eq!(r.code, 0, "{r:?}");
        }
    }

    /// Writers at `w` (see [`writers`]) with every disk 20 ms slower; after 1.5 s, at a moment
    /// when writes are flowing (one acknowledged within the last 25 ms), the power fails on
    /// every node at once, and they all start again. Returns the writes acknowledged and what
    /// the power failure undid.
    ///
    /// When a failure happens to take nothing unsynced (on a loaded machine every node can sit
    /// between flushes at that instant; CI saw it once), the nodes start again, slow disks and
    /// all, and the power fails again, up to three times in all, the writers going on
    /// throughout: every write acknowledged before any of the failures must survive.
    ///
    /// # Panics
    /// When fewer than 20 writes were acknowledged, no failure took anything unsynced (the
    /// test would show nothing), or a node does not start again.
    pub async fn writes_through_an_outage(
        &mut self,
        w: u32,
    ) -> (Vec<(String, usize, Instant)>, String) {
        self.slow_disks("20ms");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(writers(self.targets(), w, stop.clone(), acked.clone()));
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let mut reverted = String::new();
        for attempt in 1..=3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            wait_flowing(&acked, Duration::from_millis(25), Duration::from_secs(10)).await;
            reverted = self.power_off(&all);
            if reverted.contains("write(s) undone") || attempt == 3 {
                break;
            }
            eprintln!("power failure {attempt} took nothing unsynced; once more:\n{reverted}");
            for n in &mut self.nodes {
                n.start_again().expect("start after the power failure");
            }
            self.slow_disks("20ms");
        }
        stop.store(true, Ordering::Relaxed);
        task.await.expect("writers");
        let acked = acked.lock().await.clone();
        assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
        assert!(
            reverted.contains("write(s) undone"),
            "three power failures took nothing unsynced: the test shows nothing\n{reverted}"
        );
        for n in &mut self.nodes {
            n.start_again().expect("start after the power failure");
        }
        (acked, reverted)
    }

    /// The power fails on the nodes `which`, all at once: each is killed with `kill -9` and
    /// loses what it had not fsynced ([`NodeProcess::power_off`]). Returns what was undone.
    pub fn power_off(&mut self, which: &[usize]) -> String {
        // Kill them all first: a node must not see another's loss while it still runs.
        for &i in which {
            self.nodes[i].kill9();
        }
        which
            .iter()
            .map(|&i| format!("{}: {}", self.ids[i], self.nodes[i].power_off()))
            .collect()
    }

    /// Waits until every leaderless node reaches every other.
    ///
    /// # Errors
    /// They do not all connect within `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let deadline = Instant::now() + limit;
        loop {
            let mut connected = 0;
            for i in 0..n {
                if self
                    .status(i)
                    .await
                    .is_some_and(|s| s.reachable.len() + 1 == n)
                {
                    connected += 1;
                }
            }
            if connected == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {connected} of {n} leaderless nodes reach every peer after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `i`'s counter or gauge `name` (0 when absent or the node is down).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        if !self.nodes[i].is_up() {
            return 0.0;
        }
        let Ok((200, text)) = crate::http_get(self.nodes[i].admin, "/metrics") else {
            return 0.0;
        };
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// The sum of `name` over every node that is up.
    pub fn metric_sum(&self, name: &str) -> f64 {
        (0..self.nodes.len()).map(|i| self.metric(i, name)).sum()
    }

    fn spawn(n: usize, extra: &[&str], power_loss: bool) -> anyhow::Result<Cluster> {
        let root = tempfile::tempdir()?;
        let addrs: Vec<(SocketAddr, SocketAddr)> = (0..n)
            .map(|_| {
                (
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                )
            })
            .collect();
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let peers = ids
            .iter()
            .zip(&addrs)
            .map(|(id, (a, _))| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        // `--storage memory` among `extra`: no data directories (`dirs` name unused ones).
        let memory = extra.windows(2).any(|w| w == ["--storage", "memory"]);
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for (i, (a, adm)) in addrs.iter().enumerate() {
            let dir = root.path().join(&ids[i]);
            let dir_s = dir.to_string_lossy().into_owned();
            let mut args = vec!["--id", ids[i].as_str(), "--peers", peers.as_str()];
            if !memory {
                args.extend(["--data-dir", dir_s.as_str()]);
            }
            args.push("--enable-fault-injection");
            args.extend_from_slice(extra);
            let env = match power_loss {
                true => {
                    crate::power_loss_env(&dir, &root.path().join(format!("{}.journal", ids[i])))
                }
                false => Vec::new(),
            };
            nodes.push(NodeProcess::start_with_env(*a, *adm, &args, env)?);
            dirs.push(dir);
        }
        Ok(Cluster {
            nodes,
            ids,
            dirs,
            _root: root,
        })
    }

    /// Every node's gRPC endpoint, comma-separated (for kvctl).
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(NodeProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What node `i` reports, if it answers.
    pub async fn status(&self, i: usize) -> Option<pb::NodeStatus> {
        if !self.nodes[i].is_up() {
            return None;
        }
        let uri = format!("http://{}", self.nodes[i].endpoint());
        let ch = tonic::transport::Endpoint::from_shared(uri)
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .ok()?;
        let mut c = pb::admin_client::AdminClient::new(ch);
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_millis(500));
        c.status(req).await.ok().map(|r| r.into_inner())
    }

    /// Indexes of the nodes that claim leadership now.
    pub async fn leaders(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if self.status(i).await.is_some_and(|s| s.role == "leader") {
                out.push(i);
            }
        }
        out
    }

    /// Waits until exactly one node leads (other than `not`), and returns it.
    ///
    /// # Errors
    /// None within `timeout`.
    pub async fn wait_leader(
        &self,
        timeout: Duration,
        not: Option<usize>,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.leaders().await;
            if let [one] = l[..]
                && Some(one) != not
            {
                return Ok(one);
            }
            if Instant::now() > deadline {
                bail!("no single leader after {timeout:?}: leaders {l:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where [`writers`] send their writes: every node.
    pub fn targets(&self) -> Arc<Targets> {
        Arc::new(Targets {
            endpoints: self.nodes.iter().map(NodeProcess::endpoint).collect(),
            ids: self.ids.clone(),
        })
    }

    /// A kv client of node `i`.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn client(
        &self,
        i: usize,
    ) -> anyhow::Result<pb::kv_client::KvClient<tonic::transport::Channel>> {
        Ok(
            pb::kv_client::KvClient::connect(format!("http://{}", self.nodes[i].endpoint()))
                .await?,
        )
    }
}

/// The nodes [`writers`] write to: gRPC endpoints and ids, in the same order.
pub struct Targets {
    pub endpoints: Vec<String>,
    pub ids: Vec<String>,
}

/// Waits until the last write in `acked` was acknowledged less than `fresh` ago, or `limit`
/// has passed (the caller's assertions then say what happened).
async fn wait_flowing(
    acked: &tokio::sync::Mutex<Vec<(String, usize, Instant)>>,
    fresh: Duration,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if acked
            .lock()
            .await
            .last()
            .is_some_and(|(_, _, at)| at.elapsed() < fresh)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Four writers, each putting keys `w{writer}-{i}` with the key as value at `w`
/// acknowledgements until `stop`; they follow a leader hint (`x-kv-leader-id`) or try the
/// next node on an error, never reuse a key whose write may have happened, and record each
/// acknowledged write with the node that answered and when.
pub async fn writers(
    c: Arc<Targets>,
    w: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<tokio::sync::Mutex<Vec<(String, usize, Instant)>>>,
) {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            let mut target = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{t}-{i}");
                let uri = format!("http://{}", c.endpoints[target]);
                let Ok(mut client) = pb::kv_client::KvClient::connect(uri).await else {
                    target = (target + 1) % c.endpoints.len();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut req = tonic::Request::new(crate::put_request(&key, &key, w));
                req.set_timeout(Duration::from_millis(800));
                match client.put(req).await {
                    Ok(_) => {
                        acked.lock().await.push((key, target, Instant::now()));
                        i += 1;
                    }
                    Err(s) => {
                        // Follow the leader hint, or try the next node.
                        target = s
                            .metadata()
                            .get("x-kv-leader-id")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|id| c.ids.iter().position(|x| x == id))
                            .unwrap_or((target + 1) % c.endpoints.len());
                        i += 1; // never reuse a key whose write may have happened
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}
