//! `kv-bench run`: C clients, each with one request in flight.
//!
//! - Closed loop (`--clients C`): each client sends its next request when the previous one
//!   answers. Latency is from send to answer.
//! - Open loop (`--rate R`, as wrk2 does it): each client has a fixed schedule of intended
//!   start times, R/C per second. A request is sent at its intended time, or as soon as the
//!   client's previous request answers if that is later. Latency is measured from the intended
//!   start, so time a request spent waiting behind a slow one counts (no coordinated omission);
//!   the service time, from the actual send, is recorded beside it.
//!
//! Both go into HdrHistogram (microseconds, 3 significant digits); operations whose intended
//! start falls in the warm-up are not recorded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use kv_proto::kv::v1 as pb;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::driver::{self, ClientConns, DriverKind, Route, Routing};
use crate::workload::{Dist, KeyChooser, Mix, ValueSize, key_name};

/// Everything a run is configured with (recorded in `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// System driven.
    pub driver: DriverKind,
    /// Endpoints, spread round robin over connections.
    pub endpoints: Vec<String>,
    /// Concurrent clients (each with one request in flight).
    pub clients: usize,
    /// Open loop: total intended rate in ops/s (`None`: closed loop).
    pub rate: Option<u64>,
    /// Connections shared by the clients.
    pub connections: usize,
    /// Measured time, after the warm-up.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Unmeasured time first.
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Key count.
    pub keys: u64,
    /// Value sizes in bytes.
    pub value_size: ValueSize,
    /// Key distribution.
    pub dist: Dist,
    /// Operation mix.
    pub mix: Mix,
    /// Deadline per operation.
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// Consistency sent with every quorumkv request.
    pub r: Option<u32>,
    /// Write quorum sent with every quorumkv request.
    pub w: Option<u32>,
    /// leader, any or local.
    pub read_from: Option<String>,
    /// fail or degrade.
    pub on_quorum_loss: Option<String>,
    /// Seed of the per-client random generators.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Record every operation (warm-up included) to this history file for `kv-bench check`.
    pub history: Option<PathBuf>,
    /// Put before every key name.
    pub key_prefix: String,
    /// Load-generator threads.
    pub threads: usize,
    /// How quorumkv requests choose a node.
    pub route: Route,
    /// Whether requests were sent to each key's coordinator (set by the run).
    pub token_aware: bool,
    /// Server processes on this machine whose CPU (with their children's) is reported.
    pub server_pids: Vec<u32>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 95th.
    pub p95: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p99_9: u64,
    /// 99.99th.
    pub p99_99: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |p: f64| h.value_at_quantile(p);
        Percentiles {
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Stale reads of a recorded history (a read older than a write acknowledged before it began).
#[derive(Debug, Clone, Serialize)]
pub struct StaleSummary {
    /// Reads with a version (or absent).
    pub reads: u64,
    /// Of those, stale.
    pub stale: u64,
    /// `stale / reads`.
    pub rate: f64,
    /// The history file.
    pub history: PathBuf,
}

/// Per operation type.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// Successful operations measured.
    pub ops: u64,
    /// Their latency.
    pub latency_us: Percentiles,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Successful operations per second over the measured time.
    pub ops_per_sec: f64,
    /// Successful operations measured.
    pub ops: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency: from the intended start (open loop) or the send (closed loop) to the answer.
    pub latency_us: Percentiles,
    /// Service time: from the actual send to the answer.
    pub service_time_us: Percentiles,
    /// Open loop: how late requests were sent (actual minus intended start): the generator's
    /// schedule error, plus time waiting behind the client's previous, slow request.
    pub schedule_error_us: Option<Percentiles>,
    /// With `--history`: stale reads found in it.
    pub stale_reads: Option<StaleSummary>,
    /// Successful answers marked degraded (weaker than asked, `--on-quorum-loss degrade`).
    pub degraded: u64,
    /// quorumkv leaderless: acknowledged writes whose answer named replicas where a concurrent
    /// write with a higher version hides them (last-writer-wins; `superseded_on`).
    pub superseded_writes: u64,
    /// Leader-follower: operations refused by a follower that named the leader, and sent on to
    /// it within their deadline (counted by how they ended there, not as errors).
    #[serde(default)]
    pub redirects_followed: u64,
    /// Reads and writes separately.
    pub by_op: BTreeMap<String, OpSummary>,
    /// The run's configuration.
    pub config: RunConfig,
    /// How the run was started.
    pub command: Vec<String>,
    /// Logical CPUs of the machine the run was made on.
    pub machine_cpus: usize,
    /// The generator's own CPU use over the measured time (`None` without procfs).
    pub client_cpu: Option<crate::cpu::ClientCpu>,
    /// With `--server-pids`: the servers' CPU use over the measured time.
    pub server_cpu: Option<crate::cpu::ServerCpu>,
    /// The latency histogram (for comparisons; not in summary.json).
    #[serde(skip)]
    pub latency_histogram: Option<Histogram<u64>>,
}

