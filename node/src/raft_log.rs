//! The durable state of a leader-follower replica: its term, its vote and its log in one file
//! (`<data-dir>/raft.log`) of the framed records of `storage::record`, written in order, and
//! its latest snapshot in a file of its own (`<data-dir>/raft-snapshot-<index>`).
//!
//! ```text
//! raft.log: [snapshot-file(index, term, term starts, length)] hard-state(term, vote)
//!     | entry(term, index, put/delete/cas/noop) | truncate(from) | hard-state ...
//! ```
//! Replaying the file in order rebuilds the state; a truncate record removes the entries from
//! its index on. Every batch the driver makes durable is one write and one fsync (group commit
//! across all the requests of a batch).
//!
//! Compaction writes the snapshot to its file first ([`write_snapshot`], on the thread that
//! encoded it: a temporary file, fsynced and renamed into place), then rewrites `raft.log` as
//! a record naming the snapshot, the hard state and the entries kept after it — written to
//! `raft.log.tmp`, fsynced and renamed over `raft.log`, so a crash leaves the old file or the
//! new one, each with the snapshot it names. Older snapshot files are removed only then. So
//! the log writer, which appends between fsyncs, rewrites a few entries, never the whole state
//! (it used to: appends waited behind a rewrite of up to a gigabyte). A snapshot installed from
//! the leader is part of a batch: the log writer writes its file, then the log. Logs written
//! before snapshots had files of their own, with the snapshot inline, are still read. A torn
//! final record is cut off and reported; other damage stops the node.
//!
//! The file is preallocated (`storage::disk::Appender`): zeros are written ahead of the
//! records and each batch overwrites them in place, so that an fsync writes data, not the
//! file's new size. Replay stops at the zero fill; a write cut short inside it (a record, then
//! zeros, and no whole record after) is a torn tail.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_replica::Version;
use kv_replica::leader_follower::{Command, Entry, HardState, LogIndex, Snapshot, Term};

use crate::storage::StorageError;
use crate::storage::disk::{
    Appender, PREALLOCATE, corrupt, lock_dir, replace_file, replace_file_with, sync_dir,
    truncate_torn,
};
use crate::storage::gather::Gather;
use crate::storage::record::{self, Frame, Record};
use crate::storage::{FlushObserver, FsyncPolicy};

/// The replica's durable state, appended to and synced in batches.
pub struct RaftLog {
    dir: PathBuf,
    path: PathBuf,
    out: Appender,
    buf: Vec<u8>,
    /// Records in `buf`.
    queued: usize,
    fsync: FsyncPolicy,
    /// See [`RaftLog::set_group_commit_window`].
    group_commit_window: Duration,
    _lock: File,
}

fn entry_record(e: &Entry) -> Record {
    let (kind, key, value) = match &e.cmd {
        Command::Put { key, value } => (record::KIND_ENTRY_PUT, key.clone(), Some(value.clone())),
        Command::Delete { key } => (record::KIND_ENTRY_DELETE, key.clone(), None),
        Command::Noop => (record::KIND_ENTRY_NOOP, Bytes::new(), None),
        Command::Cas {
            key,
            expected,
            value,
        } => {
            let mut v = Vec::with_capacity(17 + value.len());
            v.push(u8::from(expected.is_some()));
            let e = expected.unwrap_or_default();
            v.extend_from_slice(&e.epoch.to_le_bytes());
            v.extend_from_slice(&e.counter.to_le_bytes());
            v.extend_from_slice(value);
            (record::KIND_ENTRY_CAS, key.clone(), Some(Bytes::from(v)))
        }
    };
    Record {
        kind,
        lsn: e.index.0,
        version: e.version(),
        written_ms: 0,
        key,
        value,
        context: bytes::Bytes::new(),
    }
}

/// The first record of a compacted log: the snapshot the log starts after, whose data (`len`
/// bytes) is in [`snapshot_path`]; `base`: the index the entries after it start after (at most
/// the snapshot's).
fn snapshot_record(s: &Snapshot, len: u64, base: u64) -> Record {
    let mut terms = Vec::with_capacity(16 * s.terms.len());
    for (i, t) in &s.terms {
        terms.extend_from_slice(&i.0.to_le_bytes());
        terms.extend_from_slice(&t.0.to_le_bytes());
    }
    Record {
        kind: record::KIND_RAFT_SNAPSHOT_FILE,
        lsn: s.index.0,
        version: Version::new(s.term.0, 0),
        written_ms: base,
        key: Bytes::from(terms),
        value: Some(Bytes::copy_from_slice(&len.to_le_bytes())),
        context: Bytes::new(),
    }
}

/// A snapshot as the first record of `raft.log` gives it: with its data inline (logs of
/// earlier versions), or with the length of its file (`file_len`; the data still to be read).
struct SnapshotHead {
    snapshot: Snapshot,
    /// The index the entries after it start after.
    base: u64,
    file_len: Option<u64>,
}

/// The snapshot of a [`snapshot_record`] (or of an inline one).
fn snapshot_of(r: Record) -> Option<SnapshotHead> {
    if !r.key.len().is_multiple_of(16) || r.written_ms > r.lsn {
        return None;
    }
    let num = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("invariant: 8 bytes"));
    let terms = r
        .key
        .chunks_exact(16)
        .map(|c| (LogIndex(num(&c[..8])), Term(num(&c[8..]))))
        .collect();
    let value = r.value.unwrap_or_default();
    let (data, file_len) = if r.kind == record::KIND_RAFT_SNAPSHOT_FILE {
        (Bytes::new(), Some(num(value.get(..8)?)))
    } else {
        (value, None)
    };
    Some(SnapshotHead {
        snapshot: Snapshot {
            index: LogIndex(r.lsn),
            term: Term(r.version.epoch),
            terms,
            data,
        },
        base: r.written_ms,
        file_len,
    })
}

