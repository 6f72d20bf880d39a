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

use std::future::{Future as _, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// How many requests a connection hands to their tasks before it lets them run, while answers
/// are ready at once (see [`Slices`]). One in-memory node, one connection, medians of runs by
/// hand against none: at 16 clients every 4 requests 1.65x, every 8 1.88x, every 16 1.04x (16
/// clients never put more in a pass); at 256 clients every 8 2.29x, every 32 2.10x.
const SLICE: u32 = 8;

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
    let mut slices = Slices::default();
    loop {
        if slices.due() {
            tokio::task::yield_now().await;
        }
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
                slices.accepted += 1;
                tokio::spawn(stream(req, respond, svc.clone(), slices.quick.clone()));
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

/// When a connection lets the tasks of the requests it has read run before it reads more.
///
/// Without this, a connection's task reads every request in its buffer and spawns a task for
/// each before any of them runs, and all the answers leave together: the client waits for the
/// last answer before it has the first, and client and node take turns instead of working at
/// once. So while answers come at once (a read of a single node, say: no replication, flush
/// or peer to wait for), the connection lets the tasks it spawned run every [`SLICE`]
/// requests, and their answers leave before the rest is read. Answers that wait for something
/// else leave when it comes anyway; splitting a pass then costs a write of its own for
/// nothing (0.90x for a leader-follower leader at 256 clients, every 32 requests).
#[derive(Default)]
struct Slices {
    /// Requests of this connection answered at once (their task's first poll).
    quick: Arc<AtomicU64>,
    /// `quick` when it was last looked at.
    seen: u64,
    /// Requests read since it was last looked at.
    accepted: u32,
}

impl Slices {
    /// Whether to let the requests' tasks run now: [`SLICE`] requests were read, and some
    /// answers came at once since the last look.
    fn due(&mut self) -> bool {
        if self.accepted < SLICE {
            return false;
        }
        self.accepted = 0;
        let now = self.quick.load(Ordering::Relaxed);
        let due = now != self.seen;
        self.seen = now;
        due
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

async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    svc: Arc<Svc>,
    quick: Arc<AtomicU64>,
) {
    let Some(method) = Method::of(&req) else {
        return fallback(req, respond, svc.routes.clone()).await;
    };
    let call = unary(method, req, &svc);
    let mut call = std::pin::pin!(call);
    let mut waited = false;
    // A stream the client resets (its deadline passed, it went away) drops the call, as
    // hyper does.
    let answer = tokio::select! {
        a = poll_fn(|cx| {
            let p = call.as_mut().poll(cx);
            waited |= p.is_pending();
            p
        }) => a,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    if !waited {
        quick.fetch_add(1, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use kv_proto::coalesce::Coalescing;
    use kv_proto::kv::v1 as pb;
    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;
    use crate::storage::MemStorage;

    /// The node's side of a connection: what it wrote, and where it flushed.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        flushes: Vec<usize>,
    }

    struct Recorder {
        inner: DuplexStream,
        wire: Arc<Mutex<Wire>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
            self.wire
                .lock()
                .expect("wire")
                .bytes
                .extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut w = self.wire.lock().expect("wire");
            let at = w.bytes.len();
            if w.flushes.last() != Some(&at) {
                w.flushes.push(at);
            }
            drop(w);
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// How many DATA frames of answers each flush from `from` on carried (flushes without any
    /// left out).
    fn answers_per_flush(wire: &Wire, from: usize) -> Vec<usize> {
        let mut counts = Vec::new();
        let mut at = 0;
        let mut segment_end = wire.flushes.iter().copied();
        let mut end = segment_end.next();
        let mut count = 0;
        while at + 9 <= wire.bytes.len() {
            let h = &wire.bytes[at..at + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            while end.is_some_and(|e| at >= e) {
                if count > 0 {
                    counts.push(count);
                }
                count = 0;
                end = segment_end.next();
            }
            if at >= from && h[3] == 0 && stream != 0 {
                count += 1;
            }
            at += 9 + len;
        }
        if count > 0 {
            counts.push(count);
        }
        counts
    }

    fn memory_node() -> Arc<Svc> {
        Arc::new(Svc {
            kv: crate::server::kv::memory_service(Arc::new(MemStorage::new())),
            routes: Routes::default(),
            max_message: 4 << 20,
        })
    }

    /// Sends `n` puts at once (one write of the client) and waits for every answer.
    async fn puts(client: &mut h2::client::SendRequest<Bytes>, n: usize) {
        let mut answers = Vec::new();
        for i in 0..n {
            let req = Request::post("http://node/kv.v1.Kv/Put")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let (answer, mut body) = client.send_request(req, false).expect("stream");
            let put = pb::PutRequest {
                key: Bytes::from(format!("key-{i}")),
                value: Bytes::from_static(b"value"),
                ..Default::default()
            };
            body.send_data(frame::encode(&put), true).expect("data");
            answers.push(answer);
        }
        for a in answers {
            let mut body = a.await.expect("answer").into_body();
            while body.data().await.is_some() {}
            let trailers = body.trailers().await.expect("trailers").expect("some");
            assert_eq!(trailers.get("grpc-status").expect("status"), "0");
        }
    }

    /// 32 requests read in one pass, answered at once by an in-memory node: once the
    /// connection has seen answers come at once, they leave in slices of `SLICE` as they are
    /// ready, not all together after the last one is read.
    #[tokio::test]
    async fn answers_ready_at_once_leave_before_the_rest_is_read() {
        let (client_io, node_io) = tokio::io::duplex(1 << 20);
        let wire = Arc::new(Mutex::new(Wire::default()));
        let node_io = Coalescing::new(Recorder {
            inner: node_io,
            wire: wire.clone(),
        });
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(connection(node_io, memory_node(), stop_rx));
        let (mut client, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(conn);

        // The first pass: nothing was answered yet, so nothing tells the connection to
        // slice it.
        puts(&mut client, 32).await;
        let from = wire.lock().expect("wire").bytes.len();
        let first = answers_per_flush(&wire.lock().expect("wire"), 0);
        assert_eq!(first, [32], "the first pass's answers leave together");
        // The second: its answers leave as each slice of them is done.
        puts(&mut client, 32).await;
        let second = answers_per_flush(&wire.lock().expect("wire"), from);
        assert_eq!(second.iter().sum::<usize>(), 32);
        assert!(
            second.len() >= 32 / SLICE as usize && second.iter().all(|&n| n <= SLICE as usize),
            "answers per flush: {second:?}"
        );
    }

    #[test]
    fn a_connection_slices_only_while_answers_come_at_once() {
        let mut s = Slices {
            accepted: SLICE - 1,
            ..Slices::default()
        };
        assert!(!s.due(), "fewer than SLICE requests read");
        s.accepted = SLICE;
        assert!(!s.due(), "no answer came at once");
        assert_eq!(s.accepted, 0);
        s.quick.fetch_add(3, Ordering::Relaxed);
        s.accepted = SLICE;
        assert!(s.due());
        // Nothing answered at once since: the next SLICE requests are read on.
        s.accepted = SLICE;
        assert!(!s.due());
    }
}
