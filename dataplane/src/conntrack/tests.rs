use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::entry::ALL_STATES;
use super::pages::{Mapped, anon_huge_bytes};
use super::table::rest_of_line;
use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

fn entry(key: FlowKey, state: State, now: u64) -> Entry {
    Entry::new(key, state, now)
}

fn key(n: u32) -> FlowKey {
    FlowKey::new(17, ip(1), (n % 60000) as u16, ip(2 + (n / 60000) as u8), 53).0
}

/// The hint a burst's entry pass takes for `k`.
fn hint_of(t: &Table, k: &FlowKey) -> Hint {
    t.probe().prefetch_entry(t.hash(k))
}

fn none(_: &Entry, _: EndReason) {
    panic!("nothing should end here");
}

#[test]
fn both_directions_share_one_key() {
    let (k1, fwd) = FlowKey::new(6, ip(9), 40000, ip(3), 80);
    let (k2, rev) = FlowKey::new(6, ip(3), 80, ip(9), 40000);
    assert_eq!(k1, k2);
    assert!(!fwd && rev, "side a is the lower address");
    let v6a: IpAddr = "2001:2::1".parse().unwrap();
    let v6b: IpAddr = "2001:2::2".parse().unwrap();
    let (k6, _) = FlowKey::new(6, v6b, 1, v6a, 2);
    assert_ne!(k6, k1);
    assert_eq!(k1.addr_a(), ip(3));
    assert_eq!(k1.addr_b(), ip(9));
    assert_eq!((k6.addr_a(), k6.addr_b()), (v6a, v6b));
}

proptest! {
    /// The hand-written equality is field-by-field equality: keys that differ in any one
    /// field (each address word, each port, the protocol, the family) differ.
    #[test]
    fn keys_are_equal_exactly_when_every_field_is(
        words in any::<[u64; 4]>(),
        ports in any::<[u16; 2]>(),
        proto in any::<u8>(),
        v4 in any::<bool>(),
        field in 0usize..8,
        flip in 1u64..,
    ) {
        let k = FlowKey {
            a: [words[0], words[1]],
            b: [words[2], words[3]],
            a_port: ports[0],
            b_port: ports[1],
            proto,
            v4: u8::from(v4),
            ..FlowKey::default()
        };
        let mut o = k;
        prop_assert_eq!(k, o);
        match field {
            0 => o.a[0] ^= flip,
            1 => o.a[1] ^= flip,
            2 => o.b[0] ^= flip,
            3 => o.b[1] ^= flip,
            4 => o.a_port ^= (flip as u16).max(1),
            5 => o.b_port ^= (flip as u16).max(1),
            6 => o.proto ^= (flip as u8).max(1),
            _ => o.v4 ^= 1,
        }
        prop_assert_ne!(k, o);
    }
}

#[test]
fn mapped_arrays_start_zeroed_and_an_index_line_ends_on_its_64_byte_boundary() {
    let mut index: Mapped<u64> = Mapped::zeroed(64, true);
    assert_eq!((index.len(), index.bytes()), (64, 64 * 8));
    assert!(index.iter().all(|&s| s == 0));
    // The mapping is page-aligned, so slot 8k starts a cache line.
    assert_eq!(index.as_ptr() as usize % 64, 0);
    assert_eq!(rest_of_line(&index, 0).len(), 8);
    assert_eq!(rest_of_line(&index, 5).len(), 3);
    assert_eq!(rest_of_line(&index, 63).len(), 1);
    index[13] = 7;
    assert_eq!(rest_of_line(&index, 9), &[0, 0, 0, 0, 7, 0, 0]);
    // A zeroed entry is a free slot, and entries are whole lines.
    let slab: Mapped<Entry> = Mapped::zeroed(3, false);
    assert_eq!(slab.len(), 3);
    assert!(slab.iter().all(|e| e.state() == State::Free && e.key == FlowKey::default()));
    assert_eq!(slab.as_ptr() as usize % 64, 0);
}

#[test]
fn huge_page_bytes_are_read_from_the_mapping_smaps_names() {
    let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      2048 kB
7f0000400000-7f0001400000 rw-p 00000000 00:00 0
Size:              16384 kB
AnonHugePages:     14336 kB
VmFlags: rd wr mr mw me ac sd hg
";
    let at = |lo: usize, len: usize| anon_huge_bytes(smaps, lo..lo + len);
    assert_eq!(at(0x7f00_0040_0000, 16 << 20), Some(14336 * 1024), "a whole mapping");
    assert_eq!(at(0x7f00_0000_0000, 4 << 20), Some(2048 * 1024));
    assert_eq!(at(0x7f00_0000_0000, 20 << 20), Some(16384 * 1024), "two merged mappings");
    // A quarter of the second mapping: a quarter of its huge pages.
    assert_eq!(at(0x7f00_0040_0000, 4 << 20), Some(3584 * 1024), "part of a mapping");
    assert_eq!(at(0x7f00_0140_0000, 4096), None, "no mapping there");
    // A table that asked for 4 KiB pages is found in this process's smaps, with none huge.
    let t = Table::with_pages(1 << 16, Timeouts::default(), 1, false);
    assert_eq!(t.huge_page_bytes(), Some(0));
}

