use super::*;

fn req(member_id: &str) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_string(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
        require_known_member_id: true,
    }
}

fn join(g: &mut Group, member_id: &str, now: Instant) -> oneshot::Receiver<JoinResult> {
    let (tx, rx) = oneshot::channel();
    g.join(req(member_id), now, tx);
    rx
}

fn join_new(g: &mut Group, now: Instant) -> String {
    let mut rx = join(g, "", now);
    let r = rx.try_recv().expect("member id answer");
    assert_eq!(r.error, MEMBER_ID_REQUIRED);
    r.member_id
}

#[test]
fn two_members_rebalance_and_sync() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::from_millis(100));
    let a = join_new(&mut g, t0);
    let mut ra = join(&mut g, &a, t0);
    assert!(
        ra.try_recv().is_err(),
        "the first join waits for the initial delay"
    );
    let b = join_new(&mut g, t0);
    let mut rb = join(&mut g, &b, t0);
    g.tick(t0 + Duration::from_millis(50));
    assert!(ra.try_recv().is_err());
    g.tick(t0 + Duration::from_millis(150));
    let ja = ra.try_recv().expect("a joined");
    let jb = rb.try_recv().expect("b joined");
    assert_eq!(ja.generation, 1);
    assert_eq!(ja.leader, jb.leader);
    let (leader, follower) = if ja.leader == a { (ja, jb) } else { (jb, ja) };
    assert_eq!(leader.members.len(), 2, "the leader gets every member");
    assert!(follower.members.is_empty());
    assert_eq!(g.state, State::CompletingRebalance);
    // Follower syncs first and waits for the leader's assignment.
    let (ftx, mut frx) = oneshot::channel();
    g.sync(&follower.member_id, 1, vec![], t0, ftx);
    assert!(frx.try_recv().is_err());
    let (ltx, mut lrx) = oneshot::channel();
    let assignments = vec![
        (leader.member_id.clone(), Bytes::from_static(b"L")),
        (follower.member_id.clone(), Bytes::from_static(b"F")),
    ];
    g.sync(&leader.member_id, 1, assignments, t0, ltx);
    assert_eq!(
        lrx.try_recv().expect("leader sync").assignment,
        Bytes::from_static(b"L")
    );
    assert_eq!(
        frx.try_recv().expect("follower sync").assignment,
        Bytes::from_static(b"F")
    );
    assert_eq!(g.state, State::Stable);
    assert_eq!(g.heartbeat(&follower.member_id, 1, t0), NONE);
    assert_eq!(g.heartbeat(&follower.member_id, 0, t0), ILLEGAL_GENERATION);
    assert_eq!(g.heartbeat("nobody", 1, t0), UNKNOWN_MEMBER_ID);
}

#[test]
fn a_group_that_became_empty_waits_the_initial_delay_again() {
    let t0 = Instant::now();
    let delay = Duration::from_millis(100);
    let mut g = Group::new("g", delay);
    let a = join_new(&mut g, t0);
    let mut ra = join(&mut g, &a, t0);
    g.tick(t0 + delay);
    assert_eq!(ra.try_recv().expect("a joined").generation, 1);
    assert_eq!(g.leave(&a, t0 + delay), NONE);
    assert_eq!(g.state, State::Empty);
    // A member of a later generation: the group is empty again, so as in Kafka it waits
    // the initial delay (members starting together land in one generation).
    let t1 = t0 + Duration::from_secs(1);
    let c = join_new(&mut g, t1);
    let mut rc = join(&mut g, &c, t1);
    assert!(
        rc.try_recv().is_err(),
        "a rebalance from empty waits the initial delay"
    );
    g.tick(t1 + delay);
    assert!(rc.try_recv().expect("c joined").generation > 1);
}

#[test]
fn leave_triggers_rebalance_and_rejoin_completes_it() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let a = join_new(&mut g, t0);
    let mut ra = join(&mut g, &a, t0);
    let ja = ra
        .try_recv()
        .expect("single member joins at once without initial delay");
    assert_eq!(ja.generation, 1);
    let b = join_new(&mut g, t0);
    let mut rb = join(&mut g, &b, t0);
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(g.heartbeat(&a, 1, t0), REBALANCE_IN_PROGRESS);
    assert!(rb.try_recv().is_err(), "waits for a to rejoin");
    let mut ra2 = join(&mut g, &a, t0);
    assert_eq!(ra2.try_recv().expect("a").generation, 2);
    assert_eq!(rb.try_recv().expect("b").generation, 2);
    assert_eq!(g.leave(&b, t0), NONE);
    assert_eq!(g.state, State::PreparingRebalance);
    let mut ra3 = join(&mut g, &a, t0);
    assert_eq!(ra3.try_recv().expect("a alone").generation, 3);
}

#[test]
fn silent_member_expires_and_group_rebalances_without_it() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let a = join_new(&mut g, t0);
    let _rx = join(&mut g, &a, t0);
    let b = join_new(&mut g, t0);
    let mut rb = join(&mut g, &b, t0);
    let _rx = join(&mut g, &a, t0);
    assert!(rb.try_recv().is_ok());
    g.state = State::Stable;
    g.heartbeat(&a, g.generation, t0 + Duration::from_secs(8));
    g.tick(t0 + Duration::from_secs(11));
    assert!(!g.members.contains_key(&b), "b missed its session timeout");
    assert!(g.members.contains_key(&a));
    assert_eq!(g.state, State::PreparingRebalance);
}

#[test]
fn rebalance_deadline_drops_members_that_did_not_rejoin() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let a = join_new(&mut g, t0);
    let _rx = join(&mut g, &a, t0);
    let b = join_new(&mut g, t0);
    let mut rb = join(&mut g, &b, t0);
    // `a` keeps heartbeating (so its session stays alive) but never rejoins.
    for s in [8, 16, 24] {
        assert_eq!(
            g.heartbeat(&a, 1, t0 + Duration::from_secs(s)),
            REBALANCE_IN_PROGRESS
        );
    }
    g.tick(t0 + Duration::from_secs(29));
    assert!(rb.try_recv().is_err());
    g.tick(t0 + Duration::from_secs(31));
    let jb = rb.try_recv().expect("b completes after the deadline");
    assert_eq!(jb.leader, b);
    assert!(!g.members.contains_key(&a));
}

#[test]
fn simple_commits_only_for_memberless_groups() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    assert_eq!(g.check_commit("", -1), NONE);
    let a = join_new(&mut g, t0);
    let _rx = join(&mut g, &a, t0);
    assert_eq!(g.check_commit("", -1), UNKNOWN_MEMBER_ID);
    assert_eq!(g.check_commit(&a, 0), ILLEGAL_GENERATION);
    assert_eq!(g.check_commit(&a, 1), REBALANCE_IN_PROGRESS);
}

#[test]
fn unknown_member_rejoin_is_refused_and_inconsistent_protocols_are_rejected() {
    let t0 = Instant::now();
    let mut g = Group::new("g", Duration::ZERO);
    let mut r = join(&mut g, "ghost", t0);
    assert_eq!(r.try_recv().expect("answer").error, UNKNOWN_MEMBER_ID);
    let a = join_new(&mut g, t0);
    let _rx = join(&mut g, &a, t0);
    let (tx, mut rx) = oneshot::channel();
    let mut other = req("");
    other.protocols = vec![("roundrobin-only".into(), Bytes::new())];
    g.join(other, t0, tx);
    assert_eq!(
        rx.try_recv().expect("answer").error,
        INCONSISTENT_GROUP_PROTOCOL
    );
}
