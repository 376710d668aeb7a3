//! Checks the arguments of `builtins.vmTest` and turns them into a
//! [`TestSpec`] plus the store paths the test
//! derivation depends on. Every error names the attribute (and its position,
//! where Nix knows it), so `nix-build` fails at evaluation, not after a boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::spec::{ImageSpec, MachineSpec, TestSpec};

use super::value::NixValue;

/// Arguments `builtins.vmTest` takes.
pub const ACCEPTED: &[&str] = &[
    "name",
    "nodes",
    "testScript",
    "globalTimeout",
    "requiredSystemFeatures",
    "skipLint",
    "skipTypeCheck",
    "vlans",
    "meta",
    "hostPath",
    "extraDriverArgs",
    "snapshots",
];

/// Attributes an image node takes.
pub const IMAGE_ATTRS: &[&str] = &[
    "kernel",
    "initrd",
    "disk",
    "memory",
    "cpus",
    "kernelParams",
    "qemuFlags",
    "vlans",
    "snapshot",
];

/// The default `requiredSystemFeatures`, as nixpkgs' tests have them.
pub const DEFAULT_FEATURES: &[&str] = &["nixos-test", "kvm"];

/// The default `globalTimeout` in seconds (nixpkgs: one hour).
pub const DEFAULT_GLOBAL_TIMEOUT: u64 = 3600;

/// An argument that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("vmTest: {attr}{}: {message}", .pos.as_ref().map(|p| format!(" (at {p})")).unwrap_or_default())]
pub struct ArgError {
    /// The attribute path, e.g. `nodes.server.kernel`.
    pub attr: String,
    /// Where it was written, `file:line:col`.
    pub pos: Option<String>,
    pub message: String,
}

/// A string that may refer to store paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text {
    pub text: String,
    pub context: BTreeSet<String>,
}

/// The checked arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct VmTest {
    pub name: String,
    /// Machines and VLANs, normalized (sorted by name).
    pub spec: TestSpec,
    /// Every store path the machines need (start scripts, kernels, disks).
    pub nodes_context: BTreeSet<String>,
    pub test_script: Text,
    pub global_timeout: u64,
    pub required_system_features: Vec<String>,
    /// Skip the undefined-name check (the syntax is always checked).
    pub skip_lint: bool,
    /// `PATH` for the run (where QEMU and python3 are), e.g.
    /// `"${pkgs.qemu_test}/bin:${pkgs.python3}/bin"`; `None`: the host's
    /// `/usr/bin:/bin` (Debian's QEMU and Python, via extra-sandbox-paths).
    pub host_path: Option<Text>,
    /// More arguments for the driver (nixpkgs' `extraDriverArgs`), with the
    /// store paths they name.
    pub extra_driver_args: (Vec<String>, BTreeSet<String>),
    /// The nodes that get a booted snapshot (`vm-snapshot-<name>-<node>`),
    /// and the store paths each node needs (its start script, kernel,
    /// initrd, disk): a snapshot depends on its own node only.
    pub snapshots: BTreeMap<String, BTreeSet<String>>,
}

/// Where the arguments come from: the store directory (`/nix/store`).
struct Reader<'a> {
    store_dir: &'a str,
}

fn err(attr: &str, pos: Option<&String>, message: impl Into<String>) -> ArgError {
    ArgError {
        attr: attr.to_string(),
        pos: pos.cloned(),
        message: message.into(),
    }
}

/// The accepted name closest to `word`, for "did you mean".
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn unknown(attr: &str, key: &str, pos: Option<&String>, accepted: &[&str]) -> ArgError {
    let hint = match suggest(key, accepted) {
        Some(s) => format!("; did you mean '{s}'?"),
        None => String::new(),
    };
    err(
        &format!("{attr}{key}"),
        pos,
        format!(
            "unknown attribute '{key}'{hint} (accepted: {})",
            accepted.join(", ")
        ),
    )
}

