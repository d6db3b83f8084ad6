//! The ingest's side of the buffer: appends under the quota and memory bounds, and
//! the waits for their group commit (durability steps 1-3 in the module docs).

use super::*;

impl Buffer {
    /// Whether an append would currently wait for the committer (memory bound) or for
    /// space (`block`); callers on an async executor then append via `block_in_place`.
    pub fn congested(&self) -> bool {
        let s = self.inner.lock();
        s.open_bytes >= self.inner.open_limit()
            || (self.inner.cfg.full_policy == FullPolicy::Block
                && s.used_bytes() >= self.inner.cfg.quota_bytes)
    }

    /// Appends a record (its `seq` is assigned here). May block under `full_policy: block`.
    pub fn append(&self, rec: Record) -> Result<Appended, Error> {
        self.append_locked(self.inner.lock(), rec).1
    }

    /// Appends records in order under one lock (one call per MQTT read), pushing one
    /// [`Appended`] per record to `out`. May block under `full_policy: block`.
    pub fn append_all(
        &self,
        recs: impl IntoIterator<Item = Record>,
        out: &mut Vec<Appended>,
    ) -> Result<(), Error> {
        let mut s = self.inner.lock();
        for rec in recs {
            let (guard, result) = self.append_locked(s, rec);
            s = guard;
            out.push(result?);
        }
        Ok(())
    }

    /// One append under the state lock (given back, as waiting releases it).
    fn append_locked<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
        mut rec: Record,
    ) -> (MutexGuard<'a, State>, Result<Appended, Error>) {
        let inner = &self.inner;
        let size = rec.encoded_len() as u64 + 8;
        let quota = inner.cfg.quota_bytes;
        if size > quota {
            inner.stats.dropped[2].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %rec.topic, size, "record larger than the buffer quota dropped");
            return (s, Ok(Appended::Dropped));
        }
        while s.used_bytes() + size > quota {
            if s.shutdown {
                return (s, Err(Error::Closed));
            }
            let victim = match inner.cfg.full_policy {
                FullPolicy::Block => {
                    inner.wake_committer(&mut s);
                    s = inner.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                FullPolicy::DropOldest => victim(&mut s, rec.priority, true),
                FullPolicy::DropNewest if rec.priority > 0 => {
                    victim(&mut s, rec.priority - 1, false)
                }
                FullPolicy::DropNewest => Ok(None),
            };
            let victim = match victim {
                Ok(v) => v,
                Err(e) => return (s, Err(e)),
            };
            let reason = usize::from(inner.cfg.full_policy == FullPolicy::DropNewest);
            match victim {
                Some(key) => {
                    let info = remove_batch(&mut s, key);
                    // Index removal flushed before the unlink, off this lock (the reaper).
                    if let Err(e) = inner.reap(&mut s, key) {
                        return (s, Err(e));
                    }
                    inner.stats.dropped[reason].fetch_add(u64::from(info.live), Ordering::Relaxed);
                }
                None => {
                    inner.stats.dropped[reason].fetch_add(1, Ordering::Relaxed);
                    return (s, Ok(Appended::Dropped));
                }
            }
        }
        // Backpressure: at most a few batches wait in memory for the committer.
        while s.open_bytes >= inner.open_limit() && !s.shutdown {
            inner.wake_committer(&mut s);
            s = inner.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        rec.seq = s.next_seq;
        s.next_seq += 1;
        inner.stats.appended.fetch_add(1, Ordering::Relaxed);
        inner
            .stats
            .appended_bytes
            .fetch_add(size, Ordering::Relaxed);
        let State { open, spare, .. } = &mut *s;
        let open = open.entry(rec.priority).or_insert_with(|| Open {
            records: std::mem::take(spare),
            bytes: 0,
        });
        open.records.push(rec);
        open.bytes += size;
        let full = commit::full(
            inner.cfg.batch_max_bytes as u64,
            open.bytes,
            open.records.len(),
        );
        s.open_bytes += size;
        s.gen += 1;
        let gen = s.gen;
        if full || inner.cfg.sync == SyncPolicy::Always {
            inner.wake_committer(&mut s);
        }
        (s, Ok(Appended::Stored(gen)))
    }

    /// Whether the append with generation `gen` is committed and flushed (no waiting).
    pub fn is_durable(&self, gen: u64) -> bool {
        self.inner.durable_gen.load(Ordering::Acquire) >= gen
    }

    /// Tests: makes every later commit round take at least `d` (a slow disk).
    #[cfg(test)]
    pub(crate) fn slow_commits_for_test(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.inner.test_commit_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the latest group commit that wrote something took (zero before the
    /// first): what a wait for the next one is likely to take.
    pub fn last_commit_time(&self) -> Duration {
        Duration::from_micros(self.inner.last_round_us.load(Ordering::Relaxed))
    }

    /// The generation of the latest append (waiting for it covers every earlier one).
    pub fn latest_gen(&self) -> u64 {
        self.inner.lock().gen
    }

    /// Waits until the append with generation `gen` is committed and flushed.
    pub fn wait_durable(&self, gen: u64) -> Result<(), Error> {
        self.wait_durable_until(gen, None).map(|_| ())
    }

    /// Waits at most `limit` for the append with generation `gen` to be committed and
    /// flushed: `Ok(true)` once it is, `Ok(false)` if the time ran out first.
    pub fn wait_durable_for(&self, gen: u64, limit: Duration) -> Result<bool, Error> {
        self.wait_durable_until(gen, Some(Instant::now() + limit))
    }

    fn wait_durable_until(&self, gen: u64, deadline: Option<Instant>) -> Result<bool, Error> {
        let mut s = self.inner.lock();
        while s.committed_gen < gen {
            if let Some(why) = &s.failed {
                return Err(Error::Failed(why.clone()));
            }
            if s.shutdown {
                return Err(Error::Closed);
            }
            let durable = &self.inner.durable;
            s = match deadline {
                None => durable.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    durable
                        .wait_timeout(s, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        Ok(true)
    }
}
