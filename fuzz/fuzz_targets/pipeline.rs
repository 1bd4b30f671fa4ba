//! Parse and pipeline on arbitrary input scripts: `cargo +nightly fuzz run pipeline`.
//! The body and the input format are in `margay_testkit::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    margay_testkit::fuzzing::run(data);
});
