//! `kvctl cluster`: a local cluster of real kv-node processes, and the crash faults a Jepsen
//! nemesis would inject into it (kill -9, start again, pause, resume).
//!
//! `cluster up` runs in the foreground and supervises its nodes. The other `cluster` commands
//! reach it through request files in its data directory (`DATA_DIR/control/NODE.ACTION`): it
//! looks every 100 ms, acts on its own child process and answers in `NODE.ACTION.done`. So a
//! node started again is its child like the others, and Ctrl-C stops it too. The data
//! directory of the last `cluster up` still running is remembered in
//! `$TMPDIR/quorumkv-cluster-current`, so `--data-dir` is needed only with several clusters.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kv_node::client::exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCmd {
    /// Start the nodes, print how to reach them, and stop them all on Ctrl-C. Node i listens
    /// on --base-port + i - 1 (gRPC) and --admin-base-port + i - 1 (metrics); logs go to
    /// DATA_DIR/n<i>.log. Fault injection is enabled, so `kvctl fault` works, and the node
    /// commands below act on its nodes.
    Up(UpArgs),
    /// kill -9 a node of the running `cluster up` (no shutdown, no flush).
    Kill(NodeArgs),
    /// Start a node of the running `cluster up` again (same flags, ports and data), and wait
    /// until it answers.
    Start(NodeArgs),
    /// Freeze a node (SIGSTOP): it holds its connections but answers nothing, like a long GC
    /// pause or a stalled VM.
    Pause(NodeArgs),
    /// Thaw a paused node (SIGCONT).
    Resume(NodeArgs),
    /// The power fails on a node of a `cluster up --power-loss`: kill -9, and what it wrote
    /// and had not fsynced is lost (`kv-powerloss revert`), as the disk of a machine that lost
    /// power would leave it. `cluster start` brings it back on what remains.
    Power(NodeArgs),
    /// Look up every write a history says was acknowledged in what the nodes left under
    /// --data-dir. A linearizability check misses a lost write nobody read; this does not.
    /// Leader-follower (run it once the cluster is healed and idle, or stopped): each must be
    /// in the committed log at its version (TERM.INDEX), or listed in a node's rollback.jsonl;
    /// with --w a majority, not lost at all. Leaderless (run it on a stopped or idle cluster):
    /// some node must hold its key at its version or a newer one (or a hint holding it); the
    /// report also says how many nodes hold each key's newest version, which --converged
    /// requires to agree. Exit 0: all accounted for; 1: not; 2: cannot audit (bad input, or
    /// leader-follower logs that have not converged).
    Audit(super::audit::AuditArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// The node: n1, n2, ...
    node: String,
    /// The data directory of the `cluster up` to act on [default: the last one started that
    /// still runs].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Number of nodes (1 to 64).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// leader-follower or leaderless.
    #[arg(long, default_value = "leader-follower")]
    mode: String,
    /// Replicas per key [default: every node in leader-follower].
    #[arg(long)]
    n: Option<u32>,
    /// Read quorum [default: majority of N].
    #[arg(long)]
    r: Option<u32>,
    /// Write quorum [default: majority of N].
    #[arg(long)]
    w: Option<u32>,
    /// First gRPC port.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// First admin (metrics) port.
    #[arg(long, default_value_t = 9101)]
    admin_base_port: u16,
    /// Where the nodes keep their data [default: a new directory under the system temp dir].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// always, batch or never.
    #[arg(long, default_value = "batch")]
    fsync: String,
    /// Keep data in memory instead of under --data-dir (lost when a node stops).
    #[arg(long)]
    memory: bool,
    /// An environment variable for every node, `KEY=VALUE`, with `{id}` in VALUE replaced by
    /// the node's id (repeatable); e.g. with libfaketime preloaded,
    /// `--node-env 'FAKETIME_TIMESTAMP_FILE=/tmp/clocks/{id}'` gives each node a clock of its
    /// own (bench/scripts/nemesis.sh's STEP=).
    #[arg(long = "node-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    node_env: Vec<(String, String)>,
    /// Run every node under the power-loss emulation (tests/powerloss: needs
    /// libkv_powerloss.so and kv-powerloss beside kvctl, `cargo build --release -p
    /// kv-powerloss`), so that `kvctl cluster power NODE` can fail its power.
    #[arg(long)]
    power_loss: bool,
    /// More kv-node flags for every node, after `--`; e.g.
    /// `-- --read-repair blocking --anti-entropy-interval 2s` (see `kv-node --help`). Without
    /// `--worker-threads` here (or KV_WORKER_THREADS), each node gets the machine's CPUs
    /// divided among the nodes, at least one: nodes on one machine otherwise each start a
    /// thread per CPU and compete for the cores.
    #[arg(last = true, value_name = "KV_NODE_FLAGS")]
    node_args: Vec<String>,
}

