//! `kvctl cluster audit`: every write a history says was acknowledged, looked up in the logs a
//! leader-follower cluster left on disk (a leaderless cluster's copies: [`super::audit_ll`]).
//!
//! A linearizability check sees a lost write only when a later read would have returned it: an
//! acknowledged write overwritten before anybody read it, then lost in a fail-over, leaves no
//! trace in the history. The logs do. In leader-follower mode a write's version is its log
//! position (`TERM.INDEX`), and the committed log is one sequence, so each acknowledged write
//! either is in it at its version, or was rolled back: then a node's `rollback.jsonl` must
//! list it (SPEC.md 4.1: "none disappears silently"). Acknowledged with W at least a majority,
//! it must not be lost at all.
//!
//! The committed log is read from the node whose log ends at the highest (term, index),
//! provided a majority of the nodes hold that last entry: every later leader's log then holds
//! all of it. Compacted entries are checked by their terms, which snapshots keep.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kv_checker::history::{Op, OpKind, Outcome};
use kv_node::raft_log::{self, Recovered};
use kv_replica::leader_follower::{Command, LogIndex, Term, term_from_starts};

use super::audit_ll;

#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// The history of the run (`kv-bench run --history FILE`).
    history: PathBuf,
    /// The cluster's data directory (`cluster up --data-dir`): one directory per node, holding
    /// its raft.log and rollback.jsonl (leader-follower) or its data and hints (leaderless).
    /// Audit it once the cluster has been healed and idle for a few election timeouts, or
    /// stopped.
    #[arg(long)]
    data_dir: PathBuf,
    /// The write quorum the history's writes were acknowledged with. At a majority of the
    /// nodes or more, a write lost even with a rollback record fails the audit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    w: Option<u32>,
    /// Leaderless: the replication factor the cluster ran with. Each key's newest version is
    /// then expected on N nodes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    n: Option<u32>,
    /// Leaderless: also fail when a key's copies differ (with --n: or fewer than N nodes hold
    /// its newest version) or a write is held only in a hint. Audit so once faults have
    /// healed, hints are delivered and anti-entropy has run.
    #[arg(long)]
    converged: bool,
}

/// One node's log: the terms of its entries, by index (compacted ones from its snapshot),
/// and what each entry it still holds writes.
#[derive(Debug)]
pub(crate) struct NodeLog {
    pub id: String,
    /// `(first index, term)` of each term, ascending: the snapshot's, then the entries'.
    terms: Vec<(LogIndex, Term)>,
    /// The last index.
    last: u64,
    /// The entries held (not compacted), by index: the key (`None` for a no-op), and the
    /// value of a put.
    held: HashMap<u64, Written>,
    /// The first index held: before it the log is compacted (known by its terms only).
    first_held: u64,
}

impl NodeLog {
    pub(crate) fn new(id: &str, r: &Recovered) -> NodeLog {
        let mut terms = r.snapshot.terms.clone();
        let mut held = HashMap::new();
        let mut last = r.snapshot.index.0;
        for e in &r.entries {
            // The entries a compaction keeps before the snapshot's end (for followers just
            // behind) are covered by its terms, and still tell what they write.
            let what = match &e.cmd {
                Command::Put { key, value } => (Some(key.to_vec()), Some(value.to_vec())),
                Command::Delete { key } | Command::Cas { key, .. } => (Some(key.to_vec()), None),
                Command::Noop => (None, None),
            };
            held.insert(e.index.0, what);
            if e.index.0 <= r.snapshot.index.0 {
                continue;
            }
            if terms.last().is_none_or(|(_, t)| *t != e.term) {
                terms.push((e.index, e.term));
            }
            last = e.index.0;
        }
        NodeLog {
            id: id.to_string(),
            terms,
            last,
            first_held: r.entries.first().map_or(last + 1, |e| e.index.0),
            held,
        }
    }

    /// The term of the entry at `index` (`None`: past the end, or index 0).
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
        if index == 0 || index > self.last {
            return None;
        }
        term_from_starts(&self.terms, LogIndex(index)).map(|t| t.0)
    }

    fn last_entry(&self) -> (u64, u64) {
        (self.term_at(self.last).unwrap_or(0), self.last)
    }
}

