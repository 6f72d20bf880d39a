//! The history format (SPEC.md section 6, `docs/history-format.md`): JSON Lines, one completed
//! operation per line.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Returned `value` (`null`: absent).
    Read,
    /// Set the key to `value`.
    Write,
    /// Set the key to `value` if it held `expected` (`null`: absent).
    Cas,
    /// Removed the key.
    Delete,
    /// Concatenated `value` onto the key's string (absent counts as "").
    Append,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It took effect (a read returned `value`).
    Ok,
    /// It definitely had no effect.
    Fail,
    /// It may or may not have taken effect (a timeout).
    Unknown,
}

/// One completed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (one lane in pictures); a client runs one operation at a time.
    pub client: u64,
    /// The operation.
    pub op: OpKind,
    /// The key.
    pub key: String,
    /// Written, appended or cas'd value; for a read, what it returned (`None`: absent).
    #[serde(default)]
    pub value: Option<String>,
    /// Cas: the value compared against (`None`: the key must be absent).
    #[serde(default)]
    pub expected: Option<String>,
    /// Cas that ran: whether the compare matched (absent: it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// When the client sent it (ns, any epoch; only order matters).
    pub start_ns: u64,
    /// When the client got the answer.
    pub end_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The version the server reported (`EPOCH.COUNTER`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The node that answered, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A line that is not an operation.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Reading failed.
    #[error("cannot read the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not valid.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a history; blank lines and lines starting with `#` are skipped. Records that are not
/// operations (probe records, see [`crate::window`]) are returned apart.
///
/// # Errors
/// The first malformed line, with its number.
pub fn parse(input: impl BufRead) -> Result<(Vec<Op>, Vec<crate::window::Probe>), ParseError> {
    let mut ops = Vec::new();
    let mut probes = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let bad = |reason: String| ParseError::Line {
            line: i + 1,
            reason,
        };
        if t.contains("\"probe\"") {
            let p: crate::window::Probe =
                serde_json::from_str(t).map_err(|e| bad(e.to_string()))?;
            probes.push(p);
            continue;
        }
        let op: Op = serde_json::from_str(t).map_err(|e| bad(e.to_string()))?;
        if op.end_ns < op.start_ns {
            return Err(bad(format!(
                "end_ns {} is before start_ns {}",
                op.end_ns, op.start_ns
            )));
        }
        if matches!(op.op, OpKind::Write | OpKind::Append | OpKind::Cas) && op.value.is_none() {
            return Err(bad(format!("a {:?} needs a value", op.op).to_lowercase()));
        }
        ops.push(op);
    }
    Ok((ops, probes))
}
