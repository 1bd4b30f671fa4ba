//! A policy set written back as a Margay TOML policy file (`margay import`): the file reads
//! back to a set that decides every flow as this one does. Built as a `toml` value tree, so
//! quoting and escaping are the crate's.

use toml::{Table, Value};

use super::*;
use crate::net::{Cidr, IcmpMatch, PortRange};

impl PolicySet {
    /// This set as a TOML policy file, or why it cannot be written as one. Endpoints are named
    /// `NAMESPACE/NAME` (a file's endpoint names are unique across namespaces), and rules that
    /// came from one resource rule are written one by one.
    pub fn to_toml(&self) -> Result<String, String> {
        let mut root = Table::new();
        let labels = |l: &BTreeMap<String, String>| {
            Value::Table(l.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
        };
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        let cidrs = |c: &[Cidr]| strings(c.iter().map(ToString::to_string).collect());
        root.insert(
            "namespace".into(),
            tables(self.namespaces.iter().map(|n| {
                let mut t = Table::new();
                t.insert("name".into(), n.name.clone().into());
                if !n.labels.is_empty() {
                    t.insert("labels".into(), labels(&n.labels));
                }
                t
            })),
        );
        root.insert(
            "endpoint".into(),
            tables(self.endpoints.iter().map(|e| {
                let mut t = Table::new();
                t.insert("name".into(), format!("{}/{}", e.namespace, e.name).into());
                t.insert("namespace".into(), e.namespace.clone().into());
                t.insert("ips".into(), strings(e.ips.iter().map(ToString::to_string).collect()));
                if !e.labels.is_empty() {
                    t.insert("labels".into(), labels(&e.labels));
                }
                if let Some(i) = &e.interface {
                    t.insert("interface".into(), i.clone().into());
                }
                t
            })),
        );
        root.insert(
            "netset".into(),
            tables(self.netsets.iter().map(|n| {
                let mut t = Table::new();
                t.insert("name".into(), n.name.clone().into());
                if !n.labels.is_empty() {
                    t.insert("labels".into(), labels(&n.labels));
                }
                t.insert("nets".into(), cidrs(&n.nets));
                t
            })),
        );
        let mut tiers = Vec::new();
        for tier in &self.tiers {
            if tier.name == DEFAULT_TIER {
                if tier.default_action != TierDefault::Deny || tier.order != DEFAULT_TIER_ORDER {
                    return Err("the default tier is changed (its default action is pass): a policy file cannot say so".into());
                }
                continue;
            }
            let mut t = Table::new();
            t.insert("name".into(), tier.name.clone().into());
            t.insert("order".into(), tier.order.into());
            let action = match tier.default_action {
                TierDefault::Deny => "deny",
                TierDefault::Pass => "pass",
            };
            t.insert("default_action".into(), action.into());
            tiers.push(t);
        }
        root.insert("tier".into(), tables(tiers.into_iter()));
        let mut policies = Vec::new();
        for p in &self.policies {
            let mut t = Table::new();
            t.insert("name".into(), p.name.clone().into());
            t.insert("tier".into(), p.tier.clone().into());
            if let Some(o) = p.order {
                t.insert("order".into(), o.into());
            }
            if let Some(ns) = &p.namespace {
                t.insert("namespace".into(), ns.clone().into());
            }
            t.insert("selector".into(), p.selector.to_string().into());
            let mut types = Vec::new();
            if p.ingress_type {
                types.push("ingress".to_owned());
            }
            if p.egress_type {
                types.push("egress".to_owned());
            }
            if types.is_empty() {
                // Selecting nothing in either direction: the policy can never apply.
                continue;
            }
            t.insert("types".into(), strings(types));
            if p.staged {
                t.insert("staged".into(), true.into());
            }
            for (field, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
                if !rules.is_empty() {
                    t.insert(field.into(), tables(rules.iter().map(rule)));
                }
            }
            policies.push(t);
        }
        root.insert("policy".into(), tables(policies.into_iter()));
        let mut defaults = Table::new();
        defaults.insert("no_policy_action".into(), self.defaults.no_policy_action.as_str().into());
        defaults.insert("unmanaged_action".into(), self.defaults.unmanaged_action.as_str().into());
        root.insert("defaults".into(), Value::Table(defaults));
        if self.intentionally_empty {
            root.insert("intentionally_empty".into(), true.into());
        }
        root.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
        toml::to_string(&root).map_err(|e| e.to_string())
    }
}

fn tables(items: impl Iterator<Item = Table>) -> Value {
    Value::Array(items.map(Value::Table).collect())
}

fn rule(r: &Rule) -> Table {
    let mut t = Table::new();
    let action = match r.action {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Pass => "pass",
        Action::Log => "log",
    };
    t.insert("action".into(), action.into());
    if let Some(p) = r.protocol {
        t.insert("protocol".into(), p.to_string().into());
    }
    if let Some(p) = r.not_protocol {
        t.insert("not_protocol".into(), p.to_string().into());
    }
    if let Some(v) = r.ip_version {
        t.insert("ip_version".into(), Value::Integer(if v == IpVersion::V4 { 4 } else { 6 }));
    }
    let icmp = |m: IcmpMatch| {
        let mut t = Table::new();
        t.insert("type".into(), Value::Integer(m.kind.into()));
        if let Some(c) = m.code {
            t.insert("code".into(), Value::Integer(c.into()));
        }
        Value::Table(t)
    };
    if let Some(m) = r.icmp {
        t.insert("icmp".into(), icmp(m));
    }
    if let Some(m) = r.not_icmp {
        t.insert("not_icmp".into(), icmp(m));
    }
    for (field, peer) in [("source", &r.source), ("destination", &r.destination)] {
        let p = peer_table(peer);
        if !p.is_empty() {
            t.insert(field.into(), Value::Table(p));
        }
    }
    t
}

fn peer_table(p: &Peer) -> Table {
    let mut t = Table::new();
    let list = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let ports = |r: &[PortRange]| list(r.iter().map(ToString::to_string).collect());
    if !p.nets.is_empty() {
        t.insert("nets".into(), list(p.nets.iter().map(ToString::to_string).collect()));
    }
    if !p.not_nets.is_empty() {
        t.insert("not_nets".into(), list(p.not_nets.iter().map(ToString::to_string).collect()));
    }
    for (field, sel) in [
        ("selector", &p.selector),
        ("not_selector", &p.not_selector),
        ("namespace_selector", &p.namespace_selector),
    ] {
        if let Some(s) = sel {
            t.insert(field.into(), s.to_string().into());
        }
    }
    if !p.ports.is_empty() {
        t.insert("ports".into(), ports(&p.ports));
    }
    if !p.not_ports.is_empty() {
        t.insert("not_ports".into(), ports(&p.not_ports));
    }
    t
}
