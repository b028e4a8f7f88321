use chorus_core::relay::{plan, Batch, Outlet};

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
