//! [`Error`] to [`tonic::Status`]: the one place where gRPC codes are chosen.
//!
//! | error               | code                | may it have happened? |
//! |---------------------|---------------------|-----------------------|
//! | InvalidArgument     | INVALID_ARGUMENT    | no                    |
//! | FailedPrecondition  | FAILED_PRECONDITION | no                    |
//! | Unavailable         | UNAVAILABLE         | no                    |
//! | NoQuorum            | UNAVAILABLE + x-kv-no-quorum metadata (leaderless: ask another coordinator) | no |
//! | NotLeader           | UNAVAILABLE + x-kv-leader, x-kv-leader-id metadata (id empty: no leader known) | no |
//! | Unknown             | UNKNOWN             | maybe                 |
//! | DeadlineExceeded    | DEADLINE_EXCEEDED   | maybe                 |
//! | Storage             | INTERNAL            | maybe                 |

use tonic::Status;

use crate::error::Error;

pub use kv_proto::{LEADER_ADDR, LEADER_ID, NO_QUORUM};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::NoQuorum(_) => {
                let mut st = Status::unavailable(msg);
                st.metadata_mut()
                    .insert(NO_QUORUM, tonic::metadata::MetadataValue::from_static(""));
                st
            }
            Error::NotLeader(leader) => {
                let mut st = Status::unavailable(msg);
                match leader {
                    Some((id, addr)) => {
                        if let (Ok(a), Ok(i)) = (addr.parse(), id.parse()) {
                            st.metadata_mut().insert(LEADER_ADDR, a);
                            st.metadata_mut().insert(LEADER_ID, i);
                        }
                    }
                    // No leader known (an election is on, or no quorum): the key, empty, still
                    // tells a client that a leader is what is missing, worth waiting for.
                    None => {
                        st.metadata_mut()
                            .insert(LEADER_ID, tonic::metadata::MetadataValue::from_static(""));
                    }
                }
                st
            }
            Error::Unknown(_) => Status::unknown(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::Storage(_) => Status::internal(msg),
        }
    }
}
