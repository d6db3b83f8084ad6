use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// No background commits (an hour's interval, no size trigger): the tests decide when.
fn cfg(dir: &std::path::Path, quota: u64, policy: FullPolicy) -> BufferConfig {
    BufferConfig {
        dir: dir.to_path_buf(),
        quota_bytes: quota,
        full_policy: policy,
        sync: SyncPolicy::Interval(Duration::from_secs(3600)),
        batch_max_bytes: usize::MAX,
        cache_bytes: 1 << 20,
        direct_io: true,
        direct_io_backlog_bytes: DIRECT_BACKLOG_BYTES,
    }
}

/// Reopens after a drop; sled releases its file lock from a background thread, so the
/// lock can still be held for a moment (retry until it is free).
fn reopen(c: BufferConfig) -> Buffer {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Buffer::open(c.clone()) {
            Ok(b) => return b,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// A buffer without quota (`block` when full) in `dir`.
fn open_unbounded(dir: &std::path::Path) -> Buffer {
    Buffer::open(cfg(dir, u64::MAX, FullPolicy::Block)).unwrap()
}

/// Forgets the index entry of the oldest batch, durably (what a crash that kept the
/// batch's file but lost its entry leaves), and returns the batch's key.
fn unindex_oldest(buf: &Buffer) -> u64 {
    let key = buf.inner.index().first_key().unwrap().unwrap();
    buf.inner.index().remove(&[key]).unwrap();
    buf.inner.flush_durable().unwrap();
    key
}

/// A buffer on `c` holding `n` batch files of one 100-byte record each (ids `0..n`).
fn open_with_files(c: &BufferConfig, n: u64) -> Buffer {
    let buf = Buffer::open(c.clone()).unwrap();
    for i in 0..n {
        buf.append(rec(i, 0, 100)).unwrap();
        buf.commit().unwrap();
    }
    buf
}

/// How many sled values the index holds ([`super::index::GROUP`] files each).
fn index_groups(buf: &Buffer) -> usize {
    buf.inner.index().tree().len()
}

/// The per-file index tree of buffers written before session 15 (read and migrated at
/// open).
fn legacy_index(buf: &Buffer) -> sled::Tree {
    buf.inner.db.open_tree("records").unwrap()
}

fn rec(id: u64, prio: u8, size: usize) -> Record {
    let mut payload = id.to_be_bytes().to_vec();
    payload.resize(size.max(8), 0xAB);
    Record {
        topic: format!("t/{prio}"),
        priority: prio,
        payload: Bytes::from(payload),
        recv_ms: id as i64,
        ..Record::default()
    }
}

fn id_of(r: &Record) -> u64 {
    u64::from_be_bytes(r.payload[..8].try_into().unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Commit,
    Drain(usize),
    Reboot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..600).prop_map(Op::Append),
        2 => Just(Op::Commit),
        2 => (1usize..4).prop_map(Op::Drain),
        1 => Just(Op::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Model test: the buffer against a VecDeque, with reboots. Uncommitted records are
    /// lost on reboot, committed ones survive in order, drained ones never come back.
    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = open_unbounded(dir.path());
        let mut committed: VecDeque<u64> = VecDeque::new();
        let mut open: Vec<u64> = Vec::new();
        let mut cursor = None;
        let mut next_id = 0;
        let mut last_seq = None;
        for op in ops {
            match op {
                Op::Append(size) => {
                    prop_assert!(matches!(buf.append(rec(next_id, 0, size)).unwrap(), Appended::Stored(_)));
                    open.push(next_id);
                    next_id += 1;
                }
                Op::Commit => {
                    buf.commit().unwrap();
                    committed.extend(open.drain(..));
                }
                Op::Drain(n) => {
                    for _ in 0..n {
                        let got = buf.read(cursor, 1).unwrap();
                        prop_assert!(got.len() <= 1);
                        let Some(batch) = got.into_iter().next() else { break };
                        cursor = Some(batch.key);
                        let mut seqs = Vec::new();
                        for r in &batch.records {
                            prop_assert_eq!(Some(id_of(r)), committed.pop_front());
                            prop_assert!(last_seq < Some(r.seq), "sequence must grow");
                            last_seq = Some(r.seq);
                            seqs.push(Held::of(r));
                        }
                        buf.release(&seqs).unwrap();
                    }
                }
                Op::Reboot => {
                    drop(buf);
                    buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
                    open.clear();
                    cursor = None;
                }
            }
            prop_assert_eq!(buf.snapshot().records, (committed.len() + open.len()) as u64);
        }
        // Everything committed is still readable, in order.
        buf.commit().unwrap();
        committed.extend(open.drain(..));
        let all: Vec<u64> = buf.read(cursor, usize::MAX).unwrap().iter()
            .flat_map(|b| b.records.iter().map(id_of)).collect();
        prop_assert_eq!(all, committed.into_iter().collect::<Vec<_>>());
    }
}

/// Waits until the spare thread has filled its pool (with `sync: always`, every spare
/// pre-sized).
fn spares_ready(buf: &Buffer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while buf.inner.spares.ready() < spares::TARGET {
        assert!(std::time::Instant::now() < deadline, "spares never filled");
        std::thread::yield_now();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// The model test with `sync: always` and small files: commits append to pre-sized
    /// files (`spares.rs`) that fill, are cut to their records and deleted while the
    /// background committer runs. A reboot keeps the committed records and a prefix of
    /// the rest (whatever background rounds committed); no record is ever damaged, and
    /// whenever nothing is in flight the counted file bytes equal the lengths on disk.
    #[test]
    fn model_always(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
        c.sync = SyncPolicy::Always;
        c.batch_max_bytes = 2048;
        let mut buf = Buffer::open(c.clone()).unwrap();
        spares_ready(&buf);
        let mut committed: VecDeque<u64> = VecDeque::new();
        let mut open: VecDeque<u64> = VecDeque::new();
        let mut cursor = None;
        let mut next_id = 0;
        for op in ops {
            match op {
                Op::Append(size) => {
                    prop_assert!(matches!(buf.append(rec(next_id, 0, size)).unwrap(), Appended::Stored(_)));
                    open.push_back(next_id);
                    next_id += 1;
                }
                Op::Commit => {
                    buf.commit().unwrap();
                    committed.extend(open.drain(..));
                    buf.reaped();
                    prop_assert_eq!(buf.batch_file_bytes(), dir_bytes(&dir.path().join("batches")));
                }
                Op::Drain(n) => {
                    for _ in 0..n {
                        let got = buf.read(cursor, 1).unwrap();
                        let Some(batch) = got.into_iter().next() else { break };
                        cursor = Some(batch.key);
                        let mut seqs = Vec::new();
                        for r in &batch.records {
                            // Committed in the background before an explicit commit.
                            if committed.is_empty() {
                                committed.extend(open.pop_front());
                            }
                            prop_assert_eq!(Some(id_of(r)), committed.pop_front());
                            seqs.push(Held::of(r));
                        }
                        buf.release(&seqs).unwrap();
                    }
                }
                Op::Reboot => {
                    drop(buf);
                    buf = reopen(c.clone());
                    spares_ready(&buf);
                    let kept = buf.snapshot().records as usize - committed.len();
                    prop_assert!(kept <= open.len());
                    committed.extend(open.drain(..kept));
                    open.clear();
                    cursor = None;
                    prop_assert_eq!(buf.batch_file_bytes(), dir_bytes(&dir.path().join("batches")));
                }
            }
            prop_assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
        }
        buf.commit().unwrap();
        committed.extend(open.drain(..));
        let all: Vec<u64> = buf.read(cursor, usize::MAX).unwrap().iter()
            .flat_map(|b| b.records.iter().map(id_of)).collect();
        prop_assert_eq!(all, committed.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn drop_oldest_evicts_lowest_priority_first() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(cfg(dir.path(), 20_000, FullPolicy::DropOldest)).unwrap();
    for i in 0..10 {
        buf.append(rec(i, 0, 900)).unwrap();
        buf.append(rec(100 + i, 1, 900)).unwrap();
        buf.commit().unwrap();
    }
    // Full: further high-priority appends evict low-priority batches, oldest first.
    for i in 0..10 {
        assert!(matches!(
            buf.append(rec(200 + i, 1, 900)).unwrap(),
            Appended::Stored(_)
        ));
        buf.commit().unwrap();
    }
    let ids: Vec<u64> = buf
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(id_of))
        .collect();
    assert!(
        ids.iter().all(|id| *id >= 100),
        "all priority-0 records evicted first: {ids:?}"
    );
    assert!(ids.contains(&100) && ids.contains(&209));
    assert_eq!(buf.stats().dropped[0].load(Ordering::Relaxed), 10);
    assert!(buf.snapshot().bytes <= 20_000);
}

/// A backlog of a few hundred files, most of them paged out of memory (tests page in
/// chunks of 4 files, see `catalog.rs`): quota evictions take exactly the oldest
/// low-priority records, and a drain interrupted by a reopen reads every other record
/// once, in arrival order.
#[test]
fn a_paged_backlog_evicts_and_drains_like_a_resident_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), 150_000, FullPolicy::DropOldest);
    let buf = Buffer::open(c.clone()).unwrap();
    // One file per class and commit: a class-0 record each round, a class-1 record every
    // other round (class 1 fits the quota whole, class 0 does not).
    let mut arrival = Vec::new();
    for i in 0..200u64 {
        buf.append(rec(i, 0, 900)).unwrap();
        arrival.push(i);
        if i % 2 == 0 {
            buf.append(rec(1000 + i, 1, 900)).unwrap();
            arrival.push(1000 + i);
        }
        buf.commit().unwrap();
    }
    let (resident, paged) = buf.inner.lock().catalog.counts();
    assert!(paged > 4 * resident, "{resident} resident, {paged} paged");
    let dropped = buf.stats().dropped[0].load(Ordering::Relaxed);
    assert!((50..200).contains(&dropped), "{dropped} dropped");
    // The oldest class-0 records went, nothing else.
    let mut want: Vec<u64> = arrival
        .into_iter()
        .filter(|id| *id >= 1000 || *id >= dropped)
        .collect();
    assert_eq!(buf.snapshot().records, want.len() as u64);
    // Drain half, releasing, then reopen and read the rest.
    let mut cursor = None;
    let mut got = Vec::new();
    while got.len() < want.len() / 2 {
        let batch = buf.read(cursor, 1).unwrap().pop().unwrap();
        cursor = Some(batch.key);
        got.extend(batch.records.iter().map(id_of));
        let held: Vec<Held> = batch.records.iter().map(Held::of).collect();
        buf.release(&held).unwrap();
    }
    assert_eq!(got, want[..got.len()]);
    drop(buf);
    let buf = reopen(c);
    want.drain(..got.len());
    assert_eq!(buf.snapshot().records, want.len() as u64);
    assert_eq!(all_ids(&buf), want);
}

#[test]
fn drop_newest_refuses_when_nothing_lower() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(cfg(dir.path(), 5_000, FullPolicy::DropNewest)).unwrap();
    let mut stored = 0;
    for i in 0..20 {
        if matches!(buf.append(rec(i, 0, 900)).unwrap(), Appended::Stored(_)) {
            stored += 1;
        }
        buf.commit().unwrap();
    }
    assert!(stored < 20);
    assert_eq!(buf.stats().dropped[1].load(Ordering::Relaxed), 20 - stored);
    // A higher class evicts the newest lower-class batch.
    assert!(matches!(
        buf.append(rec(99, 2, 900)).unwrap(),
        Appended::Stored(_)
    ));
    buf.commit().unwrap();
    let ids: Vec<u64> = buf
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(id_of))
        .collect();
    assert!(ids.contains(&99));
    assert!(
        !ids.contains(&(stored - 1)),
        "newest low-priority record evicted"
    );
    assert!(ids.contains(&0), "oldest kept");
}

