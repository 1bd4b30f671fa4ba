use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<DaemonConfig, String> {
    DaemonConfig::parse(text, Path::new("d.toml")).map_err(|e| e.to_string())
}

const OK: &str = r#"
[[interface]]
name = "in0"
mac = "02:00:00:00:00:01"
[[interface]]
name = "out0"
mac = "02:00:00:00:00:02"
[[route]]
to = "198.18.2.0/24"
interface = "out0"
[[route]]
to = "2001:2::/48"
via = "2001:2::1"
interface = "out0"
[[neighbour]]
ip = "198.18.2.2"
mac = "02:00:00:00:02:02"
interface = "out0"
[conntrack]
capacity = 1000
[conntrack.timeouts]
udp = 30
"#;

#[test]
fn a_full_config() {
    let c = parse(OK).unwrap();
    assert_eq!(c.interfaces.len(), 2);
    assert_eq!(c.interfaces[1].mac.to_string(), "02:00:00:00:00:02");
    assert_eq!(c.routes[0].interface, 1);
    assert_eq!(c.routes[1].via, Some("2001:2::1".parse().unwrap()));
    assert_eq!(c.neighbours[0].interface, 1);
    assert_eq!(c.conntrack.capacity, 1000);
    assert_eq!(c.conntrack.timeouts, Timeouts { udp: 30, ..Timeouts::default() });
    assert!(c.conntrack.huge_pages, "huge pages by default");
    assert!(
        !parse(&OK.replace("capacity = 1000", "capacity = 1000\nhuge_pages = false"))
            .unwrap()
            .conntrack
            .huge_pages
    );
    assert!(c.conntrack.tcp_pickup, "mid-stream pickup by default, as Linux's tcp_loose");
    assert!(
        !parse(&OK.replace("capacity = 1000", "capacity = 1000\ntcp_pickup = false"))
            .unwrap()
            .conntrack
            .tcp_pickup
    );
    assert_eq!(c.flow_logs.interval, 10);
}

