//! kvctl and kv-node as a user runs them: outputs, JSON shapes, exit codes, bad input, and
//! start-up failures with one-line reasons.

use base64::Engine;
use kv_tests::{NodeProcess, http_get, kv_node_output, kvctl, kvctl_stdin};

#[test]
fn kvctl_round_trip_prints_versions_values_and_follows_exit_codes() {
    let node = NodeProcess::start(&["--storage", "memory"]).expect("start");
    let ep = node.endpoint();

    let put = kvctl(&ep, &["put", "greeting", "hello"]);
    assert_eq!((put.code, put.stdout.as_str()), (0, "1.1"), "{put:?}");
    let get = kvctl(&ep, &["get", "greeting"]);
    assert_eq!((get.code, get.stdout.as_str()), (0, "hello"), "{get:?}");

    let missing = kvctl(&ep, &["get", "nope"]);
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (1, "not found"),
        "{missing:?}"
    );

    let cas_bad = kvctl(&ep, &["cas", "greeting", "1.7", "x"]);
    assert_eq!(cas_bad.code, 1, "{cas_bad:?}");
    assert!(
        cas_bad.stderr.contains("current version is 1.1"),
        "{cas_bad:?}"
    );
    let cas_ok = kvctl(&ep, &["cas", "greeting", "1.1", "hi"]);
    assert_eq!(
        (cas_ok.code, cas_ok.stdout.as_str()),
        (0, "1.2"),
        "{cas_ok:?}"
    );
    let cas_absent = kvctl(&ep, &["cas", "fresh", "none", "v"]);
    assert_eq!(cas_absent.code, 0, "{cas_absent:?}");

    let del = kvctl(&ep, &["delete", "greeting"]);
    assert_eq!((del.code, del.stdout.as_str()), (0, "1.4"), "{del:?}");
    assert_eq!(kvctl(&ep, &["get", "greeting"]).code, 1);
}

#[test]
fn kvctl_json_output_has_the_documented_shape() {
    let node = NodeProcess::start(&["--storage", "memory", "--id", "n7"]).expect("start");
    let ep = node.endpoint();
    let put = kvctl(&ep, &["--output", "json", "put", "k", "v"]);
    assert_eq!(put.code, 0, "{put:?}");
    let p: serde_json::Value = serde_json::from_str(&put.stdout).expect("json");
    assert_eq!(p["key"], "k");
    assert_eq!(p["version"], "1.1");
    assert_eq!(p["node"], "n7");
    assert_eq!(p["acks"], 1);
    assert_eq!(p["replicas"], serde_json::json!(["n7"]));
    assert_eq!(p["degraded"], false);

    let get = kvctl(&ep, &["--output", "json", "get", "k"]);
    let g: serde_json::Value = serde_json::from_str(&get.stdout).expect("json");
    for (field, want) in [
        ("key", serde_json::json!("k")),
        ("value", serde_json::json!("v")),
        ("version", serde_json::json!("1.1")),
        ("node", serde_json::json!("n7")),
        ("replicas", serde_json::json!(["n7"])),
        ("stale", serde_json::json!(false)),
        ("degraded", serde_json::json!(false)),
    ] {
        assert_eq!(g[field], want, "{field} in {g}");
    }
    let absent = kvctl(&ep, &["--output", "json", "get", "nope"]);
    assert_eq!(absent.code, 1);
    let a: serde_json::Value = serde_json::from_str(&absent.stdout).expect("json");
    assert_eq!(a["value"], serde_json::Value::Null);
}

