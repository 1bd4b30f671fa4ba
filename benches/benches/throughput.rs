//! The throughput harness (issue 6): `cargo bench -p margay-benches --bench throughput --
//! [--quick] [--json]`, as root, after `cargo build --release -p margay-dataplane`. See
//! `margay_benches::harness` and docs/design/harness.md.

fn main() -> std::process::ExitCode {
    match margay_benches::harness::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
