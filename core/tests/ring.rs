use std::collections::HashMap;

use chorus_core::ring::{shard_of, stable_hash64, HashRing};

const KEYS: usize = 100_000;

fn key(i: usize) -> String {
    format!("realtime:room-{i}")
}

fn ring(names: &[&str], vnodes: u32) -> HashRing<String> {
    let mut r = HashRing::new(vnodes);
    for n in names {
        assert!(r.add(n.to_string()));
    }
    r
}

const EIGHT: [&str; 8] = [
    "node-a", "node-b", "node-c", "node-d", "node-e", "node-f", "node-g", "node-h",
];

#[test]
fn stable_hash_is_pinned() {
    // These values are part of the cluster contract: nodes running
    // different builds must agree on owners. A change here is a breaking
    // change of the ring layout.
    assert_eq!(stable_hash64(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(stable_hash64(b"realtime:room-1"), 0x96e5_f13f_f36d_c2a5);
}

#[test]
fn load_is_balanced_across_eight_nodes() {
    // 8 nodes × 128 vnodes, 100k keys. With v vnodes per node a node's share
    // has a relative standard deviation of about 1/√v ≈ 8.8%, so ±35% is
    // about 4σ. The layout is deterministic; for these names the observed
    // extremes are -11.9% and +28.9% (this particular name set is an
    // unlucky draw: other 8-name sets measured 9-17% max at 128 vnodes).
    let r = ring(&EIGHT, 128);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for i in 0..KEYS {
        *counts.entry(r.owner(&key(i)).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 8);
    let mean = KEYS / 8;
    for (node, &c) in &counts {
        let dev = (c as f64 - mean as f64).abs() / mean as f64;
        assert!(dev <= 0.35, "{node}: {c} keys, mean {mean}");
    }
}

#[test]
fn more_vnodes_tighten_the_balance() {
    // At 1024 vnodes the spread is ~3%; measured max deviation 6.1%.
    let r = ring(&EIGHT, 1024);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for i in 0..KEYS {
        *counts.entry(r.owner(&key(i)).unwrap()).or_default() += 1;
    }
    let mean = KEYS / 8;
    for (node, &c) in &counts {
        assert!(
            c.abs_diff(mean) <= mean / 10,
            "{node}: {c} keys, mean {mean}"
        );
    }
}

#[test]
fn adding_a_ninth_node_moves_about_a_ninth_only_onto_it() {
    let before = ring(&EIGHT, 128);
    let mut after = before.clone();
    after.add("node-i".to_string());
    let mut moved = 0;
    for i in 0..KEYS {
        let (a, b) = (
            before.owner(&key(i)).unwrap(),
            after.owner(&key(i)).unwrap(),
        );
        if a != b {
            assert_eq!(b, "node-i", "key {i} moved from {a} to {b}");
            moved += 1;
        }
    }
    // Ideal is 1/9 (11 111 keys); the new node's share has the same ~9%
    // spread as any node's, so allow ±25% (observed: 12 029, +8.3%).
    let ideal = KEYS as f64 / 9.0;
    assert!(
        (moved as f64 - ideal).abs() <= ideal * 0.25,
        "moved {moved}"
    );
}

#[test]
fn removing_a_node_moves_only_its_keys() {
    let before = ring(&EIGHT, 128);
    let mut after = before.clone();
    assert!(after.remove(&"node-c".to_string()));
    assert!(!after.remove(&"node-c".to_string()));
    for i in 0..KEYS {
        let (a, b) = (
            before.owner(&key(i)).unwrap(),
            after.owner(&key(i)).unwrap(),
        );
        if a == "node-c" {
            assert_ne!(b, "node-c");
        } else {
            assert_eq!(a, b, "key {i} moved although its node stayed");
        }
    }
}

#[test]
fn owners_do_not_depend_on_insertion_order() {
    let forward = ring(&EIGHT, 64);
    let mut rev = EIGHT;
    rev.reverse();
    let backward = ring(&rev, 64);
    let mut churned = ring(&["node-z"], 64);
    for n in EIGHT {
        churned.add(n.to_string());
    }
    churned.remove(&"node-z".to_string());
    for i in 0..10_000 {
        let k = key(i);
        assert_eq!(forward.owner(&k), backward.owner(&k));
        assert_eq!(forward.owner(&k), churned.owner(&k));
    }
}

#[test]
fn empty_and_single_node_rings() {
    let mut r: HashRing<String> = HashRing::new(16);
    assert!(r.is_empty());
    assert_eq!(r.owner("x"), None);
    r.add("solo".into());
    assert!(!r.add("solo".into()));
    assert_eq!(r.len(), 1);
    assert_eq!(r.owner("x").map(String::as_str), Some("solo"));
    assert_eq!(r.nodes().collect::<Vec<_>>(), vec!["solo"]);
}

#[test]
fn shard_of_is_stable_in_range_and_spread() {
    assert_eq!(
        shard_of("user-42", 16),
        (stable_hash64(b"user-42") % 16) as usize
    );
    assert_eq!(shard_of("anything", 0), 0);
    let mut counts = [0usize; 16];
    for i in 0..KEYS {
        counts[shard_of(&format!("user-{i}"), 16)] += 1;
    }
    let mean = KEYS / 16;
    for c in counts {
        assert!(c.abs_diff(mean) < mean / 20, "{counts:?}");
    }
}
