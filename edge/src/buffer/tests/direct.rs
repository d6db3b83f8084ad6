//! Direct writes (`commit::Direct`, `buffer.direct_io`): files of large records skip
//! the page cache on their way to the disk; what goes to disk, what readers and a
//! reopen see.

use super::*;

/// `n` records of 64 KB, each payload distinct all through (not only its id).
fn large(n: u64) -> Vec<Record> {
    (0..n)
        .map(|id| {
            let mut r = rec(id, 0, 64 << 10);
            let body: Vec<u8> = (0..64u64 << 10)
                .map(|i| (i.wrapping_mul(31) ^ id.wrapping_mul(7919)) as u8)
                .collect();
            r.payload = Bytes::from([&id.to_be_bytes()[..], &body[8..]].concat());
            r
        })
        .collect()
}

/// Every record in the buffer, read from the start.
fn all(buf: &Buffer) -> Vec<Record> {
    buf.read(None, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|b| b.records)
        .collect()
}

/// Every batch file holds exactly its records: the zeros that pad a direct write to
/// 4 KiB were cut after the fsync.
fn assert_no_padding(dir: &std::path::Path) {
    let batches = dir.join("batches");
    let keys = files::list(&batches).unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let bytes = std::fs::read(files::path(&batches, key)).unwrap();
        let prefix = record::intact_prefix(Bytes::from(bytes.clone()));
        assert_eq!(
            prefix.len,
            bytes.len(),
            "batch {key} ends in bytes that are no record"
        );
    }
}

fn check(mut c: BufferConfig, slow_commits: bool) {
    let want = large(40);
    // As with an uplink down for a while: the first files go through the page cache,
    // the rest direct.
    c.direct_io_backlog_bytes = 1 << 20;
    let buf = Buffer::open(c.clone()).unwrap();
    if slow_commits {
        // Records pile up while a round runs, so rounds take whole files of them.
        buf.slow_commits_for_test(Duration::from_millis(20));
    }
    let mut last = 0;
    for r in &want {
        if let Appended::Stored(gen) = buf.append(r.clone()).unwrap() {
            last = gen;
        }
    }
    buf.commit().unwrap();
    buf.wait_durable(last).unwrap();
    let direct_files = buf.stats().direct_files.load(Ordering::Relaxed);
    let files = files::list(&c.dir.join("batches")).unwrap().len() as u64;
    assert!(direct_files > 0, "no batch file was written with O_DIRECT");
    assert!(direct_files < files, "the first files went direct too");
    let payloads = |rs: &[Record]| rs.iter().map(|r| r.payload.clone()).collect::<Vec<_>>();
    assert_eq!(payloads(&all(&buf)), payloads(&want));
    assert_no_padding(&c.dir);
    drop(buf);
    let buf = reopen(c.clone());
    assert_eq!(payloads(&all(&buf)), payloads(&want), "after a reopen");
    assert_eq!(buf.stats().recovered.load(Ordering::Relaxed), 0);
}

#[test]
fn interval_writes_full_files_direct_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 256 << 10;
    check(c, false);
}

#[test]
fn always_writes_full_files_direct_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.sync = SyncPolicy::Always;
    c.batch_max_bytes = 256 << 10;
    check(c, true);
}

/// Commits `records` to a buffer of 256 KiB files (direct from a backlog of
/// `direct_from` bytes, `direct_io` as given) and checks that they all read back and
/// that no file was written direct.
fn assert_nothing_direct(records: Vec<Record>, direct_from: Option<u64>, direct_io: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 256 << 10;
    c.direct_io = direct_io;
    if let Some(bytes) = direct_from {
        c.direct_io_backlog_bytes = bytes;
    }
    let buf = Buffer::open(c).unwrap();
    let n = records.len();
    for r in records {
        buf.append(r).unwrap();
    }
    buf.commit().unwrap();
    assert!(files::list(&dir.path().join("batches")).unwrap().len() >= 3);
    assert_eq!(all(&buf).len(), n);
    assert_eq!(buf.stats().direct_files.load(Ordering::Relaxed), 0);
}

/// Files of small records (none larger than `batch_max_bytes`) go through the page
/// cache.
#[test]
fn small_record_files_stay_in_the_page_cache() {
    assert_nothing_direct(
        (0..2_000).map(|id| rec(id, 0, 1000)).collect(),
        Some(0),
        true,
    );
}

