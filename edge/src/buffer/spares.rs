//! Spare batch files: empty files kept ready in the batch directory (`<id>.spare`), so a
//! group commit renames one into place instead of creating a file.
//!
//! Why: creating a file was the committer's largest CPU cost after the copies at 64 KB
//! payloads (a new file per 256 KiB). On ext4 without a journal (this project's machines,
//! and a common choice on flash gateways) every inode allocation also skips the inodes
//! freed in the last minutes (`recently_deleted` in the kernel's `find_inode_bit`), so a
//! connected edge that creates and deletes files at the same rate pays more per create
//! the faster it runs. Two sources fill the pool:
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
const TARGET: usize = 32;
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

    /// Turns the batch file at `path` (its deletion durable in sled) into a spare when the
    /// pool has room, else unlinks it. Already gone is fine. Returns the bytes it held.
    pub(super) fn retire(&self, path: &Path) -> io::Result<u64> {
        let id = {
            let mut s = self.lock();
            if s.free.len() >= MAX || s.shutdown {
                None
            } else {
                s.next_id += 1;
                Some(s.next_id)
            }
        };
        let bytes = match path.metadata() {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if let Some(id) = id {
            let to = spare_path(&self.dir, id);
            let recycled = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0))
                .and_then(|()| fs::rename(path, &to));
            match recycled {
                Ok(()) => {
                    self.lock().free.push(id);
                    return Ok(bytes);
                }
                Err(e) => tracing::warn!(cause = %e, "recycling a buffer file failed"),
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(0),
            Ok(()) => Ok(bytes),
        }
    }

    /// The `buffer-spares` thread: keeps at least [`LOW`] spares (refilling to
    /// [`TARGET`]) until [`Spares::stop`].
    pub(super) fn fill_loop(&self) {
        loop {
            let id = {
                let mut s = self.lock();
                while !s.shutdown && s.free.len() >= LOW {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.shutdown {
                    return;
                }
                s.next_id += 1;
                s.next_id
            };
            let mut made = 0;
            let mut next = Some(id);
            while let Some(id) = next {
                match File::create(spare_path(&self.dir, id)) {
                    Ok(_) => made += 1,
                    Err(e) => {
                        tracing::warn!(cause = %e, "creating a spare buffer file failed");
                        // Back off a second whatever wakes us (the committer creates its
                        // own files meanwhile): one warning a second at most.
                        let s = self.lock();
                        drop(
                            self.wake
                                .wait_timeout_while(s, Duration::from_secs(1), |s| !s.shutdown),
                        );
                        break;
                    }
                }
                let mut s = self.lock();
                s.free.push(id);
                next = (!s.shutdown && s.free.len() < TARGET).then(|| {
                    s.next_id += 1;
                    s.next_id
                });
            }
            tracing::trace!(made, "spare buffer files created");
        }
    }

    /// Ends [`Spares::fill_loop`]; later retired files are unlinked.
    pub(super) fn stop(&self) {
        self.lock().shutdown = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
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
        let a = d.join("a.batch");
        std::io::Write::write_all(&mut spares.take(&a).unwrap(), b"records").unwrap();
        assert_eq!(spares.retire(&a).unwrap(), 7, "bytes it held");
        assert_eq!(spares.ready(), 1);
        assert_eq!(names(d), ["1.spare"]);
        assert_eq!(fs::metadata(d.join("1.spare")).unwrap().len(), 0);
        let b = d.join("b.batch");
        drop(spares.take(&b).unwrap());
        assert_eq!(names(d), ["b.batch"], "the spare renamed into place");
        assert_eq!(spares.retire(&d.join("gone.batch")).unwrap(), 0);
        for i in 0..MAX + 3 {
            let p = d.join(format!("{i}.batch"));
            drop(File::create(&p).unwrap());
            spares.retire(&p).unwrap();
        }
        assert_eq!(spares.ready(), MAX);
        assert_eq!(
            names(d).iter().filter(|n| n.ends_with(".spare")).count(),
            MAX
        );
        assert_eq!(names(d).iter().filter(|n| n.ends_with(".batch")).count(), 1);
        spares.stop();
        spares.retire(&b).unwrap();
        assert!(!b.exists(), "unlinked after stop");
        drop(spares);
        Spares::open(d).unwrap();
        assert!(names(d).is_empty(), "open deletes the spares");
    }
}