#[test]
fn block_waits_for_release() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Arc::new(Buffer::open(cfg(dir.path(), 3_000, FullPolicy::Block)).unwrap());
    buf.append(rec(0, 0, 900)).unwrap();
    buf.append(rec(1, 0, 900)).unwrap();
    buf.commit().unwrap();
    let b2 = buf.clone();
    let t = std::thread::spawn(move || b2.append(rec(2, 0, 1500)).unwrap());
    let batch = buf.read(None, usize::MAX).unwrap();
    let seqs: Vec<Held> = batch[0].records.iter().map(Held::of).collect();
    buf.release(&seqs).unwrap();
    assert!(matches!(t.join().unwrap(), Appended::Stored(_)));
}

#[test]
fn corrupt_records_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let files_dir = dir.path().join("batches");
    {
        let buf = open_unbounded(dir.path());
        for i in 0..3 {
            buf.append(rec(i, 0, 50)).unwrap();
        }
        buf.close().unwrap();
        // Damage the middle record of the batch file.
        let key = buf.inner.index().first_key().unwrap().unwrap();
        let mut v = files::read(&files_dir, key).unwrap();
        let mid = 5 + (v.len() - 5) / 3 + 20;
        v[mid] ^= 0x55;
        files::write(&files_dir, key, &v, &buf.inner.spares).unwrap();
        // A batch whose file is garbage, one whose file is missing, and an orphan file.
        let garbage = Index {
            bytes: 7,
            count: 1,
            priority: 0,
            first_recv_ms: 0,
            last_seq: 1000,
        };
        files::write(&files_dir, 1000, b"garbage", &buf.inner.spares).unwrap();
        // Per-file entries, as buffers before session 15 stored them.
        let legacy = legacy_index(&buf);
        legacy
            .insert(1000u64.to_be_bytes(), &garbage.encode())
            .unwrap();
        legacy
            .insert(2000u64.to_be_bytes(), &garbage.encode())
            .unwrap();
        files::write(&files_dir, 3000, b"orphan", &buf.inner.spares).unwrap();
        buf.inner.db.flush().unwrap();
    }
    let buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert_eq!(
        buf.stats().corrupt.load(Ordering::Relaxed),
        1,
        "missing file at open"
    );
    assert!(
        !files::path(&files_dir, 3000).exists(),
        "orphan file removed"
    );
    let got = buf.read(None, usize::MAX).unwrap();
    let ids: Vec<u64> = got
        .iter()
        .flat_map(|b| b.records.iter().map(id_of))
        .collect();
    assert_eq!(ids, [0, 2]);
    assert_eq!(
        buf.stats().corrupt.load(Ordering::Relaxed),
        3,
        "damaged record + garbage batch"
    );
    let seqs: Vec<Held> = got[0].records.iter().map(Held::of).collect();
    buf.release(&seqs).unwrap();
    assert_eq!(
        buf.snapshot().records,
        0,
        "corrupt record released with the batch"
    );
    buf.reaped();
    assert_eq!(
        files::list(&files_dir).unwrap(),
        Vec::<u64>::new(),
        "space reclaimed"
    );
}

