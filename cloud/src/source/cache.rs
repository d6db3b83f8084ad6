//! The read cache of S3-backed topics: a memory tier and a local-disk tier, both byte
//! bounded, with one eviction rule that knows consumers read a partition from start to
//! end and then again (a training job's epochs).
//!
//! **Eviction.** Each consumer's position in a partition is known (the object its last
//! fetch read). An object's *next use* is how many objects a consumer must read before it
//! reaches this one again, going forward and wrapping from the end to the start: `(object
//! - position) mod objects`, the smallest over the partition's consumers. The object
//! whose next use is furthest away is evicted, and a new object whose next use is further
//! than every cached one's is not cached at all. For a cyclic scan this is Belady's
//! optimal rule: a cache holding half the data keeps the half the next epoch reads first,
//! where LRU evicts each object just before it is needed again and hits nothing. Objects
//! of partitions no consumer read in the last [`CURSOR_TTL`] go first, oldest first.
//!
//! The disk tier lives in one directory, emptied at start: it is a cache of this
//! process's reads, not a store (the index is what persists, `source::index`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::split::Span;

/// An object: `(topic id, partition, index in the partition)`.
pub type ObjId = (u32, u32, u32);

/// A consumer position older than this is forgotten.
pub const CURSOR_TTL: Duration = Duration::from_secs(600);

/// An object in memory, with its records located.
#[derive(Debug)]
pub struct Loaded {
    pub bytes: Bytes,
    pub spans: Vec<Span>,
}

impl Loaded {
    fn weight(&self) -> usize {
        self.bytes.len() + self.spans.len() * std::mem::size_of::<Span>() + 64
    }
}

struct Cursor {
    conn: u64,
    index: u32,
    at: Instant,
}

/// Positions of consumers and partition sizes: what the eviction rule needs.
#[derive(Default)]
pub struct Positions {
    cursors: HashMap<(u32, u32), Vec<Cursor>>,
    lens: HashMap<(u32, u32), u32>,
}

impl Positions {
    /// Records that connection `conn` reads object `index` of the partition, which holds
    /// `len` objects.
    pub fn seen(&mut self, topic: u32, part: u32, conn: u64, index: u32, len: u32, now: Instant) {
        self.lens.insert((topic, part), len);
        let v = self.cursors.entry((topic, part)).or_default();
        v.retain(|c| now.duration_since(c.at) < CURSOR_TTL);
        match v.iter_mut().find(|c| c.conn == conn) {
            Some(c) => {
                c.index = index;
                c.at = now;
            }
            None => v.push(Cursor {
                conn,
                index,
                at: now,
            }),
        }
    }

    /// Objects to read before `id` is read again (`u64::MAX` when nobody reads it).
    pub fn next_use(&self, id: ObjId, now: Instant) -> u64 {
        let (t, p, i) = id;
        let Some(v) = self.cursors.get(&(t, p)) else {
            return u64::MAX;
        };
        let n = u64::from(self.lens.get(&(t, p)).copied().unwrap_or(0).max(i + 1));
        v.iter()
            .filter(|c| now.duration_since(c.at) < CURSOR_TTL)
            .map(|c| (u64::from(i) + n - u64::from(c.index) % n) % n)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Forgets a deleted topic.
    pub fn forget(&mut self, topic: u32) {
        self.cursors.retain(|k, _| k.0 != topic);
        self.lens.retain(|k, _| k.0 != topic);
    }
}

/// One byte-bounded tier: which objects it holds, their weights, insertion order.
struct Tier<V> {
    map: HashMap<ObjId, (V, usize, u64)>,
    used: usize,
    cap: usize,
    seq: u64,
}

impl<V: Clone> Tier<V> {
    fn new(cap: usize) -> Self {
        Tier {
            map: HashMap::new(),
            used: 0,
            cap,
            seq: 0,
        }
    }

