//! Histories recorded from real clusters and judged by kv-checker: leader-follower with
//! W=majority and leader reads stays linearizable through a partition and a leader kill (with
//! the log compacted every 20 entries, so nodes come back by snapshot); a
//! follower read, leaderless R=W=1 under a partition, and a W=1 write lost in a fail-over each
//! produce a violation the checker finds (and pictures, in the test output).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_checker::{KeyVerdict, OpKind, Verdict};
use kv_proto::kv::v1 as pb;
use kv_tests::cluster::Cluster;
use kv_tests::history::Recorder;
use kv_tests::kvctl;
use tokio::sync::Mutex;

/// Multi-process clusters: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

type Client = pb::kv_client::KvClient<tonic::transport::Channel>;

fn lazy_client(c: &Cluster, i: usize) -> Client {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[i].endpoint()))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(300));
    pb::kv_client::KvClient::new(ep.connect_lazy())
}

fn leader_reads() -> pb::Consistency {
    pb::Consistency {
        read_from: pb::ReadFrom::Leader as i32,
        ..Default::default()
    }
}

fn cut_off(c: &Cluster, i: usize) {
    let others: Vec<&str> = (0..c.ids.len())
        .filter(|&j| j != i)
        .map(|j| c.ids[j].as_str())
        .collect();
    let r = kvctl(
        &c.endpoints(),
        &[
            "fault",
            "partition",
            &format!("{}/{}", c.ids[i], others.join(",")),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
}

fn heal(c: &Cluster) {
    let r = kvctl(&c.endpoints(), &["fault", "heal"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// The single violation of a report, asserting the culprit is a read of `key`.
fn violation_on(report: &kv_checker::Report, key: &str) {
    assert_eq!(report.verdict(), Verdict::Violation);
    match report.keys.get(key) {
        Some(KeyVerdict::Violation(v)) => {
            assert_eq!(v.ops[v.culprit].op, OpKind::Read, "{v:#?}");
        }
        other => panic!("expected a violation on {key}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_follower_majority_writes_and_leader_reads_stay_linearizable_under_faults() {
    let _serial = SERIAL.lock().await;
    // Compacting every 20 entries: the node cut off and the leader killed come back behind
    // the others' logs and catch up by snapshot, inside the recorded history.
    let mut c = Cluster::start(3, &["--snapshot-entries", "20"])
        .await
        .expect("cluster");
    let rec = Arc::new(Recorder::default());
    let stop = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for id in 0..4u64 {
        let rec = rec.clone();
        let clients: Vec<Client> = (0..3).map(|i| lazy_client(&c, i)).collect();
        tasks.push(tokio::spawn(async move {
            let mut clients = clients;
            let mut at = id as usize % 3;
            let mut n = 0u64;
            while Instant::now() < stop {
                n += 1;
                let key = format!("k{}", (id + n) % 3);
                let ok = if n.is_multiple_of(2) {
                    rec.put(
                        &mut clients[at],
                        id,
                        &key,
                        &format!("c{id}-{n}"),
                        leader_reads(),
                    )
                    .await
                } else {
                    rec.get(&mut clients[at], id, &key, leader_reads())
                        .await
                        .is_some()
                };
                if !ok {
                    // Not the leader, or gone: try the next node.
                    at = (at + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = c
        .wait_leader(Duration::from_secs(5), None)
        .await
        .expect("leader");
    cut_off(&c, leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    heal(&c);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = c
        .wait_leader(Duration::from_secs(5), None)
        .await
        .expect("leader");
    c.nodes[leader].kill9();
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.nodes[leader].start_again().expect("restart");
    for t in tasks {
        t.await.expect("client");
    }
    let ops = rec.ops();
    let ok = ops
        .iter()
        .filter(|o| o.outcome == kv_checker::Outcome::Ok)
        .count();
    assert!(ok > 100, "the clients got work done: {ok} of {}", ops.len());
    let report = rec.check("lf-majority-leader-reads");
    assert_eq!(report.verdict(), Verdict::Linearizable, "{:?}", report.keys);
    assert!(
        c.metric_sum("kv_snapshots_installed_total") >= 1.0,
        "a node came back by snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_read_from_a_partitioned_follower_is_a_violation_the_checker_finds() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, &[]).await.expect("cluster");
    let leader = c
        .wait_leader(Duration::from_secs(5), None)
        .await
        .expect("leader");
    let follower = (leader + 1) % 3;
    let rec = Recorder::default();
    let mut l = lazy_client(&c, leader);
    let mut f = lazy_client(&c, follower);
    let any = pb::Consistency {
        read_from: pb::ReadFrom::Any as i32,
        ..Default::default()
    };
    assert!(rec.put(&mut l, 1, "x", "v1", leader_reads()).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rec.get(&mut f, 2, "x", any).await != Some(Some("v1".into())) {
        assert!(Instant::now() < deadline, "the follower applies v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cut_off(&c, follower);
    assert!(rec.put(&mut l, 1, "x", "v2", leader_reads()).await);
    // The isolated follower still serves what it has: v1, after v2 was acknowledged.
    assert_eq!(rec.get(&mut f, 2, "x", any).await, Some(Some("v1".into())));
    heal(&c);
    violation_on(&rec.check("lf-follower-read"), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_r1_w1_under_a_partition_is_a_violation_the_checker_finds() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_leaderless(5, &["--n", "3", "--r", "1", "--w", "1"])
        .await
        .expect("cluster");
    let key = "contested";
    let reps = kv_replica::leaderless::Ring::new(&c.ids, 64).preference_list(key.as_bytes(), 3);
    let rec = Recorder::default();
    let mut a = lazy_client(&c, reps[0]);
    let mut b = lazy_client(&c, reps[1]);
    let none = pb::Consistency::default();
    assert!(rec.put(&mut a, 1, key, "v0", none).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut_off(&c, reps[0]);
    assert!(rec.put(&mut a, 1, key, "from-a", none).await);
    assert!(rec.put(&mut b, 2, key, "from-b", none).await);
    // Side a does not know of from-b, acknowledged before this read started.
    assert_eq!(
        rec.get(&mut a, 1, key, none).await,
        Some(Some("from-a".into()))
    );
    heal(&c);
    violation_on(&rec.check("leaderless-r1-w1"), key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_write_lost_in_a_fail_over_is_a_violation_the_checker_finds() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, &[]).await.expect("cluster");
    let leader = c
        .wait_leader(Duration::from_secs(5), None)
        .await
        .expect("leader");
    let rec = Recorder::default();
    let mut l = lazy_client(&c, leader);
    assert!(rec.put(&mut l, 1, "x", "before", leader_reads()).await);
    cut_off(&c, leader);
    // W=1: the isolated leader acknowledges on its own durability, before it notices.
    let w1 = pb::Consistency {
        w: 1,
        ..leader_reads()
    };
    assert!(
        rec.put(&mut l, 1, "x", "lost", w1).await,
        "W=1 write acknowledged"
    );
    let new = c
        .wait_leader(Duration::from_secs(5), Some(leader))
        .await
        .expect("a new leader on the majority side");
    let mut n = lazy_client(&c, new);
    // The new leader never had it: a linearizable read after the acknowledgement misses it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = rec.get(&mut n, 2, "x", leader_reads()).await {
            assert_eq!(v, Some("before".into()));
            break;
        }
        assert!(Instant::now() < deadline, "the new leader serves reads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    heal(&c);
    violation_on(&rec.check("lf-w1-failover"), "x");
}