#[test]
fn uplink_state_persists() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buf = open_unbounded(dir.path());
        let p = common::kafka::ProducerState {
            producer_id: 9,
            producer_epoch: 1,
        };
        buf.set_producer(p).unwrap();
        assert_eq!(buf.assign("a", 0, &[1, 2, 3]).unwrap(), 0);
        assert_eq!(buf.assign("a", 0, &[5]).unwrap(), 3);
        buf.sync_uplink().unwrap();
        buf.acknowledged("a", 0, 0, 3).unwrap();
        buf.close().unwrap();
    }
    let buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert_eq!(buf.producer().unwrap().unwrap().producer_id, 9);
    let st = buf.partition_state("a", 0).unwrap();
    assert_eq!((st.next_seq, st.acked_through), (4, Some(3)));
    let inflight = buf.inflight().unwrap();
    assert_eq!(inflight.len(), 1);
    assert_eq!(
        (inflight[0].base_seq, inflight[0].seqs.clone()),
        (3, vec![5])
    );
}

/// A descriptor written by an edge before session 17 (its value a plain list of `u64`
/// sequences) is read by this one after an upgrade, beside one written now.
#[test]
fn descriptors_of_the_previous_format_are_read() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buf = open_unbounded(dir.path());
        assert_eq!(buf.assign("a", 0, &[7, 9, 300]).unwrap(), 0);
        // The key of the descriptor of ("a", 0, base 3), in the old value format.
        let mut key = vec![b'i', 0];
        key.extend_from_slice(b"a");
        key.push(0);
        key.extend_from_slice(&0i32.to_be_bytes());
        key.extend_from_slice(&3u32.to_be_bytes());
        let old: Vec<u8> = [301u64, 302, 1 << 40]
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        buf.inner.meta.insert(key, old).unwrap();
        buf.sync_uplink().unwrap();
        buf.close().unwrap();
    }
    let buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    let got: Vec<(i32, Vec<u64>)> = buf
        .inflight()
        .unwrap()
        .into_iter()
        .map(|d| (d.base_seq, d.seqs))
        .collect();
    assert_eq!(
        got,
        vec![(0, vec![7, 9, 300]), (3, vec![301, 302, 1 << 40])]
    );
}

/// A cut's descriptors and a response's acknowledgements are collected and applied as
/// one sled batch: nothing shows before `apply_uplink`, everything after it, and
/// assignments in one set chain their partition's sequences.
#[test]
fn uplink_writes_apply_together() {
    use super::uplink::UplinkWrites;
    let dir = tempfile::tempdir().unwrap();
    let buf = open_unbounded(dir.path());
    let bases = |buf: &Buffer| -> Vec<(String, i32)> {
        let v = buf.inflight().unwrap();
        v.into_iter().map(|d| (d.topic, d.base_seq)).collect()
    };
    let mut w = UplinkWrites::default();
    assert_eq!(buf.assign_in(&mut w, "a", 0, &[1, 2]).unwrap(), 0);
    assert_eq!(buf.assign_in(&mut w, "a", 0, &[3]).unwrap(), 2);
    assert_eq!(buf.assign_in(&mut w, "b", 0, &[4]).unwrap(), 0);
    assert!(
        bases(&buf).is_empty(),
        "nothing is written before apply_uplink"
    );
    assert_eq!(buf.partition_state("a", 0).unwrap().next_seq, 0);
    buf.apply_uplink(w).unwrap();
    assert_eq!(
        bases(&buf),
        [("a".into(), 0), ("a".into(), 2), ("b".into(), 0)]
    );
    assert_eq!(buf.partition_state("a", 0).unwrap().next_seq, 3);
    assert_eq!(buf.partition_state("b", 0).unwrap().next_seq, 1);

    let mut acks = UplinkWrites::default();
    Buffer::acknowledged_in(&mut acks, false, "a", 0, 0, 2);
    Buffer::acknowledged_in(&mut acks, true, "b", 0, 0, 4);
    assert_eq!(bases(&buf).len(), 3);
    buf.apply_uplink(acks).unwrap();
    assert_eq!(bases(&buf), [("a".into(), 2)]);
    let a = buf.partition_state("a", 0).unwrap();
    assert_eq!((a.acked_through, a.backlog_acked), (Some(2), None));
    let b = buf.partition_state("b", 0).unwrap();
    assert_eq!((b.acked_through, b.backlog_acked), (None, Some(4)));
}

#[test]
fn sync_always_acks_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.sync = SyncPolicy::Always;
    let buf = Buffer::open(c).unwrap();
    let Appended::Stored(gen) = buf.append(rec(1, 0, 10)).unwrap() else {
        panic!()
    };
    buf.wait_durable(gen).unwrap();
    assert!(buf.stats().commits.load(Ordering::Relaxed) >= 1);
    assert_eq!(buf.read(None, usize::MAX).unwrap().len(), 1);
}

#[test]
fn a_bounded_wait_times_out_before_the_commit_and_succeeds_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // An hour's interval: nothing commits until the test does.
    let buf = open_unbounded(dir.path());
    let Appended::Stored(gen) = buf.append(rec(1, 0, 10)).unwrap() else {
        panic!()
    };
    let started = std::time::Instant::now();
    assert!(!buf
        .wait_durable_for(gen, Duration::from_millis(20))
        .unwrap());
    assert!(started.elapsed() >= Duration::from_millis(20));
    buf.commit().unwrap();
    assert!(buf.wait_durable_for(gen, Duration::ZERO).unwrap());
    // A later append is not covered by the earlier commit.
    let Appended::Stored(next) = buf.append(rec(2, 0, 10)).unwrap() else {
        panic!()
    };
    assert!(!buf.wait_durable_for(next, Duration::ZERO).unwrap());
}

#[test]
fn a_committer_panic_fails_acknowledgement_waiters_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.sync = SyncPolicy::Always;
    let buf = Arc::new(Buffer::open(c.clone()).unwrap());
    let mut failure = buf.failure();
    assert!(failure.borrow_and_update().is_none());
    buf.inner.test_panic.store(true, Ordering::Relaxed);
    let Appended::Stored(gen) = buf.append(rec(1, 0, 10)).unwrap() else {
        panic!()
    };
    // Before: the waiter blocked forever. The bound only keeps a regression from
    // hanging the test run.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = buf.clone();
    std::thread::spawn(move || tx.send(waiter.wait_durable(gen)).unwrap());
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the waiter was woken");
    assert!(
        matches!(&got, Err(Error::Failed(why)) if why.contains("panicked")),
        "{got:?}"
    );
    assert!(failure.has_changed().unwrap());
    assert!(failure
        .borrow()
        .as_deref()
        .is_some_and(|w| w.contains("panicked")));
    // A later waiter gives up at once; the directory opens again (the record was never
    // acknowledged, so losing it is allowed).
    assert!(matches!(buf.wait_durable(gen), Err(Error::Failed(_))));
    drop(buf);
    let again = reopen(c);
    again.append(rec(2, 0, 10)).unwrap();
    again.commit().unwrap();
}

