//! The `kv.v1.Admin` service: this node's view of the cluster, for `kvctl status`.

use std::sync::Arc;

use kv_proto::kv::v1 as pb;
use tonic::{Request, Response, Status};

use std::time::Duration;

use kv_replica::NodeId;

use crate::fault::{FaultFilter, Faults};
use crate::node::Node;
use crate::transport::Refusals;

/// Serves `kv.v1.Admin` for one node.
pub struct AdminService {
    node: Arc<Node>,
    faults: FaultFilter,
    refusing: Refusals,
}

impl AdminService {
    /// A service over `node`, setting `faults` when fault injection is enabled, and telling
    /// which peers the node `refusing`.
    pub fn new(node: Arc<Node>, faults: FaultFilter, refusing: Refusals) -> Self {
        AdminService {
            node,
            faults,
            refusing,
        }
    }
}

fn spec_of(f: &Faults) -> pb::FaultSpec {
    let mut block: Vec<String> = f.block.iter().map(|n| n.0.clone()).collect();
    block.sort();
    pb::FaultSpec {
        block,
        drop: f.drop.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        delay_ms: f
            .delay
            .iter()
            .map(|(k, v)| (k.clone(), v.as_millis() as u64))
            .collect(),
        jitter_ms: f.jitter.as_millis() as u64,
        clock_offset_ms: f.clock_offset_ms,
        disk_delay_ms: f.disk_delay.as_millis() as u64,
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
        let members = node
            .settings()
            .members
            .iter()
            .map(|(n, addr)| (n.0.clone(), addr.clone()))
            .collect();
        let st = if let Some(h) = node.leaderless() {
            let s = node.storage().stats();
            let c = h.stats();
            pb::NodeStatus {
                id,
                role: if h.refill_state().0 {
                    "refilling".into()
                } else {
                    "replica".into()
                },
                reachable: h.reachable().into_iter().map(|n| n.0).collect(),
                commit_index: s.durable_lsn,
                applied_index: s.durable_lsn,
                last_index: s.last_lsn,
                mode,
                hints_pending: h.hints_pending(),
                hints_for: h
                    .hints_by_target()
                    .into_iter()
                    .map(|(t, n)| (t.0, n))
                    .collect(),
                conflicting_writes: c.conflicts,
                read_repairs: c.read_repairs,
                anti_entropy_repairs: c.ae_repairs,
                hints_delivered: c.hints_delivered,
                members,
                vnodes: node.settings().config.vnodes,
                replicas: node.settings().quorum.n,
                ..Default::default()
            }
        } else {
            match node.replication() {
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
                        follower_lag: s
                            .follower_lag
                            .iter()
                            .map(|(n, l, _)| (n.0.clone(), *l))
                            .collect(),
                        leaders_observed: s.leaders_observed,
                        follower_lag_ms: s
                            .follower_lag
                            .iter()
                            .map(|(n, _, d)| (n.0.clone(), d.as_millis() as u64))
                            .collect(),
                        mode,
                        snapshot_index: s.snapshot_index,
                        log_entries: s.log_entries,
                        members,
                        ..Default::default()
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
                        ..Default::default()
                    }
                }
            }
        };
        let st = pb::NodeStatus {
            faults: Some(spec_of(&self.faults.get())),
            refusing: self
                .refusing
                .list()
                .into_iter()
                .map(|(peer, why)| (peer.0, why))
                .collect(),
            ..st
        };
        Ok(Response::new(st))
    }

    async fn set_faults(
        &self,
        req: Request<pb::FaultSpec>,
    ) -> Result<Response<pb::FaultSpec>, Status> {
        if !self.node.settings().config.enable_fault_injection {
            return Err(Status::permission_denied(
                "fault injection is disabled on this node: start it with --enable-fault-injection",
            ));
        }
        let spec = req.into_inner();
        for (peer, p) in &spec.drop {
            if !(0.0..=1.0).contains(p) {
                return Err(Status::invalid_argument(format!(
                    "drop probability {p} for {peer} is not within 0..=1"
                )));
            }
        }
        let f = Faults {
            block: spec.block.into_iter().map(NodeId).collect(),
            drop: spec.drop.into_iter().collect(),
            delay: spec
                .delay_ms
                .into_iter()
                .map(|(k, v)| (k, Duration::from_millis(v)))
                .collect(),
            jitter: Duration::from_millis(spec.jitter_ms),
            clock_offset_ms: spec.clock_offset_ms,
            disk_delay: Duration::from_millis(spec.disk_delay_ms),
        };
        tracing::warn!(faults = ?f, "fault filter set");
        self.faults.set(f);
        Ok(Response::new(spec_of(&self.faults.get())))
    }
}
