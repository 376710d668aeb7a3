//! The derivations `builtins.vmTest` returns, as attribute sets for Nix's
//! `derivation` (which `cpp/plugin.cc` calls).
//!
//! `.driver` / `.driverInteractive` (`nixos-test-driver-<name>[-interactive]`):
//! ```text
//! builder  = <driver>/bin/nixos-test-driver      (the driver, in the store)
//! args     = [ "--write-wrapper" ]
//! nodesJson, testScript   the test, passed as files (passAsFile: Nix sets
//!                         $nodesJsonPath, $testScriptPath)
//! globalTimeout, vmTestName, vmTestInteractive = "1" | ""
//! vmTestPath, vmTestPython  the run's PATH and NIX_VMTEST_PYTHON (below),
//!                           which the wrapper sets up the same way
//! vmTestArgs                extraDriverArgs as a JSON list (if any)
//! vmTestCheck = ""          the script was checked at evaluation
//! ```
//! which writes `$out/bin/nixos-test-driver` and
//! `$out/share/nix-vmtest/{nodes.json,test-script}` (see [`super::wrapper`]).
//!
//! `vm-test-run-<name>`:
//! ```text
//! builder  = <driver>/bin/nixos-test-driver
//! args     = [ "-o" $out "--junit-xml" $out/junit.xml "--global-timeout" N
//!              "--nodes-json" ${.driver}/share/nix-vmtest/nodes.json
//!              ${.driver}/share/nix-vmtest/test-script "--log-file" $out/log
//!              extraDriverArgs... ]
//! PATH=hostPath, or PATH=/usr/bin:/bin and NIX_VMTEST_PYTHON=/usr/bin/python3
//! globalTimeout, vmTestName
//! requiredSystemFeatures = [ "nixos-test" "kvm" ]   (overridable)
//! ```
//!
//! `vm-snapshot-<name>-<node>`, one per node with snapshots on (`.snapshots.<node>`):
//! ```text
//! builder  = <driver>/bin/nixos-test-driver
//! args     = [ "--save-snapshots" $out ]           boots the node, saves $out/<node>
//! nodesJson   the node as the run has it, the other nodes as peers
//!             ({ name; peer.vlans; }: addressed, not started), the test's
//!             vlans; passed as a file ($nodesJsonPath). Its inputs: the
//!             node's own files only, not the script, nor the other nodes.
//! PATH, NIX_VMTEST_PYTHON, requiredSystemFeatures   as the run's
//! ```
//! The run's (and `.driver`'s) nodes JSON then gives that node
//! `"snapshot": "<vm-snapshot-...>/<node>"`. In the JSON given to the C++
//! side, `"subst": [[placeholder, "snapshot-<node>"]]` puts that
//! derivation's out path (and its context) where the placeholder is.
//!
//! The script and nodes go through `.driver`'s output rather than
//! `builtins.toFile`-style store files because they may refer to derivation
//! outputs (start scripts, `${pkgs.hello}` in a script), which a store text
//! file cannot; and this way `.driver` is exactly what the run uses.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::args::VmTest;
use crate::spec::{MachineSpec, PeerSpec, TestSpec};

/// What the C++ side knows about the evaluation.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    /// The driver directory in the store (`/nix/store/...-nix-vmtest-0.1.0`).
    pub driver: &'a str,
    /// `builtins.placeholder "out"`.
    pub out_placeholder: &'a str,
    /// `builtins.currentSystem`.
    pub system: &'a str,
}

fn text(s: &str, ctx: &BTreeSet<String>) -> Value {
    json!({ "s": s, "ctx": ctx.iter().collect::<Vec<_>>() })
}

fn plain(s: &str) -> Value {
    json!({ "s": s, "ctx": [] })
}

fn list<I: IntoIterator<Item = String>>(items: I) -> Value {
    json!({ "list": items.into_iter().map(|s| plain(&s)).collect::<Vec<_>>() })
}

