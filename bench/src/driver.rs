//! Drivers: the same workload against quorumkv (gRPC) or a peer system (Redis).

use std::time::Duration;

use bytes::Bytes;
use kv_proto::kv::v1 as pb;
use kv_proto::kv::v1::kv_client::KvClient;

use crate::h2::H2Channel;

/// Which system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// quorumkv over gRPC.
    Kv,
    /// Redis (RESP), e.g. `redis-server --save '' --appendonly no`.
    Redis,
    /// etcd v3 over gRPC (reads linearizable; `--read-from any` makes them serializable).
    Etcd,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kv" => Ok(DriverKind::Kv),
            "redis" => Ok(DriverKind::Redis),
            "etcd" => Ok(DriverKind::Etcd),
            o => Err(format!(
                "unknown --driver {o:?}: expected kv, etcd or redis"
            )),
        }
    }
}

/// Why an operation failed, as counted in the summary.
pub type ErrorKind = &'static str;

/// What an error says about the operation's effect (for histories): `fail` when it was refused
/// before taking effect, `unknown` when it may have happened.
pub fn may_have_happened(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        "unavailable" | "invalid_argument" | "failed_precondition" | "unsupported"
    )
}

/// What a read returned.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// The value, `None` when absent.
    pub value: Option<Bytes>,
    /// The version, `EPOCH.COUNTER` (etcd: `mod_revision.0`), when the system reports one.
    pub version: Option<String>,
    /// The answer is marked degraded (quorumkv, `on_quorum_loss=degrade`).
    pub degraded: bool,
}

/// What a write (or delete) returned.
#[derive(Debug, Clone, Default)]
pub struct WriteResult {
    /// The version given to it, when the system reports one.
    pub version: Option<String>,
    /// The answer is marked degraded.
    pub degraded: bool,
}

/// One connection of a client.
#[derive(Clone)]
pub enum Conn {
    /// quorumkv; the consistency sent with every request.
    Kv(KvClient<H2Channel>, pb::Consistency),
    /// Redis.
    Redis(redis::aio::MultiplexedConnection),
    /// etcd; whether reads are serializable.
    Etcd(crate::etcdpb::kv_client::KvClient<H2Channel>, bool),
}

/// Opens `count` connections to `endpoints` (spread round robin).
///
/// # Errors
/// An endpoint refuses or is malformed.
pub async fn connect(
    kind: DriverKind,
    endpoints: &[String],
    count: usize,
    consistency: pb::Consistency,
) -> anyhow::Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let ep = &endpoints[i % endpoints.len()];
        out.push(match kind {
            DriverKind::Etcd => {
                let hostport = ep.trim_start_matches("http://");
                let ch = tokio::time::timeout(Duration::from_secs(5), H2Channel::connect(hostport))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to etcd at {ep}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to etcd at {ep}: {e}"))?;
                let origin: http::Uri = format!("http://{hostport}").parse()?;
                let serializable = consistency.read_from == pb::ReadFrom::Any as i32
                    || consistency.read_from == pb::ReadFrom::Local as i32;
                Conn::Etcd(
                    crate::etcdpb::kv_client::KvClient::with_origin(ch, origin),
                    serializable,
                )
            }
            DriverKind::Kv => {
                let hostport = ep.trim_start_matches("http://");
                let ch = tokio::time::timeout(Duration::from_secs(5), H2Channel::connect(hostport))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to {ep}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to {ep}: {e}"))?;
                let origin: http::Uri = format!("http://{hostport}").parse()?;
                Conn::Kv(KvClient::with_origin(ch, origin), consistency)
            }
            DriverKind::Redis => {
                let url = if ep.contains("://") {
                    ep.clone()
                } else {
                    format!("redis://{ep}/")
                };
                let client = redis::Client::open(url.as_str())?;
                let c = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to redis at {ep}: {e}"))?;
                Conn::Redis(c)
            }
        });
    }
    Ok(out)
}

fn status_kind(s: &tonic::Status) -> ErrorKind {
    use tonic::Code::*;
    match s.code() {
        DeadlineExceeded | Cancelled => "deadline_exceeded",
        Unavailable => "unavailable",
        InvalidArgument => "invalid_argument",
        FailedPrecondition => "failed_precondition",
        Internal => "internal",
        _ => "other",
    }
}

impl Conn {
    /// Reads `key`.
    ///
    /// # Errors
    /// The error kind.
    pub async fn get(&mut self, key: &str, timeout: Duration) -> Result<ReadResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::GetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let g = c.get(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(ReadResult {
                    value: g.found.then_some(g.value),
                    version: g.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: g.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(c, serializable) => {
                let mut r = tonic::Request::new(crate::etcdpb::RangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    serializable: *serializable,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                let g = c.range(r).await.map_err(|s| status_kind(&s))?.into_inner();
                let kv = g.kvs.into_iter().next();
                Ok(ReadResult {
                    version: kv.as_ref().map(|kv| format!("{}.0", kv.mod_revision)),
                    value: kv.map(|kv| kv.value),
                    degraded: false,
                })
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                let f = cmd.query_async::<Option<Vec<u8>>>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(v)) => Ok(ReadResult {
                        value: v.map(Bytes::from),
                        ..ReadResult::default()
                    }),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Writes `key`; returns the version given to the write, when the system reports one.
    ///
    /// # Errors
    /// The error kind.
    pub async fn put(
        &mut self,
        key: &str,
        value: Bytes,
        timeout: Duration,
    ) -> Result<WriteResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let p = c.put(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: p.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: p.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(c, _) => {
                let mut r = tonic::Request::new(crate::etcdpb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                let p = c.put(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: p.header.map(|h| format!("{}.0", h.revision)),
                    degraded: false,
                })
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(&value[..]);
                let f = cmd.query_async::<()>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(())) => Ok(WriteResult::default()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Deletes `key` (quorumkv and Redis; etcd runs refuse a mix with deletes at start-up).
    ///
    /// # Errors
    /// The error kind.
    pub async fn delete(&mut self, key: &str, timeout: Duration) -> Result<WriteResult, ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::DeleteRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let d = c.delete(r).await.map_err(|s| status_kind(&s))?.into_inner();
                Ok(WriteResult {
                    version: d.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                    degraded: d.meta.is_some_and(|m| m.degraded),
                })
            }
            Conn::Etcd(..) => Err("unsupported"),
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                let f = cmd.query_async::<i64>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(_)) => Ok(WriteResult::default()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Compare-and-set (quorumkv only): writes `value` if `key` is at `expected` (`None`:
    /// absent). Returns whether it applied and the version (new, or current when not applied).
    ///
    /// # Errors
    /// The error kind (`unsupported` for other systems).
    pub async fn cas(
        &mut self,
        key: &str,
        expected: Option<(u64, u64)>,
        value: Bytes,
        timeout: Duration,
    ) -> Result<(bool, Option<String>), ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::CompareAndSetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    expected: expected.map(|(epoch, counter)| pb::Version { epoch, counter }),
                    value,
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                let a = c
                    .compare_and_set(r)
                    .await
                    .map_err(|s| status_kind(&s))?
                    .into_inner();
                Ok((
                    a.applied,
                    a.version.map(|v| format!("{}.{}", v.epoch, v.counter)),
                ))
            }
            Conn::Etcd(..) | Conn::Redis(..) => Err("unsupported"),
        }
    }
}
