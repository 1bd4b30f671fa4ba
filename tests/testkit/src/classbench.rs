//! ClassBench rule sets and header traces (formats in docs/design/classifier.md, "ClassBench"),
//! and where the data lives.
//!
//! Rules: one per line, `@src/len<TAB>dst/len<TAB>slo : shi<TAB>dlo : dhi<TAB>0xPP/0xMM`, line
//! order is priority order. A rule becomes a [`Rule<5>`] over the fields
//! `[src, dst, sport, dport, proto]` ([`FIELDS`]).
//!
//! Traces: one tuple per line, whitespace-separated decimals `src dst sport dport proto
//! [gen_rule [first_match]]`; the last column of a 7-column trace is the verified first match.
//! Trace files may be xz-compressed (detected by the xz magic bytes, not the name).
//!
//! Errors name the file, the line and what is wrong; nothing here panics on bad input.

use std::io::Read;
use std::path::{Path, PathBuf};

use margay_rulecompiler::classifier::{FieldRange, Rule, RuleId};

/// The ClassBench folder: `$MARGAY_CLASSBENCH_DIR`, or the data folder CI lays beside the
/// repository, whether or not it is there.
pub fn data_dir() -> PathBuf {
    std::env::var_os("MARGAY_CLASSBENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/classbench"))
}

/// [`data_dir`] for a test: `None`, after printing `SKIPPED: ...`, when the data is missing
/// outside CI, so a checkout without it still runs the rest of the suite; under CI (`CI` set)
/// a missing folder fails the test.
pub fn data_dir_for_test() -> Option<PathBuf> {
    let dir = data_dir();
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

/// Field order of ClassBench rules and keys.
pub const FIELDS: [&str; 5] = ["src", "dst", "sport", "dport", "proto"];

/// A ClassBench 5-tuple key, in [`FIELDS`] order.
pub type Key = [u32; 5];

/// One trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// The header.
    pub key: Key,
    /// Column 6: the rule the header was generated from, when present.
    pub generating_rule: Option<RuleId>,
    /// Column 7: the verified first-match rule, when present.
    pub expected: Option<RuleId>,
}

/// A rule set or trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClassBenchError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line does not follow the format.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads a whole file, decompressing it when it starts with the xz magic bytes.
pub fn read_maybe_xz(path: &Path) -> Result<Vec<u8>, ClassBenchError> {
    let io = |source| ClassBenchError::Io { path: path.to_owned(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        liblzma::read::XzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads a rule file.
pub fn load_rules(path: &Path) -> Result<Vec<Rule<5>>, ClassBenchError> {
    let bytes = read_maybe_xz(path)?;
    parse_rules(&bytes, path)
}

/// Parses rule text; `path` only names the source in errors.
pub fn parse_rules(text: &[u8], path: &Path) -> Result<Vec<Rule<5>>, ClassBenchError> {
    let mut rules = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let err = |message: String| ClassBenchError::Parse { path: path.to_owned(), line: i + 1, message };
        let line = std::str::from_utf8(line).map_err(|_| err("not UTF-8".into()))?;
        rules.push(parse_rule(line).map_err(err)?);
    }
    Ok(rules)
}

/// Parses one rule line.
pub fn parse_rule(line: &str) -> Result<Rule<5>, String> {
    let line = line.trim();
    let body = line.strip_prefix('@').ok_or("a rule starts with '@'")?;
    // Tokens: src dst slo : shi dlo : dhi proto/mask [flags/mask], as dpdk-test-acl reads them.
    let tok: Vec<&str> = body.split_whitespace().collect();
    if tok.len() < 9 {
        return Err(format!(
            "expected 9 fields (src dst slo : shi dlo : dhi proto/mask), found {}",
            tok.len()
        ));
    }
    if tok[3] != ":" || tok[6] != ":" {
        return Err("port ranges are written 'lo : hi'".into());
    }
    let src = parse_prefix(tok[0]).map_err(|e| format!("source {e}"))?;
    let dst = parse_prefix(tok[1]).map_err(|e| format!("destination {e}"))?;
    let sport = parse_port_range(tok[2], tok[4]).map_err(|e| format!("source port {e}"))?;
    let dport = parse_port_range(tok[5], tok[7]).map_err(|e| format!("destination port {e}"))?;
    let proto = parse_proto(tok[8])?;
    Ok(Rule { fields: [src, dst, sport, dport, proto] })
}

fn parse_prefix(s: &str) -> Result<FieldRange, String> {
    let (addr, len) = s.split_once('/').ok_or_else(|| format!("'{s}' is not an address/length prefix"))?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| l <= 32)
        .ok_or_else(|| format!("prefix length '{len}' is not 0..=32"))?;
    Ok(FieldRange::prefix(u32::from(addr), len))
}

fn parse_port_range(lo: &str, hi: &str) -> Result<FieldRange, String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("'{p}' is not a port (0..=65535)"));
    let (lo, hi) = (port(lo)?, port(hi)?);
    FieldRange::new(u32::from(lo), u32::from(hi)).ok_or_else(|| format!("range {lo} : {hi} is reversed"))
}

