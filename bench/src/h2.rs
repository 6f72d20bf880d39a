//! A lean gRPC channel for the load generator: one HTTP/2 connection driven by hyper directly.
//!
//! tonic's `Channel` puts every request through a `tower::buffer` queue served by a background
//! task (two task hand-offs per request) and a reconnecting, load-balancing stack. A load
//! generator wants none of that on its hot path: its own cost must stay far below the server's
//! so that it measures the server. This adapter hands requests straight to hyper's HTTP/2
//! `SendRequest`; the generated `KvClient` runs on top of it unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

/// One HTTP/2 connection, cloneable (clones share the connection).
#[derive(Clone)]
pub struct H2Channel {
    send: http2::SendRequest<Body>,
}

impl H2Channel {
    /// Connects to `addr` (`HOST:PORT`) and spawns the connection task.
    ///
    /// # Errors
    /// TCP connect or HTTP/2 handshake failures.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Channel { send })
    }
}

impl tower_service::Service<http::Request<Body>> for H2Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.send.send_request(req))
    }
}
