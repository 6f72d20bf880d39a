//! The storage conformance suite: every [`Storage`] implementation runs all of it, then its own
//! durability tests (see `disk` tests below).

use std::sync::Arc;

use bytes::Bytes;
use kv_replica::Version;

use super::*;

fn w(key: &str, value: Option<&str>, counter: u64, ms: u64) -> Write {
    Write {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        version: Version::new(1, counter),
        written_ms: ms,
        context: bytes::Bytes::new(),
    }
}

/// Runs every conformance case on stores made by `make`.
pub(crate) async fn suite(make: &dyn Fn() -> Arc<dyn Storage>) {
    get_of_missing_key_is_none(make()).await;
    put_then_get_returns_value_and_version(make()).await;
    overwrite_keeps_newest(make()).await;
    delete_writes_a_tombstone_with_its_version(make()).await;
    lsns_increase_by_one_and_become_durable(make()).await;
    purge_removes_only_old_tombstones_and_keeps_high_water(make()).await;
    concurrent_writers_all_become_durable(make()).await;
}

async fn get_of_missing_key_is_none(s: Arc<dyn Storage>) {
    assert_eq!(s.get(b"nope"), None);
    assert_eq!(s.high_water(), Version::ZERO);
}

async fn put_then_get_returns_value_and_version(s: Arc<dyn Storage>) {
    let lsn = s.write(w("k", Some("v"), 1, 10)).expect("write");
    s.wait_durable(lsn).await.expect("durable");
    let e = s.get(b"k").expect("present");
    assert_eq!(e.value.as_deref(), Some(&b"v"[..]));
    assert_eq!(e.version, Version::new(1, 1));
    assert_eq!(e.lsn, lsn);
    assert_eq!(s.high_water(), Version::new(1, 1));
}

async fn overwrite_keeps_newest(s: Arc<dyn Storage>) {
    s.write(w("k", Some("a"), 1, 10)).expect("write");
    let lsn = s.write(w("k", Some("b"), 2, 11)).expect("write");
    s.wait_durable(lsn).await.expect("durable");
    let e = s.get(b"k").expect("present");
    assert_eq!(e.value.as_deref(), Some(&b"b"[..]));
    assert_eq!(e.version, Version::new(1, 2));
    let st = s.stats();
    assert_eq!((st.live_keys, st.tombstones, st.live_bytes), (1, 0, 2));
}

async fn delete_writes_a_tombstone_with_its_version(s: Arc<dyn Storage>) {
    s.write(w("k", Some("a"), 1, 10)).expect("write");
    s.write(w("k", None, 2, 11)).expect("delete");
    let e = s.get(b"k").expect("tombstone is kept");
    assert_eq!(e.value, None);
    assert_eq!(e.version, Version::new(1, 2));
    let st = s.stats();
    assert_eq!((st.live_keys, st.tombstones), (0, 1));
}

async fn lsns_increase_by_one_and_become_durable(s: Arc<dyn Storage>) {
    let a = s.write(w("a", Some("1"), 1, 1)).expect("write");
    let b = s.write(w("b", Some("2"), 2, 1)).expect("write");
    assert_eq!(b, a + 1);
    s.wait_durable(b).await.expect("durable");
    s.wait_durable(a).await.expect("earlier lsn is durable too");
    let st = s.stats();
    assert_eq!(st.last_lsn, b);
    assert!(st.durable_lsn >= b);
}

async fn purge_removes_only_old_tombstones_and_keeps_high_water(s: Arc<dyn Storage>) {
    s.write(w("old", None, 1, 100)).expect("write");
    s.write(w("new", None, 2, 300)).expect("write");
    s.write(w("live", Some("v"), 3, 50)).expect("write");
    assert_eq!(s.purge_tombstones(200), 1);
    assert_eq!(s.get(b"old"), None);
    assert!(s.get(b"new").is_some());
    assert!(s.get(b"live").is_some(), "values are never purged");
    assert_eq!(s.high_water(), Version::new(1, 3));
    assert_eq!(s.stats().tombstones, 1);
    // A purge that also asks (repair-based GC) is shown each old tombstone's key and entry (with
    // the LSN of the write that stored it), and keeps the ones it refuses.
    let a = s.write(w("a", None, 4, 100)).expect("write");
    let b = s.write(w("b", None, 5, 100)).expect("write");
    let mut asked = Vec::new();
    let purged = s.purge_tombstones_if(200, &mut |k, e| {
        asked.push((k.clone(), e.version, e.lsn));
        k.as_ref() == b"b"
    });
    asked.sort();
    assert_eq!(
        asked,
        vec![
            (Bytes::from("a"), Version::new(1, 4), a),
            (Bytes::from("b"), Version::new(1, 5), b)
        ]
    );
    assert_eq!(purged, 1);
    assert!(s.get(b"a").is_some() && s.get(b"b").is_none());
    assert_eq!(s.stats().tombstones, 2);
}

async fn concurrent_writers_all_become_durable(s: Arc<dyn Storage>) {
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let key = format!("t{t}-{i}");
                let lsn = s
                    .write(w(&key, Some("x"), t * 1000 + i + 1, 1))
                    .expect("write");
                s.wait_durable(lsn).await.expect("durable");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(s.stats().live_keys, 400);
    assert_eq!(s.stats().last_lsn, 400);
}
