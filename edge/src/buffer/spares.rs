//! Spare batch files: empty files kept ready in the batch directory (`<id>.spare`), so a
//! group commit renames one into place instead of creating a file.
//!
//! Why: creating a file was the committer's largest CPU cost after the copies at 64 KB
//! payloads (a new file per 256 KiB). On ext4 without a journal (the machines measured
//! here) every inode allocation also skips the inodes freed in the last minutes
//! (`recently_deleted` in the kernel's `find_inode_bit`), so a connected edge that
//! creates and deletes files at the same rate pays more per create the faster it runs.
//! Two sources fill the pool:
//!
//! 1. the reaper *recycles* drained batch files: after the deletion's tombstone is durable
//!    (step 2 in `reap.rs`) the file is truncated and renamed to a spare instead of being
//!    unlinked, so a connected edge stops allocating and freeing inodes altogether;
//! 2. the `buffer-spares` thread creates empty files when the pool runs low, off the
//!    commit path (it runs while the committer waits for its fsyncs).
//!
//! With `sync: always` (files grow by appended segments) the thread makes its spares
//! *pre-sized*: `batch_max_bytes` (at most [`MAX_PRESIZE`]) of zeros, written and fsynced
//! before the spare is offered. A group commit that appends inside the file's length
//! changes neither its size nor its blocks, so its `fdatasync` needs no journal commit
//! (journaled ext4, the usual gateway setup) and no block allocation. Measured on the
//! development VM, `edge-bench` 100 B ingest, alternating with the previous edge:
//! journal-less ext4, `fdatasync` 0.29 -> 0.20 ms on average and 3 pairs 311/315/330k ->
//! 308/349/339k msgs/s; journaled ext4 (a loop mount), 2 pairs 239/264k -> 314/299k
//! msgs/s. 4,000 publishes at 200/s on journaled ext4 wrote 67 MB in 12,049 I/Os
//! before, 17 MB in 8,045 after (flash wear). A batch file keeps zeros
//! after its data while it grows; the committer cuts them off when it stops appending
//! (`commit::retire_tail`), and both readers and the open's recovery read only the
//! records (zeros are not a segment: `record::intact_prefix`). Recycled spares are
//! truncated, not zeroed: a connected edge writes no zeros.
//!
//! A spare holds no data the buffer needs, so none of this is made durable on its own:
//! a rename into place is covered by the commit's directory fsync like a created file,
//! and the open deletes every `*.spare` left by an earlier run (after a crash one may
//! still hold a recycled file's old bytes). If a crash leaves a renamed spare under a
//! batch name before its new contents were synced, the file's records are those of the
//! old batch (or none): its first record's sequence is not the name's key, so recovery
//! removes it as an incomplete commit (`files::recover`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The thread refills the pool when it holds fewer than this many files...
const LOW: usize = 16;
/// ...up to this many.
pub(super) const TARGET: usize = 32;
/// Recycled files beyond this many are unlinked (each spare is an inode).
const MAX: usize = 64;

/// The largest pre-size (a larger `batch_max_bytes` grows files past it as before).
pub(super) const MAX_PRESIZE: u64 = 1 << 20;

/// Zeros to pre-size spares from (static: no heap).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The pool of spare files of one batch directory.
pub(super) struct Spares {
    dir: PathBuf,
    /// Bytes of zeros in a spare the thread creates (0: empty spares).
    presize: u64,
    state: Mutex<State>,
    /// Wakes the filler thread: the pool ran low, or shutdown.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Ids and lengths of the spare files ready for use.
    free: Vec<(u64, u64)>,
    next_id: u64,
    shutdown: bool,
}

impl State {
    /// A spare file name not used yet in this process.
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.spare"))
}

