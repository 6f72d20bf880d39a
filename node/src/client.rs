//! Client plumbing shared by kvctl and the tests: connecting to one of several endpoints, and
//! what a failed call means for the caller (definitely failed, or maybe applied).

use std::time::Duration;

use kv_proto::kv::v1::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

/// kvctl's exit codes (documented in `kvctl --help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// `get`: key absent. `cas`: the compare did not match (nothing changed).
    pub const NOT_FOUND_OR_NOT_APPLIED: u8 = 1;
    /// Bad usage or an INVALID_ARGUMENT answer: nothing was done.
    pub const USAGE: u8 = 2;
    /// Definitely failed: no node reachable, UNAVAILABLE, FAILED_PRECONDITION.
    pub const FAILED: u8 = 3;
    /// Outcome unknown: the write may or may not have happened (deadline, connection lost
    /// mid-call, INTERNAL).
    pub const UNKNOWN: u8 = 4;
}

/// The exit code for a failed call with this status.
pub fn exit_code(status: &tonic::Status) -> u8 {
    use tonic::Code::*;
    match status.code() {
        InvalidArgument | OutOfRange => exit::USAGE,
        NotFound => exit::NOT_FOUND_OR_NOT_APPLIED,
        Unavailable | FailedPrecondition | PermissionDenied | Unauthenticated | Unimplemented
        | ResourceExhausted | AlreadyExists | Aborted => exit::FAILED,
        Ok | Cancelled | Unknown | DeadlineExceeded | Internal | DataLoss => exit::UNKNOWN,
    }
}

/// Whether a failed call may still have taken effect.
pub fn may_have_happened(status: &tonic::Status) -> bool {
    exit_code(status) == exit::UNKNOWN
}

/// An `http://` URI for an endpoint given as `HOST:PORT` (or already as a URI).
pub fn endpoint_uri(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Connects to the first endpoint that accepts, in order.
///
/// # Errors
/// An UNAVAILABLE status naming every endpoint and why it failed.
pub async fn connect_any(
    endpoints: &[String],
    timeout: Duration,
) -> Result<(String, KvClient<Channel>), tonic::Status> {
    let mut why = Vec::new();
    for ep in endpoints {
        let endpoint = match Endpoint::from_shared(endpoint_uri(ep)) {
            Ok(e) => e.connect_timeout(timeout).tcp_nodelay(true),
            Err(e) => {
                return Err(tonic::Status::invalid_argument(format!(
                    "invalid endpoint {ep:?}: {e}"
                )));
            }
        };
        match endpoint.connect().await {
            Ok(ch) => {
                return Ok((
                    ep.clone(),
                    KvClient::new(ch).max_decoding_message_size(usize::MAX),
                ));
            }
            Err(e) => why.push(format!("{ep}: {}", error_chain(&e))),
        }
    }
    Err(tonic::Status::unavailable(format!(
        "no endpoint reachable ({})",
        why.join("; ")
    )))
}

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
