//! The client against a real etcd (Debian's etcd-server, started on free ports for the test):
//! a list reads any number of keys in pages at one revision, and values larger than gRPC's
//! default 4 MiB message.

use margay_config::daemon::Datastore;
use margay_datastore::Store;
use margay_testkit::etcd::Etcd;

#[test]
fn a_list_pages_through_many_keys_and_big_values_at_one_revision() {
    let Some(etcd) = Etcd::start_args("paging", &["--max-request-bytes", "16777216"]).unwrap() else {
        return;
    };
    let mut store = Store::connect(&Datastore::new(vec![etcd.endpoint()], "test")).unwrap();
    let prefix = store.config().prefix.clone();
    for i in 0..1_234 {
        let key = format!("{prefix}pod/ns{}/p{i}", i % 7);
        store.put_raw(&key, &format!(r#"{{"metadata":{{"name":"p{i}"}}}}"#)).unwrap();
    }
    // A 6 MB value: a network set of 300,000 CIDRs.
    let big = format!(r#"{{"spec":{{"nets":[{}]}}}}"#, vec![r#""10.0.0.0/28""#; 300_000].join(","));
    assert!(big.len() > 4 << 20);
    let rev = store.put_raw(&format!("{prefix}globalnetworkset.projectcalico.org/feed"), &big).unwrap();
    // Outside the prefix (the next key range): not listed.
    store.put_raw("/margay/v10/pod/x", "{}").unwrap();
    let snap = store.list().unwrap();
    assert_eq!(snap.items.len(), 1_235);
    assert!(snap.revision > rev);
    assert_eq!(snap.items[&format!("{prefix}globalnetworkset.projectcalico.org/feed")].0.len(), big.len());
    assert_eq!(snap.items[&format!("{prefix}pod/ns1/p1233")].1, rev - 1, "each key with its revision");
}

/// A write whose resulting set does not validate writes nothing, and its error names the
/// resource's key and the file and line it was read from.
#[test]
fn an_invalid_write_names_the_file_and_writes_nothing() {
    let Some(etcd) = Etcd::start("invalid").unwrap() else { return };
    let mut store = Store::connect(&Datastore::new(vec![etcd.endpoint()], "test")).unwrap();
    let prefix = store.config().prefix.clone();
    let dir = etcd.dir().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gnp.yaml");
    std::fs::write(
        &file,
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: bad}\nspec:\n  selector: app ==\n",
    )
    .unwrap();
    let entries = margay_datastore::layout::read_entries(&prefix, &[&file]).unwrap();
    let validate = |r: &margay_config::k8s::Resources| -> anyhow::Result<()> {
        r.to_policy_set()?;
        Ok(())
    };
    let err = format!("{:#}", store.write(&entries, &[], &validate).unwrap_err());
    assert!(err.contains("/margay/v1/globalnetworkpolicy.projectcalico.org/bad:1:"), "{err}");
    assert!(err.contains("bad selector"), "{err}");
    assert!(err.ends_with(&format!("(that resource is the one read at {}:5)", file.display())), "{err}");
    assert!(store.list().unwrap().items.is_empty(), "nothing written");
}
