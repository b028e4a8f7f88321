use std::collections::HashMap;

use chorus_core::placement::{directory_name, handover, Placement, DIRECTORIES};
use chorus_core::ring::HashRing;

const TOPICS: usize = 60_000;

fn topic(i: usize) -> String {
    format!("realtime:room:{i}:chat")
}

fn topics() -> Vec<String> {
    (0..TOPICS).map(topic).collect()
}

fn nodes(names: &[&str]) -> Placement<String> {
    Placement::new(names.iter().map(|n| n.to_string()))
}

const SIX: [&str; 6] = ["node-1", "node-2", "node-3", "node-4", "node-5", "node-6"];

fn shares(p: &Placement<String>, topics: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for t in topics {
        let home = p.home(t).expect("a member");
        *counts.entry(home.node.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn homes_are_balanced_over_three_and_six_nodes() {
    let all = topics();
    for n in [3, 6] {
        let p = nodes(&SIX[..n]);
        let counts = shares(&p, &all);
        assert_eq!(counts.len(), n, "every node is some topic's home");
        let mean = TOPICS / n;
        for (node, c) in &counts {
            // 128 vnodes per node: a share's spread is ~9 %; ±30 % is > 3σ.
            assert!(
                c.abs_diff(mean) * 10 <= mean * 3,
                "{n} nodes: {node} is home of {c}, mean {mean}"
            );
        }
    }
}

#[test]
fn a_joining_node_takes_only_its_share_and_nothing_else_moves() {
    let all = topics();
    let old = nodes(&SIX[..3]);
    let new = nodes(&SIX[..4]);
    let h = handover(&old, &new, all.iter().map(String::as_str));
    assert_eq!(h.moved() + h.kept, TOPICS);
    for m in &h.moves {
        assert_eq!(
            m.to.as_deref(),
            Some("node-4"),
            "{} moved elsewhere",
            m.topic
        );
        assert_ne!(m.from.as_deref(), Some("node-4"));
    }
    // Ideal: a quarter of the topics.
    let ideal = TOPICS / 4;
    assert!(
        h.moved().abs_diff(ideal) * 4 <= ideal,
        "moved {} of {TOPICS}, ideal {ideal}",
        h.moved()
    );
    // Counted per (from, to): three old homes give to the new one.
    let counts = h.counts();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts.values().sum::<usize>(), h.moved());
}

#[test]
fn a_leaving_node_hands_over_exactly_its_topics() {
    let all = topics();
    let old = nodes(&SIX);
    let new = nodes(&["node-1", "node-2", "node-4", "node-5", "node-6"]);
    let h = handover(&old, &new, all.iter().map(String::as_str));
    let gone = "node-3".to_string();
    let homed_there = all
        .iter()
        .filter(|t| old.home(t).map(|h| h.node) == Some(&gone))
        .count();
    assert_eq!(h.moved(), homed_there);
    assert_eq!(h.leaving(&gone).count(), homed_there);
    for m in &h.moves {
        assert_eq!(m.from.as_deref(), Some("node-3"));
        assert!(m.to.is_some());
    }
    // Nobody else hands anything over.
    assert_eq!(h.leaving(&"node-1".to_string()).count(), 0);
}

#[test]
fn a_topic_that_keeps_its_node_keeps_its_directory() {
    let old = nodes(&SIX[..3]);
    let new = nodes(&SIX[..5]);
    let single = nodes(&["solo"]);
    for t in topics().iter().take(5_000) {
        let (a, b) = (old.home(t).expect("home"), new.home(t).expect("home"));
        assert_eq!(a.directory, b.directory);
        assert_eq!(a.directory, single.directory(t));
        assert!(a.directory < DIRECTORIES);
    }
}

#[test]
fn every_node_computes_the_same_homes() {
    // Same members given in another order, with duplicates: same layout.
    let forward = nodes(&SIX);
    let mut rev = SIX.to_vec();
    rev.reverse();
    rev.push("node-2");
    let backward = nodes(&rev);
    assert_eq!(backward.len(), 6);
    for t in topics().iter().take(10_000) {
        assert_eq!(forward.home(t), backward.home(t));
    }
    // Pinned: nodes running different builds must agree. A change here
    // reshuffles every cluster's topics.
    let pinned: Vec<(&str, u32)> = [
        "realtime:room:1:chat",
        "realtime:lobby",
        "realtime:room:42:audio",
    ]
    .iter()
    .map(|t| {
        let h = forward.home(t).expect("home");
        (h.node.as_str(), h.directory)
    })
    .collect();
    assert_eq!(
        pinned,
        vec![("node-6", 2), ("node-2", 0), ("node-2", 1)],
        "placement layout changed"
    );
}

#[test]
fn one_node_is_the_single_node_layout() {
    // Without a cluster the node ring has one member and the directory is
    // the one the 4-shard ring of one node always chose.
    let p = nodes(&["solo"]);
    let mut old = HashRing::new(64);
    for i in 0..DIRECTORIES {
        old.add(directory_name(i));
    }
    for t in topics().iter().take(20_000) {
        let home = p.home(t).expect("home");
        assert_eq!(home.node, "solo");
        assert_eq!(
            Some(&directory_name(home.directory)),
            old.owner(t),
            "{t} changed directory"
        );
    }
    let mut per_dir = [0usize; DIRECTORIES as usize];
    for t in &topics() {
        per_dir[p.directory(t) as usize] += 1;
    }
    assert!(per_dir.iter().all(|&c| c > TOPICS / 8), "{per_dir:?}");
}

#[test]
fn no_node_no_home_and_everything_moves() {
    let empty: Placement<String> = Placement::new(Vec::new());
    assert!(empty.is_empty());
    assert_eq!(empty.home("realtime:x"), None);
    let one = nodes(&["a"]);
    let all = topics();
    let h = handover(&one, &empty, all.iter().map(String::as_str));
    assert_eq!((h.moved(), h.kept), (TOPICS, 0));
    assert!(h.moves.iter().all(|m| m.to.is_none()));
    let same = handover(&one, &nodes(&["a"]), all.iter().map(String::as_str));
    assert_eq!((same.moved(), same.kept), (0, TOPICS));
}
