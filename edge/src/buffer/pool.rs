//! Read buffers reused from one batch-file read to the next.
//!
//! A drain reads batch files of 256 KB-1 MB one after another. A fresh buffer that size
//! is a new `mmap` (the edge fixes glibc's mmap threshold at 128 KB, see `main.rs`), so
//! each read faulted in zeroed pages and the encoder thread unmapped them when it dropped
//! the last record: in a 1 GB drain the page faults were half of the file reads, which
//! were 30% of the replicator thread, and `munmap` 9% of the encoder thread.
//!
//! Records are `Bytes` slices of the buffer they were read into. When the last of them is
//! dropped the buffer returns here, and the next read fills it again. At most [`KEEP`]
//! idle buffers of at most [`KEEP_CAPACITY`] each are kept, and an idle buffer only
//! exists because a buffer in use was released: the memory held never exceeds what the
//! most buffers in use at once held.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Idle buffers kept for the next reads.
const KEEP: usize = 4;

/// Largest buffer kept (a larger one, read for an unusually large batch, is freed).
const KEEP_CAPACITY: usize = 2 << 20;

/// The idle read buffers, shared with the records that hold the ones in use.
#[derive(Debug, Default, Clone)]
pub(super) struct ReadPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ReadPool {
    /// Reads the whole file at `path` into an idle buffer (or a new one).
    pub(super) fn read(&self, path: &Path) -> io::Result<Bytes> {
        let mut file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let mut buf = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        buf.clear();
        buf.reserve_exact(len);
        file.read_to_end(&mut buf)?;
        Ok(Bytes::from_owner(Pooled {
            buf,
            idle: self.idle.clone(),
        }))
    }

    /// Idle buffers (tests).
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A buffer in use: the owner behind the `Bytes` of one read.
struct Pooled {
    buf: Vec<u8>,
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() > KEEP_CAPACITY {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_when_its_last_slice_is_dropped_and_is_read_into_again() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![7u8; 300_000]).unwrap();
        std::fs::write(&b, b"second").unwrap();
        let pool = ReadPool::default();
        let whole = pool.read(&a).unwrap();
        assert_eq!(whole.len(), 300_000);
        let slice = whole.slice(10..20);
        drop(whole);
        assert_eq!(pool.idle(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 10]);
        let addr = slice.as_ptr() as usize - 10;
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.read(&b).unwrap();
        assert_eq!(
            &again[..],
            b"second",
            "no bytes of the previous read remain"
        );
        assert_eq!(again.as_ptr() as usize, addr, "the idle buffer was reused");
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn at_most_keep_small_enough_buffers_stay_idle() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        let large = dir.path().join("large");
        std::fs::write(&small, b"x").unwrap();
        std::fs::write(&large, vec![1u8; KEEP_CAPACITY + 1]).unwrap();
        let pool = ReadPool::default();
        let held: Vec<Bytes> = (0..KEEP + 2).map(|_| pool.read(&small).unwrap()).collect();
        drop(held);
        assert_eq!(pool.idle(), KEEP);
        let pool = ReadPool::default();
        drop(pool.read(&large).unwrap());
        assert_eq!(pool.idle(), 0, "an oversized buffer is freed");
        assert!(matches!(
            pool.read(&dir.path().join("missing")).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        ));
    }
}