/// What a SIGKILL at this moment leaves: a copy of the buffer directory as the files
/// are now (sled's unflushed writes are only in its memory, so they are not in the copy).
fn kill_snapshot(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            kill_snapshot(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn all_ids(buf: &Buffer) -> Vec<u64> {
    buf.read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(id_of))
        .collect()
}

/// A buffer whose index groups are in the fixed format of edges before session 20 opens
/// from them (no file re-indexed, every record read once in order), and a group is
/// rewritten compact when it changes.
#[test]
fn an_index_in_the_old_format_is_read_and_rewritten_compact() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    let buf = open_with_files(&c, 130);
    let tree = buf.inner.index().tree();
    for item in tree.iter() {
        let (k, v) = item.unwrap();
        assert!(super::index::is_compact(&v));
        tree.insert(k, super::index::to_fixed(&v)).unwrap();
    }
    buf.close().unwrap();
    drop((buf, tree));
    let back = reopen(c.clone());
    assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 0);
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&back), (0..130).collect::<Vec<_>>());
    back.append(rec(130, 0, 100)).unwrap();
    back.commit().unwrap();
    let tree = back.inner.index().tree();
    let compact: Vec<bool> = tree
        .iter()
        .values()
        .map(|v| super::index::is_compact(&v.unwrap()))
        .collect();
    assert_eq!(compact, [false, false, true], "64 + 64 + 3 files");
    back.close().unwrap();
    drop((back, tree));
    let again = reopen(c);
    assert_eq!(again.stats().recovered.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&again), (0..131).collect::<Vec<_>>());
}

/// A group commit does not flush sled: its batches survive a kill through their files,
/// whose index entries the next open rebuilds. Worst case modelled: sled as it was at
/// open (nothing flushed since), the batch files as they are at the kill.
#[test]
fn kill_after_commit_recovers_batches_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let buf = open_unbounded(dir.path());
    let killed = tempfile::tempdir().unwrap();
    kill_snapshot(dir.path(), killed.path());
    buf.append(rec(1, 0, 100)).unwrap();
    buf.append(rec(2, 1, 100)).unwrap();
    buf.commit().unwrap();
    buf.append(rec(3, 0, 100)).unwrap();
    buf.commit().unwrap();
    buf.append(rec(4, 0, 100)).unwrap(); // open: lost by the kill
    kill_snapshot(&dir.path().join("batches"), &killed.path().join("batches"));
    let back = Buffer::open(cfg(killed.path(), u64::MAX, FullPolicy::Block)).unwrap();
    assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 3);
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    let mut ids = all_ids(&back);
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    // New sequences continue after the recovered ones.
    back.append(rec(5, 0, 100)).unwrap();
    back.commit().unwrap();
    let seqs: Vec<u64> = back
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.seq))
        .collect();
    assert_eq!(seqs.iter().max(), Some(&3), "{seqs:?}");
    // The rebuilt index is in sled now: a second open reads no file.
    drop(back);
    let again = reopen(cfg(killed.path(), u64::MAX, FullPolicy::Block));
    assert_eq!(again.stats().recovered.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&again).len(), 4);
}

/// A file whose deletion was flushed (drained, then a kill before the unlink) stays
/// deleted: its index entry is a tombstone, so open removes it unread. Modelled: the
/// directory as a kill after the reaper's flush leaves it (tombstone durable, file there);
/// the tombstone in its group, and as a per-file entry of a buffer before session 15.
#[test]
fn kill_before_unlink_does_not_resurrect_a_drained_batch() {
    for legacy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let batches = dir.path().join("batches");
        let key = {
            let buf = open_unbounded(dir.path());
            buf.append(rec(1, 0, 100)).unwrap();
            buf.commit().unwrap();
            let batch = buf.read(None, usize::MAX).unwrap().remove(0);
            if legacy {
                buf.inner.index().remove(&[batch.key]).unwrap();
                legacy_index(&buf)
                    .insert(batch.key.to_be_bytes(), reap::TOMBSTONE)
                    .unwrap();
            } else {
                buf.inner.index().mark(&[batch.key]).unwrap();
            }
            buf.inner.flush_durable().unwrap();
            batch.key
        };
        assert!(files::path(&batches, key).exists());
        let back = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
        assert_eq!(back.snapshot().records, 0, "legacy: {legacy}");
        assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 0);
        assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
        assert!(!files::path(&batches, key).exists());
        assert!(back.inner.index().is_empty(), "tombstone removed");
        assert!(legacy_index(&back).is_empty(), "legacy entries dropped");
        assert_eq!(back.batch_file_bytes(), 0);
    }
}

/// The case sled's recovery would have to rule out for the old rule ("an unindexed file
/// below the flushed `next_seq` is a deleted batch"): sled comes back with `next_seq`
/// past a committed batch but without that batch's index entry. The batch's records
/// were acknowledged (its file was fsynced), so open must re-index the file, not delete
/// it.
#[test]
fn unindexed_batch_below_next_seq_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let buf = open_unbounded(dir.path());
        buf.append(rec(1, 0, 100)).unwrap();
        buf.commit().unwrap();
        buf.append(rec(2, 0, 100)).unwrap();
        buf.commit().unwrap();
        // sled kept the later writes (the second batch, `next_seq`), not this one.
        let first = unindex_oldest(&buf);
        let next: [u8; 8] = buf
            .inner
            .meta
            .get(NEXT_SEQ)
            .unwrap()
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        assert!(first < u64::from_be_bytes(next));
        first
    };
    let back = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert_eq!(all_ids(&back), [1, 2]);
    assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 1);
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    let (entries, _) = back.inner.index().entries().unwrap();
    assert!(entries.iter().any(|(k, i)| *k == first && i.is_some()));
}

/// A file cut short (a commit that never completed) is removed at open, whatever its
/// key, and never counted as a recovered batch.
#[test]
fn truncated_unindexed_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let key = {
        let buf = open_unbounded(dir.path());
        for i in 0..3 {
            buf.append(rec(i, 0, 100)).unwrap();
        }
        buf.commit().unwrap();
        unindex_oldest(&buf)
    };
    let bytes = std::fs::read(files::path(&batches, key)).unwrap();
    std::fs::write(files::path(&batches, key), &bytes[..bytes.len() - 10]).unwrap();
    let back = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert_eq!(back.snapshot().records, 0);
    assert_eq!(back.stats().recovered.load(Ordering::Relaxed), 0);
    assert!(!files::path(&batches, key).exists());
}

