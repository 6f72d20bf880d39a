//! An HTTP/2 stream's receiving half as an [`http_body::Body`]: its DATA frames, each
//! returned to the flow-control window as it is read, then its trailers (where gRPC puts the
//! status). Both ends that run HTTP/2 with the `h2` crate themselves need it: the node's
//! server, handing requests it does not serve itself to tonic's routes, and the load
//! generator's client, handing responses to tonic's codec.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;

/// What a body makes of a stream error: its own error type, and whatever the end must learn
/// from it (the load generator marks the connection gone).
pub trait StreamError: Unpin {
    /// The body's error.
    type Error;
    /// The body's error for `e`.
    fn on_error(&self, e: h2::Error) -> Self::Error;
}

/// Errors as `h2` gives them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsIs;

impl StreamError for AsIs {
    type Error = h2::Error;
    fn on_error(&self, e: h2::Error) -> h2::Error {
        e
    }
}

/// A stream's receiving half as a body; `E` maps its errors.
pub struct H2Body<E> {
    recv: h2::RecvStream,
    data_done: bool,
    errors: E,
}

impl<E> H2Body<E> {
    /// The body of `recv`, its errors mapped by `errors`.
    pub fn new(recv: h2::RecvStream, errors: E) -> H2Body<E> {
        H2Body {
            recv,
            data_done: false,
            errors,
        }
    }
}

impl<E: StreamError> http_body::Body for H2Body<E> {
    type Data = Bytes;
    type Error = E::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(self.errors.on_error(e)))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(self.errors.on_error(e))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
