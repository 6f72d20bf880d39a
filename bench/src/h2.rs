//! A lean gRPC channel for the load generator: one HTTP/2 connection driven by the `h2` crate
//! directly, re-established when it breaks.
//!
//! tonic's `Channel` puts every request through a `tower::buffer` queue served by a background
//! task (two task hand-offs per request) and a reconnecting, load-balancing stack; hyper's HTTP/2
//! client, under it, spawns a task per request to wait for the response and, because a gRPC
//! request body is a stream, usually a second one to send that body. A load generator wants none
//! of that on its hot path: its own cost must stay far below the server's so that it measures
//! the server. Here the client's own task opens the stream, sends the whole request with it and
//! reads the answer; only the connection task runs beside it. The drivers' calls (quorumkv's
//! `kv.v1.Kv`, etcd's `KV`) skip tonic's codec too ([`H2Channel::unary`]: one buffer out, one
//! message decoded in; 9-15% less generator CPU per operation against the replicated clusters
//! and etcd, `bench/results/generator/unary/`); other calls (`kv.v1.Admin`) go through the
//! generated clients, which run on the channel unchanged. Socket writes go through
//! [`kv_proto::coalesce::Coalescing`], so the requests that clients send in one pass of the
//! runtime share a write (0.71-0.77 `writev` per operation before, 0.34-0.45 `sendto` after,
//! 256 clients on a 3-node leader).
//!
//! A run that kills or restarts a node must not lose that endpoint for the rest of the run:
//! when the connection is found closed, the next request reconnects (clones share the new
//! connection), and a new connection is used once the server has answered a ping on it. While the endpoint refuses, attempts are paced ([`RETRY`]) and each failed one
//! answers its request UNAVAILABLE, so a dead node slows its clients down instead of letting
//! them spin through thousands of instant errors a second. A request on a connection that breaks
//! fails as a lost connection (tonic's UNKNOWN, with this error as its source), as it did on
//! hyper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tonic::body::Body;

/// The least time between two connection attempts to one endpoint.
pub const RETRY: Duration = Duration::from_millis(100);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One live HTTP/2 connection: its request handle, and whether it has ended.
#[derive(Clone)]
struct Sender {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One HTTP/2 connection, cloneable (clones share the connection and its replacement).
#[derive(Clone)]
pub struct H2Channel {
    send: Sender,
    shared: Arc<Shared>,
}

struct Shared {
    addr: String,
    /// The current connection, and when the next attempt may be made after a failed one.
    /// Taken only when a clone finds its connection closed.
    current: tokio::sync::Mutex<(Sender, Option<Instant>)>,
}

async fn handshake(addr: &str) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(kv_proto::coalesce::Coalescing::new(tcp))
        .await?;
    let mut ping = conn
        .ping_pong()
        .ok_or_else(|| anyhow::anyhow!("HTTP/2 ping handle taken"))?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let _ = conn.await;
        flag.store(true, Ordering::Relaxed);
    });
    // The connection is usable once the server has answered on it. A node being killed can
    // still complete TCP handshakes on its listening socket while the kernel tears it down
    // (h2's handshake only writes the client preface); requests sent there are reset, lost
    // from the client's view though the node never saw them: twice the errors of one kill,
    // in 3 of 16 runs under load. gRPC-Go likewise waits for the server's preface.
    ping.ping(h2::Ping::opaque()).await?;
    Ok(Sender { send, closed })
}

impl H2Channel {
    /// Another clone may have reconnected already: take its connection.
    fn take_reconnected(&mut self) {
        if self.send.is_closed()
            && let Ok(cur) = self.shared.current.try_lock()
            && !cur.0.is_closed()
        {
            self.send = cur.0.clone();
        }
    }

