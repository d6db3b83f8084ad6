//! Topic validation, matching and the two indexes (checked against brute force).

use super::topic::*;
use proptest::prelude::*;

#[test]
fn validation() {
    for ok in ["a", "a/b", "/", "a//b", "$SYS/x", "ü/€"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a/+", "#", "a\0b"] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for ok in ["#", "+", "a/+/b", "a/#", "+/+", "/", "$SYS/#"] {
        assert!(validate_filter(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a"] {
        assert!(validate_filter(bad).is_err(), "{bad:?}");
    }
    assert_eq!(shared("$share/g/a/+"), Some(("g", "a/+")));
    assert_eq!(shared("a/b"), None);
}

#[test]
fn matching_follows_the_spec() {
    let yes = [
        ("sport/tennis/player1/#", "sport/tennis/player1"),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
        ("sport/#", "sport"),
        ("#", "a/b/c"),
        ("+/+", "/finance"),
        ("/+", "/finance"),
        ("sport/+/player1", "sport/tennis/player1"),
        ("+", "a"),
        ("$SYS/#", "$SYS/uptime"),
        ("$SYS/+", "$SYS/uptime"),
    ];
    for (f, t) in yes {
        assert!(matches(f, t), "{f} should match {t}");
    }
    let no = [
        ("sport/+", "sport/tennis/x"),
        ("+", "/finance"),
        ("#", "$SYS/uptime"),
        ("+/uptime", "$SYS/uptime"),
        ("a/b", "a"),
        ("a", "a/b"),
    ];
    for (f, t) in no {
        assert!(!matches(f, t), "{f} should not match {t}");
    }
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof!["[ab]", Just(String::new()), Just("$s".to_string())]
}

fn topic_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            prop_oneof!["[ab]", Just("+".to_string()), Just(String::new())],
            1..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            l.join("/")
        })
}

proptest! {
    #[test]
    fn filter_index_equals_brute_force(filters in proptest::collection::vec(filter_strategy(), 0..12),
                                       removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                                       topic in topic_strategy()) {
        let mut idx = FilterIndex::default();
        let mut live: Vec<(String, usize)> = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            idx.insert(f, i);
            live.push((f.clone(), i));
        }
        for r in removed {
            if live.is_empty() { break; }
            let (f, k) = live.remove(r.index(live.len()));
            idx.remove(&f, &k);
        }
        prop_assert_eq!(idx.len(), live.len());
        let mut got = Vec::new();
        idx.matching(&topic, &mut got);
        got.sort_unstable();
        let mut want: Vec<usize> = live.iter().filter(|(f, _)| matches(f, &topic)).map(|(_, k)| *k).collect();
        want.sort_unstable();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn topic_index_equals_brute_force(topics in proptest::collection::btree_set(topic_strategy(), 0..12),
                                      filter in filter_strategy(), drop_first in any::<bool>()) {
        let mut idx = TopicIndex::default();
        for t in &topics {
            idx.insert(t, t.len());
        }
        let mut live: Vec<&String> = topics.iter().collect();
        if drop_first && !live.is_empty() {
            let t = live.remove(0);
            prop_assert_eq!(idx.remove(t), Some(t.len()));
            prop_assert_eq!(idx.get(t), None);
        }
        prop_assert_eq!(idx.len(), live.len());
        let mut got = Vec::new();
        idx.matching(&filter, &mut got);
        let mut got: Vec<String> = got.into_iter().map(|(t, v)| { assert_eq!(v, t.len()); t }).collect();
        got.sort();
        let mut want: Vec<String> = live.into_iter().filter(|t| matches(&filter, t)).cloned().collect();
        want.sort();
        prop_assert_eq!(got, want);
    }

    /// Wide levels, so nodes cross the slice/map threshold both ways.
    #[test]
    fn wide_topic_index_equals_brute_force(
        topics in proptest::collection::btree_set("(\\$s|[a-v]?)(/[a-v]{0,1}){0,2}", 0..120),
        removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..100),
        filter in filter_strategy(),
    ) {
        let mut idx = TopicIndex::default();
        for t in &topics {
            idx.insert(t, t.len());
        }
        let mut live = topics.clone();
        for r in removed {
            let all: Vec<String> = live.iter().cloned().collect();
            if all.is_empty() { break; }
            let t = &all[r.index(all.len())];
            prop_assert_eq!(idx.remove(t), Some(t.len()));
            live.remove(t);
        }
        check_topics(&idx, &live, &filter);
        for f in ["+", "+/+", "#", "a/+", "+/b/#", "/+"] {
            check_topics(&idx, &live, f);
        }
    }
}

