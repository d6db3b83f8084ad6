//! Topic access control: one set of rules for both views of the log.
//!
//! `acl` in `cloud.yaml` lists rules; each names a user (`*`: every client, anonymous
//! ones included) and MQTT topic filters it may `read` (subscribe, fetch), `write`
//! (publish, produce, auto-create) and `admin` (create, delete, alter configs, delete
//! records, add partitions), and filters it is denied (`deny`: none of these, whatever
//! any rule allows). With no `acl` key every client may do everything; with one, a
//! client may do only what some rule grants it and no rule denies it.
//!
//! Consumer groups too: `groups` lists the group ids a rule's users may use (join,
//! commit and fetch offsets, describe, delete; ListGroups shows only those), a literal
//! or a prefix ending in `*` (Kafka's PREFIXED pattern), `%u` allowed: `["%u-*"]`. MQTT
//! shared subscriptions `$share/<group>/...` are checked against the same list, so a
//! group name means the same on both views. Refusals: GROUP_AUTHORIZATION_FAILED (30),
//! SUBACK 0x87. Rules are written in MQTT topic names, and a Kafka
//! topic is checked under the MQTT name it maps to (`common::topic`), so a device's MQTT
//! topics and their Kafka view are governed by the same line. A Kafka name that maps to
//! no MQTT name (a hashed long name, or one the mapping never produces) is granted only
//! by the filter `#`.
//!
//! In a filter, a level that is exactly `%u` stands for the client's user name and `%c`
//! for its MQTT client id (Mosquitto's `pattern` lines): `devices/%u/#`. A rule whose
//! placeholder has no value for a client (anonymous, a Kafka client for `%c`) or whose
//! value holds `/`, `+` or `#` grants that client nothing.
//!
//! Who the user is: the MQTT user name checked against `mqtt.credentials`, the Kafka
//! SASL user, or on a listener with a `client_ca` the common name of the client's
//! certificate (`crate::identity`; on Kafka the SASL user wins when there are both).
//! Without authentication on a listener (no credentials, no SASL, no client
//! certificates) its clients are anonymous: a user name nobody checked grants nothing
//! beyond `*` rules.
//!
//! A subscription is granted when every topic it can match is allowed for reading: its
//! filter lies within a read filter ([`covers`]), and not wholly within a denied one. A
//! refused filter is refused at SUBSCRIBE (reason 0x87, or 0x80 on 3.1.1). A granted
//! filter that also matches denied topics (`#` with `deny: [private/#]`) gets no
//! message of those: deliveries are checked against the denied filters, and only for
//! clients that have some (Mosquitto checks every delivery against its ACL).

use serde::Deserialize;

use crate::mqtt::topic;

/// One `acl` entry as written in `cloud.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A user name, or `*` for every client.
    pub user: String,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Admin,
}

/// The rules (a validated `acl` list).
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<RuleConfig>,
}

/// What one client may do: the filters of every rule that applies to it, placeholders
/// filled in. Built once per connection (per authentication on Kafka).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// No `acl` configured: everything is allowed.
    all: bool,
    read: Vec<String>,
    write: Vec<String>,
    admin: Vec<String>,
    deny: Vec<String>,
    groups: Vec<String>,
}

impl Acl {
    /// Checks the rules; the error names the entry and the key. `known` tells whether a
    /// user name is configured anywhere (`mqtt.credentials`, `kafka.sasl.users`): a rule
    /// for a user no listener can authenticate is a typo.
    pub fn new(
        rules: &[RuleConfig],
        known: impl Fn(&str) -> bool,
    ) -> Result<Acl, (&'static str, String)> {
        for (i, r) in rules.iter().enumerate() {
            if r.user.is_empty() {
                return Err(("acl", format!("entry {i}: user must not be empty")));
            }
            if r.user != "*" && !known(&r.user) {
                return Err((
                    "acl",
                    format!(
                        "entry {i}: user {:?} is in neither mqtt.credentials nor \
                         kafka.sasl.users, and no listener takes client certificates \
                         (client_ca), so no client can be it",
                        r.user
                    ),
                ));
            }
            let lists = [
                ("read", &r.read),
                ("write", &r.write),
                ("admin", &r.admin),
                ("deny", &r.deny),
            ];
            for g in &r.groups {
                check_group(g)
                    .map_err(|why| ("acl", format!("entry {i}: groups: pattern {g:?}: {why}")))?;
            }
            for (what, list) in lists {
                for f in list {
                    check_filter(f).map_err(|why| {
                        ("acl", format!("entry {i}: {what}: filter {f:?}: {why}"))
                    })?;
                }
            }
        }
        Ok(Acl {
            rules: rules.to_vec(),
        })
    }