const SNAPSHOT_PREFIX: &str = "raft-snapshot-";

/// The file of the snapshot that covers the log up to `index`.
pub fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{index:020}"))
}

/// Writes the state machine as of `index`, as `encode` writes it, to its file
/// ([`snapshot_path`]), so that a crash leaves the whole file or none (a temporary file,
/// fsynced unless `fsync` is `never`, renamed into place). Runs on the thread that encodes it,
/// beside the log writer: encoded straight into the file, the snapshot of a large state is
/// never held whole in memory. Returns its size.
///
/// # Errors
/// The file cannot be written.
pub fn write_snapshot(
    dir: &Path,
    index: u64,
    fsync: FsyncPolicy,
    encode: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<u64, StorageError> {
    // The log writer may write the same snapshot (one installed from the leader at the index
    // just compacted here) while the snapshot thread does: each through a file of its own.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    replace_file_with(
        &snapshot_path(dir, index),
        &format!(".{n}.tmp"),
        fsync != FsyncPolicy::Never,
        encode,
    )
}

/// A leader's snapshot received into a file of the data directory rather than into memory
/// (`raft-snapshot-recv.<n>.tmp`). The log writer makes it the snapshot's file once the
/// snapshot is installed ([`Job::Rewrite`]); dropped before that (a snapshot declined, a
/// connection cut short), it is removed. A crash leaves it to the next start, which removes
/// the snapshot files the log does not name.
#[derive(Debug)]
pub struct StagedSnapshot {
    path: PathBuf,
    len: u64,
}

impl StagedSnapshot {
    /// A new file in `dir` for a snapshot's data of `len` bytes, and the file to write it to.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(dir: &Path, len: u64) -> std::io::Result<(Self, File)> {
        static RECEIVED: AtomicU64 = AtomicU64::new(0);
        let n = RECEIVED.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{SNAPSHOT_PREFIX}recv.{n}.tmp"));
        let f = File::create(&path)?;
        Ok((StagedSnapshot { path, len }, f))
    }

    /// The size of the data.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no data (a snapshot always holds some).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Opens the file to read, once it is written: it must hold exactly the data's size.
    ///
    /// # Errors
    /// It cannot be opened, or holds another size.
    pub fn open(&self) -> std::io::Result<File> {
        let f = File::open(&self.path)?;
        let got = f.metadata()?.len();
        if got != self.len {
            return Err(std::io::Error::other(format!(
                "{} holds {got} bytes of a snapshot of {}",
                self.path.display(),
                self.len
            )));
        }
        Ok(f)
    }

    /// Makes it the file of the snapshot at `index` ([`snapshot_path`]): fsynced unless `fsync`
    /// is `never`, renamed into place, the directory fsynced.
    fn adopt(mut self, dir: &Path, index: u64, fsync: FsyncPolicy) -> Result<(), StorageError> {
        let path = std::mem::take(&mut self.path);
        let io = |what: &str, e| StorageError::io(format!("{what} {}", path.display()), e);
        let sync = fsync != FsyncPolicy::Never;
        if sync {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("cannot fsync", e))?;
        }
        std::fs::rename(&path, snapshot_path(dir, index)).map_err(|e| io("cannot rename", e))?;
        if sync {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for StagedSnapshot {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The snapshot files in `dir` by index, and what is left of writes cut short (`None`).
fn snapshot_files(dir: &Path) -> Vec<(Option<u64>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(SNAPSHOT_PREFIX)?;
            let index = if rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit()) {
                rest.parse().ok()
            } else if rest.ends_with(".tmp") {
                None
            } else {
                return None;
            };
            Some((index, e.path()))
        })
        .collect()
}

/// Removes snapshot files a log no longer names. A failure is only logged: the file is in the
/// way of nothing, and the next compaction tries again.
fn remove_snapshots(files: impl IntoIterator<Item = PathBuf>) {
    for f in files {
        if let Err(e) = std::fs::remove_file(&f) {
            tracing::warn!(file = %f.display(), error = %e, "cannot remove an old snapshot");
        }
    }
}

/// The contents of a rewritten log: the record naming `snapshot`'s file of `snapshot_len` bytes
/// (unless there is no snapshot), `hard`, then `entries` (which start at most right after the
/// snapshot).
pub fn encode_base(
    snapshot: &Snapshot,
    snapshot_len: u64,
    hard: HardState,
    entries: &[Entry],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * (entries.len() + 2));
    if snapshot.index.0 > 0 {
        let base = entries.first().map_or(snapshot.index.0, |e| e.index.0 - 1);
        record::encode(&mut out, &snapshot_record(snapshot, snapshot_len, base));
    }
    record::encode(&mut out, &hard_state_record(hard));
    for e in entries {
        record::encode(&mut out, &entry_record(e));
    }
    out
}

fn hard_state_record(h: HardState) -> Record {
    Record {
        kind: record::KIND_HARD_STATE,
        lsn: 0,
        version: Version::new(h.term.0, h.voted_for.map_or(0, |v| v as u64 + 1)),
        written_ms: 0,
        key: Bytes::new(),
        value: None,
        context: bytes::Bytes::new(),
    }
}

/// Reads `dir/raft.log` as it is on disk, changing nothing: for a node that is stopped (or
/// idle), e.g. to audit what its log holds. A torn final record is left out.
///
/// # Errors
/// The file cannot be read, or is damaged beyond a torn tail.
pub fn read(dir: &Path) -> Result<Recovered, StorageError> {
    let path = dir.join("raft.log");
    let buf = read_file(&path)?;
    replay(&buf, dir).map(|(recovered, _, _)| recovered)
}

