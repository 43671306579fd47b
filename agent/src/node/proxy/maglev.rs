//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium uses it for traffic from
//! outside the node: every node builds the same table from the same backend names, so a flow
//! hashed on any node reaches the same backend, and a backend change moves few flows.

/// Builds the lookup table of size `m` (a prime) for `backends`, given by stable names
/// (`address:port/proto`). Each entry is an index into `backends`. An empty input gives an
/// empty table.
pub fn table(backends: &[String], m: usize) -> Vec<u32> {
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    // Order by name so every node, whatever order its API list came in, builds the same table.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|a, b| backends[*a].cmp(&backends[*b]));
    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = backends[i].as_bytes();
            let offset = fnv1a(name, 0xcbf2_9ce4_8422_2325) % m64;
            let skip = fnv1a(name, 0x8422_2325_cbf2_9ce4) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entry = vec![u32::MAX; m];
    let mut filled = 0usize;
    'fill: loop {
        for (k, &i) in order.iter().enumerate() {
            let (offset, skip) = perms[k];
            let mut c = ((offset + next[k] * skip) % m64) as usize;
            while entry[c] != u32::MAX {
                next[k] += 1;
                c = ((offset + next[k] * skip) % m64) as usize;
            }
            entry[c] = i as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// 64-bit FNV-1a with a chosen basis (two bases give Maglev's two independent hashes).
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.1.{i}:8080/TCP")).collect()
    }

    #[test]
    fn every_entry_is_filled_and_shares_are_even() {
        let backends = names(10);
        let t = table(&backends, 16381);
        assert_eq!(t.len(), 16381);
        let mut counts = [0usize; 10];
        for e in &t {
            counts[*e as usize] += 1;
        }
        // Maglev's guarantee: shares differ by little (here within 2% of M/N).
        for c in counts {
            assert!((1600..=1677).contains(&c), "uneven share {c} in {counts:?}");
        }
    }

    #[test]
    fn same_table_whatever_the_input_order() {
        let backends = names(5);
        let mut reversed = backends.clone();
        reversed.reverse();
        let a: Vec<&String> = table(&backends, 251)
            .iter()
            .map(|i| &backends[*i as usize])
            .collect();
        let b: Vec<&String> = table(&reversed, 251)
            .iter()
            .map(|i| &reversed[*i as usize])
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn removing_a_backend_moves_few_other_flows() {
        let backends = names(10);
        let before = table(&backends, 16381);
        let fewer: Vec<String> = backends[..9].to_vec();
        let after = table(&fewer, 16381);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 9 && b != a)
            .count();
        // Only the removed backend's share must move; Maglev moves a little more, not a reshuffle.
        assert!(
            moved < 16381 / 10,
            "{moved} entries of surviving backends moved"
        );
    }

    #[test]
    fn empty_backends_give_an_empty_table() {
        assert!(table(&[], 16381).is_empty());
    }
}
