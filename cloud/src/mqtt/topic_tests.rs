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
