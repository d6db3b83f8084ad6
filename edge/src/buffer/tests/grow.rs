//! `sync: always` grows a class's newest batch file by one segment per group commit
//! (durability step 2): growth, sealing, and recovery after a kill mid-append.

use super::*;

/// `sync: always`, background commits, files up to `batch_max` bytes.
fn always(dir: &std::path::Path, batch_max: usize) -> BufferConfig {
    let mut c = cfg(dir, u64::MAX, FullPolicy::Block);
    c.sync = SyncPolicy::Always;
    c.batch_max_bytes = batch_max;
    c
}

/// Appends record `id` and waits until it is durable (what the PUBACK waits for).
fn durable(buf: &Buffer, id: u64) {
    let Appended::Stored(gen) = buf.append(rec(id, 0, 100)).unwrap() else {
        panic!("dropped")
    };
    buf.wait_durable(gen).unwrap();
}

fn file_lens(dir: &std::path::Path) -> Vec<u64> {
    let mut keys = files::list(dir).unwrap();
    keys.sort_unstable();
    keys.iter()
        .map(|k| files::path(dir, *k).metadata().unwrap().len())
        .collect()
}

/// Several commits land in one file until the replicator reads it; a read batch never
/// changes afterwards (new records go to a new file and are read after it, in order),
/// and a full file is not appended to.
#[test]
fn always_grows_the_newest_file_until_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Buffer::open(always(dir.path(), 1 << 20)).unwrap();
    for id in 0..3 {
        durable(&buf, id);
    }
    assert!(buf.stats().commits.load(Ordering::Relaxed) >= 3);
    assert_eq!(file_lens(&batches).len(), 1, "three commits, one file");
    let first = buf.read(None, usize::MAX).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].records.iter().map(id_of).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    durable(&buf, 3);
    durable(&buf, 4);
    assert_eq!(file_lens(&batches).len(), 2, "a read file is sealed");
    let next = buf.read(Some(first[0].key), usize::MAX).unwrap();
    assert_eq!(
        next.iter()
            .flat_map(|b| b.records.iter().map(id_of))
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // Releasing the first file's records deletes it; the second is intact.
    let seqs: Vec<Held> = first[0].records.iter().map(Held::of).collect();
    buf.release(&seqs).unwrap();
    buf.reaped();
    assert_eq!(file_lens(&batches).len(), 1);
    assert_eq!(buf.snapshot().records, 2);
    drop(buf);
    // A full file is not appended to: with room for one record per file, one file each.
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Buffer::open(always(dir.path(), 150)).unwrap();
    for id in 0..3 {
        durable(&buf, id);
    }
    assert_eq!(file_lens(&batches).len(), 3);
}

/// A read that meets a file mid-append waits for that commit and returns the whole file
/// (readers take an empty read as "caught up"), and asks the committer to start a new
/// file next time (so a steady ingest never keeps reads waiting).
#[test]
fn read_waits_for_a_file_being_appended_and_seals_it() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Arc::new(Buffer::open(always(dir.path(), 1 << 20)).unwrap());
    durable(&buf, 0);
    let key = files::list(&batches).unwrap()[0];
    buf.inner.lock().appending.insert(key);
    let reader = {
        let buf = buf.clone();
        std::thread::spawn(move || buf.read(None, usize::MAX).unwrap())
    };
    // The reader is waiting once it asked for the seal.
    while !buf.inner.lock().seal {
        std::thread::yield_now();
    }
    assert!(!reader.is_finished());
    buf.inner.lock().appending.remove(&key);
    buf.inner.durable.notify_all();
    let got = reader.join().unwrap();
    assert_eq!(
        got.iter()
            .flat_map(|b| b.records.iter().map(id_of))
            .collect::<Vec<_>>(),
        [0]
    );
    durable(&buf, 1);
    assert_eq!(
        file_lens(&batches).len(),
        2,
        "sealed: the next commit made a new file"
    );
    assert!(!buf.inner.lock().seal);
    assert_eq!(all_ids(&buf), [0, 1]);
}