/// Durability step 4 after a restart: the records of an in-flight descriptor (sent,
/// not acknowledged) are protected from quota eviction from the moment the buffer
/// opens, before any replicator exists; without that, `drop_oldest` evicted them on the
/// first append and the restarted replicator re-sent a descriptor with missing records.
#[test]
fn inflight_records_survive_eviction_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 2_500;
    {
        let buf = Buffer::open(cfg(dir.path(), quota, FullPolicy::DropOldest)).unwrap();
        buf.append(rec(1, 0, 900)).unwrap();
        buf.commit().unwrap();
        buf.append(rec(2, 0, 900)).unwrap();
        buf.commit().unwrap();
        let batch = buf.read(None, 1).unwrap().remove(0);
        let seqs: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
        buf.assign("t.0", 0, &seqs).unwrap();
        buf.sync_uplink().unwrap();
        buf.close().unwrap();
    }
    let buf = reopen(cfg(dir.path(), quota, FullPolicy::DropOldest));
    assert_eq!(buf.inflight().unwrap().len(), 1);
    // The quota is full: the new record evicts the oldest batch that no descriptor needs.
    assert!(matches!(
        buf.append(rec(3, 0, 900)).unwrap(),
        Appended::Stored(_)
    ));
    assert_eq!(buf.stats().dropped[0].load(Ordering::Relaxed), 1);
    buf.commit().unwrap();
    assert_eq!(all_ids(&buf), [1, 3], "record 1 is in flight, 2 evicted");
    // Everything left is protected (in flight, or read above): the next record is
    // refused, and counted.
    assert_eq!(buf.append(rec(4, 0, 900)).unwrap(), Appended::Dropped);
    assert_eq!(buf.stats().dropped[0].load(Ordering::Relaxed), 2);
}

/// The lengths of the batch files in `dir` (the `batches` directory; spares, which may
/// hold zeros, are not batch files).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    files::list(dir)
        .unwrap()
        .iter()
        .map(|k| files::path(dir, *k).metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Reads every committed record, releases it and waits until the drained files are
/// deleted.
fn release_all(buf: &Buffer) {
    let held: Vec<Held> = buf
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| b.records.iter().map(Held::of))
        .collect();
    buf.release(&held).unwrap();
    buf.reaped();
}

/// The metrics' batch-file total is a running count, not a directory listing: it equals
/// the real size of the batch files after appends, drains, evictions and a reopen.
#[test]
fn batch_file_bytes_track_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let quota = 6_000;
    let buf = Buffer::open(cfg(dir.path(), quota, FullPolicy::DropOldest)).unwrap();
    for i in 0..4 {
        buf.append(rec(i, 0, 900)).unwrap();
        buf.append(rec(100 + i, 1, 900)).unwrap();
        buf.commit().unwrap();
    }
    buf.reaped();
    assert!(
        buf.stats().dropped[0].load(Ordering::Relaxed) > 0,
        "evictions"
    );
    assert_eq!(buf.batch_file_bytes(), dir_bytes(&batches));
    let got = buf.read(None, 1).unwrap();
    let seqs: Vec<Held> = got[0].records.iter().map(Held::of).collect();
    buf.release(&seqs).unwrap();
    buf.reaped();
    assert_eq!(buf.batch_file_bytes(), dir_bytes(&batches));
    assert!(buf.batch_file_bytes() > 0);
    assert!(buf.disk_bytes() > buf.batch_file_bytes(), "plus sled");
    drop(buf);
    let back = reopen(cfg(dir.path(), quota, FullPolicy::DropOldest));
    assert_eq!(back.batch_file_bytes(), dir_bytes(&batches));
    release_all(&back);
    assert_eq!(back.batch_file_bytes(), 0);
    assert_eq!(dir_bytes(&batches), 0);
}

/// A quota eviction flushes the index removal before it unlinks the file, so a kill
/// right after it leaves no index entry without its file (once counted as corrupt).
#[test]
fn kill_after_eviction_counts_nothing_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let buf = Buffer::open(cfg(dir.path(), 2_500, FullPolicy::DropOldest)).unwrap();
    buf.append(rec(1, 0, 900)).unwrap();
    buf.commit().unwrap();
    buf.append(rec(2, 0, 900)).unwrap();
    buf.commit().unwrap();
    buf.inner.db.flush().unwrap(); // the committer's periodic sled flush
    buf.append(rec(3, 0, 900)).unwrap(); // evicts record 1's batch
    assert_eq!(buf.stats().dropped[0].load(Ordering::Relaxed), 1);
    buf.reaped();
    let batches = dir.path().join("batches");
    let steps: Vec<files::Step> = files::STEPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| *d == batches)
        .map(|(_, s)| *s)
        .collect();
    let unlinked = steps
        .iter()
        .position(|s| matches!(s, files::Step::Unlinked(_)))
        .expect("the evicted file is unlinked");
    let files::Step::Unlinked(key) = steps[unlinked] else {
        unreachable!()
    };
    let removed = steps.iter().position(|s| *s == files::Step::Removed(key));
    assert!(
        removed.is_some_and(|r| steps[r..unlinked].contains(&files::Step::Flushed)),
        "index removal flushed before the unlink: {steps:?}"
    );
    let killed = tempfile::tempdir().unwrap();
    kill_snapshot(dir.path(), killed.path());
    let back = Buffer::open(cfg(killed.path(), 2_500, FullPolicy::DropOldest)).unwrap();
    assert_eq!(back.stats().corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&back), [2]);
}

/// `sync: interval`: a full batch is written at once (memory freed) but fsynced and made
/// visible to the replicator only at the next sync, together with the others.
#[test]
fn interval_writes_full_batches_and_syncs_them_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 1_000;
    let buf = Buffer::open(c).unwrap();
    // Files of 8 records (a file of 400 B records grows to 4 x batch_max_bytes).
    for i in 0..40 {
        buf.append(rec(i, 0, 400)).unwrap();
    }
    let batches = dir.path().join("batches");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while files::list(&batches).unwrap().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "full batches not written"
        );
        std::thread::yield_now();
    }
    assert!(
        buf.read(None, usize::MAX).unwrap().is_empty(),
        "not synced yet"
    );
    assert_eq!(buf.snapshot().records, 40);
    assert_eq!(buf.stats().commits.load(Ordering::Relaxed), 0);
    buf.commit().unwrap();
    assert_eq!(all_ids(&buf), (0..40).collect::<Vec<_>>());
    assert_eq!(buf.stats().commits.load(Ordering::Relaxed), 1);
}

/// A batch file of large records keeps taking them past `batch_max_bytes` until it holds
/// `MIN_FILE_RECORDS`, never past `LARGE_FILE_FACTOR` x `batch_max_bytes`; small
/// records are cut at `batch_max_bytes` as before.
#[test]
fn files_of_large_records_hold_a_minimum_count_within_a_bound() {
    let records_per_file = |size: usize, n: u64| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
        c.batch_max_bytes = 10_000;
        let buf = Buffer::open(c).unwrap();
        // A full batch wakes the committer; holding its lock while appending makes one
        // round cut all the records, whenever that round runs.
        let hold = buf.inner.commit_lock.lock().unwrap();
        for i in 0..n {
            buf.append(rec(i, 0, size)).unwrap();
        }
        drop(hold);
        buf.commit().unwrap();
        let batches = buf.read(None, usize::MAX).unwrap();
        let ids: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.records.iter().map(id_of))
            .collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
        let sizes: Vec<u64> = batches
            .iter()
            .map(|b| files::path(&dir.path().join("batches"), b.key))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        let counts: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
        (counts, sizes)
    };
    // 1,000 B records: 16 per file (about 16.6 KB), past the 10,000 B bound.
    let (counts, sizes) = records_per_file(1_000, 40);
    assert_eq!(counts, [16, 16, 8]);
    assert!(sizes[0] > 10_000 && sizes[0] <= 40_000, "{sizes:?}");
    // 5,000 B records: the 40,000 B ceiling comes first (7 x about 5 KB).
    let (counts, sizes) = records_per_file(5_000, 20);
    assert_eq!(counts, [7, 7, 6]);
    assert!(sizes.iter().all(|s| *s <= 40_000), "{sizes:?}");
    // 100 B records: cut at 10,000 B as before (dozens per file).
    let (counts, sizes) = records_per_file(100, 400);
    assert!(counts.len() > 1 && counts[0] > 16, "{counts:?}");
    assert!(sizes.iter().all(|s| *s <= 10_000), "{sizes:?}");
}

