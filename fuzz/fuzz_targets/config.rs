//! The config parser on arbitrary text: `scripts/fuzz` or `cargo +nightly fuzz run config`.
//! The body and what it checks are in `margay_testkit::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    margay_testkit::fuzzing::config(data);
});
