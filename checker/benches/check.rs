//! Check time of generated linearizable histories (the expensive case: the search must find a
//! complete linearization of every key): 10k, 100k and 1M operations over 1k keys, and 1M over
//! 20 keys (the shape of a drill's history: 50k operations a key), 16 clients.
//!
//!   cargo bench -p kv-checker --bench check     (KV_CHECK_SIZES=10000,100000:20 to choose:
//!                                                operations[:keys], keys 1000 by default)
//!
//! Prints the median of 3 runs per size, on 1 thread and on every CPU.

use std::time::{Duration, Instant};

use kv_checker::{Verdict, check, generate};

fn main() {
    let sizes: Vec<(usize, u64)> = std::env::var("KV_CHECK_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| {
                    let (n, k) = x.trim().split_once(':').unwrap_or((x.trim(), "1000"));
                    Some((n.parse().ok()?, k.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| {
            vec![
                (10_000, 1000),
                (100_000, 1000),
                (1_000_000, 1000),
                (1_000_000, 20),
            ]
        });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("| operations | keys | clients | threads | median check time | ops/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &(n, keys) in &sizes {
        let ops = generate::linearizable(n, 16, keys, 42);
        for threads in [1, cpus] {
            let mut times: Vec<Duration> = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    let r = check(&ops, None, threads, true);
                    let took = t.elapsed();
                    assert_eq!(r.verdict(), Verdict::Linearizable, "generated history");
                    took
                })
                .collect();
            times.sort();
            let med = times[1];
            println!(
                "| {n} | {keys} | 16 | {threads} | {:.1} ms | {:.0} |",
                med.as_secs_f64() * 1e3,
                n as f64 / med.as_secs_f64()
            );
            if cpus == 1 {
                break;
            }
        }
    }
}
