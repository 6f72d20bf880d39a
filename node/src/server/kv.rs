//! The `kv.v1.Kv` service: proto in, [`Node`] call, proto out, one metric per request.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_proto::kv::v1 as pb;
use kv_replica::Version;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::{
    CasOutcome, Consistency, Meta, Node, OnQuorumLoss, ReadFrom, ReadOutcome, WriteOutcome,
};

/// Serves `kv.v1.Kv` from one [`Node`].
#[derive(Clone)]
pub struct KvService {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl KvService {
    /// A service over `node`, counting into `metrics`.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> Self {
        KvService { node, metrics }
    }

    /// Runs one request under its gRPC deadline and counts it.
    async fn call<T>(
        &self,
        op: &'static str,
        deadline: Option<Duration>,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let _in_flight = self.metrics.request_started();
        let res = match deadline {
            Some(d) => match tokio::time::timeout(d, f).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded(d)),
            },
            None => f.await,
        };
        let res = res.map(Response::new).map_err(Status::from);
        let code = res.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.observe_request(op, code, start.elapsed());
        res
    }
}

fn consistency(
    c: Option<pb::Consistency>,
    client_deadline: Option<Duration>,
) -> Result<Consistency, Error> {
    let c = c.unwrap_or_default();
    let read_from = match pb::ReadFrom::try_from(c.read_from) {
        Ok(pb::ReadFrom::Unspecified) => None,
        Ok(pb::ReadFrom::Leader) => Some(ReadFrom::Leader),
        Ok(pb::ReadFrom::Any) => Some(ReadFrom::Any),
        Ok(pb::ReadFrom::Local) => Some(ReadFrom::Local),
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "read_from={} is not a ReadFrom value",
                c.read_from
            )));
        }
    };
    let on_quorum_loss = match pb::OnQuorumLoss::try_from(c.on_quorum_loss) {
        Ok(pb::OnQuorumLoss::Unspecified) => None,
        Ok(pb::OnQuorumLoss::Fail) => Some(OnQuorumLoss::Fail),
        Ok(pb::OnQuorumLoss::Degrade) => Some(OnQuorumLoss::Degrade),
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "on_quorum_loss={} is not an OnQuorumLoss value",
                c.on_quorum_loss
            )));
        }
    };
    Ok(Consistency {
        r: (c.r != 0).then_some(c.r),
        w: (c.w != 0).then_some(c.w),
        read_from,
        on_quorum_loss,
        client_deadline,
    })
}

fn version(v: Version) -> pb::Version {
    pb::Version {
        epoch: v.epoch,
        counter: v.counter,
    }
}

fn meta(m: Meta) -> pb::ResponseMeta {
    pb::ResponseMeta {
        coordinator: m.coordinator.0,
        replicas: m.replicas.into_iter().map(|n| n.0).collect(),
        stale: m.stale,
        lag_entries: m.lag_entries,
        degraded: m.degraded,
        achieved: Some(pb::Consistency {
            r: m.r,
            w: m.w,
            read_from: match m.read_from {
                ReadFrom::Leader => pb::ReadFrom::Leader,
                ReadFrom::Any => pb::ReadFrom::Any,
                ReadFrom::Local => pb::ReadFrom::Local,
            } as i32,
            on_quorum_loss: pb::OnQuorumLoss::Unspecified as i32,
        }),
        superseded_on: m.superseded_on.into_iter().map(|n| n.0).collect(),
    }
}

fn get_response(r: ReadOutcome) -> pb::GetResponse {
    pb::GetResponse {
        found: r.value.is_some(),
        value: r.value.unwrap_or_default(),
        version: r.version.map(version),
        meta: Some(meta(r.meta)),
    }
}

impl KvService {
    /// Counts a degraded answer (`kv_degraded_responses_total`).
    fn count(&self, m: &Meta) {
        if m.degraded {
            self.metrics.degraded_responses.inc();
        }
    }

    /// Counts a read's answer: degraded, and marked stale (`kv_stale_reads_total`).
    fn count_read(&self, m: &Meta) {
        self.count(m);
        if m.stale {
            self.metrics.stale_reads.inc();
        }
    }

