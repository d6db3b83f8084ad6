//! Opening the buffer: sled, the batch files' scan and recovery (`recover.rs`), the
//! state, and the buffer's threads (committer, reaper, spares, read-ahead).

use super::*;

impl Buffer {
    /// Opens (or creates) the buffer, scanning the stored batches. If sled's files are
    /// damaged beyond what sled recovers, sets them aside and rebuilds the index from the
    /// batch files (`damaged.rs`; [`Stats::index_rebuilt`]).
    pub fn open(cfg: BufferConfig) -> Result<Self, Error> {
        let mut opened = Self::open_as_is(cfg.clone());
        if let Err(e) = &opened {
            if damaged::is_bad_conf(e) {
                let to = damaged::set_aside_conf(&cfg.dir)?;
                tracing::warn!(
                    cause = %e,
                    moved_to = %to.display(),
                    "sled refused its damaged conf file: set aside, sled writes a new one"
                );
                opened = Self::open_as_is(cfg.clone());
            }
        }
        match opened {
            Err(e) if damaged::is_damage(&e) => {
                let to = damaged::set_aside(&cfg.dir, BATCHES)?;
                tracing::error!(
                    cause = %e,
                    moved_to = %to.display(),
                    "the buffer's sled index is damaged beyond what sled recovers: its \
                     files are set aside and the index is rebuilt from the batch files; \
                     records in flight or acknowledged but not yet deleted may reach the \
                     cloud twice"
                );
                let buf = Self::open_as_is(cfg)?;
                buf.inner.stats.index_rebuilt.store(1, Ordering::Relaxed);
                Ok(buf)
            }
            other => other,
        }
    }

    fn open_as_is(cfg: BufferConfig) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(&cfg.dir)
            .cache_capacity(cfg.cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let stats = Stats::default();
        let next_seq = match meta.get(NEXT_SEQ)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("next_seq"))?,
            ),
            None => 0,
        };
        let live_from = match meta.get(uplink::LIVE_FROM)? {
            Some(v) => Some(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("live_from"))?,
            )),
            None => None,
        };
        let files_dir = cfg.dir.join(BATCHES);
        std::fs::create_dir_all(&files_dir)?;
        // Pre-sized spares only where files grow by appends (`sync: always`).
        let presize = match cfg.sync {
            SyncPolicy::Always => cfg.batch_max_bytes as u64,
            SyncPolicy::Interval(_) => 0,
        };
        let spares = Arc::new(spares::Spares::open(&files_dir, presize)?);
        let mut groups = index::Groups::open(db.open_tree("index")?)?;
        let scanned = recover::scan(&records, &mut groups, &files_dir, &stats, next_seq)?;
        let next_seq = scanned.next_seq;
        meta.insert(NEXT_SEQ, &next_seq.to_be_bytes())?;
        // The recovery's index writes and removals survive whatever comes next.
        let sled_file = std::fs::File::open(cfg.dir.join("db"))?;
        db.flush()?;
        sled_file.sync_data()?;
        let file_bytes = scanned.catalog.bytes();
        let state = State {
            next_seq,
            open: BTreeMap::new(),
            spare: Vec::new(),
            open_bytes: 0,
            staged_bytes: 0,
            gen: 0,
            committed_gen: 0,
            catalog: scanned.catalog,
            committing: 0,
            claimed: None,
            live_from,
            shutdown: false,
            failed: None,
            committer_idle: false,
            appending: BTreeSet::new(),
            seal: false,
        };
        let (reap_tx, reap_rx) = std::sync::mpsc::channel();
        let committer = commit::Committer::new(cfg.direct_io, cfg.direct_io_backlog_bytes);
        let inner = Arc::new(Inner {
            reap: Mutex::new(Some(reap_tx)),
            files: files_dir,
            db,
            index: Mutex::new(groups),
            meta,
            cfg,
            state: Mutex::new(state),
            changed: Condvar::new(),
            work: Condvar::new(),
            durable: Condvar::new(),
            durable_gen: AtomicU64::new(0),
            last_round_us: AtomicU64::new(0),
            stats,
            commit_lock: Mutex::new(committer),
            on_commit: Arc::new(tokio::sync::Notify::new()),
            read_pool: pool::ReadPool::default(),
            fatal: tokio::sync::watch::Sender::new(None),
            #[cfg(test)]
            test_panic: Default::default(),
            #[cfg(test)]
            test_commit_delay_ms: Default::default(),
            #[cfg(test)]
            test_hold_reads: Default::default(),
            #[cfg(test)]
            test_reading: Default::default(),
            sled_file,
            // Every file left after the scan is indexed with its exact length.
            file_bytes: AtomicU64::new(file_bytes),
            spares: spares.clone(),
            prefetch: prefetch::Hints::default(),
        });
        // The reaper ends when `stop` closes its channel, releasing its `Inner`.
        let reaper_inner = inner.clone();
        let reaper = std::thread::Builder::new()
            .name("buffer-reap".into())
            .spawn(move || reap::reap_loop(&reaper_inner, &reap_rx))
            .map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        let worker = inner.clone();
        let committer = std::thread::Builder::new()
            .name("buffer-commit".into())
            .spawn(move || commit_loop(&worker))
            .map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        let filler = std::thread::Builder::new()
            .name("buffer-spares".into())
            .spawn(move || spares.fill_loop())
            .map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        let prefetcher =
            prefetch::spawn(inner.clone()).map_err(|e| Error::Backend(sled::Error::Io(e)))?;
        let buffer = Buffer {
            inner,
            committer: Mutex::new(Some(committer)),
            reaper: Mutex::new(Some(reaper)),
            filler: Mutex::new(Some(filler)),
            prefetcher: Mutex::new(Some(prefetcher)),
        };
        // Batches that in-flight descriptors refer to must be re-sent, not evicted: a
        // quota eviction between this open and the replicator's start would otherwise
        // leave a descriptor with missing records.
        match buffer.inflight() {
            Ok(descs) => {
                if let Some(max) = descs.iter().flat_map(|d| d.seqs.iter()).max() {
                    buffer.protect_through(*max);
                }
            }
            Err(e) => tracing::error!(cause = %e, "reading in-flight descriptors at open"),
        }
        Ok(buffer)
    }
}
