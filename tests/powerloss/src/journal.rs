//! The undo journal: one file per data file, holding what each write since the data file's
//! last fsync replaced, so that the writes can be undone in reverse order.
//!
//! Layout: [`MAGIC`], then the data file's path (u32 little-endian length and the bytes,
//! zero-padded to [`HEADER`] bytes, so that a rename rewrites it in place), then records:
//! - `S` old size (u64): the write or truncation changed the file's size from this;
//! - `B` offset (u64), length (u64), bytes: what the write overwrote there.
//!
//! A record is written before the write it describes, so a record cut short by `kill -9` belongs
//! to a write that never happened and is ignored.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// The first bytes of every journal file.
pub const MAGIC: &[u8; 8] = b"KVPLJ01\n";
/// Where the records start.
pub const HEADER: u64 = 4096;
/// The longest data-file path a header holds.
pub const MAX_PATH: usize = HEADER as usize - MAGIC.len() - 4;
/// Journal files end with this.
pub const SUFFIX: &str = ".undo";

/// The header for a journal of `path`; `None` if the path is too long to hold.
pub fn header(path: &Path) -> Option<Vec<u8>> {
    let p = path.as_os_str().as_encoded_bytes();
    if p.len() > MAX_PATH {
        return None;
    }
    let mut h = Vec::with_capacity(HEADER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(p.len() as u32).to_le_bytes());
    h.extend_from_slice(p);
    h.resize(HEADER as usize, 0);
    Some(h)
}

/// The record of a size the file had before a write or truncation changed it.
pub fn size_record(old_size: u64) -> [u8; 9] {
    let mut r = [0u8; 9];
    r[0] = b'S';
    r[1..].copy_from_slice(&old_size.to_le_bytes());
    r
}

/// The head of the record of `len` bytes at `offset` that a write overwrote; the bytes follow.
pub fn bytes_record_head(offset: u64, len: u64) -> [u8; 17] {
    let mut r = [0u8; 17];
    r[0] = b'B';
    r[1..9].copy_from_slice(&offset.to_le_bytes());
    r[9..].copy_from_slice(&len.to_le_bytes());
    r
}

/// One undo step.
#[derive(Debug, PartialEq, Eq)]
pub enum Undo {
    /// Set the file's size back to this.
    Size(u64),
    /// Put these bytes back at this offset.
    Bytes(u64, Vec<u8>),
}

/// A journal read back: the data file it is for, and its complete records in write order.
#[derive(Debug)]
pub struct Journal {
    pub path: PathBuf,
    pub undo: Vec<Undo>,
    /// Bytes at the end that do not make a whole record (a write cut short by the kill).
    pub torn: usize,
}

/// Reads a journal file's contents.
///
/// # Errors
/// `InvalidData` when it is not a journal.
pub fn parse(buf: &[u8]) -> io::Result<Journal> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if buf.len() < HEADER as usize || &buf[..MAGIC.len()] != MAGIC {
        return Err(bad("not a kv-powerloss journal (no header)"));
    }
    let at = MAGIC.len();
    let n = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    if n > MAX_PATH {
        return Err(bad("path length past the header"));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&buf[at + 4..at + 4 + n]).into_owned());
    let mut undo = Vec::new();
    let mut rest = &buf[HEADER as usize..];
    let u64_at = |b: &[u8], i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    loop {
        match rest.first() {
            Some(b'S') if rest.len() >= 9 => {
                undo.push(Undo::Size(u64_at(rest, 1)));
                rest = &rest[9..];
            }
            Some(b'B') if rest.len() >= 17 => {
                let off = u64_at(rest, 1);
                let len = usize::try_from(u64_at(rest, 9)).map_err(|_| bad("record too long"))?;
                if rest.len() - 17 < len {
                    break;
                }
                undo.push(Undo::Bytes(off, rest[17..17 + len].to_vec()));
                rest = &rest[17 + len..];
            }
            Some(b'S' | b'B') | None => break,
            Some(_) => return Err(bad("unknown record")),
        }
    }
    Ok(Journal {
        path,
        undo,
        torn: rest.len(),
    })
}

/// What undoing one journal did.
#[derive(Debug)]
pub struct Reverted {
    pub path: PathBuf,
    /// Undo records applied.
    pub steps: usize,
    /// The file's size before and after.
    pub size_before: u64,
    pub size_after: u64,
    /// Bytes put back inside the file.
    pub restored: u64,
}

/// Undoes every write the journal holds, newest first, and fsyncs the data file. A data file
/// that no longer exists (removed after the journal was made) is skipped.
///
/// # Errors
/// The data file cannot be opened, written or synced.
pub fn revert(j: &Journal) -> io::Result<Option<Reverted>> {
    let f = match OpenOptions::new().write(true).open(&j.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size_before = f.metadata()?.len();
    let mut restored = 0;
    for u in j.undo.iter().rev() {
        match u {
            Undo::Size(s) => f.set_len(*s)?,
            Undo::Bytes(off, b) => {
                f.write_all_at(b, *off)?;
                restored += b.len() as u64;
            }
        }
    }
    f.sync_all()?;
    Ok(Some(Reverted {
        path: j.path.clone(),
        steps: j.undo.len(),
        size_before,
        size_after: f.metadata()?.len(),
        restored,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(records: &[&[u8]]) -> Vec<u8> {
        let mut b = header(Path::new("/data/wal-1.log")).expect("short path");
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    #[test]
    fn records_read_back_in_order_and_a_record_cut_short_is_ignored() {
        let mut bytes = bytes_record_head(4, 3).to_vec();
        bytes.extend_from_slice(b"abc");
        let mut cut = bytes_record_head(7, 10).to_vec();
        cut.extend_from_slice(b"only5");
        let buf = journal(&[&size_record(10), &bytes, &cut]);
        let j = parse(&buf).expect("a journal");
        assert_eq!(j.path, Path::new("/data/wal-1.log"));
        assert_eq!(
            j.undo,
            vec![Undo::Size(10), Undo::Bytes(4, b"abc".to_vec())]
        );
        assert_eq!(j.torn, 17 + 5);
    }

    #[test]
    fn what_is_not_a_journal_is_refused() {
        assert!(parse(b"hello").is_err());
        let mut buf = journal(&[]);
        buf[0] = b'X';
        assert!(parse(&buf).is_err());
        let buf = journal(&[b"Zjunk"]);
        assert!(parse(&buf).is_err());
    }

    #[test]
    fn undoing_restores_overwritten_bytes_and_the_old_size_newest_first() {
        let dir = std::env::temp_dir().join(format!("kvpl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("data");
        // Synced state: "0123456789". Then unsynced: overwrite 2..5 with "xyz", append
        // "ABCDE", overwrite 8..12 with "----".
        std::fs::write(&path, b"01xyz567----CDE").expect("write");
        let mut b1 = bytes_record_head(2, 3).to_vec();
        b1.extend_from_slice(b"234");
        let mut b3 = bytes_record_head(8, 4).to_vec();
        b3.extend_from_slice(b"89AB");
        let mut buf = header(&path).expect("short path");
        for r in [&b1[..], &size_record(10), &b3] {
            buf.extend_from_slice(r);
        }
        let j = parse(&buf).expect("a journal");
        let r = revert(&j).expect("revert").expect("file exists");
        assert_eq!(std::fs::read(&path).expect("read"), b"0123456789");
        assert_eq!(
            (r.size_before, r.size_after, r.steps, r.restored),
            (15, 10, 3, 7)
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
