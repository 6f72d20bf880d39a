//! Fail-over time: median over trials of the time from `kill -9` of the leader to the next
//! write acknowledged by a new leader, with a client that keeps writing (W=majority) and follows
//! leader hints. Real processes on loopback.
//!
//!   cargo run --release -p kv-tests --example failover -- [NODES] [TRIALS]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_proto::kv::v1 as pb;
use kv_tests::cluster::Cluster;

async fn put_once(endpoint: &str, key: &str, w: u32) -> Result<(), tonic::Status> {
    let mut c = pb::kv_client::KvClient::connect(format!("http://{endpoint}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(pb::PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"x"),
        consistency: Some(pb::Consistency {
            w,
            ..Default::default()
        }),
    });
    req.set_timeout(Duration::from_millis(200));
    c.put(req).await.map(|_| ())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let trials: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let w = (nodes / 2 + 1) as u32;
    let mut c = Cluster::start(nodes, &[]).await?;
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.endpoint()).collect();
    let mut times = Vec::new();
    for trial in 0..trials {
        let old = c.wait_leader(Duration::from_secs(10), None).await?;
        put_once(&endpoints[old], "warm", w).await?;
        let killed = Instant::now();
        c.nodes[old].kill9();
        // Keep writing, round-robin over the survivors, until one acknowledges.
        let mut i = 0usize;
        let took = loop {
            let target = (old + 1 + i % (nodes - 1)) % nodes;
            if put_once(&endpoints[target], &format!("t{trial}-{i}"), w)
                .await
                .is_ok()
            {
                break killed.elapsed();
            }
            i += 1;
            if killed.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("trial {trial}: no write acknowledged within 10 s");
            }
        };
        println!(
            "trial {trial:>2}: leader n{} killed, next write acknowledged after {:>6.1} ms",
            old + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        c.nodes[old].start_again()?;
        // Let the restarted node catch up before the next trial.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{nodes} nodes, W={w}, {trials} trials: median {:.1} ms, min {:.1} ms, max {:.1} ms (election timeout 150-300 ms)",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    Ok(())
}
