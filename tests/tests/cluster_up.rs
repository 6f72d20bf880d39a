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
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvctl cluster up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let endpoints = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("kvctl cluster up ended before printing its endpoints: {seen:?}\n{err}");
        };
        let line = line.expect("utf-8");
        seen.push(line.clone());
        if let Some(eps) = line.trim().strip_prefix("export KV_ENDPOINTS=") {
            break eps.to_string();
        }
        assert!(Instant::now() < deadline, "no endpoints printed: {seen:?}");
    };
    check(&seen);
    let r = kvctl(&endpoints, &["put", "greeting", "hello"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(kvctl(&endpoints, &["get", "greeting"]).stdout, "hello");
    let status = kvctl(&endpoints, &["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let code = child.wait().expect("wait");
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
