//! Compiles the benchmark sink's XDP program with clang and generates its libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/sink.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("sink.skel.rs");
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default().as_str() {
        "x86_64" => "x86_64-linux-gnu".to_string(),
        "aarch64" => "aarch64-linux-gnu".to_string(),
        other => other.to_string(),
    };
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([format!("-I/usr/include/{multiarch}"), "-Wall".to_string()])
        .build_and_generate(&out)
    {
        panic!("building {SRC} failed (needs clang and libbpf headers: scripts/deps.sh build): {e:#}");
    }
    println!("cargo:rerun-if-changed={SRC}");
}
