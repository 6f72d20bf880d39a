//! The node's gRPC server: HTTP/2 with the `h2` crate on the connections that
//! [`crate::transport::split_incoming`] hands over.
//!
//! The four unary methods of `kv.v1.Kv` are served here directly: the request's one message is
//! read from its stream, decoded with prost, given to [`KvService`], and the answer goes back as
//! headers, one data frame and the `grpc-status` trailer (or, for an error, a trailers-only
//! response, as tonic sends it). Everything else (health, reflection, `kv.v1.Admin`, and any
//! `kv.v1.Kv` request this path does not take: a compressed one, say) goes to tonic's
//! [`Routes`], through an adapter from h2's streams to `http_body`.
//!
//! Why not tonic's server for all of it: on a leader-follower leader at 256 clients, a
//! request's own task (hyper's `H2Stream`, tower's layers, axum's router, tonic's codec, before
//! and after the service's own code) took 44% of the node's runtime thread; the service's code
//! was 18 of it. The settings are hyper's defaults, which tonic kept: 1 MiB stream and
//! connection windows, 16 KiB frames and header lists, a 400 KiB send buffer, no limit on
//! concurrent streams.

use std::future::poll_fn;
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use kv_proto::frame::{self, Malformed};
use kv_proto::h2body::{AsIs, H2Body};
use kv_proto::kv::v1::kv_server::Kv as _;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;
use tonic::codegen::Service as _;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;

use super::kv::KvService;

/// How long connections may take to close once the node stops (a health `Watch` stream,
/// say, would hold one open for good); then they are dropped.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves every connection `incoming` yields, each on a task of its own, until `stop` turns
/// true; then each connection is closed gracefully (GOAWAY: requests under way finish) and
/// this returns once every connection has closed, or after `DRAIN`.
pub async fn serve<S, I>(
    mut incoming: S,
    kv: KvService,
    routes: Routes,
    max_message: usize,
    mut stop: watch::Receiver<bool>,
) where
    S: Stream<Item = std::io::Result<I>> + Unpin,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = Arc::new(Svc {
        kv,
        routes,
        max_message,
    });
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            io = incoming.next() => io,
            _ = stop.wait_for(|s| *s) => None,
        };
        match io {
            Some(Ok(io)) => {
                conns.spawn(connection(io, svc.clone(), stop.clone()));
            }
            Some(Err(e)) => tracing::debug!(error = %e, "connection not accepted"),
            None => break,
        }
        while conns.try_join_next().is_some() {}
    }
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still open {DRAIN:?} after the node stopped: dropped"
        );
        conns.abort_all();
    }
}

/// What a connection's streams are served by.
struct Svc {
    kv: KvService,
    routes: Routes,
    max_message: usize,
}

async fn connection<I>(io: I, svc: Arc<Svc>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        c = handshake => match c {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                tokio::spawn(stream(req, respond, svc.clone()));
            }
            Some(Err(e)) => {
                if !e.is_go_away() && !e.is_io() {
                    tracing::debug!(error = %e, "HTTP/2 connection failed");
                }
                return;
            }
            None => return,
        }
    }
}

/// The unary methods of `kv.v1.Kv` served here.
#[derive(Clone, Copy)]
enum Method {
    Get,
    Put,
    Delete,
    CompareAndSet,
}

impl Method {
    fn of(req: &Request<RecvStream>) -> Option<Method> {
        // A message compressed with the client's choice of encoding: tonic answers that.
        if req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity")
        {
            return None;
        }
        Some(match req.uri().path() {
            "/kv.v1.Kv/Get" => Method::Get,
            "/kv.v1.Kv/Put" => Method::Put,
            "/kv.v1.Kv/Delete" => Method::Delete,
            "/kv.v1.Kv/CompareAndSet" => Method::CompareAndSet,
            _ => return None,
        })
    }
}

async fn stream(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, svc: Arc<Svc>) {
    let Some(method) = Method::of(&req) else {
        return fallback(req, respond, svc.routes.clone()).await;
    };
    // A stream the client resets (its deadline passed, it went away) drops the call, as
    // hyper does.
    let answer = tokio::select! {
        a = unary(method, req, &svc) => a,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let sent = match answer {
        Ok((metadata, body)) => {
            let mut head = Response::new(());
            *head.headers_mut() = metadata.into_headers();
            head.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            respond.send_response(head, false).and_then(|mut s| {
                s.send_data(body, false)?;
                let mut trailers = HeaderMap::with_capacity(1);
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                s.send_trailers(trailers)
            })
        }
        Err(status) => respond
            .send_response(status.into_http::<()>(), true)
            .map(drop),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "answer not sent");
    }
}

