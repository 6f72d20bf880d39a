//! `kvctl cluster audit` of a leaderless cluster: every write a history says was acknowledged,
//! looked up in the copies the nodes hold, and whether the replicas of each key agree.
//!
//! A leaderless write's version is `HLC.COORDINATOR`, and each replica keeps the newest version
//! of each key it has seen (last writer wins). An acknowledged write has survived when some
//! node holds its key at its version, or at a newer one (a later or concurrent write that won,
//! as Cassandra's and Riak's last-writer-wins would have it); issue #4: "no acknowledged write
//! is lost while at least one of its replicas survives". A write some node holds only as a
//! hint for a replica that has not had it yet is not lost, but not delivered either. Nothing
//! else can hide it: a linearizability check misses a lost write nobody read, and a stale read
//! at R+W <= N is allowed.
//!
//! The same copies tell whether the replicas have converged: every node holding a key at its
//! newest version, and with `--n`, N of them. Once faults have healed, hints are delivered and
//! anti-entropy has run, they must (issue #4); `--converged` makes that part of the verdict.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kv_checker::history::{Op, OpKind, Outcome};
use kv_replica::Version;

use super::audit::{row, show};

/// What one node holds: the newest copy of each key in its data, and its live hints (for
/// replicas that have not had them yet).
#[derive(Debug, Default)]
pub(crate) struct Copies {
    pub id: String,
    /// Key -> version and value (`None`: a tombstone).
    pub data: HashMap<Bytes, (Version, Option<Bytes>)>,
    /// Key -> (the replica it is for, version) of each hint not yet delivered.
    pub hints: HashMap<Bytes, Vec<(String, Version)>>,
}

impl Copies {
    /// Reads the copies a stopped leaderless node left in `dir` (its data, and its hints
    /// under `hints/`), modifying nothing.
    pub(crate) fn read(id: &str, dir: &Path) -> Result<Copies, String> {
        let entries = |d: &Path| {
            kv_node::storage::read_entries(d)
                .map(|(e, _)| e)
                .map_err(|e| format!("{id}: {e}"))
        };
        let mut c = Copies {
            id: id.to_string(),
            ..Copies::default()
        };
        for (k, e) in entries(dir)? {
            c.data.insert(k, (e.version, e.value));
        }
        let hints = dir.join("hints");
        if hints.is_dir() {
            for (k, e) in entries(&hints)? {
                // `target \0 key`; a delivered hint is a tombstone in the hint store (a
                // hinted delete is not: its value is a flag byte, see kv_node::leaderless).
                if e.value.is_none() {
                    continue;
                }
                if let Some(end) = k.iter().position(|&b| b == 0) {
                    let target = String::from_utf8_lossy(&k[..end]).into_owned();
                    c.hints
                        .entry(k.slice(end + 1..))
                        .or_default()
                        .push((target, e.version));
                }
            }
        }
        Ok(c)
    }
}

/// A key whose copies differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diverged {
    pub key: String,
    pub newest: Version,
    /// The nodes holding the newest version.
    pub at_newest: Vec<String>,
    /// The nodes holding an older one, with it.
    pub behind: Vec<(String, Version)>,
}

/// What the audit found.
#[derive(Debug, Default)]
pub(crate) struct LlReport {
    pub nodes: usize,
    pub keys: usize,
    pub n: Option<usize>,
    pub acked: usize,
    pub unversioned: usize,
    /// Held by some node at their version.
    pub at_version: usize,
    /// Held at a newer version (overwritten by a later or concurrent write).
    pub superseded: usize,
    /// Their key is held nowhere and the history deletes it: a tombstone purged after its
    /// grace period (whether this write came before the delete cannot be told).
    pub purged: usize,
    /// Held newer only in hints, by these nodes.
    pub hinted: Vec<(Op, Vec<String>)>,
    /// Held at an older version or not at all, and in no hint.
    pub lost: Vec<Op>,
    /// A node holds their key at their version with another value, or their value (written
    /// once) at another version: one version, two writes.
    pub misplaced: Vec<(Op, String)>,
    /// Writes the client was told failed, and how many of them (puts of a value written once)
    /// some node holds (a leaderless write that failed may still have reached some replicas).
    pub failed: usize,
    pub failed_held: usize,
    /// How many keys have their newest version on 1, 2, 3, ... nodes.
    pub holders: BTreeMap<usize, usize>,
    pub diverged: Vec<Diverged>,
    /// Copies of keys the history writes holding a value (or a tombstone) that none of its
    /// writes to the key wrote: (key, node, version). Damage, or a write from nowhere.
    pub unexplained: Vec<(String, String, Version)>,
}

