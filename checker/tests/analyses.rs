//! Stale-read and consistency-window analyses on small hand-made histories.

use kv_checker::stale::stale_reads;
use kv_checker::window::windows;
use kv_checker::{Op, OpKind, Outcome, parse};

fn op(client: u64, kind: OpKind, value: &str, start: u64, end: u64, version: &str) -> Op {
    Op {
        client,
        op: kind,
        key: "k".into(),
        value: (!value.is_empty()).then(|| value.to_owned()),
        expected: None,
        applied: None,
        start_ns: start,
        end_ns: end,
        outcome: Outcome::Ok,
        version: (!version.is_empty()).then(|| version.to_owned()),
        node: None,
    }
}

#[test]
fn a_read_older_than_a_completed_write_is_stale_and_measured() {
    const MS: u64 = 1_000_000;
    let ops = vec![
        op(1, OpKind::Write, "a", 0, MS, "1.1"),
        op(1, OpKind::Write, "b", 2 * MS, 3 * MS, "1.2"),
        op(1, OpKind::Write, "c", 4 * MS, 5 * MS, "1.3"),
        // Started 10 ms after b and 8 ms after c were acknowledged, returned a: 2 versions behind.
        op(2, OpKind::Read, "a", 13 * MS, 14 * MS, "1.1"),
        // Concurrent with c: returning b is not stale.
        op(3, OpKind::Read, "b", 4 * MS, 6 * MS, "1.2"),
        // Up to date.
        op(3, OpKind::Read, "c", 20 * MS, 21 * MS, "1.3"),
    ];
    let r = stale_reads(&ops);
    assert_eq!((r.reads, r.stale), (3, 1));
    assert_eq!(r.versions_behind, vec![2]);
    assert_eq!(r.ms_behind, vec![10.0]);
    assert!((r.rate() - 1.0 / 3.0).abs() < 1e-9);
}

/// A read that finds nothing, with no version (the delete's tombstone purged past its grace
/// period), is stale only if no delete at least as new as the writes acknowledged before it
/// could have taken effect by its end.
#[test]
fn an_absent_read_after_a_purged_delete_is_not_stale_but_one_after_a_later_write_is() {
    const MS: u64 = 1_000_000;
    let ops = vec![
        op(1, OpKind::Write, "a", 0, MS, "1.1"),
        op(1, OpKind::Delete, "", 2 * MS, 3 * MS, "1.2"),
        // After the delete, its tombstone purged: nothing, no version.
        op(2, OpKind::Read, "", 10 * MS, 11 * MS, ""),
        op(1, OpKind::Write, "b", 20 * MS, 21 * MS, "1.3"),
        // After b was acknowledged: nothing is stale, by one version.
        op(2, OpKind::Read, "", 30 * MS, 31 * MS, ""),
    ];
    let r = stale_reads(&ops);
    assert_eq!((r.reads, r.stale), (2, 1));
    assert_eq!(r.versions_behind, vec![1]);
    assert_eq!(r.ms_behind, vec![9.0]);
}

#[test]
fn consistency_window_is_the_last_replica_to_serve_the_write() {
    let text = r#"
{"probe":"n1","key":"p1","ack_ns":1000000,"seen_ns":{"n1":1000000,"n2":3000000,"n3":5000000},"replicas":["n1","n2","n3"]}
{"probe":"n1","key":"p2","ack_ns":0,"seen_ns":{"n1":0,"n2":500000},"replicas":["n1","n2","n3"]}
{"client":1,"op":"read","key":"k","value":null,"start_ns":1,"end_ns":2,"outcome":"ok"}
"#;
    let (ops, probes) = parse(text.as_bytes()).expect("parse");
    assert_eq!((ops.len(), probes.len()), (1, 2));
    let w = windows(&probes);
    assert_eq!(w.windows_ms, vec![4.0]);
    assert_eq!(w.never, 1, "n3 never served p2");
}

#[test]
fn malformed_lines_are_refused_with_their_number() {
    let text = "{\"client\":1,\"op\":\"read\",\"key\":\"k\",\"start_ns\":1,\"end_ns\":2,\"outcome\":\"ok\"}\n\
                {\"client\":1,\"op\":\"write\",\"key\":\"k\",\"start_ns\":5,\"end_ns\":2,\"outcome\":\"ok\",\"value\":\"x\"}\n";
    let e = parse(text.as_bytes()).expect_err("end before start");
    assert!(e.to_string().starts_with("line 2:"), "{e}");
    let e = parse("{\"op\":\"frobnicate\"}".as_bytes()).expect_err("unknown op");
    assert!(e.to_string().starts_with("line 1:"), "{e}");
}
