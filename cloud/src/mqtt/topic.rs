//! MQTT topic names and filters: validation, matching, and the two indexes.
//!
//! - [`FilterIndex`]: subscription filters -> subscribers. `matching(topic)` walks one
//!   path per topic level (plus the `+` and `#` branches), so its cost depends on the
//!   topic's depth and the number of matches, not on how many filters or topics exist.
//! - [`TopicIndex`]: topic names -> a value (known topics, retained messages).
//!   `matching(filter)` walks only the branches the filter can reach.
//!
//! Wildcards at the first level never match topics starting with `$` (MQTT 4.7.2).

use std::collections::HashMap;
use std::hash::Hash;

/// Checks a topic name a client publishes to.
pub(crate) fn validate_name(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("empty topic name");
    }
    if t.len() > 65_535 {
        return Err("topic name longer than 65535 bytes");
    }
    if t.contains(['+', '#']) {
        return Err("wildcards are not allowed in a topic name");
    }
    if t.contains('\0') {
        return Err("NUL in topic name");
    }
    Ok(())
}

/// Checks a subscription filter (without a `$share/` prefix).
pub(crate) fn validate_filter(f: &str) -> Result<(), &'static str> {
    if f.is_empty() {
        return Err("empty topic filter");
    }
    if f.len() > 65_535 {
        return Err("topic filter longer than 65535 bytes");
    }
    if f.contains('\0') {
        return Err("NUL in topic filter");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err("'#' must be the whole last level");
        }
        if l.contains('+') && *l != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`.
pub(crate) fn shared(f: &str) -> Option<(&str, &str)> {
    let rest = f.strip_prefix("$share/")?;
    let (group, filter) = rest.split_once('/')?;
    Some((group, filter))
}

/// Whether `topic` matches `filter` (shared with the edge's uplink filters).
pub(crate) use common::topic::matches;

struct FilterNode<K> {
    children: HashMap<Box<str>, FilterNode<K>>,
    /// Subscribers whose filter ends at this node.
    here: Vec<K>,
    /// Subscribers whose filter ends with `#` below this node.
    hash: Vec<K>,
}

impl<K> Default for FilterNode<K> {
    fn default() -> Self {
        FilterNode {
            children: HashMap::new(),
            here: Vec::new(),
            hash: Vec::new(),
        }
    }
}

/// Subscription index: filter -> subscribers (`K`, e.g. a connection id).
pub(crate) struct FilterIndex<K> {
    root: FilterNode<K>,
    len: usize,
}