/// The file's bytes (none when it does not exist yet).
fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StorageError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// Replays the records of `dir/raft.log` (`buf`), and reads the snapshot file they name: what
/// they leave, where the whole records end, and why the rest is torn (`None`: it is not).
fn replay(buf: &[u8], dir: &Path) -> Result<(Recovered, usize, Option<String>), StorageError> {
    let path = &dir.join("raft.log");
    let mut hard = HardState::default();
    let mut snapshot = Snapshot::default();
    let mut file_len = None;
    let mut base = 0;
    let mut log: Vec<Entry> = Vec::new();
    let mut off = 0;
    let mut torn = None;
    loop {
        match record::next_log_frame(buf, off) {
            Frame::Record(r, next) => {
                match r.kind {
                    record::KIND_RAFT_SNAPSHOT | record::KIND_RAFT_SNAPSHOT_FILE if off == 0 => {
                        let head = snapshot_of(r).ok_or_else(|| {
                            corrupt(path, off, "a snapshot's header is malformed")
                        })?;
                        (snapshot, base, file_len) = (head.snapshot, head.base, head.file_len);
                    }
                    record::KIND_HARD_STATE => {
                        hard = HardState {
                            term: Term(r.version.epoch),
                            voted_for: r.version.counter.checked_sub(1).map(|v| v as usize),
                        };
                    }
                    record::KIND_TRUNCATE => {
                        let last = base + log.len() as u64;
                        if r.lsn <= base || r.lsn > last + 1 {
                            return Err(corrupt(
                                path,
                                off,
                                format!("truncate from {} of a log of {base}+{}", r.lsn, log.len()),
                            ));
                        }
                        log.truncate((r.lsn - base) as usize - 1);
                    }
                    record::KIND_ENTRY_PUT
                    | record::KIND_ENTRY_DELETE
                    | record::KIND_ENTRY_NOOP
                    | record::KIND_ENTRY_CAS => {
                        let last = base + log.len() as u64;
                        if r.lsn != last + 1 {
                            return Err(corrupt(
                                path,
                                off,
                                format!("entry {} follows entry {last}", r.lsn),
                            ));
                        }
                        let cmd = match r.kind {
                            record::KIND_ENTRY_PUT => Command::Put {
                                key: r.key,
                                value: r.value.unwrap_or_default(),
                            },
                            record::KIND_ENTRY_DELETE => Command::Delete { key: r.key },
                            record::KIND_ENTRY_CAS => {
                                let v = r.value.unwrap_or_default();
                                if v.len() < 17 {
                                    return Err(corrupt(
                                        path,
                                        off,
                                        "compare-and-set entry too short",
                                    ));
                                }
                                let num = |b: &[u8]| {
                                    u64::from_le_bytes(b.try_into().expect("invariant: 8 bytes"))
                                };
                                Command::Cas {
                                    key: r.key,
                                    expected: (v[0] == 1)
                                        .then(|| Version::new(num(&v[1..9]), num(&v[9..17]))),
                                    value: v.slice(17..),
                                }
                            }
                            _ => Command::Noop,
                        };
                        log.push(Entry {
                            term: Term(r.version.epoch),
                            index: LogIndex(r.lsn),
                            cmd,
                        });
                    }
                    k => {
                        return Err(corrupt(
                            path,
                            off,
                            format!("record kind {k} in a replica log"),
                        ));
                    }
                }
                off = next;
            }
            Frame::End => break,
            Frame::Torn(why) => {
                torn = Some(why);
                break;
            }
            Frame::Corrupt(why) => {
                return Err(corrupt(
                    path,
                    off,
                    format!(
                        "{why}; nothing was modified, and a node will not start on this \
                         log until it is repaired"
                    ),
                ));
            }
        }
    }
    if base + (log.len() as u64) < snapshot.index.0 {
        return Err(corrupt(
            path,
            0,
            format!(
                "the log ends at {} before its snapshot's last entry {}",
                base + log.len() as u64,
                snapshot.index.0
            ),
        ));
    }
    // The data stays in its file (a gigabyte's state is read from there as it is restored).
    let snapshot_file = match file_len {
        Some(len) => {
            let file = snapshot_path(dir, snapshot.index.0);
            let held = std::fs::metadata(&file).map_err(|e| {
                StorageError::io(
                    format!(
                        "cannot read {}, the snapshot {} starts from",
                        file.display(),
                        path.display()
                    ),
                    e,
                )
            })?;
            if held.len() != len {
                return Err(corrupt(
                    &file,
                    0,
                    format!(
                        "the snapshot holds {} bytes, and {} says {len}",
                        held.len(),
                        path.display()
                    ),
                ));
            }
            Some(file)
        }
        None => None,
    };
    Ok((
        Recovered {
            hard,
            snapshot_len: file_len.unwrap_or(snapshot.data.len() as u64),
            snapshot,
            snapshot_file,
            entries: log,
        },
        off,
        torn,
    ))
}

/// What [`RaftLog::open`] recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Term and vote.
    pub hard: HardState,
    /// The snapshot the log starts after (index 0: none); its data is empty when it is in
    /// `snapshot_file`.
    pub snapshot: Snapshot,
    /// The size of its data.
    pub snapshot_len: u64,
    /// The file of its data (`None`: no snapshot, or one inline in the log).
    pub snapshot_file: Option<PathBuf>,
    /// The entries after it.
    pub entries: Vec<Entry>,
}

