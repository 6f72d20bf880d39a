//! Durable write throughput of the storage engine alone (no gRPC): W concurrent writers, each
//! writing a 100 B value to one of 10k keys and waiting until it is durable, for 5 s per case.
//!
//!   cargo bench -p kv-node --bench storage
//!
//! Prints writes/s and writes per fsync for each fsync policy and writer count. The same load
//! against redb (one durable transaction per put) and fjall (insert + persist per put) is in the
//! notes of the storage choice (README.md, "Storage").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_node::storage::{DiskOptions, DiskStorage, FsyncPolicy, Storage, Write};
use kv_replica::Version;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:<8} {:>8} {:>12} {:>14} {:>14}",
        "fsync", "writers", "writes/s", "writes/fsync", "fsync mean ms"
    );
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        for writers in [1usize, 16, 128] {
            rt.block_on(case(policy, writers));
        }
    }
}

async fn case(policy: FsyncPolicy, writers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let flushes = Arc::new(AtomicU64::new(0));
    let flush_ns = Arc::new(AtomicU64::new(0));
    let (f, ns) = (flushes.clone(), flush_ns.clone());
    let (store, _) = DiskStorage::open(
        dir.path(),
        DiskOptions {
            fsync: policy,
            on_flush: Some(Arc::new(move |d: Duration, _, _| {
                f.fetch_add(1, Ordering::Relaxed);
                ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            })),
            ..DiskOptions::default()
        },
    )
    .expect("open");
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![7u8; 100]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers as u64)
        .map(|t| {
            let (store, stop, done, value) =
                (store.clone(), stop.clone(), done.clone(), value.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let lsn = store
                        .write(Write {
                            key: Bytes::from(format!("key{:08}", (t * 1_000_003 + i) % 10_000)),
                            value: Some(value.clone()),
                            version: Version::new(1, t << 32 | i),
                            written_ms: 0,
                            context: Bytes::new(),
                        })
                        .expect("write");
                    store.wait_durable(lsn).await.expect("durable");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    let fl = flushes.load(Ordering::Relaxed).max(1) as f64;
    println!(
        "{:<8} {:>8} {:>12.0} {:>14.1} {:>14.3}",
        policy.to_string(),
        writers,
        n / secs,
        n / fl,
        flush_ns.load(Ordering::Relaxed) as f64 / fl / 1e6
    );
}