/// What an entry writes: its key (`None`: a no-op) and, for a put, its value.
type Written = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A write a node took out of its log (a `rolled_back_at_ms` line of its rollback file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RolledBack {
    pub node: String,
    pub term: u64,
    pub index: u64,
}

/// Where each acknowledged write went.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub nodes: usize,
    /// The node whose log is taken as the committed one, and its last (term, index).
    pub reference: String,
    pub committed: (u64, u64),
    pub acked: usize,
    pub survived: usize,
    /// Lost, and listed in a rollback file (the nodes that list it).
    pub rolled_back: Vec<(Op, Vec<String>)>,
    /// Not in the committed log, but still in some node's log (not yet reconciled).
    pub pending: Vec<(Op, Vec<String>)>,
    /// Lost with no rollback record.
    pub silent: Vec<Op>,
    /// Its version names a committed entry of another key.
    pub misplaced: Vec<Op>,
    /// Acknowledged without a version: nothing to look up.
    pub unversioned: usize,
    /// Writes the client was told had no effect (`fail`), looked for in the committed log.
    pub failed: usize,
    /// ... and found there, at these indexes.
    pub failed_committed: Vec<(Op, Vec<u64>)>,
    /// A value written once (by the history) that the committed log holds at several
    /// indexes: a write applied twice.
    pub twice: Vec<(String, String, Vec<u64>)>,
    /// The committed log's first entry held: failed writes and repeats before it are not seen.
    pub first_held: u64,
}

/// `TERM.INDEX`.
fn position(version: &str) -> Option<(u64, u64)> {
    let (t, i) = version.split_once('.')?;
    Some((t.parse().ok()?, i.parse().ok()?))
}

/// Looks up every acknowledged write of `ops` in `logs`. Fails when no log can be taken as
/// the committed one (no majority holds the last entry of the most advanced log).
pub(crate) fn audit(
    ops: &[Op],
    logs: &[NodeLog],
    rolled_back: &[RolledBack],
) -> Result<Report, String> {
    let reference = logs
        .iter()
        .max_by_key(|l| l.last_entry())
        .ok_or("no node logs found")?;
    let (term, last) = reference.last_entry();
    let holding = logs
        .iter()
        .filter(|l| l.term_at(last) == Some(term))
        .count();
    if holding * 2 <= logs.len() {
        return Err(format!(
            "the logs have not converged: {} ends at {term}.{last}, which only {holding} of {} \
             nodes hold; audit a healed cluster once it has been idle for a few election \
             timeouts",
            reference.id,
            logs.len()
        ));
    }
    let mut report = Report {
        nodes: logs.len(),
        reference: reference.id.clone(),
        committed: (term, last),
        first_held: reference.first_held,
        ..Report::default()
    };
    // Puts by (key, value): how many writes of the history carry it, and where the committed
    // log holds it. Only values written once tell anything (clients may repeat a value).
    let mut written: HashMap<(&[u8], &[u8]), usize> = HashMap::new();
    for op in ops {
        if let (OpKind::Write | OpKind::Cas, Some(v)) = (op.op, &op.value) {
            *written
                .entry((op.key.as_bytes(), v.as_bytes()))
                .or_default() += 1;
        }
    }
    let mut at: HashMap<(&[u8], &[u8]), Vec<u64>> = HashMap::new();
    for (i, what) in &reference.held {
        if let (Some(k), Some(v)) = what
            && *i <= last
            && written.get(&(k.as_slice(), v.as_slice())) == Some(&1)
        {
            at.entry((k.as_slice(), v.as_slice())).or_default().push(*i);
        }
    }
    for ((k, v), idx) in &mut at {
        if idx.len() > 1 {
            idx.sort_unstable();
            report.twice.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
                idx.clone(),
            ));
        }
    }
    report.twice.sort();
    let mut listed: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    for r in rolled_back {
        let nodes = listed.entry((r.term, r.index)).or_default();
        if !nodes.contains(&r.node) {
            nodes.push(r.node.clone());
        }
    }
    for op in ops {
        if op.outcome == Outcome::Fail && op.op == OpKind::Write {
            report.failed += 1;
            if let Some(idx) = op
                .value
                .as_ref()
                .and_then(|v| at.get(&(op.key.as_bytes(), v.as_bytes())))
            {
                report.failed_committed.push((op.clone(), idx.clone()));
            }
        }
        let acked = op.outcome == Outcome::Ok
            && match op.op {
                OpKind::Write | OpKind::Delete => true,
                OpKind::Cas => op.applied != Some(false),
                OpKind::Read | OpKind::Append => false,
            };
        if !acked {
            continue;
        }
        report.acked += 1;
        let Some((t, i)) = op.version.as_deref().and_then(position) else {
            report.unversioned += 1;
            continue;
        };
        if reference.term_at(i) == Some(t) {
            match reference.held.get(&i) {
                Some((Some(k), _)) if k.as_slice() != op.key.as_bytes() => {
                    report.misplaced.push(op.clone())
                }
                Some((None, _)) => report.misplaced.push(op.clone()),
                _ => report.survived += 1,
            }
        } else if let Some(nodes) = listed.get(&(t, i)) {
            report.rolled_back.push((op.clone(), nodes.clone()));
        } else {
            let holders: Vec<String> = logs
                .iter()
                .filter(|l| l.term_at(i) == Some(t))
                .map(|l| l.id.clone())
                .collect();
            if holders.is_empty() {
                report.silent.push(op.clone());
            } else {
                report.pending.push((op.clone(), holders));
            }
        }
    }
    Ok(report)
}