#[test]
fn the_encode_buffer_is_reused_for_files_of_large_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 10_000;
    let buf = Buffer::open(c).unwrap();
    let capacity = || buf.inner.commit_lock.lock().unwrap().scratch_capacity();
    for round in 0..3u64 {
        let hold = buf.inner.commit_lock.lock().unwrap();
        for i in 0..16 {
            buf.append(rec(round * 16 + i, 0, 2_000)).unwrap();
        }
        drop(hold);
        buf.commit().unwrap();
        // One file of 16 records (about 32 KB, over 2 x batch_max_bytes) was encoded in
        // the buffer, which stays for the next file instead of being freed.
        assert!(
            capacity() >= 32_000,
            "round {round}: capacity {}",
            capacity()
        );
    }
    // A record larger than the largest file frees it after use.
    buf.append(rec(48, 0, 100_000)).unwrap();
    buf.commit().unwrap();
    assert_eq!(capacity(), 0);
    assert_eq!(buf.read(None, usize::MAX).unwrap().len(), 4);
}

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

#[test]
#[ignore = "a measurement, not a check: cargo test --workspace rss_probe -- --ignored --nocapture"]
/// RSS of a buffer holding 2,000 records of 64 KB; `FILES=N`: memory per batch file of a
/// backlog of N files; `RAW=1`: sled alone with 64 KB values (`N` of them), `RAW=1
/// VLEN=29`: sled alone, memory per entry of 29-byte values.
fn rss_probe() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::env::var("RAW").is_ok();
    if raw {
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(8 << 20)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let t = db.open_tree("records").unwrap();
        if let Ok(len) = std::env::var("VLEN") {
            // sled alone: memory per entry of VLEN-byte values (an index entry is 29).
            let v = vec![7u8; len.parse().unwrap()];
            let start = rss_mb();
            for i in 0u64..16_000 {
                t.insert(i.to_be_bytes(), v.clone()).unwrap();
                if (i + 1) % 4_000 == 0 {
                    let per_entry = (rss_mb() - start) * 1_048_576.0 / (i + 1) as f64;
                    println!("{} entries: {per_entry:.0} B per entry", i + 1);
                }
            }
            return;
        }
        let v = vec![7u8; 65600];
        let n: u64 = std::env::var("N")
            .map(|v| v.parse().unwrap())
            .unwrap_or(2000);
        for i in 0u64..n {
            t.insert(i.to_be_bytes(), v.clone()).unwrap();
            if i % 4 == 0 {
                db.flush().unwrap();
            }
        }
        println!("raw sled rss {:.1} MB", rss_mb());
        return;
    }
    if let Ok(files) = std::env::var("FILES") {
        // Memory per batch file of a backlog (the index: sled's entry and the buffer's
        // own maps): FILES files of PER (default 4) records of 1 KB each, RSS every 2,000
        // files (`DRAIN`, `CYCLES` below). REOPEN=1 then times an open with the index and
        // one without it (sled's index entries cleared: every file is read to rebuild its
        // entry); DROP_CACHES=1 empties the page cache before each (root only);
        // CACHE=<bytes> sets sled's cache (below).
        let files: u64 = files.parse().unwrap();
        let per: u64 = std::env::var("PER").map_or(4, |v| v.parse().unwrap());
        let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
        c.batch_max_bytes = per as usize * 1024;
        // sled's cache (`CACHE=<bytes>`; the edge's default is 4 MiB, tests use 1 MiB).
        if let Ok(cache) = std::env::var("CACHE") {
            c.cache_bytes = cache.parse().unwrap();
        }
        let buf = Buffer::open(c.clone()).unwrap();
        // The production chunk size (tests page with tiny chunks); `CHUNK=N` to compare.
        let chunk = std::env::var("CHUNK").map_or(super::catalog::CHUNK, |v| v.parse().unwrap());
        buf.inner.lock().catalog.set_chunk(chunk);
        let start = rss_mb();
        let fill = |cycle: u64| {
            for f in 0..files {
                for i in 0..per {
                    buf.append(rec((cycle * files + f) * per + i, 0, 1000))
                        .unwrap();
                }
                buf.commit().unwrap();
                if cycle == 0 && (f + 1) % 2000 == 0 {
                    let rss = rss_mb();
                    let per_file = (rss - start) * 1_048_576.0 / (f + 1) as f64;
                    println!(
                        "{} files: rss {rss:.1} MB ({per_file:.0} B per file)",
                        f + 1
                    );
                }
            }
        };
        fill(0);
        // DRAIN=1 then reads and releases every file, as the replicator does, with the
        // reaper kept up (RSS every 10,000 files); CYCLES=N fills and drains N times: an
        // edge that ingests and drains for weeks must come back to the same memory.
        let cycles: u64 = std::env::var("CYCLES").map_or(1, |v| v.parse().unwrap());
        let mut cursor = None;
        for cycle in 0..cycles {
            if cycle > 0 {
                fill(cycle);
                println!("cycle {cycle}: filled, rss {:.1} MB", rss_mb());
            }
            if std::env::var_os("DRAIN").is_none() {
                continue;
            }
            let mut n = 0u64;
            loop {
                let batches = buf.read(cursor, 1 << 20).unwrap();
                if batches.is_empty() {
                    break;
                }
                for b in &batches {
                    cursor = Some(b.key);
                    let held: Vec<Held> = b.records.iter().map(Held::of).collect();
                    buf.release(&held).unwrap();
                    n += 1;
                    if n.is_multiple_of(500) {
                        buf.reaped();
                        // What tests record of each deletion (nothing outside tests).
                        super::files::STEPS.lock().unwrap().clear();
                    }
                    if n.is_multiple_of(10_000) {
                        println!("cycle {cycle}: {n} files drained, rss {:.1} MB", rss_mb());
                    }
                }
            }
            buf.reaped();
            println!("cycle {cycle}: drained, rss {:.1} MB", rss_mb());
        }
        if std::env::var_os("REOPEN").is_none() {
            return;
        }
        buf.close().unwrap();
        drop(buf);
        let timed = |what: &str| {
            if std::env::var_os("DROP_CACHES").is_some() {
                // Cold reads (root only): what an edge rebooted with a backlog does.
                std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
            }
            let before = rss_mb();
            let t = std::time::Instant::now();
            let buf = Buffer::open(c.clone()).unwrap();
            let took = t.elapsed().as_secs_f64();
            let n = buf.snapshot().records;
            let after = rss_mb();
            println!("open {what}: {took:.2} s, {n} records, rss {before:.1} -> {after:.1} MB");
            buf.close().unwrap();
        };
        timed("with the index");
        {
            let db = sled::Config::new().path(&c.dir).open().unwrap();
            db.open_tree("index").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        timed("without it");
        return;
    }
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 256 << 10;
    let buf = Buffer::open(c).unwrap();
    for i in 0..2000 {
        buf.append(rec(i, 0, 65536)).unwrap();
        if i % 4 == 0 {
            buf.commit().unwrap();
        }
    }
    println!("buffer rss {:.1} MB", rss_mb());
}