    /// One unary gRPC call of `method` (a path such as `/kv.v1.Kv/Get`) at `origin`, within
    /// `timeout` (sent as `grpc-timeout`), without tonic's codec: `msg` encoded into one
    /// length-prefixed buffer and sent with the request's headers, the answer's one message
    /// decoded from its DATA, its status read from the trailers (or from the headers of a
    /// trailers-only answer). Errors are as tonic's client gives them: the server's status
    /// with its metadata, UNKNOWN with the transport error as its source for a connection
    /// lost, INTERNAL for an answer that is not one message.
    ///
    /// # Errors
    /// The call's status when it is not OK.
    pub async fn unary<Q: prost::Message, A: prost::Message + Default>(
        &mut self,
        origin: &Origin,
        method: &'static str,
        msg: &Q,
        timeout: Duration,
    ) -> Result<A, tonic::Status> {
        let uri = http::Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query(http::uri::PathAndQuery::from_static(method))
            .build()
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut head = http::Request::new(());
        *head.method_mut() = http::Method::POST;
        *head.uri_mut() = uri;
        let h = head.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        // As tonic sends it: at most 8 digits, here in milliseconds (about 27 hours).
        let ms = timeout.as_millis().min(99_999_999);
        h.insert(
            "grpc-timeout",
            http::HeaderValue::from_str(&format!("{ms}m"))
                .map_err(|e| tonic::Status::internal(e.to_string()))?,
        );
        self.take_reconnected();
        let shared = self.shared.clone();
        let first = if self.send.is_closed() {
            shared.live().await?
        } else {
            self.send.clone()
        };
        let response = send(first, shared, head, kv_proto::frame::encode(msg))
            .await
            .map_err(tonic::Status::from_error)?;
        answer(response).await
    }

    /// Connects to `addr` (`HOST:PORT`) and spawns the connection task.
    ///
    /// # Errors
    /// TCP connect or HTTP/2 handshake failures.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let send = handshake(addr).await?;
        Ok(H2Channel {
            send: send.clone(),
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                current: tokio::sync::Mutex::new((send, None)),
            }),
        })
    }
}

impl Shared {
    /// A live connection: the current one, or a new one when it is closed (at most one attempt
    /// per [`RETRY`]; callers queue behind the attempt in progress).
    async fn live(&self) -> Result<Sender, tonic::Status> {
        let mut cur = self.current.lock().await;
        if !cur.0.is_closed() {
            return Ok(cur.0.clone());
        }
        if let Some(at) = cur.1 {
            tokio::time::sleep_until(at).await;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake(&self.addr)).await {
            Ok(Ok(send)) => {
                *cur = (send.clone(), None);
                Ok(send)
            }
            failed => {
                cur.1 = Some(Instant::now() + RETRY);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                Err(tonic::Status::unavailable(format!(
                    "cannot reconnect to {}: {why}",
                    self.addr
                )))
            }
        }
    }
}

/// A transport failure of one request (the connection broke or was refused mid-stream).
///
/// It hides the `h2::Error` from tonic, which would otherwise turn some of them (GOAWAY with
/// NO_ERROR, a stream reset) into INTERNAL: to the load generator any of them is a connection lost.
#[derive(Debug)]
struct Broken(h2::Error);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection lost: {}", self.0)
    }
}