#[test]
fn reserved_bytes_is_what_a_table_reserves() {
    for cap in [1, 7, 1000, 4096, 100_000] {
        let t = Table::with_pages(cap, Timeouts::default(), 1, false);
        assert_eq!(reserved_bytes(cap), t.memory_bytes(), "capacity {cap}");
    }
    // The default: 16.8 MB of index and 134.2 MB of slab.
    assert_eq!(reserved_bytes(DEFAULT_CAPACITY), (1 << 21) * 8 + (1 << 20) * 128);
}

#[test]
fn an_entry_keeps_its_state_as_a_byte() {
    let mut e = entry(key(1), State::TcpSynSent, 0);
    for s in ALL_STATES {
        e.set_state(s);
        assert_eq!(e.state(), s);
    }
    assert_eq!(State::from_byte(200), State::Free);
}

#[test]
fn insert_find_remove() {
    let mut t = Table::new(1000, Timeouts::default(), 7);
    for n in 0..1000 {
        let k = key(n);
        t.insert(entry(k, State::Udp, 0), t.hash(&k), 0, &mut none).unwrap();
    }
    assert_eq!(t.len(), 1000);
    for n in 0..1000 {
        let k = key(n);
        let i = t.find(&k, t.hash(&k)).unwrap();
        assert_eq!(t.get(i).key, k);
    }
    let mut ended = Vec::new();
    for n in (0..1000).step_by(2) {
        let k = key(n);
        let i = t.find(&k, t.hash(&k)).unwrap();
        t.remove(i, EndReason::Removed, &mut |e: &Entry, r| ended.push((e.key, r)));
    }
    assert_eq!(ended.len(), 500);
    assert_eq!(t.len(), 500);
    for n in 0..1000 {
        let k = key(n);
        assert_eq!(t.find(&k, t.hash(&k)).is_some(), n % 2 == 1, "flow {n}");
    }
}

/// The entry pass finds a key's entry in the one index line it prefetched for all but a few
/// keys of a full table (the index at a load of one half): 99.3% expected with probes from
/// the line's start, 94.5% from a home slot anywhere in it. A key it misses costs two
/// dependent misses at 1M flows (docs/design/conntrack.md).
#[test]
fn a_full_tables_entries_are_found_in_their_home_line() {
    const N: u32 = 1 << 16;
    let mut t = Table::new(N as usize, Timeouts::default(), 11);
    for n in 0..N {
        let k = key(n);
        t.insert(entry(k, State::Udp, 0), t.hash(&k), 0, &mut none).unwrap();
    }
    let found = (0..N)
        .filter(|&n| {
            let k = key(n);
            let i = t.find(&k, t.hash(&k)).unwrap();
            hint_of(&t, &k).0 == i
        })
        .count();
    let share = found as f64 / f64::from(N);
    assert!(share > 0.985, "{:.2}% of the entries hinted from their home line", share * 100.0);
}

#[test]
fn a_full_table_reclaims_expired_then_unestablished_then_refuses() {
    let t0 = Timeouts::default();
    let mut t = Table::new(4, t0, 1);
    // Four established UDP flows at time 0, one of them old enough to expire at `late`.
    for n in 0..4 {
        let k = key(n);
        let mut e = entry(k, State::Udp, if n == 2 { 0 } else { 50 * SEC });
        e.flags |= flags::REPLIED;
        t.insert(e, t.hash(&k), 0, &mut none).unwrap();
    }
    let late = 61 * SEC;
    let mut ended = Vec::new();
    let k = key(10);
    t.insert(entry(k, State::Udp, late), t.hash(&k), late, &mut |e: &Entry, r| ended.push((e.key, r)))
        .unwrap();
    assert_eq!(ended, vec![(key(2), EndReason::Expired)]);
    // Now full of established flows except the new, unreplied one: it is the one reclaimed.
    let k2 = key(11);
    ended.clear();
    t.insert(entry(k2, State::Udp, late), t.hash(&k2), late, &mut |e: &Entry, r| ended.push((e.key, r)))
        .unwrap();
    assert_eq!(ended, vec![(key(10), EndReason::Reclaimed)]);
    // Mark everything established: the next new flow is refused.
    let all: Vec<u32> = t.iter().map(|(i, _)| i).collect();
    for i in all {
        t.get_mut(i).flags |= flags::REPLIED;
    }
    let k3 = key(12);
    assert_eq!(t.insert(entry(k3, State::Udp, late), t.hash(&k3), late, &mut none), Err(Full));
    assert_eq!(t.len(), 4);
}