impl Reader<'_> {
    fn in_store(&self, path: &str) -> bool {
        path.strip_prefix(self.store_dir)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    }

    /// A file the sandbox can see: a path value (copied into the store), a
    /// derivation, or a string naming a store path.
    fn store_file(
        &self,
        attr: &str,
        pos: Option<&String>,
        v: &NixValue,
        what: &str,
    ) -> Result<Text, ArgError> {
        let (text, ctx) = match v {
            NixValue::Path { store, ctx, .. } => (store, ctx),
            NixValue::Drv { v, ctx } => (v, ctx),
            NixValue::String { v, ctx } if self.in_store(v) => (v, ctx),
            NixValue::String { v, .. } if v.starts_with('/') => {
                return Err(err(
                    attr,
                    pos,
                    format!(
                        "{what} {v:?} is not in the Nix store, so the build sandbox cannot see it; \
                         write it as a path without quotes (Nix then copies it into the store) \
                         or give a derivation"
                    ),
                ))
            }
            other => {
                return Err(err(
                    attr,
                    pos,
                    format!(
                        "{what} must be a path or a derivation, got {}",
                        other.describe()
                    ),
                ))
            }
        };
        Ok(Text {
            text: text.clone(),
            context: ctx.iter().cloned().collect(),
        })
    }

    fn node(
        &self,
        name: &str,
        pos: Option<&String>,
        v: &NixValue,
    ) -> Result<(MachineSpec, BTreeSet<String>, Option<bool>), ArgError> {
        let attr = format!("nodes.{name}");
        match v {
            NixValue::Attrs {
                v: attrs,
                pos: positions,
            } => {
                if !attrs.contains_key("kernel") && !attrs.contains_key("initrd") {
                    return Err(not_a_node(&attr, pos, v));
                }
                let snapshot = match attrs.get("snapshot") {
                    None => None,
                    Some(NixValue::Bool { v }) => Some(*v),
                    Some(other) => {
                        return Err(err(
                            &format!("{attr}.snapshot"),
                            positions.get("snapshot"),
                            format!(
                                "must be true or false (whether the node starts from a booted \
                                 snapshot), got {}",
                                other.describe()
                            ),
                        ))
                    }
                };
                let (m, ctx) = self.image(&attr, attrs, positions)?;
                Ok((m, ctx, snapshot))
            }
            NixValue::Path { .. } | NixValue::Drv { .. } | NixValue::String { .. } => {
                let file = self.store_file(&attr, pos, v, "a start script")?;
                let script = start_script(name, &file.text, v);
                Ok((
                    MachineSpec {
                        name: name.to_string(),
                        start_script: Some(script),
                        image: None,
                        snapshot: None,
                        peer: None,
                    },
                    file.context,
                    None,
                ))
            }
            other => Err(not_a_node(&attr, pos, other)),
        }
    }

    fn image(
        &self,
        attr: &str,
        attrs: &BTreeMap<String, NixValue>,
        positions: &BTreeMap<String, String>,
    ) -> Result<(MachineSpec, BTreeSet<String>), ArgError> {
        for key in attrs.keys() {
            if !IMAGE_ATTRS.contains(&key.as_str()) {
                return Err(unknown(
                    &format!("{attr}."),
                    key,
                    positions.get(key),
                    IMAGE_ATTRS,
                ));
            }
        }
        let mut context = BTreeSet::new();
        let at = |k: &str| (format!("{attr}.{k}"), positions.get(k));
        let mut file = |k: &str, what: &str| -> Result<Option<PathBuf>, ArgError> {
            let (a, p) = at(k);
            match attrs.get(k) {
                None | Some(NixValue::Null) => Ok(None),
                Some(v) => {
                    let t = self.store_file(&a, p, v, what)?;
                    context.extend(t.context);
                    Ok(Some(PathBuf::from(t.text)))
                }
            }
        };
        let kernel = file("kernel", "the kernel")?;
        let initrd = file("initrd", "the initrd")?;
        let disk = file("disk", "the disk image")?;
        let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
            let missing = if !matches!(attrs.get("kernel"), Some(v) if *v != NixValue::Null) {
                "kernel"
            } else {
                "initrd"
            };
            return Err(err(
                attr,
                None,
                format!("an image node needs both 'kernel' and 'initrd'; '{missing}' is missing"),
            ));
        };
        let int = |k: &str, default: u32, min: i64, max: i64| -> Result<u32, ArgError> {
            let (a, p) = at(k);
            match attrs.get(k) {
                None => Ok(default),
                Some(NixValue::Int { v }) if (min..=max).contains(v) => Ok(*v as u32),
                Some(NixValue::Int { v }) => Err(err(
                    &a,
                    p,
                    format!("must be between {min} and {max}, got {v}"),
                )),
                Some(other) => Err(err(
                    &a,
                    p,
                    format!("must be an integer, got {}", other.describe()),
                )),
            }
        };
        let memory = int("memory", 256, 64, 1 << 20)?;
        let cpus = int("cpus", 1, 1, 256)?;
        let kernel_params = match attrs.get("kernelParams") {
            None => String::new(),
            Some(NixValue::String { v, ctx }) => {
                context.extend(ctx.iter().cloned());
                v.clone()
            }
            Some(NixValue::List { v }) => {
                let (a, p) = at("kernelParams");
                let mut words = Vec::new();
                for item in v {
                    match item {
                        NixValue::String { v, ctx } => {
                            context.extend(ctx.iter().cloned());
                            words.push(v.clone());
                        }
                        other => {
                            return Err(err(
                                &a,
                                p,
                                format!(
                                "must be a string or a list of strings, got an element that is {}",
                                other.describe()
                            ),
                            ))
                        }
                    }
                }
                words.join(" ")
            }
            Some(other) => {
                let (a, p) = at("kernelParams");
                return Err(err(
                    &a,
                    p,
                    format!(
                        "must be a string or a list of strings, got {}",
                        other.describe()
                    ),
                ));
            }
        };
        let qemu_flags = match attrs.get("qemuFlags") {
            None => Vec::new(),
            Some(v) => {
                let (a, p) = at("qemuFlags");
                strings(&a, p, v, &mut context)?
            }
        };
        let vlans = match attrs.get("vlans") {
            None => vec![1],
            Some(v) => {
                let (a, p) = at("vlans");
                vlan_list(&a, p, v)?
            }
        };
        Ok((
            MachineSpec {
                name: attr.trim_start_matches("nodes.").to_string(),
                start_script: None,
                image: Some(ImageSpec {
                    kernel,
                    initrd,
                    disk,
                    memory,
                    cpus,
                    kernel_params,
                    qemu_flags,
                    vlans,
                }),
                snapshot: None,
                peer: None,
            },
            context,
        ))
    }
}

