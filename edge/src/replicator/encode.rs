//! Turns the records of cut batches into compressed Kafka RecordBatches.
//!
//! zstd is most of the drain's CPU (level 1 measured about 40% of the edge's samples
//! draining 1 KB hex records). One record block and one zstd context are kept across
//! batches, so neither is allocated and initialised per batch.
//!
//! The replicator hands each cut to one long-lived encoder thread ([`Worker`], which owns
//! the [`Encoder`]) and collects the result later (`super::cuts`): it reads, sends and
//! takes acknowledgements meanwhile. Until session 5 a scoped thread was spawned per cut
//! (a thread start, a stack mapped and unmapped, per ~1 MB of records); until session 6
//! the replicator waited for each cut.
//!
//! Measured and not kept: a second lane (session 3: half of each cut's batches on a
//! helper thread; session 4: two lanes taking batches from a shared counter, the
//! replicator's thread helping once it had synced and read) gave no drain rate gain that
//! stood out of the noise on the two-core test machine, where the cloud uses the other
//! core, and cost a second zstd context and record block (peak RSS up to 29 MB on a
//! 300 MB drain instead of 26-27) against the 32 MB RSS goal.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::record_batch::{Codec, Compressor, Error, Writer};
use common::kafka::ProducerState;

use super::state;
use crate::buffer::Record;

/// Largest record block a lane keeps between cuts.
const KEEP_BLOCK_BYTES: usize = 256 << 10;

/// One batch to encode: its base sequence and records.
pub(super) type Work = (i32, Vec<Record>);

/// What every batch of a cut shares.
struct Common<'a> {
    edge_id: &'a str,
    producer: ProducerState,
    codec: Codec,
}

/// A record block and a zstd context, reused batch after batch.
struct Lane {
    writer: Writer,
    zstd: Compressor,
}

impl Lane {
    fn encode(&mut self, work: &[Work], c: &Common<'_>) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::with_capacity(work.len());
        for (base, records) in work {
            self.writer.clear();
            for r in records {
                state::push_record(&mut self.writer, r, c.edge_id);
            }
            out.push(
                self.writer
                    .finish(c.producer, *base, c.codec, &mut self.zstd)?,
            );
        }
        // A record block grown for a large batch is given back, so the allocator can
        // reuse it (the drain's peak RSS is bounded by what stays allocated).
        if self.writer.capacity() > KEEP_BLOCK_BYTES {
            self.writer = Writer::default();
        }
        Ok(out)
    }
}

/// The batch encoder of one replicator (it lives on the [`Worker`]'s thread).
pub(super) struct Encoder {
    edge_id: String,
    lane: Lane,
}

impl Encoder {
    /// An encoder stamping `edge_id` on every record, compressing at zstd `level`.
    pub(super) fn new(edge_id: &str, level: i32) -> Encoder {
        Encoder {
            edge_id: edge_id.to_owned(),
            lane: Lane {
                writer: Writer::default(),
                zstd: Compressor::with_level(level),
            },
        }
    }

    /// Encodes every batch of `work`, in order.
    pub(super) fn encode_all(
        &mut self,
        work: Vec<Work>,
        producer: ProducerState,
        codec: Codec,
    ) -> Result<Vec<Bytes>, Error> {
        let c = Common {
            edge_id: &self.edge_id,
            producer,
            codec,
        };
        self.lane.encode(&work, &c)
    }
}

/// A cut for the encoder thread.
struct Cut {
    id: u64,
    work: Vec<Work>,
    producer: ProducerState,
    codec: Codec,
    start: Instant,
}

/// What the encoder thread answers for cut `id`: its batches, in order, and the time from
/// hand-over to done (queueing behind earlier cuts included).
pub(super) struct Done {
    pub(super) id: u64,
    pub(super) batches: Result<Vec<Bytes>, Error>,
    pub(super) took: Duration,
}

/// The encoder thread, started on first use and kept for the replicator's lifetime. Cuts
/// are encoded in submission order; the replicator does not wait for them
/// (`super::cuts`), so it reads, sends and takes acknowledgements meanwhile.
pub(super) struct Worker {
    edge_id: String,
    level: i32,
    thread: Option<Thread>,
    next_id: u64,
}

