//! Policy files: the shop example validates, and every class of mistake is rejected with the
//! file, line and column of the offending value.

use std::path::{Path, PathBuf};

use margay_config::PolicySet;
use margay_config::policy::{Action, PolicyError, TierDefault, Verdict};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn the_shop_example_validates() {
    let set = PolicySet::load(&example("shop.toml")).unwrap();
    assert_eq!(
        set.namespaces.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["default", "shop", "infra"]
    );
    assert_eq!(set.endpoints.len(), 6);
    assert_eq!(set.netsets[0].nets.len(), 3);
    // Tiers in evaluation order, the built-in default last.
    assert_eq!(set.tiers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["security", "default"]);
    assert_eq!(set.tiers[0].default_action, TierDefault::Pass);
    let web = set.policies.iter().find(|p| p.name == "web").unwrap();
    assert_eq!((web.tier.as_str(), web.namespace.as_deref()), ("default", Some("shop")));
    // types omitted: ingress, plus egress because it has egress rules.
    assert!(web.ingress_type && web.egress_type);
    let db = set.policies.iter().find(|p| p.name == "db").unwrap();
    assert!(db.ingress_type && !db.egress_type);
    assert_eq!(web.ingress[1].destination.ports[0].to_string(), "8000:8080");
    let pci = set.policies.iter().find(|p| p.name == "pci-isolation").unwrap();
    assert_eq!(
        pci.ingress.iter().map(|r| r.action).collect::<Vec<_>>(),
        [Action::Log, Action::Pass, Action::Deny]
    );
    assert!(set.policies.iter().any(|p| p.staged));
    assert_eq!(set.defaults.no_policy_action, Verdict::Allow);
}

/// Parses `text` and returns the error as `line:column: message`.
fn error(text: &str) -> String {
    match PolicySet::parse(text, Path::new("p.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(PolicyError::Invalid { path, line, column, message }) => {
            assert_eq!(path, Path::new("p.toml"));
            format!("{line}:{column}: {message}")
        }
        Err(e) => panic!("{e}"),
    }
}

fn assert_error(text: &str, at: &str, contains: &str) {
    let e = error(text);
    assert!(e.starts_with(at) && e.contains(contains), "wanted {at} ... {contains:?}, got {e:?}\n{text}");
}

const POLICY: &str = "[[policy]]\nname = \"p\"\nselector = \"all()\"\n";

#[test]
fn unknown_fields_are_rejected_where_they_are() {
    assert_error(
        "[[endpoint]]\nname = \"a\"\nips = [\"198.18.0.1\"]\nlabel = {}\n",
        "4:1:",
        "unknown field `label`",
    );
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  sorce = {{}}\n"),
        "6:3:",
        "unknown field `sorce`",
    );
    assert_error("[defaults]\nno_policy = \"allow\"\n", "2:1:", "unknown field");
    assert_error("[[nonsense]]\n", "1:", "unknown field `nonsense`");
}

#[test]
fn bad_values_point_at_the_value() {
    assert_error(
        "[[netset]]\nname = \"n\"\nnets = [\"10.0.0.0/8\", \"10.0.0/8\"]\n",
        "3:8:",
        "'10.0.0/8' is not a CIDR",
    );
    assert_error("[[netset]]\nname = \"n\"\nnets = [\"10.0.0.0/40\"]\n", "3:8:", "prefix length '40'");
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"tcp\"\n  destination = {{ ports = [80, \"9000:80\"] }}\n"
        ),
        "7:",
        "reversed",
    );
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"tcp\"\n  destination = {{ ports = [70000] }}\n"
        ),
        "7:",
        "not a port",
    );
    assert_error(
        "[[policy]]\nname = \"p\"\nselector = \"app = 'web'\"\n",
        "3:12:",
        "bad selector \"app = 'web'\": column 5",
    );
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"gre\"\n"),
        "6:14:",
        "not a protocol",
    );
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"accept\"\n"),
        "5:12:",
        "unknown variant `accept`",
    );
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"\n  icmp = {{ code = 0 }}\n"
        ),
        "7:10:",
        "ICMP code needs a type",
    );
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  ip_version = 5\n"),
        "6:16:",
        "ip_version is 4 or 6",
    );
    assert_error("[[endpoint]]\nname = \"a\"\nips = [\"198.18.0.256\"]\n", "3:8:", "invalid IP address");
    assert_error("this is not toml", "1:", "");
}