/// Request threads for each node when neither `node_args` nor the environment
/// (`env_given`) chooses: `cpus` shared among `nodes`, at least one. Five nodes on 2 cores,
/// fsync batch, kv-bench 50/50 zipfian, alternating 10 s runs (one thread each against two):
/// leader-follower at 16 clients 8.8-9.4k ops/s against 5.1-5.7k, at 256 clients 18.0-19.5k
/// against 13.6-13.7k; leaderless N=3 R=W=2 at 16 clients a median of 6.0k against 4.6k (one
/// thread faster in 5 of 6 pairs).
fn shared_threads(node_args: &[String], env_given: bool, nodes: u32, cpus: usize) -> Option<usize> {
    let given = node_args
        .iter()
        .any(|a| a == "--worker-threads" || a.starts_with("--worker-threads="));
    if given || env_given {
        return None;
    }
    Some((cpus / nodes.max(1) as usize).max(1))
}

/// `KEY=VALUE` of `--node-env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Where the last `cluster up` records its data directory.
fn current_file() -> PathBuf {
    std::env::temp_dir().join("quorumkv-cluster-current")
}

const ACTIONS: [&str; 5] = ["kill", "start", "pause", "resume", "power"];

/// Runs a cluster command.
/// `json`: `--output json` (the audit's report; the other commands print what the cluster
/// said).
pub(crate) fn run(cmd: ClusterCmd, t: Duration, json: bool) -> ExitCode {
    if let ClusterCmd::Audit(a) = cmd {
        return super::audit::run(a, json);
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (action, n) = match cmd {
        ClusterCmd::Up(a) => return rt.block_on(up(a, t)),
        ClusterCmd::Audit(_) => unreachable!("handled above"),
        ClusterCmd::Kill(n) => ("kill", n),
        ClusterCmd::Start(n) => ("start", n),
        ClusterCmd::Pause(n) => ("pause", n),
        ClusterCmd::Resume(n) => ("resume", n),
        ClusterCmd::Power(n) => ("power", n),
    };
    match rt.block_on(request(action, &n, t)) {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err((code, why)) => {
            eprintln!("kvctl: {why}");
            ExitCode::from(code)
        }
    }
}

/// Asks the supervising `cluster up` to act on a node and waits for its answer (and, for
/// `start`, until the node answers `Status`).
async fn request(action: &str, n: &NodeArgs, t: Duration) -> Result<String, (u8, String)> {
    let dir = match &n.data_dir {
        Some(d) => d.clone(),
        None => std::fs::read_to_string(current_file())
            .map(|s| PathBuf::from(s.trim()))
            .map_err(|_| {
                (
                    exit::FAILED,
                    "no `kvctl cluster up` is running (or give --data-dir of the one to act on)"
                        .to_string(),
                )
            })?,
    };
    if !(n.node.starts_with('n') && n.node[1..].parse::<u32>().is_ok()) {
        return Err((
            exit::USAGE,
            format!("{:?} is not a node id (n1, n2, ...)", n.node),
        ));
    }
    let control = dir.join("control");
    let req = control.join(format!("{}.{action}", n.node));
    let done = control.join(format!("{}.{action}.done", n.node));
    let _ = std::fs::remove_file(&done);
    std::fs::write(&req, b"").map_err(|e| {
        (
            exit::FAILED,
            format!(
                "cannot reach the `kvctl cluster up` of {} ({}: {e})",
                dir.display(),
                req.display()
            ),
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let answer = loop {
        if let Ok(a) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            break a;
        }
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&req);
            return Err((
                exit::FAILED,
                format!(
                    "no `kvctl cluster up` answered for {} within 3 s (has it stopped?)",
                    dir.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (ok, said) = match answer.split_once(' ') {
        Some(("ok", rest)) => (true, rest.trim().to_string()),
        Some((_, rest)) => (false, rest.trim().to_string()),
        None => (false, answer.trim().to_string()),
    };
    if !ok {
        return Err((exit::FAILED, said));
    }
    if action == "start" {
        // The answer names the address: wait until the node serves.
        // ("... started (pid P) at ADDR", and after it what a start again means for it.)
        let addr = said
            .split_once(") at ")
            .and_then(|(_, rest)| rest.split([';', ' ']).next())
            .unwrap_or_default()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while super::node_status(&addr, t).await.is_none() {
            if Instant::now() > deadline {
                return Err((
                    exit::FAILED,
                    format!("{said}, but it does not answer after 20 s (see its log)"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(said)
}

/// The power-loss library and tool beside `exe` (`cargo build -p kv-powerloss` puts them in
/// the same target directory as kvctl).
fn power_loss_tools(exe: &std::path::Path) -> (PathBuf, PathBuf) {
    let dir = exe.parent().unwrap_or(std::path::Path::new("."));
    (dir.join("libkv_powerloss.so"), dir.join("kv-powerloss"))
}

/// Where a node under `--power-loss` journals what it has not fsynced.
fn journal_dir(dir: &std::path::Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.journal"))
}

/// One supervised node.
struct Node {
    id: String,
    addr: String,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Taken down on request (its exit is expected, and the cluster keeps running).
    downed: bool,
    /// What a start again means for it, said when it is started again: in memory it comes
    /// back empty (`None`: on its data directory, nothing to say).
    restart_note: Option<&'static str>,
}

impl Node {
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let Some(c) = &self.child else {
            return Err(format!("{} is not running", self.id));
        };
        match Command::new("kill")
            .arg(sig)
            .arg(c.id().to_string())
            .status()
        {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("kill {sig} {} failed: {s}", c.id())),
            Err(e) => Err(format!("cannot run kill: {e}")),
        }
    }
}

async fn up(a: UpArgs, t: Duration) -> ExitCode {
    let exit_with = |code: u8, msg: String| {
        eprintln!("kvctl: {msg}");
        ExitCode::from(code)
    };
    let fail = |msg: String| exit_with(exit::FAILED, msg);
    let usage = |msg: String| exit_with(exit::USAGE, msg);
    let (base, admin_base) = (u32::from(a.base_port), u32::from(a.admin_base_port));
    for (flag, port) in [("--base-port", base), ("--admin-base-port", admin_base)] {
        if port == 0 || port + a.nodes > 65536 {
            return usage(format!(
                "{flag} {port}: {} nodes need ports {port}..{} (at most 65535)",
                a.nodes,
                port + a.nodes - 1
            ));
        }
    }
    if base < admin_base + a.nodes && admin_base < base + a.nodes {
        return usage(format!(
            "--base-port {base} and --admin-base-port {admin_base} overlap for {} nodes: give ranges {} ports apart",
            a.nodes, a.nodes
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this executable: {e}")),
    };
    let power_lib = match (a.power_loss, a.memory) {
        (false, _) => None,
        (true, true) => {
            return usage(
                "--power-loss loses what is not on disk: it needs a data directory, not --memory"
                    .into(),
            );
        }
        (true, false) => {
            let (lib, tool) = power_loss_tools(&exe);
            if !lib.exists() || !tool.exists() {
                return fail(format!(
                    "--power-loss needs {} and {}: cargo build --release -p kv-powerloss",
                    lib.display(),
                    tool.display()
                ));
            }
            Some(lib)
        }
    };
    let dir = a.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("quorumkv-cluster-{}", std::process::id()))
    });
    let control = dir.join("control");
    let _ = std::fs::remove_dir_all(&control); // requests left by an earlier run
    if let Err(e) = std::fs::create_dir_all(&control) {
        return fail(format!("cannot create {}: {e}", control.display()));
    }
    let addr = |i: u32| format!("127.0.0.1:{}", u32::from(a.base_port) + i);
    let admin = |i: u32| format!("127.0.0.1:{}", u32::from(a.admin_base_port) + i);
    let peers: Vec<String> = (0..a.nodes)
        .map(|i| format!("n{}={}", i + 1, addr(i)))
        .collect();
    let peers = peers.join(",");
    let threads = shared_threads(
        &a.node_args,
        std::env::var_os("KV_WORKER_THREADS").is_some(),
        a.nodes,
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    // The command that starts node i (the first time and again after a kill).
    let command = |i: u32, log: std::fs::File| {
        let id = format!("n{}", i + 1);
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .args([
                "--id",
                &id,
                "--listen",
                &addr(i),
                "--admin-listen",
                &admin(i),
            ])
            .args(["--peers", &peers, "--mode", &a.mode, "--fsync", &a.fsync])
            .arg("--enable-fault-injection")
            .args(
                threads
                    .iter()
                    .flat_map(|n| ["--worker-threads".to_string(), n.to_string()]),
            )
            .args(&a.node_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut preload = None;
        for (k, v) in &a.node_env {
            let v = v.replace("{id}", &id);
            if k == "LD_PRELOAD" {
                preload = Some(v.clone());
            }
            cmd.env(k, v);
        }
        if let Some(lib) = &power_lib {
            let lib = lib.display().to_string();
            let both = preload.map_or(lib.clone(), |p| format!("{p} {lib}"));
            cmd.env("LD_PRELOAD", both)
                .env("KV_POWERLOSS_DATA", dir.join(&id))
                .env("KV_POWERLOSS_JOURNAL", journal_dir(&dir, &id));
        }
        if a.memory {
            cmd.args(["--storage", "memory"]);
        } else {
            cmd.arg("--data-dir").arg(dir.join(&id));
        }
        for (flag, v) in [("--n", a.n), ("--r", a.r), ("--w", a.w)] {
            if let Some(v) = v {
                cmd.arg(flag).arg(v.to_string());
            }
        }
        cmd
    };
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let id = format!("n{}", i + 1);
        if power_lib.is_none() {
            // An earlier `--power-loss` run's journals describe writes this run overwrites:
            // `cluster power` must not find (and undo) them.
            let _ = std::fs::remove_dir_all(journal_dir(&dir, &id));
        }
        let log_path = dir.join(format!("{id}.log"));
        let log = match std::fs::File::create(&log_path) {
            Ok(f) => f,
            Err(e) => return fail(format!("cannot create {}: {e}", log_path.display())),
        };
        let child = match command(i, log).spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut nodes).await;
                return fail(format!("cannot start {id}: {e}"));
            }
        };
        nodes.push(Node {
            id,
            addr: addr(i),
            log: log_path,
            child: Some(child),
            paused: false,
            downed: false,
            restart_note: match (a.memory, a.mode == "leader-follower") {
                (false, _) => None,
                (true, true) => Some(
                    "in memory it comes back empty, and its peers refuse it: it forgot its votes \
                     (see kvctl status)",
                ),
                (true, false) => Some(
                    "in memory it comes back empty: it refills itself from its peers, and its \
                     read answers do not count until it has (ROLE refilling in kvctl status)",
                ),
            },
        });
    }
    let endpoints: Vec<String> = (0..a.nodes).map(addr).collect();
    // Wait until every node answers and one leads (or a node dies): the first election comes
    // one to two election timeouts after the start.
    let wait = Duration::from_secs(20) + 2 * election_timeout(&a.node_args);
    let deadline = Instant::now() + wait;
    let leader = loop {
        for n in nodes.iter_mut() {
            if let Some(Ok(Some(st))) = n.child.as_mut().map(Child::try_wait) {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let msg = format!("{} exited ({st}) at start-up: {}", n.id, text.trim());
                stop_all(&mut nodes).await;
                return fail(msg);
            }
        }
        let mut up = 0;
        let mut leader = None;
        for e in &endpoints {
            if let Some(s) = super::node_status(e, t).await {
                // Leaderless: a node is up once it reaches every peer (until then it counts
                // the peers it has not connected to as down).
                if s.mode != "leaderless" || s.reachable.len() + 1 == endpoints.len() {
                    up += 1;
                }
                if s.role == "leader" {
                    leader = Some(s.id);
                }
            }
        }
        if up == endpoints.len() && (leader.is_some() || a.mode != "leader-follower") {
            break leader;
        }
        if Instant::now() > deadline {
            stop_all(&mut nodes).await;
            return fail(format!(
                "the cluster did not come up within {}: {up} of {} nodes answered{}; logs in {}",
                humantime::format_duration(wait),
                endpoints.len(),
                if leader.is_none() && a.mode == "leader-follower" {
                    ", none leading"
                } else {
                    ""
                },
                dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = std::fs::write(current_file(), dir.to_string_lossy().as_bytes());
    let eps = endpoints.join(",");
    println!(
        "quorumkv: {} nodes, {} mode, data and logs in {}",
        a.nodes,
        a.mode,
        dir.display()
    );
    for i in 0..a.nodes {
        println!(
            "  n{:<3} {}   metrics http://{}/metrics",
            i + 1,
            addr(i),
            admin(i)
        );
    }
    if let Some(l) = leader {
        println!("leader: {l}");
    }
    if let Some(n) = threads {
        println!(
            "request threads per node: {n} (the CPUs shared among the nodes; choose with \
             `-- --worker-threads N`)"
        );
    }
    println!(
        "\nTry:\n  export KV_ENDPOINTS={eps}\n  kvctl put greeting hello\n  kvctl get greeting\n  \
         kvctl status\n  kvctl fault partition n1,n2/n3,n4,n5    (then: kvctl fault heal)\n  \
         kvctl cluster kill n1                   (kill -9; then: kvctl cluster start n1; also \
         pause/resume)\nCtrl-C stops every node."
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot watch for SIGTERM: {e}")),
    };
    let result = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
            _ = term.recv() => {
                // Pass the stop on: the nodes did not get this signal with us.
                for n in nodes.iter_mut().filter(|n| n.child.is_some()) {
                    let _ = n.signal("-TERM");
                }
                break ExitCode::SUCCESS;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                for n in nodes.iter_mut() {
                    if let Some(Ok(Some(st))) = n.child.as_mut().map(Child::try_wait) {
                        // A node's last line says why it stopped (kv-node prints it last).
                        let why = last_line(&n.log)
                            .map(|l| format!(": {l}"))
                            .unwrap_or_default();
                        let _ = writeln!(
                            std::io::stderr(),
                            "kvctl: {} exited ({st}){why}\n  its log: {}; `kvctl cluster start {}` \
                             starts it again",
                            n.id,
                            n.log.display(),
                            n.id
                        );
                        n.child = None;
                    }
                }
                serve_requests(&control, &mut nodes, &|i, log| command(i, log));
                if nodes.iter().all(|n| n.child.is_none() && !n.downed) {
                    break fail("every node has exited".into());
                }
            }
        }
    };
    let running = nodes.iter_mut().filter(|n| n.child.is_some()).count();
    say(&format!("stopping {running} nodes"));
    stop_all(&mut nodes).await;
    if std::fs::read_to_string(current_file()).is_ok_and(|s| Path::new(s.trim()) == dir) {
        let _ = std::fs::remove_file(current_file());
    }
    result
}

/// Prints a line to stdout; a reader that went away (`cluster up | head`) must not take the
/// supervisor down with its nodes still running.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Carries out the requests waiting in `control` and answers each.
fn serve_requests(
    control: &Path,
    nodes: &mut [Node],
    command: &dyn Fn(u32, std::fs::File) -> Command,
) {
    let Ok(entries) = std::fs::read_dir(control) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((id, action)) = name.split_once('.') else {
            continue;
        };
        if !ACTIONS.contains(&action) {
            continue; // an answer, or not ours
        }
        let _ = std::fs::remove_file(e.path());
        let answer = match nodes.iter().position(|n| n.id == id) {
            None => Err(format!(
                "no node {id} in this cluster (n1..n{})",
                nodes.len()
            )),
            Some(i) => act(&mut nodes[i], i as u32, action, command),
        };
        let text = match &answer {
            Ok(said) => {
                say(&format!("kvctl: {said}"));
                format!("ok {said}")
            }
            Err(why) => format!("error {why}"),
        };
        let _ = std::fs::write(control.join(format!("{name}.done")), text);
    }
}

fn act(
    n: &mut Node,
    i: u32,
    action: &str,
    command: &dyn Fn(u32, std::fs::File) -> Command,
) -> Result<String, String> {
    match action {
        "kill" => {
            if !n.running() {
                return Err(format!("{} is not running", n.id));
            }
            let Some(mut c) = n.child.take() else {
                return Err(format!("{} is not running", n.id));
            };
            let pid = c.id();
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
            n.downed = true;
            n.paused = false;
            Ok(format!("{} killed (kill -9, pid {pid})", n.id))
        }
        "start" => {
            if n.running() {
                return Err(format!(
                    "{} is running (pid {})",
                    n.id,
                    n.child.as_ref().map_or(0, Child::id)
                ));
            }
            // Appended to: the log of a node started again follows its earlier life.
            let log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&n.log)
                .map_err(|e| format!("cannot open {}: {e}", n.log.display()))?;
            let c = command(i, log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", n.id))?;
            let mut said = format!("{} started (pid {}) at {}", n.id, c.id(), n.addr);
            if let Some(note) = n.restart_note {
                said = format!("{said}; {note}");
            }
            n.child = Some(c);
            n.downed = false;
            Ok(said)
        }
        "pause" | "resume" => {
            if !n.running() {
                return Err(format!("{} is not running", n.id));
            }
            let pause = action == "pause";
            n.signal(if pause { "-STOP" } else { "-CONT" })?;
            n.paused = pause;
            Ok(format!(
                "{} {} (pid {})",
                n.id,
                if pause {
                    "paused (SIGSTOP)"
                } else {
                    "resumed (SIGCONT)"
                },
                n.child.as_ref().map_or(0, Child::id)
            ))
        }
        "power" => {
            // The log is DATA_DIR/<id>.log; the journal sits beside it.
            let dir = n.log.parent().unwrap_or(std::path::Path::new("."));
            let journal = journal_dir(dir, &n.id);
            if !journal.is_dir() {
                return Err(format!(
                    "{} does not run under the power-loss emulation: start the cluster with `kvctl cluster up --power-loss`",
                    n.id
                ));
            }
            let killed = act(n, i, "kill", command)?;
            let tool = std::env::current_exe()
                .map(|e| power_loss_tools(&e).1)
                .map_err(|e| format!("cannot find this executable: {e}"))?;
            let out = Command::new(&tool)
                .arg("revert")
                .arg(&journal)
                .output()
                .map_err(|e| format!("{killed}, but cannot run {}: {e}", tool.display()))?;
            let said = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "{killed}, but kv-powerloss revert failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(format!(
                "{} lost power (kill -9); {}",
                n.id,
                said.lines().last().unwrap_or("nothing to revert")
            ))
        }
        _ => Err(format!("unknown action {action}")),
    }
}

/// Gives the nodes 3 s to stop on the signal they got with us (a paused node is thawed first:
/// it could not see it), then kills the rest.
async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut().filter(|n| n.paused) {
        let _ = n.signal("-CONT");
        let _ = n.signal("-TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && nodes.iter_mut().any(Node::running) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes.iter_mut() {
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last non-empty line of a node's log (read from its last 4 KiB: logs grow).
fn last_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The election timeout the nodes run with: `--election-timeout` among the node flags, or
/// `KV_ELECTION_TIMEOUT` (inherited by the nodes), or zero when neither parses (the nodes
/// refuse a bad one themselves, and the default needs no more than the usual wait).
fn election_timeout(node_args: &[String]) -> Duration {
    let flag = node_args.iter().enumerate().find_map(|(i, a)| {
        match a.strip_prefix("--election-timeout") {
            Some("") => node_args.get(i + 1).cloned(),
            Some(v) => v.strip_prefix('=').map(str::to_string),
            None => None,
        }
    });
    flag.or_else(|| std::env::var("KV_ELECTION_TIMEOUT").ok())
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_a_leader_follows_the_election_timeout_in_the_node_flags() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let secs = Duration::from_secs;
        assert_eq!(
            election_timeout(&args(&["--fsync", "always", "--election-timeout", "15s"])),
            secs(15)
        );
        assert_eq!(
            election_timeout(&args(&["--election-timeout=1m"])),
            secs(60)
        );
        assert_eq!(
            election_timeout(&args(&["--election-timeout", "soon"])),
            Duration::ZERO
        );
    }

    #[test]
    fn nodes_share_the_cpus_unless_their_threads_are_chosen() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shared_threads(&[], false, 5, 2), Some(1));
        assert_eq!(shared_threads(&[], false, 3, 8), Some(2));
        assert_eq!(shared_threads(&[], false, 1, 4), Some(4));
        assert_eq!(
            shared_threads(&args(&["--worker-threads", "3"]), false, 5, 2),
            None
        );
        assert_eq!(
            shared_threads(
                &args(&["--log", "debug", "--worker-threads=2"]),
                false,
                5,
                2
            ),
            None
        );
        assert_eq!(shared_threads(&[], true, 5, 2), None);
    }
}
