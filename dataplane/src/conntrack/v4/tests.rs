use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::conntrack::tests::{Op, ops};

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0000 | n)
}

/// The `n`th of a set of distinct UDP keys.
fn key(n: u32) -> Key4 {
    Key4::new(17, ip(1 + n / 50_000), 1024 + (n % 50_000) as u16, ip(0xffff), 53).0
}

fn udp(k: Key4, now: u64) -> Record {
    Record::new(k, State::Udp, 0, now)
}

fn none(_: &Record, _: &Cold, _: EndReason) {
    panic!("nothing should end here");
}

/// Every live record's lines from its home line to its own line but one are full: what lets
/// a lookup stop at the first line with a free record.
fn assert_runs_hold(t: &Table4) {
    for (pos, r) in t.iter() {
        let home = t.home(t.hash(&r.key()));
        let mut l = home;
        while l != (pos >> 1) as usize {
            assert!(
                t.lines[l].0.iter().all(|r| !r.is_free()),
                "line {l} before {pos} (home {home}) has a free record"
            );
            l = (l + 1) & t.mask;
        }
    }
}

#[test]
fn both_directions_share_one_key_and_the_key_reads_back() {
    let (k1, fwd) = Key4::new(6, ip(9), 40000, ip(3), 80);
    let (k2, rev) = Key4::new(6, ip(3), 80, ip(9), 40000);
    assert_eq!(k1, k2);
    assert!(!fwd && rev, "side a is the lower address");
    assert_eq!(k1.side_a(), (ip(3), 80));
    assert_eq!(k1.side_b(), (ip(9), 40000));
    assert_eq!(k1.proto(), 6);
    assert_ne!(k1, Key4::new(17, ip(9), 40000, ip(3), 80).0, "the protocol is part of the key");
    let r = Record::new(k1, State::TcpSynSent, flags::ORIG_IS_A, 5 * MS);
    assert_eq!(r.key(), k1);
    assert_eq!(r.state(), State::TcpSynSent);
    assert_eq!(r.flags(), flags::ORIG_IS_A);
    assert_eq!(r.last_ms(), 5);
}

#[test]
fn state_and_flags_share_a_byte_without_touching_each_other_or_the_key() {
    let (k, _) = Key4::new(6, ip(1), 1, ip(2), 2);
    let mut r = Record::new(k, State::TcpSynSent, 0, 0);
    r.set_flags(flags::REPLIED | flags::FIN_BY_ORIG);
    r.set_state(State::TcpTimeWait);
    assert_eq!((r.state(), r.flags()), (State::TcpTimeWait, flags::REPLIED | flags::FIN_BY_ORIG));
    r.set_state(State::Generic);
    r.set_flags(flags::ORIG_IS_A);
    assert_eq!((r.state(), r.flags()), (State::Generic, flags::ORIG_IS_A));
    assert_eq!(r.key(), k);
}

#[test]
fn insert_find_remove() {
    let mut t = Table4::new(100, Timeouts::default(), 7, false);
    for n in 0..100 {
        let k = key(n);
        t.insert(udp(k, 0), Cold::new(n as u64), t.hash(&k), 0, &mut none).unwrap();
    }
    assert_eq!(t.len(), 100);
    assert_runs_hold(&t);
    for n in 0..100 {
        let k = key(n);
        let pos = t.find(&k, t.hash(&k)).expect("inserted");
        assert_eq!(t.record(pos).key(), k);
        assert_eq!(t.cold(pos).created, n as u64, "each record keeps its own cold entry");
    }
    assert_eq!(t.find(&key(100), t.hash(&key(100))), None);
    let mut ended = Vec::new();
    for n in (0..100).step_by(2) {
        let k = key(n);
        let pos = t.find(&k, t.hash(&k)).unwrap();
        t.remove(pos, EndReason::Removed, &mut |r, c, why| ended.push((r.key(), c.created, why)));
    }
    assert_eq!(ended.len(), 50);
    assert!(ended.iter().all(|&(k, created, why)| k == key(created as u32) && why == EndReason::Removed));
    assert_runs_hold(&t);
    for n in 0..100 {
        let k = key(n);
        assert_eq!(t.find(&k, t.hash(&k)).is_some(), n % 2 == 1, "key {n}");
    }
    assert_eq!(t.len(), 50);
}

