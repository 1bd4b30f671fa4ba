//! JSON values printed as YAML (`margay get -o yaml`): block mappings and sequences, scalars
//! in JSON's notation (a JSON string is a valid YAML double-quoted scalar), so the output reads
//! back as the same value.

use std::fmt::Write as _;

use serde_json::Value;

/// `value` as a YAML document (without the `---`).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(_) | Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

/// Writes `value` at `indent`, starting at the beginning of a line.
fn write_value(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = Value::String(k.clone()).to_string();
                let key = if is_plain(k) { k.clone() } else { key };
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{key}: {s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{key}:");
                        write_value(out, v, indent + 2);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for v in a {
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        // The item's first line goes after the dash, the rest indented under it.
                        let mut item = String::new();
                        write_value(&mut item, v, indent + 2);
                        let item = item.trim_start();
                        let _ = write!(out, "{pad}- {item}");
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

/// A key that needs no quotes: letters, digits and `-_./`, not starting with a digit.
fn is_plain(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_same_value() {
        let v: Value = serde_json::from_str(
            r##"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","labels":{"app.kubernetes.io/name":"x: y","1":"#"}},
               "spec":{"containers":[{"name":"c","ports":[{"containerPort":80},{"name":"dns","protocol":"UDP"}]}],"empty":[],"none":{}},
               "status":{"podIPs":[{"ip":"198.18.0.1"}],"n":null,"b":true,"f":1.5}}"##,
        )
        .unwrap();
        let text = to_yaml(&v);
        let back: Value = marked_yaml::from_yaml(0, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // marked-yaml reads scalars as strings: compare the texts of the scalars.
        assert_eq!(flatten(&back), flatten(&v), "{text}");
    }

    fn flatten(v: &Value) -> Vec<(String, String)> {
        fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
            match v {
                Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, format!("{path}.{k}"), out)),
                Value::Array(a) => {
                    a.iter().enumerate().for_each(|(i, v)| walk(v, format!("{path}[{i}]"), out))
                }
                Value::String(s) => out.push((path, s.clone())),
                Value::Null => out.push((path, "null".into())),
                other => out.push((path, other.to_string())),
            }
        }
        let mut out = Vec::new();
        walk(v, String::new(), &mut out);
        out.sort();
        out
    }
}