impl Report {
    /// Whether the audit passes: nothing lost silently or misplaced, and, with `w` at least a
    /// majority, nothing lost at all.
    pub(crate) fn passes(&self, w: Option<u32>) -> bool {
        let majority = w.is_some_and(|w| w as usize * 2 > self.nodes);
        self.silent.is_empty()
            && self.misplaced.is_empty()
            && self.failed_committed.is_empty()
            && self.twice.is_empty()
            && (!majority || (self.rolled_back.is_empty() && self.pending.is_empty()))
    }

    pub(crate) fn render(&self, w: Option<u32>) -> String {
        let mut s = String::new();
        let (t, i) = self.committed;
        let _ = writeln!(
            s,
            "{} acknowledged writes, looked up in the logs of {} nodes (committed log: {}'s, up to {t}.{i})",
            self.acked, self.nodes, self.reference
        );
        row(
            &mut s,
            "in the committed log at their version",
            self.survived,
        );
        row(
            &mut s,
            "lost, listed in a rollback file",
            self.rolled_back.len(),
        );
        row(
            &mut s,
            "not committed, still in a node's log (not reconciled yet)",
            self.pending.len(),
        );
        row(&mut s, "lost with no rollback record", self.silent.len());
        row(
            &mut s,
            "their version holds another key's entry",
            self.misplaced.len(),
        );
        row(
            &mut s,
            "acknowledged without a version (not checked)",
            self.unversioned,
        );
        let _ = writeln!(
            s,
            "{} writes the client was told had no effect, looked for in the committed log{}",
            self.failed,
            if self.first_held > 1 {
                format!(
                    " (held from index {} on: compacted before it, where neither they nor writes \
                     applied twice can be seen; kv-node --snapshot-entries sets how often)",
                    self.first_held
                )
            } else {
                String::new()
            }
        );
        row(
            &mut s,
            "told they had no effect, but committed",
            self.failed_committed.len(),
        );
        row(
            &mut s,
            "written once, committed more than once",
            self.twice.len(),
        );
        show(
            &mut s,
            "lost, in a rollback file",
            with_nodes(&self.rolled_back, "listed by"),
        );
        show(
            &mut s,
            "not reconciled",
            with_nodes(&self.pending, "held by"),
        );
        show(
            &mut s,
            "LOST WITH NO ROLLBACK RECORD",
            self.silent.iter().map(|o| (o, String::new())).collect(),
        );
        show(
            &mut s,
            "VERSION HOLDS ANOTHER ENTRY",
            self.misplaced.iter().map(|o| (o, String::new())).collect(),
        );
        show(
            &mut s,
            "TOLD IT HAD NO EFFECT, BUT COMMITTED",
            self.failed_committed
                .iter()
                .map(|(o, idx)| (o, format!("; at index {idx:?}")))
                .collect(),
        );
        if !self.twice.is_empty() {
            let _ = writeln!(
                s,
                "WRITTEN ONCE, COMMITTED MORE THAN ONCE (first {} of {}):",
                self.twice.len().min(10),
                self.twice.len()
            );
            for (k, v, idx) in self.twice.iter().take(10) {
                let _ = writeln!(s, "  {k} = {} at indexes {idx:?}", short(v));
            }
        }
        let _ = writeln!(s, "verdict: {}", self.verdict(w));
        s
    }

