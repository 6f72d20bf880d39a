//! `kv-bench sweep CONFIG`: a matrix of runs, one after another, each against a cluster the
//! sweep starts itself with `kvctl cluster up` (or against given endpoints: etcd, Redis, a
//! cluster already running), then one comparison table and one latency picture.
//!
//! ```toml
//! out = "bench-out/sweep"          # one directory per run below it, and sweep.md / latency.svg
//! duration = "10s"                 # defaults for every run; any run may override them
//! warmup = "2s"
//! keys = 10000
//! value_size = "100"              # or a range, "50-500"
//! dist = "zipfian"
//! mix = "read=50,write=50"
//! clients = 16                     # closed loop; or rate = 5000 (open loop)
//!
//! [[run]]
//! name = "lf-w2"
//! cluster = { mode = "leader-follower", nodes = 3, w = 2 }   # kvctl cluster up flags
//! read_from = "leader"
//!
//! [[run]]
//! name = "ll-r2w2"
//! cluster = { mode = "leaderless", nodes = 5, n = 3, r = 2, w = 2, memory = true }
//!
//! [[run]]
//! name = "etcd"
//! driver = "etcd"
//! endpoints = "127.0.0.1:2379"
//! ```

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::driver::DriverKind;
use crate::run::{self, RunConfig, Summary};
use crate::workload::{Dist, Mix};

/// A cluster the sweep starts (flags of `kvctl cluster up`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// leader-follower or leaderless.
    pub mode: String,
    /// Nodes.
    pub nodes: u32,
    /// N, R, W (node defaults when absent).
    pub n: Option<u32>,
    /// Read quorum.
    pub r: Option<u32>,
    /// Write quorum.
    pub w: Option<u32>,
    /// In memory instead of on disk.
    #[serde(default)]
    pub memory: bool,
    /// always, batch or never.
    pub fsync: Option<String>,
    /// More kv-node flags.
    #[serde(default)]
    pub node_args: Vec<String>,
}

/// Settings shared by runs, each overridable per run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    duration: Option<String>,
    warmup: Option<String>,
    keys: Option<u64>,
    value_size: Option<String>,
    dist: Option<String>,
    mix: Option<String>,
    clients: Option<usize>,
    rate: Option<u64>,
    r: Option<u32>,
    w: Option<u32>,
    read_from: Option<String>,
    on_quorum_loss: Option<String>,
    driver: Option<String>,
    endpoints: Option<String>,
}

/// One run of the matrix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Its name (directory and table row).
    pub name: String,
    /// A cluster to start for it.
    pub cluster: Option<ClusterSpec>,
    #[serde(flatten)]
    settings: Settings,
}

/// The sweep file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Output directory.
    pub out: PathBuf,
    #[serde(flatten)]
    defaults: Settings,
    /// The runs, in order.
    pub run: Vec<RunSpec>,
}

fn pick<T: Clone>(run: &Option<T>, default: &Option<T>) -> Option<T> {
    run.clone().or_else(|| default.clone())
}

fn config(spec: &SweepSpec, r: &RunSpec, endpoints: Vec<String>) -> anyhow::Result<RunConfig> {
    let (s, d) = (&r.settings, &spec.defaults);
    let dur = |v: Option<String>, default: &str| -> anyhow::Result<Duration> {
        let t = v.unwrap_or_else(|| default.to_owned());
        humantime::parse_duration(&t).with_context(|| format!("{}: duration {t:?}", r.name))
    };
    let rate = pick(&s.rate, &d.rate);
    let clients = pick(&s.clients, &d.clients).unwrap_or(if rate.is_some() { 64 } else { 16 });
    let driver: DriverKind = pick(&s.driver, &d.driver)
        .unwrap_or_else(|| "kv".into())
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", r.name))?;
    let dist: Dist = pick(&s.dist, &d.dist)
        .unwrap_or_else(|| "zipfian".into())
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", r.name))?;
    let mix: Mix = pick(&s.mix, &d.mix)
        .unwrap_or_else(|| "read=50,write=50".into())
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", r.name))?;
    let connections = endpoints.len().clamp(1, clients);
    Ok(RunConfig {
        driver,
        endpoints,
        clients,
        connections,
        rate,
        duration: dur(pick(&s.duration, &d.duration), "10s")?,
        warmup: dur(pick(&s.warmup, &d.warmup), "2s")?,
        keys: pick(&s.keys, &d.keys).unwrap_or(10_000),
        value_size: pick(&s.value_size, &d.value_size)
            .unwrap_or_else(|| "100".into())
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {e}", r.name))?,
        dist,
        mix,
        timeout: Duration::from_secs(2),
        r: pick(&s.r, &d.r),
        w: pick(&s.w, &d.w),
        read_from: pick(&s.read_from, &d.read_from),
        on_quorum_loss: pick(&s.on_quorum_loss, &d.on_quorum_loss),
        seed: 1,
        out: spec.out.join(&r.name),
        history: None,
        key_prefix: String::new(),
        threads: 1,
        route: crate::driver::Route::Auto,
        token_aware: false,
        server_pids: Vec::new(),
    })
}