#[test]
fn cross_object_mistakes_point_at_the_object() {
    assert_error(&format!("{POLICY}{POLICY}"), "5:8:", "duplicate policy name 'p' in global");
    assert_error(
        "[[tier]]\nname = \"t\"\norder = 1\n[[tier]]\nname = \"t\"\norder = 2\n",
        "5:8:",
        "duplicate tier name 't'",
    );
    assert_error("[[tier]]\nname = \"default\"\norder = 1\n", "2:8:", "built in");
    assert_error("[[policy]]\nname = \"p\"\ntier = \"secuirty\"\n", "3:8:", "unknown tier 'secuirty'");
    assert_error("[[policy]]\nname = \"p\"\nnamespace = \"shp\"\n", "3:13:", "unknown namespace 'shp'");
    assert_error(
        "[[endpoint]]\nname = \"a\"\nnamespace = \"x\"\nips = [\"198.18.0.1\"]\n",
        "3:13:",
        "unknown namespace 'x'",
    );
    assert_error(
        "[[endpoint]]\nname = \"a\"\nips = [\"198.18.0.1\"]\n[[endpoint]]\nname = \"b\"\nips = [\"198.18.0.2\", \"198.18.0.1\"]\n",
        "6:22:",
        "belongs to endpoint 'a'",
    );
    assert_error("[[endpoint]]\nname = \"a\"\nips = []\n", "2:8:", "has no ips");
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  destination = {{ ports = [80] }}\n"),
        "4:3:",
        "ports need protocol",
    );
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"\n  source = {{ not_ports = [80] }}\n"
        ),
        "4:3:",
        "ports need protocol",
    );
    assert_error(
        &format!("{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  icmp = {{ type = 8 }}\n"),
        "4:3:",
        "need protocol = \"icmp\"",
    );
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"\n  ip_version = 6\n"
        ),
        "4:3:",
        "does not go with ip_version 6",
    );
    assert_error(
        &format!(
            "{POLICY}  [[policy.ingress]]\n  action = \"allow\"\n  ip_version = 4\n  source = {{ nets = [\"2001:db8::/32\"] }}\n"
        ),
        "4:3:",
        "other address family",
    );
    assert_error("[[policy]]\nname = \"p\"\ntypes = []\n", "3:9:", "types is empty");
    assert_error(
        "[[policy]]\nname = \"p\"\ntypes = [\"ingress\"]\n  [[policy.egress]]\n  action = \"allow\"\n",
        "4:3:",
        "egress rules in a policy whose types leave out egress",
    );
    assert_error("[[tier]]\nname = \"t\"\norder = nan\n", "3:9:", "finite");
}

#[test]
fn namespaced_policies_may_share_a_name_across_namespaces() {
    let text = "[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"b\"\n\
                [[policy]]\nname = \"p\"\nnamespace = \"a\"\n[[policy]]\nname = \"p\"\nnamespace = \"b\"\n[[policy]]\nname = \"p\"\n";
    let set = PolicySet::parse(text, Path::new("p.toml")).unwrap();
    assert_eq!(set.policies.len(), 3);
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = PolicySet::load(Path::new("/nonexistent/policy.toml")).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/policy.toml: "), "{e}");
}

