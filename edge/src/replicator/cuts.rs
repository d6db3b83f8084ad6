//! Cuts being prepared: encoded on the encoder thread and their descriptors fsynced on
//! the fsync thread, while the replicator keeps reading, sending and taking
//! acknowledgements.
//!
//! A cut's batches are in their topics' queues from the start (so the memory bound and
//! the per-topic order see them) but are sent only once the cut is finished: encoded *and*
//! its descriptors durable. Cuts finish in the order they were started (one encoder
//! thread, FIFO), which keeps every topic's batches ready in queue order.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::record_batch::Codec;
use common::kafka::ProducerState;
use tokio::sync::oneshot;

use super::encode::{Work, Worker};
use crate::buffer::Buffer;

/// Cuts in preparation at once: one being encoded and one queued behind it, so the
/// encoder thread does not idle between cuts while the replicator waits on the broker.
pub(super) const MAX_PENDING: usize = 2;

/// A cut in preparation.
struct Pending {
    id: u64,
    /// (topic, base sequence) of each batch, in the order of the encoder's output.
    slots: Vec<(String, i32)>,
    encoded: Option<Result<Vec<Bytes>, String>>,
    encode_time: Duration,
    /// The descriptors' fsync; `None` when the cut assigned none (restored descriptors).
    sync: Option<oneshot::Receiver<Result<(), String>>>,
    synced: Option<Result<(), String>>,
    started: Instant,
    live: usize,
}

impl Pending {
    fn finished(&self) -> bool {
        self.encoded.is_some() && self.sync.is_none()
    }
}

/// A finished cut, handed back to the replicator.
pub(super) struct Finished {
    /// (topic, base sequence) of each batch.
    pub(super) slots: Vec<(String, i32)>,
    /// The encoded batches (same order as `slots`), or why the cut failed.
    pub(super) result: Result<Vec<Bytes>, String>,
    pub(super) encode_time: Duration,
    pub(super) total: Duration,
    pub(super) live: usize,
}

/// The cuts in preparation, oldest first.
pub(super) struct Cuts {
    enc: Worker,
    syncer: Option<Syncer>,
    pending: VecDeque<Pending>,
}

/// A waiter for a descriptor fsync.
type SyncWaiter = oneshot::Sender<Result<(), String>>;

/// The thread that fsyncs descriptors, started on first use. One fsync answers every
/// request queued before it started. Long-lived: a drain on tokio's blocking pool
/// measured 37-48 MB peak RSS instead of 29 (1 GB drain; the pool's threads come and go
/// and each allocates in glibc's arenas).
struct Syncer {
    tx: mpsc::Sender<SyncWaiter>,
}

impl Syncer {
    fn spawn(buffer: Arc<Buffer>) -> Syncer {
        let (tx, rx) = mpsc::channel::<SyncWaiter>();
        let started = std::thread::Builder::new()
            .name("edge-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let r = buffer.sync_uplink().map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(r.clone());
                    }
                }
            });
        if let Err(e) = started {
            // Requests fail (the receiver is gone) and the next one retries the start.
            tracing::error!(cause = %e, "cannot start the descriptor fsync thread");
        }
        Syncer { tx }
    }
}

impl Cuts {
    /// Cuts encoded with `edge_id` on every record, compressed at zstd `level`.
    pub(super) fn new(edge_id: &str, level: i32) -> Cuts {
        Cuts {
            enc: Worker::new(edge_id, level),
            syncer: None,
            pending: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Starts preparing a cut: hands `work` to the encoder thread and, if the cut
    /// assigned descriptors (`sync`), fsyncs them on the fsync thread. An error to hand
    /// it over is returned as the cut's result (taken by [`Cuts::take_finished`]).
    pub(super) fn start(
        &mut self,
        slots: Vec<(String, i32)>,
        work: Vec<Work>,
        producer: ProducerState,
        codec: Codec,
        sync: Option<Arc<Buffer>>,
        live: usize,
    ) {
        let started = Instant::now();
        let (id, encoded) = match self.enc.submit(work, producer, codec) {
            Ok(id) => (id, None),
            Err(e) => (0, Some(Err(e))),
        };
        let sync = sync.map(|buffer| {
            let (tx, rx) = oneshot::channel();
            let syncer = match &mut self.syncer {
                Some(s) => s,
                None => self.syncer.insert(Syncer::spawn(buffer)),
            };
            if let Err(mpsc::SendError(tx)) = syncer.tx.send(tx) {
                self.syncer = None;
                let _ = tx.send(Err("the descriptor fsync thread is gone".into()));
            }
            rx
        });
        self.pending.push_back(Pending {
            id,
            slots,
            encoded,
            encode_time: Duration::ZERO,
            sync,
            synced: None,
            started,
            live,
        });
    }

    /// Collects what has finished without waiting.
    pub(super) fn poll(&mut self) {
        loop {
            match self.enc.try_recv() {
                Ok(Some(done)) => self.store(done.id, done.batches, done.took),
                Ok(None) => break,
                Err(e) => {
                    self.fail_unencoded(&e);
                    break;
                }
            }
        }
        for p in self.pending.iter_mut() {
            if let Some(rx) = p.sync.as_mut() {
                match rx.try_recv() {
                    Ok(r) => p.synced = Some(r),
                    Err(oneshot::error::TryRecvError::Empty) => continue,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        p.synced = Some(Err("the descriptor fsync task is gone".into()))
                    }
                }
                p.sync = None;
            }
        }
    }

    /// Waits until the oldest cut has finished (forever if there is none). Cancel safe:
    /// whatever arrives is stored before the next await.
    pub(super) async fn wait_front(&mut self) {
        loop {
            let Some(front) = self.pending.front_mut() else {
                return std::future::pending().await;
            };
            if front.encoded.is_none() {
                match self.enc.recv().await {
                    Ok(done) => self.store(done.id, done.batches, done.took),
                    Err(e) => self.fail_unencoded(&e),
                }
                continue;
            }
            if let Some(rx) = front.sync.as_mut() {
                let r = rx
                    .await
                    .unwrap_or_else(|_| Err("the descriptor fsync task is gone".into()));
                front.synced = Some(r);
                front.sync = None;
            }
            return;
        }
    }

    /// The oldest cut if it has finished.
    pub(super) fn take_finished(&mut self) -> Option<Finished> {
        if !self.pending.front()?.finished() {
            return None;
        }
        let p = self.pending.pop_front()?;
        let result = match (p.encoded, p.synced) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
            (Some(Ok(b)), _) => Ok(b),
            (None, _) => Err("cut taken unfinished".into()),
        };
        Some(Finished {
            slots: p.slots,
            result,
            encode_time: p.encode_time,
            total: p.started.elapsed(),
            live: p.live,
        })
    }