/// Checks `idx` against brute force for `filter` over the `live` topics.
fn check_topics(idx: &TopicIndex<usize>, live: &std::collections::BTreeSet<String>, filter: &str) {
    let mut got = Vec::new();
    idx.matching(filter, &mut got);
    let mut got: Vec<String> = got
        .into_iter()
        .map(|(t, v)| {
            assert_eq!(v, t.len());
            t
        })
        .collect();
    got.sort();
    let want: Vec<String> = live
        .iter()
        .filter(|t| matches(filter, t))
        .cloned()
        .collect();
    assert_eq!(got, want, "filter {filter}");
    assert_eq!(idx.len(), live.len());
}

#[test]
fn children_switch_between_sorted_slice_and_hash_map() {
    let mut idx = TopicIndex::default();
    let mut live = std::collections::BTreeSet::new();
    let filters = [
        "a/+", "a/#", "+/+", "#", "a/c07", "a/c16", "+/c16", "$s/+", "a",
    ];
    fn add(idx: &mut TopicIndex<usize>, live: &mut std::collections::BTreeSet<String>, t: String) {
        assert_eq!(idx.insert(&t, t.len()), None);
        live.insert(t);
    }
    add(&mut idx, &mut live, "a".into());
    add(&mut idx, &mut live, "$s/x".into());
    // Inserted out of order: the sorted slice must stay sorted.
    for i in (0..16).rev() {
        add(&mut idx, &mut live, format!("a/c{i:02}"));
    }
    assert_eq!(idx.large_nodes(), 0, "16 children stay in a slice");
    for f in filters {
        check_topics(&idx, &live, f);
    }
    add(&mut idx, &mut live, "a/c16".into());
    assert_eq!(idx.large_nodes(), 1, "the 17th child switches to a map");
    for i in 17..40 {
        add(&mut idx, &mut live, format!("a/c{i:02}"));
    }
    assert_eq!(idx.insert("a/c20", 5), Some(5), "replacing keeps one entry");
    assert_eq!(idx.insert("a/c20", 5), Some(5));
    for f in filters {
        check_topics(&idx, &live, f);
    }
    for i in (8..40).rev() {
        let t = format!("a/c{i:02}");
        assert_eq!(idx.remove(&t), Some(t.len()));
        live.remove(&t);
        assert_eq!(idx.get(&t), None);
        assert_eq!(idx.large_nodes(), usize::from(i > 8), "at {i}");
        check_topics(&idx, &live, "a/+");
    }
    for f in filters {
        check_topics(&idx, &live, f);
    }
    assert_eq!(idx.get("a/c03"), Some(&5));
    assert_eq!(idx.remove("a/zz"), None);
}

#[test]
fn a_million_topics_match_without_a_scan() {
    let mut idx = TopicIndex::default();
    for i in 0..200_000u32 {
        idx.insert(&format!("site{}/line{}/cam{}", i % 100, i % 1000, i), ());
    }
    let mut subs = FilterIndex::default();
    for i in 0..100_000u32 {
        subs.insert(&format!("site{}/line{}/cam{}", i % 100, i % 1000, i), i);
    }
    subs.insert("site7/+/cam7", 1_000_000);
    let t = std::time::Instant::now();
    for _ in 0..10_000 {
        let mut out = Vec::new();
        subs.matching("site7/line7/cam7", &mut out);
        assert_eq!(out.len(), 2);
    }
    let mut out = Vec::new();
    idx.matching("site7/line7/+", &mut out);
    assert_eq!(out.len(), 200);
    // 10,000 lookups among 100,000 filters: a scan would take seconds.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

/// The process's resident set, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory of the hub's topic index for a million `agent/NNNNNNN/events` topics (the
/// values share their strings, as the hub's log names do). A measurement, not a check:
/// `cargo test --workspace topic_index_memory -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check: cargo test --workspace topic_index_memory -- --ignored --nocapture"]
fn topic_index_memory() {
    const N: u32 = 1_000_000;
    let values: Vec<std::sync::Arc<str>> = (0..N)
        .map(|i| format!("agent.{i:07}.events").into())
        .collect();
    let before = rss();
    let mut idx = TopicIndex::default();
    for (i, v) in values.iter().enumerate() {
        idx.insert(&format!("agent/{i:07}/events"), v.clone());
    }
    let after = rss();
    assert_eq!(idx.len(), N as usize);
    println!(
        "topic index: {} bytes/topic ({} MB for {N} topics)",
        (after - before) / N as usize,
        (after - before) >> 20
    );
}