impl std::error::Error for Broken {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body read straight from the HTTP/2 stream ([`kv_proto::h2body`]); its errors
/// mark the connection gone when they say it is (`lost`).
pub type H2Body = kv_proto::h2body::H2Body<Lost>;

/// The connection's closed flag, for a response body's errors.
pub struct Lost(Arc<AtomicBool>);

impl kv_proto::h2body::StreamError for Lost {
    type Error = BoxError;
    fn on_error(&self, e: h2::Error) -> BoxError {
        lost(&self.0, e).into()
    }
}

/// A request that failed on a connection: `closed` is set when the connection itself is gone
/// (an I/O error or GOAWAY), so that the requests after this one reconnect at once instead of
/// failing on it too before the connection task has ended (on another worker thread that can
/// come later than the next request).
fn lost(closed: &AtomicBool, e: h2::Error) -> Broken {
    if e.is_io() || e.is_go_away() {
        closed.store(true, Ordering::Relaxed);
    }
    Broken(e)
}

/// Sends one request and waits for the response's headers, all in the caller's task. A
/// connection found gone before the request could be opened on it (so nothing of it was sent)
/// is replaced, once, and the request goes on the new one: only a request in flight when its
/// connection breaks fails as lost. (Between the connection dying and its task noticing, a
/// request can still be opened and written into it; that one is lost, as it may have reached
/// the server.)
async fn exchange(
    first: Sender,
    shared: Arc<Shared>,
    req: http::Request<Body>,
) -> Result<http::Response<H2Body>, BoxError> {
    let (parts, body) = req.into_parts();
    // A unary request's body is one encoded message, ready at once.
    let data = body.collect().await?.to_bytes();
    send(first, shared, http::Request::from_parts(parts, ()), data).await
}

/// [`exchange`] of a request whose body is `data`.
async fn send(
    first: Sender,
    shared: Arc<Shared>,
    head: http::Request<()>,
    data: Bytes,
) -> Result<http::Response<H2Body>, BoxError> {
    let (mut ready, closed) = match first.send.ready().await {
        Ok(r) => (r, first.closed),
        Err(e) => {
            let _ = lost(&first.closed, e);
            let again = shared.live().await?;
            let ready = again.send.ready().await;
            (ready.map_err(|e| lost(&again.closed, e))?, again.closed)
        }
    };
    let (response, mut stream) = ready
        .send_request(head, false)
        .map_err(|e| lost(&closed, e))?;
    stream.send_data(data, true).map_err(|e| lost(&closed, e))?;
    let response = response.await.map_err(|e| lost(&closed, e))?;
    Ok(response.map(|recv| H2Body::new(recv, Lost(closed))))
}

/// Where [`H2Channel::unary`] calls go: the scheme and authority of the request URIs.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Origin {
    /// `http://HOST:PORT`.
    ///
    /// # Errors
    /// `hostport` is not a valid authority.
    pub fn http(hostport: &str) -> anyhow::Result<Origin> {
        Ok(Origin {
            scheme: http::uri::Scheme::HTTP,
            authority: hostport.parse()?,
        })
    }
}

/// The message of a unary answer, or its status.
async fn answer<A: prost::Message + Default>(
    response: http::Response<H2Body>,
) -> Result<A, tonic::Status> {
    let (parts, mut body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        // Trailers-only: an error (an OK status with no message is one too).
        return Err(if status.code() == tonic::Code::Ok {
            tonic::Status::internal("an OK answer without a message")
        } else {
            status
        });
    }
    if parts.status != http::StatusCode::OK {
        return Err(tonic::Status::unknown(format!(
            "HTTP status {} without a gRPC status",
            parts.status
        )));
    }
    let mut data = kv_proto::frame::Gather::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.map_err(tonic::Status::from_error)?.into_data() {
            Ok(d) => data.push(d),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let status = trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .unwrap_or_else(|| tonic::Status::internal("the answer has no grpc-status"));
    if status.code() != tonic::Code::Ok {
        return Err(status);
    }
    let bad = |why: String| tonic::Status::internal(format!("malformed answer: {why}"));
    let msg = kv_proto::frame::one_message(data.finish(), usize::MAX)
        .map_err(|e| bad(format!("{e:?}")))?;
    A::decode(msg).map_err(|e| bad(e.to_string()))
}

impl tower_service::Service<http::Request<Body>> for H2Channel {
    type Response = http::Response<H2Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.take_reconnected();
        // Waiting for room for a new stream (the server's limit on concurrent streams) happens
        // in `call`, on the request's own handle; a closed connection is reopened there too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        if !self.send.is_closed() {
            return Box::pin(exchange(self.send.clone(), shared, req));
        }
        Box::pin(async move {
            let send = shared.live().await?;
            exchange(send, shared, req).await
        })
    }
}
