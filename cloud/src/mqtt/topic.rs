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

/// Whether `topic` matches `filter`.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

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

struct TopicNode<V> {
    children: HashMap<Box<str>, TopicNode<V>>,
    value: Option<V>,
}

impl<V> Default for TopicNode<V> {
    fn default() -> Self {
        TopicNode {
            children: HashMap::new(),
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
            node = node.children.entry(l.into()).or_default();
        }
        let old = node.value.replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    #[cfg(test)]
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
                    let Some(c) = n.children.get_mut(*l) else {
                        return (None, false);
                    };
                    let (old, empty) = rec(c, rest);
                    if empty {
                        n.children.remove(*l);
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
            for (l, c) in &n.children {
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
                    for (name, c) in &n.children {
                        if !(first && name.starts_with('$')) {
                            step(name, c, path, out, true);
                        }
                    }
                }
                "+" => {
                    for (name, c) in &n.children {
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
