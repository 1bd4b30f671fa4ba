//! JSON-lines files checked against a JSON schema by Python's `jsonschema` (a validator
//! maintained apart from Margay, formats checked), as the flow-log tests use it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The repository's schema of Calico-format flow-log records.
pub fn calico_flow_log() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/calico-flow-log.schema.json")
}

/// Every line of `lines` (a JSON-lines file) validated against `schema` (draft 2020-12): the
/// errors, one line each (`line N: PATH: MESSAGE`), or an empty string.
pub fn errors(schema: &Path, lines: &Path) -> anyhow::Result<String> {
    let script = "import json, sys, jsonschema\n\
        s = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        v = jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker())\n\
        for n, line in enumerate(open(sys.argv[2]), 1):\n\
        \x20   for e in v.iter_errors(json.loads(line)):\n\
        \x20       print(f'line {n}: {e.json_path}: {e.message}')\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(schema)
        .arg(lines)
        .output()
        .context("python3 (scripts/deps.sh test installs it, and python3-jsonschema)")?;
    if !out.status.success() {
        bail!("the schema check did not run: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