    /// Forgets every cut in preparation (after a failed one: later cuts follow it in
    /// their topics' sequences). Returns their slots; results still to come from the
    /// encoder thread are recognised by id and discarded.
    pub(super) fn abandon(&mut self) -> Vec<(String, i32)> {
        self.pending.drain(..).flat_map(|p| p.slots).collect()
    }

    fn store(
        &mut self,
        id: u64,
        batches: Result<Vec<Bytes>, common::kafka::record_batch::Error>,
        took: Duration,
    ) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            p.encoded = Some(batches.map_err(|e| e.to_string()));
            p.encode_time = took;
        }
    }

    /// The encoder thread died: every cut it had not answered fails.
    fn fail_unencoded(&mut self, why: &str) {
        for p in self.pending.iter_mut().filter(|p| p.encoded.is_none()) {
            p.encoded = Some(Err(why.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Record;

    fn work(first: u64, n: u64) -> Vec<Work> {
        let recs = (first..first + n)
            .map(|seq| Record {
                seq,
                topic: "t".into(),
                recv_ms: 1_000,
                payload: Bytes::from(vec![b'x'; 100 + seq as usize]),
                ..Record::default()
            })
            .collect();
        vec![(first as i32, recs)]
    }

    const P: ProducerState = ProducerState {
        producer_id: 1,
        producer_epoch: 0,
    };

    /// Cuts started back to back finish oldest first, each with its own batches, and
    /// nothing is taken before it has finished.
    #[tokio::test]
    async fn cuts_finish_in_start_order() {
        let mut cuts = Cuts::new("e", common::kafka::record_batch::ZSTD_LEVEL);
        for first in [0, 10, 20] {
            cuts.start(
                vec![("t".into(), first as i32)],
                work(first, 10),
                P,
                Codec::Zstd,
                None,
                1,
            );
        }
        assert_eq!(cuts.len(), 3);
        let mut got = Vec::new();
        while !cuts.is_empty() {
            cuts.wait_front().await;
            got.push(cuts.take_finished().unwrap());
        }
        let bases: Vec<i32> = got.iter().map(|f| f.slots[0].1).collect();
        assert_eq!(bases, vec![0, 10, 20]);
        for f in got {
            let batches = f.result.unwrap();
            assert_eq!(batches.len(), 1);
            let first = f.slots[0].1 as u64;
            let recs: Vec<_> = common::kafka::record_batch::read(&batches[0])
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(recs.len(), 10);
            assert_eq!(
                recs[0].value.as_ref().map(|v| v.len()),
                Some(100 + first as usize)
            );
        }
    }

    /// Abandoned cuts' late results are not mistaken for the next cut's.
    #[tokio::test]
    async fn abandoned_results_are_discarded() {
        let mut cuts = Cuts::new("e", common::kafka::record_batch::ZSTD_LEVEL);
        cuts.start(vec![("t".into(), 0)], work(0, 50), P, Codec::Zstd, None, 1);
        cuts.start(
            vec![("t".into(), 50)],
            work(50, 50),
            P,
            Codec::Zstd,
            None,
            1,
        );
        let slots = cuts.abandon();
        assert_eq!(slots.len(), 2);
        cuts.start(vec![("t".into(), 7)], work(7, 3), P, Codec::Zstd, None, 1);
        cuts.wait_front().await;
        let f = cuts.take_finished().unwrap();
        assert_eq!(f.slots, vec![("t".to_owned(), 7)]);
        let batches = f.result.unwrap();
        let n = common::kafka::record_batch::read(&batches[0])
            .unwrap()
            .count();
        assert_eq!(n, 3);
        assert!(cuts.is_empty());
    }
}