/// Below [`DIRECT_BACKLOG_BYTES`] of buffered bytes (the default bound) (a connected edge) files of
/// large records go through the page cache too.
#[test]
fn a_small_backlog_stays_in_the_page_cache() {
    assert_nothing_direct(large(40), None, true);
}

/// With `direct_io: false` nothing is written direct.
#[test]
fn direct_io_off_writes_through_the_page_cache() {
    assert_nothing_direct(large(40), Some(0), false);
}

/// A block the kernel refuses for `O_DIRECT` (its length is no multiple of the logical
/// block size) is written through the page cache instead, whole, into the spare.
#[test]
fn a_refused_direct_write_falls_back_to_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let spares = spares::Spares::open(dir.path(), 0).unwrap();
    let mut b = Vec::new();
    let (at, len) = record::encode_batch_aligned(&large(2), &mut b, files::DIRECT_ALIGN).unwrap();
    // Aligned address, unaligned length: EINVAL before any I/O.
    let (mut f, flen, direct) =
        files::write_direct(dir.path(), 7, &b[at..at + len], len, &spares).unwrap();
    assert!(!direct, "an unaligned length was accepted for O_DIRECT");
    assert_eq!(flen, len as u64);
    assert_eq!(
        std::fs::read(files::path(dir.path(), 7)).unwrap(),
        &b[at..at + len]
    );
    // The handle is positioned after the batch, as an append expects.
    use std::io::Seek;
    assert_eq!(f.stream_position().unwrap(), len as u64);
    // The aligned block goes direct, and the file holds the batch then zeros.
    let (_, flen, direct) = files::write_direct(dir.path(), 8, &b[at..], len, &spares).unwrap();
    assert!(direct);
    assert_eq!(flen, (b.len() - at) as u64);
    let on_disk = std::fs::read(files::path(dir.path(), 8)).unwrap();
    assert_eq!(&on_disk[..len], &b[at..at + len]);
    assert!(on_disk[len..].iter().all(|&z| z == 0));
}

/// A direct write takes the shortest spare, not a pre-sized one: it writes the file
/// whole, so zeros ahead of it would be written for nothing.
#[test]
fn a_direct_write_takes_the_shortest_spare() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spares = spares::Spares::open(d, 1 << 20).unwrap();
    // Two drained files recycled: one keeps its megabyte (a pre-sized spare), one is empty.
    std::fs::write(files::path(d, 1), vec![7; 1 << 20]).unwrap();
    std::fs::write(files::path(d, 2), b"").unwrap();
    files::retire(d, 1, &spares).unwrap();
    files::retire(d, 2, &spares).unwrap();
    let mut b = Vec::new();
    let (at, len) = record::encode_batch_aligned(&large(2), &mut b, files::DIRECT_ALIGN).unwrap();
    let (_, flen, direct) = files::write_direct(d, 8, &b[at..], len, &spares).unwrap();
    assert!(direct);
    assert_eq!(flen, (b.len() - at) as u64, "the pre-sized spare was taken");
    // The pre-sized spare is left for a file that is appended to.
    let (_, flen) = files::write(d, 9, b"x", &spares).unwrap();
    assert_eq!(flen, 1 << 20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// An aligned encoding is the plain encoding at an aligned address, zeros after it
    /// up to a multiple of the alignment.
    #[test]
    fn aligned_encoding_is_the_plain_one_padded(
        sizes in proptest::collection::vec(0usize..9000, 1..12),
        align_log in 9u32..13,
    ) {
        let align = 1usize << align_log;
        let records: Vec<Record> = sizes.iter().enumerate()
            .map(|(i, s)| rec(i as u64, 0, *s)).collect();
        let mut b = vec![1u8; 3];
        let (at, len) = record::encode_batch_aligned(&records, &mut b, align).unwrap();
        prop_assert_eq!(b[at..].as_ptr().align_offset(align), 0);
        prop_assert_eq!((b.len() - at) % align, 0);
        prop_assert!(b.len() - at - len < align);
        prop_assert_eq!(&b[at..at + len], &record::encode_batch(&records)[..]);
        prop_assert!(b[at + len..].iter().all(|&z| z == 0));
    }
}
