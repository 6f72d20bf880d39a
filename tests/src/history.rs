//! Recording histories against real nodes, for kv-checker: every operation a test client
//! issues, with what it was told and when (docs/history-format.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_checker::{Op, OpKind, Outcome, Report, Verdict};
use kv_proto::kv::v1 as pb;
use tonic::Code;

/// Operations recorded so far, against one time origin.
pub struct Recorder {
    origin: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

/// Whether a write that failed with `code` may still take effect.
fn write_outcome(code: Code) -> Outcome {
    match code {
        // Refused before anything was written (bad input, not the leader, no quorum reachable).
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unavailable => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

fn version_text(v: Option<pb::Version>) -> Option<String> {
    v.map(|v| format!("{}.{}", v.epoch, v.counter))
}

impl Recorder {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// Writes `value` through `c`, recording it; returns whether it was acknowledged.
    pub async fn put(
        &self,
        c: &mut pb::kv_client::KvClient<tonic::transport::Channel>,
        client: u64,
        key: &str,
        value: &str,
        consistency: pb::Consistency,
    ) -> bool {
        let start = self.now();
        let mut req = tonic::Request::new(pb::PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            consistency: Some(consistency),
        });
        req.set_timeout(Duration::from_secs(2));
        let r = c.put(req).await;
        let end = self.now();
        let (outcome, version, node) = match &r {
            Ok(resp) => {
                let resp = resp.get_ref();
                (
                    Outcome::Ok,
                    version_text(resp.version),
                    resp.meta.as_ref().map(|m| m.coordinator.clone()),
                )
            }
            Err(s) => (write_outcome(s.code()), None, None),
        };
        self.push(Op {
            client,
            op: OpKind::Write,
            key: key.into(),
            value: Some(value.into()),
            expected: None,
            applied: None,
            start_ns: start,
            end_ns: end,
            outcome,
            version,
            node,
        });
        r.is_ok()
    }

    /// Reads `key` through `c`, recording it; returns the value read, if it answered.
    pub async fn get(
        &self,
        c: &mut pb::kv_client::KvClient<tonic::transport::Channel>,
        client: u64,
        key: &str,
        consistency: pb::Consistency,
    ) -> Option<Option<String>> {
        let start = self.now();
        let mut req = tonic::Request::new(pb::GetRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            consistency: Some(consistency),
        });
        req.set_timeout(Duration::from_secs(2));
        let r = c.get(req).await;
        let end = self.now();
        let (outcome, value, version, node) = match &r {
            Ok(resp) => {
                let g = resp.get_ref();
                (
                    Outcome::Ok,
                    g.found
                        .then(|| String::from_utf8_lossy(&g.value).into_owned()),
                    version_text(g.version),
                    g.meta.as_ref().map(|m| m.coordinator.clone()),
                )
            }
            Err(_) => (Outcome::Fail, None, None, None),
        };
        self.push(Op {
            client,
            op: OpKind::Read,
            key: key.into(),
            value: value.clone(),
            expected: None,
            applied: None,
            start_ns: start,
            end_ns: end,
            outcome,
            version,
            node,
        });
        (outcome == Outcome::Ok).then_some(value)
    }

    /// The history so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks the history; on a violation prints the picture (text, and an HTML file whose
    /// path is printed) so a failing test shows what happened.
    pub fn check(&self, name: &str) -> Report {
        let ops = self.ops();
        let report = kv_checker::check(&ops, Some(Duration::from_secs(60)), 2, false);
        if report.verdict() == Verdict::Violation {
            for v in report.violations() {
                eprintln!("{}", kv_checker::render::text(v));
            }
            let path = std::env::temp_dir().join(format!("{name}-violation.html"));
            let html = kv_checker::render::html(&report.violations(), name);
            if std::fs::write(&path, html).is_ok() {
                eprintln!("picture: {}", path.display());
            }
        }
        let history = std::env::temp_dir().join(format!("{name}-history.jsonl"));
        let lines: Vec<String> = ops
            .iter()
            .filter_map(|o| serde_json::to_string(o).ok())
            .collect();
        let _ = std::fs::write(&history, lines.join("\n") + "\n");
        eprintln!(
            "{name}: {} operations, {:?} (history: {})",
            ops.len(),
            report.verdict(),
            history.display()
        );
        report
    }
}