fn not_a_node(attr: &str, pos: Option<&String>, v: &NixValue) -> ArgError {
    let hint = match v {
        NixValue::Function => {
            "; NixOS modules are for the Nix library (nix/: runTest), not for builtins.vmTest"
        }
        _ => "",
    };
    err(
        attr,
        pos,
        format!(
            "a node must be a start script (a run-<name>-vm path or derivation) or an image \
             {{ kernel; initrd; ... }}, got {}{hint}",
            v.describe()
        ),
    )
}

/// The start script file a node's store path stands for: the path itself
/// when it is named `run-<x>-vm` (or is a plain file), else NixOS' layout
/// `<out>/bin/run-<node>-vm`.
fn start_script(node: &str, store_path: &str, v: &NixValue) -> PathBuf {
    let path = Path::new(store_path);
    let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let looks_like_script = file_name.ends_with("-vm") && file_name.contains("run-");
    let is_dir = match v {
        // Sources are already in the store: look.
        NixValue::Path { store, .. } => Path::new(store).is_dir(),
        _ => !looks_like_script && path.is_dir(),
    };
    if is_dir || (!looks_like_script && matches!(v, NixValue::Drv { .. }) && !path.is_file()) {
        // A directory: a NixOS VM (`bin/run-<host>-vm`). Prefer what is there.
        if let Ok(entries) = std::fs::read_dir(path.join("bin")) {
            let scripts: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|f| f.to_str())
                        .is_some_and(|f| f.starts_with("run-") && f.ends_with("-vm"))
                })
                .collect();
            if scripts.len() == 1 {
                return scripts[0].clone();
            }
        }
        return path.join("bin").join(format!("run-{node}-vm"));
    }
    path.to_path_buf()
}