/// Durability step 2, the new step: a kill while a commit appends its segment. Modelled
/// worst case: sled as it was after the first commit's index entry was flushed (the
/// second commit's entry lost), the file holding both acknowledged segments and then a
/// torn third one (its write cut short before its fsync, never acknowledged). Open keeps
/// both acknowledged segments, cuts the torn tail off the file, counts nothing corrupt,
/// and later appends and reads continue after them.
#[test]
fn kill_mid_append_keeps_acknowledged_segments_and_cuts_the_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let killed = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Buffer::open(always(dir.path(), 1 << 20)).unwrap();
    durable(&buf, 1);
    buf.inner.flush_durable().unwrap();
    kill_snapshot(dir.path(), killed.path());
    durable(&buf, 2);
    let lens = file_lens(&batches);
    assert_eq!(lens.len(), 1, "the second commit appended");
    kill_snapshot(&batches, &killed.path().join("batches"));
    drop(buf);
    let key = files::list(&killed.path().join("batches")).unwrap()[0];
    let path = files::path(&killed.path().join("batches"), key);
    let torn = record::encode_batch(&[Record {
        seq: key + 2,
        ..rec(3, 0, 100)
    }]);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, &torn[..torn.len() / 2]).unwrap();
    drop(file);
    let back = reopen(always(killed.path(), 1 << 20));
    assert_eq!(all_ids(&back), [1, 2]);
    assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 1);
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        lens[0],
        "torn tail cut"
    );
    assert_eq!(back.batch_file_bytes(), lens[0]);
    durable(&back, 4);
    assert_eq!(all_ids(&back), [1, 2, 4]);
    let seqs: Vec<u64> = back
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.seq))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(back);
    // The rebuilt entry is in sled: the next open reads no file.
    let again = reopen(always(killed.path(), 1 << 20));
    assert_eq!(again.stats().recovered.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&again), [1, 2, 4]);
}

/// Bytes after the intact segments that happen to form a valid segment of *older*
/// records (stale contents of a recycled disk block after a power cut) are not records:
/// sequences must rise through a file.
#[test]
fn stale_older_segment_after_the_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let (key, len) = {
        let buf = Buffer::open(always(dir.path(), 1 << 20)).unwrap();
        durable(&buf, 1);
        durable(&buf, 2);
        let key = files::list(&batches).unwrap()[0];
        (key, file_lens(&batches)[0])
    };
    let stale = record::encode_batch(&[Record {
        seq: key,
        ..rec(9, 0, 100)
    }]);
    let path = files::path(&batches, key);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, &stale).unwrap();
    drop(file);
    let back = reopen(always(dir.path(), 1 << 20));
    assert_eq!(all_ids(&back), [1, 2]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

/// A drained file is recycled with its blocks and old records (`spares.rs`), and the
/// next new file is that spare: its first commit overwrites the start, and the older
/// records that follow (here at a segment boundary, records of one size) are never read
/// as its own, neither by the replicator nor after a kill, which cuts them off.
#[test]
fn a_recycled_file_keeps_its_old_records_out_of_the_new_batch() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let killed = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Buffer::open(always(dir.path(), 4096)).unwrap();
    spares_ready(&buf);
    for id in 0..5 {
        durable(&buf, id);
    }
    let old = buf.read(None, usize::MAX).unwrap();
    assert_eq!(old.len(), 1, "five commits, one file");
    let old_path = files::path(&batches, old[0].key);
    let (ino, old_len) = {
        let m = old_path.metadata().unwrap();
        (m.ino(), m.len())
    };
    assert_eq!(old_len, 4096, "a pre-sized file");
    let held: Vec<Held> = old[0].records.iter().map(Held::of).collect();
    buf.release(&held).unwrap();
    buf.reaped();
    durable(&buf, 10);
    let new_key = files::list(&batches).unwrap()[0];
    let new_path = files::path(&batches, new_key);
    let m = new_path.metadata().unwrap();
    assert_eq!(m.ino(), ino, "the recycled file");
    assert_eq!(m.len(), 4096, "its length kept");
    let bytes = std::fs::read(&new_path).unwrap();
    let one = record::encode_batch(&[Record {
        seq: new_key,
        ..rec(10, 0, 100)
    }]);
    let rest = record::intact_prefix(bytes::Bytes::from(bytes[one.len()..].to_vec()));
    assert_eq!(
        rest.count, 4,
        "the old file's later segments follow the new one"
    );
    assert!(rest.first.unwrap().0 < new_key);
    assert_eq!(buf.batch_file_bytes(), 4096);
    let ids = |b: &[ReadBatch]| -> Vec<u64> {
        b.iter().flat_map(|b| b.records.iter().map(id_of)).collect()
    };
    assert_eq!(ids(&buf.read(Some(old[0].key), usize::MAX).unwrap()), [10]);
    kill_snapshot(dir.path(), killed.path());
    drop(buf);
    let back = reopen(always(killed.path(), 4096));
    assert_eq!(all_ids(&back), [10]);
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    let cut = files::path(&killed.path().join("batches"), new_key);
    assert_eq!(std::fs::metadata(&cut).unwrap().len(), one.len() as u64);
    assert_eq!(back.batch_file_bytes(), one.len() as u64);
}

