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
//! idle buffers of at most [`KEEP_CAPACITY`] each are kept. An idle buffer only exists
//! because a buffer in use was released, so there are never more buffers than were once
//! in use at the same time; a read takes the smallest idle buffer it fits, so a small
//! batch does not pin a large buffer while a large one needs a new one.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Idle buffers kept for the next reads.
const KEEP: usize = 8;

/// Smallest read served from the pool: glibc's mmap threshold as the edge fixes it.
/// Smaller buffers come from malloc's arenas, which reuse them anyway.
const POOLED_MIN: usize = 128 << 10;

/// Largest buffer kept (a larger one, read for an unusually large batch, is freed).
const KEEP_CAPACITY: usize = 2 << 20;

/// Idle buffers, shared by the pool and every buffer in use.
type Idle = Arc<Mutex<Vec<Vec<u8>>>>;

/// The idle read buffers, shared with the records that hold the ones in use.
#[derive(Debug, Default, Clone)]
pub(super) struct ReadPool {
    idle: Idle,
    /// Reads that found an idle buffer large enough (tests).
    #[cfg(test)]
    reused: Arc<std::sync::atomic::AtomicU64>,
}

impl ReadPool {
    /// Reads the file at `path` up to `most` bytes (its committed records; a growing
    /// file's zeros follow them): into the smallest idle buffer it fits (else the
    /// largest, grown, else a new one) when it is at least [`POOLED_MIN`] bytes.
    pub(super) fn read(&self, path: &Path, most: u64) -> io::Result<Bytes> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len().min(most)).unwrap_or(usize::MAX);
        let mut file = io::Read::take(file, len as u64);
        if len < POOLED_MIN {
            let mut buf = Vec::with_capacity(len);
            file.read_to_end(&mut buf)?;
            return Ok(buf.into());
        }
        let mut buf = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let fits = (0..idle.len())
                .filter(|i| idle[*i].capacity() >= len)
                .min_by_key(|i| idle[*i].capacity());
            let largest = (0..idle.len()).max_by_key(|i| idle[*i].capacity());
            fits.or(largest).map(|i| idle.swap_remove(i))
        }
        .unwrap_or_default();
        #[cfg(test)]
        self.reused.fetch_add(
            u64::from(buf.capacity() >= len),
            std::sync::atomic::Ordering::Relaxed,
        );
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
    idle: Idle,
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
    use std::sync::atomic::Ordering;

    fn file(dir: &Path, name: &str, len: usize, byte: u8) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![byte; len]).unwrap();
        p
    }

    #[test]
    fn a_buffer_returns_when_its_last_slice_is_dropped_and_is_read_into_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a", 300_000, 7);
        let b = file(dir.path(), "b", POOLED_MIN, 9);
        let pool = ReadPool::default();
        let whole = pool.read(&a, u64::MAX).unwrap();
        assert_eq!(whole.len(), 300_000);
        let slice = whole.slice(10..20);
        drop(whole);
        assert_eq!(pool.idle(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 10]);
        let addr = slice.as_ptr() as usize - 10;
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.read(&b, u64::MAX).unwrap();
        assert_eq!(
            again.len(),
            POOLED_MIN,
            "no bytes of the previous read remain"
        );
        assert!(again.iter().all(|x| *x == 9));
        assert_eq!(again.as_ptr() as usize, addr, "the idle buffer was reused");
        assert_eq!(pool.reused.load(Ordering::Relaxed), 1);
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn a_read_takes_the_smallest_idle_buffer_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let large = file(dir.path(), "large", 1 << 20, 1);
        let medium = file(dir.path(), "medium", 400_000, 2);
        let pool = ReadPool::default();
        let (l, m) = (
            pool.read(&large, u64::MAX).unwrap(),
            pool.read(&medium, u64::MAX).unwrap(),
        );
        let (l_addr, m_addr) = (l.as_ptr() as usize, m.as_ptr() as usize);
        drop((l, m));
        let small = pool
            .read(&file(dir.path(), "small", 200_000, 3), u64::MAX)
            .unwrap();
        assert_eq!(small.as_ptr() as usize, m_addr);
        let big = pool
            .read(&file(dir.path(), "big", 900_000, 4), u64::MAX)
            .unwrap();
        assert_eq!(big.as_ptr() as usize, l_addr);
        assert!(big.iter().all(|x| *x == 4));
    }

    #[test]
    fn at_most_keep_buffers_stay_idle_and_small_or_oversized_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let pooled = file(dir.path(), "pooled", POOLED_MIN, 1);
        let pool = ReadPool::default();
        let held: Vec<Bytes> = (0..KEEP + 2)
            .map(|_| pool.read(&pooled, u64::MAX).unwrap())
            .collect();
        drop(held);
        assert_eq!(pool.idle(), KEEP);
        let pool = ReadPool::default();
        let small = file(dir.path(), "small", POOLED_MIN - 1, 2);
        let large = file(dir.path(), "large", KEEP_CAPACITY + 1, 3);
        drop(pool.read(&small, u64::MAX).unwrap());
        drop(pool.read(&large, u64::MAX).unwrap());
        assert_eq!(pool.idle(), 0);
        assert!(matches!(
            pool.read(&dir.path().join("missing"), u64::MAX)
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        ));
    }
}
