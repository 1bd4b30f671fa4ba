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

/// The example files, which the parser targets also start from.
const EXAMPLES: [&str; 7] = [
    include_str!("../../examples/shop.toml"),
    include_str!("../../examples/demo/policy-v2.toml"),
    include_str!("../../examples/replay/policy.toml"),
    include_str!("../../examples/replay/node.toml"),
    include_str!("../../examples/k8s/cluster.yaml"),
    include_str!("../../examples/k8s/policies.yaml"),
    include_str!("../../examples/k8s/calico.yaml"),
];

/// A text of the examples' with a few edits: bytes replaced from a small alphabet of the
/// characters the grammars care about, or lines cut out.
fn mutated_example() -> impl Strategy<Value = String> {
    const ALPHABET: &[u8] = b"[]{}()=!&|'\",.:#\n 0123456789-/*";
    (0..EXAMPLES.len(), proptest::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 0..6))
        .prop_map(|(which, edits)| {
            let mut text = EXAMPLES[which].as_bytes().to_vec();
            for (at, v, cut) in edits {
                let at = at % text.len().max(1);
                if cut {
                    let end = text[at..].iter().position(|&b| b == b'\n').map_or(text.len(), |n| at + n);
                    text.drain(at..end);
                } else if at < text.len() {
                    text[at] = ALPHABET[v % ALPHABET.len()];
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_policy_body_on_edited_examples(text in mutated_example()) {
        margay_testkit::fuzzing::policy(text.as_bytes());
    }

    #[test]
    fn the_config_body_on_edited_examples(text in mutated_example()) {
        margay_testkit::fuzzing::config(text.as_bytes());
    }

    #[test]
    fn the_selector_body_on_selector_like_text(text in "[a-c!()&| =']{0,60}|(!|\\(|[a-z]+ (==|!=) '[a-z]*'|&&|\\|\\||\\)| )*") {
        margay_testkit::fuzzing::selector(text.as_bytes());
    }
}

/// What the selector fuzz target found, kept: 130 `!`s printed back nested 260 deep (past the
/// parser's limit), and a bare 1,000-character key echoed three times in the error.
#[test]
fn the_selector_fuzz_findings_stay_fixed() {
    margay_testkit::fuzzing::selector(format!("{}s== ''", "!".repeat(130)).as_bytes());
    margay_testkit::fuzzing::selector(format!("! {}bb", "/".repeat(1000)).as_bytes());
}
