//! The fleet, end to end: a real etcd (Debian's etcd-server, on a temporary directory and free
//! ports, stopped after each test, also on failure), `margay run` on the node of a namespace
//! topology fed from it over a management link (a veth from the node's namespace to the host's,
//! not served by Margay), and the CLI's `apply`, `get`, `delete` and `fleet status` against it.
//! Real TCP through the node says what the node enforces. Needs root (CI runs as root).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test setup panics on failure")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use margay_testkit::etcd::Etcd;
use margay_testkit::netns::{self, CLIENT, DB, DaemonProcess, Topology, WEB};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_margay");

static SERIAL: Mutex<()> = Mutex::new(());

/// The world as resources: the three hosts as pods of namespace `shop`.
fn world() -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    for (app, ip) in [("client", CLIENT.ip), ("web", WEB.ip), ("db", DB.ip)] {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-0, namespace: shop, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    y
}

/// A Calico policy denying the client's TCP to the web pod.
const DENY_WEB: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  selector: app == 'web'\n  types: [Ingress]\n  ingress:\n  - action: Deny\n    protocol: TCP\n    source: {selector: app == 'client'}\n  - action: Allow\n";

/// A node topology whose node namespace reaches the host over a management veth
/// (`198.19.250.N+1` on the node, `.N` on the host).
struct Node {
    t: Topology,
    work: PathBuf,
    daemon: Option<DaemonProcess>,
    link: String,
}

impl Node {
    fn start(name: &str, index: u8, etcd: &Etcd, work: &Path) -> Node {
        Node::start_with(name, index, etcd, work, "")
    }

    /// [`Node::start`] with `store_extra` added to its `[datastore]`.
    fn start_with(name: &str, index: u8, etcd: &Etcd, work: &Path, store_extra: &str) -> Node {
        let t = Topology::build_with(&format!("mgf{}{name}", std::process::id() % 100_000), 1)
            .expect("building the namespace topology needs root and iproute2");
        let link = format!("mgfl{}{index}", std::process::id() % 10_000);
        let (host_ip, node_ip) =
            (format!("198.19.250.{}", 4 * index + 1), format!("198.19.250.{}", 4 * index + 2));
        let ns = t.ns("node");
        for args in [
            vec!["link", "add", &link, "type", "veth", "peer", "name", "mgmt0", "netns", &ns],
            vec!["addr", "add", &format!("{host_ip}/30"), "dev", &link],
            vec!["link", "set", &link, "up"],
        ] {
            netns::run(Command::new("ip").args(&args)).unwrap();
        }
        for args in [
            vec!["addr", "add", &format!("{node_ip}/30"), "dev", "mgmt0"],
            vec!["link", "set", "mgmt0", "up"],
        ] {
            netns::run(Command::new("ip").args(["-n", &ns]).args(&args)).unwrap();
        }
        let work = work.join(name);
        std::fs::create_dir_all(&work).unwrap();
        let store = format!(
            "[datastore]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nname = \"{name}\"\nquiet_ms = 50\nmax_delay_ms = 500\n{store_extra}",
            etcd.endpoint_at(&host_ip)
        );
        let config =
            t.node_config(Path::new("unused"), &work.join("margay.sock"), &work.join("flows.jsonl"), "");
        let config = config.replacen("policy = \"unused\"\n", "", 1) + &store;
        std::fs::write(work.join("node.toml"), config).unwrap();
        let mut n = Node { t, work, daemon: None, link };
        n.run();
        n
    }

    fn run(&mut self) {
        self.daemon = Some(
            DaemonProcess::start(
                &self.t,
                Path::new(EXE),
                &self.work.join("node.toml"),
                &self.work.join("margay.sock"),
                &self.work.join("margay.log"),
            )
            .unwrap(),
        );
    }

    fn stats(&self) -> Value {
        self.daemon.as_ref().unwrap().ctl(&json!({"cmd": "stats"})).unwrap()
    }

