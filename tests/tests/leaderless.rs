//! Leaderless replication with real processes on loopback: five nodes, N=3. A replica killed
//! with `kill -9` while writes continue gets its hints when it returns; a replica made stale on
//! purpose is repaired by a read; anti-entropy repairs a key nobody reads; R=W=1 under a
//! partition gives stale reads and concurrent writes, and the conflicts are counted; a node
//! killed and started again gives versions above the clock bound it recorded; nodes whose wall
//! clocks step back (libfaketime) still deliver their hints; a replica with a slow disk holds
//! no write back; a power failure of every node at once loses no acknowledged write; replicas
//! cut off one way leave no write unaccounted for; `kvctl cluster audit` finds every write
//! a run acknowledged in the copies the nodes hold, and the copies converged; replicas reading
//! `last-durable` answer with the copy before a write still being flushed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_proto::kv::v1 as pb;
use kv_replica::leaderless::Ring;
use kv_tests::cluster::Cluster;
use kv_tests::kvctl;
use tokio::sync::Mutex;

/// Five-process clusters: one at a time, so timing is not at the mercy of other clusters.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// N=3 R=2 W=2.
const NRW: [&str; 6] = ["--n", "3", "--r", "2", "--w", "2"];

/// The replicas of `key` (indexes into the cluster's nodes), as every node computes them.
fn replicas(c: &Cluster, key: &str) -> Vec<usize> {
    Ring::new(&c.ids, 64).preference_list(key.as_bytes(), 3)
}

/// Node `i`'s own copy of `key` (`--read-from local`), or "" when it holds none.
fn local(c: &Cluster, i: usize, key: &str) -> String {
    let r = kvctl(
        &c.nodes[i].endpoint(),
        &["get", key, "--read-from", "local"],
    );
    if r.code == 0 { r.stdout } else { String::new() }
}

/// Waits until `f` holds, or fails with `what` after `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use kv_tests::put_request as put;

