//! What a data directory belongs to: the node, the way its data is laid out, and the cluster's
//! members, written to `cluster.toml` on the first start and checked on every later one, as
//! etcd checks its member and cluster ids against its WAL.
//!
//! Membership changes are not supported, and a node must never run on another's data: a node
//! counting a different set of members counts a different majority (two leaders can be elected
//! in one term), a node started on another's log could vote twice in a term, and a directory
//! written in one mode is empty to the other (a single node's or a leaderless node's log is not
//! a leader-follower replica log). Each of these used to start without a word.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The file, in the data directory.
pub const FILE: &str = "cluster.toml";

/// Who the data in a directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The node's id.
    pub id: String,
    /// How the data is laid out: `single-node`, `leader-follower` or `leaderless`.
    pub layout: String,
    /// Every member's id, sorted (addresses may change: they are not recorded).
    pub members: Vec<String>,
}

/// Records `want` in `dir` if it holds no identity yet; otherwise checks that it is the same.
///
/// # Errors
/// The directory belongs to another node, layout or set of members (the message says which,
/// and what to do), or the file cannot be read, parsed or written.
pub fn check_or_record(dir: &Path, want: &Identity) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let have: Identity = toml::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged (it records which node and cluster the data directory \
                     belongs to); if you know this is the node's own directory, remove the \
                     file and the next start records its flags again",
                    path.display()
                )
            })?;
            compare(dir, &have, want)
        }
        // Not there yet (or the directory cannot be: creating it says why).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            record(dir, &path, want)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn compare(dir: &Path, have: &Identity, want: &Identity) -> anyhow::Result<()> {
    let dir = dir.display();
    if have.id != want.id {
        bail!(
            "data directory {dir} belongs to node {}, not --id {}: each node needs its own \
             (a node started on another's log could vote twice in one term)",
            have.id,
            want.id
        );
    }
    if have.layout != want.layout {
        let what = |layout: &str| match layout {
            "single-node" => "a single node (no --peers)".to_string(),
            other => format!("a {other} replica"),
        };
        bail!(
            "data directory {dir} holds the data of {}, and this node would run as {}, to which \
             that data is invisible; start it as before, or on an empty data directory",
            what(&have.layout),
            what(&want.layout)
        );
    }
    if have.members != want.members {
        bail!(
            "data directory {dir} belongs to a cluster of {}; --peers gives {}: changing the \
             members of a cluster is not supported (nodes counting different members count \
             different majorities); start every node with the members it was created with, or \
             form a new cluster on empty data directories",
            have.members.join(","),
            want.members.join(",")
        );
    }
    Ok(())
}

fn record(dir: &Path, path: &PathBuf, want: &Identity) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let text = format!(
        "# Which node and cluster this data directory belongs to: written by kv-node on its\n\
         # first start here, checked on every later one.\n{}",
        toml::to_string(want).context("cannot encode the data directory's identity")?
    );
    let tmp = dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str, layout: &str, members: &[&str]) -> Identity {
        Identity {
            id: id.into(),
            layout: layout.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_start_records_and_later_ones_must_match() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        let n1 = ident("n1", "leader-follower", &["n1", "n2", "n3"]);
        check_or_record(&dir, &n1).expect("first start records");
        check_or_record(&dir, &n1).expect("the same node starts again");
        let text = std::fs::read_to_string(dir.join(FILE)).expect("recorded");
        assert!(text.contains("id = \"n1\""), "{text}");

        let err = |want: &Identity| {
            check_or_record(&dir, want)
                .expect_err("refused")
                .to_string()
        };
        let e = err(&ident("n2", "leader-follower", &["n1", "n2", "n3"]));
        assert!(e.contains("belongs to node n1, not --id n2"), "{e}");
        let e = err(&ident("n1", "leaderless", &["n1", "n2", "n3"]));
        assert!(
            e.contains("holds the data of a leader-follower replica, and this node would run as a leaderless replica"),
            "{e}"
        );
        let e = err(&ident(
            "n1",
            "leader-follower",
            &["n1", "n2", "n3", "n4", "n5"],
        ));
        assert!(
            e.contains("belongs to a cluster of n1,n2,n3; --peers gives n1,n2,n3,n4,n5"),
            "{e}"
        );

        std::fs::write(dir.join(FILE), "id = 3\n").expect("damage");
        let e = format!("{:#}", check_or_record(&dir, &n1).expect_err("damaged"));
        assert!(e.contains("cluster.toml is damaged"), "{e}");
    }
}
