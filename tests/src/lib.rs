//! kv-tests: the harness for tests that run quorumkv as users do, as real processes on
//! loopback.
//!
//! - [`bin`]: the path of a workspace binary (`kv-node`, `kvctl`, `kv-bench`), built first so
//!   the tests never run a stale one.
//! - [`NodeProcess`]: one `kv-node` child on free ports; start, wait until ready, `kill -9`.
//! - [`kvctl`]: run the CLI and capture exit code, stdout and stderr.
//! - [`http_get`]: a plain HTTP/1.1 GET, for the admin port.
//! - [`cluster`]: several `kv-node` processes replicating to each other.
//! - [`sim`]: deterministic simulation of the replication core under faults.

pub mod cluster;
pub mod history;
pub mod sim;
pub mod sim_leaderless;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The target directory the test executable runs from (`target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `targets` (`--bins`, `--lib`) of `packages` for the profile the tests run in; a
/// failure is kept, so that every test asking after it fails the same way.
fn build(packages: &[&str], targets: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = profile_dir().file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(targets);
    if release {
        cmd.arg("--release");
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    cmd.arg("--manifest-path").arg(manifest);
    let began = std::time::Instant::now();
    let status = cmd.status();
    // A release build links each binary with fat LTO (about a minute each here): a test that
    // seems to hang before its first node starts was rebuilding them. Say so, past the test
    // harness's capture of `eprintln!` (which shows it only when the test fails).
    let took = began.elapsed();
    if took > std::time::Duration::from_secs(5) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "kv-tests: cargo build of {packages:?} took {:.0} s (binaries older than their \
             sources are rebuilt once per test process)",
            took.as_secs_f64()
        );
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("cargo build of {packages:?} failed: {s}")),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}

fn built(
    done: &'static OnceLock<Result<(), String>>,
    packages: &[&str],
    targets: &[&str],
    name: &str,
) -> PathBuf {
    if let Err(e) = done.get_or_init(|| build(packages, targets)) {
        panic!("{e}");
    }
    let p = profile_dir().join(name);
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// Path of a workspace binary, after building the workspace's binaries once per test process
/// (cargo makes this a no-op when they are fresh).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    built(&BUILT, &["kv-node", "kv-bench"], &["--bins"], name)
}

/// The power-loss emulation (`tests/powerloss`): the preload library and the `kv-powerloss`
/// tool that reverts what a killed process never synced, built once per test process.
pub fn powerloss(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    built(&BUILT, &["kv-powerloss"], &["--bins", "--lib"], name)
}

/// The environment that makes a node's unsynced writes to `data` undoable after `kill -9`
/// ([`NodeProcess::power_off`]): the `tests/powerloss` library preloaded, journalling into
/// `journal` (a directory outside `data`).
pub fn power_loss_env(data: &Path, journal: &Path) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            powerloss("libkv_powerloss.so").display().to_string(),
        ),
        ("KV_POWERLOSS_DATA".into(), data.display().to_string()),
        ("KV_POWERLOSS_JOURNAL".into(), journal.display().to_string()),
    ]
}

/// A put of `key`=`value` asking for `w` acknowledgements (0: the cluster's W).
pub fn put_request(key: &str, value: &str, w: u32) -> kv_proto::kv::v1::PutRequest {
    kv_proto::kv::v1::PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        consistency: Some(kv_proto::kv::v1::Consistency {
            w,
            ..Default::default()
        }),
    }
}

/// The seeds a simulation test runs: `KV_SIM_SEED=<seed>` reruns one (the seed a failure
/// names), `KV_SIM_SEEDS=<n>` runs seeds 0..n, `KV_SIM_SEEDS=<a>..<b>` runs seeds a..b (to
/// explore seeds CI never runs), otherwise 0..`default`.
///
/// # Panics
/// On a malformed `KV_SIM_SEED` or `KV_SIM_SEEDS`: a test run asked for seeds it cannot have.
pub fn sim_seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("KV_SIM_SEED") {
        return vec![s.parse().expect("KV_SIM_SEED is a number")];
    }
    let Ok(spec) = std::env::var("KV_SIM_SEEDS") else {
        return (0..default).collect();
    };
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("KV_SIM_SEEDS is <n> or <a>..<b>, not {spec:?}"))
    };
    match spec.split_once("..") {
        Some((a, b)) => (num(a)..num(b)).collect(),
        None => (0..num(&spec)).collect(),
    }
}

/// Runs `run` once for every seed of [`sim_seeds`]. A failing seed stops the test unless
/// `KV_SIM_KEEP_GOING` is set: then the sweep goes on (each failure still prints its message),
/// and the test fails at the end naming every seed that failed, which a sweep over a new range
/// needs; the failed seeds' counts are missing from the totals.
///
/// # Panics
/// When a seed fails: at once, or with `KV_SIM_KEEP_GOING` after the last seed.
pub fn for_each_seed(default: u64, mut run: impl FnMut(u64)) {
    let keep_going = std::env::var_os("KV_SIM_KEEP_GOING").is_some();
    let mut failed = Vec::new();
    for seed in sim_seeds(default) {
        if !keep_going {
            run(seed);
        } else if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed))).is_err() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} seeds failed: {failed:?}",
        failed.len()
    );
}

/// The one-way links a simulated partition cuts among `n` nodes: with `link_cut` 0, the nodes
/// split into two sides (each side's links to the other cut both ways); above 0, each one-way
/// link cut on its own with that probability (partial and asymmetric partitions). Both
/// simulators draw their partitions here, in the same order, so their seeds replay.
pub fn draw_partition(
    rng: &mut rand::rngs::StdRng,
    n: usize,
    link_cut: f64,
) -> std::collections::BTreeSet<(usize, usize)> {
    use rand::Rng as _;
    let mut blocked = std::collections::BTreeSet::new();
    if link_cut > 0.0 {
        for a in 0..n {
            for b in 0..n {
                if a != b && rng.random_bool(link_cut) {
                    blocked.insert((a, b));
                }
            }
        }
    } else {
        let side: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
        for a in 0..n {
            for b in 0..n {
                if side[a] != side[b] {
                    blocked.insert((a, b));
                }
            }
        }
    }
    blocked
}

/// libfaketime (Debian's `faketime`; `.ci/run` installs it): preloaded, it fakes a process's
/// wall clock (not its monotonic clock), by an offset read from a file at every reading.
///
/// # Panics
/// If it is not installed.
pub fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime, to step the nodes' clocks: apt-get install faketime")
}

/// The version's epoch (leaderless: a hybrid clock reading) in what `kvctl --output json put`
/// printed.
pub fn put_epoch(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["version"].as_str()?.split('.').next()?.parse().ok()
}

/// How many seconds the wall-clock time in a hybrid clock reading is ahead of now.
pub fn secs_ahead(epoch: u64) -> i64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (kv_replica::leaderless::physical_ms(epoch) as i64 - now_ms) / 1000
}

/// The `summary.json` a `kv-bench run --out DIR` wrote.
///
/// # Panics
/// If it is missing or not JSON.
pub fn bench_summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
        .expect("summary.json is JSON")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Ports handed out in this test process. The kernel may hand the same ephemeral port out
/// twice once it is released: never give a port to two callers (a node's --listen and
/// --admin-listen collided).
static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// The first of `n` consecutive free ports, for `kvctl cluster up --base-port`. Taken below
/// the kernel's ephemeral range (32768 and up), so that no outgoing connection can take one
/// of them as its source port between this check and the node binding it.
pub fn free_port_range(n: u16) -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    loop {
        let base = rng.random_range(20_000..32_000 - n);
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        let ports: Vec<u16> = (base..base + n).collect();
        if ports.iter().any(|p| given.contains(p)) {
            continue;
        }
        if ports
            .iter()
            .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            given.extend(ports);
            return base;
        }
    }
}

/// One `kv-node` process.
pub struct NodeProcess {
    child: Option<Child>,
    /// gRPC address.
    pub addr: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    /// Largest file the process may write (`ulimit -f`), from its next start.
    file_size_limit: Option<u64>,
    /// Environment variables set for the process, from its next start.
    env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Starts `kv-node` with `extra` flags on fresh ports and waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// The process exits or is not ready within 20 s; the error holds its log.
    pub fn start(extra: &[&str]) -> anyhow::Result<NodeProcess> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        Self::start_at(addr, admin, extra)
    }

    /// Starts `kv-node` on the given addresses with `extra` flags.
    ///
    /// # Errors
    /// As [`NodeProcess::start`].
    pub fn start_at(
        addr: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        Self::start_with_env(addr, admin, extra, Vec::new())
    }

    /// Starts `kv-node` on the given addresses with `extra` flags and `env` in its environment
    /// (e.g. [`power_loss_env`]).
    ///
    /// # Errors
    /// As [`NodeProcess::start`].
    pub fn start_with_env(
        addr: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> anyhow::Result<NodeProcess> {
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::env::temp_dir().join(format!(
            "kv-node-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let mut n = NodeProcess {
            child: None,
            addr,
            admin,
            args,
            log,
            file_size_limit: None,
            env,
        };
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // Appended to, so a restarted node's log follows its earlier life.
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Under a file size limit a write past it fails with EFBIG, as on a full disk: kv-node
        // handles SIGXFSZ itself (the signal's default action would kill it first, silently).
        let mut cmd = match self.file_size_limit {
            Some(bytes) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -f {}; exec \"$@\"", bytes.div_ceil(512)))
                    .arg("sh")
                    .arg(bin("kv-node"));
                c
            }
            None => Command::new(bin("kv-node")),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .context("spawn kv-node")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "kv-node exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kv-node not ready after 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on unix
            let _ = c.wait();
        }
    }

    /// A power failure: `kill -9`, then everything the node wrote to its data directory since
    /// that file's last fsync is undone (`kv-powerloss revert`). The node must have been
    /// started with [`power_loss_env`]. Returns what the tool printed (one line per file it
    /// changed, then a total).
    ///
    /// # Panics
    /// Without [`power_loss_env`], or when the tool fails.
    pub fn power_off(&mut self) -> String {
        self.kill9();
        let journal = self
            .env
            .iter()
            .find(|(k, _)| k == "KV_POWERLOSS_JOURNAL")
            .map(|(_, v)| v.clone())
            .expect("a node started with power_loss_env");
        let out = Command::new(powerloss("kv-powerloss"))
            .args(["revert", &journal])
            .output()
            .expect("run kv-powerloss");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kv-powerloss revert failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Starts the same node again (same flags, ports and data directory).
    ///
    /// # Errors
    /// As [`NodeProcess::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Starts the process again after [`NodeProcess::kill9`] (no-op if it runs).
    ///
    /// # Errors
    /// As [`NodeProcess::start`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// From the next start, files the process writes may not grow past `bytes` (`None`: no
    /// limit): a write past it fails, as on a full disk.
    pub fn set_file_size_limit(&mut self, bytes: Option<u64>) {
        self.file_size_limit = bytes;
    }

    /// From the next start, the process gets `KEY=value` in its environment (kv-node reads
    /// every flag as `KV_<FLAG>` too).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Waits up to `limit` for the process to end by itself; how it ended.
    ///
    /// # Panics
    /// If it still runs after `limit` (the message holds its log), or cannot be waited for.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("the process was started");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kv-node still runs after {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The endpoint as `HOST:PORT`, for clients.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("KV_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs `kv-node` with `args` to completion (for start-up failures).
pub fn kv_node_output(args: &[&str]) -> Output {
    Command::new(bin("kv-node"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kv-node")
}

/// What a kvctl invocation did.
#[derive(Debug)]
pub struct CliResult {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `kvctl --endpoints <endpoint> <args>`.
pub fn kvctl(endpoint: &str, args: &[&str]) -> CliResult {
    let out = Command::new(bin("kvctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl");
    CliResult {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
    }
}

/// Runs `kvctl --endpoints <endpoint> <args>` with `input` on its stdin; returns the exit
/// code and stdout as bytes (a value need not be text), and stderr.
pub fn kvctl_stdin(endpoint: &str, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(bin("kvctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from a thread: a value larger than the pipe's buffer would otherwise wait on
    // kvctl while kvctl waits on its output being read.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("kvctl output");
    writer
        .join()
        .expect("stdin writer")
        .expect("write kvctl's stdin");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
    )
}

/// A plain HTTP/1.1 GET; returns status code and body.
///
/// # Errors
/// Connection or protocol failures.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status: u16 = buf
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