impl<K: Clone + Eq + Hash> Default for FilterIndex<K> {
    fn default() -> Self {
        FilterIndex {
            root: FilterNode::default(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> FilterIndex<K> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `key` under `filter` (idempotent).
    pub(crate) fn insert(&mut self, filter: &str, key: K) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(l) = levels.next() {
            if l == "#" && levels.peek().is_none() {
                if !node.hash.contains(&key) {
                    node.hash.push(key);
                    self.len += 1;
                }
                return;
            }
            node = node.children.entry(l.into()).or_default();
        }
        if !node.here.contains(&key) {
            node.here.push(key);
            self.len += 1;
        }
    }

    /// Removes `key` from `filter`; prunes empty branches.
    pub(crate) fn remove(&mut self, filter: &str, key: &K) {
        /// Returns (removed, node now empty).
        fn rec<K: Eq>(node: &mut FilterNode<K>, levels: &[&str], key: &K) -> (bool, bool) {
            fn take<K: Eq>(v: &mut Vec<K>, key: &K) -> bool {
                let before = v.len();
                v.retain(|k| k != key);
                v.len() != before
            }
            let removed = match levels.split_first() {
                Some((&"#", [])) => take(&mut node.hash, key),
                Some((l, rest)) => match node.children.get_mut(*l) {
                    Some(child) => {
                        let (removed, empty) = rec(child, rest, key);
                        if empty {
                            node.children.remove(*l);
                        }
                        removed
                    }
                    None => false,
                },
                None => take(&mut node.here, key),
            };
            (
                removed,
                node.children.is_empty() && node.here.is_empty() && node.hash.is_empty(),
            )
        }
        let levels: Vec<&str> = filter.split('/').collect();
        if rec(&mut self.root, &levels, key).0 {
            self.len -= 1;
        }
    }

    /// Every subscriber with a filter matching `topic` (may repeat a key that has
    /// several matching filters).
    pub(crate) fn matching(&self, topic: &str, out: &mut Vec<K>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        fn rec<K: Clone>(n: &FilterNode<K>, levels: &[&str], first_dollar: bool, out: &mut Vec<K>) {
            if !first_dollar {
                out.extend(n.hash.iter().cloned());
            }
            let Some((l, rest)) = levels.split_first() else {
                out.extend(n.here.iter().cloned());
                return;
            };
            if let Some(c) = n.children.get(*l) {
                rec(c, rest, false, out);
            }
            if !first_dollar {
                if let Some(c) = n.children.get("+") {
                    rec(c, rest, false, out);
                }
            }
        }
        rec(&self.root, &levels, dollar, out);
    }
}

/// A topic level's name, stored inline when it fits (most levels do): no allocation.
enum Label {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

/// Longest level name stored inline (the enum stays 24 bytes).
const INLINE: usize = 22;

impl Label {
    fn new(s: &str) -> Label {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Label::Inline { len, bytes }
            }
            _ => Label::Heap(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Always valid: the bytes were copied from a `str`.
            Label::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Label::Heap(s) => s,
        }
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Label) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Label {}

impl Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A node keeps up to this many children in a sorted slice, more in a hash map.
const SMALL_MAX: usize = 16;
/// A hash map that shrinks to this many children goes back to a sorted slice.
const SMALL_AGAIN: usize = 8;

/// The children of a [`TopicNode`]. Most nodes have one child or none (a million
/// `agent/<id>/events` topics have a million one-child nodes), so the common case is a
/// boxed slice sized exactly, searched by binary search, rather than a hash map.
enum Children<V> {
    Small(Box<[(Label, TopicNode<V>)]>),
    // Boxed so a node's children take 16 bytes, not the 48 of an inline map.
    #[allow(clippy::box_collection)]
    Large(Box<HashMap<Label, TopicNode<V>>>),
}

impl<V> Default for Children<V> {
    fn default() -> Self {
        Children::Small(Box::default())
    }
}

fn search<V>(s: &[(Label, TopicNode<V>)], name: &str) -> Result<usize, usize> {
    s.binary_search_by(|(l, _)| l.as_str().cmp(name))
}

impl<V> Children<V> {
    fn is_empty(&self) -> bool {
        match self {
            Children::Small(s) => s.is_empty(),
            Children::Large(m) => m.is_empty(),
        }
    }

    fn get(&self, name: &str) -> Option<&TopicNode<V>> {
        match self {
            Children::Small(s) => search(s, name).ok().map(|i| &s[i].1),
            Children::Large(m) => m.get(name),
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut TopicNode<V>> {
        match self {
            Children::Small(s) => search(s, name).ok().map(|i| &mut s[i].1),
            Children::Large(m) => m.get_mut(name),
        }
    }

    fn get_or_insert(&mut self, name: &str) -> &mut TopicNode<V> {
        if let Children::Small(s) = self {
            if s.len() >= SMALL_MAX && search(s, name).is_err() {
                let map = std::mem::take(s).into_vec().into_iter().collect();
                *self = Children::Large(Box::new(map));
            }
        }
        match self {
            Children::Small(s) => {
                let i = search(s, name).unwrap_or_else(|i| {
                    let mut v = std::mem::take(s).into_vec();
                    v.insert(i, (Label::new(name), TopicNode::default()));
                    *s = v.into_boxed_slice();
                    i
                });
                &mut s[i].1
            }
            Children::Large(m) => m.entry(Label::new(name)).or_default(),
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Children::Small(s) => {
                if let Ok(i) = search(s, name) {
                    let mut v = std::mem::take(s).into_vec();
                    v.remove(i);
                    *s = v.into_boxed_slice();
                }
            }
            Children::Large(m) => {
                m.remove(name);
                if m.len() <= SMALL_AGAIN {
                    let mut v: Vec<_> = std::mem::take(&mut **m).into_iter().collect();
                    v.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                    *self = Children::Small(v.into_boxed_slice());
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &TopicNode<V>)> {
        let (small, large) = match self {
            Children::Small(s) => (Some(s.iter()), None),
            Children::Large(m) => (None, Some(m.iter())),
        };
        let small = small.into_iter().flatten().map(|e| (&e.0, &e.1));
        let large = large.into_iter().flatten();
        small.chain(large).map(|(l, n)| (l.as_str(), n))
    }
}

struct TopicNode<V> {
    children: Children<V>,
    value: Option<V>,
}

impl<V> Default for TopicNode<V> {
    fn default() -> Self {
        TopicNode {
            children: Children::default(),
            value: None,
        }
    }
}

/// Topic index: topic name -> `V`, searched by filter.
pub(crate) struct TopicIndex<V> {
    root: TopicNode<V>,
    len: usize,
}

impl<V> Default for TopicIndex<V> {
    fn default() -> Self {
        TopicIndex {
            root: TopicNode::default(),
            len: 0,
        }
    }
}

impl<V: Clone> TopicIndex<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sets the value of `topic`; returns the previous one.
    pub(crate) fn insert(&mut self, topic: &str, v: V) -> Option<V> {
        let mut node = &mut self.root;
        for l in topic.split('/') {
            node = node.children.get_or_insert(l);
        }
        let old = node.value.replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// How many nodes keep their children in a hash map.
    #[cfg(test)]
    pub(crate) fn large_nodes(&self) -> usize {
        fn rec<V>(n: &TopicNode<V>) -> usize {
            let here = usize::from(matches!(n.children, Children::Large(_)));
            here + n.children.iter().map(|(_, c)| rec(c)).sum::<usize>()
        }
        rec(&self.root)
    }

    pub(crate) fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for l in topic.split('/') {
            node = node.children.get(l)?;
        }
        node.value.as_ref()
    }

    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        fn rec<V>(n: &mut TopicNode<V>, levels: &[&str]) -> (Option<V>, bool) {
            let old = match levels.split_first() {
                None => n.value.take(),
                Some((l, rest)) => {
                    let Some(c) = n.children.get_mut(l) else {
                        return (None, false);
                    };
                    let (old, empty) = rec(c, rest);
                    if empty {
                        n.children.remove(l);
                    }
                    old
                }
            };
            (old, n.children.is_empty() && n.value.is_none())
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let (old, _) = rec(&mut self.root, &levels);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every `(topic, value)` whose topic matches `filter`.
    pub(crate) fn matching(&self, filter: &str, out: &mut Vec<(String, V)>) {
        let levels: Vec<&str> = filter.split('/').collect();
        fn all<V: Clone>(n: &TopicNode<V>, path: &mut String, out: &mut Vec<(String, V)>) {
            if let Some(v) = &n.value {
                out.push((path.clone(), v.clone()));
            }
            for (l, c) in n.children.iter() {
                let len = path.len();
                path.push('/');
                path.push_str(l);
                all(c, path, out);
                path.truncate(len);
            }
        }
        fn rec<V: Clone>(
            n: &TopicNode<V>,
            levels: &[&str],
            path: &mut String,
            first: bool,
            out: &mut Vec<(String, V)>,
        ) {
            let Some((l, rest)) = levels.split_first() else {
                if let Some(v) = &n.value {
                    out.push((path.clone(), v.clone()));
                }
                return;
            };
            let step = |name: &str,
                        c: &TopicNode<V>,
                        path: &mut String,
                        out: &mut Vec<(String, V)>,
                        deep: bool| {
                let len = path.len();
                if !first {
                    path.push('/');
                }
                path.push_str(name);
                if deep {
                    all(c, path, out);
                } else {
                    rec(c, rest, path, false, out);
                }
                path.truncate(len);
            };
            match *l {
                "#" => {
                    // `#` also matches the parent level itself (`a/#` matches `a`).
                    if !first {
                        if let Some(v) = &n.value {
                            out.push((path.clone(), v.clone()));
                        }
                    }
                    for (name, c) in n.children.iter() {
                        if !(first && name.starts_with('$')) {
                            step(name, c, path, out, true);
                        }
                    }
                }
                "+" => {
                    for (name, c) in n.children.iter() {
                        if !(first && name.starts_with('$')) {
                            step(name, c, path, out, false);
                        }
                    }
                }
                name => {
                    if let Some(c) = n.children.get(name) {
                        step(name, c, path, out, false);
                    }
                }
            }
        }
        rec(&self.root, &levels, &mut String::new(), true, out);
    }
}
