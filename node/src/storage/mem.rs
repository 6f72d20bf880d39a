//! [`MemStorage`]: the index alone. Every write is "durable" at once; nothing survives a restart.

use std::sync::Mutex;

use bytes::Bytes;
use kv_replica::Version;

use super::disk::Decoded;
use super::index::Index;
use super::{DurableFuture, Entry, Lsn, Storage, StorageError, StorageStats, Write};

/// In-memory storage for tests and demos (`--storage memory`).
#[derive(Debug, Default)]
pub struct MemStorage {
    inner: Mutex<(Index, Lsn)>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole store, encoded as a snapshot covering `covered` (the leader-follower driver
    /// passes its applied log index): the snapshot format of the disk engine.
    pub fn encode_snapshot(&self, covered: u64) -> Vec<u8> {
        self.freeze().encode(covered)
    }

    /// A copy of the whole store as it is now, to encode elsewhere (the copy shares keys and
    /// values with the store; only the table is new).
    pub fn freeze(&self) -> Frozen {
        Frozen(self.lock().0.clone())
    }

    /// Replaces the whole store with an [`MemStorage::encode_snapshot`] encoding; returns what it
    /// covers. `source` names the data in errors.
    ///
    /// # Errors
    /// The data is damaged; the store is unchanged then.
    pub fn restore(
        &self,
        data: &mut dyn std::io::Read,
        source: &std::path::Path,
    ) -> Result<u64, StorageError> {
        let (index, covered) = super::disk::decode_index(data, source)?;
        let top = index.iter().map(|(_, e)| e.lsn).max().unwrap_or(0);
        let mut g = self.lock();
        // Later writes must order after every restored entry.
        let lsn = g.1.max(top);
        *g = (index, lsn);
        Ok(covered)
    }

    /// [`MemStorage::restore`] over the store as it stands, for a leader's snapshot installed
    /// on a follower: each key's entry is replaced as its record is read, so the old value's
    /// memory goes as the new one comes, and keys the snapshot lacks go at the end. Readers wait
    /// meanwhile. Restored beside the old store, a state of a gigabyte took two while it was
    /// read, on top of the snapshot itself.
    ///
    /// The data is read from `data` a megabyte at a time: a snapshot received into a file is
    /// installed from there.
    ///
    /// # Errors
    /// The data is damaged or cannot be read; the store is then a mix of old and new, not to be
    /// served.
    pub fn install(
        &self,
        data: &mut dyn std::io::Read,
        source: &std::path::Path,
    ) -> Result<u64, StorageError> {
        let mut g = self.lock();
        let (index, lsn) = &mut *g;
        let mut seen = std::collections::HashSet::new();
        let covered = super::disk::decode_snapshot(data, source, &mut |d| match d {
            Decoded::HighWater(v) => index.raise_high_water(v),
            Decoded::Entry(k, e) => {
                // Later writes must order after every restored entry.
                *lsn = (*lsn).max(e.lsn);
                seen.insert(k.clone());
                index.replace(k, e);
            }
        })?;
        index.retain_keys(|k| seen.contains(k));
        Ok(covered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Index, Lsn)> {
        // A panic while holding the lock leaves the index consistent (every mutation is a
        // single insert or retain; an install cut short is not served: see `install`), so a
        // poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A copy of a [`MemStorage`] taken by [`MemStorage::freeze`].
#[derive(Debug)]
pub struct Frozen(Index);

impl Frozen {
    /// Encodes it as a snapshot covering `covered` (see [`MemStorage::encode_snapshot`]).
    pub fn encode(&self, covered: u64) -> Vec<u8> {
        super::disk::encode_index(&self.0, covered).0
    }

    /// [`Frozen::encode`] into `out`, a megabyte at a time.
    ///
    /// # Errors
    /// `out` refused a write.
    pub fn encode_to(&self, covered: u64, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        super::disk::encode_index_to(&self.0, covered, out).map(|_| ())
    }
}

impl Storage for MemStorage {
    fn get(&self, key: &[u8]) -> Option<Entry> {
        self.lock().0.get(key).cloned()
    }

    fn write(&self, w: Write) -> Result<Lsn, StorageError> {
        let mut g = self.lock();
        g.1 += 1;
        let lsn = g.1;
        g.0.apply(
            w.key,
            Entry {
                version: w.version,
                value: w.value,
                lsn,
                written_ms: w.written_ms,
                context: w.context,
            },
        );
        Ok(lsn)
    }

    fn wait_durable(&self, _lsn: Lsn) -> DurableFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn high_water(&self) -> Version {
        self.lock().0.high_water()
    }

    fn purge_tombstones_if(
        &self,
        older_than_ms: u64,
        may_purge: &mut dyn FnMut(&Bytes, &Entry) -> bool,
    ) -> usize {
        self.lock().0.purge(older_than_ms, may_purge)
    }

    fn scan(&self, f: &mut dyn FnMut(&bytes::Bytes, &Entry)) {
        for (k, e) in self.lock().0.iter() {
            f(k, e);
        }
    }

    fn durable_lsn(&self) -> Lsn {
        self.lock().1
    }

    fn stats(&self) -> StorageStats {
        let g = self.lock();
        StorageStats {
            last_lsn: g.1,
            durable_lsn: g.1,
            ..g.0.stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes it takes and keeps their bytes.
    #[derive(Default)]
    struct Chunks(Vec<u8>, usize);

    impl std::io::Write for Chunks {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            self.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn put(m: &MemStorage, key: &str, value: Option<&str>, counter: u64) -> Lsn {
        m.write(Write {
            key: Bytes::from(key.to_owned()),
            value: value.map(|v| Bytes::from(v.to_owned())),
            version: Version::new(1, counter),
            written_ms: 0,
            context: Bytes::new(),
        })
        .expect("write")
    }

    /// Installed over a follower's store (in place), a snapshot leaves what restoring it into
    /// an empty store leaves: keys it lacks gone, the others replaced (a tombstone too), the
    /// counts right, and later writes ordered after it.
    #[test]
    fn a_snapshot_installed_over_a_store_leaves_what_restoring_it_into_an_empty_one_does() {
        let leader = MemStorage::new();
        put(&leader, "b", Some("new b"), 10);
        put(&leader, "c", None, 11);
        put(&leader, "d", Some("d"), 12);
        let data = leader.encode_snapshot(77);
        let follower = MemStorage::new();
        put(&follower, "a", Some("only here"), 1);
        put(&follower, "b", Some("old b, longer"), 2);
        let covered = follower
            .install(&mut &data[..], std::path::Path::new("test"))
            .expect("install");
        assert_eq!(covered, 77);
        let fresh = MemStorage::new();
        fresh
            .restore(&mut &data[..], std::path::Path::new("test"))
            .expect("restore");
        for k in ["a", "b", "c", "d"] {
            assert_eq!(follower.get(k.as_bytes()), fresh.get(k.as_bytes()), "{k}");
        }
        assert_eq!(follower.get(b"a"), None);
        assert_eq!(follower.stats(), fresh.stats());
        assert_eq!(follower.stats().live_keys, 2);
        assert_eq!(follower.stats().tombstones, 1);
        assert_eq!(
            put(&follower, "e", Some("e"), 13),
            put(&fresh, "e", Some("e"), 13)
        );
        // Damaged, it is refused.
        let mut bad = data.clone();
        let last = bad.len() - 20;
        bad[last] ^= 1;
        assert!(
            follower
                .install(&mut &bad[..], std::path::Path::new("test"))
                .is_err()
        );
    }

    /// A reader that gives at most `.1` bytes a call, as a file or socket may.
    struct Pieces<'a>(&'a [u8], usize);

    impl std::io::Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Installed from a reader a window at a time (a snapshot received into a file), with
    /// records larger than the window and across its edges, a snapshot leaves what restoring
    /// it whole does; cut short anywhere, or followed by anything, it is refused.
    #[test]
    fn a_snapshot_read_a_piece_at_a_time_installs_what_it_does_whole() {
        let leader = MemStorage::new();
        for i in 0..6u64 {
            let len = if i % 2 == 0 { 1_500_000 } else { 10 };
            put(&leader, &format!("k{i}"), Some(&"v".repeat(len)), i + 1);
        }
        put(&leader, "gone", None, 9);
        let data = leader.encode_snapshot(50);
        let whole = MemStorage::new();
        whole
            .restore(&mut &data[..], std::path::Path::new("test"))
            .expect("restore");
        for piece in [1 << 20, 65_536, 4_099] {
            let m = MemStorage::new();
            let covered = m
                .install(&mut Pieces(&data, piece), std::path::Path::new("test"))
                .expect("install");
            assert_eq!(covered, 50);
            assert_eq!(m.stats(), whole.stats());
            for i in 0..6 {
                let k = format!("k{i}");
                assert_eq!(m.get(k.as_bytes()), whole.get(k.as_bytes()), "{k}");
            }
        }
        for cut in [4, 8, 100, 1 << 20, data.len() / 2, data.len() - 1] {
            let err = MemStorage::new()
                .install(
                    &mut Pieces(&data[..cut], 65_536),
                    std::path::Path::new("test"),
                )
                .expect_err("a snapshot cut short");
            assert!(matches!(err, StorageError::Corrupt { .. }), "{cut}: {err}");
        }
        let mut longer = data.clone();
        longer.push(0);
        let err = MemStorage::new()
            .install(&mut Pieces(&longer, 65_536), std::path::Path::new("test"))
            .expect_err("data after the end");
        assert!(err.to_string().contains("data after"), "{err}");
    }

    #[test]
    fn a_snapshot_encoded_into_a_writer_comes_a_megabyte_at_a_time_and_restores_the_same_store() {
        let m = MemStorage::new();
        for i in 0..5u64 {
            m.write(Write {
                key: Bytes::from(format!("k{i}")),
                value: (i != 3).then(|| Bytes::from(vec![i as u8; 600 << 10])),
                version: Version::new(1, i + 1),
                written_ms: 0,
                context: Bytes::new(),
            })
            .expect("write");
        }
        let frozen = m.freeze();
        let mut out = Chunks::default();
        frozen.encode_to(42, &mut out).expect("encode");
        // 2.4 MB of values: not one buffer of it all, and the same bytes as in one piece.
        assert!(out.1 >= 2, "{} writes", out.1);
        assert_eq!(out.0, frozen.encode(42));
        let back = MemStorage::new();
        let covered = back
            .restore(&mut &out.0[..], std::path::Path::new("test"))
            .expect("restore");
        assert_eq!(covered, 42);
        for i in 0..5u64 {
            let k = format!("k{i}");
            assert_eq!(back.get(k.as_bytes()), m.get(k.as_bytes()), "{k}");
        }
    }
}