mod damage;
mod direct;
mod grow;
mod prefetch;

/// Two priority classes committed together interleave in sequence; releasing one class's
/// records must never count against the other class's file. Before releases were found by
/// class, releasing class 0 (sequences 0, 2, 4) credited 2 and 4 to class 1's file (key
/// 1), which the release of sequence 1 then deleted with 3 and 5 unacknowledged.
#[test]
fn release_finds_the_batch_of_the_records_class() {
    let dir = tempfile::tempdir().unwrap();
    let buf = open_unbounded(dir.path());
    for id in 0..6 {
        buf.append(rec(id, (id % 2) as u8, 100)).unwrap();
    }
    buf.commit().unwrap();
    let got = buf.read(None, usize::MAX).unwrap();
    assert_eq!(got.len(), 2, "one file per class");
    let all: Vec<Held> = got
        .iter()
        .flat_map(|b| b.records.iter().map(Held::of))
        .collect();
    let mut acked: Vec<Held> = all.iter().filter(|h| h.priority == 0).copied().collect();
    acked.extend(all.iter().filter(|h| h.priority == 1).take(1));
    assert_eq!(acked.len(), 4);
    buf.release(&acked).unwrap();
    buf.reaped();
    assert_eq!(buf.snapshot().records, 2);
    drop(buf);
    let back = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    let mut ids = all_ids(&back);
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 3, 5],
        "class 1's file is kept whole, class 0's is gone"
    );
}

/// The reaper paces its deletion rounds (one sled flush, `fdatasync` and directory fsync
/// each): batches released one by one, 20 ms apart, are deleted in at most one round per
/// 250 ms of elapsed time (plus the first and the barrier's), not one round per release
/// (about 40 without pacing), and every file is gone after the barrier.
#[test]
fn reaper_paces_deletion_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let buf = open_unbounded(dir.path());
    for id in 0..40 {
        buf.append(rec(id, 0, 100)).unwrap();
        buf.commit().unwrap();
    }
    let batches = buf.read(None, usize::MAX).unwrap();
    assert_eq!(batches.len(), 40);
    let files_dir = dir.path().join("batches");
    let rounds = || {
        files::STEPS
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, s)| *d == files_dir && *s == files::Step::Flushed)
            .count()
    };
    let start = std::time::Instant::now();
    for b in &batches {
        let held: Vec<Held> = b.records.iter().map(Held::of).collect();
        buf.release(&held).unwrap();
        // The releases of a drain arrive spread out, not all at once.
        std::thread::sleep(Duration::from_millis(20));
    }
    buf.reaped();
    let elapsed = start.elapsed();
    let n = rounds();
    let bound = 2 + (elapsed.as_millis() / 250) as usize;
    assert!(n >= 1, "nothing deleted");
    assert!(
        n <= bound,
        "{n} deletion rounds in {elapsed:?}: more than one per 250 ms ({bound})"
    );
    assert!(files::list(&buf.inner.files).unwrap().is_empty());
    assert_eq!(buf.snapshot().records, 0);
}

/// Inode numbers of the spare files in `dir`.
fn spare_inodes(dir: &std::path::Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".spare"))
        .map(|e| {
            let m = e.metadata().unwrap();
            assert_eq!(m.len(), 0, "a spare is empty");
            m.ino()
        })
        .collect()
}

/// Waits until the filler thread has topped the pool up (it then sleeps), so the next
/// file the committer takes is one of the spares there are now.
fn wait_for_full_pool(buf: &Buffer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while buf.inner.spares.ready() < spares::TARGET {
        assert!(std::time::Instant::now() < deadline, "pool never filled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A drained batch file is not unlinked but kept, empty, as a spare, and new batch files
/// are spares renamed into place (no inode allocated per batch), holding only their own
/// records.
#[test]
fn drained_batch_files_are_recycled_and_new_batches_take_spares() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let buf = open_unbounded(dir.path());
    buf.append(rec(1, 0, 900)).unwrap();
    buf.commit().unwrap();
    let got = buf.read(None, usize::MAX).unwrap();
    let first = got[0].key;
    let ino = files::path(&batches, first).metadata().unwrap().ino();
    let held: Vec<Held> = got[0].records.iter().map(Held::of).collect();
    buf.release(&held).unwrap();
    buf.reaped();
    assert!(!files::path(&batches, first).exists(), "drained file gone");
    assert!(
        spare_inodes(&batches).contains(&ino),
        "its inode kept as an empty spare"
    );
    assert_eq!(buf.batch_file_bytes(), 0);
    wait_for_full_pool(&buf);
    let spares = spare_inodes(&batches);
    buf.append(rec(2, 0, 900)).unwrap();
    buf.commit().unwrap();
    let got = buf.read(Some(first), usize::MAX).unwrap();
    assert_eq!(got.len(), 1);
    let ids: Vec<u64> = got[0].records.iter().map(id_of).collect();
    assert_eq!(ids, [2], "only the new batch's records");
    let new_ino = files::path(&batches, got[0].key).metadata().unwrap().ino();
    assert!(spares.contains(&new_ino), "a spare renamed into place");
    assert_eq!(buf.batch_file_bytes(), dir_bytes(&batches));
}

/// A batch file the open cannot read (here: a directory under its name, so reading it
/// fails) is set aside into `unreadable/` with its contents, not deleted, whether it was
/// indexed or not; its records are counted as skipped and the buffer opens with the
/// others and keeps working.
#[test]
fn an_unreadable_batch_file_is_set_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    let keys = {
        let buf = open_with_files(&c, 3);
        buf.close().unwrap();
        let mut keys = files::list(&batches).unwrap();
        keys.sort_unstable();
        keys
    };
    assert_eq!(keys.len(), 3);
    let indexed = files::path(&batches, keys[1]);
    let saved = std::fs::read(&indexed).unwrap();
    std::fs::remove_file(&indexed).unwrap();
    std::fs::create_dir(&indexed).unwrap();
    std::fs::write(indexed.join("records"), &saved).unwrap();
    let stray = keys[2] + 1000;
    std::fs::create_dir(files::path(&batches, stray)).unwrap();
    let buf = reopen(c.clone());
    assert_eq!(all_ids(&buf), [0, 2]);
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 2);
    let aside = dir.path().join(files::UNREADABLE);
    assert_eq!(
        std::fs::read(aside.join(format!("{:020}.batch", keys[1])).join("records")).unwrap(),
        saved,
        "kept for the operator"
    );
    assert!(aside.join(format!("{stray:020}.batch")).is_dir());
    assert!(!indexed.exists() && !files::path(&batches, stray).exists());
    buf.append(rec(9, 0, 100)).unwrap();
    buf.commit().unwrap();
    assert_eq!(all_ids(&buf), [0, 2, 9]);
    drop(buf);
    let again = reopen(c);
    assert_eq!(all_ids(&again), [0, 2, 9]);
    assert_eq!(again.stats().corrupt.load(Ordering::Relaxed), 0);
}

/// Spares left by an earlier run are deleted at open (after a crash one may hold a
/// recycled file's old bytes), and the batches are untouched.
#[test]
fn open_deletes_leftover_spares() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    {
        let buf = open_unbounded(dir.path());
        buf.append(rec(7, 0, 100)).unwrap();
        buf.close().unwrap();
    }
    std::fs::write(
        batches.join("123456.spare"),
        b"old bytes of a recycled batch",
    )
    .unwrap();
    let buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert!(!batches.join("123456.spare").exists());
    assert_eq!(all_ids(&buf), [7]);
}