#[test]
fn a_record_without_a_state_is_refused() {
    let mut t = Table4::new(4, Timeouts::default(), 1, false);
    let r = Record::new(key(1), State::Free, 0, 0);
    assert_eq!(t.insert(r, Cold::default(), t.hash(&key(1)), 0, &mut none), Err(Full));
    assert!(t.is_empty());
}

proptest! {
    /// Random inserts and removes agree with a HashMap model, and the runs stay whole. A
    /// table of 64 flows over 200 keys makes long runs, backward shifts across the wrap of
    /// the lines, and reclaims (every flow is unestablished, so a full table reclaims one).
    #[test]
    fn agrees_with_a_hashmap(ops in ops(), seed in any::<u64>())
    {
        let mut t = Table4::new(64, Timeouts::default(), seed, false);
        // Key -> its cold entry's `created`, which says which insert it came from.
        let mut model: HashMap<Key4, u64> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(k) => {
                    let k = key(u32::from(k));
                    let h = t.hash(&k);
                    if t.find(&k, h).is_none() {
                        let mut gone = Vec::new();
                        t.insert(udp(k, 0), Cold::new(n as u64), h, 0, &mut |r, _, why| gone.push((r.key(), why))).unwrap();
                        for (g, why) in gone {
                            prop_assert_eq!(why, EndReason::Reclaimed);
                            prop_assert!(model.remove(&g).is_some());
                        }
                        model.insert(k, n as u64);
                    }
                }
                Op::Remove(k) => {
                    let k = key(u32::from(k));
                    if let Some(pos) = t.find(&k, t.hash(&k)) {
                        t.remove(pos, EndReason::Removed, &mut |_, _, _| {});
                        prop_assert!(model.remove(&k).is_some());
                    }
                }
            }
            prop_assert_eq!(t.len(), model.len());
        }
        assert_runs_hold(&t);
        for n in 0..200u32 {
            let k = key(n);
            let found = t.find(&k, t.hash(&k)).map(|pos| t.cold(pos).created);
            prop_assert_eq!(found, model.get(&k).copied());
        }
    }
}

proptest! {
    /// The split counters (recent ones in the record, folded into the cold totals) count
    /// exactly what a plain pair of sums counts, across folds, huge frames and records.
    #[test]
    fn split_counters_count_exactly(packets in proptest::collection::vec(
        (any::<bool>(), prop_oneof![0usize..100, 1400usize..1600, 60_000usize..70_000, Just(20_000_000usize)], 0..40usize, any::<bool>()),
        0..60,
    )) {
        let mut t = Table4::new(4, Timeouts::default(), 3, false);
        let k = key(1);
        let pos = t.insert(udp(k, 0), Cold::new(0), t.hash(&k), 0, &mut none).unwrap();
        let mut want = ([0u64; 2], [0u64; 2]);
        for (from_orig, len, repeat, record) in packets {
            for _ in 0..repeat * 10 {
                t.count(pos, from_orig, len, 1);
                let d = usize::from(!from_orig);
                want.0[d] += 1;
                want.1[d] += len as u64;
            }
            prop_assert_eq!((t.packets(pos), t.bytes(pos)), want);
            if record {
                t.clear_counters(pos);
                want = ([0; 2], [0; 2]);
            }
        }
    }
}

#[test]
fn counting_sets_the_last_packet_time_in_milliseconds() {
    let mut t = Table4::new(4, Timeouts::default(), 3, false);
    let k = key(1);
    let pos = t.insert(udp(k, 0), Cold::new(0), t.hash(&k), 0, &mut none).unwrap();
    t.count(pos, true, 64, 7_654_321_000);
    assert_eq!(t.record(pos).last_ms(), 7_654);
}