fn strings(
    attr: &str,
    pos: Option<&String>,
    v: &NixValue,
    context: &mut BTreeSet<String>,
) -> Result<Vec<String>, ArgError> {
    let NixValue::List { v: items } = v else {
        return Err(err(
            attr,
            pos,
            format!("must be a list of strings, got {}", v.describe()),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            NixValue::String { v, ctx } => {
                context.extend(ctx.iter().cloned());
                Ok(v.clone())
            }
            NixValue::Path { store, ctx, .. } | NixValue::Drv { v: store, ctx } => {
                context.extend(ctx.iter().cloned());
                Ok(store.clone())
            }
            other => Err(err(
                attr,
                pos,
                format!("element {i} must be a string, got {}", other.describe()),
            )),
        })
        .collect()
}

fn vlan_list(attr: &str, pos: Option<&String>, v: &NixValue) -> Result<Vec<u32>, ArgError> {
    let NixValue::List { v: items } = v else {
        return Err(err(
            attr,
            pos,
            format!("must be a list of VLAN numbers, got {}", v.describe()),
        ));
    };
    items
        .iter()
        .map(|item| match item {
            NixValue::Int { v } if (1..=255).contains(v) => Ok(*v as u32),
            other => Err(err(
                attr,
                pos,
                format!("VLANs are numbered 1..255, got {}", other.describe()),
            )),
        })
        .collect()
}

/// Checks the encoded arguments of one `builtins.vmTest` call.
pub fn parse(args: &NixValue, store_dir: &str) -> Result<VmTest, ArgError> {
    let reader = Reader { store_dir };
    let NixValue::Attrs { v: attrs, pos } = args else {
        return Err(err(
            "arguments",
            None,
            format!(
                "expected an attribute set {{ name; nodes; testScript; }}, got {}",
                args.describe()
            ),
        ));
    };
    for key in attrs.keys() {
        if !ACCEPTED.contains(&key.as_str()) {
            return Err(unknown("", key, pos.get(key), ACCEPTED));
        }
    }
    let missing = |k: &str| {
        err(
            k,
            None,
            format!("missing argument '{k}'; builtins.vmTest needs name, nodes and testScript"),
        )
    };

    let name = match attrs.get("name") {
        None => return Err(missing("name")),
        Some(NixValue::String { v, .. }) => v.clone(),
        Some(other) => {
            return Err(err(
                "name",
                pos.get("name"),
                format!("must be a string, got {}", other.describe()),
            ))
        }
    };
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c));
    if !name_ok {
        return Err(err(
            "name",
            pos.get("name"),
            format!(
                "{name:?} cannot be part of a store path name: use letters, digits and + - . _ ? ="
            ),
        ));
    }

    let mut machines = Vec::new();
    let mut nodes_context = BTreeSet::new();
    let mut node_contexts = BTreeMap::new();
    let mut node_snapshot = BTreeMap::new();
    match attrs.get("nodes") {
        None => return Err(missing("nodes")),
        Some(NixValue::Attrs {
            v: nodes,
            pos: node_pos,
        }) => {
            for (node, value) in nodes {
                let (machine, ctx, snapshot) = reader.node(node, node_pos.get(node), value)?;
                machines.push(machine);
                nodes_context.extend(ctx.iter().cloned());
                node_contexts.insert(node.clone(), ctx);
                if let Some(on) = snapshot {
                    node_snapshot.insert(node.clone(), on);
                }
            }
        }
        Some(other) => {
            return Err(err(
                "nodes",
                pos.get("nodes"),
                format!(
                    "must be an attribute set of machines, got {}",
                    other.describe()
                ),
            ))
        }
    }

    let test_script = match attrs.get("testScript") {
        None => return Err(missing("testScript")),
        Some(NixValue::String { v, ctx }) => Text {
            text: v.clone(),
            context: ctx.iter().cloned().collect(),
        },
        Some(other) => {
            return Err(err(
                "testScript",
                pos.get("testScript"),
                format!(
                    "must be a string or a function {{ nodes }}: string, got {}",
                    other.describe()
                ),
            ))
        }
    };

    let global_timeout = match attrs.get("globalTimeout") {
        None => DEFAULT_GLOBAL_TIMEOUT,
        Some(NixValue::Int { v }) if *v > 0 => *v as u64,
        Some(other) => {
            return Err(err(
                "globalTimeout",
                pos.get("globalTimeout"),
                format!(
                    "must be a positive number of seconds, got {}",
                    other.describe()
                ),
            ))
        }
    };

    let required_system_features = match attrs.get("requiredSystemFeatures") {
        None => DEFAULT_FEATURES.iter().map(|s| s.to_string()).collect(),
        Some(v) => strings(
            "requiredSystemFeatures",
            pos.get("requiredSystemFeatures"),
            v,
            &mut BTreeSet::new(),
        )?,
    };

    let flag = |k: &str| match attrs.get(k) {
        None => Ok(false),
        Some(NixValue::Bool { v }) => Ok(*v),
        Some(other) => Err(err(
            k,
            pos.get(k),
            format!("must be true or false, got {}", other.describe()),
        )),
    };
    let skip_lint = flag("skipLint")?;
    flag("skipTypeCheck")?;

    let host_path = match attrs.get("hostPath") {
        None => None,
        Some(NixValue::String { v, ctx }) if !v.is_empty() => Some(Text {
            text: v.clone(),
            context: ctx.iter().cloned().collect(),
        }),
        Some(other) => {
            let got = match other {
                NixValue::String { .. } => "an empty string".to_string(),
                _ => other.describe(),
            };
            return Err(err(
                "hostPath",
                pos.get("hostPath"),
                format!(
                    "must be a PATH string such as \"${{pkgs.qemu_test}}/bin:${{pkgs.python3}}/bin\", got {got}"
                ),
            ));
        }
    };

    let vlans = match attrs.get("vlans") {
        None => Vec::new(),
        Some(v) => vlan_list("vlans", pos.get("vlans"), v)?,
    };

    let mut args_context = BTreeSet::new();
    let extra_args = match attrs.get("extraDriverArgs") {
        None => Vec::new(),
        Some(v) => strings(
            "extraDriverArgs",
            pos.get("extraDriverArgs"),
            v,
            &mut args_context,
        )?,
    };

    let spec = TestSpec { vlans, machines }
        .normalize()
        .map_err(|e| err("nodes", pos.get("nodes"), e.to_string()))?;

    let names: Vec<String> = node_contexts.keys().cloned().collect();
    let wanted = snapshot_nodes(
        attrs.get("snapshots"),
        pos.get("snapshots"),
        &names,
        &node_snapshot,
    )?;
    let snapshots = node_contexts
        .into_iter()
        .filter(|(node, _)| wanted.contains(node))
        .collect();

    Ok(VmTest {
        name,
        spec,
        nodes_context,
        test_script,
        global_timeout,
        required_system_features,
        skip_lint,
        host_path,
        extra_driver_args: (extra_args, args_context),
        snapshots,
    })
}