    /// What a client that authenticated as `user` (`None`: anonymous) with MQTT client id
    /// `client` (`None` on Kafka) may do.
    pub fn grants(&self, user: Option<&str>, client: Option<&str>) -> Grants {
        let mut g = Grants::default();
        for r in &self.rules {
            if r.user != "*" && Some(r.user.as_str()) != user {
                continue;
            }
            for (list, out) in [
                (&r.read, &mut g.read),
                (&r.write, &mut g.write),
                (&r.admin, &mut g.admin),
            ] {
                out.extend(list.iter().filter_map(|f| fill(f, user, client)));
            }
            g.groups
                .extend(r.groups.iter().filter_map(|p| fill_group(p, user)));
            // A denied filter whose placeholder has no value for this client denies what
            // it would deny for any value: its placeholder levels match any level.
            g.deny.extend(
                r.deny
                    .iter()
                    .map(|f| fill(f, user, client).unwrap_or_else(|| wild(f))),
            );
        }
        g
    }
}

impl Grants {
    /// No access control.
    pub fn all() -> Grants {
        Grants {
            all: true,
            ..Grants::default()
        }
    }

    /// Whether `acl` restricts this client at all.
    pub fn restricted(&self) -> bool {
        !self.all
    }

    fn list(&self, op: Op) -> &[String] {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
            Op::Admin => &self.admin,
        }
    }

    /// Whether `op` is allowed on the MQTT topic `name`.
    pub fn may(&self, op: Op, name: &str) -> bool {
        self.all
            || (self
                .list(op)
                .iter()
                .any(|f| common::topic::matches(f, name))
                && !self.denies(name))
    }

    /// Whether the consumer group (or MQTT share group) `group` may be used.
    pub fn may_group(&self, group: &str) -> bool {
        self.all
            || self.groups.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => group.starts_with(prefix),
                None => p == group,
            })
    }

    /// Whether a rule denies the MQTT topic `name` to this client (deliveries check it).
    pub fn denies(&self, name: &str) -> bool {
        !self.deny.is_empty() && self.deny.iter().any(|f| common::topic::matches(f, name))
    }

    /// Whether a subscription to `filter` (without a `$share/<group>/` prefix) is
    /// allowed: every topic it can match must be readable, and not all of them denied.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.all
            || (self.read.iter().any(|f| covers(f, filter))
                && !self.deny.iter().any(|f| covers(f, filter)))
    }

    /// Whether a subscription with the share group `group` (`$share/<group>/<filter>`),
    /// if any, to `filter` is allowed.
    pub fn may_subscribe_in(&self, group: Option<&str>, filter: &str) -> bool {
        self.may_subscribe(filter) && group.is_none_or(|g| self.may_group(g))
    }

    /// Whether `op` is allowed on the Kafka topic `kafka_name` (checked under its MQTT
    /// name; a name without one only under `#`).
    pub fn may_kafka(&self, op: Op, kafka_name: &str) -> bool {
        if self.all {
            return true;
        }
        match common::topic::kafka_to_mqtt(kafka_name) {
            Ok(common::topic::Decoded::Topic(t)) => self.may(op, &t),
            _ => self.list(op).iter().any(|f| f == "#") && !self.deny.iter().any(|f| f == "#"),
        }
    }

    /// Whether a Kafka client may see `kafka_name` at all (Metadata, DescribeConfigs):
    /// any of read, write or admin.
    pub fn sees_kafka(&self, kafka_name: &str) -> bool {
        const OPS: [Op; 3] = [Op::Read, Op::Write, Op::Admin];
        if self.all {
            return true;
        }
        // Decoded once: an all-topics Metadata request asks this of every topic.
        match common::topic::kafka_to_mqtt(kafka_name) {
            Ok(common::topic::Decoded::Topic(t)) => OPS.into_iter().any(|op| self.may(op, &t)),
            _ => OPS.into_iter().any(|op| self.may_kafka(op, kafka_name)),
        }
    }
}