fn is_acked(op: &Op) -> bool {
    op.outcome == Outcome::Ok
        && match op.op {
            OpKind::Write | OpKind::Delete => true,
            OpKind::Cas => op.applied != Some(false),
            OpKind::Read | OpKind::Append => false,
        }
}

/// The value a write leaves (`None`: a delete).
fn written(op: &Op) -> Option<&[u8]> {
    match op.op {
        OpKind::Delete => None,
        _ => op.value.as_deref().map(str::as_bytes),
    }
}

/// The writes of one key, by the value they wrote (`None`: deletes).
type Writes<'a> = HashMap<Option<&'a [u8]>, Vec<&'a Op>>;

/// The version the history gives `op`, when it gives one.
fn version_of(op: &Op) -> Option<Version> {
    op.version.as_deref().and_then(|v| v.parse().ok())
}

/// Looks up every acknowledged write of `ops` in `nodes`, and compares each key's copies
/// (`n`: the replication factor, when known).
pub(crate) fn audit(ops: &[Op], nodes: &[Copies], n: Option<usize>) -> LlReport {
    let mut r = LlReport {
        nodes: nodes.len(),
        n,
        ..LlReport::default()
    };
    // Each key's newest version held by any node, and who holds what.
    let mut keys: HashMap<&Bytes, Vec<(&str, Version)>> = HashMap::new();
    for c in nodes {
        for (k, (v, _)) in &c.data {
            keys.entry(k).or_default().push((&c.id, *v));
        }
    }
    r.keys = keys.len();
    let mut newest_of: HashMap<&[u8], Version> = HashMap::new();
    for (k, copies) in &keys {
        let newest = copies
            .iter()
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(Version::ZERO);
        newest_of.insert(k.as_ref(), newest);
        let mut at_newest: Vec<String> = copies
            .iter()
            .filter(|(_, v)| *v == newest)
            .map(|(id, _)| id.to_string())
            .collect();
        at_newest.sort();
        *r.holders.entry(at_newest.len()).or_default() += 1;
        let mut behind: Vec<(String, Version)> = copies
            .iter()
            .filter(|(_, v)| *v < newest)
            .map(|(id, v)| (id.to_string(), *v))
            .collect();
        behind.sort();
        if !behind.is_empty() || n.is_some_and(|n| at_newest.len() < n) {
            r.diverged.push(Diverged {
                key: String::from_utf8_lossy(k).into_owned(),
                newest,
                at_newest,
                behind,
            });
        }
    }
    r.diverged.sort_by(|a, b| a.key.cmp(&b.key));
    // Every copy of a key the history writes must hold what one of its writes wrote, and a
    // value written once (a tombstone is not one) at the version that write was given.
    let mut wrote: HashMap<&[u8], Writes<'_>> = HashMap::new();
    for op in ops {
        if matches!(op.op, OpKind::Write | OpKind::Delete | OpKind::Cas) {
            wrote
                .entry(op.key.as_bytes())
                .or_default()
                .entry(written(op))
                .or_default()
                .push(op);
        }
    }
    for c in nodes {
        for (k, (v, val)) in &c.data {
            let Some(values) = wrote.get(k.as_ref()) else {
                continue;
            };
            match values.get(&val.as_deref()).map(Vec::as_slice) {
                None => {
                    r.unexplained
                        .push((String::from_utf8_lossy(k).into_owned(), c.id.clone(), *v))
                }
                Some([op]) if val.is_some() && version_of(op).is_some_and(|w| w != *v) => {
                    r.misplaced.push(((*op).clone(), c.id.clone()));
                }
                Some(_) => {}
            }
        }
    }
    r.unexplained.sort();
    for op in ops {
        let version = version_of(op);
        let key = op.key.as_bytes();
        if op.outcome == Outcome::Fail && matches!(op.op, OpKind::Write | OpKind::Delete) {
            r.failed += 1;
            // Known by its value (a failed write has no version), when written once.
            let once = wrote
                .get(key)
                .and_then(|w| w.get(&written(op)))
                .is_some_and(|w| w.len() == 1);
            if op.op == OpKind::Write
                && once
                && nodes.iter().any(|c| {
                    c.data
                        .get(key)
                        .is_some_and(|(_, v)| v.as_deref() == written(op))
                })
            {
                r.failed_held += 1;
            }
        }
        if !is_acked(op) {
            continue;
        }
        r.acked += 1;
        let Some(version) = version else {
            r.unversioned += 1;
            continue;
        };
        // One version, one write: a copy at this version must hold what this write wrote.
        if let Some(c) = nodes.iter().find(|c| {
            c.data
                .get(key)
                .is_some_and(|(v, val)| *v == version && val.as_deref() != written(op))
        }) {
            r.misplaced.push((op.clone(), c.id.clone()));
            continue;
        }
        match newest_of.get(key).copied() {
            Some(v) if v == version => r.at_version += 1,
            Some(v) if v > version => r.superseded += 1,
            held => {
                let mut hinted: Vec<String> = nodes
                    .iter()
                    .filter(|c| {
                        c.hints
                            .get(key)
                            .is_some_and(|h| h.iter().any(|(_, v)| *v >= version))
                    })
                    .map(|c| c.id.clone())
                    .collect();
                hinted.sort();
                if !hinted.is_empty() {
                    r.hinted.push((op.clone(), hinted));
                } else if held.is_none() && wrote.get(key).is_some_and(|w| w.contains_key(&None)) {
                    r.purged += 1;
                } else {
                    r.lost.push(op.clone());
                }
            }
        }
    }
    r
}

