//! The control protocol's messages: one JSON object a line each way. A request is tagged by
//! `cmd`; a reply carries `ok` and, on failure, `error`.
//!
//! | cmd | fields | reply |
//! |---|---|---|
//! | `reload` | `path` (optional) | `epoch`, `build_ms`, `policy` counts; or the error, with `epoch` and `kept`: the old policy stays |
//! | `stats` | | counters (`Counters::SPECS`, then the daemon's own) |
//! | `flows` | `proto` (name or number), `addr`, `port`, `limit` (all optional) | `count`, `flows` |
//! | `explain` | `flow` ("tcp A:P -> B:P"), `icmp` ("T/C", optional) | `epoch`, `decision` |
//! | `config` | | `path` of the config file, `text`: the running config as TOML, `policy` path, `epoch` |

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Reload the policy: from `path`, which then becomes the file SIGHUP and later reloads
    /// read, or from the current file.
    Reload {
        /// A new policy file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
    /// The counters.
    Stats,
    /// Tracked flows matching every filter given.
    Flows {
        /// IP protocol.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto: Option<Protocol>,
        /// Either endpoint's address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<IpAddr>,
        /// Either endpoint's port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// Most flows returned (default [`DEFAULT_FLOWS`], at most [`MAX_FLOWS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// The running policy's decision for a flow.
    Explain {
        /// "PROTO SRC[:PORT] -> DST[:PORT]".
        flow: String,
        /// ICMP "TYPE/CODE".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icmp: Option<String>,
    },
    /// The running config.
    Config,
}

/// Flows a `flows` request returns when it gives no limit.
pub const DEFAULT_FLOWS: u64 = 1000;
/// Most flows one `flows` request returns.
pub const MAX_FLOWS: u64 = 1_000_000;

/// An IP protocol, by number or by name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Protocol {
    /// A protocol number.
    Number(u8),
    /// A protocol name.
    Name(String),
}

impl Protocol {
    /// The protocol number, or why there is none.
    pub fn number(&self) -> Result<u8, String> {
        match self {
            Protocol::Number(n) => Ok(*n),
            Protocol::Name(s) => s
                .parse::<margay_config::net::Protocol>()
                .map(|p| p.0)
                .map_err(|_| format!("\"proto\": '{s}' is not a protocol name or number")),
        }
    }
}

/// A tracked flow, as `flows` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// IP protocol number.
    pub proto: u8,
    /// Originator address.
    pub src: IpAddr,
    /// Originator port (ICMP echo: identifier).
    pub src_port: u16,
    /// Responder address.
    pub dst: IpAddr,
    /// Responder port.
    pub dst_port: u16,
    /// Conntrack state.
    pub state: String,
    /// Epoch of the policy that last decided it.
    pub epoch: u32,
    /// Packets `[originator to responder, back]` since its last flow record.
    pub packets: [u64; 2],
    /// Bytes, the same way.
    pub bytes: [u64; 2],
    /// Seconds since it started.
    pub age_s: f64,
    /// Seconds since its last packet.
    pub idle_s: f64,
}

/// A reply: `ok`, then the body's fields.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What it answers.
    #[serde(flatten)]
    pub body: Body,
}

/// What a reply says.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    /// The request failed.
    Error {
        /// Why.
        error: String,
        /// For a rejected reload: the epoch still enforced.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<u32>,
        /// For a rejected reload: what became of the running policy.
        #[serde(skip_serializing_if = "Option::is_none")]
        kept: Option<&'static str>,
    },
    /// A policy reloaded.
    Reloaded {
        /// Its epoch.
        epoch: u32,
        /// Parse and compile time, ms.
        build_ms: f64,
        /// Counts of what it holds.
        policy: Value,
        /// The file it came from, which SIGHUP and later path-less reloads read.
        path: PathBuf,
        /// Set when that file is not the config file's `policy` (a restart loads that one).
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    /// Tracked flows.
    Flows {
        /// How many.
        count: usize,
        /// The flows.
        flows: Vec<FlowInfo>,
    },
    /// A decision.
    Explained {
        /// The epoch of the policy that made it.
        epoch: u32,
        /// The decision (as `margay explain --json` prints it).
        decision: Value,
    },
    /// The running config.
    Config {
        /// The config file it was loaded from.
        path: PathBuf,
        /// The config as TOML, defaults included (what runs, not what the file says now).
        text: String,
        /// The policy file reloads read.
        policy: PathBuf,
        /// The policy epoch.
        epoch: u32,
    },
    /// Counters (`stats`): an object of its own shape.
    Stats(serde_json::Map<String, Value>),
}

impl Reply {
    /// A successful reply.
    pub fn ok(body: Body) -> Reply {
        Reply { ok: true, body }
    }

    /// A failure.
    pub fn error(msg: impl std::fmt::Display) -> Reply {
        Reply { ok: false, body: Body::Error { error: msg.to_string(), epoch: None, kept: None } }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_read_and_write_as_the_documented_lines() {
        let cases = [
            (json!({"cmd": "stats"}), Request::Stats),
            (json!({"cmd": "reload"}), Request::Reload { path: None }),
            (json!({"cmd": "reload", "path": "/p.toml"}), Request::Reload { path: Some("/p.toml".into()) }),
            (
                json!({"cmd": "flows", "proto": "tcp", "port": 443}),
                Request::Flows {
                    proto: Some(Protocol::Name("tcp".into())),
                    addr: None,
                    port: Some(443),
                    limit: None,
                },
            ),
            (
                json!({"cmd": "flows", "proto": 17, "addr": "198.18.0.1", "limit": 5}),
                Request::Flows {
                    proto: Some(Protocol::Number(17)),
                    addr: Some("198.18.0.1".parse().unwrap()),
                    port: None,
                    limit: Some(5),
                },
            ),
            (
                json!({"cmd": "explain", "flow": "tcp 1.2.3.4:1 -> 5.6.7.8:80"}),
                Request::Explain { flow: "tcp 1.2.3.4:1 -> 5.6.7.8:80".into(), icmp: None },
            ),
            (json!({"cmd": "config"}), Request::Config),
        ];
        for (line, req) in cases {
            assert_eq!(serde_json::from_value::<Request>(line.clone()).unwrap(), req, "{line}");
            assert_eq!(serde_json::to_value(&req).unwrap(), line);
        }
        // A null optional field reads as absent (older clients send `"path": null`).
        assert_eq!(
            serde_json::from_value::<Request>(json!({"cmd": "reload", "path": null})).unwrap(),
            Request::Reload { path: None }
        );
        for bad in [
            json!({"cmd": "frobnicate"}),
            json!({"cmd": "explain"}),
            json!([1, 2]),
            json!({"cmd": "flows", "port": 70000}),
            json!({"cmd": "flows", "addr": "nowhere"}),
            json!({"flow": "x"}),
        ] {
            assert!(serde_json::from_value::<Request>(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(Protocol::Name("udp".into()).number(), Ok(17));
        assert!(Protocol::Name("bogus".into()).number().is_err());
    }

    #[test]
    fn replies_carry_ok_and_their_fields() {
        let r = Reply::ok(Body::Explained { epoch: 3, decision: json!({"verdict": "allow"}) });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"ok": true, "epoch": 3, "decision": {"verdict": "allow"}})
        );
        let e = Reply::error("bad request: x");
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"ok": false, "error": "bad request: x"}));
        let mut m = serde_json::Map::new();
        m.insert("rx_packets".into(), json!(5));
        assert_eq!(
            serde_json::to_value(Reply::ok(Body::Stats(m))).unwrap(),
            json!({"ok": true, "rx_packets": 5})
        );
    }
}
