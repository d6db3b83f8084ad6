use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path(), SyncPolicy::Group).expect("open");
    (dir, s)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn log_read_starts_at_containing_entry() {
    let (_d, s) = store();
    rt().block_on(async {
        let mut w = WriteSet::default();
        for base in [0u64, 10, 20] {
            w.put_log(7, 0, base, Bytes::from(vec![base as u8; 4]));
        }
        w.put_log(7, 1, 0, Bytes::from_static(b"other-partition"));
        w.put_log(8, 0, 0, Bytes::from_static(b"other-topic"));
        s.write(w, true).await.expect("write");
    });
    let got: Vec<u64> = s
        .log_read(7, 0, 15, 1 << 20, 100)
        .expect("read")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(got, vec![10, 20]);
    let got: Vec<u64> = s
        .log_read(7, 0, 0, 1, 100)
        .expect("read")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(got, vec![0], "max_bytes still returns one entry");
    assert_eq!(s.log_last(7, 0).expect("last").map(|e| e.0), Some(20));
    assert_eq!(
        s.log_first(7, 1).expect("first").map(|e| e.1),
        Some(Bytes::from_static(b"other-partition"))
    );
    assert_eq!(s.log_last(9, 0).expect("last"), None);
}

#[test]
fn topics_round_trip_and_delete_is_a_range_delete() {
    let (_d, s) = store();
    let mut t = TopicRecord {
        id: 3,
        name: "a.b".into(),
        partitions: 2,
        configs: BTreeMap::new(),
    };
    t.configs.insert("retention.ms".into(), "1000".into());
    rt().block_on(async {
        let mut w = WriteSet::default();
        w.put_topic(&t);
        w.put_log(3, 0, 0, Bytes::from_static(b"x"));
        w.put_log(3, 1, 5, Bytes::from_static(b"y"));
        w.put_log(4, 0, 0, Bytes::from_static(b"keep"));
        w.put_producer(3, 0, 42, vec![1, 2, 3]);
        w.put_mem_floor(3, 1, 65_536);
        w.put_mem_floor(4, 0, 131_072);
        s.write(w, true).await.expect("write");
    });
    assert_eq!(s.mem_floor(3, 1).expect("floor"), Some(65_536));
    assert_eq!(s.load_topics().expect("load"), vec![t.clone()]);
    assert_eq!(
        s.producer_states(3, 0).expect("ps"),
        vec![(42, vec![1, 2, 3])]
    );
    rt().block_on(async {
        let mut w = WriteSet::default();
        w.delete_topic(&t);
        s.write(w, true).await.expect("delete");
    });
    assert!(s.load_topics().expect("load").is_empty());
    assert_eq!(s.log_last(3, 0).expect("last"), None);
    assert_eq!(s.log_last(3, 1).expect("last"), None);
    assert!(s.producer_states(3, 0).expect("ps").is_empty());
    assert_eq!(s.mem_floor(3, 1).expect("floor"), None);
    assert_eq!(s.log_last(4, 0).expect("last").map(|e| e.0), Some(0));
    assert_eq!(s.mem_floor(4, 0).expect("floor"), Some(131_072));
}

#[test]
fn offsets_and_counters_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path(), SyncPolicy::Group).expect("open");
        rt().block_on(async {
            let mut w = WriteSet::default();
            w.put_offset("g1", "t", 0, vec![9]);
            w.put_offset("g1", "t", 1, vec![8]);
            w.put_offset("g2", "t", 0, vec![7]);
            w.put_counter("pid", 1000);
            s.write(w, true).await.expect("write");
        });
    }
    let s = Store::open(dir.path(), SyncPolicy::Group).expect("reopen");
    assert_eq!(s.counter("pid").expect("counter"), 1000);
    assert_eq!(s.group_offsets("g1").expect("offsets").len(), 2);
    assert_eq!(
        s.groups_with_offsets().expect("groups"),
        vec!["g1".to_string(), "g2".to_string()]
    );
    rt().block_on(async {
        let mut w = WriteSet::default();
        w.delete_group_offsets("g1");
        s.write(w, true).await.expect("write");
    });
    assert_eq!(
        s.groups_with_offsets().expect("groups"),
        vec!["g2".to_string()]
    );
}

#[test]
fn delete_log_before_keeps_later_entries() {
    let (_d, s) = store();
    rt().block_on(async {
        let mut w = WriteSet::default();
        for base in [0u64, 10, 20] {
            w.put_log(1, 0, base, Bytes::from_static(b"b"));
        }
        s.write(w, true).await.expect("write");
        let mut w = WriteSet::default();
        w.delete_log_before(1, 0, 20);
        s.write(w, true).await.expect("delete");
    });
    assert_eq!(s.log_first(1, 0).expect("first").map(|e| e.0), Some(20));
}