/// A rule filter: a valid MQTT filter once its `%u` / `%c` levels are filled in, and
/// placeholders only as whole levels.
fn check_filter(f: &str) -> Result<(), String> {
    if f.split('/')
        .any(|l| l.contains('%') && l != "%u" && l != "%c")
    {
        return Err("%u and %c must stand alone as a level (devices/%u/#)".into());
    }
    let filled = f
        .split('/')
        .map(|l| if l == "%u" || l == "%c" { "x" } else { l })
        .collect::<Vec<_>>()
        .join("/");
    topic::validate_filter(&filled).map_err(str::to_string)
}

/// `f` with its placeholder levels filled in, or `None` when one has no usable value.
fn fill(f: &str, user: Option<&str>, client: Option<&str>) -> Option<String> {
    if !f.contains('%') {
        return Some(f.to_string());
    }
    let mut out = Vec::new();
    for level in f.split('/') {
        out.push(match level {
            "%u" => usable(user)?,
            "%c" => usable(client)?,
            l => l,
        });
    }
    Some(out.join("/"))
}

/// A `groups` pattern: not empty, `*` only as its last character.
fn check_group(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty");
    }
    if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
        return Err("* may only end a pattern (a prefix)");
    }
    Ok(())
}

/// A `groups` pattern with `%u` filled in, or `None` for a client without a user name.
fn fill_group(p: &str, user: Option<&str>) -> Option<String> {
    if !p.contains("%u") {
        return Some(p.to_string());
    }
    let user = user.filter(|u| !u.is_empty() && !u.contains('*'))?;
    Some(p.replace("%u", user))
}

/// `f` with its placeholder levels made `+`.
fn wild(f: &str) -> String {
    f.split('/')
        .map(|l| if l == "%u" || l == "%c" { "+" } else { l })
        .collect::<Vec<_>>()
        .join("/")
}

/// A placeholder's value, if it can stand as one level.
fn usable(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.is_empty() && !v.contains(['/', '+', '#']))
}

