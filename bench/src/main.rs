//! `kv-bench`: load generation against quorumkv and its peers.

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: measurably cheaper than glibc malloc on the per-request allocations of HTTP/2
/// framing and protobuf (see the storage/throughput notes in README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use kv_bench::driver::{DriverKind, Route};
use kv_bench::run::{self, RunConfig};
use kv_bench::workload::{Dist, Mix, ValueSize};

/// quorumkv load generator.
#[derive(Debug, Parser)]
#[command(name = "kv-bench", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive a workload and report throughput and latency percentiles.
    ///
    /// Closed loop: --clients C clients each send their next request when the previous one
    /// answers. Open loop: --rate R, latency from each request's intended start. Writes
    /// DIR/summary.json, latency.hgrm, service_time.hgrm, timeline.csv and SVG plots. A client
    /// refused as unavailable (no leader, no quorum) waits 1 ms, doubling to 25 ms while the
    /// refusals go on, before its next request; a follower naming the leader is followed at
    /// once.
    ///
    /// Example: kv-bench run --endpoints 127.0.0.1:7001 --clients 16 --duration 20s
    ///          --keys 10000 --value-size 100 --dist zipfian --mix read=50,write=50 --out bench-out/kv
    Run(Box<RunArgs>),
    /// Check a recorded history: linearizability per key (register model), stale reads and
    /// consistency windows. Exit 0 linearizable, 1 violation, 2 unknown (budget) or error.
    ///
    /// A violation is shown as the smallest window of operations on its key that no order
    /// consistent with real time explains: a text timeline here, and with --html an SVG page.
    ///
    /// Example: kv-bench check history.jsonl --html violation.html
    Check(CheckCmd),
    /// Run a matrix of configurations one after another (clusters started with kvctl cluster
    /// up, or given endpoints) and write one comparison table (sweep.md) and one latency
    /// picture (latency.svg). The file format is documented in bench/src/sweep.rs and
    /// bench/sweeps/compare.toml is an example.
    Sweep {
        /// The sweep file (TOML).
        config: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct CheckCmd {
    /// History file, JSON Lines (format: docs/history-format.md).
    history: PathBuf,
    /// Write a picture of every violation to this HTML file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Give up with verdict unknown after this long.
    #[arg(long, default_value = "60s")]
    budget: humantime::Duration,
    /// Threads checking keys in parallel [default: one per CPU].
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep checking the other keys after a violation is found (by default the first
    /// violation decides, and unfinished keys are reported as not checked).
    #[arg(long)]
    all_keys: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where to send requests: HOST:PORT[,HOST:PORT..] (Redis: HOST:PORT or redis:// URL);
    /// KV_ENDPOINTS sets them too, as for kvctl.
    #[arg(
        long,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    endpoints: Vec<String>,
    /// Clients, each with one request in flight. Alone: closed loop (the next request when the
    /// previous answers). With --rate: how many clients share the schedule [default: 64].
    #[arg(long)]
    clients: Option<usize>,
    /// Open loop: intended rate in ops/s, on a fixed schedule per client (wrk2 style). Latency
    /// is measured from each request's intended start, so stalls are not hidden (no
    /// coordinated omission); the service time from the actual send is shown beside it.
    #[arg(long)]
    rate: Option<u64>,
    /// Connections the clients share [default: one per endpoint, as etcd's clientv3 and
    /// Cassandra's drivers keep; requests in flight share it as HTTP/2 streams]. More
    /// connections batch less: against 5 leaderless nodes at 256 clients, 64 connections gave
    /// 26% fewer ops/s than 5, and etcd lost a third.
    #[arg(long)]
    connections: Option<usize>,
    /// Measured time.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Time before measuring starts (connections warm, caches fill).
    #[arg(long, default_value = "2s")]
    warmup: humantime::Duration,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes: fixed (100) or uniform in a range (50-500).
    #[arg(long, default_value = "100")]
    value_size: ValueSize,
    /// Key distribution: uniform; zipfian (YCSB scrambled, theta 0.99); latest (reads go
    /// mostly to recently written keys); hotspot[:KEYS:OPS] (a KEYS share of the keys gets an
    /// OPS share of the operations, default 0.2:0.8); moving-hotspot[:KEYS:OPS:PERIOD_S] (the hot
    /// set moves to the next keys every PERIOD_S seconds, default 0.2:0.8:10).
    #[arg(long, default_value = "zipfian")]
    dist: Dist,
    /// Operation mix in percent, e.g. read=90,write=10 or read=50,write=30,delete=10,cas=10
    /// (etcd: read and write; Redis: no cas). A cas expects the version this client last saw
    /// for the key (absent if none).
    #[arg(long, default_value = "read=50,write=50")]
    mix: Mix,
    /// Deadline per operation.
    #[arg(long, default_value = "2s")]
    timeout: humantime::Duration,
    /// Read quorum sent with every quorumkv request.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    r: Option<u32>,
    /// Write quorum sent with every quorumkv request.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    w: Option<u32>,
    /// How requests choose a quorumkv node: auto (learnt from the nodes' Status: leaderless,
    /// each key goes to the first live replica of its preference list, as token-aware
    /// Cassandra drivers do, passing over for a second a replica that refused a key with the
    /// same replicas as unavailable, or did not answer in time; leader-follower, writes and leader reads go to the leader and
    /// follow it when it moves, reads from any/local stay spread; single node: spread) or
    /// spread (each client keeps to one connection, connections spread round robin over
    /// --endpoints).
    #[arg(long, value_enum, default_value = "auto")]
    route: Route,
    /// Where quorumkv serves reads: leader, any or local.
    #[arg(long)]
    read_from: Option<String>,
    /// When quorumkv cannot get R or W: fail, or degrade (answer with what it got, marked
    /// degraded; counted in the summary).
    #[arg(long)]
    on_quorum_loss: Option<String>,
    /// System to drive: kv (quorumkv), etcd (v3 gRPC) or redis.
    #[arg(long, default_value = "kv")]
    driver: DriverKind,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "bench-out/run")]
    out: PathBuf,
    /// Record every operation (warm-up included; writes get unique values) to FILE for
    /// `kv-bench check FILE`; stale reads are reported at the end.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Put PREFIX before every key name. With --history and no --key-prefix: a prefix new for
    /// the run (h<unix seconds>-), so that the history starts from absent keys, as kv-bench
    /// check assumes, even on a cluster earlier runs wrote to.
    #[arg(long, value_name = "PREFIX")]
    key_prefix: Option<String>,
    /// Threads of the load generator. Keep it below the core count when the server shares the
    /// machine, so the generator does not take the server's cores.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The generator's tokio scheduler. `current-thread` (only with --threads 1, its default):
    /// the clients whose answers came in queue their next requests before a connection writes,
    /// so one write carries them all. That costs a third to a half less generator CPU per
    /// operation. But against one fast server on one connection, generator and server then
    /// take turns: one core busy of two. `multi-thread` (the default with more threads, and
    /// kv-bench's only scheduler before 2026-12-04) runs a connection right after each client
    /// that woke it: about one write per request, more CPU, and both sides busy at once.
    #[arg(long, value_enum)]
    runtime: Option<Scheduler>,
    /// Server processes on this machine (PID[,PID..]) whose CPU use over the measured time is
    /// reported beside the generator's, with every process they started: give `kvctl cluster
    /// up`'s pid to count its nodes. Shows what each side cost per operation, and whether the
    /// machine, not the server, was the limit.
    #[arg(long, value_delimiter = ',', value_name = "PIDS")]
    server_pids: Vec<u32>,
}

/// kv-bench's tokio scheduler (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scheduler {
    /// One thread runs every client and connection, in the order they were woken.
    CurrentThread,
    /// `--threads` workers; a task woken by the running one runs next.
    MultiThread,
}

