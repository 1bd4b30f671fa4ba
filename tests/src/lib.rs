//! Helpers shared by Margay's cross-crate integration tests (in `tests/tests/`).

use std::path::PathBuf;

/// Where the ClassBench rule sets and traces live: `$MARGAY_CLASSBENCH_DIR`, or
/// `shared/classbench` beside the repository (where CI puts it).
///
/// Returns `None` when the folder is missing outside CI, so a checkout without the data still
/// runs the rest of the suite; under CI (`CI` set) a missing folder is a test failure.
pub fn classbench_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MARGAY_CLASSBENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/classbench"));
    if dir.join("acl1_1k.rules").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ClassBench data not found at {} (set MARGAY_CLASSBENCH_DIR)",
        dir.display()
    );
    eprintln!("SKIPPED: ClassBench data not found at {} (set MARGAY_CLASSBENCH_DIR)", dir.display());
    None
}