/// Reads the request's message, has the service answer it, and encodes the answer.
async fn unary(
    method: Method,
    req: Request<RecvStream>,
    svc: &Svc,
) -> Result<(MetadataMap, Bytes), Status> {
    let (parts, body) = req.into_parts();
    let msg = read_message(body, svc.max_message).await?;
    let md = MetadataMap::from_headers(parts.headers);
    let kv = &svc.kv;
    let (md, out) = match method {
        Method::Get => reply(kv.get(request(md, msg)?).await?),
        Method::Put => reply(kv.put(request(md, msg)?).await?),
        Method::Delete => reply(kv.delete(request(md, msg)?).await?),
        Method::CompareAndSet => reply(kv.compare_and_set(request(md, msg)?).await?),
    };
    if out.len() - 5 > svc.max_message {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {} bytes, the limit is: {} bytes",
            out.len() - 5,
            svc.max_message
        )));
    }
    Ok((md, out))
}

fn request<T: Message + Default>(md: MetadataMap, msg: Bytes) -> Result<tonic::Request<T>, Status> {
    let m = T::decode(msg).map_err(|e| Status::internal(e.to_string()))?;
    Ok(tonic::Request::from_parts(
        md,
        http::Extensions::default(),
        m,
    ))
}

/// The answer's metadata and its message with the gRPC length prefix.
fn reply<T: Message>(r: tonic::Response<T>) -> (MetadataMap, Bytes) {
    let (md, m, _) = r.into_parts();
    (md, frame::encode(&m))
}

/// The one message of a unary request: its length prefix read and checked, its bytes (one
/// data frame's, without a copy, when it came in one).
async fn read_message(mut body: RecvStream, max: usize) -> Result<Bytes, Status> {
    let mut data = frame::Gather::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Status::cancelled(format!("request stream: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.push(chunk);
        if data.len() > max.saturating_add(5) {
            return Err(too_large(data.len() - 5, max));
        }
    }
    frame::one_message(data.finish(), max).map_err(|e| match e {
        Malformed::Short => Status::internal("the request ended before its message did"),
        Malformed::Compressed => {
            Status::internal("a compressed message without a grpc-encoding header")
        }
        Malformed::TooLarge(len) => too_large(len, max),
        Malformed::Trailing => Status::unimplemented("more than one message in a unary request"),
    })
}

fn too_large(len: usize, max: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
    ))
}

/// Any other request: tonic's routes serve it; its answer is copied to the stream as it comes
/// (server-streaming calls, health's `Watch`, included).
async fn fallback(req: Request<RecvStream>, respond: SendResponse<Bytes>, mut routes: Routes) {
    let req = req.map(|recv| H2Body::new(recv, AsIs));
    let ready =
        poll_fn(|cx| tonic::codegen::Service::<Request<H2Body<AsIs>>>::poll_ready(&mut routes, cx));
    let answer = match ready.await {
        Ok(()) => routes.call(req).await,
        Err(e) => Err(e),
    };
    let Ok(answer) = answer; // Routes never fails: an unknown path is an `unimplemented` answer
    if let Err(e) = copy_answer(answer, respond).await {
        tracing::debug!(error = %e, "answer not sent");
    }
}

async fn copy_answer(
    answer: Response<tonic::body::Body>,
    mut respond: SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = answer.into_parts();
    let end = http_body::Body::is_end_stream(&body);
    let mut send = respond.send_response(Response::from_parts(parts, ()), end)?;
    if end {
        return Ok(());
    }
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return Ok(()),
        };
        match frame {
            None => return send.send_data(Bytes::new(), true),
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => send.send_data(data, false)?,
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        return send.send_trailers(t);
                    }
                }
            },
            Some(Err(status)) => {
                let mut trailers = HeaderMap::new();
                if status.add_header(&mut trailers).is_err() {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Ok(());
                }
                return send.send_trailers(trailers);
            }
        }
    }
}
