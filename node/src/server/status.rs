//! [`Error`] to [`tonic::Status`]: the one place where gRPC codes are chosen.
//!
//! | error               | code                | may it have happened? |
//! |---------------------|---------------------|-----------------------|
//! | InvalidArgument     | INVALID_ARGUMENT    | no                    |
//! | FailedPrecondition  | FAILED_PRECONDITION | no                    |
//! | Unavailable         | UNAVAILABLE         | no                    |
//! | DeadlineExceeded    | DEADLINE_EXCEEDED   | maybe                 |
//! | Storage             | INTERNAL            | maybe                 |

use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::Storage(_) => Status::internal(msg),
        }
    }
}