impl RaftLog {
    /// Opens (creating) `dir/raft.log` and replays it.
    ///
    /// # Errors
    /// The directory is unusable or in use, or the file is damaged beyond a torn tail.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<(Self, Recovered), StorageError> {
        let lock = lock_dir(dir)?;
        let path = dir.join("raft.log");
        let buf = read_file(&path)?;
        // A rewrite that a crash interrupted: the old file is whole.
        let _ = std::fs::remove_file(dir.join("raft.log.tmp"));
        let (recovered, off, torn) = replay(&buf, dir)?;
        if let Some(why) = torn {
            truncate_torn(&path, off as u64, &why)?;
        }
        // Snapshots the log does not name: older ones a crash kept from being removed, newer
        // ones it kept from being named, and writes it cut short.
        remove_snapshots(
            snapshot_files(dir)
                .into_iter()
                .filter(|(_, f)| Some(f) != recovered.snapshot_file.as_ref())
                .map(|(_, f)| f),
        );
        let out = Appender::open(&path, off as u64, fsync)?;
        sync_dir(dir)?;
        Ok((
            RaftLog {
                dir: dir.to_path_buf(),
                path,
                out,
                buf: Vec::with_capacity(1 << 16),
                queued: 0,
                fsync,
                group_commit_window: Duration::ZERO,
                _lock: lock,
            },
            recovered,
        ))
    }

    /// The file.
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Where a snapshot is written ([`write_snapshot`]), and how.
    pub fn snapshot_target(&self) -> (PathBuf, FsyncPolicy) {
        (self.dir.clone(), self.fsync)
    }

    /// Queues the term and vote.
    pub fn hard_state(&mut self, h: HardState) {
        record::encode(&mut self.buf, &hard_state_record(h));
        self.queued += 1;
    }

    /// Queues the removal of entries from `from` on.
    pub fn truncate(&mut self, from: LogIndex) {
        record::encode(
            &mut self.buf,
            &Record {
                kind: record::KIND_TRUNCATE,
                lsn: from.0,
                version: Version::ZERO,
                written_ms: 0,
                key: Bytes::new(),
                value: None,
                context: bytes::Bytes::new(),
            },
        );
        self.queued += 1;
    }

    /// Queues entries.
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            record::encode(&mut self.buf, &entry_record(e));
        }
        self.queued += entries.len();
    }

    /// Writes what is queued and makes it durable (one fsync, unless the policy is `never`).
    ///
    /// # Errors
    /// The write or fsync failed: the replica must stop.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write(&[&self.buf])?;
        self.buf.clear();
        self.queued = 0;
        Ok(())
    }

    /// With [`FsyncPolicy::Batch`], the writer thread ([`RaftLog::start_writer`]) starts a
    /// flush no sooner than `window` after the last one started; appends submitted meanwhile
    /// share it (`--group-commit-window`). Zero, the default: it flushes as soon as it can.
    pub fn set_group_commit_window(&mut self, window: Duration) {
        self.group_commit_window = window;
    }

    /// The records queued since the last call (or [`RaftLog::sync`]), as a job for a
    /// [`LogWriter`].
    pub fn take_queued(&mut self) -> Job {
        Job::Append {
            bytes: std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 12)),
            records: std::mem::take(&mut self.queued),
        }
    }

    /// Starts a thread that writes and syncs what is submitted to it, in order, so that the
    /// replica goes on handling messages while an fsync runs. Everything submitted while one
    /// fsync runs shares the next (group commit). After each fsync it calls `done` with the
    /// number of submissions durable so far, or with the error that stopped it (then it ends),
    /// and tells `on_flush` (metrics) how long the write and fsync took and how many records
    /// it made durable.
    ///
    /// # Errors
    /// The file cannot be shared with the thread, or the thread cannot start.
    pub fn start_writer(
        &self,
        on_flush: Option<FlushObserver>,
        done: impl Fn(Result<u64, String>) + Send + 'static,
    ) -> Result<LogWriter, StorageError> {
        let mut out = self.out.try_clone()?;
        let path = self.path.clone();
        let dir = self.dir.clone();
        let fsync = self.fsync;
        let window = match fsync {
            FsyncPolicy::Batch => self.group_commit_window,
            _ => Duration::ZERO,
        };
        let (tx, rx) = std::sync::mpsc::channel::<(Job, Instant)>();
        let thread = std::thread::Builder::new()
            .name("kv-raft-log".into())
            .spawn(move || {
                let mut durable = 0u64;
                // Jobs received and not yet written, in order, with when they were submitted.
                let mut backlog: VecDeque<(Job, Instant)> = VecDeque::new();
                let mut gather = Gather::new();
                // When the last batch started: the next waits out the window from there.
                let mut last_start: Option<Instant> = None;
                loop {
                    let first = match backlog.pop_front().or_else(|| rx.recv().ok()) {
                        Some((j, _)) => j,
                        None => return,
                    };
                    #[cfg(test)]
                    std::thread::sleep(std::time::Duration::from_millis(
                        WRITE_DELAY_MS.load(std::sync::atomic::Ordering::Relaxed),
                    ));
                    let (res, counted) = match first {
                        Job::Append { bytes, records } => {
                            // Appends queued behind it share its fsync; a rewrite waits its turn.
                            let mut bufs = vec![bytes];
                            let mut records = records;
                            backlog.extend(rx.try_iter());
                            let mut open = take_appends(&mut backlog, &mut bufs, &mut records);
                            // Closed-loop writers that the last flush acknowledged may be on
                            // their way back (see `storage::gather`).
                            let from = Instant::now();
                            if open
                                && fsync == FsyncPolicy::Batch
                                && let Some(w) = gather.plan(records)
                            {
                                let until = from + w.window;
                                while open && records < w.records {
                                    let left = until.saturating_duration_since(Instant::now());
                                    let Ok(j) = rx.recv_timeout(left) else { break };
                                    backlog.push_back(j);
                                    open = take_appends(&mut backlog, &mut bufs, &mut records);
                                }
                            }
                            // The group commit window: appends submitted before it ends
                            // share this batch.
                            if let Some(not_before) = last_start.map(|t| t + window) {
                                while open {
                                    let left = not_before.saturating_duration_since(Instant::now());
                                    if left.is_zero() {
                                        break;
                                    }
                                    let Ok(j) = rx.recv_timeout(left) else { break };
                                    backlog.push_back(j);
                                    open = take_appends(&mut backlog, &mut bufs, &mut records);
                                }
                            }
                            let started = Instant::now();
                            if !window.is_zero() {
                                last_start = Some(started);
                            }
                            let early_until = started + gather.window();
                            let slices: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
                            let res = out.write(&slices).map(|_| ());
                            let took = started.elapsed();
                            if let (Ok(()), Some(obs)) = (&res, &on_flush) {
                                obs(took, records, started - from);
                            }
                            // Counted before `done` acknowledges: appends that missed it, and
                            // those of them submitted soon after it started.
                            backlog.extend(rx.try_iter());
                            let (mut missed, mut early) = (0, 0);
                            for (j, at) in &backlog {
                                if let Job::Append { records, .. } = j {
                                    missed += records;
                                    if *at <= early_until {
                                        early += records;
                                    }
                                }
                            }
                            gather.flushed(records, took, missed, early);
                            (res, bufs.len() as u64)
                        }
                        Job::Rewrite {
                            snapshot,
                            snapshot_len,
                            hard,
                            entries,
                            install,
                            staged,
                        } => {
                            let index = snapshot.index.0;
                            let res = (|| {
                                match staged {
                                    _ if !install || index == 0 => {}
                                    Some(staged) => staged.adopt(&dir, index, fsync)?,
                                    None => {
                                        write_snapshot(&dir, index, fsync, |w| {
                                            w.write_all(&snapshot.data)
                                        })?;
                                    }
                                }
                                let contents = encode_base(&snapshot, snapshot_len, hard, &entries);
                                let sync = fsync != FsyncPolicy::Never;
                                let zeros = if sync { PREALLOCATE } else { 0 };
                                replace_file(&path, &[&contents, &vec![0; zeros]], sync)?;
                                out = Appender::open(&path, contents.len() as u64, fsync)?;
                                // The log names this snapshot now. Newer files (a snapshot
                                // being written) and writes cut short are not ours to remove.
                                remove_snapshots(snapshot_files(&dir).into_iter().filter_map(
                                    |(i, f)| i.is_some_and(|i| i < index).then_some(f),
                                ));
                                Ok::<_, StorageError>(())
                            })();
                            (res, u64::from(install))
                        }
                    };
                    match res {
                        Ok(()) => {
                            durable += counted;
                            done(Ok(durable));
                        }
                        Err(e) => {
                            done(Err(e.to_string()));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| StorageError::io("cannot start the replica log writer", e))?;
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Moves the appends at the front of `backlog` into the batch (`bufs`, `records`); false when
/// a rewrite stopped it (the rewrite stays first in `backlog`, written after the batch).
fn take_appends(
    backlog: &mut VecDeque<(Job, Instant)>,
    bufs: &mut Vec<Vec<u8>>,
    records: &mut usize,
) -> bool {
    while let Some((j, at)) = backlog.pop_front() {
        match j {
            Job::Append { bytes, records: r } => {
                bufs.push(bytes);
                *records += r;
            }
            rewrite @ Job::Rewrite { .. } => {
                backlog.push_front((rewrite, at));
                return false;
            }
        }
    }
    true
}

/// Tests: how long the writer thread waits before writing each batch, so that anything sent
/// before its batch is durable shows.
#[cfg(test)]
pub(crate) static WRITE_DELAY_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// What the writer thread does, in the order submitted.
#[derive(Debug)]
pub enum Job {
    /// Append encoded records (one submission: counted once durable).
    Append {
        /// The records, encoded.
        bytes: Vec<u8>,
        /// How many (metrics).
        records: usize,
    },
    /// Replace the whole file with the record naming the snapshot's file, the hard state and
    /// the entries kept (see [`encode_base`]), then remove older snapshot files.
    Rewrite {
        /// The snapshot the log starts after (its data may be only in its file).
        snapshot: Snapshot,
        /// The size of its data.
        snapshot_len: u64,
        /// Term and vote.
        hard: HardState,
        /// The entries kept.
        entries: Vec<Entry>,
        /// A snapshot installed from the leader: a batch of the pipeline (counted as a
        /// submission once durable), whose snapshot file the writer writes first. Otherwise a
        /// compaction on the side, whose snapshot file [`write_snapshot`] already wrote.
        install: bool,
        /// The installed snapshot's data, received into a file: renamed into place rather
        /// than written from the snapshot's (empty) data.
        staged: Option<StagedSnapshot>,
    },
}

/// The sending end of [`RaftLog::start_writer`]. Dropping it lets the thread write what is
/// queued and waits for it to end, so that nothing writes the file once its directory lock is
/// released (drop it before the [`RaftLog`]).
pub struct LogWriter {
    tx: Option<std::sync::mpsc::Sender<(Job, Instant)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Queues a job; `false` when the writer has stopped (after an error).
    pub fn submit(&self, job: Job) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send((job, Instant::now())).is_ok())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(term: u64, index: u64, v: &str) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            cmd: Command::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::copy_from_slice(v.as_bytes()),
            },
        }
    }

    #[test]
    fn raft_log_replays_votes_entries_and_truncations() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut l, rec) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("open");
            assert_eq!((rec.hard, rec.entries.len()), (HardState::default(), 0));
            l.hard_state(HardState {
                term: Term(2),
                voted_for: Some(1),
            });
            l.append(&[put(1, 1, "a"), put(1, 2, "b"), put(2, 3, "c")]);
            l.truncate(LogIndex(2));
            l.append(&[
                put(3, 2, "B"),
                Entry {
                    term: Term(3),
                    index: LogIndex(3),
                    cmd: Command::Cas {
                        key: Bytes::from_static(b"k"),
                        expected: Some(Version::new(3, 2)),
                        value: Bytes::from_static(b"C"),
                    },
                },
                Entry {
                    term: Term(3),
                    index: LogIndex(4),
                    cmd: Command::Delete {
                        key: Bytes::from_static(b"k"),
                    },
                },
            ]);
            l.hard_state(HardState {
                term: Term(3),
                voted_for: None,
            });
            l.sync().expect("sync");
        }
        let (_, rec) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("reopen");
        let (h, log) = (rec.hard, rec.entries);
        assert_eq!(
            h,
            HardState {
                term: Term(3),
                voted_for: None
            }
        );
        assert_eq!(log.len(), 4);
        assert_eq!(log[1], put(3, 2, "B"));
        assert_eq!(
            log[2].cmd,
            Command::Cas {
                key: Bytes::from_static(b"k"),
                expected: Some(Version::new(3, 2)),
                value: Bytes::from_static(b"C"),
            }
        );
        assert!(matches!(log[3].cmd, Command::Delete { .. }));
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            index: LogIndex(index),
            term: Term(term),
            terms: vec![(LogIndex(1), Term(1)), (LogIndex(3), Term(term))],
            data: Bytes::from_static(b"state machine"),
        }
    }

    /// A log as versions before snapshot files wrote it, with its snapshot inline.
    fn inline_snapshot_log(s: &Snapshot, hard: HardState, entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        let base = entries.first().map_or(s.index.0, |e| e.index.0 - 1);
        let mut r = snapshot_record(s, s.data.len() as u64, base);
        r.kind = record::KIND_RAFT_SNAPSHOT;
        r.value = Some(s.data.clone());
        record::encode(&mut out, &r);
        record::encode(&mut out, &hard_state_record(hard));
        for e in entries {
            record::encode(&mut out, &entry_record(e));
        }
        out
    }

    fn big_snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            data: Bytes::from(vec![index as u8; 1 << 20]),
            ..snapshot(index, term)
        }
    }

    /// The recovered snapshot with its data read from its file, where it stays when the log
    /// is opened.
    fn loaded(rec: &Recovered) -> Snapshot {
        let mut s = rec.snapshot.clone();
        if let Some(f) = &rec.snapshot_file {
            assert!(s.data.is_empty(), "the data is left in its file");
            s.data = std::fs::read(f).expect("snapshot file").into();
        }
        assert_eq!(s.data.len() as u64, rec.snapshot_len);
        s
    }

    fn snapshot_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(SNAPSHOT_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// A writer for `l`, and what it reports after each fsync.
    fn writer_reporting(
        l: &RaftLog,
    ) -> (LogWriter, std::sync::mpsc::Receiver<Result<u64, String>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = l
            .start_writer(None, move |r| {
                let _ = tx.send(r);
            })
            .expect("writer");
        (w, rx)
    }

    #[test]
    fn a_compacted_log_names_its_snapshot_file_and_replays_it_with_the_entries_kept_and_what_followed()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let hard = HardState {
            term: Term(2),
            voted_for: Some(0),
        };
        let log_len = || {
            std::fs::metadata(dir.path().join("raft.log"))
                .expect("stat")
                .len()
        };
        {
            let (l, _) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("open");
            let (w, rx) = writer_reporting(&l);
            assert!(w.submit(Job::Append {
                bytes: entry_bytes(&[put(1, 1, "a"), put(1, 2, "b"), put(2, 3, "c")]),
                records: 3
            }));
            // Snapshot at 4 (encoded into its file first, as the snapshot thread does: the
            // rewrite has only its size), keeping 3 and 4 in the log, then 5 appended after the
            // rewrite.
            let (dir_, fsync) = l.snapshot_target();
            let data = big_snapshot(4, 2).data;
            let size = write_snapshot(&dir_, 4, fsync, |w| w.write_all(&data)).expect("snapshot");
            assert_eq!(size, 1 << 20);
            let kept = [put(2, 3, "c"), put(2, 4, "d")];
            assert!(w.submit(Job::Rewrite {
                snapshot: Snapshot {
                    data: Bytes::new(),
                    ..big_snapshot(4, 2)
                },
                snapshot_len: size,
                hard,
                entries: kept.to_vec(),
                install: false,
                staged: None,
            }));
            assert!(w.submit(Job::Append {
                bytes: entry_bytes(&[put(2, 5, "e")]),
                records: 1
            }));
            drop(w);
            // Appends count; the compaction does not.
            assert_eq!(rx.try_iter().last(), Some(Ok(2)));
        }
        // The log names the snapshot; its megabyte is in its own file, not in the log.
        assert!(
            log_len() < (1 << 20) / 2 + PREALLOCATE as u64,
            "raft.log is {} bytes",
            log_len()
        );
        assert_eq!(
            snapshot_names(dir.path()),
            ["raft-snapshot-00000000000000000004"]
        );
        // A rewrite interrupted by a crash leaves its temporary file behind, and a snapshot
        // write cut short its own; a crash after a snapshot was written and before the log
        // named it leaves a newer one: all ignored and removed.
        std::fs::write(dir.path().join("raft.log.tmp"), b"half a rewrite").expect("tmp");
        let half = format!("{SNAPSHOT_PREFIX}{:020}.7.tmp", 9);
        std::fs::write(dir.path().join(&half), b"half a snapshot").expect("tmp");
        std::fs::write(snapshot_path(dir.path(), 8), b"never named").expect("unnamed");
        let (l, rec) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("reopen");
        assert_eq!(rec.hard, hard);
        assert_eq!(loaded(&rec), big_snapshot(4, 2));
        assert_eq!(rec.snapshot_file, Some(snapshot_path(dir.path(), 4)));
        assert_eq!(
            rec.entries,
            vec![put(2, 3, "c"), put(2, 4, "d"), put(2, 5, "e")]
        );
        assert!(!dir.path().join("raft.log.tmp").exists());
        assert_eq!(
            snapshot_names(dir.path()),
            ["raft-snapshot-00000000000000000004"]
        );

        // A snapshot installed from the leader: the writer writes its file, then the log, and
        // removes the older snapshot.
        {
            let (w, rx) = writer_reporting(&l);
            assert!(w.submit(Job::Rewrite {
                snapshot: big_snapshot(6, 3),
                snapshot_len: 1 << 20,
                hard,
                entries: Vec::new(),
                install: true,
                staged: None,
            }));
            drop(w);
            assert_eq!(rx.try_iter().last(), Some(Ok(1)), "an install counts");
        }
        drop(l);
        assert_eq!(
            snapshot_names(dir.path()),
            ["raft-snapshot-00000000000000000006"]
        );
        let rec = read(dir.path()).expect("read");
        assert_eq!(
            (loaded(&rec), rec.entries),
            (big_snapshot(6, 3), Vec::new())
        );
    }

    /// A snapshot received into a file becomes the log's snapshot file as it is (renamed,
    /// not written again); one dropped before it is installed leaves no file behind, nor does
    /// one a crash left half received.
    #[test]
    fn a_snapshot_received_into_a_file_is_renamed_into_place_or_removed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (l, _) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("open");
        let data = big_snapshot(7, 3).data;
        let receive = |len: u64, bytes: &[u8]| {
            let (staged, mut f) = StagedSnapshot::create(dir.path(), len).expect("create");
            f.write_all(bytes).expect("write");
            staged
        };
        // Cut short: refused when opened to read, and gone once dropped.
        let short = receive(data.len() as u64, &data[..1000]);
        let err = short.open().expect_err("short");
        assert!(err.to_string().contains("holds 1000 bytes"), "{err}");
        assert_eq!(snapshot_names(dir.path()).len(), 1);
        drop(short);
        assert!(snapshot_names(dir.path()).is_empty());
        let staged = receive(data.len() as u64, &data);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut staged.open().expect("open"), &mut read).expect("read");
        assert_eq!(read, data);
        {
            let (w, rx) = writer_reporting(&l);
            assert!(w.submit(Job::Rewrite {
                snapshot: Snapshot {
                    data: Bytes::new(),
                    ..big_snapshot(7, 3)
                },
                snapshot_len: data.len() as u64,
                hard: HardState::default(),
                entries: Vec::new(),
                install: true,
                staged: Some(staged),
            }));
            drop(w);
            assert_eq!(rx.try_iter().last(), Some(Ok(1)), "an install counts");
        }
        assert_eq!(
            snapshot_names(dir.path()),
            ["raft-snapshot-00000000000000000007"]
        );
        // A crash while another was received: the next start removes what it left.
        let left = receive(5, b"12");
        std::mem::forget(left);
        drop(l);
        let (_l, rec) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("reopen");
        assert_eq!(loaded(&rec), big_snapshot(7, 3));
        assert_eq!(
            snapshot_names(dir.path()),
            ["raft-snapshot-00000000000000000007"]
        );
    }

    #[test]
    fn a_log_whose_snapshot_file_is_missing_or_of_the_wrong_length_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("raft.log");
        let contents = encode_base(&big_snapshot(4, 2), 1 << 20, HardState::default(), &[]);
        std::fs::write(&log, &contents).expect("write");
        let Err(e) = RaftLog::open(dir.path(), FsyncPolicy::Batch) else {
            panic!("opened a log whose snapshot is missing");
        };
        assert!(
            e.to_string().contains("raft-snapshot-00000000000000000004")
                && e.to_string().contains("No such file"),
            "{e}"
        );
        let file = snapshot_path(dir.path(), 4);
        std::fs::write(&file, vec![4u8; (1 << 20) - 1]).expect("short");
        let Err(e) = RaftLog::open(dir.path(), FsyncPolicy::Batch) else {
            panic!("opened a log whose snapshot is short");
        };
        assert!(
            e.to_string().contains("holds 1048575 bytes") && e.to_string().contains("1048576"),
            "{e}"
        );
        assert_eq!(std::fs::read(&log).expect("log"), contents, "log untouched");
        assert_eq!(
            std::fs::metadata(&file).expect("snapshot").len(),
            (1 << 20) - 1,
            "snapshot left for repair"
        );
    }

    #[test]
    fn a_log_with_its_snapshot_inline_as_earlier_versions_wrote_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hard = HardState {
            term: Term(2),
            voted_for: Some(1),
        };
        let contents = inline_snapshot_log(&snapshot(4, 2), hard, &[put(2, 4, "d")]);
        std::fs::write(dir.path().join("raft.log"), contents).expect("write");
        let (_, rec) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("open");
        assert_eq!(
            (rec.hard, rec.snapshot, rec.snapshot_file, rec.entries),
            (hard, snapshot(4, 2), None, vec![put(2, 4, "d")])
        );
    }

    #[test]
    fn the_group_commit_window_spaces_the_writers_batches_and_appends_meanwhile_share_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let window = Duration::from_millis(40);
        let (mut l, _) = RaftLog::open(dir.path(), FsyncPolicy::Batch).expect("open");
        l.set_group_commit_window(window);
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = batches.clone();
        let observer: FlushObserver = std::sync::Arc::new(move |_, records, waited| {
            b.lock().expect("lock").push((records, waited));
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let w = l
            .start_writer(Some(observer), move |r| {
                let _ = tx.send(r);
            })
            .expect("writer");
        let entries: Vec<Entry> = (1..=42).map(|i| put(1, i, &i.to_string())).collect();
        // A batch after an idle time longer than the window is not held back by it.
        for (i, e) in entries[..2].iter().enumerate() {
            if i > 0 {
                std::thread::sleep(window * 2);
            }
            assert!(w.submit(Job::Append {
                bytes: entry_bytes(std::slice::from_ref(e)),
                records: 1
            }));
            assert_eq!(rx.recv().expect("done"), Ok(i as u64 + 1));
        }
        // Then one append every 2 ms for 80 ms.
        let start = Instant::now();
        for e in &entries[2..] {
            assert!(w.submit(Job::Append {
                bytes: entry_bytes(std::slice::from_ref(e)),
                records: 1
            }));
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut durable = 2;
        while durable < 42 {
            durable = rx.recv().expect("done").expect("written");
        }
        let elapsed = start.elapsed();
        drop(w);
        drop(l);
        let batches = batches.lock().expect("lock").clone();
        crate::storage::gather::check_windowed_flushes(&batches, 42, elapsed, window);
        assert_eq!(reopen(dir.path()), entries);
    }

    /// Appends `entries` through a writer, as the driver does.
    fn write_through_writer(dir: &Path, entries: &[Entry]) -> Vec<Entry> {
        let (l, rec) = RaftLog::open(dir, FsyncPolicy::Batch).expect("open");
        let w = l.start_writer(None, |_| {}).expect("writer");
        for e in entries {
            assert!(w.submit(Job::Append {
                bytes: entry_bytes(std::slice::from_ref(e)),
                records: 1
            }));
        }
        drop(w);
        rec.entries
    }

    fn reopen(dir: &Path) -> Vec<Entry> {
        RaftLog::open(dir, FsyncPolicy::Batch)
            .expect("reopen")
            .1
            .entries
    }

    #[test]
    fn a_preallocated_log_reopens_at_its_last_record_and_a_write_cut_short_in_it_is_torn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("raft.log");
        let len = || std::fs::metadata(&file).expect("stat").len();
        let e: Vec<Entry> = (1..=6).map(|i| put(1, i, "value")).collect();
        assert!(write_through_writer(dir.path(), &e[..3]).is_empty());
        // Zeros ahead of the records; the log ends at its last record, and reopening keeps them.
        // The first batch grew the file by PREALLOCATE past its end; it may have held only the
        // first entry (the writer took it before the others came: this assertion, written for
        // one batch of three, failed so once in a clean-clone CI run).
        let first = entry_bytes(&e[..1]).len() as u64;
        assert!(len() >= first + PREALLOCATE as u64, "{} bytes", len());
        let before = len();
        assert_eq!(write_through_writer(dir.path(), &e[3..4]), e[..3]);
        assert_eq!(len(), before, "nothing truncated, nothing grown");
        assert_eq!(reopen(dir.path()), e[..4]);

        // A crash while writing entry 5: its header and a few bytes, then the zero fill.
        let end = entry_bytes(&e[..4]).len() as u64;
        {
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open");
            f.write_all_at(&entry_bytes(&e[4..5])[..record::HEADER + 4], end)
                .expect("write");
        }
        assert_eq!(
            reopen(dir.path()),
            e[..4],
            "the cut-short record is torn away"
        );
        assert_eq!(len(), end, "cut off where the torn record began");
        // What follows is written where it was; nothing of the torn record is left behind.
        assert_eq!(write_through_writer(dir.path(), &e[4..6]), e[..4]);
        assert_eq!(reopen(dir.path()), e);

        // Damage in an acknowledged record, with whole records after it: refused, untouched.
        let mut bytes = std::fs::read(&file).expect("read");
        let second = entry_bytes(&e[..1]).len();
        bytes[second + record::HEADER + 3] ^= 0x40;
        std::fs::write(&file, &bytes).expect("write");
        let Err(err) = RaftLog::open(dir.path(), FsyncPolicy::Batch) else {
            panic!("opened a log with a damaged record before whole ones");
        };
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(
            std::fs::read(&file).expect("read"),
            bytes,
            "nothing modified"
        );
    }

    #[test]
    fn a_log_that_ends_before_its_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Entries kept from index 3, but only 3 of the snapshot's 4 are there.
        let contents = encode_base(&snapshot(4, 2), 13, HardState::default(), &[put(2, 3, "c")]);
        std::fs::write(dir.path().join("raft.log"), contents).expect("write");
        let Err(e) = RaftLog::open(dir.path(), FsyncPolicy::Batch) else {
            panic!("opened a log shorter than its snapshot");
        };
        assert!(e.to_string().contains("before its snapshot"), "{e}");
    }

    fn entry_bytes(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            record::encode(&mut out, &entry_record(e));
        }
        out
    }
}