#[test]
fn errors_name_the_place() {
    let cases = [
        (
            OK.replace("interface = \"out0\"\n[[route]]", "interface = \"nope\"\n[[route]]"),
            "d.toml:10:13: unknown interface 'nope'",
        ),
        (
            OK.replace("02:00:00:00:00:02\"", "02:00:00:00:02\""),
            "d.toml:7:7: '02:00:00:00:02' is not a MAC address",
        ),
        (
            OK.replace("via = \"2001:2::1\"", "via = \"198.18.0.1\""),
            "d.toml:13:7: gateway 198.18.0.1 is not in 2001:2::/48's family",
        ),
        (OK.replace("capacity = 1000", "capacity = 0"), "d.toml:20:12: conntrack capacity must be"),
        (OK.replace("udp = 30", "udp = 0"), "d.toml:21:1: conntrack timeouts are seconds"),
        (OK.replace("udp = 30", "udp = 30\nfoo = 1"), "d.toml:23:1: unknown field `foo`"),
        (OK.replace("name = \"out0\"", "name = \"in0\""), "d.toml:6:8: duplicate interface 'in0'"),
        (format!("routes = \"kernel\"\n{OK}"), "d.toml:10:6: routes = 'kernel' mirrors the kernel's routes"),
        (format!("routes = \"bgp\"\n{OK}"), "d.toml:1:10: routes = 'bgp': expected 'static'"),
        (format!("{OK}[daemon]\nring_size = 1000"), "d.toml:24:13: ring_size must be a power of two"),
        (format!("{OK}[daemon]\nbatch = 0"), "d.toml:24:9: batch must be between 1 and 256"),
        (
            format!("{OK}[daemon]\nmetrics = \"localhost\""),
            "d.toml:24:11: metrics 'localhost' is not an address:port",
        ),
        (format!("{OK}[daemon]\nfail_mode = \"ajar\""), "d.toml:24:13: unknown variant `ajar`"),
        (format!("{OK}[flow_logs]\nkeep = 5000"), "d.toml:24:8: flow_logs keep must be between 0 and 1000"),
        (format!("{OK}[flow_logs]\nformat = \"csv\""), "d.toml:24:10: unknown variant `csv`"),
        (
            format!("{OK}[flow_logs]\naggregate_denied = 3"),
            "d.toml:24:20: flow_logs aggregate_denied is 0 (a record per flow), 1 (source ports aggregated) or 2",
        ),
        (
            format!("{OK}[ipfix]\ncollector = \"198.18.0.1\""),
            "d.toml:24:13: ipfix collector '198.18.0.1': give HOST:PORT",
        ),
        (format!("{OK}[ipfix]\nport = 4739"), "d.toml:24:1: unknown field `port`"),
        (
            format!("{OK}[ipfix]\ncollector = \"c:4739\"\nmax_message = 100"),
            "d.toml:25:15: ipfix max_message must be between 512 and 65000",
        ),
        (
            OK.replace("name = \"in0\"", "name = \"in0\"\nqueues = 0"),
            "d.toml:4:10: queues must be between 1 and 256",
        ),
    ];
    let store = "[datastore]\nkind = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n";
    let datastore_cases = [
        (
            format!("{OK}{store}prefix = \"margay\""),
            "d.toml:26:10: prefix 'margay' must be an absolute key path",
        ),
        (format!("{OK}{}", store.replace("etcd", "consul")), "d.toml:24:8: datastore kind 'consul'"),
        (
            format!("{OK}{}", store.replace("\"127.0.0.1:2379\"", "")),
            "d.toml:25:13: datastore endpoints: give at least one",
        ),
        (
            format!("{OK}{}", store.replace("127.0.0.1:2379", "etcd")),
            "d.toml:25:14: endpoint 'etcd' is not http(s)://HOST:PORT",
        ),
        (format!("{OK}{store}cert = \"c.pem\""), "d.toml:23:1: datastore: give both cert and key"),
        (format!("{OK}{store}name = \"Node_1\""), "d.toml:26:8: node name 'Node_1'"),
        (
            format!("policy = \"p.toml\"\n{OK}{store}"),
            "d.toml:24:1: both `policy = \"p.toml\"` and [datastore]",
        ),
    ];
    for (text, want) in cases.into_iter().chain(datastore_cases) {
        let got = parse(&text).unwrap_err();
        assert!(got.starts_with(want), "got: {got}\nwant: {want}");
    }
}

/// `ctl config` prints the running config: its text parses back to the same config, for
/// a config with every section and for the defaults.
#[test]
fn the_config_prints_back_to_itself() {
    let full = format!(
        "policy = \"/etc/margay/policy.toml\"\n{OK}[flow_logs]\npath = \"/var/log/m \\\"x\\\".jsonl\"\nkeep = 2\nformat = \"margay\"\naggregate_allowed = 2\nlog_rate = 7\n[ipfix]\ncollector = \"[2001:db8::1]:4739\"\ntransport = \"tcp\"\nobservation_domain = 9\n[daemon]\nfail_mode = \"closed\"\ncores = [1, 3]\nmetrics = \"127.0.0.1:9464\"\nforward_only = true\n"
    );
    let store = format!(
        "{OK}[datastore]\nkind = \"etcd\"\nendpoints = [\"https://198.18.0.1:2379\", \"198.18.0.2:2379\"]\nca = \"/etc/ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\nname = \"node-1\"\nquiet_ms = 50\n"
    );
    let c = parse(&store).unwrap();
    let d = c.datastore.as_ref().unwrap();
    assert_eq!(d.endpoints, ["https://198.18.0.1:2379", "http://198.18.0.2:2379"]);
    assert_eq!(
        (d.prefix.as_str(), d.node.as_str(), d.quiet_ms, d.max_delay_ms),
        ("/margay/v1/", "node-1", 50, 1000)
    );
    for text in [
        store.as_str(),
        full.as_str(),
        OK,
        "routes = \"kernel\"\n[[interface]]\nname = \"eth0\"\nqueues = 2\n",
    ] {
        let config = parse(text).unwrap();
        let printed = config.to_toml();
        assert_eq!(parse(&printed).unwrap(), config, "printed:\n{printed}");
    }
    assert!(parse(&full).unwrap().to_toml().contains("fail_mode = \"closed\""));
}