fn get(key: &str, r: u32) -> pb::GetRequest {
    pb::GetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        consistency: Some(pb::Consistency {
            r,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_gets_its_hints_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // Anti-entropy off: what reaches the returning node here comes from hints. One thread per
    // node (tokio's current-thread scheduler), as the benchmarks run them.
    let extra = ["--anti-entropy-interval", "0s", "--worker-threads", "1"];
    let mut c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let victim = 2;
    let keys: Vec<String> = (0..60)
        .map(|i| format!("key-{i}"))
        .filter(|k| replicas(&c, k).contains(&victim))
        .collect();
    assert!(keys.len() > 10, "enough keys on the victim");
    let mut client = c.client(0).await.expect("client");
    for k in &keys {
        client.put(put(k, "before", 0)).await.expect("put before");
    }
    c.nodes[victim].kill9();
    // Writes continue: every one is acknowledged by the two live replicas. One forwarded to
    // the victim before n1 noticed its death ends "outcome unknown" (n1 cannot tell whether
    // it ran it; running it again elsewhere could give one write two versions), and the
    // client's retry succeeds.
    let mut unknown = 0;
    for k in &keys {
        let r = loop {
            match client.put(put(k, "after", 0)).await {
                Ok(r) => break r,
                Err(e) if e.code() == tonic::Code::Unknown && unknown == 0 => unknown += 1,
                Err(e) => panic!("put after the kill: {e:?}"),
            }
        };
        let meta = r.into_inner().meta.expect("meta");
        assert!(!meta.degraded && meta.achieved.expect("achieved").w >= 2);
    }
    eventually(5, "hints stored for the dead replica", || {
        c.metric_sum("kv_hints_pending") >= keys.len() as f64
    })
    .await;
    let st = kvctl(&c.endpoints(), &["status"]);
    assert!(
        st.stdout.contains("HINTS") && st.stdout.contains("down"),
        "status shows the dead node and the hints: {st:?}"
    );
    // The dead node's row says how many hints the others hold for it.
    let held = c.metric_sum("kv_hints_pending") as u64;
    let row = format!("{} hint(s) held for it by the others", held);
    let down = st
        .stdout
        .lines()
        .find(|l| l.contains(" down"))
        .expect("a down row");
    assert!(
        down.starts_with(&c.ids[victim]) && down.ends_with(&row),
        "{down:?} names {} and {row:?}",
        c.ids[victim]
    );
    c.nodes[victim].start_again().expect("restart");
    eventually(10, "every hint delivered", || {
        c.metric_sum("kv_hints_pending") == 0.0
    })
    .await;
    assert!(c.metric_sum("kv_hints_delivered_total") >= keys.len() as f64);
    for k in &keys {
        assert_eq!(local(&c, victim, k), "after", "{k} on the returned replica");
    }
}

/// Starts five nodes without hinted handoff and cuts off the third replica of
/// `key` while `key` is rewritten from v1 to v2 (`extra`: more node flags). Returns the
/// cluster and the stale replica.
async fn stale_third_replica(key: &str, anti_entropy: &str, extra: &[&str]) -> (Cluster, usize) {
    let mut args = NRW.to_vec();
    args.extend_from_slice(&[
        "--disable-hinted-handoff",
        "--anti-entropy-interval",
        anti_entropy,
    ]);
    args.extend_from_slice(extra);
    let c = Cluster::start_leaderless(5, &args).await.expect("cluster");
    let eps = c.endpoints();
    let reps = replicas(&c, key);
    let stale = reps[2];
    let mut client = c.client(reps[0]).await.expect("client");
    client.put(put(key, "v1", 0)).await.expect("put");
    eventually(5, "v1 on the third replica", || {
        local(&c, stale, key) == "v1"
    })
    .await;
    let cut = c.ids[stale].clone();
    let others: Vec<&str> = c
        .ids
        .iter()
        .filter(|i| **i != cut)
        .map(String::as_str)
        .collect();
    let r = kvctl(
        &eps,
        &["fault", "partition", &format!("{cut}/{}", others.join(","))],
    );
    assert_eq!(r.code, 0, "{r:?}");
    client.put(put(key, "v2", 0)).await.expect("put v2");
    let r = kvctl(&eps, &["fault", "heal"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(local(&c, stale, key), "v1", "the replica is stale");
    (c, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_replica_is_repaired_by_a_read() {
    let _serial = SERIAL.lock().await;
    // Anti-entropy off: only the read can repair.
    let (c, stale) = stale_third_replica("read-me", "0s", &[]).await;
    // A read through any node asks all three replicas; the stale one, answering or late, is
    // sent the newest version.
    let other = (0..5)
        .find(|i| !replicas(&c, "read-me").contains(i))
        .expect("non-replica");
    let mut client = c.client(other).await.expect("client");
    let got = client
        .get(get("read-me", 2))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.value, Bytes::from("v2"));
    eventually(5, "the stale replica repaired by the read", || {
        local(&c, stale, "read-me") == "v2"
    })
    .await;
    assert!(c.metric_sum("kv_read_repairs_total") >= 1.0);
}

/// A replica whose disk is slow holds no write back (the coordinator "does not wait for slow
/// replicas beyond" W): with n1's flushes 1 s slower (`kvctl fault disk`), writes to keys n1
/// holds, n1 coordinating some of them, are acknowledged by the other two replicas well
/// before n1's flush is done — a coordinator's own copy waits for no flush of its own while
/// its other replicas can make W — and n1 still stores each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_slow_disk_holds_no_write_back() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_leaderless(5, &NRW).await.expect("cluster");
    let eps = c.endpoints();
    let r = kvctl(&eps, &["fault", "disk", "n1", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let keys: Vec<String> = (0..200)
        .map(|i| format!("slow-{i}"))
        .filter(|k| replicas(&c, k).contains(&0))
        .take(12)
        .collect();
    assert!(
        keys.iter().any(|k| replicas(&c, k)[0] == 0),
        "n1 coordinates some: {keys:?}"
    );
    for k in &keys {
        let t0 = Instant::now();
        let r = kvctl(&eps, &["put", k, "v"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "{k} (replicas {:?}) took {:?}: it waited for n1's disk",
            replicas(&c, k),
            t0.elapsed()
        );
    }
    eventually(20, "n1 storing every write", || {
        keys.iter().all(|k| local(&c, 0, k) == "v")
    })
    .await;
}

/// `--replica-read`: with every node's flushes 1 s slower (`kvctl fault disk`), a read of a key
/// whose newer write is still waiting for its flushes gets, under `last-durable`, the copy
/// before that write (what the replicas hold durably), and under `newest` (the default) the
/// write's own value, once it is durable. Either way the write is then acknowledged and read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_read_last_durable_answers_with_the_copy_before_a_write_in_flight() {
    for (mode, expected) in [("last-durable", "v1"), ("newest", "v2")] {
        let _serial = SERIAL.lock().await;
        let mut args = NRW.to_vec();
        args.extend_from_slice(&["--replica-read", mode]);
        let c = Cluster::start_leaderless(5, &args).await.expect("cluster");
        let eps = c.endpoints();
        let r = kvctl(&eps, &["put", "inflight", "v1"]);
        assert_eq!(r.code, 0, "{r:?}");
        for id in &c.ids {
            let r = kvctl(&eps, &["fault", "disk", id, "1s"]);
            assert_eq!(r.code, 0, "{r:?}");
        }
        let writer = {
            let eps = eps.clone();
            std::thread::spawn(move || kvctl(&eps, &["put", "inflight", "v2"]))
        };
        // The write has reached its replicas' logs; their flushes take a second.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = kvctl(&eps, &["get", "inflight"]);
        assert_eq!(r.code, 0, "{mode}: {r:?}");
        assert_eq!(r.stdout, expected, "{mode}: read while v2 is in flight");
        let w = writer.join().expect("writer");
        assert_eq!(w.code, 0, "{mode}: {w:?}");
        let r = kvctl(&eps, &["get", "inflight"]);
        assert_eq!(r.stdout, "v2", "{mode}: once acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_read_fanout_asks_r_replicas_own_copy_first() {
    let _serial = SERIAL.lock().await;
    let (c, stale) = stale_third_replica("fan", "0s", &["--read-fanout", "quorum"]).await;
    let reps = replicas(&c, "fan");
    // Through the first replica: its own copy and the second's, both fresh; the stale third
    // is not asked, so nothing is repaired.
    let mut first = c.client(reps[0]).await.expect("client");
    for _ in 0..5 {
        let got = first.get(get("fan", 2)).await.expect("get").into_inner();
        assert_eq!(got.value, Bytes::from("v2"));
        let mut responders = got.meta.expect("meta").replicas;
        responders.sort();
        let mut expected = vec![c.ids[reps[0]].clone(), c.ids[reps[1]].clone()];
        expected.sort();
        assert_eq!(responders, expected);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        local(&c, stale, "fan"),
        "v1",
        "the third replica was not asked"
    );
    assert_eq!(c.metric_sum("kv_read_repairs_total"), 0.0);
    // Through the stale replica: its own copy first, found stale against the other, repaired.
    let mut third = c.client(stale).await.expect("client");
    let got = third.get(get("fan", 2)).await.expect("get").into_inner();
    assert_eq!(
        got.value,
        Bytes::from("v2"),
        "R=2 still sees the newest write"
    );
    eventually(5, "the stale coordinator repaired by its own read", || {
        local(&c, stale, "fan") == "v2"
    })
    .await;
    assert!(c.metric_sum("kv_read_repairs_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_key_nobody_reads() {
    let _serial = SERIAL.lock().await;
    let (c, stale) = stale_third_replica("never-read", "1s", &[]).await;
    eventually(15, "anti-entropy repaired the unread key", || {
        local(&c, stale, "never-read") == "v2"
    })
    .await;
    assert!(c.metric_sum("kv_anti_entropy_repairs_total") >= 1.0);
    assert_eq!(c.metric_sum("kv_read_repairs_total"), 0.0, "no read did it");
}

/// A replica cut off (hinted handoff off) misses a delete for longer than the grace period
/// (1 s). Returns the cluster and the key's replicas, the cut-off one last, once the other
/// two have either purged the tombstone or, waiting for proof that the third holds it,
/// report it in `kv_tombstones_awaiting_repair`; the partition is healed.
async fn delete_missed_past_its_grace(key: &str, gc: &str) -> (Cluster, Vec<usize>) {
    let mut args = NRW.to_vec();
    args.extend_from_slice(&[
        "--disable-hinted-handoff",
        "--anti-entropy-interval",
        "300ms",
        "--tombstone-grace",
        "1s",
        "--tombstone-gc",
        gc,
    ]);
    let c = Cluster::start_leaderless(5, &args).await.expect("cluster");
    let eps = c.endpoints();
    let reps = replicas(&c, key);
    let cut = reps[2];
    let r = kvctl(&c.nodes[reps[0]].endpoint(), &["put", key, "v1"]);
    assert_eq!(r.code, 0, "{r:?}");
    eventually(5, "v1 on the third replica", || local(&c, cut, key) == "v1").await;
    let others: Vec<&str> = (0..5)
        .filter(|&i| i != cut)
        .map(|i| c.ids[i].as_str())
        .collect();
    let r = kvctl(
        &eps,
        &[
            "fault",
            "partition",
            &format!("{}/{}", c.ids[cut], others.join(",")),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = kvctl(&c.nodes[reps[0]].endpoint(), &["delete", key]);
    assert_eq!(r.code, 0, "{r:?}");
    let done = |i: usize| {
        c.metric(i, "kv_tombstones_purged_total") >= 1.0
            || c.metric(i, "kv_tombstones_awaiting_repair") >= 1.0
    };
    eventually(
        15,
        "the tombstone past its grace period on both replicas that hold it",
        || done(reps[0]) && done(reps[1]),
    )
    .await;
    assert_eq!(
        local(&c, cut, key),
        "v1",
        "the cut-off replica missed the delete"
    );
    let r = kvctl(&eps, &["fault", "heal"]);
    assert_eq!(r.code, 0, "{r:?}");
    (c, reps)
}

/// Purged by age alone (`--tombstone-gc timeout`, Cassandra's rule), a delete that one
/// replica missed for longer than the grace period comes back: the two that held the
/// tombstone purge it, and anti-entropy then copies the old value back from the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_by_age_a_delete_missed_past_its_grace_comes_back() {
    let _serial = SERIAL.lock().await;
    let key = "zombie";
    let (c, reps) = delete_missed_past_its_grace(key, "timeout").await;
    assert!(c.metric(reps[0], "kv_tombstones_purged_total") >= 1.0);
    assert_eq!(c.metric(reps[0], "kv_tombstones_awaiting_repair"), 0.0);
    eventually(15, "the deleted value back on every replica", || {
        reps.iter().all(|&i| local(&c, i, key) == "v1")
    })
    .await;
}

/// Purged only once every replica is known to hold the tombstone (the default,
/// `--tombstone-gc repair`), the same delete stays: the two replicas that hold it keep it past
/// its grace period while the third is cut off (`kv_tombstones_awaiting_repair`), anti-entropy
/// gives it to the third once healed, and then all three purge it. The key stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_after_repair_a_delete_missed_past_its_grace_stays_deleted() {
    let _serial = SERIAL.lock().await;
    let key = "zombie";
    let (c, reps) = delete_missed_past_its_grace(key, "repair").await;
    assert_eq!(c.metric(reps[0], "kv_tombstones_purged_total"), 0.0);
    assert!(c.metric(reps[0], "kv_tombstones_awaiting_repair") >= 1.0);
    eventually(20, "the tombstone purged by all three replicas", || {
        reps.iter()
            .all(|&i| c.metric(i, "kv_tombstones_purged_total") >= 1.0)
    })
    .await;
    for &i in &reps {
        assert_eq!(local(&c, i, key), "", "n{} holds nothing of the key", i + 1);
        assert_eq!(c.metric(i, "kv_tombstones_awaiting_repair"), 0.0);
    }
    let r = kvctl(&c.endpoints(), &["get", key, "--r", "3"]);
    assert_eq!(r.code, 1, "not found: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_w1_under_a_partition_reads_stale_and_writes_concurrently_and_counts_it() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_leaderless(
        5,
        &[
            "--n",
            "3",
            "--r",
            "1",
            "--w",
            "1",
            "--anti-entropy-interval",
            "1s",
        ],
    )
    .await
    .expect("cluster");
    let eps = c.endpoints();
    let key = "contested";
    let reps = replicas(&c, key);
    // One replica (and a non-replica) on one side, the other two replicas on the other.
    let side_a: Vec<usize> = vec![reps[0]];
    let side_b: Vec<usize> = (0..5).filter(|i| !side_a.contains(i)).collect();
    let names = |v: &[usize]| {
        v.iter()
            .map(|&i| c.ids[i].clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut a = c.client(side_a[0]).await.expect("client a");
    let mut b = c.client(reps[1]).await.expect("client b");
    a.put(put(key, "v0", 0)).await.expect("put v0");
    eventually(5, "v0 everywhere", || {
        reps.iter().all(|&i| local(&c, i, key) == "v0")
    })
    .await;

    let r = kvctl(
        &eps,
        &[
            "fault",
            "partition",
            &format!("{}/{}", names(&side_a), names(&side_b)),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    // Both sides accept a write (W=1): neither knows of the other's.
    a.put(put(key, "from-a", 0)).await.expect("write on side a");
    let later = b
        .put(put(key, "from-b", 0))
        .await
        .expect("write on side b")
        .into_inner();
    // A read on side a after side b's write was acknowledged returns the older value: stale.
    let read = a
        .get(get(key, 1))
        .await
        .expect("read on side a")
        .into_inner();
    assert_eq!(read.value, Bytes::from("from-a"));
    let (rv, lv) = (
        read.version.expect("version"),
        later.version.expect("version"),
    );
    assert!(
        (rv.epoch, rv.counter) < (lv.epoch, lv.counter),
        "the read missed a write acknowledged before it started"
    );
    assert!(
        read.meta.expect("meta").stale,
        "and the answer says it may be stale"
    );

    let r = kvctl(&eps, &["fault", "heal"]);
    assert_eq!(r.code, 0, "{r:?}");
    // After healing, the concurrent writes meet: last-writer-wins keeps from-b, and the
    // conflict is counted.
    eventually(15, "the conflict detected and counted", || {
        c.metric_sum("kv_conflicting_writes_total") >= 1.0
    })
    .await;
    eventually(15, "replicas converge on the later write", || {
        reps.iter().all(|&i| local(&c, i, key) == "from-b")
    })
    .await;
}

/// A write sent the moment a partition is set, to a replica cut off from the key's first
/// replica, is coordinated on its own side. Before, the node learnt of the partition at its
/// next 10 ms tick: a write that came first was forwarded into the partition and ended
/// "outcome unknown" (seen in CI as a failure of the R=W=1 test above). The partition is set
/// through the Admin API, the writer's node last, and the write follows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_right_after_a_partition_is_coordinated_on_its_side() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_leaderless(5, &["--n", "3", "--r", "1", "--w", "1"])
        .await
        .expect("cluster");
    let key = "split";
    let reps = replicas(&c, key);
    let (cut, writer) = (reps[0], reps[1]);
    let mut admin = Vec::new();
    for n in &c.nodes {
        let a = pb::admin_client::AdminClient::connect(format!("http://{}", n.endpoint()))
            .await
            .expect("admin client");
        admin.push(a);
    }
    let mut b = c.client(writer).await.expect("client");
    let order: Vec<usize> = (0..5).filter(|&i| i != writer).chain([writer]).collect();
    for round in 0..20 {
        for &i in &order {
            let block = if i == cut {
                (0..5)
                    .filter(|&j| j != cut)
                    .map(|j| c.ids[j].clone())
                    .collect()
            } else {
                vec![c.ids[cut].clone()]
            };
            let spec = pb::FaultSpec {
                block,
                ..Default::default()
            };
            admin[i].set_faults(spec).await.expect("partition");
        }
        let done = b
            .put(put(key, &format!("v{round}"), 1))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .into_inner();
        let coordinator = done.meta.expect("meta").coordinator;
        assert_ne!(
            coordinator, c.ids[cut],
            "round {round}: coordinated across the partition"
        );
        for a in &mut admin {
            a.set_faults(pb::FaultSpec::default()).await.expect("heal");
        }
        // Every node sees the others again (reconnected, ticked) before the next round.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_with_the_replicas_named_or_degrades_when_asked() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(5, &NRW).await.expect("cluster");
    let key = "lonely";
    let reps = replicas(&c, key);
    let survivor = reps[0];
    c.nodes[reps[1]].kill9();
    c.nodes[reps[2]].kill9();
    let ep = c.nodes[survivor].endpoint();
    // The survivor learns the two are gone, then refuses at once: nothing was written.
    eventually(5, "a definite refusal naming the replicas", || {
        let r = kvctl(&ep, &["put", key, "x"]);
        r.code != 0 && r.stderr.contains("2 of 3 acks needed, got 0")
    })
    .await;
    let r = kvctl(&ep, &["put", key, "y"]);
    assert_eq!(r.code, 3, "UNAVAILABLE: definitely not applied: {r:?}");
    for id in [&c.ids[reps[1]], &c.ids[reps[2]]] {
        assert!(r.stderr.contains(&format!("{id} partitioned")), "{r:?}");
    }
    // The survivor was not asked (nothing was sent), not "timeout" as it said before.
    let me = &c.ids[survivor];
    assert!(r.stderr.contains(&format!("{me} not asked")), "{r:?}");
    assert_ne!(local(&c, survivor, key), "y", "nothing written");
    // Degrade: the write is taken by the one replica there is, and the answer says so.
    let r = kvctl(
        &ep,
        &[
            "put",
            key,
            "x",
            "--on-quorum-loss",
            "degrade",
            "--output",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"degraded\":true"), "{r:?}");
    let r = kvctl(
        &ep,
        &[
            "get",
            key,
            "--on-quorum-loss",
            "degrade",
            "--output",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"degraded\":true"), "{r:?}");
    // In text mode the note on stderr says how it was degraded (not, as it did, that it had
    // no leader's confirmation: there is no leader in this mode).
    let r = kvctl(&ep, &["get", key, "--on-quorum-loss", "degrade"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "x"), "{r:?}");
    let me = &c.ids[survivor];
    assert!(
        r.stderr.contains(&format!(
            "answered degraded, with 1 replica(s) ({me}) where more were asked: it may be stale"
        )),
        "{r:?}"
    );
    assert!(c.metric(survivor, "kv_degraded_responses_total") >= 3.0);
    // Compare-and-set needs one order of writes: refused in this mode, with the reason.
    let r = kvctl(&ep, &["cas", key, "1.1", "y"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("leaderless"), "{r:?}");
}

/// One-way cuts (`kvctl fault cut`, the senders not told). A replica that hears nobody: its
/// coordinator sees it connected and gets no acknowledgement, so writes are acknowledged by the
/// other two and the silent one gets a hint, delivered once healed. A coordinator nobody
/// hears: its own copy is stored and its requests to the other replicas are lost, so a write
/// through it may have happened (it holds it) and is answered "outcome unknown" (exit 4), not
/// "definitely failed"; a read through it cannot have R answers and is refused with the
/// replicas it lacked, or answered degraded when asked; a write through another replica,
/// forwarded to it as the key's coordinator, may end "outcome unknown" once, and its retry
/// goes to the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_cut_off_one_way_leave_no_write_unaccounted_for() {
    let _serial = SERIAL.lock().await;
    let extra = ["--anti-entropy-interval", "0s"];
    let c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let eps = c.endpoints();
    let key = "one-way";
    let reps = replicas(&c, key);
    let (a, deaf) = (reps[0], reps[2]);
    let others = |x: usize| -> String {
        (0..5)
            .filter(|&i| i != x)
            .map(|i| c.ids[i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let via = |i: usize, args: &[&str]| kvctl(&c.nodes[i].endpoint(), args);
    assert_eq!(via(a, &["put", key, "v1"]).code, 0);
    eventually(5, "v1 on every replica", || {
        reps.iter().all(|&r| local(&c, r, key) == "v1")
    })
    .await;

    // A replica that hears nobody.
    let r = kvctl(&eps, &["fault", "cut", &others(deaf), &c.ids[deaf]]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = via(a, &["put", key, "v2", "--output", "json"]);
    assert_eq!(r.code, 0, "acknowledged by the two that hear: {r:?}");
    assert!(r.stdout.contains("\"acks\":2"), "{r:?}");
    eventually(5, "a hint held for the silent replica", || {
        c.metric_sum("kv_hints_pending") >= 1.0
    })
    .await;
    assert_eq!(local(&c, deaf, key), "v1", "the deaf replica missed v2");
    assert_eq!(kvctl(&eps, &["fault", "heal"]).code, 0);
    eventually(10, "v2 delivered to the replica that heard nobody", || {
        local(&c, deaf, key) == "v2"
    })
    .await;

    // A coordinator nobody hears.
    let r = kvctl(&eps, &["fault", "cut", &c.ids[a], &others(a)]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = via(a, &["--timeout", "1s", "put", key, "v3"]);
    assert_eq!(r.code, 4, "it holds its own copy: outcome unknown: {r:?}");
    assert_eq!(local(&c, a, key), "v3", "the coordinator's own copy");
    // The coordinator gives up a little before the client does, so the client hears why,
    // and a read asking to degrade gets the one copy there is (at kvctl's and the node's
    // default timeouts, both 2 s, both ended in the client's own "Timeout expired").
    let r = via(a, &["get", key]);
    assert_eq!(r.code, 3, "no R answers: refused: {r:?}");
    assert!(r.stderr.contains("2 of 3 responses needed, got 1"), "{r:?}");
    let r = via(a, &["get", key, "--on-quorum-loss", "degrade"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "v3"), "{r:?}");
    assert!(r.stderr.contains("answered degraded"), "{r:?}");
    // A write through another replica goes first to the key's coordinator, the cut-off node,
    // which runs it (its own copy) and cannot answer: outcome unknown. That node is then
    // suspect, and the retry is coordinated by the next replica.
    let b = reps[1];
    let r = via(b, &["put", key, "v4"]);
    if r.code != 0 {
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("may have taken effect"), "{r:?}");
        let r = via(b, &["put", key, "v4"]);
        assert_eq!(r.code, 0, "the retry goes to the next replica: {r:?}");
    }
    assert_eq!(kvctl(&eps, &["fault", "heal"]).code, 0);
    let r = via(b, &["get", key, "--r", "3"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "v4"), "{r:?}");
}

/// kvctl against a partitioned leaderless cluster, with every node in `--endpoints` and the
/// first two cut off in a minority that holds one of the key's three replicas: those two
/// refuse (too few replicas reachable, nothing sent), and kvctl goes on to a node on the
/// majority side, which writes with W=2, as a Cassandra driver tries the next host. With only
/// minority nodes listed, the refusal says that each of them was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_asks_another_coordinator_when_the_first_cannot_reach_a_quorum() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_leaderless(5, &NRW).await.expect("cluster");
    let key = "across";
    let reps = replicas(&c, key);
    let outsider = (0..5)
        .find(|i| !reps.contains(i))
        .expect("a node holding no copy");
    let minority = [reps[0], outsider];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();
    let names = |ix: &[usize]| -> Vec<String> { ix.iter().map(|&i| c.ids[i].clone()).collect() };
    let spec = format!(
        "{}/{}",
        names(&minority).join(","),
        names(&majority).join(",")
    );
    assert_eq!(
        kvctl(&c.endpoints(), &["fault", "partition", &spec]).code,
        0
    );
    // Each side's metrics say whom it reaches (the driver looks again every tick).
    for (i, j) in [(minority[0], minority[1]), (minority[0], majority[0])] {
        let name = format!("kv_peer_reachable{{peer=\"{}\"}}", c.ids[j]);
        let want = f64::from(u8::from(j == minority[1]));
        let what = format!("{} -> {} reachable {want}", c.ids[i], c.ids[j]);
        eventually(5, &what, || c.metric(i, &name) == want).await;
    }
    let eps = |ix: &[usize]| -> String {
        ix.iter()
            .map(|&i| c.nodes[i].endpoint())
            .collect::<Vec<_>>()
            .join(",")
    };
    let all: Vec<usize> = minority.iter().chain(&majority).copied().collect();
    let r = kvctl(&eps(&all), &["put", key, "v1", "--output", "json"]);
    assert_eq!(r.code, 0, "written through the majority side: {r:?}");
    let coordinator = serde_json::from_str::<serde_json::Value>(&r.stdout).expect("json")["node"]
        .as_str()
        .expect("coordinator")
        .to_string();
    assert!(
        names(&majority).contains(&coordinator),
        "coordinated on the majority side, not by {coordinator}"
    );
    let r = kvctl(&eps(&all), &["get", key]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "v1"), "{r:?}");
    // Only the minority listed: a definite refusal (exit 3), both asked, nothing written.
    let r = kvctl(&eps(&minority), &["put", key, "v2"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("2 of 3 acks needed"), "{r:?}");
    assert!(
        r.stderr
            .contains("and 1 other node(s) asked could not reach a quorum either"),
        "{r:?}"
    );
    for &i in &minority {
        assert_ne!(local(&c, i, key), "v2", "the refused write left nothing");
    }
}

/// Last-writer-wins under clock skew, with kvctl as a user would: a write coordinated by a
/// node whose clock is 10 s ahead, then a later write coordinated by a replica that was cut off
/// meanwhile (never told of the first, so its hybrid clock did not move past it). The later
/// write is acknowledged by W=2 replicas, yet a quorum read returns the earlier one: its
/// version is higher. Counted as a conflicting write, and the answer names the replica that
/// hides it; kv-bench counts such answers. (Hints and anti-entropy off: nothing tells the
/// second coordinator of the first write before it writes. And the second has heard its
/// peers' clocks before the first's is set ahead: a node that has heard none since it started
/// asks the key's other replicas before it coordinates, and would have learnt of it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_ahead_lets_an_earlier_write_hide_a_later_acknowledged_one() {
    let _serial = SERIAL.lock().await;
    let extra = ["--disable-hinted-handoff", "--anti-entropy-interval", "0s"];
    let c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let eps = c.endpoints();
    let key = "skewed";
    let reps = replicas(&c, key);
    let (a, b) = (reps[0], reps[1]);
    let (ida, idb) = (c.ids[a].as_str(), c.ids[b].as_str());
    let others = |x: usize| {
        (0..5)
            .filter(|&i| i != x)
            .map(|i| c.ids[i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let epoch = |version: &str| -> u64 {
        version
            .split('.')
            .next()
            .and_then(|e| e.parse().ok())
            .expect("EPOCH.COUNTER")
    };
    let warm = kvctl(&c.nodes[b].endpoint(), &["put", "warm-up", "x"]);
    assert_eq!(warm.code, 0, "{warm:?}");
    let r = kvctl(&eps, &["fault", "clock", ida, "+10s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("{ida}: clock 10000ms ahead")),
        "{r:?}"
    );
    // b cut off; the clock set on a stays.
    let r = kvctl(
        &eps,
        &["fault", "partition", &format!("{idb}/{}", others(b))],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("clock 10000ms ahead"), "kept: {r:?}");
    let st = kvctl(&eps, &["status"]);
    assert!(
        st.stdout.contains(&format!(
            "fault on {ida}: cut off from {idb}; clock 10000ms ahead"
        )),
        "status shows the faults: {st:?}"
    );
    let bad = kvctl(&eps, &["fault", "clock", ida, "sideways"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("expected e.g. +5s or -500ms"),
        "{bad:?}"
    );
    let early = kvctl(&c.nodes[a].endpoint(), &["put", key, "early"]);
    assert_eq!(early.code, 0, "{early:?}");
    // Now a is cut off and b is back: b coordinates, with its own clock.
    let r = kvctl(
        &eps,
        &["fault", "partition", &format!("{ida}/{}", others(a))],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let late = kvctl(
        &c.nodes[b].endpoint(),
        &["--output", "json", "put", key, "late"],
    );
    assert_eq!(late.code, 0, "acknowledged: {late:?}");
    let v: serde_json::Value = serde_json::from_str(&late.stdout).expect("json");
    assert_eq!(v["node"], idb, "b coordinated it: {late:?}");
    assert_eq!(v["acks"], 2, "{late:?}");
    // The third replica already held the earlier write, with its higher version, and said so:
    // the answer names it.
    let idc = c.ids[reps[2]].as_str();
    assert_eq!(v["superseded_on"], serde_json::json!([idc]), "{late:?}");
    // The two that acknowledged it: b and that third replica (a was cut off).
    let mut acked: Vec<&str> = v["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    acked.sort_unstable();
    let mut want = vec![idb, idc];
    want.sort_unstable();
    assert_eq!(acked, want, "{late:?}");
    let late_version = v["version"].as_str().expect("version");
    assert!(
        epoch(late_version) < epoch(&early.stdout),
        "the later write has the lower version: {late_version} vs {}",
        early.stdout
    );
    assert_eq!(kvctl(&eps, &["fault", "heal"]).code, 0);
    let r = kvctl(&eps, &["get", key]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "early"),
        "the acknowledged later write is hidden: {r:?}"
    );
    assert!(
        c.metric_sum("kv_conflicting_writes_total") >= 1.0,
        "and counted as a conflict"
    );
    assert_eq!(
        c.metric(b, "kv_superseded_writes_total"),
        1.0,
        "and as a superseded write by its coordinator"
    );

    // The same through kv-bench, which counts such answers: a key of its (prefix chosen so
    // that a and b are its first two replicas) written by a while b is cut off, then writes
    // through b alone while a is cut off. b's first write is hidden on the third replica.
    let prefix = (0..10_000)
        .map(|i| format!("p{i}-"))
        .find(|p| replicas(&c, &format!("{p}key00000000"))[..2] == [a, b])
        .expect("a prefix");
    let key2 = format!("{prefix}key00000000");
    // `heal` set a's clock right: ahead again, past what the others heard of since.
    let r = kvctl(&eps, &["fault", "clock", ida, "+20s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = kvctl(
        &eps,
        &["fault", "partition", &format!("{idb}/{}", others(b))],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let early = kvctl(&c.nodes[a].endpoint(), &["put", &key2, "early"]);
    assert_eq!(early.code, 0, "{early:?}");
    let r = kvctl(
        &eps,
        &["fault", "partition", &format!("{ida}/{}", others(a))],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let (s, printed) = run_writes(
        &c.nodes[b].endpoint(),
        &[
            "--clients",
            "1",
            "--duration",
            "1s",
            "--keys",
            "1",
            "--key-prefix",
            &prefix,
        ],
    );
    assert!(
        s["superseded_writes"].as_u64().is_some_and(|n| n >= 1),
        "counted: {s}"
    );
    assert!(printed.contains("writes hidden on a replica"), "{printed}");
}

/// Runs `kv-bench run` (writes only, `secs` seconds) against the cluster; returns its summary.
fn bench_writes(c: &Cluster, route: &str, secs: u32) -> serde_json::Value {
    let secs = format!("{secs}s");
    let args = [
        "--route",
        route,
        "--clients",
        "4",
        "--duration",
        &secs,
        "--keys",
        "200",
    ];
    run_writes(&c.endpoints(), &args).0
}

/// `kv-bench run --mix read=0,write=100 --warmup 0s` against `endpoints` with `args`; returns
/// its summary and what it printed.
fn run_writes(endpoints: &str, args: &[&str]) -> (serde_json::Value, String) {
    let out = tempfile::tempdir().expect("tempdir");
    let o = std::process::Command::new(kv_tests::bin("kv-bench"))
        .args(["run", "--endpoints", endpoints, "--mix", "read=0,write=100"])
        .args(["--warmup", "0s"])
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("kv-bench");
    assert!(o.status.success(), "kv-bench: {o:?}");
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    (kv_tests::bench_summary(out.path()), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_aware_client_sends_each_write_to_its_coordinator_and_routes_around_a_dead_one() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(5, &NRW).await.expect("cluster");
    let forwarded = |c: &Cluster| c.metric_sum("kv_forwarded_writes_total");
    // Spread over the nodes, most writes land on a node that is not their key's first replica
    // and are forwarded.
    let s = bench_writes(&c, "spread", 2);
    assert_eq!(s["config"]["token_aware"], false);
    let spread_ops = s["ops"].as_u64().expect("ops");
    let f0 = forwarded(&c);
    assert!(
        f0 > spread_ops as f64 / 2.0,
        "{f0} of {spread_ops} forwarded"
    );
    // Token-aware: every write goes straight to its coordinator.
    let s = bench_writes(&c, "auto", 2);
    assert_eq!(s["config"]["token_aware"], true);
    assert!(s["ops"].as_u64().expect("ops") > 100, "{s}");
    assert_eq!(forwarded(&c), f0, "no write forwarded");
    // The first replica of a fifth of the keys killed: the client finds out from an error or
    // from Status and sends those keys to their next replica; no write fails for long.
    c.nodes[0].kill9();
    let s = bench_writes(&c, "auto", 3);
    let errors: u64 = s["errors"]
        .as_object()
        .expect("errors")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    let ops = s["ops"].as_u64().expect("ops");
    assert!(ops > 100, "{s}");
    assert_eq!(errors, 0, "{s}");
}

/// Each node computes the ring from its own flags: one restarted with another `--vnodes` (or
/// `--n`, `--peers`, `--mode`) would place keys on other replicas than the rest, so R+W>N would
/// no longer mean that a read meets the last write. The nodes refuse each other's peer
/// connections instead (so the odd one cannot reach a quorum and fails what it coordinates,
/// while the others go on), `kvctl status` names the setting, who holds which value and who
/// refuses whom (text and JSON), and once the node runs with the same settings it is accepted
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_ring_settings_differ_is_refused_and_status_says_why() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(3, &[]).await.expect("cluster");
    let st = kvctl(&c.endpoints(), &["status"]);
    assert!(
        !st.stdout.contains("MISCONFIGURED") && !st.stdout.contains("REFUSED"),
        "{st:?}"
    );
    c.nodes[2].kill9();
    c.nodes[2].set_env("KV_VNODES", "32");
    c.nodes[2].start_again().expect("n3 with other vnodes");
    let why = "(nodes would place keys on different replicas)";
    let refused = [
        format!("REFUSED: n1 refuses n3: vnodes: n3 32, n1 64 {why}"),
        format!("REFUSED: n2 refuses n3: vnodes: n3 32, n2 64 {why}"),
        format!("REFUSED: n3 refuses n1: vnodes: n1 64, n3 32 {why}"),
        format!("REFUSED: n3 refuses n2: vnodes: n2 64, n3 32 {why}"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        let st = kvctl(&c.endpoints(), &["status"]);
        if refused.iter().all(|r| st.stdout.contains(r.as_str())) || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st.code, 0, "{st:?}");
    for r in &refused {
        assert!(st.stdout.contains(r.as_str()), "{r} missing: {st:?}");
    }
    assert!(
        st.stdout.contains(
            "MISCONFIGURED: vnodes differs between nodes: n3 32; n1,n2 64 (nodes place keys on \
             different replicas"
        ),
        "{st:?}"
    );
    let st = kvctl(&c.endpoints(), &["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("json status");
    let m = v["config_mismatch"].as_array().expect("list");
    assert_eq!(m.len(), 1, "{v}");
    assert!(
        m[0].as_str()
            .is_some_and(|m| m.starts_with("vnodes differs")),
        "{v}"
    );
    assert!(v["nodes"][0]["refusing"]["n3"].is_string(), "{v}");
    assert_eq!(c.metric(0, "kv_peer_refused{peer=\"n3\"}"), 1.0);
    assert_eq!(c.metric(0, "kv_peer_refused{peer=\"n2\"}"), 0.0);
    assert_eq!(c.metric(0, "kv_peer_reachable{peer=\"n3\"}"), 0.0);

    // n3 reaches no peer: what it coordinates fails; n1 and n2 go on without it.
    let through_n3 = kvctl(&c.nodes[2].endpoint(), &["put", "k", "v3"]);
    assert_ne!(through_n3.code, 0, "{through_n3:?}");
    let through_n1 = kvctl(&c.nodes[0].endpoint(), &["put", "k", "v1"]);
    assert_eq!(through_n1.code, 0, "{through_n1:?}");

    c.nodes[2].kill9();
    c.nodes[2].set_env("KV_VNODES", "64");
    c.nodes[2].start_again().expect("n3 as the others");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let put = kvctl(&c.nodes[2].endpoint(), &["put", "k", "v3"]);
        let st = kvctl(&c.endpoints(), &["status"]);
        if put.code == 0
            && !st.stdout.contains("REFUSED")
            && !st.stdout.contains("MISCONFIGURED")
            && c.metric(0, "kv_peer_refused{peer=\"n3\"}") == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 not accepted again: {put:?} {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A leaderless replica back on an empty data directory (a lost disk) is not refused, unlike a
/// leader-follower one: the writes it acknowledged also sit on W-1 other replicas, and it
/// refills itself from them (`a_replica_back_empty_refills_before_its_answers_count` shows
/// why its answers wait for that). The others say so in their logs; it finishes, and they
/// count it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_on_an_empty_data_directory_is_reported_and_taken_back() {
    back_empty_is_reported_and_taken_back(false).await;
}

/// The same for a node in memory started again (it lost everything it held): it takes a new
/// incarnation at every start, which the others, remembering the one they knew, report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_again_in_memory_is_reported_and_taken_back() {
    back_empty_is_reported_and_taken_back(true).await;
}

async fn back_empty_is_reported_and_taken_back(memory: bool) {
    let _serial = SERIAL.lock().await;
    let extra: &[&str] = if memory {
        &["--storage", "memory"]
    } else {
        &[]
    };
    let mut c = Cluster::start_leaderless(3, extra).await.expect("cluster");
    c.nodes[2].kill9();
    if !memory {
        std::fs::remove_dir_all(&c.dirs[2]).expect("lose the disk");
    }
    c.nodes[2].start_again().expect("n3 back, empty");
    let said = match memory {
        true => "n3 was started again in memory",
        false => "n3 came back with another data directory",
    };
    eventually(10, "n1 reports that n3 lost its data", || {
        c.nodes[0].log_text().contains(said)
    })
    .await;
    eventually(10, "n3 takes part", || {
        kvctl(&c.nodes[2].endpoint(), &["put", "k", "v"]).code == 0
    })
    .await;
    let st = kvctl(&c.endpoints(), &["status"]);
    assert!(!st.stdout.contains("REFUSED"), "{st:?}");
    // It refills itself from n1 and n2, and counts again.
    // (Once or more: a peer that has not heard it finish yet may tell it again.)
    eventually(15, "n3 refilled", || c.metric(2, "kv_refills_total") >= 1.0).await;
    eventually(5, "n1 and n2 count n3 again", || {
        c.metric_sum("kv_peers_refilling") == 0.0
    })
    .await;
    if !memory {
        // Its data directory marked the refill while it lasted; no longer.
        assert!(!c.dirs[2].join("refilling").exists());
    }
}

/// A node back on an empty data directory that stops before any peer has answered it (they
/// are down) does not know, at its next start, whether it is new to the cluster or back empty:
/// it refills itself. Its first start marked the directory so; without the mark the next
/// start took itself for a node that had always been there and its empty answers counted
/// toward R (the simulator's seed 60001212 read an acknowledged key's older version so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_empty_that_stops_before_its_peers_answer_refills_at_its_next_start() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(3, &[]).await.expect("cluster");
    let r = kvctl(&c.endpoints(), &["put", "k", "acknowledged"]);
    assert_eq!(r.code, 0, "{r:?}");
    c.nodes[2].kill9();
    std::fs::remove_dir_all(&c.dirs[2]).expect("lose the disk");
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    c.nodes[2].start_again().expect("n3 back, empty, alone");
    assert!(
        c.dirs[2].join("refilling").exists(),
        "its first start marks it unsure"
    );
    assert_eq!(c.metric(2, "kv_refilling"), 0.0, "unsure, not refilling");
    c.nodes[2].kill9();
    c.nodes[2].start_again().expect("n3 again");
    assert_eq!(c.metric(2, "kv_refilling"), 1.0, "its next start refills");
    c.nodes[0].start_again().expect("n1 back");
    c.nodes[1].start_again().expect("n2 back");
    eventually(15, "n3 refilled", || c.metric(2, "kv_refills_total") >= 1.0).await;
    assert_eq!(local(&c, 2, "k"), "acknowledged", "n3 holds the write");
    assert!(!c.dirs[2].join("refilling").exists(), "the mark is gone");
    assert!(
        c.nodes[2]
            .log_text()
            .contains("refilled from the peers: read answers count again"),
        "n3 says so"
    );
}

/// A replica back empty (here started again in memory) refills itself before its read
/// answers count. The key's write is acknowledged by n1 and n3 while n2 is cut off (no hints,
/// no anti-entropy: n2 never gets it), then n3 comes back empty and hears nothing from n1, so
/// it cannot pull from it. A read at n2 asks R = 2 replicas, n2's own copy first, then n3 by
/// the ring: n2 and n3 have nothing, and counted, their two answers would hide the
/// acknowledged write (they did, before refills). n3's answer would not count, so n2 asks n1
/// instead and finds the write. Once n3 hears from n1 it finishes its refill, holds the write,
/// and counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_empty_refills_before_its_answers_count() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(
        3,
        &[
            "--storage",
            "memory",
            "--read-fanout",
            "quorum",
            "--disable-hinted-handoff",
            "--anti-entropy-interval",
            "0s",
        ],
    )
    .await
    .expect("cluster");
    let (n1, n2, n3) = (0, 1, 2);
    // A key whose ring order puts n3 before n1: a quorum read at n2 asks n2, then n3.
    let key = (0..1000)
        .map(|i| format!("refill-{i}"))
        .find(|k| {
            let p = replicas(&c, k);
            p.iter().position(|&r| r == n3) < p.iter().position(|&r| r == n1)
        })
        .expect("a key");
    let endpoints = c.endpoints();
    let fault = |args: &[&str]| {
        let r = kvctl(&endpoints, &[&["fault"], args].concat());
        assert_eq!(r.code, 0, "{r:?}");
    };
    fault(&["partition", "n1,n3/n2"]);
    let r = kvctl(&c.nodes[n1].endpoint(), &["put", &key, "acknowledged"]);
    assert_eq!(r.code, 0, "{r:?}");
    fault(&["heal"]);
    assert_eq!(local(&c, n2, &key), "", "n2 missed the write");

    // n1's messages to n3 are lost: n3, back, learns from both that it is back empty but can
    // pull from n2 only.
    fault(&["cut", "n1", "n3"]);
    c.nodes[n3].kill9();
    c.nodes[n3].start_again().expect("n3 back, empty");
    eventually(10, "n3 refilling, as kvctl status shows", || {
        let st = kvctl(&c.endpoints(), &["status"]);
        st.stdout
            .lines()
            .any(|l| l.starts_with("n3 ") && l.contains(" refilling "))
    })
    .await;
    assert!(
        c.nodes[n3]
            .log_text()
            .contains("this node came back empty (its peers remember it)"),
        "n3 says why"
    );
    let r = kvctl(&c.nodes[n2].endpoint(), &["get", &key]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("acknowledged"),
        "the read at n2 sees the acknowledged write: {r:?}"
    );
    assert_eq!(
        c.metric(n2, "kv_peers_refilling"),
        1.0,
        "n2 takes n3 for one refilling"
    );
    assert_eq!(c.metric(n3, "kv_refilling"), 1.0);
    assert_eq!(c.metric(n3, "kv_refills_total"), 0.0, "not with n1 cut off");

    fault(&["heal"]);
    eventually(15, "n3 refilled from n1 and n2", || {
        c.metric(n3, "kv_refills_total") >= 1.0
    })
    .await;
    assert_eq!(local(&c, n3, &key), "acknowledged", "n3 holds the write");
    assert_eq!(c.metric(n3, "kv_refilling"), 0.0);
    eventually(5, "n2 counts n3 again", || {
        c.metric(n2, "kv_peers_refilling") == 0.0
    })
    .await;
    let st = kvctl(&c.endpoints(), &["status"]);
    assert!(!st.stdout.contains(" refilling "), "{st:?}");
}

/// A node records a bound on its hybrid clock in `DATA_DIR/clock` before giving out any
/// timestamp above it; killed and started again, its clock starts above that bound, not only
/// above the versions it stored (a copy not yet durable at the crash may already be on the
/// other replicas under its version: the simulator's seed 930099 gave that version to another
/// write). Here the node's clock is set 4 s ahead, so the bound it recorded is seconds ahead of
/// its own clock once restarted (the offset is gone with the process). A version from there
/// would be from the future (a later write coordinated elsewhere could get a smaller one and
/// be hidden: the simulator's seed 60002935), so until real time passes the bound the node
/// sends writes to another replica to coordinate, and says so in its log; then it coordinates
/// them again, above the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gives_versions_above_the_clock_bound_it_recorded() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(5, &NRW).await.expect("cluster");
    let key = "bounded";
    let a = replicas(&c, key)[0];
    let ida = c.ids[a].clone();
    let r = kvctl(&c.endpoints(), &["fault", "clock", &ida, "+4s"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The version's epoch (a hybrid clock reading) of a write sent to `a`, and its coordinator.
    let put = |c: &Cluster| -> Option<(u64, String)> {
        let r = kvctl(
            &c.nodes[a].endpoint(),
            &["--output", "json", "put", key, "v"],
        );
        let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
        let node = v["node"].as_str()?.to_string();
        Some((kv_tests::put_epoch(&r.stdout)?, node))
    };
    let (before, by) = put(&c).expect("a put through the node");
    assert_eq!(by, ida, "its first replica coordinates it");
    let bound = kv_node::data_dir::ClockBound::open(&c.dirs[a])
        .expect("the clock file")
        .durable();
    assert!(bound > before, "bound {bound} above the version {before}");
    c.nodes[a].kill9();
    c.nodes[a].start_again().expect("restart");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (early, by) = loop {
        if let Some(v) = put(&c) {
            break v;
        }
        assert!(Instant::now() < deadline, "the restarted node answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        kv_tests::secs_ahead(bound) >= 1,
        "the bound is still ahead of real time: this put came too late to show anything"
    );
    assert_ne!(
        by, ida,
        "coordinated with its clock ahead: version {early}, bound {bound}"
    );
    let log = c.nodes[a].log_text();
    assert!(
        log.contains("the clock starts ahead of the wall clock"),
        "{log}"
    );
    // Once real time has passed the bound, it coordinates again, above it.
    eventually(15, "the restarted node coordinates again", || {
        put(&c).is_some_and(|(after, by)| {
            if by != ida {
                return false;
            }
            // From its stored copy alone, its clock would have started just above `before`.
            assert!(after > bound, "after the restart {after}, bound {bound}");
            true
        })
    })
    .await;
}

/// A node killed and started again coordinates no write before it has heard a peer's clock:
/// it asks the key's other replicas first. A drill found a node started again coordinate a
/// write at once, 278 ms behind the replica that had just given the same key's acknowledged
/// write its version, so that the later write was hidden by the earlier (last-writer-wins;
/// `bench/results/nemesis/`, seed 191). Here the other replica's clock is 5 s ahead, and the
/// restarted node's write, which comes after the other's was acknowledged, must end above it.
/// (Hints and anti-entropy off: nothing else tells the restarted node of the first write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_hears_its_peers_clocks_before_it_coordinates() {
    let _serial = SERIAL.lock().await;
    let extra = ["--disable-hinted-handoff", "--anti-entropy-interval", "0s"];
    let mut c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let key = "restarted";
    let reps = replicas(&c, key);
    let (x, y) = (reps[0], reps[1]);
    let (idx, idy) = (c.ids[x].clone(), c.ids[y].clone());
    let put = |c: &Cluster, node: usize, value: &str| -> serde_json::Value {
        let r = kvctl(
            &c.nodes[node].endpoint(),
            &["--output", "json", "put", key, value],
        );
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str(&r.stdout).expect("json")
    };
    let epoch =
        |v: &serde_json::Value| -> u64 { kv_tests::put_epoch(&v.to_string()).expect("a version") };
    let r = kvctl(&c.endpoints(), &["fault", "clock", &idy, "+5s"]);
    assert_eq!(r.code, 0, "{r:?}");
    c.nodes[x].kill9();
    let early = put(&c, y, "early");
    assert_eq!(
        early["node"],
        idy.as_str(),
        "the first live replica: {early}"
    );
    // Started again, it waits out the clock bound its earlier life recorded (until then it
    // leaves coordinating to others anyway: see the test above), hearing nothing meanwhile.
    let bound = kv_node::data_dir::ClockBound::open(&c.dirs[x])
        .expect("the clock file")
        .durable();
    c.nodes[x].start_again().expect("restart");
    c.wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    while now_ms() <= kv_replica::leaderless::physical_ms(bound) + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = put(&c, x, "late");
    assert_eq!(
        late["node"],
        idx.as_str(),
        "coordinated by the restarted node: {late}"
    );
    assert_eq!(
        late["superseded_on"],
        serde_json::json!([]),
        "not hidden: {late}"
    );
    assert!(
        epoch(&late) > epoch(&early),
        "above the earlier write: {late} after {early}"
    );
    let got = kvctl(&c.endpoints(), &["get", key]);
    assert_eq!(got.code, 0, "{got:?}");
    assert_eq!(got.stdout.trim(), "late", "{got:?}");
}

/// Every node's wall clock stepped back a minute (as NTP steps a clock that was far off) while
/// one replica is down and the others hold hints for it: the hints still reach it when it
/// returns, within seconds. Timers used to run on the wall clock, so a node stepped back held
/// its hint rounds a minute (this test fails so: tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_clocks_step_back_still_deliver_hints() {
    let _serial = SERIAL.lock().await;
    let lib = kv_tests::libfaketime();
    let extra = ["--anti-entropy-interval", "0s", "--worker-threads", "1"];
    let mut c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let clocks = tempfile::tempdir().expect("tempdir");
    let offset = |i: usize| clocks.path().join(format!("n{}", i + 1));
    for i in 0..c.nodes.len() {
        std::fs::write(offset(i), "+0").expect("offset file");
        let n = &mut c.nodes[i];
        n.set_env("LD_PRELOAD", &lib.to_string_lossy());
        n.set_env("FAKETIME_TIMESTAMP_FILE", &offset(i).to_string_lossy());
        n.set_env("FAKETIME_NO_CACHE", "1");
        n.set_env("DONT_FAKE_MONOTONIC", "1");
        n.restart().expect("restart under libfaketime");
    }
    c.wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");

    // The files move the nodes' clocks: one stepped an hour ahead gives versions an hour on.
    let key = "stepped";
    let a = replicas(&c, key)[0];
    std::fs::write(offset(a), "+3600s").expect("step ahead");
    let r = kvctl(
        &c.nodes[a].endpoint(),
        &["--output", "json", "put", key, "v"],
    );
    let epoch = kv_tests::put_epoch(&r.stdout).expect("a version");
    let ahead_s = kv_tests::secs_ahead(epoch);
    assert!(
        (3590..3700).contains(&ahead_s),
        "version {ahead_s} s ahead: {r:?}"
    );

    let victim = 2;
    let keys: Vec<String> = (0..60)
        .map(|i| format!("key-{i}"))
        .filter(|k| replicas(&c, k).contains(&victim))
        .collect();
    c.nodes[victim].kill9();
    let mut client = c.client(0).await.expect("client");
    for k in &keys {
        // One forwarded to the victim before n1 noticed its death may end "outcome unknown".
        let _ = client.put(put(k, "while-down", 0)).await;
    }
    eventually(5, "hints stored for the dead replica", || {
        c.metric_sum("kv_hints_pending") >= (keys.len() - 1) as f64
    })
    .await;
    // Every clock a minute back (the one an hour ahead too: 61 minutes).
    for i in 0..c.nodes.len() {
        std::fs::write(offset(i), "-60s").expect("step back");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nodes[victim].start_again().expect("restart the victim");
    eventually(15, "every hint delivered", || {
        c.metric_sum("kv_hints_pending") == 0.0
    })
    .await;
    let mut stored = 0;
    for k in &keys {
        if local(&c, victim, k) == "while-down" {
            stored += 1;
        }
    }
    assert!(
        stored + 1 >= keys.len(),
        "{stored} of {} on the returned replica",
        keys.len()
    );
}

/// The power fails on all five nodes at once (each loses what it had not fsynced,
/// `tests/powerloss`) with writers going at N=3 W=2. Started again, a read at R=2 finds every
/// acknowledged write: W acknowledgements are W durable copies. A coordinator's own copy
/// waits for another write's fsync when the other replicas are enough for W (Storage, lazy
/// flush); this shows that its acknowledgement never counted the copy that waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_failure_of_every_node_at_once_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_power_loss(5, &[&["--mode", "leaderless"][..], &NRW].concat())
        .await
        .expect("cluster");
    let (acked, reverted) = c.writes_through_an_outage(2).await;
    c.wait_connected(Duration::from_secs(10))
        .await
        .expect("all nodes back");
    let mut missing = Vec::new();
    for (i, (key, _, _)) in acked.iter().enumerate() {
        let mut client = c.client(i % 5).await.expect("client");
        let r = client.get(get(key, 2)).await.expect("read").into_inner();
        if !r.found || r.value != key.as_bytes() {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} writes acknowledged at W=2 are missing after the power failure: {:?}\nreverted:\n{reverted}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "power failure of all 5 nodes: {} writes acknowledged at W=2, all present at R=2; reverted:\n{reverted}",
        acked.len()
    );
}

/// `kvctl cluster audit` on a leaderless cluster's data directories: a kv-bench run during
/// which a replica is killed with `kill -9` and brought back leaves every acknowledged write
/// held at its version or a newer one; once hints are delivered and anti-entropy has run, every
/// key's newest version is on its three replicas (`--converged`); and a write the history says
/// was acknowledged but that no node holds fails the audit, named in its JSON report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_audit_finds_every_acknowledged_write_and_the_copies_converged() {
    let _serial = SERIAL.lock().await;
    let extra = ["--anti-entropy-interval", "1s"];
    let mut c = Cluster::start_leaderless(5, &[&NRW[..], &extra].concat())
        .await
        .expect("cluster");
    let root = c.dirs[0].parent().expect("root").to_path_buf();
    let history = root.join("history.jsonl");
    let out = tempfile::tempdir().expect("tempdir");
    let mut bench = std::process::Command::new(kv_tests::bin("kv-bench"))
        .args(["run", "--endpoints", &c.endpoints()])
        .args([
            "--mix",
            "read=50,write=50",
            "--warmup",
            "0s",
            "--clients",
            "4",
        ])
        .args(["--duration", "4s", "--keys", "300", "--history"])
        .arg(&history)
        .arg("--out")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("kv-bench");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.nodes[2].kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[2].start_again().expect("restart");
    let status = tokio::task::spawn_blocking(move || bench.wait())
        .await
        .expect("join")
        .expect("kv-bench");
    assert!(status.success(), "kv-bench: {status:?}");

    let audit = |more: &[&str]| {
        let mut args = vec!["--output", "json", "cluster", "audit"];
        args.push(history.to_str().expect("path"));
        args.extend(["--data-dir", root.to_str().expect("path"), "--n", "3"]);
        args.extend_from_slice(more);
        let r = kvctl(&c.endpoints(), &args);
        let j: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("one JSON document ({e}): {r:?}"));
        (r, j)
    };
    let (r, j) = audit(&[]);
    assert_eq!(r.code, 0, "no acknowledged write lost: {j}");
    let acked = j["acknowledged"].as_u64().expect("acknowledged");
    assert!(acked > 100, "{j}");
    // Hints are delivered and anti-entropy runs every second: the copies converge.
    let deadline = Instant::now() + Duration::from_secs(20);
    let j = loop {
        let (r, j) = audit(&["--converged"]);
        if r.code == 0 {
            break j;
        }
        assert!(Instant::now() < deadline, "not converged: {j}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(j["lost"], serde_json::json!([]), "{j}");
    let held = ["at_version", "superseded", "purged", "unversioned"]
        .iter()
        .map(|f| j[f].as_u64().expect(f))
        .sum::<u64>();
    assert_eq!(held, acked, "every acknowledged write accounted for: {j}");
    let keys = j["keys"].as_u64().expect("keys");
    assert_eq!(
        j["holders"],
        serde_json::json!([{"nodes": 3, "keys": keys}]),
        "every key's newest version on its three replicas: {j}"
    );
    eprintln!(
        "audit: {acked} acknowledged writes, {} at their version, {} overwritten by a newer \
         one; {keys} keys, each on its three replicas; {} failed writes, {} held anyway",
        j["at_version"], j["superseded"], j["failed_looked_for"], j["failed_but_held"]
    );

    // A write acknowledged (says the history) at a version newer than any copy: lost.
    let text = std::fs::read_to_string(&history).expect("history");
    let mut forged: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|o| o["op"] == "write" && o["outcome"] == "ok")
        .expect("an acknowledged write");
    forged["version"] = serde_json::json!(format!("{}.1", u64::MAX));
    std::fs::write(&history, format!("{text}\n{forged}\n")).expect("history");
    let (r, j) = audit(&[]);
    assert_eq!(r.code, 1, "{j}");
    assert_eq!(j["lost"][0]["key"], forged["key"], "{j}");
    let r = kvctl(
        &c.endpoints(),
        &[
            "cluster",
            "audit",
            history.to_str().expect("path"),
            "--data-dir",
            root.to_str().expect("path"),
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("LOST") && r.stdout.contains("FAILED: acknowledged writes were lost"),
        "{r:?}"
    );
}

/// The audit finds writes really lost, not only forged ones: at W=1 a write acknowledged by
/// its coordinator alone, cut off from the other replicas, lives only on that node's disk, and
/// the disk is lost (kill -9, data directory removed; the node refills from the others). Two
/// writes go that way: one to a new key, one over a key all three replicas hold. The audit of
/// the three writes finds the first write held at its version and the two others lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_audit_reports_w1_writes_lost_with_the_only_disk_that_held_them() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_leaderless(
        3,
        &[
            "--n",
            "3",
            "--r",
            "1",
            "--w",
            "1",
            "--anti-entropy-interval",
            "0s",
        ],
    )
    .await
    .expect("cluster");
    let version = |r: tonic::Response<pb::PutResponse>| {
        let v = r.into_inner().version.expect("version");
        format!("{}.{}", v.epoch, v.counter)
    };
    let mut n1 = c.client(0).await.expect("client");
    let kept = version(
        n1.put(put("kept", "v1", 3))
            .await
            .expect("put v1 to all three"),
    );
    let r = kvctl(&c.endpoints(), &["fault", "partition", "n1/n2,n3"]);
    assert_eq!(r.code, 0, "{r:?}");
    let only = version(n1.put(put("only-n1", "x", 1)).await.expect("W=1: n1 alone"));
    let over = version(n1.put(put("kept", "v2", 1)).await.expect("W=1: n1 alone"));
    c.nodes[0].kill9();
    std::fs::remove_dir_all(&c.dirs[0]).expect("lose n1's disk");
    // n2 and n3 stop dropping what n1 sends; n1, down, is said to start with no faults.
    let r = kvctl(&c.endpoints(), &["fault", "heal"]);
    assert!(
        r.code == 3 && r.stdout.contains("n2: no faults") && r.stdout.contains("n3: no faults"),
        "{r:?}"
    );
    c.nodes[0].start_again().expect("n1 back, empty");
    eventually(15, "n1 refilled", || c.metric(0, "kv_refills_total") >= 1.0).await;
    assert_eq!(
        local(&c, 0, "kept"),
        "v1",
        "n1 refilled what the others hold"
    );

    let root = c.dirs[0].parent().expect("root").to_path_buf();
    let history = root.join("history.jsonl");
    let line = |key: &str, value: &str, v: &str| {
        serde_json::json!({"client": 1, "op": "write", "key": key, "value": value,
            "start_ns": 0, "end_ns": 1, "outcome": "ok", "version": v})
        .to_string()
    };
    let lines = [
        line("kept", "v1", &kept),
        line("only-n1", "x", &only),
        line("kept", "v2", &over),
    ];
    std::fs::write(&history, lines.join("\n")).expect("history");
    let r = kvctl(
        &c.endpoints(),
        &[
            "--output",
            "json",
            "cluster",
            "audit",
            history.to_str().expect("path"),
            "--data-dir",
            root.to_str().expect("path"),
            "--n",
            "3",
            "--converged",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(j["at_version"], 1, "kept=v1 on all three: {j}");
    let lost: Vec<(&str, &str)> = j["lost"]
        .as_array()
        .expect("lost")
        .iter()
        .map(|o| {
            (
                o["key"].as_str().expect("key"),
                o["value"].as_str().expect("value"),
            )
        })
        .collect();
    assert_eq!(lost, [("only-n1", "x"), ("kept", "v2")], "{j}");
    assert_eq!(
        j["holders"],
        serde_json::json!([{"nodes": 3, "keys": 1}]),
        "what is left agrees: {j}"
    );
}
