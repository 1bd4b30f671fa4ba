//! Selector properties: no input panics the parser, and every selector prints to text that
//! parses back to itself.

use std::collections::BTreeSet;

use margay_config::Selector;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("app".to_string()), Just("tier".to_string()), "[a-z][a-z0-9_./-]{0,8}"]
}

/// Values as the parser can produce them: either quote character, never both.
fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9 _.-]{0,6}", "[a-z']{0,6}", "[a-z\"]{0,6}"]
}

fn selector() -> impl Strategy<Value = Selector> {
    let leaf = prop_oneof![
        Just(Selector::All),
        key().prop_map(Selector::Has),
        (key(), value()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::Ne(k, v)),
        (key(), prop::collection::btree_set(value(), 0..3)).prop_map(|(k, s)| Selector::In(k, s)),
        (key(), prop::collection::btree_set(value(), 0..3))
            .prop_map(|(k, s): (String, BTreeSet<String>)| Selector::NotIn(k, s)),
        (key(), value()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Selector::And(vec![a, b])),
            (inner.clone(), inner).prop_map(|(a, b)| Selector::Or(vec![a, b])),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,80}") {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn selector_like_text_never_panics(text in "[a-z()!&|=' {},.in]{0,60}") {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn display_parses_back(s in selector()) {
        let text = s.to_string();
        prop_assert_eq!(Selector::parse(&text).map_err(|e| e.to_string()), Ok(s), "{}", text);
    }
}
