use std::convert::Infallible;
use std::sync::Arc;

use kafka_protocol::records::Compression;
use tokio::sync::Notify;

use super::*;
use crate::log::batch::{tests::encode, with_base_offset};

const G: &str = "$shared/g";
const T: &str = "t";

/// A partition log of `batches` batches of `per` records each.
struct Log(Vec<Bytes>);

impl Log {
    fn new(batches: usize, per: usize) -> Log {
        Log((0..batches)
            .map(|i| with_base_offset(&encode(per, Compression::None, -1, 0), (i * per) as u64))
            .collect())
    }

    /// Whole batches from the one holding `from`, at least one, up to `max` bytes.
    fn read(&self, from: u64, max: usize) -> Result<Vec<Bytes>, Infallible> {
        let mut out = Vec::new();
        let mut total = 0;
        for b in &self.0 {
            let (_, end) = span_of(b).unwrap();
            if end < from {
                continue;
            }
            if !out.is_empty() && total + b.len() > max {
                break;
            }
            total += b.len();
            out.push(b.clone());
        }
        Ok(out)
    }
}

fn tag(client: &str) -> Tag {
    Tag {
        client_id: client.into(),
        host: "127.0.0.1".into(),
    }
}

/// A stable group (generation `gen`) of members `a` and `b` on topic `T`, partition 0
/// started at offset 0.
fn shares(gen: i32) -> Shares {
    let s = Shares::default();
    s.observe(G, gen, true, || {
        vec![(tag("a"), vec![T.into()]), (tag("b"), vec![T.into()])]
    });
    s.start(G, T, 0, 0);
    s
}

fn member(s: &Shares) -> Member {
    s.classify(&tag("a"), T).expect("a member")
}

/// First offsets of the batches handed to `conn` fetching at `offset` (one batch each).
fn fetch(s: &Shares, log: &Log, conn: Conn, offset: u64, max: usize) -> Vec<u64> {
    let who = member(s);
    let ask = Ask {
        who: &who,
        topic: T,
        partition: 0,
        conn,
        offset,
    };
    s.dispatch(&ask, max, |o, n| log.read(o, n))
        .unwrap()
        .iter()
        .map(|b| span_of(b).unwrap().0)
        .collect()
}

#[test]
fn members_are_recognised_by_client_id_host_and_topic() {
    let s = shares(1);
    assert_eq!(
        s.classify(&tag("a"), T).map(|m| m.group),
        Some(G.to_string())
    );
    assert!(s.classify(&tag("a"), "other").is_none());
    assert!(s.classify(&tag("c"), T).is_none());
    let elsewhere = Tag {
        client_id: "a".into(),
        host: "10.0.0.1".into(),
    };
    assert!(s.classify(&elsewhere, T).is_none());
    // A member gone after a rebalance is no longer recognised.
    s.observe(G, 2, true, || vec![(tag("b"), vec![T.into()])]);
    assert!(s.classify(&tag("a"), T).is_none());
}

#[test]
fn each_batch_goes_to_one_connection_and_offsets_only_grow() {
    let log = Log::new(10, 5);
    let s = shares(1);
    let one = log.0[0].len();
    // A takes two batches, B the next two, A the next (from its own position).
    assert_eq!(fetch(&s, &log, 1, 0, 2 * one), vec![0, 5]);
    assert_eq!(fetch(&s, &log, 2, 0, 2 * one), vec![10, 15]);
    assert_eq!(fetch(&s, &log, 1, 10, one), vec![20]);
    // The first batch goes out even when larger than the limit (KIP-74).
    assert_eq!(fetch(&s, &log, 2, 20, 1), vec![25]);
    // Nothing below the group's next offset is handed out twice.
    assert_eq!(fetch(&s, &log, 1, 25, 100 * one), vec![30, 35, 40, 45]);
    assert!(fetch(&s, &log, 2, 30, 100 * one).is_empty());
}

#[test]
fn a_commit_acknowledges_only_the_committing_connections_batches() {
    let log = Log::new(4, 5);
    let s = shares(1);
    let one = log.0[0].len();
    assert_eq!(fetch(&s, &log, 1, 0, one), vec![0]);
    assert_eq!(fetch(&s, &log, 2, 0, one), vec![5]);
    assert_eq!(fetch(&s, &log, 1, 5, one), vec![10]);
    // B commits 10 (it consumed offset 9, in its batch 5..9): the lowest open is A's 0.
    assert_eq!(s.commit(G, T, 0, 10), Some(0));
    // A commits 3, mid-batch: its batch 0..4 is not done yet.
    assert_eq!(s.commit(G, T, 0, 3), Some(0));
    // A commits 15: both of its batches are done.
    assert_eq!(s.commit(G, T, 0, 15), Some(15));
    // A commit naming nothing handed out (a repeat) changes nothing.
    assert_eq!(s.commit(G, T, 0, 15), Some(15));
    // Unknown partition: the stored offset stands.
    assert_eq!(s.commit(G, T, 1, 4), None);
}

