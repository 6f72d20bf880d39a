//! kv-replica: the sans-IO protocol core of quorumkv.
//!
//! No tokio, no clock, no sockets: everything here is a pure function or a deterministic state
//! machine that the node's driver feeds and whose outputs it carries out.
//!
//! - [`version`]: [`Version`], the total order of writes to one key, and its text form.
//! - [`quorum`]: N/R/W arithmetic and validation ([`Quorum`]).
//! - [`leader_follower`]: Raft elections and log replication with W-acknowledged writes.
//! - [`pipeline`]: carrying out a replica's actions while its log is written asynchronously.
//! - [`NodeId`]: the name of a cluster member.
//!

#![warn(missing_docs)]

pub mod leader_follower;
pub mod leaderless;
pub mod pipeline;
pub mod quorum;
pub mod version;

pub use quorum::{Quorum, QuorumError};
pub use version::{Version, VersionParseError};

use std::fmt;

/// The name of a cluster member (`n1`, `n2`, ...), as given by `--id` and `--peers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}