/// A started cluster: stopped (SIGTERM, then waited for) when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `kvctl cluster up` for `c` and returns it with the endpoints to drive: every node
/// (in leader-follower mode the run sends writes and leader reads to the leader and spreads
/// reads from any replica over all of them).
fn start(c: &ClusterSpec, dir: &Path, port: u16) -> anyhow::Result<(Started, Vec<String>)> {
    let kvctl = std::env::current_exe()?
        .parent()
        .map(|p| p.join("kvctl"))
        .context("cannot locate kvctl beside kv-bench")?;
    let mut cmd = Command::new(&kvctl);
    cmd.args([
        "cluster",
        "up",
        "--nodes",
        &c.nodes.to_string(),
        "--mode",
        &c.mode,
    ])
    .args(["--base-port", &port.to_string()])
    .args(["--admin-base-port", &(port + 1000).to_string()])
    .arg("--data-dir")
    .arg(dir);
    for (flag, v) in [("--n", c.n), ("--r", c.r), ("--w", c.w)] {
        if let Some(v) = v {
            cmd.args([flag, &v.to_string()]);
        }
    }
    if c.memory {
        cmd.arg("--memory");
    }
    if let Some(f) = &c.fsync {
        cmd.args(["--fsync", f]);
    }
    cmd.arg("--")
        .args(&c.node_args)
        .args(["--worker-threads", "1"]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", kvctl.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let started = Started(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut eps = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(e) = line.trim().strip_prefix("export KV_ENDPOINTS=") {
            eps = e.split(',').map(str::to_owned).collect();
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    if eps.is_empty() {
        bail!(
            "kvctl cluster up did not come up (see its logs in {})",
            dir.display()
        );
    }
    Ok((started, eps))
}

/// Runs the sweep; returns the summaries by run name.
///
/// # Errors
/// A bad file, a cluster that does not start, a run that fails.
pub async fn sweep(path: &Path) -> anyhow::Result<Vec<(String, Summary)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: SweepSpec =
        toml::from_str(&text).with_context(|| format!("{}: invalid sweep file", path.display()))?;
    std::fs::create_dir_all(&spec.out)?;
    let mut results = Vec::new();
    for (i, r) in spec.run.iter().enumerate() {
        eprintln!("== {} ({} of {})", r.name, i + 1, spec.run.len());
        let (cluster, endpoints) = match (
            &r.cluster,
            pick(&r.settings.endpoints, &spec.defaults.endpoints),
        ) {
            (Some(c), _) => {
                let dir = spec.out.join(&r.name).join("cluster");
                std::fs::create_dir_all(&dir)?;
                let (s, eps) = start(c, &dir, 7601)?;
                (Some(s), eps)
            }
            (None, Some(e)) => (None, e.split(',').map(str::to_owned).collect()),
            (None, None) => bail!("run {}: give a cluster or endpoints", r.name),
        };
        let mut cfg = config(&spec, r, endpoints)?;
        // A cluster started here runs on this machine: count what its nodes spend.
        if let Some(c) = &cluster {
            cfg.server_pids = vec![c.0.id()];
        }
        let summary = run::run(cfg, vec![path.display().to_string(), r.name.clone()]).await?;
        eprint!("{}", run::table(&summary));
        drop(cluster);
        results.push((r.name.clone(), summary));
    }
    let mut md = String::from(
        "| run | ops/s | p50 us | p99 us | p99.9 us | max us | errors | degraded | generator us/op | servers us/op |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let per_op = |us: Option<f64>| us.map_or_else(|| "-".to_string(), |u| format!("{u:.1}"));
    for (name, s) in &results {
        let l = &s.latency_us;
        md.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.ops_per_sec,
            l.p50,
            l.p99,
            l.p99_9,
            l.max,
            s.errors.values().sum::<u64>(),
            s.degraded,
            per_op(s.client_cpu.and_then(|c| c.per_op_us)),
            per_op(s.server_cpu.as_ref().and_then(|c| c.per_op_us)),
        ));
    }
    std::fs::write(spec.out.join("sweep.md"), &md)?;
    const COLORS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let series: Vec<(&str, &str, &hdrhistogram::Histogram<u64>)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, (n, s))| {
            Some((
                n.as_str(),
                COLORS[i % COLORS.len()],
                s.latency_histogram.as_ref()?,
            ))
        })
        .collect();
    std::fs::write(
        spec.out.join("latency.svg"),
        crate::plot::percentiles(&series),
    )?;
    print!("{md}");
    println!(
        "wrote {} and {}",
        spec.out.join("sweep.md").display(),
        spec.out.join("latency.svg").display()
    );
    Ok(results)
}
