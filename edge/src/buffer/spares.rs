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

/// The pool of spare files of one batch directory.
pub(super) struct Spares {
    dir: PathBuf,
    state: Mutex<State>,
    /// Wakes the filler thread: the pool ran low, or shutdown.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Ids of the spare files ready for use.
    free: Vec<u64>,
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
    /// The pool of `dir`, after deleting every spare an earlier run left there.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
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

    /// A new, empty file at `path` (opened for writing at offset 0): a spare renamed
    /// there, or a created file when the pool is empty or the rename fails.
    pub(super) fn take(&self, path: &Path) -> io::Result<File> {
        let id = {
            let mut s = self.lock();
            let id = s.free.pop();
            if s.free.len() < LOW {
                self.wake.notify_one();
            }
            id
        };
        if let Some(id) = id {
            match fs::rename(spare_path(&self.dir, id), path) {
                // Truncating an empty file is free; it also covers a spare that is not
                // empty for any reason.
                Ok(()) => return OpenOptions::new().write(true).truncate(true).open(path),
                Err(e) => tracing::warn!(cause = %e, "using a spare buffer file failed"),
            }
        }
        File::create(path)
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
                self.lock().free.push(id);
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
                if let Err(e) = File::create(spare_path(&self.dir, id)) {
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
                self.lock().free.push(id);
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
        let spares = Spares::open(d).unwrap();
        let a = files::path(d, 1);
        std::io::Write::write_all(&mut spares.take(&a).unwrap(), b"records").unwrap();
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
        Spares::open(d).unwrap();
        assert!(names(d).is_empty(), "open deletes the spares");
    }
}