#[test]
fn kvctl_takes_a_value_of_any_bytes_and_length_from_stdin_and_prints_it_back() {
    let node = NodeProcess::start(&["--storage", "memory"]).expect("start");
    let ep = node.endpoint();
    // 300 KiB, every byte value (NUL, invalid UTF-8): more than one argument may hold on Linux
    // (128 KiB), and nothing a command line can carry.
    let value: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let (code, out, err) = kvctl_stdin(&ep, &["put", "blob"], &value);
    assert_eq!((code, &out[..]), (0, &b"1.1\n"[..]), "{err}");
    // Text output is the value's bytes as stored, then a newline.
    let (code, out, err) = kvctl_stdin(&ep, &["get", "blob"], b"");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), value.len() + 1);
    assert!(out[..value.len()] == value[..] && out.ends_with(b"\n"));
    // JSON carries every byte too, in value_base64, as the value is not UTF-8.
    let get = kvctl(&ep, &["--output", "json", "get", "blob"]);
    let g: serde_json::Value = serde_json::from_str(&get.stdout).expect("json");
    let b64 = g["value_base64"].as_str().expect("value_base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        value
    );

    // cas takes its value from stdin the same way; a UTF-8 value has no value_base64.
    let (code, out, err) = kvctl_stdin(&ep, &["cas", "blob", "1.1"], b"small\n");
    assert_eq!((code, &out[..]), (0, &b"1.2\n"[..]), "{err}");
    let get = kvctl(&ep, &["--output", "json", "get", "blob"]);
    let g: serde_json::Value = serde_json::from_str(&get.stdout).expect("json");
    assert_eq!(g["value"], "small\n");
    assert!(g.get("value_base64").is_none(), "{g}");

    // An empty stdin is an empty value, stored as such.
    let (code, _, err) = kvctl_stdin(&ep, &["put", "empty"], b"");
    assert_eq!(code, 0, "{err}");
    let get = kvctl(&ep, &["--output", "json", "get", "empty"]);
    let g: serde_json::Value = serde_json::from_str(&get.stdout).expect("json");
    assert_eq!((get.code, &g["value"]), (0, &serde_json::json!("")));

    // Twice max_value_bytes (1 MiB): refused before the node decodes it, and said so.
    let (code, _, err) = kvctl_stdin(&ep, &["put", "huge"], &vec![b'x'; 2 << 20]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("max_value_bytes") && err.contains("nothing was stored"),
        "{err}"
    );
    assert_eq!(kvctl(&ep, &["get", "huge"]).code, 1);
}

