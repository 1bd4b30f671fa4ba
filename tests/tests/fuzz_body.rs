//! The fuzz target's body (`margay_testkit::fuzzing::run`) on the stable toolchain: random
//! scripts, and scripts of frames a real exchange would carry, mutated.

use etherparse::PacketBuilder;
use proptest::prelude::*;

fn seed_frames() -> Vec<Vec<u8>> {
    let c = [198, 18, 1, 10];
    let s = [198, 18, 2, 20];
    let cm = [2, 0, 0, 0, 1, 0x10];
    let nm = [2, 0, 0, 0, 1, 1];
    let sm = [2, 0, 0, 0, 2, 0x20];
    let ns = [2, 0, 0, 0, 2, 1];
    let mut out = Vec::new();
    let mut push = |b: Vec<u8>| out.push(b);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(cm, nm).ipv4(c, s, 64).udp(1000, 53).write(&mut v, b"q").ok();
    push(std::mem::take(&mut v));
    PacketBuilder::ethernet2(sm, ns).ipv4(s, c, 64).udp(53, 1000).write(&mut v, b"a").ok();
    push(std::mem::take(&mut v));
    PacketBuilder::ethernet2(cm, nm).ipv4(c, s, 64).tcp(2000, 80, 10, 100).syn().write(&mut v, &[]).ok();
    push(std::mem::take(&mut v));
    PacketBuilder::ethernet2(sm, ns)
        .ipv4(s, c, 64)
        .tcp(80, 2000, 50, 100)
        .syn()
        .ack(11)
        .write(&mut v, &[])
        .ok();
    push(std::mem::take(&mut v));
    PacketBuilder::ethernet2(cm, nm).ipv4(c, s, 64).tcp(2000, 80, 11, 100).ack(51).write(&mut v, b"GET").ok();
    push(std::mem::take(&mut v));
    PacketBuilder::ethernet2(cm, nm).ipv4(c, s, 64).icmpv4_echo_request(3, 1).write(&mut v, b"p").ok();
    push(std::mem::take(&mut v));
    out
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    let op = (0u8..5, 0usize..6, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3), any::<u8>());
    proptest::collection::vec(op, 0..40).prop_map(|ops| {
        let seeds = seed_frames();
        let mut data = Vec::new();
        for (op, which, pokes, n) in ops {
            match op {
                0 | 1 => {
                    let mut f = seeds[which].clone();
                    for (at, v) in pokes {
                        let len = f.len();
                        f[at % len] = v;
                    }
                    data.push(op);
                    data.push(f.len() as u8);
                    data.extend_from_slice(&f);
                }
                _ => data.extend_from_slice(&[op, n]),
            }
        }
        data
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn scripts_of_mutated_exchanges(data in script()) {
        margay_testkit::fuzzing::run(&data);
    }

    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        margay_testkit::fuzzing::run(&data);
    }
}