    /// Whether the client's TCP to the web server on port 80 is answered.
    fn web_answers(&self) -> bool {
        netns::curl(&self.t, CLIENT.role, &format!("http://{}:80/", WEB.ip), 2).unwrap() == Some(200)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
    }
}

/// `margay ARGS --etcd ENDPOINT`.
fn margay(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(EXE).args(args).args(["--etcd", &etcd.endpoint()]).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_node_follows_the_store_through_writes_outages_compaction_and_bad_keys() {
    if !margay_testkit::require_root("a_node_follows_the_store") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut etcd) = Etcd::start("follow").unwrap() else { return };
    let work = etcd.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("world.yaml"), world()).unwrap();
    std::fs::write(work.join("deny.yaml"), DENY_WEB).unwrap();
    let w = work.join("world.yaml");
    let o = margay(&etcd, &["apply", "-f", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let node = Node::start("n1", 0, &etcd, &work);
    let stop = Arc::new(AtomicBool::new(false));
    let _web = netns::http_server(
        &node.t.ns(WEB.role),
        format!("{}:80", WEB.ip).parse().unwrap(),
        Arc::clone(&stop),
    )
    .unwrap();
    assert!(node.web_answers(), "no policy selects web: allowed");
    let s = node.stats();
    assert_eq!(s["datastore"]["connected"], json!(true), "{s}");
    // A datastore node's policy follows the store: a reload is refused, saying so.
    let r = node.daemon.as_ref().unwrap().ctl(&json!({"cmd": "reload"})).unwrap();
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("comes from the datastore"), "{r}");

    // apply --wait returns once the node enforces the deny; the flow stops.
    let d = work.join("deny.yaml");
    let o = margay(&etcd, &["apply", "-f", d.to_str().unwrap(), "--wait", "--timeout", "20"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("every live node (1) enforces revision"), "{}", text(&o));
    assert!(!node.web_answers(), "the deny is enforced when apply --wait returns");
    let o = margay(&etcd, &["fleet", "status", "--json"]);
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["nodes"][0]["node"], "n1", "{status}");
    assert_eq!(status["nodes"][0]["revision"], status["resources_revision"], "{status}");
    let o = margay(&etcd, &["get", "globalnetworkpolicy", "deny-web", "-o", "json"]);
    assert!(text(&o).contains("\"deny-web\""), "{}", text(&o));

    // etcd killed: the node keeps enforcing and says the store is unreachable.
    etcd.kill();
    assert!(
        eventually(Duration::from_secs(20), || node.stats()["datastore"]["connected"] == json!(false)),
        "{}",
        node.stats()
    );
    let s = node.stats();
    assert!(s["datastore"]["last_error"].as_str().unwrap().contains("etcd unreachable"), "{s}");
    assert!(!node.web_answers(), "the last policy stays enforced");
    // Back: the node reconnects, resumes from its revision and follows a delete.
    etcd.resume().unwrap();
    assert!(eventually(Duration::from_secs(30), || node.stats()["datastore"]["connected"] == json!(true)));
    let o = margay(&etcd, &["delete", "globalnetworkpolicy", "deny-web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(eventually(Duration::from_secs(10), || node.web_answers()), "the delete reached the node");

    // An invalid resource written straight into the store: the node keeps its policy and
    // names the key.
    let bad_key = "/margay/v1/globalnetworkpolicy.projectcalico.org/broken";
    let mut store = margay_datastore::Store::connect(&store_config(&etcd)).unwrap();
    store.put_raw(bad_key, r#"{"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkPolicy","metadata":{"name":"broken"},"spec":{"selector":"app =="}}"#).unwrap();
    assert!(eventually(Duration::from_secs(10), || node.stats()["datastore"]["rejected"].as_u64() >= Some(1)));
    let s = node.stats();
    assert!(s["datastore"]["last_error"].as_str().unwrap().contains(bad_key), "{s}");
    assert!(node.web_answers(), "the last good policy stays");
    let o = margay(&etcd, &["fleet", "status"]);
    assert!(text(&o).contains(bad_key), "fleet status shows the error: {}", text(&o));
    // A write that validates is refused while the store holds the bad key, naming it.
    let o = margay(&etcd, &["apply", "-f", d.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains(bad_key), "{}", text(&o));
    // Removed by hand, the node enforces again.
    store.delete_raw(bad_key).unwrap();
    assert!(eventually(Duration::from_secs(10), || node.stats()["datastore"]["last_error"].is_null()));
    // Cut off from the store (its management link down) while a deny is written and the
    // history compacted past the node's revision: back, it lists again and converges.
    let lists = node.stats()["datastore"]["lists"].as_u64().unwrap();
    let mgmt = |state: &str| {
        netns::run(Command::new("ip").args(["-n", &node.t.ns("node"), "link", "set", "mgmt0", state]))
            .unwrap();
    };
    mgmt("down");
    assert!(
        eventually(Duration::from_secs(30), || node.stats()["datastore"]["connected"] == json!(false)),
        "{}",
        node.stats()
    );
    let o = margay(&etcd, &["apply", "-f", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let rev = store.list().unwrap().revision;
    store.compact(rev).unwrap();
    assert!(node.web_answers(), "cut off, the node has not seen the deny");
    mgmt("up");
    assert!(eventually(Duration::from_secs(30), || !node.web_answers()), "the node converged on the deny");
    let s = node.stats();
    assert!(s["datastore"]["lists"].as_u64().unwrap() > lists, "it listed again: {s}");
    assert!(s["datastore"]["revision"].as_i64().unwrap() >= rev, "it enforces revision {rev} or later: {s}");
    stop.store(true, Ordering::Relaxed);
}

fn store_config(etcd: &Etcd) -> margay_config::daemon::Datastore {
    margay_config::daemon::Datastore::new(vec![etcd.endpoint()], "test")
}

/// Three nodes fed by one etcd: `apply --wait` returns only once all three enforce what it
/// wrote; a workload added with `apply` becomes reachable as the policy says and stops being so
/// when deleted.
#[test]
fn three_nodes_enforce_what_apply_wrote_when_it_returns() {
    if !margay_testkit::require_root("three_nodes_enforce_what_apply_wrote") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(etcd) = Etcd::start("three").unwrap() else { return };
    let work = etcd.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The client may open connections to web pods only; the web pod is not there yet.
    let world = world();
    let (without_web, web) = {
        let docs: Vec<&str> = world.split("---\n").collect();
        let web: String = docs.iter().find(|d| d.contains("web-0")).map(|d| (*d).to_owned()).unwrap();
        let rest: Vec<&str> = docs.into_iter().filter(|d| !d.contains("web-0")).collect();
        (rest.join("---\n"), web)
    };
    let egress = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-out, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 80}]\n";
    let file = |name: &str, text: &str| {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (base, web, deny) =
        (file("base.yaml", &(without_web + egress)), file("web.yaml", &web), file("deny.yaml", DENY_WEB));
    let o = margay(&etcd, &["apply", "-f", &base]);
    assert!(o.status.success(), "{}", text(&o));
    let nodes: Vec<Node> = (0..3).map(|i| Node::start(&format!("n{i}"), i, &etcd, &work)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let _servers: Vec<_> = nodes
        .iter()
        .map(|n| {
            netns::http_server(
                &n.t.ns(WEB.role),
                format!("{}:80", WEB.ip).parse().unwrap(),
                Arc::clone(&stop),
            )
            .unwrap()
        })
        .collect();
    let answers = |want: bool, what: &str| {
        for n in &nodes {
            assert_eq!(n.web_answers(), want, "{what} on {}", n.work.display());
        }
    };
    answers(false, "no web pod: the client's egress allows none");
    let wait = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--wait", "--timeout", "30"]);
        let o = margay(&etcd, &all);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("every live node (3) enforces revision"), "{}", text(&o));
    };
    wait(&["apply", "-f", &web]);
    answers(true, "the web pod added");
    wait(&["apply", "-f", &deny]);
    answers(false, "the deny applied");
    let o = margay(&etcd, &["fleet", "status"]);
    for n in ["n0", "n1", "n2"] {
        assert!(text(&o).contains(n), "{}", text(&o));
    }
    wait(&["delete", "-f", &deny]);
    answers(true, "the deny deleted");
    wait(&["delete", "pod", "web-0", "-n", "shop"]);
    answers(false, "the web pod deleted");
    stop.store(true, Ordering::Relaxed);
}

/// Certificates for a TLS etcd, made with openssl: a CA, a server certificate for 127.0.0.1
/// and the management address, and a client certificate. Returns (ca, server cert, server key,
/// client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/deps.sh test)");
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=margay-test-ca",
    ]);
    // X.509 v3 for both (rustls refuses v1 certificates).
    std::fs::write(
        p("server.cnf"),
        "subjectAltName = IP:127.0.0.1, IP:198.19.250.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    std::fs::write(p("client.cnf"), "extendedKeyUsage = clientAuth\n").unwrap();
    for who in ["server", "client"] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ]);
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "",
            "-days",
            "1",
        ];
        let (csr, pem) = (format!("{who}.csr"), format!("{who}.pem"));
        args[3] = &csr;
        args[10] = &pem;
        let ext = format!("{who}.cnf");
        args.extend(["-extfile", &ext]);
        openssl(&args);
    }
    [p("ca.pem"), p("server.pem"), p("server.key"), p("client.pem"), p("client.key")]
}