#[derive(Default)]
struct ClientResult {
    /// Service time (actual send to answer), all operations.
    service: Option<Histogram<u64>>,
    /// Schedule error (actual send minus intended start), open loop.
    lateness: Option<Histogram<u64>>,
    all: Option<Histogram<u64>>,
    read: Option<Histogram<u64>>,
    write: Option<Histogram<u64>>,
    errors: BTreeMap<&'static str, u64>,
    history: Vec<kv_checker::Op>,
    /// Per measured operation: (second of the run, latency us); u32::MAX latency for an error.
    timeline: Vec<(u32, u32)>,
    /// Answers marked degraded.
    degraded: u64,
    /// Writes reported superseded.
    superseded: u64,
    /// Refusals by a follower naming the leader, followed within the operation.
    redirects: u64,
}

/// `EPOCH.COUNTER` as numbers.
fn parse_version(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A write's value in a recorded history: unique, so a read names the write it saw.
fn unique_value(client: u64, n: u64, size: usize) -> Bytes {
    let mut v = format!("c{client}-{n}");
    if v.len() < size {
        v.push_str(&".".repeat(size - v.len()));
    }
    Bytes::from(v)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("invariant: constant bounds are valid")
}

/// The open-loop schedule: client `c`'s k-th request is intended at
/// `start + (k + c / clients) * interval`. tokio's timers have 1 ms granularity, too coarse for
/// a schedule of tens of microseconds, so a dedicated thread (sleeping 50 µs at a time) releases
/// each client's requests as their intended times pass.
pub struct Schedule {
    start: Instant,
    interval: Duration,
    clients: usize,
    released: Vec<AtomicU64>,
    wake: Vec<tokio::sync::Notify>,
}

impl Schedule {
    fn new(start: Instant, interval: Duration, clients: usize) -> Arc<Self> {
        Arc::new(Schedule {
            start,
            interval,
            clients,
            released: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..clients).map(|_| tokio::sync::Notify::new()).collect(),
        })
    }

    /// When client `c`'s k-th request is intended.
    fn intended(&self, c: usize, k: u64) -> Instant {
        self.start
            + self
                .interval
                .mul_f64(k as f64 + c as f64 / self.clients as f64)
    }

    /// Releases requests until `end` (runs on its own thread).
    fn run(&self, end: Instant) {
        let mut next = vec![0u64; self.clients];
        loop {
            let now = Instant::now();
            for (c, n) in next.iter_mut().enumerate() {
                let before = *n;
                while self.intended(c, *n) <= now {
                    *n += 1;
                }
                if *n != before {
                    self.released[c].store(*n, Ordering::Release);
                    self.wake[c].notify_one();
                }
            }
            if now >= end {
                // Let every client see the end.
                for (c, w) in self.wake.iter().enumerate() {
                    self.released[c].store(u64::MAX, Ordering::Release);
                    w.notify_one();
                }
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Waits until client `c`'s k-th request is released.
    async fn wait(&self, c: usize, k: u64) {
        while self.released[c].load(Ordering::Acquire) <= k {
            self.wake[c].notified().await;
        }
    }
}

/// Runs one operation under its client's deadline: the answer, or `deadline_exceeded` (may
/// have happened) when none came in `timeout` — kept here, not only sent to the server, since
/// a frozen server holding its connection never answers. One timer per client is moved later
/// for each operation: in tokio that is an atomic update while the timer is pending, where a
/// new timer per operation (`tokio::time::timeout`) registers in and leaves the timer wheel
/// each time.
async fn timed<T>(
    deadline: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    op: impl std::future::Future<Output = Result<T, driver::Failed>>,
) -> Result<T, driver::Failed> {
    deadline
        .as_mut()
        .reset(tokio::time::Instant::now() + timeout);
    tokio::select! {
        biased;
        r = op => r,
        () = deadline.as_mut() => Err("deadline_exceeded".into()),
    }
}

#[allow(clippy::too_many_arguments)] // one client's whole context, passed once at spawn
async fn client(
    mut conns: ClientConns,
    cfg: Arc<RunConfig>,
    chooser: Arc<KeyChooser>,
    id: u64,
    measure_from: Instant,
    end: Instant,
    progress: Arc<AtomicU64>,
    schedule: Option<Arc<Schedule>>,
) -> ClientResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(id));
    let mut value = vec![0u8; cfg.value_size.max];
    rng.fill_bytes(&mut value);
    let value = Bytes::from(value);
    let (mut all, mut read, mut write) = (histogram(), histogram(), histogram());
    let (mut service, mut lateness) = (histogram(), histogram());
    let mut errors = BTreeMap::new();
    let mut k = 0u64;
    let record = cfg.history.is_some();
    let origin = measure_from.checked_sub(cfg.warmup).unwrap_or(measure_from);
    let mut history = Vec::new();
    let mut timeline = Vec::new();
    let mut degraded = 0u64;
    let mut superseded = 0u64;
    let mut redirects = 0u64;
    let mut known: std::collections::HashMap<String, (Option<String>, Option<String>)> =
        std::collections::HashMap::new();
    let mut n = 0u64;
    // One timer per client, moved later for each operation (see `timed`).
    let mut deadline = Box::pin(tokio::time::sleep(cfg.timeout));
    let mut backoff = Backoff::default();
    loop {
        let start = match &schedule {
            Some(s) => {
                let intended = s.intended(id as usize, k);
                if intended >= end {
                    break;
                }
                s.wait(id as usize, k).await;
                k += 1;
                intended
            }
            None => Instant::now(),
        };
        let sent = Instant::now();
        if start >= end {
            break;
        }
        let pick = rng.random_range(0..100);
        let is_read = pick < cfg.mix.read;
        let is_cas = pick >= cfg.mix.read + cfg.mix.write + cfg.mix.delete;
        let is_delete = !is_read && !is_cas && pick >= cfg.mix.read + cfg.mix.write;
        let key_index = chooser.next(&mut rng, is_read);
        if !is_read {
            chooser.wrote(key_index);
        }
        let key = if cfg.key_prefix.is_empty() {
            key_name(key_index)
        } else {
            format!("{}{}", cfg.key_prefix, key_name(key_index))
        };
        n += 1;
        // A follower that refused naming the leader did nothing: the request goes to the leader
        // at once, within what is left of the operation's deadline, as kvctl does, so that the
        // refusal is a step of the operation (counted in its latency), not an error of its own.
        // A leader-follower client meets one after each leader change, and after passing over
        // a leader that missed a deadline.
        macro_rules! following_redirect {
            ($call:expr) => {{
                let r = timed(&mut deadline, cfg.timeout, $call).await;
                let r = conns.outcome(r);
                let left = cfg.timeout.saturating_sub(sent.elapsed());
                if matches!(&r, Err(kind) if *kind == "unavailable")
                    && conns.redirected()
                    && !left.is_zero()
                {
                    if start >= measure_from {
                        redirects += 1;
                    }
                    let r = timed(&mut deadline, left, $call).await;
                    conns.outcome(r)
                } else {
                    r
                }
            }};
        }
        // A cas expects what this client last saw of the key; the history records that value.
        let (mut expected_value, mut applied) = (None, None);
        let mut was_superseded = false;
        let (res, seen, version, was_degraded) = if is_read {
            match following_redirect!(conns.pick(&key, true).get(&key, cfg.timeout)) {
                Ok(r) => (Ok(()), r.value, r.version, r.degraded),
                Err(e) => (Err(e), None, None, false),
            }
        } else if is_cas {
            let (exp_version, exp_value) = match known.get(&key) {
                Some((Some(v), Some(val))) => (parse_version(v), Some(val.clone())),
                _ => (None, None),
            };
            expected_value = exp_value;
            let v = if record {
                unique_value(id, n, cfg.value_size.pick(&mut rng))
            } else {
                value.slice(..cfg.value_size.pick(&mut rng))
            };
            match following_redirect!(conns.pick(&key, false).cas(
                &key,
                exp_version,
                v.clone(),
                cfg.timeout
            )) {
                Ok((ok, version)) => {
                    applied = Some(ok);
                    (Ok(()), Some(v), version, false)
                }
                Err(e) => (Err(e), Some(v), None, false),
            }
        } else if is_delete {
            match following_redirect!(conns.pick(&key, false).delete(&key, cfg.timeout)) {
                Ok(w) => {
                    was_superseded = w.superseded;
                    (Ok(()), None, w.version, w.degraded)
                }
                Err(e) => (Err(e), None, None, false),
            }
        } else {
            let v = if record {
                unique_value(id, n, cfg.value_size.pick(&mut rng))
            } else {
                value.slice(..cfg.value_size.pick(&mut rng))
            };
            match following_redirect!(conns.pick(&key, false).put(&key, v.clone(), cfg.timeout)) {
                Ok(w) => {
                    was_superseded = w.superseded;
                    (Ok(()), Some(v), w.version, w.degraded)
                }
                Err(e) => (Err(e), Some(v), None, false),
            }
        };
        // What this client now knows of the key (for its next cas; only kept when the mix has
        // cas: copying every value into a map costs the client a few percent of its CPU).
        match (&res, is_read, is_delete) {
            _ if cfg.mix.cas == 0 => {}
            (Ok(()), _, true) => {
                known.insert(key.clone(), (None, None));
            }
            (Ok(()), _, _) if applied != Some(false) => {
                let val = seen
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                known.insert(key.clone(), (version.clone(), val));
            }
            _ => {
                known.remove(&key);
            }
        }
        if was_degraded && start >= measure_from {
            degraded += 1;
        }
        if was_superseded && start >= measure_from {
            superseded += 1;
        }
        if record {
            let ns = |t: Instant| t.saturating_duration_since(origin).as_nanos() as u64;
            history.push(kv_checker::Op {
                client: id,
                op: if is_read {
                    kv_checker::OpKind::Read
                } else if is_cas {
                    kv_checker::OpKind::Cas
                } else if is_delete {
                    kv_checker::OpKind::Delete
                } else {
                    kv_checker::OpKind::Write
                },
                key: key.clone(),
                value: seen.map(|v| String::from_utf8_lossy(&v).into_owned()),
                expected: expected_value,
                applied,
                start_ns: ns(sent),
                end_ns: ns(Instant::now()),
                outcome: match res {
                    Ok(()) => kv_checker::Outcome::Ok,
                    Err(e) if crate::driver::may_have_happened(e) => kv_checker::Outcome::Unknown,
                    Err(_) => kv_checker::Outcome::Fail,
                },
                version,
                node: None,
            });
        }
        if let Some(pause) = backoff.after(&res, conns.redirected()) {
            tokio::time::sleep(pause).await;
        }
        if start < measure_from {
            continue;
        }
        match res {
            Ok(()) => {
                let done = Instant::now();
                let us = done.duration_since(start).as_micros().max(1) as u64;
                service.saturating_record(done.duration_since(sent).as_micros().max(1) as u64);
                lateness
                    .saturating_record(sent.saturating_duration_since(start).as_micros() as u64);
                all.saturating_record(us);
                if is_read {
                    read.saturating_record(us);
                } else {
                    write.saturating_record(us);
                }
                progress.fetch_add(1, Ordering::Relaxed);
                let sec = start.duration_since(measure_from).as_secs() as u32;
                timeline.push((sec, us.min(u64::from(u32::MAX - 1)) as u32));
            }
            Err(kind) => {
                *errors.entry(kind).or_insert(0) += 1;
                timeline.push((
                    start.duration_since(measure_from).as_secs() as u32,
                    u32::MAX,
                ));
            }
        }
    }
    ClientResult {
        service: Some(service),
        lateness: Some(lateness),
        all: Some(all),
        read: Some(read),
        write: Some(write),
        errors,
        history,
        timeline,
        degraded,
        superseded,
        redirects,
    }
}

/// How long a client waits after a request refused as unavailable before its next one, as
/// etcd's client does between retries (25 ms) and for the same reason: during an election, or
/// while a leader cut off from its majority has stepped down and the majority still names it,
/// each attempt fails at once, and a client that tries again at once spins (a closed loop
/// counted thousands of failures per second of outage, and spent the CPU the election needed
/// on a small machine). The wait doubles from 1 ms up to 25 ms while refusals go on, each
/// drawn within 50-100% of that (clients refused together do not come back together); any
/// other answer ends it. Open-loop latency still runs from the intended start, so the wait is
/// counted in the latency of the requests it delays.
#[derive(Debug, Default)]
struct Backoff {
    refused: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(25);

    /// The wait after a request ended with `res`, if any; none when a follower's refusal
    /// `redirected` the client to the leader it named (the next request goes there at once,
    /// and the refusals so far still count).
    fn after(&mut self, res: &Result<(), driver::ErrorKind>, redirected: bool) -> Option<Duration> {
        if !matches!(res, Err(kind) if *kind == "unavailable") {
            self.refused = 0;
            return None;
        }
        if redirected {
            return None;
        }
        let full = Self::FIRST
            .saturating_mul(1 << self.refused.min(5))
            .min(Self::MAX);
        self.refused = self.refused.saturating_add(1);
        Some(full.mul_f64(rand::rng().random_range(0.5..=1.0)))
    }
}

/// Writes `timeline.csv` (per second: ops/s, p50, p99, errors) and the plots; returns the
/// per-second throughput and p99.
fn write_timeline(
    out: &std::path::Path,
    points: &[(u32, u32)],
    seconds: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut per: Vec<(Histogram<u64>, u64)> = (0..seconds).map(|_| (histogram(), 0)).collect();
    for &(sec, us) in points {
        if let Some((h, e)) = per.get_mut(sec as usize) {
            if us == u32::MAX {
                *e += 1;
            } else {
                h.saturating_record(u64::from(us).max(1));
            }
        }
    }
    let mut csv = String::from("second,ops_per_sec,p50_us,p99_us,errors\n");
    let (mut tput, mut p99) = (Vec::new(), Vec::new());
    for (i, (h, e)) in per.iter().enumerate() {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            i + 1,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            e
        ));
        tput.push(h.len() as f64);
        p99.push(h.value_at_quantile(0.99) as f64);
    }
    std::fs::write(out.join("timeline.csv"), csv)?;
    Ok((tput, p99))
}