    /// One line: passed or failed, and why.
    fn verdict(&self, w: Option<u32>) -> String {
        let majority = w.is_some_and(|w| w as usize * 2 > self.nodes);
        if !self.failed_committed.is_empty() || !self.twice.is_empty() {
            "FAILED: the committed log holds writes the clients were told failed, or holds one twice"
                .to_string()
        } else if !self.passes(w) {
            if majority && self.silent.is_empty() && self.misplaced.is_empty() {
                format!(
                    "FAILED: writes acknowledged with W={} (a majority) were lost",
                    w.unwrap_or(0)
                )
            } else {
                "FAILED: acknowledged writes unaccounted for".to_string()
            }
        } else if self.rolled_back.is_empty() && self.pending.is_empty() {
            "every acknowledged write is in the committed log".to_string()
        } else {
            "every acknowledged write is in the committed log or in a rollback file".to_string()
        }
    }

    /// The report for `--output json`: the counts of [`Report::render`], every write in each
    /// list (not only the first ten), and the verdict.
    pub(crate) fn to_json(&self, w: Option<u32>) -> serde_json::Value {
        use serde_json::json;
        // Each operation as the history has it (its own serialisation).
        let op = |o: &Op| serde_json::to_value(o).unwrap_or(serde_json::Value::Null);
        let listed = |v: &[(Op, Vec<String>)], field: &str| {
            v.iter()
                .map(|(o, nodes)| {
                    let mut j = op(o);
                    j[field] = json!(nodes);
                    j
                })
                .collect::<Vec<_>>()
        };
        let (term, index) = self.committed;
        json!({
            "passed": self.passes(w),
            "verdict": self.verdict(w),
            "w": w,
            "nodes": self.nodes,
            "committed_log": {"node": self.reference, "term": term, "index": index,
                "first_held": self.first_held},
            "acknowledged": self.acked,
            "committed": self.survived,
            "unversioned": self.unversioned,
            "rolled_back": listed(&self.rolled_back, "listed_by"),
            "not_reconciled": listed(&self.pending, "held_by"),
            "lost_silently": self.silent.iter().map(op).collect::<Vec<_>>(),
            "misplaced": self.misplaced.iter().map(op).collect::<Vec<_>>(),
            "failed_looked_for": self.failed,
            "failed_but_committed": self.failed_committed.iter().map(|(o, idx)| {
                let mut j = op(o);
                j["indexes"] = json!(idx);
                j
            }).collect::<Vec<_>>(),
            "committed_twice": self.twice.iter().map(|(k, v, idx)| {
                json!({"key": k, "value": v, "indexes": idx})
            }).collect::<Vec<_>>(),
        })
    }
}

/// One count of a report: `  what ........ n`.
pub(crate) fn row(s: &mut String, what: &str, n: usize) {
    let _ = writeln!(s, "  {what:<62} {n:>9}");
}

/// The first ten of `ops` under `title` (nothing when there are none), each followed by what
/// the caller says of it.
pub(crate) fn show(s: &mut String, title: &str, ops: Vec<(&Op, String)>) {
    if ops.is_empty() {
        return;
    }
    let _ = writeln!(s, "{title} (first {} of {}):", ops.len().min(10), ops.len());
    for (op, more) in ops.iter().take(10) {
        let what = match (&op.op, &op.value) {
            (OpKind::Delete, _) | (_, None) => format!("delete {}", op.key),
            (kind, Some(v)) => {
                format!(
                    "{} {} = {}",
                    format!("{kind:?}").to_lowercase(),
                    op.key,
                    short(v)
                )
            }
        };
        let _ = writeln!(
            s,
            "  {what} at {} (client {}){more}",
            op.version.as_deref().unwrap_or("?"),
            op.client
        );
    }
}

/// A value cut to its first 24 characters (kv-bench pads its values to their size).
fn short(v: &str) -> String {
    match v.char_indices().nth(24) {
        Some((at, _)) => format!("{}…", &v[..at]),
        None => v.to_string(),
    }
}

/// Each operation with the nodes that list or hold it, in words.
fn with_nodes<'a>(v: &'a [(Op, Vec<String>)], word: &str) -> Vec<(&'a Op, String)> {
    v.iter()
        .map(|(op, n)| (op, format!("; {word} {}", n.join(","))))
        .collect()
}

