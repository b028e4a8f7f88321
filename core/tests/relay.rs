use chorus_core::relay::{plan, regional, Batch, Hub, Hubs, Outlet};

const HERE: u64 = 1;

fn o(node: u64, socket: u64) -> Outlet {
    Outlet {
        node,
        relay: node * 100,
        socket,
    }
}

#[test]
fn one_node_is_all_local_and_costs_one_call_per_serializer() {
    let p = plan(
        HERE,
        [("v1", vec![o(1, 3), o(1, 1)]), ("v2", vec![o(1, 2)])],
    );
    assert_eq!(p.local, vec![("v1", vec![1, 3]), ("v2", vec![2])]);
    assert!(p.remote.is_empty());
    assert_eq!(p.messages(), 2);
}

#[test]
fn each_remote_node_gets_one_batch_with_every_serializer() {
    // 3 nodes, subscribers of both serializers spread over them.
    let v1 = vec![o(2, 7), o(1, 5), o(3, 9), o(2, 8), o(1, 6)];
    let v2 = vec![o(3, 4), o(2, 3)];
    let p = plan(HERE, [(1u8, v1), (2u8, v2)]);
    assert_eq!(p.local, vec![(1, vec![5, 6])]);
    assert_eq!(
        p.remote,
        vec![
            Batch {
                node: 2,
                relay: 200,
                parts: vec![(1, vec![7, 8]), (2, vec![3])],
            },
            Batch {
                node: 3,
                relay: 300,
                parts: vec![(1, vec![9]), (2, vec![4])],
            },
        ]
    );
    // One host call here, one message per other node: not one per socket.
    assert_eq!(p.messages(), 3);
}

#[test]
fn many_subscribers_cost_one_message_per_node() {
    let outlets: Vec<Outlet> = (0..5_000).map(|i| o(1 + i % 3, i)).collect();
    let p = plan(HERE, [((), outlets)]);
    assert_eq!(p.remote.len(), 2);
    let sockets: usize = p.local.iter().map(|(_, s)| s.len()).sum::<usize>()
        + p.remote
            .iter()
            .flat_map(|b| &b.parts)
            .map(|(_, s)| s.len())
            .sum::<usize>();
    assert_eq!(sockets, 5_000, "every socket exactly once");
    assert_eq!(p.messages(), 3);
}

#[test]
fn a_restarted_relay_gets_its_own_batch() {
    let old = o(2, 1);
    let new = Outlet {
        relay: 999,
        ..o(2, 2)
    };
    let p = plan(HERE, [("v1", vec![new, old])]);
    assert_eq!(p.remote.len(), 2);
    assert_eq!(
        p.remote
            .iter()
            .map(|b| (b.relay, b.parts.clone()))
            .collect::<Vec<_>>(),
        vec![(200, vec![("v1", vec![1])]), (999, vec![("v1", vec![2])])]
    );
}

#[test]
fn empty_groups_cost_nothing_and_input_order_does_not_matter() {
    let p = plan(HERE, [("v1", Vec::new()), ("v2", Vec::new())]);
    assert_eq!(p.messages(), 0);
    let a = plan(HERE, [("v1", vec![o(3, 1), o(2, 2), o(1, 3)])]);
    let b = plan(HERE, [("v1", vec![o(1, 3), o(2, 2), o(3, 1)])]);
    assert_eq!(a, b);
}

// Regions: outlets whose relay is 100 + node.
fn ro(node: u64, socket: u64) -> Outlet {
    Outlet {
        node,
        relay: 100 + node,
        socket,
    }
}

fn region(node: u64) -> Option<&'static str> {
    match node {
        1 | 2 => Some("a"),
        3..=5 => Some("b"),
        6 => Some("c"),
        _ => None,
    }
}

fn nodes(batches: &[Batch<u8>]) -> Vec<u64> {
    batches.iter().map(|b| b.node).collect()
}

#[test]
fn each_other_region_gets_one_message_through_a_kept_hub() {
    let mut hubs = Hubs::default();
    let groups = || {
        [
            (
                0u8,
                vec![ro(2, 1), ro(3, 2), ro(4, 3), ro(5, 4), ro(6, 5), ro(9, 6)],
            ),
            (1u8, vec![ro(4, 7)]),
        ]
    };
    let p = plan(1, groups());
    let r = regional(p.remote, "a", region, &mut hubs, 1);
    // Own region (2) and an unknown node (9) directly; region c has a
    // single node, its own hub: directly too.
    assert_eq!(nodes(&r.direct), [2, 6, 9]);
    assert_eq!(r.crossings.len(), 1);
    let b = &r.crossings[0];
    assert_eq!(b.region, "b");
    assert_eq!(
        b.hub,
        Hub {
            node: 4,
            relay: 104
        },
        "seed 1 of [3, 4, 5]"
    );
    assert_eq!(nodes(&b.batches), [3, 4, 5]);
    assert_eq!(b.batches[1].parts, vec![(0, vec![3]), (1, vec![7])]);
    // The hub is kept while it is a member, even without subscribers,
    // whatever the seed: node 3's frames keep one path.
    let p = plan(1, [(0u8, vec![ro(3, 2)])]);
    let r = regional(p.remote, "a", region, &mut hubs, 0);
    assert!(r.direct.is_empty());
    assert_eq!(r.crossings[0].hub.node, 4);
    assert_eq!(nodes(&r.crossings[0].batches), [3]);
    // Node 4 left: a new hub among the nodes with subscribers.
    let gone = |n: u64| if n == 4 { None } else { region(n) };
    let p = plan(1, [(0u8, vec![ro(3, 2), ro(5, 4)])]);
    let r = regional(p.remote, "a", gone, &mut hubs, 1);
    assert_eq!(r.crossings[0].hub.node, 5);
    assert_eq!(hubs.get("b").map(|h| h.node), Some(5));
}

#[test]
fn a_restarted_hub_relay_is_followed_and_one_region_alone_is_direct() {
    let mut hubs = Hubs::default();
    let p = plan(1, [(0u8, vec![ro(3, 1)])]);
    let r = regional(p.remote, "a", region, &mut hubs, 7);
    assert_eq!(nodes(&r.direct), [3]);
    assert!(r.crossings.is_empty());
    assert_eq!(
        hubs.get("b"),
        Some(Hub {
            node: 3,
            relay: 103
        })
    );
    let moved = Outlet {
        node: 3,
        relay: 555,
        socket: 1,
    };
    let p = plan(1, [(0u8, vec![moved, ro(5, 2)])]);
    let r = regional(p.remote, "a", region, &mut hubs, 7);
    assert_eq!(
        r.crossings[0].hub,
        Hub {
            node: 3,
            relay: 555
        }
    );
    // Everything in one region: nothing crosses.
    let p = plan(3, [(0u8, vec![ro(4, 1), ro(5, 2)])]);
    let r = regional(p.remote, "b", region, &mut Hubs::default(), 0);
    assert_eq!(nodes(&r.direct), [4, 5]);
    assert!(r.crossings.is_empty());
}
