use chorus_core::online::{Budget, Online, ENTRY_BYTES};

#[test]
fn a_key_is_online_while_any_node_reports_it() {
    let mut o = Online::new();
    o.delta(1, "ana", 1);
    o.delta(2, "ana", 1);
    o.delta(1, "ana", 1);
    assert!(o.is_online("ana"));
    o.delta(1, "ana", -2);
    assert!(o.is_online("ana"), "node 2 still reports ana");
    o.delta(2, "ana", -1);
    assert!(!o.is_online("ana"));
    assert!(o.is_empty());
    assert_eq!(o.reporters().count(), 0);
}

#[test]
fn a_leave_without_its_join_changes_nothing() {
    let mut o = Online::new();
    o.delta(1, "bo", -1);
    assert!(!o.is_online("bo"));
    assert!(o.is_empty());
    o.delta(1, "bo", 1);
    o.delta(2, "bo", -3);
    assert!(o.is_online("bo"));
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn a_lost_node_takes_its_presences_and_nothing_else() {
    let mut o = Online::new();
    for i in 0..1_000 {
        let key = format!("user-{i}");
        o.delta(1 + i % 3, &key, 1);
        if i % 10 == 0 {
            // Also present through a channel on node 1.
            o.delta(1, &key, 1);
        }
    }
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![1, 2, 3]);
    let gone = o.retain_nodes(|n| n != 2);
    // Node 2 reported users i with i % 3 == 1; those also on node 1
    // (i % 10 == 0) stay.
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..1_000)
            .filter(|i| i % 3 == 1 && i % 10 != 0)
            .map(|i| format!("user-{i}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(gone, expected);
    assert!(
        o.is_online("user-10"),
        "10 % 3 == 1 but node 1 reports it too"
    );
    assert!(!o.is_online("user-1"));
    assert!(o.is_online("user-0"));
    assert_eq!(o.len(), 1_000 - expected.len());
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![1, 3]);
    // Nothing more to drop: a second sweep is free and finds nothing.
    assert!(o.retain_nodes(|n| n != 2).is_empty());
}

#[test]
fn reporters_follow_joins_and_leaves() {
    let mut o = Online::new();
    o.delta(7, "a", 1);
    o.delta(7, "b", 1);
    o.delta(9, "a", 1);
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![7, 9]);
    o.delta(7, "a", -1);
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![7, 9]);
    o.delta(7, "b", -1);
    assert_eq!(o.reporters().collect::<Vec<_>>(), vec![9]);
    assert!(o.retain_nodes(|_| true).is_empty());
    assert_eq!(o.retain_nodes(|_| false), vec!["a".to_string()]);
    assert!(o.is_empty());
}

#[test]
fn a_copy_replaces_what_a_node_reported() {
    let mut o = Online::new();
    o.delta(1, "ana", 2);
    o.delta(2, "ana", 1);
    o.delta(2, "bo", 1);
    assert_eq!(
        o.reported_by(2),
        vec![("ana".to_string(), 1), ("bo".to_string(), 1)]
    );
    assert_eq!(o.reported_by(3), vec![]);
    // Node 2's copy, in two parts: the first replaces, the second adds.
    let roomy = Budget {
        here: 1,
        bytes: 1 << 20,
    };
    assert_eq!(o.set_node(2, &[("cy".to_string(), 2)], true, roomy), 0);
    assert_eq!(o.set_node(2, &[("di".to_string(), 1)], false, roomy), 0);
    assert!(o.is_online("ana"), "node 1 still reports ana");
    assert!(!o.is_online("bo"));
    assert_eq!(
        o.reported_by(2),
        vec![("cy".to_string(), 2), ("di".to_string(), 1)]
    );
    assert_eq!(o.reported_by(1), vec![("ana".to_string(), 2)]);
    o.delta(2, "cy", -2);
    assert!(!o.is_online("cy"));
}

#[test]
fn peers_send_copies_to_joiners_and_drop_nodes_that_left() {
    use chorus_core::online::{Peers, ABSENT_LOOKS};
    let mut o = Online::new();
    let mut p = Peers::new(1);
    assert_eq!(p.look(&[1, 2, 3], &mut o), vec![2, 3]);
    assert_eq!(p.members(), &[2, 3]);
    assert_eq!(p.look(&[1, 2, 3], &mut o), Vec::<u64>::new());
    o.delta(1, "ana", 1);
    o.delta(2, "bo", 1);
    o.delta(3, "cy", 1);
    // Node 4 reports before this node lists it: kept for a few looks.
    o.delta(4, "di", 1);
    // Node 3 leaves: its reports go at once; node 4 is not a member yet.
    assert_eq!(p.look(&[1, 2], &mut o), Vec::<u64>::new());
    assert!(!o.is_online("cy"));
    assert!(o.is_online("di"));
    // Node 4 shows up: kept, and it gets a copy.
    assert_eq!(p.look(&[1, 2, 4], &mut o), vec![4]);
    for _ in 0..ABSENT_LOOKS + 1 {
        p.look(&[1, 2, 4], &mut o);
    }
    assert!(o.is_online("di"));
    // Node 5 reports and never becomes a member: dropped after ABSENT_LOOKS.
    o.delta(5, "ed", 1);
    for i in 1..ABSENT_LOOKS {
        p.look(&[1, 2, 4], &mut o);
        assert!(o.is_online("ed"), "look {i}");
    }
    p.look(&[1, 2, 4], &mut o);
    assert!(!o.is_online("ed"));
    // This node's own reports stay whatever the membership.
    p.look(&[], &mut o);
    assert!(o.is_online("ana"));
    assert!(!o.is_online("bo"));
}

#[test]
fn other_nodes_reports_are_held_within_the_byte_budget() {
    // Room for two entries of 2-byte keys from other nodes.
    let budget = Budget {
        here: 1,
        bytes: 2 * (2 + ENTRY_BYTES),
    };
    let mut o = Online::new();
    let copy: Vec<(String, u32)> = ["aa", "bb", "cc"]
        .iter()
        .map(|k| (k.to_string(), 1))
        .collect();
    assert_eq!(
        o.set_node(2, &copy, true, budget),
        1,
        "the third key is refused"
    );
    assert!(o.is_online("bb") && !o.is_online("cc"));
    assert_eq!(o.bytes_from_others(1), budget.bytes);
    // Full: another node's new key is refused, a key it already holds
    // counts up, this node's own reports always pass.
    assert!(!o.delta_within(3, "dd", 1, budget));
    assert!(o.delta_within(2, "aa", 1, budget));
    assert!(o.delta_within(1, "zz-long-local-key", 1, budget));
    assert_eq!(o.bytes_from_others(1), budget.bytes);
    // A leave frees room; a lost node frees its share.
    assert!(o.delta_within(2, "aa", -2, budget));
    assert!(o.delta_within(3, "dd", 1, budget));
    assert_eq!(o.retain_nodes(|n| n != 2), vec!["bb".to_string()]);
    assert_eq!(o.bytes_from_others(1), 2 + ENTRY_BYTES);
    // A replacing copy drops the node's old share before it is counted.
    assert_eq!(o.set_node(3, &copy[..2], true, budget), 0);
    assert!(!o.is_online("dd"));
}
