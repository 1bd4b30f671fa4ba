//! Compiles the XDP program with clang and generates its libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    build("src/bpf/margay.bpf.c", "margay.skel.rs");
}

fn build(src: &str, skel: &str) {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join(skel);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    if let Err(e) = SkeletonBuilder::new()
        .source(src)
        .clang_args([format!("-I/usr/include/{multiarch}"), "-Wall".to_string()])
        .build_and_generate(&out)
    {
        panic!("building {src} failed (needs clang and libbpf headers: scripts/deps.sh build): {e:#}");
    }
    println!("cargo:rerun-if-changed={src}");
}