/// The node directories under `dir` (those holding a raft.log), by name.
fn node_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("raft.log").is_file())
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        .collect();
    out.sort();
    Ok(out)
}

/// The `rolled_back_at_ms` lines of a node's rollback file (none when it has none).
fn rollback_lines(node: &str, path: &Path) -> Result<Vec<RolledBack>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if v.get("rolled_back_at_ms").is_none() {
            continue;
        }
        let num = |f: &str| {
            v.get(f)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("{} line {}: no {f}", path.display(), n + 1))
        };
        out.push(RolledBack {
            node: node.to_string(),
            term: num("term")?,
            index: num("index")?,
        });
    }
    Ok(out)
}

pub(crate) fn run(a: AuditArgs, json: bool) -> ExitCode {
    let ops = match std::fs::File::open(&a.history)
        .map_err(|e| format!("cannot read {}: {e}", a.history.display()))
        .and_then(|f| {
            kv_checker::history::parse(std::io::BufReader::new(f))
                .map(|(ops, _)| ops)
                .map_err(|e| format!("{}: {e}", a.history.display()))
        }) {
        Ok(ops) => ops,
        Err(why) => return fail(why),
    };
    let dirs = match node_dirs(&a.data_dir) {
        Ok(d) if d.is_empty() => return run_leaderless(&a, &ops, json),
        Ok(d) => d,
        Err(why) => return fail(why),
    };
    if a.n.is_some() || a.converged {
        return fail(
            "--n and --converged are for leaderless clusters; this one is leader-follower".into(),
        );
    }
    let mut logs = Vec::new();
    let mut rolled_back = Vec::new();
    for (id, dir) in &dirs {
        match raft_log::read(dir) {
            Ok(r) => logs.push(NodeLog::new(id, &r)),
            Err(e) => return fail(format!("{id}: {e}")),
        }
        match rollback_lines(id, &dir.join("rollback.jsonl")) {
            Ok(mut r) => rolled_back.append(&mut r),
            Err(why) => return fail(why),
        }
    }
    match audit(&ops, &logs, &rolled_back) {
        Ok(r) => finish(json, || r.to_json(a.w), || r.render(a.w), r.passes(a.w)),
        Err(why) => fail(why),
    }
}

/// The audit of a leaderless cluster's data directory (see [`super::audit_ll`]).
fn run_leaderless(a: &AuditArgs, ops: &[Op], json: bool) -> ExitCode {
    let dirs = match audit_ll::node_dirs(&a.data_dir) {
        Ok(d) if d.is_empty() => {
            return fail(format!(
                "no node directory under {} (a cluster's --data-dir: one directory per node, \
                 holding a raft.log in leader-follower mode, or a cluster.toml saying leaderless)",
                a.data_dir.display()
            ));
        }
        Ok(d) => d,
        Err(why) => return fail(why),
    };
    if a.w.is_some() {
        return fail("--w is for leader-follower clusters; this one is leaderless".into());
    }
    let mut nodes = Vec::new();
    for (id, dir) in &dirs {
        match audit_ll::Copies::read(id, dir) {
            Ok(c) => nodes.push(c),
            Err(why) => return fail(why),
        }
    }
    let r = audit_ll::audit(ops, &nodes, a.n.map(|n| n as usize));
    let c = a.converged;
    finish(json, || r.to_json(c), || r.render(c), r.passes(c))
}

/// Says why the audit cannot be made; exit 2.
fn fail(why: String) -> ExitCode {
    eprintln!("kvctl: {why}");
    ExitCode::from(2)
}