/// What a crash can leave of a recycled file: a spare renamed to a new batch's name whose
/// new contents never reached the disk, still holding an old batch. Recovery removes it
/// (its first record is not the name's key) instead of replaying the old records.
#[test]
fn a_file_holding_another_batchs_records_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let batches = dir.path().join("batches");
    let key = {
        let buf = open_unbounded(dir.path());
        buf.append(rec(7, 0, 100)).unwrap();
        buf.close().unwrap();
        buf.read(None, usize::MAX).unwrap()[0].key
    };
    let stale = key + 1000;
    std::fs::copy(files::path(&batches, key), files::path(&batches, stale)).unwrap();
    let buf = reopen(cfg(dir.path(), u64::MAX, FullPolicy::Block));
    assert!(!files::path(&batches, stale).exists(), "removed at open");
    assert_eq!(all_ids(&buf), [7], "the old record once");
}

/// An open that finds every file as its index entry describes it leaves the index alone
/// (rewriting every group of a 200,000-file backlog left about 7 MB of sled's memory
/// behind): the sparse groups a drain leaves stay as they are; an open that has to
/// change the index (here: a file whose entry was lost) rewrites it, packed.
#[test]
fn an_open_rewrites_the_index_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    let buf = open_with_files(&c, 130);
    assert_eq!(index_groups(&buf), 3, "64 + 64 + 2 files");
    let mut cursor = None;
    for _ in 0..40 {
        let batch = buf.read(cursor, 1).unwrap().pop().unwrap();
        cursor = Some(batch.key);
        let held: Vec<Held> = batch.records.iter().map(Held::of).collect();
        buf.release(&held).unwrap();
    }
    buf.close().unwrap();
    drop(buf);
    let buf = reopen(c.clone());
    assert_eq!(index_groups(&buf), 3, "24 + 64 + 2 files, not rewritten");
    assert_eq!(buf.snapshot().records, 90);
    unindex_oldest(&buf);
    drop(buf);
    let buf = reopen(c);
    assert_eq!(index_groups(&buf), 2, "the 90 files repacked");
    assert_eq!(all_ids(&buf), (40..130).collect::<Vec<_>>());
}

/// An open that rewrites the index writes the groups one by one (`Groups::rewrite`), so a
/// crash can leave only the first new groups. Modelled: the state after the first group
/// of a rewrite of 130 files (the old groups removed, one new group of 64 entries
/// written, sled flushed); the next open must re-index the other 66 files from their
/// contents, count none of them corrupt, and read every record once, in order.
#[test]
fn an_index_rewrite_cut_short_is_completed_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    let buf = open_with_files(&c, 130);
    {
        let mut index = buf.inner.index();
        let (entries, damaged) = index.entries().unwrap();
        assert_eq!((entries.len(), damaged), (130, 0));
        let live: Vec<_> = entries.iter().map(|(k, i)| (*k, i.unwrap())).collect();
        index.rewrite(&live[..64]).unwrap();
    }
    buf.inner.flush_durable().unwrap();
    assert_eq!(index_groups(&buf), 1);
    drop(buf);
    let buf = reopen(c.clone());
    assert_eq!(buf.stats().recovered.load(Ordering::Relaxed), 66);
    assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(index_groups(&buf), 3, "64 + 64 + 2 files");
    assert_eq!(all_ids(&buf), (0..130).collect::<Vec<_>>());
    buf.close().unwrap();
    drop(buf);
    let buf = reopen(c);
    assert_eq!(buf.stats().recovered.load(Ordering::Relaxed), 0);
    assert_eq!(all_ids(&buf), (0..130).collect::<Vec<_>>());
}

/// A buffer whose index is per-file entries (written before session 15) opens with every
/// batch indexed, none rebuilt from its file, and its entries moved into groups; so does
/// one of more than a group's files, reopened.
#[test]
fn per_file_index_entries_are_migrated_into_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
    c.batch_max_bytes = 4 << 10;
    {
        let buf = Buffer::open(c.clone()).unwrap();
        for f in 0..70u64 {
            for i in 0..4 {
                buf.append(rec(f * 4 + i, 0, 1000)).unwrap();
            }
            buf.commit().unwrap();
        }
        // Move the first 40 files' entries to the old per-file tree.
        let (entries, _) = buf.inner.index().entries().unwrap();
        assert_eq!(entries.len(), 70);
        let legacy = legacy_index(&buf);
        for (key, index) in entries.iter().take(40) {
            buf.inner.index().remove(&[*key]).unwrap();
            legacy
                .insert(key.to_be_bytes(), &index.unwrap().encode())
                .unwrap();
        }
        buf.inner.flush_durable().unwrap();
        buf.close().unwrap();
    }
    for round in 0..2 {
        let buf = reopen(c.clone());
        assert_eq!(
            buf.stats().recovered.load(Ordering::Relaxed),
            0,
            "round {round}"
        );
        assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0);
        assert_eq!(all_ids(&buf), (0..280).collect::<Vec<u64>>());
        assert!(legacy_index(&buf).is_empty());
        assert_eq!(buf.inner.index().entries().unwrap().0.len(), 70);
        buf.close().unwrap();
    }
}

/// sled's log damaged on disk (the buffer's batch files intact): sled 0.34 opens what it
/// can read and drops the rest, and the open re-indexes every file it no longer finds in
/// the index from the file itself. Whatever the damage, the edge opens (no crash loop on
/// its own buffer), keeps every record, counts none corrupt, and numbers new records
/// after the recovered ones (the sequence counter may be among what sled lost).
#[test]
fn a_damaged_sled_log_is_rebuilt_from_the_batch_files() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("first 4 KiB zeroed", |b| {
            let n = 4096.min(b.len());
            b[..n].fill(0)
        }),
        ("4 KiB of garbage a third in", |b| {
            let at = b.len() / 3;
            let n = 4096.min(b.len() - at);
            b[at..at + n].fill(0x5A)
        }),
        ("cut in half", |b| b.truncate(b.len() / 2)),
        ("every 97th byte flipped", |b| {
            for i in (0..b.len()).step_by(97) {
                b[i] ^= 0xFF;
            }
        }),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), u64::MAX, FullPolicy::Block);
        {
            let buf = open_with_files(&c, 300);
            buf.close().unwrap();
        }
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        damage(&mut bytes);
        std::fs::write(&db, &bytes).unwrap();
        let buf = reopen(c.clone());
        assert!(
            buf.stats().recovered.load(Ordering::Relaxed) > 0,
            "{what}: the damage reached the index"
        );
        assert_eq!(buf.stats().corrupt.load(Ordering::Relaxed), 0, "{what}");
        assert_eq!(buf.snapshot().records, 300, "{what}");
        buf.append(rec(300, 0, 100)).unwrap();
        buf.commit().unwrap();
        assert_eq!(all_ids(&buf), (0..301).collect::<Vec<_>>(), "{what}");
        buf.close().unwrap();
        drop(buf);
        let buf = reopen(c);
        assert_eq!(buf.stats().recovered.load(Ordering::Relaxed), 0, "{what}");
        assert_eq!(all_ids(&buf), (0..301).collect::<Vec<_>>(), "{what}");
    }
}