struct Thread {
    tx: mpsc::Sender<Cut>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Done>,
    handle: JoinHandle<()>,
}

impl Worker {
    /// A worker whose encoder stamps `edge_id` on every record and compresses at zstd
    /// `level`.
    pub(super) fn new(edge_id: &str, level: i32) -> Worker {
        Worker {
            edge_id: edge_id.to_owned(),
            level,
            thread: None,
            next_id: 0,
        }
    }

    /// Hands a cut to the encoder thread (started if needed) and returns its id; its
    /// [`Done`] comes back from [`Worker::recv`] after those of earlier cuts.
    pub(super) fn submit(
        &mut self,
        work: Vec<Work>,
        producer: ProducerState,
        codec: Codec,
    ) -> Result<u64, String> {
        self.next_id += 1;
        let cut = Cut {
            id: self.next_id,
            work,
            producer,
            codec,
            start: Instant::now(),
        };
        let t = match &mut self.thread {
            Some(t) => t,
            None => self.thread.insert(spawn(&self.edge_id, self.level)?),
        };
        if let Err(mpsc::SendError(_)) = t.tx.send(cut) {
            self.stop();
            return Err("the encoder thread is gone".into());
        }
        Ok(self.next_id)
    }

    /// The next finished cut, if one is there (never waits). `Err` when the thread died
    /// (the next [`Worker::submit`] starts a new one).
    pub(super) fn try_recv(&mut self) -> Result<Option<Done>, String> {
        use tokio::sync::mpsc::error::TryRecvError;
        let Some(t) = self.thread.as_mut() else {
            return Err("the encoder thread is gone".into());
        };
        match t.rx.try_recv() {
            Ok(done) => Ok(Some(done)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                self.stop();
                Err("encoder thread panicked".into())
            }
        }
    }