/// The nodes that get a snapshot: every node unless `snapshots` (true,
/// false, or `{ <node> = false; }`) or a node's own `snapshot` says no.
fn snapshot_nodes(
    arg: Option<&NixValue>,
    pos: Option<&String>,
    nodes: &[String],
    own: &BTreeMap<String, bool>,
) -> Result<BTreeSet<String>, ArgError> {
    let mut per_node: BTreeMap<String, bool> = BTreeMap::new();
    let default = match arg {
        None => true,
        Some(NixValue::Bool { v }) => *v,
        Some(NixValue::Attrs { v, pos: positions }) => {
            for (node, value) in v {
                let attr = format!("snapshots.{node}");
                if !nodes.contains(node) {
                    return Err(err(
                        &attr,
                        positions.get(node),
                        format!(
                            "there is no node '{node}' (the nodes are {})",
                            nodes.join(", ")
                        ),
                    ));
                }
                let NixValue::Bool { v: on } = value else {
                    return Err(err(
                        &attr,
                        positions.get(node),
                        format!("must be true or false, got {}", value.describe()),
                    ));
                };
                if own.get(node).is_some_and(|o| o != on) {
                    return Err(err(
                        &attr,
                        positions.get(node),
                        format!(
                            "says {on}, but nodes.{node}.snapshot says {}: give it in one place",
                            !on
                        ),
                    ));
                }
                per_node.insert(node.clone(), *on);
            }
            true
        }
        Some(other) => {
            return Err(err(
                "snapshots",
                pos,
                format!(
                    "must be true, false or an attribute set {{ <node> = false; }}, got {}",
                    other.describe()
                ),
            ))
        }
    };
    per_node.extend(own.iter().map(|(n, o)| (n.clone(), *o)));
    Ok(nodes
        .iter()
        .filter(|n| per_node.get(*n).copied().unwrap_or(default))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> NixValue {
        NixValue::String {
            v: v.into(),
            ctx: vec![],
        }
    }
    fn attrs(items: Vec<(&str, NixValue)>) -> NixValue {
        NixValue::Attrs {
            v: items.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            pos: BTreeMap::new(),
        }
    }
    fn image() -> NixValue {
        attrs(vec![
            (
                "kernel",
                NixValue::Path {
                    v: "/x/vmlinuz".into(),
                    store: "/nix/store/aaa-vmlinuz".into(),
                    ctx: vec!["/nix/store/aaa-vmlinuz".into()],
                },
            ),
            ("initrd", s("/nix/store/bbb-initrd")),
            ("memory", NixValue::Int { v: 128 }),
            (
                "vlans",
                NixValue::List {
                    v: vec![NixValue::Int { v: 1 }, NixValue::Int { v: 2 }],
                },
            ),
        ])
    }
    fn good(nodes: NixValue) -> NixValue {
        attrs(vec![
            ("name", s("t")),
            ("nodes", nodes),
            ("testScript", s("start_all()")),
        ])
    }
    fn message(v: NixValue) -> String {
        parse(&v, "/nix/store").unwrap_err().to_string()
    }

    #[test]
    fn image_nodes_become_machine_specs() {
        let t = parse(&good(attrs(vec![("server", image())])), "/nix/store").unwrap();
        assert_eq!(t.name, "t");
        assert_eq!(t.spec.vlans, vec![1, 2]);
        let img = t.spec.machines[0].image.as_ref().unwrap();
        assert_eq!(img.kernel, PathBuf::from("/nix/store/aaa-vmlinuz"));
        assert_eq!(img.memory, 128);
        assert!(t.nodes_context.contains("/nix/store/aaa-vmlinuz"));
        assert_eq!(t.required_system_features, vec!["nixos-test", "kvm"]);
        assert_eq!(t.global_timeout, 3600);
    }

    #[test]
    fn start_script_derivations_keep_their_context() {
        let drv = NixValue::Drv {
            v: "/nix/store/ccc-run-server-vm".into(),
            ctx: vec!["!out!/nix/store/ddd-run-server-vm.drv".into()],
        };
        let t = parse(&good(attrs(vec![("server", drv)])), "/nix/store").unwrap();
        assert_eq!(
            t.spec.machines[0].start_script.as_deref(),
            Some(Path::new("/nix/store/ccc-run-server-vm"))
        );
        assert!(t
            .nodes_context
            .contains("!out!/nix/store/ddd-run-server-vm.drv"));
        let vm = NixValue::Drv {
            v: "/nix/store/eee-nixos-vm".into(),
            ctx: vec![],
        };
        let t = parse(&good(attrs(vec![("client", vm)])), "/nix/store").unwrap();
        assert_eq!(
            t.spec.machines[0].start_script.as_deref(),
            Some(Path::new("/nix/store/eee-nixos-vm/bin/run-client-vm"))
        );
    }

    #[test]
    fn errors_name_the_attribute() {
        let no_name = attrs(vec![("nodes", attrs(vec![])), ("testScript", s(""))]);
        assert!(message(no_name).contains("vmTest: name: missing argument 'name'"));

        let m = message(good(attrs(vec![("server", NixValue::Int { v: 3 })])));
        assert!(
            m.starts_with("vmTest: nodes.server: a node must be a start script"),
            "{m}"
        );
        assert!(m.contains("got an integer (3)"), "{m}");

        let m = message(good(s("x")));
        assert!(
            m.starts_with("vmTest: nodes: must be an attribute set"),
            "{m}"
        );

        let m = message(good(attrs(vec![(
            "a",
            attrs(vec![
                ("kernel", s("/boot/vmlinuz")),
                ("initrd", s("/nix/store/x-i")),
            ]),
        )])));
        assert!(
            m.contains("nodes.a.kernel") && m.contains("not in the Nix store"),
            "{m}"
        );

        let mut typo = image();
        if let NixValue::Attrs { v, .. } = &mut typo {
            v.insert("memroy".into(), NixValue::Int { v: 1 });
        }
        let m = message(good(attrs(vec![("a", typo)])));
        assert!(
            m.contains("unknown attribute 'memroy'; did you mean 'memory'?"),
            "{m}"
        );

        let m = message(attrs(vec![
            ("name", s("t")),
            ("nodes", attrs(vec![])),
            ("testscript", s("")),
        ]));
        assert!(m.contains("did you mean 'testScript'"), "{m}");
    }

    #[test]
    fn snapshots_are_on_by_default_and_off_per_test_or_node() {
        let with = |extra: Vec<(&str, NixValue)>, a: NixValue| {
            let mut items = vec![
                ("name", s("t")),
                ("nodes", attrs(vec![("a", a), ("b", image())])),
                ("testScript", s("start_all()")),
            ];
            items.extend(extra);
            attrs(items)
        };
        let nodes = |v: NixValue| -> Vec<String> {
            parse(&v, "/nix/store")
                .unwrap()
                .snapshots
                .into_keys()
                .collect()
        };
        let off = NixValue::Bool { v: false };
        assert_eq!(nodes(with(vec![], image())), ["a", "b"]);
        let t = parse(&with(vec![], image()), "/nix/store").unwrap();
        assert!(t.snapshots["a"].contains("/nix/store/aaa-vmlinuz"));
        assert!(nodes(with(vec![("snapshots", off.clone())], image())).is_empty());
        let per_node = attrs(vec![("a", off.clone())]);
        assert_eq!(nodes(with(vec![("snapshots", per_node)], image())), ["b"]);
        let NixValue::Attrs { v: mut own, pos } = image() else {
            unreachable!()
        };
        own.insert("snapshot".into(), off.clone());
        let own = NixValue::Attrs { v: own, pos };
        assert_eq!(nodes(with(vec![], own.clone())), ["b"]);

        let m = message(with(vec![("snapshots", s("no"))], image()));
        assert!(
            m.contains("snapshots: must be true, false or an attribute set"),
            "{m}"
        );
        let m = message(with(
            vec![("snapshots", attrs(vec![("c", off.clone())]))],
            image(),
        ));
        assert!(
            m.contains("snapshots.c: there is no node 'c' (the nodes are a, b)"),
            "{m}"
        );
        let on = attrs(vec![("a", NixValue::Bool { v: true })]);
        let m = message(with(vec![("snapshots", on)], own));
        assert!(
            m.contains("nodes.a.snapshot says false: give it in one place"),
            "{m}"
        );
        let NixValue::Attrs { v: mut bad, pos } = image() else {
            unreachable!()
        };
        bad.insert("snapshot".into(), s("yes"));
        let m = message(with(vec![], NixValue::Attrs { v: bad, pos }));
        assert!(m.contains("nodes.a.snapshot: must be true or false"), "{m}");
    }
}
