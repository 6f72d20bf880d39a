//! What a data directory belongs to: the node, the way its data is laid out, and the cluster's
//! members, written to `cluster.toml` on the first start and checked on every later one, as
//! etcd checks its member and cluster ids against its WAL.
//!
//! Membership changes are not supported, and a node must never run on another's data: a node
//! counting a different set of members counts a different majority (two leaders can be elected
//! in one term), a node started on another's log could vote twice in a term, and a directory
//! written in one mode is empty to the other (a single node's or a leaderless node's log is not
//! a leader-follower replica log). Each of these used to start without a word.
//!
//! The directory also gets an incarnation on its first start ([`incarnation`]), which the node
//! sends its peers; a leader-follower node remembers its peers' ([`PeerBook`], `peers.toml`) and
//! refuses one that comes back with another: it lost its data directory, and with it its votes
//! and the entries it acknowledged.

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
/// Returns whether this is the node's first start in `dir` (it recorded the identity).
///
/// A leaderless node with peers, on its first start, does not know yet whether it is new to
/// the cluster or back on an empty directory: before the identity, its directory is marked
/// [`refilling`], and the node takes the mark away once a peer tells it it is new
/// (`kv_replica::leaderless::Config::first_life`). Stopped before that, it refills itself at
/// its next start.
///
/// # Errors
/// The directory belongs to another node, layout or set of members (the message says which,
/// and what to do), or the file cannot be read, parsed or written.
pub fn check_or_record(dir: &Path, want: &Identity) -> anyhow::Result<bool> {
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
            compare(dir, &have, want).map(|()| false)
        }
        // Not there yet (or the directory cannot be: creating it says why).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            record(dir, &path, want).map(|()| true)
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