    fn write_parts(&self, w: WriteOutcome) -> (Option<pb::Version>, Option<pb::ResponseMeta>) {
        self.count(&w.meta);
        (Some(version(w.version)), Some(meta(w.meta)))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let deadline = super::grpc_timeout(&md);
        self.call("get", deadline, async {
            let c = consistency(r.consistency, deadline)?;
            let out = self.node.get(&r.key, c).await?;
            self.count_read(&out.meta);
            Ok(get_response(out))
        })
        .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let deadline = super::grpc_timeout(&md);
        self.call("put", deadline, async {
            let c = consistency(r.consistency, deadline)?;
            let (version, meta) = self.write_parts(
                self.node
                    .put(crate::detach(r.key), crate::detach(r.value), c)
                    .await?,
            );
            Ok(pb::PutResponse { version, meta })
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let deadline = super::grpc_timeout(&md);
        self.call("delete", deadline, async {
            let c = consistency(r.consistency, deadline)?;
            let (version, meta) =
                self.write_parts(self.node.delete(crate::detach(r.key), c).await?);
            Ok(pb::DeleteResponse { version, meta })
        })
        .await
    }

    async fn compare_and_set(
        &self,
        req: Request<pb::CompareAndSetRequest>,
    ) -> Result<Response<pb::CompareAndSetResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let deadline = super::grpc_timeout(&md);
        self.call("cas", deadline, async {
            let c = consistency(r.consistency, deadline)?;
            let expected = r.expected.map(|v| Version::new(v.epoch, v.counter));
            Ok(
                match self
                    .node
                    .compare_and_set(crate::detach(r.key), expected, crate::detach(r.value), c)
                    .await?
                {
                    CasOutcome::Applied(w) => {
                        let (version, meta) = self.write_parts(w);
                        pb::CompareAndSetResponse {
                            applied: true,
                            version,
                            meta,
                            ..Default::default()
                        }
                    }
                    CasOutcome::NotApplied(cur) => {
                        let g = get_response(cur);
                        pb::CompareAndSetResponse {
                            applied: false,
                            version: g.version,
                            found: g.found,
                            current_value: g.value,
                            meta: g.meta,
                        }
                    }
                },
            )
        })
        .await
    }
}

/// The service of one node that keeps its data in `storage`, for tests.
#[cfg(test)]
pub(crate) fn memory_service(storage: Arc<crate::storage::MemStorage>) -> KvService {
    use crate::config::{Config, StorageKind};
    use crate::metrics::InfoLabels;
    let settings = Config {
        storage: Some(StorageKind::Memory),
        ..Config::default()
    }
    .validate()
    .expect("valid");
    KvService::new(
        Arc::new(Node::new(settings, storage)),
        Arc::new(Metrics::new(
            InfoLabels {
                id: "n1".into(),
                mode: "single".into(),
                quorum: "1/1/1".into(),
                storage: "memory".into(),
            },
            Vec::new(),
        )),
    )
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::storage::{MemStorage, Storage};

    /// Whether `b` points into `buf`'s memory.
    fn inside(b: &bytes::Bytes, buf: &bytes::Bytes) -> bool {
        let r = buf.as_ptr_range();
        r.contains(&b.as_ptr())
    }

    /// A decoded request's bytes are slices of the whole receive buffer; the stored copy must
    /// not be, or every stored value pins a buffer (a leader grew 35 MB/s under load).
    #[tokio::test]
    async fn stored_keys_and_values_do_not_pin_the_request_buffer() {
        let storage = Arc::new(MemStorage::new());
        let svc = memory_service(storage.clone());
        let put = pb::PutRequest {
            key: bytes::Bytes::from_static(b"key"),
            value: bytes::Bytes::from_static(b"value"),
            ..Default::default()
        };
        // Received the way tonic hands it over: decoded from a larger buffer.
        let mut buf = put.encode_to_vec();
        buf.resize(8192, 0);
        let buf = bytes::Bytes::from(buf);
        let received = pb::PutRequest::decode(buf.slice(..put.encoded_len())).expect("decode");
        assert!(inside(&received.value, &buf), "prost slices the buffer");

        pb::kv_server::Kv::put(&svc, Request::new(received))
            .await
            .expect("put");
        let stored = storage.get(b"key").expect("stored");
        let value = stored.value.expect("a value");
        assert_eq!(&value[..], b"value");
        assert!(
            !inside(&value, &buf),
            "the stored value pins the request buffer"
        );
    }
}
