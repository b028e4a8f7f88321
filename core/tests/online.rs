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

mod rebuild {
    use chorus_core::online::{report_parts, Online, Rebuild, ENTRY_BYTES};
    use chorus_core::ring::shard_of;

    const HERE: u64 = 7;

    #[test]
    fn a_restarted_shard_takes_back_what_the_channels_hold() {
        let mut o = Online::new();
        let mut r = Rebuild::new(HERE, 0..2);
        r.listed(0, &[10]);
        r.listed(1, &[11]);
        assert!(!r.is_done());
        // Both channels hold ana; one holds bo twice.
        r.counts(10, &[("ana".into(), 1), ("bo".into(), 2)]);
        r.counts(11, &[("ana".into(), 1)]);
        assert!(r.is_done());
        assert_eq!(r.finish(&mut o), (0, 0));
        assert!(o.is_online("ana") && o.is_online("bo"));
        // Every leave after the rebuild takes its share; no double count.
        o.delta(HERE, "ana", -1);
        assert!(o.is_online("ana"), "channel 11 still holds ana");
        o.delta(HERE, "ana", -1);
        o.delta(HERE, "bo", -2);
        assert!(o.is_empty(), "{o:?}");
    }

    #[test]
    fn a_delta_sent_before_the_re_report_is_not_counted_twice() {
        let mut o = Online::new();
        let mut r = Rebuild::new(HERE, [0]);
        // Channel 10 tracks cy, then re-reports (cy included), then cy leaves.
        assert!(r.delta(HERE, 10, "cy", 1));
        r.counts(10, &[("cy".into(), 1)]);
        assert!(
            !r.delta(HERE, 10, "cy", -1),
            "after the re-report deltas count"
        );
        // The directory's list may come after the channel's counts.
        r.listed(0, &[10]);
        assert!(r.is_done());
        r.finish(&mut o);
        assert!(!o.is_online("cy"), "{o:?}");
    }

    #[test]
    fn a_leave_racing_the_re_report_is_not_lost_either() {
        // dee was held before the crash; her leave reaches the shard before
        // the channel re-reports (without dee): she ends offline, and the
        // leave is not applied on top of the counts.
        let mut o = Online::new();
        let mut r = Rebuild::new(HERE, [0]);
        r.listed(0, &[10]);
        assert!(r.delta(HERE, 10, "dee", -1));
        assert!(r.delta(HERE, 10, "eve", -1));
        r.counts(10, &[("eve".into(), 2)]);
        r.finish(&mut o);
        assert!(!o.is_online("dee"));
        assert!(o.is_online("eve"));
        o.delta(HERE, "eve", -1);
        assert!(o.is_online("eve"), "eve had two presences, one left");
    }

    #[test]
    fn channels_started_since_and_silent_ones_count_their_deltas_at_the_end() {
        let mut o = Online::new();
        let mut r = Rebuild::new(HERE, 0..2);
        r.listed(0, &[10, 12]);
        // Channel 11 started after the directories named theirs.
        assert!(r.delta(HERE, 11, "fay", 1));
        assert!(r.delta(HERE, 11, "gus", 1));
        assert!(r.delta(HERE, 11, "gus", -1));
        // Channel 12 never answers (it died); it reported a join meanwhile.
        assert!(r.delta(HERE, 12, "hal", 1));
        r.counts(10, &[]);
        assert!(!r.is_done(), "directory 1 and channel 12 are awaited");
        assert!(
            !o.is_online("fay"),
            "the counts swap in when the rebuild ends"
        );
        assert_eq!(r.finish(&mut o), (1, 1));
        assert!(o.is_online("fay") && o.is_online("hal"));
        assert!(!o.is_online("gus"));
    }

    #[test]
    fn a_crashed_channels_share_goes_at_the_swap_and_answers_stay_meanwhile() {
        // Channel 9 held ana and crashed (no leave reported); channel 10
        // holds bo; another node reports cy.
        let mut o = Online::new();
        o.delta(HERE, "ana", 1);
        o.delta(HERE, "bo", 1);
        o.delta(HERE + 1, "cy", 1);
        let mut r = Rebuild::new(HERE, [0]);
        r.listed(0, &[10]);
        // ana rejoins on channel 11 (started since): the shard counts the
        // delta live, the rebuild holds it for the end.
        o.delta(HERE, "ana", 1);
        assert!(r.delta(HERE, 11, "ana", 1));
        r.counts(10, &[("bo".into(), 1)]);
        assert!(
            o.is_online("ana") && o.is_online("bo"),
            "live answers meanwhile"
        );
        assert_eq!(r.finish(&mut o), (0, 0));
        assert_eq!(
            o.reported_by(HERE),
            vec![("ana".to_string(), 1), ("bo".to_string(), 1)]
        );
        assert!(o.is_online("cy"), "other nodes' reports stay");
        // ana leaves channel 11: offline (the crashed channel's +1 is gone).
        o.delta(HERE, "ana", -1);
        assert!(!o.is_online("ana"));
    }

    #[test]
    fn other_nodes_deltas_are_never_held() {
        let mut o = Online::new();
        let mut r = Rebuild::new(HERE, [0]);
        assert!(!r.delta(HERE + 1, 10, "ivy", 1));
        o.delta(HERE + 1, "ivy", 1);
        r.listed(0, &[]);
        assert!(r.is_done());
        assert_eq!(r.finish(&mut o), (0, 0));
        assert_eq!(o.reported_by(HERE + 1), vec![("ivy".to_string(), 1)]);
    }

    #[test]
    fn a_re_report_holds_the_shards_keys_in_bounded_parts() {
        let keys: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let counts = keys.iter().map(|k| (k.as_str(), 1 + k.len() % 3));
        let part_bytes = 40 * (ENTRY_BYTES + 9);
        let parts = report_parts(counts.clone(), 3, 16, part_bytes);
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for part in &parts {
            assert!(!part.is_empty());
            let bytes: usize = part.iter().map(|(k, _)| k.len() + ENTRY_BYTES).sum();
            assert!(bytes <= part_bytes, "{bytes}");
            seen.extend(part.iter().cloned());
        }
        let want: Vec<(String, u32)> = counts
            .filter(|(k, _)| shard_of(k, 16) == 3)
            .map(|(k, n)| (k.to_string(), n as u32))
            .collect();
        assert_eq!(seen, want);
        // Nothing hashes there: one empty part still answers the shard.
        assert_eq!(
            report_parts([("x", 1)], shard_of("x", 16) ^ 1, 16, 100),
            vec![vec![]]
        );
        // A key bigger than a part goes alone.
        let big = "k".repeat(500);
        assert_eq!(report_parts([(big.as_str(), 1)], 0, 1, 100).len(), 1);
    }
}