#[test]
fn a_full_table_reclaims_expired_then_unestablished_flows_then_refuses() {
    let timeouts = Timeouts::default();
    let udp_ms = timeouts.udp * 1000;
    let mut t = Table4::new(8, timeouts, 5, false);
    for n in 0..8 {
        let k = key(n);
        // Flows 0-3 have seen replies (established); 4-7 have not.
        let f = if n < 4 { flags::REPLIED } else { 0 };
        t.insert(Record::new(k, State::Udp, f, 0), Cold::new(0), t.hash(&k), 0, &mut none).unwrap();
    }
    // Not expired yet: an unestablished flow is taken.
    let mut gone = Vec::new();
    let k = key(8);
    t.insert(udp(k, MS), Cold::new(MS), t.hash(&k), MS, &mut |r, _, why| gone.push((r.key(), why))).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1, EndReason::Reclaimed);
    assert!(!t.iter().any(|(_, r)| r.key() == gone[0].0));
    assert_eq!(t.len(), 8);
    // Four established flows take the four unestablished ones left (three of the first
    // eight, and key 8); then the table holds established flows only, and refuses.
    for n in 9..13 {
        let k = key(n);
        t.insert(
            Record::new(k, State::Udp, flags::REPLIED, MS),
            Cold::new(MS),
            t.hash(&k),
            MS,
            &mut |_, _, _| {},
        )
        .unwrap();
    }
    let k = key(13);
    assert_eq!(t.insert(udp(k, MS), Cold::new(MS), t.hash(&k), MS, &mut |_, _, _| {}), Err(Full));
    assert_eq!(t.len(), 8);
    // Past the UDP timeout every flow has expired: an insert takes an expired one.
    let late = (udp_ms + 10) * MS;
    let mut why = None;
    t.insert(udp(k, late), Cold::new(late), t.hash(&k), late, &mut |_, _, w| why = Some(w)).unwrap();
    assert_eq!(why, Some(EndReason::Expired));
    assert_runs_hold(&t);
}

#[test]
fn aging_removes_expired_flows_and_visits_the_others() {
    let timeouts = Timeouts::default();
    let mut t = Table4::new(64, timeouts, 9, false);
    for n in 0..40 {
        let k = key(n);
        t.insert(udp(k, 0), Cold::new(n as u64), t.hash(&k), 0, &mut none).unwrap();
    }
    // Flows 0-19 see a packet later, so only 20-39 expire.
    let later = timeouts.udp * 1000 * MS / 2;
    for n in 0..20 {
        let k = key(n);
        let pos = t.find(&k, t.hash(&k)).unwrap();
        t.count(pos, true, 64, later);
    }
    let now = later + (timeouts.udp * 1000 * MS * 3) / 4;
    let (mut visited, mut ended) = (Vec::new(), Vec::new());
    // One round of the hand (64 lines) finds them all, also those a removal moved back into
    // a slot it had just looked at.
    t.age(now, 64, &mut |t: &mut Table4, pos| visited.push(t.cold(pos).created), &mut |_, c, why| {
        ended.push((c.created, why))
    });
    ended.sort_unstable_by_key(|&(n, _)| n);
    assert_eq!(ended, (20..40).map(|n| (n, EndReason::Expired)).collect::<Vec<_>>());
    visited.sort_unstable();
    assert_eq!(visited, (0..20).collect::<Vec<_>>(), "each live flow visited once");
    assert_eq!(t.len(), 20);
    assert_runs_hold(&t);
}

#[test]
fn a_full_tables_records_are_mostly_in_their_home_line_and_its_memory_is_as_documented() {
    let n = 1 << 16;
    let mut t = Table4::new(n, Timeouts::default(), 11, false);
    for i in 0..n as u32 {
        let k = key(i);
        t.insert(udp(k, 0), Cold::new(0), t.hash(&k), 0, &mut none).unwrap();
    }
    // Two records a line at a load of one half: 83.3% at home with this seed; each of the
    // others costs its lookup a second line, which the burst did not prefetch.
    let home = t.in_home_line();
    assert!(home > 0.82, "{home}");
    // 32 bytes a record at half load plus 64 of cold: 128 bytes a flow, as today's slab
    // alone; docs/conntrack.md.
    assert_eq!(t.memory_bytes(), n * 64 + n * 64);
    assert_eq!(reserved_bytes(n), t.memory_bytes());
}

#[test]
fn keys_that_differ_only_in_a_words_high_half_spread_over_the_lines() {
    // Side a's address is the high half of the key's first word; side b and the ports are
    // fixed. With foldhash's fast variant 5.7% of 2^20 such flows were in their home line.
    let n = 1u32 << 16;
    let mut t = Table4::new(n as usize, Timeouts::default(), 11, false);
    for i in 0..n {
        let k = Key4::new(17, Ipv4Addr::from(i), 1, Ipv4Addr::from(u32::MAX), 2).0;
        t.insert(udp(k, 0), Cold::new(0), t.hash(&k), 0, &mut none).unwrap();
    }
    let home = t.in_home_line();
    assert!(home > 0.82, "{home}");
}