impl Spares {
    /// The pool of `dir`, after deleting every spare an earlier run left there; the
    /// spares it creates hold `presize` zeros (at most [`MAX_PRESIZE`]).
    pub(super) fn open(dir: &Path, presize: u64) -> io::Result<Self> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".spare"))
            {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Spares {
            dir: dir.to_path_buf(),
            presize: presize.min(MAX_PRESIZE),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spare files ready now.
    #[cfg(test)]
    pub(super) fn ready(&self) -> usize {
        self.lock().free.len()
    }

    /// A new file at `path`, opened for writing at offset 0, and its length: a spare
    /// renamed there (empty, or pre-sized with zeros), or a created file when the pool
    /// is empty or the rename fails.
    pub(super) fn take(&self, path: &Path) -> io::Result<(File, u64)> {
        let id = {
            let mut s = self.lock();
            let id = s.free.pop();
            if s.free.len() < LOW {
                self.wake.notify_one();
            }
            id
        };
        if let Some((id, len)) = id {
            match fs::rename(spare_path(&self.dir, id), path) {
                // Not truncated: a pre-sized spare's zeros are what makes appends cheap.
                Ok(()) => return Ok((OpenOptions::new().write(true).open(path)?, len)),
                Err(e) => tracing::warn!(cause = %e, "using a spare buffer file failed"),
            }
        }
        Ok((File::create(path)?, 0))
    }

    /// Turns the batch file at `path` (its deletion durable in sled) into a spare, empty,
    /// if the pool has room; returns whether it did (if not, the caller unlinks it).
    pub(super) fn recycle(&self, path: &Path) -> bool {
        let id = {
            let mut s = self.lock();
            if s.free.len() >= MAX || s.shutdown {
                return false;
            }
            s.new_id()
        };
        let recycled = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0))
            .and_then(|()| fs::rename(path, spare_path(&self.dir, id)));
        match recycled {
            Ok(()) => {
                self.lock().free.push((id, 0));
                true
            }
            Err(e) => {
                tracing::warn!(cause = %e, "recycling a buffer file failed");
                false
            }
        }
    }

    /// The `buffer-spares` thread: whenever fewer than [`LOW`] spares are ready, creates
    /// them up to [`TARGET`], until [`Spares::stop`].
    pub(super) fn fill_loop(&self) {
        loop {
            {
                let mut s = self.lock();
                while !s.shutdown && s.free.len() >= LOW {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.shutdown {
                    return;
                }
            }
            while let Some(id) = self.next_to_fill() {
                match self.create(id) {
                    Ok(len) => self.lock().free.push((id, len)),
                    Err(e) => {
                        tracing::warn!(cause = %e, "creating a spare buffer file failed");
                        // Back off a second whatever wakes us (the committer creates its own
                        // files meanwhile): one warning a second at most.
                        let s = self.lock();
                        drop(
                            self.wake
                                .wait_timeout_while(s, Duration::from_secs(1), |s| !s.shutdown),
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Creates spare `id`, pre-sized: its zeros written and fsynced, so that the
    /// commits appending to it later neither allocate blocks nor change its size; returns
    /// its length. If the zeros cannot be written (a full disk), the spare is offered
    /// empty, as before pre-sizing, instead of left behind unused.
    fn create(&self, id: u64) -> io::Result<u64> {
        let mut f = File::create(spare_path(&self.dir, id))?;
        if self.presize == 0 {
            return Ok(0);
        }
        let zeroed = (|| {
            let mut left = self.presize as usize;
            while left > 0 {
                let n = left.min(ZEROS.len());
                io::Write::write_all(&mut f, &ZEROS[..n])?;
                left -= n;
            }
            f.sync_all()
        })();
        match zeroed {
            Ok(()) => Ok(self.presize),
            Err(e) => {
                tracing::debug!(cause = %e, "pre-sizing a spare buffer file failed: offered empty");
                f.set_len(0)?;
                Ok(0)
            }
        }
    }

    /// The id of the next spare to create while the pool is below [`TARGET`].
    fn next_to_fill(&self) -> Option<u64> {
        let mut s = self.lock();
        (!s.shutdown && s.free.len() < TARGET).then(|| s.new_id())
    }

    /// Ends [`Spares::fill_loop`]; later drained files are unlinked, not recycled.
    pub(super) fn stop(&self) {
        self.lock().shutdown = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::files;
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Without the filler thread: an empty pool creates the file; a retired file becomes
    /// an empty spare that the next take renames into place; past [`MAX`] spares a
    /// retired file is unlinked, and after `stop` every retired file is.
    #[test]
    fn retire_recycles_up_to_the_limit_and_take_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spares = Spares::open(d, 0).unwrap();
        let a = files::path(d, 1);
        std::io::Write::write_all(&mut spares.take(&a).unwrap().0, b"records").unwrap();
        assert_eq!(files::retire(d, 1, &spares).unwrap(), 7, "bytes it held");
        assert_eq!(spares.ready(), 1);
        assert_eq!(names(d), ["1.spare"]);
        assert_eq!(fs::metadata(d.join("1.spare")).unwrap().len(), 0);
        let b = files::path(d, 2);
        drop(spares.take(&b).unwrap());
        assert_eq!(
            names(d),
            [b.file_name().unwrap().to_str().unwrap()],
            "the spare renamed into place"
        );
        assert_eq!(files::retire(d, 99, &spares).unwrap(), 0, "already gone");
        for key in 100..100 + MAX as u64 + 3 {
            drop(File::create(files::path(d, key)).unwrap());
            files::retire(d, key, &spares).unwrap();
        }
        assert_eq!(spares.ready(), MAX);
        assert_eq!(
            names(d).iter().filter(|n| n.ends_with(".spare")).count(),
            MAX
        );
        assert_eq!(names(d).iter().filter(|n| n.ends_with(".batch")).count(), 1);
        spares.stop();
        files::retire(d, 2, &spares).unwrap();
        assert!(!b.exists(), "unlinked after stop");
        drop(spares);
        Spares::open(d, 0).unwrap();
        assert!(names(d).is_empty(), "open deletes the spares");
    }

    #[test]
    fn created_spares_are_presized_with_zeros_and_recycled_ones_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spares = Spares::open(d, 10_000).unwrap();
        // What the filler thread does for one spare.
        let id = spares.next_to_fill().unwrap();
        assert_eq!(spares.create(id).unwrap(), 10_000);
        spares.lock().free.push((id, 10_000));
        let a = files::path(d, 1);
        let (f, len) = spares.take(&a).unwrap();
        assert_eq!(len, 10_000);
        drop(f);
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes.len(), 10_000);
        assert!(bytes.iter().all(|b| *b == 0));
        // A recycled file is truncated, not zeroed.
        assert_eq!(files::retire(d, 1, &spares).unwrap(), 10_000);
        let (_, len) = spares.take(&files::path(d, 2)).unwrap();
        assert_eq!(len, 0);
        assert_eq!(fs::metadata(files::path(d, 2)).unwrap().len(), 0);
        assert_eq!(Spares::open(d, u64::MAX).unwrap().presize, MAX_PRESIZE);
    }
}
