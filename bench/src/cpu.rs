//! The load generator's own CPU use over the measured time.
//!
//! A closed-loop generator that runs out of CPU measures itself, not the server: its
//! throughput stops growing while the server idles. Every run reports how many cores the
//! generator used and its CPU time per operation, and warns when it used nearly all of its
//! threads; on a machine shared with the servers, its share is CPU they did not have. With
//! `--server-pids`, the same for the server processes on this machine (and every process they
//! started: give `kvctl cluster up`'s pid for its nodes), so one run shows what each side cost.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the generator spent while it was measuring.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClientCpu {
    /// CPU seconds (user + system, every thread) over the measured time.
    pub seconds: f64,
    /// `seconds` per second of measured time: cores kept busy.
    pub cores: f64,
    /// CPU microseconds per successful operation (`None`: none succeeded).
    pub per_op_us: Option<f64>,
    /// The runtime's worker threads (`--threads`): the most cores it could keep busy.
    pub threads: usize,
}

impl ClientCpu {
    /// From two [`process_cpu_seconds`] readings `duration_s` apart, over `ops` operations.
    pub fn between(before: f64, after: f64, duration_s: f64, ops: u64, threads: usize) -> Self {
        let seconds = (after - before).max(0.0);
        ClientCpu {
            seconds,
            cores: seconds / duration_s.max(f64::EPSILON),
            per_op_us: per_op(seconds, ops),
            threads,
        }
    }

    /// Whether the generator ran its threads nearly flat out (90% or more): then its own
    /// speed may be what the run measured.
    pub fn saturated(&self) -> bool {
        self.cores >= 0.9 * self.threads as f64
    }
}

/// What the server processes spent while the generator was measuring.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerCpu {
    /// The processes counted: those given and every process they started.
    pub pids: Vec<u32>,
    /// CPU seconds over the measured time, all of them together.
    pub seconds: f64,
    /// `seconds` per second of measured time.
    pub cores: f64,
    /// CPU microseconds per successful operation (`None`: none succeeded).
    pub per_op_us: Option<f64>,
}

/// CPU seconds of each process in the trees rooted at `roots` (each process and, recursively,
/// its children), read now. Processes already gone are left out.
pub fn tree_cpu(roots: &[u32]) -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains_key(&pid) {
            continue;
        }
        let Some(secs) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        out.insert(pid, secs);
        todo.extend(children(pid));
    }
    out
}

/// The processes `pid` started (every thread's list: a child belongs to the thread that
/// forked it).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl ServerCpu {
    /// From two [`tree_cpu`] readings `duration_s` apart, over `ops` operations: what each
    /// process seen both times spent between them, plus all of what a process started meanwhile
    /// spent (one that exited meanwhile is lost: procfs keeps nothing of it).
    pub fn between(
        before: &BTreeMap<u32, f64>,
        after: &BTreeMap<u32, f64>,
        duration_s: f64,
        ops: u64,
    ) -> Self {
        let seconds: f64 = after
            .iter()
            .map(|(pid, a)| (a - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum();
        ServerCpu {
            pids: before.keys().copied().collect(),
            seconds,
            cores: seconds / duration_s.max(f64::EPSILON),
            per_op_us: per_op(seconds, ops),
        }
    }
}

/// CPU microseconds per operation; none without operations (a run where everything failed
/// has no cost per operation to show, and dividing by one would invent one).
fn per_op(seconds: f64, ops: u64) -> Option<f64> {
    (ops > 0).then(|| seconds * 1e6 / ops as f64)
}

/// CPU seconds this process has used so far, all threads, user and system; `None` without
/// Linux's procfs.
pub fn process_cpu_seconds() -> Option<f64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted after the last
/// `)`; utime and stime are fields 14 and 15, in USER_HZ, which Linux fixes at 100 for this
/// file.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (kv (bench) x) R 1 4242 4242 0 -1 4194304 1000 0 0 0 \
                    1234 566 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(18.0));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
    }

    #[test]
    fn this_process_cpu_time_grows_with_work() {
        let before = process_cpu_seconds().expect("procfs");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = process_cpu_seconds().expect("procfs");
        // 300 ms of spinning, read at 10 ms resolution: well over 0.1 s.
        assert!(after - before >= 0.1, "{before} -> {after}");
    }

    #[test]
    fn a_process_tree_is_counted_with_its_children() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .expect("sh");
        let me = std::process::id();
        let pid = child.id();
        let t0 = std::time::Instant::now();
        let mut seen = BTreeMap::new();
        while t0.elapsed() < std::time::Duration::from_secs(10) {
            seen = tree_cpu(&[me]);
            if seen.get(&pid).is_some_and(|s| *s >= 0.05) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen.contains_key(&me));
        assert!(seen.get(&pid).is_some_and(|s| *s >= 0.05), "{seen:?}");
        assert!(tree_cpu(&[u32::MAX]).is_empty());
    }

    #[test]
    fn server_cost_counts_processes_started_meanwhile_and_never_goes_negative() {
        let before = BTreeMap::from([(1, 10.0), (2, 5.0), (3, 7.0)]);
        // 2 restarted as 4 (its counter gone), 3 exited.
        let after = BTreeMap::from([(1, 12.0), (4, 0.5)]);
        let c = ServerCpu::between(&before, &after, 5.0, 100_000);
        assert!((c.seconds - 2.5).abs() < 1e-9);
        assert!((c.cores - 0.5).abs() < 1e-9);
        assert!(c.per_op_us.is_some_and(|us| (us - 25.0).abs() < 1e-9));
        assert_eq!(c.pids, vec![1, 2, 3]);
        let c = ServerCpu::between(&before, &BTreeMap::from([(1, 9.0)]), 1.0, 1);
        assert_eq!(c.seconds, 0.0);
    }

    #[test]
    fn per_operation_cost_and_saturation() {
        let c = ClientCpu::between(10.0, 19.2, 10.0, 460_000, 1);
        assert!((c.cores - 0.92).abs() < 1e-9);
        assert!(c.per_op_us.is_some_and(|us| (us - 20.0).abs() < 1e-9));
        assert_eq!(ClientCpu::between(1.0, 2.0, 1.0, 0, 1).per_op_us, None);
        assert!(c.saturated());
        let c = ClientCpu::between(10.0, 15.5, 10.0, 230_000, 1);
        assert!(!c.saturated());
        assert!(!ClientCpu::between(0.0, 1.5, 1.0, 1, 2).saturated());
    }
}