/// Whether every topic the filter `sub` matches is matched by the filter `rule`.
pub fn covers(rule: &str, sub: &str) -> bool {
    let (r, s): (Vec<&str>, Vec<&str>) = (rule.split('/').collect(), sub.split('/').collect());
    // A filter starting with a wildcard matches no `$` topic: it cannot grant one.
    if s[0].starts_with('$') && (r[0] == "+" || r[0] == "#") {
        return false;
    }
    for (i, rl) in r.iter().enumerate() {
        match (*rl, s.get(i).copied()) {
            ("#", _) => return true,
            (_, None) => return false,
            (_, Some("#")) => return false,
            ("+", Some(_)) => {}
            (a, Some(b)) if a == b => {}
            _ => return false,
        }
    }
    s.len() == r.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: &str, read: &[&str], write: &[&str]) -> RuleConfig {
        RuleConfig {
            user: user.into(),
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
            admin: vec![],
            deny: vec![],
            groups: vec![],
        }
    }

    #[test]
    fn a_rule_covers_what_its_filter_matches_and_nothing_more() {
        assert!(covers("#", "a/b"));
        assert!(covers("#", "#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(covers("a/+/c", "a/x/c"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/+", "a"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/b", "#"));
        assert!(!covers("a/#", "#"));
        assert!(!covers("a/#", "+/b"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
        // Spot check against the matcher: whatever a covered filter matches, the rule does.
        for (r, s) in [("a/+/#", "a/b/c/+"), ("+/+", "x/+"), ("a/#", "a/b/#")] {
            assert!(covers(r, s));
            for t in ["a/b/c/d", "x/y", "a/b/c", "a/b"] {
                if common::topic::matches(s, t) {
                    assert!(common::topic::matches(r, t), "{r} {s} {t}");
                }
            }
        }
    }

    /// Filters and topics over a small alphabet, so that matches are common.
    fn filter_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(prop_oneof!["a", "b", "\\$s", "\\+"], 0..4),
            proptest::bool::ANY,
        )
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#".into());
                }
                levels.join("/")
            })
    }

    proptest::proptest! {
        /// `covers` is sound: every topic a covered subscription matches is matched by
        /// the rule (a grant never lets a subscriber see more than the rule allows).
        #[test]
        fn covers_agrees_with_matching(
            rule in filter_strategy(),
            sub in filter_strategy(),
        ) {
            let topics: Vec<String> = ["a", "b", "$s", "c"]
                .iter()
                .flat_map(|x| ["a", "b", "c"].iter().map(move |y| format!("{x}/{y}")))
                .chain(["a", "$s", "c", "a/b/c", "a/a/a/a", "b/c/a/b/c"].iter().map(|t| t.to_string()))
                .collect();
            if covers(&rule, &sub) {
                for t in &topics {
                    if common::topic::matches(&sub, t) {
                        proptest::prop_assert!(common::topic::matches(&rule, t), "{} {} {}", rule, sub, t);
                    }
                }
            }
        }
    }

    #[test]
    fn placeholders_take_the_clients_user_and_id_or_grant_nothing() {
        let acl = Acl::new(
            &[
                rule("*", &["public/#"], &[]),
                rule("alice", &["devices/%u/#"], &["devices/%u/%c/up"]),
            ],
            |u| u == "alice",
        )
        .unwrap();
        let alice = acl.grants(Some("alice"), Some("cam1"));
        assert!(alice.may(Op::Read, "public/x"));
        assert!(alice.may(Op::Read, "devices/alice/cam1/up"));
        assert!(!alice.may(Op::Read, "devices/bob/cam1/up"));
        assert!(alice.may(Op::Write, "devices/alice/cam1/up"));
        assert!(!alice.may(Op::Write, "devices/alice/cam2/up"));
        assert!(alice.may_subscribe("devices/alice/+/up"));
        assert!(!alice.may_subscribe("devices/+/cam1/up"));
        assert!(!alice.may_subscribe("#"));
        // Kafka: no client id, so the %c rule grants nothing; names map to MQTT names.
        let kafka = acl.grants(Some("alice"), None);
        assert!(kafka.may_kafka(Op::Read, "devices.alice.cam1.up"));
        assert!(!kafka.may_kafka(Op::Write, "devices.alice.cam1.up"));
        assert!(kafka.sees_kafka("public.news"));
        assert!(!kafka.sees_kafka("private"));
        let anon = acl.grants(None, Some("x"));
        assert!(anon.may(Op::Read, "public/a"));
        assert!(!anon.may(Op::Read, "devices/alice/x"));
        // A client id that would widen the filter grants nothing.
        let sneaky = acl.grants(Some("alice"), Some("+"));
        assert!(!sneaky.may(Op::Write, "devices/alice/+/up"));
        assert!(!sneaky.may(Op::Write, "devices/alice/cam1/up"));
        assert!(Grants::all().may_kafka(Op::Admin, "anything"));
        assert!(!Grants::default().may_subscribe("a"));
    }

    #[test]
    fn deny_wins_over_any_allow_and_narrows_wide_subscriptions() {
        let mut everyone = rule("*", &["#"], &["#"]);
        everyone.deny = vec!["test/nosubscribe".into(), "private/%u/#".into()];
        let acl = Acl::new(&[everyone, rule("alice", &["private/#"], &[])], |u| {
            u == "alice"
        })
        .unwrap();
        let alice = acl.grants(Some("alice"), None);
        assert!(!alice.may(Op::Read, "test/nosubscribe"));
        assert!(!alice.may(Op::Write, "test/nosubscribe"));
        assert!(!alice.may_subscribe("test/nosubscribe"));
        assert!(!alice.may_subscribe("private/alice/#"));
        // Wider filters are granted; deliveries of denied topics are skipped.
        assert!(alice.may_subscribe("#"));
        assert!(alice.may_subscribe("test/+"));
        assert!(alice.denies("test/nosubscribe"));
        assert!(!alice.denies("test/other"));
        assert!(alice.may(Op::Read, "private/bob/x"));
        assert!(!alice.may_kafka(Op::Read, "private.alice.x"));
        // Anonymous: the %u deny has no value, so it denies private/+/# for them.
        let anon = acl.grants(None, None);
        assert!(anon.denies("private/anyone/x"));
        assert!(!anon.may(Op::Write, "private/x/y"));
        assert!(anon.may(Op::Write, "private"));
        let long = common::topic::mqtt_to_kafka(&format!("a/{}", "x".repeat(300))).unwrap();
        assert!(anon.may_kafka(Op::Write, &long));
        let mut all_denied = rule("*", &["#"], &["#"]);
        all_denied.deny = vec!["#".into()];
        let g = Acl::new(&[all_denied], |_| false)
            .unwrap()
            .grants(None, None);
        assert!(!g.may_kafka(Op::Write, &long));
        assert!(!g.may_subscribe("a"));
    }

    #[test]
    fn groups_by_name_or_prefix_with_the_users_name() {
        let mut everyone = rule("*", &[], &[]);
        everyone.groups = vec!["public".into()];
        let mut alice = rule("alice", &[], &[]);
        alice.groups = vec!["%u-*".into(), "$shared/team-*".into()];
        let acl = Acl::new(&[everyone, alice], |u| u == "alice").unwrap();
        let a = acl.grants(Some("alice"), None);
        assert!(a.may_group("public"));
        assert!(!a.may_group("public2"));
        assert!(a.may_group("alice-etl"));
        assert!(a.may_group("alice-"));
        assert!(!a.may_group("bob-etl"));
        assert!(a.may_group("$shared/team-x"));
        let anon = acl.grants(None, None);
        assert!(anon.may_group("public"));
        assert!(!anon.may_group("-etl"), "no user: %u-* grants nothing");
        assert!(Grants::all().may_group("anything"));
        let mut bad = rule("*", &[], &[]);
        bad.groups = vec!["a*b".into()];
        assert!(Acl::new(&[bad], |_| false)
            .unwrap_err()
            .1
            .contains("entry 0: groups"));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_entry() {
        let err = |rules: &[RuleConfig]| Acl::new(rules, |u| u == "alice").unwrap_err().1;
        assert!(err(&[rule("bob", &["a"], &[])]).contains("entry 0: user \"bob\""));
        assert!(err(&[rule("*", &[], &["a/#/b"])]).contains("entry 0: write: filter \"a/#/b\""));
        assert!(err(&[rule("*", &["a/x%u"], &[])]).contains("%u and %c must stand alone"));
        assert!(err(&[rule("", &[], &[])]).contains("user must not be empty"));
    }

    #[test]
    fn unmapped_kafka_names_need_the_whole_tree() {
        let acl = Acl::new(&[rule("*", &["a/#"], &["#"])], |_| false).unwrap();
        let g = acl.grants(None, None);
        let long = common::topic::mqtt_to_kafka(&format!("a/{}", "x".repeat(300))).unwrap();
        assert!(!g.may_kafka(Op::Read, &long));
        assert!(g.may_kafka(Op::Write, &long));
    }
}