fn record(dir: &Path, path: &Path, want: &Identity) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    if want.layout == "leaderless" && want.members.len() > 1 {
        write_durably(
            dir,
            &dir.join(REFILLING_FILE),
            "# This node's first start on this directory: until a peer tells it whether it is\n\
             # new to the cluster or back empty, its read answers do not count, and if it stops\n\
             # before that it refills itself from its peers at its next start. Removed when a\n\
             # peer has told it it is new, or when it has refilled.\n",
        )
        .with_context(|| format!("cannot write {}", dir.join(REFILLING_FILE).display()))?;
    }
    let text = format!(
        "# Which node and cluster this data directory belongs to: written by kv-node on its\n\
         # first start here, checked on every later one.\n{}",
        toml::to_string(want).context("cannot encode the data directory's identity")?
    );
    write_durably(dir, path, &text).with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` (in `dir`) by `text`, durably: a temporary file, fsynced, renamed over it,
/// and the directory fsynced.
fn write_durably(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The file holding the directory's incarnation.
pub const INCARNATION_FILE: &str = "incarnation";

/// Present while a leaderless node back empty refills itself from its peers
/// (`kv_replica::leaderless::Leaderless::start_refill`), or has not yet learnt in its first
/// life on the directory that it is new to the cluster ([`check_or_record`]): a restart
/// refills.
pub const REFILLING_FILE: &str = "refilling";

/// Whether the leaderless node of `dir` was refilling itself when it stopped.
#[must_use]
pub fn refilling(dir: &Path) -> bool {
    dir.join(REFILLING_FILE).exists()
}

/// Records durably that the leaderless node of `dir` is refilling itself (`true`) or has
/// refilled itself (`false`).
///
/// # Errors
/// The file cannot be written or removed.
pub fn record_refilling(dir: &Path, on: bool) -> std::io::Result<()> {
    let path = dir.join(REFILLING_FILE);
    if on {
        write_durably(
            dir,
            &path,
            "# This node came back empty and is refilling itself from its peers; its read\n\
             # answers do not count until it has. Removed when it has.\n",
        )
    } else {
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(dir)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// This data directory's incarnation: a random id made on the first start in it and kept as
/// long as the directory. Peers remember it (see [`PeerBook`]), so a node that comes back on
/// an empty directory (a lost or replaced disk) is known for one: it forgot its votes and what
/// it acknowledged.
///
/// # Errors
/// The file cannot be read or written.
pub fn incarnation(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(INCARNATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => bail!(
            "{} is empty; it names this data directory to the other nodes (restore it, or \
             remove it and see the README on lost data directories)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let made = format!("{:016x}", rand::random::<u64>());
            write_durably(dir, &path, &format!("{made}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(made)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The file in which a leaderless node records a bound on its hybrid clock.
pub const CLOCK_FILE: &str = "clock";

/// Bytes of one record: magic, CRC-32 of the bound, the bound (little endian).
const CLOCK_RECORD: usize = 16;
const CLOCK_MAGIC: [u8; 4] = *b"QKVC";

/// A bound on a leaderless node's hybrid clock, kept in `DATA_DIR/clock`: no timestamp above
/// it leaves the node before it is durable, and a restarted node's clock starts above it
/// (see `kv_replica::leaderless::Action::PersistClock`). Two records written in turn, each
/// with its checksum: a write torn by a crash damages only the one being written, whose
/// bound nothing was yet allowed to rely on, and the other still holds the last durable one.
pub struct ClockBound {
    path: PathBuf,
    file: std::fs::File,
    /// The highest bound written and fsynced.
    durable: u64,
    /// The record the next write goes to.
    next: u64,
}

impl ClockBound {
    /// Opens (or creates) the file in `dir`; the bound recorded there is [`ClockBound::durable`]
    /// (0 in a new file).
    ///
    /// # Errors
    /// The file cannot be opened, read or created, or neither of its records is whole (the
    /// message names the file).
    pub fn open(dir: &Path) -> anyhow::Result<ClockBound> {
        let path = dir.join(CLOCK_FILE);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let records: Vec<Option<u64>> = bytes.chunks(CLOCK_RECORD).map(clock_record).collect();
        let durable = records.iter().flatten().copied().max();
        let durable = match durable {
            Some(d) => d,
            None if bytes.is_empty() => 0,
            None => bail!(
                "{} is damaged (no whole record in its {} bytes): it bounds the versions this \
                 node gave out before, so that it never gives one twice. If the node is \
                 stopped long enough for every clock to pass the versions it stored, remove \
                 the file",
                path.display(),
                bytes.len()
            ),
        };
        // The next write goes over the older record (or the damaged one).
        let next = match (
            records.first().copied().flatten(),
            records.get(1).copied().flatten(),
        ) {
            (Some(a), Some(b)) if a > b => 1,
            (Some(_), None) => 1,
            _ => 0,
        };
        if !existed {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot fsync {}", dir.display()))?;
        }
        Ok(ClockBound {
            path,
            file,
            durable,
            next,
        })
    }

    /// The highest bound recorded durably.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Records `upto` (or keeps a higher bound already recorded) durably; returns the bound
    /// now durable.
    ///
    /// # Errors
    /// The write or its fsync failed; the bound recorded before still holds.
    pub fn record(&mut self, upto: u64) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt as _;
        if upto <= self.durable {
            return Ok(self.durable);
        }
        let mut rec = [0u8; CLOCK_RECORD];
        rec[..4].copy_from_slice(&CLOCK_MAGIC);
        rec[4..8].copy_from_slice(&crc32fast::hash(&upto.to_le_bytes()).to_le_bytes());
        rec[8..].copy_from_slice(&upto.to_le_bytes());
        self.file
            .write_all_at(&rec, self.next * CLOCK_RECORD as u64)?;
        self.file.sync_data()?;
        self.durable = upto;
        self.next = 1 - self.next;
        Ok(upto)
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The bound in one record, if it is whole.
fn clock_record(rec: &[u8]) -> Option<u64> {
    let rec: &[u8; CLOCK_RECORD] = rec.try_into().ok()?;
    let bound = u64::from_le_bytes(rec[8..].try_into().ok()?);
    let crc = u32::from_le_bytes(rec[4..8].try_into().ok()?);
    (rec[..4] == CLOCK_MAGIC && crc == crc32fast::hash(&bound.to_le_bytes())).then_some(bound)
}

/// The file in which a leader-follower node remembers its peers' incarnations.
pub const PEERS_FILE: &str = "peers.toml";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    incarnations: std::collections::BTreeMap<String, String>,
}

/// The incarnation of each peer's data directory, learned on first contact and kept in
/// `DATA_DIR/peers.toml` (or, for a node in memory, for as long as it runs: [`PeerBook::in_memory`]):
/// a peer that comes back with another one lost its data, and is refused (leader-follower) or
/// only reported (leaderless, [`PeerBook::warning_only`]); see [`PeerBook::check`].
pub struct PeerBook {
    /// `None`: a node in memory, whose book goes with the process.
    dir: Option<PathBuf>,
    known: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    refuse: bool,
}

/// The prefix of the incarnation of a node in memory ([`memory_incarnation`]).
const MEMORY_INCARNATION: &str = "memory-";

/// The incarnation of a node in memory: new at every start, since every start is a first one
/// (it holds nothing of what it had: no vote, no entry, no copy).
#[must_use]
pub fn memory_incarnation() -> String {
    format!("{MEMORY_INCARNATION}{:016x}", rand::random::<u64>())
}

impl PeerBook {
    /// The book of the node whose data directory is `dir`.
    ///
    /// # Errors
    /// The file cannot be read, or is damaged.
    pub fn open(dir: &Path) -> anyhow::Result<PeerBook> {
        Ok(PeerBook {
            dir: Some(dir.to_path_buf()),
            known: std::sync::Mutex::new(Self::load(dir)?),
            refuse: true,
        })
    }

    /// The book of a node in memory: the same rules, kept only while it runs (when it starts
    /// again it knows none of its peers, nor they anything of it).
    #[must_use]
    pub fn in_memory() -> PeerBook {
        PeerBook {
            dir: None,
            known: std::sync::Mutex::new(Default::default()),
            refuse: true,
        }
    }

    /// The same book, reporting a peer that lost its data instead of refusing it, and then
    /// knowing it by its new incarnation. For leaderless nodes: the writes such a replica
    /// acknowledged also sit on W-1 others, and repair refills it.
    #[must_use]
    pub fn warning_only(self) -> Self {
        PeerBook {
            refuse: false,
            ..self
        }
    }

    fn load(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let path = dir.join(PEERS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(toml::from_str::<PeersFile>(&text)
                .with_context(|| {
                    format!(
                        "{} is damaged (it records the incarnation of each peer's data \
                         directory); remove it and the next start learns them again",
                        path.display()
                    )
                })?
                .incarnations),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Whether `peer`, whose data directory is `incarnation`, may take part: yes when the
    /// book has no other incarnation for it (a first one is recorded, durably), and then
    /// whether it came back empty (a book [`warning_only`](Self::warning_only) takes it back
    /// with its new incarnation). Otherwise why not. The file is read again before refusing,
    /// so removing a peer's line from it takes effect at the peer's next attempt.
    pub fn check(&self, peer: &str, incarnation: &str) -> Result<bool, String> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(peer).is_some_and(|k| k != incarnation)
            && let Some(dir) = &self.dir
            && let Ok(again) = Self::load(dir)
        {
            *known = again;
        }
        // What the peer lost, and how.
        let in_memory = incarnation.starts_with(MEMORY_INCARNATION);
        let (comes_back, came_back, lost) = if in_memory {
            (
                "was started again in memory",
                "was started again in memory",
                "it lost everything it held",
            )
        } else {
            (
                "comes back with another data directory",
                "came back with another data directory",
                "it lost its data (a new disk?)",
            )
        };
        match known.get(peer).cloned() {
            Some(k) if k == incarnation => Ok(false),
            Some(k) if self.refuse => Err(format!(
                "{peer} {comes_back} (incarnation {incarnation}; this node knew {k}): \
                 {lost} and with it the votes it cast \
                 and the entries it acknowledged, on which the cluster's guarantees rest; a \
                 leader-follower cluster cannot take it back safely without a membership \
                 change. {}",
                match &self.dir {
                    Some(dir) => format!(
                        "To take the risk anyway, remove {peer}'s line from {PEERS_FILE} in the \
                         data directory of every other node (here {})",
                        dir.join(PEERS_FILE).display()
                    ),
                    None => "A cluster in memory can only start over: stop every node and \
                             start them all again (or keep the data with --data-dir)"
                        .to_string(),
                }
            )),
            Some(k) => {
                tracing::warn!(
                    peer,
                    "{peer} {came_back} (incarnation {incarnation}; \
                     this node knew {k}): it lost the copies it held; its read answers do not \
                     count until it has refilled itself from its peers"
                );
                self.learn(&mut known, peer, incarnation);
                Ok(true)
            }
            None => {
                self.learn(&mut known, peer, incarnation);
                Ok(false)
            }
        }
    }

    /// Records `peer`'s `incarnation`, durably.
    fn learn(
        &self,
        known: &mut std::collections::BTreeMap<String, String>,
        peer: &str,
        incarnation: &str,
    ) {
        known.insert(peer.to_string(), incarnation.to_string());
        let Some(dir) = &self.dir else {
            return; // in memory: known for as long as this node runs
        };
        let text = format!(
            "# The incarnation of each peer's data directory, learned on first contact: a\n\
             # peer that comes back with another one lost its data.\n{}",
            toml::to_string(&PeersFile {
                incarnations: known.clone(),
            })
            .unwrap_or_default()
        );
        let path = dir.join(PEERS_FILE);
        if let Err(e) = write_durably(dir, &path, &text) {
            tracing::error!(error = %e, file = %path.display(), "cannot record a peer's incarnation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_bound_survives_a_reopen_and_a_torn_record() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        let mut c = ClockBound::open(dir).expect("a new file");
        assert_eq!(c.durable(), 0);
        assert_eq!(c.record(500).expect("recorded"), 500);
        assert_eq!(
            c.record(300).expect("a lower bound"),
            500,
            "never goes back"
        );
        assert_eq!(c.record(700).expect("recorded"), 700);
        drop(c);
        let mut c = ClockBound::open(dir).expect("reopened");
        assert_eq!(c.durable(), 700);
        // The next write goes over the older record (500), not over 700.
        c.record(900).expect("recorded");
        drop(c);
        let path = dir.join(CLOCK_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 2 * CLOCK_RECORD);
        let newest = bytes
            .chunks(CLOCK_RECORD)
            .position(|r| clock_record(r) == Some(900))
            .expect("900 recorded");
        assert!(
            bytes
                .chunks(CLOCK_RECORD)
                .any(|r| clock_record(r) == Some(700))
        );
        // A crash tore the write of 900: the bound before it holds.
        bytes[newest * CLOCK_RECORD + 12] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let mut c = ClockBound::open(dir).expect("one whole record");
        assert_eq!(c.durable(), 700);
        c.record(1_000).expect("over the torn one");
        drop(c);
        assert_eq!(ClockBound::open(dir).expect("reopened").durable(), 1_000);
        // Both records damaged: refused, naming the file.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] ^= 0xff;
        bytes[CLOCK_RECORD + 3] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let e = ClockBound::open(dir).err().expect("refused").to_string();
        assert!(e.contains("clock is damaged"), "{e}");
        // So is a file cut short of one record.
        std::fs::write(&path, &bytes[..10]).expect("write");
        assert!(ClockBound::open(dir).is_err());
    }

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
        assert!(check_or_record(&dir, &n1).expect("first start records"));
        assert!(!check_or_record(&dir, &n1).expect("the same node starts again"));
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

    /// A data directory's incarnation is made once and kept.
    #[test]
    fn the_incarnation_is_made_once_and_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let first = incarnation(root.path()).expect("made");
        assert_eq!(first.len(), 16);
        assert_eq!(incarnation(root.path()).expect("read"), first);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(incarnation(other.path()).expect("made"), first);
    }

    /// A peer's first incarnation is learned durably; the same one is accepted, another is
    /// refused with the way out, which works once taken (the file is read again).
    #[test]
    fn a_peer_that_comes_back_with_another_data_directory_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let book = PeerBook::open(root.path()).expect("no file yet");
        assert_eq!(book.check("n2", "aaaa"), Ok(false));
        assert_eq!(book.check("n3", "cccc"), Ok(false));
        assert_eq!(book.check("n2", "aaaa"), Ok(false));
        let again = PeerBook::open(root.path()).expect("recorded");
        assert_eq!(again.check("n2", "aaaa"), Ok(false), "kept across restarts");
        let why = again.check("n2", "bbbb").expect_err("refused");
        assert!(
            why.starts_with(
                "n2 comes back with another data directory (incarnation bbbb; this node knew aaaa)"
            ),
            "{why}"
        );
        assert!(why.contains("remove n2's line from"), "{why}");

        let path = root.path().join(PEERS_FILE);
        let text = std::fs::read_to_string(&path).expect("file");
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("n2 "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).expect("edit");
        assert_eq!(again.check("n2", "bbbb"), Ok(false), "the way out");
        assert_eq!(again.check("n3", "cccc"), Ok(false), "the others stay");
        assert!(again.check("n2", "aaaa").is_err(), "the new one is learned");

        std::fs::write(&path, "incarnations = 3\n").expect("damage");
        let e = format!("{:#}", PeerBook::open(root.path()).err().expect("damaged"));
        assert!(e.contains("peers.toml is damaged"), "{e}");
    }

    /// A leaderless node's book reports a peer back with another data directory, accepts it,
    /// and knows it by the new one from then on.
    #[test]
    fn a_warning_only_book_accepts_and_learns_a_new_incarnation() {
        let root = tempfile::tempdir().expect("tempdir");
        let book = PeerBook::open(root.path()).expect("book").warning_only();
        assert_eq!(book.check("n2", "aaaa"), Ok(false));
        assert_eq!(book.check("n2", "bbbb"), Ok(true), "reported, not refused");
        let again = PeerBook::open(root.path()).expect("recorded");
        assert_eq!(again.check("n2", "bbbb"), Ok(false), "the new one is known");
        assert!(again.check("n2", "aaaa").is_err());
    }

    /// A node in memory takes a new incarnation at every start; its peers' books, in memory
    /// too, refuse (or report) it when it comes back with another, name the only way out, and
    /// write nothing anywhere.
    /// A leaderless node's first start marks its directory refilling, for the next start
    /// should it stop before a peer says it is new; no other layout, and no later start.
    #[test]
    fn a_leaderless_first_start_marks_the_directory_unsure() {
        let root = tempfile::tempdir().expect("tempdir");
        let (ll, lf, one) = (
            root.path().join("ll"),
            root.path().join("lf"),
            root.path().join("one"),
        );
        let three = ["n1", "n2", "n3"];
        assert!(check_or_record(&ll, &ident("n1", "leaderless", &three)).expect("first"));
        assert!(refilling(&ll), "marked before the identity");
        record_refilling(&ll, false).expect("a peer said it is new");
        assert!(!check_or_record(&ll, &ident("n1", "leaderless", &three)).expect("again"));
        assert!(!refilling(&ll), "a later start marks nothing");
        check_or_record(&lf, &ident("n1", "leader-follower", &three)).expect("first");
        assert!(!refilling(&lf));
        check_or_record(&one, &ident("n1", "leaderless", &["n1"])).expect("first");
        assert!(!refilling(&one), "alone, it has nobody to be back empty to");
    }

    #[test]
    fn a_refilling_mark_is_recorded_and_removed_durably() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(!refilling(root.path()));
        record_refilling(root.path(), true).expect("recorded");
        assert!(refilling(root.path()), "kept for the next start");
        record_refilling(root.path(), false).expect("removed");
        assert!(!refilling(root.path()));
        record_refilling(root.path(), false).expect("nothing to remove is no error");
    }

    #[test]
    fn a_book_in_memory_refuses_a_peer_started_again_in_memory() {
        let (first, second) = (memory_incarnation(), memory_incarnation());
        assert_ne!(first, second, "every start is a first one");
        let book = PeerBook::in_memory();
        assert_eq!(book.check("n2", &first), Ok(false));
        assert_eq!(book.check("n2", &first), Ok(false));
        let why = book.check("n2", &second).expect_err("refused");
        assert!(
            why.starts_with(&format!(
                "n2 was started again in memory (incarnation {second}; this node knew {first}): \
                 it lost everything it held"
            )),
            "{why}"
        );
        assert!(why.contains("start them all again"), "{why}");
        assert!(!why.contains(PEERS_FILE), "no file to edit: {why}");
        let book = PeerBook::in_memory().warning_only();
        assert_eq!(book.check("n2", &first), Ok(false));
        assert_eq!(book.check("n2", &second), Ok(true), "reported, not refused");
    }
}
