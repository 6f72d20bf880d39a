//! [`MemStorage`]: the index alone. Every write is "durable" at once; nothing survives a restart.

use std::sync::Mutex;

use kv_replica::Version;

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

    fn lock(&self) -> std::sync::MutexGuard<'_, (Index, Lsn)> {
        // A panic while holding the lock leaves the index consistent (every mutation is a
        // single insert or retain), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

    fn purge_tombstones(&self, older_than_ms: u64) -> usize {
        self.lock().0.purge(older_than_ms)
    }

    fn scan(&self, f: &mut dyn FnMut(&bytes::Bytes, &Entry)) {
        for (k, e) in self.lock().0.iter() {
            f(k, e);
        }
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
