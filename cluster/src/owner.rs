//! Which node owns a room: rendezvous (highest-random-weight) hashing over
//! the configured node list.
//!
//! Invariant: the owner depends only on the room and the *set* of
//! configured nodes (not their order, not which are up), and taking a node
//! out of the set moves only the rooms it owned.

/// The node of `nodes` that owns `room`. `nodes` must not be empty (a
/// validated [`crate::ClusterConfig`] never is).
pub fn owner_of(room: u64, nodes: &[u32]) -> u32 {
    assert!(!nodes.is_empty(), "a cluster has at least one node");
    let mut best = (0u64, u32::MAX);
    for &node in nodes {
        let s = score(room, node);
        // Ties (astronomically rare) go to the smaller id, whatever the
        // order of the list.
        if s > best.0 || (s == best.0 && node < best.1) {
            best = (s, node);
        }
    }
    best.1
}

/// The weight of `node` for `room`: a 64-bit mix of both (SplitMix64's
/// finalizer, applied twice so that neither input's low bits dominate).
fn score(room: u64, node: u32) -> u64 {
    mix(room ^ mix(u64::from(node).wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn rooms_spread_evenly_and_order_does_not_matter() {
        let nodes = [1, 2, 3];
        let mut counts = [0usize; 3];
        for room in 1..=90_000u64 {
            let o = owner_of(room, &nodes);
            assert_eq!(o, owner_of(room, &[3, 1, 2]));
            counts[(o - 1) as usize] += 1;
        }
        for c in counts {
            assert!((28_500..=31_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_rooms() {
        let all = [4, 7, 9, 12];
        let fewer = [4, 7, 12];
        let mut moved = 0;
        for room in 0..20_000u64 {
            let (before, after) = (owner_of(room, &all), owner_of(room, &fewer));
            if before == 9 {
                moved += 1;
                assert_ne!(after, 9);
            } else {
                assert_eq!(before, after, "room {room}");
            }
        }
        assert!(moved > 4_000, "node 9 owned {moved} rooms");
    }

    #[test]
    fn one_node_owns_everything() {
        for room in [0, 1, u64::MAX] {
            assert_eq!(owner_of(room, &[5]), 5);
        }
    }
}
