//! `kvctl cluster up`: the newcomer's entry point starts real processes, serves, and stops them
//! all when told to.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{bin, free_port_range, kvctl};

#[test]
fn cluster_up_serves_and_stops_every_node_on_sigterm() {
    let status = cluster_up(&[], |seen| {
        assert!(seen.iter().any(|l| l.starts_with("leader: n")), "{seen:?}");
    });
    assert_eq!(status["nodes"][0]["mode"], "leader-follower");
}

#[test]
fn cluster_up_leaderless_in_memory_serves_and_shows_the_leaderless_status() {
    let status = cluster_up(
        &[
            "--mode",
            "leaderless",
            "--n",
            "3",
            "--r",
            "2",
            "--w",
            "2",
            "--memory",
        ],
        |seen| {
            assert!(
                seen.iter().any(|l| l.contains("leaderless mode")),
                "{seen:?}"
            )
        },
    );
    for n in status["nodes"].as_array().expect("nodes") {
        assert_eq!(n["role"], "replica", "{status}");
        assert_eq!(n["reachable"].as_array().map(Vec::len), Some(2), "{status}");
    }
}

/// Runs `kvctl cluster up --nodes 3 EXTRA`, checks what it printed with `check`, writes and
/// reads through it, stops it with SIGTERM and checks every node stopped gracefully. Returns
/// what `kvctl status --output json` said while it ran.
fn cluster_up(extra: &[&str], check: impl Fn(&[String])) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, endpoints, seen) = start(extra, dir.path());
    check(&seen);
    let r = kvctl(&endpoints, &["put", "greeting", "hello"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(kvctl(&endpoints, &["get", "greeting"]).stdout, "hello");
    let status = kvctl(&endpoints, &["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");
    // One endpoint is enough: the others are found among the members it lists.
    let first = endpoints.split(',').next().expect("an endpoint");
    let one = kvctl(first, &["--output", "json", "status"]);
    let one: serde_json::Value = serde_json::from_str(&one.stdout).expect("json");
    let ids: Vec<&str> = one["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["n1", "n2", "n3"], "{one}");
    // One node under two spellings is one row.
    let port = first.rsplit(':').next().expect("port");
    let twice = kvctl(
        &format!("{first},localhost:{port}"),
        &["--output", "json", "status"],
    );
    let twice: serde_json::Value = serde_json::from_str(&twice.stdout).expect("json");
    assert_eq!(twice["nodes"].as_array().map(Vec::len), Some(3), "{twice}");

    let code = child.stop();
    assert!(code.success(), "{code}");
    // Every node is gone: nothing answers any more.
    let r = kvctl(&endpoints, &["--timeout", "300ms", "get", "greeting"]);
    assert_eq!(r.code, 3, "{r:?}");
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("n{i}.log"))).expect("log");
        assert!(
            log.contains("shutting down"),
            "n{i} was not stopped gracefully:\n{log}"
        );
    }
    v
}

/// A running `kvctl cluster up`, stopped (SIGTERM: it stops its nodes) if a test fails before
/// it stops it itself.
struct Up(std::process::Child);