impl LlReport {
    /// Whether the audit passes: no acknowledged write lost or sharing its version with
    /// another; with `converged`, no key's copies differing and nothing left in hints.
    pub(crate) fn passes(&self, converged: bool) -> bool {
        self.lost.is_empty()
            && self.misplaced.is_empty()
            && self.unexplained.is_empty()
            && (!converged || (self.diverged.is_empty() && self.hinted.is_empty()))
    }

    fn verdict(&self, converged: bool) -> String {
        if !self.misplaced.is_empty() {
            "FAILED: two writes hold one version".into()
        } else if !self.unexplained.is_empty() {
            "FAILED: copies hold values no write wrote".into()
        } else if !self.lost.is_empty() {
            "FAILED: acknowledged writes were lost".into()
        } else if !self.passes(converged) {
            "FAILED: the replicas have not converged".into()
        } else if self.diverged.is_empty() && self.hinted.is_empty() {
            "every acknowledged write is held, and the replicas agree".into()
        } else {
            "every acknowledged write is held (the replicas have not converged yet)".into()
        }
    }

    pub(crate) fn render(&self, converged: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} acknowledged writes, looked up in the copies of {} nodes ({} keys held)",
            self.acked, self.nodes, self.keys
        );
        row(&mut s, "held at their version", self.at_version);
        row(
            &mut s,
            "held at a newer version (a later or concurrent write won)",
            self.superseded,
        );
        row(
            &mut s,
            "held only in hints not delivered yet",
            self.hinted.len(),
        );
        row(
            &mut s,
            "key held nowhere, and deleted in the history (purged)",
            self.purged,
        );
        row(&mut s, "lost", self.lost.len());
        row(
            &mut s,
            "one version, two writes (a value at another version)",
            self.misplaced.len(),
        );
        row(
            &mut s,
            "acknowledged without a version (not checked)",
            self.unversioned,
        );
        let _ = writeln!(
            s,
            "{} writes the client was told failed; held by a node anyway (a failed \
             leaderless write may have reached some replicas): {}",
            self.failed, self.failed_held
        );
        row(
            &mut s,
            "copies of written keys holding a value no write wrote",
            self.unexplained.len(),
        );
        let spread: Vec<String> = self
            .holders
            .iter()
            .map(|(nodes, keys)| format!("{keys} on {nodes}"))
            .collect();
        let _ = writeln!(
            s,
            "keys by the number of nodes holding their newest version{}: {}",
            self.n.map(|n| format!(" (N={n})")).unwrap_or_default(),
            if spread.is_empty() {
                "none".into()
            } else {
                spread.join(", ")
            }
        );
        row(
            &mut s,
            if self.n.is_some() {
                "keys whose copies differ, or on fewer than N nodes"
            } else {
                "keys whose copies differ"
            },
            self.diverged.len(),
        );
        show(
            &mut s,
            "LOST",
            self.lost.iter().map(|o| (o, String::new())).collect(),
        );
        show(
            &mut s,
            "VERSION HOLDS ANOTHER WRITE",
            self.misplaced
                .iter()
                .map(|(o, node)| (o, format!("; on {node}")))
                .collect(),
        );
        show(
            &mut s,
            "only in hints",
            self.hinted
                .iter()
                .map(|(o, nodes)| (o, format!("; hinted by {}", nodes.join(", "))))
                .collect(),
        );
        if !self.unexplained.is_empty() {
            let _ = writeln!(
                s,
                "HOLDING A VALUE NO WRITE WROTE (first {} of {}):",
                self.unexplained.len().min(10),
                self.unexplained.len()
            );
            for (k, node, v) in self.unexplained.iter().take(10) {
                let _ = writeln!(s, "  {k} at {v} on {node}");
            }
        }
        if !self.diverged.is_empty() {
            let _ = writeln!(
                s,
                "copies differ (first {} of {}):",
                self.diverged.len().min(10),
                self.diverged.len()
            );
            for d in self.diverged.iter().take(10) {
                let behind: Vec<String> =
                    d.behind.iter().map(|(id, v)| format!("{id} {v}")).collect();
                let _ = writeln!(
                    s,
                    "  {}: {} on {}{}",
                    d.key,
                    d.newest,
                    d.at_newest.join(", "),
                    if behind.is_empty() {
                        String::new()
                    } else {
                        format!("; behind: {}", behind.join(", "))
                    }
                );
            }
        }
        let _ = writeln!(s, "verdict: {}", self.verdict(converged));
        s
    }

    /// The report for `--output json`: the counts of [`LlReport::render`], every write and
    /// key in each list, and the verdict.
    pub(crate) fn to_json(&self, converged: bool) -> serde_json::Value {
        use serde_json::json;
        let op = |o: &Op| serde_json::to_value(o).unwrap_or(serde_json::Value::Null);
        let with = |o: &Op, field: &str, v: serde_json::Value| {
            let mut j = op(o);
            j[field] = v;
            j
        };
        let misplaced: Vec<_> = self
            .misplaced
            .iter()
            .map(|(o, n)| with(o, "held_by", json!(n)))
            .collect();
        let hinted: Vec<_> = self
            .hinted
            .iter()
            .map(|(o, n)| with(o, "hinted_by", json!(n)))
            .collect();
        let unexplained: Vec<_> = self
            .unexplained
            .iter()
            .map(|(k, node, v)| json!({"key": k, "node": node, "version": v.to_string()}))
            .collect();
        let holders: Vec<_> = self
            .holders
            .iter()
            .map(|(n, k)| json!({"nodes": n, "keys": k}))
            .collect();
        let diverged: Vec<_> = self
            .diverged
            .iter()
            .map(|d| {
                let behind: Vec<_> = d
                    .behind
                    .iter()
                    .map(|(id, v)| json!({"node": id, "version": v.to_string()}))
                    .collect();
                json!({"key": d.key, "newest": d.newest.to_string(),
                    "at_newest": d.at_newest, "behind": behind})
            })
            .collect();
        json!({
            "passed": self.passes(converged),
            "verdict": self.verdict(converged),
            "mode": "leaderless",
            "nodes": self.nodes,
            "n": self.n,
            "keys": self.keys,
            "acknowledged": self.acked,
            "at_version": self.at_version,
            "superseded": self.superseded,
            "purged": self.purged,
            "unversioned": self.unversioned,
            "lost": self.lost.iter().map(op).collect::<Vec<_>>(),
            "misplaced": misplaced,
            "hinted": hinted,
            "unexplained": unexplained,
            "failed_looked_for": self.failed,
            "failed_but_held": self.failed_held,
            "holders": holders,
            "diverged": diverged,
        })
    }
}

