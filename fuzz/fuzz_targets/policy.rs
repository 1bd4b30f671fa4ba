//! The policy parser on arbitrary text: `scripts/fuzz` or `cargo +nightly fuzz run policy`.
//! The body and what it checks are in `margay_testkit::fuzzing::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    margay_testkit::fuzzing::policy(data);
});