fn parse_proto(s: &str) -> Result<FieldRange, String> {
    let (v, m) = s.split_once('/').ok_or_else(|| format!("protocol '{s}' is not value/mask"))?;
    let hex = |h: &str| {
        h.strip_prefix("0x")
            .or_else(|| h.strip_prefix("0X"))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("protocol '{h}' is not a hex byte like 0x06"))
    };
    match (hex(v)?, hex(m)?) {
        (v, 0xFF) => Ok(FieldRange::exact(u32::from(v))),
        (_, 0x00) => Ok(FieldRange::new(0, 255).unwrap_or(FieldRange::ANY)),
        (_, m) => Err(format!("protocol mask 0x{m:02X} is not supported (only 0xFF exact or 0x00 any)")),
    }
}

/// Reads a trace file (plain or xz).
pub fn load_trace(path: &Path) -> Result<Vec<TraceEntry>, ClassBenchError> {
    let bytes = read_maybe_xz(path)?;
    parse_trace(&bytes, path)
}

/// Parses trace text; `path` only names the source in errors.
pub fn parse_trace(text: &[u8], path: &Path) -> Result<Vec<TraceEntry>, ClassBenchError> {
    let mut out = Vec::with_capacity(text.len() / 40);
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let err = |message: String| ClassBenchError::Parse { path: path.to_owned(), line: i + 1, message };
        let mut cols = [0u64; 7];
        let mut count = 0;
        for tok in line.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()) {
            if count == 7 {
                return Err(err("more than 7 columns".into()));
            }
            cols[count] = parse_decimal(tok).ok_or_else(|| {
                err(format!(
                    "column {} '{}' is not an unsigned decimal",
                    count + 1,
                    String::from_utf8_lossy(tok)
                ))
            })?;
            count += 1;
        }
        if count < 5 {
            return Err(err(format!(
                "expected at least 5 columns (src dst sport dport proto), found {count}"
            )));
        }
        let limits = [u64::from(u32::MAX), u64::from(u32::MAX), 65535, 65535, 255];
        for (c, (&v, &max)) in cols.iter().zip(&limits).enumerate() {
            if v > max {
                return Err(err(format!("column {} ({}) is {v}, above {max}", c + 1, FIELDS[c])));
            }
        }
        let rule_col = |c: usize| -> Result<Option<RuleId>, ClassBenchError> {
            if count <= c {
                return Ok(None);
            }
            u32::try_from(cols[c])
                .ok()
                .filter(|&v| v != u32::MAX)
                .map(Some)
                .ok_or_else(|| err(format!("column {} ({}) is not a rule index", c + 1, cols[c])))
        };
        out.push(TraceEntry {
            key: [cols[0] as u32, cols[1] as u32, cols[2] as u32, cols[3] as u32, cols[4] as u32],
            generating_rule: rule_col(5)?,
            expected: rule_col(6)?,
        });
    }
    Ok(out)
}

