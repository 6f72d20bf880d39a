//! kv-proto: the wire protocol of quorumkv, generated from `proto/kv/v1/*.proto`.
//!
//! - [`kv::v1`]: the client API (`kv.v1.Kv`), node-to-node traffic (`kv.v1.Peer`) and the
//!   operator API (`kv.v1.Admin`): messages, generated clients and servers.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//! - [`coalesce`]: the write buffering that both ends of an HTTP/2 connection use (the node's
//!   server, the load generator's client).
//! - [`h2body`]: an HTTP/2 stream read as a body, for tonic, at the same two ends.
//! - [`frame`]: gRPC's message framing, for the unary calls those two ends make without tonic.
//!
//! Nothing here is written by hand except this file, `coalesce.rs`, `h2body.rs` and
//! `frame.rs`: edit the `.proto` files.

pub mod coalesce;
pub mod frame;
pub mod h2body;

/// Generated code, one module per protobuf package.
#[allow(missing_docs, clippy::all)]
pub mod kv {
    /// Package `kv.v1`.
    pub mod v1 {
        tonic::include_proto!("kv.v1");
    }
}

/// gRPC metadata key of the leader's address on a leader-follower follower's answer to a write
/// or leader read (UNAVAILABLE, "not the leader"): clients retry there (kvctl, kv-bench).
pub const LEADER_ADDR: &str = "x-kv-leader";
/// gRPC metadata key of the leader's id on the same answer; present but empty when the node
/// knows no leader (an election is on, or it cannot reach a quorum).
pub const LEADER_ID: &str = "x-kv-leader-id";

/// gRPC metadata key, present (empty) on a leaderless coordinator's UNAVAILABLE answer when it
/// could not gather its quorum and applied nothing: another coordinator, on another side of a
/// partition, may succeed, so a client may ask the next node (kvctl does, once each, as
/// Cassandra drivers retry the next host on an unavailable error).
pub const NO_QUORUM: &str = "x-kv-no-quorum";

/// Encoded `FileDescriptorSet` of every `.proto` in this crate, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kv_descriptor");