/// Writes HdrHistogram's percentile-distribution text (`.hgrm`), values in microseconds.
fn write_hgrm(path: &std::path::Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        writeln!(
            f,
            "{:>12.3} {:>14.12} {:>10} {:>14.2}",
            v.value_iterated_to() as f64,
            q,
            v.count_since_last_iteration(),
            inv
        )?;
    }
    writeln!(
        f,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.mean(),
        h.stdev(),
        h.max() as f64,
        h.len()
    )?;
    Ok(())
}

/// Runs the workload and writes `summary.json` and `latency.hgrm` into `cfg.out`.
///
/// # Errors
/// Connecting fails, or the output directory cannot be written.
pub async fn run(cfg: RunConfig, command: Vec<String>) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create output directory {}", cfg.out.display()))?;
    let consistency = pb::Consistency {
        r: cfg.r.unwrap_or(0),
        w: cfg.w.unwrap_or(0),
        read_from: match cfg.read_from.as_deref() {
            None => pb::ReadFrom::Unspecified,
            Some("leader") => pb::ReadFrom::Leader,
            Some("any") => pb::ReadFrom::Any,
            Some("local") => pb::ReadFrom::Local,
            Some(o) => anyhow::bail!("--read-from {o:?}: expected leader, any or local"),
        } as i32,
        on_quorum_loss: match cfg.on_quorum_loss.as_deref() {
            None => pb::OnQuorumLoss::Unspecified,
            Some("fail") => pb::OnQuorumLoss::Fail,
            Some("degrade") => pb::OnQuorumLoss::Degrade,
            Some(o) => anyhow::bail!("--on-quorum-loss {o:?}: expected fail or degrade"),
        } as i32,
    };
    let routing = if cfg.driver == DriverKind::Kv && cfg.route == Route::Auto {
        let spread_reads = matches!(cfg.read_from.as_deref(), Some("any" | "local"));
        driver::discover(&cfg.endpoints, spread_reads).await?
    } else {
        None
    };
    match &routing {
        Some(Routing::Ring(r)) => eprintln!(
            "kv-bench: leaderless cluster: each key goes to its coordinator (token-aware; {} of \
             the ring's members served by --endpoints; --route spread to turn off)",
            r.mapped()
        ),
        Some(Routing::Leader(l)) => eprintln!(
            "kv-bench: leader-follower cluster: writes{} go to the leader ({} now), followed \
             when it moves; --route spread to turn off",
            if l.spreads_reads() { "" } else { " and reads" },
            l.leader()
        ),
        None => {}
    }
    let mut cfg = cfg;
    cfg.token_aware = matches!(routing, Some(Routing::Ring(_)));
    let conns = driver::connect_clients(
        cfg.driver,
        &cfg.endpoints,
        cfg.connections,
        consistency,
        routing,
        cfg.clients,
    )
    .await?;
    let chooser = Arc::new(KeyChooser::new(cfg.dist, cfg.keys));
    let cfg = Arc::new(cfg);
    let progress = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let measure_from = t0 + cfg.warmup;
    let end = measure_from + cfg.duration;
    let schedule = cfg.rate.map(|r| {
        let interval = Duration::from_secs_f64(cfg.clients as f64 / r.max(1) as f64);
        Schedule::new(t0, interval, cfg.clients)
    });
    let releaser = schedule.clone().map(|s| {
        std::thread::Builder::new()
            .name("kv-bench-schedule".into())
            .spawn(move || s.run(end))
    });
    let mut tasks = Vec::new();
    for (i, conns) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(client(
            conns,
            cfg.clone(),
            chooser.clone(),
            i as u64,
            measure_from,
            end,
            progress.clone(),
            schedule.clone(),
        )));
    }
    let reporter = {
        let progress = progress.clone();
        let warm = cfg.warmup;
        let total_s = cfg.duration.as_secs_f64();
        // A progress bar redrawn in place on a terminal; one line per second otherwise.
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(measure_from) + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            loop {
                tick.tick().await;
                let now = progress.load(Ordering::Relaxed);
                let el = t0.elapsed().saturating_sub(warm).as_secs_f64();
                if tty {
                    let done = ((el / total_s).min(1.0) * 30.0) as usize;
                    eprint!(
                        "\r[{}{}] {el:>4.0}/{total_s:.0} s {:>8} ops/s ",
                        "#".repeat(done),
                        " ".repeat(30 - done),
                        now - last
                    );
                } else {
                    eprintln!("[{el:>4.0}s] {:>8} ops/s", now - last);
                }
                last = now;
            }
        })
    };
    // The generator's own CPU, and the servers' with --server-pids, over exactly the measured
    // time.
    let server_pids = cfg.server_pids.clone();
    let cpu_sampler = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
        let before = crate::cpu::process_cpu_seconds();
        let servers_before = crate::cpu::tree_cpu(&server_pids);
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        let after = crate::cpu::process_cpu_seconds();
        let servers_after = crate::cpu::tree_cpu(&server_pids);
        (before.zip(after), (servers_before, servers_after))
    });
    let mut total = ClientResult::default();
    for t in tasks {
        let r = t.await.context("a client task panicked")?;
        for (dst, src) in [
            (&mut total.service, r.service),
            (&mut total.lateness, r.lateness),
            (&mut total.all, r.all),
            (&mut total.read, r.read),
            (&mut total.write, r.write),
        ] {
            if let Some(src) = src {
                match dst {
                    Some(d) => d.add(&src).context("histogram merge")?,
                    None => *dst = Some(src),
                }
            }
        }
        for (k, v) in r.errors {
            *total.errors.entry(k).or_insert(0) += v;
        }
        total.history.extend(r.history);
        total.timeline.extend(r.timeline);
        total.degraded += r.degraded;
        total.superseded += r.superseded;
        total.redirects += r.redirects;
    }
    reporter.abort();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    if let Some(Ok(t)) = releaser {
        let _ = t.join();
    }
    let all = total.all.unwrap_or_else(histogram);
    let (client_cpu, server_cpu) = match cpu_sampler.await {
        Ok((client, (servers_before, servers_after))) => (
            client.map(|(before, after)| {
                crate::cpu::ClientCpu::between(
                    before,
                    after,
                    cfg.duration.as_secs_f64(),
                    all.len(),
                    cfg.threads,
                )
            }),
            (!servers_before.is_empty()).then(|| {
                crate::cpu::ServerCpu::between(
                    &servers_before,
                    &servers_after,
                    cfg.duration.as_secs_f64(),
                    all.len(),
                )
            }),
        ),
        Err(_) => (None, None),
    };
    if server_cpu.is_none() && !cfg.server_pids.is_empty() {
        eprintln!(
            "kv-bench: none of --server-pids {:?} could be read from /proc: no server CPU",
            cfg.server_pids
        );
    }
    let mut by_op = BTreeMap::new();
    for (name, h) in [("read", total.read), ("write", total.write)] {
        if let Some(h) = h.filter(|h| !h.is_empty()) {
            by_op.insert(
                name.to_string(),
                OpSummary {
                    ops: h.len(),
                    latency_us: Percentiles::of(&h),
                },
            );
        }
    }
    let stale_reads = match &cfg.history {
        Some(path) => {
            let mut ops = std::mem::take(&mut total.history);
            ops.sort_by_key(|o| (o.start_ns, o.client));
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            );
            for o in &ops {
                serde_json::to_writer(&mut f, o)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            let st = kv_checker::stale::stale_reads(&ops);
            Some(StaleSummary {
                reads: st.reads,
                stale: st.stale,
                rate: st.rate(),
                history: path.clone(),
            })
        }
        None => None,
    };
    let service = total.service.unwrap_or_else(histogram);
    let lateness = total.lateness.unwrap_or_else(histogram);
    write_hgrm(&cfg.out.join("latency.hgrm"), &all)?;
    write_hgrm(&cfg.out.join("service_time.hgrm"), &service)?;
    let seconds = cfg.duration.as_secs_f64().ceil() as usize;
    let (tput, p99) = write_timeline(&cfg.out, &total.timeline, seconds)?;
    let latency_name = if cfg.rate.is_some() {
        "latency (from intended start)"
    } else {
        "latency"
    };
    let mut series = vec![(latency_name, "#d62728", &all)];
    if cfg.rate.is_some() {
        series.push(("service time (from send)", "#1f77b4", &service));
    }
    std::fs::write(
        cfg.out.join("latency.svg"),
        crate::plot::percentiles(&series),
    )?;
    std::fs::write(
        cfg.out.join("throughput.svg"),
        crate::plot::timeline("Throughput", "ops/s", "#2ca02c", &tput),
    )?;
    std::fs::write(
        cfg.out.join("p99.svg"),
        crate::plot::timeline("p99 latency per second", "microseconds", "#d62728", &p99),
    )?;
    let summary = Summary {
        ops_per_sec: (all.len() as f64 / cfg.duration.as_secs_f64() * 10.0).round() / 10.0,
        ops: all.len(),
        errors: total
            .errors
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        latency_us: Percentiles::of(&all),
        service_time_us: Percentiles::of(&service),
        schedule_error_us: cfg.rate.map(|_| Percentiles::of(&lateness)),
        stale_reads,
        degraded: total.degraded,
        superseded_writes: total.superseded,
        redirects_followed: total.redirects,
        by_op,
        config: (*cfg).clone(),
        command,
        machine_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        client_cpu,
        server_cpu,
        latency_histogram: Some(all.clone()),
    };
    let path = cfg.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(summary)
}