#[test]
fn aging_is_bounded_and_removes_expired() {
    let mut t = Table::new(100, Timeouts::default(), 3);
    for n in 0..100 {
        let k = key(n);
        let state = if n < 50 { State::Icmp } else { State::TcpEstablished };
        t.insert(entry(k, state, 0), t.hash(&k), 0, &mut none).unwrap();
    }
    let now = 10 * SEC; // past ICMP's 5 s, within ESTABLISHED's hour
    let mut visited = 0;
    let mut expired = 0;
    t.age(now, 30, &mut |_| {}, &mut |_| visited += 1, &mut |_, r| {
        assert_eq!(r, EndReason::Expired);
        expired += 1;
    });
    assert_eq!(visited + expired, 30, "one budget's worth of slots");
    t.age(now, 1000, &mut |_| {}, &mut |_| {}, &mut |_, _| expired += 1);
    assert_eq!(expired, 50);
    assert_eq!(t.len(), 50);
}

/// A step of the table proptests (this table's and `v4`'s): insert or remove the `n`th key.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Insert(u16),
    Remove(u16),
}

/// The ops the table proptests run: inserts and removes of 200 keys.
pub(super) fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![(0u16..200).prop_map(Op::Insert), (0u16..200).prop_map(Op::Remove)],
        1..400,
    )
}

proptest! {
    /// Random inserts and removes agree with a HashMap model; a small key space forces long
    /// probe chains and backward shifts across the wrap of the index.
    #[test]
    fn agrees_with_a_hashmap(ops in ops(), seed in any::<u64>())
    {
        let mut t = Table::new(200, Timeouts::default(), seed);
        let mut model: HashMap<FlowKey, u32> = HashMap::new();
        // Hints taken halfway through, and so stale by the end, as a burst's are when its
        // earlier packets change the table.
        let half = ops.len() / 2;
        let mut stale = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            if n == half {
                stale = (0..200u32).map(|n| hint_of(&t, &key(n))).collect();
            }
            match op {
                Op::Insert(n) => {
                    let k = key(u32::from(n));
                    let h = t.hash(&k);
                    if t.find(&k, h).is_none() {
                        let i = t.insert(entry(k, State::Udp, 0), h, 0, &mut none).unwrap();
                        model.insert(k, i);
                    }
                }
                Op::Remove(n) => {
                    let k = key(u32::from(n));
                    let h = t.hash(&k);
                    if let Some(i) = t.find(&k, h) {
                        t.remove(i, EndReason::Removed, &mut |_, _| {});
                        model.remove(&k);
                    }
                }
            }
            prop_assert_eq!(t.len(), model.len());
        }
        for n in 0..200u32 {
            let k = key(n);
            let h = t.hash(&k);
            let want = model.get(&k).copied();
            prop_assert_eq!(t.find(&k, h), want);
            // Whatever the hint, a hinted lookup finds what the index does: a fresh hint, a
            // stale one, none, and every slab slot (removed keys stay in freed slots).
            prop_assert_eq!(t.find_hinted(&k, h, hint_of(&t, &k)), want);
            if let Some(&old) = stale.get(n as usize) {
                prop_assert_eq!(t.find_hinted(&k, h, old), want);
            }
            prop_assert_eq!(t.find_hinted(&k, h, Hint::NONE), want);
            for slot in 0..t.slots() as u32 {
                prop_assert_eq!(t.find_hinted(&k, h, Hint::at(slot)), want);
            }
        }
    }
}

proptest! {
    /// The split counters (recent ones in the first line, folded into the totals) count
    /// exactly what a plain pair of sums counts, across folds, huge frames and records.
    #[test]
    fn split_counters_count_exactly(packets in proptest::collection::vec(
        (any::<bool>(), prop_oneof![0usize..100, 1400usize..1600, 60_000usize..70_000, Just(20_000_000usize)], 0..40usize, any::<bool>()),
        0..60,
    )) {
        let mut e = entry(key(1), State::Udp, 0);
        let mut want = ([0u64; 2], [0u64; 2]);
        for (from_orig, len, repeat, record) in packets {
            for _ in 0..repeat * 10 {
                e.count(from_orig, len, 1);
                let d = usize::from(!from_orig);
                want.0[d] += 1;
                want.1[d] += len as u64;
            }
            prop_assert_eq!((e.packets(), e.bytes()), want);
            prop_assert_eq!(e.counted(), want.0 != [0, 0]);
            if record {
                e.clear_counters();
                want = ([0; 2], [0; 2]);
            }
        }
    }
}
