//! kv-bench: measures what each quorumkv configuration costs, and the same workload against
//! peer systems.
//!
//! - [`workload`]: key distributions (uniform, YCSB scrambled zipfian) and operation mixes.
//! - [`driver`]: connections to quorumkv (gRPC) and Redis.
//! - [`h2`]: a lean HTTP/2 channel for the generated gRPC client.
//! - [`run`]: the closed-loop run, HdrHistogram latency, `summary.json` and `latency.hgrm`.
//! - [`cpu`]: the generator's own CPU use, reported with every run.

pub mod check;
pub mod cpu;
pub mod driver;

/// etcd's KV API (the subset the etcd driver uses), generated from `proto/etcd/rpc.proto`.
#[allow(missing_docs, clippy::all)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod h2;
pub mod plot;
pub mod run;
pub mod sweep;
pub mod workload;