/// An etcd that requires client certificates: the CLI and a node reach it with theirs; without
/// a certificate the CLI is refused.
#[test]
fn the_cli_and_a_node_talk_to_an_etcd_that_requires_client_certificates() {
    if !margay_testkit::require_root("the_cli_and_a_node_talk_to_a_tls_etcd") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let certs_dir = std::env::temp_dir().join(format!("margay-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs_dir);
    std::fs::create_dir_all(&certs_dir).unwrap();
    let [ca, cert, key, client_cert, client_key] = certificates(&certs_dir);
    let Some(etcd) = Etcd::start_tls("tls", [ca.clone(), cert, key]).unwrap() else { return };
    let work = etcd.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.join("world.yaml");
    std::fs::write(&w, world()).unwrap();
    let run = |args: &[&str], with_cert: bool| {
        let mut c = Command::new(EXE);
        c.args(args).args(["--etcd", &etcd.endpoint(), "--cacert"]).arg(&ca);
        if with_cert {
            c.arg("--cert").arg(&client_cert).arg("--key").arg(&client_key);
        }
        c.output().unwrap()
    };
    let o = run(&["apply", "-f", w.to_str().unwrap()], false);
    assert!(!o.status.success(), "no client certificate: refused: {}", text(&o));
    let o = run(&["apply", "-f", w.to_str().unwrap()], true);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["get", "pod", "web-0", "-n", "shop", "-o", "name"], true);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "/margay/v1/pod/shop/web-0", "{}", text(&o));
    // A node with the client certificate in its [datastore].
    let node = Node::start_with(
        "t0",
        0,
        &etcd,
        &work,
        &format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            ca.display().to_string(),
            client_cert.display().to_string(),
            client_key.display().to_string()
        ),
    );
    assert!(
        eventually(Duration::from_secs(10), || node.stats()["datastore"]["connected"] == json!(true)),
        "{}",
        node.stats()
    );
    let d = work.join("deny.yaml");
    std::fs::write(&d, DENY_WEB).unwrap();
    let o = run(&["apply", "-f", d.to_str().unwrap(), "--wait", "--timeout", "20"], true);
    assert!(o.status.success() && text(&o).contains("every live node (1)"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&certs_dir);
}
