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
    pub async fn get(&mut self, key: &str, timeout: Duration) -> Result<(), ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::GetRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                c.get(r).await.map(|_| ()).map_err(|s| status_kind(&s))
            }
            Conn::Etcd(c, serializable) => {
                let mut r = tonic::Request::new(crate::etcdpb::RangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    serializable: *serializable,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                c.range(r).await.map(|_| ()).map_err(|s| status_kind(&s))
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                let f = cmd.query_async::<Option<Vec<u8>>>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }

    /// Writes `key`.
    ///
    /// # Errors
    /// The error kind.
    pub async fn put(
        &mut self,
        key: &str,
        value: Bytes,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        match self {
            Conn::Kv(c, cons) => {
                let mut r = tonic::Request::new(pb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    consistency: Some(*cons),
                });
                r.set_timeout(timeout);
                c.put(r).await.map(|_| ()).map_err(|s| status_kind(&s))
            }
            Conn::Etcd(c, _) => {
                let mut r = tonic::Request::new(crate::etcdpb::PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value,
                    ..Default::default()
                });
                r.set_timeout(timeout);
                c.put(r).await.map(|_| ()).map_err(|s| status_kind(&s))
            }
            Conn::Redis(c) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(&value[..]);
                let f = cmd.query_async::<()>(c);
                match tokio::time::timeout(timeout, f).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("redis_error"),
                    Err(_) => Err("deadline_exceeded"),
                }
            }
        }
    }
}