/// A tokio runtime with `threads` workers, or the exit code after saying why not. Without
/// `scheduler`: the current-thread scheduler for one thread, the multi-threaded one for more.
fn runtime(
    threads: usize,
    scheduler: Option<Scheduler>,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    let scheduler = scheduler.unwrap_or(if threads <= 1 {
        Scheduler::CurrentThread
    } else {
        Scheduler::MultiThread
    });
    let mut b = match scheduler {
        Scheduler::CurrentThread if threads > 1 => {
            eprintln!(
                "kv-bench: --runtime current-thread runs one thread; --threads {threads} needs multi-thread"
            );
            return Err(ExitCode::from(2));
        }
        Scheduler::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Scheduler::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads.max(1));
            b
        }
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("kv-bench: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let a = match Args::parse().cmd {
        Cmd::Run(a) => a,
        Cmd::Sweep { config } => {
            let rt = match runtime(1, None) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            return match rt.block_on(kv_bench::sweep::sweep(&config)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kv-bench sweep: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Check(c) => {
            return ExitCode::from(kv_bench::check::run(&kv_bench::check::CheckArgs {
                history: c.history,
                html: c.html,
                budget: c.budget.into(),
                threads: c
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                json: c.json,
                all_keys: c.all_keys,
            }));
        }
    };
    let clients = match (a.clients, a.rate) {
        (c, Some(r)) if r > 0 => c.unwrap_or(64).max(1),
        (Some(c), None) if c > 0 => c,
        (_, Some(_)) => {
            eprintln!("kv-bench: --rate must be at least 1 op/s");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("kv-bench: give --clients C (at least 1)");
            return ExitCode::from(2);
        }
    };
    if a.driver == DriverKind::Etcd && a.mix.delete > 0 {
        eprintln!("kv-bench: --driver etcd runs read and write only; drop delete from --mix");
        return ExitCode::from(2);
    }
    if a.driver != DriverKind::Kv && a.mix.cas > 0 {
        eprintln!("kv-bench: cas runs against quorumkv only; drop cas from --mix");
        return ExitCode::from(2);
    }
    let a_runtime = a.runtime;
    let cfg = RunConfig {
        driver: a.driver,
        connections: a.connections.unwrap_or(a.endpoints.len()).clamp(1, clients),
        endpoints: a.endpoints,
        clients,
        rate: a.rate,
        duration: a.duration.into(),
        warmup: a.warmup.into(),
        keys: a.keys.max(1),
        value_size: a.value_size,
        dist: a.dist,
        mix: a.mix,
        timeout: a.timeout.into(),
        r: a.r,
        w: a.w,
        read_from: a.read_from,
        on_quorum_loss: a.on_quorum_loss,
        seed: a.seed,
        out: a.out,
        key_prefix: match (a.key_prefix, &a.history) {
            (Some(p), _) => p,
            (None, Some(_)) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let p = format!("h{secs}-");
                eprintln!(
                    "kv-bench: history keys are {p}key..., new for this run (kv-bench check \
                     assumes every key starts absent); --key-prefix to choose"
                );
                p
            }
            (None, None) => String::new(),
        },
        history: a.history,
        threads: a.threads.max(1),
        route: a.route,
        token_aware: false,
        server_pids: a.server_pids,
    };
    let threads = cfg.threads;
    let rt = match runtime(threads, a_runtime) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let out = cfg.out.clone();
    match rt.block_on(run::run(cfg, std::env::args().collect())) {
        Ok(s) => {
            print!("{}", run::table(&s));
            println!(
                "wrote {}/: summary.json, latency.hgrm, service_time.hgrm, timeline.csv, \
                 latency.svg, throughput.svg, p99.svg",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