/// The leaderless node directories under `dir` (whose `cluster.toml` says so), by name.
pub(crate) fn node_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for p in rd.filter_map(Result::ok).map(|e| e.path()) {
        let file = p.join(kv_node::data_dir::FILE);
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let id: kv_node::data_dir::Identity =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if id.layout == "leaderless" {
            out.push((id.id, p));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(e: u64, c: u64) -> Version {
        Version::new(e, c)
    }

    fn node(id: &str, data: &[(&str, Version, Option<&str>)]) -> Copies {
        Copies {
            id: id.into(),
            data: data
                .iter()
                .map(|(k, v, val)| {
                    (
                        Bytes::copy_from_slice(k.as_bytes()),
                        (*v, val.map(|s| Bytes::copy_from_slice(s.as_bytes()))),
                    )
                })
                .collect(),
            hints: HashMap::new(),
        }
    }

    fn write(key: &str, value: Option<&str>, version: Version, outcome: Outcome) -> Op {
        serde_json::from_value(serde_json::json!({
            "client": 1, "op": if value.is_some() { "write" } else { "delete" },
            "key": key, "value": value, "start_ns": 0, "end_ns": 1,
            "outcome": match outcome {
                Outcome::Ok => "ok",
                Outcome::Fail => "fail",
                Outcome::Unknown => "unknown",
            },
            "version": version.to_string(),
        }))
        .expect("op")
    }

    fn three(k: &str, ver: Version, val: &str) -> Vec<Copies> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|id| node(id, &[(k, ver, Some(val))]))
            .collect()
    }

    #[test]
    fn a_write_held_at_its_version_or_overwritten_passes_and_converged_copies_agree() {
        let nodes = three("k", v(20, 2), "b");
        let ops = [
            write("k", Some("a"), v(10, 1), Outcome::Ok),
            write("k", Some("b"), v(20, 2), Outcome::Ok),
        ];
        let r = audit(&ops, &nodes, Some(3));
        assert_eq!((r.acked, r.at_version, r.superseded), (2, 1, 1));
        assert!(r.diverged.is_empty() && r.passes(true), "{r:?}");
        assert_eq!(r.holders, BTreeMap::from([(3, 1)]));
        assert!(r.render(true).contains("the replicas agree"));
    }

    #[test]
    fn a_write_newer_than_every_copy_is_lost_unless_a_hint_holds_it() {
        let mut nodes = three("k", v(10, 1), "a");
        let ops = [
            write("k", Some("b"), v(20, 2), Outcome::Ok),
            write("k", Some("a"), v(10, 1), Outcome::Unknown),
        ];
        let r = audit(&ops, &nodes, Some(3));
        assert_eq!(r.lost, vec![ops[0].clone()]);
        assert!(!r.passes(false));
        assert!(r.render(false).contains("LOST"));
        assert_eq!(r.to_json(false)["lost"][0]["key"], "k");
        // A node holding it as a hint for a replica: not lost, not converged.
        nodes[0]
            .hints
            .insert(Bytes::from_static(b"k"), vec![("n4".into(), v(20, 2))]);
        let r = audit(&ops, &nodes, Some(3));
        assert!(r.lost.is_empty());
        assert_eq!(r.hinted, vec![(ops[0].clone(), vec!["n1".to_string()])]);
        assert!(r.passes(false) && !r.passes(true));
        // An older hint does not count.
        nodes[0]
            .hints
            .insert(Bytes::from_static(b"k"), vec![("n4".into(), v(15, 2))]);
        assert_eq!(audit(&ops, &nodes, Some(3)).lost.len(), 1);
    }

    #[test]
    fn a_key_held_nowhere_is_purged_only_if_the_history_deletes_it() {
        let nodes = three("other", v(1, 1), "x");
        let put = write("k", Some("a"), v(10, 1), Outcome::Ok);
        let r = audit(std::slice::from_ref(&put), &nodes, None);
        assert_eq!(r.lost.len(), 1, "no delete: lost");
        let del = write("k", None, v(11, 1), Outcome::Unknown);
        let r = audit(&[put, del], &nodes, None);
        assert_eq!((r.lost.len(), r.purged), (0, 1));
    }

    #[test]
    fn one_version_holding_another_value_fails() {
        let nodes = three("k", v(10, 1), "a");
        let ops = [write("k", Some("b"), v(10, 1), Outcome::Ok)];
        let r = audit(&ops, &nodes, None);
        assert_eq!(r.misplaced.len(), 1);
        assert!(!r.passes(false));
        // A delete at the version of a put: also another write.
        let ops = [write("k", None, v(10, 1), Outcome::Ok)];
        assert_eq!(audit(&ops, &nodes, None).misplaced.len(), 1);
        // A value written once, held under another version than its write was given (on
        // all three nodes), whatever the outcome.
        let ops = [write("k", Some("a"), v(9, 1), Outcome::Unknown)];
        let r = audit(&ops, &nodes, None);
        assert_eq!(r.misplaced.len(), 3, "{r:?}");
        assert!(r.render(false).contains("a at 9.1 (client 1); on n1"));
        // Written twice: which write the copy is cannot be told.
        let ops = [
            write("k", Some("a"), v(9, 1), Outcome::Ok),
            write("k", Some("a"), v(10, 1), Outcome::Ok),
        ];
        assert!(audit(&ops, &nodes, None).misplaced.is_empty());
    }

    #[test]
    fn a_copy_holding_what_no_write_of_its_key_wrote_fails() {
        let mut nodes = three("k", v(10, 1), "a");
        nodes[1] = node(
            "n2",
            &[("k", v(10, 1), Some("a")), ("other", v(3, 1), Some("q"))],
        );
        // An older copy of another value the history wrote is fine; keys the history does
        // not write are not judged.
        nodes[2] = node("n3", &[("k", v(5, 1), Some("old"))]);
        let ops = [
            write("k", Some("old"), v(5, 1), Outcome::Unknown),
            write("k", Some("a"), v(10, 1), Outcome::Ok),
        ];
        assert!(audit(&ops, &nodes, None).unexplained.is_empty());
        nodes[2] = node("n3", &[("k", v(5, 1), Some("never"))]);
        let r = audit(&ops, &nodes, None);
        assert_eq!(r.unexplained, vec![("k".into(), "n3".into(), v(5, 1))]);
        assert!(!r.passes(false));
        assert!(
            r.render(false).contains("k at 5.1 on n3"),
            "{}",
            r.render(false)
        );
        // A tombstone where the history deletes nothing.
        nodes[2] = node("n3", &[("k", v(5, 1), None)]);
        assert_eq!(audit(&ops, &nodes, None).unexplained.len(), 1);
    }

    #[test]
    fn copies_behind_or_on_fewer_than_n_nodes_are_reported_and_fail_only_when_asked() {
        let mut nodes = three("k", v(20, 2), "b");
        nodes[2] = node("n3", &[("k", v(10, 1), Some("a"))]);
        nodes.push(node("n4", &[]));
        let ops = [
            write("k", Some("b"), v(20, 2), Outcome::Ok),
            write("k", Some("a"), v(10, 1), Outcome::Ok),
        ];
        let r = audit(&ops, &nodes, Some(3));
        assert_eq!(
            r.diverged,
            vec![Diverged {
                key: "k".into(),
                newest: v(20, 2),
                at_newest: vec!["n1".into(), "n2".into()],
                behind: vec![("n3".into(), v(10, 1))],
            }]
        );
        assert!(r.passes(false) && !r.passes(true));
        assert!(r.render(true).contains("behind: n3 10.1"));
        // All agree, but on two nodes of N=3.
        let nodes: Vec<Copies> = nodes.into_iter().take(2).collect();
        let r = audit(&ops, &nodes, Some(3));
        assert_eq!(r.diverged.len(), 1);
        assert!(audit(&ops, &nodes, None).diverged.is_empty());
    }

    #[test]
    fn failed_writes_are_counted_and_held_ones_do_not_fail() {
        let nodes = three("k", v(10, 1), "a");
        // A failed write has no version: it is known by its value.
        let fail = |value| {
            let mut o = write("k", Some(value), v(0, 0), Outcome::Fail);
            o.version = None;
            o
        };
        let ops = [fail("a"), fail("z")];
        let r = audit(&ops, &nodes, Some(3));
        assert_eq!((r.failed, r.failed_held, r.acked), (2, 1, 0));
        assert!(r.passes(true));
    }
}