/// The placeholder the C++ side replaces by the out path of node `node`'s
/// snapshot derivation.
fn snapshot_placeholder(node: &str) -> String {
    format!("@nix-vmtest-snapshot-{node}@")
}

/// The nodes description a node's snapshot is made with: the node itself,
/// the others as peers (so addresses and host names are the run's).
fn snapshot_spec(spec: &TestSpec, node: &str) -> TestSpec {
    let machines = spec
        .machines
        .iter()
        .map(|m| {
            if m.name == node {
                MachineSpec {
                    snapshot: None,
                    ..m.clone()
                }
            } else {
                MachineSpec {
                    name: m.name.clone(),
                    start_script: None,
                    image: None,
                    snapshot: None,
                    peer: Some(PeerSpec {
                        vlans: m.vlans().to_vec(),
                    }),
                }
            }
        })
        .collect();
    TestSpec {
        vlans: spec.vlans.clone(),
        machines,
    }
}

/// The derivations, as `{"test": {"attrs": {...}}, "driver": ...,
/// "driverInteractive": ..., "snapshots": {"<node>": {"attrs": ...}}}`.
pub fn plan(test: &VmTest, host: &Host) -> Value {
    let driver_ctx: BTreeSet<String> = [host.driver.to_string()].into();
    let builder = format!("{}/bin/nixos-test-driver", host.driver);
    let out = host.out_placeholder;
    // The run's environment (and the snapshots'): QEMU and python3 from
    // the store (the driver takes python3 from PATH), or the host's
    // (Debian's) programs, via extra-sandbox-paths.
    let (path, python) = match &test.host_path {
        Some(p) => (text(&p.text, &p.context), None),
        None => (plain("/usr/bin:/bin"), Some(plain("/usr/bin/python3"))),
    };

    // One snapshot derivation per node that has one; the run's nodes name
    // their out paths (placeholders, which the C++ side replaces).
    let mut snapshots = Map::new();
    let mut run_spec = test.spec.clone();
    let mut subst = Vec::new();
    for (node, ctx) in &test.snapshots {
        let json = serde_json::to_string_pretty(&snapshot_spec(&test.spec, node))
            .expect("a TestSpec serializes");
        let mut attrs = Map::new();
        attrs.insert(
            "name".into(),
            plain(&format!("vm-snapshot-{}-{node}", test.name)),
        );
        attrs.insert("system".into(), plain(host.system));
        attrs.insert("builder".into(), text(&builder, &driver_ctx));
        attrs.insert(
            "args".into(),
            list(["--save-snapshots".to_string(), out.to_string()]),
        );
        attrs.insert("nodesJson".into(), text(&json, ctx));
        attrs.insert("passAsFile".into(), list(["nodesJson".to_string()]));
        attrs.insert("PATH".into(), path.clone());
        if let Some(p) = &python {
            attrs.insert("NIX_VMTEST_PYTHON".into(), p.clone());
        }
        attrs.insert(
            "requiredSystemFeatures".into(),
            list(test.required_system_features.iter().cloned()),
        );
        snapshots.insert(node.clone(), json!({ "attrs": Value::Object(attrs) }));
        let placeholder = snapshot_placeholder(node);
        for m in run_spec.machines.iter_mut().filter(|m| &m.name == node) {
            m.snapshot = Some(format!("{placeholder}/{node}").into());
        }
        subst.push(json!([placeholder, format!("snapshot-{node}")]));
    }
    let nodes_json = serde_json::to_string_pretty(&run_spec).expect("a TestSpec serializes");

    let common = |name: String| {
        let mut attrs = Map::new();
        attrs.insert("name".into(), plain(&name));
        attrs.insert("system".into(), plain(host.system));
        attrs.insert("builder".into(), text(&builder, &driver_ctx));
        attrs.insert(
            "globalTimeout".into(),
            plain(&test.global_timeout.to_string()),
        );
        attrs.insert("vmTestName".into(), plain(&test.name));
        attrs
    };

    let (extra, extra_ctx) = &test.extra_driver_args;

    let wrapper = |interactive: bool| {
        let suffix = if interactive { "-interactive" } else { "" };
        let mut attrs = common(format!("nixos-test-driver-{}{suffix}", test.name));
        attrs.insert("args".into(), list([super::wrapper::FLAG.to_string()]));
        let mut nodes = text(&nodes_json, &test.nodes_context);
        if !subst.is_empty() {
            nodes["subst"] = Value::Array(subst.clone());
        }
        attrs.insert("nodesJson".into(), nodes);
        attrs.insert(
            "testScript".into(),
            text(&test.test_script.text, &test.test_script.context),
        );
        attrs.insert(
            "passAsFile".into(),
            list(["nodesJson".to_string(), "testScript".to_string()]),
        );
        attrs.insert(
            "vmTestInteractive".into(),
            plain(if interactive { "1" } else { "" }),
        );
        attrs.insert("vmTestPath".into(), path.clone());
        if let Some(p) = &python {
            attrs.insert("vmTestPython".into(), p.clone());
        }
        if !extra.is_empty() {
            let list = serde_json::to_string(extra).expect("strings serialize");
            attrs.insert("vmTestArgs".into(), text(&list, extra_ctx));
        }
        attrs.insert("vmTestCheck".into(), plain(""));
        attrs.insert("preferLocalBuild".into(), plain("1"));
        attrs.insert("allowSubstitutes".into(), plain(""));
        Value::Object(attrs)
    };

    // A path in `.driver`'s output.
    let in_driver = |rel: &str| json!({ "s": rel, "ctx": [], "outOf": "driver" });
    let mut run = common(format!("vm-test-run-{}", test.name));
    let arg = |s: String| plain(&s);
    let mut args = vec![
        arg("-o".into()),
        arg(out.to_string()),
        arg("--junit-xml".into()),
        arg(format!("{out}/junit.xml")),
        arg("--global-timeout".into()),
        arg(test.global_timeout.to_string()),
        arg("--nodes-json".into()),
        in_driver(&format!("/{}", super::wrapper::NODES_JSON)),
        in_driver(&format!("/{}", super::wrapper::TEST_SCRIPT)),
        arg("--log-file".into()),
        arg(format!("{out}/log")),
    ];
    args.extend(extra.iter().map(|a| text(a, extra_ctx)));
    run.insert("args".into(), json!({ "list": args }));
    run.insert(
        "requiredSystemFeatures".into(),
        list(test.required_system_features.iter().cloned()),
    );
    run.insert("PATH".into(), path.clone());
    if let Some(p) = &python {
        run.insert("NIX_VMTEST_PYTHON".into(), p.clone());
    }

    json!({
        "test": { "attrs": Value::Object(run) },
        "driver": { "attrs": wrapper(false) },
        "driverInteractive": { "attrs": wrapper(true) },
        "snapshots": Value::Object(snapshots),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::args::Text;
    use crate::spec::{ImageSpec, MachineSpec, TestSpec};
    use std::collections::BTreeMap;

    #[test]
    fn the_run_derivation_has_the_documented_shape() {
        let test = VmTest {
            name: "minimal-test".into(),
            spec: TestSpec {
                vlans: vec![],
                machines: vec![MachineSpec {
                    name: "machine".into(),
                    start_script: Some("/nix/store/aaa-run-machine-vm".into()),
                    image: None,
                    snapshot: None,
                    peer: None,
                }],
            },
            nodes_context: ["/nix/store/aaa-run-machine-vm".to_string()].into(),
            test_script: Text {
                text: "machine.succeed('true')".into(),
                context: BTreeSet::new(),
            },
            global_timeout: 60,
            required_system_features: vec!["nixos-test".into(), "kvm".into()],
            skip_lint: false,
            host_path: None,
            extra_driver_args: (vec![], BTreeSet::new()),
            snapshots: BTreeMap::new(),
        };
        let host = Host {
            driver: "/nix/store/ddd-nix-vmtest-0.1.0",
            out_placeholder: "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9",
            system: "x86_64-linux",
        };
        let p = plan(&test, &host);
        let run = &p["test"]["attrs"];
        assert_eq!(run["name"]["s"], "vm-test-run-minimal-test");
        assert_eq!(
            run["builder"]["s"],
            "/nix/store/ddd-nix-vmtest-0.1.0/bin/nixos-test-driver"
        );
        assert_eq!(run["builder"]["ctx"][0], "/nix/store/ddd-nix-vmtest-0.1.0");
        assert_eq!(run["requiredSystemFeatures"]["list"][1]["s"], "kvm");
        assert_eq!(run["args"]["list"][0]["s"], "-o");
        assert_eq!(run["args"]["list"][7]["s"], "/share/nix-vmtest/nodes.json");
        assert_eq!(run["args"]["list"][7]["outOf"], "driver");
        let drv = &p["driver"]["attrs"];
        assert_eq!(drv["nodesJson"]["ctx"][0], "/nix/store/aaa-run-machine-vm");
        let nodes: TestSpec =
            serde_json::from_str(drv["nodesJson"]["s"].as_str().unwrap()).unwrap();
        assert_eq!(nodes, test.spec);
        let drv = &p["driverInteractive"]["attrs"];
        assert_eq!(
            drv["name"]["s"],
            "nixos-test-driver-minimal-test-interactive"
        );
        assert_eq!(drv["args"]["list"][0]["s"], "--write-wrapper");
        assert_eq!(drv["vmTestInteractive"]["s"], "1");

        // Without hostPath the run uses the host's QEMU and Python, and
        // the wrapper too.
        assert_eq!(run["PATH"]["s"], "/usr/bin:/bin");
        assert_eq!(run["NIX_VMTEST_PYTHON"]["s"], "/usr/bin/python3");
        assert_eq!(drv["vmTestPath"], run["PATH"]);
        assert_eq!(drv["vmTestPython"], run["NIX_VMTEST_PYTHON"]);
        // With it, PATH is hostPath (with its store paths as inputs) and
        // python3 comes from that PATH.
        let with_path = VmTest {
            host_path: Some(Text {
                text: "/nix/store/qqq-qemu/bin:/nix/store/ppp-python3/bin".into(),
                context: [
                    "/nix/store/ppp-python3".to_string(),
                    "/nix/store/qqq-qemu".to_string(),
                ]
                .into(),
            }),
            ..test
        };
        let p = plan(&with_path, &host);
        let run = &p["test"]["attrs"];
        assert_eq!(
            run["PATH"]["s"],
            "/nix/store/qqq-qemu/bin:/nix/store/ppp-python3/bin"
        );
        assert_eq!(run["PATH"]["ctx"][1], "/nix/store/qqq-qemu");
        assert!(run.get("NIX_VMTEST_PYTHON").is_none());
        let drv = &p["driver"]["attrs"];
        assert_eq!(drv["vmTestPath"], run["PATH"]);
        assert!(drv.get("vmTestPython").is_none());
        assert!(drv.get("vmTestArgs").is_none());

        // extraDriverArgs end the run's arguments, and the wrapper has them.
        let ctx: BTreeSet<String> = ["/nix/store/eee-x".to_string()].into();
        let with_args = VmTest {
            extra_driver_args: (vec!["--x".into(), "/nix/store/eee-x".into()], ctx),
            ..with_path
        };
        let p = plan(&with_args, &host);
        let args = p["test"]["attrs"]["args"]["list"].as_array().unwrap();
        assert_eq!(args[args.len() - 2]["s"], "--x");
        assert_eq!(args[args.len() - 1]["ctx"][0], "/nix/store/eee-x");
        let drv = &p["driver"]["attrs"];
        assert_eq!(drv["vmTestArgs"]["s"], r#"["--x","/nix/store/eee-x"]"#);
        assert_eq!(drv["vmTestArgs"]["ctx"][0], "/nix/store/eee-x");
    }

    #[test]
    fn each_snapshot_has_its_node_and_the_others_as_peers() {
        let image = |kernel: &str, vlans: Vec<u32>| ImageSpec {
            kernel: kernel.into(),
            initrd: "/nix/store/iii-initrd".into(),
            disk: None,
            memory: 256,
            cpus: 1,
            kernel_params: String::new(),
            qemu_flags: vec![],
            vlans,
        };
        let machine = |name: &str, kernel: &str, vlans| MachineSpec {
            name: name.into(),
            start_script: None,
            image: Some(image(kernel, vlans)),
            snapshot: None,
            peer: None,
        };
        let ctx = |p: &str| -> BTreeSet<String> { [p.to_string()].into() };
        let test = VmTest {
            name: "net".into(),
            spec: TestSpec {
                vlans: vec![1, 2],
                machines: vec![
                    machine("a", "/nix/store/aaa-k", vec![1]),
                    machine("b", "/nix/store/bbb-k", vec![1, 2]),
                ],
            },
            nodes_context: ctx("/nix/store/aaa-k")
                .union(&ctx("/nix/store/bbb-k"))
                .cloned()
                .collect(),
            test_script: Text {
                text: "start_all()".into(),
                context: BTreeSet::new(),
            },
            global_timeout: 60,
            required_system_features: vec!["nixos-test".into()],
            skip_lint: false,
            host_path: None,
            extra_driver_args: (vec![], BTreeSet::new()),
            // `b` only: a has snapshots off.
            snapshots: [("b".to_string(), ctx("/nix/store/bbb-k"))].into(),
        };
        let host = Host {
            driver: "/nix/store/ddd-nix-vmtest-0.1.0",
            out_placeholder: "/out",
            system: "x86_64-linux",
        };
        let p = plan(&test, &host);
        assert!(p["snapshots"].get("a").is_none());
        let snap = &p["snapshots"]["b"]["attrs"];
        assert_eq!(snap["name"]["s"], "vm-snapshot-net-b");
        assert_eq!(snap["args"]["list"][0]["s"], "--save-snapshots");
        assert_eq!(snap["args"]["list"][1]["s"], "/out");
        assert_eq!(snap["PATH"]["s"], "/usr/bin:/bin");
        assert_eq!(snap["requiredSystemFeatures"]["list"][0]["s"], "nixos-test");
        // Its inputs: b's files, not a's, nor the script.
        assert_eq!(snap["nodesJson"]["ctx"], json!(["/nix/store/bbb-k"]));
        assert!(snap.get("testScript").is_none() && snap.get("vmTestName").is_none());
        let spec: TestSpec =
            serde_json::from_str(snap["nodesJson"]["s"].as_str().unwrap()).unwrap();
        assert_eq!(spec.vlans, vec![1, 2]);
        assert_eq!(spec.machines[0].peer, Some(PeerSpec { vlans: vec![1] }));
        assert!(spec.machines[0].image.is_none());
        assert_eq!(spec.machines[1], test.spec.machines[1]);
        // b's kernel parameters are the run's.
        let spec = spec.normalize().unwrap();
        let run_spec = test.spec.clone().normalize().unwrap();
        assert_eq!(
            spec.network_kernel_params("b"),
            run_spec.network_kernel_params("b")
        );
        // The run's nodes name b's snapshot, through the placeholder the
        // C++ side replaces.
        let drv = &p["driver"]["attrs"]["nodesJson"];
        assert_eq!(
            drv["subst"],
            json!([["@nix-vmtest-snapshot-b@", "snapshot-b"]])
        );
        let nodes: TestSpec = serde_json::from_str(drv["s"].as_str().unwrap()).unwrap();
        assert_eq!(nodes.machines[0].snapshot, None);
        assert_eq!(
            nodes.machines[1].snapshot,
            Some("@nix-vmtest-snapshot-b@/b".into())
        );
    }
}