impl Up {
    /// SIGTERM, and how it exited.
    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill");
        self.0.wait().expect("wait")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// Starts `kvctl cluster up --nodes 3 EXTRA --data-dir DIR`; returns it, its endpoints and the
/// lines it printed up to the end of its banner.
fn start(extra: &[&str], dir: &std::path::Path) -> (Up, String, Vec<String>) {
    let base = free_port_range(3);
    let admin = free_port_range(3);
    let mut child = Command::new(bin("kvctl"))
        .args(["cluster", "up", "--nodes", "3"])
        .args(extra)
        .args([
            "--base-port",
            &base.to_string(),
            "--admin-base-port",
            &admin.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvctl cluster up");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Up(child);
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut endpoints = None;
    let endpoints = loop {
        let Some(line) = lines.next() else {
            let _ = child.0.wait();
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("kvctl cluster up ended before printing its endpoints: {seen:?}\n{err}");
        };
        let line = line.expect("utf-8");
        seen.push(line.clone());
        if let Some(eps) = line.trim().strip_prefix("export KV_ENDPOINTS=") {
            endpoints = Some(eps.to_string());
        }
        if line.starts_with("Ctrl-C stops every node") {
            break endpoints.expect("endpoints printed");
        }
        assert!(Instant::now() < deadline, "no endpoints printed: {seen:?}");
    };
    // Keep reading what it prints (it must not block on a full pipe).
    std::thread::spawn(move || for _ in lines {});
    (child, endpoints, seen)
}

/// `--node-env` gives every node a variable, `{id}` replaced by its id: here a clock file of
/// its own for libfaketime, n2's an hour ahead, which shows in the versions n2 gives.
#[test]
fn cluster_up_gives_each_node_the_environment_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clocks = dir.path().join("clocks");
    std::fs::create_dir(&clocks).expect("clocks");
    for (id, offset) in [("n1", "+0"), ("n2", "+3600"), ("n3", "+0")] {
        std::fs::write(clocks.join(id), offset).expect("clock file");
    }
    let lib = kv_tests::libfaketime();
    let env = [
        format!("LD_PRELOAD={}", lib.display()),
        "DONT_FAKE_MONOTONIC=1".to_string(),
        "FAKETIME_NO_CACHE=1".to_string(),
        format!("FAKETIME_TIMESTAMP_FILE={}/{{id}}", clocks.display()),
    ];
    let mut args = vec!["--mode", "leaderless", "--n", "3", "--r", "2", "--w", "2"];
    for e in &env {
        args.extend(["--node-env", e.as_str()]);
    }
    let (_up, endpoints, _) = start(&args, &dir.path().join("data"));
    // A write that n2 coordinates (the key's first replica) carries its clock.
    let n2 = endpoints.split(',').nth(1).expect("n2's endpoint");
    let r = (0..50)
        .map(|i| kvctl(n2, &["--output", "json", "put", &format!("k{i}"), "v"]))
        .find(|r| r.stdout.contains("\"node\":\"n2\""))
        .expect("a write coordinated by n2");
    let epoch = kv_tests::put_epoch(&r.stdout).expect("a version");
    let ahead_s = kv_tests::secs_ahead(epoch);
    assert!((3590..3700).contains(&ahead_s), "{ahead_s} s ahead: {r:?}");
}

#[test]
fn cluster_up_refuses_sizes_and_ports_that_cannot_work_with_exit_2() {
    for (args, needle) in [
        (vec!["--nodes", "0"], "invalid value '0' for '--nodes"),
        (vec!["--nodes", "65"], "invalid value '65' for '--nodes"),
        (
            vec!["--nodes", "3", "--base-port", "65534"],
            "--base-port 65534: 3 nodes need ports 65534..65536",
        ),
        (
            vec![
                "--nodes",
                "5",
                "--base-port",
                "9100",
                "--admin-base-port",
                "9102",
            ],
            "overlap for 5 nodes",
        ),
    ] {
        let mut all = vec!["cluster", "up"];
        all.extend(args.iter());
        let r = kvctl("127.0.0.1:1", &all);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {r:?}");
    }
}

#[test]
fn cluster_kill_and_start_bring_a_node_back_with_its_hints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, endpoints, seen) = start(
        &["--mode", "leaderless", "--n", "3", "--r", "2", "--w", "2"],
        dir.path(),
    );
    assert!(
        seen.iter().any(|l| l.contains("kvctl cluster kill n1")),
        "{seen:?}"
    );
    let d = dir.path().to_str().expect("utf-8 path");
    let node = |action: &str, n: &str| kvctl(&endpoints, &["cluster", action, n, "--data-dir", d]);
    for (groups, needle) in [
        ("n1/n1,n2", "n1 is named twice"),
        ("n1/n2", "n3 is in no group"),
        ("n1/n2,n9", "n9 is not a member of this cluster (n1,n2,n3)"),
    ] {
        let r = kvctl(&endpoints, &["fault", "partition", groups]);
        assert_eq!(r.code, 2, "{groups}: {r:?}");
        assert!(r.stderr.contains(needle), "{groups}: {r:?}");
    }
    for (from, to, needle) in [
        ("n1", "n1,n2", "n1 is on both sides"),
        ("n9", "n2", "n9 is not a member of this cluster (n1,n2,n3)"),
        ("n1", ",", "name at least one node on each side"),
    ] {
        let r = kvctl(&endpoints, &["fault", "cut", from, to]);
        assert_eq!(r.code, 2, "{from} {to}: {r:?}");
        assert!(r.stderr.contains(needle), "{from} {to}: {r:?}");
    }
    let r = node("kill", "n3");
    assert_eq!(
        (r.code, r.stdout.starts_with("n3 killed (kill -9")),
        (0, true),
        "{r:?}"
    );
    let r = node("kill", "n3");
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (3, "kvctl: n3 is not running"),
        "{r:?}"
    );
    let r = node("pause", "n7");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("no node n7 in this cluster (n1..n3)"),
        "{r:?}"
    );
    // Without --power-loss there is nothing a power failure could take: refused, and n2
    // runs on (the writes below need it).
    let r = node("power", "n2");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains("n2 does not run under the power-loss emulation: start the cluster with `kvctl cluster up --power-loss`"),
        "{r:?}"
    );
    // Writes go on without n3 (W=2 of N=3); its copies wait as hints.
    for i in 0..10 {
        let r = kvctl(&endpoints, &["put", &format!("k{i}"), &format!("v{i}")]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let n3 = endpoints
        .split(',')
        .nth(2)
        .expect("three endpoints")
        .to_string();
    // Status from one endpoint spelled otherwise than in --peers still names the node that
    // is down, once (not also as an unknown endpoint).
    let n1_port = endpoints
        .split(',')
        .next()
        .and_then(|e| e.rsplit(':').next())
        .expect("port");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = kvctl(&format!("localhost:{n1_port}"), &["status"]);
        let down: Vec<&str> = st.stdout.lines().filter(|l| l.contains(" down")).collect();
        assert_eq!(down.len(), 1, "{st:?}");
        assert!(down[0].starts_with("n3 "), "{st:?}");
        assert!(st.stdout.lines().any(|l| l.starts_with("n2 ")), "{st:?}");
        // The hints wait for n3's silence to pass --hint-after.
        if down[0].contains("hint(s) held for it by the others") {
            break;
        }
        assert!(Instant::now() < deadline, "no hints shown for n3: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Faults from one endpoint reach every member; with n3 down a fault cannot be set (n3
    // would start again without it), but a heal heals the others and names n3.
    let first = endpoints.split(',').next().expect("an endpoint");
    let r = kvctl(first, &["fault", "partition", "n1/n2,n3"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("n3 (127.0.0.1:"), "{r:?}");
    let r = kvctl(first, &["fault", "delay", "n2", "10ms"]);
    assert_eq!(r.code, 3, "{r:?}");
    let r = kvctl(first, &["fault", "heal"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (3, "n1: no faults\nn2: no faults"),
        "{r:?}"
    );
    assert!(r.stderr.contains("n3 (127.0.0.1:"), "{r:?}");
    let r = node("start", "n3");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.ends_with(&format!("at {n3}")), "{r:?}");
    // Once n3 serves again (start does not wait for it), a heal reaches all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = kvctl(first, &["fault", "heal"]);
        if h.code == 0 {
            assert_eq!(h.stdout.lines().count(), 3, "{h:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{h:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back, it receives the hints: its own copy of every key (N=3 of 3 nodes holds them all).
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..10 {
        loop {
            let r = kvctl(&n3, &["get", &format!("k{i}"), "--read-from", "local"]);
            if r.code == 0 {
                assert_eq!(r.stdout, format!("v{i}"));
                break;
            }
            assert!(Instant::now() < deadline, "k{i} never reached n3: {r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A paused node holds its connections and answers nothing until resumed.
    assert_eq!(node("pause", "n3").code, 0);
    let r = kvctl(
        &n3,
        &["--timeout", "300ms", "get", "k1", "--read-from", "local"],
    );
    // Exit 4 (no answer in time), and no "it may have taken effect": a read changes nothing.
    assert_eq!(r.code, 4, "{r:?}");
    assert!(!r.stderr.contains("may have taken effect"), "{r:?}");
    assert_eq!(node("resume", "n3").code, 0);
    assert_eq!(
        kvctl(&n3, &["get", "k1", "--read-from", "local"]).stdout,
        "v1"
    );
    // Every node killed on request: the cluster waits to be told what next, then stops.
    for n in ["n1", "n2", "n3"] {
        assert_eq!(node("kill", n).code, 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(child.0.try_wait(), Ok(None)), "cluster up ended");
    assert!(child.stop().success());
    // Nothing serves the directory any more.
    let r = node("start", "n1");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no `kvctl cluster up` answered"), "{r:?}");
}

/// `cluster up --power-loss` and `cluster power`: the power fails on n1 while a write it holds
/// is still waiting for its fsync (its flushes made 300 ms slower), it loses what it had not
/// fsynced, `cluster start` brings it back, and every acknowledged write is there. With
/// `--memory` there is no disk to lose: refused.
#[test]
fn cluster_power_fails_a_node_and_start_brings_it_back_with_every_acknowledged_write() {
    kv_tests::powerloss("kv-powerloss"); // built beside kvctl
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, endpoints, _) = start(&["--power-loss"], dir.path());
    let d = dir.path().to_str().expect("utf-8 path");
    let node = |action: &str, n: &str| kvctl(&endpoints, &["cluster", action, n, "--data-dir", d]);
    assert_eq!(kvctl(&endpoints, &["put", "a", "1"]).code, 0);
    let r = kvctl(&endpoints, &["fault", "disk", "n1", "300ms"]);
    assert_eq!(r.code, 0, "{r:?}");
    // W=2 of 3: n2 and n3 acknowledge while n1's copy waits for its slow disk.
    let (eps, started) = (endpoints.clone(), Instant::now());
    let put = std::thread::spawn(move || kvctl(&eps, &["put", "b", "2"]));
    std::thread::sleep(Duration::from_millis(150));
    let r = node("power", "n1");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("n1 lost power (kill -9); ")
            && r.stdout.contains("reverted to their last fsync"),
        "{r:?}"
    );
    let b = put.join().expect("put thread");
    eprintln!(
        "{} (put b: {b:?} after {:?})",
        r.stdout.trim(),
        started.elapsed()
    );
    let r = node("start", "n1");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(kvctl(&endpoints, &["get", "a"]).stdout, "1");
    if b.code == 0 {
        assert_eq!(kvctl(&endpoints, &["get", "b"]).stdout, "2");
    }
    assert!(child.stop().success());
    let r = Command::new(bin("kvctl"))
        .args(["cluster", "up", "--power-loss", "--memory"])
        .output()
        .expect("kvctl");
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("--power-loss loses what is not on disk"),
        "{r:?}"
    );
}