#[test]
fn a_rebalance_hands_back_what_was_not_acknowledged() {
    let log = Log::new(6, 5);
    let s = shares(1);
    let one = log.0[0].len();
    assert_eq!(fetch(&s, &log, 1, 0, 2 * one), vec![0, 5]);
    assert_eq!(fetch(&s, &log, 2, 0, 2 * one), vec![10, 15]);
    assert_eq!(s.commit(G, T, 0, 10), Some(10)); // A acknowledged both of its batches
    let before = member(&s);
    // B leaves: the group rebalances. Meanwhile nobody is served.
    s.observe(G, 1, false, || vec![(tag("a"), vec![T.into()])]);
    assert!(fetch(&s, &log, 1, 10, one).is_empty());
    s.observe(G, 2, true, || vec![(tag("a"), vec![T.into()])]);
    // A fetch that began before the rebalance gets nothing (its client drops it).
    let ask = Ask {
        who: &before,
        topic: T,
        partition: 0,
        conn: 1,
        offset: 10,
    };
    let stale = s.dispatch(&ask, 100 * one, |o, n| log.read(o, n)).unwrap();
    assert!(stale.is_empty());
    // The group's offset is B's first unacknowledged batch; A restarts there and gets
    // B's batches, then the rest.
    assert_eq!(s.all_lowest(G), vec![((T.to_string(), 0), 10)]);
    assert_eq!(fetch(&s, &log, 1, 10, 100 * one), vec![10, 15, 20, 25]);
}

#[test]
fn a_member_ahead_of_the_group_leaves_what_it_skipped_to_the_others() {
    let log = Log::new(6, 5);
    let s = shares(1);
    let one = log.0[0].len();
    // A seeks to 20: offsets 0..19 go to a member that can still take them.
    assert_eq!(fetch(&s, &log, 1, 20, one), vec![20]);
    assert_eq!(fetch(&s, &log, 2, 0, 2 * one), vec![0, 5]);
    assert_eq!(fetch(&s, &log, 2, 10, 100 * one), vec![10, 15, 25]);
    assert_eq!(s.all_lowest(G), vec![((T.to_string(), 0), 0)]);
}

#[test]
fn the_connection_served_last_waits_while_another_is_parked() {
    let log = Log::new(4, 5);
    let s = shares(1);
    let one = log.0[0].len();
    let wake = Arc::new(Notify::new());
    assert_eq!(fetch(&s, &log, 1, 0, one), vec![0]);
    s.park(G, T, 0, 2, &wake);
    // A was served last and B waits: A yields.
    assert!(fetch(&s, &log, 1, 5, one).is_empty());
    // B takes the next batch; A is woken (B no longer parked once its fetch ends).
    assert_eq!(fetch(&s, &log, 2, 0, one), vec![5]);
    s.unpark(G, T, 0, 2);
    assert_eq!(fetch(&s, &log, 1, 5, one), vec![10]);
}

#[tokio::test]
async fn a_batch_handed_out_wakes_the_other_parked_connections() {
    let log = Log::new(2, 5);
    let s = shares(1);
    let one = log.0[0].len();
    let wake = Arc::new(Notify::new());
    s.park(G, T, 0, 2, &wake);
    assert_eq!(fetch(&s, &log, 1, 0, one), vec![0]);
    tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
        .await
        .expect("the parked connection was woken");
}

#[test]
fn a_reset_from_outside_the_group_moves_its_offset() {
    let log = Log::new(4, 5);
    let s = shares(1);
    let one = log.0[0].len();
    assert_eq!(fetch(&s, &log, 1, 0, one), vec![0]);
    s.reset(G, T, 0, 15);
    assert_eq!(s.all_lowest(G), vec![((T.to_string(), 0), 15)]);
    assert_eq!(fetch(&s, &log, 2, 15, one), vec![15]);
}

#[test]
fn a_rebalance_with_batches_pending_revokes_first_then_asks_for_another() {
    let log = Log::new(4, 5);
    let s = shares(1);
    let one = log.0[0].len();
    let members = || vec![(tag("a"), vec![T.into()])];
    // Nothing pending: a rebalance assigns as usual and needs no second one.
    s.observe(G, 1, false, members);
    assert!(!s.revoke_first(G));
    assert!(!s.observe(G, 2, true, members));
    // A batch pending when the next rebalance syncs: it assigns nothing, and once the
    // group is stable (the batch handed back) another rebalance must follow.
    assert_eq!(fetch(&s, &log, 1, 0, one), vec![0]);
    assert!(!s.observe(G, 2, false, members));
    assert!(s.revoke_first(G));
    assert!(s.observe(G, 3, true, members));
    // That one finds nothing pending.
    assert!(!s.observe(G, 3, false, members));
    assert!(!s.revoke_first(G));
    assert!(!s.observe(G, 4, true, members));
    assert_eq!(s.all_lowest(G), vec![((T.to_string(), 0), 0)]);
}
