//! The `kv.v1.Admin` service: this node's view of the cluster, for `kvctl status`.

use std::sync::Arc;

use kv_proto::kv::v1 as pb;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// Serves `kv.v1.Admin` for one node.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = &self.node;
        let mode = node.settings().config.mode.to_string();
        let id = node.id().0.clone();
        let st = match node.replication() {
            Some(d) => {
                let s = d.status();
                pb::NodeStatus {
                    id,
                    role: s.role.to_string(),
                    term: s.term,
                    leader: s.leader.map(|l| l.0).unwrap_or_default(),
                    reachable: s.reachable.into_iter().map(|n| n.0).collect(),
                    commit_index: s.commit,
                    applied_index: s.applied,
                    last_index: s.last,
                    follower_lag: s.follower_lag.into_iter().map(|(n, l)| (n.0, l)).collect(),
                    mode,
                }
            }
            None => {
                let s = node.storage().stats();
                pb::NodeStatus {
                    leader: id.clone(),
                    id,
                    role: "leader".into(),
                    term: 1,
                    reachable: Vec::new(),
                    commit_index: s.durable_lsn,
                    applied_index: s.durable_lsn,
                    last_index: s.last_lsn,
                    follower_lag: Default::default(),
                    mode,
                }
            }
        };
        Ok(Response::new(st))
    }
}
