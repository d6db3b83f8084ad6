//! Stored batches as the MQTT view reads them (a subscription's cursor, a shared
//! subscription's dispatcher): from the log, and below a tiered partition's local start
//! from its uploaded segments (`crate::tier`), the same bytes a Kafka Fetch gets there.
//! An offline session's queue is an offset, so it stays readable after its batches move
//! to S3.

use std::sync::Arc;

use bytes::Bytes;

use crate::log::partition::PartitionLog;
use crate::storage::{self, Store};
use crate::tier::{PartTier, Tiers};

/// Where a reader's batches come from.
#[derive(Clone, Copy)]
pub(crate) struct Stored<'a> {
    pub(crate) store: &'a Store,
    /// `None`: tiering is off (or a test without it).
    pub(crate) tiers: Option<&'a Tiers>,
    /// Who reads: the tier cache keeps what its readers reach next.
    pub(crate) reader: u64,
}

/// What [`Stored::read`] found.
pub(crate) enum Read {
    /// Batches holding the offset and what follows (at least one).
    Batches(Vec<Bytes>),
    /// Nothing stored at the offset yet.
    Nothing,
    /// The tiered segment holding the offset is loading: read again once the partition's
    /// [`PartTier::loads`] differs from the count given (it wakes its registered waiters).
    Loading(Arc<PartTier>, u64),
}

impl Stored<'_> {
    fn tier(&self, log: &PartitionLog) -> Option<Arc<PartTier>> {
        self.tiers?.part(log.topic_id, log.index)
    }

    /// The first offset at or after `next` still stored: `next` itself, or the start of
    /// what retention left (the tiered start of a tiered partition, else the local one).
    pub(crate) fn first(&self, log: &PartitionLog, next: u64) -> u64 {
        let local = log.log_start();
        if next >= local {
            return next;
        }
        match self.tier(log).and_then(|pt| Some((pt.start()?, pt.end()?))) {
            Some((start, end)) if next < end => next.max(start),
            _ => local,
        }
    }

    /// Batches holding offsets from `next` on (a position [`Stored::first`] returned), up
    /// to about `max` bytes.
    pub(crate) fn read(
        &self,
        log: &PartitionLog,
        next: u64,
        max: usize,
    ) -> Result<Read, storage::Error> {
        if next < log.log_start() {
            if let (Some(tiers), Some(pt)) = (self.tiers, self.tier(log)) {
                if pt.end().is_some_and(|end| next < end) {
                    let loads = pt.loads();
                    let b = tiers.read(&pt, next, max, true, self.reader);
                    return Ok(if b.is_empty() {
                        Read::Loading(pt, loads)
                    } else {
                        Read::Batches(b)
                    });
                }
            }
        }
        let r = log.read(self.store, next, max)?;
        Ok(if r.batches.is_empty() {
            Read::Nothing
        } else {
            Read::Batches(r.batches)
        })
    }
}