/// A reload of a FIFO blocked the daemon's reload (and everything waiting on its lock) until
/// someone wrote to it; a huge file took seconds and a gigabyte. Only regular files of at most
/// the limit are read, and the refusal is immediate.
#[test]
fn only_regular_files_within_the_limit_are_read() {
    let dir = std::env::temp_dir().join(format!("margay-policy-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let started = std::time::Instant::now();
    let e = PolicySet::load(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused at once, not blocked");
    // A directory is read as one policy of its TOML and resource files
    // (docs/guide/kubernetes.md): one with none is refused, and so is a FIFO among them, and
    // their sum past the limit.
    std::fs::remove_file(&fifo).unwrap();
    let e = PolicySet::load(&dir).unwrap_err().to_string();
    assert!(e.contains("a directory without .toml, .yaml, .yml or .json files"), "{e}");
    let yaml_fifo = dir.join("fifo.yaml");
    let _ = std::fs::remove_file(&yaml_fifo);
    assert!(std::process::Command::new("mkfifo").arg(&yaml_fifo).status().unwrap().success());
    let e = PolicySet::load(&dir).unwrap_err().to_string();
    assert!(e.contains("fifo.yaml") && e.contains("not a regular file"), "{e}");
    std::fs::remove_file(&yaml_fifo).unwrap();
    let ns = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    std::fs::write(dir.join("a.yaml"), ns("a")).unwrap();
    std::fs::write(dir.join("b.yaml"), ns("b")).unwrap();
    assert_eq!(PolicySet::load(&dir).unwrap().namespaces.len(), 3, "a, b and default");
    let e = PolicySet::load_limited(&dir, 60).unwrap_err().to_string();
    assert!(e.contains("b.yaml") && e.contains("size limit"), "{e}");
    let big = std::env::temp_dir().join(format!("margay-policy-files-big-{}.toml", std::process::id()));
    std::fs::write(&big, format!("# {}\n", "x".repeat(5000))).unwrap();
    let e = PolicySet::load_limited(&big, 4096).unwrap_err().to_string();
    assert!(e.contains("larger than 4096 bytes"), "{e}");
    assert!(PolicySet::load_limited(&big, 8192).is_ok());
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An empty, truncated or comment-only file written over a real policy meant allow-all, and a
/// reload took it. Such a set now refuses to replace one with policies, unless it says so.
#[test]
fn an_empty_policy_does_not_replace_a_real_one_unless_it_says_so() {
    for text in ["", "# nothing here\n", "[defaults]\nno_policy_action = \"allow\"\n"] {
        let set = PolicySet::parse(text, Path::new("empty.toml")).unwrap();
        assert!(set.is_empty());
        let why = set.refuses_to_replace(3).unwrap();
        assert!(why.contains("no [[policy]]") && why.contains("intentionally_empty"), "{why}");
        assert!(set.refuses_to_replace(0).is_none(), "nothing to replace");
    }
    let meant = PolicySet::parse("intentionally_empty = true\n", Path::new("e.toml")).unwrap();
    assert!(meant.refuses_to_replace(3).is_none());
    let real = PolicySet::load(&example("shop.toml")).unwrap();
    assert!(!real.is_empty() && real.refuses_to_replace(3).is_none());
}

/// Several sources as one policy: the TOML files' [defaults] apply and must agree; a namespace
/// label given two values, or a name given twice, is a conflict naming the source read second.
#[test]
fn sources_merge_and_conflicts_are_named() {
    let dir = std::env::temp_dir().join(format!("margay-policy-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let deny = file("deny.toml", "[defaults]\nno_policy_action = \"deny\"\n");
    let plain = file("plain.toml", "[[namespace]]\nname = \"prod\"\nlabels = { env = \"prod\" }\n");
    let yaml =
        file("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: a}}\n");
    let set = PolicySet::load_all(&[plain.clone(), deny.clone(), yaml.clone()], 1 << 20).unwrap();
    assert_eq!(set.defaults.no_policy_action, Verdict::Deny, "the TOML's [defaults]");
    let prod = set.namespaces.iter().find(|n| n.name == "prod").unwrap();
    assert_eq!(
        (prod.labels.get("env"), prod.labels.get("team")),
        (Some(&"prod".to_owned()), Some(&"a".to_owned()))
    );
    let allow = file("allow.toml", "[defaults]\nno_policy_action = \"allow\"\n");
    let e = PolicySet::load_all(&[deny.clone(), allow.clone()], 1 << 20).unwrap_err().to_string();
    assert!(e.contains("allow.toml: [defaults] differ from those of") && e.contains("deny.toml"), "{e}");
    let other =
        file("other.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: dev}}\n");
    let e = PolicySet::load_all(&[plain, other], 1 << 20).unwrap_err().to_string();
    assert!(e.contains("namespace 'prod' has label env = 'prod' elsewhere and 'dev' here"), "{e}");
    let p = "[[policy]]\nname = \"p\"\n[[policy.ingress]]\naction = \"allow\"\n";
    let (a, b) = (file("a.toml", p), file("b.toml", p));
    let e = PolicySet::load_all(&[a, b], 1 << 20).unwrap_err().to_string();
    assert!(e.contains("b.toml: policy 'p' is given elsewhere too"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
