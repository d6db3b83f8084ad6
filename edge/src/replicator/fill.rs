//! Reading the buffer into per-topic queues: the backlog and live cursors, the
//! live-first boundary, and what a read places where (`state.rs` decides batching).

use super::*;

impl Replicator {
    /// Reads committed batches into per-topic queues while memory allows (live records
    /// first during a live-first drain). Returns true when it read everything committed
    /// so far (nothing more to wait for).
    pub(super) fn fill(&mut self) -> Result<bool, Error> {
        // About one request's worth per call, so cutting and sending overlap the broker.
        let mut step = 0;
        let room = |st: &State, step: usize| {
            st.unsent_bytes + st.batched_bytes < PIPELINE_BYTES && step < REQUEST_TARGET_BYTES
        };
        let mut live_done = true;
        if let Some(l) = self.live_from {
            live_done = false;
            while room(&self.state, step) {
                let after = self.live_cursor.or(l.checked_sub(1));
                let batches = self.buffer.read_range(after, u64::MAX, 512 << 10)?;
                if batches.is_empty() {
                    live_done = true;
                    break;
                }
                step += self.take(batches, true)?;
            }
        }
        let before = self.live_from.unwrap_or(u64::MAX);
        while room(&self.state, step) {
            let batches = self.buffer.read_range(self.cursor, before, 512 << 10)?;
            if batches.is_empty() {
                self.finish_restored(true, live_done);
                self.end_live_if_done()?;
                return Ok(live_done);
            }
            step += self.take(batches, false)?;
        }
        self.finish_restored(false, live_done);
        Ok(false)
    }

    /// Places the records of batches read by the live (or the backlog) cursor; returns
    /// their bytes.
    fn take(&mut self, batches: Vec<ReadBatch>, live: bool) -> Result<usize, Error> {
        let mut bytes = 0;
        let mut release = Vec::new();
        for b in batches {
            if live {
                self.live_cursor = Some(b.key);
            } else {
                self.cursor = Some(b.key);
            }
            for rec in b.records {
                bytes += rec.encoded_len();
                let Some(kafka_topic) = self.topic_names.kafka(&rec.topic) else {
                    release.push(Held::of(&rec));
                    continue;
                };
                let held = Held::of(&rec);
                if self
                    .state
                    .topics
                    .get(kafka_topic)
                    .is_none_or(|t| t.acked_through.is_none() && t.mqtt.is_empty())
                {
                    let ps = self.buffer.partition_state(kafka_topic, 0)?;
                    let t = self.state.topics.entry(kafka_topic.to_owned()).or_default();
                    t.acked_through = ps.acked_through;
                    t.acked_backlog = ps.backlog_acked;
                }
                if self.state.place(kafka_topic, rec, self.live_from) == Placed::AlreadyAcked {
                    release.push(held);
                }
            }
        }
        self.finish_restored(false, false);
        self.buffer.release(&release)?;
        Ok(bytes)
    }

    /// Completes restored descriptors whose records the cursor of their stream passed.
    fn finish_restored(&mut self, backlog_all: bool, live_all: bool) {
        let (cursor, live_cursor, live_from) = (self.cursor, self.live_cursor, self.live_from);
        self.state.finish_restored(|max| match live_from {
            Some(l) if max >= l => live_all || live_cursor.is_some_and(|c| max <= c),
            _ => backlog_all || cursor.is_some_and(|c| max <= c),
        });
    }

    /// Starts a live-first drain when the uplink comes back to a backlog.
    pub(super) fn start_live_if_backlog(&mut self) -> Result<(), Error> {
        if self.cfg.drain != DrainPolicy::LiveFirst
            || self.live_from.is_some()
            || self.buffer.snapshot().records == 0
        {
            return Ok(());
        }
        let l = self.buffer.start_live()?;
        tracing::info!(
            live_from = l,
            "uplink back to a backlog: live records go first"
        );
        // Everything already read is backlog.
        for t in self.state.topics.values_mut() {
            t.acked_backlog = t.acked_through;
            let mut live = std::mem::take(&mut t.unsent);
            live.append(&mut t.unsent_backlog);
            t.unsent_backlog = live;
            for b in &mut t.batches {
                b.backlog = true;
            }
        }
        self.live_from = Some(l);
        self.live_cursor = None;
        Ok(())
    }

    /// Ends a live-first drain once the backlog cursor reached the boundary and every
    /// backlog record is acknowledged.
    fn end_live_if_done(&mut self) -> Result<(), Error> {
        let Some(l) = self.live_from else {
            return Ok(());
        };
        if self.state.backlog_pending(l) {
            return Ok(());
        }
        self.buffer.end_live()?;
        tracing::info!("backlog drained; back to arrival order");
        self.cursor = self.cursor.max(self.live_cursor.or(l.checked_sub(1)));
        self.live_from = None;
        self.live_cursor = None;
        for t in self.state.topics.values_mut() {
            t.acked_backlog = None;
        }
        Ok(())
    }
}