#[derive(Debug, Clone)]
enum GrowOp {
    /// Append this many records, each waited for (acknowledged).
    Append(usize),
    /// Read up to this many batches and release them.
    Drain(usize),
    Reboot,
}

fn grow_op() -> impl Strategy<Value = GrowOp> {
    prop_oneof![
        6 => (1usize..8).prop_map(GrowOp::Append),
        2 => (1usize..3).prop_map(GrowOp::Drain),
        1 => Just(GrowOp::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Model test with growing files: every acknowledged record is read exactly once, in
    /// order, across reads that seal files, releases, and reboots.
    #[test]
    fn grow_model(ops in proptest::collection::vec(grow_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 5 records per file, so files fill up, too.
        let c = always(dir.path(), 700);
        let mut buf = Buffer::open(c.clone()).unwrap();
        let mut acked: VecDeque<u64> = VecDeque::new();
        let mut cursor = None;
        let mut next_id = 0;
        for op in ops {
            match op {
                GrowOp::Append(n) => {
                    for _ in 0..n {
                        durable(&buf, next_id);
                        acked.push_back(next_id);
                        next_id += 1;
                    }
                }
                GrowOp::Drain(n) => {
                    // One batch per read (`max_bytes` 1), `n` reads.
                    for _ in 0..n {
                        let Some(batch) = buf.read(cursor, 1).unwrap().into_iter().next() else {
                            break;
                        };
                        cursor = Some(batch.key);
                        let mut seqs = Vec::new();
                        for r in &batch.records {
                            prop_assert_eq!(Some(id_of(r)), acked.pop_front());
                            seqs.push(Held::of(r));
                        }
                        buf.release(&seqs).unwrap();
                    }
                }
                GrowOp::Reboot => {
                    drop(buf);
                    buf = reopen(c.clone());
                    cursor = None;
                }
            }
            prop_assert_eq!(buf.snapshot().records, acked.len() as u64);
            prop_assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
        }
        let all: Vec<u64> = buf.read(cursor, usize::MAX).unwrap().iter()
            .flat_map(|b| b.records.iter().map(id_of)).collect();
        prop_assert_eq!(all, acked.into_iter().collect::<Vec<_>>());
    }
}

/// A live-first drain over a backlog of grown files: the backlog cursor reads every
/// backlog record (below the boundary), the live cursor the records after it.
#[test]
fn live_first_reads_the_whole_grown_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(always(dir.path(), 64 << 10)).unwrap();
    let mut gens = Vec::new();
    for id in 0..600 {
        let Appended::Stored(gen) = buf.append(rec(id, 0, 1000)).unwrap() else {
            panic!()
        };
        gens.push(gen);
        if id % 7 == 0 {
            buf.wait_durable(gen).unwrap();
        }
    }
    buf.wait_durable(*gens.last().unwrap()).unwrap();
    let l = buf.start_live().unwrap();
    durable(&buf, 600);
    let mut backlog = Vec::new();
    let mut cursor = None;
    loop {
        let got = buf.read_range(cursor, l, 512 << 10).unwrap();
        if got.is_empty() {
            break;
        }
        for b in got {
            cursor = Some(b.key);
            backlog.extend(b.records.iter().map(id_of));
        }
    }
    assert_eq!(backlog, (0..600).collect::<Vec<_>>());
    let live = buf
        .read_range(l.checked_sub(1), u64::MAX, 512 << 10)
        .unwrap();
    assert_eq!(
        live.iter()
            .flat_map(|b| b.records.iter().map(id_of))
            .collect::<Vec<_>>(),
        [600]
    );
}

/// `drop_oldest` with growing files: evictions remove whole (grown) files of the oldest
/// records, every record is either readable or counted as dropped, and what is left is
/// the newest records in order, within the quota.
#[test]
fn drop_oldest_evicts_grown_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = always(dir.path(), 2_000);
    c.quota_bytes = 10_000;
    c.full_policy = FullPolicy::DropOldest;
    let buf = Buffer::open(c).unwrap();
    for id in 0..200 {
        durable(&buf, id);
    }
    let ids: Vec<u64> = all_ids(&buf);
    let dropped = buf.stats().dropped[0].load(Ordering::Relaxed);
    assert!(dropped > 0, "evictions");
    assert_eq!(ids.len() as u64 + dropped, 200);
    assert_eq!(ids, (200 - ids.len() as u64..200).collect::<Vec<_>>());
    assert!(buf.snapshot().bytes <= 10_000);
    assert!(
        files::list(&dir.path().join("batches")).unwrap().len() < ids.len(),
        "grown"
    );
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
}

/// With `sync: always` a new batch file is a spare pre-sized with zeros (`spares.rs`):
/// commits append inside it (its length stays `batch_max_bytes`), reads see only its
/// records, the zeros are cut when the committer stops appending to it, a kill leaves
/// them for the open to cut without calling them damage, and the counted file bytes
/// always equal the batch files' lengths on disk.
#[test]
fn appends_fill_a_presized_file_in_place_and_its_zeros_go_when_it_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let max = 4096u64;
    let c = always(dir.path(), max as usize);
    let buf = Buffer::open(c.clone()).unwrap();
    spares_ready(&buf);
    let on_disk = |buf: &Buffer| {
        assert_eq!(
            buf.batch_file_bytes(),
            dir_bytes(&batches),
            "counted file bytes = lengths on disk"
        );
    };
    durable(&buf, 0);
    durable(&buf, 1);
    assert_eq!(
        file_lens(&batches),
        [max],
        "two commits in one pre-sized file"
    );
    assert!(buf.inner.lock().catalog.bytes() < max / 2);
    on_disk(&buf);
    // Fill it: the file that has no room left is cut to its records.
    let mut id = 2;
    while file_lens(&batches).len() < 2 {
        durable(&buf, id);
        id += 1;
    }
    let lens = file_lens(&batches);
    let first = files::list(&batches).unwrap().into_iter().min().unwrap();
    let first_bytes = buf.inner.lock().catalog.bytes_of(first).unwrap();
    assert_eq!(
        lens,
        [first_bytes, max],
        "full file trimmed, the next pre-sized"
    );
    on_disk(&buf);
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
    // A kill: the growing file keeps its zeros; the open cuts them, nothing is damage
    // and no index entry needed rebuilding.
    drop(buf);
    let buf = reopen(c);
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(buf.stats().recovered.load(Ordering::Relaxed), 0);
    assert!(file_lens(&batches)[1] < max, "zeros cut at open");
    on_disk(&buf);
    assert_eq!(all_ids(&buf), (0..id).collect::<Vec<_>>());
    // Drained and deleted: nothing counted, nothing left.
    release_all(&buf);
    assert!(file_lens(&batches).is_empty());
    on_disk(&buf);
}

/// A file the replicator reads while it still has zeros: the read returns its records
/// only, and once released and deleted the counted bytes return to what is on disk.
#[test]
fn a_presized_file_read_while_growing_yields_its_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = Buffer::open(always(dir.path(), 64 << 10)).unwrap();
    spares_ready(&buf);
    for id in 0..5 {
        durable(&buf, id);
    }
    assert_eq!(file_lens(&batches), [64 << 10]);
    let got = buf.read(None, usize::MAX).unwrap();
    assert_eq!(
        got.iter()
            .flat_map(|b| b.records.iter().map(id_of))
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
    durable(&buf, 5);
    assert_eq!(file_lens(&batches).len(), 2, "a read file is sealed");
    let held: Vec<Held> = got
        .iter()
        .flat_map(|b| b.records.iter().map(Held::of))
        .collect();
    buf.release(&held).unwrap();
    buf.reaped();
    assert_eq!(file_lens(&batches), [64 << 10]);
    assert_eq!(buf.batch_file_bytes(), dir_bytes(&batches));
    assert_eq!(all_ids(&buf), [5]);
}
