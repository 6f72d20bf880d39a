//! How long a leader-follower snapshot of the in-memory state machine takes, by key count:
//! the clone of the index (under its lock, on the replica thread) and the encoding.
//!
//! `cargo run --release -p kv-node --example snapshot_cost -- 10000 100000 1000000`

use std::time::Instant;

use bytes::Bytes;
use kv_node::storage::{MemStorage, Storage, Write};
use kv_replica::Version;

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    for n in if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    } {
        let s = MemStorage::new();
        for i in 0..n {
            let w = Write {
                key: Bytes::from(format!("key{i:08}")),
                value: Some(Bytes::from(vec![b'x'; 100])),
                version: Version::new(1, i + 1),
                written_ms: 0,
                context: Bytes::new(),
            };
            if s.write(w).is_err() {
                eprintln!("write failed");
                return;
            }
        }
        let t = Instant::now();
        let frozen = s.freeze();
        let freeze = t.elapsed();
        let t = Instant::now();
        let data = frozen.encode(n);
        let encode = t.elapsed();
        let t = Instant::now();
        let restored = MemStorage::new();
        let ok = restored
            .restore(&mut &data[..], std::path::Path::new("bench"))
            .is_ok();
        let restore = t.elapsed();
        println!(
            "{n} keys: snapshot {} MB, freeze {:.1} ms, encode {:.1} ms, restore {:.1} ms (ok: {ok})",
            data.len() >> 20,
            freeze.as_secs_f64() * 1e3,
            encode.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3
        );
    }
}