    /// Makes room for `weight` bytes of `id` under the eviction rule. Returns the evicted
    /// objects, or `None` if `id` should not be cached (too big, or needed later than
    /// everything held).
    fn admit(
        &mut self,
        id: ObjId,
        weight: usize,
        pos: &Positions,
        now: Instant,
    ) -> Option<Vec<(ObjId, V)>> {
        if weight > self.cap {
            return None;
        }
        let mine = pos.next_use(id, now);
        let need = (self.used + weight).saturating_sub(self.cap);
        if need == 0 {
            return Some(Vec::new());
        }
        // Victims: needed later than `id` (objects nobody reads: older first), furthest
        // first, until there is room. Nothing is evicted unless `id` fits afterwards.
        let mut cands: Vec<(ObjId, u64, u64, usize)> = self
            .map
            .iter()
            .map(|(k, (_, w, seq))| (*k, pos.next_use(*k, now), *seq, *w))
            .filter(|c| c.1 > mine || (c.1 == u64::MAX && mine == u64::MAX))
            .collect();
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let mut freed = 0;
        let mut take = 0;
        while freed < need && take < cands.len() {
            freed += cands[take].3;
            take += 1;
        }
        if freed < need {
            return None;
        }
        // Evict a sixteenth of the tier at once: ranking every object costs a pass over
        // the tier (about 100,000 objects on a full 10 GiB disk tier of 100 KB images),
        // paid once per many admissions instead of once per admission.
        let bulk = need.max(self.cap / 16);
        while freed < bulk && take < cands.len() {
            freed += cands[take].3;
            take += 1;
        }
        Some(
            cands[..take]
                .iter()
                .filter_map(|c| self.remove(&c.0).map(|v| (c.0, v)))
                .collect(),
        )
    }

    fn insert(&mut self, id: ObjId, v: V, weight: usize) {
        self.seq += 1;
        if let Some((_, w, _)) = self.map.insert(id, (v, weight, self.seq)) {
            self.used -= w;
        }
        self.used += weight;
    }

    fn remove(&mut self, id: &ObjId) -> Option<V> {
        let (v, w, _) = self.map.remove(id)?;
        self.used -= w;
        Some(v)
    }

    fn retain_topic(&mut self, topic: u32) -> Vec<(ObjId, V)> {
        let gone: Vec<ObjId> = self.map.keys().filter(|k| k.0 == topic).copied().collect();
        gone.into_iter()
            .filter_map(|k| self.remove(&k).map(|v| (k, v)))
            .collect()
    }
}

/// The two tiers and the positions that steer their eviction.
pub struct Cache {
    mem: Tier<Arc<Loaded>>,
    disk: Tier<()>,
    dir: Option<PathBuf>,
    pub positions: Positions,
}

impl Cache {
    /// A cache of `memory_bytes` in memory and `disk_bytes` in `dir` (no disk tier when
    /// `disk_bytes` is 0). `dir` is emptied.
    pub fn new(memory_bytes: usize, disk_bytes: usize, dir: PathBuf) -> std::io::Result<Cache> {
        let dir = if disk_bytes > 0 {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            Some(dir)
        } else {
            None
        };
        Ok(Cache {
            mem: Tier::new(memory_bytes),
            disk: Tier::new(disk_bytes),
            dir,
            positions: Positions::default(),
        })
    }

    pub fn get(&self, id: &ObjId) -> Option<Arc<Loaded>> {
        self.mem.map.get(id).map(|(v, _, _)| v.clone())
    }

    /// Where `id` is on disk, if the disk tier holds it.
    pub fn on_disk(&self, id: &ObjId) -> Option<PathBuf> {
        self.disk.map.contains_key(id).then(|| self.path(id))?
    }

    fn path(&self, id: &ObjId) -> Option<PathBuf> {
        let d = self.dir.as_ref()?;
        Some(d.join(format!("{}-{}-{}", id.0, id.1, id.2)))
    }

    /// Keeps `l` in memory if the rule admits it.
    pub fn put_memory(&mut self, id: ObjId, l: Arc<Loaded>, now: Instant) {
        let w = l.weight();
        if let Some(_evicted) = self.mem.admit(id, w, &self.positions, now) {
            self.mem.insert(id, l, w);
        }
    }

    /// Reserves disk room for `size` bytes of `id`: returns the file to write and the
    /// files to delete, or `None` if the rule does not admit it. Undo with
    /// [`Cache::drop_disk`] if the write fails.
    pub fn reserve_disk(
        &mut self,
        id: ObjId,
        size: usize,
        now: Instant,
    ) -> Option<(PathBuf, Vec<PathBuf>)> {
        let path = self.path(&id)?;
        let evicted = self.disk.admit(id, size, &self.positions, now)?;
        self.disk.insert(id, (), size);
        let old = evicted.iter().filter_map(|(k, _)| self.path(k)).collect();
        Some((path, old))
    }

    pub fn drop_disk(&mut self, id: &ObjId) {
        self.disk.remove(id);
    }

    /// Drops everything of a deleted topic; returns its disk files to delete.
    pub fn forget(&mut self, topic: u32) -> Vec<PathBuf> {
        self.mem.retain_topic(topic);
        let gone = self.disk.retain_topic(topic);
        self.positions.forget(topic);
        gone.iter().filter_map(|(k, _)| self.path(k)).collect()
    }

