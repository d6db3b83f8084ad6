//! MQTT topic-filter matching (no I/O).

/// Whether `filter` is a valid MQTT topic filter.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

pub use common::topic::matches;

/// Uplink filters with priorities; the first matching filter wins.
#[derive(Debug, Clone, Default)]
pub struct Uplink {
    filters: Vec<(String, u8)>,
}

impl Uplink {
    /// Builds from `(filter, priority)` pairs.
    pub fn new(filters: impl IntoIterator<Item = (String, u8)>) -> Self {
        Uplink {
            filters: filters.into_iter().collect(),
        }
    }

    /// The priority of `topic`, or `None` if it does not go up.
    pub fn priority(&self, topic: &str) -> Option<u8> {
        self.filters
            .iter()
            .find(|(f, _)| matches(f, topic))
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Filter matching itself is tested beside it, in `common::topic`.
    #[test]
    fn validity_and_priorities() {
        assert!(is_valid_filter("a/+/#"));
        assert!(!is_valid_filter("a/#/b"));
        assert!(!is_valid_filter("a/b#"));
        let u = Uplink::new([("alarms/#".to_string(), 9), ("#".to_string(), 1)]);
        assert_eq!(u.priority("alarms/x"), Some(9));
        assert_eq!(u.priority("cam/1"), Some(1));
    }
}
