//! Read-ahead (`prefetch.rs`): after a read that filled its byte budget, the files after
//! it come into the page cache before anyone reads them, up to `AHEAD_BYTES`.
//! Residency is measured with `fincore` (util-linux), which asks the kernel (`mincore`).

use std::time::Instant;

use super::*;

/// A buffer with `n` batch files of four 64 KB records each (256 KiB and a little),
/// evicted from the page cache; their paths in key order.
fn cold_files(dir: &std::path::Path, n: u64) -> (Buffer, Vec<std::path::PathBuf>) {
    let buf = open_unbounded(dir);
    for f in 0..n {
        for i in 0..4 {
            buf.append(rec(f * 4 + i, 0, 64 << 10)).unwrap();
        }
        buf.commit().unwrap();
    }
    let batches = dir.join("batches");
    let paths: Vec<_> = keys(dir)
        .into_iter()
        .map(|k| files::path(&batches, k))
        .collect();
    assert_eq!(paths.len() as u64, n);
    for p in &paths {
        // Fsynced by the commit, so clean: the advice drops the pages.
        let f = std::fs::File::open(p).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
    let resident = resident(&paths);
    assert!(
        resident.iter().all(|r| *r == 0),
        "the files could not be evicted from the page cache (this test needs a disk \
         file system, not tmpfs): {resident:?}"
    );
    (buf, paths)
}

/// The batch files' keys, in order.
fn keys(dir: &std::path::Path) -> Vec<u64> {
    let mut keys = files::list(&dir.join("batches")).unwrap();
    keys.sort_unstable();
    keys
}

/// Bytes of each file in the page cache.
fn resident(paths: &[std::path::PathBuf]) -> Vec<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(paths)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore: {out:?}");
    let res: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(res.len(), paths.len());
    res
}

/// Waits until every file in `paths` is wholly in the page cache; false after 10 s.
fn wait_resident(paths: &[std::path::PathBuf]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want: Vec<u64> = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    while Instant::now() < deadline {
        if resident(paths).iter().zip(&want).all(|(r, w)| r >= w) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_full_read_brings_the_next_files_into_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, paths) = cold_files(dir.path(), 12);
    // One file's worth fills the budget: a backlog read, with more to come.
    let got = buf.read(None, 1).unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        wait_resident(&paths[1..]),
        "files after the read were not read ahead: {:?}",
        resident(&paths)
    );
}

#[test]
fn read_ahead_stops_at_its_window_and_follows_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    // 48 files of 256 KiB: 12 MiB, more than the 8 MiB window.
    let (buf, paths) = cold_files(dir.path(), 48);
    let per_file = std::fs::metadata(&paths[0]).unwrap().len();
    let window = (crate::buffer::prefetch::AHEAD_BYTES / per_file) as usize;
    assert!(window + 2 < paths.len());
    let got = buf.read(None, 1).unwrap();
    let first = got[0].key;
    // The window after the file read is advised (its last file may end past it)...
    assert!(wait_resident(&paths[1..window]), "{:?}", resident(&paths));
    // ...and nothing far beyond it: no later hint came. (The advice for the window's
    // files is given in key order, all before this check can see the last of them.)
    let res = resident(&paths);
    assert!(
        res[window + 2..].iter().all(|r| *r == 0),
        "files beyond the window were read ahead: {res:?}"
    );
    // The reader moves on past half the window (less than half of it left ahead): the
    // window moves with it.
    let half = crate::buffer::prefetch::AHEAD_BYTES / 2 + per_file;
    let got = buf.read(Some(first), half as usize).unwrap();
    let last = got.last().unwrap().key;
    let next = keys(dir.path()).iter().position(|k| *k == last).unwrap() + 1;
    // A window's worth after it (bar one file, as the window counts whole files).
    let end = (next + window - 1).min(paths.len());
    assert!(end > window + 2, "the check reaches past the first window");
    assert!(
        wait_resident(&paths[next..end]),
        "the window did not follow the reader: {:?}",
        resident(&paths)
    );
}