fn per_op_text(us: Option<f64>) -> String {
    us.map_or_else(String::new, |us| format!(", {us:.1} us per operation"))
}

/// The terminal table of a summary.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let l = &s.latency_us;
    out.push_str(&format!(
        "{:<8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "op", "ops/s", "p50", "p90", "p95", "p99", "p99.9", "p99.99", "max"
    ));
    let row = |name: &str, ops: f64, l: &Percentiles| {
        format!(
            "{:<8} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            name, ops, l.p50, l.p90, l.p95, l.p99, l.p99_9, l.p99_99, l.max
        )
    };
    out.push_str(&row("all", s.ops_per_sec, l));
    for (name, o) in &s.by_op {
        out.push_str(&row(
            name,
            o.ops as f64 / s.config.duration.as_secs_f64(),
            &o.latency_us,
        ));
    }
    if s.config.rate.is_some() {
        out.push_str(&row("service", s.ops_per_sec, &s.service_time_us));
        out.push_str(
            "latency in microseconds, open loop: from the intended start to the answer \
             (corrected for coordinated omission); service: from the actual send\n",
        );
        if let Some(e) = &s.schedule_error_us {
            out.push_str(&format!(
                "send delay (actual minus intended send: the generator's schedule error, plus \
                 waiting behind a slow request): p50 {} us, p99 {} us, max {} us\n",
                e.p50, e.p99, e.max
            ));
        }
    } else {
        out.push_str("latency in microseconds (closed loop: send to answer)\n");
    }
    if let Some(st) = &s.stale_reads {
        out.push_str(&format!(
            "stale reads: {} of {} versioned reads ({:.3}%); history in {} (kv-bench check it)\n",
            st.stale,
            st.reads,
            st.rate * 100.0,
            st.history.display()
        ));
    }
    if s.degraded > 0 {
        out.push_str(&format!("degraded answers: {}\n", s.degraded));
    }
    if s.superseded_writes > 0 {
        out.push_str(&format!(
            "writes hidden on a replica by a concurrent write with a higher version \
             (last-writer-wins, superseded_on): {}\n",
            s.superseded_writes
        ));
    }
    if s.redirects_followed > 0 {
        out.push_str(&format!(
            "refused by a follower that named the leader, and sent on to it (not errors): {}\n",
            s.redirects_followed
        ));
    }
    if let Some(c) = &s.client_cpu {
        out.push_str(&format!(
            "generator CPU: {:.2} cores ({} thread{}){}\n",
            c.cores,
            c.threads,
            if c.threads == 1 { "" } else { "s" },
            per_op_text(c.per_op_us)
        ));
        if c.saturated() {
            out.push_str(
                "warning: the generator kept its threads busy nearly all the time, so this \
                 run may measure it rather than the server: try --threads, or fewer clients\n",
            );
        }
    }
    if let Some(sc) = &s.server_cpu {
        out.push_str(&format!(
            "server CPU: {:.2} cores ({} process{}){}\n",
            sc.cores,
            sc.pids.len(),
            if sc.pids.len() == 1 { "" } else { "es" },
            per_op_text(sc.per_op_us)
        ));
    }
    if s.errors.is_empty() {
        out.push_str("errors: none\n");
    } else {
        let e: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("errors: {}\n", e.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_doubling_to_25_ms_and_any_other_answer_resets() {
        let mut b = Backoff::default();
        let unavailable: Result<(), driver::ErrorKind> = Err("unavailable");
        let caps = [1, 2, 4, 8, 16, 25, 25, 25];
        for cap in caps {
            let d = b
                .after(&unavailable, false)
                .expect("a wait after a refusal");
            let cap = Duration::from_millis(cap);
            assert!(d <= cap && d >= cap / 2, "{d:?} against {cap:?}");
        }
        // A timeout already waited; a success ends the refusals.
        assert_eq!(b.after(&Err("deadline_exceeded"), false), None);
        let d = b.after(&unavailable, false).expect("a wait");
        assert!(d <= Duration::from_millis(1), "{d:?}");
        b.after(&unavailable, false);
        assert_eq!(b.after(&Ok(()), false), None);
        assert!(b.after(&unavailable, false).expect("a wait") <= Duration::from_millis(1));
        // A follower's refusal naming the leader elsewhere: no wait, and the next wait is
        // longer.
        assert_eq!(b.after(&unavailable, true), None);
        assert!(b.after(&unavailable, false).expect("a wait") >= Duration::from_millis(1));
    }
}
