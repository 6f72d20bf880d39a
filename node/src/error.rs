//! The node's per-request errors. They become gRPC statuses in exactly one place:
//! `server::status`.

use crate::storage::StorageError;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was done.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation does not exist in this mode or configuration; nothing was done.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Definitely not applied: the node cannot serve it now (shutting down, no quorum).
    #[error("{0}")]
    Unavailable(String),
    /// Leaderless: this coordinator could not gather its quorum (too few replicas reachable
    /// from it, or too few answered) and nothing was applied; another coordinator, on another
    /// side of a partition, may succeed.
    #[error("{0}")]
    NoQuorum(String),
    /// Not the leader: nothing was done. The leader's id and address, when known.
    #[error("not the leader{}", match .0 { Some((id, addr)) => format!("; the leader is {id} at {addr}"), None => "; no leader is known (election in progress or quorum lost)".into() })]
    NotLeader(Option<(String, String)>),
    /// The write may or may not take effect (leadership was lost before W replicas held it).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The deadline passed while waiting; the write may or may not take effect.
    #[error("deadline exceeded after {0:?} (the operation may still take effect)")]
    DeadlineExceeded(std::time::Duration),
    /// Storage failed: the node stops acknowledging; outcome unknown.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

/// `Result` with the node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