    /// Waits for the next finished cut. Cancel safe (a `Done` is never lost).
    pub(super) async fn recv(&mut self) -> Result<Done, String> {
        let got = match self.thread.as_mut() {
            Some(t) => t.rx.recv().await,
            None => None,
        };
        match got {
            Some(done) => Ok(done),
            // It panicked: the next cut starts a new one.
            None => {
                self.stop();
                Err("encoder thread panicked".into())
            }
        }
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(t.tx);
            let _ = t.handle.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(edge_id: &str, level: i32) -> Result<Thread, String> {
    let (tx, cuts) = mpsc::channel::<Cut>();
    let (done, rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut enc = Encoder::new(edge_id, level);
    let handle = std::thread::Builder::new()
        .name("edge-encode".into())
        .spawn(move || {
            for cut in cuts {
                let batches = enc.encode_all(cut.work, cut.producer, cut.codec);
                let d = Done {
                    id: cut.id,
                    batches,
                    took: cut.start.elapsed(),
                };
                if done.send(d).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the encoder thread: {e}"))?;
    Ok(Thread { tx, rx, handle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::kafka::record_batch::{self, ZSTD_LEVEL};

    fn rec(seq: u64, topic: &str) -> Record {
        Record {
            seq,
            topic: topic.into(),
            recv_ms: 1_000 + seq as i64,
            payload: Bytes::from(format!("payload {seq} ").repeat(1 + seq as usize % 7)),
            ..Record::default()
        }
    }

    /// A reused lane writes exactly the bytes a fresh one writes, batch after batch
    /// (record block and zstd context carry nothing over), and large blocks are given back.
    #[test]
    fn reused_lane_equals_fresh() {
        let p = ProducerState {
            producer_id: 4,
            producer_epoch: 1,
        };
        let work = |big: bool| -> Vec<Work> {
            (0..7u64)
                .map(|b| {
                    let n = if big { 3_000 } else { 1 + b * 3 };
                    (
                        b as i32 * 100,
                        (0..n).map(|i| rec(b * 100 + i, "t")).collect(),
                    )
                })
                .collect()
        };
        let mut reused = Encoder::new("e1", ZSTD_LEVEL);
        for codec in [Codec::Zstd, Codec::None] {
            for big in [false, true, false] {
                let a = reused.encode_all(work(big), p, codec).unwrap();
                let b = Encoder::new("e1", ZSTD_LEVEL)
                    .encode_all(work(big), p, codec)
                    .unwrap();
                assert_eq!(a.len(), 7);
                assert_eq!(a, b);
                for (i, batch) in a.iter().enumerate() {
                    let recs: Vec<_> = record_batch::read(batch)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect();
                    let n = if big { 3_000 } else { 1 + i * 3 };
                    assert_eq!(recs.len(), n);
                    assert_eq!(recs[0].timestamp, 1_000 + i as i64 * 100);
                }
                assert!(reused.lane.writer.capacity() <= KEEP_BLOCK_BYTES);
            }
        }
    }

    /// `cloud.compression_level`: a higher zstd level writes the same records in fewer
    /// bytes (on repetitive records like sensor JSON).
    #[test]
    fn a_higher_level_writes_the_same_records_in_fewer_bytes() {
        let p = ProducerState {
            producer_id: 4,
            producer_epoch: 1,
        };
        let json = |i: u64| {
            let mut r = rec(i, "sensors/t");
            r.payload = Bytes::from(format!(
                "{{\"ts\":{},\"device\":\"cam-{:04}\",\"temp\":{}.{},\"status\":\"ok\"}}",
                1_763_860_000_000 + i * 250,
                i % 37,
                18 + i % 7,
                i % 10
            ));
            r
        };
        let work = || -> Vec<Work> { vec![(0, (0..2_000).map(json).collect())] };
        let fast = Encoder::new("e1", 1)
            .encode_all(work(), p, Codec::Zstd)
            .unwrap();
        let small = Encoder::new("e1", 19)
            .encode_all(work(), p, Codec::Zstd)
            .unwrap();
        assert!(
            small[0].len() < fast[0].len(),
            "{} vs {}",
            small[0].len(),
            fast[0].len()
        );
        let payloads = |b: &Bytes| -> Vec<Bytes> {
            record_batch::read(b)
                .unwrap()
                .map(|r| r.unwrap().value.unwrap())
                .collect()
        };
        assert_eq!(payloads(&small[0]), payloads(&fast[0]));
        assert_eq!(payloads(&small[0]).len(), 2_000);
    }

    /// One encoder thread serves cut after cut with the bytes a fresh encoder writes, and
    /// is the same thread throughout; cuts submitted before any is collected come back in
    /// order, each under its id.
    #[tokio::test]
    async fn worker_thread_is_kept_across_cuts() {
        let p = ProducerState {
            producer_id: 9,
            producer_epoch: 0,
        };
        let work = |cut: u64| -> Vec<Work> {
            (0..3u64)
                .map(|b| {
                    let first = cut * 1_000 + b * 100;
                    (first as i32, (0..5).map(|i| rec(first + i, "t")).collect())
                })
                .collect()
        };
        let want = |cut: u64| {
            Encoder::new("e1", ZSTD_LEVEL)
                .encode_all(work(cut), p, Codec::Zstd)
                .unwrap()
        };
        let mut w = Worker::new("e1", ZSTD_LEVEL);
        let mut handle_id = None;
        for cut in 0..4 {
            let id = w.submit(work(cut), p, Codec::Zstd).unwrap();
            let done = w.recv().await.unwrap();
            assert_eq!(done.id, id);
            assert_eq!(done.batches.unwrap(), want(cut));
            let tid = w.thread.as_ref().map(|t| t.handle.thread().id());
            assert!(tid.is_some());
            assert!(
                handle_id.is_none() || handle_id == tid,
                "a new thread per cut"
            );
            handle_id = tid;
        }
        let ids: Vec<u64> = (10..13)
            .map(|cut| w.submit(work(cut), p, Codec::Zstd).unwrap())
            .collect();
        for (cut, id) in (10..13).zip(ids) {
            let done = w.recv().await.unwrap();
            assert_eq!(done.id, id);
            assert_eq!(done.batches.unwrap(), want(cut));
        }
        assert!(w.try_recv().unwrap().is_none());
    }
}