#[test]
fn kvctl_bad_input_is_refused_with_exit_2_and_stores_nothing() {
    let node =
        NodeProcess::start(&["--storage", "memory", "--max-value-bytes", "10"]).expect("start");
    let ep = node.endpoint();
    let long_key = "k".repeat(1025);
    for (args, needle) in [
        (vec!["put", "", "v"], "key is empty"),
        (vec!["put", long_key.as_str(), "v"], "max_key_bytes=1024"),
        (vec!["put", "k", "01234567890"], "max_value_bytes=10"),
        (vec!["put", "k", "v", "--w", "2"], "w=2 is out of range"),
        // On the wire 0 means "the node's default": kvctl does not send it for an explicit 0.
        (vec!["get", "k", "--r", "0"], "invalid value '0' for '--r"),
        (
            vec!["put", "k", "v", "--w", "0"],
            "invalid value '0' for '--w",
        ),
        (vec!["cas", "k", "one.two", "v"], "invalid version"),
    ] {
        let r = kvctl(&ep, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {r:?}");
    }
    let (_, metrics) = http_get(node.admin, "/metrics").expect("metrics");
    assert!(
        metrics.contains("kv_storage_last_lsn 0"),
        "nothing was stored:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"kv_requests_total{op="put",code="invalid_argument"} 4"#),
        "{metrics}"
    );
}

#[test]
fn kvctl_with_no_reachable_node_fails_definitely_with_exit_3() {
    let port = kv_tests::free_port();
    let r = kvctl(&format!("127.0.0.1:{port}"), &["get", "k"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no endpoint reachable"), "{r:?}");
}

#[test]
fn kvctl_tries_the_next_endpoint_when_the_first_is_down() {
    let node = NodeProcess::start(&["--storage", "memory"]).expect("start");
    let dead = format!("127.0.0.1:{}", kv_tests::free_port());
    let r = kvctl(&format!("{dead},{}", node.endpoint()), &["put", "k", "v"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn kv_node_bad_configuration_exits_with_a_one_line_reason() {
    for (args, needle) in [
        (vec![], "give --data-dir DIR"),
        (
            vec!["--storage", "memory", "--w", "2"],
            "--w=2 is out of range",
        ),
        (
            vec!["--storage", "memory", "--r", "0"],
            "--r=0 is out of range",
        ),
        (
            vec!["--storage", "memory", "--fsync", "sometimes"],
            "invalid fsync policy",
        ),
        (
            vec!["--storage", "memory", "--peers", "n1=127.0.0.1:1,n2"],
            "expected ID=HOST:PORT",
        ),
        (
            vec![
                "--storage",
                "memory",
                "--peers",
                "n1=127.0.0.1:7101,n2=127.0.0.1:7101",
            ],
            "--peers gives n1 and n2 the same address",
        ),
        (
            // --listen forgotten: the default 127.0.0.1:7001 is not where the others dial n1.
            vec![
                "--storage",
                "memory",
                "--id",
                "n1",
                "--peers",
                "n1=127.0.0.1:7101,n2=127.0.0.1:7102",
            ],
            "--listen 127.0.0.1:7001 but --peers gives n1 the address 127.0.0.1:7101",
        ),
        (
            vec!["--storage", "memory", "--snapshot-bytes", "4096"],
            "--snapshot-bytes 4096: must be at least 65536",
        ),
        (
            vec!["--storage", "memory", "--no-such-flag"],
            "unexpected argument",
        ),
        (
            vec!["--config", "/nonexistent/kv.toml"],
            "cannot read config file",
        ),
    ] {
        let out = kv_node_output(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn kv_node_reads_toml_then_env_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("kv.toml");
    std::fs::write(&cfg, "storage = \"memory\"\nid = \"from-file\"\nw = 5\n").expect("write");
    // The file's w=5 is invalid for one node; the environment overrides it, so this starts.
    let out = std::process::Command::new(kv_tests::bin("kv-node"))
        .args([
            "--config",
            cfg.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:1",
        ])
        .env("KV_W", "7")
        .env("KV_ID", "from-env")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--w=7"), "env beats the file: {err}");
    let out = std::process::Command::new(kv_tests::bin("kv-node"))
        .args(["--config", cfg.to_str().expect("utf-8"), "--w", "9"])
        .env("KV_W", "7")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--w=9"), "the flag beats env: {err}");
    std::fs::write(&cfg, "storage = \"memory\"\nwrite_quorum = 1\n").expect("write");
    let out = kv_node_output(&["--config", cfg.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("write_quorum"),
        "unknown TOML keys are named: {err}"
    );
}

/// Writes keys k0..k{n} through a durable node, stops it, and returns its log segment.
fn write_and_stop(data_dir: &str, n: usize) -> std::path::PathBuf {
    let node = NodeProcess::start(&["--data-dir", data_dir]).expect("start");
    for i in 0..n {
        let r = kvctl(&node.endpoint(), &["put", &format!("k{i}"), "value"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    drop(node);
    std::path::Path::new(data_dir).join("wal-00000000000000000001.log")
}

/// Starts kv-node on `data_dir` (and `extra` flags), expecting it to refuse: exit code 1.
/// Returns what it said on stderr.
fn start_refused(data_dir: &str, listen: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--data-dir",
        data_dir,
        "--listen",
        listen,
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let out = kv_node_output(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
    err
}

/// Where the records of a segment end: zeros are written ahead of them (each record here ends
/// in its value, not a zero).
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).expect("records") + 1
}

#[test]
fn kv_node_refuses_a_corrupt_log_and_keeps_it_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let seg = write_and_stop(data_s, 20);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let mid = data_end(&bytes) / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("flip a bit");
    let err = start_refused(data_s, "127.0.0.1:0", &[]);
    assert!(
        err.contains("corrupt data in") && err.contains("wal-00000000000000000001.log"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        std::fs::read(&seg).expect("segment"),
        bytes,
        "the damaged log is left as it was"
    );
}

#[test]
fn kv_node_truncates_a_torn_final_record_and_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let seg = write_and_stop(data_s, 5);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let good = data_end(&bytes);
    // The last record was half written when the machine died: its end is still zero fill.
    bytes[good - 7..good].fill(0);
    std::fs::write(&seg, &bytes).expect("tear");
    let node = NodeProcess::start(&["--data-dir", data_s]).expect("starts despite the torn tail");
    assert!(
        node.log_text().contains("truncated a torn final record"),
        "{}",
        node.log_text()
    );
    for i in 0..4 {
        assert_eq!(
            kvctl(&node.endpoint(), &["get", &format!("k{i}")]).stdout,
            "value"
        );
    }
    assert_eq!(
        kvctl(&node.endpoint(), &["get", "k4"]).code,
        1,
        "the torn write is gone"
    );
}

#[test]
fn kv_node_refuses_a_data_directory_in_use_or_unusable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let _first = NodeProcess::start(&["--data-dir", data_s]).expect("start");
    let err = start_refused(data_s, "127.0.0.1:0", &[]);
    assert!(err.contains("in use by another kv-node"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let under_file = file.join("data");
    let err = start_refused(under_file.to_str().expect("utf-8"), "127.0.0.1:0", &[]);
    assert!(err.contains("cannot create data directory"), "{err}");
}

/// A data directory records which node, layout and members it belongs to on the first start
/// (`cluster.toml`); a later start that differs is refused with exit code 1 and the reason.
/// Each of these started without a word before: a node on another's data (it could vote twice
/// in a term), a single node's data under a replica (invisible to it), a cluster member
/// started with other members (another majority).
#[test]
fn kv_node_refuses_a_data_directory_of_another_node_layout_or_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let refused = |listen: &str, args: &[&str], why: &str| {
        let err = start_refused(data_s, listen, args);
        assert!(err.contains(why), "{args:?}: {err}");
        err
    };
    {
        let mut single = NodeProcess::start(&["--data-dir", data_s]).expect("start");
        single.kill9();
    }
    refused(
        "127.0.0.1:0",
        &["--id", "n2"],
        "belongs to node n1, not --id n2",
    );
    refused(
        "127.0.0.1:1",
        &["--peers", "n1=127.0.0.1:1,n2=127.0.0.1:2"],
        "holds the data of a single node (no --peers), and this node would run as a \
         leader-follower replica",
    );

    // A member of a three-node cluster (its peers need not run for it to start).
    std::fs::remove_dir_all(&data).expect("empty it");
    let port = kv_tests::free_port();
    let me = format!("127.0.0.1:{port}");
    let three = format!("n1={me},n2=127.0.0.1:2,n3=127.0.0.1:3");
    {
        let admin = format!("127.0.0.1:{}", kv_tests::free_port());
        let mut member = NodeProcess::start_at(
            me.parse().expect("addr"),
            admin.parse().expect("addr"),
            &["--data-dir", data_s, "--peers", &three],
        )
        .expect("start a member");
        member.kill9();
    }
    let five = format!("{three},n4=127.0.0.1:4,n5=127.0.0.1:5");
    let err = refused(
        &me,
        &["--peers", &five],
        "belongs to a cluster of n1,n2,n3; --peers gives n1,n2,n3,n4,n5",
    );
    // Leader-follower defaults (R=1, W=3 of 5) are not weak: reads go through the leader.
    assert!(!err.contains("not strongly consistent"), "{err}");
    let err = refused(&me, &["--peers", &five, "--w", "2"], "belongs to a cluster");
    assert!(err.contains("W is not a majority"), "{err}");
    let err = refused(
        &me,
        &[
            "--peers",
            &three,
            "--mode",
            "leaderless",
            "--r",
            "1",
            "--w",
            "1",
        ],
        "holds the data of a leader-follower replica",
    );
    assert!(err.contains("R+W<=N"), "{err}");
    // The same member starts again (addresses may change; only ids are recorded).
    let moved = format!("n1={me},n2=127.0.0.1:12,n3=127.0.0.1:13");
    let admin = format!("127.0.0.1:{}", kv_tests::free_port());
    NodeProcess::start_at(
        me.parse().expect("addr"),
        admin.parse().expect("addr"),
        &["--data-dir", data_s, "--peers", &moved],
    )
    .expect("the same member starts again");
}

#[test]
fn kv_bench_check_exits_0_1_2_and_draws_the_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = dir.path().join("ok.jsonl");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &ok,
        "{\"client\":1,\"op\":\"write\",\"key\":\"k\",\"value\":\"1\",\"start_ns\":0,\"end_ns\":10,\"outcome\":\"ok\"}\n\
         {\"client\":2,\"op\":\"read\",\"key\":\"k\",\"value\":\"1\",\"start_ns\":20,\"end_ns\":30,\"outcome\":\"ok\"}\n",
    )
    .expect("write");
    std::fs::write(
        &bad,
        "{\"client\":1,\"op\":\"write\",\"key\":\"k\",\"value\":\"1\",\"start_ns\":0,\"end_ns\":10,\"outcome\":\"ok\"}\n\
         {\"client\":2,\"op\":\"read\",\"key\":\"k\",\"value\":null,\"start_ns\":20,\"end_ns\":30,\"outcome\":\"ok\"}\n",
    )
    .expect("write");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(kv_tests::bin("kv-bench"))
            .arg("check")
            .args(args)
            .output()
            .expect("run kv-bench")
    };
    let o = run(&[ok.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let html = dir.path().join("v.html");
    let o = run(&[bad.as_os_str(), "--html".as_ref(), html.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("not linearizable") && out.contains("r nil !!"),
        "{out}"
    );
    let page = std::fs::read_to_string(&html).expect("picture written");
    assert!(
        page.contains("<svg") && page.contains("class=\"bad\""),
        "{page}"
    );
    let o = run(&[dir.path().join("missing.jsonl").as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
