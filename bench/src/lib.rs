//! kv-bench: measures what each quorumkv configuration costs, and the same workload against
//! peer systems.
//!
//! - [`workload`]: key distributions (uniform, YCSB scrambled zipfian) and operation mixes.
//! - [`driver`]: connections to quorumkv (gRPC) and Redis.
//! - [`run`]: the closed-loop run, HdrHistogram latency, `summary.json` and `latency.hgrm`.

pub mod driver;
pub mod run;
pub mod workload;