/// Prints a report (one JSON document, or text); exit 0 when it passed, 1 when not.
fn finish(
    json: bool,
    doc: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
    passed: bool,
) -> ExitCode {
    if json {
        println!("{}", doc());
    } else {
        print!("{}", text());
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kv_replica::leader_follower::{Entry, Snapshot};

    fn put(term: u64, index: u64, key: &str) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            cmd: Command::Put {
                key: Bytes::from(key.to_string()),
                value: Bytes::from_static(b"v"),
            },
        }
    }

    /// A log of `entries` after a snapshot covering up to `snap` with `terms`.
    fn log(id: &str, snap: u64, terms: &[(u64, u64)], entries: Vec<Entry>) -> NodeLog {
        let r = Recovered {
            snapshot: Snapshot {
                index: LogIndex(snap),
                term: Term(terms.last().map_or(0, |t| t.1)),
                terms: terms
                    .iter()
                    .map(|(i, t)| (LogIndex(*i), Term(*t)))
                    .collect(),
                data: Bytes::new(),
            },
            entries,
            ..Recovered::default()
        };
        NodeLog::new(id, &r)
    }

    fn write(key: &str, version: &str) -> Op {
        Op {
            client: 1,
            op: OpKind::Write,
            key: key.into(),
            value: Some("v".into()),
            expected: None,
            applied: None,
            start_ns: 0,
            end_ns: 1,
            outcome: Outcome::Ok,
            version: Some(version.into()),
            node: None,
        }
    }

    /// Three nodes: n1 and n2 hold the committed log (term 1 up to 3, compacted on n1, then
    /// term 3 from 4 on); n3 still holds an entry of term 2 at index 4 that it never gave up.
    fn cluster() -> Vec<NodeLog> {
        let common = [put(1, 1, "x"), put(1, 2, "y"), put(1, 3, "a")];
        let after = |rest: Vec<Entry>| common.iter().cloned().chain(rest).collect::<Vec<_>>();
        vec![
            log(
                "n1",
                3,
                &[(1, 1)],
                after(vec![put(3, 4, "b"), put(3, 5, "c")])[2..].to_vec(),
            ),
            log("n2", 0, &[], after(vec![put(3, 4, "b"), put(3, 5, "c")])),
            log("n3", 0, &[], after(vec![put(2, 4, "z")])),
        ]
    }

    #[test]
    fn writes_are_found_at_their_version_compacted_or_not() {
        let ops = [write("x", "1.1"), write("a", "1.3"), write("c", "3.5")];
        let r = audit(&ops, &cluster(), &[]).expect("converged");
        assert_eq!((r.acked, r.survived), (3, 3));
        assert_eq!(r.committed, (3, 5));
        assert!(r.passes(Some(2)));
    }

    #[test]
    fn a_lost_write_passes_only_with_its_rollback_record_and_below_a_majority() {
        // 2.4 was acknowledged (W=1) and lost: n3 still holds it, unreconciled.
        let ops = [write("z", "2.4")];
        let r = audit(&ops, &cluster(), &[]).expect("converged");
        assert_eq!(r.pending.len(), 1);
        assert!(r.passes(Some(1)) && !r.passes(Some(2)));
        // Once n3 truncated it, its rollback file lists it.
        let mut logs = cluster();
        logs[2] = log(
            "n3",
            0,
            &[],
            vec![
                put(1, 1, "x"),
                put(1, 2, "y"),
                put(1, 3, "a"),
                put(3, 4, "b"),
            ],
        );
        let listed = [RolledBack {
            node: "n3".into(),
            term: 2,
            index: 4,
        }];
        let r = audit(&ops, &logs, &listed).expect("converged");
        assert_eq!(r.rolled_back.len(), 1);
        assert!(r.passes(Some(1)) && !r.passes(Some(2)));
        // `--output json` says the same, and which node lists the write.
        let j = r.to_json(Some(1));
        assert_eq!(j["passed"], true);
        assert_eq!(j["rolled_back"][0]["key"], "z");
        assert_eq!(j["rolled_back"][0]["version"], "2.4");
        assert_eq!(j["rolled_back"][0]["listed_by"], serde_json::json!(["n3"]));
        assert_eq!(j["lost_silently"], serde_json::json!([]));
        let j = r.to_json(Some(2));
        assert_eq!(j["passed"], false);
        assert!(
            j["verdict"].as_str().is_some_and(|v| v.contains("W=2")),
            "{j}"
        );
        // Without the record it is lost silently: a failure at any W.
        let r = audit(&ops, &logs, &[]).expect("converged");
        assert_eq!(r.silent.len(), 1);
        assert!(!r.passes(Some(1)) && !r.passes(None));
        assert!(r.render(Some(1)).contains("LOST WITH NO ROLLBACK RECORD"));
        assert_eq!(r.to_json(Some(1))["lost_silently"][0]["key"], "z");
    }

    #[test]
    fn a_version_naming_another_keys_entry_fails() {
        let ops = [write("q", "3.4")];
        let r = audit(&ops, &cluster(), &[]).expect("converged");
        assert_eq!(r.misplaced.len(), 1);
        assert!(!r.passes(None));
    }

    fn put_value(term: u64, index: u64, key: &str, value: &str) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            cmd: Command::Put {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
            },
        }
    }

    /// Three nodes holding the same log of `entries`.
    fn agreed(entries: &[Entry]) -> Vec<NodeLog> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|id| log(id, 0, &[], entries.to_vec()))
            .collect()
    }

    #[test]
    fn a_write_told_it_failed_that_the_log_committed_fails() {
        let logs = agreed(&[put_value(1, 1, "a", "w1"), put_value(1, 2, "a", "w2")]);
        let mut ok = write("a", "1.1");
        ok.value = Some("w1".into());
        let mut failed = write("a", "");
        failed.value = Some("w2".into());
        failed.version = None;
        failed.outcome = Outcome::Fail;
        let r = audit(&[ok.clone(), failed.clone()], &logs, &[]).expect("converged");
        assert_eq!((r.failed, r.failed_committed.len()), (1, 1));
        assert!(!r.passes(Some(1)));
        assert!(
            r.render(Some(1))
                .contains("TOLD IT HAD NO EFFECT, BUT COMMITTED")
        );
        // A failed write the log does not hold is as it was told.
        failed.value = Some("w3".into());
        let r = audit(&[ok, failed], &logs, &[]).expect("converged");
        assert_eq!((r.failed, r.failed_committed.len()), (1, 0));
        assert!(r.passes(Some(2)));
    }

    #[test]
    fn a_value_written_once_and_committed_twice_fails_unless_written_twice() {
        let logs = agreed(&[put_value(1, 1, "a", "w1"), put_value(1, 2, "a", "w1")]);
        let mut once = write("a", "1.1");
        once.value = Some("w1".into());
        let r = audit(std::slice::from_ref(&once), &logs, &[]).expect("converged");
        assert_eq!(r.twice, vec![("a".into(), "w1".into(), vec![1, 2])]);
        assert!(!r.passes(None));
        // Two clients writing the same value: two entries are what they asked for.
        let mut again = once.clone();
        again.version = Some("1.2".into());
        let r = audit(&[once, again], &logs, &[]).expect("converged");
        assert!(r.twice.is_empty() && r.passes(None), "{r:?}");
    }

    #[test]
    fn logs_no_majority_holds_the_end_of_are_not_audited() {
        let logs = vec![
            log("n1", 0, &[], vec![put(1, 1, "x"), put(2, 2, "y")]),
            log("n2", 0, &[], vec![put(1, 1, "x")]),
            log("n3", 0, &[], vec![put(1, 1, "x")]),
        ];
        let e = audit(&[], &logs, &[]).expect_err("not converged");
        assert!(e.contains("not converged"), "{e}");
    }

    #[test]
    fn unacknowledged_and_unapplied_operations_are_not_audited() {
        let mut failed = write("x", "9.9");
        failed.outcome = Outcome::Unknown;
        let mut cas = write("x", "9.9");
        cas.op = OpKind::Cas;
        cas.applied = Some(false);
        let mut unversioned = write("x", "1.1");
        unversioned.version = None;
        let r = audit(&[failed, cas, unversioned], &cluster(), &[]).expect("converged");
        assert_eq!((r.acked, r.unversioned, r.silent.len()), (1, 1, 0));
    }

    #[test]
    fn rollback_files_are_read_for_their_rolled_back_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("rollback.jsonl");
        std::fs::write(
            &p,
            "{\"term\":2,\"index\":4,\"op\":\"put\",\"key\":\"z\",\"value\":\"v\",\"rolled_back_at_ms\":5}\n\
             {\"term\":2,\"index\":4,\"op\":\"put\",\"key\":\"z\",\"value\":\"v\",\"survived_at_ms\":6}\n",
        )
        .expect("write");
        let r = rollback_lines("n3", &p).expect("read");
        assert_eq!(
            r,
            vec![RolledBack {
                node: "n3".into(),
                term: 2,
                index: 4
            }]
        );
        assert!(
            rollback_lines("n3", &dir.path().join("none"))
                .expect("absent")
                .is_empty()
        );
        std::fs::write(&p, "not json\n").expect("write");
        assert!(rollback_lines("n3", &p).is_err());
    }
}