fn parse_decimal(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 19 {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_rule_line() {
        let r = parse_rule("@93.2.200.176/28\t94.99.213.32/28\t123 : 123\t80 : 80\t0x11/0xFF").unwrap();
        assert_eq!(r.fields[0], FieldRange::prefix(0x5D02_C8B0, 28));
        assert_eq!(r.fields[2], FieldRange::exact(123));
        assert_eq!(r.fields[3], FieldRange::exact(80));
        assert_eq!(r.fields[4], FieldRange::exact(17));
        let any = parse_rule("@0.0.0.0/0\t10.0.0.1/32\t0 : 65535\t1024 : 65535\t0x00/0x00").unwrap();
        assert_eq!(any.fields[0], FieldRange::ANY);
        assert_eq!(any.fields[4], FieldRange::new(0, 255).unwrap());
        // Host bits are masked even when the file leaves them set.
        let masked = parse_rule("@10.1.2.3/8\t10.0.0.1/32\t0 : 65535\t0 : 65535\t0x06/0xFF").unwrap();
        assert_eq!(masked.fields[0].lo(), 0x0A00_0000);
    }

    #[test]
    fn rejects_bad_rules_with_a_reason() {
        let cases = [
            ("93.2.200.176/28\t1.2.3.4/32\t0 : 1\t0 : 1\t0x11/0xFF", "starts with '@'"),
            ("@1.2.3.4/33\t1.2.3.4/32\t0 : 1\t0 : 1\t0x11/0xFF", "prefix length"),
            ("@1.2.3/8\t1.2.3.4/32\t0 : 1\t0 : 1\t0x11/0xFF", "not an IPv4 address"),
            ("@1.2.3.4/8\t1.2.3.4/32\t9 : 1\t0 : 1\t0x11/0xFF", "reversed"),
            ("@1.2.3.4/8\t1.2.3.4/32\t0 : 70000\t0 : 1\t0x11/0xFF", "not a port"),
            ("@1.2.3.4/8\t1.2.3.4/32\t0 : 1\t0 : 1\t0x11/0xF0", "not supported"),
            ("@1.2.3.4/8\t1.2.3.4/32\t0 : 1\t0 : 1", "expected 9 fields"),
            ("@1.2.3.4/8\t1.2.3.4/32\t0 - 1\t0 : 1\t0x11/0xFF", "lo : hi"),
        ];
        for (line, want) in cases {
            let e = parse_rule(line).unwrap_err();
            assert!(e.contains(want), "{line:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn rule_errors_name_file_and_line() {
        let text = b"@1.2.3.4/32\t5.6.7.8/32\t0 : 65535\t80 : 80\t0x06/0xFF\n@bad\n";
        let e = parse_rules(text, Path::new("x.rules")).unwrap_err().to_string();
        assert!(e.starts_with("x.rules:2: "), "{e}");
    }

    #[test]
    fn parses_trace_lines() {
        let t = parse_trace(b"1044126168\t1559590493\t65535\t0\t6\t743\t741\n1 2 3 4 5\n", Path::new("t"))
            .unwrap();
        assert_eq!(t[0].key, [1044126168, 1559590493, 65535, 0, 6]);
        assert_eq!((t[0].generating_rule, t[0].expected), (Some(743), Some(741)));
        assert_eq!((t[1].generating_rule, t[1].expected), (None, None));
        for (bad, want) in [
            (&b"1 2 3 4\n"[..], "at least 5"),
            (b"1 2 70000 4 5\n", "above 65535"),
            (b"1 2 3 4 x\n", "not an unsigned decimal"),
            (b"1 2 3 4 5 6 7 8\n", "more than 7"),
            (b"1 2 3 4 256\n", "above 255"),
        ] {
            let e = parse_trace(bad, Path::new("t")).unwrap_err().to_string();
            assert!(e.starts_with("t:1: ") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn reads_xz_and_plain_alike() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("margay-cb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = b"1 2 3 4 5 0 0\n";
        let plain = dir.join("a.trace");
        std::fs::write(&plain, text).unwrap();
        let xz = dir.join("a.trace.xz");
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(text).unwrap();
        std::fs::write(&xz, enc.finish().unwrap()).unwrap();
        assert_eq!(load_trace(&plain).unwrap(), load_trace(&xz).unwrap());
        let missing = load_trace(&dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