#[test]
fn share_groups_are_their_own_key_space_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path(), SyncPolicy::Group).expect("open");
        rt().block_on(async {
            let mut w = WriteSet::default();
            w.put_share_group("$share/g/a/#", b"one".to_vec());
            w.put_share_group("$share/h/b", b"two".to_vec());
            w.put_session("c1", b"session".to_vec());
            w.put_retained("a/b", b"retained".to_vec());
            w.put_will("c1", b"will".to_vec());
            w.put_will("c2", b"will2".to_vec());
            s.write(w, true).await.expect("write");
            let mut w = WriteSet::default();
            w.delete_share_group("$share/h/b");
            w.delete_will("c2");
            s.write(w, true).await.expect("delete");
        });
    }
    let s = Store::open(dir.path(), SyncPolicy::Group).expect("reopen");
    assert_eq!(
        s.share_groups().expect("groups"),
        vec![("$share/g/a/#".to_string(), b"one".to_vec())]
    );
    assert_eq!(s.sessions().expect("sessions").len(), 1);
    assert_eq!(s.retained().expect("retained").len(), 1);
    assert_eq!(
        s.wills().expect("wills"),
        vec![("c1".to_string(), b"will".to_vec())]
    );
}

/// The option RocksDB recorded for this store in its newest OPTIONS file.
fn recorded_direct_io(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
        })
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.last().expect("an OPTIONS file")).expect("read");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("use_direct_io_for_flush_and_compaction="))
        .expect("option recorded")
        .to_string()
}

#[test]
fn direct_io_store_flushes_compacts_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = |base: u64| Bytes::from(vec![(base % 251) as u8; 300 << 10]);
    {
        let s = Store::open_with(dir.path(), SyncPolicy::Group, true).expect("open");
        assert_eq!(
            recorded_direct_io(dir.path()),
            "use_direct_io_for_flush_and_compaction=true"
        );
        // Four flushed SST files, then a full compaction: both on O_DIRECT writes.
        let cf = s.cf(CF_LOG).expect("cf");
        for round in 0..4u64 {
            rt().block_on(async {
                let mut w = WriteSet::default();
                for i in 0..8 {
                    w.put_log(3, 0, round * 8 + i, value(round * 8 + i));
                }
                s.write(w, true).await.expect("write");
            });
            s.db.flush_cf(cf).expect("flush");
        }
        s.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert!(
            std::fs::read_dir(dir.path())
                .expect("dir")
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "sst")),
            "no SST file written"
        );
    }
    let s = Store::open_with(dir.path(), SyncPolicy::Group, true).expect("reopen");
    let got = s.log_read(3, 0, 0, 64 << 20, 100).expect("read");
    assert_eq!(got.len(), 32);
    for (offset, v) in got {
        assert_eq!(v, value(offset), "entry {offset}");
    }
}

#[test]
fn direct_io_off_writes_through_the_page_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = Store::open_with(dir.path(), SyncPolicy::Group, false).expect("open");
    assert_eq!(
        recorded_direct_io(dir.path()),
        "use_direct_io_for_flush_and_compaction=false"
    );
}

/// Total size of the live WAL files in `dir`.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read store dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn live_wal_stays_near_its_bound_while_metadata_is_unflushed() {
    const CAP: u64 = 4 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open_tuned(dir.path(), SyncPolicy::Group, false, CAP).expect("open");
    rt().block_on(async {
        // One metadata write sits in the oldest WAL; without the bound its memtable (and
        // so every WAL file since) stays unflushed while the log family takes 40 MiB.
        let mut w = WriteSet::default();
        w.put_counter("pid", 4000);
        s.write(w, true).await.expect("write meta");
        for base in 0..40u64 {
            let mut w = WriteSet::default();
            w.put_log(1, 0, base, Bytes::from(vec![base as u8; 1 << 20]));
            s.write(w, true).await.expect("write log");
        }
    });
    // Flushes and the deletion of obsolete WAL files run in RocksDB's background threads.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while wal_bytes(dir.path()) > 2 * CAP {
        assert!(
            std::time::Instant::now() < deadline,
            "live WAL {} bytes, bound {CAP}",
            wal_bytes(dir.path())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing was lost on the way: the metadata write and the last batch read back.
    drop(s);
    let s = Store::open_tuned(dir.path(), SyncPolicy::Group, false, CAP).expect("reopen");
    assert_eq!(s.counter("pid").expect("counter"), 4000);
    assert_eq!(s.log_read(1, 0, 39, 2 << 20, 1).expect("read").len(), 1);
}

/// Under `sync: group`, a write applied without an fsync is fsynced by the flush thread
/// within its period (`Store::flush_unsynced_every`); a durable write leaves nothing to do.
#[test]
fn unsynced_writes_are_flushed_in_the_background() {
    let (_dir, s) = store();
    rt().block_on(s.write(WriteSet::default(), true))
        .expect("durable write");
    assert!(!s.is_dirty(), "a durable write is synced");
    s.flush_unsynced_every(Duration::from_millis(20))
        .expect("flush thread");
    s.write_now(WriteSet::default()).expect("write");
    assert!(s.is_dirty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.is_dirty() {
        assert!(std::time::Instant::now() < deadline, "never flushed");
        std::thread::sleep(Duration::from_millis(5));
    }
}