    #[cfg(test)]
    pub fn memory_used(&self) -> usize {
        self.mem.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(n: usize) -> Arc<Loaded> {
        Arc::new(Loaded {
            bytes: Bytes::from(vec![0u8; n]),
            spans: Vec::new(),
        })
    }

    /// Reads objects `0..n` of one partition `epochs` times through a memory tier that
    /// holds `fit` objects; returns the hits per epoch.
    fn cyclic(n: u32, fit: usize, epochs: usize, lru: bool) -> Vec<usize> {
        let w = loaded(1000).weight();
        let mut c = Cache::new(w * fit, 0, PathBuf::new()).unwrap();
        let mut lru_order: Vec<u32> = Vec::new();
        let now = Instant::now();
        let mut hits = Vec::new();
        for _ in 0..epochs {
            let mut h = 0;
            for i in 0..n {
                let id = (1, 0, i);
                c.positions.seen(1, 0, 7, i, n, now);
                if lru {
                    if let Some(p) = lru_order.iter().position(|x| *x == i) {
                        h += 1;
                        lru_order.remove(p);
                    } else if lru_order.len() == fit {
                        lru_order.remove(0);
                    }
                    lru_order.push(i);
                } else if c.get(&id).is_some() {
                    h += 1;
                } else {
                    c.put_memory(id, loaded(1000), now);
                }
            }
            hits.push(h);
        }
        hits
    }

    #[test]
    fn a_half_size_cache_keeps_what_the_next_epoch_reads_first() {
        let ours = cyclic(100, 50, 3, false);
        let lru = cyclic(100, 50, 3, true);
        assert_eq!(lru, vec![0, 0, 0], "LRU hits nothing on a cyclic scan");
        assert_eq!(ours[0], 0);
        // Half the data, less what bulk eviction frees ahead (a sixteenth of the tier).
        assert!(ours[1] >= 45 && ours[2] >= 45, "{ours:?}");
    }

    #[test]
    fn the_first_objects_stay_after_one_pass() {
        let w = loaded(10).weight();
        let mut c = Cache::new(w * 3, 0, PathBuf::new()).unwrap();
        let now = Instant::now();
        for i in 0..10 {
            c.positions.seen(1, 0, 7, i, 10, now);
            c.put_memory((1, 0, i), loaded(10), now);
        }
        let kept: Vec<u32> = (0..10).filter(|i| c.get(&(1, 0, *i)).is_some()).collect();
        // Objects 0 and 1 are next needed soonest after the wrap; 9 was just read (its
        // position is the consumer's own).
        assert_eq!(kept, vec![0, 1, 9]);
    }

    #[test]
    fn objects_nobody_reads_go_first_and_oversized_ones_are_not_kept() {
        let w = loaded(10).weight();
        let mut c = Cache::new(w * 2, 0, PathBuf::new()).unwrap();
        let now = Instant::now();
        c.put_memory((2, 0, 5), loaded(10), now); // no consumer on topic 2
        c.positions.seen(1, 0, 7, 0, 4, now);
        c.put_memory((1, 0, 0), loaded(10), now);
        c.put_memory((1, 0, 1), loaded(10), now);
        assert!(c.get(&(2, 0, 5)).is_none());
        assert!(c.get(&(1, 0, 0)).is_some() && c.get(&(1, 0, 1)).is_some());
        c.put_memory((1, 0, 2), loaded(10_000), now);
        assert!(c.get(&(1, 0, 2)).is_none());
        assert_eq!(c.memory_used(), 2 * w);
    }

    #[test]
    fn disk_reservations_evict_files_by_the_same_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::new(0, 250, dir.path().join("c")).unwrap();
        let now = Instant::now();
        c.positions.seen(1, 0, 7, 2, 4, now);
        let (p0, old) = c.reserve_disk((1, 0, 2), 100, now).unwrap();
        assert!(old.is_empty() && p0.ends_with("1-0-2"));
        c.reserve_disk((1, 0, 3), 100, now).unwrap();
        // Object 1 was just passed (3 reads away), 0 is 2 away; 2 and 3 are nearer.
        assert!(c.reserve_disk((1, 0, 1), 100, now).is_none());
        assert!(c.reserve_disk((1, 0, 0), 100, now).is_none());
        assert!(c.on_disk(&(1, 0, 2)).is_some());
        c.positions.seen(1, 0, 7, 0, 4, now);
        // Now 0 is at the cursor and 3 is furthest: 3's file goes.
        let (_, old) = c.reserve_disk((1, 0, 0), 100, now).unwrap();
        assert_eq!(old.len(), 1);
        assert!(old[0].ends_with("1-0-3"));
        assert!(c.on_disk(&(1, 0, 3)).is_none());
        assert_eq!(c.forget(1).len(), 2);
    }
}
